//! A VM that goes away, or changes its memory table, in the middle of its work frees everything
//! and leaks nothing: after each case the daemon holds the descriptors it held before, the vGPU's
//! partition is empty again, and repeating the case does not grow the daemon's memory.
//!
//! Cases, each through the real vhost-user path with the test frontend: a disconnect while a
//! command is on the ring, during a large 2D transfer, while fenced requests wait behind a
//! running job, while a job runs on the engine, and a memory-table change (rings restarted,
//! `SET_MEM_TABLE` again) while a job runs, followed by more work and a disconnect.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vgpu_protocol::channel::*;
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{DecodedResponse, GpuCommand};
use vgpu_tests::client::{pattern, rect};
use vgpu_tests::connection::{FrontendConfig, CTRL_QUEUE};
use vgpu_tests::vring::RawDesc;
use vgpu_tests::{Backend, GpuClient};

const DEADLINE: Duration = Duration::from_secs(60);
const CTX: u32 = 1;
/// GEMM side: 256³ launches keep the engine busy for a while in any build.
const N: u32 = 256;

fn ctl(path: &Path, cmd: &str) -> Value {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("control socket");
    s.write_all(format!("{}\n", json!({ "cmd": cmd })).as_bytes())
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

fn stat(ctl_path: &Path, field: &str) -> u64 {
    let stats = ctl(ctl_path, "stats");
    stats["vgpus"][0][field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {stats}"))
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

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

fn ok(c: &mut GpuClient, cmd: GpuCommand<'_>, what: &str) {
    let r = c.send_ctrl(&cmd, hdr(None)).unwrap().1;
    assert!(matches!(r, DecodedResponse::OkNoData), "{what}: {r:?}");
}

/// Puts `cmd` on the control queue without waiting for its answer.
fn post(c: &mut GpuClient, cmd: &GpuCommand<'_>, h: CtrlHeader) {
    let mut bytes = Vec::new();
    cmd.encode(h, &mut bytes);
    let req = c.guest_buffer(&bytes).unwrap();
    let resp = c.guest_buffer(&[0u8; 64]).unwrap();
    c.post_raw(
        CTRL_QUEUE,
        &[
            RawDesc::readable(req, bytes.len() as u32),
            RawDesc::writable(resp, 64),
        ],
    )
    .unwrap();
}

fn connect(backend: &Backend) -> GpuClient {
    let cfg = FrontendConfig {
        device_features: FrontendConfig::default().device_features | (1 << VIRTIO_GPU_F_VIRGL),
        ..Default::default()
    };
    GpuClient::connect(backend.socket(), &cfg).expect("connect to vgpud")
}

/// A context with three `N`×`N` f32 buffers (resources 1-3) attached.
fn context_with_buffers(c: &mut GpuClient) {
    ok(c, GpuCommand::CtxCreate(CtxCreate::default()), "ctx create");
    let size = N * N * 4;
    for id in 1..=3 {
        let r = c
            .send_ctrl(
                &GpuCommand::ResourceCreate3d(buffer_create(id, size)),
                hdr(None),
            )
            .unwrap()
            .1;
        assert!(matches!(r, DecodedResponse::OkNoData), "create: {r:?}");
        let gpa = c.guest_buffer(&vec![1u8; size as usize]).unwrap();
        let r = c.attach_backing(id, &[(gpa, size)]).unwrap();
        assert!(matches!(r, DecodedResponse::OkNoData), "{r:?}");
        ok(
            c,
            GpuCommand::CtxAttachResource(CtxResource {
                resource_id: id,
                padding: 0,
            }),
            "ctx attach",
        );
    }
}

/// A SUBMIT_3D of `launches` GEMMs of `N`³.
fn long_job(launches: usize) -> Vec<u8> {
    let mut s = Vec::new();
    for _ in 0..launches {
        ChannelCommand::Launch(KernelLaunch::GemmF32(GemmF32Args {
            a_res: 1,
            b_res: 2,
            c_res: 3,
            m: N,
            n: N,
            k: N,
            alpha: 1.0,
            beta: 0.0,
        }))
        .encode(&mut s);
    }
    s
}

fn submit(s: &[u8]) -> GpuCommand<'_> {
    GpuCommand::Submit3d(
        Submit3d {
            size: s.len() as u32,
            padding: 0,
        },
        s,
    )
}

/// Posts a long fenced job and waits until the engine runs it.
fn start_long_job(c: &mut GpuClient, ctl_path: &Path, fence: u64) {
    let busy = stat(ctl_path, "busy_ns");
    let job = long_job(4);
    post(c, &submit(&job), hdr(Some(fence)));
    wait_until("the job to run", || stat(ctl_path, "busy_ns") > busy);
}

#[derive(Clone, Copy, Debug)]
enum Case {
    CommandOnTheRing,
    LargeTransfer,
    FencesWaitingBehindAJob,
    RunningJob,
    MemoryTableChangeUnderAJob,
}

fn run_case(backend: &Backend, ctl_path: &Path, case: Case) {
    let mut c = connect(backend);
    match case {
        Case::CommandOnTheRing => {
            post(
                &mut c,
                &GpuCommand::ResourceCreate2d(ResourceCreate2d {
                    resource_id: 9,
                    format: VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
                    width: 64,
                    height: 64,
                }),
                CtrlHeader::default(),
            );
        }
        Case::LargeTransfer => {
            let (w, h) = (1920u32, 1080u32);
            let img = pattern(w, h, 5);
            c.create_backed_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, w, h, &img, 2025)
                .unwrap();
            post(
                &mut c,
                &GpuCommand::TransferToHost2d(TransferToHost2d {
                    r: rect(0, 0, w, h),
                    offset: 0,
                    resource_id: 1,
                    padding: 0,
                }),
                CtrlHeader::default(),
            );
        }
        Case::FencesWaitingBehindAJob => {
            context_with_buffers(&mut c);
            start_long_job(&mut c, ctl_path, 1);
            // Reads of the job's output wait behind it, fenced.
            for fence in 2..6 {
                post(
                    &mut c,
                    &GpuCommand::TransferFromHost3d(Transfer3d {
                        box_: Box3d {
                            w: N * N * 4,
                            h: 1,
                            d: 1,
                            ..Default::default()
                        },
                        resource_id: 3,
                        ..Default::default()
                    }),
                    hdr(Some(fence)),
                );
            }
        }
        Case::RunningJob => {
            context_with_buffers(&mut c);
            start_long_job(&mut c, ctl_path, 1);
        }
        Case::MemoryTableChangeUnderAJob => {
            context_with_buffers(&mut c);
            start_long_job(&mut c, ctl_path, 1);
            // Rings stopped and restarted, memory table sent again, while the job runs.
            let cfg = FrontendConfig {
                device_features: FrontendConfig::default().device_features
                    | (1 << VIRTIO_GPU_F_VIRGL),
                ..Default::default()
            };
            c.conn.restart(&cfg, false).unwrap();
            match c.display_info().unwrap() {
                DecodedResponse::OkDisplayInfo(_) => {}
                other => panic!("after the new memory table: {other:?}"),
            }
        }
    }
    assert!(
        stat(ctl_path, "framebuffer_used") > 0 || matches!(case, Case::CommandOnTheRing),
        "{case:?}: nothing was allocated"
    );
    c.conn.shutdown().unwrap();
    drop(c);
}

#[test]
fn disconnects_and_memory_changes_mid_work_leak_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ctl_path = dir.path().join("control.sock");
    let Some(mut backend) = Backend::vgpud_or_skip(&[
        "--type",
        "vgpu-64m",
        "--control-socket",
        ctl_path.to_str().unwrap(),
    ]) else {
        return;
    };
    wait_until("the control socket", || ctl_path.exists());
    assert!(backend.is_running());
    let pid = backend.pid();
    let fds = fd_count(pid);
    let cases = [
        Case::CommandOnTheRing,
        Case::LargeTransfer,
        Case::FencesWaitingBehindAJob,
        Case::RunningJob,
        Case::MemoryTableChangeUnderAJob,
    ];
    let mut rss_after_first = 0;
    for round in 0..3 {
        for case in cases {
            let t0 = Instant::now();
            run_case(&backend, &ctl_path, case);
            wait_until(&format!("{case:?}: the partition to empty"), || {
                stat(&ctl_path, "framebuffer_used") == 0
            });
            wait_until(&format!("{case:?}: the jobs to end"), || {
                stat(&ctl_path, "queued_jobs") == 0
            });
            wait_until(&format!("{case:?}: {fds} descriptors again"), || {
                fd_count(pid) == fds
            });
            assert!(backend.is_running(), "vgpud exited:\n{}", backend.log());
            eprintln!("round {round}: {case:?} freed in {:?}", t0.elapsed());
        }
        let rss = rss_kib(pid);
        eprintln!("round {round}: RSS {rss} KiB, {} fds", fd_count(pid));
        if round == 0 {
            rss_after_first = rss;
        } else {
            // Freed memory may stay in the allocator, but repeating the cases must not grow it.
            assert!(
                rss <= rss_after_first + 4 * 1024,
                "RSS grew from {rss_after_first} KiB to {rss} KiB"
            );
        }
    }
    assert_eq!(stat(&ctl_path, "completion_failures"), 0);
}
