//! A private, real libvirt for tests: `libvirtd` in session mode with its own config, runtime,
//! cache and state directories (nothing global is touched), `virsh` against it, and a guest's
//! serial console on a UNIX socket.
//!
//! Run as root, libvirtd and everything it starts (QEMU, the vhost-user backend) run as an
//! unprivileged user (`nobody`, with extra supplementary groups on request), as libvirt's QEMU user
//! would on a host; run as another user, they run as that user.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::guest::{GuestError, Marker};

/// The uid and gid libvirt runs as when the test runs as root (`nobody`/`nogroup`).
pub const UNPRIVILEGED: u32 = 65534;

/// A running private libvirtd; stopped (with every domain destroyed) on drop.
pub struct Libvirt {
    child: Child,
    root: PathBuf,
    uri: String,
    as_root: bool,
    groups: Vec<u32>,
    env: Vec<(String, String)>,
}

fn run_as(as_root: bool, groups: &[u32], program: &str) -> Command {
    if !as_root {
        return Command::new(program);
    }
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={UNPRIVILEGED}"))
        .arg(format!("--regid={UNPRIVILEGED}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.arg("--").arg(program);
    cmd
}

/// Makes `path` and everything under it usable by the unprivileged user.
pub fn give_to_unprivileged(path: &Path) -> Result<(), GuestError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{UNPRIVILEGED}:{UNPRIVILEGED}"))
        .arg(path)
        .status()
        .map_err(|e| GuestError::io("chown", e))?;
    if status.success() {
        Ok(())
    } else {
        Err(GuestError::Command(format!(
            "chown {} failed",
            path.display()
        )))
    }
}

impl Libvirt {
    /// Starts libvirtd with its directories under `root` (created), the extra supplementary
    /// `groups`, and `env` added to its environment (which libvirt passes on to the vhost-user
    /// backends it starts). Waits up to `timeout` for its socket.
    pub fn start(
        root: &Path,
        groups: &[u32],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Self, GuestError> {
        for tool in ["libvirtd", "virsh"] {
            let found = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                return Err(GuestError::MissingDependency(format!(
                    "{tool} (libvirt 11: apt-get install -t bookworm-backports \
                     libvirt-daemon-driver-qemu libvirt-clients libvirt-daemon)"
                )));
            }
        }
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let mut all_env: Vec<(String, String)> = [
            ("HOME", ""),
            ("XDG_CONFIG_HOME", "config"),
            ("XDG_RUNTIME_DIR", "run"),
            ("XDG_CACHE_HOME", "cache"),
            ("XDG_DATA_HOME", "data"),
            ("XDG_STATE_HOME", "state"),
        ]
        .iter()
        .map(|(k, sub)| (k.to_string(), root.join(sub).display().to_string()))
        .collect();
        all_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let cfg = root.join("config/libvirt");
        fs::create_dir_all(&cfg).map_err(|e| GuestError::io("create libvirt config dir", e))?;
        fs::create_dir_all(root.join("run"))
            .map_err(|e| GuestError::io("create runtime dir", e))?;
        fs::set_permissions(root.join("run"), fs::Permissions::from_mode(0o700))
            .map_err(|e| GuestError::io("chmod runtime dir", e))?;
        // QEMU's output goes to a plain file (no virtlogd needed).
        fs::write(cfg.join("qemu.conf"), "stdio_handler = \"file\"\n")
            .map_err(|e| GuestError::io("write qemu.conf", e))?;
        fs::write(
            cfg.join("libvirtd.conf"),
            "log_outputs = \"3:stderr\"\nlog_filters = \"1:qemu.qemu_vhost_user\"\n",
        )
        .map_err(|e| GuestError::io("write libvirtd.conf", e))?;
        give_to_unprivileged(root)?;
        let log = fs::File::create(root.join("libvirtd.log"))
            .map_err(|e| GuestError::io("create libvirtd.log", e))?;
        let mut cmd = run_as(as_root, groups, "libvirtd");
        cmd.arg("--config")
            .arg(cfg.join("libvirtd.conf"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(all_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| GuestError::io("start libvirtd", e))?;
        let sock = root.join("run/libvirt/libvirt-sock");
        let mut lv = Libvirt {
            child,
            root: root.to_path_buf(),
            uri: format!("qemu:///session?socket={}", sock.display()),
            as_root,
            groups: groups.to_vec(),
            env: all_env,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if sock.exists() && lv.virsh(&["version"]).is_ok() {
                return Ok(lv);
            }
            if let Ok(Some(status)) = lv.child.try_wait() {
                return Err(GuestError::Exited(format!(
                    "libvirtd ended ({status}):\n{}",
                    lv.log_text()
                )));
            }
            if Instant::now() > deadline {
                return Err(GuestError::Timeout(format!(
                    "libvirtd socket {} after {timeout:?}:\n{}",
                    sock.display(),
                    lv.log_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The directory holding libvirt's private config, runtime and cache directories.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `$XDG_CONFIG_HOME/qemu/vhost-user`, where a session libvirt looks for vhost-user
    /// descriptors before `/etc/qemu/vhost-user` and `/usr/share/qemu/vhost-user`.
    pub fn descriptor_dir(&self) -> PathBuf {
        self.root.join("config/qemu/vhost-user")
    }

    /// Installs a `type: gpu` descriptor named `file_name` for `binary`.
    pub fn install_descriptor(&self, file_name: &str, binary: &Path) -> Result<(), GuestError> {
        let dir = self.descriptor_dir();
        fs::create_dir_all(&dir).map_err(|e| GuestError::io("create descriptor dir", e))?;
        let text = serde_json::json!({
            "description": "vgpud under test",
            "type": "gpu",
            "binary": binary,
        })
        .to_string();
        fs::write(dir.join(file_name), text).map_err(|e| GuestError::io("write descriptor", e))?;
        give_to_unprivileged(&self.root.join("config"))
    }

    /// Runs `virsh ARGS` against this libvirtd; its output, or an error with stderr.
    pub fn virsh(&self, args: &[&str]) -> Result<Output, GuestError> {
        let mut cmd = run_as(self.as_root, &self.groups, "virsh");
        let out = cmd
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| GuestError::io("run virsh", e))?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(GuestError::Command(format!(
                "virsh {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            )))
        }
    }

    /// libvirtd's own log (its stderr).
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.root.join("libvirtd.log")).unwrap_or_default()
    }

    /// The domain's QEMU log (libvirt writes the external devices' command lines there too).
    pub fn domain_log(&self, name: &str) -> String {
        fs::read_to_string(self.root.join(format!("cache/libvirt/qemu/log/{name}.log")))
            .unwrap_or_default()
    }

    /// Names of the running domains.
    pub fn running(&self) -> Vec<String> {
        self.virsh(&["list", "--name"])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        for name in self.running() {
            let _ = self.virsh(&["destroy", &name]);
        }
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A domain XML for a TCG guest booting `kernel`/`initrd` directly, with memfd shared memory, a
/// vhost-user virtio video device, and its serial console on the UNIX socket `serial`.
pub fn domain_xml(
    name: &str,
    kernel: &Path,
    initrd: &Path,
    serial: &Path,
    memory_mib: u32,
) -> String {
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <cpu mode='custom'><model>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='unix'>
      <source mode='bind' path='{serial}'/>
      <target port='0'/>
    </serial>
    <video>
      <driver name='vhostuser'/>
      <model type='virtio' heads='1'/>
    </video>
    <memballoon model='none'/>
  </devices>
</domain>
",
        kernel = kernel.display(),
        initrd = initrd.display(),
        serial = serial.display(),
    )
}

/// A guest's serial console on a UNIX socket: its `VGPU-TEST:` markers, and replies to them.
pub struct SerialConsole {
    stream: UnixStream,
    lines: Receiver<String>,
    log: PathBuf,
    /// Markers seen so far.
    pub markers: Vec<Marker>,
}

impl SerialConsole {
    /// Connects to `path` (retrying up to `timeout` while QEMU creates it); copies everything the
    /// guest prints to `log`.
    pub fn connect(path: &Path, log: &Path, timeout: Duration) -> Result<Self, GuestError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(GuestError::io(format!("connect {}", path.display()), e))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let reader = stream
            .try_clone()
            .map_err(|e| GuestError::io("clone serial socket", e))?;
        let mut file = fs::File::create(log).map_err(|e| GuestError::io("create serial log", e))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            while let Ok(n) = reader.read_until(b'\n', &mut buf) {
                if n == 0 {
                    break;
                }
                let _ = file.write_all(&buf);
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                if tx.send(line).is_err() {
                    break;
                }
                buf.clear();
            }
        });
        Ok(SerialConsole {
            stream,
            lines,
            log: log.to_path_buf(),
            markers: Vec::new(),
        })
    }

    /// Waits up to `timeout` for the marker `name`.
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
                        "no `{name}` marker after {timeout:?}; serial:\n{}",
                        self.text()
                    )))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(GuestError::Exited(format!(
                        "serial console closed before `{name}`; serial:\n{}",
                        self.text()
                    )))
                }
            }
        }
    }

    /// Sends one line to the guest.
    pub fn reply(&mut self, line: &str) -> Result<(), GuestError> {
        let mut text = line.replace(['\r', '\n'], " ");
        text.push('\n');
        self.stream
            .write_all(text.as_bytes())
            .map_err(|e| GuestError::io("write to the guest console", e))
    }

    /// Everything the guest printed so far.
    pub fn text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}
