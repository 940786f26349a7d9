//! What cutting a GEMM into pieces costs the Vulkan engine by itself: the engine driven directly
//! (no device thread, no scheduler) at several piece targets, interleaved, with the CPU time of
//! every thread of this process per GEMM (the driver's queue and worker threads included). On
//! lavapipe this separates the cost of a submission from the mediation's.
//!
//! ```text
//! cargo run --release -p vgpu-backend --example vulkan_pieces -- [DIM] [TARGET_US ...]
//! ```
//!
//! `TARGET_US` 0 means one dispatch per GEMM; the default targets are 0, 1000, 2000, 4000, 8000
//! and 16000 µs.

use std::collections::HashMap;
use std::time::Instant;

use vgpu_backend::driver::engine::{DynEngine, EngineChoice, Step};
use vgpu_backend::driver::{BufRef, DeviceBuffer, DeviceMemory, MemoryPartition, Op, MIB};

/// One piece target with its engine and buffers.
struct Case {
    target_ns: u64,
    engine: Box<dyn DynEngine>,
    op: Op,
    _bufs: Vec<std::sync::Arc<DeviceBuffer>>,
    _partition: std::sync::Arc<MemoryPartition>,
    _memory: std::sync::Arc<DeviceMemory>,
}

/// CPU time (ns) of every thread of this process, by "name:tid".
fn thread_cpu() -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let tid = entry.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(entry.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        out.insert(format!("{}:{tid}", comm.trim()), ns);
    }
    out
}

fn open(dim: u32, target_us: u64) -> Result<Case, String> {
    let target_ns = if target_us == 0 {
        1 << 40
    } else {
        target_us * 1000
    };
    let choice: EngineChoice = "vulkan".parse()?;
    let engine = choice
        .open(
            target_ns,
            vgpu_backend::driver::engine::vulkan::DEFAULT_LOOP_BUDGET,
        )
        .map_err(|e| format!("vulkan engine: {e}"))?;
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
    let bufs = (0..3)
        .map(|_| DeviceBuffer::new(&partition, bytes).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let op = Op::GemmF32 {
        m: dim,
        n: dim,
        k: dim,
        alpha: 1.0,
        beta: 0.0,
        a: BufRef::new(&bufs[0], 0),
        b: BufRef::new(&bufs[1], 0),
        c: BufRef::new(&bufs[2], 0),
    };
    Ok(Case {
        target_ns,
        engine,
        op,
        _bufs: bufs,
        _partition: partition,
        _memory: memory,
    })
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let dim: u32 = match args.next() {
        Some(v) => v.parse().map_err(|_| format!("bad DIM {v:?}"))?,
        None => 256,
    };
    let mut targets = args
        .map(|v| v.parse().map_err(|_| format!("bad TARGET_US {v:?}")))
        .collect::<Result<Vec<u64>, _>>()?;
    if targets.is_empty() {
        targets = vec![0, 1000, 2000, 4000, 8000, 16000];
    }
    let mut cases = targets
        .iter()
        .map(|&t| open(dim, t))
        .collect::<Result<Vec<_>, _>>()?;
    let flop = 2.0 * f64::from(dim).powi(3);
    // results[case] = (GFLOP/s per round, pieces per GEMM, CPU ms per GEMM by thread kind)
    let mut results: Vec<(Vec<f64>, f64, HashMap<&'static str, f64>)> =
        vec![(Vec::new(), 0.0, HashMap::new()); cases.len()];
    for _round in 0..3 {
        for (i, case) in cases.iter_mut().enumerate() {
            let before = thread_cpu();
            let start = Instant::now();
            let (mut jobs, mut pieces) = (0u64, 0u64);
            while start.elapsed().as_secs_f64() < 1.5 {
                let mut state = case.engine.new_state();
                loop {
                    pieces += 1;
                    let step = case
                        .engine
                        .run_chunk_dyn(&case.op, &mut state, case.target_ns)
                        .map_err(|e| e.to_string())?;
                    if step != Step::More {
                        break;
                    }
                }
                jobs += 1;
            }
            let secs = start.elapsed().as_secs_f64();
            let after = thread_cpu();
            let r = &mut results[i];
            r.0.push(flop * jobs as f64 / secs / 1e9);
            r.1 = pieces as f64 / jobs as f64;
            let mut busiest: Vec<(String, u64)> = after
                .iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
                .collect();
            busiest.sort_by_key(|(_, ns)| std::cmp::Reverse(*ns));
            // The two busiest threads are the driver's compute workers on a 2-core host; the
            // rest is per-submission work (this thread, the driver's queue thread, ...).
            let workers: u64 = busiest.iter().take(2).map(|(_, ns)| ns).sum();
            let rest: u64 = busiest.iter().skip(2).map(|(_, ns)| ns).sum();
            *r.2.entry("busiest two").or_default() += workers as f64 / 1e6 / jobs as f64 / 3.0;
            *r.2.entry("other threads").or_default() += rest as f64 / 1e6 / jobs as f64 / 3.0;
        }
    }
    let base = median(&results[0].0);
    println!("GEMM {dim}³ on the Vulkan engine, driven directly; median of 3 interleaved rounds");
    println!(
        "target        GFLOP/s  vs first  calls/GEMM  CPU ms/GEMM: busiest two threads / others"
    );
    for (t, (runs, calls, cpu)) in targets.iter().zip(&results) {
        let g = median(runs);
        let target = if *t == 0 {
            "one dispatch".to_string()
        } else {
            format!("{t} µs")
        };
        println!(
            "{target:<13} {g:>7.3}  {:>+7.1}%  {calls:>10.1}  {:.2} / {:.2}",
            (g / base - 1.0) * 100.0,
            cpu.get("busiest two").copied().unwrap_or(0.0),
            cpu.get("other threads").copied().unwrap_or(0.0),
        );
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
