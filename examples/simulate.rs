//! Simulation harness for the spike detector.
//!
//! `cargo run --release --example simulate` prints markdown tables:
//!
//! 1. false spikes under steady Bernoulli noise (fresh detector, no warm-up),
//! 2. detection delay and time to clear for step changes after an hour of
//!    warm-up,
//! 3. cold-start outages,
//! 4. flapping signals,
//! 5. fresh detectors in front of routes whose normal ratio is high.
//!
//! Traffic is Poisson per second (a rounded normal above 30 req/s) and each
//! response matches independently, so k is exactly binomial given n. Real
//! traffic is burstier than this; the tables show the detector's behaviour
//! under the model it was designed for, not a guarantee for every workload.

use std::time::Instant;

use statuslens::detect::detector::{Detector, DetectorConfig, Transition};

/// Any fixed start; only differences matter.
const T0: u64 = 1_700_000_000;

/// xoshiro256** seeded through splitmix64: no dependencies, reproducible.
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
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

    /// Exact Binomial(n, p) as a sum of Bernoullis; comparing raw integers
    /// against a precomputed threshold makes 1000 req/s for a day ~0.1 s.
    fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if p <= 0.0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        let threshold = (p * 18_446_744_073_709_551_616.0) as u64;
        (0..n).filter(|_| self.next_u64() < threshold).count() as u64
    }

    /// Poisson by multiplication for small means; above that the exact shape
    /// of the arrival count hardly matters, so a rounded normal will do.
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
            let u1 = self.unit().max(f64::MIN_POSITIVE);
            let u2 = self.unit();
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (mean + mean.sqrt() * z).round().max(0.0) as u64
        }
    }
}

/// What happened while feeding a stretch of seconds.
#[derive(Default)]
struct Events {
    starts: Vec<u64>,
    ends: Vec<u64>,
    active_secs: u64,
}

/// Feeds seconds `from..to` at `rate` req/s with match probability `p`.
fn feed(d: &mut Detector, rng: &mut Rng, from: u64, to: u64, rate: f64, p: f64) -> Events {
    let mut ev = Events::default();
    for t in from..to {
        let n = rng.poisson(rate);
        let k = rng.binomial(n, p);
        match d.observe(t, n, k) {
            Some(Transition::Started(s)) => ev.starts.push(s.started_at),
            Some(Transition::Ended(s)) => ev.ends.push(s.ended_at.unwrap_or(t)),
            None => {}
        }
        if d.is_active() {
            ev.active_secs += 1;
        }
    }
    ev
}

fn pct(p: f64) -> String {
    format!("{}%", p * 100.0)
}

/// Median and maximum, or "–" when nothing was measured.
fn med_max(v: &mut [u64]) -> (String, String) {
    if v.is_empty() {
        return ("–".into(), "–".into());
    }
    v.sort_unstable();
    (v[v.len() / 2].to_string(), v[v.len() - 1].to_string())
}

fn noise_table(config: &DetectorConfig) {
    const DAY: u64 = 86_400;
    const EXTRA_DAYS: u64 = 9;
    println!("## 1. False spikes under steady noise (fresh detector, no warm-up)\n");
    println!(
        "Each cell: Started events in the first 24 h (seed 1), then in {EXTRA_DAYS} more \
         independent 24 h runs, and the seconds spent active over all of them.\n"
    );
    println!("| baseline | req/s | false spikes, 24 h | false spikes, {EXTRA_DAYS} × 24 h more | active seconds |");
    println!("|---:|---:|---:|---:|---:|");
    for p in [0.005, 0.02, 0.05] {
        for rate in [1.0, 10.0, 100.0, 1000.0] {
            let mut first = 0;
            let mut more = 0;
            let mut active = 0;
            for seed in 1..=1 + EXTRA_DAYS {
                let mut rng = Rng::new(seed * 1000 + (p * 1e4) as u64 + rate as u64);
                let mut d = Detector::new(config.clone());
                let ev = feed(&mut d, &mut rng, T0, T0 + DAY, rate, p);
                if seed == 1 {
                    first = ev.starts.len();
                } else {
                    more += ev.starts.len();
                }
                active += ev.active_secs;
            }
            println!("| {} | {rate} | {first} | {more} | {active} |", pct(p));
        }
    }
    println!();
}

fn step_table(config: &DetectorConfig) {
    const SEEDS: u64 = 20;
    const WARM: u64 = 3600;
    const SPIKE: u64 = 600;
    const AFTER: u64 = 1800;
    println!("## 2. Step changes after 1 h of warm-up\n");
    println!(
        "{SEEDS} runs per row: {WARM} s at the old ratio, {SPIKE} s at the new one, then {AFTER} s \
         back at the old one. Delay = detection second − step second (0 = the step's own \
         second). Clear = end second − recovery second, for spikes still active at \
         recovery; \"ended early\" counts spikes that ended before the recovery (possible \
         when the step is barely detectable). \"extra\" counts Started events beyond one per \
         run (warm-up false alarms, re-fires).\n"
    );
    println!("| step | req/s | detected | delay median | delay max | clear median | clear max | ended early | extra starts |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (from, to) in [(0.02, 0.10), (0.02, 0.40), (0.0, 1.0)] {
        for rate in [1.0, 10.0, 100.0, 1000.0] {
            let mut delays = Vec::new();
            let mut clears = Vec::new();
            let mut extra = 0;
            let mut early = 0;
            for seed in 1..=SEEDS {
                let mut rng = Rng::new(seed * 7919 + (to * 100.0) as u64 + rate as u64);
                let mut d = Detector::new(config.clone());
                let step = T0 + WARM;
                let recover = step + SPIKE;
                let warm = feed(&mut d, &mut rng, T0, step, rate, from);
                let spike = feed(&mut d, &mut rng, step, recover, rate, to);
                let after = feed(&mut d, &mut rng, recover, recover + AFTER, rate, from);
                let total = warm.starts.len() + spike.starts.len() + after.starts.len();
                if let Some(&s) = spike.starts.first() {
                    delays.push(s - step);
                    if !spike.ends.is_empty() {
                        early += 1;
                    } else if let Some(&e) = after.ends.first() {
                        clears.push(e - recover);
                    }
                }
                extra += total.saturating_sub(1);
            }
            let detected = delays.len();
            let (dm, dx) = med_max(&mut delays);
            let (cm, cx) = med_max(&mut clears);
            if clears.len() + early < detected {
                // Never happened in these runs; make it impossible to miss.
                println!("WARNING: a spike did not clear within {AFTER} s");
            }
            println!(
                "| {}→{} | {rate} | {detected}/{SEEDS} | {dm} | {dx} | {cm} | {cx} | {early} | {extra} |",
                pct(from),
                pct(to)
            );
        }
    }
    println!();
}

fn cold_start_table(config: &DetectorConfig) {
    const SEEDS: u64 = 20;
    println!("## 3. Cold start in front of a broken API (100% matching from the first second)\n");
    println!("| req/s | detected within 60 s | delay median | delay max |");
    println!("|---:|---:|---:|---:|");
    for rate in [1.0, 10.0, 100.0, 1000.0] {
        let mut delays = Vec::new();
        for seed in 1..=SEEDS {
            let mut rng = Rng::new(seed * 31 + rate as u64);
            let mut d = Detector::new(config.clone());
            let ev = feed(&mut d, &mut rng, T0, T0 + 60, rate, 1.0);
            if let Some(&s) = ev.starts.first() {
                delays.push(s - T0);
            }
        }
        let detected = delays.len();
        let (m, x) = med_max(&mut delays);
        println!("| {rate} | {detected}/{SEEDS} | {m} | {x} |");
    }
    println!();
}

fn high_normal_table(config: &DetectorConfig) {
    const RUNS: u64 = 50;
    const SECS: u64 = 1200;
    println!("## 5. Fresh detector in front of a healthy API whose normal ratio is high\n");
    println!(
        "Share of {RUNS} fresh starts flagged within {SECS} s. With no history a window is \
         compared with the prior (1% worth 100 requests, upper bound ≈ 10.5%, so the \
         threshold is ≈ 31%). Such signals need a `prior_ratio` near their normal level.\n"
    );
    let rates = [1.0, 10.0, 100.0, 1000.0];
    println!("| normal ratio | 1 req/s | 10 req/s | 100 req/s | 1000 req/s |");
    println!("|---:|---:|---:|---:|---:|");
    for p in [0.10, 0.15, 0.20, 0.25, 0.30] {
        let mut row = format!("| {} |", pct(p));
        for rate in rates {
            let mut flagged = 0;
            for seed in 1..=RUNS {
                let mut rng = Rng::new(seed * 17 + (p * 100.0) as u64 + rate as u64);
                let mut d = Detector::new(config.clone());
                for t in T0..T0 + SECS {
                    let n = rng.poisson(rate);
                    let k = rng.binomial(n, p);
                    if d.observe(t, n, k).is_some() {
                        flagged += 1;
                        break;
                    }
                }
            }
            row.push_str(&format!(" {flagged}/{RUNS} |"));
        }
        println!("{row}");
    }
    println!();
}

fn flapping_table(config: &DetectorConfig) {
    const SEEDS: u64 = 10;
    const WARM: u64 = 3600;
    const FLAP: u64 = 3600;
    println!("## 4. Flapping: 1 h alternating 40% / 2% at 10 req/s after 1 h at 2%\n");
    println!("Started events per run (median / max over {SEEDS} runs); time active during the flapping hour.\n");
    println!("| bad s / good s | starts median | starts max | active share |");
    println!("|---|---:|---:|---:|");
    for (bad, good) in [
        (10, 10),
        (30, 30),
        (60, 60),
        (100, 100),
        (300, 300),
        (60, 600),
    ] {
        let mut starts = Vec::new();
        let mut active = 0;
        for seed in 1..=SEEDS {
            let mut rng = Rng::new(seed * 131 + bad);
            let mut d = Detector::new(config.clone());
            let mut n = feed(&mut d, &mut rng, T0, T0 + WARM, 10.0, 0.02)
                .starts
                .len();
            let mut t = T0 + WARM;
            while t < T0 + WARM + FLAP {
                let ev = feed(&mut d, &mut rng, t, t + bad, 10.0, 0.40);
                n += ev.starts.len();
                active += ev.active_secs;
                let ev = feed(&mut d, &mut rng, t + bad, t + bad + good, 10.0, 0.02);
                n += ev.starts.len();
                active += ev.active_secs;
                t += bad + good;
            }
            starts.push(n as u64);
        }
        let (m, x) = med_max(&mut starts);
        let share = active as f64 / (SEEDS * FLAP) as f64;
        println!("| {bad} / {good} | {m} | {x} | {:.0}% |", share * 100.0);
    }
    println!();
}

fn main() {
    let config = DetectorConfig::default();
    let started = Instant::now();
    println!("# statuslens spike detector simulation\n");
    println!("Config: {config:?}\n");
    noise_table(&config);
    step_table(&config);
    cold_start_table(&config);
    flapping_table(&config);
    high_normal_table(&config);
    println!("_Simulated in {:.1} s._", started.elapsed().as_secs_f64());
}
