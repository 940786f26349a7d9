//! The `vgpu` guest library: run your own compute kernels (SPIR-V) on the host's GPU from inside
//! a VM, through the stock Linux `virtio_gpu` DRM driver.
//!
//! ```no_run
//! use vgpu::{Binding, Device};
//!
//! # fn main() -> vgpu::error::Result<()> {
//! let dev = Device::open(None)?; // first virtio-gpu render node
//! assert!(dev.caps().runs_modules());
//! let mut data = dev.buffer(4096)?;
//! data.write(0, &[0u8; 4096])?;
//! let module = dev.load_module(&std::fs::read("kernel.spv").unwrap(), "main")?;
//! let launch = module.launch([16, 1, 1], &[Binding::whole(0, &data)], &1024u32.to_le_bytes())?;
//! launch.wait()?; // Err(Error::LoopBudget { .. }) if the kernel looped too long
//! let mut out = vec![0u8; 4096];
//! data.read(0, &mut out)?;
//! # Ok(()) }
//! ```
//!
//! Every call that returns a result has waited for the host: [`Buffer::write`] returns once the
//! bytes are on the host, [`Device::load_module`] once the host validated and compiled the
//! module (or refused it: [`Error::Refused`] with the host's reason), [`Launch::wait`] once the
//! grid ran (or failed: [`Error::LoopBudget`], [`Error::JobFailed`]). Refusals and failures are
//! learnt from the vGPU's statistics counters (see [`probe`]): exact for a program alone on its
//! vGPU, possibly attributed to the wrong program when several programs of one VM use the vGPU
//! at the same time.
//!
//! [`Error::Refused`]: crate::error::Error::Refused
//! [`Error::LoopBudget`]: crate::error::Error::LoopBudget
//! [`Error::JobFailed`]: crate::error::Error::JobFailed

mod buffer;
mod caps;
mod module;
pub mod probe;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vgpu_protocol::StatsRecord;

pub use buffer::Buffer;
pub use caps::Caps;
pub use module::{Binding, Launch, Module, PendingLaunch};

use crate::device::VirtGpu;
use crate::error::{Error, Result};
use probe::Probe;

/// An open vGPU: one DRM file, hence one host context with its own buffers and modules.
/// Cheap to clone (clones share the context).
#[derive(Debug, Clone)]
pub struct Device {
    gpu: Arc<VirtGpu>,
    probe: Arc<Mutex<Probe>>,
    probe_bo: u32,
    next_module: Arc<AtomicU32>,
}

impl Device {
    /// Opens `path` (or the first render node of the `virtio_gpu` driver), checks that it is a
    /// vgpu-mediator vGPU (VIRGL, capset 42) and reads the statistics baseline.
    pub fn open(path: Option<&Path>) -> Result<Self> {
        Self::from_gpu(VirtGpu::open(path)?)
    }

    /// Like [`Device::open`], with how long to wait for one host job before reporting an error
    /// ([`crate::device::DEFAULT_FENCE_TIMEOUT`] by default).
    pub fn open_with_timeout(path: Option<&Path>, timeout: Duration) -> Result<Self> {
        let mut gpu = VirtGpu::open(path)?;
        gpu.set_fence_timeout(timeout);
        Self::from_gpu(gpu)
    }

    /// Wraps an opened [`VirtGpu`].
    pub fn from_gpu(gpu: VirtGpu) -> Result<Self> {
        let gpu = Arc::new(gpu);
        let probe = Probe::new(Arc::clone(&gpu))?;
        let probe_bo = probe.bo_handle();
        Ok(Device {
            gpu,
            probe: Arc::new(Mutex::new(probe)),
            probe_bo,
            next_module: Arc::new(AtomicU32::new(1)),
        })
    }

    /// The device's limits and what its engine runs.
    pub fn caps(&self) -> Caps {
        Caps::new(*self.gpu.capset())
    }

    /// The render node in use.
    pub fn path(&self) -> &Path {
        self.gpu.path()
    }

    /// The underlying device.
    pub fn gpu(&self) -> &VirtGpu {
        &self.gpu
    }

    /// A new buffer of `size` bytes on the vGPU (charged to its framebuffer), with an equally
    /// large guest staging area. Fails with [`Error::Device`] if the host did not create it
    /// (the vGPU's memory is full).
    pub fn buffer(&self, size: usize) -> Result<Buffer> {
        Buffer::create(self, size)
    }

    /// Loads a SPIR-V module with entry point `entry` (1-31 bytes). Returns once the host has
    /// validated, instrumented and compiled it; a module the host does not accept is
    /// [`Error::Refused`] with the host's reason. The module is unloaded when dropped.
    pub fn load_module(&self, spirv: &[u8], entry: &str) -> Result<Module> {
        Module::load(self, spirv, entry, true)
    }

    /// [`Device::load_module`] without the library's own size checks (size within the
    /// capset's `max_module_bytes`, a non-zero multiple of 4), so the host's answer to any
    /// module can be seen. For tests and tools.
    pub fn load_module_unchecked(&self, spirv: &[u8], entry: &str) -> Result<Module> {
        Module::load(self, spirv, entry, false)
    }

    /// The vGPU's statistics now.
    pub fn stats(&self) -> Result<StatsRecord> {
        self.probe()?.read()
    }

    fn probe(&self) -> Result<MutexGuard<'_, Probe>> {
        self.probe
            .lock()
            .map_err(|_| Error::Device("a thread panicked while checking the stats".into()))
    }

    /// Waits for everything submitted so far, then checks the counters for a refusal or a
    /// failure since the last check, reporting it as `what`'s.
    fn settle(&self, what: &str) -> Result<StatsRecord> {
        let mut probe = self.probe()?;
        probe.wait(what)?;
        probe
            .check()?
            .into_result(what, self.gpu.capset().loop_budget)
    }

    /// Submits `stream` with the buffers `bos` (plus the probe buffer, so that every submit
    /// has a fence and waiting on the probe waits for it).
    fn submit(&self, stream: &[u8], bos: &[u32]) -> Result<()> {
        let mut list = Vec::with_capacity(bos.len() + 1);
        list.push(self.probe_bo);
        list.extend(bos.iter().copied().filter(|&b| b != self.probe_bo));
        list.sort_unstable();
        list.dedup();
        self.gpu.submit(stream, &list)
    }

    fn next_module_id(&self) -> Result<u32> {
        let id = self.next_module.fetch_add(1, Ordering::Relaxed);
        if id == 0 {
            return Err(Error::InvalidArgument(
                "this device has used up its module ids".into(),
            ));
        }
        Ok(id)
    }

    fn same(&self, gpu: &Arc<VirtGpu>) -> bool {
        Arc::ptr_eq(&self.gpu, gpu)
    }
}
