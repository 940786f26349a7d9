//! Fixed-size records of the channel protocol: the capset returned by GET_CAPSET for
//! [`VGPU_CAPSET_ID`], and the [`StatsRecord`] written by QUERY_STATS.

use std::mem::size_of;

use vm_memory::ByteValued;

use crate::channel::{ChannelError, Kernel, VGPU_CAPSET_ID, VGPU_PROTOCOL_VERSION};
use crate::command::read_obj;

/// Magic of [`VgpuCapset`]: "VGPU" as little-endian bytes.
pub const VGPU_CAPSET_MAGIC: u32 = 0x5550_4756;
/// Magic of [`StatsRecord`]: "VGST" as little-endian bytes.
pub const VGPU_STATS_MAGIC: u32 = 0x5453_4756;
/// Size in bytes of [`VgpuCapset`] (the `capset_max_size` to advertise).
pub const VGPU_CAPSET_SIZE: usize = 320;
/// Size of the capset of protocol 1.1 (the guest-module fields from offset 256 on came with 1.2).
pub const VGPU_CAPSET_V1_1_SIZE: usize = 256;
/// [`VgpuCapset::module_flags`]: the engine runs guest SPIR-V modules (MODULE_LOAD, BIND,
/// PUSH_CONSTANTS, DISPATCH).
pub const MODULE_FLAG_SPIRV: u32 = 1;
/// Size of the capset of protocol 1.0 (the engine fields from offset 128 on came with 1.1);
/// [`VgpuCapset::parse`] accepts it and reads the missing fields as zero.
pub const VGPU_CAPSET_V1_0_SIZE: usize = 128;
/// The protocol's minor version: 1 added the engine fields of [`VgpuCapset`], 2 the guest-module
/// commands and their capset fields (compatible: an older reader ignores the new fields, a newer
/// reader of an older capset sees zeros).
pub const VGPU_PROTOCOL_MINOR: u32 = 2;
/// [`VgpuCapset::engine_kind`]: not reported (a protocol 1.0 host).
pub const ENGINE_KIND_UNKNOWN: u32 = 0;
/// [`VgpuCapset::engine_kind`]: the embedded CPU engine.
pub const ENGINE_KIND_CPU: u32 = 1;
/// [`VgpuCapset::engine_kind`]: a Vulkan compute device.
pub const ENGINE_KIND_VULKAN: u32 = 2;
/// Bytes of [`VgpuCapset::device_name`].
pub const DEVICE_NAME_LEN: usize = 48;
/// Bytes of [`VgpuCapset::driver_name`].
pub const DRIVER_NAME_LEN: usize = 32;
/// Size in bytes of [`StatsRecord`].
pub const STATS_RECORD_SIZE: usize = 128;
/// Bytes of [`VgpuCapset::type_name`].
pub const TYPE_NAME_LEN: usize = 32;

/// The capset of [`VGPU_CAPSET_ID`], version [`VGPU_PROTOCOL_VERSION`]: what this vGPU offers.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct VgpuCapset {
    /// [`VGPU_CAPSET_MAGIC`].
    pub magic: u32,
    /// [`VGPU_PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// vGPU type name, UTF-8, NUL padded (see [`VgpuCapset::type_name`]).
    pub type_name: [u8; TYPE_NAME_LEN],
    /// Framebuffer (device memory) budget of this vGPU in bytes.
    pub framebuffer_bytes: u64,
    /// Number of scanouts.
    pub max_heads: u32,
    /// Largest scanout width.
    pub max_width: u32,
    /// Largest scanout height.
    pub max_height: u32,
    /// Number of engines (queues) the backend runs jobs on.
    pub engine_count: u32,
    /// Supported kernels: bit `1 << id` per [`Kernel`].
    pub kernel_mask: u32,
    /// [`VGPU_PROTOCOL_MINOR`] of the host (0 from a protocol 1.0 host).
    pub protocol_minor: u32,
    /// Largest single buffer in bytes.
    pub max_buffer_bytes: u64,
    /// Largest SUBMIT_3D stream in bytes.
    pub max_submit_bytes: u32,
    /// Most commands per SUBMIT_3D stream.
    pub max_commands_per_submit: u32,
    /// Must be 0.
    pub reserved: [u32; 10],
    // ---- protocol 1.1: the engine behind the vGPU (offset 128) ----
    /// [`ENGINE_KIND_CPU`] or [`ENGINE_KIND_VULKAN`] ([`ENGINE_KIND_UNKNOWN`] from a 1.0 host).
    pub engine_kind: u32,
    /// PCI vendor id of the device (0 for the CPU engine).
    pub vendor_id: u32,
    /// PCI device id of the device (0 for the CPU engine).
    pub device_id: u32,
    /// Driver version as the driver reports it (Vulkan `driverVersion`).
    pub driver_version: u32,
    /// Memory of the whole device in bytes (what all partitions share).
    pub device_memory_bytes: u64,
    /// Length of one device timestamp tick in picoseconds (0: the engine has no device clock).
    pub timestamp_period_ps: u32,
    /// Largest workgroup count per dispatch dimension.
    pub max_workgroups: u32,
    /// Largest invocations per workgroup.
    pub max_workgroup_invocations: u32,
    /// Queues the engine submits to.
    pub queues: u32,
    /// Largest range of one storage-buffer binding (bigger buffers are bound in windows).
    pub max_storage_buffer_range: u64,
    /// Device name, UTF-8, NUL padded (see [`VgpuCapset::device_name`]).
    pub device_name: [u8; DEVICE_NAME_LEN],
    /// Driver name, UTF-8, NUL padded (see [`VgpuCapset::driver_name`]).
    pub driver_name: [u8; DRIVER_NAME_LEN],
    // ---- protocol 1.2: guest compute modules (offset 256) ----
    /// [`MODULE_FLAG_SPIRV`] when guest modules run (0: the engine runs only the built-in kernels).
    pub module_flags: u32,
    /// Largest module in bytes.
    pub max_module_bytes: u32,
    /// Loop back edges one invocation may take before its loops are cut short and its launch
    /// fails.
    pub loop_budget: u32,
    /// Guest descriptor slots (BIND slots `0..max_bindings`).
    pub max_bindings: u32,
    /// Push-constant bytes.
    pub max_push_constant_bytes: u32,
    /// BIND offsets are multiples of this.
    pub bind_offset_align: u32,
    /// Largest workgroup size per dimension.
    pub max_workgroup_size: [u32; 3],
    /// Largest shared (workgroup) memory of a module in bytes.
    pub max_shared_bytes: u32,
    /// Most modules per context.
    pub max_modules: u32,
    /// Must be 0.
    pub reserved2: [u32; 5],
}

impl Default for VgpuCapset {
    fn default() -> Self {
        VgpuCapset {
            magic: VGPU_CAPSET_MAGIC,
            protocol_version: VGPU_PROTOCOL_VERSION,
            type_name: [0; TYPE_NAME_LEN],
            framebuffer_bytes: 0,
            max_heads: 0,
            max_width: 0,
            max_height: 0,
            engine_count: 0,
            kernel_mask: 0,
            protocol_minor: VGPU_PROTOCOL_MINOR,
            max_buffer_bytes: 0,
            max_submit_bytes: 0,
            max_commands_per_submit: 0,
            reserved: [0; 10],
            engine_kind: ENGINE_KIND_UNKNOWN,
            vendor_id: 0,
            device_id: 0,
            driver_version: 0,
            device_memory_bytes: 0,
            timestamp_period_ps: 0,
            max_workgroups: 0,
            max_workgroup_invocations: 0,
            queues: 0,
            max_storage_buffer_range: 0,
            device_name: [0; DEVICE_NAME_LEN],
            driver_name: [0; DRIVER_NAME_LEN],
            module_flags: 0,
            max_module_bytes: 0,
            loop_budget: 0,
            max_bindings: 0,
            max_push_constant_bytes: 0,
            bind_offset_align: 0,
            max_workgroup_size: [0; 3],
            max_shared_bytes: 0,
            max_modules: 0,
            reserved2: [0; 5],
        }
    }
}

/// Copies `name` into a NUL-padded array, truncated at a char boundary so it keeps a final NUL.
fn name_bytes<const N: usize>(name: &str) -> [u8; N] {
    let mut end = name.len().min(N.saturating_sub(1));
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = [0; N];
    if let (Some(dst), Some(src)) = (out.get_mut(..end), name.as_bytes().get(..end)) {
        dst.copy_from_slice(src);
    }
    out
}

/// The valid UTF-8 text before the first NUL.
fn name_str(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let bytes = bytes.get(..end).unwrap_or_default();
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(bytes.get(..e.valid_up_to()).unwrap_or_default())
            .unwrap_or_default(),
    }
}

impl VgpuCapset {
    /// A capset with magic, version, `type_name` (truncated to 31 bytes), every kernel this crate
    /// knows, the crate's submit limits, and zero for everything else.
    pub fn new(type_name: &str) -> Self {
        VgpuCapset {
            type_name: name_bytes(type_name),
            kernel_mask: Kernel::mask_all(),
            max_submit_bytes: crate::command::MAX_SUBMIT_SIZE,
            max_commands_per_submit: crate::channel::MAX_COMMANDS_PER_SUBMIT as u32,
            ..Default::default()
        }
    }

    /// Sets the type name (truncated to 31 bytes at a char boundary).
    pub fn set_type_name(&mut self, name: &str) {
        self.type_name = name_bytes(name);
    }

    /// The type name up to its first NUL (the valid UTF-8 prefix if it is not UTF-8).
    pub fn type_name(&self) -> &str {
        name_str(&self.type_name)
    }

    /// Sets the device name (truncated to 47 bytes at a char boundary).
    pub fn set_device_name(&mut self, name: &str) {
        self.device_name = name_bytes(name);
    }

    /// The device name up to its first NUL ("" from a protocol 1.0 host).
    pub fn device_name(&self) -> &str {
        name_str(&self.device_name)
    }

    /// Sets the driver name (truncated to 31 bytes at a char boundary).
    pub fn set_driver_name(&mut self, name: &str) {
        self.driver_name = name_bytes(name);
    }

    /// The driver name up to its first NUL.
    pub fn driver_name(&self) -> &str {
        name_str(&self.driver_name)
    }

    /// The engine kind as text: "cpu", "vulkan" or "unknown".
    pub fn engine_name(&self) -> &'static str {
        match self.engine_kind {
            ENGINE_KIND_CPU => "cpu",
            ENGINE_KIND_VULKAN => "vulkan",
            _ => "unknown",
        }
    }

    /// True when the engine runs guest SPIR-V modules.
    pub fn runs_modules(&self) -> bool {
        self.module_flags & MODULE_FLAG_SPIRV != 0
    }

    /// True when `kernel_mask` has `kernel`.
    pub fn supports(&self, kernel: Kernel) -> bool {
        self.kernel_mask & kernel.bit() != 0
    }

    /// The capset's bytes, as GET_CAPSET returns them.
    pub fn as_bytes(&self) -> &[u8] {
        self.as_slice()
    }

    /// Parses capset bytes: at least [`VGPU_CAPSET_V1_0_SIZE`] bytes (fields past the bytes given
    /// read as zero, bytes past [`VGPU_CAPSET_SIZE`] are ignored), right magic, version ≥ 1 (later
    /// versions only append fields).
    pub fn parse(bytes: &[u8]) -> Result<Self, ChannelError> {
        if bytes.len() < VGPU_CAPSET_V1_0_SIZE {
            return Err(ChannelError::ShortRecord {
                needed: VGPU_CAPSET_V1_0_SIZE,
                got: bytes.len(),
            });
        }
        let mut full = [0u8; VGPU_CAPSET_SIZE];
        let n = bytes.len().min(VGPU_CAPSET_SIZE);
        if let (Some(dst), Some(src)) = (full.get_mut(..n), bytes.get(..n)) {
            dst.copy_from_slice(src);
        }
        let c = read_obj::<VgpuCapset>(&full).ok_or(ChannelError::ShortRecord {
            needed: size_of::<VgpuCapset>(),
            got: bytes.len(),
        })?;
        if c.magic != VGPU_CAPSET_MAGIC {
            return Err(ChannelError::BadMagic(c.magic));
        }
        if c.protocol_version == 0 {
            return Err(ChannelError::BadVersion(c.protocol_version));
        }
        Ok(c)
    }

    /// The capset id this record belongs to ([`VGPU_CAPSET_ID`]).
    pub fn id() -> u32 {
        VGPU_CAPSET_ID
    }
}

/// Scheduling policy reported in [`StatsRecord::policy`].
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SchedPolicy {
    /// Idle vGPUs give their turns away.
    BestEffort = 0,
    /// Each running vGPU gets 1/N.
    EqualShare = 1,
    /// Each vGPU gets a fixed share whether others run or not.
    FixedShare = 2,
}

impl SchedPolicy {
    /// The policy for a wire value.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => SchedPolicy::BestEffort,
            1 => SchedPolicy::EqualShare,
            2 => SchedPolicy::FixedShare,
            _ => return None,
        })
    }
}

/// What QUERY_STATS writes: this vGPU's view of the scheduler and its memory.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct StatsRecord {
    /// [`VGPU_STATS_MAGIC`].
    pub magic: u32,
    /// [`VGPU_PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// [`SchedPolicy`] value.
    pub policy: u32,
    /// Scheduler timeslice in microseconds.
    pub timeslice_us: u32,
    /// Framebuffer budget in bytes.
    pub framebuffer_total_bytes: u64,
    /// Framebuffer bytes in use (sum of this vGPU's resources).
    pub framebuffer_used_bytes: u64,
    /// This vGPU's share of engine time over the last ~1 s, in ‰.
    pub utilization_permille: u32,
    /// The share this vGPU is configured/expected to get, in ‰.
    pub share_permille: u32,
    /// vGPUs with work or a reservation on the device now.
    pub active_vgpus: u32,
    /// Must be 0.
    pub reserved0: u32,
    /// Jobs (submits) completed by this vGPU.
    pub jobs_completed: u64,
    /// Engine time this vGPU has used, in ns.
    pub busy_ns: u64,
    /// Jobs (submits) of this vGPU that failed or were cancelled (protocol 1.2; 0 before).
    pub jobs_failed: u64,
    /// Why the last failed job failed ([`JobFailure`] value; protocol 1.2).
    pub last_failure: u32,
    /// The `VIRTIO_GPU_RESP_ERR_*` code of the last refused submit (protocol 1.2).
    pub last_refusal_code: u32,
    /// SUBMIT_3D streams of this vGPU refused before anything ran (protocol 1.2): a guest's
    /// driver does not pass the error response on, so this is how a guest program learns that,
    /// for example, its module was refused.
    pub submits_refused: u64,
    /// Why the last submit was refused, UTF-8, NUL padded, truncated (protocol 1.2).
    pub last_refusal: [u8; REFUSAL_TEXT_LEN],
}

/// Bytes of [`StatsRecord::last_refusal`].
pub const REFUSAL_TEXT_LEN: usize = 40;

/// [`StatsRecord::last_failure`]: why a job failed.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum JobFailure {
    /// No job has failed.
    None = 0,
    /// A guest kernel ran out of its loop budget (see [`VgpuCapset::loop_budget`]).
    LoopBudget = 1,
    /// The device was lost while the job ran (the engine was re-created).
    DeviceLost = 2,
    /// A submission did not complete in time, or the engine stalled.
    Timeout = 3,
    /// The device ran out of memory.
    OutOfMemory = 4,
    /// The job was cancelled (its context or vGPU went away).
    Cancelled = 5,
    /// Any other engine error.
    Other = 6,
}

impl JobFailure {
    /// The failure for a wire value (unknown values read as [`JobFailure::Other`]).
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => JobFailure::None,
            1 => JobFailure::LoopBudget,
            2 => JobFailure::DeviceLost,
            3 => JobFailure::Timeout,
            4 => JobFailure::OutOfMemory,
            5 => JobFailure::Cancelled,
            _ => JobFailure::Other,
        }
    }

    /// Short text for tools and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            JobFailure::None => "none",
            JobFailure::LoopBudget => "loop budget exceeded",
            JobFailure::DeviceLost => "device lost",
            JobFailure::Timeout => "timeout",
            JobFailure::OutOfMemory => "out of device memory",
            JobFailure::Cancelled => "cancelled",
            JobFailure::Other => "engine error",
        }
    }
}

impl Default for StatsRecord {
    fn default() -> Self {
        StatsRecord {
            magic: VGPU_STATS_MAGIC,
            protocol_version: VGPU_PROTOCOL_VERSION,
            policy: 0,
            timeslice_us: 0,
            framebuffer_total_bytes: 0,
            framebuffer_used_bytes: 0,
            utilization_permille: 0,
            share_permille: 0,
            active_vgpus: 0,
            reserved0: 0,
            jobs_completed: 0,
            busy_ns: 0,
            jobs_failed: 0,
            last_failure: 0,
            last_refusal_code: 0,
            submits_refused: 0,
            last_refusal: [0; REFUSAL_TEXT_LEN],
        }
    }
}

impl StatsRecord {
    /// A record with magic and version set and everything else zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the refusal text (truncated to 39 bytes at a char boundary).
    pub fn set_last_refusal(&mut self, text: &str) {
        self.last_refusal = name_bytes(text);
    }

    /// The last refusal's text up to its first NUL.
    pub fn last_refusal(&self) -> &str {
        name_str(&self.last_refusal)
    }

    /// [`StatsRecord::last_failure`] as a [`JobFailure`].
    pub fn failure(&self) -> JobFailure {
        JobFailure::from_u32(self.last_failure)
    }

    /// The record's bytes, as QUERY_STATS writes them.
    pub fn as_bytes(&self) -> &[u8] {
        self.as_slice()
    }

    /// Parses record bytes (at least [`STATS_RECORD_SIZE`]), checking magic and version ≥ 1.
    pub fn parse(bytes: &[u8]) -> Result<Self, ChannelError> {
        let r = read_obj::<StatsRecord>(bytes).ok_or(ChannelError::ShortRecord {
            needed: size_of::<StatsRecord>(),
            got: bytes.len(),
        })?;
        if r.magic != VGPU_STATS_MAGIC {
            return Err(ChannelError::BadMagic(r.magic));
        }
        if r.protocol_version == 0 {
            return Err(ChannelError::BadVersion(r.protocol_version));
        }
        Ok(r)
    }

    /// The policy, if it is a known one.
    pub fn sched_policy(&self) -> Option<SchedPolicy> {
        SchedPolicy::from_u32(self.policy)
    }
}

// SAFETY: `#[repr(C)]` integer fields and arrays with no implicit padding (sizes asserted in the
// tests); every bit pattern is a valid value.
unsafe impl ByteValued for VgpuCapset {}
// SAFETY: see above.
unsafe impl ByteValued for StatsRecord {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn layouts() {
        assert_eq!(size_of::<VgpuCapset>(), VGPU_CAPSET_SIZE);
        assert_eq!(size_of::<StatsRecord>(), STATS_RECORD_SIZE);
        assert_eq!(offset_of!(VgpuCapset, type_name), 8);
        assert_eq!(offset_of!(VgpuCapset, framebuffer_bytes), 40);
        assert_eq!(offset_of!(VgpuCapset, kernel_mask), 64);
        assert_eq!(offset_of!(VgpuCapset, max_buffer_bytes), 72);
        assert_eq!(offset_of!(VgpuCapset, max_submit_bytes), 80);
        assert_eq!(offset_of!(VgpuCapset, reserved), 88);
        assert_eq!(offset_of!(VgpuCapset, protocol_minor), 68);
        assert_eq!(offset_of!(VgpuCapset, engine_kind), VGPU_CAPSET_V1_0_SIZE);
        assert_eq!(offset_of!(VgpuCapset, device_memory_bytes), 144);
        assert_eq!(offset_of!(VgpuCapset, max_storage_buffer_range), 168);
        assert_eq!(offset_of!(VgpuCapset, device_name), 176);
        assert_eq!(offset_of!(VgpuCapset, driver_name), 224);
        assert_eq!(offset_of!(StatsRecord, framebuffer_total_bytes), 16);
        assert_eq!(offset_of!(StatsRecord, utilization_permille), 32);
        assert_eq!(offset_of!(StatsRecord, jobs_completed), 48);
        assert_eq!(offset_of!(StatsRecord, busy_ns), 56);
        assert_eq!(offset_of!(StatsRecord, jobs_failed), 64);
        assert_eq!(offset_of!(StatsRecord, last_failure), 72);
        assert_eq!(offset_of!(StatsRecord, last_refusal_code), 76);
        assert_eq!(offset_of!(StatsRecord, submits_refused), 80);
        assert_eq!(offset_of!(StatsRecord, last_refusal), 88);
        assert_eq!(offset_of!(VgpuCapset, module_flags), VGPU_CAPSET_V1_1_SIZE);
        assert_eq!(offset_of!(VgpuCapset, max_workgroup_size), 280);
        assert_eq!(offset_of!(VgpuCapset, max_modules), 296);
        let mut r = StatsRecord::new();
        r.set_last_refusal("capability Kernel is not allowed in a guest module");
        assert_eq!(r.last_refusal(), "capability Kernel is not allowed in a g");
        assert_eq!(&VGPU_CAPSET_MAGIC.to_le_bytes(), b"VGPU");
        assert_eq!(&VGPU_STATS_MAGIC.to_le_bytes(), b"VGST");
    }

    #[test]
    fn capset_round_trip() {
        let mut c = VgpuCapset::new("vgpu-4q");
        c.framebuffer_bytes = 4 << 30;
        c.max_heads = 2;
        c.max_width = 5120;
        c.max_height = 2880;
        c.engine_count = 1;
        c.max_buffer_bytes = 1 << 30;
        let parsed = VgpuCapset::parse(c.as_bytes()).unwrap();
        assert_eq!(parsed, c);
        assert_eq!(parsed.type_name(), "vgpu-4q");
        assert_eq!(parsed.protocol_version, VGPU_PROTOCOL_VERSION);
        for k in Kernel::ALL {
            assert!(parsed.supports(k));
        }
        assert_eq!(parsed.kernel_mask, 0b11110);
        assert_eq!(VgpuCapset::id(), 42);
    }

    #[test]
    fn capset_1_0_parses_with_zero_engine_fields() {
        let mut c = VgpuCapset::new("vgpu-1q");
        c.engine_kind = ENGINE_KIND_VULKAN;
        c.set_device_name("llvmpipe (LLVM 19.1.7, 256 bits)");
        c.set_driver_name("llvmpipe");
        let full = VgpuCapset::parse(c.as_bytes()).unwrap();
        assert_eq!(full.engine_name(), "vulkan");
        assert_eq!(full.device_name(), "llvmpipe (LLVM 19.1.7, 256 bits)");
        assert_eq!(full.driver_name(), "llvmpipe");
        let old = VgpuCapset::parse(&c.as_bytes()[..VGPU_CAPSET_V1_0_SIZE]).unwrap();
        assert_eq!(old.type_name(), "vgpu-1q");
        assert_eq!((old.engine_name(), old.device_name()), ("unknown", ""));
        assert!(VgpuCapset::parse(&c.as_bytes()[..VGPU_CAPSET_V1_0_SIZE - 1]).is_err());
        let mut long = c.as_bytes().to_vec();
        long.extend_from_slice(&[7; 64]);
        assert_eq!(VgpuCapset::parse(&long).unwrap(), c);
        c.set_device_name(&"d".repeat(60));
        assert_eq!(c.device_name().len(), DEVICE_NAME_LEN - 1);
    }

    #[test]
    fn capset_name_truncation() {
        let long = "x".repeat(40);
        let c = VgpuCapset::new(&long);
        assert_eq!(c.type_name().len(), 31);
        // A multi-byte char across the limit is dropped whole.
        let name = format!("{}é", "a".repeat(30));
        let c = VgpuCapset::new(&name);
        assert_eq!(c.type_name(), "a".repeat(30));
        let mut c = VgpuCapset::new("");
        assert_eq!(c.type_name(), "");
        c.type_name = [b'z'; TYPE_NAME_LEN];
        assert_eq!(c.type_name().len(), 32);
        c.type_name[3] = 0xff;
        assert_eq!(c.type_name(), "zzz");
    }

    #[test]
    fn capset_parse_errors() {
        let c = VgpuCapset::new("t");
        let b = c.as_bytes();
        assert_eq!(
            VgpuCapset::parse(&b[..100]),
            Err(ChannelError::ShortRecord {
                needed: 128,
                got: 100
            })
        );
        let mut bad = c;
        bad.magic = 1;
        assert_eq!(
            VgpuCapset::parse(bad.as_bytes()),
            Err(ChannelError::BadMagic(1))
        );
        let mut bad = c;
        bad.protocol_version = 0;
        assert_eq!(
            VgpuCapset::parse(bad.as_bytes()),
            Err(ChannelError::BadVersion(0))
        );
        let mut longer = b.to_vec();
        longer.extend_from_slice(&[0; 16]);
        assert_eq!(VgpuCapset::parse(&longer), Ok(c));
    }

    #[test]
    fn stats_round_trip() {
        let r = StatsRecord {
            policy: SchedPolicy::FixedShare as u32,
            timeslice_us: 2000,
            framebuffer_total_bytes: 1 << 30,
            framebuffer_used_bytes: 12345,
            utilization_permille: 498,
            share_permille: 500,
            active_vgpus: 2,
            jobs_completed: 77,
            busy_ns: 123_456_789,
            ..StatsRecord::new()
        };
        let p = StatsRecord::parse(r.as_bytes()).unwrap();
        assert_eq!(p, r);
        assert_eq!(p.sched_policy(), Some(SchedPolicy::FixedShare));
        assert_eq!(
            StatsRecord::parse(&[0; 127]),
            Err(ChannelError::ShortRecord {
                needed: 128,
                got: 127
            })
        );
        assert_eq!(
            StatsRecord::parse(VgpuCapset::new("x").as_bytes()),
            Err(ChannelError::BadMagic(VGPU_CAPSET_MAGIC))
        );
        let mut v0 = r;
        v0.protocol_version = 0;
        assert_eq!(
            StatsRecord::parse(v0.as_bytes()),
            Err(ChannelError::BadVersion(0))
        );
        assert_eq!(SchedPolicy::from_u32(3), None);
    }
}
