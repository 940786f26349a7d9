//! Control requests the worker has taken from the ring but not yet returned: requests running on
//! the driver, responses held back for fence order, and requests deferred behind running jobs.
//!
//! Rules, per VM:
//! - **Fence order.** Linux signals every fence up to the `fence_id` of a `FLAG_FENCE` response,
//!   so a fenced response is returned only once every earlier fenced request is returned.
//!   Unfenced responses go back as soon as they are ready.
//! - **Hazards.** TRANSFER_TO/FROM_HOST_3D, CTX_DESTROY and CTX_DETACH_RESOURCE wait until no job
//!   of the VM is in flight, so a read-back after a SUBMIT_3D sees its results. Once something
//!   waits, every later request waits behind it in order, except the display path (2D transfer,
//!   flush, set-scanout on resources no waiting request touches, display info, EDID, capsets),
//!   which keeps flowing.
//!
//! Entries and their buffers are recycled, so nothing is allocated once the pool has grown.

use std::collections::VecDeque;

use vgpu_protocol::virtio_gpu::{CtrlHeader, VIRTIO_GPU_FLAG_FENCE};
use vgpu_protocol::GpuCommand;
use vm_memory::GuestAddress;

/// What an entry waits for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// Its job runs on the driver (token of the job).
    Running,
    /// The response (`len` bytes of `response`) is ready.
    Ready(usize),
    /// Not run yet: waits behind running jobs (request bytes kept).
    Deferred,
}

/// One request taken from the ring and not yet returned.
#[derive(Debug, Default)]
pub struct Entry {
    /// Token the device reported the job with.
    pub token: u64,
    /// Head descriptor index of the chain.
    pub head: u16,
    /// Header of the request.
    pub hdr: CtrlHeader,
    /// Where the response goes.
    pub writable: Vec<(GuestAddress, usize)>,
    /// Response bytes once ready.
    pub response: Vec<u8>,
    /// Request bytes of a deferred entry.
    pub request: Vec<u8>,
    /// Resource id the request names (deferred entries), 0 if none.
    pub resource: u32,
    /// The request is a hazard (see the module docs).
    pub hazard: bool,
    state: Option<EntryState>,
}

impl Entry {
    /// True if the request carries `FLAG_FENCE`.
    pub fn fenced(&self) -> bool {
        self.hdr.flags & VIRTIO_GPU_FLAG_FENCE != 0
    }

    /// The state.
    pub fn state(&self) -> Option<EntryState> {
        self.state
    }

    /// Sets the state.
    pub fn set_state(&mut self, s: EntryState) {
        self.state = Some(s);
    }
}

/// How the worker must treat a request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Class {
    /// Waits for running jobs.
    pub hazard: bool,
    /// Display-path command that may overtake waiting ones (with the resource it names, 0 if
    /// none).
    pub display: Option<u32>,
    /// Resource id the command names (0 if none).
    pub resource: u32,
}

/// Classifies a decoded command.
pub fn classify(cmd: &GpuCommand<'_>) -> Class {
    let (hazard, display, resource) = match cmd {
        GpuCommand::TransferToHost3d(t) | GpuCommand::TransferFromHost3d(t) => {
            (true, None, t.resource_id)
        }
        GpuCommand::CtxDestroy => (true, None, 0),
        GpuCommand::CtxDetachResource(c) => (true, None, c.resource_id),
        GpuCommand::TransferToHost2d(t) => (false, Some(t.resource_id), t.resource_id),
        GpuCommand::ResourceFlush(c) => (false, Some(c.resource_id), c.resource_id),
        GpuCommand::SetScanout(c) => (false, Some(c.resource_id), c.resource_id),
        GpuCommand::GetDisplayInfo
        | GpuCommand::GetEdid(_)
        | GpuCommand::GetCapsetInfo(_)
        | GpuCommand::GetCapset(_) => (false, Some(0), 0),
        GpuCommand::ResourceCreate2d(c) => (false, None, c.resource_id),
        GpuCommand::ResourceCreate3d(c) => (false, None, c.resource_id),
        GpuCommand::ResourceUnref(c) => (false, None, c.resource_id),
        GpuCommand::ResourceAttachBacking(c, _) => (false, None, c.resource_id),
        GpuCommand::ResourceDetachBacking(c) => (false, None, c.resource_id),
        GpuCommand::ResourceAssignUuid(c) => (false, None, c.resource_id),
        GpuCommand::CtxAttachResource(c) => (false, None, c.resource_id),
        _ => (false, None, 0),
    };
    Class {
        hazard,
        display,
        resource,
    }
}

/// Largest request buffer a pooled entry keeps: a deferred SUBMIT_3D can copy up to ~1 MiB, and
/// a pool of 256 such buffers must not stay allocated after the burst.
const POOLED_REQUEST_CAPACITY: usize = 64 << 10;

/// An entry fit for the pool: its request buffer is dropped if a large request grew it.
fn shrunk(mut e: Entry) -> Entry {
    if e.request.capacity() > POOLED_REQUEST_CAPACITY {
        e.request = Vec::new();
    }
    e
}

/// The taken-but-unreturned requests of one control queue, oldest first.
#[derive(Debug, Default)]
pub struct Inflight {
    entries: VecDeque<Entry>,
    pool: Vec<Entry>,
    running: usize,
    next_token: u64,
}

impl Inflight {
    /// A fresh token (never reused, also across resets).
    pub fn token(&mut self) -> u64 {
        self.next_token = self.next_token.wrapping_add(1);
        self.next_token
    }

    /// Jobs of this VM on the driver now.
    pub fn running(&self) -> usize {
        self.running
    }

    /// True if no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of held entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if a request waits to run.
    pub fn has_deferred(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.state == Some(EntryState::Deferred))
    }

    /// Request bytes held by deferred entries (copies of guest requests waiting to run).
    pub fn deferred_bytes(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.state == Some(EntryState::Deferred))
            .map(|e| e.request.len())
            .sum()
    }

    /// True if a waiting request names `resource`.
    pub fn defers_resource(&self, resource: u32) -> bool {
        resource != 0
            && self
                .entries
                .iter()
                .any(|e| e.state == Some(EntryState::Deferred) && e.resource == resource)
    }

    /// True if a fenced entry is held (a new fenced response must then wait).
    pub fn has_fenced(&self) -> bool {
        self.entries.iter().any(Entry::fenced)
    }

    /// Whether a request of class `c` must wait.
    pub fn must_defer(&self, c: &Class) -> bool {
        if c.hazard && self.running > 0 {
            return true;
        }
        if !self.has_deferred() {
            return false;
        }
        match c.display {
            Some(res) => self.defers_resource(res),
            None => true,
        }
    }

    /// A recycled entry for a new request (state unset).
    pub fn new_entry(&mut self, head: u16, hdr: CtrlHeader) -> Entry {
        let mut e = self.pool.pop().unwrap_or_default();
        e.head = head;
        e.hdr = hdr;
        e.token = 0;
        e.resource = 0;
        e.hazard = false;
        e.state = None;
        e.writable.clear();
        e.response.clear();
        e.request.clear();
        e
    }

    /// Appends an entry (a running entry counts as a job in flight).
    pub fn push(&mut self, e: Entry) {
        if e.state == Some(EntryState::Running) {
            self.running += 1;
        }
        self.entries.push_back(e);
    }

    /// Gives an entry's buffers back to the pool.
    pub fn recycle(&mut self, e: Entry) {
        self.pool.push(shrunk(e));
    }

    /// The running entry with `token`, marked ready with the response `write` produces. False if
    /// no entry has the token (a completion from before a reset).
    pub fn complete(&mut self, token: u64, write: impl FnOnce(&Entry, &mut Vec<u8>)) -> bool {
        let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.state == Some(EntryState::Running) && e.token == token)
        else {
            return false;
        };
        let mut resp = std::mem::take(&mut e.response);
        write(e, &mut resp);
        e.state = Some(EntryState::Ready(resp.len()));
        e.response = resp;
        self.running = self.running.saturating_sub(1);
        true
    }

    /// Index of the first deferred entry that may run now, if any.
    pub fn next_runnable(&self) -> Option<usize> {
        let i = self
            .entries
            .iter()
            .position(|e| e.state == Some(EntryState::Deferred))?;
        let e = self.entries.get(i)?;
        (!e.hazard || self.running == 0).then_some(i)
    }

    /// The entry at `i`.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Entry> {
        self.entries.get_mut(i)
    }

    /// Marks entry `i` running (its job was submitted).
    pub fn mark_running(&mut self, i: usize, token: u64) {
        if let Some(e) = self.entries.get_mut(i) {
            e.token = token;
            e.state = Some(EntryState::Running);
            self.running += 1;
        }
    }

    /// Removes and passes to `release` every ready entry that fence order lets go, oldest first.
    pub fn release(&mut self, mut release: impl FnMut(&Entry)) -> usize {
        let mut blocked = false;
        let mut released = 0;
        let mut i = 0;
        while i < self.entries.len() {
            let Some(e) = self.entries.get(i) else { break };
            let ready = matches!(e.state, Some(EntryState::Ready(_)));
            let fenced = e.fenced();
            if ready && !(fenced && blocked) {
                if let Some(e) = self.entries.remove(i) {
                    release(&e);
                    self.pool.push(shrunk(e));
                    released += 1;
                }
                continue;
            }
            if fenced {
                blocked = true;
            }
            i += 1;
        }
        released
    }

    /// Forgets every entry (device reset, disconnect): nothing is returned to the ring, late
    /// completions find no entry.
    pub fn clear(&mut self) {
        while let Some(e) = self.entries.pop_front() {
            self.pool.push(shrunk(e));
        }
        self.running = 0;
    }
}
