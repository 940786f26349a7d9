//! Starting a backend process (our `vgpud` or QEMU's C `vhost-user-gpu`) on a temporary socket.
//!
//! `vgpud` is the `VGPUD` environment variable if set; otherwise the first call builds it from the
//! current source with `cargo build -p vgpu-backend --bin vgpud` in the profile and target
//! directory of the running test (`target/<profile>/deps/..`), so a test never runs a stale
//! binary. QEMU's backend is `VHOST_USER_GPU` or `/usr/lib/qemu/vhost-user-gpu`.
//!
//! A missing dependency is a failure when `VGPU_REQUIRE_VGPUD` is set (`scripts/test.sh` sets it);
//! without it (a quick local `cargo test`) tests that need QEMU's backend skip with a note.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{FrontendError, Result};

/// Default location of QEMU's backend (Debian's `qemu-system-gui`).
pub const QEMU_VHOST_USER_GPU: &str = "/usr/lib/qemu/vhost-user-gpu";

/// Which backend implementation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Our `vgpud`.
    Vgpud,
    /// QEMU's `vhost-user-gpu`.
    Qemu,
}

impl BackendKind {
    /// The executable, if it exists.
    pub fn binary(&self) -> Option<PathBuf> {
        match self {
            BackendKind::Vgpud => vgpud_path(),
            BackendKind::Qemu => {
                let p = std::env::var_os("VHOST_USER_GPU")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(QEMU_VHOST_USER_GPU));
                p.is_file().then_some(p)
            }
        }
    }

    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            BackendKind::Vgpud => "vgpud",
            BackendKind::Qemu => "qemu-vhost-user-gpu",
        }
    }
}

/// True when a missing dependency must fail the test instead of skipping it (`VGPU_REQUIRE_VGPUD`
/// set, as `scripts/test.sh` and CI do).
pub fn dependencies_required() -> bool {
    std::env::var_os("VGPU_REQUIRE_VGPUD").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Where `vgpud` is: `$VGPUD`, else the binary built from the current source (see the module
/// documentation). `None` (with the reason printed) when the build fails.
pub fn vgpud_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VGPUD") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build_vgpud) {
        Ok(p) => Some(p.clone()),
        Err(e) => {
            eprintln!("vgpud: {e}");
            None
        }
    }
}

/// `vgpud` (see [`vgpud_path`]), or `None` with a printed note; under
/// [`dependencies_required`] a `vgpud` that cannot be built fails the test instead.
pub fn vgpud_or_skip_path() -> Option<PathBuf> {
    let p = vgpud_path();
    if p.is_none() {
        assert!(
            !dependencies_required(),
            "vgpud could not be built (see above) and VGPUD is not set"
        );
        eprintln!("SKIP: vgpud could not be built (see above), and VGPUD is not set");
    }
    p
}

/// Builds `vgpud` from the workspace this crate belongs to, into the running test's profile and
/// target directory, and returns the executable cargo reports.
fn build_vgpud() -> std::result::Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut dir = exe.parent().ok_or("test executable has no directory")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().ok_or("no profile directory")?;
    }
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(p) => p.to_string(),
    };
    let target_dir = dir.parent().ok_or("no target directory")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let out = Command::new(&cargo)
        .current_dir(workspace)
        .args(["build", "-p", "vgpu-backend", "--bin", "vgpud", "--profile"])
        .arg(&profile)
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {cargo:?} build: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build -p vgpu-backend failed: {}",
            out.status
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "vgpud")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo build reported no vgpud executable".to_string())
}

/// A running backend process; killed on drop.
pub struct Backend {
    kind: BackendKind,
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    log: PathBuf,
}

impl Backend {
    /// Starts `kind` listening on a fresh socket path with `extra` arguments appended.
    pub fn spawn(kind: BackendKind, extra: &[&str]) -> Result<Backend> {
        let bin = kind.binary().ok_or_else(|| {
            FrontendError::Backend(format!(
                "{} not found (build with `cargo build -p vgpu-backend` or set VGPUD / \
                 VHOST_USER_GPU)",
                kind.name()
            ))
        })?;
        let dir = tempfile::Builder::new().prefix("vgpu-test-").tempdir()?;
        let socket = dir.path().join("gpu.sock");
        let log = dir.path().join("backend.log");
        let err = File::create(&log)?;
        let out = err.try_clone()?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--socket-path")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if kind == BackendKind::Vgpud && std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "debug");
        }
        // Vulkan engines run under the validation layer when it is installed (see `engines`).
        if kind == BackendKind::Vgpud && std::env::var_os(crate::engines::VALIDATION_ENV).is_none()
        {
            cmd.env(crate::engines::VALIDATION_ENV, "1");
        }
        let child = cmd
            .spawn()
            .map_err(|e| FrontendError::Backend(format!("spawn {}: {e}", bin.display())))?;
        Ok(Backend {
            kind,
            child,
            dir,
            socket,
            log,
        })
    }

    /// Starts QEMU's backend, or returns `None` (with a printed note) when it is not installed.
    /// Under `VGPU_REQUIRE_VGPUD` (`scripts/test.sh`, CI) a missing backend fails the test.
    pub fn qemu_or_skip() -> Option<Backend> {
        if BackendKind::Qemu.binary().is_none() {
            assert!(
                !dependencies_required(),
                "{QEMU_VHOST_USER_GPU} not installed (qemu-system-gui; .ci/install-deps.sh)"
            );
            eprintln!("SKIP: {QEMU_VHOST_USER_GPU} not installed");
            return None;
        }
        Some(Self::spawn(BackendKind::Qemu, &[]).expect("start QEMU vhost-user-gpu"))
    }

    /// Starts `vgpud` and waits for its socket, or returns `None` (with a printed note) when it
    /// cannot be built or exits without listening. Under `VGPU_REQUIRE_VGPUD` those are failures.
    pub fn vgpud_or_skip(extra: &[&str]) -> Option<Backend> {
        let require = dependencies_required();
        if BackendKind::Vgpud.binary().is_none() {
            assert!(
                !require,
                "vgpud could not be built (see above) and VGPUD is not set"
            );
            eprintln!("SKIP: vgpud could not be built (see above), and VGPUD is not set");
            return None;
        }
        let mut b = Self::spawn(BackendKind::Vgpud, extra).expect("start vgpud");
        if let Err(e) = b.wait_listening(Duration::from_secs(10)) {
            let status = b.try_exit();
            assert!(
                !require,
                "vgpud does not serve: {e}; exit {status:?}\n{}",
                b.log()
            );
            eprintln!(
                "SKIP: vgpud does not serve yet ({e}; exit {status:?}); log:\n{}",
                b.log()
            );
            return None;
        }
        Some(b)
    }

    /// Waits until the socket path exists (the backend listens), failing early if it exits.
    pub fn wait_listening(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.socket.exists() {
                return Ok(());
            }
            if let Some(s) = self.try_exit() {
                return Err(FrontendError::Backend(format!(
                    "exited with {s} before listening"
                )));
            }
            if Instant::now() >= deadline {
                return Err(FrontendError::Timeout("backend socket".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Which implementation this is.
    pub fn kind(&self) -> &BackendKind {
        &self.kind
    }

    /// The socket path it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temporary directory (socket and log live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The captured stdout+stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if it has exited.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM (for clean-shutdown tests).
    pub fn terminate(&self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("VGPU_TEST_SHOW_LOG").is_some() {
            eprintln!(
                "---- {} log ----\n{}\n---- end ----",
                self.kind.name(),
                self.log()
            );
        }
    }
}
