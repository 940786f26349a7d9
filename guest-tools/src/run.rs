//! `vgpu-smi run`: loads a SPIR-V file, creates and fills the buffers the command line names,
//! launches a grid, and prints or checks the buffers afterwards (argument syntax: [`crate::runspec`]).

use std::fmt::Write;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::bench::percentile;
use crate::compute::{Binding, Buffer, Device};
use crate::error::{Error, Result};
use crate::reference::Rng;
use crate::runspec::{BufSpec, DumpFormat, DumpSpec, ExpectSpec, Init};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The SPIR-V file.
    pub file: PathBuf,
    /// Entry point.
    pub entry: String,
    /// Workgroups.
    pub grid: [u32; 3],
    /// Buffers.
    pub bufs: Vec<BufSpec>,
    /// Push-constant bytes.
    pub push: Vec<u8>,
    /// Buffers to print.
    pub dumps: Vec<DumpSpec>,
    /// Ranges to check.
    pub expects: Vec<ExpectSpec>,
    /// Launches (timed; the dumps and checks see the last one).
    pub repeat: u32,
    /// Skip the library's own module checks (to see the host's answer to any module).
    pub unchecked: bool,
}

/// A dump's values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dump {
    /// Slot.
    pub slot: u32,
    /// First byte.
    pub offset: usize,
    /// `hex`, `u32`, `i32` or `f32`.
    pub format: &'static str,
    /// The values as text.
    pub values: Vec<String>,
}

/// An `--expect` result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Expectation {
    /// Slot.
    pub slot: u32,
    /// First byte.
    pub offset: usize,
    /// Bytes.
    pub len: usize,
    /// The u32 pattern.
    pub pattern: String,
    /// Words that differ.
    pub mismatches: usize,
    /// The first differing word: `offset=value`.
    pub first_mismatch: Option<String>,
}

/// The result of a run; JSON keys are stable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// The file.
    pub file: String,
    /// Its size.
    pub module_bytes: usize,
    /// Entry point.
    pub entry: String,
    /// Load time (host validation, instrumentation, compile), ms.
    pub load_ms: f64,
    /// Workgroups.
    pub grid: [u32; 3],
    /// Launches.
    pub launches: u32,
    /// Median launch time (submit to fence), µs.
    pub p50_us: f64,
    /// Fastest launch, µs.
    pub best_us: f64,
    /// Printed buffers.
    pub dumps: Vec<Dump>,
    /// Checked ranges.
    pub expects: Vec<Expectation>,
    /// Every expectation held.
    pub ok: bool,
}

fn fill(spec: &BufSpec) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; spec.size];
    match &spec.init {
        Init::Zero => {}
        Init::Pattern(p) => {
            for w in bytes.chunks_mut(4) {
                w.copy_from_slice(p.to_le_bytes().get(..w.len()).unwrap_or_default());
            }
        }
        Init::F32(v) => {
            for w in bytes.chunks_mut(4) {
                w.copy_from_slice(v.to_le_bytes().get(..w.len()).unwrap_or_default());
            }
        }
        Init::Iota => {
            for (i, w) in bytes.chunks_mut(4).enumerate() {
                w.copy_from_slice((i as u32).to_le_bytes().get(..w.len()).unwrap_or_default());
            }
        }
        Init::Random(seed) => {
            let mut rng = Rng::new(*seed);
            for w in bytes.chunks_mut(4) {
                let v = rng.next_f32().to_le_bytes();
                w.copy_from_slice(v.get(..w.len()).unwrap_or_default());
            }
        }
        Init::File(path) => {
            let data = std::fs::read(path)
                .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
            if data.len() > spec.size {
                return Err(Error::InvalidArgument(format!(
                    "{} has {} bytes, more than the {}-byte buffer",
                    path.display(),
                    data.len(),
                    spec.size
                )));
            }
            if let Some(dst) = bytes.get_mut(..data.len()) {
                dst.copy_from_slice(&data);
            }
        }
    }
    Ok(bytes)
}

fn by_slot(bufs: &mut [(BufSpec, Buffer)], slot: u32) -> Result<&mut Buffer> {
    bufs.iter_mut()
        .find(|(s, _)| s.slot == Some(slot))
        .map(|(_, b)| b)
        .ok_or_else(|| Error::InvalidArgument(format!("no --buf for slot {slot}")))
}

fn word(c: &[u8]) -> [u8; 4] {
    let mut w = [0u8; 4];
    for (d, s) in w.iter_mut().zip(c) {
        *d = *s;
    }
    w
}

fn dump(buf: &mut Buffer, d: &DumpSpec) -> Result<Dump> {
    let (offset, len) = d.range.unwrap_or((0, buf.size()));
    let mut bytes = vec![0u8; len];
    buf.read(offset, &mut bytes)?;
    let (format, values): (&'static str, Vec<String>) = match d.format {
        DumpFormat::Hex => ("hex", bytes.iter().map(|b| format!("{b:02x}")).collect()),
        DumpFormat::U32 => (
            "u32",
            bytes
                .chunks(4)
                .map(|c| u32::from_le_bytes(word(c)).to_string())
                .collect(),
        ),
        DumpFormat::I32 => (
            "i32",
            bytes
                .chunks(4)
                .map(|c| i32::from_le_bytes(word(c)).to_string())
                .collect(),
        ),
        DumpFormat::F32 => (
            "f32",
            bytes
                .chunks(4)
                .map(|c| format!("{:e}", f32::from_le_bytes(word(c))))
                .collect(),
        ),
    };
    Ok(Dump {
        slot: d.slot,
        offset,
        format,
        values,
    })
}

fn expect(buf: &mut Buffer, e: &ExpectSpec) -> Result<Expectation> {
    let mut bytes = vec![0u8; e.len];
    buf.read(e.offset, &mut bytes)?;
    let mut mismatches = 0;
    let mut first = None;
    for (i, c) in bytes.chunks(4).enumerate() {
        let v = u32::from_le_bytes(word(c));
        if v != e.pattern {
            mismatches += 1;
            if first.is_none() {
                first = Some(format!("{}={v:#010x}", e.offset + 4 * i));
            }
        }
    }
    Ok(Expectation {
        slot: e.slot,
        offset: e.offset,
        len: e.len,
        pattern: format!("{:#010x}", e.pattern),
        mismatches,
        first_mismatch: first,
    })
}

/// Runs the command.
pub fn run(dev: &Device, opts: &RunOptions) -> Result<RunReport> {
    let spirv = std::fs::read(&opts.file)
        .map_err(|e| Error::io(format!("read {}", opts.file.display()), e))?;
    let mut bufs = Vec::new();
    for spec in &opts.bufs {
        if let Some(s) = spec.slot {
            if opts.bufs.iter().filter(|b| b.slot == Some(s)).count() > 1 {
                return Err(Error::InvalidArgument(format!("slot {s} has two --buf")));
            }
        }
        let mut buf = dev.buffer(spec.size)?;
        buf.write(0, &fill(spec)?)?;
        bufs.push((spec.clone(), buf));
    }
    let t0 = Instant::now();
    let module = if opts.unchecked {
        dev.load_module_unchecked(&spirv, &opts.entry)?
    } else {
        dev.load_module(&spirv, &opts.entry)?
    };
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut times = Vec::new();
    {
        let bindings: Vec<Binding<'_>> = bufs
            .iter()
            .filter_map(|(s, b)| {
                let slot = s.slot?;
                Some(match s.bind {
                    Some((off, len)) => Binding::range(slot, b, off, len),
                    None => Binding::whole(slot, b),
                })
            })
            .collect();
        for _ in 0..opts.repeat.max(1) {
            let launch = module.launch(opts.grid, &bindings, &opts.push)?;
            times.push(launch.wait()?.as_secs_f64() * 1e6);
        }
    }
    times.sort_by(f64::total_cmp);
    let mut dumps = Vec::new();
    for d in &opts.dumps {
        dumps.push(dump(by_slot(&mut bufs, d.slot)?, d)?);
    }
    let mut expects = Vec::new();
    for e in &opts.expects {
        expects.push(expect(by_slot(&mut bufs, e.slot)?, e)?);
    }
    Ok(RunReport {
        file: opts.file.display().to_string(),
        module_bytes: spirv.len(),
        entry: opts.entry.clone(),
        load_ms,
        grid: opts.grid,
        launches: times.len() as u32,
        p50_us: percentile(&times, 50.0),
        best_us: times.first().copied().unwrap_or(0.0),
        dumps,
        ok: expects.iter().all(|e| e.mismatches == 0),
        expects,
    })
}

impl RunReport {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        crate::pretty_json(self)
    }

    /// Text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "module {} ({} bytes, entry {}): loaded in {:.1} ms",
            self.file, self.module_bytes, self.entry, self.load_ms
        );
        let [x, y, z] = self.grid;
        let _ = writeln!(
            out,
            "launch {x}x{y}x{z} workgroups: {} run{}, p50 {:.0} us, best {:.0} us",
            self.launches,
            if self.launches == 1 { "" } else { "s" },
            self.p50_us,
            self.best_us
        );
        for d in &self.dumps {
            let per_line = if d.format == "hex" { 16 } else { 8 };
            let step = if d.format == "hex" { 1 } else { 4 };
            let _ = writeln!(
                out,
                "slot {} ({}) from byte {}:",
                d.slot, d.format, d.offset
            );
            for (i, line) in d.values.chunks(per_line).enumerate() {
                let _ = writeln!(
                    out,
                    "  {:08x}  {}",
                    d.offset + i * per_line * step,
                    line.join(" ")
                );
            }
        }
        for e in &self.expects {
            let _ = match &e.first_mismatch {
                None => writeln!(
                    out,
                    "expect slot {} bytes {}..+{} = {}: ok",
                    e.slot, e.offset, e.len, e.pattern
                ),
                Some(m) => writeln!(
                    out,
                    "expect slot {} bytes {}..+{} = {}: FAILED, {} words differ, first at {m}",
                    e.slot, e.offset, e.len, e.pattern, e.mismatches
                ),
            };
        }
        out
    }
}
