//! The vgpu-mediator channel: a paravirtual compute protocol carried by stock virtio-gpu 3D commands.
//!
//! - Buffers are RESOURCE_CREATE_3D resources shaped as a gallium `PIPE_BUFFER` ([`buffer_size`]).
//! - A SUBMIT_3D payload is a command stream: commands of a [`CmdHeader`] `{opcode, size_bytes}`
//!   followed by a fixed body per [`Opcode`]. [`decode_stream`] turns it into [`ChannelCommand`]s
//!   without allocating; [`ChannelCommand::encode`] builds one.
//! - The capset ([`crate::capset::VgpuCapset`]) and the QUERY_STATS record
//!   ([`crate::capset::StatsRecord`]) live in [`crate::capset`].
//!
//! Everything is little-endian; `protocol/README.md` has the byte layouts.

use std::mem::size_of;

use thiserror::Error;
use vm_memory::ByteValued;

use crate::capset::StatsRecord;
use crate::virtio_gpu::VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;

mod buffer;
mod module;
mod stream;
#[cfg(test)]
mod tests;

pub use buffer::{buffer_create, buffer_size, buffer_transfer, BufferTransfer};
pub use module::{
    BindCmd, DispatchCmd, ModuleLoadCmd, ModuleUnloadCmd, PushConstantsCmd, PushConstantsHeader,
    BIND_OFFSET_ALIGN, ENTRY_NAME_LEN, MAX_BINDINGS, MAX_MODULES_PER_CONTEXT, MAX_MODULE_BYTES,
    MAX_PUSH_CONSTANT_BYTES,
};
pub use stream::{decode_stream, validate_stream, CommandStreamIter};

/// Our capset id (in the unassigned 16..=63 range; virgl=1 … drm=6 are taken).
pub const VGPU_CAPSET_ID: u32 = 42;
/// Version of the channel protocol described here (also the capset version).
pub const VGPU_PROTOCOL_VERSION: u32 = 1;
/// Most commands one SUBMIT_3D stream may hold.
pub const MAX_COMMANDS_PER_SUBMIT: usize = 1024;

/// Gallium `PIPE_BUFFER` texture target: the only target a channel buffer may have.
pub const PIPE_BUFFER: u32 = 0;
/// Gallium `PIPE_FORMAT_R8_UNORM`, accepted (as well as 0) as a buffer's format.
pub const PIPE_FORMAT_R8_UNORM: u32 = 64;

/// Command opcodes of a SUBMIT_3D stream.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// Copy bytes between buffers ([`CopyCmd`]).
    Copy = 1,
    /// Fill a buffer range with a repeated `u32` ([`FillCmd`]).
    Fill = 2,
    /// Run a kernel ([`LaunchHeader`] + kernel arguments).
    Launch = 3,
    /// Write a [`StatsRecord`] into a buffer ([`QueryStatsCmd`]).
    QueryStats = 4,
    /// Do nothing (may be longer than its header: padding).
    Nop = 5,
    /// Load a SPIR-V module from a buffer ([`ModuleLoadCmd`]; protocol 1.2).
    ModuleLoad = 6,
    /// Forget a module ([`ModuleUnloadCmd`]; protocol 1.2).
    ModuleUnload = 7,
    /// Bind a buffer range to a descriptor slot ([`BindCmd`]; protocol 1.2).
    Bind = 8,
    /// Set push-constant bytes ([`PushConstantsHeader`] + data; protocol 1.2).
    PushConstants = 9,
    /// Launch a grid of a loaded module ([`DispatchCmd`]; protocol 1.2).
    Dispatch = 10,
}

impl Opcode {
    /// The opcode for a wire value.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Opcode::Copy,
            2 => Opcode::Fill,
            3 => Opcode::Launch,
            4 => Opcode::QueryStats,
            5 => Opcode::Nop,
            6 => Opcode::ModuleLoad,
            7 => Opcode::ModuleUnload,
            8 => Opcode::Bind,
            9 => Opcode::PushConstants,
            10 => Opcode::Dispatch,
            _ => return None,
        })
    }
}

/// Kernels a LAUNCH command can run.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `C = alpha·A·B + beta·C`, row-major f32 ([`GemmF32Args`]).
    GemmF32 = 1,
    /// `y = alpha·x + y`, f32 ([`AxpyF32Args`]).
    AxpyF32 = 2,
    /// Sum of `n` f32 values ([`ReduceSumF32Args`]).
    ReduceSumF32 = 3,
    /// CRC-32C (Castagnoli) of a byte range ([`Crc32cArgs`]).
    Crc32c = 4,
}

impl Kernel {
    /// Every kernel, in id order.
    pub const ALL: [Kernel; 4] = [
        Kernel::GemmF32,
        Kernel::AxpyF32,
        Kernel::ReduceSumF32,
        Kernel::Crc32c,
    ];

    /// The kernel for a wire id.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Kernel::GemmF32,
            2 => Kernel::AxpyF32,
            3 => Kernel::ReduceSumF32,
            4 => Kernel::Crc32c,
            _ => return None,
        })
    }

    /// This kernel's bit in [`crate::capset::VgpuCapset::kernel_mask`]: `1 << id`.
    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// The mask with every kernel this crate knows.
    pub fn mask_all() -> u32 {
        Kernel::ALL.iter().fold(0, |m, k| m | k.bit())
    }
}

/// Header of every command in a stream.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CmdHeader {
    /// [`Opcode`] value.
    pub opcode: u32,
    /// Size of the whole command including this header; a multiple of 4.
    pub size_bytes: u32,
}

/// COPY body: `size` bytes from `src_res[src_offset..]` to `dst_res[dst_offset..]` (memmove
/// semantics when both are the same resource).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyCmd {
    /// Source buffer.
    pub src_res: u32,
    /// Destination buffer.
    pub dst_res: u32,
    /// Byte offset in the source.
    pub src_offset: u64,
    /// Byte offset in the destination.
    pub dst_offset: u64,
    /// Bytes to copy.
    pub size: u64,
}

/// FILL body: `dst_res[offset..offset+size]` gets `pattern` repeated (little-endian).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FillCmd {
    /// Destination buffer.
    pub dst_res: u32,
    /// The `u32` written repeatedly.
    pub pattern: u32,
    /// Byte offset, a multiple of 4.
    pub offset: u64,
    /// Bytes to fill, a multiple of 4.
    pub size: u64,
}

/// LAUNCH body prefix; the kernel's arguments follow it.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct LaunchHeader {
    /// [`Kernel`] id.
    pub kernel: u32,
    /// Must be 0.
    pub reserved: u32,
}

/// GEMM_F32 arguments: row-major `C[m×n] = alpha·A[m×k]·B[k×n] + beta·C`, every matrix at offset 0
/// of its buffer. `c_res` must differ from `a_res` and `b_res`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct GemmF32Args {
    /// Buffer of A (`m·k` f32).
    pub a_res: u32,
    /// Buffer of B (`k·n` f32).
    pub b_res: u32,
    /// Buffer of C (`m·n` f32), read and written.
    pub c_res: u32,
    /// Rows of A and C.
    pub m: u32,
    /// Columns of B and C.
    pub n: u32,
    /// Columns of A, rows of B.
    pub k: u32,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the old C.
    pub beta: f32,
}

/// AXPY_F32 arguments: `y[i] = alpha·x[i] + y[i]` for `i < n`, both at offset 0.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct AxpyF32Args {
    /// Buffer of x (`n` f32).
    pub x_res: u32,
    /// Buffer of y (`n` f32), read and written.
    pub y_res: u32,
    /// Element count.
    pub n: u32,
    /// Scale of x.
    pub alpha: f32,
}

/// REDUCE_SUM_F32 arguments: writes `Σ x[i], i < n` as one f32 at `out_res[out_offset..]`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ReduceSumF32Args {
    /// Buffer of x (`n` f32 at offset 0).
    pub x_res: u32,
    /// Output buffer.
    pub out_res: u32,
    /// Element count.
    pub n: u32,
    /// Must be 0.
    pub reserved: u32,
    /// Byte offset of the result.
    pub out_offset: u64,
}

/// CRC32C arguments: writes the CRC-32C of `src_res[src_offset..src_offset+len]` as a `u32` LE at
/// `out_res[out_offset..]`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Crc32cArgs {
    /// Source buffer.
    pub src_res: u32,
    /// Output buffer.
    pub out_res: u32,
    /// Byte offset in the source.
    pub src_offset: u64,
    /// Bytes to checksum.
    pub len: u64,
    /// Byte offset of the result.
    pub out_offset: u64,
}

/// QUERY_STATS body: writes a [`StatsRecord`] at `dst_res[dst_offset..]`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryStatsCmd {
    /// Destination buffer.
    pub dst_res: u32,
    /// Must be 0.
    pub reserved: u32,
    /// Byte offset of the record.
    pub dst_offset: u64,
}

// SAFETY: `#[repr(C)]` structs of u32/u64/f32 fields laid out without implicit padding; every bit
// pattern is a valid value.
unsafe impl ByteValued for CmdHeader {}
// SAFETY: see above.
unsafe impl ByteValued for CopyCmd {}
// SAFETY: see above.
unsafe impl ByteValued for FillCmd {}
// SAFETY: see above.
unsafe impl ByteValued for LaunchHeader {}
// SAFETY: see above.
unsafe impl ByteValued for GemmF32Args {}
// SAFETY: see above.
unsafe impl ByteValued for AxpyF32Args {}
// SAFETY: see above.
unsafe impl ByteValued for ReduceSumF32Args {}
// SAFETY: see above.
unsafe impl ByteValued for Crc32cArgs {}
// SAFETY: see above.
unsafe impl ByteValued for QueryStatsCmd {}

/// A kernel launch with its typed arguments.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum KernelLaunch {
    /// GEMM_F32.
    GemmF32(GemmF32Args),
    /// AXPY_F32.
    AxpyF32(AxpyF32Args),
    /// REDUCE_SUM_F32.
    ReduceSumF32(ReduceSumF32Args),
    /// CRC32C.
    Crc32c(Crc32cArgs),
}

impl KernelLaunch {
    /// Which kernel this is.
    pub fn kernel(&self) -> Kernel {
        match self {
            KernelLaunch::GemmF32(_) => Kernel::GemmF32,
            KernelLaunch::AxpyF32(_) => Kernel::AxpyF32,
            KernelLaunch::ReduceSumF32(_) => Kernel::ReduceSumF32,
            KernelLaunch::Crc32c(_) => Kernel::Crc32c,
        }
    }

    fn args_bytes(&self) -> &[u8] {
        match self {
            KernelLaunch::GemmF32(a) => a.as_slice(),
            KernelLaunch::AxpyF32(a) => a.as_slice(),
            KernelLaunch::ReduceSumF32(a) => a.as_slice(),
            KernelLaunch::Crc32c(a) => a.as_slice(),
        }
    }
}

/// One decoded channel command.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum ChannelCommand {
    /// COPY.
    Copy(CopyCmd),
    /// FILL.
    Fill(FillCmd),
    /// LAUNCH of a kernel.
    Launch(KernelLaunch),
    /// QUERY_STATS.
    QueryStats(QueryStatsCmd),
    /// NOP.
    Nop,
    /// MODULE_LOAD.
    ModuleLoad(ModuleLoadCmd),
    /// MODULE_UNLOAD.
    ModuleUnload(ModuleUnloadCmd),
    /// BIND.
    Bind(BindCmd),
    /// PUSH_CONSTANTS.
    PushConstants(PushConstantsCmd),
    /// DISPATCH of a loaded module.
    Dispatch(DispatchCmd),
}

/// A byte range of a buffer that a command reads and/or writes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BufferAccess {
    /// Resource id.
    pub resource: u32,
    /// First byte.
    pub offset: u64,
    /// Length in bytes (saturated for commands that did not come from the decoder).
    pub len: u64,
    /// True when the command writes the range (it may also read it).
    pub write: bool,
}

impl BufferAccess {
    /// One past the last byte, `None` on overflow (never for decoded commands).
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.len)
    }
}

fn access(resource: u32, offset: u64, len: u64, write: bool) -> Option<BufferAccess> {
    Some(BufferAccess {
        resource,
        offset,
        len,
        write,
    })
}

/// Bytes of `count` f32 values, saturating.
fn f32_bytes(count: u64) -> u64 {
    count.saturating_mul(4)
}

impl ChannelCommand {
    /// The wire opcode.
    pub fn opcode(&self) -> Opcode {
        match self {
            ChannelCommand::Copy(_) => Opcode::Copy,
            ChannelCommand::Fill(_) => Opcode::Fill,
            ChannelCommand::Launch(_) => Opcode::Launch,
            ChannelCommand::QueryStats(_) => Opcode::QueryStats,
            ChannelCommand::Nop => Opcode::Nop,
            ChannelCommand::ModuleLoad(_) => Opcode::ModuleLoad,
            ChannelCommand::ModuleUnload(_) => Opcode::ModuleUnload,
            ChannelCommand::Bind(_) => Opcode::Bind,
            ChannelCommand::PushConstants(_) => Opcode::PushConstants,
            ChannelCommand::Dispatch(_) => Opcode::Dispatch,
        }
    }

    /// Encoded size in bytes, header included.
    pub fn encoded_len(&self) -> usize {
        size_of::<CmdHeader>()
            + match self {
                ChannelCommand::Copy(_) => size_of::<CopyCmd>(),
                ChannelCommand::Fill(_) => size_of::<FillCmd>(),
                ChannelCommand::Launch(l) => size_of::<LaunchHeader>() + l.args_bytes().len(),
                ChannelCommand::QueryStats(_) => size_of::<QueryStatsCmd>(),
                ChannelCommand::Nop => 0,
                ChannelCommand::ModuleLoad(_) => size_of::<ModuleLoadCmd>(),
                ChannelCommand::ModuleUnload(_) => size_of::<ModuleUnloadCmd>(),
                ChannelCommand::Bind(_) => size_of::<BindCmd>(),
                ChannelCommand::PushConstants(p) => {
                    size_of::<PushConstantsHeader>() + p.bytes().len()
                }
                ChannelCommand::Dispatch(_) => size_of::<DispatchCmd>(),
            }
    }

    /// Appends the encoded command to `out`. Fields are written as given (reserved ones included),
    /// so tests can build malformed streams.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let hdr = CmdHeader {
            opcode: self.opcode() as u32,
            // Every command is at most a few dozen bytes.
            size_bytes: self.encoded_len() as u32,
        };
        out.extend_from_slice(hdr.as_slice());
        match self {
            ChannelCommand::Copy(c) => out.extend_from_slice(c.as_slice()),
            ChannelCommand::Fill(c) => out.extend_from_slice(c.as_slice()),
            ChannelCommand::Launch(l) => {
                let lh = LaunchHeader {
                    kernel: l.kernel() as u32,
                    reserved: 0,
                };
                out.extend_from_slice(lh.as_slice());
                out.extend_from_slice(l.args_bytes());
            }
            ChannelCommand::QueryStats(c) => out.extend_from_slice(c.as_slice()),
            ChannelCommand::Nop => {}
            ChannelCommand::ModuleLoad(c) => out.extend_from_slice(c.as_slice()),
            ChannelCommand::ModuleUnload(c) => out.extend_from_slice(c.as_slice()),
            ChannelCommand::Bind(c) => out.extend_from_slice(c.as_slice()),
            ChannelCommand::PushConstants(p) => {
                let h = PushConstantsHeader {
                    offset: p.offset,
                    size: p.size,
                };
                out.extend_from_slice(h.as_slice());
                out.extend_from_slice(p.bytes());
            }
            ChannelCommand::Dispatch(c) => out.extend_from_slice(c.as_slice()),
        }
    }

    /// The buffer ranges this command touches (at most three; no allocation).
    ///
    /// GEMM reads `A[0..m·k·4]`, `B[0..k·n·4]` and writes `C[0..m·n·4]`; AXPY reads `x[0..n·4]` and
    /// writes `y[0..n·4]`; REDUCE_SUM reads `x[0..n·4]` and writes 4 bytes; CRC32C reads its source
    /// range and writes 4 bytes; QUERY_STATS writes a [`StatsRecord`]; MODULE_LOAD reads its
    /// source range; BIND names its range (as written: what a later DISPATCH does with it
    /// depends on the module).
    pub fn accesses(&self) -> impl Iterator<Item = BufferAccess> {
        let list: [Option<BufferAccess>; 3] = match self {
            ChannelCommand::Copy(c) => [
                access(c.src_res, c.src_offset, c.size, false),
                access(c.dst_res, c.dst_offset, c.size, true),
                None,
            ],
            ChannelCommand::Fill(c) => [access(c.dst_res, c.offset, c.size, true), None, None],
            ChannelCommand::Launch(KernelLaunch::GemmF32(g)) => {
                let (m, n, k) = (u64::from(g.m), u64::from(g.n), u64::from(g.k));
                [
                    access(g.a_res, 0, f32_bytes(m.saturating_mul(k)), false),
                    access(g.b_res, 0, f32_bytes(k.saturating_mul(n)), false),
                    access(g.c_res, 0, f32_bytes(m.saturating_mul(n)), true),
                ]
            }
            ChannelCommand::Launch(KernelLaunch::AxpyF32(a)) => {
                let len = f32_bytes(u64::from(a.n));
                [
                    access(a.x_res, 0, len, false),
                    access(a.y_res, 0, len, true),
                    None,
                ]
            }
            ChannelCommand::Launch(KernelLaunch::ReduceSumF32(r)) => [
                access(r.x_res, 0, f32_bytes(u64::from(r.n)), false),
                access(r.out_res, r.out_offset, 4, true),
                None,
            ],
            ChannelCommand::Launch(KernelLaunch::Crc32c(c)) => [
                access(c.src_res, c.src_offset, c.len, false),
                access(c.out_res, c.out_offset, 4, true),
                None,
            ],
            ChannelCommand::QueryStats(q) => [
                access(
                    q.dst_res,
                    q.dst_offset,
                    size_of::<StatsRecord>() as u64,
                    true,
                ),
                None,
                None,
            ],
            ChannelCommand::ModuleLoad(c) => {
                [access(c.src_res, c.src_offset, c.size, false), None, None]
            }
            ChannelCommand::Bind(b) if b.res != 0 => {
                [access(b.res, b.offset, b.size, true), None, None]
            }
            ChannelCommand::Nop
            | ChannelCommand::Bind(_)
            | ChannelCommand::ModuleUnload(_)
            | ChannelCommand::PushConstants(_)
            | ChannelCommand::Dispatch(_) => [None, None, None],
        };
        list.into_iter().flatten()
    }

    /// The resource ids this command references (possibly repeated).
    pub fn resources(&self) -> impl Iterator<Item = u32> {
        self.accesses().map(|a| a.resource)
    }
}

/// Why a channel stream, buffer or capset is not acceptable. Stream errors carry the byte offset of
/// the offending command within the stream.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChannelError {
    /// The stream ends inside a command header or inside a command's declared size.
    #[error("command at {offset}: needs {needed} bytes, {remaining} left in the stream")]
    Truncated {
        /// Offset of the command.
        offset: usize,
        /// Bytes the command needs.
        needed: usize,
        /// Bytes left in the stream from `offset`.
        remaining: usize,
    },
    /// `size_bytes` is not a multiple of 4.
    #[error("command at {offset}: size {size} is not a multiple of 4")]
    UnalignedSize {
        /// Offset of the command.
        offset: usize,
        /// The declared size.
        size: u32,
    },
    /// `size_bytes` differs from the size of the opcode's (or kernel's) body.
    #[error("command at {offset}: opcode {opcode} has size {size}, expected {expected}")]
    BadSize {
        /// Offset of the command.
        offset: usize,
        /// The opcode.
        opcode: u32,
        /// The declared size.
        size: u32,
        /// The size this opcode requires (the minimum for NOP).
        expected: u32,
    },
    /// The opcode is not an [`Opcode`].
    #[error("command at {offset}: unknown opcode {opcode}")]
    UnknownOpcode {
        /// Offset of the command.
        offset: usize,
        /// The opcode.
        opcode: u32,
    },
    /// The kernel id is not a [`Kernel`].
    #[error("command at {offset}: unknown kernel {kernel}")]
    UnknownKernel {
        /// Offset of the command.
        offset: usize,
        /// The kernel id.
        kernel: u32,
    },
    /// A reserved field is not zero.
    #[error("command at {offset}: reserved field {field} is {value}")]
    ReservedNonZero {
        /// Offset of the command.
        offset: usize,
        /// Field name.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A field that must be a multiple of 4 is not.
    #[error("command at {offset}: {field} = {value} is not a multiple of 4")]
    Unaligned {
        /// Offset of the command.
        offset: usize,
        /// Field name.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A byte range computed from the command's fields overflows `u64`.
    #[error("command at {offset}: range of {field} overflows")]
    RangeOverflow {
        /// Offset of the command.
        offset: usize,
        /// Which range (field name).
        field: &'static str,
    },
    /// GEMM's output buffer is also one of its inputs.
    #[error("command at {offset}: GEMM output resource {resource} is also an input")]
    Aliased {
        /// Offset of the command.
        offset: usize,
        /// The shared resource id.
        resource: u32,
    },
    /// A field has a value the command does not allow.
    #[error("command at {offset}: {field} = {value} is not allowed")]
    BadField {
        /// Offset of the command.
        offset: usize,
        /// Field name.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The stream holds more than [`MAX_COMMANDS_PER_SUBMIT`] commands.
    #[error("more than {limit} commands in one submit")]
    TooManyCommands {
        /// The limit.
        limit: usize,
    },
    /// A RESOURCE_CREATE_3D (or transfer) is not shaped as a channel buffer.
    #[error("not a channel buffer: {field} = {value}")]
    NotABuffer {
        /// Field name.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// Capset or stats bytes are too short.
    #[error("capset/record truncated: needs {needed} bytes, got {got}")]
    ShortRecord {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// Capset or stats record has the wrong magic.
    #[error("bad magic {0:#x}")]
    BadMagic(u32),
    /// Capset or stats record has an unsupported protocol version.
    #[error("unsupported protocol version {0}")]
    BadVersion(u32),
}

impl ChannelError {
    /// The virtio-gpu response type a device answers this error with: always
    /// `VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER`.
    pub fn response_type(&self) -> u32 {
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
    }
}
