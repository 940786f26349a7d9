//! The daemon's configuration: the `--config` file (TOML, or JSON by extension) merged with the
//! command line into a [`Plan`] — one driver core and the vGPUs to serve — checked against the
//! device's capacity before anything is created.
//!
//! Precedence: a command-line setting overrides the file's; vGPUs come from `--socket-path`
//! (or `--fd`) first, then the file's `[[vgpu]]` entries, then each `--vgpu`, named `vgpu0`,
//! `vgpu1`, … in that order.
//!
//! ```toml
//! device_memory_mib = 4096          # --device-memory
//! policy = "equal-share"            # --policy
//! timeslice_us = 2000               # --timeslice-us (1000..=30000)
//! types_file = "types.toml"         # --types, relative to this file
//! type = "vgpu-1q"                  # --type: default for entries without one
//! scanouts = 1                      # --scanouts (default: the type's max_heads)
//! resolution = "1280x800"           # --resolution (default: 1280x800 within the type)
//! stats_interval = 10               # --stats-interval (0: off)
//! control_socket = "/run/vgpud/control.sock"
//!
//! [[vgpu]]
//! socket = "/run/vgpud/vm1.sock"
//! type = "vgpu-1q"
//! uuid = "6c1e0d7e-4e8e-4bd4-8c36-0b0e8a3b2f10"   # default: derived from the socket path
//!
//! [[vgpu]]
//! socket = "/run/vgpud/vm2.sock"
//! type = "vgpu-2q"
//! scanouts = 2
//! ```
//!
//! The same in JSON: `{"device_memory_mib": 4096, "vgpu": [{"socket": "...", "type": "..."}]}`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;
use vgpu_mdev::{TypeTable, VgpuType};

use crate::device::{DeviceConfig, DEFAULT_HEIGHT, DEFAULT_WIDTH};
use crate::driver::{self, Policy, DEFAULT_DEVICE_MEMORY_MIB};
use crate::options::{
    check_timeslice, parse_policy, parse_scanouts, Options, Resolution, VgpuSpec, DEFAULT_TYPE,
    MAX_DEVICE_MEMORY_MIB, MAX_STATS_INTERVAL,
};

const MIB: u64 = 1 << 20;

/// Why the configuration cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The command line or config file is invalid (exit status 2).
    #[error("{0}")]
    Usage(String),
    /// The device cannot hold the vGPUs asked for (exit status 3).
    #[error("{0}")]
    Capacity(String),
}

impl ConfigError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigError::Usage(_) => 2,
            ConfigError::Capacity(_) => 3,
        }
    }
}

fn usage(msg: impl Into<String>) -> ConfigError {
    ConfigError::Usage(msg.into())
}

/// One `[[vgpu]]` entry of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VgpuEntry {
    /// The vhost-user socket path.
    pub socket: PathBuf,
    /// The vGPU type (default: `--type`, else `vgpu-1q`).
    #[serde(rename = "type", default)]
    pub type_name: Option<String>,
    /// The vGPU's UUID (default: derived from the socket path).
    #[serde(default)]
    pub uuid: Option<String>,
    /// Scanouts (default: the global setting, else the type's `max_heads`).
    #[serde(default)]
    pub scanouts: Option<u32>,
    /// Preferred resolution `WxH` (default: the global setting, else 1280x800 within the type).
    #[serde(default)]
    pub resolution: Option<String>,
}

/// The `--config` file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Device memory in MiB.
    #[serde(default)]
    pub device_memory_mib: Option<u64>,
    /// `best-effort`, `equal-share` or `fixed-share`.
    #[serde(default)]
    pub policy: Option<String>,
    /// Device time slice in µs (1000..=30000).
    #[serde(default)]
    pub timeslice_us: Option<u32>,
    /// Type file extending the built-in types; relative to the config file's directory.
    #[serde(default)]
    pub types_file: Option<PathBuf>,
    /// Default vGPU type for entries without `type`.
    #[serde(rename = "type", default)]
    pub type_name: Option<String>,
    /// Default scanouts of every vGPU.
    #[serde(default)]
    pub scanouts: Option<u32>,
    /// Default preferred resolution `WxH` of every vGPU.
    #[serde(default)]
    pub resolution: Option<String>,
    /// Seconds between per-vGPU stats log lines (0: off).
    #[serde(default)]
    pub stats_interval: Option<u64>,
    /// Control socket path.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Group allowed to use the control socket.
    #[serde(default)]
    pub control_group: Option<String>,
    /// State directory.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Directory of default instance sockets.
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
    /// Prometheus endpoint address.
    #[serde(default)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// VM map of `claim`.
    #[serde(default)]
    pub vm_map: Option<PathBuf>,
    /// The vGPUs to serve.
    #[serde(default)]
    pub vgpu: Vec<VgpuEntry>,
}

impl ConfigFile {
    /// Parses `text` as TOML.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Parses `text` as JSON.
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads `path`: JSON if it ends in `.json`, else TOML. A relative `types_file` is made
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("cannot read config file {}: {e}", path.display())))?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let parsed = if is_json {
            Self::from_json(&text)
        } else {
            Self::from_toml(&text)
        };
        let mut file = parsed.map_err(|e| usage(format!("config file {}: {e}", path.display())))?;
        if let (Some(types), Some(dir)) = (&file.types_file, path.parent()) {
            if types.is_relative() {
                file.types_file = Some(dir.join(types));
            }
        }
        Ok(file)
    }

    fn specs(&self) -> Result<Vec<VgpuSpec>, ConfigError> {
        let bad = |i: usize, e: String| usage(format!("config file: [[vgpu]] #{}: {e}", i + 1));
        self.vgpu
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if v.socket.as_os_str().is_empty() {
                    return Err(bad(i, "empty socket path".into()));
                }
                Ok(VgpuSpec {
                    socket: v.socket.clone(),
                    type_name: v.type_name.clone(),
                    uuid: v
                        .uuid
                        .as_deref()
                        .map(Uuid::parse_str)
                        .transpose()
                        .map_err(|e| bad(i, format!("uuid: {e}")))?,
                    scanouts: v
                        .scanouts
                        .map(|n| parse_scanouts(&n.to_string()))
                        .transpose()
                        .map_err(|e| bad(i, e))?,
                    resolution: v
                        .resolution
                        .as_deref()
                        .map(str::parse)
                        .transpose()
                        .map_err(|e| bad(i, e))?,
                })
            })
            .collect()
    }
}

/// Device-wide settings after merging the file and the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The driver core's configuration.
    pub driver: driver::DeviceConfig,
    /// Default type for vGPUs without one.
    pub default_type: String,
    /// Default scanouts.
    pub scanouts: Option<u32>,
    /// Default resolution.
    pub resolution: Option<Resolution>,
    /// Seconds between stats log lines (0: off).
    pub stats_interval: u64,
    /// Control socket path given (else the default, see [`Operations`]).
    pub control_socket: Option<PathBuf>,
    /// Control socket, state, metrics and claim settings.
    pub ops: Operations,
    file_vgpus: Vec<VgpuSpec>,
}

/// Where the daemon's operator interfaces live (issue 8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Operations {
    /// Group of the control socket (mode 0660).
    pub control_group: Option<String>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Directory of default instance sockets.
    pub run_dir: PathBuf,
    /// Prometheus endpoint.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// VM map of `claim`.
    pub vm_map: Option<PathBuf>,
}

/// Default `--state-dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vgpud";
/// Default `--run-dir`.
pub const DEFAULT_RUN_DIR: &str = "/run/vgpud";

/// Loads `--config` (if any) and merges it with the command line.
pub fn settings(opts: &Options) -> Result<Settings, ConfigError> {
    let file = match &opts.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let memory_mib = opts
        .device_memory
        .or(file.device_memory_mib)
        .or(opts.engine_memory_default_mib)
        .unwrap_or(DEFAULT_DEVICE_MEMORY_MIB);
    if !(1..=MAX_DEVICE_MEMORY_MIB).contains(&memory_mib) {
        return Err(usage(format!(
            "device memory {memory_mib} MiB is outside 1..={MAX_DEVICE_MEMORY_MIB}"
        )));
    }
    let policy = match (opts.policy, &file.policy) {
        (Some(p), _) => p,
        (None, Some(text)) => parse_policy(text).map_err(|e| usage(format!("config file: {e}")))?,
        (None, None) => Policy::default(),
    };
    let timeslice_us = opts
        .timeslice_us
        .or(file.timeslice_us)
        .map(check_timeslice)
        .transpose()
        .map_err(usage)?;
    let types_path = opts.types_file.as_ref().or(file.types_file.as_ref());
    let types = match types_path {
        Some(path) => TypeTable::load_file(path).map_err(|e| usage(format!("--types: {e}")))?,
        None => TypeTable::builtin(),
    };
    let scanouts = opts
        .scanouts
        .or(file.scanouts)
        .map(|n| parse_scanouts(&n.to_string()))
        .transpose()
        .map_err(|e| usage(format!("config file: {e}")))?;
    let resolution = match (opts.resolution, &file.resolution) {
        (Some(r), _) => Some(r),
        (None, Some(text)) => Some(
            text.parse()
                .map_err(|e| usage(format!("config file: resolution: {e}")))?,
        ),
        (None, None) => None,
    };
    let stats_interval = opts.stats_interval.or(file.stats_interval).unwrap_or(0);
    if stats_interval > MAX_STATS_INTERVAL {
        return Err(usage(format!(
            "stats interval {stats_interval} s is above {MAX_STATS_INTERVAL}"
        )));
    }
    let default_type = opts
        .type_name
        .clone()
        .or(file.type_name.clone())
        .unwrap_or_else(|| DEFAULT_TYPE.to_string());
    Ok(Settings {
        driver: driver::DeviceConfig {
            memory_mib,
            policy,
            timeslice_us,
            types,
            ..driver::DeviceConfig::default()
        },
        default_type,
        scanouts,
        resolution,
        stats_interval,
        control_socket: opts.control_socket.clone().or(file.control_socket.clone()),
        ops: Operations {
            control_group: opts.control_group.clone().or(file.control_group.clone()),
            state_dir: opts
                .state_dir
                .clone()
                .or(file.state_dir.clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            run_dir: opts
                .run_dir
                .clone()
                .or(file.run_dir.clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR)),
            metrics_addr: opts.metrics_addr.or(file.metrics_addr),
            vm_map: opts.vm_map.clone().or(file.vm_map.clone()),
        },
        file_vgpus: file.specs()?,
    })
}

/// One vGPU to create and serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgpuPlan {
    /// `vgpuN`, for logs and the control socket.
    pub name: String,
    /// Its socket; `None` for the standalone `--fd` vGPU.
    pub socket: Option<PathBuf>,
    /// Its type's name.
    pub type_name: String,
    /// Its UUID.
    pub uuid: Uuid,
    /// Its virtio-gpu device configuration.
    pub device: DeviceConfig,
}

/// Everything the daemon will create, validated.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Device-wide settings.
    pub settings: Settings,
    /// The vGPUs, in creation order.
    pub vgpus: Vec<VgpuPlan>,
}

/// A UUID derived from `key` (stable across restarts for the same socket path).
pub fn stable_uuid(key: &str) -> Uuid {
    let fnv = |seed: u64| {
        key.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&fnv(0xcbf2_9ce4_8422_2325).to_le_bytes());
    bytes[8..].copy_from_slice(&fnv(0x6c62_272e_07bb_0142).to_le_bytes());
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// The virtio-gpu configuration of vGPU `name` of type `ty`: `--scanouts`/`--resolution` (or
/// the spec's own) within the type's limits.
pub fn device_config(
    name: &str,
    ty: &VgpuType,
    spec_scanouts: Option<u32>,
    spec_resolution: Option<Resolution>,
    settings: &Settings,
) -> Result<DeviceConfig, ConfigError> {
    let num_scanouts = match spec_scanouts.or(settings.scanouts) {
        Some(n) if n > ty.max_heads => {
            return Err(usage(format!(
                "{name}: {n} scanouts, but type {} has at most {} (max_heads)",
                ty.name, ty.max_heads
            )))
        }
        Some(n) => n,
        None => ty.max_heads,
    };
    let (width, height) = match spec_resolution.or(settings.resolution) {
        Some(r) if r.width > ty.max_width || r.height > ty.max_height => {
            return Err(usage(format!(
                "{name}: resolution {r} is above type {}'s maximum {}x{}",
                ty.name, ty.max_width, ty.max_height
            )))
        }
        Some(r) => (r.width, r.height),
        None => (
            DEFAULT_WIDTH.min(ty.max_width),
            DEFAULT_HEIGHT.min(ty.max_height),
        ),
    };
    Ok(DeviceConfig {
        num_scanouts,
        width,
        height,
        max_width: ty.max_width,
        max_height: ty.max_height,
        edid: true,
    })
}

/// The virtio-gpu configuration of an instance created at run time: the daemon's `--scanouts`
/// and `--resolution`, clamped to what type `ty` allows.
pub fn live_device_config(ty: &VgpuType, settings: &Settings) -> DeviceConfig {
    let num_scanouts = settings
        .scanouts
        .unwrap_or(ty.max_heads)
        .clamp(1, ty.max_heads.max(1));
    let (w, h) = settings
        .resolution
        .map_or((DEFAULT_WIDTH, DEFAULT_HEIGHT), |r| (r.width, r.height));
    DeviceConfig {
        num_scanouts,
        width: w.min(ty.max_width),
        height: h.min(ty.max_height),
        max_width: ty.max_width,
        max_height: ty.max_height,
        edid: true,
    }
}

/// Merges the command line and config file into a validated [`Plan`]: every type exists, no
/// socket or UUID is used twice, no type has more vGPUs than its `max_instances`, and the
/// partitions fit in device memory.
pub fn plan(opts: &Options) -> Result<Plan, ConfigError> {
    let settings = settings(opts)?;
    let mut specs: Vec<(Option<PathBuf>, VgpuSpec)> = Vec::new();
    let shorthand = |socket: Option<PathBuf>| VgpuSpec {
        socket: socket.clone().unwrap_or_default(),
        type_name: None,
        uuid: opts.uuid,
        scanouts: None,
        resolution: None,
    };
    if let Some(path) = &opts.socket_path {
        specs.push((Some(path.clone()), shorthand(Some(path.clone()))));
    }
    if opts.fd.is_some() {
        if !settings.file_vgpus.is_empty() || !opts.vgpus.is_empty() {
            return Err(usage(
                "--fd serves one vGPU; to share a daemon among VMs run it with --vgpu/--config \
                 and start the per-VM process as `vgpud --fd N --attach SOCKET`",
            ));
        }
        specs.push((None, shorthand(None)));
    }
    for spec in settings.file_vgpus.iter().chain(&opts.vgpus) {
        specs.push((Some(spec.socket.clone()), spec.clone()));
    }
    // With no vGPU the daemon starts empty and waits for `vgpuctl create`.
    let mut sockets = HashSet::new();
    let mut uuids = HashSet::new();
    let mut vgpus = Vec::with_capacity(specs.len());
    for (index, (socket, spec)) in specs.into_iter().enumerate() {
        let name = format!("vgpu{index}");
        let type_name = spec
            .type_name
            .clone()
            .unwrap_or_else(|| settings.default_type.clone());
        let ty = settings.driver.types.get(&type_name).ok_or_else(|| {
            let known: Vec<&str> = settings.driver.types.iter().map(|t| &*t.name).collect();
            usage(format!(
                "{name}: unknown vGPU type {type_name:?} (known: {}; see --list-types)",
                known.join(", ")
            ))
        })?;
        if let Some(path) = &socket {
            let key = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            if !sockets.insert(key) {
                return Err(usage(format!(
                    "{name}: socket {} is used by two vGPUs",
                    path.display()
                )));
            }
        }
        let uuid = spec.uuid.unwrap_or_else(|| match &socket {
            Some(path) => stable_uuid(
                &std::path::absolute(path)
                    .unwrap_or_else(|_| path.clone())
                    .to_string_lossy(),
            ),
            None => stable_uuid(&format!("fd/{}/{:?}", std::process::id(), opts.fd)),
        });
        if !uuids.insert(uuid) {
            return Err(usage(format!("{name}: UUID {uuid} is used by two vGPUs")));
        }
        let device = device_config(&name, ty, spec.scanouts, spec.resolution, &settings)?;
        vgpus.push(VgpuPlan {
            name,
            socket,
            type_name,
            uuid,
            device,
        });
    }
    check_capacity(&settings, &vgpus)?;
    Ok(Plan { settings, vgpus })
}

/// Checks `max_instances` per type and that the partitions fit in device memory.
fn check_capacity(settings: &Settings, vgpus: &[VgpuPlan]) -> Result<(), ConfigError> {
    let types = &settings.driver.types;
    let mut counts: HashMap<&str, u32> = HashMap::new();
    for v in vgpus {
        *counts.entry(&v.type_name).or_default() += 1;
    }
    for ty in types.iter() {
        let n = counts.get(ty.name.as_str()).copied().unwrap_or(0);
        if n > ty.max_instances {
            return Err(ConfigError::Capacity(format!(
                "too many vGPUs of type {}: {n} requested, the type allows at most {} per device \
                 (max_instance={})",
                ty.name, ty.max_instances, ty.max_instances
            )));
        }
    }
    let total = settings.driver.memory_mib.saturating_mul(MIB);
    let mut used = 0u64;
    for v in vgpus {
        let Some(ty) = types.get(&v.type_name) else {
            continue;
        };
        let after = used.saturating_add(ty.framebuffer_bytes);
        if after > total {
            return Err(ConfigError::Capacity(format!(
                "device memory full: {} (type {}) needs {} MiB but only {} of {} MiB are free; \
                 at most {} vGPUs of type {} fit in --device-memory {}",
                v.name,
                ty.name,
                ty.framebuffer_bytes / MIB,
                (total - used) / MIB,
                total / MIB,
                total / ty.framebuffer_bytes.max(1),
                ty.name,
                total / MIB
            )));
        }
        used = after;
    }
    Ok(())
}

/// One line of `--list-types`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypeListing {
    /// Type name.
    pub name: String,
    /// mdev-style description.
    pub description: String,
    /// Partition size in bytes.
    pub framebuffer_bytes: u64,
    /// `max_instances` of the type.
    pub max_instances: u32,
    /// Display heads.
    pub max_heads: u32,
    /// Largest width.
    pub max_width: u32,
    /// Largest height.
    pub max_height: u32,
    /// Fixed-share weight.
    pub weight: u32,
    /// Per-type time slice.
    pub timeslice_us: Option<u32>,
    /// How many vGPUs of only this type the device memory holds, capped by `max_instances`.
    pub available_instances: u32,
}

/// The type table as listed by `--list-types` for a device of `memory_mib`.
pub fn list_types(types: &TypeTable, memory_mib: u64) -> Vec<TypeListing> {
    let total = memory_mib.saturating_mul(MIB);
    types
        .iter()
        .map(|t| TypeListing {
            name: t.name.clone(),
            description: t.description(),
            framebuffer_bytes: t.framebuffer_bytes,
            max_instances: t.max_instances,
            max_heads: t.max_heads,
            max_width: t.max_width,
            max_height: t.max_height,
            weight: t.weight,
            timeslice_us: t.timeslice_us,
            available_instances: u32::try_from(total / t.framebuffer_bytes.max(1))
                .unwrap_or(u32::MAX)
                .min(t.max_instances),
        })
        .collect()
}

/// The text form of `--list-types`: one type per line, name first.
pub fn format_types(list: &[TypeListing]) -> String {
    let width = list.iter().map(|t| t.name.len()).max().unwrap_or(0);
    list.iter()
        .map(|t| {
            format!(
                "{:width$}  {}, available_instances={}\n",
                t.name, t.description, t.available_instances
            )
        })
        .collect()
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
