//! The vGPU as seen from the guest: render-node discovery, the capset check, channel buffers
//! ([`Buffer`], released on drop) and command submission.
//!
//! What the device sees for each call (Linux 6.12 `virtio_gpu`, VIRGL without CONTEXT_INIT):
//! - first 3D ioctl of the DRM file: `CTX_CREATE {hdr.ctx_id = file's ctx id, context_init 0,
//!   debug_name = process name}` (unfenced);
//! - [`VirtGpu::create_buffer`]: `RESOURCE_CREATE_3D` (fenced), `RESOURCE_ATTACH_BACKING`
//!   (unfenced), `CTX_ATTACH_RESOURCE` (unfenced). The ioctl returns before any response;
//! - [`Buffer::to_host`] / [`Buffer::from_host`]: `TRANSFER_TO_HOST_3D` / `TRANSFER_FROM_HOST_3D`
//!   (fenced, `hdr.ctx_id` set);
//! - [`VirtGpu::submit`]: `SUBMIT_3D` (fenced when the BO list is non-empty);
//! - dropping a [`Buffer`]: `CTX_DETACH_RESOURCE`, then `RESOURCE_UNREF` once the last reference
//!   (handle and mapping) is gone (both unfenced).
//!
//! Error responses never reach user space (the driver logs them and still signals the fence), so
//! callers check effects: read results back, or compare QUERY_STATS before and after.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vgpu_protocol::capset::{STATS_RECORD_SIZE, VGPU_CAPSET_MAGIC, VGPU_CAPSET_SIZE};
use vgpu_protocol::channel::{QueryStatsCmd, PIPE_BUFFER, PIPE_FORMAT_R8_UNORM};
use vgpu_protocol::{
    ChannelCommand, ChannelError, StatsRecord, VgpuCapset, VGPU_CAPSET_ID, VGPU_PROTOCOL_VERSION,
};

use crate::drm::{self, Direction, Virtgpu3dBox, Virtgpu3dTransfer, VirtgpuResourceCreate};
use crate::error::{Error, Result};

/// Name `DRM_IOCTL_VERSION` reports for the virtio-gpu driver.
pub const VIRTIO_GPU_DRIVER: &str = "virtio_gpu";
/// Directory scanned for render nodes.
pub const DRI_DIR: &str = "/dev/dri";

/// An open virtio-gpu render node that speaks the vGPU channel.
#[derive(Debug)]
pub struct VirtGpu {
    file: File,
    path: PathBuf,
    capset: VgpuCapset,
    fence_timeout: Duration,
}

/// How long [`Buffer::wait`] waits for a fence unless [`VirtGpu::set_fence_timeout`] says
/// otherwise: long enough for a large job on a slow engine shared with busy neighbours.
pub const DEFAULT_FENCE_TIMEOUT: Duration = Duration::from_secs(120);

/// Opens `path` read-write, close-on-exec.
fn open_node(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// The render nodes in `dir`, sorted by name (`renderD128` first).
fn render_nodes(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut nodes: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("renderD"))
        .map(|e| e.path())
        .collect();
    nodes.sort();
    Ok(nodes)
}

/// Finds the first render node whose driver is `virtio_gpu`.
pub fn find_render_node() -> Result<(File, PathBuf)> {
    let nodes = render_nodes(Path::new(DRI_DIR))
        .map_err(|e| Error::NoDevice(format!("cannot list {DRI_DIR}: {e}")))?;
    if nodes.is_empty() {
        return Err(Error::NoDevice(format!(
            "no render node in {DRI_DIR} (is the virtio-gpu module loaded?)"
        )));
    }
    let mut seen = Vec::new();
    for path in nodes {
        match open_node(&path) {
            Ok(file) => match drm::driver_name(file.as_fd()) {
                Ok(name) if name == VIRTIO_GPU_DRIVER => return Ok((file, path)),
                Ok(name) => seen.push(format!("{}: driver {name}", path.display())),
                Err(e) => seen.push(format!("{}: DRM_IOCTL_VERSION: {e}", path.display())),
            },
            Err(e) => seen.push(format!("{}: {e}", path.display())),
        }
    }
    Err(Error::NoDevice(format!(
        "no render node of driver {VIRTIO_GPU_DRIVER} ({})",
        seen.join("; ")
    )))
}

/// Checks a capset read with GET_CAPS: magic and protocol version.
pub fn check_capset(bytes: &[u8]) -> Result<VgpuCapset> {
    match VgpuCapset::parse(bytes) {
        Ok(c) => Ok(c),
        Err(ChannelError::BadMagic(0)) => Err(Error::Protocol(format!(
            "capset {VGPU_CAPSET_ID} is all zeros: the host answered GET_CAPSET with an error \
             (the guest driver does not report it)"
        ))),
        Err(ChannelError::BadMagic(m)) => Err(Error::Protocol(format!(
            "capset {VGPU_CAPSET_ID} has magic {m:#010x}, expected {VGPU_CAPSET_MAGIC:#010x} \
             (\"VGPU\"): another device owns this capset id"
        ))),
        Err(ChannelError::BadVersion(v)) => Err(Error::Protocol(format!(
            "capset {VGPU_CAPSET_ID} has protocol version {v}; this tool speaks version \
             {VGPU_PROTOCOL_VERSION} (and later versions, which only append fields)"
        ))),
        Err(e) => Err(Error::Protocol(format!("capset {VGPU_CAPSET_ID}: {e}"))),
    }
}

/// Checks a QUERY_STATS record read back from the device.
pub fn check_stats(bytes: &[u8]) -> Result<StatsRecord> {
    StatsRecord::parse(bytes).map_err(|e| match e {
        ChannelError::BadVersion(v) => Error::Protocol(format!(
            "stats record has protocol version {v}; this tool speaks {VGPU_PROTOCOL_VERSION}"
        )),
        e => Error::Device(format!(
            "QUERY_STATS produced no valid record ({e}); the host rejected the submit or the \
             read-back"
        )),
    })
}

impl VirtGpu {
    /// Opens `path` (or the first virtio-gpu render node), checks VIRGL and reads the capset.
    pub fn open(path: Option<&Path>) -> Result<Self> {
        let (file, path) = match path {
            Some(p) => {
                let file = open_node(p)
                    .map_err(|e| Error::NoDevice(format!("cannot open {}: {e}", p.display())))?;
                let name = drm::driver_name(file.as_fd()).map_err(|e| {
                    Error::NoDevice(format!("{}: not a DRM node ({e})", p.display()))
                })?;
                if name != VIRTIO_GPU_DRIVER {
                    return Err(Error::NoDevice(format!(
                        "{} belongs to driver {name}, not {VIRTIO_GPU_DRIVER}",
                        p.display()
                    )));
                }
                (file, p.to_path_buf())
            }
            None => find_render_node()?,
        };
        let fd = file.as_fd();
        let has_3d = drm::getparam(fd, drm::VIRTGPU_PARAM_3D_FEATURES)
            .map_err(|e| Error::io("GETPARAM 3D_FEATURES", e))?;
        if has_3d != 1 {
            return Err(Error::NoVirgl);
        }
        let mut bytes = [0u8; VGPU_CAPSET_SIZE];
        drm::get_caps(fd, VGPU_CAPSET_ID, VGPU_PROTOCOL_VERSION, &mut bytes).map_err(
            |e| match e.raw_os_error() {
                Some(libc::EINVAL) => Error::Protocol(format!(
                    "the device advertises no capset {VGPU_CAPSET_ID} version \
                     {VGPU_PROTOCOL_VERSION}: not a vgpu-mediator vGPU"
                )),
                Some(libc::ENOSYS) => Error::Protocol(
                    "the device advertises no capsets at all: not a vgpu-mediator vGPU".into(),
                ),
                Some(libc::EBUSY) => Error::Device(format!(
                    "GET_CAPSET {VGPU_CAPSET_ID} not answered within 5 s"
                )),
                _ => Error::io("GET_CAPS", e),
            },
        )?;
        let capset = check_capset(&bytes)?;
        Ok(VirtGpu {
            file,
            path,
            capset,
            fence_timeout: DEFAULT_FENCE_TIMEOUT,
        })
    }

    /// Sets how long [`Buffer::wait`] waits for the host before it reports an error.
    pub fn set_fence_timeout(&mut self, timeout: Duration) {
        self.fence_timeout = timeout;
    }

    /// The render node in use.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The vGPU's capset.
    pub fn capset(&self) -> &VgpuCapset {
        &self.capset
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Creates a channel buffer of `width` device bytes with a guest backing (staging area) of
    /// `backing` bytes (rounded up to pages by the kernel; 0 means one page).
    ///
    /// The ioctl only queues `RESOURCE_CREATE_3D`; a host-side failure (e.g. out of memory)
    /// shows up later, through QUERY_STATS or missing results.
    pub fn create_buffer(&self, width: u32, backing: u32) -> Result<Buffer<'_>> {
        BufferOf::create(self, width, backing)
    }

    /// Sends `stream` as one SUBMIT_3D; the submit's fence is attached to every BO in `bos`.
    pub fn submit(&self, stream: &[u8], bos: &[u32]) -> Result<()> {
        drm::execbuffer(self.fd(), stream, bos).map_err(|e| Error::io("EXECBUFFER", e))
    }

    /// Runs QUERY_STATS into `scratch` at byte `offset` and reads the record back.
    pub fn query_stats<G: GpuRef>(
        &self,
        scratch: &mut BufferOf<G>,
        offset: u32,
        stream: &mut Stream,
    ) -> Result<StatsRecord> {
        let len = STATS_RECORD_SIZE as u32;
        stream.clear();
        stream.push(&ChannelCommand::QueryStats(QueryStatsCmd {
            dst_res: scratch.res_id(),
            reserved: 0,
            dst_offset: u64::from(offset),
        }));
        self.submit(stream.bytes(), &[scratch.bo_handle()])?;
        scratch.wait("QUERY_STATS")?;
        scratch.poison(offset as usize, len as usize)?;
        scratch.from_host(offset, len, offset)?;
        scratch.wait("TRANSFER_FROM_HOST of the stats record")?;
        let bytes = scratch.bytes()?;
        let rec = bytes
            .get(offset as usize..(offset + len) as usize)
            .ok_or_else(|| Error::Device("stats record outside the scratch buffer".into()))?;
        check_stats(rec)
    }
}

/// The RESOURCE_CREATE arguments of a channel buffer (protocol/README.md "Buffers").
pub fn buffer_create_args(width: u32, backing: u32) -> VirtgpuResourceCreate {
    VirtgpuResourceCreate {
        target: PIPE_BUFFER,
        format: PIPE_FORMAT_R8_UNORM,
        bind: 0,
        width,
        height: 1,
        depth: 1,
        array_size: 1,
        last_level: 0,
        nr_samples: 0,
        flags: 0,
        bo_handle: 0,
        res_handle: 0,
        size: backing,
        stride: 0,
    }
}

/// The TRANSFER arguments moving `len` bytes between resource offset `res_offset` and backing
/// offset `backing_offset` of `bo`.
pub fn buffer_transfer_args(
    bo: u32,
    res_offset: u32,
    len: u32,
    backing_offset: u32,
) -> Virtgpu3dTransfer {
    Virtgpu3dTransfer {
        bo_handle: bo,
        r#box: Virtgpu3dBox {
            x: res_offset,
            y: 0,
            z: 0,
            w: len,
            h: 1,
            d: 1,
        },
        level: 0,
        offset: backing_offset,
        stride: 0,
        layer_stride: 0,
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}

fn round_up_page(n: usize) -> usize {
    let p = page_size();
    n.div_ceil(p).saturating_mul(p)
}

/// A reusable command-stream buffer.
#[derive(Debug, Default)]
pub struct Stream {
    bytes: Vec<u8>,
}

impl Stream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empties the stream, keeping its allocation.
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// Appends one command.
    pub fn push(&mut self, cmd: &ChannelCommand) {
        cmd.encode(&mut self.bytes);
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// How a [`BufferOf`] reaches its device: a borrow ([`Buffer`]) or a shared owner
/// (`Arc<VirtGpu>`, as the guest library's buffers do).
pub trait GpuRef {
    /// The device.
    fn gpu(&self) -> &VirtGpu;
}

impl GpuRef for &VirtGpu {
    fn gpu(&self) -> &VirtGpu {
        self
    }
}

impl GpuRef for Arc<VirtGpu> {
    fn gpu(&self) -> &VirtGpu {
        self
    }
}

/// A channel buffer: a GEM BO whose resource id the device knows. Unmapped and closed on drop.
#[derive(Debug)]
pub struct BufferOf<G: GpuRef> {
    gpu: G,
    bo: u32,
    res: u32,
    width: u32,
    backing: usize,
    map: Option<NonNull<u8>>,
}

/// A buffer that borrows its device.
pub type Buffer<'d> = BufferOf<&'d VirtGpu>;

// SAFETY: the mapping is owned by the buffer and only reachable through `&mut self`
// ([`BufferOf::bytes`]); the ioctls it issues are safe from any thread.
unsafe impl<G: GpuRef + Send> Send for BufferOf<G> {}
// SAFETY: a shared reference gives no access to the mapping (see above).
unsafe impl<G: GpuRef + Sync> Sync for BufferOf<G> {}

impl<G: GpuRef> BufferOf<G> {
    /// Creates a channel buffer of `width` device bytes with a guest backing of `backing` bytes
    /// on the device `gpu` reaches (see [`VirtGpu::create_buffer`]).
    pub fn create(gpu: G, width: u32, backing: u32) -> Result<Self> {
        let mut rc = buffer_create_args(width, backing);
        drm::resource_create(gpu.gpu().fd(), &mut rc).map_err(|e| {
            Error::io(
                format!("RESOURCE_CREATE (width {width}, backing {backing})"),
                e,
            )
        })?;
        Ok(BufferOf {
            gpu,
            bo: rc.bo_handle,
            res: rc.res_handle,
            width,
            backing: round_up_page(backing.max(1) as usize),
            map: None,
        })
    }

    /// The device this buffer belongs to.
    pub fn device(&self) -> &VirtGpu {
        self.gpu.gpu()
    }

    /// How this buffer reaches its device.
    pub fn handle(&self) -> &G {
        &self.gpu
    }

    /// The virtio-gpu resource id (what command streams name).
    pub fn res_id(&self) -> u32 {
        self.res
    }

    /// The GEM handle (what EXECBUFFER's BO list and WAIT take).
    pub fn bo_handle(&self) -> u32 {
        self.bo
    }

    /// Device size in bytes.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Guest backing size in bytes (page multiple).
    pub fn backing_len(&self) -> usize {
        self.backing
    }

    /// The guest backing, mapped on first use. The device writes it only during
    /// [`Buffer::from_host`], which cannot run while this borrow lives.
    pub fn bytes(&mut self) -> Result<&mut [u8]> {
        let ptr = match self.map {
            Some(p) => p,
            None => {
                let fd = self.gpu.gpu().fd();
                let offset = drm::map_offset(fd, self.bo).map_err(|e| Error::io("MAP", e))?;
                let off = libc::off_t::try_from(offset)
                    .map_err(|_| Error::Device(format!("MAP offset {offset:#x} out of range")))?;
                use std::os::fd::AsRawFd;
                // SAFETY: a fresh shared mapping of the BO's fake offset; the kernel checks the
                // length against the object. Nothing else aliases the new address range.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        self.backing,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        fd.as_raw_fd(),
                        off,
                    )
                };
                if p == libc::MAP_FAILED {
                    return Err(Error::io("mmap of a BO", io::Error::last_os_error()));
                }
                let p = NonNull::new(p.cast::<u8>())
                    .ok_or_else(|| Error::Device("mmap returned NULL".into()))?;
                self.map = Some(p);
                p
            }
        };
        // SAFETY: `ptr` maps `backing` bytes for as long as `self` lives; the returned borrow is
        // tied to `&mut self`, so no other slice of it exists.
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), self.backing) })
    }

    /// Fills backing bytes `[offset, offset+len)` with 0xA5 so that stale data cannot pass for a
    /// result the device was supposed to write.
    pub fn poison(&mut self, offset: usize, len: usize) -> Result<()> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Error::Device("poison range overflows".into()))?;
        let b = self.bytes()?;
        let range = b
            .get_mut(offset..end)
            .ok_or_else(|| Error::Device("poison range outside the backing".into()))?;
        range.fill(0xa5);
        Ok(())
    }

    fn transfer(
        &self,
        dir: Direction,
        res_offset: u32,
        len: u32,
        backing_offset: u32,
    ) -> Result<()> {
        let mut t = buffer_transfer_args(self.bo, res_offset, len, backing_offset);
        drm::transfer(self.gpu.gpu().fd(), dir, &mut t).map_err(|e| {
            let name = match dir {
                Direction::ToHost => "TRANSFER_TO_HOST",
                Direction::FromHost => "TRANSFER_FROM_HOST",
            };
            Error::io(name, e)
        })
    }

    /// Queues a copy of `len` backing bytes at `backing_offset` to resource bytes at `res_offset`.
    pub fn to_host(&self, res_offset: u32, len: u32, backing_offset: u32) -> Result<()> {
        self.transfer(Direction::ToHost, res_offset, len, backing_offset)
    }

    /// Queues a copy of `len` resource bytes at `res_offset` to backing bytes at `backing_offset`.
    /// Call [`Buffer::wait`] before reading [`Buffer::bytes`].
    pub fn from_host(&self, res_offset: u32, len: u32, backing_offset: u32) -> Result<()> {
        self.transfer(Direction::FromHost, res_offset, len, backing_offset)
    }

    /// Waits for every fence on this BO, up to the device's fence timeout. The kernel's WAIT
    /// gives up after 15 s with EBUSY; a job still running then is waited for again.
    pub fn wait(&self, what: &str) -> Result<()> {
        let timeout = self.gpu.gpu().fence_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            match drm::wait(self.gpu.gpu().fd(), self.bo, false) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    if Instant::now() >= deadline {
                        return Err(Error::Device(format!(
                            "{what}: the device did not signal the fence within {} s",
                            timeout.as_secs()
                        )));
                    }
                }
                Err(e) => return Err(Error::io(format!("WAIT ({what})"), e)),
            }
        }
    }
}

impl<G: GpuRef> Drop for BufferOf<G> {
    fn drop(&mut self) {
        if let Some(p) = self.map.take() {
            // SAFETY: `p` is the start of our own `backing`-byte mapping; no slice of it outlives
            // `self`.
            unsafe {
                libc::munmap(p.as_ptr().cast(), self.backing);
            }
        }
        // Nothing useful to do on failure: the kernel frees the handle with the file anyway.
        let _ = drm::gem_close(self.gpu.gpu().fd(), self.bo);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgpu_protocol::capset::VGPU_STATS_MAGIC;
    use vgpu_protocol::channel::buffer_size;
    use vgpu_protocol::virtio_gpu::ResourceCreate3d;

    #[test]
    fn create_args_make_a_protocol_buffer() {
        let a = buffer_create_args(4096, 0);
        let rc = ResourceCreate3d {
            resource_id: 7,
            target: a.target,
            format: a.format,
            bind: a.bind,
            width: a.width,
            height: a.height,
            depth: a.depth,
            array_size: a.array_size,
            last_level: a.last_level,
            nr_samples: a.nr_samples,
            flags: a.flags,
            padding: 0,
        };
        assert_eq!(buffer_size(&rc), Ok(4096));
    }

    #[test]
    fn transfer_args_are_a_buffer_box() {
        let t = buffer_transfer_args(3, 64, 128, 16);
        assert_eq!(
            t.r#box,
            Virtgpu3dBox {
                x: 64,
                y: 0,
                z: 0,
                w: 128,
                h: 1,
                d: 1
            }
        );
        assert_eq!((t.level, t.offset, t.stride, t.layer_stride), (0, 16, 0, 0));
    }

    #[test]
    fn capset_checks() {
        let mut c = VgpuCapset::new("vgpu-2q");
        assert!(check_capset(c.as_bytes()).is_ok());
        let zero = [0u8; VGPU_CAPSET_SIZE];
        let e = check_capset(&zero).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::EXIT_PROTOCOL);
        assert!(e.to_string().contains("all zeros"));
        c.magic = 0x1234;
        assert!(check_capset(c.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("magic"));
        c.magic = VGPU_CAPSET_MAGIC;
        c.protocol_version = 0;
        assert!(check_capset(c.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("version 0"));
        // A later version only appends fields: accepted.
        c.protocol_version = 2;
        assert!(check_capset(c.as_bytes()).is_ok());
    }

    #[test]
    fn stats_checks() {
        let r = StatsRecord::new();
        assert_eq!(check_stats(r.as_bytes()).unwrap().magic, VGPU_STATS_MAGIC);
        let poisoned = [0xa5u8; STATS_RECORD_SIZE];
        assert_eq!(
            check_stats(&poisoned).unwrap_err().exit_code(),
            crate::error::EXIT_DEVICE
        );
    }

    #[test]
    fn stream_reuse() {
        let mut s = Stream::new();
        s.push(&ChannelCommand::Nop);
        s.push(&ChannelCommand::QueryStats(QueryStatsCmd {
            dst_res: 5,
            reserved: 0,
            dst_offset: 128,
        }));
        assert_eq!(s.bytes().len(), 8 + 24);
        assert_eq!(vgpu_protocol::validate_stream(s.bytes()), Ok(2));
        s.clear();
        assert!(s.bytes().is_empty());
    }

    #[test]
    fn render_node_listing() {
        let dir = std::env::temp_dir().join(format!("vgpu-smi-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for n in ["card0", "renderD129", "renderD128"] {
            File::create(dir.join(n)).unwrap();
        }
        let nodes = render_nodes(&dir).unwrap();
        let names: Vec<_> = nodes
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["renderD128", "renderD129"]);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(round_up_page(1) % page_size(), 0);
    }
}
