//! Fault containment through the real vhost-user path: what one VM does reaches neither the host
//! log without limit nor another VM.
//!
//! Builds `vgpud` from the current source (see `vgpu_tests::backend`), or uses `VGPUD=path`.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{DecodedResponse, ErrorCode, GpuCommand};
use vgpu_tests::client::{pattern, rect};
use vgpu_tests::conformance::{assert_err, assert_ok};
use vgpu_tests::connection::{FrontendConfig, CTRL_QUEUE};
use vgpu_tests::gpu_socket::{GpuMsg, GPU_UPDATE};
use vgpu_tests::{Backend, GpuClient};

/// Generous deadline for anything the daemon does in the background.
const DEADLINE: Duration = Duration::from_secs(30);

fn wait_for_path(backend: &mut Backend, path: &Path) {
    let deadline = Instant::now() + DEADLINE;
    while !path.exists() {
        assert!(backend.is_running(), "vgpud exited:\n{}", backend.log());
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the daemon's log has a line for which `pred` holds.
fn wait_log_line(backend: &Backend, what: &str, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if backend.log().lines().any(&pred) {
            return;
        }
        assert!(Instant::now() < deadline, "no log line {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[track_caller]
fn assert_serving(client: &mut GpuClient, what: &str) {
    match client.display_info() {
        Ok(DecodedResponse::OkDisplayInfo(_)) => {}
        other => panic!("after {what}: GET_DISPLAY_INFO gave {other:?}"),
    }
    let m = client
        .peer()
        .next_display(DEADLINE)
        .expect("GET_DISPLAY_INFO");
    assert!(matches!(*m, GpuMsg::GetDisplayInfo), "after {what}: {m:?}");
}

/// A guest that writes out-of-range heads (no descriptor at all) into its available ring and kicks
/// thousands of times gets at most the per-VM rate of log lines (10 per second, virtio-queue's own
/// lines included), keeps being served, and does not silence another VM's errors.
#[test]
fn out_of_range_heads_do_not_flood_the_log_nor_silence_a_neighbour() {
    let dir = tempfile::tempdir().unwrap();
    let quiet_sock = dir.path().join("quiet.sock");
    let spec = format!("socket={},type=vgpu-64m", quiet_sock.display());
    let Some(mut backend) = Backend::vgpud_or_skip(&["--type", "vgpu-64m", "--vgpu", &spec]) else {
        return;
    };
    wait_for_path(&mut backend, &quiet_sock);
    let cfg = FrontendConfig::default();
    let mut noisy = GpuClient::connect(backend.socket(), &cfg).unwrap();
    let mut quiet = GpuClient::connect(&quiet_sock, &cfg).unwrap();
    assert_serving(&mut noisy, "connect");
    assert_serving(&mut quiet, "connect");

    let size = cfg.queue_sizes[CTRL_QUEUE];
    let start = Instant::now();
    let kicks = 5000u32;
    // In batches of 50 (never more than a ring's worth ahead of the device), one kick each; the
    // device has taken a batch off the ring when its avail_event (EVENT_IDX) reaches our index.
    for batch in 0..kicks / 50 {
        for i in 0..50u32 {
            let head = size + ((batch * 50 + i) % 1000) as u16;
            noisy.conn.publish(CTRL_QUEUE, head).unwrap();
        }
        noisy.conn.kick(CTRL_QUEUE).unwrap();
        let deadline = Instant::now() + DEADLINE;
        let ring = &noisy.conn.queues[CTRL_QUEUE].ring;
        while ring.avail_event(&noisy.conn.mem).unwrap() != ring.next_avail() {
            assert!(
                Instant::now() < deadline,
                "batch {batch} never taken off the ring"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }
    // The daemon has consumed every bad entry once it answers a good request after them.
    assert_serving(&mut noisy, "5000 out-of-range heads");
    // One mistake of the quiet VM while the noisy one is over its budget is still logged.
    assert_err(
        quiet
            .ctrl(&GpuCommand::ResourceUnref(ResourceUnref {
                resource_id: 4242,
                padding: 0,
            }))
            .unwrap(),
        ErrorCode::InvalidResourceId,
        "unref of an unknown resource",
    );
    wait_log_line(&backend, "for the quiet VM's error", |l| {
        l.contains("vgpu1") && l.contains("4242")
    });
    let elapsed = start.elapsed().as_secs_f64();

    let log = backend.log();
    let from_crate = log
        .lines()
        .filter(|l| l.contains("out of bounds descriptor"))
        .count();
    let noisy_lines = log
        .lines()
        .filter(|l| l.contains("vgpu0") && l.contains("guest") || l.contains("names descriptor"))
        .count();
    eprintln!(
        "{kicks} bad heads in {elapsed:.2} s: {noisy_lines} lines from the noisy VM, \
         {from_crate} from virtio-queue"
    );
    assert_eq!(from_crate, 0, "virtio-queue saw an out-of-range head");
    // 10 lines per started second, plus one "suppressed" report per window.
    let bound = 11 * (elapsed.ceil() as usize + 1);
    assert!(
        noisy_lines <= bound,
        "{noisy_lines} lines in {elapsed:.2} s (bound {bound})"
    );
    assert!(noisy_lines > 0, "the bad heads were not reported at all");
}

/// A VM whose QEMU display stops reading: its control queue keeps answering (no request waits
/// longer than the display timeouts), it goes headless for a while, the neighbour VM keeps
/// drawing, and once the display reads again the VM shows its current contents again.
#[test]
fn stalled_display_goes_headless_recovers_and_neighbours_never_notice() {
    let dir = tempfile::tempdir().unwrap();
    let other_sock = dir.path().join("other.sock");
    let spec = format!("socket={},type=vgpu-1q", other_sock.display());
    let Some(mut backend) = Backend::vgpud_or_skip(&["--vgpu", &spec]) else {
        return;
    };
    wait_for_path(&mut backend, &other_sock);
    let cfg = FrontendConfig::default();
    let mut stalled = GpuClient::connect(backend.socket(), &cfg).unwrap();
    let mut other = GpuClient::connect(&other_sock, &cfg).unwrap();
    let (w, h) = (1024u32, 768u32);
    let frame = rect(0, 0, w, h);
    let images = [pattern(w, h, 1), pattern(w, h, 2)];
    for (c, img) in [(&mut stalled, &images[0]), (&mut other, &images[1])] {
        c.create_backed_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, w, h, img, 4)
            .unwrap();
        assert_ok(c.transfer_2d(1, frame, 0).unwrap(), "transfer");
        assert_ok(c.set_scanout(0, 1, frame).unwrap(), "scanout");
        assert_ok(c.flush(1, frame).unwrap(), "flush");
        c.peer().wait_for(GPU_UPDATE, DEADLINE).unwrap();
    }

    stalled.peer().stall();
    // 20 full frames (60 MiB) while the display reads nothing: more than vgpud queues for it.
    // Every flush is answered, and the neighbour's frames reach its display meanwhile.
    for _ in 0..20 {
        assert_ok(
            stalled.flush(1, frame).unwrap(),
            "flush while the display stalls",
        );
        assert_ok(other.flush(1, frame).unwrap(), "the neighbour's flush");
    }
    other
        .peer()
        .wait_until(DEADLINE, "the neighbour's 21 frames", |msgs| {
            let n = msgs
                .iter()
                .filter(|m| matches!(***m, GpuMsg::Update { .. }))
                .count();
            (n >= 21).then_some(())
        })
        .unwrap();
    wait_log_line(&backend, "about the stall", |l| {
        l.contains("vgpu0") && l.contains("display did not take")
    });
    // Headless for now: display info is answered without asking the display.
    match stalled.display_info().unwrap() {
        DecodedResponse::OkDisplayInfo(m) => assert_eq!(m[0].r.width, 1280),
        other => panic!("GET_DISPLAY_INFO while stalled: {other:?}"),
    }

    let resumed_at = stalled.peer().messages().len();
    stalled.peer().resume();
    // Recovery is noticed on the VM's next command after the headless time: the guest keeps
    // moving its cursor, as a real one would.
    let deadline = Instant::now() + DEADLINE;
    let scanout_at = loop {
        let msgs = stalled.peer().messages();
        let found = msgs[resumed_at..].iter().position(|m| {
            matches!(
                **m,
                GpuMsg::Scanout {
                    scanout: 0,
                    width: 1024,
                    height: 768
                }
            )
        });
        if let Some(i) = found {
            break resumed_at + i;
        }
        assert!(Instant::now() < deadline, "the display never recovered");
        stalled.move_cursor(0, 1, 1, 0).unwrap();
        thread::sleep(Duration::from_millis(100));
    };
    let redraw = stalled
        .peer()
        .wait_until(DEADLINE, "the redrawn frame", |msgs| {
            msgs.get(scanout_at..)?
                .iter()
                .find(|m| matches!(***m, GpuMsg::Update { .. }))
                .cloned()
        })
        .unwrap();
    match &*redraw {
        GpuMsg::Update {
            width,
            height,
            data,
            ..
        } => {
            assert_eq!((*width, *height), (w, h));
            assert!(data == &images[0], "the redraw shows the current contents");
        }
        other => panic!("{other:?}"),
    }
    assert!(backend.log().contains("display responds again"));
    // And it keeps drawing.
    assert_ok(stalled.flush(1, frame).unwrap(), "flush after recovery");
}

/// `(thread name, seccomp mode, filters)` of every thread of `pid`.
fn thread_seccomp(pid: u32) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((
            field("Name:"),
            field("Seccomp:").parse().unwrap_or(0),
            field("Seccomp_filters:").parse().unwrap_or(0),
        ));
    }
    out
}

/// After start-up every thread of the daemon (listener, engine, control, the main thread, and a
/// connected VM's vhost-user, vring and display threads) runs under a seccomp filter, and the
/// display thread under its own narrower one on top; `--sandbox off` has none. On each engine:
/// with `--engine vulkan` the Vulkan driver thread and the driver's own threads (lavapipe's
/// `llvmpipe-N`) are filtered too.
#[test]
fn every_vgpud_thread_runs_under_a_seccomp_filter() {
    for engine in vgpu_tests::engines::engines() {
        eprintln!("engine {engine}");
        every_vgpud_thread_runs_under_a_seccomp_filter_on(engine);
    }
}

fn every_vgpud_thread_runs_under_a_seccomp_filter_on(engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ctl_path = dir.path().join("control.sock");
    let Some(mut backend) = Backend::vgpud_or_skip(&[
        "--control-socket",
        ctl_path.to_str().unwrap(),
        "--engine",
        engine,
        "--type",
        "vgpu-64m",
    ]) else {
        return;
    };
    wait_for_path(&mut backend, &ctl_path);
    let mut client = GpuClient::connect(backend.socket(), &FrontendConfig::default()).unwrap();
    assert_serving(&mut client, "connect");
    let pid = backend.pid();
    // The main thread enters its filter once start-up is over: wait for it (and for the
    // connection's threads) rather than for a fixed time.
    let deadline = Instant::now() + DEADLINE;
    let threads = loop {
        let t = thread_seccomp(pid);
        let display = t.iter().any(|(n, _, _)| n.starts_with("vgpud-display"));
        if display && t.iter().all(|&(_, mode, _)| mode == 2) {
            break t;
        }
        assert!(Instant::now() < deadline, "threads without a filter: {t:?}");
        thread::sleep(Duration::from_millis(20));
    };
    eprintln!("threads: {threads:?}");
    assert!(threads.len() >= 6, "{threads:?}");
    for (name, _, filters) in &threads {
        if name.starts_with("vgpud-display") {
            assert!(
                *filters >= 2,
                "the display thread narrows its inherited filter"
            );
        }
    }
    let mut needed = vec!["vgpu-engine", "vgpud-control", "vring_worker"];
    if engine == "vulkan" {
        needed.push("vgpu-vkdriver");
        if vgpu_tests::engines::vulkan_device().is_some_and(|d| d.contains("llvmpipe")) {
            needed.push("llvmpipe-0");
        }
    }
    for needed in needed {
        assert!(
            threads.iter().any(|(n, _, _)| n == needed),
            "no {needed} thread: {threads:?}"
        );
    }
    assert_serving(&mut client, "everything filtered");
    assert!(
        !backend.log().contains("Operation not permitted"),
        "a syscall the daemon needs is refused:\n{}",
        backend.log()
    );
    vgpu_tests::engines::assert_no_validation_errors(&backend.log());
    if engine != "cpu" {
        return;
    }

    let Some(mut off) = Backend::vgpud_or_skip(&["--sandbox", "off"]) else {
        return;
    };
    off.wait_listening(DEADLINE).unwrap();
    let mut client = GpuClient::connect(off.socket(), &FrontendConfig::default()).unwrap();
    assert_serving(&mut client, "connect without sandbox");
    assert!(thread_seccomp(off.pid())
        .iter()
        .all(|&(_, mode, _)| mode == 0));
}
