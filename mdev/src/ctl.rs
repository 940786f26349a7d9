//! The client side of `vgpud --control-socket` for `vgpuctl`: one JSON request line, one JSON
//! reply line (see `backend/src/control.rs` for the server), and the tables `vgpuctl` prints.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use thiserror::Error;

/// How long a query may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Longest reply accepted (the scheduler log is the largest).
const MAX_REPLY: u64 = 16 << 20;

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
    #[error("vgpud: {0}")]
    Daemon(String),
}

/// Sends `{"cmd": cmd}` (plus `"limit"`) to the control socket at `path` and returns the reply.
pub fn query(path: &Path, cmd: &str, limit: Option<usize>) -> Result<Value, CtlError> {
    let io = |source| CtlError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut request = json!({ "cmd": cmd });
    if let Some(n) = limit {
        request["limit"] = json!(n);
    }
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(io)?;
    let mut line = String::new();
    let mut reader = BufReader::new(std::io::Read::take(stream, MAX_REPLY));
    reader.read_line(&mut line).map_err(io)?;
    let reply: Value =
        serde_json::from_str(&line).map_err(|_| CtlError::BadReply(path.display().to_string()))?;
    if reply["ok"] != json!(true) {
        let msg = reply["error"].as_str().unwrap_or("error").to_string();
        return Err(CtlError::Daemon(msg));
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

/// `vgpuctl list`: one line per vGPU instance (like `mdevctl list`).
pub fn list_table(reply: &Value) -> String {
    let mut out = String::new();
    for v in reply["vgpus"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        out.push_str(&format!(
            "{} {} {} {} ({})\n",
            text(&v["uuid"]),
            text(&v["name"]),
            text(&v["type"]),
            if v["connected"] == json!(true) {
                "connected"
            } else {
                "waiting"
            },
            text(&v["socket"]),
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
            "connected": true, "socket": "/run/a.sock"}]});
        assert_eq!(
            list_table(&list),
            "u-1 vgpu0 vgpu-1q connected (/run/a.sock)\n"
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
