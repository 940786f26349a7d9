//! A context's guest-module state (protocol 1.2): its loaded modules, its per-context pipeline
//! cache, the buffer ranges bound to its slots and its push constants. MODULE_LOAD, MODULE_UNLOAD,
//! BIND and PUSH_CONSTANTS change it while a stream is decoded; DISPATCH turns a copy of it into a
//! driver [`Op::Dispatch`].
//!
//! A stream works on a copy ([`LaunchState::clone`]) that replaces the context's state only if
//! the whole stream was accepted, so a refused stream changes nothing (its modules, already
//! compiled, are dropped with their charge).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Weak};

use thiserror::Error;
use vgpu_protocol::channel::{
    BindCmd, DispatchCmd, ModuleLoadCmd, PushConstantsCmd, MAX_MODULES_PER_CONTEXT,
};

use crate::driver::engine::EngineError;
use crate::driver::module::{BoundRange, Dispatch, GuestModule, ModuleShape, PUSH_BYTES, SLOTS};
use crate::driver::spirv::{self, SpirvError};
use crate::driver::{BufRef, Op, Vgpu};

use super::buffer_resource::BufferResource;
use super::error::GpuError;

/// Why a guest-module command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModuleError {
    /// The engine runs only its built-in kernels.
    #[error("the {0} engine runs no guest modules")]
    NotSupported(&'static str),
    /// The module failed validation.
    #[error("{0}")]
    Invalid(#[from] SpirvError),
    /// The engine could not compile a module that passed validation.
    #[error("module did not compile: {0}")]
    Compile(EngineError),
    /// MODULE_LOAD of an id already loaded.
    #[error("module {0} is already loaded")]
    IdInUse(u32),
    /// MODULE_UNLOAD or DISPATCH of an id not loaded.
    #[error("no module {0}")]
    Unknown(u32),
    /// The context has the most modules allowed.
    #[error("too many modules (limit {0})")]
    TooMany(usize),
    /// DISPATCH with a slot the module uses left unbound.
    #[error("slot {0} is used by the module but not bound")]
    Unbound(usize),
    /// DISPATCH of a grid larger than the device dispatches.
    #[error("grid {groups:?} exceeds {max} workgroups per dimension")]
    GridTooLarge {
        /// The grid.
        groups: [u32; 3],
        /// The device's limit.
        max: u32,
    },
    /// BIND of a range larger than one binding may cover.
    #[error("binding of {size} bytes exceeds the device's {max}")]
    BindTooLarge {
        /// Bytes bound.
        size: u64,
        /// `maxStorageBufferRange`.
        max: u64,
    },
}

/// A slot's binding as the guest gave it (resolved to a buffer at each DISPATCH, so a buffer
/// freed since is noticed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Binding {
    res: u32,
    offset: u64,
    size: u64,
}

/// One context's guest-module state.
#[derive(Debug, Clone)]
pub struct LaunchState {
    modules: HashMap<u32, Arc<GuestModule>>,
    /// Compiled modules by hash of their words and entry point, while any id refers to them.
    cache: HashMap<u64, Weak<GuestModule>>,
    hasher: RandomState,
    bindings: [Option<Binding>; SLOTS],
    push: [u8; PUSH_BYTES],
}

impl Default for LaunchState {
    fn default() -> Self {
        Self {
            modules: HashMap::new(),
            cache: HashMap::new(),
            hasher: RandomState::new(),
            bindings: [None; SLOTS],
            push: [0; PUSH_BYTES],
        }
    }
}

/// Host bytes charged for a module besides its source and rewritten words (tables, the
/// driver's compiled code).
const MODULE_OVERHEAD_BYTES: u64 = 256 << 10;

impl LaunchState {
    /// Modules loaded.
    pub fn module_count(&self) -> usize {
        self.modules.len()
    }

    /// MODULE_LOAD: reads, validates, instruments and compiles the module (or reuses the
    /// context's compiled copy of the same words and entry point), charged to `vgpu`.
    pub fn load(
        &mut self,
        c: &ModuleLoadCmd,
        buffers: &HashMap<u32, BufferResource>,
        vgpu: &Vgpu,
    ) -> Result<(), GpuError> {
        let compiler = vgpu
            .module_compiler()
            .ok_or(ModuleError::NotSupported(vgpu.engine_caps().kind.as_str()))?;
        if self.modules.contains_key(&c.module_id) {
            return Err(ModuleError::IdInUse(c.module_id).into());
        }
        if self.modules.len() >= MAX_MODULES_PER_CONTEXT {
            return Err(ModuleError::TooMany(MAX_MODULES_PER_CONTEXT).into());
        }
        let src = buffers
            .get(&c.src_res)
            .ok_or(GpuError::UnknownResource(c.src_res))?;
        // At most MAX_MODULE_BYTES (checked by the decoder).
        let len = usize::try_from(c.size).map_err(|_| GpuError::AllocFailed(c.size))?;
        let mut words = Vec::new();
        words
            .try_reserve_exact(len / 4)
            .map_err(|_| GpuError::AllocFailed(c.size))?;
        src.buffer.with_bytes(c.src_offset, len, |bytes| {
            words.extend(
                bytes
                    .chunks_exact(4)
                    .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])),
            )
        })?;
        let entry = c.entry_name();
        let key = self.hasher.hash_one((&words, entry));
        if let Some(module) = self.cache.get(&key).and_then(Weak::upgrade) {
            self.modules.insert(c.module_id, module);
            return Ok(());
        }
        let prepared =
            spirv::prepare(&words, entry, &compiler.limits()).map_err(ModuleError::from)?;
        let bytes = c.size + prepared.words.len() as u64 * 4 + MODULE_OVERHEAD_BYTES;
        let charge = vgpu.partition().charge_guard(bytes)?;
        let compiled = compiler.compile(&prepared).map_err(ModuleError::Compile)?;
        let module = Arc::new(GuestModule::new(
            ModuleShape::of(&prepared),
            compiled,
            vgpu.id(),
            charge,
        ));
        if self.cache.len() >= 2 * MAX_MODULES_PER_CONTEXT {
            self.cache.retain(|_, m| m.strong_count() > 0);
        }
        self.cache.insert(key, Arc::downgrade(&module));
        self.modules.insert(c.module_id, module);
        Ok(())
    }

    /// MODULE_UNLOAD.
    pub fn unload(&mut self, module_id: u32) -> Result<(), GpuError> {
        self.modules
            .remove(&module_id)
            .map(drop)
            .ok_or_else(|| ModuleError::Unknown(module_id).into())
    }

    /// BIND (the resource and range were checked with the rest of the stream).
    pub fn bind(&mut self, b: &BindCmd, max_range: u64) -> Result<(), GpuError> {
        if b.size > max_range {
            return Err(ModuleError::BindTooLarge {
                size: b.size,
                max: max_range,
            }
            .into());
        }
        let binding = (b.res != 0).then_some(Binding {
            res: b.res,
            offset: b.offset,
            size: b.size,
        });
        if let Some(slot) = self.bindings.get_mut(b.slot as usize) {
            *slot = binding;
        }
        Ok(())
    }

    /// PUSH_CONSTANTS (the range was checked by the decoder).
    pub fn push_constants(&mut self, p: &PushConstantsCmd) {
        let at = p.offset as usize;
        if let Some(dst) = self.push.get_mut(at..at + p.bytes().len()) {
            dst.copy_from_slice(p.bytes());
        }
    }

    /// DISPATCH: the launch with the bindings (resolved now, and only those the module uses)
    /// and push constants current at this point of the stream.
    pub fn dispatch(
        &self,
        c: &DispatchCmd,
        buffers: &HashMap<u32, BufferResource>,
        ctx_id: u32,
        attached: &HashSet<u32>,
        max_workgroups: u32,
    ) -> Result<Op, GpuError> {
        let module = self
            .modules
            .get(&c.module_id)
            .ok_or(ModuleError::Unknown(c.module_id))?;
        if c.groups.iter().any(|&g| g > max_workgroups) {
            return Err(ModuleError::GridTooLarge {
                groups: c.groups,
                max: max_workgroups,
            }
            .into());
        }
        let used = module.shape().bindings_used;
        let mut bindings: [Option<BoundRange>; SLOTS] = Default::default();
        for (slot, (out, bound)) in bindings.iter_mut().zip(&self.bindings).enumerate() {
            if used & (1 << slot) == 0 {
                continue;
            }
            let b = bound.ok_or(ModuleError::Unbound(slot))?;
            let res = buffers
                .get(&b.res)
                .ok_or(GpuError::UnknownResource(b.res))?;
            if !attached.contains(&b.res) {
                return Err(GpuError::NotAttached {
                    ctx_id,
                    resource: b.res,
                });
            }
            res.check_range(b.res, b.offset, b.size)?;
            *out = Some(BoundRange {
                at: BufRef::new(&res.buffer, b.offset),
                len: b.size,
            });
        }
        Ok(Op::Dispatch(Box::new(Dispatch {
            module: Arc::clone(module),
            groups: c.groups,
            bindings,
            push: self.push,
        })))
    }
}
