//! Durations as people and backends write them: configuration values (`30m`, `7d`, `1s`) and Go
//! duration strings (`5000ns`, `1h2m3.5s`, `250µs`) that Jaeger and Tempo take and return.

use std::time::Duration;

/// Parses a Go duration string (`"1h2m3.5s"`, `"5000ns"`, `"250us"`, `"250µs"`); `None` if it is
/// not one. Negative durations are not accepted.
pub fn parse_go(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return None;
    }
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total_ns += value * scale;
    }
    Some(Duration::from_nanos(total_ns.round() as u64))
}

/// Formats a duration as a Go duration string in whole microseconds (`"1500000us"`), which every
/// Go-based backend parses exactly.
pub fn format_go(d: Duration) -> String {
    format!("{}us", d.as_micros())
}

/// Parses a configuration duration: humantime (`30m`, `7d`, `1h 30m`) or Go (`1h30m`).
pub fn parse_config(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .ok()
        .or_else(|| parse_go(s))
        .ok_or_else(|| format!("{s:?} is not a duration (examples: 30s, 30m, 72h, 7d)"))
}

/// Serde adapter for configuration durations written as strings.
pub mod serde_config {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_config(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go("5000ns"), Some(Duration::from_nanos(5000)));
        assert_eq!(parse_go("1h2m3.5s"), Some(Duration::from_millis(3_723_500)));
        assert_eq!(parse_go("250µs"), Some(Duration::from_micros(250)));
        assert_eq!(parse_go("1.5"), None);
        assert_eq!(parse_go("abc"), None);
        assert_eq!(
            parse_go(&format_go(Duration::from_millis(1500))),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn config_durations() {
        assert_eq!(parse_config("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_config("30m").unwrap(), Duration::from_secs(1800));
        assert!(parse_config("soon").unwrap_err().contains("soon"));
    }
}
