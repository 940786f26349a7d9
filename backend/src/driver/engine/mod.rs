//! Engines execute operations one bounded chunk at a time, so the scheduler can preempt between
//! chunks. [`cpu::CpuEngine`] is the embedded engine; a Vulkan engine can implement the same
//! trait later.

pub mod cpu;

use thiserror::Error;

use super::buffer::BufferError;
use super::job::Op;
use super::kernels::KernelError;

/// Default cost of one chunk while another vGPU may need the engine: the scheduler's
/// preemption granularity.
pub const DEFAULT_CHUNK_TARGET_NS: u64 = 100_000;
/// Default cost of one chunk while the running vGPU is the only one with work (longer chunks
/// lose less to per-chunk costs; a vGPU that wakes waits at most about one of them).
pub const DEFAULT_SOLO_CHUNK_TARGET_NS: u64 = 1_000_000;

/// How far an operation has got, carried between chunks (and across preemptions).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpProgress {
    /// Units done (see [`Op::units`]); for a GEMM, rows of C finished.
    pub done: u64,
    /// Running sum of a reduction.
    pub sum: f64,
    /// Running CRC of a checksum.
    pub crc: u32,
    /// Chunks run so far.
    pub chunks: u64,
    /// GEMM: rows of the current band of C (0 until the band is planned).
    pub band_rows: u32,
    /// GEMM: the k-block the current pass over the band adds.
    pub band_kb: u32,
    /// GEMM: the first column of the band the current pass has not reached.
    pub band_col: u32,
}

/// What a chunk left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The operation has more chunks.
    More,
    /// The operation is complete (its outputs are written).
    Done,
}

/// An operation failed on the engine.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    /// A buffer could not be accessed.
    #[error("buffer: {0}")]
    Buffer(#[from] BufferError),
    /// A kernel rejected its operands.
    #[error("{0}")]
    Kernel(#[from] KernelError),
}

/// An execution engine, owned and driven by the device thread.
pub trait Engine: Send {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// Configured cost of one chunk in nanoseconds while other vGPUs may need the engine (the
    /// preemption granularity).
    fn chunk_target_ns(&self) -> u64;
    /// Runs the next chunk of `op`, about `target_ns` of work (the device thread chooses it per
    /// chunk), and advances `progress`. After [`Step::Done`] the operation must not be run again.
    fn run_chunk(
        &mut self,
        op: &Op,
        progress: &mut OpProgress,
        target_ns: u64,
    ) -> Result<Step, EngineError>;
}
