//! The device thread: asks the scheduler for turns and runs the chosen vGPU's jobs on the
//! engine, chunk by chunk, with no lock held while a chunk runs.
//!
//! **Charged time.** A turn's budget, its end, wake preemption and [`SchedCore::account`] use
//! the turn's *charged* time: the device time of the vGPU's chunks where the engine measures it
//! ([`DynEngine::last_device_ns`]; host time of the chunk otherwise), plus the idle time a
//! reserved turn held, but at least a quarter of the turn's wall time ([`charge`]). An engine
//! that keeps submissions in flight across chunks (Vulkan) reports one completed submission per
//! chunk; before a job leaves the engine part-way the device thread settles it
//! ([`ActiveJob::settle`]), so work in flight when a turn ends is charged to its own vGPU and
//! never runs during another vGPU's turn.
//!
//! **Chunk length.** Chunks are short ([`ChunkTargets::shared_ns`], ≈100 µs) whenever a turn may
//! have to end or yield soon, and long ([`ChunkTargets::solo_ns`], ≈1 ms) while the running vGPU
//! is the only one with work: no other vGPU had work when its job was taken (read under the lock
//! the device thread holds then anyway) and none has woken since (the `woke` flag, already read
//! at every chunk boundary). A long chunk never runs past the turn's budget by design: it is
//! cut to the charged time left, and below the short target the short target applies. So slice
//! ends and wake preemption happen at the same points as with short chunks only, a held share's
//! reserved slot for an idle vGPU starts on time, and a vGPU that wakes during a long chunk
//! waits at most that chunk before the usual rules apply; from the next boundary on chunks are
//! short.
//!
//! **Faults.** A chunk that panics or fails fails its job only ([`run_contained`]). A
//! [`watchdog`] thread watches the chunk on the engine: one running past the stall limit fails
//! its job with [`EngineError::Stalled`], and the engine thread is replaced by a new one on a
//! fresh engine from the engine's factory (the stuck thread, if it ever returns, leaves without
//! touching anything).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::channel::{Completion, JobFailure, JobResult};
use super::engine::{panic_message, DynEngine, EngineError, EngineFactory};
use super::runlist::{nanos, ActiveJob, QueuedJob, Runlist};
use super::scheduler::{SchedCore, Turn};
use super::stats::{SchedulerLog, SliceRecord, VgpuCounters};
use crate::log_limit::GuestLog;

/// A vGPU's scheduling state.
#[derive(Default)]
pub(crate) struct VgpuSched {
    pub runlist: Runlist,
    /// A job preempted mid-way, resumed at the vGPU's next turn.
    pub current: Option<ActiveJob>,
    /// The vGPU's job is on the engine now (taken out of `current`).
    pub running: bool,
    pub counters: VgpuCounters,
}

impl VgpuSched {
    pub fn has_work(&self) -> bool {
        self.running || self.current.is_some() || !self.runlist.is_empty()
    }

    /// Jobs waiting or running.
    pub fn outstanding(&self) -> usize {
        self.runlist.len() + usize::from(self.running || self.current.is_some())
    }

    /// Every job not yet finished, for cancellation.
    pub fn take_all(&mut self) -> Vec<QueuedJob> {
        let mut jobs = self.runlist.drain();
        if let Some(active) = self.current.take() {
            jobs.push(active.queued);
        }
        jobs
    }
}

/// Everything the scheduler lock protects.
pub(crate) struct SchedState {
    pub core: SchedCore,
    pub vgpus: BTreeMap<u32, VgpuSched>,
    pub shutdown: bool,
    /// Slices started so far.
    pub slice_seq: u64,
}

impl SchedState {
    /// Tells the policy core whether vGPU `id` has work; returns whether it just woke.
    pub fn refresh(&mut self, id: u32) -> bool {
        let has_work = self.vgpus.get(&id).is_some_and(VgpuSched::has_work);
        self.core.set_has_work(id, has_work)
    }
}

/// The chunk lengths the device thread chooses between at each chunk boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkTargets {
    /// While another vGPU has work or may wake (ns): the preemption granularity.
    pub shared_ns: u64,
    /// While the running vGPU is the only one with work (ns), at least `shared_ns`.
    pub solo_ns: u64,
}

impl ChunkTargets {
    /// Targets of `shared_ns` and `solo_ns` (raised to `shared_ns` if below it).
    pub fn new(shared_ns: u64, solo_ns: u64) -> Self {
        let shared_ns = shared_ns.max(1);
        Self {
            shared_ns,
            solo_ns: solo_ns.max(shared_ns),
        }
    }

    /// The target for the next chunk: `solo_ns` cut to the `left_ns` before the turn's deadline
    /// when the vGPU runs alone, and never below `shared_ns`.
    pub fn next(&self, solo: bool, left_ns: u64) -> u64 {
        if solo {
            self.solo_ns.min(left_ns).max(self.shared_ns)
        } else {
            self.shared_ns
        }
    }
}

/// A running job's completion, reachable by the watchdog (taken by whoever completes first).
pub(crate) type CompletionSlot = Arc<Mutex<Option<Box<dyn Completion>>>>;

/// Forwards to the completion in a [`CompletionSlot`], unless the watchdog took it.
struct Forward(CompletionSlot);

impl Completion for Forward {
    fn complete(self: Box<Self>, result: JobResult) {
        let taken = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(completion) = taken {
            completion.complete(result);
        }
    }
}

/// The chunk on the engine now, as the watchdog sees it.
pub(crate) struct Beat {
    since: Instant,
    turn: Turn,
    turn_start: Instant,
    slot: CompletionSlot,
}

/// Which engine thread is current, and what it runs.
#[derive(Default)]
pub(crate) struct Heartbeat {
    generation: u64,
    chunk: Option<Beat>,
}

/// State shared by the device thread and every vGPU handle.
pub(crate) struct Shared {
    state: Mutex<SchedState>,
    pub wake: Condvar,
    /// Set when a vGPU wakes: the device thread checks at its next chunk boundary whether the
    /// running turn should yield to it (one atomic load per chunk otherwise).
    pub woke: AtomicBool,
    log: Mutex<SchedulerLog>,
    pub epoch: Instant,
    /// Chunk lengths, short or long by whether the running vGPU is alone.
    pub chunks: ChunkTargets,
    heartbeat: Mutex<Heartbeat>,
    /// Most submissions the engine has had in flight at once ([`DynEngine::max_in_flight`]).
    pub max_in_flight: AtomicUsize,
}

impl Shared {
    pub fn new(core: SchedCore, chunks: ChunkTargets) -> Self {
        Self {
            state: Mutex::new(SchedState {
                core,
                vgpus: BTreeMap::new(),
                shutdown: false,
                slice_seq: 0,
            }),
            wake: Condvar::new(),
            woke: AtomicBool::new(false),
            log: Mutex::new(SchedulerLog::default()),
            epoch: Instant::now(),
            chunks,
            heartbeat: Mutex::new(Heartbeat::default()),
            max_in_flight: AtomicUsize::new(0),
        }
    }

    fn heartbeat(&self) -> MutexGuard<'_, Heartbeat> {
        self.heartbeat.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the chunk engine thread `generation` starts; false if it was replaced.
    fn beat(&self, generation: u64, beat: Beat) -> bool {
        let mut hb = self.heartbeat();
        if hb.generation != generation {
            return false;
        }
        hb.chunk = Some(beat);
        true
    }

    /// Records the end of a chunk; false if the thread was replaced meanwhile.
    fn beat_end(&self, generation: u64) -> bool {
        let mut hb = self.heartbeat();
        if hb.generation != generation {
            return false;
        }
        hb.chunk = None;
        true
    }

    /// Locks the scheduler state. Nothing in it is left half-updated across a panic point,
    /// so a poisoned lock is recovered rather than propagated.
    pub fn lock(&self) -> MutexGuard<'_, SchedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_for<'a>(
        &self,
        guard: MutexGuard<'a, SchedState>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, SchedState> {
        match timeout {
            Some(t) => {
                self.wake
                    .wait_timeout(guard, t)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => self.wake.wait(guard).unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Whether a vGPU woke since the last call and the running `turn`, `used_ns` into it,
    /// should yield to it (takes the lock only after a wake). A wake also ends `solo`: another
    /// vGPU has work now.
    fn preempt_for_wake(&self, turn: &Turn, used_ns: u64, solo: &mut bool) -> bool {
        if !self.woke.swap(false, Ordering::AcqRel) {
            return false;
        }
        *solo = false;
        self.lock().core.should_preempt(turn, used_ns)
    }

    /// ns since the device started.
    pub fn now_ns(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.epoch))
    }

    /// The scheduler log, oldest first.
    pub fn log_snapshot(&self) -> Vec<SliceRecord> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot()
    }

    fn push_log(&self, record: SliceRecord) {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }
}

/// Cancels jobs (call without the lock).
pub(crate) fn cancel_all(jobs: Vec<QueuedJob>) {
    for job in jobs {
        job.complete(Err(JobFailure::Cancelled));
    }
}

/// The device thread's main loop as engine thread `generation`; returns after shutdown, having
/// cancelled unfinished jobs, or as soon as the watchdog replaced it.
pub(crate) fn run(shared: Arc<Shared>, mut engine: Box<dyn DynEngine>, generation: u64) {
    let mut guard = shared.lock();
    while !guard.shutdown {
        match guard.core.pick() {
            Some(turn) => match run_slot(&shared, guard, engine.as_mut(), turn, generation) {
                Some(g) => guard = g,
                None => {
                    log::warn!("engine thread {generation} was replaced by the watchdog; exiting");
                    return;
                }
            },
            None => guard = shared.wait_for(guard, None),
        }
    }
    let mut pending = Vec::new();
    for vgpu in guard.vgpus.values_mut() {
        pending.extend(vgpu.take_all());
    }
    drop(guard);
    cancel_all(pending);
}

/// What happened to the job that ran in a slice.
enum Ran {
    Finished(ActiveJob, Result<(), JobFailure>),
    Preempted(ActiveJob),
}

/// Runs one turn: the vGPU's jobs until the first chunk boundary past the target, until it has
/// no work, or until a waking vGPU that is owed time preempts it at a chunk boundary. A reserved
/// turn (held share) idles until its target unless the vGPU gets work, which then runs at once.
fn run_slot<'a>(
    shared: &'a Shared,
    mut guard: MutexGuard<'a, SchedState>,
    engine: &mut dyn DynEngine,
    turn: Turn,
    generation: u64,
) -> Option<MutexGuard<'a, SchedState>> {
    let start = Instant::now();
    let seq = guard.slice_seq;
    guard.slice_seq += 1;
    let hold = guard.core.policy().holds_share();
    // Device time of this turn's pieces (host time of its chunks on an engine without device
    // timestamps).
    let mut busy_ns = 0u64;
    // Idle wall time a reserved turn held the engine for its vGPU.
    let mut idle_ns = 0u64;
    let mut chunks = 0u32;
    let mut preempted = false;
    loop {
        if guard.shutdown {
            break;
        }
        let Some(vgpu) = guard.vgpus.get_mut(&turn.vgpu) else {
            break; // destroyed
        };
        let active = match vgpu.current.take() {
            Some(active) => Some(active),
            None => vgpu
                .runlist
                .pop()
                .map(|q| ActiveJob::start(q, Instant::now(), seq)),
        };
        let Some(mut active) = active else {
            let used = charge(busy_ns + idle_ns, start);
            if hold && turn.reserved && used < turn.target_ns {
                if shared.woke.swap(false, Ordering::AcqRel)
                    && guard.core.should_preempt(&turn, used)
                {
                    break;
                }
                let idle_from = Instant::now();
                guard = shared.wait_for(guard, Some(Duration::from_nanos(turn.target_ns - used)));
                idle_ns += nanos(idle_from.elapsed());
                continue;
            }
            break;
        };
        vgpu.running = true;
        active.slices += 1;
        // Alone: no other vGPU has work now (a later wake sets `woke`, checked per chunk). A
        // `woke` set before is then stale (this vGPU's own wake, or one cancelled since: only
        // vGPUs with work can preempt), and wakes set it under this lock, so clearing it loses
        // none.
        let mut solo = guard.core.busy_others(turn.vgpu) == 0;
        if solo {
            shared.woke.store(false, Ordering::Release);
        }
        drop(guard);
        let slot = match &active.stall_slot {
            Some(slot) => Arc::clone(slot),
            None => {
                let real = std::mem::replace(&mut active.queued.completion, Box::new(|_| {}));
                let slot: CompletionSlot = Arc::new(Mutex::new(Some(real)));
                active.queued.completion = Box::new(Forward(Arc::clone(&slot)));
                active.stall_slot = Some(Arc::clone(&slot));
                slot
            }
        };
        let beat = |since: Instant| Beat {
            since,
            turn,
            turn_start: start,
            slot: Arc::clone(&slot),
        };

        let mut segment_ns = 0u64;
        // Whether the engine reported device time for the last chunk.
        let mut timed: bool;
        // One clock read per chunk: each chunk's end is the next one's start.
        let mut t0 = Instant::now();
        let ran = loop {
            // A wake since the last boundary (or since the lock was dropped) ends `solo` here
            // already; the swap below decides preemption.
            solo = solo && !shared.woke.load(Ordering::Acquire);
            let used = charge(busy_ns + idle_ns + segment_ns, start);
            let target = shared
                .chunks
                .next(solo, turn.target_ns.saturating_sub(used));
            if !shared.beat(generation, beat(t0)) {
                return None;
            }
            let step = run_contained(engine, &mut active, target);
            if !shared.beat_end(generation) {
                // The watchdog failed this job and started another engine thread.
                return None;
            }
            shared
                .max_in_flight
                .fetch_max(engine.max_in_flight(), Ordering::Relaxed);
            let now = Instant::now();
            // Device time when the engine measures it, host time otherwise.
            let device_ns = engine.last_device_ns();
            timed = device_ns.is_some();
            let dt = match (&step, device_ns) {
                (Ok(_), Some(device_ns)) => device_ns,
                _ => nanos(now.saturating_duration_since(t0)),
            };
            t0 = now;
            segment_ns += dt;
            active.run_ns += dt;
            chunks = chunks.saturating_add(1);
            let used = charge(busy_ns + idle_ns + segment_ns, start);
            match step {
                Ok(true) => break Ran::Finished(active, Ok(())),
                Err(e) => break Ran::Finished(active, Err(JobFailure::Engine(e))),
                Ok(false) if used >= turn.target_ns => break Ran::Preempted(active),
                Ok(false) if shared.preempt_for_wake(&turn, used, &mut solo) => {
                    break Ran::Preempted(active)
                }
                Ok(false) => {}
            }
        };
        // A job leaving the engine part-way first waits for its pieces still in flight: they
        // are charged to this turn, and nothing of it runs during the next vGPU's turn.
        let ran = match ran {
            Ran::Preempted(mut active) => {
                if !shared.beat(generation, beat(t0)) {
                    return None;
                }
                let settled = settle_contained(engine, &mut active);
                if !shared.beat_end(generation) {
                    return None;
                }
                let dt = match settled {
                    Ok(Some(device_ns)) => device_ns,
                    // Nothing was in flight on an engine that times its chunks on the device.
                    Ok(None) if timed => 0,
                    _ => nanos(t0.elapsed()),
                };
                segment_ns += dt;
                active.run_ns += dt;
                match settled {
                    Ok(_) => Ran::Preempted(active),
                    Err(e) => Ran::Finished(active, Err(JobFailure::Engine(e))),
                }
            }
            finished => finished,
        };
        match ran {
            Ran::Finished(active, result) => {
                // Count the job before its completion runs, so stats read after a completion
                // include it.
                guard = shared.lock();
                busy_ns += segment_ns;
                if let Some(vgpu) = guard.vgpus.get_mut(&turn.vgpu) {
                    vgpu.running = false;
                    vgpu.counters
                        .add_busy(shared.now_ns(Instant::now()), segment_ns);
                    vgpu.counters.record_wait(active.wait_ns);
                    if result.is_ok() {
                        vgpu.counters.jobs_completed += 1;
                    } else {
                        vgpu.counters.jobs_failed += 1;
                    }
                }
                drop(guard);
                let report = active.report();
                active.queued.complete(result.map(|()| report));
                guard = shared.lock();
                if charge(busy_ns + idle_ns, start) >= turn.target_ns {
                    preempted = guard.vgpus.get(&turn.vgpu).is_some_and(VgpuSched::has_work);
                    break;
                }
            }
            Ran::Preempted(active) => {
                guard = shared.lock();
                busy_ns += segment_ns;
                match guard.vgpus.get_mut(&turn.vgpu) {
                    Some(vgpu) => {
                        vgpu.running = false;
                        vgpu.counters
                            .add_busy(shared.now_ns(Instant::now()), segment_ns);
                        vgpu.current = Some(active);
                    }
                    None => {
                        drop(guard);
                        cancel_all(vec![active.queued]);
                        guard = shared.lock();
                    }
                }
                preempted = true;
                break;
            }
        }
    }
    let end = Instant::now();
    let elapsed = nanos(end.saturating_duration_since(start));
    let charged = charge(busy_ns + idle_ns, start);
    guard.core.account(&turn, charged);
    guard.refresh(turn.vgpu);
    if let Some(vgpu) = guard.vgpus.get_mut(&turn.vgpu) {
        vgpu.counters.end_slice(charged > turn.target_ns);
    }
    shared.push_log(SliceRecord {
        seq,
        vgpu_id: turn.vgpu,
        start_ns: shared.now_ns(start),
        target_ns: turn.target_ns,
        time_run_ns: busy_ns,
        charged_ns: charged,
        elapsed_ns: elapsed,
        preempted,
        reserved: turn.reserved,
        chunks,
    });
    Some(guard)
}

/// A turn is charged at least `1 / HOST_FLOOR_DIVISOR` of its wall time, however little device
/// time it used (see [`charge`]).
pub(crate) const HOST_FLOOR_DIVISOR: u64 = 4;

/// What a turn that started at `start` and has used `used_ns` (device time of its pieces, plus
/// the idle time a reserved turn held) is charged so far: `used_ns`, but at least
/// `1 / HOST_FLOOR_DIVISOR` of its wall time. Device time leaves out the host's work per piece
/// and per job (recording, completions), during which the engine thread serves this vGPU and
/// the device may idle; without the floor a vGPU of many tiny jobs would hold the engine while
/// being charged almost nothing. With submissions pipelined the device is busy most of the
/// turn, so device time is what is charged.
fn charge(used_ns: u64, start: Instant) -> u64 {
    used_ns.max(nanos(start.elapsed()) / HOST_FLOOR_DIVISOR)
}

/// Starts engine thread `generation` on `engine`.
pub(crate) fn spawn_engine(
    shared: &Arc<Shared>,
    engine: Box<dyn DynEngine>,
    generation: u64,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name("vgpu-engine".into())
        .spawn(move || run(shared, engine, generation))
}

/// The watchdog: runs engine thread 0 on `engine` and watches it. A chunk running longer than
/// `stall` fails its job ([`EngineError::Stalled`]), the turn is charged, and a new engine
/// thread starts on a fresh engine from `factory` (without one, the stall is only logged).
/// Returns after shutdown, once the current engine thread ended.
pub(crate) fn watchdog(
    shared: Arc<Shared>,
    engine: Box<dyn DynEngine>,
    factory: Option<EngineFactory>,
    stall: Duration,
) {
    let mut current = match spawn_engine(&shared, engine, 0) {
        Ok(handle) => handle,
        Err(e) => {
            log::error!("cannot start the engine thread: {e}");
            return;
        }
    };
    let tick = (stall / 4).clamp(Duration::from_millis(1), Duration::from_millis(50));
    let mut reported = false;
    loop {
        if shared.lock().shutdown {
            break;
        }
        std::thread::sleep(tick);
        let stuck_for = {
            let hb = shared.heartbeat();
            hb.chunk
                .as_ref()
                .map(|b| b.since.elapsed())
                .filter(|&d| d > stall)
        };
        let Some(stuck_for) = stuck_for else {
            reported = false;
            continue;
        };
        let ms = u64::try_from(stuck_for.as_millis()).unwrap_or(u64::MAX);
        let Some(factory) = &factory else {
            if !reported {
                log::error!("engine stalled for {ms} ms; this engine cannot be restarted");
                reported = true;
            }
            continue;
        };
        let fresh = match factory() {
            Ok(engine) => engine,
            Err(e) => {
                if !reported {
                    log::error!("engine stalled for {ms} ms; restart failed: {e}");
                    reported = true;
                }
                continue;
            }
        };
        // Replace the thread only if the same chunk is still stuck (it may have ended while
        // the fresh engine was made).
        let (generation, beat) = {
            let mut hb = shared.heartbeat();
            let still = hb.chunk.as_ref().is_some_and(|b| b.since.elapsed() > stall);
            if !still {
                continue;
            }
            hb.generation += 1;
            (hb.generation, hb.chunk.take())
        };
        let Some(beat) = beat else {
            continue;
        };
        {
            let mut guard = shared.lock();
            if let Some(vgpu) = guard.vgpus.get_mut(&beat.turn.vgpu) {
                vgpu.running = false;
                vgpu.counters.jobs_failed += 1;
            }
            let elapsed = nanos(beat.turn_start.elapsed());
            guard.core.account(&beat.turn, elapsed);
            guard.refresh(beat.turn.vgpu);
        }
        let failed = beat.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(completion) = failed {
            let result = Err(JobFailure::Engine(EngineError::Stalled(ms)));
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                completion.complete(result)
            }))
            .is_err()
            {
                log::error!("completion of a stalled job panicked");
            }
        }
        log::error!(
            "engine stalled for {ms} ms in a job of vGPU {}: job failed, engine restarted \
             (thread {generation})",
            beat.turn.vgpu
        );
        match spawn_engine(&shared, fresh, generation) {
            // The stuck thread is left behind; it exits if its chunk ever returns.
            Ok(handle) => current = handle,
            Err(e) => {
                log::error!("cannot start a new engine thread: {e}");
                return;
            }
        }
        shared.wake.notify_all();
    }
    if current.join().is_err() {
        log::error!("engine thread panicked");
    }
}

/// Waits for `active`'s submissions still in flight ([`ActiveJob::settle`]), containing a panic
/// and resetting the engine after an error as [`run_contained`] does.
fn settle_contained(
    engine: &mut dyn DynEngine,
    active: &mut ActiveJob,
) -> Result<Option<u64>, EngineError> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| active.settle(engine)))
        .unwrap_or_else(|payload| Err(EngineError::Panicked(panic_message(payload.as_ref()))));
    if let Err(e) = &result {
        log::error!(
            "engine {}: settling a preempted job failed: {e}",
            engine.name()
        );
        if let Err(re) = engine.reset() {
            log::error!("engine {} reset failed after {e}: {re}", engine.name());
        }
    }
    result
}

/// Runs one chunk of `active`, containing a panic in the engine: the job fails with
/// [`EngineError::Panicked`] and the engine is reset, so only this job is affected. An engine
/// error that may leave the engine unusable (device lost, timeout) resets it too.
fn run_contained(
    engine: &mut dyn DynEngine,
    active: &mut ActiveJob,
    target_ns: u64,
) -> Result<bool, EngineError> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        active.step(engine, target_ns)
    }));
    let result = match result {
        Ok(result) => result,
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            engine_log().log(
                log::Level::Error,
                format_args!("engine {} panicked in a job: {message}", engine.name()),
            );
            Err(EngineError::Panicked(message))
        }
    };
    if let Err(e @ (EngineError::Panicked(_) | EngineError::DeviceLost | EngineError::Timeout(_))) =
        &result
    {
        // Rate-limited: while a lost device cannot be re-created, every job a guest submits
        // fails here.
        match engine.reset() {
            Ok(()) => engine_log().log(
                log::Level::Warn,
                format_args!("engine {} reset after: {e}", engine.name()),
            ),
            Err(re) => engine_log().log(
                log::Level::Error,
                format_args!("engine {} reset failed after {e}: {re}", engine.name()),
            ),
        }
    }
    result
}

/// The limiter of the engine thread's lines about failed jobs (guests cause them by submitting).
fn engine_log() -> &'static GuestLog {
    static LOG: OnceLock<GuestLog> = OnceLock::new();
    LOG.get_or_init(|| GuestLog::new("engine"))
}
