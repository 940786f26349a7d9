//! (d) of `vgpu-sched-bench`: `vgpud` RSS with 64 idle vGPUs.

use std::path::PathBuf;
use std::process::Child;

use super::*;

pub(super) struct Rss {
    pub(super) base: u64,
    pub(super) after: u64,
    pub(super) connected: usize,
}

pub(super) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub(super) fn vgpud_path() -> Option<PathBuf> {
    vgpu_tests::backend::vgpud_path()
}

pub(super) struct Daemon(pub(super) Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn wait_for(
    paths: &[PathBuf],
    child: &mut Child,
    timeout: Duration,
) -> Result<(), String> {
    let t0 = Instant::now();
    while !paths.iter().all(|p| p.exists()) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("vgpud exited ({status}) before listening"));
        }
        if t0.elapsed() > timeout {
            return Err("vgpud sockets did not appear".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub(super) fn rss(bin: &Path) -> Result<Rss, String> {
    let help = Command::new(bin)
        .arg("--help")
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !String::from_utf8_lossy(&help.stdout).contains("--vgpu") {
        return Err("this vgpud has no --vgpu option (one process serving many VMs)".into());
    }
    let dir = tempfile::Builder::new()
        .prefix("vgpu-sched-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let sockets: Vec<PathBuf> = (0..RSS_VGPUS)
        .map(|i| dir.path().join(format!("vm{i}.sock")))
        .collect();
    let log = std::fs::File::create(dir.path().join("vgpud.log")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.arg("--device-memory").arg((RSS_VGPUS * 64).to_string());
    for s in &sockets {
        cmd.arg("--vgpu")
            .arg(format!("socket={},type=vgpu-64m", s.display()));
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn vgpud: {e}"))?;
    let mut daemon = Daemon(child);
    let logged = || {
        let text = std::fs::read_to_string(dir.path().join("vgpud.log")).unwrap_or_default();
        text.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
    };
    wait_for(&sockets, &mut daemon.0, Duration::from_secs(10))
        .map_err(|e| format!("{e}: {}", logged()))?;
    std::thread::sleep(Duration::from_millis(300));
    let pid = daemon.0.id();
    let base = rss_kib(pid).ok_or("cannot read vgpud VmRSS")? * 1024;
    let cfg = FrontendConfig {
        mem_size: 16 << 20,
        ..FrontendConfig::default()
    };
    let mut clients = Vec::with_capacity(RSS_VGPUS);
    for s in &sockets {
        let c = GpuClient::connect(s, &cfg)
            .map_err(|e| format!("connect {}: {e}: {}", s.display(), logged()))?;
        clients.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid).ok_or("cannot read vgpud VmRSS")? * 1024;
    let connected = clients.len();
    drop(clients);
    Ok(Rss {
        base,
        after,
        connected,
    })
}

// ---------------------------------------------------------------------------------------------
