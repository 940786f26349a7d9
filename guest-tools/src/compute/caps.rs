//! What the vGPU offers guest kernels: the capset's module fields and limits.

use vgpu_protocol::capset::ENGINE_KIND_VULKAN;
use vgpu_protocol::VgpuCapset;

/// The vGPU's capabilities, from its capset (read once at open).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    capset: VgpuCapset,
}

impl Caps {
    /// Capabilities of `capset`.
    pub fn new(capset: VgpuCapset) -> Self {
        Caps { capset }
    }

    /// True when the engine runs guest SPIR-V modules (protocol 1.2 and the Vulkan engine).
    pub fn runs_modules(&self) -> bool {
        self.capset.protocol_minor >= 2 && self.capset.runs_modules()
    }

    /// True when the engine is the Vulkan one.
    pub fn is_vulkan(&self) -> bool {
        self.capset.engine_kind == ENGINE_KIND_VULKAN
    }

    /// Largest module in bytes.
    pub fn max_module_bytes(&self) -> u32 {
        self.capset.max_module_bytes
    }

    /// Loop back edges one invocation may take before its launch fails.
    pub fn loop_budget(&self) -> u32 {
        self.capset.loop_budget
    }

    /// Binding slots (`0..max_bindings`, set 0, storage buffers).
    pub fn max_bindings(&self) -> u32 {
        self.capset.max_bindings
    }

    /// Push-constant bytes.
    pub fn max_push_constant_bytes(&self) -> u32 {
        self.capset.max_push_constant_bytes
    }

    /// Binding offsets are multiples of this.
    pub fn bind_offset_align(&self) -> u32 {
        self.capset.bind_offset_align
    }

    /// Largest workgroup count per grid dimension.
    pub fn max_workgroups(&self) -> u32 {
        self.capset.max_workgroups
    }

    /// Largest workgroup size per dimension.
    pub fn max_workgroup_size(&self) -> [u32; 3] {
        self.capset.max_workgroup_size
    }

    /// Largest invocations per workgroup.
    pub fn max_workgroup_invocations(&self) -> u32 {
        self.capset.max_workgroup_invocations
    }

    /// Largest shared (workgroup) memory of a module in bytes.
    pub fn max_shared_bytes(&self) -> u32 {
        self.capset.max_shared_bytes
    }

    /// Most modules loaded at once per device handle (context).
    pub fn max_modules(&self) -> u32 {
        self.capset.max_modules
    }

    /// Largest buffer in bytes.
    pub fn max_buffer_bytes(&self) -> u64 {
        self.capset.max_buffer_bytes
    }

    /// Largest range of one binding in bytes (0: no limit reported).
    pub fn max_storage_buffer_range(&self) -> u64 {
        self.capset.max_storage_buffer_range
    }

    /// The host device's name (e.g. `llvmpipe (LLVM 19.1.7, 256 bits)`).
    pub fn device_name(&self) -> &str {
        self.capset.device_name()
    }

    /// The whole capset.
    pub fn capset(&self) -> &VgpuCapset {
        &self.capset
    }
}
