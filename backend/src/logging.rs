//! Where `vgpud` and `vgpud-relay` log: stderr always, the system log (syslog, which the journal
//! collects) when stderr is not a terminal, and a `--log-file` when one is given.
//!
//! libvirt starts a vhost-user backend with stdin, stdout and stderr on `/dev/null`, so a backend
//! that only writes to stderr fails silently: the operator sees "Could not get process id of
//! vhost-user-gpu" and nothing else. Sending the same lines to syslog (and to a file on request)
//! makes the reason findable with `journalctl -t vgpud-relay` or in the file.
//!
//! The level comes from `RUST_LOG` (env_logger syntax) with a default per program.
//!
//! Every record other crates write (virtio-queue, vhost, vhost-user-backend, vm-memory log on a
//! guest's behalf, e.g. `attempted to add out of bounds descriptor to used ring` for each bad head a
//! guest kicks) is rate-limited per VM by [`GuestLimitedLogger`]: it is charged to the [`GuestLog`]
//! bound to the logging thread (the VM's vring and vhost-user threads), or to
//! [`GuestLog::unattributed`]. Records from this crate pass unchanged: their guest-caused lines are
//! already counted by the VM's [`GuestLog`].

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};
use thiserror::Error;

use crate::log_limit::{GuestLog, GUEST_LOG_TARGET};

/// Why logging could not be set up.
#[derive(Debug, Error)]
pub enum LoggingError {
    /// The log file could not be opened for appending.
    #[error("log file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// A logger was installed already.
    #[error("logger already installed")]
    AlreadySet,
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sinks {
    /// Write to stderr.
    pub stderr: bool,
    /// Send to syslog (`LOG_DAEMON`, identified by the program name, with the pid).
    pub syslog: bool,
}

impl Sinks {
    /// The default sinks: stderr, plus syslog when stderr is neither a terminal nor the journal
    /// already (systemd names the journal stream of a service's stderr in `$JOURNAL_STREAM`); so
    /// under libvirt (stderr on /dev/null) lines reach syslog, and under systemd they are not
    /// logged twice.
    pub fn detect() -> Self {
        let journal = std::env::var("JOURNAL_STREAM").ok();
        Sinks {
            stderr: true,
            syslog: !io::stderr().is_terminal()
                && !is_stream(journal.as_deref(), libc::STDERR_FILENO),
        }
    }
}

/// Whether `fd` is the file `stream` (`DEVICE:INODE`, as in `$JOURNAL_STREAM`) names.
fn is_stream(stream: Option<&str>, fd: libc::c_int) -> bool {
    let Some((dev, ino)) = stream.and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat fills a stat struct we own; a bad fd only makes it fail.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    st.st_dev == dev && st.st_ino == ino
}

/// The sinks that outlive stderr: syslog and the log file.
struct Persistent {
    program: &'static str,
    syslog: bool,
    file: Option<Mutex<File>>,
}

impl Persistent {
    fn write(&self, level: Level, line: &str, message: &str) {
        if let Some(file) = &self.file {
            let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
            let _ = f.write_all(line.as_bytes());
            let _ = f.flush();
        }
        if self.syslog {
            let text = format!("{level}: {message}").replace('\0', " ");
            if let Ok(c) = CString::new(text) {
                // SAFETY: both strings are NUL-terminated; the format consumes exactly one %s.
                unsafe { libc::syslog(syslog_priority(level), c"%s".as_ptr(), c.as_ptr()) };
            }
        }
    }
}

/// Set once by [`init`]; [`persist_error`] reaches it without going through stderr.
static PERSISTENT: OnceLock<Persistent> = OnceLock::new();

fn syslog_priority(level: Level) -> libc::c_int {
    match level {
        Level::Error => libc::LOG_ERR,
        Level::Warn => libc::LOG_WARNING,
        Level::Info => libc::LOG_INFO,
        Level::Debug | Level::Trace => libc::LOG_DEBUG,
    }
}

/// Formats one line as the file and stderr show it: time, level, target, message.
fn format_line(record: &Record<'_>) -> String {
    format!(
        "[{} {} {}] {}\n",
        jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
        record.level(),
        record.target(),
        record.args()
    )
}

/// Installs the process logger for `program` (a static name: syslog keeps the pointer), at
/// `default` level unless `RUST_LOG` says otherwise, writing to `sinks` and, if given, appending
/// to `log_file`.
pub fn init(
    program: &'static std::ffi::CStr,
    default: LevelFilter,
    sinks: Sinks,
    log_file: Option<&Path>,
) -> Result<(), LoggingError> {
    let file = match log_file {
        Some(path) => Some(Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| LoggingError::File {
                    path: path.display().to_string(),
                    source,
                })?,
        )),
        None => None,
    };
    PERSISTENT
        .set(Persistent {
            program: program.to_str().unwrap_or("vgpud"),
            syslog: sinks.syslog,
            file,
        })
        .map_err(|_| LoggingError::AlreadySet)?;
    if sinks.syslog {
        // SAFETY: `program` is 'static, as openlog requires. LOG_NDELAY connects now, before the
        // sandbox: afterwards threads may only send on that socket.
        unsafe {
            libc::openlog(
                program.as_ptr(),
                libc::LOG_PID | libc::LOG_NDELAY,
                libc::LOG_DAEMON,
            )
        };
    }
    let stderr = sinks.stderr;
    let inner = env_logger::Builder::new()
        .filter_level(default)
        .parse_env("RUST_LOG")
        .format(move |buf, record| {
            let line = format_line(record);
            if let Some(p) = PERSISTENT.get() {
                p.write(record.level(), &line, &record.args().to_string());
            }
            if stderr {
                buf.write_all(line.as_bytes())
            } else {
                Ok(())
            }
        })
        .build();
    let max = inner.filter();
    log::set_boxed_logger(Box::new(GuestLimitedLogger::new(inner)))
        .map_err(|_| LoggingError::AlreadySet)?;
    log::set_max_level(max);
    Ok(())
}

/// Sends an error that the caller also prints on stderr (a fatal one, as `vgpud: message`) to
/// the persistent sinks only: syslog and the log file, when [`init`] enabled them.
pub fn persist_error(message: &str) {
    if let Some(p) = PERSISTENT.get() {
        let args = format_args!("{message}");
        let record = Record::builder()
            .args(args)
            .level(Level::Error)
            .target(p.program)
            .build();
        p.write(Level::Error, &format_line(&record), message);
    }
}

/// `env_logger` plus the per-VM limit on other crates' records.
pub struct GuestLimitedLogger {
    inner: env_logger::Logger,
}

/// True for records of this crate and its binaries (not rate-limited here).
fn own_target(target: &str) -> bool {
    target == GUEST_LOG_TARGET
        || target.starts_with("vgpu_backend")
        || target == "vgpud"
        || target.starts_with("vgpud_relay")
        || target.starts_with("vgpud::")
}

impl GuestLimitedLogger {
    /// Wraps a built `env_logger`.
    pub fn new(inner: env_logger::Logger) -> Self {
        GuestLimitedLogger { inner }
    }

    /// Whether a record (that the filter lets through) may be written now.
    fn allowed(&self, record: &Record<'_>) -> bool {
        if own_target(record.target()) {
            return true;
        }
        match GuestLog::bound() {
            Some(vm) => vm.allow(),
            None => GuestLog::unattributed().allow(),
        }
    }
}

impl Log for GuestLimitedLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if self.inner.matches(record) && self.allowed(record) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_recognised() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let f = File::open("/dev/null").unwrap();
        let m = f.metadata().unwrap();
        let me = format!("{}:{}", m.dev(), m.ino());
        assert!(is_stream(Some(&me), f.as_raw_fd()));
        assert!(!is_stream(Some("1:2"), f.as_raw_fd()));
        assert!(!is_stream(Some("garbage"), f.as_raw_fd()));
        assert!(!is_stream(None, f.as_raw_fd()));
    }

    #[test]
    fn syslog_levels() {
        assert_eq!(syslog_priority(Level::Error), libc::LOG_ERR);
        assert_eq!(syslog_priority(Level::Warn), libc::LOG_WARNING);
        assert_eq!(syslog_priority(Level::Trace), libc::LOG_DEBUG);
    }

    #[test]
    fn line_format_has_level_and_message() {
        let line = format_line(
            &Record::builder()
                .args(format_args!("relay failed: boom"))
                .level(Level::Error)
                .target("vgpud_relay")
                .build(),
        );
        assert!(
            line.contains("ERROR vgpud_relay] relay failed: boom"),
            "{line}"
        );
        assert!(line.ends_with('\n'));
    }

    #[test]
    fn own_targets_are_recognised() {
        assert!(own_target("vgpu_backend::vhost::queue"));
        assert!(own_target(GUEST_LOG_TARGET));
        assert!(own_target("vgpud"));
        assert!(!own_target("virtio_queue::queue"));
        assert!(!own_target("vhost_user_backend::handler"));
    }
}
