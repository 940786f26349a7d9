//! The Vulkan instance and logical device shared by the engine thread and every partition
//! arena: the compute queue (behind a lock, since a queue must be externally synchronised),
//! memory-type choice, submissions (the one place that notices a lost device, and the test-only
//! fault hook), one-shot submissions (zeroing, staging) and the validation-layer hook.

use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ash::vk;

use super::super::EngineError;
use super::select::{self, compute_family, driver_text, DeviceSelector, PhysicalDeviceInfo};
use crate::driver::spirv::{ShaderFeatures, CONTROL_BINDING};
use vgpu_protocol::channel::MAX_PUSH_CONSTANT_BYTES;

/// Vulkan validation messages of severity ERROR seen by this process (tests assert zero).
static VALIDATION_ERRORS: AtomicU64 = AtomicU64::new(0);
/// Environment variable that turns the Khronos validation layer on (`1`: when installed,
/// `required`: fail without it), unless [`Validation`] is given explicitly.
pub const VALIDATION_ENV: &str = "VGPU_VULKAN_VALIDATION";

/// Whether to run with the Khronos validation layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// As [`VALIDATION_ENV`] says (off when unset).
    FromEnv,
    /// Off.
    Off,
    /// On when the layer is installed.
    IfPresent,
    /// On; opening fails without the layer.
    Required,
}
const VALIDATION_LAYER: &CStr = c"VK_LAYER_KHRONOS_validation";

/// Validation errors reported so far in this process.
pub fn validation_errors() -> u64 {
    VALIDATION_ERRORS.load(Ordering::Relaxed)
}

/// Maps a Vulkan error to the engine's error.
pub(crate) fn vk_err(what: &str, r: vk::Result) -> EngineError {
    match r {
        vk::Result::ERROR_DEVICE_LOST => EngineError::DeviceLost,
        vk::Result::ERROR_OUT_OF_DEVICE_MEMORY | vk::Result::ERROR_OUT_OF_HOST_MEMORY => {
            EngineError::OutOfDeviceMemory
        }
        vk::Result::TIMEOUT => EngineError::Timeout(0),
        other => EngineError::Device(format!("{what}: {other}")),
    }
}

/// A loaded Vulkan instance (with the validation layer when asked and installed).
pub(crate) struct Instance {
    /// Keeps the loader library loaded.
    _entry: ash::Entry,
    pub instance: ash::Instance,
    debug: Option<(ash::ext::debug_utils::Instance, vk::DebugUtilsMessengerEXT)>,
}

unsafe extern "system" fn on_validation_message(
    severity: vk::DebugUtilsMessageSeverityFlagsEXT,
    _types: vk::DebugUtilsMessageTypeFlagsEXT,
    data: *const vk::DebugUtilsMessengerCallbackDataEXT<'_>,
    _user: *mut c_void,
) -> vk::Bool32 {
    // SAFETY: the loader passes a valid callback-data struct whose message is a C string.
    let message = unsafe {
        data.as_ref()
            .and_then(|d| (!d.p_message.is_null()).then(|| CStr::from_ptr(d.p_message)))
            .map(|m| m.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if severity.contains(vk::DebugUtilsMessageSeverityFlagsEXT::ERROR) {
        VALIDATION_ERRORS.fetch_add(1, Ordering::Relaxed);
        log::error!("vulkan validation error: {message}");
    } else {
        log::warn!("vulkan validation: {message}");
    }
    vk::FALSE
}

impl Instance {
    /// Loads the Vulkan loader and creates an instance (API 1.1).
    pub fn new(validation: Validation) -> Result<Self, EngineError> {
        // SAFETY: loading the system Vulkan loader; its symbols are used through ash only.
        let entry = unsafe { ash::Entry::load() }
            .map_err(|e| EngineError::Device(format!("no Vulkan loader: {e}")))?;
        let validation = match validation {
            Validation::FromEnv => match std::env::var(VALIDATION_ENV).as_deref() {
                Ok("1") => Validation::IfPresent,
                Ok("required") => Validation::Required,
                _ => Validation::Off,
            },
            v => v,
        };
        let want_validation = validation != Validation::Off;
        // SAFETY: plain enumeration.
        let layers = unsafe { entry.enumerate_instance_layer_properties() }.unwrap_or_default();
        let has_layer = layers
            .iter()
            .any(|l| l.layer_name_as_c_str() == Ok(VALIDATION_LAYER));
        if validation == Validation::Required && !has_layer {
            return Err(EngineError::Device(format!(
                "{VALIDATION_ENV}=1 but {} is not installed",
                VALIDATION_LAYER.to_string_lossy()
            )));
        }
        let validation = want_validation && has_layer;
        let app = vk::ApplicationInfo::default()
            .application_name(c"vgpud")
            .api_version(vk::API_VERSION_1_1);
        let layer_names = [VALIDATION_LAYER.as_ptr()];
        let ext_names = [ash::ext::debug_utils::NAME.as_ptr()];
        let mut info = vk::InstanceCreateInfo::default().application_info(&app);
        if validation {
            info = info
                .enabled_layer_names(&layer_names)
                .enabled_extension_names(&ext_names);
        }
        // SAFETY: valid create info; the instance is destroyed in Drop.
        let instance = unsafe { entry.create_instance(&info, None) }
            .map_err(|e| vk_err("vkCreateInstance", e))?;
        let debug = if validation {
            let utils = ash::ext::debug_utils::Instance::new(&entry, &instance);
            let info = vk::DebugUtilsMessengerCreateInfoEXT::default()
                .message_severity(
                    vk::DebugUtilsMessageSeverityFlagsEXT::ERROR
                        | vk::DebugUtilsMessageSeverityFlagsEXT::WARNING,
                )
                .message_type(
                    vk::DebugUtilsMessageTypeFlagsEXT::VALIDATION
                        | vk::DebugUtilsMessageTypeFlagsEXT::GENERAL,
                )
                .pfn_user_callback(Some(on_validation_message));
            // SAFETY: valid create info; destroyed in Drop before the instance.
            let messenger = unsafe { utils.create_debug_utils_messenger(&info, None) }
                .map_err(|e| vk_err("vkCreateDebugUtilsMessengerEXT", e))?;
            log::info!("vulkan validation layer enabled");
            Some((utils, messenger))
        } else {
            None
        };
        Ok(Self {
            _entry: entry,
            instance,
            debug,
        })
    }

    /// Every physical device, in enumeration order.
    pub fn devices(&self) -> Result<Vec<(vk::PhysicalDevice, PhysicalDeviceInfo)>, EngineError> {
        select::enumerate(&self.instance).map_err(|e| vk_err("vkEnumeratePhysicalDevices", e))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: everything created from the instance is gone (the device holds an Arc to it).
        unsafe {
            if let Some((utils, messenger)) = self.debug.take() {
                utils.destroy_debug_utils_messenger(messenger, None);
            }
            self.instance.destroy_instance(None);
        }
    }
}

/// Every Vulkan physical device (for `--list-engines`).
pub fn list_devices() -> Result<Vec<PhysicalDeviceInfo>, EngineError> {
    let instance = Instance::new(Validation::Off)?;
    Ok(instance.devices()?.into_iter().map(|(_, i)| i).collect())
}

/// The logical device and what every user of it needs. After a device loss a new one is made
/// on the same physical device ([`super::gpu::Gpu::recover`]); the old one is destroyed once
/// nothing holds it any more.
pub(crate) struct Ctx {
    pub device: ash::Device,
    pub instance: Arc<Instance>,
    pub physical: vk::PhysicalDevice,
    pub info: PhysicalDeviceInfo,
    pub driver_name: String,
    pub driver_version: u32,
    pub limits: vk::PhysicalDeviceLimits,
    pub queue_family: u32,
    pub queue_count: u32,
    queue: Mutex<vk::Queue>,
    /// Bits of the queue's timestamps (0: none).
    pub timestamp_bits: u32,
    /// Memory type of buffers, and whether it is host-visible (mapped) or needs staging.
    pub buffer_type: u32,
    pub buffer_mapped: bool,
    /// Buffer memory was asked to be treated as not host-visible.
    pub force_staging: bool,
    /// Host-visible, coherent memory type (staging, results).
    pub host_type: u32,
    /// Size of the heap buffers come from.
    pub heap_bytes: u64,
    /// Pool and fence for one-shot submissions from any thread.
    one_shot: Mutex<(vk::CommandPool, vk::Fence)>,
    /// What guest modules may use on this device.
    pub guest: GuestSupport,
    /// The layout every guest pipeline uses.
    pub guest_layout: ComputeLayout,
    /// How long any fence wait may take.
    pub fence_timeout: Duration,
    /// The device reported `VK_ERROR_DEVICE_LOST`, or a fence wait ran out (a hung device is
    /// treated as lost): nothing more is submitted to it, and it is re-created.
    lost: AtomicBool,
    /// What reported the loss first.
    lost_why: Mutex<Option<String>>,
    /// Test-only fault hook: the next submission reports `VK_ERROR_DEVICE_LOST`.
    #[cfg(test)]
    pub fail_next_submit: AtomicBool,
    /// Test-only fault hook: the next fence wait runs out at once (its work still runs).
    #[cfg(test)]
    pub time_out_next_wait: AtomicBool,
}

fn find_type(
    props: &vk::PhysicalDeviceMemoryProperties,
    bits: u32,
    want: vk::MemoryPropertyFlags,
) -> Option<u32> {
    (0..props.memory_type_count).find(|&i| {
        bits & (1 << i) != 0
            && props
                .memory_types
                .get(i as usize)
                .is_some_and(|t| t.property_flags.contains(want))
    })
}

impl Ctx {
    /// Opens the device `selector` picks on a new instance. `force_staging` treats buffer
    /// memory as not host-visible (exercises the staging path on unified-memory devices).
    pub fn open(
        selector: &DeviceSelector,
        validation: Validation,
        force_staging: bool,
        fence_timeout: Duration,
    ) -> Result<Self, EngineError> {
        let instance = Arc::new(Instance::new(validation)?);
        let devices = instance.devices()?;
        let infos: Vec<PhysicalDeviceInfo> = devices.iter().map(|(_, i)| i.clone()).collect();
        let at = select::choose(selector, &infos).map_err(EngineError::NoDevice)?;
        let Some((pd, info)) = devices.get(at).cloned() else {
            return Err(EngineError::NoDevice("no such Vulkan device".into()));
        };
        Self::create(instance, pd, info, force_staging, fence_timeout)
    }

    /// A logical device on `pd` of `instance` (also the re-creation after a loss).
    pub fn create(
        instance: Arc<Instance>,
        pd: vk::PhysicalDevice,
        info: PhysicalDeviceInfo,
        force_staging: bool,
        fence_timeout: Duration,
    ) -> Result<Self, EngineError> {
        let vi = &instance.instance;
        let (queue_family, timestamp_bits) = compute_family(vi, pd)
            .ok_or_else(|| EngineError::Unsupported("no compute queue family".into()))?;
        // SAFETY: `pd` comes from `vi`.
        let props = unsafe { vi.get_physical_device_properties(pd) };
        // SAFETY: as above.
        let features = unsafe { vi.get_physical_device_features(pd) };
        // SAFETY: as above.
        let memory_props = unsafe { vi.get_physical_device_memory_properties(pd) };
        // SAFETY: as above.
        let families = unsafe { vi.get_physical_device_queue_family_properties(pd) };
        let queue_count = families
            .get(queue_family as usize)
            .map_or(1, |f| f.queue_count);
        let driver = driver_text(vi, pd, props.api_version);
        let priorities = [1.0f32];
        let queues = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(queue_family)
            .queue_priorities(&priorities)];
        let on = |f: vk::Bool32| f == vk::TRUE;
        let enabled = vk::PhysicalDeviceFeatures::default()
            .robust_buffer_access(on(features.robust_buffer_access))
            .shader_int64(on(features.shader_int64))
            .shader_float64(on(features.shader_float64))
            .shader_int16(on(features.shader_int16));
        if !on(features.robust_buffer_access) {
            log::warn!("{}: robustBufferAccess not supported", info.name);
        }
        let guest = guest_support(vi, pd, &features);
        let mut robustness2 =
            vk::PhysicalDeviceRobustness2FeaturesEXT::default().robust_buffer_access2(true);
        let extensions = [ROBUSTNESS2.as_ptr()];
        let mut create = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_features(&enabled);
        if guest.robust_access2 {
            create = create
                .enabled_extension_names(&extensions)
                .push_next(&mut robustness2);
        }
        // SAFETY: valid create info; destroyed in Drop.
        let device = unsafe { vi.create_device(pd, &create, None) }
            .map_err(|e| vk_err("vkCreateDevice", e))?;
        let guest_layout = match ComputeLayout::guest(&device) {
            Ok(l) => l,
            Err(e) => {
                // SAFETY: nothing else was created from the device.
                unsafe { device.destroy_device(None) };
                return Err(e);
            }
        };
        // SAFETY: family and index 0 were requested above.
        let queue = unsafe { device.get_device_queue(queue_family, 0) };

        // The memory types buffers can live in: learn them from a probe buffer.
        let probe_info = vk::BufferCreateInfo::default()
            .size(4096)
            .usage(buffer_usage())
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: valid create info; destroyed right after.
        let bits = unsafe {
            let probe = device
                .create_buffer(&probe_info, None)
                .map_err(|e| vk_err("vkCreateBuffer", e));
            match probe {
                Ok(b) => {
                    let req = device.get_buffer_memory_requirements(b);
                    device.destroy_buffer(b, None);
                    req.memory_type_bits
                }
                Err(e) => {
                    guest_layout.destroy(&device);
                    device.destroy_device(None);
                    return Err(e);
                }
            }
        };
        let local = vk::MemoryPropertyFlags::DEVICE_LOCAL;
        let mapped = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
        let (buffer_type, buffer_mapped) = match (
            find_type(&memory_props, bits, local | mapped),
            find_type(&memory_props, bits, local),
            find_type(&memory_props, bits, mapped),
        ) {
            (Some(t), _, _) if !force_staging => (t, true),
            (_, Some(t), _) => (t, false),
            (_, None, Some(t)) => (t, !force_staging),
            _ => {
                // SAFETY: nothing else was created from the device.
                unsafe {
                    guest_layout.destroy(&device);
                    device.destroy_device(None);
                }
                return Err(EngineError::Unsupported(
                    "no memory type for buffers".into(),
                ));
            }
        };
        let host_type = match find_type(&memory_props, bits, mapped) {
            Some(t) => t,
            None => {
                // SAFETY: nothing else was created from the device.
                unsafe {
                    guest_layout.destroy(&device);
                    device.destroy_device(None);
                }
                return Err(EngineError::Unsupported("no host-visible memory".into()));
            }
        };
        let heap_bytes = memory_props
            .memory_types
            .get(buffer_type as usize)
            .and_then(|t| memory_props.memory_heaps.get(t.heap_index as usize))
            .map_or(0, |h| h.size);
        let pool_info = vk::CommandPoolCreateInfo::default()
            .queue_family_index(queue_family)
            .flags(vk::CommandPoolCreateFlags::TRANSIENT);
        // SAFETY: valid create infos; destroyed in Drop.
        let one_shot = unsafe {
            let pool = device.create_command_pool(&pool_info, None);
            let fence = device.create_fence(&vk::FenceCreateInfo::default(), None);
            match (pool, fence) {
                (Ok(p), Ok(f)) => (p, f),
                (p, f) => {
                    if let Ok(p) = p {
                        device.destroy_command_pool(p, None);
                    }
                    if let Ok(f) = f {
                        device.destroy_fence(f, None);
                    }
                    guest_layout.destroy(&device);
                    device.destroy_device(None);
                    return Err(EngineError::OutOfDeviceMemory);
                }
            }
        };
        log::info!(
            "vulkan engine on {} ({}, {}), queue family {queue_family} ({queue_count} queue(s)), \
             buffers in memory type {buffer_type} ({}), heap {} MiB",
            info.name,
            info.device_type,
            info.driver,
            if buffer_mapped { "mapped" } else { "staged" },
            heap_bytes >> 20
        );
        Ok(Self {
            device,
            instance,
            physical: pd,
            info,
            driver_name: driver.name,
            driver_version: props.driver_version,
            limits: props.limits,
            queue_family,
            queue_count,
            queue: Mutex::new(queue),
            timestamp_bits,
            buffer_type,
            buffer_mapped,
            force_staging,
            host_type,
            heap_bytes,
            one_shot: Mutex::new(one_shot),
            guest,
            guest_layout,
            fence_timeout,
            lost: AtomicBool::new(false),
            lost_why: Mutex::new(None),
            #[cfg(test)]
            fail_next_submit: AtomicBool::new(false),
            #[cfg(test)]
            time_out_next_wait: AtomicBool::new(false),
        })
    }

    /// Submits `submits` with `fence` on the queue. A lost device gets nothing more: the call
    /// fails with [`EngineError::DeviceLost`] (the test-only fault hook makes it report that too).
    pub fn submit(
        &self,
        submits: &[vk::SubmitInfo<'_>],
        fence: vk::Fence,
    ) -> Result<(), EngineError> {
        #[cfg(test)]
        if self.fail_next_submit.swap(false, Ordering::AcqRel) {
            self.mark_lost("vkQueueSubmit: VK_ERROR_DEVICE_LOST (injected by a test)");
            return Err(EngineError::DeviceLost);
        }
        if self.is_lost() {
            return Err(EngineError::DeviceLost);
        }
        let queue = self.queue();
        // SAFETY: the caller recorded the command buffers completely and owns the fence.
        match unsafe { self.device.queue_submit(*queue, submits, fence) } {
            Ok(()) => Ok(()),
            Err(e) => {
                if e == vk::Result::ERROR_DEVICE_LOST {
                    self.mark_lost("vkQueueSubmit: VK_ERROR_DEVICE_LOST");
                }
                Err(vk_err("vkQueueSubmit", e))
            }
        }
    }

    /// Waits until the device has no work left (returns at once when it is lost).
    pub fn wait_idle(&self) {
        let _queue = self.queue();
        // SAFETY: the queue is held, so no submission runs meanwhile.
        let _ = unsafe { self.device.device_wait_idle() };
    }

    /// Whether the device was lost (or hung): it must be re-created before it is used again.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Marks the device lost; `why` (the first reason) goes into the line
    /// [`super::gpu::Gpu::recover`] logs.
    pub fn mark_lost(&self, why: &str) {
        let mut first = self.lost_why.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(why.to_string());
        }
        self.lost.store(true, Ordering::Release);
    }

    /// What reported the loss first.
    pub fn lost_reason(&self) -> String {
        self.lost_why
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// The queue, locked for a submission.
    pub fn queue(&self) -> MutexGuard<'_, vk::Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fence timeout in ns.
    pub fn timeout_ns(&self) -> u64 {
        u64::try_from(self.fence_timeout.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records commands with `record`, submits them and waits (at most the fence timeout).
    pub fn one_shot(&self, record: impl FnOnce(vk::CommandBuffer)) -> Result<(), EngineError> {
        let guard = self.one_shot.lock().unwrap_or_else(|e| e.into_inner());
        let (pool, fence) = *guard;
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: the pool is used under `guard` only; the command buffer is freed below after
        // its fence signalled (or the pool is reset by the next use after a timeout).
        unsafe {
            let cbs = self
                .device
                .allocate_command_buffers(&alloc)
                .map_err(|e| vk_err("vkAllocateCommandBuffers", e))?;
            let Some(&cb) = cbs.first() else {
                return Err(EngineError::OutOfDeviceMemory);
            };
            let begin = vk::CommandBufferBeginInfo::default()
                .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
            let result = (|| {
                self.device
                    .begin_command_buffer(cb, &begin)
                    .map_err(|e| vk_err("vkBeginCommandBuffer", e))?;
                record(cb);
                host_barrier(&self.device, cb);
                self.device
                    .end_command_buffer(cb)
                    .map_err(|e| vk_err("vkEndCommandBuffer", e))?;
                let cbs = [cb];
                let submit = [vk::SubmitInfo::default().command_buffers(&cbs)];
                self.submit(&submit, fence)?;
                self.wait(fence)
            })();
            if !matches!(result, Err(EngineError::Timeout(_))) {
                self.device.free_command_buffers(pool, &[cb]);
            }
            result
        }
    }

    /// Waits for `fence` (at most the fence timeout) and resets it.
    pub fn wait(&self, fence: vk::Fence) -> Result<(), EngineError> {
        #[cfg(test)]
        let timeout_ns = if self.time_out_next_wait.swap(false, Ordering::AcqRel) {
            0
        } else {
            self.timeout_ns()
        };
        #[cfg(not(test))]
        let timeout_ns = self.timeout_ns();
        // SAFETY: `fence` belongs to this device.
        unsafe {
            match self.device.wait_for_fences(&[fence], true, timeout_ns) {
                Ok(()) => self
                    .device
                    .reset_fences(&[fence])
                    .map_err(|e| vk_err("vkResetFences", e)),
                Err(vk::Result::TIMEOUT) => {
                    self.mark_lost("a fence wait ran out: the device hangs");
                    Err(EngineError::Timeout(
                        u64::try_from(self.fence_timeout.as_millis()).unwrap_or(u64::MAX),
                    ))
                }
                Err(e) => {
                    if e == vk::Result::ERROR_DEVICE_LOST {
                        self.mark_lost("vkWaitForFences: VK_ERROR_DEVICE_LOST");
                    }
                    Err(vk_err("vkWaitForFences", e))
                }
            }
        }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let (pool, fence) = *self.one_shot.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: every user of the device holds an Arc to this context, so nothing else uses it.
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_command_pool(pool, None);
            self.device.destroy_fence(fence, None);
            self.guest_layout.destroy(&self.device);
            self.device.destroy_device(None);
        }
        if self.is_lost() {
            log::info!(
                "vulkan: the lost device on {} is destroyed (nothing refers to it any more)",
                self.info.name
            );
        }
    }
}

/// Usage of every buffer the engine creates.
pub(crate) fn buffer_usage() -> vk::BufferUsageFlags {
    vk::BufferUsageFlags::STORAGE_BUFFER
        | vk::BufferUsageFlags::TRANSFER_SRC
        | vk::BufferUsageFlags::TRANSFER_DST
}

/// Records one global memory barrier: writes of `src_access` in `src_stage` are made visible to
/// `dst_access` in `dst_stage`.
fn memory_barrier(
    device: &ash::Device,
    cb: vk::CommandBuffer,
    (src_stage, src_access): (vk::PipelineStageFlags, vk::AccessFlags),
    (dst_stage, dst_access): (vk::PipelineStageFlags, vk::AccessFlags),
) {
    let barrier = [vk::MemoryBarrier::default()
        .src_access_mask(src_access)
        .dst_access_mask(dst_access)];
    // SAFETY: `cb` is recording.
    unsafe {
        device.cmd_pipeline_barrier(
            cb,
            src_stage,
            dst_stage,
            vk::DependencyFlags::empty(),
            &barrier,
            &[],
            &[],
        )
    };
}

/// What the kernels and copies read and write, and where.
const DEVICE_ACCESS: (vk::PipelineStageFlags, vk::AccessFlags) = (
    vk::PipelineStageFlags::from_raw(
        vk::PipelineStageFlags::COMPUTE_SHADER.as_raw() | vk::PipelineStageFlags::TRANSFER.as_raw(),
    ),
    vk::AccessFlags::from_raw(
        vk::AccessFlags::SHADER_READ.as_raw()
            | vk::AccessFlags::SHADER_WRITE.as_raw()
            | vk::AccessFlags::TRANSFER_READ.as_raw()
            | vk::AccessFlags::TRANSFER_WRITE.as_raw(),
    ),
);

/// The writes of the kernels and copies, and where.
const DEVICE_WRITES: (vk::PipelineStageFlags, vk::AccessFlags) = (
    DEVICE_ACCESS.0,
    vk::AccessFlags::from_raw(
        vk::AccessFlags::SHADER_WRITE.as_raw() | vk::AccessFlags::TRANSFER_WRITE.as_raw(),
    ),
);

/// Makes earlier host writes visible to the commands that follow (start of a command buffer).
pub(crate) fn device_barrier(device: &ash::Device, cb: vk::CommandBuffer) {
    let host_writes = (
        vk::PipelineStageFlags::HOST | vk::PipelineStageFlags::ALL_COMMANDS,
        vk::AccessFlags::HOST_WRITE | vk::AccessFlags::MEMORY_WRITE,
    );
    memory_barrier(device, cb, host_writes, DEVICE_ACCESS);
}

/// Orders shader and transfer writes before later commands in the same command buffer.
pub(crate) fn inner_barrier(device: &ash::Device, cb: vk::CommandBuffer) {
    memory_barrier(device, cb, DEVICE_WRITES, DEVICE_ACCESS);
}

/// Makes the device's writes visible to the host (end of a command buffer).
pub(crate) fn host_barrier(device: &ash::Device, cb: vk::CommandBuffer) {
    let host_access = (
        vk::PipelineStageFlags::HOST,
        vk::AccessFlags::HOST_READ | vk::AccessFlags::HOST_WRITE,
    );
    memory_barrier(device, cb, DEVICE_WRITES, host_access);
}

/// `VK_EXT_robustness2`: out-of-range accesses of guest pipelines are discarded or read zero
/// even within the descriptor's buffer alignment slack.
const ROBUSTNESS2: &CStr = c"VK_EXT_robustness2";

/// What guest modules may use on a device.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuestSupport {
    /// Optional shader features enabled on the device.
    pub features: ShaderFeatures,
    /// `robustBufferAccess2` is enabled.
    pub robust_access2: bool,
}

/// Which optional guest features `pd` has (and so the device enables).
fn guest_support(
    vi: &ash::Instance,
    pd: vk::PhysicalDevice,
    features: &vk::PhysicalDeviceFeatures,
) -> GuestSupport {
    // SAFETY: `pd` comes from `vi`.
    let extensions = unsafe { vi.enumerate_device_extension_properties(pd) }.unwrap_or_default();
    let has_robustness2 = extensions
        .iter()
        .any(|e| e.extension_name_as_c_str() == Ok(ROBUSTNESS2));
    let mut robustness2 = vk::PhysicalDeviceRobustness2FeaturesEXT::default();
    let mut subgroup = vk::PhysicalDeviceSubgroupProperties::default();
    // SAFETY: `pd` comes from `vi`, an instance of Vulkan 1.1; the chains are valid.
    unsafe {
        if has_robustness2 {
            let mut f2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut robustness2);
            vi.get_physical_device_features2(pd, &mut f2);
        }
        let mut p2 = vk::PhysicalDeviceProperties2::default().push_next(&mut subgroup);
        vi.get_physical_device_properties2(pd, &mut p2);
    }
    let all_ops = vk::SubgroupFeatureFlags::BASIC
        | vk::SubgroupFeatureFlags::VOTE
        | vk::SubgroupFeatureFlags::ARITHMETIC
        | vk::SubgroupFeatureFlags::BALLOT
        | vk::SubgroupFeatureFlags::SHUFFLE
        | vk::SubgroupFeatureFlags::SHUFFLE_RELATIVE
        | vk::SubgroupFeatureFlags::CLUSTERED
        | vk::SubgroupFeatureFlags::QUAD;
    let on = |f: vk::Bool32| f == vk::TRUE;
    GuestSupport {
        features: ShaderFeatures {
            int64: on(features.shader_int64),
            float64: on(features.shader_float64),
            int16: on(features.shader_int16),
            subgroups: subgroup
                .supported_stages
                .contains(vk::ShaderStageFlags::COMPUTE)
                && subgroup.supported_operations.contains(all_ops),
            ..ShaderFeatures::default()
        },
        robust_access2: has_robustness2 && on(robustness2.robust_buffer_access2),
    }
}

/// The descriptor-set and pipeline layout of a compute pipeline: storage buffers at set 0,
/// bindings `0..bindings`, and `push_bytes` of push constants. The guest layout (on [`Ctx`]) has
/// bindings `0..MAX_BINDINGS` for the guest, [`CONTROL_BINDING`] for the engine's control block
/// and 128 bytes of push constants.
pub(crate) struct ComputeLayout {
    pub set_layout: vk::DescriptorSetLayout,
    pub pipeline_layout: vk::PipelineLayout,
}

impl ComputeLayout {
    /// The layout every guest pipeline uses.
    fn guest(d: &ash::Device) -> Result<Self, EngineError> {
        Self::new(d, CONTROL_BINDING + 1, MAX_PUSH_CONSTANT_BYTES)
    }

    /// Storage buffers at bindings `0..bindings` of set 0 and `push_bytes` of push constants.
    pub fn new(d: &ash::Device, bindings: u32, push_bytes: u32) -> Result<Self, EngineError> {
        let bindings: Vec<_> = (0..bindings)
            .map(|i| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(i)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        let push = [vk::PushConstantRange::default()
            .stage_flags(vk::ShaderStageFlags::COMPUTE)
            .offset(0)
            .size(push_bytes)];
        // SAFETY: valid create infos on a live device; destroyed by `destroy`.
        unsafe {
            let set_layout = d
                .create_descriptor_set_layout(
                    &vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings),
                    None,
                )
                .map_err(|e| vk_err("vkCreateDescriptorSetLayout", e))?;
            let layouts = [set_layout];
            let pipeline_layout = match d.create_pipeline_layout(
                &vk::PipelineLayoutCreateInfo::default()
                    .set_layouts(&layouts)
                    .push_constant_ranges(&push),
                None,
            ) {
                Ok(l) => l,
                Err(e) => {
                    d.destroy_descriptor_set_layout(set_layout, None);
                    return Err(vk_err("vkCreatePipelineLayout", e));
                }
            };
            Ok(Self {
                set_layout,
                pipeline_layout,
            })
        }
    }

    /// Destroys the layouts.
    ///
    /// # Safety
    /// `d` made them, and no pipeline built with them is in use.
    pub unsafe fn destroy(&self, d: &ash::Device) {
        // SAFETY: per the caller.
        unsafe {
            d.destroy_pipeline_layout(self.pipeline_layout, None);
            d.destroy_descriptor_set_layout(self.set_layout, None);
        }
    }
}
