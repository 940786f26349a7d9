//! Guest compute modules (protocol 1.2): a context loads SPIR-V from one of its buffers, binds its
//! buffers to descriptor slots, sets push constants and launches grids.
//!
//! MODULE_LOAD, BIND and PUSH_CONSTANTS change the context's state when the device processes the
//! SUBMIT_3D that holds them, in stream order, before any of its work runs; DISPATCH takes a copy
//! of the bindings and push constants current at its place in the stream. The state belongs to
//! the context and lasts until changed or until the context is destroyed.

use vm_memory::ByteValued;

use super::ChannelError;

/// Bytes of [`ModuleLoadCmd::entry`]: the entry-point name, UTF-8, NUL padded (at most 31 bytes).
pub const ENTRY_NAME_LEN: usize = 32;
/// Largest SPIR-V module a MODULE_LOAD may name, in bytes.
pub const MAX_MODULE_BYTES: u64 = 1 << 20;
/// Most modules one context may have loaded.
pub const MAX_MODULES_PER_CONTEXT: usize = 64;
/// Guest descriptor slots: BIND slots are `0..MAX_BINDINGS` (set 0, storage buffers).
pub const MAX_BINDINGS: u32 = 8;
/// Bytes of push constants a context has (the Vulkan guaranteed minimum).
pub const MAX_PUSH_CONSTANT_BYTES: u32 = 128;
/// BIND offsets are multiples of this (the largest `minStorageBufferOffsetAlignment` Vulkan
/// allows), so a binding starts where the guest said on every device.
pub const BIND_OFFSET_ALIGN: u64 = 256;

/// MODULE_LOAD body: `size` bytes of SPIR-V at `src_res[src_offset..]` become module `module_id`
/// of the context, with entry point `entry`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleLoadCmd {
    /// The context's id for the module (non-zero, not in use).
    pub module_id: u32,
    /// Buffer holding the SPIR-V words (little-endian).
    pub src_res: u32,
    /// Byte offset of the module in the buffer, a multiple of 4.
    pub src_offset: u64,
    /// Bytes of the module, a non-zero multiple of 4, at most [`MAX_MODULE_BYTES`].
    pub size: u64,
    /// Entry-point name, UTF-8, NUL padded.
    pub entry: [u8; ENTRY_NAME_LEN],
}

impl ModuleLoadCmd {
    /// A command loading `size` bytes at `src_res[src_offset..]` as `module_id` with entry
    /// `entry` (truncated to 31 bytes at a char boundary).
    pub fn new(module_id: u32, src_res: u32, src_offset: u64, size: u64, entry: &str) -> Self {
        let mut name = [0; ENTRY_NAME_LEN];
        let mut end = entry.len().min(ENTRY_NAME_LEN - 1);
        while !entry.is_char_boundary(end) {
            end -= 1;
        }
        if let (Some(dst), Some(src)) = (name.get_mut(..end), entry.as_bytes().get(..end)) {
            dst.copy_from_slice(src);
        }
        ModuleLoadCmd {
            module_id,
            src_res,
            src_offset,
            size,
            entry: name,
        }
    }

    /// The entry-point name (checked by the decoder: non-empty UTF-8, NUL padded).
    pub fn entry_name(&self) -> &str {
        let end = self
            .entry
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(ENTRY_NAME_LEN);
        std::str::from_utf8(self.entry.get(..end).unwrap_or_default()).unwrap_or_default()
    }
}

/// MODULE_UNLOAD body: forgets module `module_id` (launches already queued still run).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleUnloadCmd {
    /// The module.
    pub module_id: u32,
    /// Must be 0.
    pub reserved: u32,
}

/// BIND body: slot `slot` of the context's launch state names `size` bytes of `res` from
/// `offset` (`res` 0 clears the slot; then offset and size must be 0).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct BindCmd {
    /// Descriptor slot, `0..MAX_BINDINGS`.
    pub slot: u32,
    /// Buffer (attached to the context), or 0 to clear the slot.
    pub res: u32,
    /// Byte offset, a multiple of [`BIND_OFFSET_ALIGN`].
    pub offset: u64,
    /// Bytes bound, a non-zero multiple of 4.
    pub size: u64,
}

/// PUSH_CONSTANTS body prefix; `size` bytes of data follow (the command is `8 + 8 + size` bytes).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PushConstantsHeader {
    /// First byte written, a multiple of 4.
    pub offset: u32,
    /// Bytes written, a multiple of 4; `offset + size` ≤ [`MAX_PUSH_CONSTANT_BYTES`].
    pub size: u32,
}

/// A decoded PUSH_CONSTANTS command.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PushConstantsCmd {
    /// First byte written.
    pub offset: u32,
    /// Bytes written.
    pub size: u32,
    /// The bytes, in `data[..size]`.
    pub data: [u8; MAX_PUSH_CONSTANT_BYTES as usize],
}

impl PushConstantsCmd {
    /// Writes `bytes` (at most [`MAX_PUSH_CONSTANT_BYTES`], excess dropped) from `offset`.
    pub fn new(offset: u32, bytes: &[u8]) -> Self {
        let mut data = [0; MAX_PUSH_CONSTANT_BYTES as usize];
        let n = bytes.len().min(data.len());
        if let (Some(dst), Some(src)) = (data.get_mut(..n), bytes.get(..n)) {
            dst.copy_from_slice(src);
        }
        PushConstantsCmd {
            offset,
            // n <= 128.
            size: n as u32,
            data,
        }
    }

    /// The bytes written.
    pub fn bytes(&self) -> &[u8] {
        self.data.get(..self.size as usize).unwrap_or_default()
    }
}

/// DISPATCH body: runs module `module_id` over `groups` workgroups with the context's current
/// bindings and push constants.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DispatchCmd {
    /// A module of the context.
    pub module_id: u32,
    /// Must be 0.
    pub reserved: u32,
    /// Workgroups in x, y and z (each ≥ 1, at most the capset's `max_workgroups`).
    pub groups: [u32; 3],
    /// Must be 0.
    pub reserved2: u32,
}

impl DispatchCmd {
    /// Runs module `module_id` over `groups` workgroups (reserved fields 0).
    pub fn new(module_id: u32, groups: [u32; 3]) -> Self {
        DispatchCmd {
            module_id,
            groups,
            ..DispatchCmd::default()
        }
    }
}

// SAFETY: `#[repr(C)]` structs of u8/u32/u64 fields laid out without implicit padding; every bit
// pattern is a valid value.
unsafe impl ByteValued for ModuleLoadCmd {}
// SAFETY: see above.
unsafe impl ByteValued for ModuleUnloadCmd {}
// SAFETY: see above.
unsafe impl ByteValued for BindCmd {}
// SAFETY: see above.
unsafe impl ByteValued for PushConstantsHeader {}
// SAFETY: see above.
unsafe impl ByteValued for DispatchCmd {}

fn bad(offset: usize, field: &'static str, value: u64) -> ChannelError {
    ChannelError::BadField {
        offset,
        field,
        value,
    }
}

/// Checks a MODULE_LOAD body.
pub(super) fn check_load(offset: usize, c: &ModuleLoadCmd) -> Result<(), ChannelError> {
    if c.module_id == 0 {
        return Err(bad(offset, "module_id", 0));
    }
    if c.size == 0 || c.size > MAX_MODULE_BYTES || !c.size.is_multiple_of(4) {
        return Err(bad(offset, "size", c.size));
    }
    if !c.src_offset.is_multiple_of(4) {
        return Err(ChannelError::Unaligned {
            offset,
            field: "src_offset",
            value: c.src_offset,
        });
    }
    if c.src_offset.checked_add(c.size).is_none() {
        return Err(ChannelError::RangeOverflow {
            offset,
            field: "src",
        });
    }
    let end = c.entry.iter().position(|&b| b == 0);
    let name_ok = match end {
        Some(0) | None => false,
        Some(n) => {
            c.entry
                .get(n..)
                .is_some_and(|rest| rest.iter().all(|&b| b == 0))
                && c.entry
                    .get(..n)
                    .is_some_and(|s| std::str::from_utf8(s).is_ok())
        }
    };
    if !name_ok {
        return Err(bad(offset, "entry", 0));
    }
    Ok(())
}

/// Checks a BIND body.
pub(super) fn check_bind(offset: usize, c: &BindCmd) -> Result<(), ChannelError> {
    if c.slot >= MAX_BINDINGS {
        return Err(bad(offset, "slot", u64::from(c.slot)));
    }
    if c.res == 0 {
        if c.offset != 0 || c.size != 0 {
            return Err(bad(offset, "size", c.size));
        }
        return Ok(());
    }
    if !c.offset.is_multiple_of(BIND_OFFSET_ALIGN) {
        return Err(ChannelError::Unaligned {
            offset,
            field: "offset",
            value: c.offset,
        });
    }
    if c.size == 0 || !c.size.is_multiple_of(4) {
        return Err(bad(offset, "size", c.size));
    }
    if c.offset.checked_add(c.size).is_none() {
        return Err(ChannelError::RangeOverflow {
            offset,
            field: "binding",
        });
    }
    Ok(())
}

/// Checks a PUSH_CONSTANTS header against the command's size and returns the command.
pub(super) fn decode_push(
    offset: usize,
    h: PushConstantsHeader,
    data: &[u8],
) -> Result<PushConstantsCmd, ChannelError> {
    if !h.offset.is_multiple_of(4) || !h.size.is_multiple_of(4) {
        return Err(ChannelError::Unaligned {
            offset,
            field: "push_constants",
            value: u64::from(h.offset | h.size),
        });
    }
    if h.offset
        .checked_add(h.size)
        .is_none_or(|e| e > MAX_PUSH_CONSTANT_BYTES)
    {
        return Err(bad(offset, "push_constants.size", u64::from(h.size)));
    }
    let mut cmd = PushConstantsCmd::new(h.offset, data);
    cmd.size = h.size;
    Ok(cmd)
}

/// Checks a DISPATCH body.
pub(super) fn check_dispatch(offset: usize, c: &DispatchCmd) -> Result<(), ChannelError> {
    if c.module_id == 0 {
        return Err(bad(offset, "module_id", 0));
    }
    if c.reserved != 0 || c.reserved2 != 0 {
        return Err(ChannelError::ReservedNonZero {
            offset,
            field: "dispatch.reserved",
            value: u64::from(c.reserved | c.reserved2),
        });
    }
    if let Some(&g) = c.groups.iter().find(|&&g| g == 0) {
        return Err(bad(offset, "groups", u64::from(g)));
    }
    Ok(())
}
