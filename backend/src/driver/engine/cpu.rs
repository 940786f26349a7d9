//! The embedded CPU engine: runs operations on the device thread in chunks of about the target
//! the device thread passes for each chunk ([`DEFAULT_CHUNK_TARGET_NS`] while other vGPUs may
//! need the engine, longer while one runs alone), sized by a cost model that learns the
//! machine's speed.
//!
//! Chunking: copy, fill and crc32c by byte ranges; axpy and reduce by element ranges. A chunk's
//! size is `target / estimated ns per unit`, and the estimate is an exponential average of
//! measured chunk times, so chunks stay near the target on fast or slow (debug, loaded) machines
//! alike. The estimate is per unit of work, not per chunk, so it serves short and long targets
//! alike.
//!
//! GEMM runs on the engine's own kernel ([`gemm`]): packed operand panels around a
//! register-blocked micro-kernel (AVX2+FMA when the CPU has it, portable Rust otherwise). A chunk
//! computes a number of `6 × 16` micro-tiles of one k-block each, `target / (estimated ns per
//! micro-tile)` of them (at least one), and the GEMM's position and packed panels stay in the
//! operation's state ([`CpuOpState`]) until the next chunk: the B panel of the current column
//! panel and k-block (at most 256 × 1024 floats, 1 MiB) and the A block of the current row block
//! (at most 144 × 256 floats, 144 KiB). Cutting a GEMM into chunks therefore costs no
//! repacking, and a chunk can stop after any micro-tile (under a µs of work in a release build),
//! so chunks stay close to their target whatever the shape. This memory is the engine's host
//! memory, not charged to any partition: at most 1.15 MiB per GEMM in progress (one per vGPU
//! preempted in the middle of a GEMM) plus one spare set the engine keeps for its next GEMM (so
//! back-to-back GEMMs do not fault fresh pages in); a failed GEMM's panels are dropped. Every
//! element of C is summed the same way wherever a chunk stopped, so the result does not depend
//! on the chunking, bit for bit (see [`gemm`]).

use std::time::Instant;

pub mod gemm;

use super::{
    Engine, EngineCaps, EngineError, EngineKind, OpProgress, Step, DEFAULT_CHUNK_TARGET_NS,
};
use crate::driver::buffer::BufferError;
use crate::driver::job::{BufRef, Op, OpKind};
use crate::driver::kernels::{self, GemmDims};

/// Cost of packing one element of A or B, in multiply-adds, for the cost model.
const PACK_COST: f64 = 2.0;

/// Pessimistic first guesses (ns per unit), indexed by [`OpKind::index`]; the model adapts.
const INITIAL_NS_PER_UNIT: [f64; OpKind::COUNT] = [
    0.5,    // copy: ns per byte
    0.5,    // fill: ns per byte
    1.0,    // gemm: ns per multiply-add
    2.0,    // axpy: ns per element
    2.0,    // reduce: ns per element
    1.0,    // crc32c: ns per byte
    1000.0, // dispatch: never run here (guest modules need a Vulkan engine)
];
/// Byte-wise operations are never split finer than this.
const MIN_BYTES_PER_CHUNK: u64 = 256;
/// Largest sample, as a multiple of the estimate, taken into the average (a chunk stretched by
/// the host descheduling the thread should not shrink all later chunks much).
const MAX_SAMPLE_RATIO: f64 = 8.0;

/// The CPU engine's per-operation state ([`Engine::OpState`]): the progress every operation
/// has, and for a GEMM its position and packed panels (see the module docs).
#[derive(Debug, Default)]
pub struct CpuOpState {
    /// Units done, running sum or CRC, chunks run.
    pub progress: OpProgress,
    /// A GEMM in progress (`None` before its first chunk and after its last).
    gemm: Option<Box<gemm::GemmPanels>>,
}

impl CpuOpState {
    /// Bytes of packed GEMM panels this state holds between chunks.
    pub fn held_bytes(&self) -> usize {
        self.gemm.as_ref().map_or(0, |g| g.held_bytes())
    }
}

impl std::ops::Deref for CpuOpState {
    type Target = OpProgress;

    fn deref(&self) -> &OpProgress {
        &self.progress
    }
}

impl std::ops::DerefMut for CpuOpState {
    fn deref_mut(&mut self) -> &mut OpProgress {
        &mut self.progress
    }
}

/// The embedded CPU engine.
#[derive(Debug, Clone)]
pub struct CpuEngine {
    target_ns: u64,
    ns_per_unit: [f64; OpKind::COUNT],
    /// Packed-panel memory of the last finished GEMM, for the next one.
    spare_panels: Option<Box<gemm::GemmPanels>>,
}

impl Default for CpuEngine {
    fn default() -> Self {
        Self::new(DEFAULT_CHUNK_TARGET_NS)
    }
}

fn bad_range(r: &BufRef, len: u64) -> EngineError {
    EngineError::Buffer(BufferError::OutOfRange {
        offset: r.offset,
        len,
        size: r.buffer.size(),
    })
}

/// `len` bytes at `r` within `words`.
fn bytes<'a>(words: &'a [u64], r: &BufRef, at: u64, len: u64) -> Result<&'a [u8], EngineError> {
    let all: &[u8] = bytemuck::cast_slice(words);
    range(r, at, len).and_then(|rg| all.get(rg).ok_or_else(|| bad_range(r, len)))
}

fn bytes_mut<'a>(
    words: &'a mut [u64],
    r: &BufRef,
    at: u64,
    len: u64,
) -> Result<&'a mut [u8], EngineError> {
    let rg = range(r, at, len)?;
    let all: &mut [u8] = bytemuck::cast_slice_mut(words);
    all.get_mut(rg).ok_or_else(|| bad_range(r, len))
}

/// Byte range `r.offset + at .. + len` as usize.
fn range(r: &BufRef, at: u64, len: u64) -> Result<std::ops::Range<usize>, EngineError> {
    let start = r.offset.checked_add(at).ok_or_else(|| bad_range(r, len))?;
    let end = start.checked_add(len).ok_or_else(|| bad_range(r, len))?;
    match (usize::try_from(start), usize::try_from(end)) {
        (Ok(s), Ok(e)) => Ok(s..e),
        _ => Err(bad_range(r, len)),
    }
}

fn floats<'a>(words: &'a [u64], r: &BufRef, at: u64, count: u64) -> Result<&'a [f32], EngineError> {
    let len = count.checked_mul(4).ok_or_else(|| bad_range(r, count))?;
    let at = at.checked_mul(4).ok_or_else(|| bad_range(r, count))?;
    Ok(bytemuck::cast_slice(bytes(words, r, at, len)?))
}

fn floats_mut<'a>(
    words: &'a mut [u64],
    r: &BufRef,
    at: u64,
    count: u64,
) -> Result<&'a mut [f32], EngineError> {
    let len = count.checked_mul(4).ok_or_else(|| bad_range(r, count))?;
    let at = at.checked_mul(4).ok_or_else(|| bad_range(r, count))?;
    Ok(bytemuck::cast_slice_mut(bytes_mut(words, r, at, len)?))
}

fn usize_of(v: u64) -> usize {
    // Dimensions come from u32s and validated buffer sizes, which fit usize on 64-bit hosts.
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl CpuEngine {
    /// An engine aiming at chunks of `target_ns`.
    pub fn new(target_ns: u64) -> Self {
        Self {
            target_ns: target_ns.max(1),
            ns_per_unit: INITIAL_NS_PER_UNIT,
            spare_panels: None,
        }
    }

    /// The current cost estimate for `kind` in ns per unit (gemm: per multiply-add).
    pub fn ns_per_unit(&self, kind: OpKind) -> f64 {
        self.ns_per_unit[kind.index()]
    }

    /// Units for the next chunk of `op` (about `target_ns`), given `remaining` units.
    fn chunk_units(&self, op: &Op, remaining: u64, target_ns: u64) -> u64 {
        let per_unit = self.ns_per_unit[op.kind().index()].max(1e-6);
        let cost_units = (target_ns.max(1) as f64 / per_unit).max(1.0) as u64;
        let units = match op {
            Op::Copy { .. } | Op::Fill { .. } | Op::Crc32c { .. } => {
                cost_units.max(MIN_BYTES_PER_CHUNK)
            }
            Op::AxpyF32 { .. } | Op::ReduceSumF32 { .. } | Op::GemmF32 { .. } | Op::Dispatch(_) => {
                cost_units
            }
        };
        units.clamp(1, remaining.max(1)).min(remaining)
    }

    fn observe(&mut self, kind: OpKind, cost_units: f64, elapsed_ns: u64) {
        if cost_units <= 0.0 {
            return;
        }
        let est = &mut self.ns_per_unit[kind.index()];
        let sample = (elapsed_ns as f64 / cost_units).min(*est * MAX_SAMPLE_RATIO);
        *est = (*est * 0.75 + sample * 0.25).max(1e-6);
    }

    /// Runs `units` units of `op` starting at unit `at`.
    fn execute(op: &Op, at: u64, units: u64, progress: &mut OpProgress) -> Result<(), EngineError> {
        match op {
            Op::Copy { src, dst, .. } => {
                if std::sync::Arc::ptr_eq(&src.buffer, &dst.buffer) {
                    let mut words = dst.buffer.write_words()?;
                    let from = range(src, at, units)?;
                    let to = range(dst, at, units)?;
                    let all: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
                    if from.end > all.len() || to.end > all.len() {
                        return Err(bad_range(dst, units));
                    }
                    all.copy_within(from, to.start);
                } else {
                    let input = src.buffer.read_words()?;
                    let mut output = dst.buffer.write_words()?;
                    bytes_mut(&mut output, dst, at, units)?
                        .copy_from_slice(bytes(&input, src, at, units)?);
                }
            }
            Op::Fill { dst, pattern, .. } => {
                let pat = pattern.to_le_bytes();
                let mut output = dst.buffer.write_words()?;
                let out = bytes_mut(&mut output, dst, at, units)?;
                // Phase of the pattern relative to the start of the fill.
                let phase = usize_of(at % 4);
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte = pat[(phase + i) % 4];
                }
            }
            // Run by `gemm_chunk`; refused by `run_chunk`.
            Op::GemmF32 { .. } | Op::Dispatch(_) => {}
            Op::AxpyF32 { alpha, x, y, .. } => {
                let input = x.buffer.read_words()?;
                let mut output = y.buffer.write_words()?;
                let xs = floats(&input, x, at, units)?;
                kernels::axpy_f32(*alpha, xs, floats_mut(&mut output, y, at, units)?)?;
            }
            Op::ReduceSumF32 { x, .. } => {
                let input = x.buffer.read_words()?;
                progress.sum = kernels::reduce_sum_f32(progress.sum, floats(&input, x, at, units)?);
            }
            Op::Crc32c { src, .. } => {
                let input = src.buffer.read_words()?;
                progress.crc = kernels::crc32c_append(progress.crc, bytes(&input, src, at, units)?);
            }
        }
        Ok(())
    }

    /// Runs the next chunk of a GEMM, about `target_ns` of work: as many micro-tiles as the
    /// cost model says fit the budget, at least one (see the module docs).
    fn gemm_chunk(
        &mut self,
        op: &Op,
        state: &mut CpuOpState,
        target_ns: u64,
    ) -> Result<Step, EngineError> {
        let Op::GemmF32 {
            m,
            n,
            k,
            alpha,
            beta,
            a,
            b,
            c,
        } = op
        else {
            return Ok(Step::Done);
        };
        let (m64, n64, k64) = (u64::from(*m), u64::from(*n), u64::from(*k));
        if state.progress.done >= m64 {
            return Ok(Step::Done);
        }
        let dims = GemmDims {
            m: usize_of(m64),
            n: usize_of(n64),
            k: usize_of(k64),
        };
        let per_unit = self.ns_per_unit[OpKind::Gemm.index()].max(1e-6);
        let budget = target_ns.max(1) as f64 / per_unit;
        let started = Instant::now();
        let result = {
            let a_words = a.buffer.read_words()?;
            // B may share A's buffer: reuse the guard rather than locking twice.
            let b_guard;
            let b_words: &[u64] = if std::sync::Arc::ptr_eq(&a.buffer, &b.buffer) {
                &a_words
            } else {
                b_guard = b.buffer.read_words()?;
                &b_guard
            };
            let mut c_words = c.buffer.write_words()?;
            let a_f = floats(&a_words, a, 0, m64 * k64)?;
            let b_f = floats(b_words, b, 0, k64 * n64)?;
            let c_f = floats_mut(&mut c_words, c, 0, m64 * n64)?;
            let lens = (a_f.len(), b_f.len(), c_f.len());
            gemm::GemmShape::new(dims, *alpha, *beta, lens).and_then(|shape| {
                let tiles = (budget / shape.tile_macs()).max(1.0) as u64;
                let spare = &mut self.spare_panels;
                let panels = state.gemm.get_or_insert_with(|| {
                    let mut panels = spare.take().unwrap_or_default();
                    panels.reset();
                    panels
                });
                let report = panels.run(&shape, gemm::Isa::detect(), a_f, b_f, c_f, tiles)?;
                Ok((report, shape.tile_macs()))
            })
        };
        let (report, tile_macs) = match result {
            Ok(r) => r,
            Err(e) => {
                state.gemm = None;
                return Err(e.into());
            }
        };
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let cost = report.tiles as f64 * tile_macs + PACK_COST * report.packed as f64;
        self.observe(OpKind::Gemm, cost, elapsed);
        state.progress.chunks += 1;
        if report.done {
            self.spare_panels = state.gemm.take();
            state.progress.done = m64;
            return Ok(Step::Done);
        }
        Ok(Step::More)
    }

    /// Writes the result of a completed reduction or checksum.
    fn finish(op: &Op, progress: &OpProgress) -> Result<(), EngineError> {
        match op {
            Op::ReduceSumF32 { out, .. } => {
                let value = (progress.sum as f32).to_ne_bytes();
                let mut words = out.buffer.write_words()?;
                bytes_mut(&mut words, out, 0, 4)?.copy_from_slice(&value);
            }
            Op::Crc32c { out, .. } => {
                let value = progress.crc.to_ne_bytes();
                let mut words = out.buffer.write_words()?;
                bytes_mut(&mut words, out, 0, 4)?.copy_from_slice(&value);
            }
            _ => {}
        }
        Ok(())
    }
}

/// The host CPU's model name (from /proc/cpuinfo), or "host CPU".
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "host CPU".to_string())
}

/// This crate's version packed like a Vulkan version (major << 22 | minor << 12 | patch).
fn crate_version() -> u32 {
    let part = |s: &str| s.parse::<u32>().unwrap_or(0);
    let mut it = env!("CARGO_PKG_VERSION").split('.');
    let (major, minor, patch) = (
        it.next().map_or(0, part),
        it.next().map_or(0, part),
        it.next().map_or(0, part),
    );
    (major << 22) | (minor << 12) | patch
}

/// The CPU engine's capabilities (one engine thread, host memory, every kernel).
pub fn cpu_caps() -> EngineCaps {
    EngineCaps {
        kind: EngineKind::Cpu,
        device_name: cpu_model(),
        vendor_id: 0,
        device_id: 0,
        driver_name: "vgpud-cpu".to_string(),
        driver_version: crate_version(),
        device_memory_bytes: 0,
        kernel_mask: vgpu_protocol::channel::Kernel::mask_all(),
        queues: 1,
        timestamp_period_ps: 0,
        max_workgroups: 0,
        max_workgroup_invocations: 0,
        max_storage_buffer_range: 0,
    }
}

impl Engine for CpuEngine {
    type OpState = CpuOpState;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn caps(&self) -> EngineCaps {
        cpu_caps()
    }

    fn factory(&self) -> Option<super::EngineFactory> {
        let target = self.target_ns;
        Some(std::sync::Arc::new(move || {
            Ok(Box::new(CpuEngine::new(target)) as Box<dyn super::DynEngine>)
        }))
    }

    fn chunk_target_ns(&self) -> u64 {
        self.target_ns
    }

    fn run_chunk(
        &mut self,
        op: &Op,
        state: &mut CpuOpState,
        target_ns: u64,
    ) -> Result<Step, EngineError> {
        match op {
            Op::GemmF32 { .. } => return self.gemm_chunk(op, state, target_ns),
            Op::Dispatch(_) => {
                return Err(EngineError::Unsupported(
                    "guest modules run on the Vulkan engine only".into(),
                ))
            }
            _ => {}
        }
        let progress = &mut state.progress;
        let total = op.units();
        let remaining = total.saturating_sub(progress.done);
        if remaining > 0 {
            let units = self.chunk_units(op, remaining, target_ns);
            let started = Instant::now();
            Self::execute(op, progress.done, units, progress)?;
            let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.observe(op.kind(), units as f64, elapsed);
            progress.done += units;
            progress.chunks += 1;
        }
        if progress.done >= total {
            Self::finish(op, progress)?;
            return Ok(Step::Done);
        }
        Ok(Step::More)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::driver::buffer::DeviceBuffer;
    use crate::driver::memory::{DeviceMemory, MIB};
    use crate::driver::partition::MemoryPartition;

    fn run_to_end(engine: &mut CpuEngine, op: &Op) -> OpProgress {
        let mut p = CpuOpState::default();
        let target = engine.chunk_target_ns();
        while engine.run_chunk(op, &mut p, target).unwrap() == Step::More {
            // Packed panels held between chunks stay bounded (one B panel, one A block).
            assert!(p.held_bytes() <= (256 * gemm::NC + gemm::MC * 256) * 4);
        }
        assert_eq!(
            p.held_bytes(),
            0,
            "panels freed when the operation completes"
        );
        p.progress
    }

    fn setup() -> (Arc<DeviceMemory>, Arc<MemoryPartition>) {
        let mem = DeviceMemory::with_mib(64);
        let p = MemoryPartition::new(1, mem.reserve(32 * MIB).unwrap());
        (mem, p)
    }

    /// A GEMM wider than one B panel and deeper than one k-block, chunk by chunk: the state
    /// holds at most one panel of each operand, and a failed chunk drops them.
    #[test]
    fn gemm_panels_stay_bounded_and_are_dropped_on_error() {
        let (_mem, p) = setup();
        let (m, n, k) = (3u32, 2100u32, 300u32);
        let a = DeviceBuffer::new(&p, u64::from(m * k) * 4).unwrap();
        let b = DeviceBuffer::new(&p, u64::from(k * n) * 4).unwrap();
        let c = DeviceBuffer::new(&p, u64::from(m * n) * 4).unwrap();
        a.write_f32(0, &vec![1.0; (m * k) as usize]).unwrap();
        b.write_f32(0, &vec![0.5; (k * n) as usize]).unwrap();
        let op = Op::GemmF32 {
            m,
            n,
            k,
            alpha: 1.0,
            beta: 0.0,
            a: BufRef::new(&a, 0),
            b: BufRef::new(&b, 0),
            c: BufRef::new(&c, 0),
        };
        let prog = run_to_end(&mut CpuEngine::new(1), &op);
        assert!(prog.chunks > 1);
        let mut out = vec![0f32; (m * n) as usize];
        c.read_f32(0, &mut out).unwrap();
        assert!(out.iter().all(|&v| v == 150.0));
        // C too small for m×n: the chunk fails and the state holds nothing.
        let short = DeviceBuffer::new(&p, 16).unwrap();
        let bad = Op::GemmF32 {
            m,
            n,
            k,
            alpha: 1.0,
            beta: 0.0,
            a: BufRef::new(&a, 0),
            b: BufRef::new(&b, 0),
            c: BufRef::new(&short, 0),
        };
        let mut state = CpuOpState::default();
        assert!(CpuEngine::new(1).run_chunk(&bad, &mut state, 1).is_err());
        assert_eq!(state.held_bytes(), 0);
    }

    #[test]
    fn gemm_result_does_not_depend_on_chunking() {
        let (_mem, p) = setup();
        let (m, n, k) = (70u32, 90u32, 600u32);
        let a = DeviceBuffer::new(&p, u64::from(m * k) * 4).unwrap();
        let b = DeviceBuffer::new(&p, u64::from(k * n) * 4).unwrap();
        let noise = |seed: u32, len: u32| -> Vec<f32> {
            let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
            (0..len)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    (s as f32 / u32::MAX as f32) * 2.0 - 1.0
                })
                .collect()
        };
        let (av, bv, cv0) = (noise(1, m * k), noise(2, k * n), noise(3, m * n));
        a.write_f32(0, &av).unwrap();
        b.write_f32(0, &bv).unwrap();
        let mut results = Vec::new();
        // Tiny, small and huge chunk targets: the smallest tiles up to the whole product.
        for target in [1, 2_000_000, 10_000_000_000] {
            let mut engine = CpuEngine::new(target);
            let c = DeviceBuffer::new(&p, u64::from(m * n) * 4).unwrap();
            c.write_f32(0, &cv0).unwrap();
            let op = Op::GemmF32 {
                m,
                n,
                k,
                alpha: 1.5,
                beta: 0.5,
                a: BufRef::new(&a, 0),
                b: BufRef::new(&b, 0),
                c: BufRef::new(&c, 0),
            };
            let prog = run_to_end(&mut engine, &op);
            let mut out = vec![0f32; (m * n) as usize];
            c.read_f32(0, &mut out).unwrap();
            results.push((prog.chunks, out));
        }
        assert!(results[0].0 > results[1].0 && results[1].0 > results[2].0);
        // Every element is summed the same way wherever a chunk stopped: bit for bit equal.
        for (chunks, r) in &results[1..] {
            assert!(*r == results[0].1, "{chunks} chunks");
        }
        let (m, n, k) = (m as usize, n as usize, k as usize);
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|p| f64::from(av[i * k + p]) * f64::from(bv[p * n + j]))
                    .sum();
                let want = 1.5 * dot + 0.5 * f64::from(cv0[i * n + j]);
                let got = f64::from(results[0].1[i * n + j]);
                assert!((got - want).abs() <= 1e-5 * k as f64 * want.abs().max(1.0));
            }
        }
    }

    #[test]
    fn chunked_ops_produce_reference_results() {
        let (_mem, p) = setup();
        // Tiny target: every op is split into many chunks.
        let mut engine = CpuEngine::new(2_000);
        let src = DeviceBuffer::new(&p, 1 << 20).unwrap();
        let dst = DeviceBuffer::new(&p, 1 << 20).unwrap();
        let data: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(31) >> 3) as u8)
            .collect();
        src.write(0, &data).unwrap();
        let op = Op::Copy {
            src: BufRef::new(&src, 16),
            dst: BufRef::new(&dst, 8),
            len: 100_000,
        };
        let prog = run_to_end(&mut engine, &op);
        assert!(prog.chunks > 1, "{prog:?}");
        let mut out = vec![0u8; 100_000];
        dst.read(8, &mut out).unwrap();
        assert_eq!(&out[..], &data[16..100_016]);

        let fill = Op::Fill {
            dst: BufRef::new(&dst, 3),
            len: 10_001,
            pattern: 0x4433_2211,
        };
        run_to_end(&mut engine, &fill);
        let mut out = vec![0u8; 10_001];
        dst.read(3, &mut out).unwrap();
        assert!(out
            .iter()
            .enumerate()
            .all(|(i, &b)| b == [0x11, 0x22, 0x33, 0x44][i % 4]));

        let crc_out = DeviceBuffer::new(&p, 8).unwrap();
        let crc = Op::Crc32c {
            src: BufRef::new(&src, 0),
            len: 1 << 20,
            out: BufRef::new(&crc_out, 4),
        };
        run_to_end(&mut engine, &crc);
        let mut word = [0u8; 4];
        crc_out.read(4, &mut word).unwrap();
        assert_eq!(u32::from_ne_bytes(word), crc32c::crc32c(&data));
    }

    #[test]
    fn chunked_float_ops_match_reference() {
        let (_mem, p) = setup();
        let mut engine = CpuEngine::new(2_000);
        let (m, n, k) = (37u32, 23u32, 41u32);
        let a = DeviceBuffer::new(&p, 4 * 4096).unwrap();
        let b = DeviceBuffer::new(&p, 4 * 4096).unwrap();
        let c = DeviceBuffer::new(&p, 4 * 4096).unwrap();
        let av: Vec<f32> = (0..m * k).map(|i| ((i % 13) as f32 - 6.0) * 0.5).collect();
        let bv: Vec<f32> = (0..k * n).map(|i| ((i % 7) as f32 - 3.0) * 0.25).collect();
        a.write_f32(0, &av).unwrap();
        b.write_f32(0, &bv).unwrap();
        let op = Op::GemmF32 {
            m,
            n,
            k,
            alpha: 2.0,
            beta: 0.0,
            a: BufRef::new(&a, 0),
            b: BufRef::new(&b, 0),
            c: BufRef::new(&c, 0),
        };
        assert!(run_to_end(&mut engine, &op).chunks > 1);
        let mut cv = vec![0f32; (m * n) as usize];
        c.read_f32(0, &mut cv).unwrap();
        let (m, n, k) = (m as usize, n as usize, k as usize);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 2.0 * (0..k).map(|p| av[i * k + p] * bv[p * n + j]).sum::<f32>();
                // Inputs are small multiples of 1/4: every product and sum is exact in f32.
                assert_eq!(cv[i * n + j], want);
            }
        }

        let xs: Vec<f32> = (0..3000).map(|i| i as f32 * 0.5).collect();
        a.write_f32(0, &xs).unwrap();
        b.write_f32(0, &vec![1.0; 3000]).unwrap();
        let axpy = Op::AxpyF32 {
            n: 3000,
            alpha: 2.0,
            x: BufRef::new(&a, 0),
            y: BufRef::new(&b, 0),
        };
        run_to_end(&mut engine, &axpy);
        let mut ys = vec![0f32; 3000];
        b.read_f32(0, &mut ys).unwrap();
        assert!(ys.iter().zip(&xs).all(|(y, x)| *y == 2.0 * x + 1.0));

        let reduce = Op::ReduceSumF32 {
            n: 3000,
            x: BufRef::new(&a, 0),
            out: BufRef::new(&c, 8),
        };
        let prog = run_to_end(&mut engine, &reduce);
        assert!(prog.chunks > 1);
        let mut sum = [0f32];
        c.read_f32(8, &mut sum).unwrap();
        assert_eq!(
            sum[0],
            (0..3000).map(|i| i as f64 * 0.5).sum::<f64>() as f32
        );
    }

    /// A cost estimate inflated by host stalls (samples stretched by descheduling) must not
    /// shrink GEMM work to nothing per chunk: a 64³ GEMM once ran in 4096 one-cell chunks, each
    /// mostly fixed per-step cost, which kept the estimate inflated (a real guest saw ~200 ms
    /// per job instead of ~2 ms). A chunk now runs at least one whole micro-tile.
    #[test]
    fn inflated_estimate_keeps_gemm_steps_whole() {
        let (_mem, p) = setup();
        let mut engine = CpuEngine::default();
        engine.ns_per_unit[OpKind::Gemm.index()] = 1e4;
        let (m, n, k) = (64u32, 64u32, 64u32);
        let a = DeviceBuffer::new(&p, u64::from(m * k) * 4).unwrap();
        let b = DeviceBuffer::new(&p, u64::from(k * n) * 4).unwrap();
        let c = DeviceBuffer::new(&p, u64::from(m * n) * 4).unwrap();
        let op = Op::GemmF32 {
            m,
            n,
            k,
            alpha: 1.0,
            beta: 0.0,
            a: BufRef::new(&a, 0),
            b: BufRef::new(&b, 0),
            c: BufRef::new(&c, 0),
        };
        let chunks = run_to_end(&mut engine, &op).chunks;
        // 11 micro-panels of 6 rows × 4 strips of 16 columns, one k-block.
        let tiles = 64usize.div_ceil(gemm::MR) * 64usize.div_ceil(gemm::NR);
        assert!(chunks as usize <= tiles, "{chunks} chunks");
    }

    #[test]
    fn zero_length_ops_finish_and_model_adapts() {
        let (_mem, p) = setup();
        let mut engine = CpuEngine::default();
        let a = DeviceBuffer::new(&p, 64).unwrap();
        let out = DeviceBuffer::new(&p, 4).unwrap();
        out.write(0, &[1, 2, 3, 4]).unwrap();
        let crc = Op::Crc32c {
            src: BufRef::new(&a, 0),
            len: 0,
            out: BufRef::new(&out, 0),
        };
        assert_eq!(run_to_end(&mut engine, &crc).chunks, 0);
        let mut w = [9u8; 4];
        out.read(0, &mut w).unwrap();
        assert_eq!(w, [0; 4]);
        let before = engine.ns_per_unit(OpKind::Copy);
        engine.observe(OpKind::Copy, 1000.0, 10);
        assert!(engine.ns_per_unit(OpKind::Copy) < before);
        engine.observe(OpKind::Copy, 1.0, u64::MAX);
        assert!(engine.ns_per_unit(OpKind::Copy).is_finite());
    }
}
