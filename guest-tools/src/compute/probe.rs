//! Failure attribution: the Linux driver never passes a host error response to user space, so the
//! library learns that a submit was refused, or that a job failed, from the vGPU's QUERY_STATS
//! counters (`submits_refused`, `jobs_failed`) compared with the last values it saw.
//!
//! The counters belong to the whole vGPU, not to one program: when several programs of one VM
//! use the vGPU at once, a refusal or failure of one can be reported to another (whichever
//! checks first after it happened). A program alone on its vGPU gets exact attribution.

use std::sync::Arc;

use vgpu_protocol::capset::JobFailure;
use vgpu_protocol::capset::STATS_RECORD_SIZE;
use vgpu_protocol::StatsRecord;

use crate::device::{BufferOf, Stream, VirtGpu};
use crate::error::{Error, Result};

/// What changed since the last look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// Submits refused since the last look.
    pub refused: u64,
    /// Jobs failed since the last look.
    pub failed: u64,
    /// The record just read.
    pub now: StatsRecord,
}

impl Delta {
    /// The error this change means for `what` (`Ok` when nothing was refused or failed).
    /// A refusal wins over a failure: a refused stream ran nothing.
    pub fn into_result(self, what: &str, loop_budget: u32) -> Result<StatsRecord> {
        if self.refused > 0 {
            return Err(Error::Refused {
                what: what.to_string(),
                code: self.now.last_refusal_code,
                reason: self.now.last_refusal().to_string(),
            });
        }
        if self.failed > 0 {
            return Err(match self.now.failure() {
                JobFailure::LoopBudget => Error::LoopBudget {
                    budget: loop_budget,
                },
                f => Error::JobFailed(format!("{what}: {}", f.as_str())),
            });
        }
        Ok(self.now)
    }
}

/// A 128-byte buffer for QUERY_STATS and the counters last seen.
#[derive(Debug)]
pub struct Probe {
    buf: BufferOf<Arc<VirtGpu>>,
    stream: Stream,
    seen: Option<StatsRecord>,
}

impl Probe {
    /// A probe on `gpu`; reads the first record (the baseline).
    pub fn new(gpu: Arc<VirtGpu>) -> Result<Self> {
        let size = STATS_RECORD_SIZE as u32;
        let buf = BufferOf::create(gpu, size, size)?;
        let mut p = Probe {
            buf,
            stream: Stream::new(),
            seen: None,
        };
        p.check()?;
        Ok(p)
    }

    /// The GEM handle of the probe buffer: every submit of the library names it, so that a
    /// wait on it waits for everything submitted before.
    pub fn bo_handle(&self) -> u32 {
        self.buf.bo_handle()
    }

    /// Waits for every fence on the probe buffer.
    pub fn wait(&self, what: &str) -> Result<()> {
        self.buf.wait(what)
    }

    /// Reads the stats record now without changing the baseline of [`Probe::check`].
    pub fn read(&mut self) -> Result<StatsRecord> {
        let gpu = Arc::clone(self.buf.handle());
        gpu.query_stats(&mut self.buf, 0, &mut self.stream)
    }

    /// Reads the stats record now and returns the change since the last look (which becomes
    /// this one).
    pub fn check(&mut self) -> Result<Delta> {
        let now = self.read()?;
        let before = self.seen.replace(now);
        Ok(match before {
            Some(b) => Delta {
                refused: now.submits_refused.saturating_sub(b.submits_refused),
                failed: now.jobs_failed.saturating_sub(b.jobs_failed),
                now,
            },
            None => Delta {
                refused: 0,
                failed: 0,
                now,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(refused: u64, failed: u64, failure: JobFailure) -> Delta {
        let mut now = StatsRecord::new();
        now.last_failure = failure as u32;
        now.last_refusal_code = 0x1205;
        now.set_last_refusal("capability Kernel is not allowed");
        Delta {
            refused,
            failed,
            now,
        }
    }

    #[test]
    fn deltas_become_errors() {
        assert!(delta(0, 0, JobFailure::None)
            .into_result("launch", 65536)
            .is_ok());
        let e = delta(1, 0, JobFailure::None)
            .into_result("module load", 65536)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the host refused module load: capability Kernel is not allowed (error 0x1205)"
        );
        let e = delta(0, 1, JobFailure::LoopBudget)
            .into_result("launch", 65536)
            .unwrap_err();
        assert!(matches!(e, Error::LoopBudget { budget: 65536 }), "{e}");
        let e = delta(0, 2, JobFailure::OutOfMemory)
            .into_result("launch", 65536)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "job failed on the host: launch: out of device memory"
        );
        // A refusal wins.
        assert!(matches!(
            delta(1, 1, JobFailure::LoopBudget).into_result("launch", 1),
            Err(Error::Refused { .. })
        ));
    }
}
