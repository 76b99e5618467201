//! Byte sizes as the configuration writes them and the status shows them:
//! a number and a decimal unit (`"30 MB"`). Shared by `config` (parsing)
//! and `telemetry` (display), below both.

/// Parses a byte size: a number and a decimal unit, `"30 MB"`, `"500kB"`,
/// `"2 GB"`, `"40000 B"`.
pub fn parse(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().ok()?;
    let unit = match unit.trim() {
        "B" | "" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return None,
    };
    let bytes = number * unit;
    (0.0..1e15).contains(&bytes).then_some(bytes.round() as u64)
}

/// `30000000` → `"30 MB"` (for messages and status).
pub fn format(bytes: f64) -> String {
    let (v, unit) = if bytes >= 1e9 {
        (bytes / 1e9, "GB")
    } else if bytes >= 1e6 {
        (bytes / 1e6, "MB")
    } else if bytes >= 1e3 {
        (bytes / 1e3, "kB")
    } else {
        return format!("{bytes:.0} B");
    };
    let text = format!("{v:.1}");
    format!("{} {unit}", text.trim_end_matches(".0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse("30 MB"), Some(30_000_000));
        assert_eq!(parse("500kB"), Some(500_000));
        assert_eq!(parse("1.5 GB"), Some(1_500_000_000));
        assert_eq!(parse("40000"), Some(40_000));
        assert_eq!(parse("40000 B"), Some(40_000));
        assert_eq!(parse("30 MiB"), None);
        assert_eq!(parse("MB"), None);
        assert_eq!(parse("-3 MB"), None);
        assert_eq!(format(30e6), "30 MB");
        assert_eq!(format(2_500.0), "2.5 kB");
        assert_eq!(format(12.0), "12 B");
    }
}
