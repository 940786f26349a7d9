//! Operating a running `vgpud` through `vgpuctl` (issue 8): instances created and removed live
//! while a neighbour VM keeps drawing and computing, stats and Prometheus metrics that move with
//! load, screenshots, live scheduler changes, `--auto` instances surviving restarts and `kill -9`
//! during state writes, and bad control requests.
//!
//! Needs `target/<profile>/vgpud` and `vgpuctl` (`cargo build --workspace --bins`); skips with a
//! message otherwise (`VGPU_REQUIRE_VGPUD=1` turns that into a failure, and then `promtool`
//! must be installed too).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vgpu_protocol::channel::*;
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{DecodedResponse, ErrorCode, GpuCommand};
use vgpu_tests::backend::vgpud_path;
use vgpu_tests::client::{pattern, rect};
use vgpu_tests::conformance::assert_ok;
use vgpu_tests::connection::FrontendConfig;
use vgpu_tests::gpu_socket::{GpuMsg, GPU_UPDATE};
use vgpu_tests::GpuClient;

const T: Duration = Duration::from_secs(30);

fn require() -> bool {
    std::env::var_os("VGPU_REQUIRE_VGPUD").is_some()
}

/// `vgpud` and `vgpuctl`, or `None` (skip) when not built.
fn binaries() -> Option<(PathBuf, PathBuf)> {
    let vgpud = vgpud_path();
    let vgpuctl = vgpud
        .as_ref()
        .and_then(|p| p.parent())
        .map(|d| d.join("vgpuctl"))
        .filter(|p| p.is_file());
    match (vgpud, vgpuctl) {
        (Some(d), Some(c)) => Some((d, c)),
        _ => {
            assert!(!require(), "vgpud or vgpuctl not built");
            eprintln!("SKIP: build vgpud and vgpuctl first (cargo build --workspace --bins)");
            None
        }
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A `vgpud` serving a control socket, a state directory and metrics in one temp dir.
struct Daemon {
    child: Child,
    vgpuctl: PathBuf,
    control: PathBuf,
    log: PathBuf,
    metrics: Option<String>,
}

impl Daemon {
    fn start(bins: &(PathBuf, PathBuf), dir: &Path, extra: &[&str]) -> Daemon {
        let control = dir.join("control.sock");
        let log = dir.join(format!("vgpud-{}.log", Instant::now().elapsed().as_nanos()));
        let err = File::create(&log).unwrap();
        let child = Command::new(&bins.0)
            .arg("--control-socket")
            .arg(&control)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--metrics-addr")
            .arg("127.0.0.1:0")
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(err.try_clone().unwrap())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            vgpuctl: bins.1.clone(),
            control,
            log,
            metrics: None,
        };
        let deadline = Instant::now() + T;
        loop {
            let text = d.log_text();
            if let Some(pos) = text.find("metrics on http://") {
                let rest = &text[pos + "metrics on http://".len()..];
                let addr = rest.split('/').next().unwrap().to_string();
                d.metrics = Some(format!("http://{addr}/metrics"));
                if d.control.exists() {
                    break;
                }
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("vgpud exited ({status}):\n{text}");
            }
            assert!(Instant::now() < deadline, "vgpud did not start:\n{text}");
            thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(&self.vgpuctl)
            .arg("-c")
            .arg(&self.control)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs vgpuctl and returns its stdout; panics (with the daemon log) if it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "vgpuctl {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        let text = String::from_utf8(out.stdout).unwrap();
        // A transcript for `--nocapture` runs (the README's examples come from one).
        eprintln!("$ vgpuctl {}\n{text}", args.join(" "));
        text
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn instance(&self, uuid: &str) -> Option<Value> {
        self.json(&["list", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["uuid"] == uuid)
            .cloned()
    }

    fn scrape(&self) -> String {
        ureq::get(self.metrics.as_ref().unwrap())
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }

    fn kill(&mut self, signal: i32) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample `name{...uuid="U"...}` (with `extra` in its labels too).
fn sample(text: &str, name: &str, uuid: &str, extra: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| l.contains(&format!("uuid=\"{uuid}\"")) && l.contains(extra))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn virgl_config() -> FrontendConfig {
    FrontendConfig {
        device_features: FrontendConfig::default().device_features
            | (1 << VIRTIO_GPU_F_VIRGL)
            | (1 << VIRTIO_GPU_F_CONTEXT_INIT),
        // The test frontend's guest memory is a bump allocator that never frees, and the neighbour
        // loops for as long as the lifecycle takes (thousands of rounds on a slow machine): room
        // for ~60,000 rounds instead of ~4,000 (a memfd: pages are only used when touched).
        mem_size: 1 << 30,
        ..Default::default()
    }
}

const CTX: u32 = 1;

fn hdr(fence: Option<u64>) -> CtrlHeader {
    CtrlHeader {
        flags: if fence.is_some() {
            VIRTIO_GPU_FLAG_FENCE
        } else {
            0
        },
        fence_id: fence.unwrap_or(0),
        ctx_id: CTX,
        ..Default::default()
    }
}

fn ok3d(c: &mut GpuClient, cmd: GpuCommand<'_>, what: &str) {
    let r = c.send_ctrl(&cmd, hdr(None)).unwrap().1;
    assert!(matches!(r, DecodedResponse::OkNoData), "{what}: {r:?}");
}

/// A context with one 16 KiB buffer (resource 100) for compute rounds; returns its address.
fn setup_compute(c: &mut GpuClient) -> u64 {
    ok3d(
        c,
        GpuCommand::CtxCreate(CtxCreate {
            context_init: VGPU_CAPSET_ID,
            ..Default::default()
        }),
        "ctx create",
    );
    let size = 16 * 1024u32;
    let cmd = GpuCommand::ResourceCreate3d(buffer_create(100, size));
    ok3d(c, cmd, "create buffer");
    let gpa = c.guest_buffer(&vec![0u8; size as usize]).unwrap();
    assert_ok(c.attach_backing(100, &[(gpa, size)]).unwrap(), "backing");
    ok3d(
        c,
        GpuCommand::CtxAttachResource(CtxResource {
            resource_id: 100,
            padding: 0,
        }),
        "ctx attach",
    );
    gpa
}

/// One compute round: fill the buffer with `seed` on the engine (fenced), read it back, check.
fn compute_round(c: &mut GpuClient, gpa: u64, seed: u32, fence: u64) {
    let len = 16 * 1024u32;
    let mut s = Vec::new();
    ChannelCommand::Fill(FillCmd {
        dst_res: 100,
        pattern: seed,
        offset: 0,
        size: u64::from(len),
    })
    .encode(&mut s);
    let submit = GpuCommand::Submit3d(
        Submit3d {
            size: s.len() as u32,
            padding: 0,
        },
        &s,
    );
    let r = c.send_ctrl(&submit, hdr(Some(fence))).unwrap();
    assert!(
        matches!(r.1, DecodedResponse::OkNoData),
        "submit: {:?}",
        r.1
    );
    let t = Transfer3d {
        box_: Box3d {
            w: len,
            h: 1,
            d: 1,
            ..Default::default()
        },
        resource_id: 100,
        ..Default::default()
    };
    ok3d(c, GpuCommand::TransferFromHost3d(t), "download");
    let got = c.conn.mem.read_vec(gpa, len as usize).unwrap();
    assert!(
        got.chunks_exact(4)
            .all(|w| u32::from_le_bytes(w.try_into().unwrap()) == seed),
        "compute result of round {seed}"
    );
}

/// One 2D round: a surface on scanout 0, flushed; the display must get exactly our pixels.
fn draw_round(c: &mut GpuClient, id: u32, seed: u8) {
    let (w, h) = (32, 24);
    let img = pattern(w, h, seed);
    c.create_backed_2d(id, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, w, h, &img, 2)
        .unwrap();
    assert_ok(c.transfer_2d(id, rect(0, 0, w, h), 0).unwrap(), "transfer");
    assert_ok(c.set_scanout(0, id, rect(0, 0, w, h)).unwrap(), "scanout");
    assert_ok(c.flush(id, rect(0, 0, w, h)).unwrap(), "flush");
    let m = c.peer().wait_for(GPU_UPDATE, T).expect("update");
    match &*m {
        GpuMsg::Update { data, .. } => assert!(data == &img, "pixels of round {seed}"),
        other => panic!("{other:?}"),
    }
    assert_ok(c.set_scanout(0, 0, rect(0, 0, 0, 0)).unwrap(), "disable");
    assert_ok(c.unref(id).unwrap(), "unref");
}

#[test]
fn lifecycle_through_vgpuctl_while_a_neighbour_draws_and_computes() {
    let Some(bins) = binaries() else { return };
    let dir = tempfile::Builder::new()
        .prefix("vgpu-ops-")
        .tempdir()
        .unwrap();
    // No --vgpu: the daemon starts empty and waits for create.
    let d = Daemon::start(&bins, dir.path(), &["--device-memory", "1024"]);
    assert_eq!(d.json(&["list", "--json"]), json!([]));

    // The neighbour: created, connected, drawing and computing in a loop, every result checked.
    let nsock = dir.path().join("neighbour.sock");
    let n = d.json(&[
        "create",
        "--type",
        "vgpu-64m",
        "--vhost-socket",
        nsock.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(n["socket"], json!(nsock));
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU32::new(0));
    let neighbour = {
        let (stop, rounds) = (Arc::clone(&stop), Arc::clone(&rounds));
        let mut c = GpuClient::connect(&nsock, &virgl_config()).expect("neighbour connects");
        thread::spawn(move || {
            let gpa = setup_compute(&mut c);
            let mut i = 0u32;
            while !stop.load(Ordering::Acquire) {
                draw_round(&mut c, 10, i as u8);
                compute_round(&mut c, gpa, 0x5eed_0000 + i, u64::from(i) + 1);
                i += 1;
                rounds.fetch_add(1, Ordering::AcqRel);
            }
        })
    };
    let progress = |what: &str| {
        let before = rounds.load(Ordering::Acquire);
        wait_until(&format!("the neighbour to keep going after {what}"), || {
            rounds.load(Ordering::Acquire) >= before + 2
        });
    };
    progress("start");

    // create returns once the socket listens, at <run-dir>/<uuid>.sock.
    let uuid = d.ok(&["create", "--type", "vgpu-64m"]).trim().to_string();
    let sock = dir.path().join("run").join(format!("{uuid}.sock"));
    assert!(
        sock.exists(),
        "{} listens when create returns",
        sock.display()
    );
    let v = d.instance(&uuid).unwrap();
    for key in [
        "uuid",
        "type",
        "socket",
        "state",
        "fb_used_bytes",
        "fb_total_bytes",
    ] {
        assert!(v.get(key).is_some(), "list --json has {key}: {v}");
    }
    assert_eq!(v["state"], "listening");
    assert_eq!(v["fb_total_bytes"], 64 << 20);
    assert_eq!(d.json(&["list", "--dumpjson"]).as_array().unwrap().len(), 2);
    let table = d.ok(&["list"]);
    assert!(
        table.contains(&format!("{uuid} vgpu-64m listening fb=0/64M")),
        "{table}"
    );
    progress("create");

    // A VM connects; stats and metrics move with its work.
    let mut vm = GpuClient::connect(&sock, &virgl_config()).expect("VM connects");
    wait_until("state connected", || {
        d.instance(&uuid).unwrap()["state"] == "connected"
    });
    let before = d.scrape();
    assert_eq!(
        sample(&before, "vgpud_vgpu_connected", &uuid, ""),
        Some(1.0)
    );
    assert_eq!(
        sample(&before, "vgpud_vgpu_jobs_completed_total", &uuid, ""),
        Some(0.0)
    );
    let gpa = setup_compute(&mut vm);
    for i in 0..5 {
        compute_round(&mut vm, gpa, 7 + i, u64::from(i) + 1);
    }
    // A bad command: ERR_INVALID_RESOURCE_ID, counted by code.
    match vm.unref(4242).unwrap() {
        DecodedResponse::Err(ErrorCode::InvalidResourceId) => {}
        other => panic!("unref of an unknown resource: {other:?}"),
    }
    let after = d.scrape();
    eprintln!("$ curl {}\n{after}", d.metrics.as_ref().unwrap());
    assert_eq!(
        sample(&after, "vgpud_vgpu_jobs_completed_total", &uuid, ""),
        Some(5.0)
    );
    assert!(sample(&after, "vgpud_vgpu_memory_used_bytes", &uuid, "").unwrap() >= 16384.0);
    assert_eq!(
        sample(&after, "vgpud_vgpu_queue_wait_seconds_count", &uuid, ""),
        Some(5.0)
    );
    assert!(sample(&after, "vgpud_vgpu_slices_total", &uuid, "").unwrap() >= 1.0);
    assert_eq!(
        sample(
            &after,
            "vgpud_vgpu_guest_errors_total",
            &uuid,
            "code=\"ERR_INVALID_RESOURCE_ID\""
        ),
        Some(1.0)
    );
    let stats = d.json(&["stats", "--json"]);
    let s = stats["vgpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["uuid"] == uuid.as_str())
        .unwrap();
    assert_eq!(s["jobs_completed"], 5);
    let used = d.instance(&uuid).unwrap()["fb_used_bytes"]
        .as_u64()
        .unwrap();
    assert!(used >= 16384, "list's fb_used_bytes {used}");
    check_promtool(&after);

    // Screenshot: exactly what the VM shows on scanout 0.
    let (w, h) = (40, 30);
    let img = pattern(w, h, 9);
    vm.create_backed_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, w, h, &img, 1)
        .unwrap();
    assert_ok(vm.transfer_2d(1, rect(0, 0, w, h), 0).unwrap(), "transfer");
    assert_ok(vm.set_scanout(0, 1, rect(0, 0, w, h)).unwrap(), "scanout");
    let png_path = dir.path().join("shot.png");
    let out = d.ok(&["screenshot", &uuid, png_path.to_str().unwrap()]);
    assert!(out.contains("40x30 PNG"), "{out}");
    let decoder = png::Decoder::new(std::io::BufReader::new(File::open(&png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (w, h));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let want: Vec<u8> = img
        .chunks_exact(4)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect();
    assert!(buf[..info.buffer_size()] == want[..], "screenshot pixels");
    let e = d.ctl(&["screenshot", &uuid, "--head", "3", "/dev/null"]);
    assert!(!e.status.success());

    // The scheduler changes live.
    let out = d.ok(&["sched", "--policy", "fixed-share", "--timeslice-us", "4000"]);
    assert!(out.contains("policy: best-effort -> fixed-share"), "{out}");
    assert!(out.contains("timeslice_us: 2000 -> 4000"), "{out}");
    let m = d.scrape();
    assert!(
        m.contains("vgpud_device_info{policy=\"fixed-share\",engine=\"cpu\"} 1"),
        "{m}"
    );
    assert!(m.contains("vgpud_device_timeslice_seconds 0.004"), "{m}");
    progress("sched");

    // Without --force a connected instance stays; the VM keeps working.
    let e = d.ctl(&["remove", &uuid]);
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("VM connected"),
        "{e:?}"
    );
    compute_round(&mut vm, gpa, 99, 99);
    // With --force the VM is disconnected and the partition returns.
    let r = d.json(&["remove", &uuid, "--force", "--json"]);
    assert_eq!(r["disconnected"], true, "{r}");
    assert_eq!(r["device_memory_free_bytes"], (1024 - 64) << 20);
    assert!(d.instance(&uuid).is_none());
    assert!(!sock.exists());
    let deadline = Instant::now() + T;
    loop {
        // The VM sees the disconnect: its requests fail.
        if vm.display_info().is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "the VM never saw the disconnect");
        thread::sleep(Duration::from_millis(20));
    }
    drop(vm);
    progress("force-remove");

    // An instance whose VM left is removed without --force.
    let uuid2 = d.ok(&["create", "--type", "vgpu-512m"]).trim().to_string();
    let sock2 = dir.path().join("run").join(format!("{uuid2}.sock"));
    let mut vm2 = GpuClient::connect(&sock2, &FrontendConfig::default()).unwrap();
    draw_round(&mut vm2, 5, 1);
    vm2.conn.shutdown().unwrap();
    drop(vm2);
    wait_until("vm2's disconnect", || {
        d.instance(&uuid2).unwrap()["state"] == "listening"
    });
    d.ok(&["remove", &uuid2]);
    progress("remove");
    let types = d.json(&["types", "--json"]);
    let t512 = types
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "vgpu-512m")
        .unwrap();
    assert_eq!(t512["available_instances"], 1, "{types}");

    stop.store(true, Ordering::Release);
    neighbour
        .join()
        .expect("the neighbour's rounds all checked out");
    assert!(d.instance(n["uuid"].as_str().unwrap()).is_some());
}

/// `promtool check metrics` accepts the scrape (when promtool is installed; required under
/// scripts/test.sh).
fn check_promtool(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(!require(), "promtool: {e} (install Debian's prometheus)");
            eprintln!("SKIP promtool check: {e}");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn auto_instances_survive_restart_and_kill_9_during_state_writes() {
    let Some(bins) = binaries() else { return };
    let dir = tempfile::Builder::new()
        .prefix("vgpu-state-")
        .tempdir()
        .unwrap();
    let auto_uuid = "6c1e0d7e-4e8e-4bd4-8c36-0b0e8a3b2f10";
    let auto_sock = dir.path().join("auto.sock");
    let mut d = Daemon::start(&bins, dir.path(), &["--device-memory", "2048"]);
    d.ok(&[
        "create",
        "--type",
        "vgpu-64m",
        "--uuid",
        auto_uuid,
        "--vhost-socket",
        auto_sock.to_str().unwrap(),
        "--auto",
    ]);
    let defined = d.ok(&["define", "--type", "vgpu-512m"]).trim().to_string();
    let transient = d.ok(&["create", "--type", "vgpu-64m"]).trim().to_string();
    d.ok(&["sched", "--policy", "equal-share"]);
    d.kill(libc::SIGTERM);

    let d = Daemon::start(&bins, dir.path(), &["--device-memory", "2048"]);
    let a = d.instance(auto_uuid).expect("the auto instance is back");
    assert_eq!(a["state"], "listening");
    assert_eq!(a["socket"], json!(auto_sock));
    assert!(auto_sock.exists());
    assert_eq!(d.instance(&defined).unwrap()["state"], "defined");
    assert!(
        d.instance(&transient).is_none(),
        "transient instances are not kept"
    );
    assert_eq!(
        d.json(&["stats", "--json"])["device"]["policy"],
        "equal-share"
    );
    // A VM can use the restored instance.
    let mut c = GpuClient::connect(&auto_sock, &FrontendConfig::default()).unwrap();
    draw_round(&mut c, 3, 3);
    drop(c);
    drop(d);

    // kill -9 while a writer creates and removes --auto instances as fast as it can: every
    // restart loads the state, and what it restores is exactly what the state file says.
    for round in 0..4u32 {
        let mut d = Daemon::start(&bins, dir.path(), &["--device-memory", "2048"]);
        let control = d.control.clone();
        let done = Arc::new(AtomicU32::new(0));
        let writer = {
            let done = Arc::clone(&done);
            thread::spawn(move || {
                let mut last: Option<String> = None;
                loop {
                    let req = match last.take() {
                        None => json!({"cmd": "create", "type": "vgpu-64m", "auto": true}),
                        Some(u) => json!({"cmd": "remove", "uuid": u}),
                    };
                    let Ok(r) = raw(&control, &req.to_string()) else {
                        return;
                    };
                    if req["cmd"] == "create" {
                        last = r["uuid"].as_str().map(str::to_string);
                    }
                    done.fetch_add(1, Ordering::AcqRel);
                }
            })
        };
        let target = 3 + round * 7;
        wait_until("state writes", || done.load(Ordering::Acquire) >= target);
        d.kill(libc::SIGKILL);
        writer.join().unwrap();
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("state/state.json")).unwrap(),
        )
        .expect("state.json is whole after kill -9");
        let d = Daemon::start(&bins, dir.path(), &["--device-memory", "2048"]);
        let list = d.json(&["list", "--json"]);
        let mut want: Vec<&str> = state["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["uuid"].as_str().unwrap())
            .collect();
        let mut got: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["uuid"].as_str().unwrap())
            .collect();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want, "round {round}");
        assert!(got.contains(&auto_uuid) && got.contains(&defined.as_str()));
    }

    // A corrupt state file stops the daemon with an error naming it.
    std::fs::write(
        dir.path().join("state/state.json"),
        b"{\"version\": 1, \"instances\": [",
    )
    .unwrap();
    let out = Command::new(&bins.0)
        .arg("--control-socket")
        .arg(dir.path().join("c2.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&dir.path().join("state/state.json").display().to_string()),
        "{err}"
    );
}

/// One raw request line, one reply.
fn raw(control: &Path, line: &str) -> std::io::Result<Value> {
    let mut s = UnixStream::connect(control)?;
    s.set_read_timeout(Some(T))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    serde_json::from_str(&reply).map_err(std::io::Error::other)
}

#[test]
fn bad_control_requests_never_block_the_daemon() {
    let Some(bins) = binaries() else { return };
    let dir = tempfile::Builder::new()
        .prefix("vgpu-badctl-")
        .tempdir()
        .unwrap();
    let d = Daemon::start(&bins, dir.path(), &["--control-group", "root"]);
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&d.control).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 0);
    // A half request that stalls...
    let mut stalled = UnixStream::connect(&d.control).unwrap();
    stalled.write_all(b"{\"cmd\":\"cre").unwrap();
    // ...while other clients are served, garbage and oversized requests get errors.
    let r = raw(&d.control, "\u{7f}garbage").unwrap();
    assert_eq!(r["kind"], "bad-request", "{r}");
    let r = raw(&d.control, r#"{"cmd":"create","type":"vgpu-64m","v":7}"#).unwrap();
    assert!(r["error"].as_str().unwrap().contains("version 7"), "{r}");
    let mut big = UnixStream::connect(&d.control).unwrap();
    let _ = big.write_all(&vec![b'{'; 200_000]);
    let mut reply = String::new();
    big.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("longer than"), "{reply}");
    let uuid = d.ok(&["create", "--type", "vgpu-64m"]).trim().to_string();
    assert!(d.instance(&uuid).is_some());
    // The stalled client gets a timeout reply in the end.
    stalled.set_read_timeout(Some(T)).unwrap();
    let mut reply = String::new();
    stalled.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("timed out"), "{reply}");
    assert!(d.ok(&["list"]).contains(&uuid));
}
