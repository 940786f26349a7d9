//! Command-line options of `vgpud`, following QEMU's vhost-user backend conventions
//! (docs/interop/vhost-user.rst, "Backend program conventions").

use std::fmt;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;
use serde::Serialize;

/// Smallest accepted scanout width or height.
pub const MIN_DIMENSION: u32 = 16;
/// Largest accepted scanout width or height.
pub const MAX_DIMENSION: u32 = 8192;
/// Default per-VM host memory budget in MiB.
pub const DEFAULT_MAX_HOSTMEM_MIB: u64 = 1024;
/// Largest accepted per-VM host memory budget in MiB (1 TiB).
pub const MAX_HOSTMEM_MIB: u64 = 1 << 20;

/// A scanout resolution, `WIDTHxHEIGHT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl FromStr for Resolution {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (w, h) = s
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("expected WIDTHxHEIGHT, got {s:?}"))?;
        let dim = |v: &str| -> Result<u32, String> {
            let n: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("{v:?} is not a number"))?;
            if (MIN_DIMENSION..=MAX_DIMENSION).contains(&n) {
                Ok(n)
            } else {
                Err(format!("{n} is outside {MIN_DIMENSION}..={MAX_DIMENSION}"))
            }
        };
        Ok(Resolution {
            width: dim(w)?,
            height: dim(h)?,
        })
    }
}

/// `vgpud`: a vhost-user virtio-gpu backend.
#[derive(Debug, Clone, Parser)]
#[command(name = "vgpud", version, about)]
pub struct Options {
    /// Listen on this UNIX socket path; serves one VM at a time, again after each disconnect.
    #[arg(
        short = 's',
        long,
        value_name = "PATH",
        conflicts_with = "fd",
        required_unless_present_any = ["fd", "print_capabilities"]
    )]
    pub socket_path: Option<PathBuf>,

    /// Serve this inherited, already connected socket (as libvirt passes it); exit when it closes.
    #[arg(short = 'f', long, value_name = "FDNUM", value_parser = clap::value_parser!(i32).range(0..))]
    pub fd: Option<RawFd>,

    /// Print the backend capabilities as JSON and exit.
    #[arg(short = 'c', long)]
    pub print_capabilities: bool,

    /// Number of scanouts (heads).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub scanouts: u32,

    /// Preferred resolution of each scanout.
    #[arg(long, value_name = "WxH", default_value = "1280x800")]
    pub resolution: Resolution,

    /// Host memory budget per VM in MiB (resources, backing copies).
    #[arg(long, value_name = "MiB", default_value_t = DEFAULT_MAX_HOSTMEM_MIB,
          value_parser = clap::value_parser!(u64).range(1..=MAX_HOSTMEM_MIB))]
    pub max_hostmem: u64,
}

impl Options {
    /// The per-VM host memory budget in bytes.
    pub fn max_hostmem_bytes(&self) -> u64 {
        // Bounded by MAX_HOSTMEM_MIB, so this cannot overflow.
        self.max_hostmem.saturating_mul(1 << 20)
    }
}

/// The `--print-capabilities` document.
#[derive(Debug, Serialize)]
pub struct Capabilities {
    /// Backend type.
    #[serde(rename = "type")]
    pub type_: &'static str,
    /// Optional features known to libvirt that this backend implements (`render-node`, `virgl`).
    pub features: Vec<&'static str>,
}

impl Capabilities {
    /// Our capabilities: a GPU backend with neither `--render-node` nor `--virgl` yet.
    pub fn current() -> Self {
        Capabilities {
            type_: "gpu",
            features: Vec::new(),
        }
    }

    /// The JSON text printed, laid out as QEMU's backends print it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| r#"{"type":"gpu"}"#.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("vgpud").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let o = parse(&["--socket-path", "/tmp/s"]).unwrap();
        assert_eq!(o.socket_path, Some(PathBuf::from("/tmp/s")));
        assert_eq!(o.scanouts, 1);
        assert_eq!(
            o.resolution,
            Resolution {
                width: 1280,
                height: 800
            }
        );
        assert_eq!(o.max_hostmem_bytes(), DEFAULT_MAX_HOSTMEM_MIB << 20);
    }

    #[test]
    fn qemu_style_equals_and_short_forms() {
        let o = parse(&[
            "--socket-path=/tmp/s",
            "--scanouts=4",
            "--resolution=1920x1080",
        ])
        .unwrap();
        assert_eq!(o.scanouts, 4);
        assert_eq!(o.resolution.width, 1920);
        let o = parse(&["-f", "3"]).unwrap();
        assert_eq!(o.fd, Some(3));
        assert!(parse(&["-c"]).unwrap().print_capabilities);
        assert!(parse(&["--print-capabilities"])
            .unwrap()
            .socket_path
            .is_none());
    }

    #[test]
    fn rejects_bad_options() {
        assert!(parse(&[]).is_err(), "needs a socket or fd");
        assert!(parse(&["--socket-path", "/a", "--fd", "3"]).is_err());
        assert!(parse(&["--fd", "-1"]).is_err());
        assert!(parse(&["--socket-path", "/a", "--scanouts", "0"]).is_err());
        assert!(parse(&["--socket-path", "/a", "--scanouts", "17"]).is_err());
        assert!(parse(&["--socket-path", "/a", "--resolution", "8x8"]).is_err());
        assert!(parse(&["--socket-path", "/a", "--resolution", "9000x100"]).is_err());
        assert!(parse(&["--socket-path", "/a", "--resolution", "1280"]).is_err());
        assert!(parse(&["--socket-path", "/a", "--max-hostmem", "0"]).is_err());
        assert!(parse(&["--socket-path", "/a", "--bogus"]).is_err());
    }

    #[test]
    fn capabilities_json() {
        let v: serde_json::Value =
            serde_json::from_str(&Capabilities::current().to_json()).unwrap();
        assert_eq!(v, serde_json::json!({"type": "gpu", "features": []}));
    }
}
