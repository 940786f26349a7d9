//! The demo's summaries (computed from counters and samples) and its terminal tables.

use std::io::{self, Write};
use std::time::Duration;

use serde::Serialize;

use crate::driver::{Policy, VgpuStats, MIB};

use super::metrics;
use super::workload::{Samples, Workload};
use super::VmSpec;

/// Terminal styling.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    /// Use ANSI bold for headers.
    pub bold: bool,
}

impl Style {
    fn head(self, text: &str) -> String {
        if self.bold {
            format!("\x1b[1m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// One VM's figures for one live line.
#[derive(Debug)]
pub struct LiveRow<'a> {
    /// VM index.
    pub vm: usize,
    /// Its workload.
    pub workload: Workload,
    /// Its vGPU's stats now.
    pub stats: &'a VgpuStats,
    /// Jobs completed per second over the last interval.
    pub jobs_per_s: f64,
    /// Median job latency over the last interval (ns).
    pub latency_p50_ns: u64,
    /// 99th-percentile job latency over the last interval (ns).
    pub latency_p99_ns: u64,
}

/// What [`summarize`] needs of one VM.
#[derive(Debug)]
pub struct VmInput {
    /// vGPU type name.
    pub type_name: String,
    /// Type weight.
    pub weight: u32,
    /// Workload.
    pub workload: Workload,
    /// Its vGPU's stats at the end of the phase.
    pub stats: VgpuStats,
    /// The frontend's samples.
    pub samples: Samples,
}

/// One VM's line of a policy summary.
#[derive(Debug, Clone, Serialize)]
pub struct VmSummary {
    /// vGPU type.
    pub type_name: String,
    /// Type weight.
    pub weight: u32,
    /// Workload.
    pub workload: Workload,
    /// Whether the VM kept work queued all the time (counts for fairness).
    pub busy: bool,
    /// Engine time it got, as a fraction of wall time.
    pub used: f64,
    /// The fraction of wall time it should get: its entitlement (equal-/fixed-share) or, for
    /// busy VMs under best-effort, an equal split of what the busy VMs got. `None` for VMs
    /// whose demand is below their share under best-effort.
    pub expected: Option<f64>,
    /// Jobs completed.
    pub jobs: u64,
    /// Jobs failed.
    pub failed: u64,
    /// Jobs per second.
    pub jobs_per_s: f64,
    /// Median submission-to-completion latency (ns).
    pub latency_p50_ns: u64,
    /// 99th-percentile latency (ns).
    pub latency_p99_ns: u64,
    /// Median queue wait (ns).
    pub wait_p50_ns: u64,
    /// 99th-percentile queue wait (ns).
    pub wait_p99_ns: u64,
    /// Its time slice (µs).
    pub timeslice_us: u32,
    /// Partition bytes in use.
    pub memory_used: u64,
    /// Partition size.
    pub memory_total: u64,
}

/// One policy's results.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    /// The policy.
    pub policy: Policy,
    /// Phase length (s).
    pub wall_s: f64,
    /// Engine busy time as a fraction of wall time.
    pub engine_busy: f64,
    /// Per-VM lines, in VM order.
    pub vms: Vec<VmSummary>,
    /// Jain's index of `used / expected` among busy VMs.
    pub jain_busy: Option<f64>,
    /// The light VMs' worst p99 queue wait (ns), if there is a light VM.
    pub light_wait_p99_ns: Option<u64>,
    /// Its bound: every other vGPU's slice plus 1 ms (ns).
    pub light_wait_bound_ns: Option<u64>,
    /// Device memory (bytes).
    pub device_memory: u64,
    /// Device memory reserved by partitions (bytes).
    pub device_reserved: u64,
}

/// Computes a policy's summary from each VM's counters and samples over `wall_ns`.
pub fn summarize(
    policy: Policy,
    wall_ns: u64,
    inputs: Vec<VmInput>,
    device_memory: u64,
    device_reserved: u64,
) -> PolicySummary {
    let wall = wall_ns.max(1) as f64;
    let weights: Vec<u32> = inputs.iter().map(|v| v.weight).collect();
    let entitled = metrics::entitlements(policy, &weights);
    let used: Vec<f64> = inputs
        .iter()
        .map(|v| v.stats.busy_ns as f64 / wall)
        .collect();
    let busy: Vec<bool> = inputs.iter().map(|v| v.workload.saturating()).collect();
    let busy_used: Vec<f64> = used
        .iter()
        .zip(&busy)
        .filter(|(_, &b)| b)
        .map(|(&u, _)| u)
        .collect();
    let best_effort_split = if busy_used.is_empty() {
        0.0
    } else {
        busy_used.iter().sum::<f64>() / busy_used.len() as f64
    };
    let expected: Vec<Option<f64>> = busy
        .iter()
        .zip(&entitled)
        .map(|(&b, &e)| match policy {
            Policy::BestEffort => b.then_some(best_effort_split),
            _ => Some(e),
        })
        .collect();
    let (xs, es): (Vec<f64>, Vec<f64>) = used
        .iter()
        .zip(&expected)
        .zip(&busy)
        .filter_map(|((&u, e), &b)| if b { e.map(|e| (u, e)) } else { None })
        .unzip();
    let jain_busy = metrics::weighted_jain(&xs, &es);

    let slices: Vec<u32> = inputs.iter().map(|v| v.stats.timeslice_us).collect();
    let mut light_wait_p99_ns = None;
    let mut light_wait_bound_ns = None;
    let mut vms = Vec::with_capacity(inputs.len());
    for (i, (v, e)) in inputs.into_iter().zip(expected).enumerate() {
        let mut s = v.samples;
        let lat_p50 = metrics::percentile_sorting(&mut s.latency_ns, 50);
        let lat_p99 = metrics::percentile_sorted(&s.latency_ns, 99);
        let wait_p50 = metrics::percentile_sorting(&mut s.wait_ns, 50);
        let wait_p99 = metrics::percentile_sorted(&s.wait_ns, 99);
        if v.workload == Workload::Light {
            let others: Vec<u32> = slices
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, &us)| us)
                .collect();
            let bound = metrics::wait_bound_ns(&others);
            light_wait_p99_ns = Some(light_wait_p99_ns.map_or(wait_p99, |w: u64| w.max(wait_p99)));
            light_wait_bound_ns = Some(light_wait_bound_ns.map_or(bound, |b: u64| b.min(bound)));
        }
        vms.push(VmSummary {
            type_name: v.type_name,
            weight: v.weight,
            workload: v.workload,
            busy: busy.get(i).copied().unwrap_or(false),
            used: used.get(i).copied().unwrap_or(0.0),
            expected: e,
            jobs: s.completed,
            failed: s.failed,
            jobs_per_s: s.completed as f64 * 1e9 / wall,
            latency_p50_ns: lat_p50,
            latency_p99_ns: lat_p99,
            wait_p50_ns: wait_p50,
            wait_p99_ns: wait_p99,
            timeslice_us: v.stats.timeslice_us,
            memory_used: v.stats.framebuffer_used,
            memory_total: v.stats.framebuffer_total,
        });
    }
    PolicySummary {
        policy,
        wall_s: wall / 1e9,
        engine_busy: used.iter().sum(),
        vms,
        jain_busy,
        light_wait_p99_ns,
        light_wait_bound_ns,
        device_memory,
        device_reserved,
    }
}

/// `850 µs`, `12.3 ms`, `1.20 s`.
pub fn fmt_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.0} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// Bytes as MiB below 10 GiB (`96.3 MiB`), else GiB.
pub fn fmt_bytes(bytes: u64) -> String {
    let mib = bytes as f64 / MIB as f64;
    if mib < 10.0 * 1024.0 {
        format!("{mib:.1} MiB")
    } else {
        format!("{:.1} GiB", mib / 1024.0)
    }
}

fn pct(f: f64) -> String {
    format!("{:.1}%", f * 100.0)
}

fn fmt_mem(used: u64, total: u64) -> String {
    format!(
        "{:>6.1} / {:<4.0} MiB",
        used as f64 / MIB as f64,
        total as f64 / MIB as f64
    )
}

/// The VM list before the first phase.
pub fn print_intro(out: &mut dyn Write, specs: &[VmSpec], style: Style) -> io::Result<()> {
    let types = vgpu_mdev::TypeTable::builtin();
    writeln!(
        out,
        "{}",
        style.head(&format!(
            "vgpud demo: {} VMs on one shared driver core (in-process frontends on the driver channel)",
            specs.len()
        ))
    )?;
    for (i, s) in specs.iter().enumerate() {
        let (fb, w) = types
            .get(s.type_name)
            .map_or((0, 1), |t| (t.framebuffer_bytes, t.weight));
        writeln!(
            out,
            "  vm{i}  {:<8} {:>9}  weight {w}  {:<10}  {}",
            s.type_name,
            fmt_bytes(fb),
            s.workload.name(),
            describe(s.workload)
        )?;
    }
    Ok(())
}

fn describe(w: Workload) -> &'static str {
    match w {
        Workload::HeavyGemm => "384³ f32 GEMMs back to back, 2 in flight, 96 MiB resident",
        Workload::Streaming => "16 MiB axpy + CRC-32C, 2 in flight",
        Workload::Light => "4096-element axpy + sum, one at a time, 5 ms think time",
        Workload::Bursty => "256³ GEMMs for 300 ms, idle for 300 ms",
    }
}

/// The header of a policy's live lines.
pub fn print_phase_header(
    out: &mut dyn Write,
    policy: Policy,
    sample: &VgpuStats,
    total: u64,
    reserved: u64,
    style: Style,
) -> io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "{}",
        style.head(&format!(
            "── {policy} ── slice {} · device memory {} ({} partitioned) ──",
            fmt_ns(u64::from(sample.timeslice_us) * 1000),
            fmt_bytes(total),
            fmt_bytes(reserved)
        ))
    )?;
    writeln!(
        out,
        "{:>5}  {:<4} {:<8} {:<10} {:>6} {:>6}  {:<19} {:>7} {:>9} {:>9}",
        "t",
        "vm",
        "type",
        "workload",
        "util",
        "share",
        "memory used/total",
        "jobs/s",
        "lat p50",
        "lat p99"
    )?;
    Ok(())
}

/// One block of live lines (one per VM).
pub fn print_live(
    out: &mut dyn Write,
    elapsed: Duration,
    rows: &[LiveRow<'_>],
    _style: Style,
) -> io::Result<()> {
    for (n, r) in rows.iter().enumerate() {
        let t = if n == 0 {
            format!("{:.1}s", elapsed.as_secs_f64())
        } else {
            String::new()
        };
        writeln!(
            out,
            "{t:>5}  vm{:<2} {:<8} {:<10} {:>6} {:>6}  {:<19} {:>7.0} {:>9} {:>9}",
            r.vm,
            r.stats.type_name,
            r.workload.name(),
            format!("{:.1}%", f64::from(r.stats.utilization_permille) / 10.0),
            format!("{:.1}%", f64::from(r.stats.share_permille) / 10.0),
            fmt_mem(r.stats.framebuffer_used, r.stats.framebuffer_total),
            r.jobs_per_s,
            fmt_ns(r.latency_p50_ns),
            fmt_ns(r.latency_p99_ns),
        )?;
    }
    out.flush()
}

/// A policy's summary table.
pub fn print_summary(out: &mut dyn Write, s: &PolicySummary, style: Style) -> io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "{}",
        style.head(&format!(
            "   summary: {} over {:.1} s, engine busy {}",
            s.policy,
            s.wall_s,
            pct(s.engine_busy)
        ))
    )?;
    writeln!(
        out,
        "   {:<4} {:<8} {:>3}  {:<11} {:>7} {:>8}  {:>6} {:>7} {:>9} {:>9} {:>9}  memory used/total",
        "vm",
        "type",
        "w",
        "workload",
        "engine",
        "expected",
        "jobs",
        "jobs/s",
        "lat p50",
        "lat p99",
        "wait p99",
    )?;
    for (i, v) in s.vms.iter().enumerate() {
        writeln!(
            out,
            "   vm{i:<2} {:<8} {:>3}  {:<11} {:>7} {:>8}  {:>6} {:>7.1} {:>9} {:>9} {:>9}  {}",
            v.type_name,
            v.weight,
            format!("{}{}", v.workload.name(), if v.busy { "*" } else { "" }),
            pct(v.used),
            v.expected.map_or_else(|| "-".to_string(), pct),
            v.jobs,
            v.jobs_per_s,
            fmt_ns(v.latency_p50_ns),
            fmt_ns(v.latency_p99_ns),
            fmt_ns(v.wait_p99_ns),
            fmt_mem(v.memory_used, v.memory_total),
        )?;
    }
    let used_mem: u64 = s.vms.iter().map(|v| v.memory_used).sum();
    writeln!(
        out,
        "   * busy VMs · Jain fairness among them: {} · light VM p99 queue wait: {} · memory: {} allocated in {} of partitions",
        s.jain_busy.map_or_else(|| "n/a".to_string(), |j| format!("{j:.3}")),
        light_wait(s),
        fmt_bytes(used_mem),
        fmt_bytes(s.device_reserved),
    )?;
    out.flush()
}

fn light_wait(s: &PolicySummary) -> String {
    match (s.light_wait_p99_ns, s.light_wait_bound_ns) {
        (Some(w), Some(b)) => format!(
            "{} (bound {}: {})",
            fmt_ns(w),
            fmt_ns(b),
            if w <= b { "within" } else { "EXCEEDED" }
        ),
        _ => "n/a".to_string(),
    }
}

/// The closing table comparing policies.
pub fn print_comparison(
    out: &mut dyn Write,
    policies: &[PolicySummary],
    style: Style,
) -> io::Result<()> {
    writeln!(out)?;
    writeln!(out, "{}", style.head("── policies compared ──"))?;
    let n = policies.first().map_or(0, |p| p.vms.len());
    let mut header = format!(
        "{:<12} {:>6} {:>6} {:>10} {:>10} ",
        "policy", "busy", "Jain", "light p99", "bound"
    );
    for i in 0..n {
        header.push_str(&format!(" {:>8}", format!("vm{i}")));
    }
    writeln!(out, "{header}")?;
    for p in policies {
        let mut line = format!(
            "{:<12} {:>6} {:>6} {:>10} {:>10} ",
            p.policy.as_str(),
            pct(p.engine_busy),
            p.jain_busy
                .map_or_else(|| "n/a".to_string(), |j| format!("{j:.3}")),
            p.light_wait_p99_ns.map_or_else(|| "-".to_string(), fmt_ns),
            p.light_wait_bound_ns
                .map_or_else(|| "-".to_string(), fmt_ns),
        );
        for v in &p.vms {
            line.push_str(&format!(" {:>8}", pct(v.used)));
        }
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "(vmN columns: engine time as a share of wall time; Jain among the busy VMs, normalized by expected share)"
    )?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(busy_ns: u64, timeslice_us: u32) -> VgpuStats {
        VgpuStats {
            vgpu_id: 1,
            type_name: "vgpu-1q".into(),
            policy: Policy::FixedShare,
            timeslice_us,
            framebuffer_total: 1024 * MIB,
            framebuffer_used: MIB,
            utilization_permille: 0,
            share_permille: 0,
            active_vgpus: 4,
            jobs_completed: 0,
            jobs_failed: 0,
            completion_failures: 0,
            busy_ns,
            queued_jobs: 0,
            queue_wait_p50_ns: 0,
            queue_wait_p99_ns: 0,
            debt_ns: 0,
            slices: 0,
            overruns: 0,
            wait_histogram: Default::default(),
        }
    }

    fn input(weight: u32, workload: Workload, busy_ns: u64, waits: Vec<u64>) -> VmInput {
        VmInput {
            type_name: "t".into(),
            weight,
            workload,
            stats: stats(busy_ns, 2000),
            samples: Samples {
                completed: 10,
                latency_ns: (1..=10).collect(),
                wait_ns: waits,
                ..Samples::default()
            },
        }
    }

    #[test]
    fn fixed_share_summary() {
        // 1 s: heavy (w4) got 50%, stream (w1) 12.5%, light 2%, bursty (w2) 20%.
        let inputs = vec![
            input(4, Workload::HeavyGemm, 500_000_000, vec![]),
            input(1, Workload::Streaming, 125_000_000, vec![]),
            input(
                1,
                Workload::Light,
                20_000_000,
                (0..100).map(|i| i * 100_000).collect(),
            ),
            input(2, Workload::Bursty, 200_000_000, vec![]),
        ];
        let s = summarize(Policy::FixedShare, 1_000_000_000, inputs, 8 << 30, 8 << 30);
        assert!((s.engine_busy - 0.845).abs() < 1e-9);
        assert_eq!(s.vms[0].expected, Some(0.5));
        assert_eq!(s.vms[1].expected, Some(0.125));
        assert_eq!(s.vms[3].expected, Some(0.25));
        assert!((s.jain_busy.unwrap() - 1.0).abs() < 1e-9);
        // Light p99 of 0..9.9 ms in 0.1 ms steps, bound 3 × 2 ms + 1 ms.
        assert_eq!(s.light_wait_p99_ns, Some(9_800_000));
        assert_eq!(s.light_wait_bound_ns, Some(7_000_000));
        assert_eq!(s.vms[0].latency_p50_ns, 5);
        assert!((s.vms[0].jobs_per_s - 10.0).abs() < 1e-9);
        let mut text = Vec::new();
        print_summary(&mut text, &s, Style::default()).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("EXCEEDED") && text.contains("1.000"),
            "{text}"
        );
    }

    #[test]
    fn best_effort_expects_an_equal_split_among_busy_vms() {
        let inputs = vec![
            input(4, Workload::HeavyGemm, 600_000_000, vec![]),
            input(1, Workload::Streaming, 200_000_000, vec![]),
            input(1, Workload::Light, 20_000_000, vec![1]),
        ];
        let s = summarize(Policy::BestEffort, 1_000_000_000, inputs, 1, 1);
        assert_eq!(s.vms[0].expected, Some(0.4));
        assert_eq!(s.vms[2].expected, None);
        // Jain of 0.6 and 0.2: 0.64 / (2 · 0.4) = 0.8.
        assert!((s.jain_busy.unwrap() - 0.8).abs() < 1e-9);
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_ns(850), "850 ns");
        assert_eq!(fmt_ns(12_345), "12 µs");
        assert_eq!(fmt_ns(12_345_678), "12.3 ms");
        assert_eq!(fmt_ns(1_200_000_000), "1.20 s");
        assert_eq!(fmt_bytes(96 * MIB), "96.0 MiB");
        assert_eq!(fmt_bytes(16 << 30), "16.0 GiB");
    }
}
