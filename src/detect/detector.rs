//! Spike detection for one route × signal: a pure, clock-injected state machine.
//!
//! A [`Detector`] watches the ratio of matching responses (`k`, e.g. 5xx) to
//! all responses (`n`) for one route and one signal, and reports when that
//! ratio jumps well above its own history ([`Transition::Started`]) and when
//! it has settled again ([`Transition::Ended`]). It never reads a clock: the
//! caller passes whole-second unix timestamps, which keeps it deterministic
//! and testable.
//!
//! # How it decides
//!
//! * **Windows.** A ring of per-second cumulative counts answers "n and k in
//!   the last 10 s / 1 min / 10 min" in O(1) for any window length, so each
//!   tick costs the same however much traffic there is.
//! * **Baseline.** Exponentially decayed sums (half-life
//!   [`DetectorConfig::baseline_half_life_secs`]) plus a prior give
//!   `p0 = (S_k + prior_ratio·prior_weight) / (S_n + prior_weight)`.
//!   Each window has its own baseline, fed only with the seconds that have
//!   left that window, so a window is always compared with the traffic before
//!   it and never with itself: a spike's first seconds cannot raise the
//!   reference and delay their own detection. (One shared baseline lagging by
//!   10 minutes would do that too, but then a fresh detector compares its
//!   first 10 minutes with the prior alone, and a route that is normally at,
//!   say, 20 % 401s gets flagged at 10 req/s.) [`Detector::baseline`] reports
//!   the 10-minute one. The baselines are frozen (no folding, no decay) while
//!   a spike is active, and seconds that belonged to a spike are never
//!   folded, so a spike never becomes the new normal.
//! * **Reference ratio.** Tests use `p_ref`, the Wilson upper bound (z ≈ 3.09,
//!   one-sided 0.1 %) of the window's `p0` given the weight
//!   `S_n + prior_weight` behind it.
//!   With plenty of history `p_ref ≈ p0`. With little history (a fresh proxy,
//!   or after a long silence) it is much larger — about 10 % for the prior alone
//!   — so a fresh proxy in front of an API that is normally at 5 % errors does
//!   not flag before it has learnt that 5 % is normal, while a 100 % outage
//!   still flags at once.
//! * **Start.** On a call that brought new matching responses, fire when any
//!   window has `k ≥ min_events`, `k/n ≥ max(min_ratio, min_factor·p_ref)`
//!   and the Chernoff bound `exp(-n·KL(k/n ‖ p_ref))` on the binomial upper
//!   tail `P[Bin(n, p_ref) ≥ k]` is `≤ p_value`. The bound over-estimates the
//!   tail, so the test is conservative.
//! * **End (hysteresis).** While active, the spike counts as "still elevated"
//!   if any window up to `max(1 min, firing window)` is significantly
//!   (one-sided 1 %) above *half* the firing threshold (for a threshold under
//!   3·p_ref, a quarter of the way from p_ref to it: half would be at or below
//!   the baseline, and normal traffic would never let the spike end). It ends once it has not
//!   been elevated for `clear_after_secs` consecutive seconds. After the end,
//!   windows only count seconds from the end on, so the spike's own data
//!   cannot start the next one. Each spike that starts within 10 minutes of
//!   the previous one ending needs twice the quiet time of the previous one
//!   (up to 16×; back to 1× after 10 calm minutes), so a flapping signal
//!   becomes one long spike instead of a storm of events.
//!
//! Time to clear after the ratio returns to normal is therefore at most about
//! `max(60, firing window) + clear_after_secs · 2^flap` seconds: the windows
//! that judge elevation have to drain the spike's data first (≈ 90 s with
//! defaults for a spike seen on the 10 s or 1 min window, ≈ 630 s for one seen
//! only on the 10 min window).
//!
//! # Calling convention
//!
//! [`Detector::observe`] is meant to be called once per second per detector,
//! with the counts of the second just finished (zero counts included), but it
//! also accepts several calls for the same second (they accumulate) and skipped
//! seconds (treated as seconds without traffic). It evaluates on every call:
//! a start can fire in the middle of a second as soon as the evidence is there,
//! and because the state flips at most once per call, a transition is never
//! duplicated or lost.
//!
//! # Limits
//!
//! * A lasting level shift stays one active spike until the ratio comes back:
//!   that is the point of freezing the baseline.
//! * A window with no traffic behind it is compared with the prior alone
//!   (upper bound ≈ 10.5 %), i.e. needs ≈ 31 %. On a fresh detector that holds
//!   for the first seconds of the 10 s window and for the wider windows until
//!   they have rolled over once. A route whose *normal* ratio is near that
//!   may be flagged at start-up (in simulation: never at ≤ 20 %, up to a
//!   quarter of starts at 25 %, most starts at 30 %) and, by the rule above,
//!   stays flagged; give such signals a `prior_ratio` close to their normal
//!   level ([`Detector::reconfigure`] at a reload works the active spike's
//!   clear level out again, which ends it).
//! * The tests assume responses are independent. A single client hammering a
//!   route with a bad token is a real 401 spike as far as this code can tell.
//! * Per detector: one ring of 602 × 8 bytes plus 336 bytes of state.

/// Window lengths, shortest first, so a spike is reported with the shortest
/// window that proves it.
const WINDOWS: [u64; 3] = [10, 60, 600];
/// The longest window, which sets how much per-second history is kept.
const MAX_WINDOW: u64 = 600;
/// Ring slots: the longest window plus the second just before it (to
/// difference cumulative counts) plus the second leaving it (to fold it).
const RING: usize = MAX_WINDOW as usize + 2;
/// z for the one-sided 99.9 % Wilson upper bound on the baseline ratio.
const BASELINE_UCB_Z: f64 = 3.09;
/// ln(1/0.01): a window is "still elevated" if its ratio is above the clear
/// threshold at one-sided 1 % significance. Looser than `p_value` on purpose:
/// it only has to keep a live spike alive, not raise an alarm.
const ELEVATED_LN_INV_P: f64 = 4.605_170_185_988_092;
/// The shortest window that judges whether a spike is still elevated; the 10 s
/// window alone is too small to tell "over" from "a lull" at low traffic.
const CLEAR_MIN_WINDOW: u64 = 60;
/// A spike starting this soon after the previous one ended counts as flapping.
const FLAP_WINDOW_SECS: u64 = 600;
/// Flapping at most multiplies the required quiet time by 2^4 = 16.
const MAX_FLAP_LEVEL: u32 = 4;

/// Tuning knobs of a [`Detector`]. The defaults suit per-route status-code
/// ratios at anything from a request a minute to thousands per second.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorConfig {
    /// Minimum matching responses in a window before it may fire (default 5).
    pub min_events: u64,
    /// Minimum ratio `k/n` in a window before it may fire (default 0.05).
    pub min_ratio: f64,
    /// The window ratio must be at least this multiple of the baseline
    /// (default 3).
    pub min_factor: f64,
    /// Maximum probability that the window's k is baseline noise (default 1e-6).
    pub p_value: f64,
    /// Half-life of the baseline's exponential decay (default 3600 s).
    pub baseline_half_life_secs: f64,
    /// Ratio assumed before any history exists (default 0.01).
    pub prior_ratio: f64,
    /// How many requests' worth of weight the prior has (default 100).
    pub prior_weight: f64,
    /// Consecutive seconds without elevation before a spike ends (default 30).
    pub clear_after_secs: u64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            min_events: 5,
            min_ratio: 0.05,
            min_factor: 3.0,
            p_value: 1e-6,
            baseline_half_life_secs: 3600.0,
            prior_ratio: 0.01,
            prior_weight: 100.0,
            clear_after_secs: 30,
        }
    }
}

/// A threshold out of its range: which one (as the config file names it) and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} {expected}, got {got}")]
pub struct InvalidThreshold {
    /// The threshold's key, e.g. `p_value`.
    pub key: &'static str,
    /// What it must be, e.g. `must be in (0, 1)`.
    pub expected: &'static str,
    /// The value given.
    pub got: String,
}

impl DetectorConfig {
    /// Checks every field.
    ///
    /// # Errors
    ///
    /// The first threshold out of range, e.g. `p_value must be in (0, 1), got 2`.
    pub fn validate(&self) -> Result<(), InvalidThreshold> {
        let invalid = |key, expected, got: &dyn std::fmt::Display| {
            Err(InvalidThreshold {
                key,
                expected,
                got: got.to_string(),
            })
        };
        if self.min_events == 0 {
            return invalid("min_events", "must be at least 1", &0);
        }
        if !(0.0..=1.0).contains(&self.min_ratio) {
            return invalid("min_ratio", "must be in [0, 1]", &self.min_ratio);
        }
        if !(self.min_factor >= 1.0 && self.min_factor.is_finite()) {
            return invalid(
                "min_factor",
                "must be a finite number >= 1",
                &self.min_factor,
            );
        }
        if !(self.p_value > 0.0 && self.p_value < 1.0) {
            return invalid("p_value", "must be in (0, 1)", &self.p_value);
        }
        if !(self.baseline_half_life_secs > 0.0 && self.baseline_half_life_secs.is_finite()) {
            // Named as the config writes it (`baseline_half_life = "1h"`).
            return invalid(
                "baseline_half_life",
                "must be greater than 0",
                &format_args!("{} s", self.baseline_half_life_secs),
            );
        }
        // Strictly inside (0, 1) so that p0 can never be exactly 0 or 1, which
        // keeps every logarithm in the tests finite.
        if !(self.prior_ratio > 0.0 && self.prior_ratio < 1.0) {
            return invalid("prior_ratio", "must be in (0, 1)", &self.prior_ratio);
        }
        if !(self.prior_weight > 0.0 && self.prior_weight.is_finite()) {
            return invalid(
                "prior_weight",
                "must be a finite number > 0",
                &self.prior_weight,
            );
        }
        if self.clear_after_secs == 0 {
            // The file's `clear_after` is refused below 1 s before it gets here.
            return invalid("clear_after", "must be at least 1 s", &"0 s");
        }
        Ok(())
    }
}

/// A change of state reported by [`Detector::observe`].
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// A spike was detected; the stats are the evidence that triggered it.
    Started(SpikeStats),
    /// The spike is over; the stats summarise the whole episode.
    Ended(SpikeStats),
}

/// Evidence about a spike, for logs, events and the API.
///
/// In [`Transition::Started`], `n`, `k` and `ratio` are the counts in the
/// window that fired. In [`Transition::Ended`], they are the totals from the
/// start second through the end second (the quiet tail included), while
/// `window_secs` and `baseline` still describe the start.
#[derive(Debug, Clone, PartialEq)]
pub struct SpikeStats {
    /// Nominal length of the window that fired: 10, 60 or 600 seconds.
    pub window_secs: u64,
    /// All responses (see the type's docs for which span).
    pub n: u64,
    /// Matching responses (see the type's docs for which span).
    pub k: u64,
    /// `k / n`, or 0 when `n` is 0.
    pub ratio: f64,
    /// The baseline ratio `p0` the firing window was compared with (it stays
    /// frozen during the spike).
    pub baseline: f64,
    /// The second in which the spike was detected.
    pub started_at: u64,
    /// The second in which the spike was declared over (`None` while active).
    pub ended_at: Option<u64>,
}

impl SpikeStats {
    /// Seconds from the start second to the end second (or to `now` if the
    /// spike is still active).
    pub fn duration_secs(&self, now: u64) -> u64 {
        self.ended_at.unwrap_or(now).saturating_sub(self.started_at)
    }
}

/// Point-in-time view of a detector for the JSON API and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Whether a spike is active.
    pub active: bool,
    /// Baseline ratio `p0`.
    pub baseline: f64,
    /// Ratio over the last 10 seconds (0 without traffic).
    pub ratio_10s: f64,
    /// Ratio over the last minute (0 without traffic).
    pub ratio_1m: f64,
    /// Ratio over the last 10 minutes (0 without traffic).
    pub ratio_10m: f64,
    /// All responses in the last minute.
    pub n_1m: u64,
    /// Matching responses in the last minute.
    pub k_1m: u64,
}

#[derive(Debug, Clone)]
struct ActiveSpike {
    stats: SpikeStats,
    /// Cumulative counts just before `started_at`, to total the episode.
    base_n: u64,
    base_k: u64,
    /// Longest window that judges "still elevated".
    clear_window: u64,
    /// Ratio the spike must stay significantly above to remain active.
    clear_ratio: f64,
    /// Consecutive quiet seconds needed to end (grows when flapping).
    clear_needed: u64,
}

/// Spike detector for one route × signal. See the module docs for the method.
///
/// Memory is one fixed ring of 602 × 8 bytes allocated in [`Detector::new`];
/// [`Detector::observe`] never allocates.
#[derive(Debug, Clone)]
pub struct Detector {
    config: DetectorConfig,
    /// Per-second decay factor of the baseline.
    lambda: f64,
    ln_inv_p_value: f64,
    /// Cumulative (n, k) through the end of second `s`, at `s % RING`, kept
    /// modulo 2^32: differences stay exact while a 10-minute window holds
    /// fewer than 2^32 responses (7 million req/s), and it halves the memory.
    ring: Box<[(u32, u32)]>,
    /// False until the first observation fixes the time origin.
    initialised: bool,
    first_t: u64,
    cur_t: u64,
    /// Cumulative (n, k) through now.
    tot_n: u64,
    tot_k: u64,
    /// One baseline per entry of `WINDOWS`, fed with the seconds leaving it.
    baselines: [Baseline; 3],
    /// Seconds before this never enter a baseline (they were part of a spike).
    fold_from: u64,
    /// Windows ignore seconds before this: after a spike ends its data cannot
    /// start the next one.
    evidence_from: u64,
    /// Matching responses arrived that no start test has looked at yet.
    pending_start_check: bool,
    active: Option<ActiveSpike>,
    /// First second of the current run of not-elevated seconds (while active).
    quiet_since: Option<u64>,
    last_end: Option<u64>,
    flap_level: u32,
}

impl Detector {
    /// Creates a detector with an empty history.
    ///
    /// # Panics
    ///
    /// If `config` is invalid; call [`DetectorConfig::validate`] (or
    /// [`Detector::try_new`]) when the configuration comes from users.
    pub fn new(config: DetectorConfig) -> Self {
        match Self::try_new(config) {
            Ok(d) => d,
            Err(e) => panic!("invalid DetectorConfig: {e}"),
        }
    }

    /// Creates a detector with an empty history.
    ///
    /// # Errors
    ///
    /// The [`DetectorConfig::validate`] message if `config` is invalid.
    pub fn try_new(config: DetectorConfig) -> Result<Self, InvalidThreshold> {
        config.validate()?;
        Ok(Self {
            lambda: 0.5f64.powf(1.0 / config.baseline_half_life_secs),
            ln_inv_p_value: -config.p_value.ln(),
            config,
            ring: vec![(0, 0); RING].into_boxed_slice(),
            initialised: false,
            first_t: 0,
            cur_t: 0,
            tot_n: 0,
            tot_k: 0,
            baselines: [Baseline::default(); 3],
            fold_from: 0,
            evidence_from: 0,
            pending_start_check: false,
            active: None,
            quiet_since: None,
            last_end: None,
            flap_level: 0,
        })
    }

    /// The configuration this detector runs with.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Takes new thresholds and keeps everything learnt: windows, baselines and any
    /// active spike, whose clear level is worked out again from its firing window's
    /// (frozen) baseline under the new thresholds — so a better `prior_ratio` can end a
    /// spike a fresh detector raised over a route's normal level. A new half-life
    /// applies to the decay from now on; the quiet time an active spike needs stays.
    ///
    /// # Errors
    ///
    /// The [`DetectorConfig::validate`] message if `config` is invalid; the detector
    /// is then unchanged.
    pub fn reconfigure(&mut self, config: DetectorConfig) -> Result<(), InvalidThreshold> {
        config.validate()?;
        self.lambda = 0.5f64.powf(1.0 / config.baseline_half_life_secs);
        self.ln_inv_p_value = -config.p_value.ln();
        self.config = config;
        if let Some(window) = self.active.as_ref().map(|a| a.stats.window_secs) {
            let i = WINDOWS.iter().position(|&w| w == window).expect("a window");
            let clear_ratio = self.levels(i).2;
            self.active.as_mut().expect("checked").clear_ratio = clear_ratio;
        }
        Ok(())
    }

    /// Feed the counts of one whole second `t` (unix seconds, monotonically
    /// non-decreasing; equal t adds to the same second) and evaluate. Returns a
    /// transition if the state changed.
    ///
    /// Skipped seconds count as seconds without traffic, in O(min(gap, 602))
    /// time; a spike may end inside the gap (its `ended_at` is then the second
    /// it would have ended had every second been observed). A `t` earlier than
    /// the current second is treated as the current second, and `k > n` is
    /// clamped to `n`. Starts are only tested on calls that bring matching
    /// responses, because a window can only become newly suspicious through
    /// them (and that keeps skipped seconds from ever starting a spike).
    pub fn observe(&mut self, t: u64, n: u64, k: u64) -> Option<Transition> {
        let k = k.min(n);
        let mut transition = None;
        if !self.initialised {
            self.initialised = true;
            self.first_t = t;
            self.cur_t = t;
            self.fold_from = t;
            self.evidence_from = t;
        } else if t > self.cur_t {
            transition = self.skip_empty_seconds(t - self.cur_t - 1);
            self.advance_one();
        }
        self.tot_n = self.tot_n.wrapping_add(n);
        self.tot_k = self.tot_k.wrapping_add(k);
        self.ring[slot(self.cur_t)] = self.tot_mod();
        if k > 0 {
            self.pending_start_check = true;
        }
        if transition.is_some() {
            // One transition per call: a start check still pending is run by
            // the next call, which sees the same data.
            return transition;
        }
        self.evaluate(true)
    }

    /// Convenience for tests: one outcome at time t (a batched
    /// `observe(t, 1, matched as u64)`).
    pub fn record(&mut self, t: u64, matched: bool) -> Option<Transition> {
        self.observe(t, 1, u64::from(matched))
    }

    /// Whether a spike is active.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// The active spike's evidence, if any.
    pub fn spike(&self) -> Option<&SpikeStats> {
        self.active.as_ref().map(|a| &a.stats)
    }

    /// Current baseline ratio p0 (the one behind the 10-minute window, i.e.
    /// traffic from more than 10 minutes ago).
    pub fn baseline(&self) -> f64 {
        self.baselines[2].ratio(&self.config)
    }

    /// Upper confidence bound of [`Detector::baseline`], the form the tests
    /// use; close to it once there is plenty of history.
    pub fn baseline_upper(&self) -> f64 {
        self.baselines[2].upper(&self.config)
    }

    /// Snapshot for the JSON API / metrics.
    pub fn snapshot(&self) -> Snapshot {
        let ratio = |(n, k): (u64, u64)| if n == 0 { 0.0 } else { k as f64 / n as f64 };
        let w1m = self.window(60, self.first_t);
        Snapshot {
            active: self.is_active(),
            baseline: self.baseline(),
            ratio_10s: ratio(self.window(10, self.first_t)),
            ratio_1m: ratio(w1m),
            ratio_10m: ratio(self.window(600, self.first_t)),
            n_1m: w1m.0,
            k_1m: w1m.1,
        }
    }

    /// Cumulative (n, k) through the end of second `s`; valid for the last
    /// `RING` seconds, and zero before the first observation.
    fn cum_through(&self, s: u64) -> (u32, u32) {
        if !self.initialised || s < self.first_t {
            (0, 0)
        } else {
            self.ring[slot(s)]
        }
    }

    /// Cumulative (n, k) through the end of second `s - 1`.
    fn cum_before(&self, s: u64) -> (u32, u32) {
        if s <= self.first_t {
            (0, 0)
        } else {
            self.cum_through(s - 1)
        }
    }

    /// (n, k) over the last `len` seconds including the current one, ignoring
    /// seconds before `from`.
    fn window(&self, len: u64, from: u64) -> (u64, u64) {
        let start = self
            .cur_t
            .saturating_sub(len.saturating_sub(1))
            .max(from)
            .max(self.first_t);
        self.since(start)
    }

    /// (n, k) from the start of second `s` (within the ring) through now.
    fn since(&self, s: u64) -> (u64, u64) {
        let (bn, bk) = self.cum_before(s);
        let (tn, tk) = self.tot_mod();
        (
            u64::from(tn.wrapping_sub(bn)),
            u64::from(tk.wrapping_sub(bk)),
        )
    }

    /// The running totals as stored in the ring (truncation is the intended
    /// reduction modulo 2^32).
    fn tot_mod(&self) -> (u32, u32) {
        (self.tot_n as u32, self.tot_k as u32)
    }

    /// Moves to the next second: folds the seconds leaving each window into
    /// that window's baseline (unless frozen) and opens an empty slot.
    fn advance_one(&mut self) {
        let t = self.cur_t + 1;
        if self.active.is_none() {
            for (i, &w) in WINDOWS.iter().enumerate() {
                let (mut n, mut k) = (0, 0);
                if let Some(s) = t.checked_sub(w) {
                    if s >= self.first_t && s >= self.fold_from {
                        let (n1, k1) = self.cum_through(s);
                        let (n0, k0) = self.cum_before(s);
                        n = n1.wrapping_sub(n0);
                        k = k1.wrapping_sub(k0);
                    }
                }
                self.baselines[i].fold(self.lambda, n, k);
            }
        }
        self.cur_t = t;
        self.ring[slot(t)] = self.tot_mod();
    }

    /// Advances over `count` seconds without traffic, evaluating each as if it
    /// had been observed with zero counts. Only an end can happen in them.
    fn skip_empty_seconds(&mut self, count: u64) -> Option<Transition> {
        let mut transition = None;
        let stepped = count.min(RING as u64);
        for _ in 0..stepped {
            self.advance_one();
            if self.active.is_some() {
                if let Some(tr) = self.evaluate(false) {
                    transition = Some(tr);
                }
            }
        }
        let rest = count - stepped;
        if rest == 0 {
            return transition;
        }
        // Every slot of the ring now holds the same cumulative counts: all
        // windows are empty and nothing is left to fold, so the remaining
        // seconds only decay the baseline and may complete a quiet run.
        let target = self.cur_t.saturating_add(rest);
        let mut decay_secs = rest;
        if let Some(active) = &self.active {
            let quiet_since = self.quiet_since.unwrap_or(self.cur_t + 1);
            let end_at = quiet_since.saturating_add(active.clear_needed - 1);
            if end_at <= target {
                self.cur_t = end_at;
                transition = Some(self.end(end_at));
                decay_secs = target - end_at;
            } else {
                decay_secs = 0;
            }
        }
        let decay = self.lambda.powf(decay_secs as f64);
        for b in &mut self.baselines {
            b.s_n *= decay;
            b.s_k *= decay;
        }
        self.cur_t = target;
        transition
    }

    /// For window `i`: the reference ratio, the ratio a spike must reach and the one it
    /// must stay significantly above to last, from that window's baseline.
    fn levels(&self, i: usize) -> (f64, f64, f64) {
        let p_ref = self.baselines[i].upper(&self.config);
        // `min_factor` times a high baseline would ask for more than 100% (3 × 34%):
        // such a signal could never fire, not even at a total outage. The factor's
        // part stops halfway from the baseline to 100%.
        let factor = (self.config.min_factor * p_ref).min(p_ref + (1.0 - p_ref) / 2.0);
        let threshold = self.config.min_ratio.max(factor);
        // The spike lasts while traffic is significantly above half the threshold:
        // well under the firing level, so one dip does not end it. But half of a
        // threshold below 3 × p_ref (capped for a high baseline, or a small
        // `min_factor`) lies at or under the baseline itself, where normal traffic
        // would keep it elevated for ever; there a quarter of the way from the
        // baseline to the threshold, which is where half lands at exactly 3 × p_ref.
        let clear_ratio = (threshold / 2.0).max(p_ref + (threshold - p_ref) / 4.0);
        (p_ref, threshold, clear_ratio)
    }

    fn evaluate(&mut self, allow_start: bool) -> Option<Transition> {
        if let Some(active) = &self.active {
            let elevated = WINDOWS
                .iter()
                .filter(|&&w| w <= active.clear_window)
                .any(|&w| {
                    let (n, k) = self.window(w, self.evidence_from);
                    is_elevated(n, k, active.clear_ratio)
                });
            if elevated {
                self.quiet_since = None;
                return None;
            }
            let since = *self.quiet_since.get_or_insert(self.cur_t);
            if self.cur_t - since + 1 >= active.clear_needed {
                return Some(self.end(self.cur_t));
            }
            return None;
        }
        if !(allow_start && self.pending_start_check) {
            return None;
        }
        self.pending_start_check = false;
        for (i, &w) in WINDOWS.iter().enumerate() {
            let (n, k) = self.window(w, self.evidence_from);
            if k < self.config.min_events || n == 0 {
                continue;
            }
            let (p_ref, threshold, clear_ratio) = self.levels(i);
            let ratio = k as f64 / n as f64;
            if ratio < threshold || n as f64 * kl_bernoulli(ratio, p_ref) < self.ln_inv_p_value {
                continue;
            }
            let p0 = self.baselines[i].ratio(&self.config);
            return Some(self.start(w, n, k, ratio, p0, clear_ratio));
        }
        None
    }

    fn start(
        &mut self,
        window_secs: u64,
        n: u64,
        k: u64,
        ratio: f64,
        p0: f64,
        clear_ratio: f64,
    ) -> Transition {
        let t = self.cur_t;
        let flapping = self
            .last_end
            .is_some_and(|e| t.saturating_sub(e) < FLAP_WINDOW_SECS);
        self.flap_level = if flapping {
            (self.flap_level + 1).min(MAX_FLAP_LEVEL)
        } else {
            0
        };
        let (cur_n, cur_k) = self.since(t);
        let (base_n, base_k) = (
            self.tot_n.wrapping_sub(cur_n),
            self.tot_k.wrapping_sub(cur_k),
        );
        let stats = SpikeStats {
            window_secs,
            n,
            k,
            ratio,
            baseline: p0,
            started_at: t,
            ended_at: None,
        };
        self.active = Some(ActiveSpike {
            stats: stats.clone(),
            base_n,
            base_k,
            clear_window: window_secs.max(CLEAR_MIN_WINDOW),
            clear_ratio,
            clear_needed: self
                .config
                .clear_after_secs
                .saturating_mul(1u64 << self.flap_level),
        });
        self.quiet_since = None;
        Transition::Started(stats)
    }

    fn end(&mut self, t: u64) -> Transition {
        let active = self
            .active
            .take()
            .expect("end() is only called with an active spike");
        let n = self.tot_n.wrapping_sub(active.base_n);
        let k = self.tot_k.wrapping_sub(active.base_k);
        self.quiet_since = None;
        self.last_end = Some(t);
        // Everything up to now is spike data (or its tail): keep it out of both
        // the baseline and the evidence for the next spike.
        self.fold_from = t;
        self.evidence_from = t;
        Transition::Ended(SpikeStats {
            n,
            k,
            ratio: if n == 0 { 0.0 } else { k as f64 / n as f64 },
            ended_at: Some(t),
            ..active.stats
        })
    }
}

/// Exponentially decayed counts behind one window.
#[derive(Debug, Clone, Copy, Default)]
struct Baseline {
    s_n: f64,
    s_k: f64,
}

impl Baseline {
    fn fold(&mut self, lambda: f64, n: u32, k: u32) {
        self.s_n = lambda * self.s_n + f64::from(n);
        self.s_k = lambda * self.s_k + f64::from(k);
    }

    /// p0: the decayed ratio, pulled towards the prior. Always inside (0, 1)
    /// because `prior_ratio` is and `s_k <= s_n`.
    fn ratio(&self, config: &DetectorConfig) -> f64 {
        let w = config.prior_weight;
        (self.s_k + config.prior_ratio * w) / (self.s_n + w)
    }

    fn upper(&self, config: &DetectorConfig) -> f64 {
        wilson_upper(
            self.ratio(config),
            self.s_n + config.prior_weight,
            BASELINE_UCB_Z,
        )
    }
}

fn slot(t: u64) -> usize {
    (t % RING as u64) as usize
}

/// Whether `k` of `n` is significantly (one-sided 1 %) above `ratio`.
fn is_elevated(n: u64, k: u64, ratio: f64) -> bool {
    if n == 0 {
        return false;
    }
    let r = k as f64 / n as f64;
    r > ratio && ratio < 1.0 && n as f64 * kl_bernoulli(r, ratio) >= ELEVATED_LN_INV_P
}

/// KL divergence of Bernoulli(r) from Bernoulli(p), for r in [0, 1] and p in
/// (0, 1); the 0·ln 0 terms are taken as 0 so r = 0 and r = 1 are finite.
fn kl_bernoulli(r: f64, p: f64) -> f64 {
    let p = p.clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON);
    let a = if r > 0.0 { r * (r / p).ln() } else { 0.0 };
    let b = if r < 1.0 {
        (1.0 - r) * ((1.0 - r) / (1.0 - p)).ln()
    } else {
        0.0
    };
    (a + b).max(0.0)
}

/// Wilson score upper bound for a proportion `p` estimated from weight `n`.
fn wilson_upper(p: f64, n: f64, z: f64) -> f64 {
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let margin = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // max/min rather than clamp: clamp would panic if p itself rounds above
    // the upper limit.
    ((centre + margin) / (1.0 + z2 / n))
        .max(p)
        .min(1.0 - f64::EPSILON)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xoshiro256** seeded through splitmix64: small, fast, reproducible.
    struct Rng([u64; 4]);

    impl Rng {
        fn new(seed: u64) -> Self {
            let mut next = crate::testrng::splitmix64(seed);
            Rng([next(), next(), next(), next()])
        }

        fn next_u64(&mut self) -> u64 {
            let s = &mut self.0;
            let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
            let t = s[1] << 17;
            s[2] ^= s[0];
            s[3] ^= s[1];
            s[1] ^= s[2];
            s[0] ^= s[3];
            s[2] ^= t;
            s[3] = s[3].rotate_left(45);
            result
        }

        fn unit(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
        }

        fn bernoulli(&mut self, p: f64) -> bool {
            self.unit() < p
        }

        fn binomial(&mut self, n: u64, p: f64) -> u64 {
            (0..n).filter(|_| self.bernoulli(p)).count() as u64
        }

        /// Poisson by multiplication for small means; for large means the
        /// exact arrival count hardly matters, so a rounded normal will do.
        fn poisson(&mut self, mean: f64) -> u64 {
            if mean < 30.0 {
                let limit = (-mean).exp();
                let mut prod = self.unit();
                let mut n = 0;
                while prod > limit {
                    prod *= self.unit();
                    n += 1;
                }
                n
            } else {
                let (u1, u2) = (self.unit().max(f64::MIN_POSITIVE), self.unit());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                (mean + mean.sqrt() * z).round().max(0.0) as u64
            }
        }
    }

    /// Feeds seconds `from..to` with Poisson(rate) requests each matching with
    /// probability `p`; returns the transitions with the second they came at.
    fn run(
        d: &mut Detector,
        rng: &mut Rng,
        from: u64,
        to: u64,
        rate: f64,
        p: f64,
    ) -> Vec<(u64, Transition)> {
        let mut out = Vec::new();
        for t in from..to {
            let n = rng.poisson(rate);
            let k = rng.binomial(n, p);
            if let Some(tr) = d.observe(t, n, k) {
                out.push((t, tr));
            }
        }
        out
    }

    fn starts(trs: &[(u64, Transition)]) -> Vec<u64> {
        trs.iter()
            .filter_map(|(_, tr)| match tr {
                Transition::Started(s) => Some(s.started_at),
                Transition::Ended(_) => None,
            })
            .collect()
    }

    fn ends(trs: &[(u64, Transition)]) -> Vec<u64> {
        trs.iter()
            .filter_map(|(_, tr)| match tr {
                Transition::Ended(s) => s.ended_at,
                Transition::Started(_) => None,
            })
            .collect()
    }

    fn detector() -> Detector {
        Detector::new(DetectorConfig::default())
    }

    const T0: u64 = 1_700_000_000;

    #[test]
    fn defaults_are_valid_and_match_the_spec() {
        let c = DetectorConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.min_events, 5);
        assert_eq!(c.clear_after_secs, 30);
        let d = detector();
        // No history: the prior alone, (0 + 1) / (0 + 100).
        assert!((d.baseline() - 0.01).abs() < 1e-12);
        assert!(d.baseline_upper() > 0.05 && d.baseline_upper() < 0.15);
    }

    #[test]
    fn steady_then_jump_then_recover() {
        let mut rng = Rng::new(1);
        let mut d = detector();
        let warm_end = T0 + 20 * 60;
        let before = run(&mut d, &mut rng, T0, warm_end, 10.0, 0.02);
        assert!(
            before.is_empty(),
            "false alarm during steady 2 %: {before:?}"
        );
        assert!(
            (d.baseline() - 0.02).abs() < 0.01,
            "baseline {}",
            d.baseline()
        );

        let spike_end = warm_end + 5 * 60;
        let during = run(&mut d, &mut rng, warm_end, spike_end, 10.0, 0.40);
        let s = starts(&during);
        assert_eq!(s.len(), 1, "{during:?}");
        assert!(
            s[0] - warm_end <= 10,
            "detected after {} s",
            s[0] - warm_end
        );
        assert!(ends(&during).is_empty());
        assert!(d.is_active());

        let after = run(&mut d, &mut rng, spike_end, spike_end + 30 * 60, 10.0, 0.02);
        let e = ends(&after);
        assert_eq!(e.len(), 1, "{after:?}");
        assert!(starts(&after).is_empty(), "{after:?}");
        // Bound: the 1 min window drains (<= 60 s) plus clear_after (30 s).
        let clear = e[0] - spike_end;
        assert!((30..=90).contains(&clear), "cleared after {clear} s");
        match &after[0].1 {
            Transition::Ended(st) => {
                assert_eq!(st.started_at, s[0]);
                assert!(
                    st.ratio > 0.2 && st.ratio < 0.4,
                    "episode ratio {}",
                    st.ratio
                );
                assert_eq!(st.duration_secs(0), e[0] - s[0]);
            }
            other => panic!("expected Ended, got {other:?}"),
        }
    }

    fn warm_then_outage(rate: f64, seed: u64) -> u64 {
        let mut rng = Rng::new(seed);
        let mut d = detector();
        let warm_end = T0 + 20 * 60;
        assert!(run(&mut d, &mut rng, T0, warm_end, rate, 0.02).is_empty());
        let out = run(&mut d, &mut rng, warm_end, warm_end + 60, rate, 1.0);
        let s = starts(&out);
        assert_eq!(s.len(), 1, "{out:?}");
        s[0] - warm_end
    }

    #[test]
    fn outage_is_detected_within_5s_at_10_rps_and_2s_at_1000_rps() {
        for seed in 1..=5 {
            let delay = warm_then_outage(10.0, seed);
            assert!(delay <= 5, "10 req/s: {delay} s");
        }
        let delay = warm_then_outage(1000.0, 7);
        assert!(delay <= 2, "1000 req/s: {delay} s");
    }

    #[test]
    fn cold_start_healthy_api_never_flags() {
        for (seed, p) in [(3, 0.02), (4, 0.05), (5, 0.005)] {
            let mut rng = Rng::new(seed);
            let mut d = detector();
            let trs = run(&mut d, &mut rng, T0, T0 + 3600, 10.0, p);
            assert!(trs.is_empty(), "p = {p}: {trs:?}");
        }
        // Above min_ratio at high traffic: only the cold-start upper bound
        // keeps this quiet until the baseline has learnt the level.
        let mut rng = Rng::new(6);
        let mut d = detector();
        let trs = run(&mut d, &mut rng, T0, T0 + 1800, 1000.0, 0.06);
        assert!(trs.is_empty(), "{trs:?}");
    }

    #[test]
    fn cold_start_broken_api_flags_quickly() {
        for rate in [1.0, 10.0, 1000.0] {
            let mut rng = Rng::new(8);
            let mut d = detector();
            let trs = run(&mut d, &mut rng, T0, T0 + 60, rate, 1.0);
            let s = starts(&trs);
            assert_eq!(s.len(), 1, "rate {rate}: {trs:?}");
            let limit = if rate >= 10.0 { 5 } else { 15 };
            assert!(s[0] - T0 <= limit, "rate {rate}: {} s", s[0] - T0);
        }
    }

    #[test]
    fn a_high_normal_ratio_needs_a_matching_prior() {
        // 35 % is this route's normal: the default prior (1 %) cannot know
        // that, so a fresh detector flags it...
        let mut rng = Rng::new(15);
        let mut d = detector();
        let trs = run(&mut d, &mut rng, T0, T0 + 60, 1000.0, 0.35);
        assert_eq!(starts(&trs).len(), 1, "{trs:?}");
        // ...while a prior near the normal level keeps it quiet.
        let config = DetectorConfig {
            prior_ratio: 0.3,
            ..Default::default()
        };
        let mut d = Detector::new(config);
        let trs = run(&mut d, &mut rng, T0, T0 + 1800, 100.0, 0.35);
        assert!(trs.is_empty(), "{trs:?}");
        // ...and an outage still fires: 3 × 35% would ask for more than 100%, so the
        // factor's part of the threshold stops halfway to 100%.
        let trs = run(&mut d, &mut rng, T0 + 1800, T0 + 1830, 100.0, 1.0);
        assert_eq!(starts(&trs).len(), 1, "{trs:?}");
        assert!(starts(&trs)[0] <= T0 + 1810, "{trs:?}");
        // ...and ends once the route is back to its normal 35%, busier now: half of
        // that capped threshold (~34%) lies just under the normal, which 1,000 req/s
        // would show as significantly elevated for ever.
        let trs = run(&mut d, &mut rng, T0 + 1830, T0 + 1830 + 600, 1000.0, 0.35);
        assert_eq!(ends(&trs).len(), 1, "{trs:?}");
        assert!(starts(&trs).is_empty(), "{trs:?}");
        assert!(!d.is_active());
    }

    #[test]
    fn a_better_prior_on_reload_ends_a_spike_raised_over_the_normal_level() {
        // 35 % is normal; a fresh detector flags it and, its baseline frozen at the
        // prior, would keep the spike for good.
        let mut rng = Rng::new(15);
        let mut d = detector();
        assert_eq!(
            starts(&run(&mut d, &mut rng, T0, T0 + 60, 1000.0, 0.35)).len(),
            1
        );
        assert!(run(&mut d, &mut rng, T0 + 60, T0 + 600, 1000.0, 0.35).is_empty());
        assert!(d.is_active());
        // The operator reloads with the route's normal level as its prior.
        d.reconfigure(DetectorConfig {
            prior_ratio: 0.3,
            ..Default::default()
        })
        .unwrap();
        let trs = run(&mut d, &mut rng, T0 + 600, T0 + 1800, 1000.0, 0.35);
        assert_eq!(ends(&trs).len(), 1, "{trs:?}");
        assert!(ends(&trs)[0] <= T0 + 600 + 60, "{trs:?}");
        assert!(starts(&trs).is_empty(), "{trs:?}");
        // What it learnt stays: a real outage still fires.
        let trs = run(&mut d, &mut rng, T0 + 1800, T0 + 1830, 1000.0, 1.0);
        assert_eq!(starts(&trs).len(), 1, "{trs:?}");
        // An invalid configuration changes nothing.
        assert!(d
            .reconfigure(DetectorConfig {
                p_value: 2.0,
                ..Default::default()
            })
            .is_err());
        assert_eq!(d.config().prior_ratio, 0.3);
    }

    #[test]
    fn a_spike_over_a_half_error_normal_ends_when_it_does() {
        // 50% 401s is this route's normal (a client retrying with a stale token
        // beside a working one), learnt for 30 minutes at 10 req/s.
        let mut rng = Rng::new(21);
        let mut d = Detector::new(DetectorConfig {
            prior_ratio: 0.5,
            ..Default::default()
        });
        assert!(run(&mut d, &mut rng, T0, T0 + 1800, 10.0, 0.5).is_empty());
        let trs = run(&mut d, &mut rng, T0 + 1800, T0 + 1860, 10.0, 1.0);
        assert_eq!(starts(&trs).len(), 1, "{trs:?}");
        let trs = run(&mut d, &mut rng, T0 + 1860, T0 + 1860 + 600, 10.0, 0.5);
        assert_eq!(ends(&trs).len(), 1, "{trs:?}");
        assert!(ends(&trs)[0] < T0 + 1860 + 300, "{trs:?}");
        assert!(!d.is_active());
    }

    #[test]
    fn a_lone_matched_response_among_a_handful_is_ignored() {
        let mut d = detector();
        // 0.1 req/s: one response every 10 s, every 4th one matching.
        for i in 0..360u64 {
            let t = T0 + i * 10;
            assert_eq!(d.record(t, i % 4 == 0), None, "at i = {i}");
        }
        assert!(!d.is_active());
    }

    #[test]
    fn flapping_produces_few_events() {
        let mut rng = Rng::new(9);
        let mut d = detector();
        let warm_end = T0 + 20 * 60;
        assert!(run(&mut d, &mut rng, T0, warm_end, 10.0, 0.02).is_empty());
        let mut trs = Vec::new();
        for cycle in 0..30u64 {
            let t = warm_end + cycle * 20;
            trs.extend(run(&mut d, &mut rng, t, t + 10, 10.0, 0.40));
            trs.extend(run(&mut d, &mut rng, t + 10, t + 20, 10.0, 0.02));
        }
        let s = starts(&trs);
        assert!((1..=2).contains(&s.len()), "{trs:?}");

        // Slower flapping (100 s bad / 100 s good for an hour): the growing
        // quiet requirement merges it into a few spikes.
        let mut trs = Vec::new();
        let from = warm_end + 600 + 3600;
        trs.extend(run(&mut d, &mut rng, warm_end + 600, from, 10.0, 0.02));
        for cycle in 0..18u64 {
            let t = from + cycle * 200;
            trs.extend(run(&mut d, &mut rng, t, t + 100, 10.0, 0.40));
            trs.extend(run(&mut d, &mut rng, t + 100, t + 200, 10.0, 0.02));
        }
        let s = starts(&trs);
        assert!((1..=4).contains(&s.len()), "{} starts: {s:?}", s.len());
    }

    #[test]
    fn baseline_is_frozen_while_active() {
        let mut rng = Rng::new(10);
        let mut d = detector();
        let warm_end = T0 + 3600;
        assert!(run(&mut d, &mut rng, T0, warm_end, 10.0, 0.02).is_empty());
        let before = d.baseline();
        let trs = run(&mut d, &mut rng, warm_end, warm_end + 60, 10.0, 0.40);
        assert_eq!(starts(&trs).len(), 1);
        let at_start = d.baseline();
        // The few seconds before detection moved it only by ordinary decay
        // (the lag keeps the spike out).
        assert!((at_start - before).abs() < 1e-4, "{at_start} vs {before}");
        let trs = run(&mut d, &mut rng, warm_end + 60, warm_end + 1800, 10.0, 0.40);
        assert!(trs.is_empty());
        assert!(d.is_active());
        assert_eq!(d.baseline(), at_start);
        // And the spike's seconds stay out of it after the end too.
        let trs = run(
            &mut d,
            &mut rng,
            warm_end + 1800,
            warm_end + 3600,
            10.0,
            0.02,
        );
        assert_eq!(ends(&trs).len(), 1);
        assert!(
            (d.baseline() - before).abs() < 0.005,
            "{} vs {before}",
            d.baseline()
        );
    }

    #[test]
    fn validate_names_the_field() {
        let cases: Vec<(DetectorConfig, &str)> = vec![
            (
                DetectorConfig {
                    min_events: 0,
                    ..Default::default()
                },
                "min_events",
            ),
            (
                DetectorConfig {
                    min_ratio: -0.1,
                    ..Default::default()
                },
                "min_ratio",
            ),
            (
                DetectorConfig {
                    min_ratio: f64::NAN,
                    ..Default::default()
                },
                "min_ratio",
            ),
            (
                DetectorConfig {
                    min_factor: 0.5,
                    ..Default::default()
                },
                "min_factor",
            ),
            (
                DetectorConfig {
                    min_factor: f64::INFINITY,
                    ..Default::default()
                },
                "min_factor",
            ),
            (
                DetectorConfig {
                    p_value: 0.0,
                    ..Default::default()
                },
                "p_value",
            ),
            (
                DetectorConfig {
                    p_value: f64::NAN,
                    ..Default::default()
                },
                "p_value",
            ),
            (
                DetectorConfig {
                    baseline_half_life_secs: 0.0,
                    ..Default::default()
                },
                "baseline_half_life",
            ),
            (
                DetectorConfig {
                    prior_ratio: 0.0,
                    ..Default::default()
                },
                "prior_ratio",
            ),
            (
                DetectorConfig {
                    prior_ratio: 1.0,
                    ..Default::default()
                },
                "prior_ratio",
            ),
            (
                DetectorConfig {
                    prior_weight: -1.0,
                    ..Default::default()
                },
                "prior_weight",
            ),
            (
                DetectorConfig {
                    clear_after_secs: 0,
                    ..Default::default()
                },
                "clear_after",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().expect_err(field);
            assert_eq!(err.key, field, "{err}");
            assert!(Detector::try_new(config).is_err());
        }
        let bad = DetectorConfig {
            p_value: 2.0,
            ..Default::default()
        };
        assert_eq!(
            bad.validate().map_err(|e| e.to_string()),
            Err("p_value must be in (0, 1), got 2".to_string())
        );
    }

    #[test]
    #[should_panic(expected = "p_value")]
    fn new_panics_on_invalid_config() {
        let _ = Detector::new(DetectorConfig {
            p_value: 2.0,
            ..Default::default()
        });
    }

    #[test]
    fn huge_gaps_are_fast_and_sane() {
        let mut rng = Rng::new(11);
        let mut d = detector();
        assert!(run(&mut d, &mut rng, T0, T0 + 3600, 10.0, 0.02).is_empty());
        let learnt = d.baseline();
        assert_eq!(d.observe(T0 + 3600 + 100_000, 10, 0), None);
        // ~28 half-lives of silence: back to the prior.
        assert!(
            (d.baseline() - 0.01).abs() < 0.001,
            "{} (was {learnt})",
            d.baseline()
        );
        let snap = d.snapshot();
        assert_eq!((snap.n_1m, snap.k_1m), (10, 0));
        // Would take hours if the gap were walked second by second.
        assert_eq!(d.observe(u64::MAX - 5, 10, 0), None);
        assert_eq!(d.snapshot().n_1m, 10);
        assert_eq!(d.observe(u64::MAX, 10, 0), None);
        assert_eq!(d.snapshot().n_1m, 20);
    }

    #[test]
    fn a_gap_ends_an_active_spike_at_the_right_second() {
        let mut rng = Rng::new(12);
        let mut d = detector();
        let warm_end = T0 + 3600;
        assert!(run(&mut d, &mut rng, T0, warm_end, 10.0, 0.02).is_empty());
        let before = d.baseline();
        let trs = run(&mut d, &mut rng, warm_end, warm_end + 120, 10.0, 1.0);
        assert_eq!(starts(&trs).len(), 1);
        let last = warm_end + 119;
        match d.observe(last + 100_000, 10, 0) {
            Some(Transition::Ended(st)) => {
                // The 1 min window empties 60 s into the silence, then 30 quiet s.
                assert_eq!(st.ended_at, Some(last + 60 + 29));
                assert!(st.ratio > 0.9);
            }
            other => panic!("expected Ended, got {other:?}"),
        }
        assert!(!d.is_active());
        // Frozen until the end, then decayed towards the prior.
        assert!(d.baseline() < before && d.baseline() > 0.009);
    }

    /// Skipping seconds must give exactly what zero-count ticks would give.
    #[test]
    fn gaps_match_explicit_empty_ticks() {
        for gap in [
            1u64, 5, 59, 61, 89, 90, 91, 599, 600, 601, 602, 603, 700, 5000,
        ] {
            let mut rng = Rng::new(13);
            let mut a = detector();
            let warm_end = T0 + 1800;
            run(&mut a, &mut rng, T0, warm_end, 10.0, 0.02);
            run(&mut a, &mut rng, warm_end, warm_end + 40, 10.0, 0.5);
            assert!(a.is_active());
            let mut b = a.clone();
            let t = warm_end + 40;
            let mut ta = Vec::new();
            for s in t..t + gap {
                if let Some(tr) = a.observe(s, 0, 0) {
                    ta.push(tr);
                }
            }
            ta.extend(a.observe(t + gap, 7, 1));
            let tb: Vec<_> = b.observe(t + gap, 7, 1).into_iter().collect();
            assert_eq!(ta, tb, "gap {gap}");
            // The baseline is compared with a tolerance below: a decay by
            // λ^gap rounds differently from gap multiplications by λ.
            let (sa, sb) = (a.snapshot(), b.snapshot());
            assert_eq!(
                Snapshot {
                    baseline: 0.0,
                    ..sa
                },
                Snapshot {
                    baseline: 0.0,
                    ..sb
                },
                "gap {gap}"
            );
            let (ba, bb) = (a.baseline(), b.baseline());
            assert!((ba - bb).abs() <= 1e-12 * ba, "gap {gap}: {ba} vs {bb}");
        }
    }

    #[test]
    fn record_accumulates_within_a_second() {
        let mut rng = Rng::new(14);
        let mut batched = detector();
        let mut single = detector();
        let mut tb = Vec::new();
        let mut ts = Vec::new();
        for t in T0..T0 + 1500 {
            let p = if t >= T0 + 1200 { 0.5 } else { 0.02 };
            let n = rng.poisson(10.0);
            let outcomes: Vec<bool> = (0..n).map(|_| rng.bernoulli(p)).collect();
            let k = outcomes.iter().filter(|&&m| m).count() as u64;
            tb.extend(batched.observe(t, n, k));
            // Ticker convention: the counts of the second, then nothing else.
            for &m in &outcomes {
                ts.extend(single.record(t, m));
            }
            assert_eq!(batched.snapshot(), single.snapshot(), "t = {t}");
        }
        assert_eq!(starts_of(&tb).len(), 1, "{tb:?}");
        assert_eq!(starts_of(&ts).len(), 1, "{ts:?}");
        // Per-outcome evaluation can only fire earlier, never later.
        assert!(starts_of(&ts)[0] <= starts_of(&tb)[0]);
        assert_eq!(batched.baseline(), single.baseline());
    }

    fn starts_of(trs: &[Transition]) -> Vec<u64> {
        trs.iter()
            .filter_map(|tr| match tr {
                Transition::Started(s) => Some(s.started_at),
                Transition::Ended(_) => None,
            })
            .collect()
    }

    #[test]
    fn repeated_calls_in_one_second_do_not_duplicate_transitions() {
        let mut d = detector();
        let mut seen = Vec::new();
        for _ in 0..50 {
            seen.extend(d.record(T0, true));
        }
        assert_eq!(seen.len(), 1);
        assert!(matches!(seen[0], Transition::Started(_)));
        let mut seen = Vec::new();
        for t in T0 + 1..T0 + 400 {
            for _ in 0..10 {
                seen.extend(d.record(t, false));
            }
        }
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(matches!(seen[0], Transition::Ended(_)));
    }

    #[test]
    fn hysteresis_needs_clear_after_quiet_seconds() {
        let mut d = detector();
        assert!(matches!(
            d.observe(T0, 20, 20),
            Some(Transition::Started(_))
        ));
        // Traffic stops: the 1 min window still holds the outage for 59 s.
        let mut ended = None;
        for t in T0 + 1..T0 + 200 {
            if let Some(tr) = d.observe(t, 0, 0) {
                ended = Some((t, tr));
                break;
            }
        }
        let (t, tr) = ended.expect("should end");
        assert_eq!(t, T0 + 60 + 29);
        match tr {
            Transition::Ended(st) => {
                assert_eq!((st.n, st.k), (20, 20));
                assert_eq!(st.window_secs, 10);
                assert_eq!(st.ended_at, Some(t));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn old_spike_data_cannot_restart_a_spike() {
        let mut d = detector();
        assert!(d.observe(T0, 100, 100).is_some());
        let mut trs = Vec::new();
        for t in T0 + 1..T0 + 700 {
            // A trickle of healthy traffic with a rare match keeps the start
            // test running while the outage is still in the 10 min window.
            trs.extend(d.observe(t, 10, u64::from(t % 50 == 0)));
        }
        assert_eq!(trs.len(), 1, "{trs:?}");
        assert!(matches!(trs[0], Transition::Ended(_)));
    }

    #[test]
    fn odd_inputs_are_handled() {
        let mut d = detector();
        // k > n is clamped; time going backwards adds to the current second.
        assert_eq!(d.observe(100, 3, 9), None);
        assert_eq!(d.snapshot().k_1m, 3);
        assert!(matches!(d.observe(50, 5, 5), Some(Transition::Started(_))));
        assert_eq!((d.snapshot().n_1m, d.snapshot().k_1m), (8, 8));
        // Starting at t = 0 must not underflow.
        let mut d = detector();
        for t in 0..700 {
            d.observe(t, 1, 0);
        }
        assert_eq!(d.snapshot().n_1m, 60);
        assert!(!d.baseline().is_nan());
    }

    #[test]
    fn math_edges_are_finite() {
        assert_eq!(kl_bernoulli(0.0, 0.5), 2f64.ln());
        assert!((kl_bernoulli(1.0, 0.1) - 10f64.ln()).abs() < 1e-12);
        assert_eq!(kl_bernoulli(0.3, 0.3), 0.0);
        for p in [0.0, 1e-300, 1e-12, 0.5, 1.0 - 1e-12, 1.0] {
            for r in [0.0, 1e-9, 0.5, 1.0] {
                let v = kl_bernoulli(r, p);
                assert!(v.is_finite() && v >= 0.0, "kl({r}, {p}) = {v}");
            }
        }
        for (p, n) in [(1e-9, 1e9), (0.5, 1.0), (1.0 - 1e-15, 1e20), (0.01, 100.0)] {
            let u = wilson_upper(p, n, BASELINE_UCB_Z);
            assert!(u.is_finite() && u >= p && u < 1.0, "wilson({p}, {n}) = {u}");
        }
        // A baseline at ~100 % (everything always fails) must not fire or NaN.
        let mut d = detector();
        for t in T0..T0 + 5000 {
            d.observe(t, 100, 100);
        }
        assert!(d.baseline().is_finite() && d.snapshot().ratio_1m == 1.0);
    }

    #[test]
    fn ring_counters_survive_wrapping_past_u32() {
        let mut d = detector();
        // 10^6 req/s for 5000 s is 5·10^9 responses, past 2^32.
        for t in T0..T0 + 5000 {
            assert_eq!(d.observe(t, 1_000_000, 10_000), None);
        }
        let s = d.snapshot();
        assert_eq!((s.n_1m, s.k_1m), (60_000_000, 600_000));
        assert!((s.ratio_10m - 0.01).abs() < 1e-12);
        assert!((d.baseline() - 0.01).abs() < 1e-6);
        // An outage on top: episode totals are kept in 64 bits.
        let t = T0 + 5000;
        assert!(matches!(
            d.observe(t, 1_000_000, 1_000_000),
            Some(Transition::Started(_))
        ));
        let mut end = None;
        for t in t + 1..t + 200 {
            if let Some(tr) = d.observe(t, 1_000_000, 10_000) {
                end = Some(tr);
                break;
            }
        }
        match end {
            Some(Transition::Ended(st)) => {
                let secs = st.ended_at.unwrap() - st.started_at;
                assert_eq!(st.n, 1_000_000 * (secs + 1));
                assert_eq!(st.k, 1_000_000 + 10_000 * secs);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn snapshot_reports_windows() {
        let mut d = detector();
        for t in T0..T0 + 600 {
            d.observe(t, 10, u64::from(t >= T0 + 597));
        }
        let s = d.snapshot();
        assert!(!s.active);
        assert_eq!((s.n_1m, s.k_1m), (600, 3));
        assert!((s.ratio_10s - 0.03).abs() < 1e-12);
        assert!((s.ratio_1m - 3.0 / 600.0).abs() < 1e-12);
        assert!((s.ratio_10m - 3.0 / 6000.0).abs() < 1e-12);
    }

    /// Mini versions of the simulation harness (examples/simulate.rs).
    #[test]
    fn mini_simulation_noise_has_no_false_spikes() {
        let mut seed = 100;
        for p in [0.005, 0.02, 0.05] {
            for (rate, secs) in [(1.0, 7200), (10.0, 7200), (100.0, 3600), (1000.0, 1200)] {
                seed += 1;
                let mut rng = Rng::new(seed);
                let mut d = detector();
                let trs = run(&mut d, &mut rng, T0, T0 + secs, rate, p);
                assert!(trs.is_empty(), "p {p} rate {rate}: {trs:?}");
            }
        }
    }

    #[test]
    fn mini_simulation_steps_are_detected_and_cleared() {
        // (from, to, rate, max delay, max clear)
        let cases = [
            (0.02, 0.40, 10.0, 10, 90),
            (0.02, 0.40, 100.0, 10, 90),
            (0.0, 1.0, 10.0, 5, 90),
            (0.0, 1.0, 100.0, 5, 90),
            (0.0, 1.0, 1000.0, 2, 90),
            (0.02, 0.10, 10.0, 120, 700),
            (0.02, 0.10, 100.0, 30, 700),
        ];
        for (i, &(from, to, rate, max_delay, max_clear)) in cases.iter().enumerate() {
            let mut rng = Rng::new(200 + i as u64);
            let mut d = detector();
            let step = T0 + 1800;
            let warm = run(&mut d, &mut rng, T0, step, rate, from);
            assert!(warm.is_empty(), "{from}->{to} @ {rate}: {warm:?}");
            let recover = step + 600;
            let spike = run(&mut d, &mut rng, step, recover, rate, to);
            let s = starts(&spike);
            assert_eq!(s.len(), 1, "{from}->{to} @ {rate}: {spike:?}");
            assert!(
                s[0] - step <= max_delay,
                "{from}->{to} @ {rate}: {} s",
                s[0] - step
            );
            let after = run(&mut d, &mut rng, recover, recover + 1200, rate, from);
            let e = ends(&after);
            assert_eq!(e.len(), 1, "{from}->{to} @ {rate}: {after:?}");
            assert!(
                starts(&after).is_empty(),
                "{from}->{to} @ {rate}: {after:?}"
            );
            assert!(
                e[0] - recover <= max_clear,
                "{from}->{to} @ {rate}: clear {} s",
                e[0] - recover
            );
        }
    }
}
