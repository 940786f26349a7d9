//! (c) of `vgpu-sched-bench`: the mediation overhead of GEMM. The engine driven directly (one
//! call per GEMM, no scheduler) is the baseline; one vGPU's driver channel (in-process) and a
//! real `vgpud` over vhost-user (fenced SUBMIT_3D) are the mediated paths.
//!
//! **Method** (a loaded, shared host makes single rounds differ by ±20 %): every path is set up
//! once (engine, device, daemon and buffers stay up), then timed in pairs of short rounds:
//! direct, pieces, channel, vhost-user, vhost-user with [`VHOST_BATCH`] GEMMs per SUBMIT_3D,
//! direct again (the middle reversed every other pair, so no path always follows the same other
//! one). Each round is divided by the pair's two direct rounds together, which bracket it, and
//! the overhead is `1 − median(ratio)`, printed with the ratios' interquartile range. "Pieces" is
//! the engine driven directly in the chunks a lone vGPU's 1 ms target gives, no scheduler: what
//! slicing alone costs the engine, apart from the mediation. The second direct round against the
//! first is the noise floor: the same path, paired the same way. Beside the wall-clock
//! throughput, each round records the CPU time and the context switches of every thread of the
//! processes involved (this program and `vgpud`, from `/proc/PID/task/*/schedstat` and
//! `status`): the same pairing of GFLOP per CPU-second shows what the mediation costs in work,
//! which other load on the host disturbs far less than wall-clock time, and the switches per
//! GEMM count its wake-ups. [`piece_targets`] (`--piece-targets`) drives the engine directly at
//! fixed piece targets instead.

use vgpu_backend::driver::engine::{DynEngine, Step, DEFAULT_SOLO_CHUNK_TARGET_NS};
use vgpu_backend::driver::{Channel, DeviceBuffer, DeviceMemory, MemoryPartition, MIB};

use super::sched_rss::{wait_for, Daemon};
use super::*;
use vgpu_tests::channel::ChannelSession;

pub(super) fn gflops(dim: u32, jobs: u64, secs: f64) -> f64 {
    let d = f64::from(dim);
    2.0 * d * d * d * jobs as f64 / secs / 1e9
}

/// What every thread of a process has used so far: CPU time and context switches.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ThreadUse {
    /// CPU time (ns), from `schedstat`.
    pub(super) cpu_ns: u64,
    /// Times a thread went to sleep (waiting for an event: a wake-up to come).
    pub(super) voluntary: u64,
    /// Times a runnable thread was preempted (another thread took its CPU).
    pub(super) involuntary: u64,
}

impl ThreadUse {
    /// Everything used by process `pid`'s threads (zeros if unreadable).
    pub(super) fn of(pid: u32) -> Self {
        let mut out = Self::default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return out;
        };
        for task in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
                out.cpu_ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            let field = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            out.voluntary += field("voluntary_ctxt_switches:");
            out.involuntary += field("nonvoluntary_ctxt_switches:");
        }
        out
    }

    fn add(self, o: Self) -> Self {
        Self {
            cpu_ns: self.cpu_ns + o.cpu_ns,
            voluntary: self.voluntary + o.voluntary,
            involuntary: self.involuntary + o.involuntary,
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            cpu_ns: self.cpu_ns.saturating_sub(before.cpu_ns),
            voluntary: self.voluntary.saturating_sub(before.voluntary),
            involuntary: self.involuntary.saturating_sub(before.involuntary),
        }
    }
}

/// One timed round of GEMMs.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Round {
    /// GEMMs completed.
    pub(super) jobs: u64,
    /// Wall time of those GEMMs (s).
    pub(super) secs: f64,
    /// CPU time and context switches of every thread of the processes involved during the
    /// round.
    pub(super) used: ThreadUse,
}

impl Round {
    pub(super) fn gflops(&self, dim: u32) -> f64 {
        gflops(dim, self.jobs, self.secs.max(1e-9))
    }

    /// Two rounds of the same path as one.
    pub(super) fn merged(&self, other: &Round) -> Round {
        Round {
            jobs: self.jobs + other.jobs,
            secs: self.secs + other.secs,
            used: self.used.add(other.used),
        }
    }

    /// GFLOP per CPU-second of all threads involved.
    pub(super) fn gflops_per_cpu(&self, dim: u32) -> f64 {
        gflops(dim, self.jobs, (self.used.cpu_ns as f64 / 1e9).max(1e-9))
    }

    /// Voluntary and involuntary context switches per GEMM, all threads involved.
    pub(super) fn switches_per_job(&self) -> (f64, f64) {
        let n = self.jobs.max(1) as f64;
        (
            self.used.voluntary as f64 / n,
            self.used.involuntary as f64 / n,
        )
    }
}

/// Times `run_one` (one GEMM per call) for about `seconds`; CPU time is read from `pids`.
fn timed(
    seconds: f64,
    pids: &[u32],
    mut run_one: impl FnMut() -> Result<(), String>,
) -> Result<Round, String> {
    let used = || {
        pids.iter()
            .map(|&p| ThreadUse::of(p))
            .fold(ThreadUse::default(), ThreadUse::add)
    };
    let used0 = used();
    let t0 = Instant::now();
    let mut jobs = 0u64;
    while t0.elapsed().as_secs_f64() < seconds {
        run_one()?;
        jobs += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(Round {
        jobs,
        secs,
        used: used().since(used0),
    })
}

/// A chunk target no GEMM reaches: the engine runs it in one call (one dispatch).
pub(super) const ONE_CALL: u64 = 1 << 40;

/// The engine driven directly (no device thread, no scheduler): each GEMM run to completion in
/// chunks of `target_ns` (one call, or one dispatch, at [`ONE_CALL`]).
pub(super) struct DirectGemm {
    engine: Box<dyn DynEngine>,
    op: Op,
    target_ns: u64,
    /// `run_chunk` calls so far.
    calls: u64,
    // The buffers live in the partition; both outlive `op`.
    _bufs: [Arc<DeviceBuffer>; 3],
    _partition: Arc<MemoryPartition>,
    _memory: Arc<DeviceMemory>,
}

impl DirectGemm {
    /// Each GEMM in chunks (sub-grids on Vulkan) of `target_ns`: [`ONE_CALL`] for one call (one
    /// dispatch) per GEMM.
    pub(super) fn new(dim: u32, target_ns: u64) -> Result<Self, String> {
        let engine = sched_engine::open(target_ns)?;
        let bytes = u64::from(dim) * u64::from(dim) * 4;
        let memory = DeviceMemory::new(3 * bytes + MIB);
        let reservation = memory.reserve(3 * bytes + MIB).map_err(|e| e.to_string())?;
        let arena = match engine.memory() {
            Some(m) => Some(
                m.create_partition(1, reservation.size())
                    .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        let partition = MemoryPartition::with_arena(1, reservation, arena);
        let alloc = |n| DeviceBuffer::new(&partition, n).map_err(|e| e.to_string());
        let bufs = [alloc(bytes)?, alloc(bytes)?, alloc(bytes)?];
        let op = gemm_op(dim, &bufs);
        Ok(Self {
            engine,
            op,
            target_ns,
            calls: 0,
            _bufs: bufs,
            _partition: partition,
            _memory: memory,
        })
    }

    fn one(&mut self) -> Result<(), String> {
        let mut state = self.engine.new_state();
        loop {
            self.calls += 1;
            let step = self
                .engine
                .run_chunk_dyn(&self.op, &mut state, self.target_ns)
                .map_err(|e| e.to_string())?;
            if step != Step::More {
                return Ok(());
            }
        }
    }

    /// One round of about `seconds`.
    pub(super) fn round(&mut self, seconds: f64) -> Result<Round, String> {
        timed(seconds, &[std::process::id()], || self.one())
    }

    /// Exactly `n` GEMMs.
    pub(super) fn run_jobs(&mut self, n: u64) -> Result<(), String> {
        (0..n).try_for_each(|_| self.one())
    }
}

fn gemm_op(dim: u32, [a, b, c]: &[Arc<DeviceBuffer>; 3]) -> Op {
    Op::GemmF32 {
        m: dim,
        n: dim,
        k: dim,
        alpha: 1.0,
        beta: 0.0,
        a: BufRef::new(a, 0),
        b: BufRef::new(b, 0),
        c: BufRef::new(c, 0),
    }
}

/// The `matrixmultiply` crate's `sgemm`, one call per GEMM, in-process: a reference for the
/// absolute throughput of a well-tuned single-threaded CPU GEMM.
pub(super) fn gemm_matrixmultiply(dim: u32, seconds: f64) -> Result<f64, String> {
    let n = dim as usize;
    let a = vec![0.5f32; n * n];
    let b = vec![0.25f32; n * n];
    let mut c = vec![0f32; n * n];
    let dims = GemmDims { m: n, n, k: n };
    let round = timed(seconds, &[], || {
        gemm_f32_block(dims, (0..n, 0..n), 1.0, &a, &b, 0.0, &mut c).map_err(|e| e.to_string())
    })?;
    std::hint::black_box(&c);
    Ok(round.gflops(dim))
}

/// One vGPU's driver channel (in-process device thread and scheduler), two GEMMs in flight as
/// a guest driver pipelines submissions.
pub(super) struct ChannelGemm {
    dev: Arc<Device>,
    channel: Option<Channel>,
    job: Job,
    tx: mpsc::Sender<Option<(u64, u64)>>,
    rx: mpsc::Receiver<Option<(u64, u64)>>,
    _vgpu: Arc<Vgpu>,
    /// Engine time and chunks of every GEMM counted so far.
    pub(super) run_ns: u64,
    pub(super) chunks: u64,
    pub(super) jobs: u64,
}

impl ChannelGemm {
    /// A device whose engine runs chunks of `chunk_ns` while others have work.
    pub(super) fn new(dim: u32, chunk_ns: u64) -> Result<Self, String> {
        Self::with_config(
            dim,
            DeviceConfig {
                memory_mib: 1024,
                policy: Policy::BestEffort,
                chunk_target_ns: chunk_ns,
                ..DeviceConfig::default()
            },
        )
    }

    /// A device built from `config` (its `chunk_target_ns` also sizes the engine's chunks).
    pub(super) fn with_config(dim: u32, config: DeviceConfig) -> Result<Self, String> {
        let chunk_ns = config.chunk_target_ns;
        let engine = sched_engine::open(chunk_ns)?;
        let dev = Device::with_engine(config, engine).map_err(|e| format!("device: {e}"))?;
        let vgpu = create(&dev, &["vgpu-1q"])?.remove(0);
        let bytes = u64::from(dim) * u64::from(dim) * 4;
        let alloc = |n| vgpu.alloc_buffer(n).map_err(|e| e.to_string());
        let bufs = [alloc(bytes)?, alloc(bytes)?, alloc(bytes)?];
        let job = Job::single(gemm_op(dim, &bufs)).map_err(|e| e.to_string())?;
        let channel = vgpu.create_channel().map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel();
        Ok(Self {
            dev,
            channel: Some(channel),
            job,
            tx,
            rx,
            _vgpu: vgpu,
            run_ns: 0,
            chunks: 0,
            jobs: 0,
        })
    }

    fn submit(&self) -> Result<(), String> {
        let tx = self.tx.clone();
        self.channel
            .as_ref()
            .ok_or("channel closed")?
            .submit_fn(self.job.clone(), move |r| {
                let _ = tx.send(r.ok().map(|r| (r.run_ns, r.chunks)));
            })
            .map_err(|e| e.to_string())
    }

    fn wait(&self) -> Result<(u64, u64), String> {
        self.rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| "GEMM job did not complete".to_string())?
            .ok_or_else(|| "GEMM job failed".to_string())
    }

    /// One round of about `seconds`: two in flight from the start, each completion counted and
    /// replaced; the two still in flight at the end are waited for outside the round.
    pub(super) fn round(&mut self, seconds: f64) -> Result<Round, String> {
        self.submit()?;
        self.submit()?;
        let (mut run_ns, mut chunks) = (0, 0);
        let round = timed(seconds, &[std::process::id()], || {
            let (r, c) = self.wait()?;
            run_ns += r;
            chunks += c;
            self.submit()
        })?;
        self.wait()?;
        self.wait()?;
        self.run_ns += run_ns;
        self.chunks += chunks;
        self.jobs += round.jobs;
        Ok(round)
    }

    /// Exactly `n` GEMMs, two in flight.
    pub(super) fn run_jobs(&mut self, n: u64) -> Result<(), String> {
        let mut posted = n.min(2);
        for _ in 0..posted {
            self.submit()?;
        }
        for _ in 0..n {
            let (run_ns, chunks) = self.wait()?;
            self.run_ns += run_ns;
            self.chunks += chunks;
            self.jobs += 1;
            if posted < n {
                self.submit()?;
                posted += 1;
            }
        }
        Ok(())
    }

    /// Mean engine time (ns) and chunks per counted GEMM.
    pub(super) fn per_job(&self) -> (f64, f64) {
        let n = self.jobs.max(1) as f64;
        (self.run_ns as f64 / n, self.chunks as f64 / n)
    }

    pub(super) fn close(mut self) {
        drop(self.channel.take());
        self.dev.shutdown();
    }
}
/// A real `vgpud` over vhost-user, one context with A, B, C: one GEMM launch (or a few) per
/// fenced SUBMIT_3D, two in flight, each counted when its fenced response is used.
pub(super) struct VhostGemm {
    c: ChannelSession,
    /// The SUBMIT_3D's commands: `per_submit` GEMM launches.
    launch: Vec<ChannelCommand>,
    per_submit: u64,
    req_len: u32,
    /// Request and response guest addresses of the two slots.
    slots: [(u64, u64); 2],
    pid: u32,
    // Dropped last: kills the daemon, then removes its socket directory.
    _daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl VhostGemm {
    /// Starts `bin` (with `extra_args`) serving one `vgpu-64m` and sets up A, B and C. The
    /// daemon's control socket is [`VhostGemm::control_socket`].
    pub(super) fn new(bin: &Path, dim: u32, extra_args: &[&str]) -> Result<Self, String> {
        Self::batched(bin, dim, extra_args, 1)
    }

    /// As [`VhostGemm::new`], with `per_submit` GEMM launches in each fenced SUBMIT_3D (what a
    /// guest program queueing several kernels before it waits sends).
    pub(super) fn batched(
        bin: &Path,
        dim: u32,
        extra_args: &[&str],
        per_submit: u64,
    ) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("vgpu-sched-bench-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let socket = dir.path().join("gpu.sock");
        let log = std::fs::File::create(dir.path().join("vgpud.log")).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("--socket-path")
            .arg(&socket)
            .args(["--type", "vgpu-64m", "--engine", &sched_engine::name()])
            .args(extra_args)
            .arg("--control-socket")
            .arg(dir.path().join("ctl.sock"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn vgpud: {e}"))?;
        let mut daemon = Daemon(child);
        // Generous: under valgrind (`--instructions`) start-up takes many seconds.
        wait_for(
            std::slice::from_ref(&socket),
            &mut daemon.0,
            Duration::from_secs(300),
        )?;
        let pid = daemon.0.id();
        let cfg = FrontendConfig {
            device_features: FrontendConfig::default().device_features | (1 << VIRTIO_GPU_F_VIRGL),
            mem_size: 64 << 20,
            ..FrontendConfig::default()
        };
        let client = GpuClient::connect(&socket, &cfg).map_err(|e| format!("connect: {e}"))?;
        let mut c = ChannelSession::new(client, 1).map_err(|e| format!("context: {e}"))?;
        let cells = (dim as usize) * (dim as usize);
        for (id, v) in [(1, 0.5f32), (2, 0.25), (3, 0.0)] {
            let data: Vec<u8> = std::iter::repeat_n(v.to_le_bytes(), cells)
                .flatten()
                .collect();
            let size = u32::try_from(data.len()).map_err(|_| "buffer too large")?;
            let gpa = c
                .buffer(id, size)
                .map_err(|e| format!("buffer {id}: {e}"))?;
            c.upload(id, gpa, &data)
                .map_err(|e| format!("upload {id}: {e}"))?;
        }
        let gemm = ChannelCommand::Launch(KernelLaunch::GemmF32(GemmF32Args {
            a_res: 1,
            b_res: 2,
            c_res: 3,
            m: dim,
            n: dim,
            k: dim,
            alpha: 1.0,
            beta: 0.0,
        }));
        let per_submit = per_submit.max(1);
        let launch = vec![gemm; per_submit as usize];
        // Every request has the same length (only the fence id differs).
        let (request, _) = c.submit_bytes(&launch).map_err(|e| e.to_string())?;
        let req_len = u32::try_from(request.len()).map_err(|_| "request too large")?;
        let mut slots = [(0, 0); 2];
        for slot in &mut slots {
            let req = c.client.guest_buffer(&request).map_err(|e| e.to_string())?;
            let resp = c
                .client
                .guest_buffer(&[0u8; 64])
                .map_err(|e| e.to_string())?;
            *slot = (req, resp);
        }
        let mut me = Self {
            c,
            launch,
            per_submit,
            req_len,
            slots,
            pid,
            _daemon: daemon,
            _dir: dir,
        };
        // One warm-up GEMM.
        let head = me.post(0)?;
        me.complete(head, 0)?;
        Ok(me)
    }

    /// Posts slot `i`'s request with the next fence id; returns its head.
    fn post(&mut self, i: usize) -> Result<u16, String> {
        let (req, resp) = self.slots[i];
        let (request, _) = self
            .c
            .submit_bytes(&self.launch)
            .map_err(|e| e.to_string())?;
        self.c
            .client
            .conn
            .mem
            .write(req, &request)
            .map_err(|e| e.to_string())?;
        let descs = [
            RawDesc {
                addr: req,
                len: self.req_len,
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
        self.c
            .client
            .post_raw(CTRL_QUEUE, &descs)
            .map_err(|e| e.to_string())
    }

    /// Waits for the next used element, which must be `head` of slot `i`, and checks it.
    fn complete(&mut self, head: u16, i: usize) -> Result<(), String> {
        let used = self
            .c
            .client
            .wait_any(CTRL_QUEUE, Duration::from_secs(30))
            .map_err(|e| format!("fenced GEMM: {e}"))?;
        if used.id != u32::from(head) {
            return Err(format!("response {} out of order (want {head})", used.id));
        }
        let resp = self
            .c
            .client
            .conn
            .mem
            .read_vec(self.slots[i].1, used.len as usize)
            .map_err(|e| e.to_string())?;
        match decode_response(&resp) {
            Some((_, DecodedResponse::OkNoData)) => Ok(()),
            other => Err(format!("GEMM submit: {other:?}")),
        }
    }

    /// One round of about `seconds`, two GEMMs in flight (see [`ChannelGemm::round`]).
    pub(super) fn round(&mut self, seconds: f64) -> Result<Round, String> {
        let mut in_flight = std::collections::VecDeque::new();
        for i in 0..2 {
            in_flight.push_back((self.post(i)?, i));
        }
        let pids = [std::process::id(), self.pid];
        let mut round = timed(seconds, &pids, || {
            let (head, i) = in_flight.pop_front().ok_or("nothing in flight")?;
            self.complete(head, i)?;
            in_flight.push_back((self.post(i)?, i));
            Ok(())
        })?;
        round.jobs *= self.per_submit;
        while let Some((head, i)) = in_flight.pop_front() {
            self.complete(head, i)?;
        }
        Ok(round)
    }
}

impl VhostGemm {
    /// Exactly `n` fenced SUBMIT_3Ds (`n` × `per_submit` GEMMs), two in flight.
    pub(super) fn run_jobs(&mut self, n: u64) -> Result<(), String> {
        let mut in_flight = std::collections::VecDeque::new();
        let mut posted = 0;
        for i in 0..n.min(2) as usize {
            in_flight.push_back((self.post(i)?, i));
            posted += 1;
        }
        while let Some((head, i)) = in_flight.pop_front() {
            self.complete(head, i)?;
            if posted < n {
                in_flight.push_back((self.post(i)?, i));
                posted += 1;
            }
        }
        Ok(())
    }

    /// The daemon's control socket (`vgpud ctl`).
    pub(super) fn control_socket(&self) -> PathBuf {
        self._dir.path().join("ctl.sock")
    }

    /// Stops `vgpud` with SIGTERM and waits up to `timeout` for it to exit on its own (so a
    /// tool it runs under, such as valgrind, writes its output).
    pub(super) fn terminate(mut self, timeout: Duration) -> Result<(), String> {
        let pid = libc::pid_t::try_from(self.pid).map_err(|_| "pid out of range")?;
        // SAFETY: plain kill(2) of our own child, which has not been reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let t0 = Instant::now();
        loop {
            match self._daemon.0.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if t0.elapsed() < timeout => std::thread::sleep(Duration::from_millis(50)),
                Ok(None) => return Err("vgpud did not exit after SIGTERM".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// Median and interquartile range.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Spread {
    pub(super) median: f64,
    pub(super) q1: f64,
    pub(super) q3: f64,
}

/// The `p`-quantile of sorted `v` (linear interpolation).
fn quantile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let at = p * (v.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (at - lo as f64)
}

pub(super) fn spread(mut v: Vec<f64>) -> Spread {
    v.sort_by(f64::total_cmp);
    Spread {
        median: quantile(&v, 0.5),
        q1: quantile(&v, 0.25),
        q3: quantile(&v, 0.75),
    }
}

pub(super) fn median(v: Vec<f64>) -> f64 {
    spread(v).median
}

/// A mediated path against the direct baseline, round by round.
pub(super) struct Paired {
    /// Mediated GFLOP/s per round.
    pub(super) runs: Vec<f64>,
    /// Mediated ÷ direct wall-clock throughput, per pair.
    pub(super) wall: Vec<f64>,
    /// Mediated ÷ direct GFLOP per CPU-second (all threads involved), per pair.
    pub(super) cpu: Vec<f64>,
    /// Voluntary and involuntary context switches per GEMM (all threads involved), per round.
    pub(super) switches: Vec<(f64, f64)>,
}

impl Paired {
    fn new() -> Self {
        Self {
            runs: Vec::new(),
            wall: Vec::new(),
            cpu: Vec::new(),
            switches: Vec::new(),
        }
    }

    fn push(&mut self, dim: u32, direct: &Round, mediated: &Round) {
        self.runs.push(mediated.gflops(dim));
        self.wall
            .push(mediated.gflops(dim) / direct.gflops(dim).max(1e-12));
        self.cpu
            .push(mediated.gflops_per_cpu(dim) / direct.gflops_per_cpu(dim).max(1e-12));
        self.switches.push(mediated.switches_per_job());
    }

    /// Median voluntary and involuntary context switches per GEMM.
    pub(super) fn switches_median(&self) -> (f64, f64) {
        (
            median(self.switches.iter().map(|s| s.0).collect()),
            median(self.switches.iter().map(|s| s.1).collect()),
        )
    }

    /// The CPU-time row's text: ratio, and the context switches per GEMM.
    fn cpu_text(&self) -> String {
        let (v, i) = self.switches_median();
        format!("{}; {v:.2} + {i:.2} switches/GEMM", ratio_text(&self.cpu))
    }

    /// Overhead in throughput: 1 − the median wall-clock ratio.
    pub(super) fn overhead(&self) -> f64 {
        1.0 - median(self.wall.clone())
    }
}

pub(super) struct GemmResult {
    /// The engine driven directly, one call per GEMM: GFLOP/s per round (the baseline).
    pub(super) direct_runs: Vec<f64>,
    /// The direct path again in the same pairs (its second round of each pair against its
    /// first): the noise floor of the pairing itself.
    pub(super) again: Paired,
    /// The engine driven directly in the pieces a lone vGPU's chunk target gives
    /// ([`DEFAULT_SOLO_CHUNK_TARGET_NS`]), no scheduler: what slicing alone costs.
    pub(super) pieces: Paired,
    /// `matrixmultiply`, one call per GEMM (reference), GFLOP/s per round.
    pub(super) reference_runs: Vec<f64>,
    pub(super) channel: Paired,
    /// Through `vgpud` over vhost-user (None when vgpud is not built).
    pub(super) vhost: Option<Paired>,
    /// The same with [`VHOST_BATCH`] GEMMs per SUBMIT_3D.
    pub(super) vhost_batched: Option<Paired>,
    /// Engine time and chunks per GEMM through the channel.
    pub(super) run_ns_per_job: f64,
    pub(super) chunks_per_job: f64,
}

/// The engine directly at one piece target ([`piece_targets`]).
pub(super) struct PieceRun {
    /// µs; 0: one call per GEMM.
    pub(super) target_us: u64,
    /// Median GFLOP/s of the rounds.
    pub(super) gflops: f64,
    /// `run_chunk` calls per GEMM (pieces; on Vulkan a call may queue several).
    pub(super) calls_per_job: f64,
    /// CPU time per GEMM of every thread of this process (the Vulkan driver's included), ms.
    pub(super) cpu_ms_per_job: f64,
    /// Voluntary and involuntary context switches per GEMM.
    pub(super) switches: (f64, f64),
}

/// The engine driven directly at each of `targets_us` (0: one call), in `rounds` interleaved
/// rounds of `secs`.
pub(super) fn piece_targets(
    dim: u32,
    targets_us: &[u64],
    rounds: usize,
    secs: f64,
) -> Result<Vec<PieceRun>, String> {
    let mut paths = targets_us
        .iter()
        .map(|&t| DirectGemm::new(dim, if t == 0 { ONE_CALL } else { t * 1000 }))
        .collect::<Result<Vec<_>, _>>()?;
    for p in &mut paths {
        p.round(0.2)?;
        p.calls = 0;
    }
    let mut done: Vec<Vec<Round>> = vec![Vec::new(); paths.len()];
    for r in 0..rounds {
        // Reverse the order every other round, so no target always follows the same other one.
        let order: Vec<usize> = if r % 2 == 0 {
            (0..paths.len()).collect()
        } else {
            (0..paths.len()).rev().collect()
        };
        for i in order {
            done[i].push(paths[i].round(secs)?);
        }
    }
    Ok(targets_us
        .iter()
        .zip(paths.iter().zip(&done))
        .map(|(&target_us, (p, rounds))| {
            let all = rounds.iter().fold(Round::default(), |acc, r| acc.merged(r));
            let jobs = all.jobs.max(1) as f64;
            PieceRun {
                target_us,
                gflops: median(rounds.iter().map(|r| r.gflops(dim)).collect()),
                calls_per_job: p.calls as f64 / jobs,
                cpu_ms_per_job: all.used.cpu_ns as f64 / 1e6 / jobs,
                switches: all.switches_per_job(),
            }
        })
        .collect())
}

/// GEMM launches per fenced SUBMIT_3D in the batched vhost-user path.
pub(super) const VHOST_BATCH: u64 = 4;

/// Direct, direct in a lone vGPU's pieces, channel, vhost-user (one GEMM per SUBMIT_3D, then
/// [`VHOST_BATCH`]) and direct again, in `pairs` alternating rounds of `secs` each (see the
/// module docs), then `matrixmultiply` (three rounds).
pub(super) fn gemm_overhead(dim: u32, pairs: usize, secs: f64) -> Result<GemmResult, String> {
    let mut direct = DirectGemm::new(dim, ONE_CALL)?;
    let mut pieces = DirectGemm::new(dim, DEFAULT_SOLO_CHUNK_TARGET_NS)?;
    let mut channel = ChannelGemm::new(dim, CHUNK_TARGET_NS as u64)?;
    let (mut vhost, mut batched) = match vgpud_path() {
        Some(bin) => (
            Some(VhostGemm::new(&bin, dim, &[])?),
            Some(VhostGemm::batched(&bin, dim, &[], VHOST_BATCH)?),
        ),
        None => (None, None),
    };
    // Warm-up: the engines' cost models, caches, clocks.
    direct.round(0.2)?;
    pieces.round(0.2)?;
    channel.round(0.2)?;
    for v in vhost.iter_mut().chain(batched.iter_mut()) {
        v.round(0.2)?;
    }
    channel.run_ns = 0;
    channel.chunks = 0;
    channel.jobs = 0;
    let mut direct_runs = Vec::new();
    let (mut again, mut pc, mut ch, mut vh, mut vb) = (
        Paired::new(),
        Paired::new(),
        Paired::new(),
        Paired::new(),
        Paired::new(),
    );
    for pair in 0..pairs {
        // Even pairs run direct, pieces, channel, vhost-user, batched, direct again; odd pairs
        // reverse the middle, so no path always follows the same other one.
        let d = direct.round(secs)?;
        let (p, c, v, b);
        if pair % 2 == 0 {
            p = pieces.round(secs)?;
            c = channel.round(secs)?;
            v = vhost.as_mut().map(|v| v.round(secs)).transpose()?;
            b = batched.as_mut().map(|v| v.round(secs)).transpose()?;
        } else {
            b = batched.as_mut().map(|v| v.round(secs)).transpose()?;
            v = vhost.as_mut().map(|v| v.round(secs)).transpose()?;
            c = channel.round(secs)?;
            p = pieces.round(secs)?;
        }
        let d2 = direct.round(secs)?;
        // The baseline of a pair is its two direct rounds together, which bracket the others.
        let base = d.merged(&d2);
        direct_runs.push(base.gflops(dim));
        again.push(dim, &d, &d2);
        pc.push(dim, &base, &p);
        ch.push(dim, &base, &c);
        if let Some(v) = v {
            vh.push(dim, &base, &v);
        }
        if let Some(b) = b {
            vb.push(dim, &base, &b);
        }
    }
    let (run_ns_per_job, chunks_per_job) = channel.per_job();
    channel.close();
    drop(vhost);
    drop(batched);
    let mut reference_runs = Vec::new();
    for _ in 0..3 {
        reference_runs.push(gemm_matrixmultiply(dim, 0.5)?);
    }
    Ok(GemmResult {
        direct_runs,
        again,
        pieces: pc,
        reference_runs,
        channel: ch,
        vhost: (!vh.wall.is_empty()).then_some(vh),
        vhost_batched: (!vb.wall.is_empty()).then_some(vb),
        run_ns_per_job,
        chunks_per_job,
    })
}

fn pct(ratio: f64) -> String {
    format!("{:+.1}%", (ratio - 1.0) * 100.0)
}

/// "median (IQR q1..q3)" of ratios, as signed percentages against 1.
fn ratio_text(ratios: &[f64]) -> String {
    let s = spread(ratios.to_vec());
    format!("{} (IQR {}..{})", pct(s.median), pct(s.q1), pct(s.q3))
}

/// The rows and JSON of GEMM size number `i` (from 1).
pub(super) fn gemm_rows(i: usize, dim: u32, g: &GemmResult, rows: &mut Vec<Row>) -> Value {
    let direct = median(g.direct_runs.clone());
    let pairs = g.direct_runs.len();
    rows.push(Row::new(
        format!("c{i}d"),
        format!(
            "GEMM {dim}³ f32, the {} engine driven directly, one call (median of {pairs} rounds)",
            sched_engine::name()
        ),
        format!("{direct:.1} GFLOP/s"),
    ));
    let reference = median(g.reference_runs.clone());
    rows.push(Row::new(
        format!("c{i}m"),
        format!("GEMM {dim}³ f32, matrixmultiply sgemm in-process, one call (reference)"),
        format!(
            "{reference:.1} GFLOP/s (direct is {:.0}% of it)",
            direct / reference.max(1e-9) * 100.0
        ),
    ));
    // The rows of one path against direct; `verdict`: the ≤ 3 % target applies to it.
    let mut paired_rows = |id: String, what: String, p: &Paired, verdict: bool| {
        let mut row = Row::new(
            id.clone(),
            format!("{what}, per-pair ratio to direct: median (IQR)"),
            format!(
                "{:.1} GFLOP/s, {}",
                median(p.runs.clone()),
                ratio_text(&p.wall)
            ),
        );
        if verdict {
            // Met only when neither the throughput nor the work per GFLOP says otherwise.
            let overhead = p.overhead().max(1.0 - median(p.cpu.clone()));
            row = row.target(
                format!(
                    "overhead ≤ {:.0}% (this and the next row)",
                    OVERHEAD_TARGET * 100.0
                ),
                overhead <= OVERHEAD_TARGET,
            );
        }
        rows.push(row);
        rows.push(Row::new(
            format!("{id}cpu"),
            format!(
                "{what}, GFLOP per CPU-second (all threads) vs direct; context switches \
                 (voluntary + involuntary)"
            ),
            p.cpu_text(),
        ));
    };
    paired_rows(
        format!("c{i}n"),
        format!("GEMM {dim}³, noise floor: the direct path's 2nd round of each pair vs its 1st"),
        &g.again,
        false,
    );
    paired_rows(
        format!("c{i}p"),
        format!(
            "GEMM {dim}³, the engine directly in a lone vGPU's ~{} µs pieces (no scheduler)",
            DEFAULT_SOLO_CHUNK_TARGET_NS / 1000
        ),
        &g.pieces,
        false,
    );
    paired_rows(
        format!("c{i}"),
        format!(
            "GEMM {dim}³ through one vGPU's channel ({:.1} chunks of {:.0} µs)",
            g.chunks_per_job,
            g.run_ns_per_job / g.chunks_per_job.max(1.0) / 1000.0
        ),
        &g.channel,
        true,
    );
    match (&g.vhost, &g.vhost_batched) {
        (Some(v), Some(b)) => {
            paired_rows(
                format!("c{i}V"),
                format!(
                    "GEMM {dim}³ through vgpud over vhost-user (SUBMIT_3D, 2 fenced in flight)"
                ),
                v,
                true,
            );
            paired_rows(
                format!("c{i}B"),
                format!(
                    "GEMM {dim}³ through vgpud over vhost-user, {VHOST_BATCH} per SUBMIT_3D \
                     (2 fenced in flight)"
                ),
                b,
                false,
            );
        }
        _ => rows.push(Row::new(
            format!("c{i}V"),
            "GEMM through vgpud over vhost-user (SUBMIT_3D)",
            "not measured (vgpud not built)",
        )),
    }
    let paired_json = |p: &Paired| {
        json!({
            "gflops": p.runs, "ratio_wall": p.wall, "ratio_cpu": p.cpu,
            "overhead": p.overhead(), "cpu_overhead": 1.0 - median(p.cpu.clone()),
            "switches_per_gemm": p.switches.iter().map(|s| [s.0, s.1]).collect::<Vec<_>>(),
        })
    };
    json!({
        "dim": dim, "pairs": pairs, "direct_gflops": g.direct_runs,
        "matrixmultiply_gflops": g.reference_runs,
        "noise_floor": paired_json(&g.again),
        "solo_pieces": paired_json(&g.pieces),
        "channel": paired_json(&g.channel),
        "vhost_user": g.vhost.as_ref().map(paired_json),
        "vhost_user_batched": g.vhost_batched.as_ref().map(paired_json),
        "vhost_user_batch": VHOST_BATCH,
        "channel_chunks_per_job": g.chunks_per_job,
        "channel_run_ns_per_job": g.run_ns_per_job,
    })
}
