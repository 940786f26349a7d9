//! Guest compute modules in the driver core: a module a guest loaded (validated and instrumented
//! by [`super::spirv`], compiled by the engine, charged to its vGPU's partition) and a launch of
//! it ([`Dispatch`]), which runs as an [`super::Op::Dispatch`].
//!
//! Compiling happens on the loading VM's own thread (through the engine's [`ModuleCompiler`]),
//! never on the device thread, so a VM loading a large module does not hold up anyone's jobs.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use vgpu_protocol::channel::{MAX_BINDINGS, MAX_PUSH_CONSTANT_BYTES};

use super::engine::EngineError;
use super::job::{BufRef, JobError};
use super::partition::PartitionCharge;
use super::spirv::{ModuleLimits, PreparedModule};

/// Guest descriptor slots, as an array length.
pub const SLOTS: usize = MAX_BINDINGS as usize;
/// Push-constant bytes, as an array length.
pub const PUSH_BYTES: usize = MAX_PUSH_CONSTANT_BYTES as usize;

/// What a launch of a module must provide, learned when it was validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleShape {
    /// Invocations per workgroup in x, y, z.
    pub workgroup_size: [u32; 3],
    /// Bit b: the module declares binding b (it must be bound to launch).
    pub bindings_used: u32,
    /// Bit b: the module may write binding b.
    pub bindings_written: u32,
    /// Push-constant bytes the module reads.
    pub push_constant_bytes: u32,
}

impl ModuleShape {
    /// The shape of a validated module.
    pub fn of(module: &PreparedModule) -> Self {
        Self {
            workgroup_size: module.workgroup_size,
            bindings_used: module.bindings_used,
            bindings_written: module.bindings_written,
            push_constant_bytes: module.push_constant_bytes,
        }
    }
}

/// An engine's compiled form of a module (on Vulkan: a compute pipeline).
pub trait CompiledModule: Send + Sync + fmt::Debug {
    /// The engine-specific object, for the engine that made it.
    fn as_any(&self) -> &dyn Any;
    /// Host memory the compiled form is estimated to take (charged with the module).
    fn footprint_bytes(&self) -> u64;
}

/// Compiles guest modules for an engine. Shared by every VM's thread.
pub trait ModuleCompiler: Send + Sync + fmt::Debug {
    /// What a module must fit (device limits, enabled features, the loop budget).
    fn limits(&self) -> ModuleLimits;
    /// Compiles a validated, instrumented module.
    fn compile(&self, module: &PreparedModule) -> Result<Arc<dyn CompiledModule>, EngineError>;
}

/// A loaded guest module: validated, instrumented, compiled, and charged to its vGPU until the
/// last reference (the context's table, or a queued launch) is dropped.
pub struct GuestModule {
    shape: ModuleShape,
    compiled: Arc<dyn CompiledModule>,
    vgpu_id: u32,
    _charge: PartitionCharge,
}

impl fmt::Debug for GuestModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestModule")
            .field("shape", &self.shape)
            .field("vgpu_id", &self.vgpu_id)
            .finish_non_exhaustive()
    }
}

impl GuestModule {
    /// A module of vGPU `vgpu_id`, holding `charge` on its partition.
    pub fn new(
        shape: ModuleShape,
        compiled: Arc<dyn CompiledModule>,
        vgpu_id: u32,
        charge: PartitionCharge,
    ) -> Self {
        Self {
            shape,
            compiled,
            vgpu_id,
            _charge: charge,
        }
    }

    /// What a launch must provide.
    pub fn shape(&self) -> &ModuleShape {
        &self.shape
    }

    /// The engine's compiled form.
    pub fn compiled(&self) -> &Arc<dyn CompiledModule> {
        &self.compiled
    }

    /// The vGPU that loaded it.
    pub fn vgpu_id(&self) -> u32 {
        self.vgpu_id
    }
}

/// A buffer range bound to a slot of a launch.
#[derive(Debug, Clone)]
pub struct BoundRange {
    /// Where the range starts.
    pub at: BufRef,
    /// Its length in bytes.
    pub len: u64,
}

/// A launch of a guest module over a grid of workgroups.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// The module.
    pub module: Arc<GuestModule>,
    /// Workgroups in x, y, z.
    pub groups: [u32; 3],
    /// The range bound to each slot.
    pub bindings: [Option<BoundRange>; SLOTS],
    /// The push-constant bytes.
    pub push: [u8; PUSH_BYTES],
}

impl Dispatch {
    /// Workgroups of the whole grid.
    pub fn workgroups(&self) -> u64 {
        self.groups.iter().map(|&g| u64::from(g)).product()
    }

    /// True if the module may write slot `slot`.
    pub fn writes(&self, slot: usize) -> bool {
        self.module.shape.bindings_written & (1 << slot) != 0
    }

    /// Checks the grid, that every slot the module uses is bound, and every bound range.
    pub fn validate(&self, index: usize) -> Result<(), JobError> {
        if self.groups.contains(&0) {
            return Err(JobError::Dimensions(index));
        }
        for (slot, bound) in self.bindings.iter().enumerate() {
            match bound {
                Some(b) => {
                    b.at.buffer
                        .check_range(b.at.offset, b.len)
                        .map_err(|source| JobError::Range { op: index, source })?
                }
                None if self.module.shape.bindings_used & (1 << slot) != 0 => {
                    return Err(JobError::Unbound { op: index, slot });
                }
                None => {}
            }
        }
        Ok(())
    }
}
