//! Fault containment through the real vhost-user path: what one VM does reaches neither the host
//! log without limit nor another VM.
//!
//! Builds `vgpud` from the current source (see `vgpu_tests::backend`), or uses `VGPUD=path`.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{DecodedResponse, ErrorCode, GpuCommand};
use vgpu_tests::conformance::assert_err;
use vgpu_tests::connection::{FrontendConfig, CTRL_QUEUE};
use vgpu_tests::gpu_socket::GpuMsg;
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
