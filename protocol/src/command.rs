//! Decoding of virtio-gpu requests from the readable bytes of a descriptor chain, and encoding them
//! back (used by frontends and tests).
//!
//! A request is decoded once into a [`Request`]; variable-length parts (memory entries, the SUBMIT_3D
//! command stream) are borrowed from the input, never copied or allocated by a guest-given size.

use std::mem::size_of;

use vm_memory::ByteValued;

use crate::error::DecodeError;
use crate::virtio_gpu::*;

/// Largest `nr_entries` accepted in RESOURCE_ATTACH_BACKING / RESOURCE_CREATE_BLOB (as QEMU).
pub const MAX_MEM_ENTRIES: u32 = 16384;
/// Largest SUBMIT_3D command stream accepted, in bytes.
pub const MAX_SUBMIT_SIZE: u32 = 1 << 20;

/// Reads a `T` from the start of `bytes`, which may be unaligned.
pub fn read_obj<T: ByteValued + Default>(bytes: &[u8]) -> Option<T> {
    let src = bytes.get(..size_of::<T>())?;
    let mut value = T::default();
    value.as_mut_slice().copy_from_slice(src);
    Some(value)
}

/// A validated list of guest memory entries, borrowed from the request bytes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MemEntries<'a> {
    bytes: &'a [u8],
}

impl<'a> MemEntries<'a> {
    /// Wraps `bytes`, whose length must be a multiple of the entry size.
    fn new(bytes: &'a [u8]) -> Self {
        debug_assert_eq!(bytes.len() % size_of::<MemEntry>(), 0);
        MemEntries { bytes }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.bytes.len() / size_of::<MemEntry>()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Iterates over the entries.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = MemEntry> + 'a {
        self.bytes
            .chunks_exact(size_of::<MemEntry>())
            .map(|chunk| read_obj::<MemEntry>(chunk).unwrap_or_default())
    }

    /// The raw entry bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// One decoded virtio-gpu command.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum GpuCommand<'a> {
    /// GET_DISPLAY_INFO.
    GetDisplayInfo,
    /// RESOURCE_CREATE_2D.
    ResourceCreate2d(ResourceCreate2d),
    /// RESOURCE_UNREF.
    ResourceUnref(ResourceUnref),
    /// SET_SCANOUT.
    SetScanout(SetScanout),
    /// RESOURCE_FLUSH.
    ResourceFlush(ResourceFlush),
    /// TRANSFER_TO_HOST_2D.
    TransferToHost2d(TransferToHost2d),
    /// RESOURCE_ATTACH_BACKING with its memory entries.
    ResourceAttachBacking(ResourceAttachBacking, MemEntries<'a>),
    /// RESOURCE_DETACH_BACKING.
    ResourceDetachBacking(ResourceDetachBacking),
    /// GET_CAPSET_INFO.
    GetCapsetInfo(GetCapsetInfo),
    /// GET_CAPSET.
    GetCapset(GetCapset),
    /// GET_EDID.
    GetEdid(GetEdid),
    /// RESOURCE_ASSIGN_UUID.
    ResourceAssignUuid(ResourceAssignUuid),
    /// RESOURCE_CREATE_BLOB with its memory entries.
    ResourceCreateBlob(ResourceCreateBlob, MemEntries<'a>),
    /// SET_SCANOUT_BLOB.
    SetScanoutBlob(SetScanoutBlob),
    /// CTX_CREATE.
    CtxCreate(CtxCreate),
    /// CTX_DESTROY.
    CtxDestroy,
    /// CTX_ATTACH_RESOURCE.
    CtxAttachResource(CtxResource),
    /// CTX_DETACH_RESOURCE.
    CtxDetachResource(CtxResource),
    /// RESOURCE_CREATE_3D.
    ResourceCreate3d(ResourceCreate3d),
    /// TRANSFER_TO_HOST_3D.
    TransferToHost3d(Transfer3d),
    /// TRANSFER_FROM_HOST_3D.
    TransferFromHost3d(Transfer3d),
    /// SUBMIT_3D with its command stream.
    Submit3d(Submit3d, &'a [u8]),
    /// RESOURCE_MAP_BLOB.
    ResourceMapBlob(ResourceMapBlob),
    /// RESOURCE_UNMAP_BLOB.
    ResourceUnmapBlob(ResourceUnmapBlob),
    /// UPDATE_CURSOR.
    UpdateCursor(UpdateCursor),
    /// MOVE_CURSOR.
    MoveCursor(UpdateCursor),
}

/// A decoded request: its header and command.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The request header (type, flags, fence, context).
    pub hdr: CtrlHeader,
    /// The command.
    pub cmd: GpuCommand<'a>,
}

fn body<T: ByteValued + Default>(type_: u32, rest: &[u8]) -> Result<T, DecodeError> {
    read_obj::<T>(rest).ok_or(DecodeError::Truncated {
        type_,
        needed: size_of::<CtrlHeader>() + size_of::<T>(),
        got: size_of::<CtrlHeader>() + rest.len(),
    })
}

fn mem_entries<'a>(
    type_: u32,
    nr_entries: u32,
    fixed: usize,
    rest: &'a [u8],
) -> Result<MemEntries<'a>, DecodeError> {
    if nr_entries > MAX_MEM_ENTRIES {
        return Err(DecodeError::TooManyEntries(nr_entries));
    }
    // Cannot overflow: nr_entries <= 16384 and `fixed` is a struct size.
    let len = nr_entries as usize * size_of::<MemEntry>();
    let end = fixed + len;
    let bytes = rest.get(fixed..end).ok_or(DecodeError::Truncated {
        type_,
        needed: size_of::<CtrlHeader>() + fixed + len,
        got: size_of::<CtrlHeader>() + rest.len(),
    })?;
    Ok(MemEntries::new(bytes))
}

/// Decodes one request from the readable bytes of a descriptor chain.
pub fn decode_request(bytes: &[u8]) -> Result<Request<'_>, DecodeError> {
    let hdr = read_obj::<CtrlHeader>(bytes).ok_or(DecodeError::Truncated {
        type_: 0,
        needed: size_of::<CtrlHeader>(),
        got: bytes.len(),
    })?;
    let rest = bytes.get(size_of::<CtrlHeader>()..).unwrap_or_default();
    let t = hdr.type_;
    let cmd = match t {
        VIRTIO_GPU_CMD_GET_DISPLAY_INFO => GpuCommand::GetDisplayInfo,
        VIRTIO_GPU_CMD_RESOURCE_CREATE_2D => GpuCommand::ResourceCreate2d(body(t, rest)?),
        VIRTIO_GPU_CMD_RESOURCE_UNREF => GpuCommand::ResourceUnref(body(t, rest)?),
        VIRTIO_GPU_CMD_SET_SCANOUT => GpuCommand::SetScanout(body(t, rest)?),
        VIRTIO_GPU_CMD_RESOURCE_FLUSH => GpuCommand::ResourceFlush(body(t, rest)?),
        VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D => GpuCommand::TransferToHost2d(body(t, rest)?),
        VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING => {
            let b: ResourceAttachBacking = body(t, rest)?;
            let entries = mem_entries(t, b.nr_entries, size_of::<ResourceAttachBacking>(), rest)?;
            GpuCommand::ResourceAttachBacking(b, entries)
        }
        VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING => GpuCommand::ResourceDetachBacking(body(t, rest)?),
        VIRTIO_GPU_CMD_GET_CAPSET_INFO => GpuCommand::GetCapsetInfo(body(t, rest)?),
        VIRTIO_GPU_CMD_GET_CAPSET => GpuCommand::GetCapset(body(t, rest)?),
        VIRTIO_GPU_CMD_GET_EDID => GpuCommand::GetEdid(body(t, rest)?),
        VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID => GpuCommand::ResourceAssignUuid(body(t, rest)?),
        VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB => {
            let b: ResourceCreateBlob = body(t, rest)?;
            let entries = mem_entries(t, b.nr_entries, size_of::<ResourceCreateBlob>(), rest)?;
            GpuCommand::ResourceCreateBlob(b, entries)
        }
        VIRTIO_GPU_CMD_SET_SCANOUT_BLOB => GpuCommand::SetScanoutBlob(body(t, rest)?),
        VIRTIO_GPU_CMD_CTX_CREATE => {
            let c: CtxCreate = body(t, rest)?;
            if c.nlen as usize > c.debug_name.len() {
                return Err(DecodeError::InvalidField {
                    type_: t,
                    field: "nlen",
                    value: u64::from(c.nlen),
                });
            }
            GpuCommand::CtxCreate(c)
        }
        VIRTIO_GPU_CMD_CTX_DESTROY => GpuCommand::CtxDestroy,
        VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE => GpuCommand::CtxAttachResource(body(t, rest)?),
        VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE => GpuCommand::CtxDetachResource(body(t, rest)?),
        VIRTIO_GPU_CMD_RESOURCE_CREATE_3D => GpuCommand::ResourceCreate3d(body(t, rest)?),
        VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D => GpuCommand::TransferToHost3d(body(t, rest)?),
        VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D => GpuCommand::TransferFromHost3d(body(t, rest)?),
        VIRTIO_GPU_CMD_SUBMIT_3D => {
            let s: Submit3d = body(t, rest)?;
            if s.size > MAX_SUBMIT_SIZE {
                return Err(DecodeError::InvalidField {
                    type_: t,
                    field: "size",
                    value: u64::from(s.size),
                });
            }
            // Cannot overflow: size <= MAX_SUBMIT_SIZE.
            let start = size_of::<Submit3d>();
            let end = start + s.size as usize;
            let stream = rest.get(start..end).ok_or(DecodeError::Truncated {
                type_: t,
                needed: size_of::<CtrlHeader>() + end,
                got: bytes.len(),
            })?;
            GpuCommand::Submit3d(s, stream)
        }
        VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB => GpuCommand::ResourceMapBlob(body(t, rest)?),
        VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB => GpuCommand::ResourceUnmapBlob(body(t, rest)?),
        VIRTIO_GPU_CMD_UPDATE_CURSOR => GpuCommand::UpdateCursor(body(t, rest)?),
        VIRTIO_GPU_CMD_MOVE_CURSOR => GpuCommand::MoveCursor(body(t, rest)?),
        other => return Err(DecodeError::UnknownCommand(other)),
    };
    Ok(Request { hdr, cmd })
}

impl GpuCommand<'_> {
    /// The wire command type.
    pub fn type_(&self) -> u32 {
        match self {
            GpuCommand::GetDisplayInfo => VIRTIO_GPU_CMD_GET_DISPLAY_INFO,
            GpuCommand::ResourceCreate2d(_) => VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
            GpuCommand::ResourceUnref(_) => VIRTIO_GPU_CMD_RESOURCE_UNREF,
            GpuCommand::SetScanout(_) => VIRTIO_GPU_CMD_SET_SCANOUT,
            GpuCommand::ResourceFlush(_) => VIRTIO_GPU_CMD_RESOURCE_FLUSH,
            GpuCommand::TransferToHost2d(_) => VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
            GpuCommand::ResourceAttachBacking(..) => VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
            GpuCommand::ResourceDetachBacking(_) => VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING,
            GpuCommand::GetCapsetInfo(_) => VIRTIO_GPU_CMD_GET_CAPSET_INFO,
            GpuCommand::GetCapset(_) => VIRTIO_GPU_CMD_GET_CAPSET,
            GpuCommand::GetEdid(_) => VIRTIO_GPU_CMD_GET_EDID,
            GpuCommand::ResourceAssignUuid(_) => VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID,
            GpuCommand::ResourceCreateBlob(..) => VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
            GpuCommand::SetScanoutBlob(_) => VIRTIO_GPU_CMD_SET_SCANOUT_BLOB,
            GpuCommand::CtxCreate(_) => VIRTIO_GPU_CMD_CTX_CREATE,
            GpuCommand::CtxDestroy => VIRTIO_GPU_CMD_CTX_DESTROY,
            GpuCommand::CtxAttachResource(_) => VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE,
            GpuCommand::CtxDetachResource(_) => VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE,
            GpuCommand::ResourceCreate3d(_) => VIRTIO_GPU_CMD_RESOURCE_CREATE_3D,
            GpuCommand::TransferToHost3d(_) => VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D,
            GpuCommand::TransferFromHost3d(_) => VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D,
            GpuCommand::Submit3d(..) => VIRTIO_GPU_CMD_SUBMIT_3D,
            GpuCommand::ResourceMapBlob(_) => VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB,
            GpuCommand::ResourceUnmapBlob(_) => VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB,
            GpuCommand::UpdateCursor(_) => VIRTIO_GPU_CMD_UPDATE_CURSOR,
            GpuCommand::MoveCursor(_) => VIRTIO_GPU_CMD_MOVE_CURSOR,
        }
    }

    /// True for commands that belong on the cursor queue.
    pub fn is_cursor(&self) -> bool {
        matches!(
            self,
            GpuCommand::UpdateCursor(_) | GpuCommand::MoveCursor(_)
        )
    }

    /// Appends the command (header first) to `out`, with `hdr.type_` set to this command's type.
    pub fn encode(&self, hdr: CtrlHeader, out: &mut Vec<u8>) {
        let hdr = CtrlHeader {
            type_: self.type_(),
            ..hdr
        };
        out.extend_from_slice(hdr.as_slice());
        match self {
            GpuCommand::GetDisplayInfo | GpuCommand::CtxDestroy => {}
            GpuCommand::ResourceCreate2d(b) => out.extend_from_slice(b.as_slice()),
            GpuCommand::ResourceUnref(b) => out.extend_from_slice(b.as_slice()),
            GpuCommand::SetScanout(b) => out.extend_from_slice(b.as_slice()),
            GpuCommand::ResourceFlush(b) => out.extend_from_slice(b.as_slice()),
            GpuCommand::TransferToHost2d(b) => out.extend_from_slice(b.as_slice()),
            GpuCommand::ResourceAttachBacking(b, e) => {
                out.extend_from_slice(b.as_slice());
                out.extend_from_slice(e.as_bytes());
            }
            GpuCommand::ResourceDetachBacking(b) => out.extend_from_slice(b.as_slice()),
            GpuCommand::GetCapsetInfo(b) => out.extend_from_slice(b.as_slice()),
            GpuCommand::GetCapset(b) => out.extend_from_slice(b.as_slice()),
            GpuCommand::GetEdid(b) => out.extend_from_slice(b.as_slice()),
            GpuCommand::ResourceAssignUuid(b) => out.extend_from_slice(b.as_slice()),
            GpuCommand::ResourceCreateBlob(b, e) => {
                out.extend_from_slice(b.as_slice());
                out.extend_from_slice(e.as_bytes());
            }
            GpuCommand::SetScanoutBlob(b) => out.extend_from_slice(b.as_slice()),
            GpuCommand::CtxCreate(b) => out.extend_from_slice(b.as_slice()),
            GpuCommand::CtxAttachResource(b) | GpuCommand::CtxDetachResource(b) => {
                out.extend_from_slice(b.as_slice())
            }
            GpuCommand::ResourceCreate3d(b) => out.extend_from_slice(b.as_slice()),
            GpuCommand::TransferToHost3d(b) | GpuCommand::TransferFromHost3d(b) => {
                out.extend_from_slice(b.as_slice())
            }
            GpuCommand::Submit3d(b, stream) => {
                out.extend_from_slice(b.as_slice());
                out.extend_from_slice(stream);
            }
            GpuCommand::ResourceMapBlob(b) => out.extend_from_slice(b.as_slice()),
            GpuCommand::ResourceUnmapBlob(b) => out.extend_from_slice(b.as_slice()),
            GpuCommand::UpdateCursor(b) | GpuCommand::MoveCursor(b) => {
                out.extend_from_slice(b.as_slice())
            }
        }
    }
}

/// Builds the bytes of a list of memory entries (for encoding ATTACH_BACKING / CREATE_BLOB).
pub fn mem_entries_bytes(entries: &[MemEntry], out: &mut Vec<u8>) {
    for e in entries {
        out.extend_from_slice(e.as_slice());
    }
}

/// Wraps already-encoded entry bytes (length must be a multiple of 16) for encoding.
pub fn mem_entries_from_bytes(bytes: &[u8]) -> Option<MemEntries<'_>> {
    bytes
        .len()
        .is_multiple_of(size_of::<MemEntry>())
        .then(|| MemEntries::new(bytes))
}
