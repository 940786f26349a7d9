//! The SUBMIT_3D command stream decoder.

use std::iter::FusedIterator;
use std::mem::size_of;

use vm_memory::ByteValued;

use super::*;
use crate::capset::StatsRecord;
use crate::command::read_obj;

/// Decodes a SUBMIT_3D command stream. The iterator yields each command, stops after the first
/// error, and never allocates or panics.
pub fn decode_stream(bytes: &[u8]) -> CommandStreamIter<'_> {
    CommandStreamIter {
        bytes,
        offset: 0,
        count: 0,
        done: false,
    }
}

/// Decodes a whole stream without acting on it and returns its command count, so a backend can
/// reject a bad submit before running any of it.
pub fn validate_stream(bytes: &[u8]) -> Result<usize, ChannelError> {
    let mut n = 0;
    for cmd in decode_stream(bytes) {
        cmd?;
        n += 1;
    }
    Ok(n)
}

/// Iterator over the commands of a stream; see [`decode_stream`].
#[derive(Clone, Debug)]
pub struct CommandStreamIter<'a> {
    bytes: &'a [u8],
    offset: usize,
    count: usize,
    done: bool,
}

impl CommandStreamIter<'_> {
    /// Byte offset of the next command in the stream.
    pub fn offset(&self) -> usize {
        self.offset
    }

    fn next_inner(&mut self) -> Result<Option<ChannelCommand>, ChannelError> {
        let rest = self.bytes.get(self.offset..).unwrap_or_default();
        if rest.is_empty() {
            return Ok(None);
        }
        if self.count >= MAX_COMMANDS_PER_SUBMIT {
            return Err(ChannelError::TooManyCommands {
                limit: MAX_COMMANDS_PER_SUBMIT,
            });
        }
        let offset = self.offset;
        let hdr = read_obj::<CmdHeader>(rest).ok_or(ChannelError::Truncated {
            offset,
            needed: size_of::<CmdHeader>(),
            remaining: rest.len(),
        })?;
        if !hdr.size_bytes.is_multiple_of(4) {
            return Err(ChannelError::UnalignedSize {
                offset,
                size: hdr.size_bytes,
            });
        }
        let size = hdr.size_bytes as usize;
        let cmd_bytes = rest.get(..size).ok_or(ChannelError::Truncated {
            offset,
            needed: size,
            remaining: rest.len(),
        })?;
        let cmd = decode_one(offset, hdr, cmd_bytes)?;
        self.offset = offset.saturating_add(size);
        self.count += 1;
        Ok(Some(cmd))
    }
}

impl Iterator for CommandStreamIter<'_> {
    type Item = Result<ChannelCommand, ChannelError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_inner() {
            Ok(Some(cmd)) => Some(Ok(cmd)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl FusedIterator for CommandStreamIter<'_> {}

/// Reads a `T` at `at` of a command whose size was already checked to be exactly right.
fn field<T: ByteValued + Default>(cmd: &[u8], at: usize) -> T {
    cmd.get(at..).and_then(read_obj::<T>).unwrap_or_default()
}

fn exact(offset: usize, hdr: CmdHeader, expected: usize) -> Result<(), ChannelError> {
    if hdr.size_bytes as usize != expected {
        return Err(ChannelError::BadSize {
            offset,
            opcode: hdr.opcode,
            size: hdr.size_bytes,
            // Bodies are a few dozen bytes.
            expected: expected as u32,
        });
    }
    Ok(())
}

fn reserved(offset: usize, field: &'static str, value: u32) -> Result<(), ChannelError> {
    if value != 0 {
        return Err(ChannelError::ReservedNonZero {
            offset,
            field,
            value: u64::from(value),
        });
    }
    Ok(())
}

fn range(offset: usize, field: &'static str, start: u64, len: u64) -> Result<(), ChannelError> {
    start
        .checked_add(len)
        .map(|_| ())
        .ok_or(ChannelError::RangeOverflow { offset, field })
}

fn f32_matrix(
    offset: usize,
    field: &'static str,
    rows: u32,
    cols: u32,
) -> Result<(), ChannelError> {
    u64::from(rows)
        .checked_mul(u64::from(cols))
        .and_then(|e| e.checked_mul(4))
        .map(|_| ())
        .ok_or(ChannelError::RangeOverflow { offset, field })
}

const HDR: usize = size_of::<CmdHeader>();

/// Decodes one command whose bytes (`cmd`, header included) are exactly `hdr.size_bytes` long.
fn decode_one(offset: usize, hdr: CmdHeader, cmd: &[u8]) -> Result<ChannelCommand, ChannelError> {
    let opcode = Opcode::from_u32(hdr.opcode).ok_or(ChannelError::UnknownOpcode {
        offset,
        opcode: hdr.opcode,
    })?;
    match opcode {
        Opcode::Nop => {
            if (hdr.size_bytes as usize) < HDR {
                return Err(ChannelError::BadSize {
                    offset,
                    opcode: hdr.opcode,
                    size: hdr.size_bytes,
                    expected: HDR as u32,
                });
            }
            Ok(ChannelCommand::Nop)
        }
        Opcode::Copy => {
            exact(offset, hdr, HDR + size_of::<CopyCmd>())?;
            let c: CopyCmd = field(cmd, HDR);
            range(offset, "src", c.src_offset, c.size)?;
            range(offset, "dst", c.dst_offset, c.size)?;
            Ok(ChannelCommand::Copy(c))
        }
        Opcode::Fill => {
            exact(offset, hdr, HDR + size_of::<FillCmd>())?;
            let c: FillCmd = field(cmd, HDR);
            for (name, v) in [("offset", c.offset), ("size", c.size)] {
                if !v.is_multiple_of(4) {
                    return Err(ChannelError::Unaligned {
                        offset,
                        field: name,
                        value: v,
                    });
                }
            }
            range(offset, "dst", c.offset, c.size)?;
            Ok(ChannelCommand::Fill(c))
        }
        Opcode::QueryStats => {
            exact(offset, hdr, HDR + size_of::<QueryStatsCmd>())?;
            let c: QueryStatsCmd = field(cmd, HDR);
            reserved(offset, "reserved", c.reserved)?;
            range(offset, "dst", c.dst_offset, size_of::<StatsRecord>() as u64)?;
            Ok(ChannelCommand::QueryStats(c))
        }
        Opcode::Launch => decode_launch(offset, hdr, cmd).map(ChannelCommand::Launch),
        Opcode::ModuleLoad => {
            exact(offset, hdr, HDR + size_of::<ModuleLoadCmd>())?;
            let c: ModuleLoadCmd = field(cmd, HDR);
            super::module::check_load(offset, &c)?;
            Ok(ChannelCommand::ModuleLoad(c))
        }
        Opcode::ModuleUnload => {
            exact(offset, hdr, HDR + size_of::<ModuleUnloadCmd>())?;
            let c: ModuleUnloadCmd = field(cmd, HDR);
            reserved(offset, "reserved", c.reserved)?;
            if c.module_id == 0 {
                return Err(ChannelError::BadField {
                    offset,
                    field: "module_id",
                    value: 0,
                });
            }
            Ok(ChannelCommand::ModuleUnload(c))
        }
        Opcode::Bind => {
            exact(offset, hdr, HDR + size_of::<BindCmd>())?;
            let c: BindCmd = field(cmd, HDR);
            super::module::check_bind(offset, &c)?;
            Ok(ChannelCommand::Bind(c))
        }
        Opcode::PushConstants => {
            const DATA: usize = HDR + size_of::<PushConstantsHeader>();
            let h: PushConstantsHeader = field(cmd, HDR);
            exact(offset, hdr, DATA.saturating_add(h.size as usize))?;
            let data = cmd.get(DATA..).unwrap_or_default();
            super::module::decode_push(offset, h, data).map(ChannelCommand::PushConstants)
        }
        Opcode::Dispatch => {
            exact(offset, hdr, HDR + size_of::<DispatchCmd>())?;
            let c: DispatchCmd = field(cmd, HDR);
            super::module::check_dispatch(offset, &c)?;
            Ok(ChannelCommand::Dispatch(c))
        }
    }
}

fn decode_launch(offset: usize, hdr: CmdHeader, cmd: &[u8]) -> Result<KernelLaunch, ChannelError> {
    const ARGS: usize = HDR + size_of::<LaunchHeader>();
    if (hdr.size_bytes as usize) < ARGS {
        return Err(ChannelError::BadSize {
            offset,
            opcode: hdr.opcode,
            size: hdr.size_bytes,
            expected: ARGS as u32,
        });
    }
    let lh: LaunchHeader = field(cmd, HDR);
    let kernel = Kernel::from_u32(lh.kernel).ok_or(ChannelError::UnknownKernel {
        offset,
        kernel: lh.kernel,
    })?;
    reserved(offset, "launch.reserved", lh.reserved)?;
    match kernel {
        Kernel::GemmF32 => {
            exact(offset, hdr, ARGS + size_of::<GemmF32Args>())?;
            let g: GemmF32Args = field(cmd, ARGS);
            f32_matrix(offset, "a", g.m, g.k)?;
            f32_matrix(offset, "b", g.k, g.n)?;
            f32_matrix(offset, "c", g.m, g.n)?;
            if g.c_res == g.a_res || g.c_res == g.b_res {
                return Err(ChannelError::Aliased {
                    offset,
                    resource: g.c_res,
                });
            }
            Ok(KernelLaunch::GemmF32(g))
        }
        Kernel::AxpyF32 => {
            exact(offset, hdr, ARGS + size_of::<AxpyF32Args>())?;
            Ok(KernelLaunch::AxpyF32(field(cmd, ARGS)))
        }
        Kernel::ReduceSumF32 => {
            exact(offset, hdr, ARGS + size_of::<ReduceSumF32Args>())?;
            let r: ReduceSumF32Args = field(cmd, ARGS);
            reserved(offset, "reserved", r.reserved)?;
            range(offset, "out", r.out_offset, 4)?;
            Ok(KernelLaunch::ReduceSumF32(r))
        }
        Kernel::Crc32c => {
            exact(offset, hdr, ARGS + size_of::<Crc32cArgs>())?;
            let c: Crc32cArgs = field(cmd, ARGS);
            range(offset, "src", c.src_offset, c.len)?;
            range(offset, "out", c.out_offset, 4)?;
            Ok(KernelLaunch::Crc32c(c))
        }
    }
}
