//! `vgpu-sched-bench --instructions`: what the mediation costs in work, counted in instructions
//! by valgrind's callgrind, which a shared and noisy host disturbs far less than time: only what
//! time decides (how the engine's chunks and the scheduler's turns are cut) moves the counts.
//!
//! Each path of (c) runs in a child of this program under `valgrind --tool=callgrind
//! --trace-children=yes`, once with `n1` and once with `n2` GEMMs; the instructions of every
//! thread of the process that does the work (this program, or `vgpud` over vhost-user) are summed, and
//! `(I(n2) − I(n1)) / (n2 − n1)` is the count per GEMM with set-up and tear-down cancelled out.
//! Over vhost-user only `vgpud` is counted: this program is its frontend there, standing in for
//! QEMU and the guest's driver.
//!
//! Under callgrind a GEMM runs several hundred times slower, so the time-based chunking cuts it
//! into hundreds of chunks where a native run has one to a few dozen. The mediation's work is
//! therefore split into a part per job `a` and a part per chunk `b`: the channel path runs
//! twice, with the default chunk targets and with chunks as long as the time slice (far fewer),
//! and the two counts and chunk numbers give `b`, then `a`. The estimate for a native run is
//! `a + b × (chunks per GEMM measured natively, in-process, just before)`. The vhost-user path
//! adds what it costs beyond the channel at the same chunk count (`vgpud`'s chunks are read
//! from its scheduler log).
//!
//! Kernel time (system calls, context switches, wake-ups) is not counted, and neither is the
//! engine idling or refilling its caches between jobs: this is the work the mediation adds, a
//! lower bound of its cost; the timed rounds of (c) show the rest.

use super::sched_gemm::{ChannelGemm, DirectGemm, VhostGemm, ONE_CALL};
use super::*;

/// One path of (c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GemmPath {
    /// The engine driven directly, one call per GEMM.
    Direct,
    /// One vGPU's driver channel, in-process.
    Channel,
    /// A real `vgpud` over vhost-user.
    Vhost,
}

impl GemmPath {
    const ALL: [GemmPath; 3] = [GemmPath::Direct, GemmPath::Channel, GemmPath::Vhost];

    fn name(self) -> &'static str {
        match self {
            GemmPath::Direct => "direct",
            GemmPath::Channel => "channel",
            GemmPath::Vhost => "vhost",
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("bad GEMM path {s:?} (direct, channel or vhost)"))
    }
}

/// The time slice of every run under callgrind (its maximum), so that `vgpud`'s scheduler log
/// (4096 slices) holds a whole run and both mediated paths take turns alike.
const CALLGRIND_TIMESLICE_US: u32 = 30_000;

/// How the channel path's in-process device is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunking {
    /// The defaults, as `vgpud` runs: the native chunk count.
    Native,
    /// The default chunk targets and [`CALLGRIND_TIMESLICE_US`] (as `vgpud` under callgrind).
    Default,
    /// Chunks of up to the whole [`CALLGRIND_TIMESLICE_US`] while alone: far fewer chunks.
    Long,
}

/// The in-process device of the channel path.
fn channel_config(chunking: Chunking) -> DeviceConfig {
    let mut config = DeviceConfig {
        memory_mib: 1024,
        policy: Policy::BestEffort,
        chunk_target_ns: CHUNK_TARGET_NS as u64,
        ..DeviceConfig::default()
    };
    if chunking != Chunking::Native {
        config.timeslice_us = Some(CALLGRIND_TIMESLICE_US);
    }
    if chunking == Chunking::Long {
        config.solo_chunk_target_ns = u64::from(CALLGRIND_TIMESLICE_US) * 1000;
    }
    config
}

/// Runs `n` GEMMs of `dim`³ through the channel in this process; returns the chunks they took.
fn channel_chunks(dim: u32, n: u64, chunking: Chunking) -> Result<u64, String> {
    let mut c = ChannelGemm::with_config(dim, channel_config(chunking))?;
    c.run_jobs(n)?;
    let chunks = c.chunks;
    c.close();
    Ok(chunks)
}

/// The chunks `vgpud`'s scheduler log records (every slice of its one vGPU).
fn vgpud_chunks(control: &Path) -> Result<u64, String> {
    let capacity = vgpu_backend::driver::stats::LOG_CAPACITY;
    let reply =
        vgpu_mdev::ctl::query(control, "sched-log", Some(capacity)).map_err(|e| e.to_string())?;
    let slices = reply["slices"]
        .as_array()
        .ok_or("sched-log reply without slices")?;
    if slices.len() >= capacity {
        return Err("vgpud's scheduler log overflowed: its chunk count is incomplete".into());
    }
    Ok(slices.iter().filter_map(|s| s["chunks"].as_u64()).sum())
}

/// The child's side: `--gemm-jobs PATH:DIM:N[:long]` runs exactly N GEMMs of DIM³ on PATH and
/// exits; the mediated paths print the engine chunks they took ("chunks C") on stdout.
pub(super) fn run_child(spec: &str) -> Result<(), String> {
    let bad = || format!("bad --gemm-jobs {spec:?} (PATH:DIM:N[:long])");
    let parts: Vec<&str> = spec.split(':').collect();
    let (path, dim, n, long) = match parts[..] {
        [p, d, n] => (p, d, n, false),
        [p, d, n, "long"] => (p, d, n, true),
        _ => return Err(bad()),
    };
    let path = GemmPath::parse(path)?;
    let dim: u32 = dim.parse().map_err(|_| bad())?;
    let n: u64 = n.parse().map_err(|_| bad())?;
    if long && path != GemmPath::Channel {
        return Err(bad());
    }
    match path {
        GemmPath::Direct => DirectGemm::new(dim, ONE_CALL)?.run_jobs(n),
        GemmPath::Channel => {
            let chunking = if long {
                Chunking::Long
            } else {
                Chunking::Default
            };
            println!("chunks {}", channel_chunks(dim, n, chunking)?);
            Ok(())
        }
        GemmPath::Vhost => {
            let bin =
                vgpud_path().ok_or("vgpud not built (cargo build --release -p vgpu-backend)")?;
            // valgrind cannot run a program under vgpud's seccomp filters: its own system
            // calls differ from the program's.
            let timeslice = CALLGRIND_TIMESLICE_US.to_string();
            let args = ["--sandbox", "off", "--timeslice-us", &timeslice];
            let mut v = VhostGemm::new(&bin, dim, &args)?;
            v.run_jobs(n)?;
            println!("chunks {}", vgpud_chunks(&v.control_socket())?);
            v.terminate(Duration::from_secs(600))
        }
    }
}

/// What `--instructions` found for one GEMM size.
#[derive(Debug, Clone, Copy)]
pub(super) struct InstrResult {
    /// GEMM counts of the two runs per path.
    pub(super) n: (u64, u64),
    /// Instructions per GEMM driven directly.
    pub(super) direct: f64,
    /// Mediation instructions per job (the channel path).
    pub(super) per_job: f64,
    /// Mediation instructions per chunk (the channel path).
    pub(super) per_chunk: f64,
    /// What the vhost-user path adds beyond the channel, per GEMM, at the same chunk count.
    pub(super) vhost_extra: f64,
    /// Chunks per GEMM: the channel under callgrind with the default and the long targets,
    /// `vgpud` under callgrind, and the channel natively.
    pub(super) chunks: (f64, f64, f64, f64),
}

impl InstrResult {
    /// Estimated mediation instructions per GEMM at native chunking: channel, vhost-user.
    pub(super) fn native_added(&self) -> (f64, f64) {
        let channel = self.per_job + self.per_chunk * self.chunks.3;
        (channel, channel + self.vhost_extra)
    }
}

/// The instruction total of one callgrind output file ("totals:" or "summary:").
fn callgrind_total(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// The part number of one callgrind output file (1 where it has none).
fn callgrind_part(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("part:")?.trim().parse().ok())
        .unwrap_or(1)
}

/// One run under callgrind: the instructions of every process, and what the child printed.
struct Counted {
    instructions: u64,
    stdout: String,
}

/// Runs `path` with `n` GEMMs under callgrind (`long`: the channel's long chunks); counts this
/// program's instructions, or over vhost-user `vgpud`'s.
fn counted_run(
    exe: &Path,
    path: GemmPath,
    dim: u32,
    n: u64,
    long: bool,
) -> Result<Counted, String> {
    let dir = tempfile::Builder::new()
        .prefix("vgpu-instr-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let file = |name: &str| std::fs::File::create(dir.path().join(name)).map_err(|e| e.to_string());
    let spec = format!(
        "{}:{dim}:{n}{}",
        path.name(),
        if long { ":long" } else { "" }
    );
    let mut cmd = Command::new("valgrind");
    // The control socket's first answer (the scheduler log, read at the end) starts a second
    // part of `vgpud`'s counts, which is left out: only each process's first part is summed.
    cmd.args([
        "--tool=callgrind",
        "--trace-children=yes",
        "--dump-instr=no",
        "--dump-before=vgpu_backend::control::handle*",
    ])
    .arg(format!(
        "--callgrind-out-file={}",
        dir.path().join("cg.%p").display()
    ))
    .arg(exe)
    .args(["--engine", "cpu", "--gemm-jobs", &spec])
    .stdin(Stdio::null())
    .stdout(file("child.out")?)
    .stderr(file("child.log")?);
    if let Some(bin) = vgpud_path() {
        cmd.env("VGPUD", bin);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("valgrind (apt install valgrind): {e}"))?;
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    if !status.success() {
        let log = read("child.log");
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        return Err(format!(
            "{spec} under callgrind: {status}\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    let mut instructions = 0u64;
    let mut files = 0;
    for entry in std::fs::read_dir(dir.path()).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        if !entry.file_name().to_string_lossy().starts_with("cg.") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|e| e.to_string())?;
        // Over vhost-user only vgpud counts: this program is the frontend there, standing in
        // for QEMU and the guest's driver (and it parses the scheduler log at the end).
        let frontend = text
            .lines()
            .any(|l| l.starts_with("cmd:") && l.contains("--gemm-jobs"));
        if callgrind_part(&text) != 1 || (path == GemmPath::Vhost && frontend) {
            continue;
        }
        instructions += callgrind_total(&text)
            .ok_or_else(|| format!("{}: no totals line", entry.path().display()))?;
        files += 1;
    }
    if files != 1 {
        return Err(format!(
            "{spec}: {files} callgrind outputs counted, expected 1"
        ));
    }
    Ok(Counted {
        instructions,
        stdout: read("child.out"),
    })
}

/// Instructions and chunks per GEMM, from runs of `n1` and `n2` GEMMs.
fn per_gemm(
    exe: &Path,
    path: GemmPath,
    dim: u32,
    (n1, n2): (u64, u64),
    long: bool,
) -> Result<(f64, f64), String> {
    let a = counted_run(exe, path, dim, n1, long)?;
    let b = counted_run(exe, path, dim, n2, long)?;
    let chunks = |c: &Counted| -> f64 {
        c.stdout
            .lines()
            .find_map(|l| l.strip_prefix("chunks ")?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let per = |x: f64, y: f64| (y - x) / (n2 - n1) as f64;
    Ok((
        per(a.instructions as f64, b.instructions as f64),
        per(chunks(&a), chunks(&b)),
    ))
}

/// The mediation's instructions for GEMMs of `dim`³ (see the module docs).
pub(super) fn count(dim: u32, (n1, n2): (u64, u64)) -> Result<InstrResult, String> {
    if sched_engine::name() != "cpu" {
        return Err("--instructions counts the CPU engine only (valgrind cannot run a GPU)".into());
    }
    if n2 <= n1 {
        return Err("--instructions needs two distinct GEMM counts".into());
    }
    let n = (n1, n2);
    // Native chunking first, in this process: 16 GEMMs after 4 to warm up.
    channel_chunks(dim, 4, Chunking::Native)?;
    let native = channel_chunks(dim, 16, Chunking::Native)? as f64 / 16.0;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (direct, _) = per_gemm(&exe, GemmPath::Direct, dim, n, false)?;
    let (channel, c_default) = per_gemm(&exe, GemmPath::Channel, dim, n, false)?;
    let (channel_long, c_long) = per_gemm(&exe, GemmPath::Channel, dim, n, true)?;
    let (vhost, c_vhost) = per_gemm(&exe, GemmPath::Vhost, dim, n, false)?;
    if c_default - c_long < 1.0 {
        return Err(format!(
            "{dim}³: the two channel runs had {c_default:.1} and {c_long:.1} chunks per GEMM; \
             too close to tell per-chunk from per-job work"
        ));
    }
    let per_chunk = (channel - channel_long) / (c_default - c_long);
    let per_job = (channel_long - direct) - per_chunk * c_long;
    Ok(InstrResult {
        n,
        direct,
        per_job,
        per_chunk,
        vhost_extra: (vhost - per_chunk * c_vhost) - (channel - per_chunk * c_default),
        chunks: (c_default, c_long, c_vhost, native),
    })
}

/// GEMM counts of the two runs for `dim`³ (fewer for large GEMMs: under callgrind a 256³ one
/// takes about a second, a 512³ one eight).
pub(super) fn default_counts(dim: u32) -> (u64, u64) {
    match dim {
        0..=256 => (2, 12),
        _ => (1, 4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_callgrind_totals() {
        let text = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 123456\n\nfn=main\n0 5\ntotals: 123456\n";
        assert_eq!(callgrind_total(text), Some(123456));
        assert_eq!(callgrind_total("events: Ir\n"), None);
        assert_eq!(callgrind_part(text), 1);
        assert_eq!(callgrind_part("part: 2\ntotals: 5\n"), 2);
    }
}
