//! `vgpud demo`: one driver [`Device`] shared by several vGPUs of different types, each driven
//! by an in-process frontend thread with its own workload, under each scheduling policy in
//! turn. Prints a live line per second per vGPU and a summary per policy.
//!
//! The frontends submit straight to the driver core's [`Channel`](crate::driver::Channel) (the
//! virtio-gpu 3D path is not used), so the demo needs nothing but this crate.
//!
//! Modules: [`workload`] (the frontend threads), [`metrics`] (Jain index, shares, percentiles),
//! [`report`] (summaries and terminal tables).

pub mod metrics;
pub mod report;
pub mod workload;

use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use crate::driver::{
    Device, DeviceConfig, DriverError, JobError, Policy, SubmitError, Uuid, Vgpu, VgpuStats, MIB,
};
use report::{LiveRow, VmInput};
pub use report::{PolicySummary, VmSummary};
use workload::{Frontend, Workload};

/// vGPU types given to VMs 0, 1, 2, 3 (then again for VMs 4..8), beside [`Workload::ALL`].
pub const VM_TYPES: [&str; 4] = ["vgpu-4q", "vgpu-1q", "vgpu-1q", "vgpu-2q"];
/// Most VMs the demo runs (the built-in types allow two `vgpu-4q`).
pub const MAX_VMS: u32 = 8;

/// Which policies to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyChoice {
    /// best-effort, equal-share and fixed-share in turn.
    All,
    /// Just this one.
    One(Policy),
}

impl PolicyChoice {
    /// The policies in run order.
    pub fn policies(self) -> Vec<Policy> {
        match self {
            PolicyChoice::All => vec![Policy::BestEffort, Policy::EqualShare, Policy::FixedShare],
            PolicyChoice::One(p) => vec![p],
        }
    }
}

impl FromStr for PolicyChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "all" {
            return Ok(PolicyChoice::All);
        }
        Policy::from_str(s)
            .map(PolicyChoice::One)
            .map_err(|e| format!("{e}, or all"))
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.5..=600.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside 0.5..=600"))
    }
}

/// Options of `vgpud demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Seconds to run each policy.
    #[arg(long, value_name = "S", default_value = "4", value_parser = parse_seconds)]
    pub seconds: f64,
    /// best-effort, equal-share, fixed-share or all (one after the other).
    #[arg(long, value_name = "P", default_value = "all")]
    pub policy: PolicyChoice,
    /// VMs (and vGPUs): gemm-heavy/vgpu-4q, stream/vgpu-1q, light/vgpu-1q, bursty/vgpu-2q,
    /// then the same again.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=MAX_VMS as i64))]
    pub vgpus: u32,
    /// Print only the summary, as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        Self {
            seconds: 4.0,
            policy: PolicyChoice::All,
            vgpus: 4,
            json: false,
        }
    }
}

/// Why the demo stopped.
#[derive(Debug, Error)]
pub enum DemoError {
    /// The driver core refused something (device, vGPU or buffer creation).
    #[error("driver: {0}")]
    Driver(#[from] DriverError),
    /// A job was malformed (a bug in the demo).
    #[error("job: {0}")]
    Job(#[from] JobError),
    /// A submission was refused.
    #[error("submit: {0}")]
    Submit(#[from] SubmitError),
    /// A frontend thread could not be started.
    #[error("cannot start frontend thread: {0}")]
    Thread(std::io::Error),
    /// A frontend thread panicked.
    #[error("a frontend thread panicked")]
    FrontendPanicked,
    /// Writing the output failed.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
    /// The arguments are out of range.
    #[error("{0}")]
    Args(String),
}

/// Everything the demo measured, one entry per policy run.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    /// Per-policy summaries, in run order.
    pub policies: Vec<PolicySummary>,
}

/// One VM of the demo: its vGPU type and workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSpec {
    /// vGPU type name.
    pub type_name: &'static str,
    /// Workload.
    pub workload: Workload,
}

/// The VMs for `n` vGPUs.
pub fn vm_specs(n: u32) -> Vec<VmSpec> {
    (0..n as usize)
        .map(|i| VmSpec {
            type_name: VM_TYPES[i % VM_TYPES.len()],
            workload: Workload::ALL[i % Workload::ALL.len()],
        })
        .collect()
}

/// Runs the demo, printing to stdout.
pub fn run(args: &DemoArgs) -> Result<DemoSummary, DemoError> {
    let stdout = std::io::stdout();
    let styled = std::io::IsTerminal::is_terminal(&stdout);
    let mut out = stdout.lock();
    if args.json {
        let summary = run_to(args, &mut std::io::sink(), false)?;
        let text = serde_json::to_string_pretty(&summary)
            .map_err(|e| DemoError::Output(std::io::Error::other(e)))?;
        writeln!(out, "{text}")?;
        return Ok(summary);
    }
    run_to(args, &mut out, styled)
}

/// Runs the demo, printing tables to `out` (`styled`: with ANSI bold headers).
pub fn run_to(
    args: &DemoArgs,
    out: &mut dyn Write,
    styled: bool,
) -> Result<DemoSummary, DemoError> {
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        return Err(DemoError::Args(format!("bad --seconds {}", args.seconds)));
    }
    if args.vgpus == 0 || args.vgpus > MAX_VMS {
        return Err(DemoError::Args(format!(
            "--vgpus must be 1..={MAX_VMS}, got {}",
            args.vgpus
        )));
    }
    let specs = vm_specs(args.vgpus);
    let style = report::Style { bold: styled };
    report::print_intro(out, &specs, style)?;
    let mut policies = Vec::new();
    for policy in args.policy.policies() {
        let summary = run_phase(policy, &specs, args.seconds, out, style)?;
        report::print_summary(out, &summary, style)?;
        policies.push(summary);
    }
    if policies.len() > 1 {
        report::print_comparison(out, &policies, style)?;
    }
    Ok(DemoSummary { policies })
}

fn run_phase(
    policy: Policy,
    specs: &[VmSpec],
    seconds: f64,
    out: &mut dyn Write,
    style: report::Style,
) -> Result<PolicySummary, DemoError> {
    let types = vgpu_mdev::TypeTable::builtin();
    let memory_bytes: u64 = specs
        .iter()
        .filter_map(|s| types.get(s.type_name))
        .map(|t| t.framebuffer_bytes)
        .sum();
    let device = Device::new(DeviceConfig {
        memory_mib: memory_bytes.div_ceil(MIB).max(1),
        policy,
        ..DeviceConfig::default()
    })?;
    let result = drive_phase(&device, policy, specs, seconds, out, style);
    device.shutdown();
    result
}

fn drive_phase(
    device: &Arc<Device>,
    policy: Policy,
    specs: &[VmSpec],
    seconds: f64,
    out: &mut dyn Write,
    style: report::Style,
) -> Result<PolicySummary, DemoError> {
    let vgpus = specs
        .iter()
        .enumerate()
        .map(|(i, s)| device.create_vgpu(s.type_name, Uuid::from_u128(0xde30_0000 + i as u128)))
        .collect::<Result<Vec<Arc<Vgpu>>, _>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut frontends = Vec::with_capacity(specs.len());
    for (i, (spec, vgpu)) in specs.iter().zip(&vgpus).enumerate() {
        match Frontend::spawn(i, vgpu, spec.workload, &stop) {
            Ok(f) => frontends.push(f),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                for f in frontends {
                    let _ = f.join();
                }
                return Err(e);
            }
        }
    }
    let (total, reserved) = device.memory();
    report::print_phase_header(out, policy, &vgpus[0].stats(), total, reserved, style)?;
    let base_busy: Vec<u64> = vgpus.iter().map(|v| v.stats().busy_ns).collect();
    let start = Instant::now();
    let length = Duration::from_secs_f64(seconds);
    let mut last_completed = vec![0u64; specs.len()];
    let mut last_tick = start;
    let mut tick = 1u32;
    let mut final_stats: Vec<VgpuStats>;
    loop {
        let due = Duration::from_secs(u64::from(tick)).min(length);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let now = Instant::now();
        let dt = now.duration_since(last_tick).as_secs_f64().max(1e-3);
        last_tick = now;
        final_stats = vgpus.iter().map(|v| v.stats()).collect();
        let mut rows = Vec::with_capacity(specs.len());
        for (i, (spec, stats)) in specs.iter().zip(&final_stats).enumerate() {
            let (completed, mut window) = match frontends.get(i) {
                Some(f) => {
                    let mut s = f.samples();
                    (s.completed, std::mem::take(&mut s.window_latency_ns))
                }
                None => (0, Vec::new()),
            };
            let done = completed.saturating_sub(last_completed[i]);
            last_completed[i] = completed;
            window.sort_unstable();
            rows.push(LiveRow {
                vm: i,
                workload: spec.workload,
                stats,
                jobs_per_s: done as f64 / dt,
                latency_p50_ns: metrics::percentile_sorted(&window, 50),
                latency_p99_ns: metrics::percentile_sorted(&window, 99),
            });
        }
        report::print_live(out, start.elapsed(), &rows, style)?;
        if due >= length {
            break;
        }
        tick += 1;
    }
    let wall_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    stop.store(true, Ordering::Relaxed);
    let mut inputs = Vec::with_capacity(specs.len());
    let mut first_error = None;
    for (((spec, frontend), mut stats), base) in
        specs.iter().zip(frontends).zip(final_stats).zip(base_busy)
    {
        // Engine time of the phase only (frontends start submitting while others set up).
        stats.busy_ns = stats.busy_ns.saturating_sub(base);
        match frontend.join() {
            Ok(samples) => inputs.push(VmInput {
                type_name: spec.type_name.to_string(),
                weight: types_weight(device, spec.type_name),
                workload: spec.workload,
                stats,
                samples,
            }),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let (total, reserved) = device.memory();
    Ok(report::summarize(policy, wall_ns, inputs, total, reserved))
}

fn types_weight(device: &Device, type_name: &str) -> u32 {
    device.types().get(type_name).map_or(1, |t| t.weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_cycle_types_and_workloads() {
        let specs = vm_specs(8);
        assert_eq!(specs.len(), 8);
        assert_eq!(specs[0].workload, Workload::HeavyGemm);
        assert_eq!(specs[4], specs[0]);
        assert_eq!(specs[3].type_name, "vgpu-2q");
        let types = vgpu_mdev::TypeTable::builtin();
        for t in VM_TYPES {
            let n = specs.iter().filter(|s| s.type_name == t).count();
            assert!(n <= types.get(t).unwrap().max_instances as usize, "{t}");
        }
    }

    #[test]
    fn policy_choice_parses() {
        assert_eq!("all".parse::<PolicyChoice>().unwrap().policies().len(), 3);
        assert_eq!(
            "fixed-share".parse::<PolicyChoice>().unwrap(),
            PolicyChoice::One(Policy::FixedShare)
        );
        assert!("round-robin".parse::<PolicyChoice>().is_err());
        assert!(parse_seconds("0.1").is_err());
        assert_eq!(parse_seconds("2.5").unwrap(), 2.5);
    }

    #[test]
    fn args_parse_with_clap() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            demo: DemoArgs,
        }
        let cli =
            Cli::try_parse_from(["demo", "--seconds", "1", "--policy", "equal-share"]).unwrap();
        assert_eq!(cli.demo.seconds, 1.0);
        assert_eq!(cli.demo.policy, PolicyChoice::One(Policy::EqualShare));
        assert_eq!(cli.demo.vgpus, 4);
        assert!(Cli::try_parse_from(["demo", "--vgpus", "9"]).is_err());
    }

    #[test]
    fn short_run_produces_a_summary() {
        let args = DemoArgs {
            seconds: 0.6,
            policy: PolicyChoice::One(Policy::FixedShare),
            vgpus: 4,
            json: false,
        };
        let mut out = Vec::new();
        let summary = run_to(&args, &mut out, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("fixed-share"), "{text}");
        let p = &summary.policies[0];
        assert_eq!(p.vms.len(), 4);
        // (Debug builds run the GEMMs slowly; some VM must still have completed jobs.)
        assert!(p.vms.iter().map(|v| v.jobs).sum::<u64>() > 0, "{text}");
        // One engine cannot run more than the wall time: the per-VM counters do not double count
        // (a chunk charged to two VMs, or a slice counted twice, would break this).
        let sum: f64 = p.vms.iter().map(|v| v.used).sum();
        assert!(
            sum > 0.0 && sum <= 1.05,
            "engine time {sum} of wall time\n{text}"
        );
        assert!(p.vms.iter().all(|v| v.failed == 0), "{text}");
        assert!(
            p.vms.iter().all(|v| v.memory_used <= v.memory_total),
            "{text}"
        );
        // Fixed-share entitlements follow the types' weights (vgpu-4q, 1q, 1q, 2q: 4:1:1:2).
        let expected: Vec<Option<f64>> = p.vms.iter().map(|v| v.expected).collect();
        assert_eq!(expected, [Some(0.5), Some(0.125), Some(0.125), Some(0.25)]);
    }

    /// The full default demo, for a manual look:
    /// `cargo test --release -p vgpu-backend --lib demo::tests::full_demo -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn full_demo() {
        run(&DemoArgs::default()).unwrap();
    }
}
