//! The vhost-user-gpu backend process a guest is booted against: our `vgpud` or QEMU's own C backend.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::vm::{spawn_tied, stop_child};
use super::GuestError;

/// QEMU's own vhost-user-gpu backend, the reference peer.
pub const QEMU_BACKEND: &str = "/usr/lib/qemu/vhost-user-gpu";

/// Which backend serves the vhost-user socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// This project's daemon (`$VGPUD`, default `vgpud` next to the test binary's target dir).
    Vgpud,
    /// QEMU's `/usr/lib/qemu/vhost-user-gpu`.
    Qemu,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Vgpud => "vgpud",
            BackendKind::Qemu => "qemu",
        })
    }
}

impl BackendKind {
    /// The backend selected by `VGPU_TEST_BACKEND` (`vgpud` or `qemu`), `None` when unset (run both).
    pub fn from_env() -> Option<Self> {
        match std::env::var("VGPU_TEST_BACKEND").ok()?.as_str() {
            "qemu" => Some(BackendKind::Qemu),
            _ => Some(BackendKind::Vgpud),
        }
    }

    /// The backend's executable.
    pub fn binary(&self) -> PathBuf {
        match self {
            BackendKind::Qemu => PathBuf::from(QEMU_BACKEND),
            BackendKind::Vgpud => std::env::var_os("VGPUD")
                .map(PathBuf::from)
                .or_else(crate::backend::vgpud_path)
                .unwrap_or_else(|| PathBuf::from("vgpud (not built)")),
        }
    }
}

/// A running backend serving one vhost-user socket; killed on drop.
pub struct Backend {
    child: Child,
    kind: BackendKind,
    sockets: Vec<PathBuf>,
    log: PathBuf,
}

impl Backend {
    /// Starts `kind` on `socket`, logging its output to `log`, and waits (up to `timeout`) until the
    /// socket exists.
    pub fn spawn(
        kind: BackendKind,
        socket: &Path,
        log: &Path,
        timeout: Duration,
    ) -> Result<Self, GuestError> {
        let binary = kind.binary();
        if !binary.is_file() {
            let hint = match kind {
                BackendKind::Vgpud => "build it first: cargo build -p vgpu-backend --bin vgpud",
                BackendKind::Qemu => "part of qemu-system-gui from bookworm-backports",
            };
            return Err(GuestError::MissingDependency(format!(
                "backend {} ({hint})",
                binary.display()
            )));
        }
        let mut cmd = Command::new(&binary);
        cmd.arg("--socket-path").arg(socket);
        Self::start(cmd, kind, vec![socket.to_path_buf()], log, timeout)
    }

    /// Starts `vgpud` with `args` (e.g. several `--vgpu socket=..,type=..` and `--policy`), serving
    /// `sockets`, and waits (up to `timeout`) until every socket exists.
    pub fn spawn_vgpud(
        args: &[String],
        sockets: &[PathBuf],
        log: &Path,
        timeout: Duration,
    ) -> Result<Self, GuestError> {
        let binary = BackendKind::Vgpud.binary();
        if !binary.is_file() {
            return Err(GuestError::MissingDependency(format!(
                "backend {} (build it first: cargo build -p vgpu-backend --bin vgpud)",
                binary.display()
            )));
        }
        let mut cmd = Command::new(&binary);
        cmd.args(args);
        // A Vulkan engine runs under the validation layer when it is installed.
        if std::env::var_os(crate::engines::VALIDATION_ENV).is_none() {
            cmd.env(crate::engines::VALIDATION_ENV, "1");
        }
        Self::start(cmd, BackendKind::Vgpud, sockets.to_vec(), log, timeout)
    }

    fn start(
        mut cmd: Command,
        kind: BackendKind,
        sockets: Vec<PathBuf>,
        log: &Path,
        timeout: Duration,
    ) -> Result<Self, GuestError> {
        let out = File::create(log)
            .map_err(|e| GuestError::io(format!("create {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| GuestError::io("clone log", e))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child =
            spawn_tied(&mut cmd).map_err(|e| GuestError::io(format!("start backend {kind}"), e))?;
        let mut backend = Backend {
            child,
            kind,
            sockets,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + timeout;
        while let Some(missing) = backend.sockets.iter().find(|s| !s.exists()).cloned() {
            if let Ok(Some(status)) = backend.child.try_wait() {
                return Err(GuestError::Exited(format!(
                    "backend {kind} exited with {status} before creating its sockets; log:\n{}",
                    backend.log_text()
                )));
            }
            if Instant::now() >= deadline {
                return Err(GuestError::Timeout(format!(
                    "backend {kind} did not create {}",
                    missing.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(backend)
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The backend's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the backend process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(2));
        for socket in &self.sockets {
            let _ = std::fs::remove_file(socket);
        }
    }
}
