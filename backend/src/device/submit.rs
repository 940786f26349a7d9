//! SUBMIT_3D: a channel command stream, validated whole, translated into driver [`Job`]s and
//! submitted on the context's channel. The guest's response is produced when the last job
//! completes, through a [`JobNotifier`].
//!
//! QUERY_STATS is written by the completion of the job that ends with it: the engine thread runs
//! a job's completion before it starts the next job, so the record sees every earlier command and
//! no later one. A stream with commands after a QUERY_STATS is split there into several jobs,
//! submitted back to back on the same channel (FIFO).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use vgpu_protocol::capset::StatsRecord;
use vgpu_protocol::channel::{decode_stream, validate_stream, KernelLaunch};
use vgpu_protocol::{ChannelCommand, SchedPolicy};

use crate::driver::engine::EngineError;
use crate::driver::job::MAX_OPS_PER_JOB;
use crate::driver::{BufRef, Channel, DeviceBuffer, Job, JobFailure, JobResult, Op, Policy, Vgpu};
use vgpu_protocol::capset::JobFailure as WireJobFailure;

use super::buffer_resource::BufferResource;
use super::error::GpuError;
use super::launch::LaunchState;

/// Told when an asynchronous request finished. Called on the engine thread (or on the thread
/// that cancels the job); must not block and must not take the device's lock.
pub trait JobNotifier: Send + Sync {
    /// The request submitted with `token` finished; `ok` is false if any of its jobs failed or was
    /// cancelled.
    fn job_done(&self, token: u64, ok: bool);
}

/// Counts a submit's outstanding jobs and notifies once when the last one finishes.
struct Tracker {
    remaining: AtomicUsize,
    failed: AtomicBool,
    token: u64,
    notifier: Arc<dyn JobNotifier>,
}

impl Tracker {
    /// `count` jobs finished (`ok` for all of them or not).
    fn finish(&self, count: usize, ok: bool) {
        if !ok {
            self.failed.store(true, Ordering::Release);
        }
        if count == 0 {
            return;
        }
        if self.remaining.fetch_sub(count, Ordering::AcqRel) == count {
            self.notifier
                .job_done(self.token, !self.failed.load(Ordering::Acquire));
        }
    }
}

/// One job of a submit: its operations and the QUERY_STATS records written when it completes.
struct Segment {
    ops: Vec<Op>,
    stats: Vec<BufRef>,
}

/// Builds the stats record of `vgpu` now.
pub fn stats_record(vgpu: &Vgpu) -> StatsRecord {
    let s = vgpu.stats();
    let policy = match s.policy {
        Policy::BestEffort => SchedPolicy::BestEffort,
        Policy::EqualShare => SchedPolicy::EqualShare,
        Policy::FixedShare => SchedPolicy::FixedShare,
    };
    let mut record = StatsRecord {
        policy: policy as u32,
        timeslice_us: s.timeslice_us,
        framebuffer_total_bytes: s.framebuffer_total,
        framebuffer_used_bytes: s.framebuffer_used,
        utilization_permille: s.utilization_permille,
        share_permille: s.share_permille,
        active_vgpus: s.active_vgpus,
        jobs_completed: s.jobs_completed,
        busy_ns: s.busy_ns,
        jobs_failed: s.jobs_failed,
        ..StatsRecord::new()
    };
    let outcomes = vgpu.guest_outcomes();
    record.last_failure = outcomes.last_failure.map_or(0, |f| f as u32);
    record.submits_refused = outcomes.submits_refused;
    record.last_refusal_code = outcomes.last_refusal_code.map_or(0, |c| c.type_());
    record.set_last_refusal(&outcomes.last_refusal);
    record
}

/// What the stats record says about a failed job.
fn wire_failure(failure: &JobFailure) -> WireJobFailure {
    match failure {
        JobFailure::Cancelled => WireJobFailure::Cancelled,
        JobFailure::Engine(e) => match e {
            EngineError::LoopBudget(_) => WireJobFailure::LoopBudget,
            EngineError::DeviceLost => WireJobFailure::DeviceLost,
            EngineError::Timeout(_) | EngineError::Stalled(_) => WireJobFailure::Timeout,
            EngineError::OutOfDeviceMemory => WireJobFailure::OutOfMemory,
            _ => WireJobFailure::Other,
        },
    }
}

/// Checks every resource and range of `stream` for context `ctx_id`: each resource exists, is a
/// buffer and is attached to the context (else INVALID_RESOURCE_ID), each range is inside its
/// buffer (else INVALID_PARAMETER). Returns the number of commands.
pub fn check_stream(
    stream: &[u8],
    ctx_id: u32,
    attached: &HashSet<u32>,
    buffers: &HashMap<u32, BufferResource>,
    is_2d: impl Fn(u32) -> bool,
) -> Result<usize, GpuError> {
    let count = validate_stream(stream)?;
    // First every resource, then every range, so the error code does not depend on order.
    for cmd in decode_stream(stream) {
        let cmd = cmd?;
        for id in cmd.resources() {
            if !buffers.contains_key(&id) {
                return Err(if is_2d(id) {
                    GpuError::NotABuffer(id)
                } else {
                    GpuError::UnknownResource(id)
                });
            }
            if !attached.contains(&id) {
                return Err(GpuError::NotAttached {
                    ctx_id,
                    resource: id,
                });
            }
        }
    }
    for cmd in decode_stream(stream) {
        for a in cmd?.accesses() {
            if let Some(b) = buffers.get(&a.resource) {
                b.check_range(a.resource, a.offset, a.len)?;
            }
        }
    }
    Ok(count)
}

fn buf(buffers: &HashMap<u32, BufferResource>, id: u32, offset: u64) -> Result<BufRef, GpuError> {
    buffers
        .get(&id)
        .map(|b| BufRef::new(&b.buffer, offset))
        .ok_or(GpuError::UnknownResource(id))
}

fn translate(
    cmd: &ChannelCommand,
    buffers: &HashMap<u32, BufferResource>,
) -> Result<Option<Op>, GpuError> {
    Ok(Some(match cmd {
        ChannelCommand::Copy(c) => Op::Copy {
            src: buf(buffers, c.src_res, c.src_offset)?,
            dst: buf(buffers, c.dst_res, c.dst_offset)?,
            len: c.size,
        },
        ChannelCommand::Fill(c) => Op::Fill {
            dst: buf(buffers, c.dst_res, c.offset)?,
            len: c.size,
            pattern: c.pattern,
        },
        ChannelCommand::Launch(KernelLaunch::GemmF32(g)) => Op::GemmF32 {
            m: g.m,
            n: g.n,
            k: g.k,
            alpha: g.alpha,
            beta: g.beta,
            a: buf(buffers, g.a_res, 0)?,
            b: buf(buffers, g.b_res, 0)?,
            c: buf(buffers, g.c_res, 0)?,
        },
        ChannelCommand::Launch(KernelLaunch::AxpyF32(a)) => Op::AxpyF32 {
            n: u64::from(a.n),
            alpha: a.alpha,
            x: buf(buffers, a.x_res, 0)?,
            y: buf(buffers, a.y_res, 0)?,
        },
        ChannelCommand::Launch(KernelLaunch::ReduceSumF32(r)) => Op::ReduceSumF32 {
            n: u64::from(r.n),
            x: buf(buffers, r.x_res, 0)?,
            out: buf(buffers, r.out_res, r.out_offset)?,
        },
        ChannelCommand::Launch(KernelLaunch::Crc32c(c)) => Op::Crc32c {
            src: buf(buffers, c.src_res, c.src_offset)?,
            len: c.len,
            out: buf(buffers, c.out_res, c.out_offset)?,
        },
        // QUERY_STATS, and the guest-module commands, are handled by `prepare`.
        ChannelCommand::QueryStats(_)
        | ChannelCommand::Nop
        | ChannelCommand::ModuleLoad(_)
        | ChannelCommand::ModuleUnload(_)
        | ChannelCommand::Bind(_)
        | ChannelCommand::PushConstants(_)
        | ChannelCommand::Dispatch(_) => return Ok(None),
    }))
}

/// A stream turned into validated jobs, ready to submit.
pub struct PreparedSubmit {
    jobs: Vec<(Job, Vec<BufRef>)>,
    /// The context's launch state after the stream's guest-module commands (`None`: the stream
    /// had none); the caller keeps it once the stream is accepted.
    pub launch: Option<LaunchState>,
}

impl PreparedSubmit {
    /// True when the stream holds nothing to run (empty, or only NOPs).
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

/// What a stream's guest-module commands act on: the context's launch state and what a DISPATCH
/// is checked against.
pub struct ModuleScope<'a> {
    /// The context's state (changes go to a copy, [`PreparedSubmit::launch`]).
    pub launch: &'a LaunchState,
    /// The vGPU (its partition is charged for modules; its engine compiles them).
    pub vgpu: &'a Vgpu,
    /// The context.
    pub ctx_id: u32,
    /// Resources attached to the context.
    pub attached: &'a HashSet<u32>,
}

/// Translates a stream already accepted by [`check_stream`] into jobs, applying its
/// guest-module commands to `scope.launch` in order. `noop` is a zero-length buffer used for
/// jobs that only write stats. Every job is validated by the driver here, before anything is
/// submitted.
pub fn prepare(
    stream: &[u8],
    buffers: &HashMap<u32, BufferResource>,
    noop: &Arc<DeviceBuffer>,
    scope: ModuleScope<'_>,
) -> Result<PreparedSubmit, GpuError> {
    let mut segments: Vec<Segment> = Vec::new();
    let mut cur = Segment {
        ops: Vec::new(),
        stats: Vec::new(),
    };
    let caps = scope.vgpu.engine_caps();
    // Guest-module commands change a copy, made at the first of them.
    let mut staged: Option<LaunchState> = None;
    for cmd in decode_stream(stream) {
        let cmd = cmd?;
        let op = match &cmd {
            ChannelCommand::QueryStats(q) => {
                cur.stats.push(buf(buffers, q.dst_res, q.dst_offset)?);
                continue;
            }
            ChannelCommand::ModuleLoad(c) => {
                let launch = staged.get_or_insert_with(|| scope.launch.clone());
                launch.load(c, buffers, scope.vgpu)?;
                continue;
            }
            ChannelCommand::ModuleUnload(c) => {
                let launch = staged.get_or_insert_with(|| scope.launch.clone());
                launch.unload(c.module_id)?;
                continue;
            }
            ChannelCommand::Bind(b) => {
                let launch = staged.get_or_insert_with(|| scope.launch.clone());
                launch.bind(b, caps.max_storage_buffer_range)?;
                continue;
            }
            ChannelCommand::PushConstants(p) => {
                let launch = staged.get_or_insert_with(|| scope.launch.clone());
                launch.push_constants(p);
                continue;
            }
            ChannelCommand::Dispatch(c) => staged.as_ref().unwrap_or(scope.launch).dispatch(
                c,
                buffers,
                scope.ctx_id,
                scope.attached,
                caps.max_workgroups,
            )?,
            _ => match translate(&cmd, buffers)? {
                Some(op) => op,
                None => continue,
            },
        };
        if !cur.stats.is_empty() || cur.ops.len() >= MAX_OPS_PER_JOB {
            let next = Segment {
                ops: Vec::new(),
                stats: Vec::new(),
            };
            segments.push(std::mem::replace(&mut cur, next));
        }
        cur.ops.push(op);
    }
    if !cur.ops.is_empty() || !cur.stats.is_empty() {
        segments.push(cur);
    }
    let mut jobs = Vec::with_capacity(segments.len());
    for mut seg in segments {
        if seg.ops.is_empty() {
            seg.ops.push(Op::Fill {
                dst: BufRef::new(noop, 0),
                len: 0,
                pattern: 0,
            });
        }
        jobs.push((Job::new(seg.ops)?, seg.stats));
    }
    Ok(PreparedSubmit {
        jobs,
        launch: staged,
    })
}

/// Submits `prepared` on `channel`. Returns an error (and notifies nothing) only if the first
/// job is refused; later refusals fail the submit through the notifier.
pub fn submit(
    prepared: PreparedSubmit,
    channel: &Channel,
    vgpu: &Arc<Vgpu>,
    token: u64,
    notifier: Arc<dyn JobNotifier>,
) -> Result<(), GpuError> {
    let total = prepared.jobs.len();
    let tracker = Arc::new(Tracker {
        remaining: AtomicUsize::new(total),
        failed: AtomicBool::new(false),
        token,
        notifier,
    });
    for (i, (job, stats)) in prepared.jobs.into_iter().enumerate() {
        let t = Arc::clone(&tracker);
        let weak: Weak<Vgpu> = Arc::downgrade(vgpu);
        let completion = move |result: JobResult| {
            if let Err(failure) = &result {
                if let Some(v) = weak.upgrade() {
                    v.record_job_failure(wire_failure(failure));
                }
            }
            let mut ok = result.is_ok();
            if ok && !stats.is_empty() {
                match weak.upgrade() {
                    Some(v) => {
                        let record = stats_record(&v);
                        for dst in &stats {
                            ok &= dst.buffer.write(dst.offset, record.as_bytes()).is_ok();
                        }
                    }
                    None => ok = false,
                }
            }
            t.finish(1, ok);
        };
        if let Err(e) = channel.submit(job, Box::new(completion)) {
            if i == 0 {
                return Err(e.into());
            }
            tracker.finish(total - i, false);
            return Ok(());
        }
    }
    Ok(())
}
