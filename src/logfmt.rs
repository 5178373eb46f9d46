//! A lean JSON line format for tracing events, access log included.
//!
//! Same shape as tracing-subscriber's flattened JSON (`timestamp`, `level`, `message`,
//! the event's fields, `target`), but written straight into the subscriber's per-thread
//! buffer with escaping done on the fly: no map, no intermediate strings. The access
//! log is one event per request, so this is on the hot path.

use std::fmt::{self, Write};

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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        w.write_str("{\"timestamp\":\"")?;
        write_rfc3339_micros(&mut w, now.as_secs(), now.subsec_micros())?;
        w.write_str("\",\"level\":\"")?;
        w.write_str(event.metadata().level().as_str())?;
        w.write_char('"')?;
        let mut visitor = JsonVisitor {
            w: &mut w,
            result: Ok(()),
        };
        event.record(&mut visitor);
        visitor.result?;
        w.write_str(",\"target\":")?;
        write_json_str(&mut w, event.metadata().target())?;
        w.write_str("}\n")
    }
}

struct JsonVisitor<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl JsonVisitor<'_, '_> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        // Field names are Rust identifiers (tracing's macros make them so): nothing in
        // them needs escaping.
        self.w.write_str(",\"")?;
        self.w.write_str(field.name())?;
        self.w.write_str("\":")
    }

    fn put(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|_| value(self.w));
        }
    }
}

impl Visit for JsonVisitor<'_, '_> {
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
        // JSON has no NaN or infinity.
        self.put(field, |w| {
            if value.is_finite() {
                write!(w, "{value}")
            } else {
                w.write_str("null")
            }
        });
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

/// Writes `s` as a JSON string literal.
fn write_json_str(w: &mut impl Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(s)?;
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
fn needs_escape(s: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let below = |v: u64, n: u64| v.wrapping_sub(LO * n) & !v & HI != 0;
    let equal = |v: u64, b: u64| {
        let x = v ^ (LO * b);
        x.wrapping_sub(LO) & !x & HI != 0
    };
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes(c.try_into().expect("8-byte chunk"));
        if below(v, 0x20)
            || equal(v, u64::from(b'"'))
            || equal(v, u64::from(b'\\'))
            || equal(v, 0x7f)
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f)
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
    // Six digits, zero-padded, without the formatting machinery.
    let mut digits = [b'0'; 6];
    let mut v = micros.min(999_999);
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    w.write_char('.')?;
    w.write_str(std::str::from_utf8(&digits).expect("ASCII digits"))?;
    w.write_char('Z')
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Every byte value at every position of a 17-byte string (two words + a tail).
        for pos in 0..17 {
            for b in 0..=255u8 {
                let mut s = vec![b'a'; 17];
                s[pos] = b;
                if slow(&s) {
                    assert!(needs_escape(&s), "missed byte {b:#x} at {pos}");
                }
            }
        }
        assert!(!needs_escape(b"/api/v1/accounts?id=42&x=y-z_w.v~"));
        assert!(!needs_escape("naïve — ok".as_bytes()));
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
