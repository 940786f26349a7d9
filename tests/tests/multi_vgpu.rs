//! Many VMs in one `vgpud`: several vGPUs of different types served at once by one process, each
//! with its own socket, config and memory partition; one VM's disconnects never disturb another;
//! startup refuses what the device cannot hold; 64 idle vGPUs stay small.
//!
//! Needs `target/<profile>/vgpud` (`cargo build -p vgpu-backend`) or `VGPUD=path`; skips with a
//! message otherwise (set `VGPU_REQUIRE_VGPUD=1` to fail instead).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{DecodedResponse, ErrorCode};
use vgpu_tests::backend::{vgpud_or_skip_path, vgpud_path};
use vgpu_tests::client::{pattern, rect};
use vgpu_tests::conformance::{assert_ok, run_2d_conformance, DisplayModel};
use vgpu_tests::connection::FrontendConfig;
use vgpu_tests::gpu_socket::{GpuMsg, GPU_UPDATE};
use vgpu_tests::{Backend, GpuClient};

const T: Duration = Duration::from_secs(10);

fn wait_for_path(backend: &mut Backend, path: &Path) {
    let deadline = Instant::now() + T;
    while !path.exists() {
        assert!(
            backend.is_running(),
            "vgpud exited before {} existed:\n{}",
            path.display(),
            backend.log()
        );
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// One 2D round: a backed resource on scanout 0, transferred and flushed; the GPU socket must
/// show exactly our pixels. Leaves nothing allocated.
fn round_2d(client: &mut GpuClient, id: u32, seed: u8) {
    let (w, h) = (32, 24);
    let img = pattern(w, h, seed);
    client
        .create_backed_2d(id, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, w, h, &img, 2)
        .unwrap_or_else(|e| panic!("create {id}: {e}"));
    assert_ok(
        client.transfer_2d(id, rect(0, 0, w, h), 0).unwrap(),
        "transfer",
    );
    assert_ok(
        client.set_scanout(0, id, rect(0, 0, w, h)).unwrap(),
        "scanout",
    );
    assert_ok(client.flush(id, rect(0, 0, w, h)).unwrap(), "flush");
    let m = client.peer().wait_for(GPU_UPDATE, T).expect("update");
    match &*m {
        GpuMsg::Update { data, .. } => assert!(data == &img, "pixels of resource {id}"),
        other => panic!("{other:?}"),
    }
    assert_ok(
        client.set_scanout(0, 0, rect(0, 0, 0, 0)).unwrap(),
        "disable",
    );
    assert_ok(client.unref(id).unwrap(), "unref");
}

fn ctl(path: &Path, cmd: &str) -> Value {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("control socket");
    s.write_all(format!("{}\n", json!({ "cmd": cmd })).as_bytes())
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

fn vgpu_stat(ctl_path: &Path, name: &str) -> Value {
    let stats = ctl(ctl_path, "stats");
    assert_eq!(stats["ok"], true, "{stats}");
    stats["vgpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in {stats}"))
}

#[test]
fn three_vgpus_of_different_types_serve_at_once_and_reconnect_independently() {
    let dir = tempfile::Builder::new()
        .prefix("vgpu-multi-")
        .tempdir()
        .unwrap();
    let sock_b = dir.path().join("b.sock");
    let sock_c = dir.path().join("c.sock");
    let ctl_path = dir.path().join("control.sock");
    let spec_b = format!("socket={},type=vgpu-512m", sock_b.display());
    let spec_c = format!("socket={},type=vgpu-2q", sock_c.display());
    // vgpu0 is the --socket-path shorthand the harness adds, typed with --type.
    let Some(mut backend) = Backend::vgpud_or_skip(&[
        "--type",
        "vgpu-64m",
        "--vgpu",
        &spec_b,
        "--vgpu",
        &spec_c,
        "--control-socket",
        ctl_path.to_str().unwrap(),
    ]) else {
        return;
    };
    for p in [&sock_b, &sock_c, &ctl_path] {
        wait_for_path(&mut backend, p);
    }
    let list = ctl(&ctl_path, "list");
    let types: Vec<&str> = list["vgpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["vgpu-64m", "vgpu-512m", "vgpu-2q"], "{list}");
    assert_eq!(list["device"]["reserved_mib"], 64 + 512 + 2048);

    let sockets: Vec<PathBuf> = vec![backend.socket().to_path_buf(), sock_b, sock_c];
    let cfg = FrontendConfig::default();
    let mut clients: Vec<GpuClient> = sockets
        .iter()
        .map(|s| GpuClient::connect(s, &cfg).expect("connect"))
        .collect();

    // Each sees its own config: heads from its type...
    let heads: Vec<u32> = clients.iter().map(|c| c.config().num_scanouts).collect();
    assert_eq!(heads, [1, 1, 2]);
    // ...and its own partition: a 4096x4200 surface (~66 MiB) does not fit in 64 MiB.
    let big = |c: &mut GpuClient| c.create_2d(99, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4096, 4200);
    match big(&mut clients[0]).unwrap() {
        DecodedResponse::Err(ErrorCode::OutOfMemory) => {}
        other => panic!("66 MiB surface on vgpu-64m: {other:?}"),
    }
    assert_ok(big(&mut clients[1]).unwrap(), "66 MiB surface on vgpu-512m");
    let used = vgpu_stat(&ctl_path, "vgpu1")["framebuffer_used"]
        .as_u64()
        .unwrap();
    assert!(used >= 4096 * 4200 * 4, "vgpu1 partition use {used}");
    assert_eq!(
        vgpu_stat(&ctl_path, "vgpu0")["framebuffer_used"],
        0,
        "vgpu0 is charged for nothing"
    );

    // The conformance sequence uses id 99 as an unknown resource: free it first.
    assert_ok(clients[1].unref(99).unwrap(), "unref the big surface");
    // All three run the full 2D conformance sequence at the same time.
    let mut handles = Vec::new();
    // vgpu-64m's maximum (1024x768) caps its preferred mode; the others keep 1280x800.
    let modes = [(1024, 768), (1280, 800), (1280, 800)];
    for (mut c, (width, height)) in clients.drain(..).zip(modes) {
        handles.push(thread::spawn(move || {
            run_2d_conformance(&mut c, DisplayModel::Own { width, height });
            c
        }));
    }
    let mut clients: Vec<GpuClient> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    // vgpu1 leaves (with a 66 MiB surface allocated) and comes back three times while vgpu0 and
    // vgpu2 keep drawing.
    let mut leaving = clients.remove(1);
    assert_ok(big(&mut leaving).unwrap(), "66 MiB surface again");
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU32::new(0));
    let mut workers = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let stop = Arc::clone(&stop);
        let rounds = Arc::clone(&rounds);
        workers.push(thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Acquire) || n < 3 {
                round_2d(&mut c, 10 + i as u32, n as u8);
                n += 1;
                rounds.fetch_add(1, Ordering::AcqRel);
            }
            n
        }));
    }
    leaving.conn.shutdown().unwrap();
    drop(leaving);
    let before = rounds.load(Ordering::Acquire);
    for round in 0..3u8 {
        let deadline = Instant::now() + T;
        // The device reset on disconnect freed the VM's surfaces; the partition stays reserved.
        loop {
            let s = vgpu_stat(&ctl_path, "vgpu1");
            if s["connected"] == false && s["framebuffer_used"] == 0 {
                assert_eq!(s["framebuffer_total"], 512u64 << 20);
                break;
            }
            assert!(Instant::now() < deadline, "vgpu1 not released: {s}");
            thread::sleep(Duration::from_millis(10));
        }
        let mut c = GpuClient::connect(&sockets[1], &cfg).expect("reconnect vgpu1");
        assert_eq!(c.config().num_scanouts, 1);
        // Resource ids are free again on the new connection.
        assert_ok(big(&mut c).unwrap(), "66 MiB surface after reconnect");
        round_2d(&mut c, 1, round);
        c.conn.shutdown().unwrap();
    }
    stop.store(true, Ordering::Release);
    let per_vm: Vec<u32> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    eprintln!(
        "rounds while vgpu1 reconnected: {} (per VM {per_vm:?})",
        rounds.load(Ordering::Acquire) - before
    );
    assert!(per_vm.iter().all(|&n| n >= 3));
    assert!(backend.is_running(), "vgpud exited:\n{}", backend.log());
    let log = backend.log();
    assert!(
        log.contains("vgpu1 type=vgpu-512m fb=512M"),
        "startup line missing:\n{log}"
    );
}

/// Runs the built `vgpud` with `args` to completion; `None` when it is not built.
fn run_vgpud(args: &[&str]) -> Option<std::process::Output> {
    let bin = vgpud_or_skip_path()?;
    Some(
        Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run vgpud"),
    )
}

#[test]
fn startup_refuses_what_the_device_cannot_hold_before_creating_sockets() {
    let dir = tempfile::Builder::new()
        .prefix("vgpu-multi-")
        .tempdir()
        .unwrap();
    let specs: Vec<String> = (0..9)
        .map(|i| format!("socket={}/v{i}.sock,type=vgpu-1q", dir.path().display()))
        .collect();
    let mut args: Vec<&str> = Vec::new();
    for s in &specs {
        args.extend(["--vgpu", s]);
    }
    args.extend(["--device-memory", "65536"]);
    let Some(out) = run_vgpud(&args) else {
        return;
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("vgpu-1q") && err.contains("at most 8"),
        "{err}"
    );
    // Eight fit the type but not the default 4 GiB of device memory.
    let out = run_vgpud(&args[..16]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("device memory full"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a socket was created"
    );
    // Bad time slice and unknown type are usage errors.
    let sock = format!("{}/x.sock", dir.path().display());
    let out = run_vgpud(&["--socket-path", &sock, "--timeslice-us", "31000"]).unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1000..=30000"));
    let out = run_vgpud(&["--socket-path", &sock, "--type", "vgpu-9z"]).unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("vgpu-9z"));
}

#[test]
fn list_types_prints_the_table() {
    let Some(out) = run_vgpud(&["--list-types", "--device-memory", "2048"]) else {
        return;
    };
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let q2 = text
        .lines()
        .find(|l| l.starts_with("vgpu-2q "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(q2.contains("num_heads=2, framebuffer=2048M"), "{q2}");
    assert!(q2.ends_with("available_instances=1"), "{q2}");
    let out = run_vgpud(&["--list-types", "--json"]).unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 5);
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// 64 vGPUs in one process, each connected and idle: at most 4 MiB of RSS each. 64 `vgpu-64m`
/// instances exactly fill the 4096 MiB device.
#[test]
fn sixty_four_idle_vgpus_stay_small() {
    let dir = tempfile::Builder::new()
        .prefix("vgpu-scale-")
        .tempdir()
        .unwrap();
    let sockets: Vec<PathBuf> = (0..64)
        .map(|i| dir.path().join(format!("v{i}.sock")))
        .collect();
    let specs: Vec<String> = sockets
        .iter()
        .map(|s| format!("socket={},type=vgpu-64m", s.display()))
        .collect();
    let mut args: Vec<&str> = vec!["--device-memory", "4096"];
    for s in &specs {
        args.extend(["--vgpu", s]);
    }
    let Some(bin) = vgpud_or_skip_path() else {
        return;
    };
    let log = std::fs::File::create(dir.path().join("vgpud.log")).unwrap();
    let mut child = Command::new(bin)
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + T;
    while !sockets.iter().all(|s| s.exists()) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "vgpud exited:\n{}",
            std::fs::read_to_string(dir.path().join("vgpud.log")).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "sockets never appeared");
        thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id();
    let before = vm_rss_kib(pid);
    let cfg = FrontendConfig {
        mem_size: 8 << 20,
        ..Default::default()
    };
    let mut clients = Vec::with_capacity(64);
    for s in &sockets {
        let mut c = GpuClient::connect(s, &cfg).expect("connect");
        match c.display_info().unwrap() {
            DecodedResponse::OkDisplayInfo(_) => {}
            other => panic!("{other:?}"),
        }
        clients.push(c);
    }
    // Every VM has been served a request: its connection is fully set up.
    let after = vm_rss_kib(pid);
    let per_vgpu = after.saturating_sub(before) / 64;
    eprintln!(
        "vgpud RSS: {before} KiB with 64 vGPUs listening, {after} KiB with 64 connected and idle: \
         {per_vgpu} KiB per idle vGPU (total/64: {} KiB)",
        after / 64
    );
    assert!(per_vgpu <= 4096, "{per_vgpu} KiB per idle vGPU");
    drop(clients);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Starts `vgpud ARGS` with `fd` as its descriptor 3 (as libvirt passes `--fd`).
fn spawn_with_fd3(args: &[&str], fd: &std::os::unix::net::UnixStream) -> std::process::Child {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let raw = fd.as_raw_fd();
    let mut cmd = Command::new(vgpud_path().unwrap());
    cmd.args(args).stdin(Stdio::null());
    // SAFETY: dup2 and fcntl are async-signal-safe; the closure touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::fcntl(3, libc::F_SETFD, 0);
            Ok(())
        });
    }
    cmd.spawn().expect("spawn vgpud --fd")
}

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "vgpud did not exit");
        thread::sleep(Duration::from_millis(10));
    }
}

/// libvirt's per-VM `vgpud --fd N --attach SOCKET` hands its connection to a shared daemon; it
/// ends with the connection or on SIGTERM, and the shared daemon keeps serving.
#[test]
fn fd_attach_relays_into_a_shared_daemon() {
    let dir = tempfile::Builder::new()
        .prefix("vgpu-attach-")
        .tempdir()
        .unwrap();
    let sock_b = dir.path().join("b.sock");
    let spec_b = format!("socket={},type=vgpu-512m", sock_b.display());
    let Some(mut shared) = Backend::vgpud_or_skip(&["--type", "vgpu-64m", "--vgpu", &spec_b])
    else {
        return;
    };
    wait_for_path(&mut shared, &sock_b);
    let cfg = FrontendConfig::default();
    for (round, socket) in [shared.socket().to_path_buf(), sock_b.clone()]
        .iter()
        .enumerate()
    {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut relay = spawn_with_fd3(
            &["--fd", "3", "--attach", socket.to_str().unwrap()],
            &theirs,
        );
        drop(theirs);
        let conn = vgpu_tests::Connection::from_stream(ours, &cfg).expect("setup through relay");
        let mut client = GpuClient::new(conn).unwrap();
        // The attached VM sees the shared daemon's vGPU for that socket.
        let heads = client.config().num_scanouts;
        assert_eq!(heads, 1);
        round_2d(&mut client, 1, round as u8);
        client.conn.shutdown().unwrap();
        drop(client);
        let status = wait_exit(&mut relay, T);
        assert!(status.success(), "relay exit {status:?}");
    }
    // SIGTERM ends an attached relay promptly.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut relay = spawn_with_fd3(
        &["--fd", "3", "--attach", sock_b.to_str().unwrap()],
        &theirs,
    );
    drop(theirs);
    let mut client =
        GpuClient::new(vgpu_tests::Connection::from_stream(ours, &cfg).unwrap()).unwrap();
    round_2d(&mut client, 5, 9);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(relay.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut relay, T);
    assert!(status.success(), "relay exit on SIGTERM {status:?}");
    drop(client);
    // The shared daemon still serves that socket.
    let mut again = GpuClient::connect(&sock_b, &cfg).expect("reconnect after relay");
    round_2d(&mut again, 1, 1);
    assert!(shared.is_running(), "{}", shared.log());
    // An unreachable shared daemon is a startup error.
    let (_ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let missing = dir.path().join("missing.sock");
    let mut relay = spawn_with_fd3(
        &["--fd", "3", "--attach", missing.to_str().unwrap()],
        &theirs,
    );
    assert_eq!(wait_exit(&mut relay, T).code(), Some(1));
}

/// Plain `vgpud --fd N` stays a standalone one-vGPU backend that exits with its connection.
#[test]
fn fd_standalone_serves_one_vgpu() {
    if vgpud_or_skip_path().is_none() {
        return;
    }
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut child = spawn_with_fd3(&["--fd", "3", "--type", "vgpu-2q"], &theirs);
    drop(theirs);
    let cfg = FrontendConfig::default();
    let mut client =
        GpuClient::new(vgpu_tests::Connection::from_stream(ours, &cfg).unwrap()).unwrap();
    assert_eq!(client.config().num_scanouts, 2);
    round_2d(&mut client, 1, 2);
    client.conn.shutdown().unwrap();
    drop(client);
    assert!(wait_exit(&mut child, T).success());
}
