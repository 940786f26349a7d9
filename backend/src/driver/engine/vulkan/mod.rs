//! The Vulkan compute engine: the four kernels as GLSL compute shaders (committed SPIR-V in
//! `backend/shaders/`, loaded with `include_bytes!`), run on any Vulkan 1.1 device with a compute
//! queue (Mesa lavapipe in the tests).
//!
//! **Slicing.** A GPU cannot be preempted mid-kernel by us, so every operation is cut into
//! sub-grids: GEMM into bands of 16-row tile rows dispatched with `vkCmdDispatchBase`, the
//! element-wise kernels into ranges of workgroups, copies and fills into byte ranges. Each piece
//! is one submission with a timestamp query before and after it; the measured device time
//! feeds a per-kernel cost model (ns per unit, exponential average), which sizes the next piece
//! to the target the device thread passes (≈100 µs while another vGPU has work, up to 1 ms
//! alone). The scheduler charges the measured device time. A sub-grid is also kept at least 2×
//! the measured host work per piece (recording, submitting, reading back, the device thread's
//! bookkeeping; not the time blocked on a fence), so the queued piece covers it; that estimate
//! is capped at 2 ms.
//!
//! **Pipelining.** Up to [`VulkanOptions::pipeline_depth`] pieces of the running operation are
//! in flight at once (modules `ring`, `pipeline`): each call queues pieces until the ring is full,
//! then waits for the oldest and reports its device time, so the device runs the next piece
//! while the host waits, reads back and schedules. Before the device thread leaves an operation
//! part-way it settles it ([`Engine::settle`]): the remaining pieces complete and are charged to
//! the same vGPU. Pieces pin their buffers until they completed, so cancelling, failing or
//! destroying never frees memory the device may still use.
//!
//! **Windows.** A binding covers at most `maxStorageBufferRange` bytes (128 MiB on lavapipe), so
//! each chunk binds only the window of each operand it touches, starting at an offset aligned to
//! `minStorageBufferOffsetAlignment`; the shader gets the operand's start inside its window as a
//! push constant. GEMM needs all of B in one window.
//!
//! **Results.** axpy is bit-identical to the CPU reference (`precise` forbids FMA contraction),
//! crc32c is exact (block CRCs joined with `crc32c_combine`). GEMM sums `k` products in f32 in
//! index order per element, so `|C - C_ref| ≤ 2·k·2⁻²⁴·|alpha|·Σ|a||b| + |beta·C| rounding`
//! (tests use this bound). reduce_sum adds 4096-element groups in f32 (16 strided sums, then a
//! tree) and the group sums in f64, so `|s - s_ref| ≤ 24·2⁻²⁴·Σ|x|` (+ the final f32 rounding).
//!
//! **Robustness.** `robustBufferAccess` is enabled; every fence wait has a timeout, after which
//! the job fails with [`EngineError::Timeout`]; device loss fails the job with
//! [`EngineError::DeviceLost`]. After either, the device is re-created on the same physical
//! device ([`gpu`]): every partition and buffer stays usable, its contents zeroed, and the
//! engine rebuilds its pipelines and pools on the new device before its next chunk.

mod context;
mod gpu;
mod guest;
mod memory;
mod pipeline;
mod ring;
mod select;

use std::sync::{Arc, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use ash::vk;

pub use super::DeviceHealth;
use super::{
    Engine, EngineCaps, EngineError, EngineKind, EngineMemory, Step, DEFAULT_CHUNK_TARGET_NS,
};
use crate::driver::buffer::{BufferError, DeviceBuffer};
use crate::driver::job::{BufRef, Op, OpKind};
use crate::driver::module::ModuleCompiler;
use context::{inner_barrier, vk_err, ComputeLayout, Ctx};
pub use context::{list_devices, validation_errors, Validation, VALIDATION_ENV};
use gpu::{DriverThread, Gpu};
pub use guest::DEFAULT_LOOP_BUDGET;
use memory::{VkMemory, VkStorage};
use ring::Ring;
pub use ring::MAX_PIPELINE_DEPTH;
pub use select::{choose, DeviceSelector, DrmNode, HeapInfo, PhysicalDeviceInfo};

/// Default fence timeout: a submission is sized to ~1 ms, so this only fires on a hung device.
pub const DEFAULT_FENCE_TIMEOUT: Duration = Duration::from_secs(10);

const SPV_GEMM: &[u8] = include_bytes!("../../../../shaders/gemm_f32.spv");
const SPV_AXPY: &[u8] = include_bytes!("../../../../shaders/axpy_f32.spv");
const SPV_REDUCE: &[u8] = include_bytes!("../../../../shaders/reduce_sum_f32.spv");
const SPV_CRC: &[u8] = include_bytes!("../../../../shaders/crc32c.spv");

/// Elements per reduce workgroup (256 invocations × 16).
const REDUCE_GROUP: u64 = 4096;
/// Bytes per crc32c invocation (few block CRCs to join on the host: one `crc32c_combine`
/// per block), and invocations per workgroup.
const CRC_BLOCK: u64 = 16 * 1024;
const CRC_LOCAL: u64 = 64;
/// Partials (reduce group sums, crc block CRCs) one chunk may produce.
const MAX_PARTIALS: u64 = 64 * 1024;
/// Bounce buffer for overlapping copies and fill patterns.
const BOUNCE_BYTES: u64 = 4 << 20;
/// Smallest byte chunk of copies, fills and crc32c.
const MIN_BYTES: u64 = 4096;

/// How to open the Vulkan engine.
#[derive(Debug, Clone)]
pub struct VulkanOptions {
    /// Which device.
    pub selector: DeviceSelector,
    /// Chunk target while other vGPUs have work (ns).
    pub chunk_target_ns: u64,
    /// Longest a fence wait may take.
    pub fence_timeout: Duration,
    /// Treat buffer memory as not host-visible (exercises staging on unified-memory devices).
    pub force_staging: bool,
    /// The validation layer.
    pub validation: Validation,
    /// Pieces of an operation in flight at once (1..=[`MAX_PIPELINE_DEPTH`]; 1: submit and
    /// wait).
    pub pipeline_depth: usize,
    /// Loop back edges one invocation of a guest module may take ([`DEFAULT_LOOP_BUDGET`]).
    pub loop_budget: u32,
}

/// Default pieces in flight: the next piece is queued while the host reads back the last one.
pub const DEFAULT_PIPELINE_DEPTH: usize = 2;

impl Default for VulkanOptions {
    fn default() -> Self {
        Self {
            selector: DeviceSelector::Best,
            chunk_target_ns: DEFAULT_CHUNK_TARGET_NS,
            fence_timeout: DEFAULT_FENCE_TIMEOUT,
            force_staging: false,
            validation: Validation::FromEnv,
            pipeline_depth: DEFAULT_PIPELINE_DEPTH,
            loop_budget: DEFAULT_LOOP_BUDGET,
        }
    }
}

/// The Vulkan engine's per-operation state. Pieces in flight live in the engine's ring (tagged
/// with `id`), so dropping this state never frees anything the device may still use.
#[derive(Debug, Default, Clone, Copy)]
pub struct VkOpState {
    /// Ring tag of this operation's pieces (0 until its first piece), unique in the process,
    /// so an engine rebuilt after a device loss never mistakes another operation's pieces
    /// for this one's.
    id: u64,
    /// The device generation the operation started on: its results are lost with that device.
    generation: u64,
    /// Units whose pieces completed and were folded in.
    done: u64,
    /// Units recorded into pieces so far (`done` plus what is in flight).
    submitted: u64,
    sum: f64,
    crc: u32,
    /// A completed piece of a guest launch ran out of its loop budget.
    budget_hit: bool,
}

/// Tags of operations ([`VkOpState::id`]); 0 means "not started".
static NEXT_OP_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Push constants (see `shaders/common.glsl`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct Params {
    count: u32,
    n: u32,
    k: u32,
    off0: u32,
    off1: u32,
    off2: u32,
    row_base: u32,
    m: u32,
    alpha: f32,
    beta: f32,
}

// SAFETY: `#[repr(C)]`, only u32/f32 fields (no padding); every bit pattern is valid.
unsafe impl bytemuck::Zeroable for Params {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for Params {}

/// Units of `op` as this engine counts them: 16×16 tiles of C for a GEMM (row-major tile order),
/// [`Op::units`] otherwise.
fn total_units(op: &Op) -> u64 {
    match op {
        Op::GemmF32 { m, n, .. } => u64::from(*m).div_ceil(16) * u64::from(*n).div_ceil(16),
        _ => op.units(),
    }
}

/// Fewest GEMM tiles per piece on a device of `device_type` ([`PhysicalDeviceInfo::device_type`]):
/// two per host thread on a CPU device, 16 otherwise.
fn min_gemm_tiles(device_type: &str) -> u64 {
    if device_type == "cpu" {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        2 * threads as u64
    } else {
        16
    }
}

/// An engine-internal buffer with its memory.
struct Scratch {
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    mapped: *mut u8,
    size: u64,
}

/// The Vulkan engine (owned by the device thread).
pub struct VulkanEngine {
    /// The shared device (re-created after a loss).
    gpu: Arc<Gpu>,
    /// The device this engine's objects are on, and its generation.
    ctx: Arc<Ctx>,
    generation: u64,
    target_ns: u64,
    /// Layout of the built-in kernels' pipelines (4 storage buffers, [`Params`]).
    layout: ComputeLayout,
    /// gemm, axpy, reduce, crc32c.
    pipelines: [vk::Pipeline; 4],
    /// Bounce space for overlapping copies and fill patterns (pieces run in submission order:
    /// each starts with a barrier on everything before it).
    bounce: Scratch,
    /// Pieces in flight and the slots they are recorded into.
    ring: Ring,
    /// The slot being recorded.
    cur: usize,
    /// The operation the last call left pieces in flight for, and when that call returned
    /// (the host time until the next call is part of the per-piece host cost).
    returned: Option<(u64, Instant)>,
    /// ns per unit by [`OpKind::index`], learned from timestamps.
    ns_per_unit: [f64; OpKind::COUNT],
    /// Fewest GEMM tiles (workgroups) per piece: a CPU device (lavapipe) runs one workgroup per
    /// thread, so a piece smaller than its threads leaves some idle; a GPU runs whole tile rows.
    min_gemm_tiles: u64,
    /// Workgroups of the first piece of a guest launch (before its cost is measured): one per
    /// device thread on a CPU device, 16 otherwise.
    min_guest_groups: u64,
    /// Loop back edges one invocation of a guest module may take.
    loop_budget: u32,
    last_device_ns: Option<u64>,
    /// Host cost of one piece (recording, submitting, reading back, and the device thread's
    /// work between two calls; not the time blocked on a fence), ns, exponential average:
    /// pieces are kept at least [`OVERHEAD_FACTOR`] times longer, so the queued piece keeps
    /// the device busy while the host does that work, even where it is expensive (lavapipe,
    /// a loaded host).
    overhead_ns: f64,
}

/// A chunk's device time is kept at least this many times the per-submission host overhead.
const OVERHEAD_FACTOR: f64 = 2.0;

// SAFETY: the raw pointers are mappings owned by this engine, used only by its thread.
unsafe impl Send for VulkanEngine {}

const INITIAL_NS_PER_UNIT: [f64; OpKind::COUNT] = [0.5, 0.5, 1.0, 2.0, 2.0, 2.0, 1000.0];

fn create_scratch(ctx: &Ctx, size: u64, type_index: u32) -> Result<Scratch, EngineError> {
    let d = &ctx.device;
    let info = vk::BufferCreateInfo::default()
        .size(size)
        .usage(context::buffer_usage())
        .sharing_mode(vk::SharingMode::EXCLUSIVE);
    // SAFETY: valid create infos; destroyed in the engine's Drop (or here on failure).
    unsafe {
        let buffer = d
            .create_buffer(&info, None)
            .map_err(|e| vk_err("vkCreateBuffer", e))?;
        let req = d.get_buffer_memory_requirements(buffer);
        let alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(type_index);
        let memory = match d.allocate_memory(&alloc, None) {
            Ok(m) => m,
            Err(e) => {
                d.destroy_buffer(buffer, None);
                return Err(vk_err("vkAllocateMemory", e));
            }
        };
        let mapped = d
            .bind_buffer_memory(buffer, memory, 0)
            .and_then(|()| d.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()));
        match mapped {
            Ok(p) => Ok(Scratch {
                buffer,
                memory,
                mapped: p.cast(),
                size,
            }),
            Err(e) => {
                d.destroy_buffer(buffer, None);
                d.free_memory(memory, None);
                Err(vk_err("vkMapMemory", e))
            }
        }
    }
}

impl VulkanEngine {
    /// Opens the device and builds the pipelines, both on the Vulkan driver thread (so the
    /// driver's own threads inherit its seccomp filter).
    pub fn new(options: &VulkanOptions) -> Result<Self, EngineError> {
        let driver = DriverThread::start()?;
        let (selector, validation) = (options.selector.clone(), options.validation);
        let (force_staging, fence_timeout) = (options.force_staging, options.fence_timeout);
        let ctx = driver
            .run(move || Ctx::open(&selector, validation, force_staging, fence_timeout))??;
        let gpu = Arc::new(Gpu::new(Arc::new(ctx), driver));
        Self::on_gpu(
            gpu,
            options.chunk_target_ns,
            options.pipeline_depth,
            options.loop_budget,
        )
    }

    /// An engine on the shared device's current generation (a replacement shares the device
    /// and so every partition); built on the driver thread.
    fn on_gpu(
        gpu: Arc<Gpu>,
        chunk_target_ns: u64,
        depth: usize,
        loop_budget: u32,
    ) -> Result<Self, EngineError> {
        let (ctx, generation) = {
            let device = gpu.live()?;
            (Arc::clone(device.ctx()), device.generation())
        };
        let shared = Arc::clone(&gpu);
        gpu.driver.run(move || {
            Self::on_ctx(shared, ctx, generation, chunk_target_ns, depth, loop_budget)
        })?
    }

    /// Device losses and recoveries so far.
    pub fn device_health(&self) -> DeviceHealth {
        self.gpu.health()
    }

    /// Follows the shared device: after a loss, re-creates it (if no one did yet) and rebuilds
    /// this engine's objects on the new one. The old ones are destroyed here.
    fn follow_device(&mut self) -> Result<(), EngineError> {
        let generation = self.gpu.live()?.generation();
        if generation != self.generation {
            let fresh = Self::on_gpu(
                Arc::clone(&self.gpu),
                self.target_ns,
                self.ring.depth(),
                self.loop_budget,
            )?;
            // Dropping the old engine destroys its objects on the old device.
            *self = fresh;
        }
        Ok(())
    }

    /// The shared device (tests reach its fault hooks and counters through it).
    #[cfg(test)]
    pub(crate) fn shared_gpu(&self) -> Arc<Gpu> {
        Arc::clone(&self.gpu)
    }

    fn on_ctx(
        gpu: Arc<Gpu>,
        ctx: Arc<Ctx>,
        generation: u64,
        chunk_target_ns: u64,
        depth: usize,
        loop_budget: u32,
    ) -> Result<Self, EngineError> {
        let d = &ctx.device;
        // Every object is destroyed by Drop; a failure part-way leaks the few made before it
        // until the context (and with it the device) goes away, which frees them all.
        let layout = ComputeLayout::new(d, 4, std::mem::size_of::<Params>() as u32)?;
        let gemm_tiles = min_gemm_tiles(&ctx.info.device_type);
        // SAFETY: valid create infos on a live device.
        let engine = unsafe {
            let mut pipelines = [vk::Pipeline::null(); 4];
            for (slot, spv) in pipelines
                .iter_mut()
                .zip([SPV_GEMM, SPV_AXPY, SPV_REDUCE, SPV_CRC])
            {
                let code = ash::util::read_spv(&mut std::io::Cursor::new(spv))
                    .map_err(|e| EngineError::Device(format!("bad SPIR-V: {e}")))?;
                let module = d
                    .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&code), None)
                    .map_err(|e| vk_err("vkCreateShaderModule", e))?;
                let stage = vk::PipelineShaderStageCreateInfo::default()
                    .stage(vk::ShaderStageFlags::COMPUTE)
                    .module(module)
                    .name(c"main");
                let info = [vk::ComputePipelineCreateInfo::default()
                    .stage(stage)
                    .layout(layout.pipeline_layout)
                    .flags(vk::PipelineCreateFlags::DISPATCH_BASE)];
                let made = d.create_compute_pipelines(vk::PipelineCache::null(), &info, None);
                d.destroy_shader_module(module, None);
                *slot = made
                    .map_err(|(_, e)| vk_err("vkCreateComputePipelines", e))?
                    .first()
                    .copied()
                    .unwrap_or_default();
            }
            let bounce = create_scratch(&ctx, BOUNCE_BYTES, ctx.host_type)?;
            let ring = Ring::new(&ctx, depth)?;
            Self {
                gpu,
                ctx: Arc::clone(&ctx),
                generation,
                target_ns: chunk_target_ns.max(1),
                layout,
                pipelines,
                bounce,
                ring,
                cur: 0,
                returned: None,
                ns_per_unit: INITIAL_NS_PER_UNIT,
                min_gemm_tiles: gemm_tiles,
                min_guest_groups: (gemm_tiles / 2).max(1),
                loop_budget,
                last_device_ns: None,
                overhead_ns: 0.0,
            }
        };
        Ok(engine)
    }

    /// The device memory a `--device-memory` default may use
    /// ([`super::default_device_memory`]).
    pub fn default_memory_bytes(&self) -> u64 {
        super::default_device_memory(&Engine::caps(self)).unwrap_or(0)
    }

    /// The device name.
    pub fn device_name(&self) -> &str {
        &self.ctx.info.name
    }

    fn storage_align(&self) -> u64 {
        self.ctx.limits.min_storage_buffer_offset_alignment.max(4)
    }

    fn max_range(&self) -> u64 {
        u64::from(self.ctx.limits.max_storage_buffer_range)
    }

    /// Largest bytes a window may cover for `len` bytes, leaving room for the alignment skew.
    fn window_bytes(&self) -> u64 {
        self.max_range()
            .saturating_sub(self.storage_align() + 4)
            .max(4)
    }

    fn units_for(&self, kind: OpKind, target_ns: u64) -> u64 {
        let per = self.ns_per_unit[kind.index()].max(1e-6);
        ((target_ns.max(1) as f64) / per).max(1.0) as u64
    }

    fn observe(&mut self, kind: OpKind, units: f64, ns: u64) {
        if units <= 0.0 {
            return;
        }
        let est = &mut self.ns_per_unit[kind.index()];
        let sample = (ns as f64 / units).min(*est * 8.0);
        *est = (*est * 0.75 + sample * 0.25).max(1e-6);
    }
}

/// A buffer's Vulkan storage.
fn vk_buffer(r: &BufRef) -> Result<&VkStorage, EngineError> {
    r.buffer
        .storage()
        .and_then(|s| s.as_any().downcast_ref::<VkStorage>())
        .ok_or_else(|| EngineError::Device("buffer not in this engine's memory".into()))
}

fn range_err(r: &BufRef, len: u64) -> EngineError {
    EngineError::Buffer(BufferError::OutOfRange {
        offset: r.offset,
        len,
        size: r.buffer.size(),
    })
}

/// A binding of part of a buffer: the descriptor range and where the operand starts in it.
struct Window {
    info: vk::DescriptorBufferInfo,
    /// Bytes from the window start to the operand start.
    skew: u64,
}

/// Locks held on a chunk's buffers while it runs (kept for their Drop).
#[expect(dead_code, reason = "the guards are held, never read")]
enum Held<'a> {
    Read(RwLockReadGuard<'a, Vec<u64>>),
    Write(RwLockWriteGuard<'a, Vec<u64>>),
}

fn lock_all<'a>(
    reads: &[&'a Arc<DeviceBuffer>],
    writes: &[&'a Arc<DeviceBuffer>],
) -> Result<Vec<Held<'a>>, EngineError> {
    let mut held = Vec::new();
    for w in writes {
        held.push(Held::Write(w.write_words()?));
    }
    for (i, r) in reads.iter().enumerate() {
        let dup = writes.iter().any(|w| Arc::ptr_eq(w, r))
            || reads.iter().take(i).any(|o| Arc::ptr_eq(o, r));
        if !dup {
            held.push(Held::Read(r.read_words()?));
        }
    }
    Ok(held)
}

/// What a recorded chunk did, for the bookkeeping after it completes.
struct Planned {
    units: u64,
    cost_units: f64,
    partials: u64,
}

impl VulkanEngine {
    fn window(&self, r: &BufRef, at: u64, len: u64) -> Result<Window, EngineError> {
        let s = vk_buffer(r)?;
        let start = r.offset.checked_add(at).ok_or_else(|| range_err(r, len))?;
        let end = start.checked_add(len).ok_or_else(|| range_err(r, len))?;
        if end > r.buffer.size() {
            return Err(range_err(r, len));
        }
        let align = self.storage_align();
        let base = start - start % align;
        let range = (end - base)
            .next_multiple_of(4)
            .min(s.vk_size - base)
            .max(4);
        if range > self.max_range() {
            return Err(EngineError::Unsupported(format!(
                "operand window of {range} bytes exceeds maxStorageBufferRange {}",
                self.max_range()
            )));
        }
        Ok(Window {
            info: vk::DescriptorBufferInfo {
                buffer: s.buffer(),
                offset: base,
                range,
            },
            skew: start - base,
        })
    }

    fn scratch_window(s: &Scratch) -> Window {
        Window {
            info: vk::DescriptorBufferInfo {
                buffer: s.buffer,
                offset: 0,
                range: s.size,
            },
            skew: 0,
        }
    }

    /// Binds `windows` (padded with the partials buffer) and records one dispatch of built-in
    /// kernel `pipeline`.
    fn dispatch(
        &self,
        pipeline: usize,
        windows: &[Window],
        params: &Params,
        base: [u32; 3],
        groups: [u32; 3],
    ) -> Result<(), EngineError> {
        let pad = Self::scratch_window(&self.ring.slot(self.cur).partials);
        let infos: [vk::DescriptorBufferInfo; 4] =
            std::array::from_fn(|i| windows.get(i).unwrap_or(&pad).info);
        self.bind_and_dispatch(
            self.pipelines[pipeline],
            self.layout.set_layout,
            self.layout.pipeline_layout,
            &infos,
            bytemuck::bytes_of(params),
            base,
            groups,
        )
    }

    /// Allocates a descriptor set of `set_layout` (binding i = `infos[i]`, storage buffers)
    /// from the current slot's pool, binds it with `pipeline`, pushes `push` and records one
    /// `vkCmdDispatchBase`.
    #[allow(clippy::too_many_arguments)]
    fn bind_and_dispatch(
        &self,
        pipeline: vk::Pipeline,
        set_layout: vk::DescriptorSetLayout,
        pipeline_layout: vk::PipelineLayout,
        infos: &[vk::DescriptorBufferInfo],
        push: &[u8],
        base: [u32; 3],
        groups: [u32; 3],
    ) -> Result<(), EngineError> {
        let d = &self.ctx.device;
        let layouts = [set_layout];
        // SAFETY: the pool was reset before this chunk (the previous one completed); the set is
        // written before use; all handles are live.
        unsafe {
            let set = d
                .allocate_descriptor_sets(
                    &vk::DescriptorSetAllocateInfo::default()
                        .descriptor_pool(self.ring.slot(self.cur).descriptor_pool)
                        .set_layouts(&layouts),
                )
                .map_err(|e| vk_err("vkAllocateDescriptorSets", e))?
                .first()
                .copied()
                .ok_or(EngineError::OutOfDeviceMemory)?;
            let writes: Vec<_> = infos
                .iter()
                .enumerate()
                .map(|(i, info)| {
                    vk::WriteDescriptorSet::default()
                        .dst_set(set)
                        .dst_binding(i as u32)
                        .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                        .buffer_info(std::slice::from_ref(info))
                })
                .collect();
            d.update_descriptor_sets(&writes, &[]);
            d.cmd_bind_pipeline(self.cb(), vk::PipelineBindPoint::COMPUTE, pipeline);
            d.cmd_bind_descriptor_sets(
                self.cb(),
                vk::PipelineBindPoint::COMPUTE,
                pipeline_layout,
                0,
                &[set],
                &[],
            );
            d.cmd_push_constants(
                self.cb(),
                pipeline_layout,
                vk::ShaderStageFlags::COMPUTE,
                0,
                push,
            );
            d.cmd_dispatch_base(
                self.cb(),
                base[0],
                base[1],
                base[2],
                groups[0],
                groups[1],
                groups[2],
            );
        }
        Ok(())
    }

    fn max_groups(&self, dim: usize) -> u64 {
        u64::from(
            self.ctx
                .limits
                .max_compute_work_group_count
                .get(dim)
                .copied()
                .unwrap_or(65535),
        )
    }

    /// Records the next chunk of `op`.
    fn record(&self, op: &Op, state: &VkOpState, target_ns: u64) -> Result<Planned, EngineError> {
        let d = &self.ctx.device;
        let total = total_units(op);
        let remaining = total.saturating_sub(state.submitted);
        let at = state.submitted;
        match op {
            Op::Dispatch(dispatch) => self.record_dispatch(dispatch, at, target_ns),
            Op::Copy { src, dst, .. } => {
                let units = self
                    .units_for(OpKind::Copy, target_ns)
                    .max(MIN_BYTES)
                    .min(remaining);
                let s = vk_buffer(src)?;
                let t = vk_buffer(dst)?;
                let overlap = Arc::ptr_eq(&src.buffer, &dst.buffer)
                    && src.offset < dst.offset + total
                    && dst.offset < src.offset + total;
                if overlap {
                    // memmove: through the bounce buffer, at most its size per chunk, from the
                    // end when the destination is above the source (so no chunk reads bytes an
                    // earlier chunk wrote).
                    let units = units.min(self.bounce.size);
                    let pos = if dst.offset > src.offset {
                        remaining - units
                    } else {
                        at
                    };
                    // SAFETY: recording; ranges validated by the job and inside the buffers.
                    unsafe {
                        d.cmd_copy_buffer(
                            self.cb(),
                            s.buffer(),
                            self.bounce.buffer,
                            &[vk::BufferCopy {
                                src_offset: src.offset + pos,
                                dst_offset: 0,
                                size: units,
                            }],
                        );
                        inner_barrier(d, self.cb());
                        d.cmd_copy_buffer(
                            self.cb(),
                            self.bounce.buffer,
                            t.buffer(),
                            &[vk::BufferCopy {
                                src_offset: 0,
                                dst_offset: dst.offset + pos,
                                size: units,
                            }],
                        );
                    }
                    return Ok(Planned {
                        units,
                        cost_units: units as f64,
                        partials: 0,
                    });
                }
                let (from, to) = (src.offset + at, dst.offset + at);
                if units > 0 {
                    // SAFETY: as above.
                    unsafe {
                        d.cmd_copy_buffer(
                            self.cb(),
                            s.buffer(),
                            t.buffer(),
                            &[vk::BufferCopy {
                                src_offset: from,
                                dst_offset: to,
                                size: units,
                            }],
                        )
                    };
                }
                Ok(Planned {
                    units,
                    cost_units: units as f64,
                    partials: 0,
                })
            }
            Op::Fill { dst, pattern, .. } => {
                let units = self
                    .units_for(OpKind::Fill, target_ns)
                    .max(MIN_BYTES)
                    .min(remaining);
                self.record_fill(dst, *pattern, at, units)?;
                Ok(Planned {
                    units,
                    cost_units: units as f64,
                    partials: 0,
                })
            }
            Op::AxpyF32 { alpha, x, y, .. } => {
                let max = (self.window_bytes() / 4)
                    .min(self.max_groups(0) * 256)
                    .min(u64::from(u32::MAX) / 2);
                let units = self
                    .units_for(OpKind::Axpy, target_ns)
                    .max(256)
                    .min(max)
                    .min(remaining);
                let wx = self.window(x, at * 4, units * 4)?;
                let wy = self.window(y, at * 4, units * 4)?;
                let params = Params {
                    count: units as u32,
                    off0: (wx.skew / 4) as u32,
                    off1: (wy.skew / 4) as u32,
                    alpha: *alpha,
                    ..Params::default()
                };
                let groups = units.div_ceil(256) as u32;
                self.dispatch(1, &[wx, wy], &params, [0; 3], [groups, 1, 1])?;
                Ok(Planned {
                    units,
                    cost_units: units as f64,
                    partials: 0,
                })
            }
            Op::ReduceSumF32 { x, .. } => {
                let max = (self.window_bytes() / 4 / REDUCE_GROUP * REDUCE_GROUP)
                    .min(self.max_groups(0).min(MAX_PARTIALS) * REDUCE_GROUP);
                let units = self
                    .units_for(OpKind::Reduce, target_ns)
                    .next_multiple_of(REDUCE_GROUP)
                    .min(max)
                    .min(remaining);
                let wx = self.window(x, at * 4, units * 4)?;
                let partials = units.div_ceil(REDUCE_GROUP);
                let params = Params {
                    count: units as u32,
                    off0: (wx.skew / 4) as u32,
                    ..Params::default()
                };
                let wp = Self::scratch_window(&self.ring.slot(self.cur).partials);
                self.dispatch(2, &[wx, wp], &params, [0; 3], [partials as u32, 1, 1])?;
                Ok(Planned {
                    units,
                    cost_units: units as f64,
                    partials,
                })
            }
            Op::Crc32c { src, .. } => {
                let per_group = CRC_BLOCK * CRC_LOCAL;
                let max = (self.window_bytes() / CRC_BLOCK * CRC_BLOCK)
                    .min(MAX_PARTIALS * CRC_BLOCK)
                    .min(self.max_groups(0) * per_group);
                let units = self
                    .units_for(OpKind::Crc32c, target_ns)
                    .max(MIN_BYTES)
                    .next_multiple_of(CRC_BLOCK)
                    .min(max)
                    .min(remaining);
                let ws = self.window(src, at, units)?;
                let partials = units.div_ceil(CRC_BLOCK);
                let params = Params {
                    count: units as u32,
                    off0: ws.skew as u32,
                    ..Params::default()
                };
                let wp = Self::scratch_window(&self.ring.slot(self.cur).partials);
                let groups = partials.div_ceil(CRC_LOCAL) as u32;
                self.dispatch(3, &[ws, wp], &params, [0; 3], [groups, 1, 1])?;
                Ok(Planned {
                    units,
                    cost_units: units as f64,
                    partials,
                })
            }
            Op::GemmF32 {
                m,
                n,
                k,
                alpha,
                beta,
                a,
                b,
                c,
            } => {
                let (m, n, k) = (u64::from(*m), u64::from(*n), u64::from(*k));
                let gx = n.div_ceil(16);
                if gx > self.max_groups(0) {
                    return Err(EngineError::Unsupported(format!("gemm n={n} too wide")));
                }
                // Units are 16×16 tiles of C in row-major tile order. A piece is whole tile rows
                // when the target covers at least one, else a run of tiles within one tile row (a
                // 2-D sub-grid), so a piece on a slow device is as short as one tile.
                let tile_at = at;
                let tile_row = tile_at / gx;
                let row0 = tile_row * 16;
                let rows_left = m.saturating_sub(row0);
                let per_tile = (256 * k).max(1);
                let row_bytes = (k.max(n) * 4).max(4);
                let max_rows =
                    (self.window_bytes() / row_bytes / 16 * 16).min(self.max_groups(1) * 16);
                if max_rows == 0 {
                    return Err(EngineError::Unsupported(format!(
                        "gemm row of {row_bytes} bytes exceeds the binding window"
                    )));
                }
                // At least enough workgroups to keep every execution unit of the device busy (on a
                // CPU device one workgroup runs on one thread).
                let want_tiles = (self.units_for(OpKind::Gemm, target_ns) / per_tile)
                    .max(self.min_gemm_tiles)
                    .max(1);
                let col_tile = tile_at % gx;
                let (rows, base_x, count_x) = if col_tile == 0 && want_tiles >= gx {
                    let want_rows = (want_tiles / gx) * 16;
                    (want_rows.min(max_rows).min(rows_left), 0, gx)
                } else {
                    (rows_left.min(16), col_tile, want_tiles.min(gx - col_tile))
                };
                let tiles = rows.div_ceil(16) * count_x;
                let wa = self.window(a, row0 * k * 4, rows * k * 4)?;
                let wb = self.window(b, 0, k * n * 4)?;
                let wc = self.window(c, row0 * n * 4, rows * n * 4)?;
                let params = Params {
                    count: rows as u32,
                    n: n as u32,
                    k: k as u32,
                    off0: (wa.skew / 4) as u32,
                    off1: (wb.skew / 4) as u32,
                    off2: (wc.skew / 4) as u32,
                    row_base: row0 as u32,
                    m: (row0 + rows) as u32,
                    alpha: *alpha,
                    beta: *beta,
                };
                let base_y = tile_row as u32;
                let gy = rows.div_ceil(16) as u32;
                self.dispatch(
                    0,
                    &[wa, wb, wc],
                    &params,
                    [base_x as u32, base_y, 0],
                    [count_x as u32, gy, 1],
                )?;
                Ok(Planned {
                    units: tiles,
                    cost_units: (tiles * per_tile) as f64,
                    partials: 0,
                })
            }
        }
    }

    /// Records `len` bytes of a fill starting `at` bytes into it: aligned words with
    /// `vkCmdFillBuffer`, the unaligned head and tail copied from a pattern in the bounce buffer.
    fn record_fill(
        &self,
        dst: &BufRef,
        pattern: u32,
        at: u64,
        len: u64,
    ) -> Result<(), EngineError> {
        let d = &self.ctx.device;
        let t = vk_buffer(dst)?;
        let pat = pattern.to_le_bytes();
        let start = dst.offset + at;
        let end = start + len;
        let head_end = start.next_multiple_of(4).min(end);
        let mid_end = head_end + (end - head_end) / 4 * 4;
        let word_at = |byte_in_fill: u64| {
            let q = (byte_in_fill % 4) as usize;
            u32::from_le_bytes([pat[q], pat[(q + 1) % 4], pat[(q + 2) % 4], pat[(q + 3) % 4]])
        };
        // SAFETY: recording; ranges validated by the job; the bounce buffer holds 8 bytes of
        // pattern written before the copies (barrier in between).
        unsafe {
            let edges = head_end > start || end > mid_end;
            if edges {
                d.cmd_fill_buffer(self.cb(), self.bounce.buffer, 0, 8, pattern);
                inner_barrier(d, self.cb());
            }
            if head_end > start {
                d.cmd_copy_buffer(
                    self.cb(),
                    self.bounce.buffer,
                    t.buffer(),
                    &[vk::BufferCopy {
                        src_offset: at % 4,
                        dst_offset: start,
                        size: head_end - start,
                    }],
                );
            }
            if mid_end > head_end {
                d.cmd_fill_buffer(
                    self.cb(),
                    t.buffer(),
                    head_end,
                    mid_end - head_end,
                    word_at(at + (head_end - start)),
                );
            }
            if end > mid_end {
                d.cmd_copy_buffer(
                    self.cb(),
                    self.bounce.buffer,
                    t.buffer(),
                    &[vk::BufferCopy {
                        src_offset: (at + (mid_end - start)) % 4,
                        dst_offset: mid_end,
                        size: end - mid_end,
                    }],
                );
            }
        }
        Ok(())
    }
}

/// Nanoseconds of a duration, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Engine for VulkanEngine {
    type OpState = VkOpState;

    fn name(&self) -> &'static str {
        "vulkan"
    }

    fn caps(&self) -> EngineCaps {
        let l = &self.ctx.limits;
        EngineCaps {
            kind: EngineKind::Vulkan,
            device_name: self.ctx.info.name.clone(),
            vendor_id: self.ctx.info.vendor_id,
            device_id: self.ctx.info.device_id,
            driver_name: self.ctx.driver_name.clone(),
            driver_version: self.ctx.driver_version,
            device_memory_bytes: self.ctx.heap_bytes,
            kernel_mask: vgpu_protocol::channel::Kernel::mask_all(),
            queues: self.ctx.queue_count,
            timestamp_period_ps: if self.ctx.timestamp_bits == 0 {
                0
            } else {
                (l.timestamp_period * 1000.0).round() as u32
            },
            max_workgroups: l.max_compute_work_group_count[0],
            max_workgroup_invocations: l.max_compute_work_group_invocations,
            max_storage_buffer_range: u64::from(l.max_storage_buffer_range),
        }
    }

    fn chunk_target_ns(&self) -> u64 {
        self.target_ns
    }

    fn memory(&self) -> Option<Arc<dyn EngineMemory>> {
        Some(Arc::new(VkMemory {
            gpu: Arc::clone(&self.gpu),
        }))
    }

    fn last_device_ns(&self) -> Option<u64> {
        self.last_device_ns
    }

    fn factory(&self) -> Option<super::EngineFactory> {
        let gpu = Arc::clone(&self.gpu);
        let target = self.target_ns;
        let depth = self.ring.depth();
        let budget = self.loop_budget;
        Some(Arc::new(move || {
            Ok(Box::new(VulkanEngine::on_gpu(
                Arc::clone(&gpu),
                target,
                depth,
                budget,
            )?) as Box<dyn super::DynEngine>)
        }))
    }

    fn module_compiler(&self) -> Option<Arc<dyn ModuleCompiler>> {
        if !crate::driver::spirv::VALIDATOR_AVAILABLE {
            // Built without SPIRV-Tools: no module reaches the driver unchecked.
            return None;
        }
        Some(Arc::new(guest::VkModuleCompiler {
            gpu: Arc::clone(&self.gpu),
            loop_budget: self.loop_budget,
        }))
    }

    fn run_chunk(
        &mut self,
        op: &Op,
        state: &mut VkOpState,
        target_ns: u64,
    ) -> Result<Step, EngineError> {
        self.follow_device()?;
        self.run_pipelined(op, state, target_ns)
    }

    fn settle(&mut self, op: &Op, state: &mut VkOpState) -> Result<Option<u64>, EngineError> {
        self.settle_pipelined(op, state)
    }

    fn max_in_flight(&self) -> usize {
        self.ring.max_seen()
    }

    fn reset(&mut self) -> Result<(), EngineError> {
        // Pieces of the failed operation must finish before their slots are reused (after a
        // device loss they are dropped: nothing runs any more).
        let drained = self.ring.wait_all();
        self.returned = None;
        if self.ctx.is_lost() {
            // Lost or hung: re-create the device (unless another thread did) and rebuild on it.
            self.gpu.recover(self.generation)?;
        } else {
            drained?;
        }
        self.follow_device()?;
        self.ns_per_unit = INITIAL_NS_PER_UNIT;
        self.overhead_ns = 0.0;
        Ok(())
    }
}

impl VulkanEngine {
    fn finish(&self, op: &Op, state: &VkOpState) -> Result<(), EngineError> {
        match op {
            Op::ReduceSumF32 { out, .. } => {
                out.buffer
                    .write(out.offset, &(state.sum as f32).to_ne_bytes())?;
            }
            Op::Crc32c { out, .. } => {
                out.buffer.write(out.offset, &state.crc.to_ne_bytes())?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The buffers `op` reads and writes.
fn op_buffers(op: &Op) -> (Vec<&Arc<DeviceBuffer>>, Vec<&Arc<DeviceBuffer>>) {
    match op {
        Op::Copy { src, dst, .. } => (vec![&src.buffer], vec![&dst.buffer]),
        Op::Fill { dst, .. } => (vec![], vec![&dst.buffer]),
        Op::GemmF32 { a, b, c, .. } => (vec![&a.buffer, &b.buffer], vec![&c.buffer]),
        Op::AxpyF32 { x, y, .. } => (vec![&x.buffer], vec![&y.buffer]),
        Op::ReduceSumF32 { x, .. } => (vec![&x.buffer], vec![]),
        Op::Crc32c { src, .. } => (vec![&src.buffer], vec![]),
        Op::Dispatch(d) => {
            let (mut reads, mut writes) = (Vec::new(), Vec::<&Arc<DeviceBuffer>>::new());
            for (slot, bound) in d.bindings.iter().enumerate() {
                let Some(b) = bound else { continue };
                let list = if d.writes(slot) {
                    &mut writes
                } else {
                    &mut reads
                };
                if !list.iter().any(|o| Arc::ptr_eq(o, &b.at.buffer)) {
                    list.push(&b.at.buffer);
                }
            }
            (reads, writes)
        }
    }
}

impl Drop for VulkanEngine {
    fn drop(&mut self) {
        let waited = self.ring.wait_all();
        if self.ring.len() > 0 {
            // The ring leaks what is still in flight (see its Drop); the objects those pieces
            // use must not be destroyed either (after a device loss nothing is in flight).
            log::error!("Vulkan engine dropped with work still on the device: {waited:?}");
            return;
        }
        let d = &self.ctx.device;
        // SAFETY: nothing of this engine is in flight; destroy what it created (the ring
        // destroys its own objects after this).
        unsafe {
            d.destroy_buffer(self.bounce.buffer, None);
            d.free_memory(self.bounce.memory, None);
            for p in self.pipelines {
                d.destroy_pipeline(p, None);
            }
            self.layout.destroy(d);
        }
    }
}

#[cfg(test)]
mod loss_tests;
#[cfg(test)]
mod tests;
