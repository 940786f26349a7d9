//! Real-guest harness: boots a Linux guest under QEMU (TCG) against a vhost-user-gpu backend, reads its
//! `VGPU-TEST:` markers from the serial console, talks QMP and decodes `screendump` pictures.
//!
//! The guest side (kernel cache, initramfs builder, guest scripts) lives in `tests/guest/`.

mod backend;
mod group;
mod qmp;
mod screen;
mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use backend::{Backend, BackendKind};
pub use group::GuestGroup;
pub use qmp::Qmp;
pub use screen::Screen;
pub use vm::{Guest, GuestConfig, Marker, MarkerKind};

/// Errors of the real-guest harness.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// Something the real-guest tests need is not installed.
    #[error("real-guest test dependency missing: {0}\n  install with: sudo tests/guest/install-deps.sh (or set VGPU_SKIP_GUEST=1 to skip locally)")]
    MissingDependency(String),
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A helper command failed.
    #[error("{0}")]
    Command(String),
    /// Waiting for something ran out of time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The guest or QEMU went away early.
    #[error("guest exited: {0}")]
    Exited(String),
    /// QMP answered with an error or something unexpected.
    #[error("QMP: {0}")]
    Qmp(String),
    /// A screendump could not be decoded.
    #[error("PNG: {0}")]
    Png(png::DecodingError),
    /// A decoded picture is unusable.
    #[error("image: {0}")]
    Image(String),
}

impl GuestError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        GuestError::Io {
            context: context.into(),
            source,
        }
    }
}

/// True when `VGPU_SKIP_GUEST=1` asks to skip real-guest tests (local runs without QEMU).
pub fn skip_requested() -> bool {
    std::env::var("VGPU_SKIP_GUEST").is_ok_and(|v| v == "1")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The guest kernel and modules cache (`$VGPU_GUEST_CACHE`, default `<repo>/.cache/guest`) and QEMU.
#[derive(Clone, Debug)]
pub struct GuestAssets {
    /// The cache directory (vmlinuz, modules/).
    pub cache: PathBuf,
    /// The guest kernel.
    pub vmlinuz: PathBuf,
    /// The QEMU binary (`$QEMU`, default `qemu-system-x86_64`).
    pub qemu: PathBuf,
    /// `tests/guest/` with the scripts.
    pub scripts: PathBuf,
}

impl GuestAssets {
    /// Finds everything a real-guest test needs, or says what is missing.
    pub fn locate() -> Result<Self, GuestError> {
        let cache = std::env::var_os("VGPU_GUEST_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".cache/guest"));
        let vmlinuz = cache.join("vmlinuz");
        if !vmlinuz.is_file() || !cache.join("modules/order").is_file() {
            return Err(GuestError::MissingDependency(format!(
                "no guest kernel/modules in {}",
                cache.display()
            )));
        }
        let qemu = std::env::var_os("QEMU")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
        let version = Command::new(&qemu).arg("--version").output();
        match version {
            Ok(out) if out.status.success() => {}
            _ => {
                return Err(GuestError::MissingDependency(format!(
                    "{} does not run",
                    qemu.display()
                )))
            }
        }
        if !Path::new("/bin/busybox").is_file() {
            return Err(GuestError::MissingDependency(
                "/bin/busybox (busybox-static)".into(),
            ));
        }
        Ok(GuestAssets {
            cache,
            vmlinuz,
            qemu,
            scripts: repo_root().join("tests/guest"),
        })
    }

    /// Builds an initramfs at `out` that runs `script` (a path relative to `tests/guest/` or absolute),
    /// with `extra` files copied in as `(source, destination inside the guest)`.
    pub fn build_initramfs(
        &self,
        script: &Path,
        extra: &[(PathBuf, String)],
        out: &Path,
    ) -> Result<(), GuestError> {
        let mut cmd = Command::new("timeout");
        cmd.arg("60")
            .arg(self.scripts.join("mkinitramfs.sh"))
            .arg("-o")
            .arg(out)
            .arg("-s")
            .arg(self.scripts.join(script))
            .env("VGPU_GUEST_CACHE", &self.cache);
        for (src, dest) in extra {
            cmd.arg("-f").arg(format!("{}:{dest}", src.display()));
        }
        let output = cmd
            .output()
            .map_err(|e| GuestError::io("run mkinitramfs.sh", e))?;
        if !output.status.success() {
            return Err(GuestError::Command(format!(
                "mkinitramfs.sh failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(())
    }
}

/// The static `vgpu-smi` for guest initramfs images: `$VGPU_SMI`, else the current source built
/// by `guest-tools/build-static.sh` (once per test process, so a guest never runs a stale tool).
pub fn vgpu_smi_static() -> Result<PathBuf, GuestError> {
    if let Some(path) = std::env::var_os("VGPU_SMI").map(PathBuf::from) {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(GuestError::MissingDependency(format!(
                "static guest tool {} (VGPU_SMI)",
                path.display()
            )))
        };
    }
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(build_vgpu_smi_static)
        .clone()
        .map_err(GuestError::MissingDependency)
}

/// Runs `guest-tools/build-static.sh`, which prints the binary's path.
fn build_vgpu_smi_static() -> Result<PathBuf, String> {
    let script = repo_root().join("guest-tools/build-static.sh");
    let out = std::process::Command::new(&script)
        .current_dir(repo_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("static guest tool: running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "static guest tool: {} failed ({})",
            script.display(),
            out.status
        ));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "static guest tool: {} printed no binary ({})",
            script.display(),
            path.display()
        ))
    }
}

/// A scratch directory for one test run under the system temp dir, removed on drop unless
/// `VGPU_KEEP_GUEST_DIR=1`.
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Creates a fresh directory named after `name` and the process id.
    pub fn new(name: &str) -> Result<Self, GuestError> {
        let path = std::env::temp_dir().join(format!("vgpu-guest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(|e| GuestError::io(format!("create {}", path.display()), e))?;
        Ok(WorkDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var("VGPU_KEEP_GUEST_DIR").is_ok_and(|v| v == "1") {
            eprintln!("keeping {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
