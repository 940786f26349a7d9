//! `vgpu-kernel-bench`: what a guest kernel that loops forever costs its neighbour. One `vgpud`
//! on the Vulkan engine, equal-share, two vGPUs. A light vGPU submits small fenced AXPY jobs and
//! times each round trip, three times: alone, beside a neighbour running legitimate heavy work
//! (GEMM 256³ launches back to back), and beside a hostile neighbour launching a `while (true)`
//! guest kernel back to back (each launch fails at the loop budget). A program, not a test:
//! nothing here asserts on timing.
//!
//! ```text
//! cargo build --release -p vgpu-backend -p vgpu-tests --bins
//! VGPUD=target/release/vgpud target/release/vgpu-kernel-bench [--seconds S] [--loop-budget N] [--json]
//! ```

#[path = "../bench/stats.rs"]
#[allow(
    dead_code,
    reason = "shared with the other benchmarks; this one uses percentiles only"
)]
mod stats;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stats::Samples;
use vgpu_protocol::channel::{
    AxpyF32Args, BindCmd, DispatchCmd, GemmF32Args, KernelLaunch, ModuleLoadCmd,
};
use vgpu_protocol::virtio_gpu::VIRTIO_GPU_F_VIRGL;
use vgpu_protocol::{ChannelCommand, DecodedResponse};
use vgpu_tests::channel::ChannelSession;
use vgpu_tests::connection::FrontendConfig;
use vgpu_tests::{Backend, BackendKind, GpuClient};

const FOREVER: &[u8] = include_bytes!("../../../backend/src/driver/spirv/testdata/forever.spv");
const USAGE: &str = "usage: vgpu-kernel-bench [--seconds S] [--loop-budget N] [--json]";

/// What the neighbour does during a phase.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Neighbour {
    Idle,
    Gemm,
    Forever,
}

impl Neighbour {
    fn name(self) -> &'static str {
        match self {
            Neighbour::Idle => "idle",
            Neighbour::Gemm => "GEMM 256³ back to back",
            Neighbour::Forever => "while(true) kernel back to back",
        }
    }
}

/// One phase's figures.
struct Phase {
    neighbour: Neighbour,
    light: Samples,
    /// Neighbour submits completed, ok and failed, and its mean round trip.
    done: u64,
    failed: u64,
    mean_ms: f64,
    last_failure: String,
}

fn connect(path: &std::path::Path) -> Result<ChannelSession, String> {
    let cfg = FrontendConfig {
        device_features: FrontendConfig::default().device_features | (1 << VIRTIO_GPU_F_VIRGL),
        ..Default::default()
    };
    let client = GpuClient::connect(path, &cfg).map_err(|e| format!("connect: {e}"))?;
    ChannelSession::new(client, 1).map_err(|e| format!("context: {e}"))
}

fn e<T: std::fmt::Display>(what: &'static str) -> impl Fn(T) -> String {
    move |err| format!("{what}: {err}")
}

/// Runs the neighbour's loop until `stop`; returns (done, failed, mean ms, last failure).
fn neighbour(
    mut s: ChannelSession,
    what: Neighbour,
    stop: Arc<AtomicBool>,
) -> Result<(u64, u64, f64, String), String> {
    let st_gpa = s.buffer(9, 4096).map_err(e("stats buffer"))?;
    let job: Vec<ChannelCommand> = match what {
        Neighbour::Idle => return Ok((0, 0, 0.0, String::new())),
        Neighbour::Gemm => {
            let n = 256u32;
            for id in 1..=3 {
                s.buffer(id, n * n * 4).map_err(e("gemm buffer"))?;
            }
            vec![ChannelCommand::Launch(KernelLaunch::GemmF32(GemmF32Args {
                a_res: 1,
                b_res: 2,
                c_res: 3,
                m: n,
                n,
                k: n,
                alpha: 1.0,
                beta: 0.0,
            }))]
        }
        Neighbour::Forever => {
            let gpa = s.buffer(1, 64 << 10).map_err(e("module buffer"))?;
            s.buffer(2, 64 << 10).map_err(e("out buffer"))?;
            s.upload(1, gpa, FOREVER).map_err(e("upload"))?;
            let load = ModuleLoadCmd::new(1, 1, 0, FOREVER.len() as u64, "main");
            let setup = [
                ChannelCommand::ModuleLoad(load),
                ChannelCommand::Bind(BindCmd {
                    slot: 0,
                    res: 2,
                    offset: 0,
                    size: 64 << 10,
                }),
            ];
            match s.submit(&setup).map_err(e("load"))? {
                DecodedResponse::OkNoData => {}
                other => return Err(format!("module load refused: {other:?}")),
            }
            vec![ChannelCommand::Dispatch(DispatchCmd::new(1, [64, 1, 1]))]
        }
    };
    let (mut done, mut failed) = (0u64, 0u64);
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match s.submit(&job).map_err(e("neighbour submit"))? {
            DecodedResponse::OkNoData => done += 1,
            _ => failed += 1,
        }
    }
    let n = (done + failed).max(1);
    let mean_ms = started.elapsed().as_secs_f64() * 1e3 / n as f64;
    let stats = s.stats(9, st_gpa).map_err(e("stats"))?;
    Ok((done, failed, mean_ms, stats.failure().as_str().to_string()))
}

/// Light jobs for `seconds` while the neighbour does `what`.
fn phase(
    light: &mut ChannelSession,
    sock_b: &std::path::Path,
    what: Neighbour,
    seconds: f64,
) -> Result<Phase, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let session = connect(sock_b)?;
    let flag = Arc::clone(&stop);
    let worker = std::thread::spawn(move || neighbour(session, what, flag));
    // Let the neighbour get going before timing.
    std::thread::sleep(Duration::from_millis(300));
    let axpy = [ChannelCommand::Launch(KernelLaunch::AxpyF32(AxpyF32Args {
        x_res: 1,
        y_res: 2,
        n: 16 << 10,
        alpha: 0.5,
    }))];
    let mut samples = Samples::with_capacity(100_000);
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < until {
        let t = Instant::now();
        match light.submit(&axpy).map_err(e("light submit"))? {
            DecodedResponse::OkNoData => samples.push(t.elapsed()),
            other => return Err(format!("light job failed: {other:?}")),
        }
        // A light vGPU: one small job every ~2 ms.
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    let (done, failed, mean_ms, last_failure) = worker
        .join()
        .map_err(|_| "neighbour thread panicked".to_string())??;
    Ok(Phase {
        neighbour: what,
        light: samples,
        done,
        failed,
        mean_ms,
        last_failure,
    })
}

fn main() -> ExitCode {
    let mut seconds = 5.0;
    let mut budget = String::from("65536");
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => match args.next().and_then(|v| v.parse::<f64>().ok()) {
                Some(s) if s > 0.0 && s <= 600.0 => seconds = s,
                _ => {
                    eprintln!("--seconds needs a number in (0, 600]\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--loop-budget" => match args.next() {
                Some(v) => budget = v,
                None => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--json" => json = true,
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    match run(seconds, &budget, json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vgpu-kernel-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(seconds: f64, budget: &str, json: bool) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(e("tempdir"))?;
    let sock_b = dir.path().join("b.sock");
    let spec = format!("socket={},type=vgpu-512m", sock_b.display());
    let args = [
        "--engine",
        "vulkan",
        "--policy",
        "equal-share",
        "--type",
        "vgpu-512m",
        "--vgpu",
        &spec,
        "--loop-budget",
        budget,
    ];
    let mut backend = Backend::spawn(BackendKind::Vgpud, &args).map_err(e("start vgpud"))?;
    backend
        .wait_listening(Duration::from_secs(30))
        .map_err(e("vgpud"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock_b.exists() {
        if Instant::now() > deadline {
            return Err("the second vGPU's socket never appeared".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut light = connect(backend.socket())?;
    let x = light.buffer(1, 64 << 10).map_err(e("x"))?;
    light.buffer(2, 64 << 10).map_err(e("y"))?;
    light.upload(1, x, &[0x3f; 64 << 10]).map_err(e("upload"))?;
    let mut phases = Vec::new();
    for what in [Neighbour::Idle, Neighbour::Gemm, Neighbour::Forever] {
        if !json {
            eprintln!("vgpu-kernel-bench: neighbour {}", what.name());
        }
        phases.push(phase(&mut light, &sock_b, what, seconds)?);
    }
    let base_p99 = phases
        .first_mut()
        .map_or(1, |p| p.light.percentile_ns(99.0))
        .max(1) as f64;
    if json {
        let rows: Vec<serde_json::Value> = phases
            .iter_mut()
            .map(|p| {
                serde_json::json!({
                    "neighbour": p.neighbour.name(),
                    "light_jobs": p.light.len(),
                    "light_p50_ms": p.light.median_ns() as f64 / 1e6,
                    "light_p99_ms": p.light.percentile_ns(99.0) as f64 / 1e6,
                    "light_max_ms": p.light.percentile_ns(100.0) as f64 / 1e6,
                    "neighbour_ok": p.done,
                    "neighbour_failed": p.failed,
                    "neighbour_mean_ms": p.mean_ms,
                    "neighbour_last_failure": p.last_failure,
                })
            })
            .collect();
        let doc = serde_json::json!({ "loop_budget": budget, "phases": rows });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        println!(
            "light vGPU: AXPY 16 Ki floats every 2 ms, fenced round trip; Vulkan engine, \
             equal-share, loop budget {budget}, {seconds} s per row"
        );
        println!(
            "{:<34} {:>6} {:>9} {:>9} {:>9} {:>9} | {:>8} {:>8} {:>9}  last failure",
            "neighbour", "jobs", "p50 ms", "p99 ms", "max ms", "p99 ×", "nb ok", "nb fail", "nb ms"
        );
        for p in &mut phases {
            let p99 = p.light.percentile_ns(99.0);
            println!(
                "{:<34} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.2} | {:>8} {:>8} {:>9.2}  {}",
                p.neighbour.name(),
                p.light.len(),
                p.light.median_ns() as f64 / 1e6,
                p99 as f64 / 1e6,
                p.light.percentile_ns(100.0) as f64 / 1e6,
                p99 as f64 / base_p99,
                p.done,
                p.failed,
                p.mean_ms,
                p.last_failure
            );
        }
    }
    Ok(())
}
