//! Raw DRM and virtio-gpu ioctls (`include/uapi/drm/drm.h`, `include/uapi/drm/virtgpu_drm.h`).
//!
//! Only what `vgpu-smi` needs: VERSION and GEM_CLOSE from the DRM core, and MAP, EXECBUFFER,
//! GETPARAM, RESOURCE_CREATE, TRANSFER_FROM_HOST, TRANSFER_TO_HOST, WAIT and GET_CAPS from
//! virtio-gpu. The structs are the Linux 6.12 layouts; a kernel that knows a shorter or longer
//! version of a struct copies the common prefix and zero-fills the rest (`drm_ioctl`), so the
//! encoded size in the request number need not match the running kernel exactly.
//!
//! Every function here is a thin, safe wrapper: it owns the argument struct, so the only memory
//! the kernel writes is memory this module hands it (pointer fields point into live slices).

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `DRM_IOCTL_BASE`, the ioctl type byte `'d'`.
const DRM_IOCTL_BASE: u32 = b'd' as u32;
/// First driver-private ioctl number.
const DRM_COMMAND_BASE: u32 = 0x40;

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, 'd', nr, size)` for x86/arm (asm-generic encoding: nr 8 bits, type 8, size 14, dir 2).
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32 & 0x3fff) << 16) | (DRM_IOCTL_BASE << 8) | nr
}

/// `DRM_IOWR(nr, T)`.
const fn iowr<T>(nr: u32) -> u32 {
    ioc(IOC_READ | IOC_WRITE, nr, size_of::<T>())
}

/// `DRM_IOW(nr, T)`.
const fn iow<T>(nr: u32) -> u32 {
    ioc(IOC_WRITE, nr, size_of::<T>())
}

/// `struct drm_version` (64 bytes on LP64).
#[repr(C)]
#[derive(Debug, Default)]
pub struct DrmVersion {
    /// Major version.
    pub version_major: i32,
    /// Minor version.
    pub version_minor: i32,
    /// Patch level.
    pub version_patchlevel: i32,
    /// In: size of `name`; out: length of the driver name.
    pub name_len: usize,
    /// User pointer to the name buffer.
    pub name: u64,
    /// In: size of `date`; out: its length.
    pub date_len: usize,
    /// User pointer to the date buffer.
    pub date: u64,
    /// In: size of `desc`; out: its length.
    pub desc_len: usize,
    /// User pointer to the description buffer.
    pub desc: u64,
}

/// `struct drm_gem_close`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct DrmGemClose {
    /// GEM handle to release.
    pub handle: u32,
    /// Zero.
    pub pad: u32,
}

/// `struct drm_virtgpu_map`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct VirtgpuMap {
    /// Out: fake offset to pass to `mmap` on the DRM fd.
    pub offset: u64,
    /// In: GEM handle.
    pub handle: u32,
    /// Zero.
    pub pad: u32,
}

/// `struct drm_virtgpu_execbuffer` (6.5+ layout with syncobjs, 64 bytes).
#[repr(C)]
#[derive(Debug, Default)]
pub struct VirtgpuExecbuffer {
    /// `VIRTGPU_EXECBUF_*`; we use 0.
    pub flags: u32,
    /// Bytes of the command stream.
    pub size: u32,
    /// User pointer to the command stream.
    pub command: u64,
    /// User pointer to a `u32` array of GEM handles.
    pub bo_handles: u64,
    /// Number of GEM handles.
    pub num_bo_handles: u32,
    /// In/out fence fd (unused: -1 comes back).
    pub fence_fd: i32,
    /// Ring index (only with `VIRTGPU_EXECBUF_RING_IDX`).
    pub ring_idx: u32,
    /// Size of one syncobj descriptor.
    pub syncobj_stride: u32,
    /// Number of in-syncobjs.
    pub num_in_syncobjs: u32,
    /// Number of out-syncobjs.
    pub num_out_syncobjs: u32,
    /// User pointer to in-syncobjs.
    pub in_syncobjs: u64,
    /// User pointer to out-syncobjs.
    pub out_syncobjs: u64,
}

/// `VIRTGPU_PARAM_3D_FEATURES`: 1 when the device negotiated VIRGL.
pub const VIRTGPU_PARAM_3D_FEATURES: u64 = 1;

/// `struct drm_virtgpu_getparam`. `value` is a user pointer to an `int` the kernel writes.
#[repr(C)]
#[derive(Debug, Default)]
pub struct VirtgpuGetparam {
    /// `VIRTGPU_PARAM_*`.
    pub param: u64,
    /// User pointer to an `i32`.
    pub value: u64,
}

/// `struct drm_virtgpu_resource_create` (56 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VirtgpuResourceCreate {
    /// Gallium texture target (0 = `PIPE_BUFFER`).
    pub target: u32,
    /// Gallium format.
    pub format: u32,
    /// Gallium bind flags (not checked by the kernel).
    pub bind: u32,
    /// Width (for a buffer: its size in bytes).
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Depth.
    pub depth: u32,
    /// Array size.
    pub array_size: u32,
    /// Last mip level.
    pub last_level: u32,
    /// Samples.
    pub nr_samples: u32,
    /// Resource flags.
    pub flags: u32,
    /// Out: GEM handle.
    pub bo_handle: u32,
    /// Out: the virtio-gpu resource id (what the device sees).
    pub res_handle: u32,
    /// In: size of the guest backing object in bytes (0 = one page); rounded up to pages.
    pub size: u32,
    /// Unused by the kernel.
    pub stride: u32,
}

/// `struct drm_virtgpu_3d_box`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Virtgpu3dBox {
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

/// `struct drm_virtgpu_3d_transfer_to_host` / `_from_host` (identical, 44 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Virtgpu3dTransfer {
    /// GEM handle.
    pub bo_handle: u32,
    /// Region of the resource.
    pub r#box: Virtgpu3dBox,
    /// Mip level.
    pub level: u32,
    /// Byte offset in the guest backing.
    pub offset: u32,
    /// Must be 0 for non-blob resources (6.12 returns EINVAL otherwise).
    pub stride: u32,
    /// Must be 0 for non-blob resources.
    pub layer_stride: u32,
}

/// `VIRTGPU_WAIT_NOWAIT`.
pub const VIRTGPU_WAIT_NOWAIT: u32 = 1;

/// `struct drm_virtgpu_3d_wait`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Virtgpu3dWait {
    /// GEM handle.
    pub handle: u32,
    /// `VIRTGPU_WAIT_NOWAIT` or 0.
    pub flags: u32,
}

/// `struct drm_virtgpu_get_caps`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct VirtgpuGetCaps {
    /// Capset id.
    pub cap_set_id: u32,
    /// Capset version.
    pub cap_set_ver: u32,
    /// User pointer to the destination.
    pub addr: u64,
    /// Bytes at `addr` (the kernel copies `min(size, capset_max_size)`).
    pub size: u32,
    /// Zero.
    pub pad: u32,
}

/// `DRM_IOCTL_VERSION`.
pub const DRM_IOCTL_VERSION: u32 = iowr::<DrmVersion>(0x00);
/// `DRM_IOCTL_GEM_CLOSE`.
pub const DRM_IOCTL_GEM_CLOSE: u32 = iow::<DrmGemClose>(0x09);
/// `DRM_IOCTL_VIRTGPU_MAP`.
pub const DRM_IOCTL_VIRTGPU_MAP: u32 = iowr::<VirtgpuMap>(DRM_COMMAND_BASE + 0x01);
/// `DRM_IOCTL_VIRTGPU_EXECBUFFER`.
pub const DRM_IOCTL_VIRTGPU_EXECBUFFER: u32 = iowr::<VirtgpuExecbuffer>(DRM_COMMAND_BASE + 0x02);
/// `DRM_IOCTL_VIRTGPU_GETPARAM`.
pub const DRM_IOCTL_VIRTGPU_GETPARAM: u32 = iowr::<VirtgpuGetparam>(DRM_COMMAND_BASE + 0x03);
/// `DRM_IOCTL_VIRTGPU_RESOURCE_CREATE`.
pub const DRM_IOCTL_VIRTGPU_RESOURCE_CREATE: u32 =
    iowr::<VirtgpuResourceCreate>(DRM_COMMAND_BASE + 0x04);
/// `DRM_IOCTL_VIRTGPU_TRANSFER_FROM_HOST`.
pub const DRM_IOCTL_VIRTGPU_TRANSFER_FROM_HOST: u32 =
    iowr::<Virtgpu3dTransfer>(DRM_COMMAND_BASE + 0x06);
/// `DRM_IOCTL_VIRTGPU_TRANSFER_TO_HOST`.
pub const DRM_IOCTL_VIRTGPU_TRANSFER_TO_HOST: u32 =
    iowr::<Virtgpu3dTransfer>(DRM_COMMAND_BASE + 0x07);
/// `DRM_IOCTL_VIRTGPU_WAIT`.
pub const DRM_IOCTL_VIRTGPU_WAIT: u32 = iowr::<Virtgpu3dWait>(DRM_COMMAND_BASE + 0x08);
/// `DRM_IOCTL_VIRTGPU_GET_CAPS`.
pub const DRM_IOCTL_VIRTGPU_GET_CAPS: u32 = iowr::<VirtgpuGetCaps>(DRM_COMMAND_BASE + 0x09);

/// Issues one ioctl, retrying on EINTR/EAGAIN like libdrm's `drmIoctl`.
///
/// # Safety
/// `request` must be an ioctl whose argument is a `T` (the kernel reads and writes at most
/// `size_of::<T>()` bytes there), and every pointer field inside `arg` must point to memory valid
/// for what the kernel does with it for the duration of the call.
unsafe fn ioctl<T>(fd: BorrowedFd<'_>, request: u32, arg: &mut T) -> io::Result<()> {
    loop {
        // SAFETY: guaranteed by the caller; `arg` is a live, exclusive reference.
        let rc = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                request as libc::c_ulong,
                arg as *mut T as *mut libc::c_void,
            )
        };
        if rc >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
            _ => return Err(err),
        }
    }
}

/// `DRM_IOCTL_VERSION`: the driver name (e.g. `virtio_gpu`).
pub fn driver_name(fd: BorrowedFd<'_>) -> io::Result<String> {
    let mut name = [0u8; 64];
    let mut v = DrmVersion {
        name_len: name.len(),
        name: name.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: VERSION takes a drm_version; `name` outlives the call and holds `name_len` bytes;
    // date/desc have length 0 so the kernel writes nothing through their null pointers.
    unsafe { ioctl(fd, DRM_IOCTL_VERSION, &mut v)? };
    // The kernel reports the full length but copies at most the buffer size.
    let len = v.name_len.min(name.len());
    let bytes = name.get(..len).unwrap_or_default();
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// `DRM_IOCTL_VIRTGPU_GETPARAM`.
pub fn getparam(fd: BorrowedFd<'_>, param: u64) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut p = VirtgpuGetparam {
        param,
        value: &mut value as *mut i32 as u64,
    };
    // SAFETY: GETPARAM writes one int through `value`, which points at a live i32.
    unsafe { ioctl(fd, DRM_IOCTL_VIRTGPU_GETPARAM, &mut p)? };
    Ok(value)
}

/// `DRM_IOCTL_VIRTGPU_GET_CAPS`: fills `out` with up to `out.len()` capset bytes.
pub fn get_caps(fd: BorrowedFd<'_>, id: u32, version: u32, out: &mut [u8]) -> io::Result<()> {
    let size = u32::try_from(out.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut c = VirtgpuGetCaps {
        cap_set_id: id,
        cap_set_ver: version,
        addr: out.as_mut_ptr() as u64,
        size,
        pad: 0,
    };
    // SAFETY: GET_CAPS copies at most `size` bytes to `addr`, which is `out`.
    unsafe { ioctl(fd, DRM_IOCTL_VIRTGPU_GET_CAPS, &mut c) }
}

/// `DRM_IOCTL_VIRTGPU_RESOURCE_CREATE`; fills `bo_handle` and `res_handle`.
pub fn resource_create(fd: BorrowedFd<'_>, rc: &mut VirtgpuResourceCreate) -> io::Result<()> {
    // SAFETY: the struct has no pointer fields.
    unsafe { ioctl(fd, DRM_IOCTL_VIRTGPU_RESOURCE_CREATE, rc) }
}

/// `DRM_IOCTL_VIRTGPU_MAP`: the fake mmap offset of a BO.
pub fn map_offset(fd: BorrowedFd<'_>, handle: u32) -> io::Result<u64> {
    let mut m = VirtgpuMap {
        handle,
        ..Default::default()
    };
    // SAFETY: the struct has no pointer fields.
    unsafe { ioctl(fd, DRM_IOCTL_VIRTGPU_MAP, &mut m)? };
    Ok(m.offset)
}

/// Direction of a 3D transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Guest backing → device resource (`TRANSFER_TO_HOST_3D`).
    ToHost,
    /// Device resource → guest backing (`TRANSFER_FROM_HOST_3D`).
    FromHost,
}

/// `DRM_IOCTL_VIRTGPU_TRANSFER_{TO,FROM}_HOST`.
pub fn transfer(fd: BorrowedFd<'_>, dir: Direction, t: &mut Virtgpu3dTransfer) -> io::Result<()> {
    let req = match dir {
        Direction::ToHost => DRM_IOCTL_VIRTGPU_TRANSFER_TO_HOST,
        Direction::FromHost => DRM_IOCTL_VIRTGPU_TRANSFER_FROM_HOST,
    };
    // SAFETY: the struct has no pointer fields.
    unsafe { ioctl(fd, req, t) }
}

/// `DRM_IOCTL_VIRTGPU_EXECBUFFER` with `stream` as the SUBMIT_3D payload and `bos` as the BO list
/// (the kernel adds the submit's fence to each of them; with an empty list 6.12 allocates no fence
/// at all, so always pass the buffers the stream uses).
pub fn execbuffer(fd: BorrowedFd<'_>, stream: &[u8], bos: &[u32]) -> io::Result<()> {
    let einval = || io::Error::from_raw_os_error(libc::EINVAL);
    let mut e = VirtgpuExecbuffer {
        flags: 0,
        size: u32::try_from(stream.len()).map_err(|_| einval())?,
        command: stream.as_ptr() as u64,
        bo_handles: bos.as_ptr() as u64,
        num_bo_handles: u32::try_from(bos.len()).map_err(|_| einval())?,
        fence_fd: -1,
        ..Default::default()
    };
    // SAFETY: the kernel reads `size` bytes from `command` and `num_bo_handles` u32s from
    // `bo_handles`; both point into live slices of those lengths. No syncobjs.
    unsafe { ioctl(fd, DRM_IOCTL_VIRTGPU_EXECBUFFER, &mut e) }
}

/// `DRM_IOCTL_VIRTGPU_WAIT`: waits (up to the kernel's 15 s) for every fence on the BO. EBUSY
/// means the wait timed out (or, with `nowait`, that a fence is pending).
pub fn wait(fd: BorrowedFd<'_>, handle: u32, nowait: bool) -> io::Result<()> {
    let mut w = Virtgpu3dWait {
        handle,
        flags: if nowait { VIRTGPU_WAIT_NOWAIT } else { 0 },
    };
    // SAFETY: the struct has no pointer fields.
    unsafe { ioctl(fd, DRM_IOCTL_VIRTGPU_WAIT, &mut w) }
}

/// `DRM_IOCTL_GEM_CLOSE`.
pub fn gem_close(fd: BorrowedFd<'_>, handle: u32) -> io::Result<()> {
    let mut c = DrmGemClose { handle, pad: 0 };
    // SAFETY: the struct has no pointer fields.
    unsafe { ioctl(fd, DRM_IOCTL_GEM_CLOSE, &mut c) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn struct_sizes() {
        assert_eq!(size_of::<DrmVersion>(), 64);
        assert_eq!(offset_of!(DrmVersion, name_len), 16);
        assert_eq!(offset_of!(DrmVersion, name), 24);
        assert_eq!(offset_of!(DrmVersion, desc), 56);
        assert_eq!(size_of::<DrmGemClose>(), 8);
        assert_eq!(size_of::<VirtgpuMap>(), 16);
        assert_eq!(size_of::<VirtgpuExecbuffer>(), 64);
        assert_eq!(offset_of!(VirtgpuExecbuffer, command), 8);
        assert_eq!(offset_of!(VirtgpuExecbuffer, bo_handles), 16);
        assert_eq!(offset_of!(VirtgpuExecbuffer, num_bo_handles), 24);
        assert_eq!(offset_of!(VirtgpuExecbuffer, fence_fd), 28);
        assert_eq!(offset_of!(VirtgpuExecbuffer, in_syncobjs), 48);
        assert_eq!(size_of::<VirtgpuGetparam>(), 16);
        assert_eq!(size_of::<VirtgpuResourceCreate>(), 56);
        assert_eq!(offset_of!(VirtgpuResourceCreate, bo_handle), 40);
        assert_eq!(offset_of!(VirtgpuResourceCreate, res_handle), 44);
        assert_eq!(offset_of!(VirtgpuResourceCreate, size), 48);
        assert_eq!(size_of::<Virtgpu3dBox>(), 24);
        assert_eq!(size_of::<Virtgpu3dTransfer>(), 44);
        assert_eq!(offset_of!(Virtgpu3dTransfer, level), 28);
        assert_eq!(offset_of!(Virtgpu3dTransfer, offset), 32);
        assert_eq!(offset_of!(Virtgpu3dTransfer, stride), 36);
        assert_eq!(size_of::<Virtgpu3dWait>(), 8);
        assert_eq!(size_of::<VirtgpuGetCaps>(), 24);
        assert_eq!(offset_of!(VirtgpuGetCaps, addr), 8);
        assert_eq!(offset_of!(VirtgpuGetCaps, size), 16);
    }

    #[test]
    fn request_numbers() {
        // Values as computed by the C macros for the 6.12 headers (x86_64).
        assert_eq!(DRM_IOCTL_VERSION, 0xc040_6400);
        assert_eq!(DRM_IOCTL_GEM_CLOSE, 0x4008_6409);
        assert_eq!(DRM_IOCTL_VIRTGPU_MAP, 0xc010_6441);
        assert_eq!(DRM_IOCTL_VIRTGPU_EXECBUFFER, 0xc040_6442);
        assert_eq!(DRM_IOCTL_VIRTGPU_GETPARAM, 0xc010_6443);
        assert_eq!(DRM_IOCTL_VIRTGPU_RESOURCE_CREATE, 0xc038_6444);
        assert_eq!(DRM_IOCTL_VIRTGPU_TRANSFER_FROM_HOST, 0xc02c_6446);
        assert_eq!(DRM_IOCTL_VIRTGPU_TRANSFER_TO_HOST, 0xc02c_6447);
        assert_eq!(DRM_IOCTL_VIRTGPU_WAIT, 0xc008_6448);
        assert_eq!(DRM_IOCTL_VIRTGPU_GET_CAPS, 0xc018_6449);
    }

    #[test]
    fn errors_on_a_non_drm_fd() {
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        assert!(driver_name(f.as_fd()).is_err());
        assert!(getparam(f.as_fd(), VIRTGPU_PARAM_3D_FEATURES).is_err());
    }
}
