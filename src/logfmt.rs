//! A lean JSON line format for tracing events, access log included.
//!
//! Same shape as tracing-subscriber's flattened JSON (`timestamp`, `level`, `message`,
//! the event's fields, `target`), but written straight into the subscriber's per-thread
//! buffer with escaping done on the fly: no map, no intermediate strings. The access
//! log is one event per request, so this is on the hot path.
//!
//! The access log goes one step further (see [`with_prerendered`]): it writes its
//! fields' JSON itself, from typed values, just before it logs the event, and the
//! formatter takes that text instead of visiting the event's fields one by one. The
//! event still carries every field, for the pretty format and any other layer.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON line formatter.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if !IN_USE.load(Ordering::Relaxed) {
            IN_USE.store(true, Ordering::Relaxed);
        }
        LINE.with(|line| match line.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                write_line(&mut line, event)?;
                w.write_str(&line)?;
                if line.capacity() > MAX_KEPT_LINE {
                    *line = String::new();
                }
                Ok(())
            }
            // An event logged while another is being written (from a `Display` impl).
            Err(_) => {
                let mut line = String::new();
                write_line(&mut line, event)?;
                w.write_str(&line)
            }
        })
    }
}

thread_local! {
    /// The line being written. The subscriber's `Writer` is a `dyn` writer and a line is
    /// some eighty small writes: composed with plain `String` pushes (inlined) and handed
    /// over in one piece, a line costs a quarter fewer instructions (callgrind, 8.5k to
    /// 6.3k per access-log line).
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// A line buffer grown past this (a huge path) is not kept for the next line.
const MAX_KEPT_LINE: usize = 64 * 1024;

/// Whether this formatter has formatted an event in this process: until it has, no
/// fields are pre-rendered for it (another format, or none, may be installed).
static IN_USE: AtomicBool = AtomicBool::new(false);

/// Fields pre-rendered for the event being logged on this thread, and its target.
struct Prerendered {
    target: Option<&'static str>,
    text: String,
}

thread_local! {
    static PRERENDERED: RefCell<Prerendered> = const {
        RefCell::new(Prerendered { target: None, text: String::new() })
    };
}

/// Logs an event whose fields' JSON `render` writes, for [`JsonLines`] to take in place
/// of visiting the fields: `emit` logs the event, with `target`, carrying the same
/// fields. `render` writes what the visitor would, byte for byte, starting with the
/// comma before `message`; the caller proves that with a test (the access log's does).
///
/// Why: a field visited costs a virtual call, a key written from a `&str` of unknown
/// length, and a check for escapes; written from typed values, the keys are constants
/// and most values need no check. Where the formatter is not in use, or `render`
/// itself logs a pre-rendered event, the fields are visited as always.
///
/// The fields are rendered before `emit` learns whether the subscriber wants the event,
/// so one it filters out (`RUST_LOG=statuslens::access=off`) costs the rendering still.
/// Asking first (`tracing::enabled!`) measured +104 instructions per HTTP/1.1 request and
/// +275 per h2c request (callgrind; at the edge of its noise), paid on every line, to
/// spare a setting the access log has its own switch for: `access_log.volume` skips both.
pub fn with_prerendered<R>(
    target: &'static str,
    render: impl FnOnce(&mut String),
    emit: impl FnOnce() -> R,
) -> R {
    if !IN_USE.load(Ordering::Relaxed) {
        return emit();
    }
    // `try_with`: the last requests of a thread can be logged while its thread-locals
    // are being torn down (an exchange dropped then); those lines are visited.
    let ready = PRERENDERED.try_with(|p| match p.try_borrow_mut() {
        Ok(mut p) => {
            p.text.clear();
            // Room for a usual line from the start, so that one a few digits longer
            // than those before it does not grow the buffer mid-traffic.
            p.text.reserve(1024);
            render(&mut p.text);
            p.target = Some(target);
            true
        }
        // Only from inside `render` (it logged a pre-rendered event of its own).
        Err(_) => false,
    });
    let ready = ready.unwrap_or(false);
    // Withdrawn however `emit` ends: no later event may take these fields.
    struct Withdraw(bool);
    impl Drop for Withdraw {
        fn drop(&mut self) {
            if !self.0 {
                return;
            }
            let _ = PRERENDERED.try_with(|p| {
                if let Ok(mut p) = p.try_borrow_mut() {
                    p.target = None;
                    if p.text.capacity() > MAX_KEPT_LINE {
                        p.text = String::new();
                    }
                }
            });
        }
    }
    let _withdraw = Withdraw(ready);
    emit()
}

/// Appends the fields pre-rendered for `event`, if any.
fn take_prerendered(out: &mut String, event: &Event<'_>) -> bool {
    PRERENDERED
        .try_with(|p| match p.try_borrow() {
            Ok(p) if p.target.is_some_and(|t| t == event.metadata().target()) => {
                out.push_str(&p.text);
                #[cfg(test)]
                PRERENDERED_USED.with(|n| n.set(n.get() + 1));
                true
            }
            _ => false,
        })
        .unwrap_or(false)
}

#[cfg(test)]
thread_local! {
    /// Lines this thread wrote from pre-rendered fields (so tests know which path ran).
    pub(crate) static PRERENDERED_USED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn write_line(out: &mut String, event: &Event<'_>) -> fmt::Result {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    out.push_str("{\"timestamp\":\"");
    write_rfc3339_micros(out, now.as_secs(), now.subsec_micros())?;
    out.push_str("\",\"level\":\"");
    out.push_str(event.metadata().level().as_str());
    out.push('"');
    if !take_prerendered(out, event) {
        let mut visitor = JsonVisitor {
            w: out,
            result: Ok(()),
        };
        event.record(&mut visitor);
        visitor.result?;
    }
    out.push_str(",\"target\":");
    write_json_str(out, event.metadata().target())?;
    out.push_str("}\n");
    Ok(())
}

struct JsonVisitor<'a> {
    w: &'a mut String,
    result: fmt::Result,
}

impl JsonVisitor<'_> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        // Field names are Rust identifiers (tracing's macros make them so): nothing in
        // them needs escaping.
        self.w.write_str(",\"")?;
        self.w.write_str(field.name())?;
        self.w.write_str("\":")
    }

    fn put(&mut self, field: &Field, value: impl FnOnce(&mut String) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|_| value(self.w));
        }
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, |w| write_json_str(w, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, |w| write_f64(w, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` fields and the message arrive here; both are written as strings.
        self.put(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// Writes `value` as `Display` would (JSON has no NaN or infinity: those are `null`).
///
/// Numbers with at most six decimals (seconds from `Retry-After`, milliseconds) are
/// written with integer arithmetic, skipping the shortest-digits search of float
/// formatting. Below 1e9 two six-decimal numbers are further apart than two floats, so
/// the six-decimal one that round-trips is the shortest: what `Display` writes, digit for
/// digit (the unit test compares).
pub(crate) fn write_f64(w: &mut impl Write, value: f64) -> fmt::Result {
    if !value.is_finite() {
        return w.write_str("null");
    }
    let scaled = (value * 1e6).round();
    if value.abs() >= 1e9 || scaled / 1e6 != value {
        return write!(w, "{value}");
    }
    if value.is_sign_negative() {
        w.write_char('-')?;
    }
    write_millionths(w, scaled.abs() as u64)
}

/// Writes `nanos` in milliseconds, as [`write_f64`] writes `nanos as f64 / 1e6` (the
/// access log's durations), without the float. From 10^15 ns on (11 days), `write_f64`
/// itself.
pub(crate) fn write_millis(out: &mut String, nanos: u128) {
    let _ = match u64::try_from(nanos) {
        Ok(n) if n < 1_000_000_000_000_000 => write_millionths(out, n),
        _ => write_f64(out, nanos as f64 / 1e6),
    };
}

/// Writes `n` millionths as a decimal: six decimals at most, trailing zeros dropped.
/// The digits are written once and cut in two: a few slice copies, where pushing them
/// one by one was half the cost.
fn write_millionths(w: &mut impl Write, n: u64) -> fmt::Result {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    let (whole, fraction) = digits.split_at(digits.len().saturating_sub(6));
    w.write_str(if whole.is_empty() { "0" } else { whole })?;
    if n % 1_000_000 == 0 {
        return Ok(());
    }
    w.write_char('.')?;
    w.write_str(&"00000"[..6 - fraction.len()])?;
    w.write_str(fraction.trim_end_matches('0'))
}

/// Writes `s` as a JSON string literal.
pub(crate) fn write_json_str(w: &mut impl Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(s)?;
    w.write_char('"')
}

/// Writes `value`'s `Display` text as a JSON string literal (as `%value` fields are).
pub(crate) fn write_json_display(w: &mut impl Write, value: &dyn fmt::Display) -> fmt::Result {
    w.write_char('"')?;
    write!(Escaped(w), "{value}")?;
    w.write_char('"')
}

/// A writer that JSON-escapes whatever goes through it.
struct Escaped<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Most text needs no escaping: find that out with a word-at-a-time scan first.
        if !needs_escape(s.as_bytes()) {
            return self.0.write_str(s);
        }
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let esc: Option<&str> = match b {
                b'"' => Some("\\\""),
                b'\\' => Some("\\\\"),
                b'\n' => Some("\\n"),
                b'\r' => Some("\\r"),
                b'\t' => Some("\\t"),
                0..=0x1f | 0x7f => None,
                _ => continue,
            };
            self.0.write_str(&s[start..i])?;
            match esc {
                Some(e) => self.0.write_str(e)?,
                None => write!(self.0, "\\u{b:04x}")?,
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

/// Whether any byte is a control character, `"`, `\\` or DEL, eight bytes at a time
/// (the classic has-zero-byte / has-less-than bit tricks). A rare false positive only
/// sends the text down the exact, byte-by-byte path.
///
/// No byte-wise tail: a string shorter than a word is checked as one word padded with
/// a harmless byte, a longer one's tail as its last eight bytes (some checked twice).
/// Most strings in a log line are under 24 bytes, and the byte loop over their tails
/// was half of this function's cost.
fn needs_escape(s: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let flags = |v: u64| {
        let below = v.wrapping_sub(LO * 0x20) & !v;
        let equal = |b: u8| {
            let x = v ^ (LO * u64::from(b));
            x.wrapping_sub(LO) & !x
        };
        (below | equal(b'"') | equal(b'\\') | equal(0x7f)) & HI != 0
    };
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8-byte chunk"));
    if s.len() < 8 {
        let mut padded = [b'a'; 8];
        padded[..s.len()].copy_from_slice(s);
        return flags(u64::from_le_bytes(padded));
    }
    s.chunks_exact(8).any(|c| flags(word(c)))
        || (s.len() % 8 != 0 && flags(word(&s[s.len() - 8..])))
}

thread_local! {
    /// The last second formatted on this thread, as "YYYY-MM-DDTHH:MM:SS": lines come
    /// thousands per second, so the calendar arithmetic is done once per second.
    static SECOND: std::cell::RefCell<(u64, String)> =
        const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

fn write_rfc3339_micros(w: &mut impl Write, secs: u64, micros: u32) -> fmt::Result {
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let (y, m, d, hh, mm, ss) = crate::detect::webhook::civil(secs);
            cached.1.clear();
            write!(cached.1, "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}")?;
            cached.0 = secs;
        }
        w.write_str(&cached.1)
    })?;
    // Six digits, zero-padded, without the formatting machinery: itoa writes a leading
    // 1 above them, which is cut off (one slice copy, not six char pushes).
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(1_000_000 + micros.min(999_999));
    w.write_char('.')?;
    w.write_str(&digits[1..])?;
    w.write_char('Z')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testrng::splitmix64;
    use std::time::Duration;

    #[test]
    fn escapes_json_strings() {
        let mut out = String::new();
        write_json_str(&mut out, "a\"b\\c\nd\u{1}é\u{7f}").unwrap();
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001é\\u007f\"");
        let v: String = serde_json::from_str(&out).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}é\u{7f}");
    }

    #[test]
    fn word_scan_agrees_with_the_byte_rule() {
        let slow = |s: &[u8]| {
            s.iter()
                .any(|&b| b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f)
        };
        // Every byte value at every position of every length up to two words and a
        // tail: short strings (one padded word), whole words, and overlapping tails.
        for len in 0..=17 {
            assert!(
                !needs_escape(&vec![b'a'; len]),
                "false positive at length {len}"
            );
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[pos] = b;
                    if slow(&s) {
                        assert!(needs_escape(&s), "missed byte {b:#x} at {pos} of {len}");
                    }
                }
            }
        }
        assert!(!needs_escape(b"/api/v1/accounts?id=42&x=y-z_w.v~"));
        assert!(!needs_escape("naïve — ok".as_bytes()));
    }

    #[test]
    fn numbers_are_written_as_display_writes_them() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            7.0,
            -7.5,
            0.5,
            0.1,
            0.3,
            1e-7,
            0.000001,
            0.0000015,
            123.456,
            999_999_999.999_999,
            1e9,
            1.5e9,
            2e15,
            1e300,
            1.0561479999999999,
            1.056148,
            f64::MIN_POSITIVE,
            f64::MAX,
            -f64::MAX,
            1.0 / 3.0,
        ];
        // Milliseconds as the access log computes them, from whole nanoseconds.
        for x in std::iter::repeat_with(splitmix64(1)).take(200_000) {
            let nanos = x % [1_000, 1_000_000, 1_000_000_000, 100_000_000_000][(x % 4) as usize];
            values.push(nanos as f64 / 1e6);
            values.push(f64::from_bits(x));
        }
        for v in values {
            let mut ours = String::new();
            write_f64(&mut ours, v).unwrap();
            let std = if v.is_finite() {
                v.to_string()
            } else {
                "null".into()
            };
            assert_eq!(ours, std, "{v:e} ({:#x})", v.to_bits());
        }
    }

    #[test]
    fn millis_are_written_as_write_f64_writes_them() {
        let mut nanos: Vec<u128> = vec![
            0,
            1,
            10,
            999_999,
            1_000_000,
            1_000_001,
            1_056_148,
            912_000,
            999_999_999_999_999,
            1_000_000_000_000_000,
            1_000_000_000_000_001,
            u128::from(u64::MAX),
            Duration::MAX.as_nanos(),
        ];
        for x in std::iter::repeat_with(splitmix64(2)).take(200_000) {
            let scale =
                [1_000, 1_000_000, 1_000_000_000, 10u64.pow(15), u64::MAX][(x % 5) as usize];
            nanos.push(u128::from(x % scale));
            // Round numbers, where trailing zeros are dropped.
            nanos.push(u128::from(x % scale / 1000 * 1000));
        }
        for n in nanos {
            let mut ours = String::new();
            write_millis(&mut ours, n);
            let mut float = String::new();
            write_f64(&mut float, n as f64 / 1e6).unwrap();
            assert_eq!(ours, float, "{n} ns");
        }
    }

    #[test]
    fn timestamps_have_microseconds() {
        let mut out = String::new();
        write_rfc3339_micros(&mut out, 1_798_160_523, 42).unwrap();
        assert_eq!(out, "2026-12-25T01:02:03.000042Z");
        // The cached second is reused within it and replaced after it.
        out.clear();
        write_rfc3339_micros(&mut out, 1_798_160_523, 999_999).unwrap();
        write_rfc3339_micros(&mut out, 1_798_160_524, 0).unwrap();
        assert_eq!(
            out,
            "2026-12-25T01:02:03.999999Z2026-12-25T01:02:04.000000Z"
        );
    }
}
