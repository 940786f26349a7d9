//! The Vulkan instance and logical device shared by the engine thread and every partition
//! arena: device selection and listing, the compute queue (behind a lock, since a queue must be
//! externally synchronised), memory-type choice, one-shot submissions (zeroing, staging) and
//! the validation-layer hook.

use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ash::vk;
use serde::Serialize;

use super::super::EngineError;

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

/// One physical device as `--list-engines` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PhysicalDeviceInfo {
    /// Index for `--engine vulkan:INDEX`.
    pub index: u32,
    /// Device name.
    pub name: String,
    /// "discrete", "integrated", "virtual", "cpu" or "other".
    #[serde(rename = "type")]
    pub device_type: String,
    /// Driver name and info ("llvmpipe Mesa 25.0.7 ...").
    pub driver: String,
    /// Vulkan API version "major.minor.patch".
    pub api_version: String,
    /// PCI vendor id.
    pub vendor_id: u32,
    /// PCI device id.
    pub device_id: u32,
    /// Memory heaps: bytes and whether device-local.
    pub heaps: Vec<HeapInfo>,
    /// Whether it has a compute queue and Vulkan ≥ 1.1 (usable by the engine).
    pub usable: bool,
}

/// One memory heap.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct HeapInfo {
    /// Size in bytes.
    pub bytes: u64,
    /// Device-local heap.
    pub device_local: bool,
}

/// Which physical device to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSelector {
    /// The best usable one: discrete, then integrated, virtual, CPU.
    Best,
    /// By index in the listing.
    Index(u32),
    /// The first usable one whose name contains this (case-insensitive).
    Name(String),
}

fn type_name(t: vk::PhysicalDeviceType) -> &'static str {
    match t {
        vk::PhysicalDeviceType::DISCRETE_GPU => "discrete",
        vk::PhysicalDeviceType::INTEGRATED_GPU => "integrated",
        vk::PhysicalDeviceType::VIRTUAL_GPU => "virtual",
        vk::PhysicalDeviceType::CPU => "cpu",
        _ => "other",
    }
}

fn type_rank(t: vk::PhysicalDeviceType) -> u32 {
    match t {
        vk::PhysicalDeviceType::DISCRETE_GPU => 0,
        vk::PhysicalDeviceType::INTEGRATED_GPU => 1,
        vk::PhysicalDeviceType::VIRTUAL_GPU => 2,
        vk::PhysicalDeviceType::CPU => 3,
        _ => 4,
    }
}

fn c_text(bytes: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = bytes
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn version_text(v: u32) -> String {
    format!(
        "{}.{}.{}",
        vk::api_version_major(v),
        vk::api_version_minor(v),
        vk::api_version_patch(v)
    )
}

/// The compute queue family to use: one without graphics if there is one (a dedicated compute
/// queue on discrete GPUs), else any with compute.
fn compute_family(instance: &ash::Instance, pd: vk::PhysicalDevice) -> Option<(u32, u32)> {
    // SAFETY: `pd` comes from `instance`.
    let families = unsafe { instance.get_physical_device_queue_family_properties(pd) };
    let with_compute = |f: &vk::QueueFamilyProperties| {
        f.queue_flags.contains(vk::QueueFlags::COMPUTE) && f.queue_count > 0
    };
    let pick = families
        .iter()
        .position(|f| with_compute(f) && !f.queue_flags.contains(vk::QueueFlags::GRAPHICS))
        .or_else(|| families.iter().position(with_compute))?;
    let family = families.get(pick)?;
    Some((u32::try_from(pick).ok()?, family.timestamp_valid_bits))
}

struct DriverText {
    name: String,
    info: String,
}

fn driver_text(instance: &ash::Instance, pd: vk::PhysicalDevice, api: u32) -> DriverText {
    if vk::api_version_minor(api) < 2 && vk::api_version_major(api) == 1 {
        return DriverText {
            name: String::new(),
            info: String::new(),
        };
    }
    let mut driver = vk::PhysicalDeviceDriverProperties::default();
    let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut driver);
    // SAFETY: `pd` comes from `instance`, which supports 1.1 properties2 (checked by the caller).
    unsafe { instance.get_physical_device_properties2(pd, &mut props2) };
    DriverText {
        name: c_text(&driver.driver_name),
        info: c_text(&driver.driver_info),
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
        // SAFETY: plain enumeration on a live instance.
        let pds = unsafe { self.instance.enumerate_physical_devices() }
            .map_err(|e| vk_err("vkEnumeratePhysicalDevices", e))?;
        let mut out = Vec::new();
        for (i, pd) in pds.into_iter().enumerate() {
            // SAFETY: `pd` comes from this instance.
            let props = unsafe { self.instance.get_physical_device_properties(pd) };
            // SAFETY: as above.
            let mem = unsafe { self.instance.get_physical_device_memory_properties(pd) };
            let driver = driver_text(&self.instance, pd, props.api_version);
            let heaps = mem
                .memory_heaps
                .iter()
                .take(mem.memory_heap_count as usize)
                .map(|h| HeapInfo {
                    bytes: h.size,
                    device_local: h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL),
                })
                .collect();
            let usable = compute_family(&self.instance, pd).is_some()
                && props.api_version >= vk::API_VERSION_1_1;
            out.push((
                pd,
                PhysicalDeviceInfo {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    name: c_text(&props.device_name),
                    device_type: type_name(props.device_type).to_string(),
                    driver: format!("{} {}", driver.name, driver.info)
                        .trim()
                        .to_string(),
                    api_version: version_text(props.api_version),
                    vendor_id: props.vendor_id,
                    device_id: props.device_id,
                    heaps,
                    usable,
                },
            ));
        }
        Ok(out)
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

/// The logical device and what every user of it needs.
pub(crate) struct Ctx {
    pub device: ash::Device,
    pub instance: Instance,
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
    /// Host-visible, coherent memory type (staging, results).
    pub host_type: u32,
    /// Size of the heap buffers come from.
    pub heap_bytes: u64,
    /// Pool and fence for one-shot submissions from any thread.
    one_shot: Mutex<(vk::CommandPool, vk::Fence)>,
    /// How long any fence wait may take.
    pub fence_timeout: Duration,
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
    /// Opens the device `selector` picks. `force_staging` treats buffer memory as not
    /// host-visible (exercises the staging path on unified-memory devices).
    pub fn open(
        selector: &DeviceSelector,
        validation: Validation,
        force_staging: bool,
        fence_timeout: Duration,
    ) -> Result<Self, EngineError> {
        let instance = Instance::new(validation)?;
        let devices = instance.devices()?;
        let chosen = match selector {
            DeviceSelector::Best => {
                devices
                    .iter()
                    .filter(|(_, i)| i.usable)
                    .min_by_key(|(pd, i)| {
                        // SAFETY: `pd` comes from this instance.
                        let t = unsafe { instance.instance.get_physical_device_properties(*pd) };
                        (type_rank(t.device_type), i.index)
                    })
            }
            DeviceSelector::Index(n) => devices.iter().find(|(_, i)| i.index == *n),
            DeviceSelector::Name(s) => {
                let s = s.to_lowercase();
                devices
                    .iter()
                    .find(|(_, i)| i.usable && i.name.to_lowercase().contains(&s))
            }
        };
        let Some((pd, info)) = chosen.cloned() else {
            return Err(EngineError::Unsupported(format!(
                "no usable Vulkan device matches {selector:?} ({} device(s) found)",
                devices.len()
            )));
        };
        if !info.usable {
            return Err(EngineError::Unsupported(format!(
                "Vulkan device {} ({}) has no compute queue or is older than Vulkan 1.1",
                info.index, info.name
            )));
        }
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
        let enabled = vk::PhysicalDeviceFeatures::default()
            .robust_buffer_access(features.robust_buffer_access == vk::TRUE);
        if features.robust_buffer_access != vk::TRUE {
            log::warn!("{}: robustBufferAccess not supported", info.name);
        }
        let create = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_features(&enabled);
        // SAFETY: valid create info; destroyed in Drop.
        let device = unsafe { vi.create_device(pd, &create, None) }
            .map_err(|e| vk_err("vkCreateDevice", e))?;
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
                unsafe { device.destroy_device(None) };
                return Err(EngineError::Unsupported(
                    "no memory type for buffers".into(),
                ));
            }
        };
        let host_type = match find_type(&memory_props, bits, mapped) {
            Some(t) => t,
            None => {
                // SAFETY: nothing else was created from the device.
                unsafe { device.destroy_device(None) };
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
            host_type,
            heap_bytes,
            one_shot: Mutex::new(one_shot),
            fence_timeout,
        })
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
                {
                    let queue = self.queue();
                    self.device
                        .queue_submit(*queue, &submit, fence)
                        .map_err(|e| vk_err("vkQueueSubmit", e))?;
                }
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
        // SAFETY: `fence` belongs to this device.
        unsafe {
            match self
                .device
                .wait_for_fences(&[fence], true, self.timeout_ns())
            {
                Ok(()) => self
                    .device
                    .reset_fences(&[fence])
                    .map_err(|e| vk_err("vkResetFences", e)),
                Err(vk::Result::TIMEOUT) => Err(EngineError::Timeout(
                    u64::try_from(self.fence_timeout.as_millis()).unwrap_or(u64::MAX),
                )),
                Err(e) => Err(vk_err("vkWaitForFences", e)),
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
            self.device.destroy_device(None);
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
