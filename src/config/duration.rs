//! Human-readable durations: a whole number and `ms`, `s`, `m` or `h`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"`.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit (ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    let seconds = |factor: u64| {
        number
            .checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{text}` is too long"))
    };
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => seconds(1)?,
        "m" => seconds(60)?,
        "h" => seconds(3600)?,
        _ => return Err(format!("`{text}` has an unknown unit; use ms, s, m or h")),
    };
    // No setting is meant to be longer than a year; some would overflow the clock.
    if duration > crate::error::MAX_SETTING_DURATION {
        return Err(format!("`{text}` is longer than a year"));
    }
    Ok(duration)
}

pub(crate) fn optional<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_the_rest() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "5",
            "s",
            "-1s",
            "1.5s",
            "5 s",
            "5d",
            "99999999999999999999h",
            "9000h",
            "5000000000000s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
