//! In-process frontends: one thread per VM submitting a workload to its vGPU's channel and
//! recording completion latency and queue wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::driver::{
    BufRef, Channel, DeviceBuffer, DriverError, Job, JobResult, Op, SubmitError, Vgpu, MIB,
};

use super::DemoError;

/// How long a frontend waits for a completion before it rechecks the stop flag.
const POLL: Duration = Duration::from_millis(10);

/// What a VM does with its vGPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Back-to-back 384³ GEMMs, two in flight: always wants the engine.
    HeavyGemm,
    /// 16 MiB axpy then CRC-32C of the result, two in flight: memory-bound streaming.
    Streaming,
    /// One small axpy + reduction at a time with 5 ms think time: latency-sensitive.
    Light,
    /// 256³ GEMMs in 300 ms bursts separated by 300 ms of idling.
    Bursty,
}

impl Workload {
    /// The four workloads, in the order VMs are assigned them.
    pub const ALL: [Workload; 4] = [
        Workload::HeavyGemm,
        Workload::Streaming,
        Workload::Light,
        Workload::Bursty,
    ];

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Workload::HeavyGemm => "gemm-heavy",
            Workload::Streaming => "stream",
            Workload::Light => "light",
            Workload::Bursty => "bursty",
        }
    }

    /// Whether the VM keeps work queued all the time (counts as "busy" for fairness).
    pub fn saturating(self) -> bool {
        matches!(self, Workload::HeavyGemm | Workload::Streaming)
    }

    fn depth(self) -> usize {
        match self {
            Workload::Light => 1,
            _ => 2,
        }
    }

    fn think(self) -> Duration {
        match self {
            Workload::Light => Duration::from_millis(5),
            _ => Duration::ZERO,
        }
    }

    /// Whether the VM submits at `elapsed` since it started.
    fn active(self, elapsed: Duration) -> bool {
        match self {
            Workload::Bursty => (elapsed.as_millis() / 300).is_multiple_of(2),
            _ => true,
        }
    }

    /// Allocates the VM's buffers and builds the job it submits over and over.
    fn build(self, vgpu: &Vgpu) -> Result<(Vec<Arc<DeviceBuffer>>, Job), DemoError> {
        let alloc = |bytes: u64| vgpu.alloc_buffer(bytes).map_err(DemoError::Driver);
        let r = |b: &Arc<DeviceBuffer>| BufRef::new(b, 0);
        let gemm = |dim: u32| -> Result<(Vec<Arc<DeviceBuffer>>, Job), DemoError> {
            let bytes = u64::from(dim) * u64::from(dim) * 4;
            let (a, b, c) = (alloc(bytes)?, alloc(bytes)?, alloc(bytes)?);
            fill_f32(&a, 0.5)?;
            fill_f32(&b, 0.25)?;
            let op = Op::GemmF32 {
                m: dim,
                n: dim,
                k: dim,
                alpha: 1.0,
                beta: 0.0,
                a: r(&a),
                b: r(&b),
                c: r(&c),
            };
            Ok((vec![a, b, c], Job::single(op).map_err(DemoError::Job)?))
        };
        match self {
            Workload::HeavyGemm => {
                let (mut bufs, job) = gemm(384)?;
                // A model's weights: resident memory the VM holds but the job does not touch.
                bufs.push(alloc(96 * MIB)?);
                Ok((bufs, job))
            }
            Workload::Bursty => {
                let (mut bufs, job) = gemm(256)?;
                bufs.push(alloc(32 * MIB)?);
                Ok((bufs, job))
            }
            Workload::Streaming => {
                let n: u64 = 4 << 20;
                let (x, y, out) = (alloc(n * 4)?, alloc(n * 4)?, alloc(4)?);
                fill_f32(&x, 1.0)?;
                let ops = vec![
                    Op::AxpyF32 {
                        n,
                        alpha: 0.5,
                        x: r(&x),
                        y: r(&y),
                    },
                    Op::Crc32c {
                        src: r(&y),
                        len: n * 4,
                        out: r(&out),
                    },
                ];
                Ok((vec![x, y, out], Job::new(ops).map_err(DemoError::Job)?))
            }
            Workload::Light => {
                let n: u64 = 4096;
                let (x, y, out) = (alloc(n * 4)?, alloc(n * 4)?, alloc(4)?);
                fill_f32(&x, 2.0)?;
                let ops = vec![
                    Op::AxpyF32 {
                        n,
                        alpha: 1.0,
                        x: r(&x),
                        y: r(&y),
                    },
                    Op::ReduceSumF32 {
                        n,
                        x: r(&y),
                        out: r(&out),
                    },
                ];
                Ok((vec![x, y, out], Job::new(ops).map_err(DemoError::Job)?))
            }
        }
    }
}

fn fill_f32(buf: &DeviceBuffer, value: f32) -> Result<(), DemoError> {
    let words = usize::try_from(buf.size() / 4).unwrap_or(0);
    let data = vec![value; words];
    buf.write_f32(0, &data)
        .map_err(|e| DemoError::Driver(DriverError::Buffer(e)))
}

/// Samples a frontend records; the monitor drains the per-second window.
#[derive(Debug, Default)]
pub struct Samples {
    /// Jobs completed since the phase started.
    pub completed: u64,
    /// Jobs that failed or were cancelled.
    pub failed: u64,
    /// Submission-to-completion latencies (ns) since the monitor last drained them.
    pub window_latency_ns: Vec<u64>,
    /// Every latency of the phase (ns).
    pub latency_ns: Vec<u64>,
    /// Every queue wait of the phase (ns), as the driver reports it.
    pub wait_ns: Vec<u64>,
}

/// A running frontend thread.
pub struct Frontend {
    samples: Arc<Mutex<Samples>>,
    thread: JoinHandle<Result<(), DemoError>>,
}

impl Frontend {
    /// Starts a thread that submits `workload` to `vgpu` until `stop` is set.
    pub fn spawn(
        vm: usize,
        vgpu: &Arc<Vgpu>,
        workload: Workload,
        stop: &Arc<AtomicBool>,
    ) -> Result<Self, DemoError> {
        let (buffers, job) = workload.build(vgpu)?;
        let channel = vgpu.create_channel().map_err(DemoError::Driver)?;
        let samples = Arc::new(Mutex::new(Samples::default()));
        let shared = Arc::clone(&samples);
        let stop = Arc::clone(stop);
        let thread = std::thread::Builder::new()
            .name(format!("demo-vm{vm}"))
            .spawn(move || {
                let result = drive(channel, &job, workload, &stop, &shared);
                drop(buffers);
                result
            })
            .map_err(DemoError::Thread)?;
        Ok(Self { samples, thread })
    }

    /// The samples (locked).
    pub fn samples(&self) -> MutexGuard<'_, Samples> {
        lock(&self.samples)
    }

    /// Waits for the thread (after the stop flag is set) and returns the phase's samples.
    pub fn join(self) -> Result<Samples, DemoError> {
        self.thread
            .join()
            .map_err(|_| DemoError::FrontendPanicked)??;
        let mut samples = lock(&self.samples);
        Ok(std::mem::take(&mut *samples))
    }
}

fn lock(m: &Mutex<Samples>) -> MutexGuard<'_, Samples> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type Done = (Instant, JobResult);

fn drive(
    channel: Channel,
    job: &Job,
    workload: Workload,
    stop: &AtomicBool,
    samples: &Mutex<Samples>,
) -> Result<(), DemoError> {
    let (tx, rx) = mpsc::channel::<Done>();
    let start = Instant::now();
    let mut in_flight = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if workload.active(start.elapsed()) {
            while in_flight < workload.depth() {
                let tx = tx.clone();
                let submitted = Instant::now();
                match channel.submit_fn(job.clone(), move |r| {
                    let _ = tx.send((submitted, r));
                }) {
                    Ok(()) => in_flight += 1,
                    Err(SubmitError::QueueFull) => break,
                    Err(e) => return Err(DemoError::Submit(e)),
                }
            }
        }
        match rx.recv_timeout(POLL) {
            Ok(done) => {
                in_flight = in_flight.saturating_sub(1);
                record(samples, done);
                let think = workload.think();
                if !think.is_zero() {
                    std::thread::sleep(think);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // Closing the channel cancels queued jobs; the one on the engine finishes. Wait for those
    // completions (not counted: the phase is over) so none outlives it.
    drop(channel);
    let deadline = Instant::now() + Duration::from_secs(2);
    while in_flight > 0 && Instant::now() < deadline {
        if rx.recv_timeout(POLL).is_ok() {
            in_flight -= 1;
        }
    }
    Ok(())
}

fn record(samples: &Mutex<Samples>, (submitted, result): Done) {
    let latency = u64::try_from(submitted.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let mut s = lock(samples);
    match result {
        Ok(report) => {
            s.completed += 1;
            s.window_latency_ns.push(latency);
            s.latency_ns.push(latency);
            s.wait_ns.push(report.queue_wait_ns);
        }
        Err(_) => s.failed += 1,
    }
}
