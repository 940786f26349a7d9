//! Scheduler log and per-vGPU utilization counters.

use std::collections::VecDeque;

use serde::Serialize;

use super::scheduler::Policy;

/// Slices kept in the scheduler log.
pub const LOG_CAPACITY: usize = 4096;
/// Width of one utilization bucket.
const BUCKET_NS: u64 = 100_000_000;
/// Buckets in the sliding window (10 × 100 ms ≈ 1 s).
const BUCKETS: usize = 10;
/// Queue-wait samples kept per vGPU for percentiles.
const WAIT_SAMPLES: usize = 1024;
/// Upper bounds (ns) of the queue-wait histogram's buckets; one more bucket holds the rest.
pub const WAIT_BUCKETS_NS: [u64; 12] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    1_000_000_000,
];

/// Cumulative queue-wait histogram of one vGPU (every job since creation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WaitHistogram {
    /// Jobs per bucket: `counts[i]` waited at most [`WAIT_BUCKETS_NS`]`[i]` (and more than the
    /// bound before); the last entry counts the longer waits.
    pub counts: [u64; WAIT_BUCKETS_NS.len() + 1],
    /// Sum of all waits (ns).
    pub sum_ns: u64,
    /// Jobs observed.
    pub count: u64,
}

impl WaitHistogram {
    /// Adds one wait.
    pub fn observe(&mut self, wait_ns: u64) {
        let i = WAIT_BUCKETS_NS.partition_point(|&b| b < wait_ns);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum_ns = self.sum_ns.saturating_add(wait_ns);
        self.count += 1;
    }
}

/// One scheduler slice, like a line of `nvidia-smi vgpu -sl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SliceRecord {
    /// Slice sequence number (device-wide).
    pub seq: u64,
    /// The vGPU that owned the slice.
    pub vgpu_id: u32,
    /// Start, ns since the device started.
    pub start_ns: u64,
    /// The slice budget (nominal slice less debt).
    pub target_ns: u64,
    /// Time the vGPU's work ran on the engine: device time of its pieces where the engine has
    /// device timestamps (Vulkan), host time of its chunks otherwise (CPU).
    pub time_run_ns: u64,
    /// What the scheduler charged the slice: `time_run_ns` plus the time a reserved slice held
    /// the engine idle, at least a quarter of `elapsed_ns` (see the README's "Engines").
    pub charged_ns: u64,
    /// Wall time of the slice (run time, host work between pieces, time held idle).
    pub elapsed_ns: u64,
    /// The slice ended at its budget with work still queued.
    pub preempted: bool,
    /// The vGPU had no work when its turn came (a held share).
    pub reserved: bool,
    /// Engine chunks run in the slice.
    pub chunks: u32,
}

/// A ring of the most recent [`LOG_CAPACITY`] slices.
#[derive(Debug, Default)]
pub struct SchedulerLog {
    records: VecDeque<SliceRecord>,
}

impl SchedulerLog {
    /// Appends a record, dropping the oldest when full.
    pub fn push(&mut self, record: SliceRecord) {
        if self.records.len() >= LOG_CAPACITY {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    /// The records, oldest first.
    pub fn snapshot(&self) -> Vec<SliceRecord> {
        self.records.iter().copied().collect()
    }
}

/// Busy time over a sliding window of about one second.
#[derive(Debug, Clone, Default)]
pub struct BusyWindow {
    buckets: [u64; BUCKETS],
    /// Index (time / BUCKET_NS) of the newest bucket.
    head: u64,
}

impl BusyWindow {
    fn advance(&mut self, now_ns: u64) {
        let index = now_ns / BUCKET_NS;
        if index <= self.head {
            return;
        }
        let steps = (index - self.head).min(BUCKETS as u64);
        for i in 1..=steps {
            let slot = ((self.head + i) % BUCKETS as u64) as usize;
            self.buckets[slot] = 0;
        }
        self.head = index;
    }

    /// Adds `busy_ns` at time `now_ns` (ns since the device started).
    pub fn add(&mut self, now_ns: u64, busy_ns: u64) {
        self.advance(now_ns);
        let slot = (self.head % BUCKETS as u64) as usize;
        self.buckets[slot] = self.buckets[slot].saturating_add(busy_ns);
    }

    /// Busy fraction of the window ending at `now_ns`, in permille.
    pub fn permille(&mut self, now_ns: u64) -> u32 {
        self.advance(now_ns);
        let busy: u64 = self.buckets.iter().sum();
        let span = (BUCKETS as u64 - 1) * BUCKET_NS + now_ns % BUCKET_NS;
        let span = span.min(now_ns).max(1);
        u32::try_from((busy.saturating_mul(1000) / span).min(1000)).unwrap_or(1000)
    }
}

/// Per-vGPU counters kept by the device thread.
#[derive(Debug, Clone, Default)]
pub struct VgpuCounters {
    /// Total engine time (ns).
    pub busy_ns: u64,
    /// Jobs completed successfully.
    pub jobs_completed: u64,
    /// Jobs that failed on the engine or were cancelled.
    pub jobs_failed: u64,
    /// Slices the vGPU owned.
    pub slices: u64,
    /// Slices that ran past their target.
    pub overruns: u64,
    /// Every job's queue wait.
    pub wait_histogram: WaitHistogram,
    /// Busy time over the last second.
    pub window: BusyWindow,
    waits: VecDeque<u64>,
}

impl VgpuCounters {
    /// Adds engine time that ended at `now_ns`.
    pub fn add_busy(&mut self, now_ns: u64, busy_ns: u64) {
        self.busy_ns = self.busy_ns.saturating_add(busy_ns);
        self.window.add(now_ns, busy_ns);
    }

    /// Records a job's queue wait (submission to first chunk).
    pub fn record_wait(&mut self, wait_ns: u64) {
        self.wait_histogram.observe(wait_ns);
        if self.waits.len() >= WAIT_SAMPLES {
            self.waits.pop_front();
        }
        self.waits.push_back(wait_ns);
    }

    /// Counts a slice that ended; `overran` when it ran past its target.
    pub fn end_slice(&mut self, overran: bool) {
        self.slices += 1;
        if overran {
            self.overruns += 1;
        }
    }

    /// The recent queue-wait samples (ns), oldest first.
    pub fn wait_samples(&self) -> Vec<u64> {
        self.waits.iter().copied().collect()
    }
}

/// The `p`-th percentile (0..=100, nearest rank below) of `sorted`; 0 when empty.
pub fn percentile(sorted: &[u64], p: u32) -> u64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0;
    };
    let rank = last * p.min(100) as usize / 100;
    sorted.get(rank).copied().unwrap_or(0)
}

/// A vGPU's scheduling and memory figures, as reported to tools and the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VgpuStats {
    /// vGPU id.
    pub vgpu_id: u32,
    /// Type name.
    pub type_name: String,
    /// The device policy.
    pub policy: Policy,
    /// This vGPU's time slice (µs).
    pub timeslice_us: u32,
    /// Partition size (bytes).
    pub framebuffer_total: u64,
    /// Bytes allocated in the partition.
    pub framebuffer_used: u64,
    /// Engine busy time for this vGPU over the last ~1 s, permille of wall time.
    pub utilization_permille: u32,
    /// The share the policy entitles this vGPU to, permille.
    pub share_permille: u32,
    /// vGPUs that count for the share: with work (best-effort) or created (other policies).
    pub active_vgpus: u32,
    /// Jobs completed successfully.
    pub jobs_completed: u64,
    /// Jobs failed or cancelled.
    pub jobs_failed: u64,
    /// Job completions that panicked (a bug in the code that submitted the job; counted as
    /// errors, never silently dropped).
    pub completion_failures: u64,
    /// Total engine time (ns).
    pub busy_ns: u64,
    /// Jobs waiting or running.
    pub queued_jobs: u32,
    /// Median queue wait of recent jobs (ns).
    pub queue_wait_p50_ns: u64,
    /// 99th-percentile queue wait of recent jobs (ns).
    pub queue_wait_p99_ns: u64,
    /// Overrun not yet repaid (ns).
    pub debt_ns: u64,
    /// Slices the vGPU owned.
    pub slices: u64,
    /// Slices that ran past their target.
    pub overruns: u64,
    /// Queue waits of every job so far.
    pub wait_histogram: WaitHistogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_slides() {
        let mut w = BusyWindow::default();
        w.add(50_000_000, 25_000_000);
        assert_eq!(w.permille(50_000_000), 500);
        w.add(1_050_000_000, 100_000_000);
        let p = w.permille(1_100_000_000);
        assert!((90..=115).contains(&p), "{p}");
        assert_eq!(w.permille(10_000_000_000), 0);
    }

    #[test]
    fn log_is_bounded_and_percentiles() {
        let mut log = SchedulerLog::default();
        for seq in 0..(LOG_CAPACITY as u64 + 10) {
            log.push(SliceRecord {
                seq,
                vgpu_id: 1,
                start_ns: 0,
                target_ns: 0,
                time_run_ns: 0,
                charged_ns: 0,
                elapsed_ns: 0,
                preempted: false,
                reserved: false,
                chunks: 0,
            });
        }
        let snap = log.snapshot();
        assert_eq!(snap.len(), LOG_CAPACITY);
        assert_eq!(snap[0].seq, 10);
        let mut c = VgpuCounters::default();
        assert_eq!(percentile(&c.wait_samples(), 50), 0);
        for v in (1..=2000).rev() {
            c.record_wait(v);
        }
        let mut waits = c.wait_samples();
        assert_eq!(waits.len(), WAIT_SAMPLES);
        waits.sort_unstable();
        assert_eq!(percentile(&waits, 0), 1);
        assert_eq!(percentile(&waits, 50), 512);
        assert_eq!(percentile(&waits, 100), 1024);
    }
}
