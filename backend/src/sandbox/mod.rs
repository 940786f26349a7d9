//! The daemon's sandbox: after start-up every `vgpud` thread runs under a seccomp filter made for
//! its kind of work (built with `seccompiler`), and, where the kernel has Landlock, the filesystem
//! is cut down to the directories of its sockets.
//!
//! `main` calls [`configure`] once, before it creates any thread; each thread calls
//! [`enter`] with its [`ThreadKind`] when it starts (the main thread once start-up is done).
//! Threads created by a sandboxed thread inherit its filter and Landlock domain (the connection
//! threads vhost-user-backend creates inherit the listener's). Without [`configure`] (library use,
//! unit tests, the demo) or with `--sandbox off`, [`enter`] does nothing.
//!
//! The Vulkan driver thread is the exception to that order: the engine is opened before
//! [`configure`] (the plan depends on the device), so `main` calls [`configure_driver`] first and
//! the driver thread calls [`enter_driver`] before it loads the Vulkan loader; every thread the
//! driver creates then inherits the [`ThreadKind::Driver`] filter.
//!
//! A syscall outside a thread's list fails with `EPERM` ([`MISMATCH_ERRNO`]): the code that made
//! it sees an I/O error, logs it and goes on, instead of the whole daemon (every VM) being killed
//! for one unexpected path. The lists and the reason for every entry are in [`filters`].

pub mod filters;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;

/// Name prefix of the per-VM display threads ([`crate::vhost::display_link`]).
pub const DISPLAY_THREAD_PREFIX: &str = "vgpud-display-";

/// The errno a refused syscall gets.
pub const MISMATCH_ERRNO: u32 = libc::EPERM as u32;

/// What a thread does, and so which syscalls it may make.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread after start-up: signals, then shutdown and clean-up.
    Main,
    /// A vGPU socket's listener; its connections' vhost-user and vring threads inherit it.
    Listener,
    /// A VM's display thread (GPU socket messages only).
    Display,
    /// The control socket and its connections (they create, start and remove vGPUs live).
    Control,
    /// The metrics HTTP server and its connection threads.
    Metrics,
    /// A `--fd` relay.
    Relay,
    /// The driver's engine thread.
    Engine,
    /// The Vulkan driver thread and the driver's own threads ([`enter_driver`]).
    Driver,
}

impl ThreadKind {
    /// Whether the kind sets up Landlock itself (threads started by the unsandboxed main thread);
    /// the others inherit the domain of the thread that created them.
    fn sets_up_landlock(self) -> bool {
        !matches!(self, ThreadKind::Display)
    }
}

/// `--sandbox on|off`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxMode {
    /// Seccomp filters and Landlock (the default).
    #[default]
    On,
    /// No sandbox: for debugging only.
    Off,
}

/// Errors setting up the sandbox.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// [`configure`] was called twice.
    #[error("the sandbox is configured already")]
    AlreadyConfigured,
    /// A filter could not be built.
    #[error("seccomp filter for {kind:?}: {message}")]
    Filter {
        /// The thread kind.
        kind: ThreadKind,
        /// What failed.
        message: String,
    },
    /// The kernel refused the filter.
    #[error("applying the seccomp filter for {kind:?}: {message}")]
    Apply {
        /// The thread kind.
        kind: ThreadKind,
        /// What failed.
        message: String,
    },
    /// Landlock failed (other than "not supported by this kernel").
    #[error("Landlock: {0}")]
    Landlock(String),
}

/// What [`enter`] applies.
#[derive(Debug)]
struct Config {
    mode: SandboxMode,
    /// Directories the daemon may still touch (create and remove its sockets there).
    dirs: Vec<PathBuf>,
    filters: BTreeMap<&'static str, BpfProgram>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

const KINDS: [ThreadKind; 8] = [
    ThreadKind::Main,
    ThreadKind::Listener,
    ThreadKind::Display,
    ThreadKind::Control,
    ThreadKind::Metrics,
    ThreadKind::Relay,
    ThreadKind::Engine,
    ThreadKind::Driver,
];

fn key(kind: ThreadKind) -> &'static str {
    match kind {
        ThreadKind::Main => "main",
        ThreadKind::Listener => "listener",
        ThreadKind::Display => "display",
        ThreadKind::Control => "control",
        ThreadKind::Metrics => "metrics",
        ThreadKind::Relay => "relay",
        ThreadKind::Engine => "engine",
        ThreadKind::Driver => "driver",
    }
}

fn target_arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| format!("{e:?}"))
}

/// Builds the BPF program of `kind`.
pub fn build_filter(kind: ThreadKind) -> Result<BpfProgram, SandboxError> {
    let err = |message: String| SandboxError::Filter { kind, message };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = filters::allowed(kind)
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let rule = |op: SeccompCmpOp, value: u64| {
        let arg = SeccompCondition::new(1, SeccompCmpArgLen::Dword, op, value)
            .map_err(|e| err(e.to_string()))?;
        SeccompRule::new(vec![arg]).map_err(|e| err(e.to_string()))
    };
    let mut ioctls = filters::IOCTLS
        .iter()
        .map(|&request| rule(SeccompCmpOp::Eq, request))
        .collect::<Result<Vec<_>, _>>()?;
    if filters::uses_gpu(kind) {
        ioctls.push(rule(
            SeccompCmpOp::MaskedEq(0xff00),
            filters::DRM_IOCTL_TYPE,
        )?);
    }
    if kind == ThreadKind::Driver {
        // Any request (an empty rule list allows the syscall unconditionally).
        ioctls.clear();
    }
    rules.insert(libc::SYS_ioctl, ioctls);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(MISMATCH_ERRNO),
        SeccompAction::Allow,
        target_arch().map_err(err)?,
    )
    .map_err(|e| err(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| err(e.to_string()))
}

/// Sets what [`enter`] applies: call once, before any thread is created. `dirs` are the
/// directories the daemon keeps using (its sockets' directories, temporary directories).
pub fn configure(mode: SandboxMode, dirs: Vec<PathBuf>) -> Result<(), SandboxError> {
    let mut filters = BTreeMap::new();
    if mode == SandboxMode::On {
        for kind in KINDS {
            filters.insert(key(kind), build_filter(kind)?);
        }
    }
    CONFIG
        .set(Config {
            mode,
            dirs,
            filters,
        })
        .map_err(|_| SandboxError::AlreadyConfigured)
}

/// Whether the Vulkan driver thread sandboxes itself ([`configure_driver`]).
static DRIVER_MODE: OnceLock<SandboxMode> = OnceLock::new();

/// Sets whether the Vulkan driver thread ([`enter_driver`]) is sandboxed. `main` calls it before
/// it opens the engine, which is before [`configure`] (the socket directories Landlock keeps
/// depend on the plan, which depends on the engine).
pub fn configure_driver(mode: SandboxMode) {
    let _ = DRIVER_MODE.set(mode);
}

/// Restricts the calling thread, the Vulkan driver thread, to what a Vulkan driver needs to load
/// and run ([`ThreadKind::Driver`]); the driver's own threads it creates inherit the filter. A
/// no-op unless [`configure_driver`] turned the sandbox on.
pub fn enter_driver() {
    if DRIVER_MODE.get() != Some(&SandboxMode::On) {
        return;
    }
    let kind = ThreadKind::Driver;
    let result = restrict_driver_filesystem()
        .and_then(|()| build_filter(kind))
        .and_then(|filter| apply_filter(kind, &filter));
    if let Err(e) = result {
        log::error!("sandbox: {e}; exiting rather than run unconfined");
        std::process::exit(1);
    }
}

/// Landlock for the Vulkan driver thread (and its threads): the whole filesystem read-only (the
/// loader, the driver, its data in /usr, /sys and /proc), plus read-write on the DRM nodes.
fn restrict_driver_filesystem() -> Result<(), SandboxError> {
    let abi = ABI::V3;
    let err = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi)))
        .map_err(err)?;
    if std::path::Path::new(DRM_DIR).is_dir() {
        ruleset = ruleset
            .add_rules(path_beneath_rules([DRM_DIR], AccessFs::from_file(abi)))
            .map_err(err)?;
    }
    ruleset.restrict_self().map_err(err)?;
    Ok(())
}

/// Where the DRM device nodes are.
const DRM_DIR: &str = "/dev/dri";

/// True when [`configure`] turned the sandbox on.
pub fn enabled() -> bool {
    CONFIG.get().is_some_and(|c| c.mode == SandboxMode::On)
}

/// Restricts the calling thread to `kind`'s work; a no-op unless [`configure`] turned the sandbox
/// on. A thread that cannot be sandboxed would run unconfined, so that ends the process.
pub fn enter(kind: ThreadKind) {
    let Some(cfg) = CONFIG.get() else {
        return;
    };
    if cfg.mode == SandboxMode::Off {
        return;
    }
    if let Err(e) = apply(cfg, kind) {
        log::error!("sandbox: {e}; exiting rather than run unconfined");
        std::process::exit(1);
    }
}

fn apply(cfg: &Config, kind: ThreadKind) -> Result<(), SandboxError> {
    if kind == ThreadKind::Driver {
        restrict_driver_filesystem()?;
    } else if kind.sets_up_landlock() {
        restrict_filesystem(&cfg.dirs)?;
    }
    let filter = cfg
        .filters
        .get(key(kind))
        .ok_or_else(|| SandboxError::Filter {
            kind,
            message: "not built".into(),
        })?;
    apply_filter(kind, filter)
}

/// Applies `filter` to the calling thread.
pub fn apply_filter(kind: ThreadKind, filter: &BpfProgram) -> Result<(), SandboxError> {
    seccompiler::apply_filter(filter).map_err(|e| SandboxError::Apply {
        kind,
        message: e.to_string(),
    })
}

/// Landlock on the calling thread: every filesystem access is handled, and only `dirs` (and what
/// is beneath them) stay usable. A kernel without Landlock leaves the filesystem as it is (the
/// seccomp filters still forbid opening files in every thread but the main one).
fn restrict_filesystem(dirs: &[PathBuf]) -> Result<(), SandboxError> {
    let abi = ABI::V3;
    let err = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(dirs, AccessFs::from_all(abi)))
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    static REPORTED: OnceLock<()> = OnceLock::new();
    if status.ruleset == RulesetStatus::NotEnforced && REPORTED.set(()).is_ok() {
        log::warn!("sandbox: this kernel has no Landlock; the filesystem is not restricted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a fresh thread under `kind`'s filter.
    fn under<T: Send + 'static>(kind: ThreadKind, f: impl FnOnce() -> T + Send + 'static) -> T {
        let filter = build_filter(kind).unwrap();
        std::thread::spawn(move || {
            apply_filter(kind, &filter).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn forbidden_syscalls_are_refused_allowed_ones_work() {
        for kind in KINDS {
            let (socket, open, fork, pipe_ok) = under(kind, || {
                // SAFETY: plain syscalls on values we own; results are only inspected.
                unsafe {
                    let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                    let socket = (s, errno());
                    let o = libc::openat(libc::AT_FDCWD, c"/etc/hostname".as_ptr(), 0);
                    let open = (o, errno());
                    let f = libc::syscall(libc::SYS_fork);
                    let fork = (f, errno());
                    let mut v = vec![0u8; 1 << 20];
                    v[12345] = 1;
                    (
                        socket,
                        open,
                        fork,
                        v.iter().map(|&b| u32::from(b)).sum::<u32>(),
                    )
                }
            });
            // The relay connects out; the control thread binds vGPU sockets created live; the
            // metrics thread makes its listening socket after entering its filter.
            let makes_sockets = matches!(
                kind,
                ThreadKind::Relay | ThreadKind::Control | ThreadKind::Metrics
            );
            if !makes_sockets {
                assert_eq!(socket, (-1, libc::EPERM), "{kind:?}: socket()");
            }
            // Main removes socket directories at exit; control writes the state file; the Vulkan
            // driver thread loads the driver (read-only under Landlock).
            if !matches!(
                kind,
                ThreadKind::Main | ThreadKind::Control | ThreadKind::Driver
            ) {
                assert_eq!(open, (-1, libc::EPERM), "{kind:?}: openat()");
            }
            assert_eq!(fork, (-1, libc::EPERM), "{kind:?}: fork()");
            assert_eq!(pipe_ok, 1, "{kind:?}: allocation and memory work");
        }
    }

    /// The threads that use the Vulkan device may make DRM requests (type 'd'), the driver
    /// thread any request, the others only FIONBIO/FIOCLEX.
    #[test]
    fn drm_ioctls_where_the_device_is_used() {
        const DRM_IOCTL_VERSION: libc::c_ulong = 0xC040_6400;
        for kind in KINDS {
            let f = std::fs::File::open("/dev/null").unwrap();
            let (drm, tty) = under(kind, move || {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
                let mut buf = [0u8; 64];
                // SAFETY: ioctls on /dev/null with a buffer large enough for either request;
                // both fail (ENOTTY) when the filter lets them through.
                unsafe {
                    libc::ioctl(fd, DRM_IOCTL_VERSION, buf.as_mut_ptr());
                    let drm = errno();
                    libc::ioctl(fd, libc::TCGETS, buf.as_mut_ptr());
                    (drm, errno())
                }
            });
            let drm_ok = filters::uses_gpu(kind) || kind == ThreadKind::Driver;
            let want = |ok: bool| if ok { libc::ENOTTY } else { libc::EPERM };
            assert_eq!(drm, want(drm_ok), "{kind:?}: DRM ioctl");
            assert_eq!(tty, want(kind == ThreadKind::Driver), "{kind:?}: TCGETS");
        }
    }

    #[test]
    fn every_kind_builds() {
        for kind in KINDS {
            assert!(!build_filter(kind).unwrap().is_empty());
            assert!(filters::allowed(kind).contains(&libc::SYS_futex));
            assert!(!filters::allowed(kind).contains(&libc::SYS_execve));
        }
    }

    #[test]
    fn enter_without_configuration_does_nothing() {
        std::thread::spawn(|| {
            enter(ThreadKind::Engine);
            // SAFETY: a plain syscall; the fd is closed right away.
            let s = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            assert!(s >= 0);
            // SAFETY: closing the fd just opened.
            unsafe { libc::close(s) };
        })
        .join()
        .unwrap();
    }
}
