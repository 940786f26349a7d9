//! The vhost-user control connection, set up the way QEMU 10's `vhost-user-gpu-pci` does it, and
//! the two virtqueues with their kick and call eventfds.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use vgpu_protocol::virtio_gpu::VirtioGpuConfig;

use crate::error::{FrontendError, Result};
use crate::gpu_socket::{GpuPeer, GpuPeerConfig};
use crate::memory::GuestMemory;
use crate::vring::{SplitQueue, UsedElem};

/// Transport feature: virtio 1.x.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Transport feature: used_event / avail_event suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Transport feature: indirect descriptors.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// vhost-user feature: protocol features are supported.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// vhost-user frontend request number of `VHOST_USER_GPU_SET_SOCKET`.
pub const VHOST_USER_GPU_SET_SOCKET: u32 = 33;
/// Control queue index.
pub const CTRL_QUEUE: usize = 0;
/// Cursor queue index.
pub const CURSOR_QUEUE: usize = 1;

/// What the frontend asks for and how it sets things up.
#[derive(Clone, Debug)]
pub struct FrontendConfig {
    /// Size of the shared memory.
    pub mem_size: u64,
    /// Guest physical address of its first byte.
    pub mem_base: u64,
    /// Queue sizes (ctrl, cursor).
    pub queue_sizes: [u16; 2],
    /// Device feature bits (VIRGL, EDID, RESOURCE_UUID, ...) wanted; only those offered are acked.
    pub device_features: u64,
    /// Negotiate EVENT_IDX if offered.
    pub event_idx: bool,
    /// Negotiate INDIRECT_DESC if offered.
    pub indirect: bool,
    /// Negotiate REPLY_ACK if offered (and request acks for every message).
    pub reply_ack: bool,
    /// Send GPU_SET_SOCKET (as QEMU does at DRIVER_OK).
    pub gpu_socket: bool,
    /// The GPU socket peer's answers.
    pub peer: GpuPeerConfig,
    /// How long to wait for the socket to appear and accept.
    pub connect_timeout: Duration,
    /// How long to wait for a used element.
    pub io_timeout: Duration,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            mem_size: 64 << 20,
            mem_base: 0,
            queue_sizes: [256, 16],
            device_features: (1 << vgpu_protocol::virtio_gpu::VIRTIO_GPU_F_EDID)
                | (1 << vgpu_protocol::virtio_gpu::VIRTIO_GPU_F_RESOURCE_UUID),
            event_idx: true,
            indirect: false,
            reply_ack: true,
            gpu_socket: true,
            peer: GpuPeerConfig::default(),
            connect_timeout: Duration::from_secs(10),
            // Generous: a fenced reply waits for its job, which a loaded machine (or a debug
            // build with the Vulkan validation layer) can stretch to seconds.
            io_timeout: Duration::from_secs(60),
        }
    }
}

/// One virtqueue with its eventfds.
pub struct Queue {
    /// Driver-side ring state.
    pub ring: SplitQueue,
    /// Kick eventfd (we write, the backend reads).
    pub kick: EventFd,
    /// Call eventfd (the backend writes, we read).
    pub call: EventFd,
    /// Kicks sent.
    pub kicks: u64,
}

/// An established vhost-user connection with memory and queues.
pub struct Connection {
    frontend: Frontend,
    raw: UnixStream,
    /// The shared memory.
    pub mem: GuestMemory,
    /// Queues: [`CTRL_QUEUE`], [`CURSOR_QUEUE`].
    pub queues: Vec<Queue>,
    /// The GPU socket peer, if one was sent.
    pub peer: Option<GpuPeer>,
    /// Features the backend offered.
    pub offered_features: u64,
    /// Features acked.
    pub acked_features: u64,
    /// Protocol features the backend offered.
    pub offered_protocol: u64,
    /// Protocol features acked.
    pub acked_protocol: u64,
    /// The device config read with GET_CONFIG.
    pub config: VirtioGpuConfig,
    /// Timeout for waits on used elements.
    pub io_timeout: Duration,
    peer_features: u64,
}

/// Connects to a UNIX socket, retrying until it exists and accepts or `timeout` passes.
pub fn connect_retry(path: &Path, timeout: Duration) -> Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < deadline => {
                log::trace!("connect {}: {e}; retrying", path.display());
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(FrontendError::Timeout(format!(
                    "connect to {}: {e}",
                    path.display()
                )))
            }
        }
    }
}

impl Connection {
    /// Connects to `path` and performs the whole setup.
    pub fn connect(path: &Path, cfg: &FrontendConfig) -> Result<Self> {
        let stream = connect_retry(path, cfg.connect_timeout)?;
        Self::from_stream(stream, cfg)
    }

    /// Performs the setup on an already connected stream.
    pub fn from_stream(stream: UnixStream, cfg: &FrontendConfig) -> Result<Self> {
        let raw = stream.try_clone()?;
        let mut frontend = Frontend::from_stream(stream, 2);

        // Device init, as QEMU's realize does it.
        let offered = frontend.get_features()?;
        frontend.set_owner()?;
        if offered & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Err(FrontendError::Protocol(
                "backend does not offer PROTOCOL_FEATURES".into(),
            ));
        }
        let offered_protocol = frontend.get_protocol_features()?;
        if !offered_protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(FrontendError::Protocol(
                "backend does not offer PROTOCOL_F_CONFIG".into(),
            ));
        }
        let mut acked_protocol = VhostUserProtocolFeatures::CONFIG;
        if cfg.reply_ack && offered_protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            acked_protocol |= VhostUserProtocolFeatures::REPLY_ACK;
        }
        if offered_protocol.contains(VhostUserProtocolFeatures::RESET_DEVICE) {
            acked_protocol |= VhostUserProtocolFeatures::RESET_DEVICE;
        }
        frontend.set_protocol_features(acked_protocol)?;
        if acked_protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let zero = [0u8; 16];
        let (_, payload) =
            frontend.get_config(0, zero.len() as u32, VhostUserConfigFlags::empty(), &zero)?;
        let mut config = VirtioGpuConfig::default();
        let n = payload.len().min(config.as_slice().len());
        config.as_mut_slice()[..n].copy_from_slice(&payload[..n]);

        // DRIVER_OK: GPU socket first, then features, memory, rings.
        let mut raw_sock = raw;
        let peer = if cfg.gpu_socket {
            let (peer, theirs) = GpuPeer::start(cfg.peer.clone())?;
            send_gpu_set_socket(&mut raw_sock, &theirs)?;
            drop(theirs);
            Some(peer)
        } else {
            None
        };

        let mut acked = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES;
        if cfg.event_idx {
            acked |= VIRTIO_RING_F_EVENT_IDX;
        }
        if cfg.indirect {
            acked |= VIRTIO_RING_F_INDIRECT_DESC;
        }
        acked |= cfg.device_features & 0xff_ffff;
        acked &= offered;
        if acked & VIRTIO_F_VERSION_1 == 0 {
            return Err(FrontendError::Protocol(
                "backend does not offer VERSION_1".into(),
            ));
        }
        frontend.set_features(acked)?;

        let mem = GuestMemory::new(cfg.mem_size, cfg.mem_base)?;
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: mem.base(),
            memory_size: mem.size(),
            userspace_addr: mem.host_base(),
            mmap_offset: 0,
            mmap_handle: mem.raw_fd(),
        };
        frontend.set_mem_table(&[region])?;

        let queues = setup_queues(&mut frontend, &mem, cfg.queue_sizes, acked)?;

        Ok(Connection {
            frontend,
            raw: raw_sock,
            mem,
            queues,
            peer,
            offered_features: offered,
            acked_features: acked,
            offered_protocol: offered_protocol.bits(),
            acked_protocol: acked_protocol.bits(),
            config,
            io_timeout: cfg.io_timeout,
            peer_features: cfg.peer.protocol_features,
        })
    }

    /// Plays a guest reboot as QEMU does it: rings disabled and stopped (GET_VRING_BASE), then at
    /// the next DRIVER_OK a fresh GPU socket (SET_SOCKET), SET_FEATURES, SET_MEM_TABLE and new rings
    /// (fresh ring memory, indexes from 0). Memory allocated so far stays valid.
    /// With `reset_device`, VHOST_USER_RESET_DEVICE is sent after the rings stop (only when that
    /// protocol feature was acked).
    pub fn restart(&mut self, cfg: &FrontendConfig, reset_device: bool) -> Result<()> {
        for i in 0..self.queues.len() {
            self.frontend.set_vring_enable(i, false)?;
        }
        for i in 0..self.queues.len() {
            self.frontend.get_vring_base(i)?;
        }
        if reset_device && self.acked_protocol & VhostUserProtocolFeatures::RESET_DEVICE.bits() != 0
        {
            self.frontend.reset_device()?;
        }
        self.peer = None;
        if cfg.gpu_socket {
            let (peer, theirs) = GpuPeer::start(cfg.peer.clone())?;
            send_gpu_set_socket(&mut self.raw, &theirs)?;
            self.peer = Some(peer);
        }
        self.frontend.set_features(self.acked_features)?;
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: self.mem.base(),
            memory_size: self.mem.size(),
            userspace_addr: self.mem.host_base(),
            mmap_offset: 0,
            mmap_handle: self.mem.raw_fd(),
        };
        self.frontend.set_mem_table(&[region])?;
        self.queues = setup_queues(
            &mut self.frontend,
            &self.mem,
            cfg.queue_sizes,
            self.acked_features,
        )?;
        Ok(())
    }

    /// The vhost-user frontend, for extra requests.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// The GPU socket peer (panics if none was set up: test helper).
    pub fn peer(&mut self) -> &mut GpuPeer {
        self.peer.as_mut().expect("no GPU socket peer")
    }

    /// The GPU protocol features the peer offers.
    pub fn peer_config_features(&self) -> u64 {
        self.peer_features
    }

    /// Whether a feature bit was acked.
    pub fn has_feature(&self, bit: u64) -> bool {
        self.acked_features & bit != 0
    }

    /// Publishes `head` on queue `q` and kicks if the device asks for it.
    pub fn publish(&mut self, q: usize, head: u16) -> Result<()> {
        let queue = self
            .queues
            .get_mut(q)
            .ok_or(FrontendError::InvalidArgument("queue index"))?;
        if queue.ring.publish(&self.mem, head)? {
            queue.kick.write(1)?;
            queue.kicks += 1;
        }
        Ok(())
    }

    /// Kicks queue `q` unconditionally.
    pub fn kick(&mut self, q: usize) -> Result<()> {
        let queue = self
            .queues
            .get_mut(q)
            .ok_or(FrontendError::InvalidArgument("queue index"))?;
        queue.kick.write(1)?;
        queue.kicks += 1;
        Ok(())
    }

    /// Takes a used element from queue `q` if one is there (no waiting).
    pub fn poll_used(&mut self, q: usize) -> Result<Option<UsedElem>> {
        let queue = self
            .queues
            .get_mut(q)
            .ok_or(FrontendError::InvalidArgument("queue index"))?;
        queue.ring.pop_used(&self.mem)
    }

    /// Waits up to `timeout` for the next used element of queue `q`, sleeping on the call eventfd.
    pub fn wait_used(&mut self, q: usize, timeout: Duration) -> Result<UsedElem> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.poll_used(q)? {
                return Ok(e);
            }
            let queue = self
                .queues
                .get_mut(q)
                .ok_or(FrontendError::InvalidArgument("queue index"))?;
            if queue.ring.enable_notify(&self.mem)? {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(FrontendError::Timeout(format!(
                    "used element on queue {q} (in flight {})",
                    queue.ring.in_flight()
                )));
            }
            let left = (deadline - now).as_millis().min(i32::MAX as u128) as i32;
            let mut pfd = libc::pollfd {
                fd: queue.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, left.max(1)) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
            if r > 0 {
                // Drain the counter; EAGAIN means a racing read already did.
                let _ = queue.call.read();
            }
        }
    }

    /// Sends a raw vhost-user message (header + payload + fds) on the control socket, bypassing the
    /// `vhost` crate, for requests it lacks. No reply is read.
    pub fn send_raw_frontend_msg(
        &mut self,
        request: u32,
        flags: u32,
        payload: &[u8],
        fds: &[i32],
    ) -> Result<()> {
        send_msg_with_fds(&mut self.raw, request, flags, payload, fds)
    }

    /// Closes the control socket (the backend sees a disconnect); queues and memory stay mapped
    /// here until the connection is dropped.
    pub fn shutdown(&self) -> Result<()> {
        self.raw.shutdown(std::net::Shutdown::Both)?;
        Ok(())
    }
}

/// Lays out the rings and sends SET_VRING_NUM/BASE/ADDR/KICK/CALL per queue, then enables them all.
fn setup_queues(
    frontend: &mut Frontend,
    mem: &GuestMemory,
    sizes: [u16; 2],
    acked: u64,
) -> Result<Vec<Queue>> {
    let event_idx = acked & VIRTIO_RING_F_EVENT_IDX != 0;
    let mut queues = Vec::with_capacity(sizes.len());
    for (i, &size) in sizes.iter().enumerate() {
        let ring = SplitQueue::new(mem, size, event_idx)?;
        let kick = EventFd::new(EFD_NONBLOCK)?;
        let call = EventFd::new(EFD_NONBLOCK)?;
        frontend.set_vring_num(i, size)?;
        frontend.set_vring_base(i, 0)?;
        frontend.set_vring_addr(i, &ring.config_data(mem)?)?;
        frontend.set_vring_kick(i, &kick)?;
        frontend.set_vring_call(i, &call)?;
        queues.push(Queue {
            ring,
            kick,
            call,
            kicks: 0,
        });
    }
    for i in 0..queues.len() {
        frontend.set_vring_enable(i, true)?;
    }
    Ok(queues)
}

/// Sends `VHOST_USER_GPU_SET_SOCKET` (33) with `gpu` as its fd, flags = version only, no reply.
pub fn send_gpu_set_socket(sock: &mut UnixStream, gpu: &UnixStream) -> Result<()> {
    send_msg_with_fds(
        sock,
        VHOST_USER_GPU_SET_SOCKET,
        0x1,
        &[],
        &[gpu.as_raw_fd()],
    )
}

/// Writes a vhost-user message with ancillary fds in one `sendmsg`.
pub fn send_msg_with_fds(
    sock: &mut UnixStream,
    request: u32,
    flags: u32,
    payload: &[u8],
    fds: &[i32],
) -> Result<()> {
    let mut buf = Vec::with_capacity(12 + payload.len());
    buf.extend_from_slice(&request.to_le_bytes());
    buf.extend_from_slice(&flags.to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
    if fds.is_empty() {
        sock.write_all(&buf)?;
        return Ok(());
    }
    if fds.len() > 8 {
        return Err(FrontendError::InvalidArgument("too many fds"));
    }
    let mut cmsg = [0u64; 8];
    let fd_bytes = std::mem::size_of_val(fds);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: zeroed msghdr is a valid start; all pointers below refer to live buffers.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(fd_bytes as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), fd_bytes);
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let sent = sent as usize;
    if sent < buf.len() {
        sock.write_all(&buf[sent..])?;
    }
    Ok(())
}
