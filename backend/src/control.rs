//! The operator's view of a running daemon: per-vGPU status lines for the log, the
//! `--control-socket` JSON protocol and its client (`vgpud ctl`, `vgpud status`).
//!
//! Protocol: the client connects, writes one JSON line `{"cmd": "list" | "stats" | "sched-log"}`
//! (`sched-log` also takes `"limit": N`, default 256) and reads one JSON line back:
//! `{"ok": true, ...}` or `{"ok": false, "error": "..."}`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::driver::{Device, Vgpu, VgpuStats};
use crate::vhost::daemon::{wait_readable, ServerStatus, ShutdownSignal};

/// Longest request line accepted.
const MAX_REQUEST: u64 = 4096;
/// How long one control connection may take to send its request or read the reply.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Scheduler-log entries returned when the request names no limit.
const DEFAULT_LOG_LIMIT: usize = 256;
const MIB: u64 = 1 << 20;

/// One served vGPU as the control socket and the stats log see it.
#[derive(Clone)]
pub struct ControlVgpu {
    /// `vgpuN`.
    pub name: String,
    /// Its socket (`None` for the standalone `--fd` vGPU).
    pub socket: Option<PathBuf>,
    /// The driver-core vGPU.
    pub vgpu: Arc<Vgpu>,
    /// Its connection state.
    pub status: Arc<ServerStatus>,
}

/// What the control socket reports on.
#[derive(Clone)]
pub struct ControlState {
    /// The shared driver core.
    pub device: Arc<Device>,
    /// The served vGPUs.
    pub vgpus: Vec<ControlVgpu>,
}

#[derive(Deserialize)]
struct Request {
    cmd: String,
    #[serde(default)]
    limit: Option<usize>,
}

impl ControlState {
    /// Answers one request line with one JSON line (without the newline).
    pub fn handle(&self, line: &str) -> String {
        let reply = match serde_json::from_str::<Request>(line) {
            Ok(req) => match req.cmd.as_str() {
                "list" => self.list(),
                "stats" => self.stats(),
                "sched-log" => self.sched_log(req.limit.unwrap_or(DEFAULT_LOG_LIMIT)),
                other => json!({"ok": false, "error": format!(
                    "unknown cmd {other:?} (expected list, stats or sched-log)")}),
            },
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        reply.to_string()
    }

    fn device_json(&self) -> Value {
        let (total, used) = self.device.memory();
        json!({
            "memory_mib": total / MIB,
            "reserved_mib": used / MIB,
            "policy": self.device.policy().as_str(),
        })
    }

    fn list(&self) -> Value {
        let vgpus: Vec<Value> = self
            .vgpus
            .iter()
            .map(|v| {
                json!({
                    "name": v.name,
                    "id": v.vgpu.id(),
                    "uuid": v.vgpu.uuid().to_string(),
                    "type": v.vgpu.vgpu_type().name,
                    "description": v.vgpu.vgpu_type().description(),
                    "framebuffer_bytes": v.vgpu.vgpu_type().framebuffer_bytes,
                    "socket": v.socket.as_ref().map(|p| p.display().to_string()),
                    "connected": v.status.connected(),
                    "connections": v.status.connections(),
                })
            })
            .collect();
        json!({"ok": true, "device": self.device_json(), "vgpus": vgpus})
    }

    fn stats(&self) -> Value {
        let vgpus: Vec<Value> = self
            .vgpus
            .iter()
            .map(|v| {
                let mut s = serde_json::to_value(v.vgpu.stats()).unwrap_or(Value::Null);
                if let Value::Object(map) = &mut s {
                    map.insert("name".into(), json!(v.name));
                    map.insert("connected".into(), json!(v.status.connected()));
                }
                s
            })
            .collect();
        json!({"ok": true, "device": self.device_json(), "vgpus": vgpus})
    }

    fn sched_log(&self, limit: usize) -> Value {
        let log = self.device.scheduler_log();
        let skip = log.len().saturating_sub(limit);
        let slices: Vec<Value> = log
            .iter()
            .skip(skip)
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .collect();
        json!({"ok": true, "slices": slices})
    }

    /// One `nvidia-smi vgpu -u`-like log line per vGPU.
    pub fn stats_lines(&self) -> Vec<String> {
        self.vgpus
            .iter()
            .map(|v| stats_line(&v.name, v.status.connected(), &v.vgpu.stats()))
            .collect()
    }
}

fn permille(p: u32) -> String {
    format!("{}.{}%", p / 10, p % 10)
}

/// Formats one vGPU's stats: utilization, memory, share, jobs and queue waits.
pub fn stats_line(name: &str, connected: bool, s: &VgpuStats) -> String {
    format!(
        "{name} type={} conn={} util={} fb={}/{}M share={} active={} slice={}us jobs={}/{} \
         queued={} wait_p50={}us wait_p99={}us debt={}us",
        s.type_name,
        if connected { "yes" } else { "no" },
        permille(s.utilization_permille),
        s.framebuffer_used.div_ceil(MIB),
        s.framebuffer_total / MIB,
        permille(s.share_permille),
        s.active_vgpus,
        s.timeslice_us,
        s.jobs_completed,
        s.jobs_failed,
        s.queued_jobs,
        s.queue_wait_p50_ns / 1000,
        s.queue_wait_p99_ns / 1000,
        s.debt_ns / 1000,
    )
}

/// Serves control requests on the non-blocking `listener` until `shutdown` fires, one connection
/// at a time (requests are answered from snapshots in microseconds).
pub fn serve(listener: &UnixListener, shutdown: &ShutdownSignal, handler: &dyn Fn(&str) -> String) {
    loop {
        match wait_readable(listener.as_raw_fd(), shutdown) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                log::error!("control socket: {e}");
                break;
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, handler) {
                    log::debug!("control connection: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => log::warn!("control socket accept: {e}"),
        }
    }
}

fn answer(stream: UnixStream, handler: &dyn Fn(&str) -> String) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    let mut reply = handler(line.trim());
    reply.push('\n');
    (&stream).write_all(reply.as_bytes())
}

/// Sends `request` (one JSON object) to the control socket at `path` and returns the reply.
pub fn query(path: &Path, request: &Value) -> io::Result<Value> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut line = request.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    serde_json::from_str(&reply).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

const CTL_USAGE: &str = "usage: vgpud ctl CONTROL_SOCKET list|stats|sched-log [LIMIT]\n       \
                         vgpud status --socket CONTROL_SOCKET";

/// `vgpud ctl PATH CMD [LIMIT]` and `vgpud status --socket PATH`: prints the reply; returns the
/// exit status (0 ok, 1 error reply or unreachable daemon, 2 usage).
pub fn client_main(verb: &str, args: &[String]) -> u8 {
    let (path, cmd, limit) = match (verb, args) {
        ("ctl", [path, cmd]) => (path, cmd.as_str(), None),
        ("ctl", [path, cmd, limit]) => match limit.parse::<usize>() {
            Ok(n) => (path, cmd.as_str(), Some(n)),
            Err(_) => {
                eprintln!("{CTL_USAGE}");
                return 2;
            }
        },
        ("status", [flag, path]) if flag == "--socket" => (path, "status", None),
        _ => {
            eprintln!("{CTL_USAGE}");
            return 2;
        }
    };
    let wire = if cmd == "status" { "stats" } else { cmd };
    let mut request = json!({"cmd": wire});
    if let Some(n) = limit {
        request["limit"] = json!(n);
    }
    let reply = match query(Path::new(path), &request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vgpud: control socket {path}: {e}");
            return 1;
        }
    };
    if reply["ok"] != json!(true) {
        eprintln!("vgpud: {}", reply["error"].as_str().unwrap_or("error"));
        return 1;
    }
    if cmd == "status" {
        print!("{}", status_table(&reply));
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&reply).unwrap_or_default()
        );
    }
    0
}

/// A human-readable table of a `stats` reply.
pub fn status_table(reply: &Value) -> String {
    let mut out = format!(
        "device: {} MiB ({} MiB reserved), policy {}\n{:<8} {:<10} {:>4} {:>7} {:>14} {:>7} {:>9}\n",
        reply["device"]["memory_mib"],
        reply["device"]["reserved_mib"],
        reply["device"]["policy"].as_str().unwrap_or("?"),
        "vgpu",
        "type",
        "conn",
        "util",
        "fb used/total",
        "share",
        "jobs"
    );
    let empty = Vec::new();
    for v in reply["vgpus"].as_array().unwrap_or(&empty) {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "{:<8} {:<10} {:>4} {:>7} {:>14} {:>7} {:>9}\n",
            v["name"].as_str().unwrap_or("?"),
            v["type_name"].as_str().unwrap_or("?"),
            if v["connected"] == json!(true) {
                "yes"
            } else {
                "no"
            },
            permille(u32::try_from(n("utilization_permille")).unwrap_or(0)),
            format!(
                "{}/{}M",
                n("framebuffer_used").div_ceil(MIB),
                n("framebuffer_total") / MIB
            ),
            permille(u32::try_from(n("share_permille")).unwrap_or(0)),
            n("jobs_completed"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{DeviceConfig, Uuid};

    fn state() -> ControlState {
        let device = Device::new(DeviceConfig {
            memory_mib: 256,
            ..Default::default()
        })
        .unwrap();
        let vgpus = ["vgpu-64m", "vgpu-64m"]
            .iter()
            .enumerate()
            .map(|(i, t)| ControlVgpu {
                name: format!("vgpu{i}"),
                socket: Some(PathBuf::from(format!("/tmp/v{i}.sock"))),
                vgpu: device
                    .create_vgpu(t, Uuid::from_u128(i as u128 + 1))
                    .unwrap(),
                status: Arc::default(),
            })
            .collect();
        ControlState { device, vgpus }
    }

    #[test]
    fn list_stats_and_errors() {
        let s = state();
        let list: Value = serde_json::from_str(&s.handle(r#"{"cmd":"list"}"#)).unwrap();
        assert_eq!(list["ok"], true);
        assert_eq!(list["device"]["memory_mib"], 256);
        assert_eq!(list["device"]["reserved_mib"], 128);
        assert_eq!(list["vgpus"][1]["name"], "vgpu1");
        assert_eq!(list["vgpus"][1]["type"], "vgpu-64m");
        assert_eq!(list["vgpus"][1]["socket"], "/tmp/v1.sock");
        assert_eq!(list["vgpus"][0]["connected"], false);
        let stats: Value = serde_json::from_str(&s.handle(r#"{"cmd":"stats"}"#)).unwrap();
        assert_eq!(stats["vgpus"][0]["framebuffer_total"], 64 << 20);
        assert_eq!(stats["vgpus"][0]["name"], "vgpu0");
        let table = status_table(&stats);
        assert!(table.contains("vgpu1    vgpu-64m"), "{table}");
        let log: Value =
            serde_json::from_str(&s.handle(r#"{"cmd":"sched-log","limit":5}"#)).unwrap();
        assert!(log["slices"].as_array().unwrap().len() <= 5);
        for bad in ["", "{", r#"{"cmd":"reboot"}"#] {
            let r: Value = serde_json::from_str(&s.handle(bad)).unwrap();
            assert_eq!(r["ok"], false, "{bad}");
        }
        let lines = s.stats_lines();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("vgpu0 type=vgpu-64m conn=no util=0.0% fb=0/64M"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn socket_round_trip() {
        let s = state();
        let dir = std::env::temp_dir().join(format!("vgpud-control-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let shutdown = ShutdownSignal::new().unwrap();
        let sd = Arc::clone(&shutdown);
        let t = std::thread::spawn(move || serve(&listener, &sd, &|l| s.handle(l)));
        let reply = query(&path, &json!({"cmd": "list"})).unwrap();
        assert_eq!(reply["vgpus"].as_array().unwrap().len(), 2);
        let reply = query(&path, &json!({"cmd": "nope"})).unwrap();
        assert_eq!(reply["ok"], false);
        shutdown.trigger();
        t.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
