//! `vgpu-sched-bench`: the scheduler's fairness, latency, mediation overhead and per-vGPU memory,
//! all measured in one run and printed beside their targets. A program, not a test: nothing
//! here asserts on timing.
//!
//! ```text
//! cargo build --release -p vgpu-backend          # for (d): target/release/vgpud
//! cargo run --release -p vgpu-tests --bin vgpu-sched-bench [-- --json] [--skip-rss]
//! ```
//!
//! - (a) fairness: 4 busy vGPUs (`vgpu-1q`, `vgpu-1q`, `vgpu-2q`, `vgpu-4q`) under equal-share and
//!   fixed-share (weights 1:1:2:4), shares of engine time over consecutive 1 s windows.
//! - (b) queue wait of a light vGPU (small jobs, think time) under 3 busy ones, against
//!   Σ other slices + 1 ms.
//! - (c) 256³, 512³ and 1024³ f32 GEMM throughput called directly vs through one vGPU's driver
//!   channel (default chunks: 100 µs, 1 ms while the vGPU runs alone; and 1 ms chunks throughout
//!   for comparison) and through a real `vgpud` over
//!   vhost-user (one fenced SUBMIT_3D per GEMM, two in flight; needs the release `vgpud`).
//! - (d) `vgpud` RSS with 64 `--vgpu` sockets of `vgpu-64m` (its `max_instances`; 64 × 64 MiB
//!   fills the default 4096 MiB), before and after 64 idle test frontends connect.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vgpu_backend::demo::metrics;
use vgpu_backend::demo::workload::{Frontend, Workload};
use vgpu_backend::driver::kernels::{gemm_f32_block, GemmDims};
use vgpu_backend::driver::{BufRef, Device, DeviceConfig, Job, Op, Policy, Uuid, Vgpu};
use vgpu_protocol::channel::{GemmF32Args, PIPE_BUFFER};
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{decode_response, ChannelCommand, DecodedResponse, GpuCommand, KernelLaunch};
use vgpu_tests::connection::CTRL_QUEUE;
use vgpu_tests::vring::{Link, RawDesc, VRING_DESC_F_WRITE};
use vgpu_tests::{FrontendConfig, GpuClient};

const USAGE: &str = "usage: vgpu-sched-bench [--json] [--skip-rss] [--windows N]
  --json       print the results as JSON instead of a table
  --skip-rss   leave out (d), the vgpud RSS measurement
  --only S     run only these sections, e.g. --only ad (default abcd)
  --windows N  1 s fairness windows per policy (default 4)
  env: VGPUD (vgpud binary; default target/<profile>/vgpud)";

/// Fairness target: Jain's index over every window.
const JAIN_TARGET: f64 = 0.99;
/// Share target: |share − entitled| in percentage points.
const SHARE_ERR_TARGET: f64 = 0.03;
/// Overhead target (fraction of direct throughput lost).
const OVERHEAD_TARGET: f64 = 0.03;
/// RSS target per idle vGPU (bytes).
const RSS_TARGET: u64 = 4 << 20;
/// vGPUs started for (d): 64, `vgpu-64m`'s `max_instances` (64 × 64 MiB, the default device
/// memory).
const RSS_VGPUS: usize = 64;
/// GEMM sizes for (c): the headline one first.
const GEMM_DIMS: [u32; 3] = [256, 512, 1024];
/// A longer engine chunk, for the channel row that shows what chunk length meets the target.
const LONG_CHUNK_NS: u64 = 1_000_000;
/// The engine's chunk target (ns), for the row-chunked direct baseline.
const CHUNK_TARGET_NS: f64 = 100_000.0;

struct Args {
    json: bool,
    /// Sections to run, from "abcd".
    only: String,
    windows: u32,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut out = Args {
        json: false,
        only: "abcd".into(),
        windows: 4,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => out.json = true,
            "--skip-rss" => out.only.retain(|c| c != 'd'),
            "--only" => {
                let v = it.next().ok_or("--only needs a value")?;
                if v.is_empty() || !v.chars().all(|c| "abcd".contains(c)) {
                    return Err(format!("bad --only {v:?} (letters from abcd)"));
                }
                out.only = v.clone();
            }
            "--windows" => {
                let v = it.next().ok_or("--windows needs a value")?;
                out.windows = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=60).contains(n))
                    .ok_or_else(|| format!("bad --windows {v:?}"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(out)
}

/// One line of the result table.
struct Row {
    id: String,
    what: String,
    figure: String,
    target: String,
    met: Option<bool>,
}

impl Row {
    fn new(id: impl Into<String>, what: impl Into<String>, figure: impl Into<String>) -> Self {
        Row {
            id: id.into(),
            what: what.into(),
            figure: figure.into(),
            target: "-".into(),
            met: None,
        }
    }

    fn target(mut self, target: impl Into<String>, met: bool) -> Self {
        self.target = target.into();
        self.met = Some(met);
        self
    }
}

fn ms(ns: u64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1 << 20) as f64)
}

fn device(policy: Policy, memory_mib: u64) -> Result<Arc<Device>, String> {
    Device::new(DeviceConfig {
        memory_mib,
        policy,
        ..DeviceConfig::default()
    })
    .map_err(|e| format!("device: {e}"))
}

fn create(dev: &Device, types: &[&str]) -> Result<Vec<Arc<Vgpu>>, String> {
    types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            dev.create_vgpu(t, Uuid::from_u128(0xbe_0000 + i as u128))
                .map_err(|e| format!("create {t}: {e}"))
        })
        .collect()
}

fn start(
    vgpus: &[Arc<Vgpu>],
    workloads: &[Workload],
    stop: &Arc<AtomicBool>,
) -> Result<Vec<Frontend>, String> {
    vgpus
        .iter()
        .zip(workloads)
        .enumerate()
        .map(|(i, (v, &w))| Frontend::spawn(i, v, w, stop).map_err(|e| e.to_string()))
        .collect()
}

fn busy(vgpus: &[Arc<Vgpu>]) -> Vec<u64> {
    vgpus.iter().map(|v| v.stats().busy_ns).collect()
}

// ---------------------------------------------------------------------------------------------
// (a) fairness

struct Fairness {
    policy: Policy,
    entitled: Vec<f64>,
    window_shares: Vec<Vec<f64>>,
    jains: Vec<f64>,
    max_err: f64,
}

fn fairness(policy: Policy, windows: u32) -> Result<Fairness, String> {
    let types = ["vgpu-1q", "vgpu-1q", "vgpu-2q", "vgpu-4q"];
    let dev = device(policy, 8192)?;
    let vgpus = create(&dev, &types)?;
    let weights: Vec<u32> = vgpus.iter().map(|v| v.vgpu_type().weight).collect();
    let entitled = metrics::entitlements(policy, &weights);
    let stop = Arc::new(AtomicBool::new(false));
    let frontends = start(&vgpus, &[Workload::HeavyGemm; 4], &stop)?;
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let mut last = busy(&vgpus);
    let mut window_shares = Vec::new();
    let mut jains = Vec::new();
    let mut max_err: f64 = 0.0;
    for w in 1..=windows {
        let due = Duration::from_secs(u64::from(w));
        std::thread::sleep(due.saturating_sub(t0.elapsed()));
        let now = busy(&vgpus);
        let delta: Vec<u64> = now
            .iter()
            .zip(&last)
            .map(|(n, l)| n.saturating_sub(*l))
            .collect();
        last = now;
        let shares = metrics::shares(&delta);
        jains.push(metrics::weighted_jain(&shares, &entitled).unwrap_or(0.0));
        max_err = max_err.max(metrics::max_share_error(&shares, &entitled));
        window_shares.push(shares);
    }
    stop.store(true, Ordering::Relaxed);
    for f in frontends {
        f.join().map_err(|e| e.to_string())?;
    }
    drop(vgpus);
    dev.shutdown();
    Ok(Fairness {
        policy,
        entitled,
        window_shares,
        jains,
        max_err,
    })
}

fn fairness_rows(f: &Fairness, ids: [&'static str; 2], rows: &mut Vec<Row>) {
    let min = f.jains.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = f.jains.iter().sum::<f64>() / f.jains.len().max(1) as f64;
    let label = match f.policy {
        Policy::FixedShare => "fixed-share 1:1:2:4",
        _ => "equal-share",
    };
    rows.push(
        Row::new(
            ids[0],
            format!("{label}: Jain min / mean ({} × 1 s)", f.jains.len()),
            format!("{min:.4} / {mean:.4}"),
        )
        .target(format!("≥ {JAIN_TARGET}"), min >= JAIN_TARGET),
    );
    let entitled: Vec<String> = f
        .entitled
        .iter()
        .map(|e| format!("{:.1}", e * 100.0))
        .collect();
    rows.push(
        Row::new(
            ids[1],
            format!("{label}: max |share − entitled| ({}%)", entitled.join("/")),
            format!("{:.2} pp", f.max_err * 100.0),
        )
        .target(
            format!("≤ ±{:.0} pp", SHARE_ERR_TARGET * 100.0),
            f.max_err <= SHARE_ERR_TARGET,
        ),
    );
}

fn fairness_json(f: &Fairness) -> Value {
    json!({
        "policy": f.policy.as_str(),
        "entitled": f.entitled,
        "window_shares": f.window_shares,
        "jain_per_window": f.jains,
        "max_share_error": f.max_err,
    })
}

// ---------------------------------------------------------------------------------------------
// (b) light vGPU's queue wait

struct Latency {
    policy: Policy,
    samples: usize,
    p50: u64,
    p99: u64,
    max: u64,
    bound: u64,
}

fn light_latency(policy: Policy, seconds: f64) -> Result<Latency, String> {
    let types = ["vgpu-1q"; 4];
    let dev = device(policy, 4096)?;
    let vgpus = create(&dev, &types)?;
    let stop = Arc::new(AtomicBool::new(false));
    let workloads = [
        Workload::Light,
        Workload::HeavyGemm,
        Workload::HeavyGemm,
        Workload::Streaming,
    ];
    let frontends = start(&vgpus, &workloads, &stop)?;
    let slices: Vec<u32> = vgpus
        .iter()
        .skip(1)
        .map(|v| v.stats().timeslice_us)
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut light = None;
    for (i, f) in frontends.into_iter().enumerate() {
        let s = f.join().map_err(|e| e.to_string())?;
        if i == 0 {
            light = Some(s);
        }
    }
    drop(vgpus);
    dev.shutdown();
    let mut waits = light.map(|s| s.wait_ns).unwrap_or_default();
    let p50 = metrics::percentile_sorting(&mut waits, 50);
    Ok(Latency {
        policy,
        samples: waits.len(),
        p50,
        p99: metrics::percentile_sorted(&waits, 99),
        max: waits.last().copied().unwrap_or(0),
        bound: metrics::wait_bound_ns(&slices),
    })
}

// ---------------------------------------------------------------------------------------------
// (c) mediation overhead

fn gflops(dim: u32, jobs: u64, secs: f64) -> f64 {
    let d = f64::from(dim);
    2.0 * d * d * d * jobs as f64 / secs / 1e9
}

/// GEMM throughput called in-process: in one call, or (`rows_per_call` > 0) in whole-row blocks
/// as an engine with row-aligned chunks would run it.
fn gemm_direct(dim: u32, rows_per_call: usize, seconds: f64) -> Result<f64, String> {
    let n = dim as usize;
    let a = vec![0.5f32; n * n];
    let b = vec![0.25f32; n * n];
    let mut c = vec![0f32; n * n];
    let dims = GemmDims { m: n, n, k: n };
    let step = if rows_per_call == 0 { n } else { rows_per_call };
    let t0 = Instant::now();
    let mut jobs = 0u64;
    while t0.elapsed().as_secs_f64() < seconds {
        let mut row = 0;
        while row < n {
            let end = (row + step).min(n);
            gemm_f32_block(dims, (row..end, 0..n), 1.0, &a, &b, 0.0, &mut c)
                .map_err(|e| e.to_string())?;
            row = end;
        }
        jobs += 1;
    }
    std::hint::black_box(&c);
    Ok(gflops(dim, jobs, t0.elapsed().as_secs_f64()))
}

/// Channel throughput, with the engine's mean time and chunks per job.
struct ChannelRun {
    gflops: f64,
    run_ns_per_job: f64,
    chunks_per_job: f64,
}

fn gemm_channel(dim: u32, seconds: f64, chunk_ns: u64) -> Result<ChannelRun, String> {
    let dev = Device::new(DeviceConfig {
        memory_mib: 1024,
        policy: Policy::BestEffort,
        chunk_target_ns: chunk_ns,
        ..DeviceConfig::default()
    })
    .map_err(|e| format!("device: {e}"))?;
    let vgpu = create(&dev, &["vgpu-1q"])?.remove(0);
    let bytes = u64::from(dim) * u64::from(dim) * 4;
    let alloc = |n| vgpu.alloc_buffer(n).map_err(|e| e.to_string());
    let (a, b, c) = (alloc(bytes)?, alloc(bytes)?, alloc(bytes)?);
    let job = Job::single(Op::GemmF32 {
        m: dim,
        n: dim,
        k: dim,
        alpha: 1.0,
        beta: 0.0,
        a: BufRef::new(&a, 0),
        b: BufRef::new(&b, 0),
        c: BufRef::new(&c, 0),
    })
    .map_err(|e| e.to_string())?;
    let channel = vgpu.create_channel().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    let submit = |tx: &mpsc::Sender<Option<(u64, u64)>>| {
        let tx = tx.clone();
        channel
            .submit_fn(job.clone(), move |r| {
                let _ = tx.send(r.ok().map(|r| (r.run_ns, r.chunks)));
            })
            .map_err(|e| e.to_string())
    };
    // Two in flight, as a guest driver pipelines submissions.
    submit(&tx)?;
    submit(&tx)?;
    let t0 = Instant::now();
    let mut jobs = 0u64;
    let (mut run_ns, mut chunks) = (0u64, 0u64);
    while t0.elapsed().as_secs_f64() < seconds {
        let (r, c) = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| "GEMM job did not complete".to_string())?
            .ok_or("GEMM job failed")?;
        jobs += 1;
        run_ns += r;
        chunks += c;
        submit(&tx)?;
    }
    let rate = gflops(dim, jobs, t0.elapsed().as_secs_f64());
    drop(channel);
    dev.shutdown();
    let per_job = |v: u64| v as f64 / jobs.max(1) as f64;
    Ok(ChannelRun {
        gflops: rate,
        run_ns_per_job: per_job(run_ns),
        chunks_per_job: per_job(chunks),
    })
}

fn ctrl_hdr(fence: Option<u64>) -> CtrlHeader {
    CtrlHeader {
        flags: if fence.is_some() {
            VIRTIO_GPU_FLAG_FENCE
        } else {
            0
        },
        fence_id: fence.unwrap_or(0),
        ctx_id: 1,
        ..Default::default()
    }
}

fn expect_ok(c: &mut GpuClient, cmd: &GpuCommand<'_>, what: &str) -> Result<(), String> {
    match c
        .send_ctrl(cmd, ctrl_hdr(None))
        .map_err(|e| format!("{what}: {e}"))?
        .1
    {
        DecodedResponse::OkNoData => Ok(()),
        other => Err(format!("{what}: {other:?}")),
    }
}

/// A context buffer `id` of `data.len()` bytes with guest backing, uploaded.
fn vhost_buffer(c: &mut GpuClient, id: u32, data: &[u8]) -> Result<(), String> {
    let size = u32::try_from(data.len()).map_err(|_| "buffer too large")?;
    let create = GpuCommand::ResourceCreate3d(ResourceCreate3d {
        resource_id: id,
        target: PIPE_BUFFER,
        width: size,
        height: 1,
        depth: 1,
        array_size: 1,
        ..Default::default()
    });
    expect_ok(c, &create, "create buffer")?;
    let gpa = c.guest_buffer(data).map_err(|e| e.to_string())?;
    match c
        .attach_backing(id, &[(gpa, size)])
        .map_err(|e| e.to_string())?
    {
        DecodedResponse::OkNoData => {}
        other => return Err(format!("attach backing: {other:?}")),
    }
    let attach = GpuCommand::CtxAttachResource(CtxResource {
        resource_id: id,
        padding: 0,
    });
    expect_ok(c, &attach, "ctx attach")?;
    let upload = GpuCommand::TransferToHost3d(Transfer3d {
        box_: Box3d {
            w: size,
            h: 1,
            d: 1,
            ..Default::default()
        },
        resource_id: id,
        ..Default::default()
    });
    expect_ok(c, &upload, "upload")
}

/// GEMM throughput through a real `vgpud` over vhost-user: one GEMM launch per fenced
/// SUBMIT_3D, two in flight, each counted when its fenced response is used.
fn gemm_vhost(bin: &Path, dim: u32, seconds: f64) -> Result<f64, String> {
    let dir = tempfile::Builder::new()
        .prefix("vgpu-sched-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let socket = dir.path().join("gpu.sock");
    let log = std::fs::File::create(dir.path().join("vgpud.log")).map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .arg("--socket-path")
        .arg(&socket)
        .args(["--type", "vgpu-64m"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn vgpud: {e}"))?;
    let mut daemon = Daemon(child);
    wait_for(
        std::slice::from_ref(&socket),
        &mut daemon.0,
        Duration::from_secs(10),
    )?;
    let cfg = FrontendConfig {
        device_features: FrontendConfig::default().device_features | (1 << VIRTIO_GPU_F_VIRGL),
        mem_size: 64 << 20,
        ..FrontendConfig::default()
    };
    let mut c = GpuClient::connect(&socket, &cfg).map_err(|e| format!("connect: {e}"))?;
    expect_ok(
        &mut c,
        &GpuCommand::CtxCreate(CtxCreate::default()),
        "ctx create",
    )?;
    let cells = (dim as usize) * (dim as usize);
    let bytes = |v: f32| -> Vec<u8> {
        std::iter::repeat_n(v.to_le_bytes(), cells)
            .flatten()
            .collect()
    };
    vhost_buffer(&mut c, 1, &bytes(0.5))?;
    vhost_buffer(&mut c, 2, &bytes(0.25))?;
    vhost_buffer(&mut c, 3, &bytes(0.0))?;
    let mut stream = Vec::new();
    ChannelCommand::Launch(KernelLaunch::GemmF32(GemmF32Args {
        a_res: 1,
        b_res: 2,
        c_res: 3,
        m: dim,
        n: dim,
        k: dim,
        alpha: 1.0,
        beta: 0.0,
    }))
    .encode(&mut stream);
    let submit = GpuCommand::Submit3d(
        Submit3d {
            size: u32::try_from(stream.len()).map_err(|_| "stream too large")?,
            padding: 0,
        },
        &stream,
    );
    // Two request/response slots, reused: a request is rewritten with its fence id when posted.
    let mut request = Vec::new();
    submit.encode(ctrl_hdr(Some(1)), &mut request);
    let req_len = u32::try_from(request.len()).map_err(|_| "request too large")?;
    let mut slots = Vec::new();
    for _ in 0..2 {
        let req = c.guest_buffer(&request).map_err(|e| e.to_string())?;
        let resp = c.guest_buffer(&[0u8; 64]).map_err(|e| e.to_string())?;
        slots.push((req, resp));
    }
    let mut fence = 0u64;
    let mut post = |c: &mut GpuClient, (req, resp): (u64, u64)| -> Result<u16, String> {
        fence += 1;
        request.clear();
        submit.encode(ctrl_hdr(Some(fence)), &mut request);
        c.conn.mem.write(req, &request).map_err(|e| e.to_string())?;
        let descs = [
            RawDesc {
                addr: req,
                len: req_len,
                flags: 0,
                link: Link::Auto,
            },
            RawDesc {
                addr: resp,
                len: 64,
                flags: VRING_DESC_F_WRITE,
                link: Link::Auto,
            },
        ];
        c.post_raw(CTRL_QUEUE, &descs).map_err(|e| e.to_string())
    };
    let mut in_flight = std::collections::VecDeque::new();
    // One warm-up job, then two in flight.
    let head = post(&mut c, slots[0])?;
    c.wait_any(CTRL_QUEUE, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let _ = head;
    for &slot in &slots {
        in_flight.push_back((post(&mut c, slot)?, slot));
    }
    let t0 = Instant::now();
    let mut jobs = 0u64;
    while t0.elapsed().as_secs_f64() < seconds {
        let used = c
            .wait_any(CTRL_QUEUE, Duration::from_secs(30))
            .map_err(|e| format!("fenced GEMM: {e}"))?;
        let (head, slot) = in_flight.pop_front().ok_or("nothing in flight")?;
        if used.id != u32::from(head) {
            return Err(format!("response {} out of order (want {head})", used.id));
        }
        let resp = c
            .conn
            .mem
            .read_vec(slot.1, used.len as usize)
            .map_err(|e| e.to_string())?;
        match decode_response(&resp) {
            Some((_, DecodedResponse::OkNoData)) => {}
            other => return Err(format!("GEMM submit: {other:?}")),
        }
        jobs += 1;
        in_flight.push_back((post(&mut c, slot)?, slot));
    }
    let rate = gflops(dim, jobs, t0.elapsed().as_secs_f64());
    for _ in 0..in_flight.len() {
        let _ = c.wait_any(CTRL_QUEUE, Duration::from_secs(30));
    }
    drop(c);
    drop(daemon);
    Ok(rate)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

struct GemmResult {
    direct: f64,
    rowwise: f64,
    channel: f64,
    rows_per_call: usize,
    direct_runs: Vec<f64>,
    rowwise_runs: Vec<f64>,
    channel_runs: Vec<f64>,
    /// Channel throughput with [`LONG_CHUNK_NS`] chunks.
    long: f64,
    /// Through `vgpud` over vhost-user (None when vgpud is not built).
    vhost: Option<f64>,
    vhost_runs: Vec<f64>,
    /// Engine time and chunks per job in the median channel run.
    run_ns_per_job: f64,
    chunks_per_job: f64,
}

impl GemmResult {
    fn overhead(&self) -> f64 {
        if self.direct > 0.0 {
            1.0 - self.channel / self.direct
        } else {
            0.0
        }
    }

    fn loss(&self, rate: f64) -> f64 {
        if self.direct > 0.0 {
            1.0 - rate / self.direct
        } else {
            0.0
        }
    }

    fn rowwise_overhead(&self) -> f64 {
        if self.direct > 0.0 {
            1.0 - self.rowwise / self.direct
        } else {
            0.0
        }
    }
}

/// Direct, direct in row blocks and channel throughput, interleaved three times (medians).
fn gemm_overhead(dim: u32) -> Result<GemmResult, String> {
    let probe = gemm_direct(dim, 0, 0.2)?;
    // Rows that take about one engine chunk at the probed speed (2 flops per multiply-add).
    let flops_per_row = 2.0 * f64::from(dim) * f64::from(dim);
    let rows_per_call = ((probe * CHUNK_TARGET_NS / flops_per_row) as usize).clamp(1, dim as usize);
    let (mut direct, mut rowwise, mut channel) = (Vec::new(), Vec::new(), Vec::new());
    let (mut long, mut vhost) = (Vec::new(), Vec::new());
    let vgpud = vgpud_path();
    for _ in 0..3 {
        direct.push(gemm_direct(dim, 0, 1.0)?);
        rowwise.push(gemm_direct(dim, rows_per_call, 0.5)?);
        channel.push(gemm_channel(dim, 1.0, CHUNK_TARGET_NS as u64)?);
        long.push(gemm_channel(dim, 0.5, LONG_CHUNK_NS)?.gflops);
        if let Some(bin) = &vgpud {
            vhost.push(gemm_vhost(bin, dim, 1.0)?);
        }
    }
    channel.sort_by(|a, b| a.gflops.total_cmp(&b.gflops));
    let mid = channel
        .get(channel.len() / 2)
        .map_or((0.0, 0.0), |c| (c.run_ns_per_job, c.chunks_per_job));
    let channel: Vec<f64> = channel.iter().map(|c| c.gflops).collect();
    Ok(GemmResult {
        long: median(long),
        vhost: (!vhost.is_empty()).then(|| median(vhost.clone())),
        vhost_runs: vhost,
        run_ns_per_job: mid.0,
        chunks_per_job: mid.1,
        direct: median(direct.clone()),
        rowwise: median(rowwise.clone()),
        channel: median(channel.clone()),
        rows_per_call,
        direct_runs: direct,
        rowwise_runs: rowwise,
        channel_runs: channel,
    })
}

// ---------------------------------------------------------------------------------------------
// (d) RSS per idle vGPU

struct Rss {
    base: u64,
    after: u64,
    connected: usize,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn vgpud_path() -> Option<PathBuf> {
    vgpu_tests::backend::vgpud_path()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(paths: &[PathBuf], child: &mut Child, timeout: Duration) -> Result<(), String> {
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

fn rss(bin: &Path) -> Result<Rss, String> {
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

fn print_table(rows: &[Row]) {
    let w_what = rows
        .iter()
        .map(|r| r.what.chars().count())
        .max()
        .unwrap_or(0);
    let w_fig = rows
        .iter()
        .map(|r| r.figure.chars().count())
        .max()
        .unwrap_or(0);
    let w_tgt = rows
        .iter()
        .map(|r| r.target.chars().count())
        .max()
        .unwrap_or(0);
    println!(
        "{:<3}  {:<w_what$}  {:>w_fig$}  {:<w_tgt$}  verdict",
        "#", "measurement", "figure", "target"
    );
    for r in rows {
        let verdict = match r.met {
            Some(true) => "MET",
            Some(false) => "NOT MET",
            None => "",
        };
        println!(
            "{:<3}  {:<w_what$}  {:>w_fig$}  {:<w_tgt$}  {verdict}",
            r.id, r.what, r.figure, r.target
        );
    }
}

fn run(args: &Args) -> Result<(), String> {
    let t_start = Instant::now();
    let mut rows = Vec::new();
    let mut doc = serde_json::Map::new();
    let say = |s: &str| {
        if !args.json {
            eprintln!("… {s}");
        }
    };

    let mut fair = Vec::new();
    if args.only.contains('a') {
        for (ids, policy) in [
            (["a1", "a2"], Policy::EqualShare),
            (["a3", "a4"], Policy::FixedShare),
        ] {
            say(&format!("(a) fairness, {policy}"));
            let f = fairness(policy, args.windows)?;
            fairness_rows(&f, ids, &mut rows);
            fair.push(f);
        }
        doc.insert(
            "fairness".into(),
            Value::Array(fair.iter().map(fairness_json).collect()),
        );
    }

    let mut lat_json = Vec::new();
    let b_runs = if args.only.contains('b') {
        vec![("b1", Policy::BestEffort), ("b2", Policy::EqualShare)]
    } else {
        Vec::new()
    };
    for (id, policy) in b_runs {
        say(&format!("(b) light vGPU under 3 busy ones, {policy}"));
        let l = light_latency(policy, 2.5)?;
        rows.push(
            Row::new(
                id,
                format!(
                    "light vGPU queue wait p50 / p99 ({}, 3 busy, n={})",
                    l.policy, l.samples
                ),
                format!("{} / {}", ms(l.p50), ms(l.p99)),
            )
            .target(format!("p99 ≤ {}", ms(l.bound)), l.p99 <= l.bound),
        );
        lat_json.push(json!({
            "policy": l.policy.as_str(), "samples": l.samples, "p50_ns": l.p50,
            "p99_ns": l.p99, "max_ns": l.max, "bound_ns": l.bound,
        }));
    }
    doc.insert("light_wait".into(), Value::Array(lat_json));

    if args.only.contains('c') {
        say("(c) GEMM direct vs through a vGPU channel");
    }
    let mut gemm_json = Vec::new();
    let dims: &[u32] = if args.only.contains('c') {
        &GEMM_DIMS
    } else {
        &[]
    };
    for (i, &dim) in dims.iter().enumerate() {
        let g = gemm_overhead(dim)?;
        rows.push(Row::new(
            format!("c{}d", i + 1),
            format!("GEMM {dim}³ f32 called directly, one call (median of 3 × 1 s)"),
            format!("{:.1} GFLOP/s", g.direct),
        ));
        rows.push(Row::new(
            format!("c{}r", i + 1),
            format!(
                "GEMM {dim}³ f32 direct in {}-row calls (~100 µs each)",
                g.rows_per_call
            ),
            format!(
                "{:.1} GFLOP/s, {:+.1}%",
                g.rowwise,
                -g.rowwise_overhead() * 100.0
            ),
        ));
        let overhead = g.overhead();
        rows.push(
            Row::new(
                format!("c{}", i + 1),
                format!(
                    "GEMM {dim}³ f32 through one vGPU's driver channel ({:.0} chunks of {:.0} µs)",
                    g.chunks_per_job,
                    g.run_ns_per_job / g.chunks_per_job.max(1.0) / 1000.0
                ),
                format!("{:.1} GFLOP/s, {:+.1}%", g.channel, -overhead * 100.0),
            )
            .target(
                format!("overhead ≤ {:.0}%", OVERHEAD_TARGET * 100.0),
                overhead <= OVERHEAD_TARGET,
            ),
        );
        let long = g.loss(g.long);
        rows.push(
            Row::new(
                format!("c{}L", i + 1),
                format!(
                    "GEMM {dim}³ f32 through the channel, {} µs chunks (median of 3 × 0.5 s)",
                    LONG_CHUNK_NS / 1000
                ),
                format!("{:.1} GFLOP/s, {:+.1}%", g.long, -long * 100.0),
            )
            .target(
                format!("overhead ≤ {:.0}%", OVERHEAD_TARGET * 100.0),
                long <= OVERHEAD_TARGET,
            ),
        );
        match g.vhost {
            Some(v) => {
                let loss = g.loss(v);
                rows.push(
                    Row::new(
                        format!("c{}V", i + 1),
                        format!("GEMM {dim}³ f32 through vgpud over vhost-user (SUBMIT_3D, 2 fenced in flight)"),
                        format!("{v:.1} GFLOP/s, {:+.1}%", -loss * 100.0),
                    )
                    .target(
                        format!("overhead ≤ {:.0}%", OVERHEAD_TARGET * 100.0),
                        loss <= OVERHEAD_TARGET,
                    ),
                );
            }
            None => rows.push(Row::new(
                format!("c{}V", i + 1),
                "GEMM through vgpud over vhost-user (SUBMIT_3D)",
                "not measured (vgpud not built)",
            )),
        }
        gemm_json.push(json!({
            "dim": dim, "direct_gflops": g.direct_runs, "rowwise_gflops": g.rowwise_runs,
            "rows_per_call": g.rows_per_call, "channel_gflops": g.channel_runs,
            "overhead": overhead, "long_chunk_gflops": g.long,
            "vhost_user_gflops": g.vhost_runs,
        }));
    }
    doc.insert("gemm".into(), Value::Array(gemm_json));

    if !args.only.contains('d') {
        doc.insert("rss".into(), Value::Null);
    } else {
        say(&format!("(d) vgpud RSS with {RSS_VGPUS} idle vGPUs"));
        let result = vgpud_path()
            .ok_or_else(|| "vgpud not built (cargo build --release -p vgpu-backend)".to_string())
            .and_then(|bin| rss(&bin));
        match result {
            Ok(r) => {
                let n = r.connected.max(1) as u64;
                let per = r.after.saturating_sub(r.base) / n;
                let total = r.after / n;
                rows.push(
                    Row::new(
                        "d1",
                        format!("vgpud RSS per idle vGPU, (after − base)/{n}"),
                        mib(per),
                    )
                    .target(format!("≤ {}", mib(RSS_TARGET)), per <= RSS_TARGET),
                );
                rows.push(
                    Row::new(
                        "d2",
                        format!("vgpud RSS per idle vGPU, total/{n} (base {})", mib(r.base)),
                        mib(total),
                    )
                    .target(format!("≤ {}", mib(RSS_TARGET)), total <= RSS_TARGET),
                );
                doc.insert(
                    "rss".into(),
                    json!({"vgpus": r.connected, "base_bytes": r.base, "after_bytes": r.after}),
                );
            }
            Err(e) => {
                rows.push(Row::new("d", "vgpud RSS per idle vGPU", "not measured"));
                doc.insert("rss".into(), json!({ "error": e }));
                if !args.json {
                    eprintln!("(d) not measured: {e}");
                }
            }
        }
    }
    doc.insert("runtime_s".into(), json!(t_start.elapsed().as_secs_f64()));

    if args.json {
        let rows_json: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({"id": r.id, "measurement": r.what, "figure": r.figure,
                            "target": r.target, "met": r.met})
            })
            .collect();
        doc.insert("rows".into(), Value::Array(rows_json));
        let text = serde_json::to_string_pretty(&Value::Object(doc)).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(());
    }
    println!();
    print_table(&rows);
    println!();
    for f in &fair {
        println!(
            "{} shares per 1 s window (vgpu-1q, vgpu-1q, vgpu-2q, vgpu-4q):",
            f.policy
        );
        for (w, (s, j)) in f.window_shares.iter().zip(&f.jains).enumerate() {
            let cells: Vec<String> = s.iter().map(|x| format!("{:5.1}%", x * 100.0)).collect();
            println!("  window {}: {}   Jain {j:.4}", w + 1, cells.join("  "));
        }
    }
    println!("runtime {:.1} s", t_start.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vgpu-sched-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
