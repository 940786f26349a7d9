//! `--engine` of `vgpu-sched-bench`: which engine every section runs on, and the per-kernel
//! throughput of (e).

use std::sync::OnceLock;

use vgpu_backend::driver::engine::{DynEngine, EngineChoice};

use super::*;

static ENGINE: OnceLock<(String, EngineChoice)> = OnceLock::new();

/// Selects the engine (`--engine`).
pub(super) fn select(text: &str) -> Result<(), String> {
    let choice: EngineChoice = text.parse()?;
    ENGINE
        .set((text.to_string(), choice))
        .map_err(|_| "--engine given twice".to_string())
}

/// The `--engine` text ("cpu" by default).
pub(super) fn name() -> String {
    ENGINE
        .get()
        .map_or_else(|| "cpu".into(), |(t, _)| t.clone())
}

/// Opens the selected engine with chunks of `chunk_ns` while others have work.
pub(super) fn open(chunk_ns: u64) -> Result<Box<dyn DynEngine>, String> {
    let choice = ENGINE.get().map(|(_, c)| c.clone()).unwrap_or_default();
    choice
        .open(
            chunk_ns,
            vgpu_backend::driver::engine::vulkan::DEFAULT_LOOP_BUDGET,
        )
        .map_err(|e| format!("engine {}: {e}", name()))
}

/// One kernel's throughput.
pub(super) struct KernelRate {
    pub(super) kernel: &'static str,
    pub(super) what: String,
    pub(super) rate: f64,
    pub(super) unit: &'static str,
}

/// Per-kernel throughput through one vGPU's channel (jobs back to back, two in flight, ~2 s).
pub(super) fn kernels() -> Result<Vec<KernelRate>, String> {
    let dev = device(Policy::BestEffort, 1024)?;
    let vgpu = create(&dev, &["vgpu-1q"])?.remove(0);
    let elems: u64 = 16 << 20;
    let alloc = |n| vgpu.alloc_buffer(n).map_err(|e| e.to_string());
    let (x, y, out) = (alloc(elems * 4)?, alloc(elems * 4)?, alloc(64)?);
    let g = 512u32;
    let gb = u64::from(g) * u64::from(g) * 4;
    let (a, b, c) = (alloc(gb)?, alloc(gb)?, alloc(gb)?);
    let cases: Vec<(&'static str, String, Op, f64, &'static str)> = vec![
        (
            "gemm_f32",
            format!("GEMM {g}³ f32"),
            Op::GemmF32 {
                m: g,
                n: g,
                k: g,
                alpha: 1.0,
                beta: 0.0,
                a: BufRef::new(&a, 0),
                b: BufRef::new(&b, 0),
                c: BufRef::new(&c, 0),
            },
            2.0 * f64::from(g).powi(3) / 1e9,
            "GFLOP/s",
        ),
        (
            "axpy_f32",
            "AXPY 16 Mi f32".into(),
            Op::AxpyF32 {
                n: elems,
                alpha: 0.5,
                x: BufRef::new(&x, 0),
                y: BufRef::new(&y, 0),
            },
            (elems * 12) as f64 / 1e9,
            "GB/s",
        ),
        (
            "reduce_sum_f32",
            "REDUCE_SUM 16 Mi f32".into(),
            Op::ReduceSumF32 {
                n: elems,
                x: BufRef::new(&x, 0),
                out: BufRef::new(&out, 0),
            },
            (elems * 4) as f64 / 1e9,
            "GB/s",
        ),
        (
            "crc32c",
            "CRC32C 64 MiB".into(),
            Op::Crc32c {
                src: BufRef::new(&x, 0),
                len: elems * 4,
                out: BufRef::new(&out, 8),
            },
            (elems * 4) as f64 / 1e9,
            "GB/s",
        ),
    ];
    let channel = vgpu.create_channel().map_err(|e| e.to_string())?;
    let mut rates = Vec::new();
    for (kernel, what, op, per_job, unit) in cases {
        let job = Job::single(op).map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel();
        let submit = |tx: &mpsc::Sender<bool>| {
            let tx = tx.clone();
            channel
                .submit_fn(job.clone(), move |r| {
                    let _ = tx.send(r.is_ok());
                })
                .map_err(|e| e.to_string())
        };
        submit(&tx)?;
        submit(&tx)?;
        let t0 = Instant::now();
        let mut jobs = 0u64;
        while t0.elapsed().as_secs_f64() < 2.0 {
            let ok = rx
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| format!("{kernel} job did not complete"))?;
            if !ok {
                return Err(format!("{kernel} job failed"));
            }
            jobs += 1;
            submit(&tx)?;
        }
        let secs = t0.elapsed().as_secs_f64();
        // Drain the two still in flight before the next kernel.
        for _ in 0..2 {
            let _ = rx.recv_timeout(Duration::from_secs(60));
        }
        rates.push(KernelRate {
            kernel,
            what,
            rate: per_job * jobs as f64 / secs,
            unit,
        });
    }
    drop(channel);
    dev.shutdown();
    Ok(rates)
}
