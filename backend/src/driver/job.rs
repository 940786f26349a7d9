//! Jobs: validated lists of engine operations on device buffers.

use std::sync::Arc;

use thiserror::Error;

use super::buffer::{BufferError, DeviceBuffer};
use super::module::Dispatch;

/// Most operations in one job.
pub const MAX_OPS_PER_JOB: usize = 256;

/// A position in a device buffer.
#[derive(Debug, Clone)]
pub struct BufRef {
    /// The buffer.
    pub buffer: Arc<DeviceBuffer>,
    /// Byte offset into it.
    pub offset: u64,
}

impl BufRef {
    /// `buffer` at byte `offset`.
    pub fn new(buffer: &Arc<DeviceBuffer>, offset: u64) -> Self {
        Self {
            buffer: Arc::clone(buffer),
            offset,
        }
    }

    fn same_buffer(&self, other: &BufRef) -> bool {
        Arc::ptr_eq(&self.buffer, &other.buffer)
    }
}

/// One engine operation. f32 data is native-endian and 4-byte aligned in its buffer.
#[derive(Debug, Clone)]
pub enum Op {
    /// Copies `len` bytes (memmove semantics when both are in one buffer).
    Copy {
        /// Source.
        src: BufRef,
        /// Destination.
        dst: BufRef,
        /// Bytes.
        len: u64,
    },
    /// Fills `len` bytes with the little-endian bytes of `pattern`, repeated from `dst`.
    Fill {
        /// Destination.
        dst: BufRef,
        /// Bytes.
        len: u64,
        /// 32-bit pattern.
        pattern: u32,
    },
    /// `C[m×n] = alpha·A[m×k]·B[k×n] + beta·C`, row-major f32.
    GemmF32 {
        /// Rows of A and C.
        m: u32,
        /// Columns of B and C.
        n: u32,
        /// Columns of A, rows of B.
        k: u32,
        /// Scale of the product.
        alpha: f32,
        /// Scale of the old C.
        beta: f32,
        /// A.
        a: BufRef,
        /// B.
        b: BufRef,
        /// C (must not share a buffer with A or B).
        c: BufRef,
    },
    /// `y = alpha·x + y` over `n` f32s.
    AxpyF32 {
        /// Elements.
        n: u64,
        /// Scale of x.
        alpha: f32,
        /// x.
        x: BufRef,
        /// y (must not share a buffer with x).
        y: BufRef,
    },
    /// Writes the sum of `n` f32s at `x` (f64 accumulation in index order) as one f32 at `out`.
    ReduceSumF32 {
        /// Elements.
        n: u64,
        /// Input.
        x: BufRef,
        /// Output (4 bytes, not in the input's buffer).
        out: BufRef,
    },
    /// Writes the CRC-32C of `len` bytes at `src` as a u32 at `out`.
    Crc32c {
        /// Input.
        src: BufRef,
        /// Bytes.
        len: u64,
        /// Output (4 bytes, not in the input's buffer).
        out: BufRef,
    },
    /// Runs a guest module over a grid (boxed: it carries its bindings and push constants).
    Dispatch(Box<Dispatch>),
}

/// Which kind of operation (for cost models and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// [`Op::Copy`].
    Copy,
    /// [`Op::Fill`].
    Fill,
    /// [`Op::GemmF32`].
    Gemm,
    /// [`Op::AxpyF32`].
    Axpy,
    /// [`Op::ReduceSumF32`].
    Reduce,
    /// [`Op::Crc32c`].
    Crc32c,
    /// [`Op::Dispatch`].
    Dispatch,
}

impl OpKind {
    /// Number of kinds.
    pub const COUNT: usize = 7;

    /// Dense index 0..[`OpKind::COUNT`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A job or operation is malformed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JobError {
    /// A job must have 1..=[`MAX_OPS_PER_JOB`] operations.
    #[error("a job needs 1..={MAX_OPS_PER_JOB} operations, got {0}")]
    OpCount(usize),
    /// A range is outside its buffer.
    #[error("operation {op}: {source}")]
    Range {
        /// Index of the operation.
        op: usize,
        /// The range error.
        #[source]
        source: BufferError,
    },
    /// An f32 operand's offset is not 4-byte aligned.
    #[error("operation {0}: f32 operand not 4-byte aligned")]
    Misaligned(usize),
    /// A dimension is zero or the sizes overflow.
    #[error("operation {0}: bad dimensions")]
    Dimensions(usize),
    /// An output shares a buffer with an input.
    #[error("operation {0}: output aliases an input buffer")]
    Aliasing(usize),
    /// A buffer belongs to another vGPU.
    #[error("operation {0}: buffer belongs to another vGPU")]
    ForeignBuffer(usize),
    /// A launch leaves a slot its module uses unbound.
    #[error("operation {op}: slot {slot} is used by the module but not bound")]
    Unbound {
        /// Index of the operation.
        op: usize,
        /// The slot.
        slot: usize,
    },
}

fn f32_bytes(op: usize, count: u64) -> Result<u64, JobError> {
    count.checked_mul(4).ok_or(JobError::Dimensions(op))
}

fn check(op: usize, r: &BufRef, len: u64, aligned: bool) -> Result<(), JobError> {
    if aligned && !r.offset.is_multiple_of(4) {
        return Err(JobError::Misaligned(op));
    }
    r.buffer
        .check_range(r.offset, len)
        .map_err(|source| JobError::Range { op, source })
}

impl Op {
    /// The operation's kind.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Copy { .. } => OpKind::Copy,
            Op::Fill { .. } => OpKind::Fill,
            Op::GemmF32 { .. } => OpKind::Gemm,
            Op::AxpyF32 { .. } => OpKind::Axpy,
            Op::ReduceSumF32 { .. } => OpKind::Reduce,
            Op::Crc32c { .. } => OpKind::Crc32c,
            Op::Dispatch(_) => OpKind::Dispatch,
        }
    }

    /// Work units the engine splits into chunks: bytes (copy, fill, crc32c), elements (axpy,
    /// reduce), output cells (gemm, each costing `k` multiply-adds) or workgroups (dispatch).
    pub fn units(&self) -> u64 {
        match self {
            Op::Copy { len, .. } | Op::Fill { len, .. } | Op::Crc32c { len, .. } => *len,
            Op::AxpyF32 { n, .. } | Op::ReduceSumF32 { n, .. } => *n,
            Op::GemmF32 { m, n, .. } => u64::from(*m) * u64::from(*n),
            Op::Dispatch(d) => d.workgroups(),
        }
    }

    /// The buffers the operation touches.
    pub fn buffers(&self) -> impl Iterator<Item = &Arc<DeviceBuffer>> {
        let refs: [Option<&BufRef>; 3] = match self {
            Op::Copy { src, dst, .. } => [Some(src), Some(dst), None],
            Op::Fill { dst, .. } => [Some(dst), None, None],
            Op::GemmF32 { a, b, c, .. } => [Some(a), Some(b), Some(c)],
            Op::AxpyF32 { x, y, .. } => [Some(x), Some(y), None],
            Op::ReduceSumF32 { x, out, .. } => [Some(x), Some(out), None],
            Op::Crc32c { src, out, .. } => [Some(src), Some(out), None],
            Op::Dispatch(_) => [None, None, None],
        };
        let bound: &[_] = match self {
            Op::Dispatch(d) => &d.bindings,
            _ => &[],
        };
        refs.into_iter()
            .flatten()
            .chain(bound.iter().flatten().map(|b| &b.at))
            .map(|r| &r.buffer)
    }

    /// Checks ranges, alignment, dimensions and aliasing. `index` names the op in errors.
    pub fn validate(&self, index: usize) -> Result<(), JobError> {
        match self {
            Op::Copy { src, dst, len } => {
                check(index, src, *len, false)?;
                check(index, dst, *len, false)
            }
            Op::Fill { dst, len, .. } => check(index, dst, *len, false),
            Op::GemmF32 {
                m, n, k, a, b, c, ..
            } => {
                if *m == 0 || *n == 0 || *k == 0 {
                    return Err(JobError::Dimensions(index));
                }
                let (m, n, k) = (u64::from(*m), u64::from(*n), u64::from(*k));
                check(index, a, f32_bytes(index, m * k)?, true)?;
                check(index, b, f32_bytes(index, k * n)?, true)?;
                check(index, c, f32_bytes(index, m * n)?, true)?;
                if c.same_buffer(a) || c.same_buffer(b) {
                    return Err(JobError::Aliasing(index));
                }
                Ok(())
            }
            Op::AxpyF32 { n, x, y, .. } => {
                let bytes = f32_bytes(index, *n)?;
                check(index, x, bytes, true)?;
                check(index, y, bytes, true)?;
                if x.same_buffer(y) {
                    return Err(JobError::Aliasing(index));
                }
                Ok(())
            }
            Op::ReduceSumF32 { n, x, out } => {
                check(index, x, f32_bytes(index, *n)?, true)?;
                check(index, out, 4, true)?;
                if x.same_buffer(out) {
                    return Err(JobError::Aliasing(index));
                }
                Ok(())
            }
            Op::Crc32c { src, len, out } => {
                check(index, src, *len, false)?;
                check(index, out, 4, false)?;
                if src.same_buffer(out) {
                    return Err(JobError::Aliasing(index));
                }
                Ok(())
            }
            Op::Dispatch(d) => d.validate(index),
        }
    }
}

/// A validated, ordered list of operations. Operations run in order; the scheduler may preempt
/// between any two chunks.
#[derive(Debug, Clone)]
pub struct Job {
    ops: Vec<Op>,
}

impl Job {
    /// Validates every operation.
    pub fn new(ops: Vec<Op>) -> Result<Self, JobError> {
        if ops.is_empty() || ops.len() > MAX_OPS_PER_JOB {
            return Err(JobError::OpCount(ops.len()));
        }
        for (i, op) in ops.iter().enumerate() {
            op.validate(i)?;
        }
        Ok(Self { ops })
    }

    /// A job of one operation.
    pub fn single(op: Op) -> Result<Self, JobError> {
        Self::new(vec![op])
    }

    /// The operations.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Host memory the queued job takes (its command buffer), charged to the vGPU's partition
    /// while the job is queued or running.
    pub fn host_bytes(&self) -> u64 {
        (std::mem::size_of::<Self>() + self.ops.len() * std::mem::size_of::<Op>()) as u64
    }

    /// Checks that every buffer belongs to vGPU `vgpu_id`.
    pub fn check_owner(&self, vgpu_id: u32) -> Result<(), JobError> {
        for (i, op) in self.ops.iter().enumerate() {
            let foreign_module = matches!(op, Op::Dispatch(d) if d.module.vgpu_id() != vgpu_id);
            if foreign_module || op.buffers().any(|b| b.vgpu_id() != vgpu_id) {
                return Err(JobError::ForeignBuffer(i));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory::{DeviceMemory, MIB};
    use super::super::partition::MemoryPartition;
    use super::*;

    #[test]
    fn validation_catches_bad_ops() {
        let mem = DeviceMemory::with_mib(4);
        let p1 = MemoryPartition::new(1, mem.reserve(MIB).unwrap());
        let p2 = MemoryPartition::new(2, mem.reserve(MIB).unwrap());
        let a = DeviceBuffer::new(&p1, 64).unwrap();
        let b = DeviceBuffer::new(&p1, 64).unwrap();
        let other = DeviceBuffer::new(&p2, 64).unwrap();
        let r = |buf: &Arc<DeviceBuffer>, off| BufRef::new(buf, off);
        let gemm = |m, n, k, c: BufRef| Op::GemmF32 {
            m,
            n,
            k,
            alpha: 1.0,
            beta: 0.0,
            a: r(&a, 0),
            b: r(&a, 0),
            c,
        };
        assert!(Job::single(gemm(2, 2, 2, r(&b, 0))).is_ok());
        assert_eq!(
            Job::single(gemm(2, 2, 2, r(&a, 32))).unwrap_err(),
            JobError::Aliasing(0)
        );
        assert_eq!(
            Job::single(gemm(0, 2, 2, r(&b, 0))).unwrap_err(),
            JobError::Dimensions(0)
        );
        assert!(matches!(
            Job::single(gemm(5, 5, 5, r(&b, 0))),
            Err(JobError::Range { .. })
        ));
        assert_eq!(
            Job::single(gemm(1, 1, 1, r(&b, 2))).unwrap_err(),
            JobError::Misaligned(0)
        );
        let huge = Op::AxpyF32 {
            n: u64::MAX,
            alpha: 1.0,
            x: r(&a, 0),
            y: r(&b, 0),
        };
        assert_eq!(Job::single(huge).unwrap_err(), JobError::Dimensions(0));
        let copy = |src, dst, len| Op::Copy { src, dst, len };
        assert!(Job::single(copy(r(&a, 0), r(&a, 8), 56)).is_ok());
        assert!(Job::single(copy(r(&a, u64::MAX), r(&b, 0), 2)).is_err());
        assert_eq!(Job::new(vec![]).unwrap_err(), JobError::OpCount(0));
        let mixed = Job::new(vec![
            copy(r(&a, 0), r(&b, 0), 8),
            copy(r(&a, 0), r(&other, 0), 8),
        ])
        .unwrap();
        assert_eq!(
            mixed.check_owner(1).unwrap_err(),
            JobError::ForeignBuffer(1)
        );
        assert!(Job::single(copy(r(&a, 0), r(&b, 0), 8))
            .unwrap()
            .check_owner(1)
            .is_ok());
    }
}
