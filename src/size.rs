//! Sizes as users write them: `512M`, `4G`, `4GB`, `4GiB` (all binary multiples).

/// Parses a size into bytes; `None` when it is not a size.
pub fn parse(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let num: u64 = num.parse().ok()?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    num.checked_mul(1u64 << shift)
}

/// Formats bytes the way QEMU and users read them: the largest exact unit.
pub fn format(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_spellings_users_know() {
        assert_eq!(parse("512M"), Some(512 << 20));
        assert_eq!(parse("4G"), Some(4 << 30));
        assert_eq!(parse("4GB"), Some(4 << 30));
        assert_eq!(parse("4GiB"), Some(4 << 30));
        assert_eq!(parse("4gib"), Some(4 << 30));
        assert_eq!(parse("1T"), Some(1 << 40));
        assert_eq!(parse("1024"), Some(1024));
    }

    #[test]
    fn rejects_what_is_not_a_size() {
        for bad in ["", "G", "-1G", "1.5G", "4X", "4 G G", "1GG", "99999999999999999999G", "20000000000T"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_exact_units() {
        assert_eq!(format(1 << 30), "1G");
        assert_eq!(format(1536 << 20), "1536M");
        assert_eq!(format(1000), "1000");
    }
}
