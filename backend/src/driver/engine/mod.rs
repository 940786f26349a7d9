//! The engine seam: engines execute operations one bounded chunk at a time, so the scheduler can
//! preempt between chunks, and own the memory that device buffers live in.
//!
//! - [`cpu::CpuEngine`] is the embedded engine (host memory, chunks timed by the host clock).
//! - [`vulkan::VulkanEngine`] runs the kernels as compute shaders on a Vulkan device; buffers are
//!   sub-allocated from per-partition `VkDeviceMemory` blocks and chunks are sub-grids timed by
//!   timestamp queries, several of them in flight at once (each call reports one completed
//!   submission; [`Engine::settle`] waits for the rest before the device thread leaves an
//!   operation part-way).
//!
//! An engine implements [`Engine`], whose per-operation state is an associated type private to
//! the engine (the CPU engine keeps its GEMM band plan there). The device thread drives it
//! through the object-safe [`DynEngine`], implemented for every [`Engine`]. What an engine
//! offers is described by [`EngineCaps`], which the capset reports to guests. Memory an engine
//! owns is reached through [`EngineMemory`] (a partition arena per vGPU) and [`BufferStorage`]
//! (one buffer), so buffers can be read and written by the virtio-gpu layer without knowing the
//! engine. Later engine features (guest-loaded pipelines charged to a context) extend
//! [`EngineCaps`] and add operations; the seam does not assume a fixed kernel list beyond
//! [`EngineCaps::kernels`].

pub mod cpu;
#[cfg(test)]
pub(crate) mod testing;
pub mod vulkan;

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use super::buffer::BufferError;
use super::job::Op;
use super::kernels::KernelError;
use super::module::ModuleCompiler;

/// Default cost of one chunk while another vGPU may need the engine: the scheduler's
/// preemption granularity.
pub const DEFAULT_CHUNK_TARGET_NS: u64 = 100_000;
/// Default cost of one chunk while the running vGPU is the only one with work (longer chunks
/// lose less to per-chunk costs; a vGPU that wakes waits at most about one of them).
pub const DEFAULT_SOLO_CHUNK_TARGET_NS: u64 = 1_000_000;

/// How far an operation has got on the CPU engine, carried between chunks (and across
/// preemptions): the CPU engine's [`Engine::OpState`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpProgress {
    /// Units done (see [`Op::units`]); for a GEMM, rows of C finished.
    pub done: u64,
    /// Running sum of a reduction.
    pub sum: f64,
    /// Running CRC of a checksum.
    pub crc: u32,
    /// Chunks run so far.
    pub chunks: u64,
    /// GEMM: rows of the current band of C (0 until the band is planned).
    pub band_rows: u32,
    /// GEMM: the k-block the current pass over the band adds.
    pub band_kb: u32,
    /// GEMM: the first column of the band the current pass has not reached.
    pub band_col: u32,
}

/// What a chunk left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The operation has more chunks.
    More,
    /// The operation is complete (its outputs are written).
    Done,
}

/// An operation failed on the engine. Each error fails only the job it happened in.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    /// A buffer could not be accessed.
    #[error("buffer: {0}")]
    Buffer(#[from] BufferError),
    /// A kernel rejected its operands.
    #[error("{0}")]
    Kernel(#[from] KernelError),
    /// The device was lost (the engine is re-created before the next job).
    #[error("device lost")]
    DeviceLost,
    /// The device ran out of memory for the engine's own objects.
    #[error("out of device memory")]
    OutOfDeviceMemory,
    /// A submission did not complete within the engine's fence timeout.
    #[error("device timeout after {0} ms")]
    Timeout(u64),
    /// The engine panicked while running the job (contained; the engine is reset).
    #[error("engine panicked: {0}")]
    Panicked(String),
    /// The watchdog found the engine stuck in this job and restarted it.
    #[error("engine stalled for {0} ms; restarted")]
    Stalled(u64),
    /// No device matches what was asked for (`--engine vulkan:…`, `--render-node`).
    #[error("{0}")]
    NoDevice(String),
    /// A guest kernel's invocation took more loop back edges than its budget allows; its
    /// loops were cut short, so the launch's results are not valid.
    #[error("guest kernel exceeded its loop budget ({0} back edges per invocation)")]
    LoopBudget(u32),
    /// The operation exceeds what the device can bind or dispatch.
    #[error("unsupported on this device: {0}")]
    Unsupported(String),
    /// Any other device API failure.
    #[error("device error: {0}")]
    Device(String),
}

/// Which kind of engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// The embedded CPU engine.
    Cpu,
    /// A Vulkan compute device.
    Vulkan,
}

impl EngineKind {
    /// The name used on the command line, in the capset and by `vgpu-smi`.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Cpu => "cpu",
            EngineKind::Vulkan => "vulkan",
        }
    }

    /// The capset value ([`vgpu_protocol::capset::ENGINE_KIND_CPU`] and siblings).
    pub fn wire(self) -> u32 {
        match self {
            EngineKind::Cpu => vgpu_protocol::capset::ENGINE_KIND_CPU,
            EngineKind::Vulkan => vgpu_protocol::capset::ENGINE_KIND_VULKAN,
        }
    }
}

/// What an engine offers; fed into every vGPU's capset.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineCaps {
    /// Engine kind.
    pub kind: EngineKind,
    /// Device name (the Vulkan device name; the CPU model for the CPU engine).
    pub device_name: String,
    /// PCI vendor id (0 for the CPU engine).
    pub vendor_id: u32,
    /// PCI device id (0 for the CPU engine).
    pub device_id: u32,
    /// Driver name.
    pub driver_name: String,
    /// Driver version (Vulkan `driverVersion`, or the crate version packed as major<<22|minor<<12|patch).
    pub driver_version: u32,
    /// Device memory the engine can hand out, in bytes (0: host memory, bounded by configuration).
    pub device_memory_bytes: u64,
    /// Kernels it runs: bit `1 << id` per [`vgpu_protocol::channel::Kernel`].
    pub kernel_mask: u32,
    /// Queues the engine submits to.
    pub queues: u32,
    /// Duration of one timestamp tick in picoseconds (0: no device timestamps).
    pub timestamp_period_ps: u32,
    /// Largest workgroup count per dispatch dimension.
    pub max_workgroups: u32,
    /// Largest invocations per workgroup.
    pub max_workgroup_invocations: u32,
    /// Largest range one storage-buffer binding may cover (larger buffers are bound in windows).
    pub max_storage_buffer_range: u64,
}

/// Device losses and recoveries of an engine's device (all zero for the CPU engine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceHealth {
    /// Losses noticed (each counted once, however many jobs it failed).
    pub losses: u64,
    /// Devices re-created after a loss.
    pub recoveries: u64,
    /// Which device this is: 0 for the first, +1 per re-creation.
    pub generation: u64,
}

/// Memory an engine owns: one arena per vGPU partition.
pub trait EngineMemory: Send + Sync + fmt::Debug {
    /// Losses and re-creations of the device the memory is on (a lost device's memory is
    /// re-created with it).
    fn health(&self) -> DeviceHealth {
        DeviceHealth::default()
    }

    /// Creates the arena for vGPU `vgpu_id`'s partition of `bytes` (the memory exists once this
    /// returns).
    fn create_partition(
        &self,
        vgpu_id: u32,
        bytes: u64,
    ) -> Result<Arc<dyn PartitionArena>, EngineError>;
}

/// One partition's memory: buffers are carved out of it.
pub trait PartitionArena: Send + Sync + fmt::Debug {
    /// A zeroed buffer of `size` bytes (the caller has charged the partition already).
    fn alloc(&self, size: u64) -> Result<Box<dyn BufferStorage>, BufferError>;
}

/// One buffer's bytes in engine memory. Ranges are checked by the caller.
pub trait BufferStorage: Send + Sync + fmt::Debug {
    /// Runs `f` on bytes `offset..offset + len` (mapped directly, or staged through host memory
    /// when the memory is not host-visible).
    fn with_bytes(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BufferError>;
    /// Runs `f` on bytes `offset..offset + len` for writing (staged back when not host-visible).
    fn with_bytes_mut(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), BufferError>;
    /// The engine-specific object, for the engine that made it.
    fn as_any(&self) -> &dyn Any;
}

/// Makes a fresh engine on the same device (the watchdog's restart); shares nothing with the
/// engine it replaces except the device and its memory.
pub type EngineFactory = Arc<dyn Fn() -> Result<Box<dyn DynEngine>, EngineError> + Send + Sync>;

/// An execution engine, owned and driven by the device thread.
pub trait Engine: Send {
    /// Per-operation state carried between chunks, private to the engine.
    type OpState: Default + Send + 'static;
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// What the engine offers.
    fn caps(&self) -> EngineCaps;
    /// Configured cost of one chunk in nanoseconds while other vGPUs may need the engine (the
    /// preemption granularity).
    fn chunk_target_ns(&self) -> u64;
    /// The engine's memory, if buffers live in it (`None`: host memory).
    fn memory(&self) -> Option<Arc<dyn EngineMemory>> {
        None
    }
    /// Runs the next chunk of `op`, about `target_ns` of work (the device thread chooses it per
    /// chunk), and advances `state`. After [`Step::Done`] the operation must not be run again.
    fn run_chunk(
        &mut self,
        op: &Op,
        state: &mut Self::OpState,
        target_ns: u64,
    ) -> Result<Step, EngineError>;
    /// Device time of the last chunk in ns, when the engine measures it on the device (the
    /// scheduler then charges it instead of host time).
    fn last_device_ns(&self) -> Option<u64> {
        None
    }
    /// Waits for every submission of `op` still in flight and folds it into `state`; returns
    /// their device time (`None`: the engine has no device timestamps, the caller times the
    /// call). The device thread calls it before it leaves an operation part-way (preemption), so
    /// that work is charged to the vGPU that submitted it and nothing of a preempted operation
    /// runs while another vGPU's turn is timed. A synchronous engine has nothing in flight.
    fn settle(&mut self, op: &Op, state: &mut Self::OpState) -> Result<Option<u64>, EngineError> {
        let _ = (op, state);
        Ok(None)
    }
    /// Most submissions the engine has had in flight at once (1 for a synchronous engine).
    fn max_in_flight(&self) -> usize {
        1
    }
    /// Compiles guest modules for this engine (`None`: it runs only the built-in kernels).
    fn module_compiler(&self) -> Option<Arc<dyn ModuleCompiler>> {
        None
    }
    /// Brings the engine back to a clean state after a failed or panicked chunk (for a device
    /// that was lost: re-creates what can be re-created).
    fn reset(&mut self) -> Result<(), EngineError> {
        Ok(())
    }
    /// How to make a replacement for a stuck engine (`None`: it cannot be restarted).
    fn factory(&self) -> Option<EngineFactory> {
        None
    }
}

/// The object-safe face of an [`Engine`] the device thread uses; operation state is boxed.
pub trait DynEngine: Send {
    /// [`Engine::name`].
    fn name(&self) -> &'static str;
    /// [`Engine::caps`].
    fn caps(&self) -> EngineCaps;
    /// [`Engine::chunk_target_ns`].
    fn chunk_target_ns(&self) -> u64;
    /// [`Engine::memory`].
    fn memory(&self) -> Option<Arc<dyn EngineMemory>>;
    /// A fresh operation state.
    fn new_state(&self) -> Box<dyn Any + Send>;
    /// [`Engine::run_chunk`] on a boxed state (a state of the wrong type starts over).
    fn run_chunk_dyn(
        &mut self,
        op: &Op,
        state: &mut Box<dyn Any + Send>,
        target_ns: u64,
    ) -> Result<Step, EngineError>;
    /// [`Engine::last_device_ns`].
    fn last_device_ns(&self) -> Option<u64>;
    /// [`Engine::settle`] on a boxed state (a state of another engine has nothing in flight).
    fn settle_dyn(
        &mut self,
        op: &Op,
        state: &mut Box<dyn Any + Send>,
    ) -> Result<Option<u64>, EngineError>;
    /// [`Engine::max_in_flight`].
    fn max_in_flight(&self) -> usize;
    /// [`Engine::module_compiler`].
    fn module_compiler(&self) -> Option<Arc<dyn ModuleCompiler>>;
    /// [`Engine::reset`].
    fn reset(&mut self) -> Result<(), EngineError>;
    /// [`Engine::factory`].
    fn factory(&self) -> Option<EngineFactory>;
}

impl<E: Engine> DynEngine for E {
    fn name(&self) -> &'static str {
        Engine::name(self)
    }

    fn caps(&self) -> EngineCaps {
        Engine::caps(self)
    }

    fn chunk_target_ns(&self) -> u64 {
        Engine::chunk_target_ns(self)
    }

    fn memory(&self) -> Option<Arc<dyn EngineMemory>> {
        Engine::memory(self)
    }

    fn new_state(&self) -> Box<dyn Any + Send> {
        Box::new(E::OpState::default())
    }

    fn run_chunk_dyn(
        &mut self,
        op: &Op,
        state: &mut Box<dyn Any + Send>,
        target_ns: u64,
    ) -> Result<Step, EngineError> {
        if !state.is::<E::OpState>() {
            *state = Box::new(E::OpState::default());
        }
        match state.downcast_mut::<E::OpState>() {
            Some(s) => self.run_chunk(op, s, target_ns),
            None => Err(EngineError::Device(
                "operation state of another engine".into(),
            )),
        }
    }

    fn last_device_ns(&self) -> Option<u64> {
        Engine::last_device_ns(self)
    }

    fn settle_dyn(
        &mut self,
        op: &Op,
        state: &mut Box<dyn Any + Send>,
    ) -> Result<Option<u64>, EngineError> {
        match state.downcast_mut::<E::OpState>() {
            Some(s) => self.settle(op, s),
            None => Ok(None),
        }
    }

    fn max_in_flight(&self) -> usize {
        Engine::max_in_flight(self)
    }

    fn module_compiler(&self) -> Option<Arc<dyn ModuleCompiler>> {
        Engine::module_compiler(self)
    }

    fn reset(&mut self) -> Result<(), EngineError> {
        Engine::reset(self)
    }

    fn factory(&self) -> Option<EngineFactory> {
        Engine::factory(self)
    }
}

/// The message of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".to_string()
    }
}

/// The engine `--engine` selects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// The embedded CPU engine (the default).
    #[default]
    Cpu,
    /// A Vulkan device.
    Vulkan(vulkan::DeviceSelector),
}

impl std::str::FromStr for EngineChoice {
    type Err = String;

    /// `cpu`, `vulkan`, `vulkan:INDEX` or `vulkan:NAME-SUBSTRING`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, which) = match s.split_once(':') {
            Some((k, w)) => (k, Some(w)),
            None => (s, None),
        };
        match (kind, which) {
            ("cpu", None) => Ok(EngineChoice::Cpu),
            ("vulkan", None) => Ok(EngineChoice::Vulkan(vulkan::DeviceSelector::Best)),
            ("vulkan", Some(w)) if !w.is_empty() => Ok(EngineChoice::Vulkan(match w.parse() {
                Ok(i) => vulkan::DeviceSelector::Index(i),
                Err(_) => vulkan::DeviceSelector::Name(w.to_string()),
            })),
            _ => Err(format!(
                "unknown engine {s:?}: expected cpu, vulkan, vulkan:INDEX or vulkan:NAME"
            )),
        }
    }
}

impl EngineChoice {
    /// Opens the engine, chunks aiming at `chunk_target_ns` while other vGPUs have work, guest
    /// modules (an engine that runs them) cut off after `loop_budget` back edges per invocation.
    pub fn open(
        &self,
        chunk_target_ns: u64,
        loop_budget: u32,
    ) -> Result<Box<dyn DynEngine>, EngineError> {
        Ok(match self {
            EngineChoice::Cpu => Box::new(cpu::CpuEngine::new(chunk_target_ns)),
            EngineChoice::Vulkan(selector) => {
                Box::new(vulkan::VulkanEngine::new(&vulkan::VulkanOptions {
                    selector: selector.clone(),
                    chunk_target_ns,
                    loop_budget,
                    ..vulkan::VulkanOptions::default()
                })?)
            }
        })
    }
}

/// The device memory to hand out when `--device-memory` is not given, for an engine with its
/// own memory: its heap minus a reserve for the engine and driver (1/8 of the heap, at least
/// 256 MiB). `None` for host memory (the CPU engine).
pub fn default_device_memory(caps: &EngineCaps) -> Option<u64> {
    let heap = caps.device_memory_bytes;
    (heap > 0).then(|| heap.saturating_sub((heap / 8).max(256 << 20)))
}
