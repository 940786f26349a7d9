//! `vgpu-smi bench`: runs one kernel repeatedly, one EXECBUFFER per job, and verifies every
//! job's result against a CPU reference computed in the guest.
//!
//! A job is timed from EXECBUFFER to the end of WAIT on its output BO. After each job the output
//! is read back (TRANSFER_FROM_HOST into a poisoned backing, untimed) and checked, so a job the
//! device skipped or rejected cannot pass on stale data:
//! - gemm: `C = alpha_j·A·B` (beta 0) with alpha_j cycling through 1, 1.125, … 1.75, so
//!   consecutive results differ;
//! - axpy: `y` changes with every job; the guest tracks it with the exact (unfused) reference;
//! - reduce / hash: each job writes its result to slot `j mod 1024` of an output buffer, and the
//!   same stream FILLs the next job's slot with a poison value.

use std::time::{Duration, Instant};

use serde::Serialize;
use vgpu_protocol::channel::{
    AxpyF32Args, Crc32cArgs, FillCmd, GemmF32Args, KernelLaunch, ReduceSumF32Args,
};
use vgpu_protocol::{ChannelCommand, Kernel};

use crate::device::{Buffer, Stream, VirtGpu};
use crate::error::{Error, Result};
use crate::reference::{self, Rng};
use crate::smi::kernel_name;

/// Output slots of the reduce/hash output buffer.
const SLOTS: u32 = 1024;
/// Poison written to the next output slot (an f32 NaN; as a CRC it is just a value).
const POISON: u32 = 0x7fc0_dead;
/// gemm alphas cycle through `1 + i/8`, i < this.
const ALPHA_STEPS: u32 = 7;

/// The kernel to benchmark (CLI names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchKernel {
    /// GEMM_F32 of size×size matrices.
    Gemm,
    /// AXPY_F32 over `size` floats.
    Axpy,
    /// REDUCE_SUM_F32 over `size` floats.
    Reduce,
    /// CRC32C over `size` bytes.
    Hash,
}

impl BenchKernel {
    /// The protocol kernel.
    pub fn kernel(self) -> Kernel {
        match self {
            BenchKernel::Gemm => Kernel::GemmF32,
            BenchKernel::Axpy => Kernel::AxpyF32,
            BenchKernel::Reduce => Kernel::ReduceSumF32,
            BenchKernel::Hash => Kernel::Crc32c,
        }
    }

    /// Default `--size`: matrix order for gemm, elements for axpy/reduce, bytes for hash.
    pub fn default_size(self) -> u32 {
        match self {
            BenchKernel::Gemm => 256,
            BenchKernel::Axpy | BenchKernel::Reduce => 1 << 20,
            BenchKernel::Hash => 4 << 20,
        }
    }
}

/// Bench options.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Kernel.
    pub kernel: BenchKernel,
    /// Size (see [`BenchKernel::default_size`]).
    pub size: u32,
    /// How long to run (wall clock, verification included).
    pub seconds: f64,
    /// Input seed.
    pub seed: u64,
}

/// The bench result; its JSON keys are stable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// Kernel name (`gemm_f32`, …).
    pub kernel: String,
    /// `--size`.
    pub size: u32,
    /// Jobs run (and verified, unless `verified` is false).
    pub jobs: u64,
    /// Jobs per second of job time (EXECBUFFER to fence).
    pub jobs_per_second: f64,
    /// Bytes the kernel reads and writes per job, per second of job time.
    pub bytes_per_second: f64,
    /// Median job latency.
    pub p50_us: f64,
    /// 99th percentile job latency.
    pub p99_us: f64,
    /// Every job's result matched the CPU reference.
    pub verified: bool,
    /// The first mismatch, if any.
    pub failure: Option<String>,
    /// Wall-clock duration including read-back and verification.
    pub wall_seconds: f64,
}

/// Nearest-rank percentile of sorted values (0 for an empty slice).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    sorted.get(idx).copied().unwrap_or(0.0)
}

/// Bytes a launch reads plus bytes it writes.
pub fn launch_bytes(launch: &KernelLaunch) -> u64 {
    ChannelCommand::Launch(*launch)
        .accesses()
        .fold(0u64, |acc, a| acc.saturating_add(a.len))
}

/// The gemm alpha of job `j`.
pub fn gemm_alpha(j: u64) -> f32 {
    1.0 + (j % u64::from(ALPHA_STEPS)) as f32 / 8.0
}

/// Encodes job `j` of a slot kernel (reduce/hash): the launch into slot `j mod SLOTS`, then a
/// FILL of the next slot with [`POISON`].
pub fn slot_job(stream: &mut Stream, launch: KernelLaunch, out_res: u32, j: u64) {
    stream.clear();
    stream.push(&ChannelCommand::Launch(launch));
    let next = (j + 1) % u64::from(SLOTS);
    stream.push(&ChannelCommand::Fill(FillCmd {
        dst_res: out_res,
        pattern: POISON,
        offset: next * 4,
        size: 4,
    }));
}

/// Byte offset of job `j`'s output slot.
pub fn slot_offset(j: u64) -> u32 {
    ((j % u64::from(SLOTS)) * 4) as u32
}

fn bytes_of(n: u64, what: &str, gpu: &VirtGpu) -> Result<u32> {
    let max = gpu.capset().max_buffer_bytes;
    if max != 0 && n > max {
        return Err(Error::Device(format!(
            "{what} needs {n} bytes, more than the vGPU's largest buffer ({max})"
        )));
    }
    u32::try_from(n).map_err(|_| Error::Device(format!("{what}: {n} bytes is too large")))
}

fn upload(buf: &mut Buffer<'_>, data: &[u8]) -> Result<()> {
    let len = u32::try_from(data.len()).map_err(|_| Error::Device("upload too large".into()))?;
    let dst = buf
        .bytes()?
        .get_mut(..data.len())
        .ok_or_else(|| Error::Device("upload larger than the backing".into()))?;
    dst.copy_from_slice(data);
    buf.to_host(0, len, 0)?;
    buf.wait("TRANSFER_TO_HOST of the inputs")
}

/// Reads `len` resource bytes at `off` into the (poisoned) backing at the same offset.
fn read_back<'b>(buf: &'b mut Buffer<'_>, off: u32, len: u32) -> Result<&'b [u8]> {
    buf.poison(off as usize, len as usize)?;
    buf.from_host(off, len, off)?;
    buf.wait("TRANSFER_FROM_HOST of a result")?;
    let end = off as usize + len as usize;
    let b: &[u8] = buf.bytes()?;
    b.get(off as usize..end)
        .ok_or_else(|| Error::Device("read-back outside the backing".into()))
}

fn u32_at(bytes: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    for (d, s) in w.iter_mut().zip(bytes) {
        *d = *s;
    }
    u32::from_le_bytes(w)
}

/// Per-job state of the kernel under test.
enum Job<'d> {
    Gemm {
        a: Buffer<'d>,
        b: Buffer<'d>,
        c: Buffer<'d>,
        n: u32,
        reference: Vec<f64>,
        bound: Vec<f64>,
        scaled_ref: Vec<f64>,
        scaled_bound: Vec<f64>,
    },
    Axpy {
        x: Buffer<'d>,
        y: Buffer<'d>,
        n: u32,
        alpha: f32,
        xs: Vec<f32>,
        ys: Vec<f32>,
    },
    Reduce {
        x: Buffer<'d>,
        out: Buffer<'d>,
        n: u32,
        sum: f64,
        bound: f64,
    },
    Hash {
        src: Buffer<'d>,
        out: Buffer<'d>,
        len: u32,
        crc: u32,
    },
}

fn setup<'d>(gpu: &'d VirtGpu, opts: &BenchOptions, rng: &mut Rng) -> Result<Job<'d>> {
    let size = opts.size.max(1);
    Ok(match opts.kernel {
        BenchKernel::Gemm => {
            let n = size as usize;
            let bytes = bytes_of(4 * u64::from(size) * u64::from(size), "a gemm matrix", gpu)?;
            let mut a = gpu.create_buffer(bytes, bytes)?;
            let mut b = gpu.create_buffer(bytes, bytes)?;
            let c = gpu.create_buffer(bytes, bytes)?;
            let mut av = vec![0f32; n * n];
            let mut bv = vec![0f32; n * n];
            rng.fill_f32(&mut av);
            rng.fill_f32(&mut bv);
            let mut raw = vec![0u8; bytes as usize];
            reference::f32s_to_le(&av, &mut raw);
            upload(&mut a, &raw)?;
            reference::f32s_to_le(&bv, &mut raw);
            upload(&mut b, &raw)?;
            let c0 = vec![0f32; n * n];
            let (reference, bound) = reference::gemm_reference(&reference::GemmProblem {
                m: n,
                n,
                k: n,
                alpha: 1.0,
                a: &av,
                b: &bv,
                beta: 0.0,
                c0: &c0,
            })
            .ok_or_else(|| Error::Device("gemm reference: bad sizes".into()))?;
            Job::Gemm {
                a,
                b,
                c,
                n: size,
                scaled_ref: vec![0f64; reference.len()],
                scaled_bound: vec![0f64; bound.len()],
                reference,
                bound,
            }
        }
        BenchKernel::Axpy => {
            let bytes = bytes_of(4 * u64::from(size), "an axpy vector", gpu)?;
            let mut x = gpu.create_buffer(bytes, bytes)?;
            let mut y = gpu.create_buffer(bytes, bytes)?;
            let mut xs = vec![0f32; size as usize];
            let mut ys = vec![0f32; size as usize];
            rng.fill_f32(&mut xs);
            rng.fill_f32(&mut ys);
            let mut raw = vec![0u8; bytes as usize];
            reference::f32s_to_le(&xs, &mut raw);
            upload(&mut x, &raw)?;
            reference::f32s_to_le(&ys, &mut raw);
            upload(&mut y, &raw)?;
            Job::Axpy {
                x,
                y,
                n: size,
                alpha: 0.5,
                xs,
                ys,
            }
        }
        BenchKernel::Reduce => {
            let bytes = bytes_of(4 * u64::from(size), "a reduce vector", gpu)?;
            let mut x = gpu.create_buffer(bytes, bytes)?;
            let out = poisoned_slots(gpu)?;
            let mut xs = vec![0f32; size as usize];
            rng.fill_f32(&mut xs);
            let mut raw = vec![0u8; bytes as usize];
            reference::f32s_to_le(&xs, &mut raw);
            upload(&mut x, &raw)?;
            let (sum, bound) = reference::reduce_reference(&xs);
            Job::Reduce {
                x,
                out,
                n: size,
                sum,
                bound,
            }
        }
        BenchKernel::Hash => {
            let len = bytes_of(u64::from(size), "the hash input", gpu)?;
            let mut src = gpu.create_buffer(len, len)?;
            let out = poisoned_slots(gpu)?;
            let mut raw = vec![0u8; len as usize];
            rng.fill_bytes(&mut raw);
            upload(&mut src, &raw)?;
            let crc = vgpu_protocol::crc32c::crc32c(&raw);
            Job::Hash { src, out, len, crc }
        }
    })
}

/// The output buffer of a slot kernel, every slot FILLed with [`POISON`].
fn poisoned_slots(gpu: &VirtGpu) -> Result<Buffer<'_>> {
    let out = gpu.create_buffer(SLOTS * 4, SLOTS * 4)?;
    let mut s = Stream::new();
    s.push(&ChannelCommand::Fill(FillCmd {
        dst_res: out.res_id(),
        pattern: POISON,
        offset: 0,
        size: u64::from(SLOTS) * 4,
    }));
    gpu.submit(s.bytes(), &[out.bo_handle()])?;
    out.wait("FILL of the output slots")?;
    Ok(out)
}

impl Job<'_> {
    /// Encodes job `j` and returns the BO list's handles (at most 3) and the launch.
    fn encode(&self, stream: &mut Stream, j: u64) -> ([u32; 3], usize, KernelLaunch) {
        match self {
            Job::Gemm { a, b, c, n, .. } => {
                let l = KernelLaunch::GemmF32(GemmF32Args {
                    a_res: a.res_id(),
                    b_res: b.res_id(),
                    c_res: c.res_id(),
                    m: *n,
                    n: *n,
                    k: *n,
                    alpha: gemm_alpha(j),
                    beta: 0.0,
                });
                stream.clear();
                stream.push(&ChannelCommand::Launch(l));
                ([c.bo_handle(), a.bo_handle(), b.bo_handle()], 3, l)
            }
            Job::Axpy { x, y, n, alpha, .. } => {
                let l = KernelLaunch::AxpyF32(AxpyF32Args {
                    x_res: x.res_id(),
                    y_res: y.res_id(),
                    n: *n,
                    alpha: *alpha,
                });
                stream.clear();
                stream.push(&ChannelCommand::Launch(l));
                ([y.bo_handle(), x.bo_handle(), 0], 2, l)
            }
            Job::Reduce { x, out, n, .. } => {
                let l = KernelLaunch::ReduceSumF32(ReduceSumF32Args {
                    x_res: x.res_id(),
                    out_res: out.res_id(),
                    n: *n,
                    reserved: 0,
                    out_offset: u64::from(slot_offset(j)),
                });
                slot_job(stream, l, out.res_id(), j);
                ([out.bo_handle(), x.bo_handle(), 0], 2, l)
            }
            Job::Hash { src, out, len, .. } => {
                let l = KernelLaunch::Crc32c(Crc32cArgs {
                    src_res: src.res_id(),
                    out_res: out.res_id(),
                    src_offset: 0,
                    len: u64::from(*len),
                    out_offset: u64::from(slot_offset(j)),
                });
                slot_job(stream, l, out.res_id(), j);
                ([out.bo_handle(), src.bo_handle(), 0], 2, l)
            }
        }
    }

    /// The BO whose fence marks the job's end.
    fn output(&self) -> &Buffer<'_> {
        match self {
            Job::Gemm { c, .. } => c,
            Job::Axpy { y, .. } => y,
            Job::Reduce { out, .. } | Job::Hash { out, .. } => out,
        }
    }

    /// Reads job `j`'s result back and checks it.
    fn verify(
        &mut self,
        j: u64,
        scratch: &mut Vec<f32>,
    ) -> Result<std::result::Result<(), String>> {
        Ok(match self {
            Job::Gemm {
                c,
                reference,
                bound,
                scaled_ref,
                scaled_bound,
                ..
            } => {
                let len = c.width();
                reference::f32s_from_le(read_back(c, 0, len)?, scratch);
                let alpha = f64::from(gemm_alpha(j));
                for (d, r) in scaled_ref.iter_mut().zip(reference.iter()) {
                    *d = alpha * r;
                }
                for (d, b) in scaled_bound.iter_mut().zip(bound.iter()) {
                    *d = alpha * b;
                }
                reference::check_within(scratch, scaled_ref, scaled_bound)
            }
            Job::Axpy {
                y, alpha, xs, ys, ..
            } => {
                reference::axpy_reference(*alpha, xs, ys);
                let len = y.width();
                reference::f32s_from_le(read_back(y, 0, len)?, scratch);
                reference::check_exact(scratch, ys)
            }
            Job::Reduce {
                out, sum, bound, ..
            } => {
                let v = f32::from_bits(u32_at(read_back(out, slot_offset(j), 4)?));
                let err = (f64::from(v) - *sum).abs();
                if v.is_finite() && err <= *bound {
                    Ok(())
                } else {
                    Err(format!(
                        "sum: device {v:e}, reference {sum:e} (allowed error {bound:e})"
                    ))
                }
            }
            Job::Hash { out, crc, .. } => {
                let got = u32_at(read_back(out, slot_offset(j), 4)?);
                if got == *crc {
                    Ok(())
                } else {
                    Err(format!("crc32c: device {got:#010x}, reference {crc:#010x}"))
                }
            }
        })
    }
}

/// Runs the benchmark.
pub fn run(gpu: &VirtGpu, opts: &BenchOptions) -> Result<BenchReport> {
    let kernel = opts.kernel.kernel();
    if !gpu.capset().supports(kernel) {
        return Err(Error::Protocol(format!(
            "the vGPU does not offer kernel {} (kernel_mask {:#x})",
            kernel_name(kernel),
            gpu.capset().kernel_mask
        )));
    }
    let mut rng = Rng::new(opts.seed);
    let mut job = setup(gpu, opts, &mut rng)?;
    let mut stream = Stream::new();
    let mut scratch = Vec::new();
    let mut latencies: Vec<f64> = Vec::with_capacity(4096);
    let mut busy = Duration::ZERO;
    let mut moved: u64 = 0;
    let mut failure = None;
    let budget = Duration::from_secs_f64(opts.seconds.max(0.0));
    let start = Instant::now();
    let mut j: u64 = 0;
    while j == 0 || start.elapsed() < budget {
        let (bos, nbos, launch) = job.encode(&mut stream, j);
        let bos = bos.get(..nbos).unwrap_or_default();
        let t0 = Instant::now();
        gpu.submit(stream.bytes(), bos)?;
        job.output().wait("a bench job")?;
        let dt = t0.elapsed();
        busy += dt;
        latencies.push(dt.as_secs_f64() * 1e6);
        moved = moved.saturating_add(launch_bytes(&launch));
        if let Err(msg) = job.verify(j, &mut scratch)? {
            failure = Some(format!("job {j}: {msg}"));
            j += 1;
            break;
        }
        j += 1;
    }
    let wall = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let secs = busy.as_secs_f64();
    let per_sec = |v: f64| if secs > 0.0 { v / secs } else { 0.0 };
    Ok(BenchReport {
        kernel: kernel_name(kernel).to_string(),
        size: opts.size,
        jobs: j,
        jobs_per_second: per_sec(j as f64),
        bytes_per_second: per_sec(moved as f64),
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        verified: failure.is_none(),
        failure,
        wall_seconds: wall,
    })
}

impl BenchReport {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        crate::pretty_json(self)
    }

    /// Human-readable summary.
    pub fn render(&self) -> String {
        let mut s = format!(
            "kernel {} size {}: {} jobs in {:.2} s, {:.1} jobs/s, {:.1} MB/s, latency p50 {:.0} us \
             p99 {:.0} us, ",
            self.kernel,
            self.size,
            self.jobs,
            self.wall_seconds,
            self.jobs_per_second,
            self.bytes_per_second / 1e6,
            self.p50_us,
            self.p99_us
        );
        match &self.failure {
            None => s.push_str("all results verified\n"),
            Some(f) => {
                s.push_str("VERIFICATION FAILED: ");
                s.push_str(f);
                s.push('\n');
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn gemm_alphas_alternate_exactly() {
        assert_eq!(gemm_alpha(0), 1.0);
        assert_eq!(gemm_alpha(1), 1.125);
        assert_eq!(gemm_alpha(7), 1.0);
        for j in 0..20 {
            assert_ne!(gemm_alpha(j), gemm_alpha(j + 1));
        }
    }

    #[test]
    fn slot_stream_layout() {
        let mut s = Stream::new();
        let l = KernelLaunch::Crc32c(Crc32cArgs {
            src_res: 3,
            out_res: 4,
            src_offset: 0,
            len: 100,
            out_offset: u64::from(slot_offset(SLOTS as u64 - 1)),
        });
        slot_job(&mut s, l, 4, u64::from(SLOTS) - 1);
        let cmds: Vec<_> = vgpu_protocol::decode_stream(s.bytes())
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0], ChannelCommand::Launch(l));
        // The last slot's successor wraps to slot 0.
        assert_eq!(
            cmds[1],
            ChannelCommand::Fill(FillCmd {
                dst_res: 4,
                pattern: POISON,
                offset: 0,
                size: 4
            })
        );
        assert_eq!(slot_offset(1), 4);
        assert_eq!(slot_offset(u64::from(SLOTS) + 2), 8);
    }

    #[test]
    fn bytes_per_launch() {
        let g = KernelLaunch::GemmF32(GemmF32Args {
            a_res: 1,
            b_res: 2,
            c_res: 3,
            m: 4,
            n: 4,
            k: 4,
            alpha: 1.0,
            beta: 0.0,
        });
        assert_eq!(launch_bytes(&g), 3 * 64);
        let a = KernelLaunch::AxpyF32(AxpyF32Args {
            x_res: 1,
            y_res: 2,
            n: 10,
            alpha: 2.0,
        });
        assert_eq!(launch_bytes(&a), 80);
    }

    #[test]
    fn default_sizes_and_kernels() {
        assert_eq!(BenchKernel::Gemm.kernel(), Kernel::GemmF32);
        assert_eq!(BenchKernel::Hash.kernel(), Kernel::Crc32c);
        assert_eq!(BenchKernel::Gemm.default_size(), 256);
    }

    #[test]
    fn report_json_keys() {
        let r = BenchReport {
            kernel: "crc32c".into(),
            size: 1,
            jobs: 2,
            jobs_per_second: 3.0,
            bytes_per_second: 4.0,
            p50_us: 5.0,
            p99_us: 6.0,
            verified: true,
            failure: None,
            wall_seconds: 7.0,
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        for key in [
            "kernel",
            "jobs",
            "jobs_per_second",
            "bytes_per_second",
            "p50_us",
            "p99_us",
            "verified",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["verified"], true);
        assert!(r.render().contains("all results verified"));
    }
}
