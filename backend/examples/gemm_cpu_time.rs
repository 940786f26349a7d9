//! The CPU engine's GEMM measured in thread CPU time, which a loaded host disturbs far less than
//! wall-clock time: the engine's kernel in one call, `matrixmultiply` in one call, and the engine
//! driven directly (no scheduler) in ~100 µs chunks and in one chunk. Best and median of the
//! repetitions, which are interleaved.
//!
//! ```text
//! cargo run --release -p vgpu-backend --example gemm_cpu_time -- [DIM] [REPS]
//! ```

use vgpu_backend::driver::engine::cpu::{gemm, CpuEngine, CpuOpState};
use vgpu_backend::driver::engine::{Engine, Step};
use vgpu_backend::driver::kernels::{gemm_f32_block, GemmDims};
use vgpu_backend::driver::{BufRef, DeviceBuffer, DeviceMemory, MemoryPartition, Op, MIB};

/// CPU time of the calling thread, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dim: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(512);
    let reps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let n = dim.max(1);
    let a = vec![0.5f32; n * n];
    let b = vec![0.25f32; n * n];
    let mut c = vec![0f32; n * n];
    let d = GemmDims { m: n, n, k: n };
    let bytes = (n * n * 4) as u64;
    let mem = DeviceMemory::new(3 * bytes + MIB);
    let reservation = mem.reserve(3 * bytes + MIB).expect("reserve");
    let part = MemoryPartition::with_arena(1, reservation, None);
    let buf = || DeviceBuffer::new(&part, bytes).expect("buffer");
    let (ab, bb, cb) = (buf(), buf(), buf());
    ab.write_f32(0, &a).expect("write A");
    bb.write_f32(0, &b).expect("write B");
    let op = Op::GemmF32 {
        m: n as u32,
        n: n as u32,
        k: n as u32,
        alpha: 1.0,
        beta: 0.0,
        a: BufRef::new(&ab, 0),
        b: BufRef::new(&bb, 0),
        c: BufRef::new(&cb, 0),
    };
    let mut engine = CpuEngine::new(100_000);
    let names = [
        "engine kernel, one call",
        "matrixmultiply, one call",
        "engine, ~100 µs chunks",
        "engine, one chunk",
    ];
    let mut times: [Vec<f64>; 4] = Default::default();
    for _ in 0..reps.max(1) {
        let t = thread_cpu_seconds();
        gemm::gemm_f32(d, 1.0, &a, &b, 0.0, &mut c).expect("gemm");
        times[0].push(thread_cpu_seconds() - t);
        let t = thread_cpu_seconds();
        gemm_f32_block(d, (0..n, 0..n), 1.0, &a, &b, 0.0, &mut c).expect("sgemm");
        times[1].push(thread_cpu_seconds() - t);
        for (i, target) in [(2, 100_000u64), (3, 1u64 << 40)] {
            let mut state = CpuOpState::default();
            let t = thread_cpu_seconds();
            while engine.run_chunk(&op, &mut state, target).expect("chunk") == Step::More {}
            times[i].push(thread_cpu_seconds() - t);
        }
    }
    let flops = 2.0 * (n as f64).powi(3);
    println!(
        "GEMM {n}³ f32, {} kernel, {reps} repetitions, thread CPU time",
        gemm::Isa::detect().name()
    );
    for (name, mut v) in names.into_iter().zip(times) {
        v.sort_by(f64::total_cmp);
        println!(
            "  {name:26} best {:6.1} GFLOP/s   median {:6.1} GFLOP/s",
            flops / v[0] / 1e9,
            flops / v[v.len() / 2] / 1e9
        );
    }
}
