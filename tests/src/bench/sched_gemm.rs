//! (c) of `vgpu-sched-bench`: GEMM called directly, through one vGPU's driver channel and
//! through a real `vgpud` over vhost-user.

use super::sched_rss::{wait_for, Daemon};
use super::*;

pub(super) fn gflops(dim: u32, jobs: u64, secs: f64) -> f64 {
    let d = f64::from(dim);
    2.0 * d * d * d * jobs as f64 / secs / 1e9
}

/// GEMM throughput with the engine driven directly (no device thread, no scheduler): each GEMM
/// in one call (`chunked == false`: one dispatch on Vulkan, one run of the kernel on the CPU),
/// or in chunks of about [`CHUNK_TARGET_NS`] as the device thread would run it while other
/// vGPUs have work.
pub(super) fn gemm_direct(dim: u32, chunked: bool, seconds: f64) -> Result<f64, String> {
    let target = if chunked {
        CHUNK_TARGET_NS as u64
    } else {
        u64::MAX / 4
    };
    super::sched_engine::gemm_engine_direct(dim, target, seconds)
}

/// The `matrixmultiply` crate's `sgemm`, one call per GEMM, in-process: a reference for the
/// absolute throughput of a well-tuned single-threaded CPU GEMM.
pub(super) fn gemm_matrixmultiply(dim: u32, seconds: f64) -> Result<f64, String> {
    let n = dim as usize;
    let a = vec![0.5f32; n * n];
    let b = vec![0.25f32; n * n];
    let mut c = vec![0f32; n * n];
    let dims = GemmDims { m: n, n, k: n };
    let t0 = Instant::now();
    let mut jobs = 0u64;
    while t0.elapsed().as_secs_f64() < seconds {
        gemm_f32_block(dims, (0..n, 0..n), 1.0, &a, &b, 0.0, &mut c).map_err(|e| e.to_string())?;
        jobs += 1;
    }
    std::hint::black_box(&c);
    Ok(gflops(dim, jobs, t0.elapsed().as_secs_f64()))
}

/// Channel throughput, with the engine's mean time and chunks per job.
pub(super) struct ChannelRun {
    pub(super) gflops: f64,
    pub(super) run_ns_per_job: f64,
    pub(super) chunks_per_job: f64,
}

pub(super) fn gemm_channel(dim: u32, seconds: f64, chunk_ns: u64) -> Result<ChannelRun, String> {
    let config = DeviceConfig {
        memory_mib: 1024,
        policy: Policy::BestEffort,
        chunk_target_ns: chunk_ns,
        ..DeviceConfig::default()
    };
    let engine = super::sched_engine::open(chunk_ns)?;
    let dev = Device::with_engine(config, engine).map_err(|e| format!("device: {e}"))?;
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
            .recv_timeout(Duration::from_secs(60))
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

pub(super) fn ctrl_hdr(fence: Option<u64>) -> CtrlHeader {
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

pub(super) fn expect_ok(c: &mut GpuClient, cmd: &GpuCommand<'_>, what: &str) -> Result<(), String> {
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
pub(super) fn vhost_buffer(c: &mut GpuClient, id: u32, data: &[u8]) -> Result<(), String> {
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
pub(super) fn gemm_vhost(bin: &Path, dim: u32, seconds: f64) -> Result<f64, String> {
    let dir = tempfile::Builder::new()
        .prefix("vgpu-sched-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let socket = dir.path().join("gpu.sock");
    let log = std::fs::File::create(dir.path().join("vgpud.log")).map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .arg("--socket-path")
        .arg(&socket)
        .args([
            "--type",
            "vgpu-64m",
            "--engine",
            &super::sched_engine::name(),
        ])
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

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub(super) struct GemmResult {
    /// The engine driven directly, one call per GEMM: the baseline.
    pub(super) direct: f64,
    /// The engine driven directly in ~100 µs chunks.
    pub(super) chunked: f64,
    /// `matrixmultiply`, one call per GEMM (reference).
    pub(super) reference: f64,
    pub(super) channel: f64,
    pub(super) direct_runs: Vec<f64>,
    pub(super) chunked_runs: Vec<f64>,
    pub(super) reference_runs: Vec<f64>,
    pub(super) channel_runs: Vec<f64>,
    /// Channel throughput with [`LONG_CHUNK_NS`] chunks.
    pub(super) long: f64,
    /// Through `vgpud` over vhost-user (None when vgpud is not built).
    pub(super) vhost: Option<f64>,
    pub(super) vhost_runs: Vec<f64>,
    /// Engine time and chunks per job in the median channel run.
    pub(super) run_ns_per_job: f64,
    pub(super) chunks_per_job: f64,
}

impl GemmResult {
    pub(super) fn overhead(&self) -> f64 {
        self.loss(self.channel)
    }

    /// Fraction of the direct (one call) throughput lost at `rate`.
    pub(super) fn loss(&self, rate: f64) -> f64 {
        if self.direct > 0.0 {
            1.0 - rate / self.direct
        } else {
            0.0
        }
    }
}

/// Direct (one call and ~100 µs chunks), `matrixmultiply`, channel and vhost-user throughput,
/// interleaved three times (medians).
pub(super) fn gemm_overhead(dim: u32) -> Result<GemmResult, String> {
    // Warm-up: the engine's cost model, caches, clocks.
    gemm_direct(dim, true, 0.2)?;
    let (mut direct, mut chunked, mut reference, mut channel) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut long, mut vhost) = (Vec::new(), Vec::new());
    let vgpud = vgpud_path();
    for _ in 0..3 {
        direct.push(gemm_direct(dim, false, 1.0)?);
        channel.push(gemm_channel(dim, 1.0, CHUNK_TARGET_NS as u64)?);
        chunked.push(gemm_direct(dim, true, 0.5)?);
        if let Some(bin) = &vgpud {
            vhost.push(gemm_vhost(bin, dim, 1.0)?);
        }
        reference.push(gemm_matrixmultiply(dim, 0.5)?);
        long.push(gemm_channel(dim, 0.5, LONG_CHUNK_NS)?.gflops);
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
        chunked: median(chunked.clone()),
        reference: median(reference.clone()),
        channel: median(channel.clone()),
        direct_runs: direct,
        chunked_runs: chunked,
        reference_runs: reference,
        channel_runs: channel,
    })
}

// ---------------------------------------------------------------------------------------------
// (d) RSS per idle vGPU
