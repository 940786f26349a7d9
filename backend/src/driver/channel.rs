//! Channels: a guest context's submission queue on its vGPU, and job completion.

use std::sync::Arc;

use serde::Serialize;
use thiserror::Error;

use super::budget::{Charge, HostMemoryLimit, MemoryBudget};
use super::device::Vgpu;
use super::engine::EngineError;
use super::job::{Job, JobError};
use super::partition::PartitionCharge;

/// Command-buffer bytes every channel reserves from its vGPU's partition when it is created.
/// Queued jobs draw on this reserve first, so small jobs (status queries) still run when the
/// partition is full; beyond it their command buffers are charged to the partition, and past
/// the partition the submission is refused with [`SubmitError::OutOfMemory`].
pub const CHANNEL_RESERVE_BYTES: u64 = 128 << 10;

/// How a finished job went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct JobReport {
    /// Submission to first chunk (ns).
    pub queue_wait_ns: u64,
    /// Device slices that started between submission and the job's first chunk.
    pub wait_slices: u64,
    /// Engine time (ns).
    pub run_ns: u64,
    /// Slices the job ran in (more than one when it was preempted).
    pub slices: u32,
    /// Engine chunks.
    pub chunks: u64,
}

/// Why a submitted job did not complete.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JobFailure {
    /// The engine failed; outputs may be partly written.
    #[error("engine error: {0}")]
    Engine(#[from] EngineError),
    /// The channel or vGPU was destroyed, or the device shut down, before the job ran.
    #[error("job cancelled")]
    Cancelled,
}

/// The result handed to a [`Completion`].
pub type JobResult = Result<JobReport, JobFailure>;

/// Receives a job's result. Called exactly once for every accepted job, on the device thread
/// (or on the thread that destroys the channel or vGPU, for cancelled jobs), with no scheduler
/// lock held. Must not block for long: it runs on the device's only engine thread.
pub trait Completion: Send + 'static {
    /// Delivers the result.
    fn complete(self: Box<Self>, result: JobResult);
}

impl<F: FnOnce(JobResult) + Send + 'static> Completion for F {
    fn complete(self: Box<Self>, result: JobResult) {
        (*self)(result)
    }
}

/// A submission was refused; the completion was dropped without being called.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubmitError {
    /// The job references another vGPU's buffer.
    #[error("{0}")]
    Job(#[from] JobError),
    /// The channel already has the maximum number of queued jobs.
    #[error("channel queue full")]
    QueueFull,
    /// The job's command buffer does not fit in the vGPU's partition.
    #[error("partition full: the job's {0} bytes of commands do not fit")]
    OutOfMemory(u64),
    /// The vGPU was destroyed.
    #[error("vGPU destroyed")]
    VgpuDestroyed,
    /// The device is shutting down.
    #[error("device shut down")]
    ShutDown,
}

/// A guest context's queue on a vGPU. Dropping it cancels its queued jobs (a job already on the
/// engine finishes).
pub struct Channel {
    id: u32,
    vgpu: Arc<Vgpu>,
    /// What queued jobs draw on first: [`CHANNEL_RESERVE_BYTES`], paid by `_reserve_charge`.
    reserve: Arc<dyn MemoryBudget>,
    _reserve_charge: PartitionCharge,
}

impl Channel {
    pub(crate) fn new(id: u32, vgpu: Arc<Vgpu>, reserve_charge: PartitionCharge) -> Self {
        Self {
            id,
            vgpu,
            reserve: Arc::new(HostMemoryLimit::new(CHANNEL_RESERVE_BYTES)),
            _reserve_charge: reserve_charge,
        }
    }

    /// Channel id, unique within its vGPU.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The owning vGPU.
    pub fn vgpu(&self) -> &Arc<Vgpu> {
        &self.vgpu
    }

    /// Queues `job`; `completion` is called once it finishes or is cancelled. Never blocks on
    /// the engine: it only takes the scheduler lock to append to the runlist.
    pub fn submit(&self, job: Job, completion: Box<dyn Completion>) -> Result<(), SubmitError> {
        let bytes = job.host_bytes();
        let charge = Charge::new(&self.reserve, bytes)
            .or_else(|_| Charge::new(&self.vgpu.budget(), bytes))
            .map_err(|_| SubmitError::OutOfMemory(bytes))?;
        self.vgpu.submit_on(self.id, job, completion, charge)
    }

    /// [`Channel::submit`] with a closure.
    pub fn submit_fn(
        &self,
        job: Job,
        completion: impl FnOnce(JobResult) + Send + 'static,
    ) -> Result<(), SubmitError> {
        self.submit(job, Box::new(completion))
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("vgpu", &self.vgpu.id())
            .finish()
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.vgpu.close_channel(self.id);
    }
}
