//! Command-line options of `vgpud`, following QEMU's vhost-user backend conventions
//! (docs/interop/vhost-user.rst, "Backend program conventions"), plus the multi-VM options:
//! repeated `--vgpu socket=PATH,type=TYPE[,uuid=UUID]`, `--config FILE` and the driver core's
//! device settings. [`crate::config`] merges them into a [`crate::config::Plan`].

use std::fmt;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::Parser;
use serde::Serialize;
use uuid::Uuid;

use crate::driver::engine::vulkan::{DeviceSelector, DrmNode, DEFAULT_LOOP_BUDGET};
use crate::driver::engine::EngineChoice;
use crate::driver::spirv::MAX_LOOP_BUDGET;
use crate::driver::Policy;
use crate::vhost::socket_access::{parse_group, parse_mode};

/// Smallest accepted scanout width or height.
pub const MIN_DIMENSION: u32 = 16;
/// Largest accepted scanout width or height.
pub const MAX_DIMENSION: u32 = 8192;
/// Largest accepted `--device-memory` in MiB (1 TiB).
pub const MAX_DEVICE_MEMORY_MIB: u64 = 1 << 20;
/// The vGPU type of `--socket-path`/`--fd` when `--type` is not given.
pub const DEFAULT_TYPE: &str = "vgpu-1q";
/// Valid `--timeslice-us` values (NVIDIA vGPU: 1–30 ms).
pub const TIMESLICE_RANGE_US: std::ops::RangeInclusive<u32> = vgpu_mdev::TIMESLICE_RANGE_US;
/// Largest `--stats-interval` in seconds (one day).
pub const MAX_STATS_INTERVAL: u64 = 86_400;

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

/// Parses a scanout count (1..=16).
pub fn parse_scanouts(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if (1..=16).contains(&n) {
        Ok(n)
    } else {
        Err(format!("scanouts must be 1..=16, got {n}"))
    }
}

/// Parses `best-effort`, `equal-share` or `fixed-share`.
pub fn parse_policy(s: &str) -> Result<Policy, String> {
    match s {
        "best-effort" => Ok(Policy::BestEffort),
        "equal-share" => Ok(Policy::EqualShare),
        "fixed-share" => Ok(Policy::FixedShare),
        _ => Err(format!(
            "unknown policy {s:?} (expected best-effort, equal-share or fixed-share)"
        )),
    }
}

/// Parses and range-checks a device time slice in µs.
pub fn parse_timeslice(s: &str) -> Result<u32, String> {
    let us: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of microseconds"))?;
    check_timeslice(us)
}

/// Checks a device time slice: 1000..=30000 µs.
pub fn check_timeslice(us: u32) -> Result<u32, String> {
    if TIMESLICE_RANGE_US.contains(&us) {
        Ok(us)
    } else {
        Err(format!(
            "time slice {us} µs is outside {}..={} µs (1-30 ms)",
            TIMESLICE_RANGE_US.start(),
            TIMESLICE_RANGE_US.end()
        ))
    }
}

/// One `--vgpu socket=PATH,type=TYPE[,uuid=UUID][,scanouts=N][,resolution=WxH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgpuSpec {
    /// The vhost-user socket this vGPU listens on.
    pub socket: PathBuf,
    /// Its vGPU type; `None` takes `--type` (default [`DEFAULT_TYPE`]).
    pub type_name: Option<String>,
    /// Its UUID; `None` derives a stable one from the socket path.
    pub uuid: Option<Uuid>,
    /// Scanouts; `None` takes `--scanouts`, else the type's `max_heads`.
    pub scanouts: Option<u32>,
    /// Preferred resolution; `None` takes `--resolution`, else 1280x800 within the type's limit.
    pub resolution: Option<Resolution>,
}

impl FromStr for VgpuSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut socket = None;
        let mut spec = VgpuSpec {
            socket: PathBuf::new(),
            type_name: None,
            uuid: None,
            scanouts: None,
            resolution: None,
        };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("expected KEY=VALUE, got {part:?}"))?;
            let dup = || format!("{key} given twice");
            match key.trim() {
                "socket" | "path" => {
                    if socket.is_some() {
                        return Err(dup());
                    }
                    if value.is_empty() {
                        return Err("empty socket path".into());
                    }
                    socket = Some(PathBuf::from(value));
                }
                "type" => {
                    if spec.type_name.replace(value.to_string()).is_some() {
                        return Err(dup());
                    }
                }
                "uuid" => {
                    let uuid = Uuid::parse_str(value)
                        .map_err(|e| format!("uuid {value:?} is not a UUID: {e}"))?;
                    if spec.uuid.replace(uuid).is_some() {
                        return Err(dup());
                    }
                }
                "scanouts" => {
                    if spec.scanouts.replace(parse_scanouts(value)?).is_some() {
                        return Err(dup());
                    }
                }
                "resolution" => {
                    if spec.resolution.replace(value.parse()?).is_some() {
                        return Err(dup());
                    }
                }
                other => {
                    return Err(format!(
                        "unknown key {other:?} (expected socket, type, uuid, scanouts, resolution)"
                    ))
                }
            }
        }
        spec.socket = socket.ok_or("socket=PATH is required")?;
        Ok(spec)
    }
}

/// `vgpud`: a vhost-user virtio-gpu backend; one process shares a GPU driver core among many VMs.
///
/// Subcommands: `vgpud demo [--help]` runs the in-process demo (several vGPUs, every policy);
/// `vgpud ctl CONTROL_SOCKET list|stats|sched-log` and `vgpud status --socket CONTROL_SOCKET`
/// query a running daemon's `--control-socket`.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "vgpud", version, about)]
pub struct Options {
    /// Serve one vGPU on this UNIX socket (shorthand for `--vgpu socket=PATH,type=--type`), one VM
    /// at a time, again after each disconnect.
    #[arg(short = 's', long, value_name = "PATH", conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,

    /// Serve this inherited, already connected socket (as libvirt passes it); exit when it closes.
    /// With `--attach`, hand it to a running shared daemon instead.
    #[arg(short = 'f', long, value_name = "FDNUM", value_parser = clap::value_parser!(i32).range(0..))]
    pub fd: Option<RawFd>,

    /// With `--fd`: relay the connection into this vGPU socket of a running shared vgpud and live
    /// until the connection ends or SIGTERM.
    #[arg(long, value_name = "SOCKET", requires = "fd")]
    pub attach: Option<PathBuf>,

    /// Print the backend capabilities as JSON and exit.
    #[arg(short = 'c', long)]
    pub print_capabilities: bool,

    /// A vGPU to serve: `socket=PATH,type=TYPE[,uuid=UUID][,scanouts=N][,resolution=WxH]`.
    /// Repeat for more VMs.
    #[arg(long = "vgpu", value_name = "SPEC")]
    pub vgpus: Vec<VgpuSpec>,

    /// Read settings and `[[vgpu]]` entries from this file (TOML, or JSON if it ends in `.json`).
    /// Command-line settings override the file's; vGPUs from both are served.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// vGPU type of `--socket-path`/`--fd` and of `--vgpu` entries without `type=`
    /// [default: vgpu-1q].
    #[arg(long = "type", value_name = "TYPE")]
    pub type_name: Option<String>,

    /// UUID of the `--socket-path`/`--fd` vGPU [default: derived from the socket path].
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<Uuid>,

    /// Device memory shared by all vGPU partitions, in MiB [default: 4096].
    #[arg(long, value_name = "MiB",
          value_parser = clap::value_parser!(u64).range(1..=MAX_DEVICE_MEMORY_MIB))]
    pub device_memory: Option<u64>,

    /// Scheduling policy: best-effort, equal-share or fixed-share [default: best-effort].
    #[arg(long, value_name = "POLICY", value_parser = parse_policy)]
    pub policy: Option<Policy>,

    /// Device time slice in µs, 1000..=30000 [default: 2000 with ≤ 8 vGPUs, 1000 above].
    #[arg(long, value_name = "N", value_parser = parse_timeslice)]
    pub timeslice_us: Option<u32>,

    /// vGPU type file (TOML or JSON) that overrides or extends the built-in types.
    #[arg(long = "types", value_name = "FILE")]
    pub types_file: Option<PathBuf>,

    /// Print the vGPU types (one per line: name, mdev-style description, available instances
    /// given `--device-memory`) and exit.
    #[arg(long, group = "listing")]
    pub list_types: bool,

    /// With `--list-types` or `--list-engines`: print JSON.
    #[arg(long, requires = "listing")]
    pub json: bool,

    /// Scanouts (heads) of every vGPU [default: the type's max_heads].
    #[arg(long, value_name = "N", value_parser = parse_scanouts)]
    pub scanouts: Option<u32>,

    /// Preferred resolution of each scanout [default: 1280x800 within the type's maximum].
    #[arg(long, value_name = "WxH")]
    pub resolution: Option<Resolution>,

    /// Seccomp filters per thread and Landlock after start-up; `off` is for debugging only.
    #[arg(long, value_name = "on|off", value_enum, default_value_t = crate::sandbox::SandboxMode::On)]
    pub sandbox: crate::sandbox::SandboxMode,

    /// Log per-vGPU utilization, memory and share every SECS seconds (0: off) [default: 0].
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(0..=MAX_STATS_INTERVAL))]
    pub stats_interval: Option<u64>,

    // ---- Operating the daemon: control socket, persistence, metrics, claim (issue 8) ----
    /// Serve the control protocol (vgpuctl; mdev/README.md) on this UNIX socket [default:
    /// $VGPUD_CONTROL, else /run/vgpud/control.sock; none with --fd].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Let this group use the control socket (mode 0660 instead of 0600).
    #[arg(long, value_name = "GROUP")]
    pub control_group: Option<String>,

    /// Keep defined instances and scheduler settings in DIR/state.json [default: /var/lib/vgpud].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Put the sockets of instances created without a socket path in DIR [default: /run/vgpud].
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,

    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// VM-name → type/instance map (TOML) consulted when a per-VM relay claims an instance.
    #[arg(long, value_name = "FILE")]
    pub vm_map: Option<PathBuf>,

    // ── libvirt, socket access and logging (issue 8 §4) ──
    /// Accepted as libvirt passes it for `<acceleration accel3d='yes'/>`; VIRGL (the path of our
    /// compute channel) is offered to every guest either way.
    #[arg(long)]
    pub virgl: bool,

    /// DRM render node of the GPU to use (libvirt passes `/dev/dri/renderD*`); must be a DRM
    /// character device. Picks the Vulkan device whose node it is: alone it means `--engine
    /// vulkan` on that device, with `--engine vulkan[:INDEX|:NAME]` that device must be the node's;
    /// with `--engine cpu` it is checked and ignored (logged).
    #[arg(long, value_name = "PATH")]
    pub render_node: Option<PathBuf>,

    /// Group owning the vGPU sockets (name or gid), e.g. the group libvirt's QEMU user is in; makes
    /// them 0660 unless `--socket-mode` says otherwise.
    #[arg(long, value_name = "GROUP", value_parser = parse_group)]
    pub socket_group: Option<u32>,

    /// Mode of the vGPU sockets, octal [default: 0600, or 0660 with `--socket-group`].
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,

    /// Append log lines to this file too. Logs go to stderr, and also to syslog (the journal)
    /// when stderr is not a terminal, as under libvirt, which sends it to /dev/null. libvirt passes
    /// only `--fd`: set `VGPUD_LOG_FILE` in its environment instead.
    #[arg(long, value_name = "FILE", env = "VGPUD_LOG_FILE")]
    pub log_file: Option<PathBuf>,

    // ---- Engines (see README "Engines") ----
    /// Engine that runs every vGPU's jobs: `cpu`, `vulkan` (the best Vulkan device),
    /// `vulkan:INDEX` or `vulkan:NAME` (first device whose name contains NAME) [default: cpu].
    /// With a Vulkan engine, `--device-memory` defaults to the device heap minus a reserve.
    #[arg(long, value_name = "ENGINE", value_parser = parse_engine)]
    pub engine: Option<EngineChoice>,

    /// Loop back edges one invocation of a guest kernel may take, all its loops together, before
    /// its loops are cut short and its launch fails (1..=1073741824; guest modules run on the
    /// Vulkan engine). Bounds how long one piece of a hostile kernel holds the device.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LOOP_BUDGET,
          value_parser = clap::value_parser!(u32).range(1..=(MAX_LOOP_BUDGET as i64)))]
    pub loop_budget: u32,

    /// List the CPU engine and every Vulkan device (index, name, type, driver, heaps) and exit.
    #[arg(long, group = "listing")]
    pub list_engines: bool,

    /// `--device-memory` default the opened engine suggests (set by vgpud, not a flag).
    #[arg(skip)]
    pub engine_memory_default_mib: Option<u64>,
}

/// The engine `--engine` and `--render-node` select together, and a note to log when the node is
/// ignored:
/// - neither: the CPU engine (the default);
/// - `--render-node` alone: the Vulkan engine on the device whose render node it is (libvirt
///   passes the node of the GPU the VM is to use, so a VM configured with one gets that GPU);
/// - `--render-node` with `--engine vulkan[:INDEX|:NAME]`: the node narrows the choice (the
///   device must be the node's and match INDEX/NAME);
/// - `--render-node` with `--engine cpu`: the CPU engine, the node ignored with a warning. The
///   operator asked for the CPU engine explicitly, and libvirt adds `--render-node` to every VM
///   with 3D acceleration on a host with a render node on its own: refusing would stop those
///   VMs from starting for an option the operator did not write.
pub fn resolve_engine(
    engine: Option<&EngineChoice>,
    node: Option<(DrmNode, &Path)>,
) -> (EngineChoice, Option<String>) {
    let Some((node, path)) = node else {
        return (engine.cloned().unwrap_or_default(), None);
    };
    let on_node = |among: DeviceSelector| {
        EngineChoice::Vulkan(DeviceSelector::RenderNode {
            node,
            path: path.to_path_buf(),
            among: Box::new(among),
        })
    };
    match engine {
        None => (on_node(DeviceSelector::Best), None),
        Some(EngineChoice::Vulkan(s)) => (on_node(s.clone()), None),
        Some(EngineChoice::Cpu) => (
            EngineChoice::Cpu,
            Some(format!(
                "render node {} ({node}) ignored: --engine cpu was given, so the embedded CPU \
                 engine serves every vGPU",
                path.display()
            )),
        ),
    }
}

/// True when `args` (without the program name) ask for `--print-capabilities` (or `-c`), which
/// libvirt probes and which must answer whatever other options come with it, as QEMU's backend
/// does. Arguments after `--` are operands, not options.
pub fn wants_capabilities<S: AsRef<str>>(args: &[S]) -> bool {
    args.iter()
        .map(AsRef::as_ref)
        .take_while(|a| *a != "--")
        .any(|a| a == "--print-capabilities" || a == "-c")
}

/// Parses `--engine`.
pub fn parse_engine(s: &str) -> Result<EngineChoice, String> {
    s.parse()
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
    /// Our capabilities on this host: `virgl`, and `render-node` when the host has a DRM render
    /// node (see [`crate::libvirt::capability_features`]).
    pub fn current() -> Self {
        Self::for_dri_dir(std::path::Path::new(crate::libvirt::DRI_DIR))
    }

    /// The capabilities on a host whose DRM nodes are in `dir`.
    pub fn for_dri_dir(dir: &std::path::Path) -> Self {
        Capabilities {
            type_: "gpu",
            features: crate::libvirt::capability_features(dir),
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
    fn defaults_are_unset_until_resolved() {
        let o = parse(&["--socket-path", "/tmp/s"]).unwrap();
        assert_eq!(o.socket_path, Some(PathBuf::from("/tmp/s")));
        assert_eq!(o.scanouts, None);
        assert_eq!(o.resolution, None);
        assert_eq!(o.device_memory, None);
        assert_eq!(o.policy, None);
        assert!(o.vgpus.is_empty());
    }

    #[test]
    fn qemu_style_equals_and_short_forms() {
        let o = parse(&[
            "--socket-path=/tmp/s",
            "--scanouts=4",
            "--resolution=1920x1080",
        ])
        .unwrap();
        assert_eq!(o.scanouts, Some(4));
        assert_eq!(o.resolution.unwrap().width, 1920);
        let o = parse(&["-f", "3"]).unwrap();
        assert_eq!(o.fd, Some(3));
        assert!(parse(&["-c"]).unwrap().print_capabilities);
        assert!(parse(&["--print-capabilities"])
            .unwrap()
            .socket_path
            .is_none());
    }

    #[test]
    fn multi_vgpu_options() {
        let o = parse(&[
            "--vgpu",
            "socket=/a.sock,type=vgpu-64m",
            "--vgpu=socket=/b.sock,type=vgpu-2q,uuid=6c1e0d7e-4e8e-4bd4-8c36-0b0e8a3b2f10,scanouts=2,resolution=1024x768",
            "--device-memory",
            "8192",
            "--policy",
            "fixed-share",
            "--timeslice-us",
            "4000",
            "--stats-interval",
            "5",
        ])
        .unwrap();
        assert_eq!(o.vgpus.len(), 2);
        assert_eq!(o.vgpus[0].socket, PathBuf::from("/a.sock"));
        assert_eq!(o.vgpus[0].type_name.as_deref(), Some("vgpu-64m"));
        assert_eq!(o.vgpus[1].scanouts, Some(2));
        assert_eq!(
            o.vgpus[1].uuid.unwrap().to_string(),
            "6c1e0d7e-4e8e-4bd4-8c36-0b0e8a3b2f10"
        );
        assert_eq!(o.device_memory, Some(8192));
        assert_eq!(o.policy, Some(Policy::FixedShare));
        assert_eq!(o.timeslice_us, Some(4000));
        assert_eq!(o.stats_interval, Some(5));
        let o = parse(&["--fd", "4", "--attach", "/run/vgpud/vm1.sock"]).unwrap();
        assert_eq!(o.attach, Some(PathBuf::from("/run/vgpud/vm1.sock")));
        assert!(parse(&["--list-types", "--json"]).unwrap().json);
    }

    #[test]
    fn vgpu_spec_errors() {
        for bad in [
            "",
            "type=vgpu-1q",
            "socket=",
            "socket=/a,socket=/b",
            "socket=/a,type=x,type=y",
            "socket=/a,uuid=nope",
            "socket=/a,scanouts=0",
            "socket=/a,scanouts=17",
            "socket=/a,resolution=8x8",
            "socket=/a,color=blue",
            "socket=/a,justakey",
        ] {
            assert!(bad.parse::<VgpuSpec>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timeslice_range_is_enforced_with_exit_2() {
        for bad in ["999", "30001", "0", "x"] {
            let e = parse(&["--socket-path", "/a", "--timeslice-us", bad]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
        let e = parse(&["--socket-path", "/a", "--timeslice-us", "500"]).unwrap_err();
        assert!(e.to_string().contains("1000..=30000"), "{e}");
        for good in ["1000", "30000", "2000"] {
            parse(&["--socket-path", "/a", "--timeslice-us", good]).unwrap();
        }
    }

    #[test]
    fn rejects_bad_options() {
        assert!(parse(&["--socket-path", "/a", "--fd", "3"]).is_err());
        assert!(parse(&["--fd", "-1"]).is_err());
        assert!(parse(&["--attach", "/x"]).is_err(), "--attach needs --fd");
        assert!(parse(&["--json"]).is_err(), "--json needs --list-types");
        assert!(parse(&["--socket-path", "/a", "--scanouts", "0"]).is_err());
        assert!(parse(&["--socket-path", "/a", "--scanouts", "17"]).is_err());
        assert!(parse(&["--socket-path", "/a", "--resolution", "8x8"]).is_err());
        assert!(parse(&["--socket-path", "/a", "--resolution", "9000x100"]).is_err());
        assert!(parse(&["--socket-path", "/a", "--resolution", "1280"]).is_err());
        assert!(parse(&["--socket-path", "/a", "--device-memory", "0"]).is_err());
        assert!(parse(&["--socket-path", "/a", "--policy", "fair"]).is_err());
        assert!(parse(&["--socket-path", "/a", "--uuid", "zz"]).is_err());
        assert!(parse(&["--socket-path", "/a", "--bogus"]).is_err());
    }

    #[test]
    fn capabilities_json() {
        let none = std::path::Path::new("/nonexistent-dri");
        let v: serde_json::Value =
            serde_json::from_str(&Capabilities::for_dri_dir(none).to_json()).unwrap();
        assert_eq!(v, serde_json::json!({"type": "gpu", "features": ["virgl"]}));
    }

    #[test]
    fn print_capabilities_wins_over_any_other_option() {
        assert!(wants_capabilities(&["--print-capabilities"]));
        assert!(wants_capabilities(&[
            "--attach",
            "/x",
            "--print-capabilities"
        ]));
        assert!(wants_capabilities(&["--bogus", "-c"]));
        assert!(!wants_capabilities(&["--fd", "3"]));
        assert!(!wants_capabilities(&["--", "--print-capabilities"]));
    }

    #[test]
    fn libvirt_options() {
        let o = parse(&["--fd=20", "--virgl", "--render-node=/dev/dri/renderD128"]).unwrap();
        assert!(o.virgl);
        assert_eq!(o.render_node, Some(PathBuf::from("/dev/dri/renderD128")));
        let o = parse(&[
            "--vgpu",
            "socket=/a",
            "--socket-group",
            "0",
            "--socket-mode",
            "0666",
            "--log-file",
            "/var/log/vgpud.log",
        ])
        .unwrap();
        assert_eq!((o.socket_group, o.socket_mode), (Some(0), Some(0o666)));
        assert_eq!(o.log_file, Some(PathBuf::from("/var/log/vgpud.log")));
        for bad in [
            &["--socket-group", "no-such-group-vgpud"][..],
            &["--socket-mode", "888"],
            &["--socket-mode", "0460"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn render_node_and_engine_together() {
        let node = DrmNode {
            major: 226,
            minor: 128,
        };
        let path = Path::new("/dev/dri/renderD128");
        let on_node = |among| {
            EngineChoice::Vulkan(DeviceSelector::RenderNode {
                node,
                path: path.to_path_buf(),
                among: Box::new(among),
            })
        };
        assert_eq!(resolve_engine(None, None), (EngineChoice::Cpu, None));
        let vulkan1 = EngineChoice::Vulkan(DeviceSelector::Index(1));
        assert_eq!(
            resolve_engine(Some(&vulkan1), None),
            (vulkan1.clone(), None)
        );
        // The node alone means the Vulkan engine on it; with --engine vulkan[:X] it narrows.
        assert_eq!(
            resolve_engine(None, Some((node, path))),
            (on_node(DeviceSelector::Best), None)
        );
        assert_eq!(
            resolve_engine(Some(&vulkan1), Some((node, path))),
            (on_node(DeviceSelector::Index(1)), None)
        );
        // An explicit --engine cpu wins, and says so.
        let (choice, note) = resolve_engine(Some(&EngineChoice::Cpu), Some((node, path)));
        assert_eq!(choice, EngineChoice::Cpu);
        assert!(note
            .unwrap()
            .contains("/dev/dri/renderD128 (226:128) ignored"));
    }
}
