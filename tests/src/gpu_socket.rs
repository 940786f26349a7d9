//! QEMU's side of the vhost-user GPU socket (`VHOST_USER_GPU_SET_SOCKET`).
//!
//! A thread reads what the backend sends, answers the requests that need replies
//! (GET_PROTOCOL_FEATURES, GET_DISPLAY_INFO, GET_EDID, DMABUF_UPDATE) and records every message in
//! order. Tests wait for messages with [`GpuPeer::wait_for`] and friends.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vgpu_protocol::virtio_gpu::{DisplayOne, RespDisplayInfo, RespEdid, VIRTIO_GPU_MAX_SCANOUTS};
use vgpu_protocol::virtio_gpu::{VIRTIO_GPU_RESP_OK_DISPLAY_INFO, VIRTIO_GPU_RESP_OK_EDID};
use vm_memory::ByteValued;

use crate::error::{FrontendError, Result};

/// GPU socket request: GET_PROTOCOL_FEATURES.
pub const GPU_GET_PROTOCOL_FEATURES: u32 = 1;
/// GPU socket request: SET_PROTOCOL_FEATURES.
pub const GPU_SET_PROTOCOL_FEATURES: u32 = 2;
/// GPU socket request: GET_DISPLAY_INFO.
pub const GPU_GET_DISPLAY_INFO: u32 = 3;
/// GPU socket request: CURSOR_POS.
pub const GPU_CURSOR_POS: u32 = 4;
/// GPU socket request: CURSOR_POS_HIDE.
pub const GPU_CURSOR_POS_HIDE: u32 = 5;
/// GPU socket request: CURSOR_UPDATE.
pub const GPU_CURSOR_UPDATE: u32 = 6;
/// GPU socket request: SCANOUT.
pub const GPU_SCANOUT: u32 = 7;
/// GPU socket request: UPDATE.
pub const GPU_UPDATE: u32 = 8;
/// GPU socket request: DMABUF_SCANOUT.
pub const GPU_DMABUF_SCANOUT: u32 = 9;
/// GPU socket request: DMABUF_UPDATE.
pub const GPU_DMABUF_UPDATE: u32 = 10;
/// GPU socket request: GET_EDID.
pub const GPU_GET_EDID: u32 = 11;
/// GPU socket request: DMABUF_SCANOUT2.
pub const GPU_DMABUF_SCANOUT2: u32 = 12;
/// Header flag: this is a reply.
pub const GPU_FLAG_REPLY: u32 = 0x4;
/// GPU protocol feature: EDID.
pub const GPU_PROTOCOL_F_EDID: u64 = 1 << 0;
/// GPU protocol feature: DMABUF_SCANOUT2.
pub const GPU_PROTOCOL_F_DMABUF2: u64 = 1 << 1;
/// Largest payload accepted from the backend (a 16384×16384×4 update and its header).
pub const MAX_GPU_MSG: u32 = 16384 * 16384 * 4 + 20;

/// How the peer answers the backend (QEMU 10.0's answers by default).
#[derive(Clone, Debug)]
pub struct GpuPeerConfig {
    /// Reply to GET_PROTOCOL_FEATURES.
    pub protocol_features: u64,
    /// Reply to GET_DISPLAY_INFO.
    pub displays: [DisplayOne; VIRTIO_GPU_MAX_SCANOUTS],
    /// EDID blob returned by GET_EDID (for every scanout).
    pub edid: Vec<u8>,
    /// Keep the pixels of UPDATE and CURSOR_UPDATE messages (default). When false (benchmarks),
    /// pixels are drained through a small reused buffer and not stored: the recorded messages
    /// carry empty `data`, UPDATE sizes are validated (`20 + width * height * 4` bytes, anything
    /// else ends the peer with an error) and counted in [`GpuPeer::update_stats`].
    pub record_pixels: bool,
}

impl Default for GpuPeerConfig {
    fn default() -> Self {
        let mut displays = [DisplayOne::default(); VIRTIO_GPU_MAX_SCANOUTS];
        displays[0].r.width = 1280;
        displays[0].r.height = 800;
        displays[0].enabled = 1;
        GpuPeerConfig {
            protocol_features: GPU_PROTOCOL_F_EDID | GPU_PROTOCOL_F_DMABUF2,
            displays,
            edid: test_edid(),
            record_pixels: true,
        }
    }
}

/// A 128-byte EDID block with a valid header and checksum (content is otherwise arbitrary).
pub fn test_edid() -> Vec<u8> {
    let mut e = vec![0u8; 128];
    e[..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    e[8] = 0x5a; // manufacturer "VGP"-ish
    e[9] = 0x50;
    e[18] = 1; // EDID 1.4
    e[19] = 4;
    let sum: u8 = e.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    e[127] = 0u8.wrapping_sub(sum);
    e
}

/// One message the backend sent on the GPU socket.
#[derive(Debug)]
pub enum GpuMsg {
    /// GET_PROTOCOL_FEATURES (answered).
    GetProtocolFeatures,
    /// SET_PROTOCOL_FEATURES with the features the backend chose.
    SetProtocolFeatures(u64),
    /// GET_DISPLAY_INFO (answered).
    GetDisplayInfo,
    /// GET_EDID for a scanout (answered).
    GetEdid {
        /// Scanout.
        scanout: u32,
    },
    /// SCANOUT: width 0 disables the scanout.
    Scanout {
        /// Scanout.
        scanout: u32,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// UPDATE with its pixels (x8r8g8b8, `width * 4` bytes a row).
    Update {
        /// Scanout.
        scanout: u32,
        /// Left.
        x: u32,
        /// Top.
        y: u32,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Pixel bytes.
        data: Vec<u8>,
    },
    /// CURSOR_POS.
    CursorPos {
        /// Scanout.
        scanout: u32,
        /// X.
        x: u32,
        /// Y.
        y: u32,
    },
    /// CURSOR_POS_HIDE.
    CursorPosHide {
        /// Scanout.
        scanout: u32,
        /// X.
        x: u32,
        /// Y.
        y: u32,
    },
    /// CURSOR_UPDATE with the 64×64 ARGB image.
    CursorUpdate {
        /// Scanout.
        scanout: u32,
        /// X.
        x: u32,
        /// Y.
        y: u32,
        /// Hot spot x.
        hot_x: u32,
        /// Hot spot y.
        hot_y: u32,
        /// 64 × 64 × 4 bytes.
        data: Vec<u8>,
    },
    /// DMABUF_SCANOUT / DMABUF_SCANOUT2: raw payload and the fd, if one came.
    DmabufScanout {
        /// Request number (9 or 12).
        request: u32,
        /// Raw payload.
        payload: Vec<u8>,
        /// The dma-buf.
        fd: Option<OwnedFd>,
    },
    /// DMABUF_UPDATE (answered with an empty reply).
    DmabufUpdate {
        /// Raw payload.
        payload: Vec<u8>,
    },
    /// Anything else.
    Unknown {
        /// Request number.
        request: u32,
        /// Flags.
        flags: u32,
        /// Raw payload.
        payload: Vec<u8>,
    },
}

impl GpuMsg {
    /// True for GET_PROTOCOL_FEATURES / SET_PROTOCOL_FEATURES.
    pub fn is_handshake(&self) -> bool {
        matches!(
            self,
            GpuMsg::GetProtocolFeatures | GpuMsg::SetProtocolFeatures(_)
        )
    }

    /// The wire request number.
    pub fn request(&self) -> u32 {
        match self {
            GpuMsg::GetProtocolFeatures => GPU_GET_PROTOCOL_FEATURES,
            GpuMsg::SetProtocolFeatures(_) => GPU_SET_PROTOCOL_FEATURES,
            GpuMsg::GetDisplayInfo => GPU_GET_DISPLAY_INFO,
            GpuMsg::GetEdid { .. } => GPU_GET_EDID,
            GpuMsg::Scanout { .. } => GPU_SCANOUT,
            GpuMsg::Update { .. } => GPU_UPDATE,
            GpuMsg::CursorPos { .. } => GPU_CURSOR_POS,
            GpuMsg::CursorPosHide { .. } => GPU_CURSOR_POS_HIDE,
            GpuMsg::CursorUpdate { .. } => GPU_CURSOR_UPDATE,
            GpuMsg::DmabufScanout { request, .. } => *request,
            GpuMsg::DmabufUpdate { .. } => GPU_DMABUF_UPDATE,
            GpuMsg::Unknown { request, .. } => *request,
        }
    }
}

#[derive(Default)]
struct Log {
    msgs: Vec<Arc<GpuMsg>>,
    /// Stop reading the socket (a stalled display) until cleared.
    stalled: bool,
    closed: bool,
    error: Option<String>,
    updates: u64,
    update_pixel_bytes: u64,
}

/// Counters of the UPDATE messages a peer received.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// UPDATE messages received.
    pub updates: u64,
    /// Pixel bytes they carried (without the 20-byte update header).
    pub pixel_bytes: u64,
}

struct Shared {
    log: Mutex<Log>,
    cond: Condvar,
}

/// The frontend's end of the GPU socket, served by a thread.
pub struct GpuPeer {
    shared: Arc<Shared>,
    stream: UnixStream,
    thread: Option<JoinHandle<()>>,
    cursor: usize,
}

impl GpuPeer {
    /// Makes a socketpair, starts serving one end and returns the other end for SET_SOCKET.
    pub fn start(config: GpuPeerConfig) -> Result<(GpuPeer, UnixStream)> {
        let (ours, theirs) = UnixStream::pair()?;
        let shared = Arc::new(Shared {
            log: Mutex::new(Log::default()),
            cond: Condvar::new(),
        });
        let reader = ours.try_clone()?;
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("gpu-socket-peer".into())
            .spawn(move || serve(reader, config, s))?;
        Ok((
            GpuPeer {
                shared,
                stream: ours,
                thread: Some(thread),
                cursor: 0,
            },
            theirs,
        ))
    }

    /// All messages received so far, in order.
    pub fn messages(&self) -> Vec<Arc<GpuMsg>> {
        self.shared
            .log
            .lock()
            .map(|l| l.msgs.clone())
            .unwrap_or_default()
    }

    /// UPDATE messages (and their pixel bytes) received so far.
    pub fn update_stats(&self) -> UpdateStats {
        self.shared
            .log
            .lock()
            .map(|l| UpdateStats {
                updates: l.updates,
                pixel_bytes: l.update_pixel_bytes,
            })
            .unwrap_or_default()
    }

    /// Waits until at least `n` UPDATE messages were received in total; returns the counters.
    pub fn wait_updates(&self, n: u64, timeout: Duration) -> Result<UpdateStats> {
        let deadline = Instant::now() + timeout;
        let mut log = self
            .shared
            .log
            .lock()
            .map_err(|_| FrontendError::Poisoned)?;
        loop {
            if log.updates >= n {
                return Ok(UpdateStats {
                    updates: log.updates,
                    pixel_bytes: log.update_pixel_bytes,
                });
            }
            let now = Instant::now();
            if log.closed || now >= deadline {
                return Err(FrontendError::Timeout(format!(
                    "{n} UPDATE messages (got {}{})",
                    log.updates,
                    log.error
                        .as_deref()
                        .map(|e| format!("; GPU socket closed: {e}"))
                        .unwrap_or_default()
                )));
            }
            log = self
                .shared
                .cond
                .wait_timeout(log, deadline - now)
                .map_err(|_| FrontendError::Poisoned)?
                .0;
        }
    }

    /// Stops reading the socket, as a QEMU whose main loop hangs: the backend's writes block
    /// once the socket buffer is full, and requests go unanswered, until [`GpuPeer::resume`].
    pub fn stall(&self) {
        if let Ok(mut log) = self.shared.log.lock() {
            log.stalled = true;
        }
    }

    /// Reads the socket again after [`GpuPeer::stall`].
    pub fn resume(&self) {
        if let Ok(mut log) = self.shared.log.lock() {
            log.stalled = false;
        }
        self.shared.cond.notify_all();
    }

    /// True once the backend closed its end.
    pub fn is_closed(&self) -> bool {
        self.shared.log.lock().map(|l| l.closed).unwrap_or(true)
    }

    /// A protocol error the serving thread hit, if any.
    pub fn error(&self) -> Option<String> {
        self.shared.log.lock().ok().and_then(|l| l.error.clone())
    }

    /// Messages after the read cursor, advancing it (non-blocking).
    pub fn take_new(&mut self) -> Vec<Arc<GpuMsg>> {
        let msgs = self.messages();
        let new = msgs
            .get(self.cursor..)
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        self.cursor = msgs.len();
        new
    }

    /// Moves the read cursor to the end: later waits only see newer messages.
    pub fn skip_all(&mut self) {
        self.cursor = self.messages().len();
    }

    /// Waits for the next message after the read cursor and advances past it.
    pub fn next(&mut self, timeout: Duration) -> Result<Arc<GpuMsg>> {
        let cursor = self.cursor;
        let m = self.wait_until(timeout, "next GPU socket message", |msgs| {
            msgs.get(cursor).cloned()
        })?;
        self.cursor += 1;
        Ok(m)
    }

    /// Waits for the next message after the read cursor that is not part of the protocol-feature
    /// handshake (GET/SET_PROTOCOL_FEATURES, which a backend may do lazily) and advances past it.
    pub fn next_display(&mut self, timeout: Duration) -> Result<Arc<GpuMsg>> {
        loop {
            let m = self.next(timeout)?;
            if !m.is_handshake() {
                return Ok(m);
            }
        }
    }

    /// The protocol features the backend set, once it did.
    pub fn negotiated_features(&self) -> Option<u64> {
        self.messages().iter().find_map(|m| match **m {
            GpuMsg::SetProtocolFeatures(v) => Some(v),
            _ => None,
        })
    }

    /// Waits for the first message after the read cursor with this request number, and moves the
    /// cursor past it (skipping what came before).
    pub fn wait_for(&mut self, request: u32, timeout: Duration) -> Result<Arc<GpuMsg>> {
        let cursor = self.cursor;
        let (i, m) =
            self.wait_until(timeout, &format!("GPU socket request {request}"), |msgs| {
                msgs.iter()
                    .enumerate()
                    .skip(cursor)
                    .find(|(_, m)| m.request() == request)
                    .map(|(i, m)| (i, Arc::clone(m)))
            })?;
        self.cursor = i + 1;
        Ok(m)
    }

    /// Waits until `n` messages after the cursor exist and returns them, advancing the cursor.
    pub fn wait_count(&mut self, n: usize, timeout: Duration) -> Result<Vec<Arc<GpuMsg>>> {
        let cursor = self.cursor;
        let v = self.wait_until(timeout, &format!("{n} GPU socket messages"), |msgs| {
            (msgs.len() >= cursor + n).then(|| msgs[cursor..cursor + n].to_vec())
        })?;
        self.cursor += n;
        Ok(v)
    }

    /// Waits until `pred` over all messages returns `Some`.
    pub fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&[Arc<GpuMsg>]) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut log = self
            .shared
            .log
            .lock()
            .map_err(|_| FrontendError::Poisoned)?;
        loop {
            if let Some(v) = pred(&log.msgs) {
                return Ok(v);
            }
            if log.closed {
                return Err(FrontendError::Timeout(format!(
                    "{what} (GPU socket closed{})",
                    log.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(FrontendError::Timeout(what.to_string()));
            }
            log = self
                .shared
                .cond
                .wait_timeout(log, deadline - now)
                .map_err(|_| FrontendError::Poisoned)?
                .0;
        }
    }

    /// Waits until the backend closes its end of the socket.
    pub fn wait_closed(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut log = self
            .shared
            .log
            .lock()
            .map_err(|_| FrontendError::Poisoned)?;
        while !log.closed {
            let now = Instant::now();
            if now >= deadline {
                return Err(FrontendError::Timeout("GPU socket close".into()));
            }
            log = self
                .shared
                .cond
                .wait_timeout(log, deadline - now)
                .map_err(|_| FrontendError::Poisoned)?
                .0;
        }
        Ok(())
    }
}

impl Drop for GpuPeer {
    fn drop(&mut self) {
        self.resume();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Receives a 12-byte header and at most one fd.
fn recv_header(sock: &UnixStream) -> std::io::Result<Option<([u8; 12], Option<OwnedFd>)>> {
    let mut hdr = [0u8; 12];
    let mut got = 0usize;
    let mut fd = None;
    while got < hdr.len() {
        let mut cmsg = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: hdr[got..].as_mut_ptr().cast(),
            iov_len: hdr.len() - got,
        };
        // SAFETY: zeroed msghdr is a valid initial value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg);
        // SAFETY: all pointers refer to live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        // SAFETY: walking the control buffer the kernel filled, with the libc macros.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                    let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                        / std::mem::size_of::<libc::c_int>();
                    for i in 0..count {
                        let raw = std::ptr::read_unaligned(data.add(i));
                        let owned = OwnedFd::from_raw_fd(raw);
                        if fd.is_none() {
                            fd = Some(owned);
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        got += n as usize;
    }
    Ok(Some((hdr, fd)))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

fn reply(sock: &mut UnixStream, request: u32, payload: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(12 + payload.len());
    buf.extend_from_slice(&request.to_le_bytes());
    // QEMU's frontend sets exactly the REPLY bit (no version bit), and the vhost crate's
    // GpuBackend rejects any other bit.
    buf.extend_from_slice(&GPU_FLAG_REPLY.to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
    sock.write_all(&buf)
}

fn serve(mut sock: UnixStream, config: GpuPeerConfig, shared: Arc<Shared>) {
    let result = serve_loop(&mut sock, &config, &shared);
    if let Ok(mut log) = shared.log.lock() {
        log.closed = true;
        if let Err(e) = result {
            log.error = Some(e.to_string());
        }
    }
    shared.cond.notify_all();
}

/// Size of the buffer UPDATE pixels are drained through when they are not recorded.
const DRAIN_CHUNK: usize = 256 << 10;

/// Reads and discards `n` bytes through `scratch`.
fn drain(sock: &mut UnixStream, scratch: &mut [u8], mut n: usize) -> std::io::Result<()> {
    while n > 0 {
        let want = n.min(scratch.len());
        let got = sock.read(&mut scratch[..want])?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        n -= got;
    }
    Ok(())
}

/// Blocks while the peer is stalled ([`GpuPeer::stall`]).
fn wait_while_stalled(shared: &Shared) -> Result<()> {
    let mut log = shared.log.lock().map_err(|_| FrontendError::Poisoned)?;
    while log.stalled {
        log = shared.cond.wait(log).map_err(|_| FrontendError::Poisoned)?;
    }
    Ok(())
}

fn serve_loop(sock: &mut UnixStream, config: &GpuPeerConfig, shared: &Shared) -> Result<()> {
    // Grows to the largest message seen and is reused (never re-zeroed).
    let mut payload = Vec::new();
    let mut scratch = Vec::new();
    loop {
        wait_while_stalled(shared)?;
        let Some((hdr, fd)) = recv_header(sock)? else {
            return Ok(());
        };
        let request = u32_at(&hdr, 0);
        let flags = u32_at(&hdr, 4);
        let size = u32_at(&hdr, 8);
        if size > MAX_GPU_MSG {
            return Err(FrontendError::Protocol(format!(
                "GPU socket message {request} of {size} bytes"
            )));
        }
        let size = size as usize;
        if !config.record_pixels && request == GPU_UPDATE && size >= 20 {
            let mut h = [0u8; 20];
            sock.read_exact(&mut h)?;
            let (w, hgt) = (u32_at(&h, 12), u32_at(&h, 16));
            let pixels = size - 20;
            if u64::from(w) * u64::from(hgt) * 4 != pixels as u64 {
                return Err(FrontendError::Protocol(format!(
                    "UPDATE {w}x{hgt} with {pixels} pixel bytes"
                )));
            }
            if scratch.is_empty() {
                scratch.resize(DRAIN_CHUNK, 0);
            }
            drain(sock, &mut scratch, pixels)?;
            let msg = GpuMsg::Update {
                scanout: u32_at(&h, 0),
                x: u32_at(&h, 4),
                y: u32_at(&h, 8),
                width: w,
                height: hgt,
                data: Vec::new(),
            };
            let mut log = shared.log.lock().map_err(|_| FrontendError::Poisoned)?;
            log.updates += 1;
            log.update_pixel_bytes += pixels as u64;
            log.msgs.push(Arc::new(msg));
            drop(log);
            shared.cond.notify_all();
            continue;
        }
        if payload.len() < size {
            payload.resize(size, 0);
        }
        let p = &mut payload[..size];
        sock.read_exact(p)?;
        let p = &p[..];
        let msg = match request {
            GPU_GET_PROTOCOL_FEATURES => {
                reply(sock, request, &config.protocol_features.to_le_bytes())?;
                GpuMsg::GetProtocolFeatures
            }
            GPU_SET_PROTOCOL_FEATURES => {
                let v = p
                    .get(..8)
                    .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
                    .unwrap_or(0);
                GpuMsg::SetProtocolFeatures(v)
            }
            GPU_GET_DISPLAY_INFO => {
                let mut r = RespDisplayInfo {
                    pmodes: config.displays,
                    ..Default::default()
                };
                r.hdr.type_ = VIRTIO_GPU_RESP_OK_DISPLAY_INFO;
                reply(sock, request, r.as_slice())?;
                GpuMsg::GetDisplayInfo
            }
            GPU_GET_EDID => {
                let mut r = RespEdid::default();
                r.hdr.type_ = VIRTIO_GPU_RESP_OK_EDID;
                let n = config.edid.len().min(r.edid.len());
                r.size = n as u32;
                r.edid[..n].copy_from_slice(&config.edid[..n]);
                reply(sock, request, r.as_slice())?;
                GpuMsg::GetEdid {
                    scanout: u32_at(p, 0),
                }
            }
            GPU_SCANOUT => GpuMsg::Scanout {
                scanout: u32_at(p, 0),
                width: u32_at(p, 4),
                height: u32_at(p, 8),
            },
            GPU_UPDATE => GpuMsg::Update {
                scanout: u32_at(p, 0),
                x: u32_at(p, 4),
                y: u32_at(p, 8),
                width: u32_at(p, 12),
                height: u32_at(p, 16),
                data: p.get(20..).map(<[u8]>::to_vec).unwrap_or_default(),
            },
            GPU_CURSOR_POS => GpuMsg::CursorPos {
                scanout: u32_at(p, 0),
                x: u32_at(p, 4),
                y: u32_at(p, 8),
            },
            GPU_CURSOR_POS_HIDE => GpuMsg::CursorPosHide {
                scanout: u32_at(p, 0),
                x: u32_at(p, 4),
                y: u32_at(p, 8),
            },
            GPU_CURSOR_UPDATE => GpuMsg::CursorUpdate {
                scanout: u32_at(p, 0),
                x: u32_at(p, 4),
                y: u32_at(p, 8),
                hot_x: u32_at(p, 12),
                hot_y: u32_at(p, 16),
                data: if config.record_pixels {
                    p.get(20..).map(<[u8]>::to_vec).unwrap_or_default()
                } else {
                    Vec::new()
                },
            },
            GPU_DMABUF_SCANOUT | GPU_DMABUF_SCANOUT2 => GpuMsg::DmabufScanout {
                request,
                payload: p.to_vec(),
                fd,
            },
            GPU_DMABUF_UPDATE => {
                reply(sock, request, &[])?;
                GpuMsg::DmabufUpdate {
                    payload: p.to_vec(),
                }
            }
            _ => GpuMsg::Unknown {
                request,
                flags,
                payload: p.to_vec(),
            },
        };
        let mut log = shared.log.lock().map_err(|_| FrontendError::Poisoned)?;
        if let GpuMsg::Update { data, .. } = &msg {
            log.updates += 1;
            log.update_pixel_bytes += data.len() as u64;
        }
        log.msgs.push(Arc::new(msg));
        drop(log);
        shared.cond.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::send_msg_with_fds;

    fn read_reply(s: &mut UnixStream) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 12];
        s.read_exact(&mut h).unwrap();
        let mut p = vec![0u8; u32_at(&h, 8) as usize];
        s.read_exact(&mut p).unwrap();
        (u32_at(&h, 0), u32_at(&h, 4), p)
    }

    #[test]
    fn answers_and_records_in_order() {
        let (mut peer, mut backend) = GpuPeer::start(GpuPeerConfig::default()).unwrap();
        send_msg_with_fds(&mut backend, GPU_GET_PROTOCOL_FEATURES, 0, &[], &[]).unwrap();
        let (req, flags, p) = read_reply(&mut backend);
        assert_eq!(
            (req, flags & GPU_FLAG_REPLY),
            (GPU_GET_PROTOCOL_FEATURES, GPU_FLAG_REPLY)
        );
        assert_eq!(p, 3u64.to_le_bytes());
        send_msg_with_fds(
            &mut backend,
            GPU_SET_PROTOCOL_FEATURES,
            0,
            &1u64.to_le_bytes(),
            &[],
        )
        .unwrap();
        send_msg_with_fds(&mut backend, GPU_GET_EDID, 0, &0u32.to_le_bytes(), &[]).unwrap();
        let (_, _, p) = read_reply(&mut backend);
        assert_eq!(p.len(), std::mem::size_of::<RespEdid>());
        assert_eq!(&p[32..32 + 128], &test_edid()[..]);
        let mut upd = Vec::new();
        for v in [0u32, 1, 2, 2, 1] {
            upd.extend_from_slice(&v.to_le_bytes());
        }
        upd.extend_from_slice(&[9, 8, 7, 6, 5, 4, 3, 2]);
        send_msg_with_fds(&mut backend, GPU_UPDATE, 0, &upd, &[]).unwrap();
        // An fd rides along with DMABUF_SCANOUT.
        let (a, _b) = UnixStream::pair().unwrap();
        send_msg_with_fds(
            &mut backend,
            GPU_DMABUF_SCANOUT,
            0,
            &[0; 36],
            &[a.as_raw_fd()],
        )
        .unwrap();
        let msgs = peer.wait_count(5, Duration::from_secs(5)).unwrap();
        assert!(matches!(*msgs[0], GpuMsg::GetProtocolFeatures));
        assert!(matches!(*msgs[1], GpuMsg::SetProtocolFeatures(1)));
        assert!(matches!(*msgs[2], GpuMsg::GetEdid { scanout: 0 }));
        match &*msgs[3] {
            GpuMsg::Update {
                x,
                y,
                width,
                height,
                data,
                ..
            } => assert_eq!((*x, *y, *width, *height, data.len()), (1, 2, 2, 1, 8)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            &*msgs[4],
            GpuMsg::DmabufScanout { fd: Some(_), .. }
        ));
        drop(backend);
        peer.wait_closed(Duration::from_secs(5)).unwrap();
        assert!(peer.error().is_none());
    }

    #[test]
    fn counting_mode_validates_and_drops_pixels() {
        let cfg = GpuPeerConfig {
            record_pixels: false,
            ..Default::default()
        };
        let (mut peer, mut backend) = GpuPeer::start(cfg).unwrap();
        let upd = |w: u32, h: u32, bytes: usize| {
            let mut v = Vec::new();
            for x in [0u32, 0, 0, w, h] {
                v.extend_from_slice(&x.to_le_bytes());
            }
            v.resize(20 + bytes, 0xab);
            v
        };
        // Larger than the drain chunk, so the pixels take several reads.
        send_msg_with_fds(
            &mut backend,
            GPU_UPDATE,
            0,
            &upd(512, 300, 512 * 300 * 4),
            &[],
        )
        .unwrap();
        send_msg_with_fds(&mut backend, GPU_UPDATE, 0, &upd(1, 1, 4), &[]).unwrap();
        let stats = peer.wait_updates(2, Duration::from_secs(5)).unwrap();
        assert_eq!(stats.pixel_bytes, 512 * 300 * 4 + 4);
        let m = peer.wait_for(GPU_UPDATE, Duration::from_secs(5)).unwrap();
        assert!(
            matches!(&*m, GpuMsg::Update { width: 512, height: 300, data, .. } if data.is_empty())
        );
        // A size that does not match the rectangle ends the peer with an error.
        send_msg_with_fds(&mut backend, GPU_UPDATE, 0, &upd(2, 2, 4), &[]).unwrap();
        peer.wait_closed(Duration::from_secs(5)).unwrap();
        assert!(peer.error().is_some());
    }
}
