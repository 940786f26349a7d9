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

use log::Level;
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

use super::ratelimit::LogRateLimiter;

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

static CHAIN_LOG: LogRateLimiter = LogRateLimiter::new(5);

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
    /// Runs a control-queue request, writing its response into `resp`; returns the response length.
    fn control(&self, mem: &GuestMemory, req: &Request<'_>, resp: &mut [u8]) -> usize;
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

    /// Writes `data` across the writable descriptors in order; returns the bytes written, which is
    /// less than `data.len()` if the writable space is too small.
    pub fn scatter<M: GuestMemoryBackend>(&self, mem: &M, data: &[u8]) -> usize {
        let mut done = 0;
        for &(addr, len) in &self.writable {
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
}

/// Serves one virtqueue: reusable buffers plus the loop over available chains.
#[derive(Debug)]
pub struct QueueWorker {
    kind: QueueKind,
    chain: ChainBuffers,
    response: Vec<u8>,
    notify_on_empty: bool,
}

impl QueueWorker {
    /// A worker for a queue of `kind`.
    pub fn new(kind: QueueKind) -> Self {
        QueueWorker {
            kind,
            chain: ChainBuffers::new(),
            response: vec![0; MAX_RESPONSE_LEN],
            notify_on_empty: false,
        }
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
        loop {
            vring.get_mut().get_queue_mut().disable_notification(mem)?;
            loop {
                let chain = vring.get_mut().get_queue_mut().iter(mem)?.next();
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let len = self.serve_chain(mem, chain, sink);
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
        Ok(())
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
                crate::vhost::log_limited(
                    &CHAIN_LOG,
                    Level::Warn,
                    format_args!("{:?} queue: malformed chain: {e}", self.kind),
                );
                self.error_response(VIRTIO_GPU_RESP_ERR_UNSPEC)
            }
            (Ok(()), kind) => match decode_request(self.chain.request()) {
                Err(e) => {
                    crate::vhost::log_limited(
                        &CHAIN_LOG,
                        Level::Warn,
                        format_args!("{kind:?} queue: undecodable request: {e}"),
                    );
                    self.error_response(e.response_type())
                }
                Ok(req) => match kind {
                    QueueKind::Control => {
                        let n = sink.control(mem, &req, &mut self.response);
                        n.min(self.response.len())
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
            crate::vhost::log_limited(
                &CHAIN_LOG,
                Level::Warn,
                format_args!(
                    "control queue: response of {} bytes truncated to {written} (writable space {})",
                    data.len(),
                    self.chain.writable_len()
                ),
            );
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
