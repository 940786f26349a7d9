//! The argument syntax of `vgpu-smi run`: buffers, push constants, dumps and expectations.
//!
//! - `--buf SLOT:SIZE[:OPT]...`: a buffer of SIZE bytes (`4096`, `64K`, `1M`) bound at SLOT
//!   (`-` for a buffer that is created but not bound). OPT: `zero` (the default),
//!   `pattern=0xDEADBEEF` (a u32 repeated), `random=SEED` (f32 in [-1, 1)), `iota` (u32 0, 1, 2,
//!   ...), `init=FILE` (the file's bytes, the rest zero), `bind=OFF+LEN` (bind only that range;
//!   OFF a multiple of 256).
//! - `--push LIST`: push constants, a comma list of `u32:V`, `i32:V`, `f32:V`, `hex:BYTES` or a
//!   bare number (u32), e.g. `--push 1024,f32:0.5`.
//! - `--dump SLOT[:FMT[:OFF+LEN]]`: print the buffer after the launch as `hex`, `u32`, `i32` or
//!   `f32` (default `hex`; the whole buffer unless a range is given).
//! - `--expect SLOT:OFF+LEN=0xPATTERN`: after the launch the range must hold the u32 pattern
//!   (exit code 1 otherwise), e.g. a canary the kernel must not touch.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// How a buffer starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// All zeros.
    Zero,
    /// A little-endian u32 repeated.
    Pattern(u32),
    /// Seeded f32s in [-1, 1).
    Random(u64),
    /// u32 0, 1, 2, ...
    Iota,
    /// One f32 repeated.
    F32(f32),
    /// A file's bytes (the rest zero).
    File(PathBuf),
}

/// One `--buf`.
#[derive(Debug, Clone, PartialEq)]
pub struct BufSpec {
    /// Slot, or None for an unbound buffer.
    pub slot: Option<u32>,
    /// Bytes.
    pub size: usize,
    /// Contents before the launch.
    pub init: Init,
    /// Bound range (offset, length); None binds the whole buffer.
    pub bind: Option<(usize, usize)>,
}

/// Display format of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    /// Bytes in hex.
    Hex,
    /// Little-endian u32s.
    U32,
    /// Little-endian i32s.
    I32,
    /// Little-endian f32s.
    F32,
}

/// One `--dump`.
#[derive(Debug, Clone, PartialEq)]
pub struct DumpSpec {
    /// Slot.
    pub slot: u32,
    /// Format.
    pub format: DumpFormat,
    /// Range (offset, length); None is the whole buffer.
    pub range: Option<(usize, usize)>,
}

/// One `--expect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectSpec {
    /// Slot.
    pub slot: u32,
    /// Offset.
    pub offset: usize,
    /// Length (a multiple of 4).
    pub len: usize,
    /// The u32 every word must hold.
    pub pattern: u32,
}

fn bad(what: &str, text: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("{what} {text:?}: {why}"))
}

/// `4096`, `64K`, `1M`, `0x1000`.
pub fn parse_size(s: &str) -> Result<usize> {
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1usize << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    parse_u64(num)
        .ok()
        .and_then(|v| usize::try_from(v).ok())
        .and_then(|v| v.checked_mul(mult))
        .ok_or_else(|| {
            bad(
                "size",
                s,
                "expected a number with an optional K, M or G suffix",
            )
        })
}

/// A decimal or `0x` hex number.
pub fn parse_u64(s: &str) -> Result<u64> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| bad("number", s, "expected decimal or 0x hex"))
}

fn parse_u32(s: &str) -> Result<u32> {
    u32::try_from(parse_u64(s)?).map_err(|_| bad("number", s, "larger than 32 bits"))
}

/// `OFF+LEN`.
pub fn parse_range(s: &str) -> Result<(usize, usize)> {
    let (o, l) = s
        .split_once('+')
        .ok_or_else(|| bad("range", s, "expected OFFSET+LENGTH"))?;
    Ok((parse_size(o)?, parse_size(l)?))
}

/// `X[,Y[,Z]]`.
pub fn parse_grid(s: &str) -> Result<[u32; 3]> {
    let parts: Vec<&str> = s.split(',').collect();
    if parts.is_empty() || parts.len() > 3 {
        return Err(bad("grid", s, "expected X[,Y[,Z]]"));
    }
    let mut g = [1u32; 3];
    for (d, p) in g.iter_mut().zip(&parts) {
        *d = parse_u32(p.trim())?;
    }
    Ok(g)
}

/// One `--buf` value.
pub fn parse_buf(s: &str) -> Result<BufSpec> {
    let mut parts = s.split(':');
    let slot = match parts.next() {
        Some("-") => None,
        Some(p) => Some(parse_u32(p)?),
        None => return Err(bad("--buf", s, "expected SLOT:SIZE[:OPTION]...")),
    };
    let size = parse_size(
        parts
            .next()
            .ok_or_else(|| bad("--buf", s, "expected SLOT:SIZE[:OPTION]..."))?,
    )?;
    let mut spec = BufSpec {
        slot,
        size,
        init: Init::Zero,
        bind: None,
    };
    for opt in parts {
        let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
        match key {
            "zero" => spec.init = Init::Zero,
            "iota" => spec.init = Init::Iota,
            "pattern" => spec.init = Init::Pattern(parse_u32(value)?),
            "random" => spec.init = Init::Random(parse_u64(value)?),
            "f32" => {
                spec.init = Init::F32(
                    value
                        .parse()
                        .map_err(|_| bad("--buf f32", value, "not a number"))?,
                )
            }
            "init" | "file" => spec.init = Init::File(PathBuf::from(value)),
            "bind" => spec.bind = Some(parse_range(value)?),
            _ => return Err(bad(
                "--buf option",
                opt,
                "expected zero, iota, pattern=HEX, f32=V, random=SEED, init=FILE or bind=OFF+LEN",
            )),
        }
    }
    Ok(spec)
}

/// Push-constant bytes (one command-line value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushBytes(pub Vec<u8>);

/// A `--push` value.
pub fn parse_push_arg(s: &str) -> Result<PushBytes> {
    parse_push(s).map(PushBytes)
}

/// A `--push` list to bytes.
pub fn parse_push(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (kind, value) = item.split_once(':').unwrap_or(("u32", item));
        match kind {
            "u32" => out.extend(parse_u32(value)?.to_le_bytes()),
            "i32" => out.extend(
                value
                    .parse::<i32>()
                    .map_err(|_| bad("i32", value, "not a 32-bit integer"))?
                    .to_le_bytes(),
            ),
            "f32" => out.extend(
                value
                    .parse::<f32>()
                    .map_err(|_| bad("f32", value, "not a number"))?
                    .to_le_bytes(),
            ),
            "hex" => out.extend(parse_hex(value)?),
            _ => {
                return Err(bad(
                    "--push item",
                    item,
                    "expected u32:, i32:, f32: or hex:",
                ))
            }
        }
    }
    Ok(out)
}

/// Hex bytes (`00ff10`, optional `0x`).
pub fn parse_hex(s: &str) -> Result<Vec<u8>> {
    let h = s.strip_prefix("0x").unwrap_or(s);
    if !h.len().is_multiple_of(2) {
        return Err(bad("hex", s, "odd number of digits"));
    }
    (0..h.len())
        .step_by(2)
        .map(|i| {
            h.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| bad("hex", s, "not hex digits"))
        })
        .collect()
}

/// One `--dump` value.
pub fn parse_dump(s: &str) -> Result<DumpSpec> {
    let mut parts = s.splitn(3, ':');
    let slot = parse_u32(parts.next().unwrap_or_default())?;
    let format = match parts.next() {
        None | Some("hex") => DumpFormat::Hex,
        Some("u32") => DumpFormat::U32,
        Some("i32") => DumpFormat::I32,
        Some("f32") => DumpFormat::F32,
        Some(f) => return Err(bad("--dump format", f, "expected hex, u32, i32 or f32")),
    };
    let range = parts.next().map(parse_range).transpose()?;
    Ok(DumpSpec {
        slot,
        format,
        range,
    })
}

/// One `--expect` value.
pub fn parse_expect(s: &str) -> Result<ExpectSpec> {
    let err = || bad("--expect", s, "expected SLOT:OFF+LEN=0xPATTERN");
    let (slot, rest) = s.split_once(':').ok_or_else(err)?;
    let (range, pattern) = rest.split_once('=').ok_or_else(err)?;
    let (offset, len) = parse_range(range)?;
    if !len.is_multiple_of(4) || !offset.is_multiple_of(4) {
        return Err(bad("--expect", s, "offset and length are multiples of 4"));
    }
    Ok(ExpectSpec {
        slot: parse_u32(slot)?,
        offset,
        len,
        pattern: parse_u32(pattern)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_ranges_grids() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("0x100").unwrap(), 256);
        assert!(parse_size("1Q").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(parse_range("256+1K").unwrap(), (256, 1024));
        assert_eq!(parse_grid("4").unwrap(), [4, 1, 1]);
        assert_eq!(parse_grid("4,2,3").unwrap(), [4, 2, 3]);
        assert!(parse_grid("1,2,3,4").is_err());
    }

    #[test]
    fn buffers() {
        let b = parse_buf("1:1M:pattern=0xcafef00d:bind=0+1024").unwrap();
        assert_eq!(
            b,
            BufSpec {
                slot: Some(1),
                size: 1 << 20,
                init: Init::Pattern(0xcafe_f00d),
                bind: Some((0, 1024)),
            }
        );
        assert_eq!(parse_buf("-:4K").unwrap().slot, None);
        assert_eq!(parse_buf("0:4K:random=7").unwrap().init, Init::Random(7));
        assert_eq!(parse_buf("0:4K:f32=1.5").unwrap().init, Init::F32(1.5));
        assert!(parse_buf("0:4K:f32=x").is_err());
        assert_eq!(
            parse_buf("0:4K:init=/tmp/x").unwrap().init,
            Init::File("/tmp/x".into())
        );
        assert!(parse_buf("0").is_err());
        assert!(parse_buf("0:4K:bogus").is_err());
    }

    #[test]
    fn push_lists() {
        assert_eq!(parse_push("1,u32:2").unwrap(), [1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(parse_push("f32:1").unwrap(), 1.0f32.to_le_bytes());
        assert_eq!(parse_push("i32:-1").unwrap(), [0xff; 4]);
        assert_eq!(parse_push("hex:00ff").unwrap(), [0, 0xff]);
        assert!(parse_push("x:1").is_err());
        assert!(parse_hex("abc").is_err());
    }

    #[test]
    fn dumps_and_expects() {
        assert_eq!(
            parse_dump("2:f32:0+16").unwrap(),
            DumpSpec {
                slot: 2,
                format: DumpFormat::F32,
                range: Some((0, 16))
            }
        );
        assert_eq!(parse_dump("0").unwrap().format, DumpFormat::Hex);
        assert_eq!(
            parse_expect("0:1K+4K=0x5eed5eed").unwrap(),
            ExpectSpec {
                slot: 0,
                offset: 1024,
                len: 4096,
                pattern: 0x5eed_5eed
            }
        );
        assert!(parse_expect("0:1+4=1").is_err());
    }
}
