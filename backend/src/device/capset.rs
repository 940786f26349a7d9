//! The one capset a device with a vGPU advertises: [`VGPU_CAPSET_ID`] version 1, a
//! [`VgpuCapset`] describing the vGPU type and the engine behind it (the engine fields come
//! from the driver's [`EngineCaps`](crate::driver::engine::EngineCaps)).

use std::mem::size_of;

use vgpu_protocol::capset::MODULE_FLAG_SPIRV;
use vgpu_protocol::channel::{
    Kernel, BIND_OFFSET_ALIGN, MAX_BINDINGS, MAX_COMMANDS_PER_SUBMIT, MAX_MODULES_PER_CONTEXT,
    MAX_MODULE_BYTES, VGPU_CAPSET_ID,
};
use vgpu_protocol::command::MAX_SUBMIT_SIZE;
use vgpu_protocol::VgpuCapset;
use vgpu_protocol::VGPU_PROTOCOL_VERSION;

use super::error::GpuError;
use crate::driver::Vgpu;

/// `capset_max_size` advertised for our capset.
pub const CAPSET_MAX_SIZE: u32 = size_of::<VgpuCapset>() as u32;

/// GET_CAPSET_INFO: `(capset_id, max_version, max_size)` for capset `index` of a device with
/// `num_capsets` capsets (0 or 1).
pub fn capset_info(num_capsets: u32, index: u32) -> Result<(u32, u32, u32), GpuError> {
    if index >= num_capsets {
        return Err(GpuError::NoCapset(index));
    }
    Ok((VGPU_CAPSET_ID, VGPU_PROTOCOL_VERSION, CAPSET_MAX_SIZE))
}

/// GET_CAPSET: the capset of `vgpu` for `(id, version)`; only `(42, 1)` exists.
pub fn capset(vgpu: Option<&Vgpu>, id: u32, version: u32) -> Result<VgpuCapset, GpuError> {
    let vgpu = vgpu.ok_or(GpuError::NoCapset(id))?;
    if id != VGPU_CAPSET_ID {
        return Err(GpuError::NoCapset(id));
    }
    if version != VGPU_PROTOCOL_VERSION {
        return Err(GpuError::NoCapsetVersion { id, version });
    }
    let ty = vgpu.vgpu_type();
    let mut c = VgpuCapset::new(&ty.name);
    c.framebuffer_bytes = ty.framebuffer_bytes;
    c.max_heads = ty.max_heads;
    c.max_width = ty.max_width;
    c.max_height = ty.max_height;
    let caps = vgpu.engine_caps();
    c.engine_count = caps.queues;
    c.kernel_mask = caps.kernel_mask & Kernel::mask_all();
    c.engine_kind = caps.kind.wire();
    c.vendor_id = caps.vendor_id;
    c.device_id = caps.device_id;
    c.driver_version = caps.driver_version;
    c.device_memory_bytes = caps.device_memory_bytes;
    c.timestamp_period_ps = caps.timestamp_period_ps;
    c.max_workgroups = caps.max_workgroups;
    c.max_workgroup_invocations = caps.max_workgroup_invocations;
    c.queues = caps.queues;
    c.max_storage_buffer_range = caps.max_storage_buffer_range;
    c.set_device_name(&caps.device_name);
    c.set_driver_name(&caps.driver_name);
    // A buffer's size is a RESOURCE_CREATE_3D width (u32), and at most the framebuffer.
    c.max_buffer_bytes = ty.framebuffer_bytes.min(u64::from(u32::MAX));
    c.max_submit_bytes = MAX_SUBMIT_SIZE;
    c.max_commands_per_submit = MAX_COMMANDS_PER_SUBMIT as u32;
    if let Some(compiler) = vgpu.module_compiler() {
        let limits = compiler.limits();
        c.module_flags = MODULE_FLAG_SPIRV;
        c.max_module_bytes = u32::try_from(MAX_MODULE_BYTES).unwrap_or(u32::MAX);
        c.loop_budget = limits.loop_budget;
        c.max_bindings = MAX_BINDINGS;
        c.max_push_constant_bytes = limits.max_push_constant_bytes;
        c.bind_offset_align = BIND_OFFSET_ALIGN as u32;
        c.max_workgroup_size = limits.max_workgroup_size;
        c.max_shared_bytes = limits.max_shared_bytes;
        c.max_modules = MAX_MODULES_PER_CONTEXT as u32;
    }
    Ok(c)
}
