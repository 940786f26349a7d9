//! A vGPU's software runlist: the queued jobs of its channels, served round robin by channel.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::budget::Charge;
use super::channel::{Completion, JobFailure, JobReport};
use super::engine::{DynEngine, EngineError, Step};
use super::job::Job;

/// Most jobs queued on one channel; submissions past it are refused.
pub const MAX_QUEUED_PER_CHANNEL: usize = 1024;

/// A submitted job waiting for the engine.
pub(crate) struct QueuedJob {
    pub job: Job,
    pub completion: Box<dyn Completion>,
    pub channel: u32,
    pub submitted: Instant,
    /// Device slice sequence number at submission.
    pub submitted_slice: u64,
    /// The job's command buffer charged to the vGPU's partition, released with the job.
    pub _charge: Option<Charge>,
    /// The vGPU's count of completions that panicked.
    pub completion_failures: Arc<AtomicU64>,
}

impl QueuedJob {
    /// Calls the completion with `result`. A completion that panics does not take the engine
    /// thread down; it is counted as an error in the vGPU's `completion_failures` (shown in its
    /// stats) and logged. Returns false when it panicked.
    pub fn complete(self, result: Result<JobReport, JobFailure>) -> bool {
        let completion = self.completion;
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| completion.complete(result)));
        if outcome.is_err() {
            self.completion_failures.fetch_add(1, Ordering::AcqRel);
            log::error!("job completion panicked (channel {})", self.channel);
            return false;
        }
        true
    }
}

/// A job the engine has started; kept across preemptions.
pub(crate) struct ActiveJob {
    pub queued: QueuedJob,
    op_index: usize,
    /// The engine's private state of the current operation (created at its first chunk).
    state: Option<Box<dyn std::any::Any + Send>>,
    pub wait_ns: u64,
    pub wait_slices: u64,
    pub run_ns: u64,
    pub slices: u32,
    pub chunks: u64,
    /// Where the watchdog can reach the job's completion while it runs (set at its first chunk).
    pub stall_slot: Option<super::worker::CompletionSlot>,
}

impl ActiveJob {
    /// Starts `queued` now, at device slice `slice_seq`.
    pub fn start(queued: QueuedJob, now: Instant, slice_seq: u64) -> Self {
        let wait_ns = nanos(now.saturating_duration_since(queued.submitted));
        let wait_slices = slice_seq.saturating_sub(queued.submitted_slice);
        Self {
            queued,
            op_index: 0,
            state: None,
            wait_ns,
            wait_slices,
            run_ns: 0,
            slices: 0,
            chunks: 0,
            stall_slot: None,
        }
    }

    /// Runs one chunk of about `target_ns`; `Ok(true)` when the whole job is done.
    pub fn step(
        &mut self,
        engine: &mut dyn DynEngine,
        target_ns: u64,
    ) -> Result<bool, EngineError> {
        let Some(op) = self.queued.job.ops().get(self.op_index) else {
            return Ok(true);
        };
        let state = self.state.get_or_insert_with(|| engine.new_state());
        let step = engine.run_chunk_dyn(op, state, target_ns)?;
        self.chunks += 1;
        if step == Step::Done {
            self.op_index += 1;
            self.state = None;
        }
        Ok(self.op_index >= self.queued.job.ops().len())
    }

    /// Waits for the engine's submissions of the current operation still in flight (before the
    /// job leaves the engine part-way); returns their device time (`None`: the engine has no
    /// device timestamps).
    pub fn settle(&mut self, engine: &mut dyn DynEngine) -> Result<Option<u64>, EngineError> {
        let (Some(op), Some(state)) = (self.queued.job.ops().get(self.op_index), &mut self.state)
        else {
            return Ok(None);
        };
        engine.settle_dyn(op, state)
    }

    /// The report for a finished job.
    pub fn report(&self) -> JobReport {
        JobReport {
            queue_wait_ns: self.wait_ns,
            wait_slices: self.wait_slices,
            run_ns: self.run_ns,
            slices: self.slices,
            chunks: self.chunks,
        }
    }
}

/// Nanoseconds of a duration, saturating.
pub(crate) fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One vGPU's runlist.
#[derive(Default)]
pub(crate) struct Runlist {
    queues: BTreeMap<u32, VecDeque<QueuedJob>>,
    /// Channels with queued jobs, in service order.
    ready: VecDeque<u32>,
    queued: usize,
}

impl Runlist {
    /// Queues `job` on its channel, or hands it back when the channel is full.
    pub fn push(&mut self, job: QueuedJob) -> Result<(), QueuedJob> {
        let queue = self.queues.entry(job.channel).or_default();
        if queue.len() >= MAX_QUEUED_PER_CHANNEL {
            return Err(job);
        }
        if queue.is_empty() {
            self.ready.push_back(job.channel);
        }
        queue.push_back(job);
        self.queued += 1;
        Ok(())
    }

    /// The next job: the front job of the next ready channel.
    pub fn pop(&mut self) -> Option<QueuedJob> {
        let channel = self.ready.pop_front()?;
        let queue = self.queues.get_mut(&channel)?;
        let job = queue.pop_front()?;
        self.queued -= 1;
        if queue.is_empty() {
            self.queues.remove(&channel);
        } else {
            self.ready.push_back(channel);
        }
        Some(job)
    }

    /// Removes a channel's queued jobs.
    pub fn remove_channel(&mut self, channel: u32) -> Vec<QueuedJob> {
        self.ready.retain(|&c| c != channel);
        let jobs: Vec<QueuedJob> = self.queues.remove(&channel).into_iter().flatten().collect();
        self.queued -= jobs.len();
        jobs
    }

    /// Removes every queued job.
    pub fn drain(&mut self) -> Vec<QueuedJob> {
        self.ready.clear();
        self.queued = 0;
        std::mem::take(&mut self.queues)
            .into_values()
            .flatten()
            .collect()
    }

    /// Jobs queued.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::driver::buffer::DeviceBuffer;
    use crate::driver::job::{BufRef, Op};
    use crate::driver::memory::{DeviceMemory, MIB};
    use crate::driver::partition::MemoryPartition;

    fn job(buf: &Arc<DeviceBuffer>, channel: u32, tag: u32) -> QueuedJob {
        let op = Op::Fill {
            dst: BufRef::new(buf, 0),
            len: 4,
            pattern: tag,
        };
        QueuedJob {
            job: Job::single(op).unwrap(),
            completion: Box::new(|_| {}),
            channel,
            submitted: Instant::now(),
            submitted_slice: 0,
            _charge: None,
            completion_failures: Arc::default(),
        }
    }

    #[test]
    fn a_panicking_completion_is_counted_not_swallowed() {
        let dev = crate::driver::Device::new(crate::driver::DeviceConfig::default()).unwrap();
        let v = dev
            .create_vgpu("vgpu-64m", uuid::Uuid::from_u128(1))
            .unwrap();
        let buf = v.alloc_buffer(64).unwrap();
        let mut q = job(&buf, 1, 1);
        q.completion = Box::new(|_| panic!("a bug in a completion"));
        let failures = Arc::clone(&q.completion_failures);
        assert!(!q.complete(Err(JobFailure::Cancelled)));
        assert_eq!(failures.load(Ordering::Acquire), 1);
        assert!(job(&buf, 1, 2).complete(Err(JobFailure::Cancelled)));
        dev.shutdown();
    }

    fn tag(q: &QueuedJob) -> u32 {
        match &q.job.ops()[0] {
            Op::Fill { pattern, .. } => *pattern,
            _ => unreachable!(),
        }
    }

    #[test]
    fn round_robin_across_channels_fifo_within() {
        let mem = DeviceMemory::with_mib(1);
        let p = MemoryPartition::new(1, mem.reserve(MIB).unwrap());
        let buf = DeviceBuffer::new(&p, 4).unwrap();
        let mut rl = Runlist::default();
        for (ch, t) in [(1, 10), (1, 11), (1, 12), (2, 20), (3, 30), (3, 31)] {
            assert!(rl.push(job(&buf, ch, t)).is_ok());
        }
        assert_eq!(rl.len(), 6);
        let order: Vec<u32> = std::iter::from_fn(|| rl.pop()).map(|q| tag(&q)).collect();
        assert_eq!(order, vec![10, 20, 30, 11, 31, 12]);
        assert!(rl.is_empty());
        for t in 0..MAX_QUEUED_PER_CHANNEL as u32 {
            assert!(rl.push(job(&buf, 5, t)).is_ok());
        }
        assert!(rl.push(job(&buf, 5, 0)).is_err());
        assert!(rl.push(job(&buf, 6, 0)).is_ok());
        assert_eq!(rl.remove_channel(5).len(), MAX_QUEUED_PER_CHANNEL);
        assert_eq!(rl.len(), 1);
        assert_eq!(rl.drain().len(), 1);
        assert!(rl.pop().is_none());
    }
}
