//! The per-VM display sender: one small thread that owns the write side of QEMU's GPU socket.
//!
//! The device's queue thread must not wait for QEMU to read an 8 MB `UPDATE` while it holds the
//! VM's state lock. So every message (`SCANOUT`, `UPDATE`, `CURSOR_*`, and the request/reply pairs
//! `GET_DISPLAY_INFO`, `GET_EDID` and the protocol handshake) goes through one bounded in-order
//! queue to a [`DisplaySender`] thread, which frames it (header, body and payload in one
//! `sendmsg`) and writes it. `UPDATE` pixels are copied into one of [`FRAME_BUFFERS`] reusable
//! buffers of at most [`FRAME_BUFFER_BYTES`] (larger updates go as several bands of rows; QEMU
//! composes each `UPDATE` into its surface on its own); the caller returns as soon as the copy is
//! queued and waits only when every buffer is still in flight. Cursor images use their own two
//! buffers, so a cursor change never waits for a frame buffer.
//!
//! Ordering: QEMU reads the GPU socket in order and composes an `UPDATE` into the surface that the
//! last `SCANOUT` created (it checks neither), so the single queue keeps `SCANOUT` before the
//! `UPDATE`s that follow it, exactly as the device issued them.
//!
//! Failure: writes time out after [`SEND_TIMEOUT`] without progress (`SO_SNDTIMEO`), replies after
//! [`REPLY_TIMEOUT`] (`SO_RCVTIMEO`). The first failure is logged once, the thread ends, and every
//! later call returns [`Stopped`], upon which the VM goes headless. Dropping the sender shuts the
//! socket down (unblocking a write in progress), discards what is still queued and joins the
//! thread, so nothing queued for one socket can reach the next.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use thiserror::Error;
use vgpu_protocol::virtio_gpu::{
    DisplayOne, Rect, VIRTIO_GPU_MAX_SCANOUTS, VIRTIO_GPU_RESP_OK_DISPLAY_INFO,
    VIRTIO_GPU_RESP_OK_EDID,
};

use crate::device::CURSOR_IMAGE_BYTES;

/// `VHOST_USER_GPU_PROTOCOL_F_EDID` as a bit mask.
pub const GPU_PROTOCOL_F_EDID: u64 = 1 << 0;
/// `VHOST_USER_GPU_PROTOCOL_F_DMABUF2` as a bit mask (not used: we send no dma-bufs).
pub const GPU_PROTOCOL_F_DMABUF2: u64 = 1 << 1;

/// Reusable `UPDATE` payload buffers per GPU socket.
pub const FRAME_BUFFERS: usize = 2;
/// Largest `UPDATE` payload (a 2560×1600 frame fits); larger updates are sent as several bands.
/// A buffer grows to the largest update seen, so a 1920×1080 display keeps two 8 MB buffers.
pub const FRAME_BUFFER_BYTES: usize = 16 << 20;
/// How long a write may make no progress before the frontend is considered gone.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the frontend may take to answer a request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a caller waits for a buffer, a queue slot or a reply (the sender thread's own timeouts
/// normally end any wait long before).
const CALLER_WAIT: Duration = Duration::from_secs(5);
/// Messages queued at most.
const QUEUE_DEPTH: usize = 64;
/// Reusable cursor image buffers.
const CURSOR_BUFFERS: usize = 2;
/// Stack of the sender thread (it keeps one reply buffer on it).
const STACK_SIZE: usize = 256 << 10;
/// Largest reply body accepted (`virtio_gpu_resp_edid` is 1056 bytes).
const MAX_REPLY: usize = 4096;

// vhost-user-gpu requests (QEMU docs/interop/vhost-user-gpu.rst).
const GET_PROTOCOL_FEATURES: u32 = 1;
const SET_PROTOCOL_FEATURES: u32 = 2;
const GET_DISPLAY_INFO: u32 = 3;
const CURSOR_POS: u32 = 4;
const CURSOR_POS_HIDE: u32 = 5;
const CURSOR_UPDATE: u32 = 6;
const SCANOUT: u32 = 7;
const UPDATE: u32 = 8;
const GET_EDID: u32 = 11;
const FLAG_REPLY: u32 = 0x4;
const HEADER_LEN: usize = 12;

/// Size of `virtio_gpu_ctrl_hdr`.
const CTRL_HDR_LEN: usize = 24;
/// Size of one `virtio_gpu_display_one`.
const DISPLAY_ONE_LEN: usize = 24;

/// The sender thread has stopped (the socket failed or was shut down): go headless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the GPU socket's sender has stopped")]
pub struct Stopped;

/// A message body: up to five little-endian `u32`s.
#[derive(Debug, Clone, Copy)]
struct Body {
    bytes: [u8; 20],
    len: usize,
}

impl Body {
    fn new(words: &[u32]) -> Self {
        let mut b = Body {
            bytes: [0; 20],
            len: 0,
        };
        for (dst, w) in b.bytes.chunks_exact_mut(4).zip(words) {
            dst.copy_from_slice(&w.to_le_bytes());
            b.len += 4;
        }
        b
    }

    fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Frames,
    Cursors,
}

#[derive(Debug, Clone, Copy)]
enum Query {
    DisplayInfo,
    Edid(u32),
}

#[derive(Debug)]
enum Reply {
    DisplayInfo(Option<Box<[DisplayOne; VIRTIO_GPU_MAX_SCANOUTS]>>),
    Edid(Option<Vec<u8>>),
}

#[derive(Debug)]
enum Msg {
    Plain(u32, Body),
    Payload(u32, Body, Vec<u8>, Pool),
    Query(u64, Query),
}

/// Everything the caller and the thread share, under one lock.
#[derive(Debug)]
struct State {
    queue: VecDeque<Msg>,
    frames: Vec<Vec<u8>>,
    cursors: Vec<Vec<u8>>,
    /// Sequence number and answer of the last query answered.
    reply: (u64, Option<Reply>),
    edid: bool,
    /// Set by the owner: the thread must end.
    stopping: bool,
    /// Set by the thread when it ends.
    closed: bool,
}

impl State {
    fn pool(&mut self, pool: Pool) -> &mut Vec<Vec<u8>> {
        match pool {
            Pool::Frames => &mut self.frames,
            Pool::Cursors => &mut self.cursors,
        }
    }
}

#[derive(Debug)]
struct Shared {
    sock: UnixStream,
    state: Mutex<State>,
    /// Signalled when the thread has work (or must stop).
    work: Condvar,
    /// Signalled when a buffer or queue slot is free, a reply arrived or the thread ended.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits on `changed` until `ready` gives a value, the thread ends or the caller's deadline.
    fn wait_for<T>(
        &self,
        mut ready: impl FnMut(&mut State) -> Option<T>,
    ) -> Result<(MutexGuard<'_, State>, T), Stopped> {
        let deadline = Instant::now() + CALLER_WAIT;
        let mut st = self.lock();
        loop {
            if st.closed || st.stopping {
                return Err(Stopped);
            }
            if let Some(v) = ready(&mut st) {
                return Ok((st, v));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(st);
                log::warn!("GPU socket: the frontend is not keeping up; continuing headless");
                self.stop();
                return Err(Stopped);
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Tells the thread to end and unblocks a write or read it is in.
    fn stop(&self) {
        self.lock().stopping = true;
        self.work.notify_all();
        self.changed.notify_all();
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

/// The sending side of one GPU socket: a thread plus the queue and buffers it serves.
#[derive(Debug)]
pub struct DisplaySender {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    next_seq: u64,
    /// Largest payload per `UPDATE` ([`FRAME_BUFFER_BYTES`]; smaller in tests).
    max_payload: usize,
}

impl DisplaySender {
    /// Starts the sender thread on `sock` (QEMU's GPU socket). The handshake happens on the first
    /// message, as QEMU can only answer once its main loop runs again.
    pub fn spawn(sock: UnixStream) -> io::Result<Self> {
        sock.set_nonblocking(false)?;
        sock.set_write_timeout(Some(SEND_TIMEOUT))?;
        sock.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let empty = |n: usize| (0..n).map(|_| Vec::new()).collect::<Vec<Vec<u8>>>();
        let shared = Arc::new(Shared {
            sock,
            state: Mutex::new(State {
                queue: VecDeque::with_capacity(QUEUE_DEPTH),
                frames: empty(FRAME_BUFFERS),
                cursors: empty(CURSOR_BUFFERS),
                reply: (0, None),
                edid: false,
                stopping: false,
                closed: false,
            }),
            work: Condvar::new(),
            changed: Condvar::new(),
        });
        let for_thread = shared.clone();
        let thread = thread::Builder::new()
            .name("vgpu-display".into())
            .stack_size(STACK_SIZE)
            .spawn(move || run(&for_thread))?;
        Ok(DisplaySender {
            shared,
            thread: Some(thread),
            next_seq: 0,
            max_payload: FRAME_BUFFER_BYTES,
        })
    }

    /// Whether the frontend offered (and we enabled) `VHOST_USER_GPU_PROTOCOL_F_EDID`; known once
    /// the handshake is done.
    pub fn edid_enabled(&self) -> bool {
        self.shared.lock().edid
    }

    /// False once the thread has ended.
    pub fn is_alive(&self) -> bool {
        let st = self.shared.lock();
        !st.closed && !st.stopping
    }

    fn post(&self, msg: Msg) -> Result<(), Stopped> {
        let (mut st, ()) = self
            .shared
            .wait_for(|st| (st.queue.len() < QUEUE_DEPTH).then_some(()))?;
        st.queue.push_back(msg);
        drop(st);
        self.shared.work.notify_one();
        Ok(())
    }

    fn take_buffer(&self, pool: Pool) -> Result<Vec<u8>, Stopped> {
        self.shared
            .wait_for(|st| st.pool(pool).pop())
            .map(|(_, buf)| buf)
    }

    fn give_back(&self, pool: Pool, buf: Vec<u8>) {
        self.shared.lock().pool(pool).push(buf);
    }

    /// Queues `VHOST_USER_GPU_SCANOUT`.
    pub fn scanout(&mut self, scanout_id: u32, width: u32, height: u32) -> Result<(), Stopped> {
        self.post(Msg::Plain(SCANOUT, Body::new(&[scanout_id, width, height])))
    }

    /// Queues `VHOST_USER_GPU_UPDATE`s carrying a copy of `pixels` (exactly `width * height * 4`
    /// bytes, rows tightly packed). Returns `Ok(false)` if the size does not match (nothing sent).
    pub fn update(&mut self, scanout_id: u32, rect: Rect, pixels: &[u8]) -> Result<bool, Stopped> {
        let expected = (rect.width as usize)
            .checked_mul(rect.height as usize)
            .and_then(|n| n.checked_mul(4));
        if expected != Some(pixels.len()) || pixels.is_empty() {
            return Ok(false);
        }
        let pitch = rect.width as usize * 4;
        // Columns per band (all of them unless one row exceeds a buffer), then rows per band.
        let max_cols = (self.max_payload / 4).max(1) as u32;
        let mut col = 0u32;
        while col < rect.width {
            let cols = (rect.width - col).min(max_cols);
            let col_bytes = cols as usize * 4;
            let band_rows = (self.max_payload / col_bytes).max(1) as u32;
            let mut row = 0u32;
            while row < rect.height {
                let rows = (rect.height - row).min(band_rows);
                let mut buf = self.take_buffer(Pool::Frames)?;
                buf.clear();
                let need = rows as usize * col_bytes;
                if buf.try_reserve(need).is_err() {
                    self.give_back(Pool::Frames, buf);
                    log::warn!("GPU socket: cannot allocate a {need}-byte update buffer");
                    return Ok(false);
                }
                let src0 = row as usize * pitch + col as usize * 4;
                if col_bytes == pitch {
                    if let Some(src) = pixels.get(src0..src0 + need) {
                        buf.extend_from_slice(src);
                    }
                } else {
                    for r in 0..rows as usize {
                        let at = src0 + r * pitch;
                        if let Some(src) = pixels.get(at..at + col_bytes) {
                            buf.extend_from_slice(src);
                        }
                    }
                }
                if buf.len() != need {
                    self.give_back(Pool::Frames, buf);
                    return Ok(false);
                }
                let body = Body::new(&[
                    scanout_id,
                    rect.x.saturating_add(col),
                    rect.y.saturating_add(row),
                    cols,
                    rows,
                ]);
                self.post(Msg::Payload(UPDATE, body, buf, Pool::Frames))?;
                row += rows;
            }
            col += cols;
        }
        Ok(true)
    }

    /// Queues `VHOST_USER_GPU_CURSOR_UPDATE` with a copy of the image.
    pub fn cursor_update(
        &mut self,
        pos: [u32; 3],
        hot_x: u32,
        hot_y: u32,
        image: &[u8; CURSOR_IMAGE_BYTES],
    ) -> Result<(), Stopped> {
        let mut buf = self.take_buffer(Pool::Cursors)?;
        buf.clear();
        buf.extend_from_slice(image);
        let [id, x, y] = pos;
        let body = Body::new(&[id, x, y, hot_x, hot_y]);
        self.post(Msg::Payload(CURSOR_UPDATE, body, buf, Pool::Cursors))
    }

    /// Queues `VHOST_USER_GPU_CURSOR_POS`.
    pub fn cursor_move(&mut self, pos: [u32; 3]) -> Result<(), Stopped> {
        self.post(Msg::Plain(CURSOR_POS, Body::new(&pos)))
    }

    /// Queues `VHOST_USER_GPU_CURSOR_POS_HIDE`.
    pub fn cursor_hide(&mut self, pos: [u32; 3]) -> Result<(), Stopped> {
        self.post(Msg::Plain(CURSOR_POS_HIDE, Body::new(&pos)))
    }

    /// Sends `query` after everything queued and waits for the answer; `Ok(None)` if the caller's
    /// wait ran out first (a late answer is then ignored).
    fn query(&mut self, query: Query) -> Result<Option<Reply>, Stopped> {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.post(Msg::Query(seq, query))?;
        match self
            .shared
            .wait_for(|st| (st.reply.0 == seq).then(|| st.reply.1.take()))
        {
            Ok((_, reply)) => Ok(reply),
            Err(Stopped) => Err(Stopped),
        }
    }

    /// Asks the frontend for its display configuration (`VHOST_USER_GPU_GET_DISPLAY_INFO`).
    pub fn display_info(
        &mut self,
    ) -> Result<Option<[DisplayOne; VIRTIO_GPU_MAX_SCANOUTS]>, Stopped> {
        match self.query(Query::DisplayInfo)? {
            Some(Reply::DisplayInfo(modes)) => Ok(modes.map(|m| *m)),
            _ => Ok(None),
        }
    }

    /// Asks the frontend for a scanout's EDID (`VHOST_USER_GPU_GET_EDID`), if it offered EDID.
    pub fn edid(&mut self, scanout_id: u32) -> Result<Option<Vec<u8>>, Stopped> {
        match self.query(Query::Edid(scanout_id))? {
            Some(Reply::Edid(edid)) => Ok(edid),
            _ => Ok(None),
        }
    }
}

/// Tells a test whether a sender's thread has ended and released everything it shared.
#[cfg(test)]
#[derive(Debug)]
pub struct SenderWatch(std::sync::Weak<Shared>);

#[cfg(test)]
impl SenderWatch {
    /// True once the sender was dropped and its thread joined.
    pub fn gone(&self) -> bool {
        self.0.upgrade().is_none()
    }
}

#[cfg(test)]
impl DisplaySender {
    /// A watch on this sender's thread.
    pub fn watch(&self) -> SenderWatch {
        SenderWatch(Arc::downgrade(&self.shared))
    }
}

impl Drop for DisplaySender {
    fn drop(&mut self) {
        self.shared.stop();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("GPU socket: the sender thread panicked");
            }
        }
    }
}

/// The sender thread: takes messages in order and writes them until told to stop or a failure.
fn run(shared: &Shared) {
    let mut wire = Wire {
        sock: &shared.sock,
        handshake_done: false,
        edid: false,
    };
    let mut reply_buf = [0u8; MAX_REPLY];
    loop {
        let msg = {
            let mut st = shared.lock();
            loop {
                if st.stopping {
                    break None;
                }
                if let Some(m) = st.queue.pop_front() {
                    break Some(m);
                }
                st = shared.work.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let Some(msg) = msg else { break };
        // A queue slot is free.
        shared.changed.notify_all();
        let had_handshake = wire.handshake_done;
        let result = wire.handle(msg, &mut reply_buf);
        let mut st = shared.lock();
        if wire.handshake_done && !had_handshake {
            st.edid = wire.edid;
        }
        let failed = match result {
            Ok(Done::Sent) => None,
            Ok(Done::Buffer(pool, buf)) => {
                st.pool(pool).push(buf);
                None
            }
            Ok(Done::Reply(seq, reply)) => {
                st.reply = (seq, Some(reply));
                None
            }
            Err(e) => Some(e),
        };
        let stopping = st.stopping;
        drop(st);
        shared.changed.notify_all();
        if let Some(e) = failed {
            if !stopping {
                log::warn!("GPU socket to the frontend failed ({e}); continuing headless");
            }
            break;
        }
    }
    let mut st = shared.lock();
    st.closed = true;
    st.queue.clear();
    drop(st);
    shared.changed.notify_all();
}

/// What handling one message left to give back.
enum Done {
    Sent,
    Buffer(Pool, Vec<u8>),
    Reply(u64, Reply),
}

/// The socket as the thread uses it: framing, handshake, replies.
struct Wire<'a> {
    sock: &'a UnixStream,
    handshake_done: bool,
    edid: bool,
}

impl Wire<'_> {
    fn handle(&mut self, msg: Msg, reply_buf: &mut [u8; MAX_REPLY]) -> io::Result<Done> {
        self.handshake(reply_buf)?;
        match msg {
            Msg::Plain(request, body) => {
                send_msg(self.sock, request, body.as_slice(), &[])?;
                Ok(Done::Sent)
            }
            Msg::Payload(request, body, buf, pool) => {
                send_msg(self.sock, request, body.as_slice(), &buf)?;
                Ok(Done::Buffer(pool, buf))
            }
            Msg::Query(seq, Query::DisplayInfo) => {
                send_msg(self.sock, GET_DISPLAY_INFO, &[], &[])?;
                let body = self.reply(GET_DISPLAY_INFO, reply_buf)?;
                Ok(Done::Reply(
                    seq,
                    Reply::DisplayInfo(parse_display_info(body).map(Box::new)),
                ))
            }
            Msg::Query(seq, Query::Edid(scanout_id)) => {
                if !self.edid {
                    return Ok(Done::Reply(seq, Reply::Edid(None)));
                }
                send_msg(
                    self.sock,
                    GET_EDID,
                    Body::new(&[scanout_id]).as_slice(),
                    &[],
                )?;
                let body = self.reply(GET_EDID, reply_buf)?;
                Ok(Done::Reply(seq, Reply::Edid(parse_edid(body))))
            }
        }
    }

    fn handshake(&mut self, reply_buf: &mut [u8; MAX_REPLY]) -> io::Result<()> {
        if self.handshake_done {
            return Ok(());
        }
        send_msg(self.sock, GET_PROTOCOL_FEATURES, &[], &[])?;
        let body = self.reply(GET_PROTOCOL_FEATURES, reply_buf)?;
        let offered = body
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| io::Error::other("short GET_PROTOCOL_FEATURES reply"))?;
        let wanted = offered & GPU_PROTOCOL_F_EDID;
        send_msg(self.sock, SET_PROTOCOL_FEATURES, &wanted.to_le_bytes(), &[])?;
        self.edid = wanted != 0;
        self.handshake_done = true;
        log::debug!(
            "GPU socket: frontend offers protocol features {offered:#x}, using {wanted:#x}"
        );
        Ok(())
    }

    /// Reads the reply to `request` into `buf`; returns its body.
    fn reply<'b>(&mut self, request: u32, buf: &'b mut [u8; MAX_REPLY]) -> io::Result<&'b [u8]> {
        let mut hdr = [0u8; HEADER_LEN];
        read_all(self.sock, &mut hdr)?;
        let word = |i: usize| {
            hdr.get(i * 4..i * 4 + 4)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_le_bytes)
        };
        let (req, flags, size) = (word(0), word(1), word(2) as usize);
        if req != request || flags & FLAG_REPLY == 0 || size > MAX_REPLY {
            return Err(io::Error::other(format!(
                "unexpected reply (request {req}, flags {flags:#x}, {size} bytes) to request {request}"
            )));
        }
        let body = buf
            .get_mut(..size)
            .ok_or_else(|| io::Error::other("reply too large"))?;
        read_all(self.sock, body)?;
        Ok(body)
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn parse_display_info(body: &[u8]) -> Option<[DisplayOne; VIRTIO_GPU_MAX_SCANOUTS]> {
    if body.len() < CTRL_HDR_LEN + VIRTIO_GPU_MAX_SCANOUTS * DISPLAY_ONE_LEN
        || le32(body, 0) != VIRTIO_GPU_RESP_OK_DISPLAY_INFO
    {
        return None;
    }
    let mut modes = [DisplayOne::default(); VIRTIO_GPU_MAX_SCANOUTS];
    for (i, m) in modes.iter_mut().enumerate() {
        let at = CTRL_HDR_LEN + i * DISPLAY_ONE_LEN;
        *m = DisplayOne {
            r: Rect {
                x: le32(body, at),
                y: le32(body, at + 4),
                width: le32(body, at + 8),
                height: le32(body, at + 12),
            },
            enabled: le32(body, at + 16),
            flags: le32(body, at + 20),
        };
    }
    Some(modes)
}

fn parse_edid(body: &[u8]) -> Option<Vec<u8>> {
    if le32(body, 0) != VIRTIO_GPU_RESP_OK_EDID {
        return None;
    }
    let data = body.get(CTRL_HDR_LEN + 8..)?;
    let len = (le32(body, CTRL_HDR_LEN) as usize).min(data.len());
    data.get(..len).map(<[u8]>::to_vec)
}

/// `read_exact` that names a timeout as such.
fn read_all(mut sock: &UnixStream, buf: &mut [u8]) -> io::Result<()> {
    sock.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no reply within {REPLY_TIMEOUT:?}"),
        ),
        _ => e,
    })
}

/// Writes one message (header, body, payload) with as few `sendmsg` calls as the socket allows.
fn send_msg(sock: &UnixStream, request: u32, body: &[u8], payload: &[u8]) -> io::Result<()> {
    let size = body
        .len()
        .checked_add(payload.len())
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| io::Error::other("message too large"))?;
    let mut hdr = [0u8; HEADER_LEN];
    hdr[0..4].copy_from_slice(&request.to_le_bytes());
    hdr[8..12].copy_from_slice(&size.to_le_bytes());
    let parts: [&[u8]; 3] = [&hdr, body, payload];
    let total = HEADER_LEN + size as usize;
    let mut sent = 0usize;
    while sent < total {
        // Build the iovecs of what is left.
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 3];
        let mut n_iov = 0;
        let mut skip = sent;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            let rest = part.get(skip..).unwrap_or_default();
            skip = 0;
            if let Some(v) = iov.get_mut(n_iov) {
                v.iov_base = rest.as_ptr() as *mut libc::c_void;
                v.iov_len = rest.len();
                n_iov += 1;
            }
        }
        // SAFETY: an all-zero msghdr is valid; we then point it at our iovecs.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = iov.as_mut_ptr();
        mh.msg_iovlen = n_iov as _;
        // SAFETY: the iovecs point into live slices, which sendmsg only reads.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &mh, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the frontend read nothing for {SEND_TIMEOUT:?}"),
                    ))
                }
                _ => return Err(e),
            }
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "socket closed"));
        }
        sent += n as usize;
    }
    Ok(())
}

#[cfg(test)]
#[path = "display_sender_tests.rs"]
mod tests;
