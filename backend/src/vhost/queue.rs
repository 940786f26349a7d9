//! The virtqueue worker: turns available descriptor chains into requests for the device and writes
//! the responses back.
//!
//! For every chain the readable part is copied into a reusable request buffer (bounded by
//! [`MAX_READABLE_LEN`]), decoded once with [`vgpu_protocol::decode_request`], handed to a
//! [`CommandSink`], and the response is encoded into a reusable buffer and scattered over the
//! chain's writable descriptors. Malformed chains are answered with `ERR_UNSPEC` where there is room
//! for an answer, and always returned to the guest: nothing a guest writes into a ring can make the
//! worker panic or stop serving the other chains.
//!
//! The ring lock is held only to pop a chain and to publish its used entry, never while the device
//! runs: a device blocked on the display socket then cannot stop the vhost-user handler thread from
//! stopping the ring (`GET_VRING_BASE`), which would deadlock with a frontend waiting for that reply.

use std::mem::size_of;
use std::sync::Arc;

use thiserror::Error;
use vgpu_protocol::command::{read_obj, MAX_MEM_ENTRIES, MAX_SUBMIT_SIZE};
use vgpu_protocol::response::{response_header, MAX_CAPSET_SIZE};
use vgpu_protocol::virtio_gpu::{CtrlHeader, MemEntry, VIRTIO_GPU_RESP_ERR_UNSPEC};
use vgpu_protocol::{decode_request, Request};
use vhost_user_backend::{VringState, VringT};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryMmap,
};

use super::completion::CompletionQueue;
use super::inflight::{classify, EntryState, Inflight};
use crate::device::{CtrlOutcome, GuestLog};
use vgpu_protocol::virtio_gpu::{VIRTIO_GPU_FLAG_FENCE, VIRTIO_GPU_RESP_OK_NODATA};

/// Largest readable part of a chain we accept: a header, the largest memory-entry list
/// (`MAX_MEM_ENTRIES` entries, 256 KiB) and the largest SUBMIT_3D stream.
pub const MAX_READABLE_LEN: usize = size_of::<CtrlHeader>()
    + MAX_MEM_ENTRIES as usize * size_of::<MemEntry>()
    + MAX_SUBMIT_SIZE as usize;

/// Largest response the device writes: a header and the largest capset.
pub const MAX_RESPONSE_LEN: usize = size_of::<CtrlHeader>() + MAX_CAPSET_SIZE;

/// Writable descriptors remembered per chain; more cannot be needed for [`MAX_RESPONSE_LEN`] bytes
/// unless they are tiny, and a response that does not fit is truncated.
const MAX_WRITABLE_DESCS: usize = 64;

/// The guest memory type the daemon maps.
pub type GuestMemory = GuestMemoryMmap<()>;
/// The atomic guest memory handle shared with vhost-user-backend.
pub type GuestMemoryHandle = GuestMemoryAtomic<GuestMemory>;

/// Most request bytes a VM's deferred requests may hold before the worker stops taking chains off
/// the ring (they wait in the ring, in guest memory, until running jobs finish). Bounds what a
/// guest can make the host copy: without it 256 deferred 1 MiB SUBMIT_3D would hold 256 MiB.
pub const MAX_DEFERRED_BYTES: usize = 4 << 20;

/// Why a descriptor chain could not be read as a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ChainError {
    /// The readable part is longer than [`MAX_READABLE_LEN`].
    #[error("readable part longer than {MAX_READABLE_LEN} bytes")]
    TooLong,
    /// A descriptor points outside guest memory.
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory {
        /// Guest address of the descriptor.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A device-readable descriptor follows a device-writable one.
    #[error("readable descriptor after a writable one")]
    ReadableAfterWritable,
}

/// Errors that stop the worker from serving a queue until it is kicked again.
#[derive(Debug, Error)]
pub enum QueueError {
    /// The ring itself is unusable (bad avail index, unmapped used ring, ...).
    #[error("virtqueue: {0}")]
    Ring(#[from] virtio_queue::Error),
    /// Signalling the frontend failed.
    #[error("signalling used queue: {0}")]
    Signal(#[from] std::io::Error),
}

/// Which of the two virtio-gpu queues a worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// The control queue (index 0): every request gets a response.
    Control,
    /// The cursor queue (index 1): requests get no response.
    Cursor,
}

/// What the worker hands decoded requests to. Implementors lock their own per-VM state.
pub trait CommandSink {
    /// Runs a control-queue request: either writes its response into `resp`
    /// ([`CtrlOutcome::Done`]) or starts a job whose completion is reported with `token`
    /// ([`CtrlOutcome::Pending`]).
    fn control(
        &self,
        mem: &GuestMemory,
        req: &Request<'_>,
        resp: &mut [u8],
        token: u64,
    ) -> CtrlOutcome;
    /// Runs a cursor-queue request.
    fn cursor(&self, req: &Request<'_>);
}

/// The reusable buffers of one chain: the copied request and where its response goes.
#[derive(Debug, Default)]
pub struct ChainBuffers {
    request: Vec<u8>,
    writable: Vec<(GuestAddress, usize)>,
    writable_len: usize,
}

impl ChainBuffers {
    /// Empty buffers; they grow on first use and are then reused.
    pub fn new() -> Self {
        ChainBuffers {
            request: Vec::new(),
            writable: Vec::with_capacity(MAX_WRITABLE_DESCS),
            writable_len: 0,
        }
    }

    /// Copies the readable part of `descs` into the request buffer and records the writable
    /// descriptors. On error the writable descriptors seen are still recorded, so that the chain
    /// can be answered.
    pub fn gather<M, I>(&mut self, mem: &M, descs: I) -> Result<(), ChainError>
    where
        M: GuestMemoryBackend,
        I: IntoIterator<Item = Descriptor>,
    {
        self.request.clear();
        self.writable.clear();
        self.writable_len = 0;
        let mut result = Ok(());
        let mut writable_ok = true;
        for desc in descs {
            let (addr, len) = (desc.addr(), desc.len());
            let outside = ChainError::OutsideMemory { addr: addr.0, len };
            let ulen = len as usize;
            if desc.is_write_only() {
                if !writable_ok || ulen == 0 {
                    continue;
                }
                if !mem.check_range(addr, ulen) {
                    // The response must stay contiguous: stop at the first bad descriptor.
                    writable_ok = false;
                    result = result.and(Err(outside));
                    continue;
                }
                if self.writable.len() < MAX_WRITABLE_DESCS && self.writable_len < MAX_RESPONSE_LEN
                {
                    self.writable.push((addr, ulen));
                    self.writable_len = self.writable_len.saturating_add(ulen);
                }
                continue;
            }
            if !self.writable.is_empty() || !writable_ok {
                result = result.and(Err(ChainError::ReadableAfterWritable));
                continue;
            }
            if result.is_err() || ulen == 0 {
                continue;
            }
            let start = self.request.len();
            let end = match start.checked_add(ulen) {
                Some(end) if end <= MAX_READABLE_LEN => end,
                _ => {
                    result = Err(ChainError::TooLong);
                    continue;
                }
            };
            self.request.resize(end, 0);
            let read = self
                .request
                .get_mut(start..end)
                .map(|dst| mem.read_slice(dst, addr));
            if !matches!(read, Some(Ok(()))) {
                self.request.truncate(start);
                result = Err(outside);
            }
        }
        result
    }

    /// The request bytes gathered by the last [`ChainBuffers::gather`].
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// Total writable bytes recorded (bounded by what a response can need).
    pub fn writable_len(&self) -> usize {
        self.writable_len
    }

    /// True if the chain has somewhere to put a response.
    pub fn has_writable(&self) -> bool {
        !self.writable.is_empty()
    }

    /// Copies the writable descriptors recorded for this chain into `out` (for a held request).
    pub fn copy_writable(&self, out: &mut Vec<(GuestAddress, usize)>) {
        out.clear();
        out.extend_from_slice(&self.writable);
    }

    /// Writes `data` across the writable descriptors in order; returns the bytes written, which is
    /// less than `data.len()` if the writable space is too small.
    pub fn scatter<M: GuestMemoryBackend>(&self, mem: &M, data: &[u8]) -> usize {
        scatter(mem, &self.writable, data)
    }
}

/// Writes `data` across `writable` in order; returns the bytes written.
pub fn scatter<M: GuestMemoryBackend>(
    mem: &M,
    writable: &[(GuestAddress, usize)],
    data: &[u8],
) -> usize {
    let mut done = 0;
    for &(addr, len) in writable {
        let Some(rest) = data.get(done..) else { break };
        if rest.is_empty() {
            break;
        }
        let n = len.min(rest.len());
        let Some(chunk) = rest.get(..n) else { break };
        if mem.write_slice(chunk, addr).is_err() {
            break;
        }
        done += n;
    }
    done
}

/// Serves one virtqueue: reusable buffers plus the loop over available chains.
#[derive(Debug)]
pub struct QueueWorker {
    kind: QueueKind,
    chain: ChainBuffers,
    response: Vec<u8>,
    notify_on_empty: bool,
    inflight: Inflight,
    done: Vec<(u64, bool)>,
    /// The last drain stopped taking chains because deferred requests hold too many bytes; the
    /// next completion resumes it.
    throttled: bool,
    /// The VM's limiter for guest-caused log lines.
    log: Arc<GuestLog>,
}

impl QueueWorker {
    /// A worker for a queue of `kind`.
    pub fn new(kind: QueueKind) -> Self {
        QueueWorker {
            kind,
            chain: ChainBuffers::new(),
            response: vec![0; MAX_RESPONSE_LEN],
            notify_on_empty: false,
            inflight: Inflight::default(),
            done: Vec::new(),
            throttled: false,
            log: Arc::new(GuestLog::new(format!("{kind:?} queue"))),
        }
    }

    /// Logs guest mistakes through `log` (the VM's limiter).
    pub fn set_guest_log(&mut self, log: Arc<GuestLog>) {
        self.log = log;
    }

    /// Requests taken from the ring and not yet returned (running, held or deferred).
    pub fn inflight(&self) -> &Inflight {
        &self.inflight
    }

    /// Forgets every held request (device reset or disconnect: the rings are reset with it).
    pub fn reset_inflight(&mut self) {
        self.inflight.clear();
        self.throttled = false;
    }

    /// Answers the jobs reported in `completions`, runs the requests that waited for them, and
    /// returns every response fence order allows.
    pub fn complete<V, S>(
        &mut self,
        vring: &V,
        mem: &GuestMemory,
        sink: &S,
        completions: &CompletionQueue,
    ) -> Result<(), QueueError>
    where
        V: VringT<GuestMemoryHandle>,
        S: CommandSink + ?Sized,
    {
        completions.take_into(&mut self.done);
        for &(token, ok) in &self.done {
            let type_ = if ok {
                VIRTIO_GPU_RESP_OK_NODATA
            } else {
                VIRTIO_GPU_RESP_ERR_UNSPEC
            };
            self.inflight.complete(token, |e, resp| {
                resp.clear();
                resp.extend_from_slice(response_header(&e.hdr, type_).as_slice());
            });
        }
        self.pump(vring, mem, sink)?;
        if self.throttled {
            // Chains were left in the ring while deferred requests held too many bytes.
            self.drain(vring, mem, sink)?;
        }
        Ok(())
    }

    /// True when deferred requests hold [`MAX_DEFERRED_BYTES`] or more while jobs still run (a
    /// completion will come and resume the drain); with no job running they can all run now.
    fn over_deferred_limit(&self) -> bool {
        self.kind == QueueKind::Control
            && self.inflight.running() > 0
            && self.inflight.has_deferred()
            && self.inflight.deferred_bytes() >= MAX_DEFERRED_BYTES
    }

    /// Runs deferred requests that may run now and returns what fence order lets go.
    fn pump<V, S>(&mut self, vring: &V, mem: &GuestMemory, sink: &S) -> Result<(), QueueError>
    where
        V: VringT<GuestMemoryHandle>,
        S: CommandSink + ?Sized,
    {
        while let Some(i) = self.inflight.next_runnable() {
            let token = self.inflight.token();
            let Some(e) = self.inflight.get_mut(i) else {
                break;
            };
            let request = std::mem::take(&mut e.request);
            // The device sees only the room the chain has, so an answer that does not fit
            // becomes ERR_UNSPEC instead of a truncated OK.
            let room = e.writable.iter().map(|w| w.1).sum::<usize>();
            let room = room.min(self.response.len());
            let outcome = match decode_request(&request) {
                Ok(req) => sink.control(mem, &req, &mut self.response[..room], token),
                Err(err) => {
                    let hdr = response_header(&e.hdr, err.response_type());
                    let bytes = hdr.as_slice();
                    let n = bytes.len().min(self.response.len());
                    if let (Some(d), Some(s)) = (self.response.get_mut(..n), bytes.get(..n)) {
                        d.copy_from_slice(s);
                    }
                    CtrlOutcome::Done(n)
                }
            };
            let Some(e) = self.inflight.get_mut(i) else {
                break;
            };
            e.request = request;
            match outcome {
                CtrlOutcome::Done(n) => {
                    let data = self.response.get(..n).unwrap_or_default();
                    e.response.clear();
                    e.response.extend_from_slice(data);
                    e.set_state(EntryState::Ready(data.len()));
                }
                CtrlOutcome::Pending => self.inflight.mark_running(i, token),
            }
        }
        if self.inflight.is_empty() || !Self::ready(vring) {
            return Ok(());
        }
        let mut state = vring.get_mut();
        let mut result = Ok(());
        let released = self.inflight.release(|e| {
            let written = scatter(mem, &e.writable, &e.response);
            let len = u32::try_from(written).unwrap_or(0);
            if let Err(err) = state.get_queue_mut().add_used(mem, e.head, len) {
                result = Err(err);
            }
        });
        result?;
        if released > 0 {
            Self::notify(&mut state, mem, false)?;
        }
        Ok(())
    }

    /// Whether `VIRTIO_F_NOTIFY_ON_EMPTY` was negotiated.
    pub fn set_notify_on_empty(&mut self, on: bool) {
        self.notify_on_empty = on;
    }

    /// Serves every available chain of `vring`, with notifications disabled while draining and
    /// re-checked after re-enabling them so that no kick is lost. Spurious calls find nothing.
    pub fn drain<V, S>(&mut self, vring: &V, mem: &GuestMemory, sink: &S) -> Result<(), QueueError>
    where
        V: VringT<GuestMemoryHandle>,
        S: CommandSink + ?Sized,
    {
        if !Self::ready(vring) {
            return Ok(());
        }
        let mut used_any = false;
        self.throttled = false;
        'outer: loop {
            vring.get_mut().get_queue_mut().disable_notification(mem)?;
            loop {
                if self.over_deferred_limit() {
                    // Leave the rest in the ring (notifications stay off); the completion of a
                    // running job resumes the drain.
                    self.throttled = true;
                    break 'outer;
                }
                let (chain, size) = {
                    let mut state = vring.get_mut();
                    let queue = state.get_queue_mut();
                    let size = queue.size();
                    (queue.iter(mem)?.next(), size)
                };
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                if head >= size {
                    // No descriptor has that index, so it cannot be returned in the used ring
                    // (virtio-queue would log an error per kick): skip the entry.
                    self.log.warn(format_args!(
                        "{:?} queue: available ring entry names descriptor {head} of a \
                         {size}-entry queue; ignored",
                        self.kind
                    ));
                    continue;
                }
                let len = match self.kind {
                    QueueKind::Control => match self.serve_control(mem, head, chain, sink) {
                        Some(len) => len,
                        None => continue,
                    },
                    QueueKind::Cursor => self.serve_chain(mem, chain, sink),
                };
                let mut state = vring.get_mut();
                // The frontend may have stopped the ring while the device ran.
                if !state.get_queue().ready() {
                    return Ok(());
                }
                state.get_queue_mut().add_used(mem, head, len)?;
                used_any = true;
                Self::notify(&mut state, mem, false)?;
            }
            if !vring.get_mut().get_queue_mut().enable_notification(mem)? {
                break;
            }
        }
        if used_any && self.notify_on_empty {
            let mut state = vring.get_mut();
            if !state.get_queue().event_idx_enabled() {
                Self::notify(&mut state, mem, true)?;
            }
        }
        if self.kind == QueueKind::Control {
            self.pump(vring, mem, sink)?;
        }
        Ok(())
    }

    /// Serves one control chain. `Some(len)`: return it now with `len` bytes written; `None`:
    /// it is held (running on the driver, waiting for fence order, or deferred).
    pub fn serve_control<S, I>(
        &mut self,
        mem: &GuestMemory,
        head: u16,
        descs: I,
        sink: &S,
    ) -> Option<u32>
    where
        S: CommandSink + ?Sized,
        I: IntoIterator<Item = Descriptor>,
    {
        let gathered = self.chain.gather(mem, descs);
        let hdr = read_obj::<CtrlHeader>(self.chain.request()).unwrap_or_default();
        let resp_len = match gathered {
            Err(e) => {
                self.log
                    .warn(format_args!("control queue: malformed chain: {e}"));
                self.error_response(VIRTIO_GPU_RESP_ERR_UNSPEC)
            }
            Ok(()) => match decode_request(self.chain.request()) {
                Err(e) => {
                    self.log
                        .warn(format_args!("control queue: undecodable request: {e}"));
                    let t = e.response_type();
                    self.error_response(t)
                }
                Ok(req) => {
                    let class = classify(&req.cmd);
                    if self.inflight.must_defer(&class) {
                        let mut e = self.inflight.new_entry(head, req.hdr);
                        e.request.extend_from_slice(self.chain.request());
                        e.resource = class.resource;
                        e.hazard = class.hazard;
                        self.chain.copy_writable(&mut e.writable);
                        e.set_state(EntryState::Deferred);
                        self.inflight.push(e);
                        return None;
                    }
                    let token = self.inflight.token();
                    let room = self.chain.writable_len().min(self.response.len());
                    match sink.control(mem, &req, &mut self.response[..room], token) {
                        CtrlOutcome::Done(n) => n.min(room),
                        CtrlOutcome::Pending => {
                            let mut e = self.inflight.new_entry(head, req.hdr);
                            e.token = token;
                            self.chain.copy_writable(&mut e.writable);
                            e.set_state(EntryState::Running);
                            self.inflight.push(e);
                            return None;
                        }
                    }
                }
            },
        };
        let data = self.response.get(..resp_len).unwrap_or_default();
        if hdr.flags & VIRTIO_GPU_FLAG_FENCE != 0 && self.inflight.has_fenced() {
            // An earlier fenced request is still out: this response waits for it.
            let mut e = self.inflight.new_entry(head, hdr);
            e.response.extend_from_slice(data);
            self.chain.copy_writable(&mut e.writable);
            e.set_state(EntryState::Ready(data.len()));
            self.inflight.push(e);
            return None;
        }
        let written = self.chain.scatter(mem, data);
        Some(u32::try_from(written).unwrap_or(0))
    }

    fn ready<V: VringT<GuestMemoryHandle>>(vring: &V) -> bool {
        let state = vring.get_ref();
        state.get_queue().ready() && state.is_enabled()
    }

    fn notify(
        state: &mut VringState<GuestMemoryHandle>,
        mem: &GuestMemory,
        force: bool,
    ) -> Result<(), QueueError> {
        if force || state.get_queue_mut().needs_notification(mem)? {
            state.signal_used_queue()?;
        }
        Ok(())
    }

    /// Serves one chain; returns the used length (bytes written into the chain).
    pub fn serve_chain<S, I>(&mut self, mem: &GuestMemory, descs: I, sink: &S) -> u32
    where
        S: CommandSink + ?Sized,
        I: IntoIterator<Item = Descriptor>,
    {
        let gathered = self.chain.gather(mem, descs);
        let resp_len = match (gathered, self.kind) {
            (Err(e), _) => {
                self.log
                    .warn(format_args!("{:?} queue: malformed chain: {e}", self.kind));
                self.error_response(VIRTIO_GPU_RESP_ERR_UNSPEC)
            }
            (Ok(()), kind) => match decode_request(self.chain.request()) {
                Err(e) => {
                    self.log
                        .warn(format_args!("{kind:?} queue: undecodable request: {e}"));
                    self.error_response(e.response_type())
                }
                Ok(req) => match kind {
                    QueueKind::Control => {
                        let token = self.inflight.token();
                        let room = self.chain.writable_len().min(self.response.len());
                        match sink.control(mem, &req, &mut self.response[..room], token) {
                            CtrlOutcome::Done(n) => n.min(room),
                            // Synchronous callers cannot wait: the request is answered ERR_UNSPEC.
                            CtrlOutcome::Pending => self.error_response(VIRTIO_GPU_RESP_ERR_UNSPEC),
                        }
                    }
                    QueueKind::Cursor => {
                        sink.cursor(&req);
                        0
                    }
                },
            },
        };
        if self.kind == QueueKind::Cursor {
            // Cursor requests are answered by returning the chain, never with bytes.
            return 0;
        }
        let data = self.response.get(..resp_len).unwrap_or_default();
        let written = self.chain.scatter(mem, data);
        if written < data.len() {
            self.log.warn(format_args!(
                "control queue: response of {} bytes truncated to {written} (writable space {})",
                data.len(),
                self.chain.writable_len()
            ));
        }
        // `written` <= MAX_RESPONSE_LEN, so it fits in u32.
        u32::try_from(written).unwrap_or(0)
    }

    /// Encodes a bare error response for the request in the chain buffers.
    fn error_response(&mut self, type_: u32) -> usize {
        let hdr = read_obj::<CtrlHeader>(self.chain.request()).unwrap_or_default();
        let resp = response_header(&hdr, type_);
        let bytes = resp.as_slice();
        match self.response.get_mut(..bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                bytes.len()
            }
            None => 0,
        }
    }
}

/// Loads the current guest memory of `handle`.
pub fn load_memory(handle: &GuestMemoryHandle) -> vm_memory::GuestMemoryLoadGuard<GuestMemory> {
    handle.memory()
}

#[cfg(test)]
mod tests;
