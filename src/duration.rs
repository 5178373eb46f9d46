//! Human durations in config and flags: `500ms`, `30s`, `2m`, `1h`.

use std::time::Duration;

/// Parses `N` followed by a unit (`ms`, `s`, `m`, `h`); fractions such as `1.5s` are allowed.
pub fn parse(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| {
            format!("{input:?} has no unit: write e.g. \"500ms\", \"30s\", \"2m\" or \"1h\"")
        })?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("{input:?} is not a duration: expected a number then a unit, e.g. \"30s\"")
    })?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "{input:?} has an unknown unit {unit:?}: use ms, s, m or h"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 365.0 * 86400.0 {
        return Err(format!("{input:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Serde adapter so config fields can be written as `"30s"`.
pub mod serde_str {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Deserializes an optional duration string.
    pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| super::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn rejects_garbage_naming_it() {
        for bad in ["", "30", "s", "3x", "1.2.3s", "-1s", "99999999h"] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.contains(&format!("{bad:?}")) || bad.is_empty(),
                "{bad}: {err}"
            );
        }
    }
}
