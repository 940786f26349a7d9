//! The driver core: one [`Device`] per process, shared by every VM, and its [`Vgpu`]s.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use thiserror::Error;
use uuid::Uuid;
use vgpu_mdev::{TypeTable, VgpuType, TIMESLICE_RANGE_US};
use vgpu_protocol::capset::JobFailure as WireJobFailure;
use vgpu_protocol::ErrorCode;

use super::budget::Charge;
use super::budget::MemoryBudget;
use super::buffer::{BufferError, DeviceBuffer};
use super::channel::{Channel, Completion, SubmitError, CHANNEL_RESERVE_BYTES};
use super::engine::cpu::CpuEngine;
use super::engine::{
    DynEngine, EngineCaps, EngineError, EngineMemory, DEFAULT_CHUNK_TARGET_NS,
    DEFAULT_SOLO_CHUNK_TARGET_NS,
};
use super::job::Job;
use super::memory::{DeviceFull, DeviceMemory};
use super::module::ModuleCompiler;
use super::partition::MemoryPartition;
use super::runlist::QueuedJob;
use super::scheduler::{Policy, SchedCore};
use super::stats::{percentile, SliceRecord, VgpuStats};
use super::worker::{self, ChunkTargets, Shared, VgpuSched};

/// Default device memory (MiB).
pub const DEFAULT_DEVICE_MEMORY_MIB: u64 = 4096;

/// How to build the [`Device`].
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Device memory in MiB (CLI `--device-memory`).
    pub memory_mib: u64,
    /// Scheduling policy.
    pub policy: Policy,
    /// Device time slice (1000..=30000 µs); `None`: 2000 µs with ≤ 8 vGPUs, 1000 above.
    pub timeslice_us: Option<u32>,
    /// The vGPU types offered.
    pub types: TypeTable,
    /// Engine chunk cost target (ns) while another vGPU has work or may wake: the preemption
    /// granularity.
    pub chunk_target_ns: u64,
    /// Engine chunk cost target (ns) while the running vGPU is the only one with work (at least
    /// `chunk_target_ns`; a vGPU that wakes waits up to about one such chunk).
    pub solo_chunk_target_ns: u64,
    /// A chunk running longer than this is a stalled engine: the watchdog fails its job and
    /// restarts the engine.
    pub watchdog: std::time::Duration,
}

/// Default [`DeviceConfig::watchdog`]: far above any chunk (≤ 1 ms) and the Vulkan fence timeout.
pub const DEFAULT_WATCHDOG: std::time::Duration = std::time::Duration::from_secs(30);

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            memory_mib: DEFAULT_DEVICE_MEMORY_MIB,
            policy: Policy::default(),
            timeslice_us: None,
            types: TypeTable::builtin(),
            chunk_target_ns: DEFAULT_CHUNK_TARGET_NS,
            solo_chunk_target_ns: DEFAULT_SOLO_CHUNK_TARGET_NS,
            watchdog: DEFAULT_WATCHDOG,
        }
    }
}

/// Errors from the driver core's management operations.
#[derive(Debug, Error)]
pub enum DriverError {
    /// The configuration is invalid; the message says how.
    #[error("invalid device configuration: {0}")]
    Config(String),
    /// No such vGPU type.
    #[error("unknown vGPU type {0:?}")]
    UnknownType(String),
    /// The type's `max_instances` vGPUs already exist.
    #[error("vGPU type {name} allows at most {max} instances")]
    TooManyInstances {
        /// The type.
        name: String,
        /// Its `max_instances`.
        max: u32,
    },
    /// No contiguous device memory for the type's framebuffer (nothing was created).
    #[error(
        "no room for a vGPU of type {name}: device memory full: it needs {} MiB in one range; {} \
         MiB are free, the largest free range is {} MiB (nothing was created)",
        source.requested >> 20, source.free >> 20, source.largest_free >> 20
    )]
    DeviceFull {
        /// The type.
        name: String,
        /// The allocator's report.
        #[source]
        source: DeviceFull,
    },
    /// A vGPU with this UUID exists.
    #[error("a vGPU with UUID {0} already exists")]
    DuplicateUuid(Uuid),
    /// The device has shut down.
    #[error("device shut down")]
    ShutDown,
    /// The vGPU was destroyed.
    #[error("vGPU destroyed")]
    Destroyed,
    /// A buffer could not be allocated.
    #[error("{0}")]
    Buffer(#[from] BufferError),
    /// The device thread could not be started.
    #[error("cannot start device thread: {0}")]
    Thread(std::io::Error),
    /// The engine could not provide the vGPU's memory.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
}

/// A live vGPU, as listed by [`Device::vgpus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgpuInfo {
    /// vGPU id.
    pub id: u32,
    /// Its UUID.
    pub uuid: Uuid,
    /// Its type name.
    pub type_name: String,
}

struct DeviceInner {
    shared: Arc<Shared>,
    memory: Arc<DeviceMemory>,
    types: TypeTable,
    registry: Mutex<Registry>,
    engine: &'static str,
    /// What the engine offers (for capsets and listings).
    caps: EngineCaps,
    /// The engine's memory, when buffers live there.
    engine_memory: Option<Arc<dyn EngineMemory>>,
    /// The engine's compiler of guest modules, when it runs them.
    module_compiler: Option<Arc<dyn ModuleCompiler>>,
}

#[derive(Default)]
struct Registry {
    next_id: u32,
    live: Vec<VgpuInfo>,
    shut_down: bool,
}

impl DeviceInner {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The driver core: device memory, the engine thread and the scheduler, shared by all VMs.
pub struct Device {
    inner: Arc<DeviceInner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Device {
    /// Starts a device with the embedded CPU engine.
    pub fn new(config: DeviceConfig) -> Result<Arc<Self>, DriverError> {
        let engine = Box::new(CpuEngine::new(config.chunk_target_ns));
        Self::with_engine(config, engine)
    }

    /// Starts a device with `engine`.
    pub fn with_engine(
        config: DeviceConfig,
        engine: Box<dyn DynEngine>,
    ) -> Result<Arc<Self>, DriverError> {
        if config.memory_mib == 0 {
            return Err(DriverError::Config("device memory must be non-zero".into()));
        }
        let caps = engine.caps();
        let wanted = config.memory_mib.saturating_mul(super::memory::MIB);
        if caps.device_memory_bytes != 0 && wanted > caps.device_memory_bytes {
            return Err(DriverError::Config(format!(
                "device memory {} MiB is more than the {} engine's {} MiB ({})",
                config.memory_mib,
                caps.kind.as_str(),
                caps.device_memory_bytes / super::memory::MIB,
                caps.device_name
            )));
        }
        let engine_memory = engine.memory();
        let module_compiler = engine.module_compiler();
        if let Some(us) = config.timeslice_us {
            if !TIMESLICE_RANGE_US.contains(&us) {
                return Err(DriverError::Config(format!(
                    "timeslice {us} µs outside 1000..=30000"
                )));
            }
        }
        let chunks = ChunkTargets::new(engine.chunk_target_ns(), config.solo_chunk_target_ns);
        let shared = Arc::new(Shared::new(
            SchedCore::new(config.policy, config.timeslice_us),
            chunks,
        ));
        let engine_name = engine.name();
        let thread_shared = Arc::clone(&shared);
        let factory = engine.factory();
        let stall = config.watchdog;
        let thread = std::thread::Builder::new()
            .name("vgpu-watchdog".into())
            .spawn(move || {
                crate::sandbox::enter(crate::sandbox::ThreadKind::Engine);
                worker::watchdog(thread_shared, engine, factory, stall)
            })
            .map_err(DriverError::Thread)?;
        Ok(Arc::new(Self {
            inner: Arc::new(DeviceInner {
                shared,
                memory: DeviceMemory::with_mib(config.memory_mib),
                types: config.types,
                registry: Mutex::new(Registry {
                    next_id: 1,
                    ..Registry::default()
                }),
                engine: engine_name,
                caps,
                engine_memory,
                module_compiler,
            }),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// What the engine behind this device offers.
    pub fn engine_caps(&self) -> &EngineCaps {
        &self.inner.caps
    }

    /// The vGPU types offered.
    pub fn types(&self) -> &TypeTable {
        &self.inner.types
    }

    /// Losses and re-creations of the engine's device (zero for the CPU engine).
    pub fn engine_health(&self) -> super::engine::DeviceHealth {
        self.inner
            .engine_memory
            .as_ref()
            .map(|m| m.health())
            .unwrap_or_default()
    }

    /// The engine's name (`cpu`, ...).
    pub fn engine_name(&self) -> &'static str {
        self.inner.engine
    }

    /// The scheduling policy.
    pub fn policy(&self) -> Policy {
        self.inner.shared.lock().core.policy()
    }

    /// The device time slice now in force (µs).
    pub fn timeslice_us(&self) -> u32 {
        self.inner.shared.lock().core.device_timeslice_us()
    }

    /// Changes the scheduling policy and/or the device time slice now (the running slice ends
    /// at its old target; the next turn uses the new one). Returns the policy and slice before.
    pub fn set_scheduler(
        &self,
        policy: Option<Policy>,
        timeslice_us: Option<u32>,
    ) -> Result<(Policy, u32), DriverError> {
        if let Some(us) = timeslice_us {
            if !TIMESLICE_RANGE_US.contains(&us) {
                return Err(DriverError::Config(format!(
                    "timeslice {us} µs outside 1000..=30000"
                )));
            }
        }
        let before = {
            let mut state = self.inner.shared.lock();
            let before = (state.core.policy(), state.core.device_timeslice_us());
            if let Some(p) = policy {
                state.core.set_policy(p);
            }
            if timeslice_us.is_some() {
                state.core.set_timeslice_us(timeslice_us);
            }
            before
        };
        self.inner.shared.wake.notify_all();
        Ok(before)
    }

    /// Device memory (total bytes, bytes reserved by partitions).
    pub fn memory(&self) -> (u64, u64) {
        (self.inner.memory.total(), self.inner.memory.used())
    }

    /// Instances of `type_name` that can still be created: limited by the type's
    /// `max_instances` and by contiguous free device memory.
    pub fn available_instances(&self, type_name: &str) -> u32 {
        let Some(ty) = self.inner.types.get(type_name) else {
            return 0;
        };
        let live = self.count_type(type_name);
        let by_count = ty.max_instances.saturating_sub(live);
        let by_memory: u64 = self
            .inner
            .memory
            .free_ranges()
            .iter()
            .map(|&(_, len)| len / ty.framebuffer_bytes)
            .sum();
        by_count.min(u32::try_from(by_memory).unwrap_or(u32::MAX))
    }

    fn count_type(&self, type_name: &str) -> u32 {
        let registry = self.inner.registry();
        let n = registry
            .live
            .iter()
            .filter(|v| v.type_name == type_name)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Creates a vGPU of `type_name`: reserves its framebuffer partition (first fit) and
    /// registers it with the scheduler.
    pub fn create_vgpu(&self, type_name: &str, uuid: Uuid) -> Result<Arc<Vgpu>, DriverError> {
        let ty = self
            .inner
            .types
            .get(type_name)
            .ok_or_else(|| DriverError::UnknownType(type_name.to_string()))?
            .clone();
        let id = {
            let mut registry = self.inner.registry();
            if registry.shut_down {
                return Err(DriverError::ShutDown);
            }
            if registry.live.iter().any(|v| v.uuid == uuid) {
                return Err(DriverError::DuplicateUuid(uuid));
            }
            let live = registry
                .live
                .iter()
                .filter(|v| v.type_name == ty.name)
                .count();
            if live >= ty.max_instances as usize {
                return Err(DriverError::TooManyInstances {
                    name: ty.name.clone(),
                    max: ty.max_instances,
                });
            }
            let reservation =
                self.inner
                    .memory
                    .reserve(ty.framebuffer_bytes)
                    .map_err(|source| DriverError::DeviceFull {
                        name: ty.name.clone(),
                        source,
                    })?;
            let id = registry.next_id;
            let arena = match &self.inner.engine_memory {
                Some(memory) => Some(memory.create_partition(id, reservation.size())?),
                None => None,
            };
            registry.next_id = registry.next_id.wrapping_add(1).max(1);
            registry.live.push(VgpuInfo {
                id,
                uuid,
                type_name: ty.name.clone(),
            });
            (id, reservation, arena)
        };
        let (id, reservation, arena) = id;
        {
            let mut state = self.inner.shared.lock();
            state.core.add(id, ty.weight, ty.timeslice_us);
            state.vgpus.insert(id, VgpuSched::default());
        }
        log::info!("created vGPU {id} ({}, {uuid})", ty.name);
        Ok(Arc::new(Vgpu {
            id,
            uuid,
            partition: MemoryPartition::with_arena(id, reservation, arena),
            ty,
            device: Arc::clone(&self.inner),
            next_channel: AtomicU32::new(1),
            destroyed: AtomicBool::new(false),
            guest_errors: Default::default(),
            completion_failures: Arc::new(AtomicU64::new(0)),
            outcomes: Mutex::new(GuestOutcomes::default()),
        }))
    }

    /// Live vGPUs.
    pub fn vgpus(&self) -> Vec<VgpuInfo> {
        self.inner.registry().live.clone()
    }

    /// The scheduler log (most recent slices, oldest first).
    pub fn scheduler_log(&self) -> Vec<SliceRecord> {
        self.inner.shared.log_snapshot()
    }

    /// Most submissions the engine has had in flight at once so far (1 for a synchronous
    /// engine such as the CPU engine; up to the pipeline depth on Vulkan).
    pub fn engine_max_in_flight(&self) -> usize {
        self.inner
            .shared
            .max_in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the device thread (cancelling unfinished jobs) and waits for it. Idempotent; later
    /// submissions and creations fail with a shut-down error.
    pub fn shutdown(&self) {
        self.inner.registry().shut_down = true;
        self.inner.shared.lock().shutdown = true;
        self.inner.shared.wake.notify_all();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                log::error!("device thread panicked");
            }
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("memory", &self.memory())
            .field("vgpus", &self.vgpus().len())
            .finish()
    }
}

/// One vGPU: a framebuffer partition, a runlist of its channels' jobs and a scheduler entry.
/// Dropping the last handle (channels hold one) destroys it.
pub struct Vgpu {
    id: u32,
    uuid: Uuid,
    ty: VgpuType,
    partition: Arc<MemoryPartition>,
    device: Arc<DeviceInner>,
    next_channel: AtomicU32,
    destroyed: AtomicBool,
    guest_errors: [AtomicU64; GUEST_ERROR_CODES.len()],
    /// Completions of this vGPU's jobs that panicked.
    completion_failures: Arc<AtomicU64>,
    /// What the guest learns about failed jobs and refused submits.
    outcomes: Mutex<GuestOutcomes>,
}

/// What a guest learns about its failed jobs and refused submits (through QUERY_STATS: the
/// Linux driver does not pass error responses on to programs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestOutcomes {
    /// Why the last failed job failed.
    pub last_failure: Option<WireJobFailure>,
    /// Submits refused before anything ran.
    pub submits_refused: u64,
    /// The error code of the last refusal.
    pub last_refusal_code: Option<ErrorCode>,
    /// Why the last submit was refused.
    pub last_refusal: String,
}

/// The error responses counted per vGPU, with their metric label.
pub const GUEST_ERROR_CODES: [(ErrorCode, &str); 6] = [
    (ErrorCode::Unspec, "ERR_UNSPEC"),
    (ErrorCode::OutOfMemory, "ERR_OUT_OF_MEMORY"),
    (ErrorCode::InvalidScanoutId, "ERR_INVALID_SCANOUT_ID"),
    (ErrorCode::InvalidResourceId, "ERR_INVALID_RESOURCE_ID"),
    (ErrorCode::InvalidContextId, "ERR_INVALID_CONTEXT_ID"),
    (ErrorCode::InvalidParameter, "ERR_INVALID_PARAMETER"),
];

impl Vgpu {
    /// The engine's compiler of guest modules (`None`: the engine runs only built-in kernels).
    pub fn module_compiler(&self) -> Option<&Arc<dyn ModuleCompiler>> {
        self.device.module_compiler.as_ref()
    }

    fn outcomes(&self) -> std::sync::MutexGuard<'_, GuestOutcomes> {
        self.outcomes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes why a job of this vGPU failed.
    pub fn record_job_failure(&self, why: WireJobFailure) {
        self.outcomes().last_failure = Some(why);
    }

    /// Notes a refused submit and why (the stats record carries the text's first bytes).
    pub fn record_refusal(&self, code: ErrorCode, why: &str) {
        let mut o = self.outcomes();
        o.submits_refused += 1;
        o.last_refusal_code = Some(code);
        o.last_refusal.clear();
        o.last_refusal.push_str(why);
    }

    /// Failed-job and refused-submit outcomes so far.
    pub fn guest_outcomes(&self) -> GuestOutcomes {
        self.outcomes().clone()
    }

    /// Counts an error response sent to the guest.
    pub fn record_guest_error(&self, code: ErrorCode) {
        if let Some(i) = GUEST_ERROR_CODES.iter().position(|&(c, _)| c == code) {
            self.guest_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Error responses sent to the guest so far, by code (in [`GUEST_ERROR_CODES`] order).
    pub fn guest_errors(&self) -> Vec<(&'static str, u64)> {
        GUEST_ERROR_CODES
            .iter()
            .zip(&self.guest_errors)
            .map(|(&(_, name), n)| (name, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Device-wide vGPU id (≥ 1).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The UUID it was created with.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// Its type.
    pub fn vgpu_type(&self) -> &VgpuType {
        &self.ty
    }

    /// What the engine running its jobs offers.
    pub fn engine_caps(&self) -> &EngineCaps {
        &self.device.caps
    }

    /// Its memory partition (also the [`MemoryBudget`] for 2D surfaces).
    pub fn partition(&self) -> &Arc<MemoryPartition> {
        &self.partition
    }

    /// The partition as a shareable [`MemoryBudget`].
    pub fn budget(&self) -> Arc<dyn MemoryBudget> {
        self.partition.clone()
    }

    /// Allocates a zeroed buffer charged to the partition.
    pub fn alloc_buffer(&self, size: u64) -> Result<Arc<DeviceBuffer>, DriverError> {
        if self.destroyed.load(Ordering::Acquire) {
            return Err(DriverError::Destroyed);
        }
        Ok(DeviceBuffer::new(&self.partition, size)?)
    }

    /// Opens a channel (a guest context's queue).
    pub fn create_channel(self: &Arc<Self>) -> Result<Channel, DriverError> {
        if self.destroyed.load(Ordering::Acquire) {
            return Err(DriverError::Destroyed);
        }
        let reserve = self
            .partition
            .charge_guard(CHANNEL_RESERVE_BYTES)
            .map_err(|e| DriverError::Buffer(BufferError::OutOfMemory(e)))?;
        let id = self.next_channel.fetch_add(1, Ordering::Relaxed);
        Ok(Channel::new(id, Arc::clone(self), reserve))
    }

    pub(crate) fn submit_on(
        &self,
        channel: u32,
        job: Job,
        completion: Box<dyn Completion>,
        charge: Charge,
    ) -> Result<(), SubmitError> {
        job.check_owner(self.id)?;
        let shared = &self.device.shared;
        let rejected = {
            let mut state = shared.lock();
            if state.shutdown {
                return Err(SubmitError::ShutDown);
            }
            let submitted_slice = state.slice_seq;
            let vgpu = state
                .vgpus
                .get_mut(&self.id)
                .ok_or(SubmitError::VgpuDestroyed)?;
            let queued = QueuedJob {
                job,
                completion,
                channel,
                submitted: Instant::now(),
                submitted_slice,
                _charge: Some(charge),
                completion_failures: Arc::clone(&self.completion_failures),
            };
            let rejected = vgpu.runlist.push(queued).err();
            if state.refresh(self.id) {
                shared.woke.store(true, Ordering::Release);
            }
            rejected
        };
        if rejected.is_some() {
            // Dropped here, not under the lock: a completion may own a channel whose drop locks.
            drop(rejected);
            return Err(SubmitError::QueueFull);
        }
        shared.wake.notify_all();
        Ok(())
    }

    pub(crate) fn close_channel(&self, channel: u32) {
        let jobs = {
            let mut state = self.device.shared.lock();
            let jobs = state
                .vgpus
                .get_mut(&self.id)
                .map(|v| v.runlist.remove_channel(channel))
                .unwrap_or_default();
            let _ = state.refresh(self.id);
            jobs
        };
        worker::cancel_all(jobs);
    }

    /// Destroys the vGPU now: it leaves the scheduler, its unfinished jobs are cancelled and it
    /// no longer counts against its type's instances. The partition's memory returns to the
    /// device once the last buffer and handle are gone. Idempotent.
    pub fn destroy(&self) {
        if self.destroyed.swap(true, Ordering::AcqRel) {
            return;
        }
        let jobs = {
            let mut state = self.device.shared.lock();
            state.core.remove(self.id);
            state
                .vgpus
                .remove(&self.id)
                .map(|mut v| v.take_all())
                .unwrap_or_default()
        };
        self.device.shared.wake.notify_all();
        worker::cancel_all(jobs);
        self.device.registry().live.retain(|v| v.id != self.id);
        log::info!("destroyed vGPU {} ({})", self.id, self.uuid);
    }

    /// Scheduling, utilization and memory figures.
    pub fn stats(&self) -> VgpuStats {
        let shared = &self.device.shared;
        let now_ns = shared.now_ns(Instant::now());
        let mut state = shared.lock();
        let policy = state.core.policy();
        let timeslice_us = state.core.timeslice_us(self.id);
        let share_permille = state.core.share_permille(self.id);
        let debt_ns = state.core.debt_ns(self.id);
        // Best-effort: the vGPUs with work besides this one, plus this one (it is asking). Its own
        // work flag is not consulted: at a job's completion the runlist is already empty while
        // the policy core still counts the vGPU busy until the turn ends, so mixing the two
        // counted it twice (QUERY_STATS of a lone guest said 2 active vGPUs).
        let active = if policy.holds_share() {
            state.core.len()
        } else {
            state.core.busy_others(self.id) + 1
        };
        let mut stats = VgpuStats {
            vgpu_id: self.id,
            type_name: self.ty.name.clone(),
            policy,
            timeslice_us,
            framebuffer_total: self.partition.total(),
            framebuffer_used: self.partition.used(),
            utilization_permille: 0,
            share_permille,
            active_vgpus: u32::try_from(active).unwrap_or(u32::MAX),
            jobs_completed: 0,
            jobs_failed: 0,
            completion_failures: self.completion_failures.load(Ordering::Acquire),
            busy_ns: 0,
            queued_jobs: 0,
            queue_wait_p50_ns: 0,
            queue_wait_p99_ns: 0,
            debt_ns,
            slices: 0,
            overruns: 0,
            wait_histogram: Default::default(),
        };
        let mut waits = Vec::new();
        if let Some(vgpu) = state.vgpus.get_mut(&self.id) {
            let c = &mut vgpu.counters;
            stats.utilization_permille = c.window.permille(now_ns);
            stats.jobs_completed = c.jobs_completed;
            stats.jobs_failed = c.jobs_failed;
            stats.busy_ns = c.busy_ns;
            stats.slices = c.slices;
            stats.overruns = c.overruns;
            stats.wait_histogram = c.wait_histogram.clone();
            waits = c.wait_samples();
            stats.queued_jobs = u32::try_from(vgpu.outstanding()).unwrap_or(u32::MAX);
        }
        drop(state);
        // Sorted outside the scheduler lock.
        waits.sort_unstable();
        stats.queue_wait_p50_ns = percentile(&waits, 50);
        stats.queue_wait_p99_ns = percentile(&waits, 99);
        stats
    }
}

impl Drop for Vgpu {
    fn drop(&mut self) {
        self.destroy();
    }
}

impl std::fmt::Debug for Vgpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vgpu")
            .field("id", &self.id)
            .field("uuid", &self.uuid)
            .field("type", &self.ty.name)
            .finish()
    }
}
