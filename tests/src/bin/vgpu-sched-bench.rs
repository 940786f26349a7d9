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
//! - (c) mediation overhead: 256³, 512³ and 1024³ f32 GEMM with the engine driven directly (one
//!   call per GEMM: the baseline), through one vGPU's driver channel and through a real `vgpud`
//!   over vhost-user (one fenced SUBMIT_3D per GEMM, two in flight; needs the release `vgpud`),
//!   in alternating rounds, each mediated round divided by the direct rounds of its pair (median
//!   and interquartile range of the ratios, in wall-clock throughput and in GFLOP per
//!   CPU-second). Two more paths run in the same pairs: the engine directly in the pieces a lone
//!   vGPU's 1 ms chunk target gives (what slicing alone costs, with no scheduler) and the direct
//!   path against itself (the noise floor of the pairing); and, for reference, vhost-user with
//!   four GEMMs per SUBMIT_3D (the per-submission notifications spread over four GEMMs). Then `matrixmultiply` in-process (a
//!   reference for absolute throughput). `--instructions` counts (c) in instructions under
//!   valgrind's callgrind instead (see `bench/sched_instr.rs`): the work the mediation adds,
//!   which a noisy host does not disturb.
//! - (d) `vgpud` RSS with 64 `--vgpu` sockets of `vgpu-64m` (its `max_instances`; 64 × 64 MiB
//!   fills the default 4096 MiB), before and after 64 idle test frontends connect.
//! - (e) per-kernel throughput through one vGPU's channel on the selected engine.
//!
//! `--engine cpu|vulkan[:INDEX|:NAME]` (default cpu) runs every section on that engine (the
//! in-process devices and the spawned `vgpud`); "direct" in (c) is the engine driven with no
//! scheduler: one call of the CPU engine's kernel or one dispatch on Vulkan per GEMM (and, in
//! the pieces line, ~1 ms chunks or sub-grids).
//! Busy time, and so the fairness shares, is device time measured by timestamp queries there.

#[path = "../bench/sched_engine.rs"]
mod sched_engine;
#[path = "../bench/sched_gemm.rs"]
mod sched_gemm;
#[path = "../bench/sched_instr.rs"]
mod sched_instr;
#[path = "../bench/sched_rss.rs"]
mod sched_rss;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vgpu_backend::demo::metrics;
use vgpu_backend::demo::workload::{Frontend, Workload};
use vgpu_backend::driver::kernels::{gemm_f32_block, GemmDims};
use vgpu_backend::driver::{BufRef, Device, DeviceConfig, Job, Op, Policy, Uuid, Vgpu};
use vgpu_protocol::channel::GemmF32Args;
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{decode_response, ChannelCommand, DecodedResponse, KernelLaunch};
use vgpu_tests::connection::CTRL_QUEUE;
use vgpu_tests::vring::{Link, RawDesc, VRING_DESC_F_WRITE};
use vgpu_tests::{FrontendConfig, GpuClient};

use sched_gemm::gemm_overhead;
use sched_rss::{rss, vgpud_path};

const USAGE: &str = "usage: vgpu-sched-bench [--json] [--skip-rss] [--windows N] [--engine E]
  --json       print the results as JSON instead of a table
  --skip-rss   leave out (d), the vgpud RSS measurement
  --only S     run only these sections, e.g. --only ad (default abcde)
  --engine E   cpu (default), vulkan, vulkan:INDEX or vulkan:NAME
  --windows N  1 s fairness windows per policy (default 4)
  --pairs N    (c): pairs of direct/pieces/channel/vhost-user(/×4)/direct rounds per GEMM size (default 9)
  --round S    (c): seconds per round (default 0.4)
  --dims LIST  (c): GEMM sizes, e.g. 512,1024 (default 256,512,1024)
  --piece-targets LIST  the engine driven directly (no scheduler) with each GEMM cut into pieces
               of these targets in µs, 0 for one call, e.g. 0,1000,4000,16000: throughput, calls,
               CPU time and context switches per GEMM (--dims default 256; --pairs rounds
               of --round s, interleaved)
  --instructions  (c) in instructions instead of time: every path under valgrind's callgrind
               (CPU engine; needs valgrind; --dims default 256,512), the work the mediation
               adds per GEMM at native chunking (about 5 minutes)
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
/// The engine's chunk target (ns) while other vGPUs have work.
const CHUNK_TARGET_NS: f64 = 100_000.0;

struct Args {
    json: bool,
    /// Sections to run, from "abcd".
    only: String,
    windows: u32,
    /// Alternating rounds of (c) per GEMM size.
    pairs: usize,
    /// Seconds per round of (c).
    round_secs: f64,
    /// GEMM sizes given with `--dims` (each mode has its own default).
    dims: Option<Vec<u32>>,
    /// (c) counted in instructions under callgrind instead of timed.
    instructions: bool,
    /// The child side of `--instructions`: run exactly this many GEMMs (`PATH:DIM:N`).
    gemm_jobs: Option<String>,
    /// `--piece-targets`: the engine directly at these piece targets (µs; 0: one call).
    piece_targets: Option<Vec<u64>>,
}

impl Args {
    /// The GEMM sizes from `--dims`, else `default`.
    fn dims_or<'a>(&'a self, default: &'a [u32]) -> &'a [u32] {
        self.dims.as_deref().unwrap_or(default)
    }
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut out = Args {
        json: false,
        only: "abcde".into(),
        windows: 4,
        pairs: 9,
        round_secs: 0.4,
        dims: None,
        instructions: false,
        gemm_jobs: None,
        piece_targets: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => out.json = true,
            "--skip-rss" => out.only.retain(|c| c != 'd'),
            "--engine" => {
                let v = it.next().ok_or("--engine needs a value")?;
                sched_engine::select(v)?;
            }
            "--only" => {
                let v = it.next().ok_or("--only needs a value")?;
                if v.is_empty() || !v.chars().all(|c| "abcde".contains(c)) {
                    return Err(format!("bad --only {v:?} (letters from abcde)"));
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
            "--pairs" => {
                let v = it.next().ok_or("--pairs needs a value")?;
                out.pairs = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=200).contains(n))
                    .ok_or_else(|| format!("bad --pairs {v:?}"))?;
            }
            "--round" => {
                let v = it.next().ok_or("--round needs a value")?;
                out.round_secs = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| (0.05..=10.0).contains(s))
                    .ok_or_else(|| format!("bad --round {v:?}"))?;
            }
            "--dims" => {
                let v = it.next().ok_or("--dims needs a value")?;
                out.dims = Some(
                    v.split(',')
                        .map(|d| d.parse().ok().filter(|d| (16..=4096).contains(d)))
                        .collect::<Option<Vec<u32>>>()
                        .ok_or_else(|| format!("bad --dims {v:?}"))?,
                );
            }
            "--instructions" => out.instructions = true,
            "--piece-targets" => {
                let v = it.next().ok_or("--piece-targets needs a value")?;
                out.piece_targets = Some(
                    v.split(',')
                        .map(|t| t.parse().ok().filter(|t| *t <= 1_000_000))
                        .collect::<Option<Vec<u64>>>()
                        .ok_or_else(|| format!("bad --piece-targets {v:?}"))?,
                );
            }
            "--gemm-jobs" => {
                let v = it.next().ok_or("--gemm-jobs needs a value")?;
                out.gemm_jobs = Some(v.clone());
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
    let config = DeviceConfig {
        memory_mib,
        policy,
        ..DeviceConfig::default()
    };
    let engine = sched_engine::open(config.chunk_target_ns)?;
    Device::with_engine(config, engine).map_err(|e| format!("device: {e}"))
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

    let mut gemm_json = Vec::new();
    let dims: &[u32] = if args.only.contains('c') {
        args.dims_or(&GEMM_DIMS)
    } else {
        &[]
    };
    for (i, &dim) in dims.iter().enumerate() {
        say(&format!(
            "(c) GEMM {dim}³: {} alternating rounds of {} s",
            args.pairs, args.round_secs
        ));
        let g = gemm_overhead(dim, args.pairs, args.round_secs)?;
        gemm_json.push(sched_gemm::gemm_rows(i + 1, dim, &g, &mut rows));
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
    if args.only.contains('e') {
        say("(e) per-kernel throughput through one vGPU's channel");
        let kernels = sched_engine::kernels()?;
        for k in &kernels {
            rows.push(Row::new(
                format!("e-{}", k.kernel),
                format!("{} through the channel ({})", k.what, sched_engine::name()),
                format!("{:.2} {}", k.rate, k.unit),
            ));
        }
        doc.insert(
            "kernels".into(),
            Value::Array(
                kernels
                    .iter()
                    .map(|k| json!({"kernel": k.kernel, "rate": k.rate, "unit": k.unit}))
                    .collect(),
            ),
        );
    }
    doc.insert("engine".into(), json!(sched_engine::name()));
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

/// The result of a mode of its own (`--instructions`, `--piece-targets`): JSON under `key`, or
/// the table and the runtime.
fn print_mode(
    json: bool,
    key: &str,
    out: Vec<Value>,
    rows: &[Row],
    t_start: Instant,
) -> Result<(), String> {
    if json {
        let doc = json!({ key: out });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
        );
    } else {
        print_table(rows);
        println!("runtime {:.1} s", t_start.elapsed().as_secs_f64());
    }
    Ok(())
}

/// `--instructions`: (c) counted in instructions (see `sched_instr`).
fn instructions(args: &Args) -> Result<(), String> {
    let t_start = Instant::now();
    let mut rows = Vec::new();
    let mut out = Vec::new();
    // 1024³ takes over a minute per GEMM under callgrind: only on request.
    let dims = args.dims_or(&GEMM_DIMS[..2]);
    for (i, &dim) in dims.iter().enumerate() {
        let n = sched_instr::default_counts(dim);
        if !args.json {
            eprintln!(
                "… (c) GEMM {dim}³ in instructions: each path with {} and {} GEMMs under callgrind",
                n.0, n.1
            );
        }
        let r = sched_instr::count(dim, n)?;
        let (channel, vhost) = r.native_added();
        let pct = |x: f64| x / r.direct.max(1.0) * 100.0;
        let id = i + 1;
        let (c_default, c_long, c_vhost, c_native) = r.chunks;
        rows.push(Row::new(
            format!("c{id}i"),
            format!("GEMM {dim}³ f32, the cpu engine directly: instructions per GEMM"),
            format!("{:.2} M", r.direct / 1e6),
        ));
        rows.push(Row::new(
            format!("c{id}ij"),
            format!(
                "mediation per job / per chunk (chunks per GEMM under callgrind: {c_default:.0} and {c_long:.1}; vgpud {c_vhost:.0})"
            ),
            format!("{:.0} k / {:.1} k", r.per_job / 1e3, r.per_chunk / 1e3),
        ));
        rows.push(
            Row::new(
                format!("c{id}Ci"),
                format!(
                    "GEMM {dim}³ through one vGPU's channel, at the native {c_native:.1} chunks per GEMM"
                ),
                format!("+{:.0} k, {:+.2}% of direct", channel / 1e3, pct(channel)),
            )
            .target(
                format!("work ≤ {:.0}%", OVERHEAD_TARGET * 100.0),
                pct(channel) <= OVERHEAD_TARGET * 100.0,
            ),
        );
        rows.push(
            Row::new(
                format!("c{id}Vi"),
                format!("GEMM {dim}³ through vgpud over vhost-user (every vgpud thread)"),
                format!("+{:.0} k, {:+.2}% of direct", vhost / 1e3, pct(vhost)),
            )
            .target(
                format!("work ≤ {:.0}%", OVERHEAD_TARGET * 100.0),
                pct(vhost) <= OVERHEAD_TARGET * 100.0,
            ),
        );
        out.push(json!({
            "dim": dim, "gemms": [r.n.0, r.n.1], "direct_per_gemm": r.direct,
            "per_job": r.per_job, "per_chunk": r.per_chunk, "vhost_extra": r.vhost_extra,
            "chunks_callgrind": [c_default, c_long], "chunks_vgpud_callgrind": c_vhost,
            "chunks_native": c_native,
            "channel_added": channel, "vhost_added": vhost,
            "channel_added_pct": pct(channel), "vhost_added_pct": pct(vhost),
        }));
    }
    print_mode(args.json, "gemm_instructions", out, &rows, t_start)
}

/// `--piece-targets`: what cutting a GEMM into pieces costs the engine by itself (no device
/// thread, no scheduler), at each target, in interleaved rounds.
fn piece_targets(args: &Args, targets_us: &[u64]) -> Result<(), String> {
    let t_start = Instant::now();
    let mut rows = Vec::new();
    let mut out = Vec::new();
    let dims = args.dims_or(&GEMM_DIMS[..1]);
    for (i, &dim) in dims.iter().enumerate() {
        if !args.json {
            eprintln!(
                "… GEMM {dim}³ directly at piece targets {targets_us:?} µs, {} interleaved rounds of {} s",
                args.pairs, args.round_secs
            );
        }
        let runs = sched_gemm::piece_targets(dim, targets_us, args.pairs, args.round_secs)?;
        let base = runs.first().map_or(1.0, |r| r.gflops.max(1e-12));
        for (j, r) in runs.iter().enumerate() {
            let target = match r.target_us {
                0 => "one call".to_string(),
                t => format!("pieces of ~{t} µs"),
            };
            rows.push(Row::new(
                format!("p{}{}", i + 1, j + 1),
                format!(
                    "GEMM {dim}³, the {} engine directly, {target} (median of {} rounds)",
                    sched_engine::name(),
                    args.pairs
                ),
                format!(
                    "{:.3} GFLOP/s, {:+.1}% vs the first; {:.1} calls, {:.2} ms CPU (all threads), {:.1} + {:.1} switches per GEMM",
                    r.gflops,
                    (r.gflops / base - 1.0) * 100.0,
                    r.calls_per_job,
                    r.cpu_ms_per_job,
                    r.switches.0,
                    r.switches.1
                ),
            ));
            out.push(json!({
                "dim": dim, "target_us": r.target_us, "gflops": r.gflops,
                "calls_per_gemm": r.calls_per_job, "cpu_ms_per_gemm": r.cpu_ms_per_job,
                "switches_per_gemm": [r.switches.0, r.switches.1],
            }));
        }
    }
    print_mode(args.json, "piece_targets", out, &rows, t_start)
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
    let result = if let Some(spec) = &args.gemm_jobs {
        sched_instr::run_child(spec)
    } else if args.instructions {
        instructions(&args)
    } else if let Some(targets) = &args.piece_targets {
        piece_targets(&args, targets)
    } else {
        run(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vgpu-sched-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
