//! virtio-gpu wire structures (virtio 1.3, section 5.7), exactly as they sit in guest memory.
//!
//! Every structure is `#[repr(C)]`, little-endian and [`ByteValued`], so it can be read from and written
//! to descriptor bytes without any hand-written field shuffling. Only little-endian hosts are supported.

use vm_memory::ByteValued;

#[cfg(target_endian = "big")]
compile_error!("vgpu-protocol assumes a little-endian host");

/// virtio device id of a GPU.
pub const VIRTIO_ID_GPU: u32 = 16;

/// Device feature: 3D (virgl) contexts and commands.
pub const VIRTIO_GPU_F_VIRGL: u32 = 0;
/// Device feature: GET_EDID.
pub const VIRTIO_GPU_F_EDID: u32 = 1;
/// Device feature: RESOURCE_ASSIGN_UUID.
pub const VIRTIO_GPU_F_RESOURCE_UUID: u32 = 2;
/// Device feature: blob resources.
pub const VIRTIO_GPU_F_RESOURCE_BLOB: u32 = 3;
/// Device feature: CTX_CREATE.context_init and ring indexes.
pub const VIRTIO_GPU_F_CONTEXT_INIT: u32 = 4;

/// Config event: the display configuration changed.
pub const VIRTIO_GPU_EVENT_DISPLAY: u32 = 1;

/// Maximum number of scanouts the protocol can describe.
pub const VIRTIO_GPU_MAX_SCANOUTS: usize = 16;

/// Header flag: the command carries a fence.
pub const VIRTIO_GPU_FLAG_FENCE: u32 = 1 << 0;
/// Header flag: `ring_idx` is valid.
pub const VIRTIO_GPU_FLAG_INFO_RING_IDX: u32 = 1 << 1;

// 2D commands.
/// GET_DISPLAY_INFO command type.
pub const VIRTIO_GPU_CMD_GET_DISPLAY_INFO: u32 = 0x0100;
/// RESOURCE_CREATE_2D command type.
pub const VIRTIO_GPU_CMD_RESOURCE_CREATE_2D: u32 = 0x0101;
/// RESOURCE_UNREF command type.
pub const VIRTIO_GPU_CMD_RESOURCE_UNREF: u32 = 0x0102;
/// SET_SCANOUT command type.
pub const VIRTIO_GPU_CMD_SET_SCANOUT: u32 = 0x0103;
/// RESOURCE_FLUSH command type.
pub const VIRTIO_GPU_CMD_RESOURCE_FLUSH: u32 = 0x0104;
/// TRANSFER_TO_HOST_2D command type.
pub const VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D: u32 = 0x0105;
/// RESOURCE_ATTACH_BACKING command type.
pub const VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING: u32 = 0x0106;
/// RESOURCE_DETACH_BACKING command type.
pub const VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING: u32 = 0x0107;
/// GET_CAPSET_INFO command type.
pub const VIRTIO_GPU_CMD_GET_CAPSET_INFO: u32 = 0x0108;
/// GET_CAPSET command type.
pub const VIRTIO_GPU_CMD_GET_CAPSET: u32 = 0x0109;
/// GET_EDID command type.
pub const VIRTIO_GPU_CMD_GET_EDID: u32 = 0x010a;
/// RESOURCE_ASSIGN_UUID command type.
pub const VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID: u32 = 0x010b;
/// RESOURCE_CREATE_BLOB command type.
pub const VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB: u32 = 0x010c;
/// SET_SCANOUT_BLOB command type.
pub const VIRTIO_GPU_CMD_SET_SCANOUT_BLOB: u32 = 0x010d;

// 3D commands.
/// CTX_CREATE command type.
pub const VIRTIO_GPU_CMD_CTX_CREATE: u32 = 0x0200;
/// CTX_DESTROY command type.
pub const VIRTIO_GPU_CMD_CTX_DESTROY: u32 = 0x0201;
/// CTX_ATTACH_RESOURCE command type.
pub const VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE: u32 = 0x0202;
/// CTX_DETACH_RESOURCE command type.
pub const VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE: u32 = 0x0203;
/// RESOURCE_CREATE_3D command type.
pub const VIRTIO_GPU_CMD_RESOURCE_CREATE_3D: u32 = 0x0204;
/// TRANSFER_TO_HOST_3D command type.
pub const VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D: u32 = 0x0205;
/// TRANSFER_FROM_HOST_3D command type.
pub const VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D: u32 = 0x0206;
/// SUBMIT_3D command type.
pub const VIRTIO_GPU_CMD_SUBMIT_3D: u32 = 0x0207;
/// RESOURCE_MAP_BLOB command type.
pub const VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB: u32 = 0x0208;
/// RESOURCE_UNMAP_BLOB command type.
pub const VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB: u32 = 0x0209;

// Cursor commands.
/// UPDATE_CURSOR command type.
pub const VIRTIO_GPU_CMD_UPDATE_CURSOR: u32 = 0x0300;
/// MOVE_CURSOR command type.
pub const VIRTIO_GPU_CMD_MOVE_CURSOR: u32 = 0x0301;

/// Every command type of virtio-gpu 1.3 (2D, 3D, blob and cursor), in the spec's order.
pub const VIRTIO_GPU_COMMAND_TYPES: [u32; 26] = [
    VIRTIO_GPU_CMD_GET_DISPLAY_INFO,
    VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
    VIRTIO_GPU_CMD_RESOURCE_UNREF,
    VIRTIO_GPU_CMD_SET_SCANOUT,
    VIRTIO_GPU_CMD_RESOURCE_FLUSH,
    VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
    VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
    VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING,
    VIRTIO_GPU_CMD_GET_CAPSET_INFO,
    VIRTIO_GPU_CMD_GET_CAPSET,
    VIRTIO_GPU_CMD_GET_EDID,
    VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID,
    VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
    VIRTIO_GPU_CMD_SET_SCANOUT_BLOB,
    VIRTIO_GPU_CMD_CTX_CREATE,
    VIRTIO_GPU_CMD_CTX_DESTROY,
    VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE,
    VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE,
    VIRTIO_GPU_CMD_RESOURCE_CREATE_3D,
    VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D,
    VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D,
    VIRTIO_GPU_CMD_SUBMIT_3D,
    VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB,
    VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB,
    VIRTIO_GPU_CMD_UPDATE_CURSOR,
    VIRTIO_GPU_CMD_MOVE_CURSOR,
];

// Success responses.
/// OK, no data.
pub const VIRTIO_GPU_RESP_OK_NODATA: u32 = 0x1100;
/// OK with display info.
pub const VIRTIO_GPU_RESP_OK_DISPLAY_INFO: u32 = 0x1101;
/// OK with capset info.
pub const VIRTIO_GPU_RESP_OK_CAPSET_INFO: u32 = 0x1102;
/// OK with a capset.
pub const VIRTIO_GPU_RESP_OK_CAPSET: u32 = 0x1103;
/// OK with an EDID blob.
pub const VIRTIO_GPU_RESP_OK_EDID: u32 = 0x1104;
/// OK with a resource UUID.
pub const VIRTIO_GPU_RESP_OK_RESOURCE_UUID: u32 = 0x1105;
/// OK with blob map info.
pub const VIRTIO_GPU_RESP_OK_MAP_INFO: u32 = 0x1106;

// Error responses.
/// Unspecified error.
pub const VIRTIO_GPU_RESP_ERR_UNSPEC: u32 = 0x1200;
/// Out of memory.
pub const VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY: u32 = 0x1201;
/// Invalid scanout id.
pub const VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
/// Invalid resource id.
pub const VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
/// Invalid context id.
pub const VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID: u32 = 0x1204;
/// Invalid parameter.
pub const VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER: u32 = 0x1205;

// Pixel formats.
/// B8G8R8A8_UNORM.
pub const VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM: u32 = 1;
/// B8G8R8X8_UNORM.
pub const VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM: u32 = 2;
/// A8R8G8B8_UNORM.
pub const VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM: u32 = 3;
/// X8R8G8B8_UNORM.
pub const VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM: u32 = 4;
/// R8G8B8A8_UNORM.
pub const VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM: u32 = 67;
/// X8B8G8R8_UNORM.
pub const VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM: u32 = 68;
/// A8B8G8R8_UNORM.
pub const VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM: u32 = 121;
/// R8G8B8X8_UNORM.
pub const VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM: u32 = 134;

// Blob memory types and flags.
/// Blob backed by guest memory.
pub const VIRTIO_GPU_BLOB_MEM_GUEST: u32 = 1;
/// Blob backed by host 3D memory.
pub const VIRTIO_GPU_BLOB_MEM_HOST3D: u32 = 2;
/// Blob backed by host 3D memory with guest backing.
pub const VIRTIO_GPU_BLOB_MEM_HOST3D_GUEST: u32 = 3;

/// Every control/cursor request and response starts with this header.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CtrlHeader {
    /// Command or response type.
    pub type_: u32,
    /// `VIRTIO_GPU_FLAG_*`.
    pub flags: u32,
    /// Fence id, valid with `VIRTIO_GPU_FLAG_FENCE`.
    pub fence_id: u64,
    /// 3D context id.
    pub ctx_id: u32,
    /// Ring index, valid with `VIRTIO_GPU_FLAG_INFO_RING_IDX`.
    pub ring_idx: u8,
    /// Padding.
    pub padding: [u8; 3],
}

/// A rectangle in pixels.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// One scanout in a display-info response.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DisplayOne {
    /// Preferred position and size.
    pub r: Rect,
    /// Non-zero when the scanout is enabled.
    pub enabled: u32,
    /// Flags (none defined).
    pub flags: u32,
}

/// GET_DISPLAY_INFO response.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RespDisplayInfo {
    /// Response header.
    pub hdr: CtrlHeader,
    /// One entry per possible scanout.
    pub pmodes: [DisplayOne; VIRTIO_GPU_MAX_SCANOUTS],
}

/// RESOURCE_CREATE_2D body.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceCreate2d {
    /// Guest-chosen id (non-zero).
    pub resource_id: u32,
    /// `VIRTIO_GPU_FORMAT_*`.
    pub format: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// RESOURCE_UNREF body.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceUnref {
    /// Resource to drop.
    pub resource_id: u32,
    /// Padding.
    pub padding: u32,
}

/// SET_SCANOUT body.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SetScanout {
    /// Region of the resource shown on the scanout.
    pub r: Rect,
    /// Scanout index.
    pub scanout_id: u32,
    /// Resource to show, 0 disables the scanout.
    pub resource_id: u32,
}

/// RESOURCE_FLUSH body.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceFlush {
    /// Region of the resource to flush.
    pub r: Rect,
    /// Resource to flush.
    pub resource_id: u32,
    /// Padding.
    pub padding: u32,
}

/// TRANSFER_TO_HOST_2D body.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferToHost2d {
    /// Destination rectangle in the resource.
    pub r: Rect,
    /// Byte offset of the rectangle's first pixel in the backing.
    pub offset: u64,
    /// Resource to update.
    pub resource_id: u32,
    /// Padding.
    pub padding: u32,
}

/// RESOURCE_ATTACH_BACKING body; `nr_entries` [`MemEntry`] follow it.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceAttachBacking {
    /// Resource to attach to.
    pub resource_id: u32,
    /// Number of memory entries that follow.
    pub nr_entries: u32,
}

/// One scatter-gather entry of guest memory.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct MemEntry {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub length: u32,
    /// Padding.
    pub padding: u32,
}

/// RESOURCE_DETACH_BACKING body.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceDetachBacking {
    /// Resource to detach from.
    pub resource_id: u32,
    /// Padding.
    pub padding: u32,
}

/// GET_CAPSET_INFO body.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct GetCapsetInfo {
    /// Index of the capset, below `num_capsets`.
    pub capset_index: u32,
    /// Padding.
    pub padding: u32,
}

/// GET_CAPSET_INFO response.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RespCapsetInfo {
    /// Response header.
    pub hdr: CtrlHeader,
    /// Capset id.
    pub capset_id: u32,
    /// Highest version.
    pub capset_max_version: u32,
    /// Largest size in bytes.
    pub capset_max_size: u32,
    /// Padding.
    pub padding: u32,
}

/// GET_CAPSET body. The response is a [`CtrlHeader`] followed by the capset bytes.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct GetCapset {
    /// Capset id.
    pub capset_id: u32,
    /// Capset version.
    pub capset_version: u32,
}

/// GET_EDID body.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct GetEdid {
    /// Scanout index.
    pub scanout: u32,
    /// Padding.
    pub padding: u32,
}

/// GET_EDID response.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RespEdid {
    /// Response header.
    pub hdr: CtrlHeader,
    /// Valid bytes in `edid`.
    pub size: u32,
    /// Padding.
    pub padding: u32,
    /// EDID blob.
    pub edid: [u8; 1024],
}

impl Default for RespEdid {
    fn default() -> Self {
        RespEdid {
            hdr: CtrlHeader::default(),
            size: 0,
            padding: 0,
            edid: [0; 1024],
        }
    }
}

/// RESOURCE_ASSIGN_UUID body.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceAssignUuid {
    /// Resource to export.
    pub resource_id: u32,
    /// Padding.
    pub padding: u32,
}

/// RESOURCE_ASSIGN_UUID response.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RespResourceUuid {
    /// Response header.
    pub hdr: CtrlHeader,
    /// UUID bytes.
    pub uuid: [u8; 16],
}

/// RESOURCE_CREATE_BLOB body; `nr_entries` [`MemEntry`] follow it.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceCreateBlob {
    /// Guest-chosen id.
    pub resource_id: u32,
    /// `VIRTIO_GPU_BLOB_MEM_*`.
    pub blob_mem: u32,
    /// `VIRTIO_GPU_BLOB_FLAG_*`.
    pub blob_flags: u32,
    /// Number of memory entries that follow.
    pub nr_entries: u32,
    /// Host blob id.
    pub blob_id: u64,
    /// Size in bytes.
    pub size: u64,
}

/// SET_SCANOUT_BLOB body.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SetScanoutBlob {
    /// Region shown.
    pub r: Rect,
    /// Scanout index.
    pub scanout_id: u32,
    /// Blob resource.
    pub resource_id: u32,
    /// Width of the framebuffer.
    pub width: u32,
    /// Height of the framebuffer.
    pub height: u32,
    /// Pixel format.
    pub format: u32,
    /// Padding.
    pub padding: u32,
    /// Plane strides.
    pub strides: [u32; 4],
    /// Plane offsets.
    pub offsets: [u32; 4],
}

/// CTX_CREATE body.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CtxCreate {
    /// Valid bytes of `debug_name`.
    pub nlen: u32,
    /// Capset id in the low 8 bits (with CONTEXT_INIT), 0 otherwise.
    pub context_init: u32,
    /// Debug name.
    pub debug_name: [u8; 64],
}

impl Default for CtxCreate {
    fn default() -> Self {
        CtxCreate {
            nlen: 0,
            context_init: 0,
            debug_name: [0; 64],
        }
    }
}

/// CTX_ATTACH_RESOURCE / CTX_DETACH_RESOURCE body.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CtxResource {
    /// Resource to attach or detach.
    pub resource_id: u32,
    /// Padding.
    pub padding: u32,
}

/// RESOURCE_CREATE_3D body.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceCreate3d {
    /// Guest-chosen id.
    pub resource_id: u32,
    /// Gallium texture target (0 = BUFFER).
    pub target: u32,
    /// Format.
    pub format: u32,
    /// Bind flags.
    pub bind: u32,
    /// Width (bytes for buffers).
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Depth.
    pub depth: u32,
    /// Array size.
    pub array_size: u32,
    /// Last mip level.
    pub last_level: u32,
    /// Sample count.
    pub nr_samples: u32,
    /// Flags.
    pub flags: u32,
    /// Padding.
    pub padding: u32,
}

/// A 3D box.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Box3d {
    /// X.
    pub x: u32,
    /// Y.
    pub y: u32,
    /// Z.
    pub z: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
    /// Depth.
    pub d: u32,
}

/// TRANSFER_TO_HOST_3D / TRANSFER_FROM_HOST_3D body.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Transfer3d {
    /// Region.
    pub box_: Box3d,
    /// Byte offset in the backing.
    pub offset: u64,
    /// Resource.
    pub resource_id: u32,
    /// Mip level.
    pub level: u32,
    /// Row stride.
    pub stride: u32,
    /// Layer stride.
    pub layer_stride: u32,
}

/// SUBMIT_3D body; `size` bytes of command stream follow it.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Submit3d {
    /// Size of the command stream in bytes.
    pub size: u32,
    /// Padding.
    pub padding: u32,
}

/// RESOURCE_MAP_BLOB body.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceMapBlob {
    /// Blob resource.
    pub resource_id: u32,
    /// Padding.
    pub padding: u32,
    /// Offset in the host-visible region.
    pub offset: u64,
}

/// RESOURCE_MAP_BLOB response.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RespMapInfo {
    /// Response header.
    pub hdr: CtrlHeader,
    /// `VIRTIO_GPU_MAP_CACHE_*`.
    pub map_info: u32,
    /// Padding.
    pub padding: u32,
}

/// RESOURCE_UNMAP_BLOB body.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceUnmapBlob {
    /// Blob resource.
    pub resource_id: u32,
    /// Padding.
    pub padding: u32,
}

/// Cursor position.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CursorPos {
    /// Scanout index.
    pub scanout_id: u32,
    /// X.
    pub x: u32,
    /// Y.
    pub y: u32,
    /// Padding.
    pub padding: u32,
}

/// UPDATE_CURSOR / MOVE_CURSOR body.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateCursor {
    /// Position.
    pub pos: CursorPos,
    /// Cursor image resource (0 hides the cursor); ignored by MOVE_CURSOR.
    pub resource_id: u32,
    /// Hot spot x.
    pub hot_x: u32,
    /// Hot spot y.
    pub hot_y: u32,
    /// Padding.
    pub padding: u32,
}

/// Device configuration space.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct VirtioGpuConfig {
    /// Pending events (read-only).
    pub events_read: u32,
    /// Events to clear (write to clear).
    pub events_clear: u32,
    /// Number of scanouts.
    pub num_scanouts: u32,
    /// Number of capsets.
    pub num_capsets: u32,
}

// SAFETY: all of these are `#[repr(C)]` plain integers/arrays with no implicit padding, so every bit
// pattern is a valid value.
unsafe impl ByteValued for CtrlHeader {}
// SAFETY: see above.
unsafe impl ByteValued for Rect {}
// SAFETY: see above.
unsafe impl ByteValued for DisplayOne {}
// SAFETY: see above.
unsafe impl ByteValued for RespDisplayInfo {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceCreate2d {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceUnref {}
// SAFETY: see above.
unsafe impl ByteValued for SetScanout {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceFlush {}
// SAFETY: see above.
unsafe impl ByteValued for TransferToHost2d {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceAttachBacking {}
// SAFETY: see above.
unsafe impl ByteValued for MemEntry {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceDetachBacking {}
// SAFETY: see above.
unsafe impl ByteValued for GetCapsetInfo {}
// SAFETY: see above.
unsafe impl ByteValued for RespCapsetInfo {}
// SAFETY: see above.
unsafe impl ByteValued for GetCapset {}
// SAFETY: see above.
unsafe impl ByteValued for GetEdid {}
// SAFETY: see above.
unsafe impl ByteValued for RespEdid {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceAssignUuid {}
// SAFETY: see above.
unsafe impl ByteValued for RespResourceUuid {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceCreateBlob {}
// SAFETY: see above.
unsafe impl ByteValued for SetScanoutBlob {}
// SAFETY: see above.
unsafe impl ByteValued for CtxCreate {}
// SAFETY: see above.
unsafe impl ByteValued for CtxResource {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceCreate3d {}
// SAFETY: see above.
unsafe impl ByteValued for Box3d {}
// SAFETY: see above.
unsafe impl ByteValued for Transfer3d {}
// SAFETY: see above.
unsafe impl ByteValued for Submit3d {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceMapBlob {}
// SAFETY: see above.
unsafe impl ByteValued for RespMapInfo {}
// SAFETY: see above.
unsafe impl ByteValued for ResourceUnmapBlob {}
// SAFETY: see above.
unsafe impl ByteValued for CursorPos {}
// SAFETY: see above.
unsafe impl ByteValued for UpdateCursor {}
// SAFETY: see above.
unsafe impl ByteValued for VirtioGpuConfig {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn wire_sizes_match_the_spec() {
        assert_eq!(size_of::<CtrlHeader>(), 24);
        assert_eq!(size_of::<Rect>(), 16);
        assert_eq!(size_of::<RespDisplayInfo>(), 24 + 16 * 24);
        assert_eq!(size_of::<ResourceCreate2d>(), 16);
        assert_eq!(size_of::<SetScanout>(), 24);
        assert_eq!(size_of::<ResourceFlush>(), 24);
        assert_eq!(size_of::<TransferToHost2d>(), 32);
        assert_eq!(size_of::<ResourceAttachBacking>(), 8);
        assert_eq!(size_of::<MemEntry>(), 16);
        assert_eq!(size_of::<RespCapsetInfo>(), 40);
        assert_eq!(size_of::<RespEdid>(), 24 + 8 + 1024);
        assert_eq!(size_of::<RespResourceUuid>(), 40);
        assert_eq!(size_of::<ResourceCreateBlob>(), 32);
        assert_eq!(size_of::<SetScanoutBlob>(), 72);
        assert_eq!(size_of::<CtxCreate>(), 72);
        assert_eq!(size_of::<ResourceCreate3d>(), 48);
        assert_eq!(size_of::<Transfer3d>(), 48);
        assert_eq!(size_of::<ResourceMapBlob>(), 16);
        assert_eq!(size_of::<RespMapInfo>(), 32);
        assert_eq!(size_of::<UpdateCursor>(), 32);
        assert_eq!(size_of::<VirtioGpuConfig>(), 16);
    }
}
