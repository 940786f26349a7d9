//! The one client of `vgpud`'s control socket, used by `vgpuctl` and `vgpud ctl`: one
//! [`Request`] line out, one JSON reply line back (see [`crate::proto`] and mdev/README.md), and
//! the tables `vgpuctl` prints.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use thiserror::Error;

use crate::proto::Request;

/// The daemon's control socket when neither `--control-socket` nor `$VGPUD_CONTROL` says.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/vgpud/control.sock";
/// The environment variable naming the control socket.
pub const CONTROL_ENV: &str = "VGPUD_CONTROL";
/// How long a query may take (a `create` waits for its socket to listen).
const TIMEOUT: Duration = Duration::from_secs(30);
/// Longest reply accepted (the scheduler log and screenshots are the largest).
const MAX_REPLY: u64 = 64 << 20;

/// `$VGPUD_CONTROL` if set and non-empty, else [`DEFAULT_CONTROL_SOCKET`].
pub fn default_control_socket() -> PathBuf {
    match std::env::var_os(CONTROL_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_CONTROL_SOCKET),
    }
}

/// Why a query failed.
#[derive(Debug, Error)]
pub enum CtlError {
    /// The socket could not be reached or read.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The reply was not JSON.
    #[error("control socket {0}: the reply is not JSON")]
    BadReply(String),
    /// The daemon answered with an error.
    #[error("vgpud: {message}")]
    Daemon {
        /// The reply's `kind` (`not-found`, `busy`, `no-room`, ...).
        kind: String,
        /// The reply's `error`.
        message: String,
    },
}

/// A control-socket client.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    /// A client of the control socket at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Client { path: path.into() }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `request` (stamped with the protocol version) and returns the `ok` reply.
    pub fn call(&self, request: Request) -> Result<Value, CtlError> {
        let line = serde_json::to_string(&request.versioned()).map_err(|e| CtlError::Io {
            path: self.path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        let reply = self.raw(&line)?;
        if reply["ok"] != json!(true) {
            return Err(CtlError::Daemon {
                kind: reply["kind"].as_str().unwrap_or("failed").to_string(),
                message: reply["error"].as_str().unwrap_or("error").to_string(),
            });
        }
        Ok(reply)
    }

    /// Sends one raw request line and returns the parsed reply, `ok` or not.
    pub fn raw(&self, line: &str) -> Result<Value, CtlError> {
        let path = self.path.display().to_string();
        let io = |source| CtlError::Io {
            path: path.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.path).map_err(io)?;
        stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        stream
            .write_all(format!("{}\n", line.trim_end()).as_bytes())
            .map_err(io)?;
        let mut reply = String::new();
        let mut reader = BufReader::new(std::io::Read::take(stream, MAX_REPLY));
        reader.read_line(&mut reply).map_err(io)?;
        serde_json::from_str(&reply).map_err(|_| CtlError::BadReply(path.clone()))
    }
}

/// Sends `{"cmd": cmd}` (plus `"limit"`) to the control socket at `path` and returns the reply.
pub fn query(path: &Path, cmd: &str, limit: Option<usize>) -> Result<Value, CtlError> {
    let mut request = json!({ "cmd": cmd, "v": crate::proto::PROTOCOL_VERSION });
    if let Some(n) = limit {
        request["limit"] = json!(n);
    }
    let reply = Client::new(path).raw(&request.to_string())?;
    if reply["ok"] != json!(true) {
        return Err(CtlError::Daemon {
            kind: reply["kind"].as_str().unwrap_or("failed").to_string(),
            message: reply["error"].as_str().unwrap_or("error").to_string(),
        });
    }
    Ok(reply)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `vgpuctl list`: one line per instance (like `mdevctl list`): uuid, type, state, memory,
/// utilization, socket, and `auto` for instances started with the daemon.
pub fn list_table(reply: &Value) -> String {
    let mib = |v: &Value| v.as_u64().unwrap_or(0).div_ceil(1 << 20);
    let mut out = String::new();
    for v in reply["vgpus"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        out.push_str(&format!(
            "{} {} {} fb={}/{}M util={:.1}% {}{}\n",
            text(&v["uuid"]),
            text(&v["type"]),
            text(&v["state"]),
            mib(&v["fb_used_bytes"]),
            mib(&v["fb_total_bytes"]),
            v["utilization_permille"].as_u64().unwrap_or(0) as f64 / 10.0,
            text(&v["socket"]),
            if v["auto"] == json!(true) {
                " (auto)"
            } else {
                ""
            },
        ));
    }
    out
}

/// `vgpuctl types`: each type with its live `available_instances`.
pub fn types_table(reply: &Value) -> String {
    let mut out = String::new();
    for t in reply["types"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        out.push_str(&format!(
            "{}\n  Available instances: {}\n  {}\n",
            text(&t["name"]),
            text(&t["available_instances"]),
            text(&t["description"]),
        ));
    }
    out
}

/// `vgpuctl stats`: per-vGPU utilization, memory and share (like `nvidia-smi vgpu -u`).
pub fn stats_table(reply: &Value) -> String {
    let mib = |v: &Value| v.as_u64().unwrap_or(0) >> 20;
    let permille = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 10.0;
    let mut out = format!(
        "{:<8} {:<10} {:>6} {:>7} {:>15} {:>10} {:>10}\n",
        "vgpu", "type", "util%", "share%", "fb used/total", "jobs", "slice_us"
    );
    for v in reply["vgpus"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        out.push_str(&format!(
            "{:<8} {:<10} {:>6.1} {:>7.1} {:>15} {:>10} {:>10}\n",
            text(&v["name"]),
            text(&v["type_name"]),
            permille(&v["utilization_permille"]),
            permille(&v["share_permille"]),
            format!(
                "{}/{}M",
                mib(&v["framebuffer_used"]),
                mib(&v["framebuffer_total"])
            ),
            text(&v["jobs_completed"]),
            text(&v["timeslice_us"]),
        ));
    }
    out
}

/// `vgpuctl sched-log`: one line per slice (like `nvidia-smi vgpu -sl`).
pub fn sched_log_table(reply: &Value) -> String {
    let mut out = format!(
        "{:>10} {:>6} {:>14} {:>14} {:>9}\n",
        "slice", "vgpu", "target_ns", "time_run_ns", "preempted"
    );
    for s in reply["slices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        out.push_str(&format!(
            "{:>10} {:>6} {:>14} {:>14} {:>9}\n",
            text(&s["seq"]),
            text(&s["vgpu_id"]),
            text(&s["target_ns"]),
            text(&s["time_run_ns"]),
            if s["preempted"] == json!(true) {
                "yes"
            } else {
                "no"
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_replies() {
        let list = json!({"ok": true, "vgpus": [{"uuid": "u-1", "name": "vgpu0", "type": "vgpu-1q",
            "state": "connected", "socket": "/run/a.sock", "fb_used_bytes": 3u64 << 20,
            "fb_total_bytes": 1u64 << 30, "utilization_permille": 125, "auto": true}]});
        assert_eq!(
            list_table(&list),
            "u-1 vgpu-1q connected fb=3/1024M util=12.5% /run/a.sock (auto)\n"
        );
        let types = json!({"ok": true, "types": [{"name": "vgpu-1q", "available_instances": 3,
            "description": "d"}]});
        assert_eq!(
            types_table(&types),
            "vgpu-1q\n  Available instances: 3\n  d\n"
        );
        let stats = json!({"ok": true, "vgpus": [{"name": "vgpu0", "type_name": "vgpu-1q",
            "utilization_permille": 505, "share_permille": 500, "framebuffer_used": 4u64 << 20,
            "framebuffer_total": 1u64 << 30, "jobs_completed": 7, "timeslice_us": 2000}]});
        let t = stats_table(&stats);
        assert!(t
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("50.5") && l.contains("4/1024M") && l.contains("2000")));
        let log = json!({"ok": true, "slices": [{"seq": 3, "vgpu_id": 1, "target_ns": 2000000,
            "time_run_ns": 2010000, "preempted": true}]});
        assert!(sched_log_table(&log).contains("yes"));
    }

    #[test]
    fn unreachable_socket_is_an_io_error() {
        let e = query(Path::new("/nonexistent/vgpu.sock"), "list", None).unwrap_err();
        assert!(matches!(e, CtlError::Io { .. }), "{e}");
    }
}
