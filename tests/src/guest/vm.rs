//! One QEMU guest: the command line, the serial console (captured to a file and parsed for `VGPU-TEST:`
//! markers) and its QMP socket. QEMU is killed on drop and when the spawning thread dies.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::{GuestAssets, GuestError, Qmp, Screen};

/// The prefix of every result line a guest script prints.
pub const MARKER_PREFIX: &str = "VGPU-TEST: ";

/// What a marker line reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkerKind {
    /// A check passed.
    Pass,
    /// A check failed.
    Fail,
    /// Information only.
    Info,
    /// The guest waits for the host to act and answer one line.
    Ready,
    /// `BOOT` and `END` lines and anything else.
    Other,
}

/// One parsed `VGPU-TEST: <name> <KIND> <detail>` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The check's name (`BOOT`/`END` for the init script's own lines).
    pub name: String,
    /// What it reports.
    pub kind: MarkerKind,
    /// The rest of the line.
    pub detail: String,
}

impl Marker {
    /// Parses a serial line; `None` when it carries no marker.
    pub fn parse(line: &str) -> Option<Marker> {
        let rest = &line[line.find(MARKER_PREFIX)? + MARKER_PREFIX.len()..];
        let rest = rest.trim_end();
        let (name, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let (kind_word, detail) = rest.split_once(' ').unwrap_or((rest, ""));
        let kind = match kind_word {
            "PASS" => MarkerKind::Pass,
            "FAIL" => MarkerKind::Fail,
            "INFO" => MarkerKind::Info,
            "READY" => MarkerKind::Ready,
            _ => MarkerKind::Other,
        };
        let detail = if kind == MarkerKind::Other {
            rest
        } else {
            detail
        };
        Some(Marker {
            name: name.to_string(),
            kind,
            detail: detail.to_string(),
        })
    }

    /// The FAIL markers among `markers`, in order.
    pub fn failed(markers: &[Marker]) -> Vec<&Marker> {
        markers
            .iter()
            .filter(|m| m.kind == MarkerKind::Fail)
            .collect()
    }

    /// Looks up `key=value` in the detail.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.detail
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }

    /// The `key=NUMBER` field as a number (panics, naming the marker, when it is missing).
    pub fn num(&self, key: &str) -> f64 {
        self.field(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("marker {} lacks numeric {key}: {}", self.name, self.detail))
    }
}

/// How to boot a guest.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// The initramfs to boot.
    pub initrd: PathBuf,
    /// The vhost-user socket of the backend.
    pub socket: PathBuf,
    /// Where QMP socket, serial log and QEMU's log go.
    pub dir: PathBuf,
    /// Guest memory in MiB (shared memfd).
    pub memory_mib: u32,
    /// Extra `-device vhost-user-gpu-pci` properties, e.g. `xres=1024,yres=768`.
    pub device_props: String,
    /// Extra kernel command line.
    pub append: String,
}

impl GuestConfig {
    /// Defaults: 512 MiB, no extra properties.
    pub fn new(initrd: &Path, socket: &Path, dir: &Path) -> Self {
        GuestConfig {
            initrd: initrd.to_path_buf(),
            socket: socket.to_path_buf(),
            dir: dir.to_path_buf(),
            memory_mib: 512,
            device_props: String::new(),
            append: String::new(),
        }
    }
}

/// A running guest.
pub struct Guest {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    markers: Vec<Marker>,
    serial_log: PathBuf,
    qemu_log: PathBuf,
    qmp_path: PathBuf,
    qmp: Option<Qmp>,
}

impl Guest {
    /// Starts QEMU (TCG, `-cpu max`, memfd memory, `vhost-user-gpu-pci`, no VGA, no display).
    pub fn boot(assets: &GuestAssets, cfg: &GuestConfig) -> Result<Self, GuestError> {
        let serial_log = cfg.dir.join("serial.log");
        let qemu_log = cfg.dir.join("qemu.log");
        let qmp_path = cfg.dir.join("qmp.sock");
        let mem = cfg.memory_mib;
        let mut device = String::from("vhost-user-gpu-pci,chardev=vgpu");
        if !cfg.device_props.is_empty() {
            device.push(',');
            device.push_str(&cfg.device_props);
        }
        let append = format!("console=ttyS0 quiet panic=-1 {}", cfg.append);
        let qemu_err = File::create(&qemu_log)
            .map_err(|e| GuestError::io(format!("create {}", qemu_log.display()), e))?;
        let mut cmd = Command::new(&assets.qemu);
        cmd.args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-nodefaults",
            "-no-reboot",
        ])
        .args(["-vga", "none", "-display", "none", "-m", &format!("{mem}M")])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        ])
        .args(["-numa", "node,memdev=mem"])
        .args([
            "-chardev",
            &format!("socket,id=vgpu,path={}", cfg.socket.display()),
        ])
        .args(["-device", &device])
        .arg("-kernel")
        .arg(&assets.vmlinuz)
        .arg("-initrd")
        .arg(&cfg.initrd)
        .args(["-append", append.trim_end()])
        .args([
            "-chardev",
            "stdio,id=ser,signal=off",
            "-serial",
            "chardev:ser",
        ])
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", qmp_path.display()),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(qemu_err);
        let mut child = spawn_tied(&mut cmd)
            .map_err(|e| GuestError::io(format!("start {}", assets.qemu.display()), e))?;
        let stdout = child.stdout.take();
        let stdin = child.stdin.take();
        let mut log = File::create(&serial_log)
            .map_err(|e| GuestError::io(format!("create {}", serial_log.display()), e))?;
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = stdout {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut buf = Vec::new();
                while let Ok(n) = reader.read_until(b'\n', &mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = log.write_all(&buf);
                    let _ = log.flush();
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    if tx.send(line).is_err() {
                        break;
                    }
                    buf.clear();
                }
            });
        }
        Ok(Guest {
            child,
            stdin,
            lines,
            markers: Vec::new(),
            serial_log,
            qemu_log,
            qmp_path,
            qmp: None,
        })
    }

    /// Waits up to `timeout` for a marker named `name` (any kind) and returns it; every marker seen on
    /// the way is kept (see [`Guest::markers`]).
    pub fn wait_marker(&mut self, name: &str, timeout: Duration) -> Result<Marker, GuestError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(m) = Marker::parse(&line) {
                        self.markers.push(m.clone());
                        if m.name == name {
                            return Ok(m);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(GuestError::Timeout(format!(
                        "no `{name}` marker after {timeout:?}; {}",
                        self.diagnostics()
                    )))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                    return Err(GuestError::Exited(format!(
                        "QEMU ended ({status}) before a `{name}` marker; {}",
                        self.diagnostics()
                    )));
                }
            }
        }
    }

    /// Waits for the guest's `END` marker and for QEMU to exit (the guest powers off).
    pub fn wait_end(&mut self, timeout: Duration) -> Result<Marker, GuestError> {
        let deadline = Instant::now() + timeout;
        let end = self.wait_marker("END", timeout)?;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(end);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(GuestError::Timeout(
            "QEMU did not exit after the guest's END".into(),
        ))
    }

    /// All markers seen so far, in order.
    pub fn markers(&self) -> &[Marker] {
        &self.markers
    }

    /// The last marker named `name` of kind `kind`, if any.
    pub fn marker(&self, name: &str, kind: MarkerKind) -> Option<&Marker> {
        self.markers
            .iter()
            .rev()
            .find(|m| m.name == name && m.kind == kind)
    }

    /// Sends one line to the guest's console (the answer to a `READY` marker).
    pub fn reply(&mut self, line: &str) -> Result<(), GuestError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| GuestError::Exited("serial console closed".into()))?;
        let mut text = line.replace(['\r', '\n'], " ");
        text.push('\n');
        stdin
            .write_all(text.as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|e| GuestError::io("write to the guest console", e))
    }

    /// The QMP connection (opened on first use).
    pub fn qmp(&mut self) -> Result<&mut Qmp, GuestError> {
        if self.qmp.is_none() {
            self.qmp = Some(Qmp::connect(&self.qmp_path, Duration::from_secs(10))?);
        }
        self.qmp
            .as_mut()
            .ok_or_else(|| GuestError::Qmp("no connection".into()))
    }

    /// Dumps the guest's display to `path` (PNG) and decodes it.
    pub fn screendump(&mut self, path: &Path) -> Result<Screen, GuestError> {
        self.qmp()?.screendump(path)?;
        Screen::from_png(path)
    }

    /// The serial console so far.
    pub fn serial_text(&self) -> String {
        std::fs::read_to_string(&self.serial_log).unwrap_or_default()
    }

    /// QEMU's own stderr so far (vhost-user errors land here).
    pub fn qemu_log_text(&self) -> String {
        std::fs::read_to_string(&self.qemu_log).unwrap_or_default()
    }

    /// Serial tail and QEMU's own log, for error messages.
    pub fn diagnostics(&self) -> String {
        let serial = self.serial_text();
        let tail: Vec<&str> = serial.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "serial log {} (tail):\n{}\nQEMU log:\n{}",
            self.serial_log.display(),
            tail.join("\n"),
            self.qemu_log_text()
        )
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.qmp = None;
        self.stdin = None;
        stop_child(&mut self.child, Duration::from_secs(2));
    }
}

/// Spawns `cmd` so that the kernel kills it (SIGKILL) when the spawning thread dies, even if the test
/// process is killed before any destructor runs.
pub(crate) fn spawn_tied(cmd: &mut Command) -> std::io::Result<Child> {
    // SAFETY: the closure only calls async-signal-safe prctl(2) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Ends `child`: SIGTERM, up to `grace` to exit, then SIGKILL; always reaps it.
pub(crate) fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on our own unreaped child's pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_markers() {
        let m = Marker::parse("VGPU-TEST: modes PASS status=connected first=1280x800 count=26")
            .unwrap();
        assert_eq!(m.name, "modes");
        assert_eq!(m.kind, MarkerKind::Pass);
        assert_eq!(m.field("first"), Some("1280x800"));
        assert_eq!(m.field("count"), Some("26"));
        assert_eq!(m.field("firs"), None);
        let m = Marker::parse("[  3.1] noise VGPU-TEST: END rc=0\r").unwrap();
        assert_eq!(
            (m.name.as_str(), m.kind, m.detail.as_str()),
            ("END", MarkerKind::Other, "rc=0")
        );
        let m = Marker::parse("VGPU-TEST: fb-pattern READY").unwrap();
        assert_eq!((m.kind, m.detail.as_str()), (MarkerKind::Ready, ""));
        assert!(Marker::parse("VGPU-TEST:nothing").is_none());
        assert!(Marker::parse("plain kernel line").is_none());
    }
}
