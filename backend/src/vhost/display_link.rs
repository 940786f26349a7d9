//! A VM's GPU socket driven from a thread of its own, so a stalled or slow QEMU display never
//! blocks the VM's control queue.
//!
//! The `vhost` crate's `GpuBackend` keeps its socket to itself (no descriptor, so no socket
//! timeouts), and its calls block until QEMU reads or replies. [`DisplayLink`] therefore runs every
//! call on a per-VM display thread and bounds how long the queue worker waits for it:
//!
//! - messages without a reply (SCANOUT, UPDATE, cursor) are queued, up to
//!   [`DisplayTimeouts::max_pending_bytes`]; when the queue is full the worker waits at most
//!   [`DisplayTimeouts::send`] for room;
//! - GET_DISPLAY_INFO waits at most [`DisplayTimeouts::reply`] for its answer.
//!
//! A wait that runs out marks the display **stalled**: for at least
//! [`DisplayTimeouts::headless_for`] the VM runs headless (nothing is queued, display info comes
//! from the device). Once that time is over and the display thread has sent everything it held,
//! the display **recovers**: [`DisplayLink::take_redraw`] tells the glue to send every scanout
//! again, so QEMU shows the current contents. A socket error ends the link for good (until QEMU
//! hands over a new socket). Each VM has its own link and thread: other VMs never notice.

use std::collections::VecDeque;
use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use vgpu_protocol::virtio_gpu::{DisplayOne, Rect, VIRTIO_GPU_MAX_SCANOUTS};
use vhost::vhost_user::gpu_message::VhostUserGpuCursorPos;
use vhost::vhost_user::GpuBackend;

use super::display::GpuSocketDisplay;
use crate::device::CURSOR_IMAGE_BYTES;

/// Stack of a display thread (it only formats and sends messages).
const DISPLAY_THREAD_STACK: usize = 256 << 10;
/// Pixel buffers kept for reuse per VM.
const SPARE_BUFFERS: usize = 2;

/// How long the VM waits for its display, and for how long a stalled display is left alone.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DisplayTimeouts {
    /// Longest wait for room in the queue of messages to the display.
    pub send: Duration,
    /// Longest wait for a reply (GET_DISPLAY_INFO).
    pub reply: Duration,
    /// How long a stalled display stays headless before it is tried again.
    pub headless_for: Duration,
    /// Most pixel bytes queued for the display thread.
    pub max_pending_bytes: usize,
}

impl Default for DisplayTimeouts {
    fn default() -> Self {
        DisplayTimeouts {
            send: Duration::from_secs(2),
            reply: Duration::from_secs(2),
            headless_for: Duration::from_secs(5),
            max_pending_bytes: 32 << 20,
        }
    }
}

type Modes = [DisplayOne; VIRTIO_GPU_MAX_SCANOUTS];

/// One request for the display thread.
enum Msg {
    Scanout(u32, u32, u32),
    Update(u32, Rect, Vec<u8>),
    CursorUpdate(
        VhostUserGpuCursorPos,
        u32,
        u32,
        Box<[u8; CURSOR_IMAGE_BYTES]>,
    ),
    CursorMove(VhostUserGpuCursorPos),
    CursorHide(VhostUserGpuCursorPos),
    DisplayInfo(mpsc::SyncSender<Option<Modes>>),
}

impl Msg {
    fn bytes(&self) -> usize {
        match self {
            Msg::Update(_, _, px) => px.len(),
            Msg::CursorUpdate(..) => CURSOR_IMAGE_BYTES,
            _ => 0,
        }
    }
}

#[derive(Default)]
struct Queue {
    msgs: VecDeque<Msg>,
    bytes: usize,
    /// The thread is inside a socket call.
    busy: bool,
    /// The socket failed: the link is over.
    failed: bool,
    /// The link was dropped: the thread ends after its current call.
    closed: bool,
    spare: Vec<Vec<u8>>,
}

struct Shared {
    queue: Mutex<Queue>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the link can do right now.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Messages go to the display.
    Ready,
    /// The display stalled recently: the VM runs headless for now.
    Stalled,
    /// The socket failed: headless until a new socket.
    Failed,
}

/// The queue worker's end of a VM's display thread.
pub struct DisplayLink {
    name: String,
    shared: Arc<Shared>,
    timeouts: DisplayTimeouts,
    stalled_since: Option<Instant>,
    redraw: bool,
    stalls: u64,
}

impl DisplayLink {
    /// Starts the display thread of VM `name` on `gpu`.
    pub fn spawn(gpu: GpuBackend, name: &str, timeouts: DisplayTimeouts) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            cond: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let label = name.to_string();
        thread::Builder::new()
            .name(format!("{}{name}", crate::sandbox::DISPLAY_THREAD_PREFIX))
            .stack_size(DISPLAY_THREAD_STACK)
            .spawn(move || {
                crate::sandbox::enter(crate::sandbox::ThreadKind::Display);
                display_thread(GpuSocketDisplay::new(gpu), &s, &label)
            })?;
        Ok(DisplayLink {
            name: name.to_string(),
            shared,
            timeouts,
            stalled_since: None,
            redraw: false,
            stalls: 0,
        })
    }

    /// Times the display stalled so far.
    pub fn stalls(&self) -> u64 {
        self.stalls
    }

    /// True once after the display recovered from a stall: every scanout must be sent again.
    pub fn take_redraw(&mut self) -> bool {
        std::mem::take(&mut self.redraw)
    }

    /// Where the link stands (a stalled display recovers here once its time is over and its
    /// thread is idle again).
    pub fn state(&mut self) -> LinkState {
        let q = self.shared.lock();
        if q.failed {
            return LinkState::Failed;
        }
        let Some(since) = self.stalled_since else {
            return LinkState::Ready;
        };
        if since.elapsed() < self.timeouts.headless_for || q.busy || !q.msgs.is_empty() {
            return LinkState::Stalled;
        }
        drop(q);
        self.stalled_since = None;
        self.redraw = true;
        log::info!(
            "{}: display responds again; showing the scanouts again",
            self.name
        );
        LinkState::Ready
    }

    fn stall(&mut self, what: &str) {
        self.stalled_since = Some(Instant::now());
        self.stalls += 1;
        log::warn!(
            "{}: display did not take {what} in time; headless for at least {:?}",
            self.name,
            self.timeouts.headless_for
        );
    }

    /// Queues `msg`, waiting at most the send timeout for room. False if it was not queued.
    fn send(&mut self, msg: Msg) -> bool {
        if self.state() != LinkState::Ready {
            return false;
        }
        let bytes = msg.bytes();
        let deadline = Instant::now() + self.timeouts.send;
        let mut q = self.shared.lock();
        // A message larger than the limit is still sent once the queue is empty.
        while !q.failed
            && !q.msgs.is_empty()
            && q.bytes.saturating_add(bytes) > self.timeouts.max_pending_bytes
        {
            let now = Instant::now();
            if now >= deadline {
                drop(q);
                self.stall("an update");
                return false;
            }
            q = self
                .shared
                .cond
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if q.failed {
            return false;
        }
        q.bytes = q.bytes.saturating_add(bytes);
        q.msgs.push_back(msg);
        drop(q);
        self.shared.cond.notify_all();
        true
    }

    /// A copy of `pixels` in a buffer reused when one is spare.
    fn buffer(&self, pixels: &[u8]) -> Vec<u8> {
        let mut buf = self.shared.lock().spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(pixels);
        buf
    }

    /// Queues SCANOUT.
    pub fn scanout(&mut self, scanout_id: u32, width: u32, height: u32) -> bool {
        self.send(Msg::Scanout(scanout_id, width, height))
    }

    /// Queues UPDATE with a copy of its pixels.
    pub fn update(&mut self, scanout_id: u32, rect: Rect, pixels: &[u8]) -> bool {
        if self.state() != LinkState::Ready {
            return false;
        }
        let buf = self.buffer(pixels);
        self.send(Msg::Update(scanout_id, rect, buf))
    }

    /// Queues UPDATE with `pixels` itself (no copy); returns a spare buffer (or `pixels`, when
    /// the display is not ready) for the caller's next update.
    pub fn update_owned(&mut self, scanout_id: u32, rect: Rect, pixels: Vec<u8>) -> Vec<u8> {
        if self.state() != LinkState::Ready {
            return pixels;
        }
        let spare = self.shared.lock().spare.pop().unwrap_or_default();
        self.send(Msg::Update(scanout_id, rect, pixels));
        spare
    }

    /// Queues CURSOR_UPDATE.
    pub fn cursor_update(
        &mut self,
        pos: VhostUserGpuCursorPos,
        hot_x: u32,
        hot_y: u32,
        image: &[u8; CURSOR_IMAGE_BYTES],
    ) -> bool {
        self.send(Msg::CursorUpdate(pos, hot_x, hot_y, Box::new(*image)))
    }

    /// Queues CURSOR_POS.
    pub fn cursor_move(&mut self, pos: VhostUserGpuCursorPos) -> bool {
        self.send(Msg::CursorMove(pos))
    }

    /// Queues CURSOR_POS_HIDE.
    pub fn cursor_hide(&mut self, pos: VhostUserGpuCursorPos) -> bool {
        self.send(Msg::CursorHide(pos))
    }

    /// Asks the display for its configuration, waiting at most the reply timeout.
    pub fn display_info(&mut self) -> Option<Modes> {
        let (tx, rx) = mpsc::sync_channel(1);
        if !self.send(Msg::DisplayInfo(tx)) {
            return None;
        }
        match rx.recv_timeout(self.timeouts.reply) {
            Ok(modes) => modes,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.stall("GET_DISPLAY_INFO");
                None
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
        }
    }
}

impl Drop for DisplayLink {
    fn drop(&mut self) {
        // The thread ends after the call it is in; a call blocked on a frontend that never reads
        // ends when the frontend closes its end (it does when it hands over a new socket or
        // stops).
        let mut q = self.shared.lock();
        q.closed = true;
        q.msgs.clear();
        drop(q);
        self.shared.cond.notify_all();
    }
}

/// The display thread: sends queued messages in order until the link is dropped or the socket
/// fails.
fn display_thread(mut socket: GpuSocketDisplay, shared: &Shared, name: &str) {
    loop {
        let mut q = shared.lock();
        while q.msgs.is_empty() && !q.closed {
            q = shared.cond.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
        if q.closed {
            return;
        }
        let Some(msg) = q.msgs.pop_front() else {
            continue;
        };
        q.busy = true;
        drop(q);
        let bytes = msg.bytes();
        let (result, buf) = run(&mut socket, msg);
        let mut q = shared.lock();
        q.busy = false;
        q.bytes = q.bytes.saturating_sub(bytes);
        if let Some(buf) = buf {
            if q.spare.len() < SPARE_BUFFERS {
                q.spare.push(buf);
            }
        }
        if let Err(e) = result {
            if !q.closed {
                log::warn!("{name}: GPU socket to the frontend failed ({e}); continuing headless");
            }
            q.failed = true;
            q.msgs.clear();
            q.bytes = 0;
            drop(q);
            shared.cond.notify_all();
            return;
        }
        drop(q);
        shared.cond.notify_all();
    }
}

/// Runs one message; gives back an UPDATE's pixel buffer for reuse.
fn run(socket: &mut GpuSocketDisplay, msg: Msg) -> (io::Result<()>, Option<Vec<u8>>) {
    match msg {
        Msg::Scanout(id, w, h) => (socket.scanout(id, w, h), None),
        Msg::Update(id, rect, px) => {
            let r = socket.update(id, rect, &px).map(|_| ());
            (r, Some(px))
        }
        Msg::CursorUpdate(pos, hx, hy, image) => (socket.cursor_update(pos, hx, hy, &image), None),
        Msg::CursorMove(pos) => (socket.cursor_move(pos), None),
        Msg::CursorHide(pos) => (socket.cursor_hide(pos), None),
        Msg::DisplayInfo(reply) => match socket.display_info() {
            Ok(modes) => {
                // The asker may have given up (timed out): nothing to do then.
                let _ = reply.try_send(modes);
                (Ok(()), None)
            }
            Err(e) => (Err(e), None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn timeouts() -> DisplayTimeouts {
        DisplayTimeouts {
            send: Duration::from_millis(200),
            reply: Duration::from_millis(200),
            headless_for: Duration::from_millis(300),
            max_pending_bytes: 64 << 10,
        }
    }

    fn read_msg(s: &mut UnixStream) -> (u32, Vec<u8>) {
        let mut hdr = [0u8; 12];
        s.read_exact(&mut hdr).unwrap();
        let req = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
        let mut body = vec![0u8; size];
        s.read_exact(&mut body).unwrap();
        (req, body)
    }

    fn answer_handshake(qemu: &mut UnixStream) {
        assert_eq!(read_msg(qemu).0, 1);
        let mut reply = Vec::new();
        for v in [1u32, 0x4, 8] {
            reply.extend_from_slice(&v.to_le_bytes());
        }
        reply.extend_from_slice(&1u64.to_le_bytes());
        qemu.write_all(&reply).unwrap();
        assert_eq!(read_msg(qemu).0, 2);
    }

    /// A frontend that stops reading: the worker's calls return within the timeouts, the link
    /// goes headless, and once the frontend reads again (and the headless time is over) it
    /// recovers and asks for a redraw.
    #[test]
    fn stalled_display_goes_headless_and_recovers() {
        let (ours, mut qemu) = UnixStream::pair().unwrap();
        let mut link = DisplayLink::spawn(GpuBackend::from_stream(ours), "t", timeouts()).unwrap();
        let px = vec![7u8; 256 * 256 * 4];
        let rect = Rect {
            x: 0,
            y: 0,
            width: 256,
            height: 256,
        };
        // Nobody reads: the socket buffer and then the queue fill; each call still returns.
        let mut refused = 0;
        for _ in 0..8 {
            if !link.update(0, rect, &px) {
                refused += 1;
            }
        }
        assert!(
            refused > 0,
            "a full queue must be refused, not waited on forever"
        );
        assert_eq!(link.state(), LinkState::Stalled);
        assert_eq!(link.stalls(), 1);
        assert!(link.display_info().is_none(), "headless while stalled");
        // The frontend reads again: everything queued arrives (handshake first).
        let reader = thread::spawn(move || {
            answer_handshake(&mut qemu);
            let mut updates = 0;
            loop {
                let (req, _) = read_msg(&mut qemu);
                if req == 8 {
                    updates += 1;
                }
                if req == 7 {
                    return (updates, qemu);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while link.state() != LinkState::Ready {
            assert!(Instant::now() < deadline, "never recovered");
            thread::sleep(Duration::from_millis(10));
        }
        assert!(link.take_redraw());
        assert!(!link.take_redraw());
        assert!(link.scanout(0, 256, 256));
        let (updates, _qemu) = reader.join().unwrap();
        assert!(updates >= 1 && updates <= 8 - refused, "{updates} updates");
    }

    /// An owned update is sent as given (no copy on the way), and the buffers come back for
    /// reuse once sent.
    #[test]
    fn owned_updates_arrive_and_their_buffers_are_reused() {
        let (ours, mut qemu) = UnixStream::pair().unwrap();
        let mut link = DisplayLink::spawn(GpuBackend::from_stream(ours), "t", timeouts()).unwrap();
        let reader = thread::spawn(move || {
            answer_handshake(&mut qemu);
            (0..3).map(|_| read_msg(&mut qemu)).collect::<Vec<_>>()
        });
        let rect = Rect {
            x: 3,
            y: 4,
            width: 2,
            height: 1,
        };
        let mut next = Vec::new();
        for i in 0..3u8 {
            let mut px = std::mem::take(&mut next);
            px.clear();
            px.extend_from_slice(&[i; 8]);
            next = link.update_owned(0, rect, px);
        }
        let msgs = reader.join().unwrap();
        for (i, (req, body)) in msgs.iter().enumerate() {
            assert_eq!(*req, 8, "UPDATE");
            // scanout id, x, y, width, height, then the pixels.
            assert_eq!(&body[4..8], &3u32.to_le_bytes());
            assert_eq!(&body[20..], &[i as u8; 8]);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while link.shared.lock().spare.is_empty() {
            assert!(Instant::now() < deadline, "sent buffers never came back");
            thread::sleep(Duration::from_millis(10));
        }
        let spare = link.update_owned(0, rect, vec![9; 8]);
        assert!(spare.capacity() >= 8, "a sent buffer is handed out again");
    }

    #[test]
    fn socket_error_ends_the_link() {
        let (ours, qemu) = UnixStream::pair().unwrap();
        let mut link = DisplayLink::spawn(GpuBackend::from_stream(ours), "t", timeouts()).unwrap();
        drop(qemu);
        link.scanout(0, 1, 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        while link.state() != LinkState::Failed {
            assert!(Instant::now() < deadline, "never failed");
            thread::sleep(Duration::from_millis(10));
        }
        assert!(!link.scanout(0, 1, 1));
    }
}
