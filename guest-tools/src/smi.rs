//! `vgpu-smi` without a subcommand: an nvidia-smi-like status of this vGPU.
//!
//! Static facts come from the capset, dynamic ones from one QUERY_STATS.

use std::fmt::Write as _;

use serde::Serialize;
use vgpu_protocol::capset::STATS_RECORD_SIZE;
use vgpu_protocol::{Kernel, SchedPolicy, StatsRecord, VgpuCapset};

use crate::device::{Stream, VirtGpu};
use crate::error::Result;

/// The status report; its JSON keys are stable (scripts parse them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SmiReport {
    /// Render node.
    pub device: String,
    /// vGPU type name.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Protocol version of the capset.
    pub protocol_version: u32,
    /// The engine behind the vGPU: `cpu`, `vulkan`, or `unknown` (a protocol 1.0 host).
    pub engine: String,
    /// The engine's device name (the Vulkan device, or the host CPU model); empty from a
    /// protocol 1.0 host.
    pub device_name: String,
    /// The engine's driver name.
    pub driver_name: String,
    /// Framebuffer budget.
    pub framebuffer_total_bytes: u64,
    /// Framebuffer in use by this VM (including this tool's 128-byte stats buffer).
    pub framebuffer_used_bytes: u64,
    /// Total minus used (0 if the device reports more used than total).
    pub framebuffer_free_bytes: u64,
    /// `best-effort`, `equal-share`, `fixed-share` or `unknown(N)`.
    pub policy: String,
    /// Scheduler time slice.
    pub timeslice_us: u32,
    /// Configured/expected share of engine time, percent.
    pub share_percent: f64,
    /// Engine time used over the last ~1 s, percent.
    pub utilization_percent: f64,
    /// vGPUs active on the physical device.
    pub active_vgpus: u32,
    /// Jobs this vGPU completed.
    pub jobs_completed: u64,
    /// Engine time this vGPU used, ns.
    pub busy_ns: u64,
    /// Scanouts.
    pub heads: u32,
    /// Largest scanout width.
    pub max_width: u32,
    /// Largest scanout height.
    pub max_height: u32,
    /// Engines.
    pub engines: u32,
    /// Supported kernels by name.
    pub kernels: Vec<String>,
    /// Largest single buffer.
    pub max_buffer_bytes: u64,
    /// Largest submit.
    pub max_submit_bytes: u32,
    /// The engine runs guest SPIR-V modules (protocol 1.2).
    pub guest_modules: bool,
    /// Loop back edges one invocation of a guest kernel may take (0: no guest modules).
    pub loop_budget: u32,
    /// Jobs of this vGPU that failed (protocol 1.2).
    pub jobs_failed: u64,
    /// Why the last one failed (`none`, `loop budget exceeded`, ...).
    pub last_failure: String,
    /// Submits of this vGPU the host refused (protocol 1.2).
    pub submits_refused: u64,
    /// The host's reason for the last refusal (empty if none).
    pub last_refusal: String,
}

/// The CLI name of a kernel.
pub fn kernel_name(k: Kernel) -> &'static str {
    match k {
        Kernel::GemmF32 => "gemm_f32",
        Kernel::AxpyF32 => "axpy_f32",
        Kernel::ReduceSumF32 => "reduce_sum_f32",
        Kernel::Crc32c => "crc32c",
    }
}

/// The display name of a policy value.
pub fn policy_name(v: u32) -> String {
    match SchedPolicy::from_u32(v) {
        Some(SchedPolicy::BestEffort) => "best-effort".into(),
        Some(SchedPolicy::EqualShare) => "equal-share".into(),
        Some(SchedPolicy::FixedShare) => "fixed-share".into(),
        None => format!("unknown({v})"),
    }
}

impl SmiReport {
    /// Builds the report from the capset and a stats record.
    pub fn new(device: &str, c: &VgpuCapset, s: &StatsRecord) -> Self {
        SmiReport {
            device: device.to_string(),
            type_name: c.type_name().to_string(),
            protocol_version: c.protocol_version,
            engine: c.engine_name().to_string(),
            device_name: c.device_name().to_string(),
            driver_name: c.driver_name().to_string(),
            framebuffer_total_bytes: s.framebuffer_total_bytes,
            framebuffer_used_bytes: s.framebuffer_used_bytes,
            framebuffer_free_bytes: s
                .framebuffer_total_bytes
                .saturating_sub(s.framebuffer_used_bytes),
            policy: policy_name(s.policy),
            timeslice_us: s.timeslice_us,
            share_percent: f64::from(s.share_permille) / 10.0,
            utilization_percent: f64::from(s.utilization_permille) / 10.0,
            active_vgpus: s.active_vgpus,
            jobs_completed: s.jobs_completed,
            busy_ns: s.busy_ns,
            heads: c.max_heads,
            max_width: c.max_width,
            max_height: c.max_height,
            engines: c.engine_count,
            kernels: Kernel::ALL
                .iter()
                .filter(|k| c.supports(**k))
                .map(|k| kernel_name(*k).to_string())
                .collect(),
            max_buffer_bytes: c.max_buffer_bytes,
            max_submit_bytes: c.max_submit_bytes,
            guest_modules: c.protocol_minor >= 2 && c.runs_modules(),
            loop_budget: c.loop_budget,
            jobs_failed: s.jobs_failed,
            last_failure: s.failure().as_str().to_string(),
            submits_refused: s.submits_refused,
            last_refusal: s.last_refusal().to_string(),
        }
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        crate::pretty_json(self)
    }

    /// The report as a boxed table.
    pub fn render_table(&self) -> String {
        let rows: [(&str, String); 14] = [
            ("vGPU type", self.type_name.clone()),
            ("Device", self.device.clone()),
            ("Protocol version", self.protocol_version.to_string()),
            ("Engine", self.engine.clone()),
            (
                "Device name",
                if self.driver_name.is_empty() {
                    self.device_name.clone()
                } else {
                    format!("{} ({})", self.device_name, self.driver_name)
                },
            ),
            (
                "Framebuffer",
                format!(
                    "{} total / {} used / {} free",
                    mib(self.framebuffer_total_bytes),
                    mib(self.framebuffer_used_bytes),
                    mib(self.framebuffer_free_bytes)
                ),
            ),
            (
                "Scheduler",
                format!(
                    "{}, time slice {} us, share {:.1} %",
                    self.policy, self.timeslice_us, self.share_percent
                ),
            ),
            (
                "Engine utilization",
                format!(
                    "{:.1} % ({} active vGPU{})",
                    self.utilization_percent,
                    self.active_vgpus,
                    if self.active_vgpus == 1 { "" } else { "s" }
                ),
            ),
            (
                "Jobs",
                format!(
                    "{} completed, {:.3} s busy",
                    self.jobs_completed,
                    self.busy_ns as f64 / 1e9
                ),
            ),
            (
                "Display",
                format!(
                    "{} heads, max {}x{}",
                    self.heads, self.max_width, self.max_height
                ),
            ),
            (
                "Engines",
                format!("{} ({})", self.engines, self.kernels.join(", ")),
            ),
            (
                "Limits",
                format!(
                    "buffer {}, submit {} KiB",
                    mib(self.max_buffer_bytes),
                    self.max_submit_bytes / 1024
                ),
            ),
            (
                "Guest kernels",
                if self.guest_modules {
                    format!("SPIR-V, loop budget {}", self.loop_budget)
                } else {
                    "no (built-in kernels only)".to_string()
                },
            ),
            (
                "Failures",
                format!(
                    "{} jobs failed (last: {}), {} submits refused{}",
                    self.jobs_failed,
                    self.last_failure,
                    self.submits_refused,
                    if self.last_refusal.is_empty() {
                        String::new()
                    } else {
                        format!(" (last: {})", self.last_refusal)
                    }
                ),
            ),
        ];
        let kw = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let vw = rows
            .iter()
            .map(|(_, v)| v.chars().count())
            .max()
            .unwrap_or(0);
        let rule = format!("+{}+{}+\n", "-".repeat(kw + 2), "-".repeat(vw + 2));
        let mut out = String::new();
        let title = "vgpu-smi";
        let _ = writeln!(out, "+{}+", "-".repeat(kw + vw + 5));
        let _ = writeln!(out, "| {title:<w$} |", w = kw + vw + 3);
        out.push_str(&rule);
        for (k, v) in &rows {
            let _ = writeln!(out, "| {k:<kw$} | {v:<vw$} |");
        }
        out.push_str(&rule);
        out
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Queries the device and builds the report.
pub fn run(gpu: &VirtGpu) -> Result<SmiReport> {
    let mut scratch = gpu.create_buffer(STATS_RECORD_SIZE as u32, STATS_RECORD_SIZE as u32)?;
    let mut stream = Stream::new();
    let stats = gpu.query_stats(&mut scratch, 0, &mut stream)?;
    Ok(SmiReport::new(
        &gpu.path().display().to_string(),
        gpu.capset(),
        &stats,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake() -> SmiReport {
        let mut c = VgpuCapset::new("vgpu-4q");
        c.framebuffer_bytes = 4 << 30;
        c.max_heads = 2;
        c.max_width = 5120;
        c.max_height = 2880;
        c.engine_count = 1;
        c.max_buffer_bytes = 1 << 30;
        c.engine_kind = vgpu_protocol::capset::ENGINE_KIND_VULKAN;
        c.set_device_name("llvmpipe (LLVM 15.0.6, 256 bits)");
        c.set_driver_name("llvmpipe");
        let s = StatsRecord {
            policy: SchedPolicy::EqualShare as u32,
            timeslice_us: 2000,
            framebuffer_total_bytes: 4 << 30,
            framebuffer_used_bytes: 256 << 20,
            utilization_permille: 498,
            share_permille: 500,
            active_vgpus: 2,
            jobs_completed: 10,
            busy_ns: 1_500_000_000,
            ..StatsRecord::new()
        };
        SmiReport::new("/dev/dri/renderD128", &c, &s)
    }

    #[test]
    fn report_fields() {
        let r = fake();
        assert_eq!(r.type_name, "vgpu-4q");
        assert_eq!(r.framebuffer_free_bytes, (4 << 30) - (256 << 20));
        assert_eq!(r.policy, "equal-share");
        assert_eq!(r.utilization_percent, 49.8);
        assert_eq!(r.share_percent, 50.0);
        assert_eq!(
            r.kernels,
            ["gemm_f32", "axpy_f32", "reduce_sum_f32", "crc32c"]
        );
        assert_eq!(policy_name(9), "unknown(9)");
    }

    #[test]
    fn json_keys_are_stable() {
        let v: serde_json::Value = serde_json::from_str(&fake().to_json()).unwrap();
        for key in [
            "type",
            "framebuffer_total_bytes",
            "framebuffer_used_bytes",
            "policy",
            "timeslice_us",
            "utilization_percent",
            "engine",
            "device_name",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["type"], "vgpu-4q");
        assert_eq!(v["framebuffer_total_bytes"], 4u64 << 30);
        assert_eq!(v["policy"], "equal-share");
        assert_eq!(v["timeslice_us"], 2000);
        assert_eq!(v["utilization_percent"], 49.8);
        assert_eq!(v["engine"], "vulkan");
        assert_eq!(v["device_name"], "llvmpipe (LLVM 15.0.6, 256 bits)");
    }

    #[test]
    fn table_rendering() {
        let t = fake().render_table();
        assert!(t.contains("| vGPU type"));
        assert!(t.contains("vgpu-4q"));
        assert!(t.contains("4096.0 MiB total / 256.0 MiB used / 3840.0 MiB free"));
        assert!(t.contains("equal-share, time slice 2000 us, share 50.0 %"));
        assert!(t.contains("49.8 % (2 active vGPUs)"));
        assert!(t.contains("2 heads, max 5120x2880"));
        assert!(t.contains("| Engine"));
        assert!(t.contains("llvmpipe (LLVM 15.0.6, 256 bits) (llvmpipe)"));
        assert!(
            t.contains("| Guest kernels      | no (built-in kernels only)"),
            "{t}"
        );
        assert!(
            t.contains("| 0 jobs failed (last: none), 0 submits refused "),
            "{t}"
        );
        // Every line has the same width.
        let widths: Vec<usize> = t.lines().map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{t}");
    }
}
