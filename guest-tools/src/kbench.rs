//! `vgpu-smi kbench`: runs the example kernels ([`crate::kernels`]) through the guest library at
//! a few sizes, verifies results against the CPU references and reports time and throughput.
//!
//! Per example the module is loaded once (the load time includes the host's validation,
//! instrumentation and pipeline compile). Per size, `launches` runs are timed from submit to
//! fence (a `reduce_sum` run is all its passes); the outputs are poisoned before the first and
//! the last run and both results are verified, so a run the host skipped cannot pass.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bench::percentile;
use crate::compute::{Binding, Buffer, Device, Module};
use crate::error::{Error, Result};
use crate::kernels::{self, Conv2d, Example, REDUCE_PER_GROUP};

/// Byte the outputs are poisoned with (0xa5a5a5a5 is a float of about -2.9e-16, never a result
/// within tolerance of the inputs used here).
const POISON: u8 = 0xa5;

/// kbench options.
#[derive(Debug, Clone)]
pub struct KbenchOptions {
    /// Examples to run.
    pub examples: Vec<Example>,
    /// Only the smallest size of each.
    pub quick: bool,
    /// Timed runs per size (at least 2).
    pub launches: u32,
    /// Input seed.
    pub seed: u64,
}

/// One example at one size; JSON keys are stable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KbenchCase {
    /// `reduce_sum`, `conv2d` or `softmax`.
    pub kernel: String,
    /// The problem, e.g. `n=1048576`, `512x512 k=5`, `256x1024`.
    pub shape: String,
    /// Elements (floats) of the input.
    pub elements: u64,
    /// Launches (submits) per run.
    pub launches_per_run: u32,
    /// Timed runs.
    pub runs: u32,
    /// Module load time (host validation + compile), ms; the same for every size.
    pub load_ms: f64,
    /// Median run time, µs.
    pub p50_us: f64,
    /// Fastest run, µs.
    pub best_us: f64,
    /// Input elements per second at the median.
    pub elements_per_second: f64,
    /// Bytes read and written per run, per second at the median.
    pub bytes_per_second: f64,
    /// Both verified runs within tolerance.
    pub verified: bool,
    /// Largest error over its allowed bound (≤ 1 passes).
    pub max_error_ratio: f64,
    /// The first mismatch or error, if any.
    pub failure: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KbenchReport {
    /// The host device.
    pub device_name: String,
    /// The capset's loop budget.
    pub loop_budget: u32,
    /// Every case.
    pub cases: Vec<KbenchCase>,
    /// Every case verified.
    pub verified: bool,
}

/// One example at one size, its buffers uploaded.
trait Case {
    fn shape(&self) -> String;
    fn elements(&self) -> u64;
    fn bytes(&self) -> u64;
    fn launches_per_run(&self) -> u32;
    fn poison(&mut self) -> Result<()>;
    fn run(&mut self, m: &Module) -> Result<Duration>;
    /// `Ok(ratio)` within tolerance, `Err(text)` otherwise.
    fn verify(&mut self) -> Result<std::result::Result<f64, String>>;
}

fn poison(buf: &mut Buffer) -> Result<()> {
    let bytes = vec![POISON; buf.size()];
    buf.write(0, &bytes)
}

struct Reduce {
    xs: Vec<f32>,
    x: Buffer,
    scratch: [Buffer; 2],
    sum: f32,
}

impl Reduce {
    fn new(dev: &Device, n: usize, seed: u64) -> Result<Self> {
        let xs = kernels::inputs(seed, n, 1.0);
        let mut x = dev.buffer(n * 4)?;
        x.write_f32s(0, &xs)?;
        let partial = n.div_ceil(REDUCE_PER_GROUP).max(1) * 4;
        Ok(Reduce {
            xs,
            x,
            scratch: [dev.buffer(partial)?, dev.buffer(partial)?],
            sum: f32::NAN,
        })
    }
}

impl Case for Reduce {
    fn shape(&self) -> String {
        format!("n={}", self.xs.len())
    }
    fn elements(&self) -> u64 {
        self.xs.len() as u64
    }
    fn bytes(&self) -> u64 {
        let mut total = 0u64;
        let mut len = self.xs.len() as u64;
        while len > 1 || total == 0 {
            let groups = len.div_ceil(REDUCE_PER_GROUP as u64);
            total += 4 * (len + groups);
            len = groups;
        }
        total
    }
    fn launches_per_run(&self) -> u32 {
        let mut passes = 0;
        let mut len = self.xs.len();
        while len > 1 || passes == 0 {
            len = len.div_ceil(REDUCE_PER_GROUP);
            passes += 1;
        }
        passes
    }
    fn poison(&mut self) -> Result<()> {
        let [a, b] = &mut self.scratch;
        poison(a)?;
        poison(b)
    }
    fn run(&mut self, m: &Module) -> Result<Duration> {
        let [a, b] = &mut self.scratch;
        let (sum, times) = kernels::reduce_sum(m, &self.x, self.xs.len(), [a, b])?;
        self.sum = sum;
        Ok(times.iter().sum())
    }
    fn verify(&mut self) -> Result<std::result::Result<f64, String>> {
        let (_, bound) = crate::reference::reduce_reference(&self.xs);
        Ok(kernels::check_reduce(self.sum, &self.xs).map(|e| e / bound))
    }
}

struct Conv {
    width: usize,
    k: usize,
    image: Vec<f32>,
    filter: Vec<f32>,
    bufs: [Buffer; 3],
}

impl Conv {
    fn new(dev: &Device, width: usize, k: usize, seed: u64) -> Result<Self> {
        let image = kernels::inputs(seed, width * width, 1.0);
        let filter = kernels::inputs(seed ^ 0xf11e, k * k, 1.0);
        let mut img = dev.buffer(image.len() * 4)?;
        img.write_f32s(0, &image)?;
        let mut flt = dev.buffer(filter.len() * 4)?;
        flt.write_f32s(0, &filter)?;
        let out = dev.buffer(image.len() * 4)?;
        Ok(Conv {
            width,
            k,
            image,
            filter,
            bufs: [img, flt, out],
        })
    }
}

impl Case for Conv {
    fn shape(&self) -> String {
        format!("{0}x{0} k={1}", self.width, self.k)
    }
    fn elements(&self) -> u64 {
        self.image.len() as u64
    }
    fn bytes(&self) -> u64 {
        4 * (2 * self.image.len() + self.filter.len()) as u64
    }
    fn launches_per_run(&self) -> u32 {
        1
    }
    fn poison(&mut self) -> Result<()> {
        let [_, _, out] = &mut self.bufs;
        poison(out)
    }
    fn run(&mut self, m: &Module) -> Result<Duration> {
        let [img, flt, out] = &self.bufs;
        let bindings = [
            Binding::whole(0, img),
            Binding::whole(1, flt),
            Binding::whole(2, out),
        ];
        let grid = kernels::conv2d_grid(self.width, self.width)?;
        let push = kernels::conv2d_push(self.width, self.width, self.k)?;
        m.launch(grid, &bindings, &push)?.wait()
    }
    fn verify(&mut self) -> Result<std::result::Result<f64, String>> {
        let [_, _, out] = &mut self.bufs;
        let got = out.read_f32s(0, self.image.len())?;
        let (r, b) = kernels::conv2d_reference(&Conv2d {
            width: self.width,
            height: self.width,
            k: self.k,
            image: &self.image,
            filter: &self.filter,
        });
        Ok(kernels::check_bounded(&got, &r, &b))
    }
}

struct Softmax {
    rows: usize,
    cols: usize,
    xs: Vec<f32>,
    x: Buffer,
    y: Buffer,
}

impl Softmax {
    fn new(dev: &Device, rows: usize, cols: usize, seed: u64) -> Result<Self> {
        let xs = kernels::inputs(seed, rows * cols, 4.0);
        let mut x = dev.buffer(xs.len() * 4)?;
        x.write_f32s(0, &xs)?;
        let y = dev.buffer(xs.len() * 4)?;
        Ok(Softmax {
            rows,
            cols,
            xs,
            x,
            y,
        })
    }
}

impl Case for Softmax {
    fn shape(&self) -> String {
        format!("{}x{}", self.rows, self.cols)
    }
    fn elements(&self) -> u64 {
        self.xs.len() as u64
    }
    fn bytes(&self) -> u64 {
        8 * self.xs.len() as u64
    }
    fn launches_per_run(&self) -> u32 {
        1
    }
    fn poison(&mut self) -> Result<()> {
        poison(&mut self.y)
    }
    fn run(&mut self, m: &Module) -> Result<Duration> {
        let bindings = [Binding::whole(0, &self.x), Binding::whole(1, &self.y)];
        let rows =
            u32::try_from(self.rows).map_err(|_| Error::InvalidArgument("too many rows".into()))?;
        let cols = u32::try_from(self.cols)
            .map_err(|_| Error::InvalidArgument("too many columns".into()))?;
        m.launch([rows, 1, 1], &bindings, &cols.to_le_bytes())?
            .wait()
    }
    fn verify(&mut self) -> Result<std::result::Result<f64, String>> {
        let got = self.y.read_f32s(0, self.xs.len())?;
        let (r, b) = kernels::softmax_reference(&self.xs, self.cols);
        Ok(kernels::check_bounded(&got, &r, &b))
    }
}

/// The sizes of `ex`: (first, second) parameters; the first only with `quick`.
fn sizes(ex: Example, quick: bool) -> &'static [(usize, usize)] {
    let all: &'static [(usize, usize)] = match ex {
        Example::ReduceSum => &[(1 << 16, 0), (1 << 20, 0), (4 << 20, 0)],
        Example::Conv2d => &[(128, 3), (512, 5), (1024, 7)],
        Example::Softmax => &[(64, 1024), (256, 4096), (1024, 4096)],
    };
    if quick {
        all.get(..1).unwrap_or(all)
    } else {
        all
    }
}

fn make_case(
    dev: &Device,
    ex: Example,
    (a, b): (usize, usize),
    seed: u64,
) -> Result<Box<dyn Case>> {
    Ok(match ex {
        Example::ReduceSum => Box::new(Reduce::new(dev, a, seed)?),
        Example::Conv2d => Box::new(Conv::new(dev, a, b, seed)?),
        Example::Softmax => Box::new(Softmax::new(dev, a, b, seed)?),
    })
}

/// Runs one case: poisoned, timed and verified runs.
fn run_case(
    case: &mut dyn Case,
    m: &Module,
    runs: u32,
) -> Result<(Vec<f64>, std::result::Result<f64, String>)> {
    let mut times = Vec::new();
    let mut worst = 0.0f64;
    for i in 0..runs {
        let checked = i == 0 || i + 1 == runs;
        if checked {
            case.poison()?;
        }
        times.push(case.run(m)?.as_secs_f64() * 1e6);
        if checked {
            match case.verify()? {
                Ok(r) => worst = worst.max(r),
                Err(e) => return Ok((times, Err(format!("run {}: {e}", i + 1)))),
            }
        }
    }
    Ok((times, Ok(worst)))
}

/// Runs the bench.
pub fn run(dev: &Device, opts: &KbenchOptions) -> Result<KbenchReport> {
    let runs = opts.launches.max(2);
    let mut cases = Vec::new();
    for &ex in &opts.examples {
        let t0 = Instant::now();
        let module = kernels::load(dev, ex)?;
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        for &size in sizes(ex, opts.quick) {
            let mut case = make_case(dev, ex, size, opts.seed)?;
            let (mut times, outcome) = run_case(case.as_mut(), &module, runs)?;
            times.sort_by(f64::total_cmp);
            let p50 = percentile(&times, 50.0);
            let per_s = if p50 > 0.0 { 1e6 / p50 } else { 0.0 };
            let (verified, max_error_ratio, failure) = match outcome {
                Ok(r) => (true, r, None),
                Err(e) => (false, f64::NAN, Some(e)),
            };
            cases.push(KbenchCase {
                kernel: ex.name().to_string(),
                shape: case.shape(),
                elements: case.elements(),
                launches_per_run: case.launches_per_run(),
                runs: times.len() as u32,
                load_ms,
                p50_us: p50,
                best_us: times.first().copied().unwrap_or(0.0),
                elements_per_second: case.elements() as f64 * per_s,
                bytes_per_second: case.bytes() as f64 * per_s,
                verified,
                max_error_ratio,
                failure,
            });
        }
    }
    Ok(KbenchReport {
        device_name: dev.caps().device_name().to_string(),
        loop_budget: dev.caps().loop_budget(),
        verified: cases.iter().all(|c| c.verified),
        cases,
    })
}

impl KbenchReport {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        crate::pretty_json(self)
    }

    /// A table.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "kbench on {} (loop budget {} back edges per invocation)",
            self.device_name, self.loop_budget
        );
        let _ = writeln!(
            out,
            "{:<11} {:<14} {:>5} {:>8} {:>10} {:>10} {:>10} {:>9}  verified (max err/bound)",
            "kernel", "shape", "runs", "load ms", "p50 us", "best us", "Melem/s", "MB/s"
        );
        for c in &self.cases {
            let v = match &c.failure {
                None => format!("yes ({:.3})", c.max_error_ratio),
                Some(f) => format!("NO: {f}"),
            };
            let _ = writeln!(
                out,
                "{:<11} {:<14} {:>5} {:>8.1} {:>10.0} {:>10.0} {:>10.2} {:>9.1}  {v}",
                c.kernel,
                c.shape,
                c.runs,
                c.load_ms,
                c.p50_us,
                c.best_us,
                c.elements_per_second / 1e6,
                c.bytes_per_second / 1e6
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_sizes_are_the_smallest() {
        for ex in Example::ALL {
            assert_eq!(sizes(ex, true).len(), 1);
            assert_eq!(sizes(ex, true)[0], sizes(ex, false)[0]);
        }
    }
}
