//! What libvirt gives a `type: gpu` vhost-user backend, and the per-VM relay of the shared daemon.
//!
//! libvirt 11 (`src/qemu/qemu_vhost_user_gpu.c`, `qemu_vhost_user.c`, `util/vircommand.c`):
//! - probes the descriptor's binary with exactly `--print-capabilities` before every start, and
//!   skips it unless the output is `{"type":"gpu","features":[...]}`; a VM with
//!   `<acceleration accel3d='yes'/>` needs `"virgl"`, one with a render node needs `"render-node"`.
//!   When the backend lists `"render-node"` and the VM names none, libvirt picks the host's first
//!   `/dev/dri/renderD*` itself and fails the start if `/dev/dri` cannot be read;
//! - then runs it as `BINARY --fd=N [--virgl] [--render-node=PATH]`, daemonized (double fork,
//!   `setsid`, cwd `/`), as the QEMU user and group (with that user's supplementary groups), with
//!   no capabilities, stdin/stdout/stderr on `/dev/null`, and libvirtd's own environment;
//! - hands it, open and locked across `exec`, the pidfile
//!   `<state dir>/<id>-<name>-<video alias>-vhost-user-gpu.pid` (the name cut to 20 characters),
//!   which it later reads to put the process in the VM's cgroup and to kill it when the VM stops.
//!
//! No argument names the VM, but that inherited pidfile does: [`identify`] reads it back from
//! `/proc/self/fd`, so the shared daemon can give each VM its own instance (`"vm"` in the claim).

use std::fs;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;
use vgpu_mdev::ctl::{Client, CtlError};
use vgpu_mdev::proto::Request;

use crate::driver::engine::vulkan::DrmNode;
use crate::signals;
use crate::vhost::daemon::Daemon;

/// The suffix of the pidfile libvirt hands a vhost-user GPU backend.
pub const PIDFILE_SUFFIX: &str = "-vhost-user-gpu.pid";
/// The major number of DRM device nodes (`/dev/dri/card*`, `/dev/dri/renderD*`).
pub const DRM_MAJOR: u64 = 226;
/// Where the host's DRM nodes are.
pub const DRI_DIR: &str = "/dev/dri";
/// The relay's configuration file when neither `--config` nor `$VGPUD_RELAY_CONFIG` names one.
pub const DEFAULT_RELAY_CONFIG: &str = "/etc/vgpud/relay.toml";
/// How often the relay's main thread checks whether the connection ended.
const RELAY_POLL: Duration = Duration::from_millis(100);
/// How long the relay waits for its threads at exit.
const RELAY_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// The VM a libvirt-started backend serves, as libvirt's pidfile names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmIdentity {
    /// The domain id of this run.
    pub id: u32,
    /// The domain name, cut by libvirt to its first 20 characters.
    pub name: String,
    /// The video device alias (`video0`).
    pub alias: String,
}

/// Reads a pidfile name `<id>-<name>-<alias>-vhost-user-gpu.pid` (`1-vm1-video0-...`).
pub fn parse_pidfile_name(file_name: &str) -> Option<VmIdentity> {
    let stem = file_name.strip_suffix(PIDFILE_SUFFIX)?;
    let (rest, alias) = stem.rsplit_once('-')?;
    let (id, name) = rest.split_once('-')?;
    if alias.is_empty() || name.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(VmIdentity {
        id: id.parse().ok()?,
        name: name.to_string(),
        alias: alias.to_string(),
    })
}

/// Finds the VM among the descriptors open in this process (`/proc/self/fd`): the pidfile libvirt
/// passed. `None` when not started by libvirt.
pub fn identify() -> Option<VmIdentity> {
    identify_in(Path::new("/proc/self/fd"))
}

/// [`identify`] over a directory of descriptor links (for tests).
pub fn identify_in(fd_dir: &Path) -> Option<VmIdentity> {
    let entries = fs::read_dir(fd_dir).ok()?;
    entries.flatten().find_map(|e| {
        let target = fs::read_link(e.path()).ok()?;
        parse_pidfile_name(target.file_name()?.to_str()?)
    })
}

/// The host's DRM render nodes (`renderD*` in `dir`), sorted.
pub fn render_nodes(dir: &Path) -> Vec<PathBuf> {
    let mut nodes: Vec<PathBuf> = fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("renderD"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

/// The capability features of a backend on a host whose DRM nodes are in `dri_dir`: `virgl`
/// always (the VIRGL path carries our channel), `render-node` only when the host has one —
/// listing it makes libvirt pick `/dev/dri/renderD*` for every VM and refuse to start any on a
/// host without `/dev/dri`.
pub fn capability_features(dri_dir: &Path) -> Vec<&'static str> {
    let mut features = vec!["virgl"];
    if !render_nodes(dri_dir).is_empty() {
        features.push("render-node");
    }
    features
}

/// Checks a `--render-node` path: it must be a DRM character device (major 226). Returns its
/// device number, which picks the Vulkan device whose render node it is.
pub fn check_render_node(path: &Path) -> Result<DrmNode, String> {
    let meta = fs::metadata(path).map_err(|e| format!("render node {}: {e}", path.display()))?;
    if !meta.file_type().is_char_device() {
        return Err(format!(
            "render node {} is not a character device",
            path.display()
        ));
    }
    let major = libc::major(meta.rdev()) as u64;
    if major != DRM_MAJOR {
        return Err(format!(
            "render node {} is not a DRM device (major {major}, expected {DRM_MAJOR})",
            path.display()
        ));
    }
    Ok(DrmNode {
        major: DRM_MAJOR as u32,
        minor: libc::minor(meta.rdev()),
    })
}

/// The path of the DRM node numbered `node` in `dri_dir` (`/dev/dri`), if there is one.
pub fn node_path(dri_dir: &Path, node: DrmNode) -> Option<PathBuf> {
    let entries = fs::read_dir(dri_dir).ok()?;
    entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
        fs::metadata(p).is_ok_and(|m| {
            m.file_type().is_char_device()
                && libc::major(m.rdev()) == node.major
                && libc::minor(m.rdev()) == node.minor
        })
    })
}

/// The relay's configuration file (TOML), written by the operator next to the shared daemon's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The shared daemon's control socket.
    pub control: Option<PathBuf>,
    /// The vGPU type to claim when the daemon's VM map names none for this VM.
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// Append log lines to this file as well.
    pub log_file: Option<PathBuf>,
}

/// Errors of the relay's configuration and claim.
#[derive(Debug, Error)]
pub enum RelayClientError {
    /// The configuration file could not be read.
    #[error("relay config {path}: {source}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The configuration file is not valid.
    #[error("relay config {path}: {message}")]
    ConfigParse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The control socket could not be reached or did not answer.
    #[error("shared daemon: {0}")]
    Control(CtlError),
    /// The daemon refused the claim (`kind`, sentence).
    #[error("shared daemon refused the claim ({0}): {1}")]
    Refused(String, String),
    /// The reply is not a claim reply.
    #[error("unexpected claim reply: {0}")]
    BadReply(String),
}

impl RelayConfig {
    /// Reads `path`; a missing default file is an empty configuration, a missing named one an
    /// error.
    pub fn load(path: &Path, must_exist: bool) -> Result<Self, RelayClientError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !must_exist => {
                return Ok(Self::default())
            }
            Err(source) => {
                return Err(RelayClientError::ConfigRead {
                    path: path.into(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|e| RelayClientError::ConfigParse {
            path: path.into(),
            message: e.to_string(),
        })
    }
}

/// An instance the shared daemon handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Its UUID.
    pub uuid: String,
    /// Its vhost-user socket.
    pub socket: PathBuf,
    /// Its vGPU type.
    pub type_name: String,
}

/// The claim request: `{"cmd":"claim"}` with `"type"` and `"vm"` when known.
pub fn claim_request(type_name: Option<&str>, vm: Option<&str>) -> Request {
    Request::Claim {
        v: None,
        type_name: type_name.map(str::to_string),
        vm: vm.map(str::to_string),
    }
}

/// Reads an `ok` claim reply: `{"ok":true,"uuid":..,"socket":..,"type":..}`.
pub fn parse_claim_reply(reply: &Value) -> Result<Claim, RelayClientError> {
    let field = |k: &str| {
        reply[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| RelayClientError::BadReply(format!("no \"{k}\" in {reply}")))
    };
    Ok(Claim {
        uuid: field("uuid")?,
        socket: PathBuf::from(field("socket")?),
        type_name: field("type")?,
    })
}

/// Asks the shared daemon on `control` for an instance (see [`claim_request`]), through the
/// control protocol's one client.
pub fn claim(
    control: &Path,
    type_name: Option<&str>,
    vm: Option<&str>,
) -> Result<Claim, RelayClientError> {
    let reply = Client::new(control)
        .call(claim_request(type_name, vm))
        .map_err(|e| match e {
            CtlError::Daemon { kind, message } => RelayClientError::Refused(kind, message),
            other => RelayClientError::Control(other),
        })?;
    parse_claim_reply(&reply)
}

/// Relays the libvirt connection `fd` into the vGPU socket `socket` of a running daemon until
/// either side closes it or a stop signal (SIGTERM at VM stop) arrives.
pub fn relay_until_stopped(fd: RawFd, socket: &Path) -> Result<(), String> {
    let set = signals::block_stop_signals().map_err(|e| format!("signals: {e}"))?;
    let mut daemon = Daemon::new().map_err(|e| e.to_string())?;
    daemon.attach_fd(fd, socket).map_err(|e| e.to_string())?;
    crate::sandbox::enter(crate::sandbox::ThreadKind::Main);
    log::info!("--fd {fd}: relaying to {}", socket.display());
    loop {
        if let Some(sig) = signals::wait_signal(&set, RELAY_POLL) {
            log::info!("signal {sig}: ending the relay");
            break;
        }
        if daemon.finished() {
            log::info!("--fd {fd}: connection ended");
            break;
        }
    }
    if !daemon.stop(RELAY_STOP_TIMEOUT) {
        log::warn!("relay threads did not end within {RELAY_STOP_TIMEOUT:?}; exiting anyway");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    #[test]
    fn pidfile_names_give_the_vm() {
        assert_eq!(
            parse_pidfile_name("1-vm1-video0-vhost-user-gpu.pid"),
            Some(VmIdentity {
                id: 1,
                name: "vm1".into(),
                alias: "video0".into()
            })
        );
        let v = parse_pidfile_name("17-web-front-2-video1-vhost-user-gpu.pid").unwrap();
        assert_eq!(
            (v.id, v.name.as_str(), v.alias.as_str()),
            (17, "web-front-2", "video1")
        );
        for bad in [
            "vm1-video0-vhost-user-gpu.pid",
            "x-vm1-video0-vhost-user-gpu.pid",
            "1-video0-vhost-user-gpu.pid",
            "1-vm1-video0.pid",
            "libvirtd.pid",
        ] {
            assert_eq!(parse_pidfile_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn identity_is_found_among_open_descriptors() {
        let dir = tempfile_dir("ident");
        let fds = dir.join("fd");
        fs::create_dir(&fds).unwrap();
        std::os::unix::fs::symlink("/dev/null", fds.join("0")).unwrap();
        std::os::unix::fs::symlink("socket:[1234]", fds.join("3")).unwrap();
        assert_eq!(identify_in(&fds), None);
        std::os::unix::fs::symlink(
            "/run/libvirt/qemu/3-db-video0-vhost-user-gpu.pid",
            fds.join("5"),
        )
        .unwrap();
        assert_eq!(identify_in(&fds).unwrap().name, "db");
        // Outside libvirt this process holds no such pidfile.
        assert_eq!(identify(), None);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn render_node_feature_follows_the_host() {
        let dir = tempfile_dir("dri");
        assert_eq!(capability_features(&dir), vec!["virgl"]);
        assert_eq!(capability_features(&dir.join("absent")), vec!["virgl"]);
        fs::write(dir.join("card0"), b"").unwrap();
        assert_eq!(capability_features(&dir), vec!["virgl"]);
        fs::write(dir.join("renderD128"), b"").unwrap();
        assert_eq!(capability_features(&dir), vec!["virgl", "render-node"]);
        assert_eq!(render_nodes(&dir), vec![dir.join("renderD128")]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn render_node_must_be_a_drm_device() {
        assert!(check_render_node(Path::new("/nonexistent/renderD128"))
            .unwrap_err()
            .contains("No such file"));
        assert!(check_render_node(Path::new("/etc/hostname"))
            .unwrap_err()
            .contains("not a character device"));
        assert!(check_render_node(Path::new("/dev/null"))
            .unwrap_err()
            .contains("not a DRM device (major 1"));
    }

    /// A DRM character device made in a temporary directory (needs root: CAP_MKNOD).
    fn fake_drm_node(dir: &Path, minor: u32) -> std::io::Result<PathBuf> {
        let path = dir.join(format!("renderD{minor}"));
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a plain syscall on a path we own.
        let r = unsafe {
            libc::mknod(
                c.as_ptr(),
                libc::S_IFCHR | 0o600,
                libc::makedev(DRM_MAJOR as u32, minor),
            )
        };
        if r == 0 {
            Ok(path)
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    #[test]
    fn a_drm_node_gives_its_number_and_is_found_by_it() {
        let dir = tempfile_dir("drmnode");
        match fake_drm_node(&dir, 201) {
            Ok(path) => {
                let node = check_render_node(&path).unwrap();
                assert_eq!(
                    node,
                    DrmNode {
                        major: 226,
                        minor: 201
                    }
                );
                assert_eq!(node_path(&dir, node), Some(path));
                assert_eq!(
                    node_path(
                        &dir,
                        DrmNode {
                            major: 226,
                            minor: 202
                        }
                    ),
                    None
                );
            }
            Err(e) if std::env::var("VGPU_REQUIRE_VGPUD").is_ok_and(|v| v == "1") => {
                panic!("mknod of a DRM node (run as root, as scripts/test.sh does): {e}")
            }
            Err(e) => eprintln!("note: cannot make a DRM node here ({e}); skipped"),
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn relay_config_file() {
        let dir = tempfile_dir("cfg");
        let path = dir.join("relay.toml");
        assert_eq!(
            RelayConfig::load(&path, false).unwrap(),
            RelayConfig::default()
        );
        assert!(RelayConfig::load(&path, true).is_err());
        fs::write(
            &path,
            "control = \"/run/vgpud/control.sock\"\ntype = \"vgpu-2q\"\nlog_file = \"/var/log/r.log\"\n",
        )
        .unwrap();
        let c = RelayConfig::load(&path, true).unwrap();
        assert_eq!(c.type_name.as_deref(), Some("vgpu-2q"));
        assert_eq!(c.control, Some(PathBuf::from("/run/vgpud/control.sock")));
        fs::write(&path, "sockets = 3\n").unwrap();
        let e = RelayConfig::load(&path, true).unwrap_err().to_string();
        assert!(e.contains("relay.toml") && e.contains("sockets"), "{e}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn claim_round_trip() {
        let dir = tempfile_dir("claim");
        let path = dir.join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let mut got = Vec::new();
            for reply in [
                r#"{"ok":true,"uuid":"u-1","socket":"/run/vgpud/u-1.sock","type":"vgpu-1q"}"#,
                r#"{"ok":false,"kind":"no-room","error":"no free vgpu-4q instance"}"#,
                r#"{"ok":true}"#,
            ] {
                let (s, _) = listener.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).unwrap();
                got.push(serde_json::from_str::<Value>(&line).unwrap());
                (&s).write_all(format!("{reply}\n").as_bytes()).unwrap();
            }
            got
        });
        let c = claim(&path, None, Some("vm1")).unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/vgpud/u-1.sock"));
        assert_eq!((c.uuid.as_str(), c.type_name.as_str()), ("u-1", "vgpu-1q"));
        let e = claim(&path, Some("vgpu-4q"), None).unwrap_err().to_string();
        assert!(e.contains("(no-room): no free vgpu-4q instance"), "{e}");
        assert!(matches!(
            claim(&path, None, None),
            Err(RelayClientError::BadReply(_))
        ));
        let requests = server.join().unwrap();
        assert_eq!(requests[0], json!({"cmd": "claim", "v": 1, "vm": "vm1"}));
        assert_eq!(
            requests[1],
            json!({"cmd": "claim", "v": 1, "type": "vgpu-4q"})
        );
        let e = claim(&dir.join("absent.sock"), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("absent.sock"), "{e}");
        fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "vgpud-libvirt-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
