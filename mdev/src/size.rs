//! Sizes written as bytes or with a binary suffix (`512M`, `4G`).

use crate::MdevError;

const KIB: u64 = 1024;

/// Parses `"1073741824"`, `"1024M"`, `"1G"`, `"64MiB"` (binary units; case-insensitive suffix).
pub fn parse_size(text: &str) -> Result<u64, MdevError> {
    let bad = || MdevError::InvalidSize(text.to_string());
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(split);
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 1,
        "M" | "MB" | "MIB" => 2,
        "G" | "GB" | "GIB" => 3,
        "T" | "TB" | "TIB" => 4,
        _ => return Err(bad()),
    };
    let unit = KIB.checked_pow(shift).ok_or_else(bad)?;
    number.checked_mul(unit).ok_or_else(bad)
}

/// Formats a size the way mdev descriptions do: the largest binary unit that divides it (`1024M`
/// stays `1024M` below 1T, so descriptions read like NVIDIA's).
pub fn format_size(bytes: u64) -> String {
    const MIB: u64 = KIB * KIB;
    if bytes != 0 && bytes.is_multiple_of(MIB) {
        format!("{}M", bytes / MIB)
    } else if bytes != 0 && bytes.is_multiple_of(KIB) {
        format!("{}K", bytes / KIB)
    } else {
        format!("{bytes}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1K").unwrap(), 1024);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size(" 2 G ").unwrap(), 2 << 30);
    }

    #[test]
    fn rejects_garbage_and_overflow() {
        for bad in [
            "",
            "M",
            "1X",
            "-1M",
            "1.5G",
            "99999999999999999999",
            "17179869184T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_like_mdev() {
        assert_eq!(format_size(1 << 30), "1024M");
        assert_eq!(format_size(64 << 20), "64M");
        assert_eq!(format_size(3 << 10), "3K");
        assert_eq!(format_size(100), "100");
    }
}
