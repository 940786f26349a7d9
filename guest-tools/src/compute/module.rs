//! Modules and launches: MODULE_LOAD of SPIR-V staged in a buffer, then BIND, PUSH_CONSTANTS
//! and DISPATCH in one submit per launch.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use vgpu_protocol::channel::{
    BindCmd, DispatchCmd, ModuleLoadCmd, ModuleUnloadCmd, PushConstantsCmd, ENTRY_NAME_LEN,
    MAX_PUSH_CONSTANT_BYTES,
};
use vgpu_protocol::ChannelCommand;

use crate::device::Stream;
use crate::error::{Error, Result};

use super::{Buffer, Device};

/// A loaded module: a validated, loop-bounded and compiled kernel of one [`Device`].
/// Unloaded when dropped.
#[derive(Debug)]
pub struct Module {
    dev: Device,
    id: u32,
    entry: String,
}

/// One buffer range bound to a descriptor slot for a launch (`layout(set = 0, binding = slot)`
/// storage buffer in GLSL).
#[derive(Debug, Clone, Copy)]
pub struct Binding<'b> {
    /// Descriptor slot, `0..Caps::max_bindings()`.
    pub slot: u32,
    /// The buffer.
    pub buffer: &'b Buffer,
    /// First byte, a multiple of `Caps::bind_offset_align()` (256).
    pub offset: usize,
    /// Bytes bound, a non-zero multiple of 4.
    pub size: usize,
}

impl<'b> Binding<'b> {
    /// The whole buffer at `slot` ([`Buffer::device_size`] bytes).
    pub fn whole(slot: u32, buffer: &'b Buffer) -> Self {
        Binding {
            slot,
            buffer,
            offset: 0,
            size: buffer.device_size(),
        }
    }

    /// `size` bytes of `buffer` from `offset` at `slot`.
    pub fn range(slot: u32, buffer: &'b Buffer, offset: usize, size: usize) -> Self {
        Binding {
            slot,
            buffer,
            offset,
            size,
        }
    }
}

/// Checks an entry-point name: 1-31 bytes of UTF-8 without NUL.
pub(crate) fn check_entry(entry: &str) -> Result<()> {
    if entry.is_empty() || entry.len() >= ENTRY_NAME_LEN || entry.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "entry point {entry:?}: must be 1 to {} bytes without NUL",
            ENTRY_NAME_LEN - 1
        )));
    }
    Ok(())
}

impl Module {
    /// Stages `spirv` in a buffer, loads it and checks the host accepted it.
    pub(super) fn load(dev: &Device, spirv: &[u8], entry: &str, checked: bool) -> Result<Module> {
        let caps = dev.caps();
        if !caps.runs_modules() {
            return Err(Error::Unsupported(format!(
                "this vGPU's engine ({}) does not run guest modules; it needs protocol 1.2 and \
                 the Vulkan engine",
                caps.capset().engine_name()
            )));
        }
        check_entry(entry)?;
        let max = caps.max_module_bytes() as usize;
        if checked && (spirv.is_empty() || !spirv.len().is_multiple_of(4) || spirv.len() > max) {
            return Err(Error::InvalidArgument(format!(
                "a module is a non-zero multiple of 4 bytes, at most {max}; this one is {}",
                spirv.len()
            )));
        }
        let id = dev.next_module_id()?;
        // The staging buffer holds at least a word, so that an empty module can be sent too.
        let mut staging = dev.buffer(spirv.len().max(4))?;
        staging.write(0, spirv)?;
        let cmd = ModuleLoadCmd::new(id, staging.res_id(), 0, spirv.len() as u64, entry);
        let mut stream = Stream::new();
        stream.push(&ChannelCommand::ModuleLoad(cmd));
        dev.submit(stream.bytes(), &[staging.bo_handle()])?;
        dev.settle("the module")?;
        Ok(Module {
            dev: dev.clone(),
            id,
            entry: entry.to_string(),
        })
    }

    /// The entry point.
    pub fn entry(&self) -> &str {
        &self.entry
    }

    /// The context's id of the module.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Launches `grid` workgroups with `bindings` and `push` constants (at most
    /// `Caps::max_push_constant_bytes()`, a multiple of 4; the rest of the push-constant block
    /// reads zero). Slots not in `bindings` are cleared. Returns once submitted; the borrow of
    /// the bound buffers lasts until the launch is waited for or dropped.
    pub fn launch<'b>(
        &self,
        grid: [u32; 3],
        bindings: &[Binding<'b>],
        push: &[u8],
    ) -> Result<Launch<'b>> {
        Ok(Launch {
            pending: Some(self.submit(grid, bindings, push)?),
            _buffers: PhantomData,
        })
    }

    /// [`Module::launch`] without the borrow of the buffers: the caller keeps them alive until
    /// the launch is waited for (a buffer freed earlier is detached from the context and the
    /// host stops the launch from using it). Used by the C ABI.
    pub fn submit(
        &self,
        grid: [u32; 3],
        bindings: &[Binding<'_>],
        push: &[u8],
    ) -> Result<PendingLaunch> {
        let caps = self.dev.caps();
        let max_groups = caps.max_workgroups();
        if grid
            .iter()
            .any(|&g| g == 0 || (max_groups != 0 && g > max_groups))
        {
            return Err(Error::InvalidArgument(format!(
                "grid {grid:?}: each dimension must be 1 to {max_groups}"
            )));
        }
        let max_push = caps.max_push_constant_bytes().min(MAX_PUSH_CONSTANT_BYTES) as usize;
        if !push.len().is_multiple_of(4) || push.len() > max_push {
            return Err(Error::InvalidArgument(format!(
                "push constants are a multiple of 4 bytes, at most {max_push}; got {}",
                push.len()
            )));
        }
        let mut stream = Stream::new();
        let mut bos = Vec::with_capacity(bindings.len());
        let mut used = vec![false; caps.max_bindings() as usize];
        for b in bindings {
            self.check_binding(b, &mut used)?;
            stream.push(&ChannelCommand::Bind(BindCmd {
                slot: b.slot,
                res: b.buffer.res_id(),
                offset: b.offset as u64,
                size: b.size as u64,
            }));
            bos.push(b.buffer.bo_handle());
        }
        for (slot, _) in used.iter().enumerate().filter(|(_, u)| !**u) {
            stream.push(&ChannelCommand::Bind(BindCmd {
                slot: slot as u32,
                ..BindCmd::default()
            }));
        }
        let mut block = vec![0u8; max_push];
        if let Some(dst) = block.get_mut(..push.len()) {
            dst.copy_from_slice(push);
        }
        if !block.is_empty() {
            stream.push(&ChannelCommand::PushConstants(PushConstantsCmd::new(
                0, &block,
            )));
        }
        stream.push(&ChannelCommand::Dispatch(DispatchCmd::new(self.id, grid)));
        let submitted = Instant::now();
        self.dev.submit(stream.bytes(), &bos)?;
        Ok(PendingLaunch {
            dev: self.dev.clone(),
            submitted,
            waited: false,
        })
    }

    fn check_binding(&self, b: &Binding<'_>, used: &mut [bool]) -> Result<()> {
        let caps = self.dev.caps();
        let bad = |why: String| Err(Error::InvalidArgument(format!("binding {}: {why}", b.slot)));
        match used.get_mut(b.slot as usize) {
            None => {
                return bad(format!(
                    "slots are 0 to {}",
                    caps.max_bindings().saturating_sub(1)
                ))
            }
            Some(true) => return bad("slot bound twice".into()),
            Some(u) => *u = true,
        }
        if !self.dev.same(b.buffer.gpu()) {
            return bad("the buffer belongs to another device handle (context)".into());
        }
        let align = caps.bind_offset_align().max(1) as usize;
        if !b.offset.is_multiple_of(align) {
            return bad(format!("offset {} is not a multiple of {align}", b.offset));
        }
        if b.size == 0 || !b.size.is_multiple_of(4) {
            return bad(format!("size {} is not a non-zero multiple of 4", b.size));
        }
        if b.offset
            .checked_add(b.size)
            .is_none_or(|e| e > b.buffer.size())
        {
            return bad(format!(
                "bytes {}..+{} are outside the {}-byte buffer",
                b.offset,
                b.size,
                b.buffer.size()
            ));
        }
        let range = caps.max_storage_buffer_range();
        if range != 0 && b.size as u64 > range {
            return bad(format!(
                "{} bytes, more than the {range} one binding may have",
                b.size
            ));
        }
        Ok(())
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        let mut stream = Stream::new();
        stream.push(&ChannelCommand::ModuleUnload(ModuleUnloadCmd {
            module_id: self.id,
            reserved: 0,
        }));
        // Nothing useful to do on failure: the host forgets the module with the context.
        let _ = self.dev.submit(stream.bytes(), &[]);
    }
}

/// A submitted launch that does not borrow its buffers (see [`Module::submit`]).
#[derive(Debug)]
pub struct PendingLaunch {
    dev: Device,
    submitted: Instant,
    waited: bool,
}

impl PendingLaunch {
    /// Waits for the launch and checks that it ran: [`Error::LoopBudget`] when an invocation
    /// ran out of its loop budget, [`Error::Refused`] when the host refused the launch (an
    /// unbound slot the module uses, a binding past the host's limits), [`Error::JobFailed`]
    /// otherwise. Returns the time from submit to completion as the guest saw it.
    pub fn wait(mut self) -> Result<Duration> {
        self.finish()
    }

    fn finish(&mut self) -> Result<Duration> {
        self.waited = true;
        let probe = self.dev.probe()?;
        probe.wait("the launch")?;
        let elapsed = self.submitted.elapsed();
        drop(probe);
        self.dev.settle("the launch")?;
        Ok(elapsed)
    }
}

impl Drop for PendingLaunch {
    /// A launch dropped unwaited is still waited for, so that its failure is not reported
    /// to the next operation.
    fn drop(&mut self) {
        if !self.waited {
            let _ = self.finish();
        }
    }
}

/// A submitted launch; [`Launch::wait`] for its result. Borrows the bound buffers.
#[derive(Debug)]
pub struct Launch<'b> {
    pending: Option<PendingLaunch>,
    _buffers: PhantomData<&'b Buffer>,
}

impl Launch<'_> {
    /// See [`PendingLaunch::wait`].
    pub fn wait(mut self) -> Result<Duration> {
        match self.pending.take() {
            Some(p) => p.wait(),
            None => Err(Error::Device("launch already waited for".into())),
        }
    }
}
