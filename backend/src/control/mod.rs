//! The operator's side of a running daemon: the control socket (protocol in
//! [`vgpu_mdev::proto`], documented in mdev/README.md), the live instance [`Manager`], the
//! `--state-dir` store, the `--vm-map` of `claim`, per-vGPU status lines for the log, and
//! `vgpud ctl` / `vgpud status` (clients through [`vgpu_mdev::ctl::Client`]).
//!
//! Transport: each connection is answered on its own thread (at most [`MAX_CLIENTS`] at once;
//! more get an immediate error), so a client that stalls mid-request only ties up its own thread
//! until [`REQUEST_TIMEOUT`]. Requests longer than [`MAX_REQUEST_BYTES`] are refused unread.

mod claim;
pub mod manager;
pub mod state;
mod views;
pub mod vm_map;

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use vgpu_mdev::ctl::Client;
use vgpu_mdev::proto::{
    error_reply, parse_request, ErrorKind, Request, MAX_REQUEST_BYTES, PROTOCOL_VERSION,
};

pub use manager::{Manager, ManagerConfig, NewInstance, VerbError};

use crate::driver::VgpuStats;
use crate::vhost::daemon::{wait_readable, ShutdownSignal};

/// How long one connection may take to send its whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing the reply may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections answered at once.
pub const MAX_CLIENTS: usize = 32;
/// Stack of a connection thread (PNG compression for screenshots needs more than the daemon's
/// usual small stacks).
const CONN_STACK: usize = 2 << 20;
/// Most bytes discarded after refusing an oversized request, so the client reads the refusal
/// instead of a connection reset.
const DRAIN_LIMIT: u64 = 16 << 20;
/// Scheduler-log entries returned when the request names no limit.
const DEFAULT_LOG_LIMIT: usize = 256;
const MIB: u64 = 1 << 20;

/// What a control client may do, from its peer credentials (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Root or the daemon's own user: every verb.
    Full,
    /// Anyone else the socket's mode lets in (`--control-group`, e.g. libvirt's QEMU user running
    /// the per-VM relay): `claim` and the verbs that only read.
    ClaimAndRead,
}

impl Access {
    /// The access of a client running as `uid`.
    pub fn of_uid(uid: u32) -> Self {
        // SAFETY: geteuid has no preconditions.
        let own = unsafe { libc::geteuid() };
        if uid == 0 || uid == own {
            Access::Full
        } else {
            Access::ClaimAndRead
        }
    }

    /// The access of the peer of `stream` (no credentials: the least).
    pub fn of_peer(stream: &UnixStream) -> Self {
        let mut cred = libc::ucred {
            pid: 0,
            uid: u32::MAX,
            gid: u32::MAX,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` and `len` are valid for writes of the sizes given; the fd is open.
        let r = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if r == 0 {
            Access::of_uid(cred.uid)
        } else {
            Access::ClaimAndRead
        }
    }
}

/// What answers one request's bytes, from a client with the given access, with one reply line.
pub type Handler = Arc<dyn Fn(&[u8], Access) -> String + Send + Sync>;

/// Answers one request (its raw bytes) with one JSON line (without the newline).
pub fn handle(manager: &Manager, bytes: &[u8], access: Access) -> String {
    let ok = |mut v: Value| {
        if let Value::Object(map) = &mut v {
            map.insert("ok".into(), json!(true));
            map.insert("v".into(), json!(PROTOCOL_VERSION));
        }
        v
    };
    let reply = match parse_request(bytes) {
        Err(e) => error_reply(ErrorKind::BadRequest, &e.to_string()),
        Ok(req) if access != Access::Full && !req.unprivileged_ok() => {
            log::warn!(
                "control: {} refused: only root and the daemon's user may change state",
                req.cmd()
            );
            error_reply(
                ErrorKind::Denied,
                &format!(
                    "{}: permission denied (only root and the daemon's user may change state; \
                     this client may claim and read)",
                    req.cmd()
                ),
            )
        }
        Ok(req) => {
            let cmd = req.cmd();
            match dispatch(manager, req) {
                Ok(v) => ok(v),
                Err(e) => {
                    log::info!("control: {cmd}: {e}");
                    error_reply(e.kind, &e.message)
                }
            }
        }
    };
    reply.to_string()
}

fn dispatch(m: &Manager, req: Request) -> Result<Value, VerbError> {
    match req {
        Request::List { .. } => Ok(m.list()),
        Request::Stats { .. } => Ok(m.stats()),
        Request::Types { .. } => Ok(m.types()),
        Request::SchedLog { limit, .. } => {
            let log = m.device().scheduler_log();
            let skip = log.len().saturating_sub(limit.unwrap_or(DEFAULT_LOG_LIMIT));
            let slices: Vec<Value> = log
                .iter()
                .skip(skip)
                .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
                .collect();
            Ok(json!({ "slices": slices }))
        }
        Request::Create {
            type_name,
            uuid,
            socket,
            auto,
            ..
        } => m.create(&type_name, uuid.as_deref(), socket, auto),
        Request::Define {
            type_name,
            uuid,
            socket,
            auto,
            ..
        } => m.define(&type_name, uuid.as_deref(), socket, auto),
        Request::Remove { uuid, force, .. } => m.remove(&uuid, force),
        Request::Undefine { uuid, .. } => m.undefine(&uuid),
        Request::Start { uuid, .. } => m.start(&uuid),
        Request::Stop { uuid, force, .. } => m.stop(&uuid, force),
        Request::Sched {
            policy,
            timeslice_us,
            ..
        } => m.sched(policy.as_deref(), timeslice_us),
        Request::Screenshot { uuid, head, .. } => {
            let (png, width, height) = m.screenshot(&uuid, head)?;
            Ok(json!({
                "uuid": uuid,
                "head": head,
                "width": width,
                "height": height,
                "png": base64::engine::general_purpose::STANDARD.encode(png),
            }))
        }
        Request::Claim { type_name, vm, .. } => m.claim(type_name.as_deref(), vm.as_deref()),
    }
}

/// Makes the control socket at `path` mode 0600, or 0660 owned by `group`.
pub fn secure_socket(path: &Path, group: Option<&str>) -> io::Result<()> {
    // One implementation with the vGPU sockets': the group is changed only when it differs (a
    // daemon whose own group is the control group makes no chown, which a unit's
    // `SystemCallFilter=~@privileged` would refuse).
    let gid = group.map(group_id).transpose()?;
    crate::vhost::socket_access::SocketAccess::new(gid, None).apply(path)
}

/// The numeric id of group `name` (or `name` itself if it is a number).
pub fn group_id(name: &str) -> io::Result<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let c = CString::new(name).map_err(|_| io::Error::other("group name contains NUL"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: group is plain data; getgrnam_r writes into `grp` and `buf` (whose length it is
    // told) and sets `result` to null or to `grp`.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut result: *mut libc::group = std::ptr::null_mut();
        let r = libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        if result.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no group {name:?}"),
            ));
        }
        Ok(grp.gr_gid)
    }
}

/// Serves control requests on the non-blocking `listener` until `shutdown` fires; each
/// connection on its own thread.
pub fn serve(listener: &UnixListener, shutdown: &ShutdownSignal, handler: Handler) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        match wait_readable(listener.as_raw_fd(), shutdown) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                log::error!("control socket: {e}");
                break;
            }
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                log::warn!("control socket accept: {e}");
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            active.fetch_sub(1, Ordering::AcqRel);
            let reply = error_reply(
                ErrorKind::Failed,
                &format!("too many control connections (at most {MAX_CLIENTS}); try again"),
            );
            let _ = stream.set_nonblocking(true);
            let _ = (&stream).write_all(format!("{reply}\n").as_bytes());
            continue;
        }
        let handler = Arc::clone(&handler);
        let count = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name("vgpud-control-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || {
                if let Err(e) = answer(stream, &*handler) {
                    log::debug!("control connection: {e}");
                }
                count.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            log::warn!("control connection thread: {e}");
        }
    }
}

/// Reads one request line within [`REQUEST_TIMEOUT`]: `Ok(Some(line))`, or `Ok(None)` with an
/// error reply already chosen.
fn read_request(stream: &UnixStream) -> io::Result<Result<Vec<u8>, Value>> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Err(error_reply(
                ErrorKind::BadRequest,
                &format!(
                    "timed out after {} s waiting for a complete request line",
                    REQUEST_TIMEOUT.as_secs()
                ),
            )));
        }
        stream.set_read_timeout(Some(left))?;
        let n = match (&*stream).read(&mut chunk) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let part = &chunk[..n];
        if let Some(pos) = part.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&part[..pos]);
        } else {
            buf.extend_from_slice(part);
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(Err(error_reply(
                ErrorKind::BadRequest,
                &format!("request longer than {MAX_REQUEST_BYTES} bytes"),
            )));
        }
        if n == 0 || part.contains(&b'\n') {
            return Ok(Ok(buf));
        }
    }
}

fn answer(stream: UnixStream, handler: &dyn Fn(&[u8], Access) -> String) -> io::Result<()> {
    let access = Access::of_peer(&stream);
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let (mut reply, refused) = match read_request(&stream)? {
        Ok(line) => (handler(&line, access), false),
        Err(refusal) => (refusal.to_string(), true),
    };
    reply.push('\n');
    (&stream).write_all(reply.as_bytes())?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    if refused {
        // A refused client may still be writing: take (and drop) what it sends for a while, so
        // closing does not reset the connection before it read the refusal.
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        let _ = io::copy(&mut (&stream).take(DRAIN_LIMIT), &mut io::sink());
    }
    Ok(())
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

/// One `nvidia-smi vgpu -u`-like log line per running instance.
pub fn stats_lines(manager: &Manager) -> Vec<String> {
    manager
        .snapshot()
        .into_iter()
        .filter_map(|i| Some(stats_line(&i.name, i.connected, i.stats.as_ref()?)))
        .collect()
}

const CTL_USAGE: &str =
    "usage: vgpud ctl CONTROL_SOCKET list|stats|types|sched-log [LIMIT]\n       \
                         vgpud status --socket CONTROL_SOCKET\n\
                         (vgpuctl has every verb: create, remove, sched, screenshot, ...)";

/// `vgpud ctl PATH CMD [LIMIT]` and `vgpud status --socket PATH`: prints the reply; returns the
/// exit status (0 ok, 1 error reply or unreachable daemon, 2 usage).
pub fn client_main(verb: &str, args: &[String]) -> u8 {
    let (path, request) = match (verb, args) {
        ("ctl", [path, cmd]) => match cmd.as_str() {
            "list" => (path, Request::List { v: None }),
            "stats" => (path, Request::Stats { v: None }),
            "types" => (path, Request::Types { v: None }),
            "sched-log" => (
                path,
                Request::SchedLog {
                    v: None,
                    limit: None,
                },
            ),
            _ => {
                eprintln!("{CTL_USAGE}");
                return 2;
            }
        },
        ("ctl", [path, cmd, limit]) if cmd == "sched-log" => match limit.parse::<usize>() {
            Ok(n) => (
                path,
                Request::SchedLog {
                    v: None,
                    limit: Some(n),
                },
            ),
            Err(_) => {
                eprintln!("{CTL_USAGE}");
                return 2;
            }
        },
        ("status", [flag, path]) if flag == "--socket" => (path, Request::Stats { v: None }),
        _ => {
            eprintln!("{CTL_USAGE}");
            return 2;
        }
    };
    let reply = match Client::new(path).call(request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vgpud: {e}");
            return 1;
        }
    };
    if verb == "status" {
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
#[path = "tests.rs"]
mod tests;
