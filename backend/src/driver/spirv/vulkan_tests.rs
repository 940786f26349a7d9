//! Run-time proof on a real Vulkan driver (lavapipe, the CPU device): instrumented kernels
//! still compute the right answers, kernels that never end on their own end with `status == 1`,
//! and `NumWorkgroups` reads the whole grid when a launch runs in `vkCmdDispatchBase` pieces.
//!
//! Plain ash, independent of the engine: one device per test, host-visible buffers, a
//! descriptor set of storage buffers 0..=8 (8: the control block), the Khronos validation layer
//! when it is installed (its errors fail the test). As for the engine's tests, a machine without
//! lavapipe skips them with a note, unless `VGPU_REQUIRE_VULKAN=1` (set by `scripts/test.sh`),
//! which makes a missing device or validation layer a failure.

use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering};

use ash::vk;

use super::tests::module;
use super::*;

/// Validation-layer errors seen by this test module.
static VALIDATION_ERRORS: AtomicU64 = AtomicU64::new(0);

unsafe extern "system" fn on_message(
    severity: vk::DebugUtilsMessageSeverityFlagsEXT,
    _types: vk::DebugUtilsMessageTypeFlagsEXT,
    data: *const vk::DebugUtilsMessengerCallbackDataEXT<'_>,
    _user: *mut c_void,
) -> vk::Bool32 {
    if severity.contains(vk::DebugUtilsMessageSeverityFlagsEXT::ERROR) {
        VALIDATION_ERRORS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the layer passes a valid callback-data struct with a C-string message.
        let text = unsafe { data.as_ref().map(|d| CStr::from_ptr(d.p_message)) };
        eprintln!("vulkan validation error: {text:?}");
    }
    vk::FALSE
}

/// A host-visible, mapped storage buffer.
struct Buf {
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    ptr: *mut u8,
    size: usize,
}

impl Buf {
    fn bytes(&self) -> Vec<u8> {
        // SAFETY: `ptr` maps `size` coherent bytes; the device is idle when tests read.
        unsafe { std::slice::from_raw_parts(self.ptr, self.size).to_vec() }
    }
    fn u32s(&self) -> Vec<u32> {
        self.bytes()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
    fn f32s(&self) -> Vec<f32> {
        self.u32s().into_iter().map(f32::from_bits).collect()
    }
}

/// lavapipe: instance, device, queue and what a dispatch needs.
struct Gpu {
    _entry: ash::Entry,
    instance: ash::Instance,
    debug: Option<(ash::ext::debug_utils::Instance, vk::DebugUtilsMessengerEXT)>,
    device: ash::Device,
    queue: vk::Queue,
    family: u32,
    host_type: u32,
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
    bufs: Vec<Buf>,
}

const PUSH_BYTES: u32 = 128;

fn require_vulkan() -> bool {
    std::env::var("VGPU_REQUIRE_VULKAN").is_ok_and(|v| v == "1")
}

/// `None` (with a note) when there is no lavapipe and it is not required.
fn missing(what: &str) -> Option<Gpu> {
    if require_vulkan() {
        panic!("VGPU_REQUIRE_VULKAN=1 but {what}");
    }
    eprintln!("note: guest-kernel run-time tests skipped: {what}");
    None
}

impl Gpu {
    fn open() -> Option<Self> {
        // SAFETY: loading the system Vulkan loader.
        let Ok(entry) = (unsafe { ash::Entry::load() }) else {
            return missing("no Vulkan loader");
        };
        let layer = c"VK_LAYER_KHRONOS_validation";
        // SAFETY: plain enumeration.
        let has_layer = unsafe { entry.enumerate_instance_layer_properties() }
            .unwrap()
            .iter()
            .any(|l| l.layer_name_as_c_str() == Ok(layer));
        if !has_layer && require_vulkan() {
            panic!("VGPU_REQUIRE_VULKAN=1 but the Khronos validation layer is not installed");
        }
        let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_1);
        let layers = [layer.as_ptr()];
        let exts = [ash::ext::debug_utils::NAME.as_ptr()];
        let mut info = vk::InstanceCreateInfo::default().application_info(&app);
        if has_layer {
            info = info
                .enabled_layer_names(&layers)
                .enabled_extension_names(&exts);
        }
        // SAFETY: valid create info; destroyed in Drop.
        let instance = match unsafe { entry.create_instance(&info, None) } {
            Ok(i) => i,
            Err(e) => return missing(&format!("vkCreateInstance: {e}")),
        };
        let debug = has_layer.then(|| {
            let utils = ash::ext::debug_utils::Instance::new(&entry, &instance);
            let info = vk::DebugUtilsMessengerCreateInfoEXT::default()
                .message_severity(vk::DebugUtilsMessageSeverityFlagsEXT::ERROR)
                .message_type(vk::DebugUtilsMessageTypeFlagsEXT::VALIDATION)
                .pfn_user_callback(Some(on_message));
            // SAFETY: valid create info; destroyed in Drop.
            let m = unsafe { utils.create_debug_utils_messenger(&info, None) }.unwrap();
            (utils, m)
        });
        // SAFETY: plain queries on a live instance.
        let pd = unsafe { instance.enumerate_physical_devices() }
            .unwrap()
            .into_iter()
            .find(|&pd| {
                let p = unsafe { instance.get_physical_device_properties(pd) };
                p.device_type == vk::PhysicalDeviceType::CPU
            });
        let Some(pd) = pd else {
            // SAFETY: nothing else was created from the instance but the messenger.
            unsafe {
                if let Some((utils, m)) = &debug {
                    utils.destroy_debug_utils_messenger(*m, None);
                }
                instance.destroy_instance(None);
            }
            return missing("no CPU Vulkan device (lavapipe)");
        };
        // SAFETY: as above.
        let family = unsafe { instance.get_physical_device_queue_family_properties(pd) }
            .iter()
            .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))
            .expect("a compute queue") as u32;
        let priorities = [1.0];
        let queues = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(family)
            .queue_priorities(&priorities)];
        let features = vk::PhysicalDeviceFeatures::default().robust_buffer_access(true);
        let info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_features(&features);
        // SAFETY: valid create info; destroyed in Drop.
        let device = unsafe { instance.create_device(pd, &info, None) }.unwrap();
        // SAFETY: family and queue 0 were requested.
        let queue = unsafe { device.get_device_queue(family, 0) };
        // SAFETY: plain query.
        let mem = unsafe { instance.get_physical_device_memory_properties(pd) };
        let want = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
        let host_type = (0..mem.memory_type_count)
            .find(|&i| mem.memory_types[i as usize].property_flags.contains(want))
            .expect("host-visible memory");
        let bindings: Vec<_> = (0..=CONTROL_BINDING)
            .map(|b| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(b)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        // SAFETY: valid create infos; destroyed in Drop.
        let set_layout = unsafe {
            device.create_descriptor_set_layout(
                &vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings),
                None,
            )
        }
        .unwrap();
        let ranges = [vk::PushConstantRange::default()
            .stage_flags(vk::ShaderStageFlags::COMPUTE)
            .size(PUSH_BYTES)];
        let set_layouts = [set_layout];
        // SAFETY: as above.
        let layout = unsafe {
            device.create_pipeline_layout(
                &vk::PipelineLayoutCreateInfo::default()
                    .set_layouts(&set_layouts)
                    .push_constant_ranges(&ranges),
                None,
            )
        }
        .unwrap();
        Some(Self {
            _entry: entry,
            instance,
            debug,
            device,
            queue,
            family,
            host_type,
            set_layout,
            layout,
            bufs: Vec::new(),
        })
    }

    /// A storage buffer holding `data` (at least 16 bytes); returns its index.
    fn buffer(&mut self, data: &[u8]) -> usize {
        let size = data.len().max(16);
        let info = vk::BufferCreateInfo::default()
            .size(size as u64)
            .usage(vk::BufferUsageFlags::STORAGE_BUFFER);
        // SAFETY: valid create infos; memory is host-visible and mapped once; freed in Drop.
        unsafe {
            let buffer = self.device.create_buffer(&info, None).unwrap();
            let req = self.device.get_buffer_memory_requirements(buffer);
            assert!(req.memory_type_bits & (1 << self.host_type) != 0);
            let memory = self
                .device
                .allocate_memory(
                    &vk::MemoryAllocateInfo::default()
                        .allocation_size(req.size)
                        .memory_type_index(self.host_type),
                    None,
                )
                .unwrap();
            self.device.bind_buffer_memory(buffer, memory, 0).unwrap();
            let ptr = self
                .device
                .map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
                .unwrap()
                .cast::<u8>();
            std::ptr::write_bytes(ptr, 0, size);
            std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, data.len());
            self.bufs.push(Buf {
                buffer,
                memory,
                ptr,
                size,
            });
        }
        self.bufs.len() - 1
    }

    /// Runs `module` with `bindings` (binding → buffer index; binding 8 must be the control
    /// block) and `push`, as the listed `(base, count)` pieces; waits up to 60 s.
    fn run(
        &mut self,
        module: &PreparedModule,
        bindings: &[(u32, usize)],
        push: &[u8],
        pieces: &[([u32; 3], [u32; 3])],
    ) {
        let spare = self.buffer(&[0; 16]);
        let d = &self.device;
        // SAFETY: every object is created here and destroyed before returning, after the
        // fence wait; buffers outlive the submission.
        unsafe {
            let shader = d
                .create_shader_module(
                    &vk::ShaderModuleCreateInfo::default().code(&module.words),
                    None,
                )
                .unwrap();
            let name = std::ffi::CString::new(module.entry.clone()).unwrap();
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(shader)
                .name(&name);
            let info = vk::ComputePipelineCreateInfo::default()
                .flags(vk::PipelineCreateFlags::DISPATCH_BASE)
                .stage(stage)
                .layout(self.layout);
            let pipeline = d
                .create_compute_pipelines(vk::PipelineCache::null(), &[info], None)
                .map_err(|(_, e)| e)
                .unwrap()[0];
            let sizes = [vk::DescriptorPoolSize::default()
                .ty(vk::DescriptorType::STORAGE_BUFFER)
                .descriptor_count(CONTROL_BINDING + 1)];
            let pool = d
                .create_descriptor_pool(
                    &vk::DescriptorPoolCreateInfo::default()
                        .max_sets(1)
                        .pool_sizes(&sizes),
                    None,
                )
                .unwrap();
            let set_layouts = [self.set_layout];
            let set = d
                .allocate_descriptor_sets(
                    &vk::DescriptorSetAllocateInfo::default()
                        .descriptor_pool(pool)
                        .set_layouts(&set_layouts),
                )
                .unwrap()[0];
            let infos: Vec<[vk::DescriptorBufferInfo; 1]> = (0..=CONTROL_BINDING)
                .map(|b| {
                    let i = bindings
                        .iter()
                        .find(|(bb, _)| *bb == b)
                        .map_or(spare, |(_, i)| *i);
                    [vk::DescriptorBufferInfo::default()
                        .buffer(self.bufs[i].buffer)
                        .range(vk::WHOLE_SIZE)]
                })
                .collect();
            let writes: Vec<_> = infos
                .iter()
                .enumerate()
                .map(|(b, info)| {
                    vk::WriteDescriptorSet::default()
                        .dst_set(set)
                        .dst_binding(b as u32)
                        .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                        .buffer_info(info)
                })
                .collect();
            d.update_descriptor_sets(&writes, &[]);
            let cmd_pool = d
                .create_command_pool(
                    &vk::CommandPoolCreateInfo::default().queue_family_index(self.family),
                    None,
                )
                .unwrap();
            let cb = d
                .allocate_command_buffers(
                    &vk::CommandBufferAllocateInfo::default()
                        .command_pool(cmd_pool)
                        .command_buffer_count(1),
                )
                .unwrap()[0];
            d.begin_command_buffer(cb, &vk::CommandBufferBeginInfo::default())
                .unwrap();
            d.cmd_bind_pipeline(cb, vk::PipelineBindPoint::COMPUTE, pipeline);
            d.cmd_bind_descriptor_sets(
                cb,
                vk::PipelineBindPoint::COMPUTE,
                self.layout,
                0,
                &[set],
                &[],
            );
            let mut constants = [0u8; PUSH_BYTES as usize];
            constants[..push.len()].copy_from_slice(push);
            d.cmd_push_constants(
                cb,
                self.layout,
                vk::ShaderStageFlags::COMPUTE,
                0,
                &constants,
            );
            for (base, count) in pieces {
                d.cmd_dispatch_base(cb, base[0], base[1], base[2], count[0], count[1], count[2]);
            }
            let barrier = vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::SHADER_WRITE)
                .dst_access_mask(vk::AccessFlags::HOST_READ);
            d.cmd_pipeline_barrier(
                cb,
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::PipelineStageFlags::HOST,
                vk::DependencyFlags::empty(),
                &[barrier],
                &[],
                &[],
            );
            d.end_command_buffer(cb).unwrap();
            let fence = d
                .create_fence(&vk::FenceCreateInfo::default(), None)
                .unwrap();
            let cbs = [cb];
            d.queue_submit(
                self.queue,
                &[vk::SubmitInfo::default().command_buffers(&cbs)],
                fence,
            )
            .unwrap();
            // Generous: a bounded kernel finishes in milliseconds; an unbounded one never.
            d.wait_for_fences(&[fence], true, 60_000_000_000)
                .expect("the launch did not finish within 60 s");
            d.destroy_fence(fence, None);
            d.destroy_command_pool(cmd_pool, None);
            d.destroy_descriptor_pool(pool, None);
            d.destroy_pipeline(pipeline, None);
            d.destroy_shader_module(shader, None);
        }
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: the device is idle (every run waited for its fence); children first.
        unsafe {
            for b in self.bufs.drain(..) {
                self.device.destroy_buffer(b.buffer, None);
                self.device.free_memory(b.memory, None);
            }
            self.device.destroy_pipeline_layout(self.layout, None);
            self.device
                .destroy_descriptor_set_layout(self.set_layout, None);
            self.device.destroy_device(None);
            if let Some((utils, m)) = self.debug.take() {
                utils.destroy_debug_utils_messenger(m, None);
            }
            self.instance.destroy_instance(None);
        }
    }
}

/// The control block's initial contents for a launch of `grid` workgroups.
fn control(grid: [u32; 3]) -> Vec<u8> {
    let mut c = vec![0u8; CONTROL_BYTES as usize];
    let at = CONTROL_GRID_OFFSET as usize;
    c[at..at + 12].copy_from_slice(bytemuck::cast_slice(&grid));
    c
}

fn status(gpu: &Gpu, ctrl: usize) -> u32 {
    gpu.bufs[ctrl].u32s()[CONTROL_STATUS_OFFSET as usize / 4]
}

fn prepare_main(name: &str, budget: u32) -> PreparedModule {
    let limits = ModuleLimits {
        loop_budget: budget,
        ..ModuleLimits::default()
    };
    prepare(&module(name), "main", &limits).unwrap()
}

fn no_validation_errors() {
    assert_eq!(VALIDATION_ERRORS.load(Ordering::Relaxed), 0);
}

#[test]
fn instrumented_kernels_compute_the_cpu_reference_in_pieces() {
    let Some(mut gpu) = Gpu::open() else {
        return;
    };
    // Reduction: 4 workgroups as two DispatchBase pieces; the grid-stride loop uses
    // NumWorkgroups, so a wrong grid would skip or double elements.
    let n = 10_000u32;
    let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let groups = 4u32;
    let mut want = vec![0f32; groups as usize];
    for (i, v) in x.iter().enumerate() {
        want[(i / 64) % groups as usize] += v;
    }
    let p = prepare_main("reduce", 1 << 20);
    let xb = gpu.buffer(bytemuck::cast_slice(&x));
    let sums = gpu.buffer(&vec![0; groups as usize * 4]);
    let ctrl = gpu.buffer(&control([groups, 1, 1]));
    gpu.run(
        &p,
        &[(0, xb), (1, sums), (CONTROL_BINDING, ctrl)],
        &n.to_le_bytes(),
        &[([0, 0, 0], [2, 1, 1]), ([2, 0, 0], [2, 1, 1])],
    );
    assert_eq!(gpu.bufs[sums].f32s(), want);
    assert_eq!(status(&gpu, ctrl), 0);

    // 2-D convolution, 3x3 box kernel over a 20x13 image, in 2x2 workgroup pieces.
    let (w, h, k) = (20u32, 13u32, 3u32);
    let img: Vec<f32> = (0..w * h).map(|i| ((i * 37) % 11) as f32).collect();
    let ker: Vec<f32> = (0..k * k).map(|i| (i + 1) as f32).collect();
    let mut want = vec![0f32; (w * h) as usize];
    for y in 0..h as i32 {
        for x in 0..w as i32 {
            let mut acc = 0f32;
            for dy in -1..=1i32 {
                for dx in -1..=1i32 {
                    let sx = (x + dx).clamp(0, w as i32 - 1);
                    let sy = (y + dy).clamp(0, h as i32 - 1);
                    acc += img[(sy * w as i32 + sx) as usize]
                        * ker[((dy + 1) * k as i32 + dx + 1) as usize];
                }
            }
            want[(y * w as i32 + x) as usize] = acc;
        }
    }
    let p = prepare_main("conv2d", 1 << 20);
    let (ib, kb) = (
        gpu.buffer(bytemuck::cast_slice(&img)),
        gpu.buffer(bytemuck::cast_slice(&ker)),
    );
    let ob = gpu.buffer(&vec![0; want.len() * 4]);
    let ctrl = gpu.buffer(&control([3, 2, 1]));
    let push: Vec<u8> = [w, h, k].iter().flat_map(|v| v.to_le_bytes()).collect();
    let pieces: Vec<_> = (0..3)
        .flat_map(|x| (0..2).map(move |y| ([x, y, 0], [1, 1, 1])))
        .collect();
    gpu.run(
        &p,
        &[(0, ib), (1, kb), (2, ob), (CONTROL_BINDING, ctrl)],
        &push,
        &pieces,
    );
    assert_eq!(gpu.bufs[ob].f32s(), want);
    assert_eq!(status(&gpu, ctrl), 0);

    // Softmax over 6 rows of 9 (break, continue, do-while, a loop in a called function).
    let (cols, rows) = (9u32, 6u32);
    let x: Vec<f32> = (0..cols * rows)
        .map(|i| ((i * 5) % 13) as f32 * 0.25)
        .collect();
    let p = prepare_main("softmax", 1 << 20);
    let xb = gpu.buffer(bytemuck::cast_slice(&x));
    let yb = gpu.buffer(&vec![0; x.len() * 4]);
    let ctrl = gpu.buffer(&control([2, 1, 1]));
    let push: Vec<u8> = [cols, rows].iter().flat_map(|v| v.to_le_bytes()).collect();
    gpu.run(
        &p,
        &[(0, xb), (1, yb), (CONTROL_BINDING, ctrl)],
        &push,
        &[([0, 0, 0], [2, 1, 1])],
    );
    let y = gpu.bufs[yb].f32s();
    for r in 0..rows as usize {
        let row = &x[r * cols as usize..(r + 1) * cols as usize];
        let m = row.iter().cloned().fold(f32::MIN, f32::max);
        let sum: f32 = row.iter().map(|v| (v - m).exp()).sum();
        for (j, v) in row.iter().enumerate() {
            let want = (v - m).exp() / sum;
            let got = y[r * cols as usize + j];
            assert!(
                (got - want).abs() < 1e-5,
                "row {r} col {j}: {got} vs {want}"
            );
        }
    }
    assert_eq!(status(&gpu, ctrl), 0);
    no_validation_errors();
}

#[test]
fn kernels_that_never_end_stop_at_the_budget_and_say_so() {
    let Some(mut gpu) = Gpu::open() else {
        return;
    };
    // while (true) {} after marking its slot: 8 invocations in 2 workgroups.
    let p = prepare_main("forever", 1000);
    let v = gpu.buffer(&[0; 32]);
    let ctrl = gpu.buffer(&control([2, 1, 1]));
    gpu.run(
        &p,
        &[(0, v), (CONTROL_BINDING, ctrl)],
        &[],
        &[([0, 0, 0], [2, 1, 1])],
    );
    assert_eq!(gpu.bufs[v].u32s(), vec![1; 8]);
    assert_eq!(status(&gpu, ctrl), 1);

    // Waits for a flag nobody sets: leaves after `budget` iterations, then runs on.
    let p = prepare_main("spin", 500);
    let b = gpu.buffer(&[0; 4 + 4 * 4]);
    let ctrl = gpu.buffer(&control([1, 1, 1]));
    gpu.run(
        &p,
        &[(0, b), (CONTROL_BINDING, ctrl)],
        &[],
        &[([0, 0, 0], [1, 1, 1])],
    );
    let seen = gpu.bufs[b].u32s();
    assert_eq!(seen[0], 0, "the flag");
    // The loop took its 500 back edges (501 passes through the body) and then left.
    assert_eq!(&seen[1..], &[502; 4]);
    assert_eq!(status(&gpu, ctrl), 1);

    // The same kernel with the flag set never spends its budget: status stays 0.
    let b = gpu.buffer(bytemuck::cast_slice(&[1u32, 0, 0, 0, 0]));
    let ctrl = gpu.buffer(&control([1, 1, 1]));
    gpu.run(
        &p,
        &[(0, b), (CONTROL_BINDING, ctrl)],
        &[],
        &[([0, 0, 0], [1, 1, 1])],
    );
    assert_eq!(&gpu.bufs[b].u32s()[1..5], &[1; 4]);
    assert_eq!(status(&gpu, ctrl), 0);
    no_validation_errors();
}

#[test]
fn num_workgroups_is_the_whole_grid_in_dispatch_base_pieces() {
    let Some(mut gpu) = Gpu::open() else {
        return;
    };
    let p = prepare_main("grid", 1 << 20);
    let grid = [3u32, 2, 2];
    let total = (grid[0] * grid[1] * grid[2]) as usize;
    let o = gpu.buffer(&vec![0; total * 16]);
    let ctrl = gpu.buffer(&control(grid));
    // One piece per z slice, and the first slice split in x.
    let pieces = [
        ([0, 0, 0], [1, 2, 1]),
        ([1, 0, 0], [2, 2, 1]),
        ([0, 0, 1], [3, 2, 1]),
    ];
    gpu.run(
        &p,
        &[(0, o), (CONTROL_BINDING, ctrl)],
        &100u32.to_le_bytes(),
        &pieces,
    );
    let got = gpu.bufs[o].u32s();
    for idx in 0..total {
        assert_eq!(
            &got[idx * 4..idx * 4 + 4],
            &[3, 2, 2 + 100, idx as u32],
            "workgroup {idx}"
        );
    }
    assert_eq!(status(&gpu, ctrl), 0);
    no_validation_errors();
}

#[test]
fn out_of_range_indices_outside_storage_buffers_read_element_zero() {
    let Some(mut gpu) = Gpu::open() else {
        return;
    };
    let p = prepare_main("bounds", 1 << 20);
    // Per invocation: an index in range, a huge one, a negative one, the last in range.
    let idx: [i32; 4] = [2, 1_000_000, -5, 3];
    let mut data: Vec<u8> = bytemuck::cast_slice(&idx).to_vec();
    data.extend_from_slice(&[0; 12 * 4]);
    let b = gpu.buffer(&data);
    let ctrl = gpu.buffer(&control([1, 1, 1]));
    let table: [u32; 4] = [1000, 1001, 1002, 1003];
    gpu.run(
        &p,
        &[(0, b), (CONTROL_BINDING, ctrl)],
        bytemuck::cast_slice(&table),
        &[([0, 0, 0], [1, 1, 1])],
    );
    let got = gpu.bufs[b].u32s();
    // (local[k] after += 100, sh[k], table[k]); clamped indices address element 0.
    let want: [u32; 12] = [
        112, 22, 1002, //
        110, 20, 1000, //
        110, 20, 1000, //
        113, 23, 1003,
    ];
    assert_eq!(&got[4..16], &want);
    assert_eq!(status(&gpu, ctrl), 0);
    no_validation_errors();
}

#[test]
fn ssa_loops_run_to_their_result_or_leave_at_the_budget() {
    let Some(mut gpu) = Gpu::open() else {
        return;
    };
    let p = prepare_main("ssa_loops", 1 << 20);
    let b = gpu.buffer(&[0; 16]);
    let ctrl = gpu.buffer(&control([1, 1, 1]));
    gpu.run(
        &p,
        &[(0, b), (CONTROL_BINDING, ctrl)],
        &[],
        &[([0, 0, 0], [1, 1, 1])],
    );
    assert_eq!(gpu.bufs[b].u32s()[0], 11);
    assert_eq!(status(&gpu, ctrl), 0);
    // Ten back edges are needed; with five the first loop leaves early (its merge phi gets a
    // zero) and the launch says so.
    let p = prepare_main("ssa_loops", 5);
    let ctrl = gpu.buffer(&control([1, 1, 1]));
    gpu.run(
        &p,
        &[(0, b), (CONTROL_BINDING, ctrl)],
        &[],
        &[([0, 0, 0], [1, 1, 1])],
    );
    assert_eq!(status(&gpu, ctrl), 1);
    no_validation_errors();
}

#[test]
fn an_endless_loop_with_an_unreachable_merge_returns_and_undefined_values_are_zero() {
    let Some(mut gpu) = Gpu::open() else {
        return;
    };
    let p = prepare_main("unreachable_merge", 100);
    let b = gpu.buffer(&[0xff; 16]);
    let ctrl = gpu.buffer(&control([1, 1, 1]));
    gpu.run(
        &p,
        &[(0, b), (CONTROL_BINDING, ctrl)],
        &[],
        &[([0, 0, 0], [1, 1, 1])],
    );
    assert_eq!(&gpu.bufs[b].u32s()[..3], &[1, 0, u32::MAX]);
    assert_eq!(status(&gpu, ctrl), 1);
    no_validation_errors();
}
