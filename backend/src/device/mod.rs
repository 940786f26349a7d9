//! The per-VM virtio-gpu 2D device: a plain state machine that turns decoded control and cursor
//! requests into resource updates, display-sink calls and encoded responses. No sockets, no
//! threads: the vhost-user glue feeds it requests and a [`DisplaySink`].
//!
//! Modules, one job each: [`resource`] (2D resources), [`format`] (pixel formats and conversion),
//! [`backing`] (guest scatter-gather backing), [`transfer`] (TRANSFER_TO_HOST_2D), [`scanout`]
//! (SET_SCANOUT, RESOURCE_FLUSH), [`cursor`], [`edid`], [`display`] (sinks), [`budget`] (host
//! memory accounting), [`log_limit`] (rate-limited guest-error logging), [`error`].

pub mod backing;
pub mod budget;
pub mod buffer_resource;
pub mod capset;
pub mod context;
pub mod cursor;
pub mod display;
pub mod edid;
pub mod error;
pub mod format;
pub mod launch;
pub use crate::log_limit;
pub mod resource;
pub mod scanout;
pub mod screenshot;
pub mod submit;
pub mod transfer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_3d;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::mem::size_of;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{ErrorCode, GpuCommand, MemEntries, Request, Response};
use vm_memory::GuestMemory;

pub use budget::{Charge, HostMemoryLimit, MemoryBudget, OutOfBudget};
pub use display::{DisplaySink, HeadlessDisplay, CURSOR_IMAGE_BYTES};
pub use error::GpuError;
pub use format::Format;
pub use scanout::Scanout;

use backing::Backing;
use context::{Direction, Gpu3d};
use cursor::Cursor;
pub use log_limit::GuestLog;
use resource::{AttachedBacking, Resource2d};
use scanout::Scanouts;
pub use submit::JobNotifier;

/// Default scanout width.
pub const DEFAULT_WIDTH: u32 = 1280;
/// Default scanout height.
pub const DEFAULT_HEIGHT: u32 = 800;
/// Largest scanout width or height of a device whose configuration names no maximum (the largest
/// a detailed timing in an EDID can carry).
pub const MAX_SCANOUT_SIDE: u32 = edid::MAX_DTD_ACTIVE;
/// Largest response [`VirtioGpuDevice::process_ctrl`] writes (OK_EDID); a response buffer this
/// big always suffices.
pub const MAX_RESPONSE_LEN: usize = size_of::<RespEdid>();

/// Configuration of one device.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Number of scanouts, 1..=16 (clamped).
    pub num_scanouts: u32,
    /// Preferred scanout width (default 1280).
    pub width: u32,
    /// Preferred scanout height (default 800).
    pub height: u32,
    /// Largest scanout width (the vGPU type's `max_width`): caps the modes offered in
    /// GET_DISPLAY_INFO and the EDID, and the rectangles SET_SCANOUT accepts.
    pub max_width: u32,
    /// Largest scanout height (the vGPU type's `max_height`).
    pub max_height: u32,
    /// Answer GET_EDID (the EDID feature is offered).
    pub edid: bool,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            num_scanouts: 1,
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
            max_width: MAX_SCANOUT_SIDE,
            max_height: MAX_SCANOUT_SIDE,
            edid: true,
        }
    }
}

/// A successful command's reply, before encoding. Lives on the stack only, so the large EDID
/// variant costs no allocation.
#[allow(clippy::large_enum_variant)]
enum Reply {
    NoData,
    DisplayInfo([DisplayOne; VIRTIO_GPU_MAX_SCANOUTS]),
    Edid([u8; 1024], usize),
    Uuid([u8; 16]),
    CapsetInfo(u32, u32, u32),
    Capset(vgpu_protocol::VgpuCapset),
    /// Submitted to the driver: the response comes through the [`JobNotifier`].
    Pending,
}

/// What [`VirtioGpuDevice::process_ctrl_async`] did with a request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CtrlOutcome {
    /// The response (this many bytes) is in the response buffer.
    Done(usize),
    /// The request runs on the driver; the notifier set with
    /// [`VirtioGpuDevice::set_job_notifier`] is called with its token when it ends, and the
    /// response is then `OK_NODATA` (or `ERR_UNSPEC` if it failed or was cancelled).
    Pending,
}

/// One VM's virtio-gpu 2D device.
pub struct VirtioGpuDevice {
    config: DeviceConfig,
    budget: Arc<dyn MemoryBudget>,
    resources: HashMap<u32, Resource2d>,
    scanouts: Scanouts,
    cursor: Cursor,
    log: Arc<GuestLog>,
    gpu3d: Option<Gpu3d>,
    /// Whether the driver negotiated `VIRTIO_GPU_F_VIRGL` (3D commands are refused otherwise).
    virgl_negotiated: bool,
}

impl std::fmt::Debug for VirtioGpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioGpuDevice")
            .field("config", &self.config)
            .field("resources", &self.resources.len())
            .field("budget_used", &self.budget.used())
            .finish()
    }
}

impl VirtioGpuDevice {
    /// A device with no resources; every host allocation is charged to `budget`.
    pub fn new(config: DeviceConfig, budget: Arc<dyn MemoryBudget>) -> Self {
        let mut config = config;
        config.num_scanouts = config.num_scanouts.clamp(1, VIRTIO_GPU_MAX_SCANOUTS as u32);
        config.max_width = config.max_width.clamp(1, MAX_SCANOUT_SIDE);
        config.max_height = config.max_height.clamp(1, MAX_SCANOUT_SIDE);
        if config.width == 0 || config.height == 0 {
            config.width = DEFAULT_WIDTH;
            config.height = DEFAULT_HEIGHT;
        }
        config.width = config.width.min(config.max_width);
        config.height = config.height.min(config.max_height);
        VirtioGpuDevice {
            config,
            budget,
            resources: HashMap::new(),
            scanouts: Scanouts::new(config.num_scanouts),
            cursor: Cursor::new(),
            log: Arc::new(GuestLog::new("virtio-gpu")),
            gpu3d: None,
            virgl_negotiated: true,
        }
    }

    /// A device with 3D: contexts, buffers and submissions run on `vgpu`, every allocation (2D
    /// surfaces included) is charged to the vGPU's partition, and one capset
    /// ([`vgpu_protocol::VGPU_CAPSET_ID`]) is advertised. The glue offers `VIRTIO_GPU_F_VIRGL`.
    pub fn with_vgpu(config: DeviceConfig, vgpu: Arc<crate::driver::Vgpu>) -> Self {
        let mut device = Self::new(config, vgpu.budget());
        device.gpu3d = Some(Gpu3d::new(vgpu));
        device
    }

    /// True when the device has a vGPU (3D commands and the capset are served).
    pub fn has_3d(&self) -> bool {
        self.gpu3d.is_some()
    }

    /// Records whether the driver acknowledged `VIRTIO_GPU_F_VIRGL`. Without it 3D commands are
    /// answered `ERR_UNSPEC`, as for a device without 3D (the default is on, for callers that
    /// negotiate nothing, such as in-process frontends).
    pub fn set_virgl_negotiated(&mut self, negotiated: bool) {
        self.virgl_negotiated = negotiated;
    }

    /// Where the completions of submitted jobs are reported (the vhost glue's completion queue).
    pub fn set_job_notifier(&mut self, notifier: Arc<dyn JobNotifier>) {
        if let Some(g) = self.gpu3d.as_mut() {
            g.set_notifier(notifier);
        }
    }

    /// The 3D state, if the device has a vGPU.
    pub fn gpu3d(&self) -> Option<&Gpu3d> {
        self.gpu3d.as_ref()
    }

    /// The vGPU, if the device has one.
    pub fn vgpu(&self) -> Option<&Arc<crate::driver::Vgpu>> {
        self.gpu3d.as_ref().map(Gpu3d::vgpu)
    }

    /// Logs guest mistakes through `log`, the VM's limiter shared with its vhost-user glue.
    pub fn set_guest_log(&mut self, log: Arc<GuestLog>) {
        self.log = log;
    }

    /// Sets the prefix of this device's log lines (e.g. the VM name), with a limiter of its own.
    pub fn set_log_label(&mut self, label: impl Into<String>) {
        self.log = Arc::new(GuestLog::new(label));
    }

    /// The configuration in effect (after clamping).
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// The budget this device charges.
    pub fn budget(&self) -> &Arc<dyn MemoryBudget> {
        &self.budget
    }

    /// Number of live resources.
    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }

    /// A live resource.
    pub fn resource(&self, resource_id: u32) -> Option<&Resource2d> {
        self.resources.get(&resource_id)
    }

    /// What a scanout shows, if the id is valid.
    pub fn scanout(&self, scanout_id: u32) -> Option<Scanout> {
        self.scanouts.get(scanout_id).copied()
    }

    /// Sends every enabled scanout (SCANOUT, then its whole rectangle as updates) to `display`
    /// again, e.g. after a stalled display recovered and missed updates.
    pub fn redraw(&mut self, display: &mut dyn DisplaySink) {
        for id in 0..self.scanouts.count() {
            let Some(s) = self.scanouts.get(id).copied() else {
                continue;
            };
            let Some(res) = self.resources.get(&s.resource_id) else {
                continue;
            };
            display.scanout(id, s.rect.width, s.rect.height);
            if let Err(e) = self.scanouts.flush(res, s.rect, display) {
                self.log.warn(format_args!("redraw of scanout {id}: {e}"));
            }
        }
    }

    /// The device configuration space.
    pub fn config_space(&self) -> VirtioGpuConfig {
        VirtioGpuConfig {
            events_read: 0,
            events_clear: 0,
            num_scanouts: self.config.num_scanouts,
            num_capsets: self.num_capsets(),
        }
    }

    /// Number of capsets: 1 with a vGPU, none for a 2D-only device.
    pub fn num_capsets(&self) -> u32 {
        u32::from(self.has_3d())
    }

    /// Frees every resource and its charge and clears scanouts and cursor (guest reset, reboot,
    /// frontend disconnect). Makes no sink calls: the frontend's display is reset with it.
    pub fn reset(&mut self) {
        self.resources = HashMap::new();
        self.scanouts.clear();
        self.cursor = Cursor::new();
        if let Some(g) = self.gpu3d.as_mut() {
            g.reset();
        }
    }

    /// Handles one control-queue request; writes the encoded response into `resp` and returns
    /// its length (0 only if `resp` cannot even hold a header; [`MAX_RESPONSE_LEN`] always fits).
    /// A SUBMIT_3D that runs on the driver returns 0 here: use
    /// [`VirtioGpuDevice::process_ctrl_async`] to learn when it completes.
    pub fn process_ctrl<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        req: &Request<'_>,
        display: &mut dyn DisplaySink,
        resp: &mut [u8],
    ) -> usize {
        match self.process_ctrl_async(mem, req, display, resp, 0) {
            CtrlOutcome::Done(n) => n,
            CtrlOutcome::Pending => 0,
        }
    }

    /// Handles one control-queue request. Synchronous commands write their response into `resp`
    /// ([`CtrlOutcome::Done`]); a SUBMIT_3D accepted by the driver returns
    /// [`CtrlOutcome::Pending`] and is reported to the job notifier with `token`.
    pub fn process_ctrl_async<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        req: &Request<'_>,
        display: &mut dyn DisplaySink,
        resp: &mut [u8],
        token: u64,
    ) -> CtrlOutcome {
        let result = self.dispatch(mem, req, display, token);
        if matches!(result, Ok(Reply::Pending)) {
            return CtrlOutcome::Pending;
        }
        let response = match &result {
            Ok(Reply::NoData) => Response::OkNoData,
            Ok(Reply::DisplayInfo(modes)) => Response::OkDisplayInfo(modes),
            Ok(Reply::Edid(bytes, len)) => Response::OkEdid(bytes.get(..*len).unwrap_or(bytes)),
            Ok(Reply::Uuid(uuid)) => Response::OkResourceUuid(*uuid),
            Ok(Reply::CapsetInfo(id, version, size)) => Response::OkCapsetInfo {
                capset_id: *id,
                max_version: *version,
                max_size: *size,
            },
            Ok(Reply::Capset(c)) => Response::OkCapset(c.as_bytes()),
            Ok(Reply::Pending) => Response::OkNoData,
            Err(e) => {
                self.log
                    .warn(format_args!("command {:#x} failed: {e}", req.cmd.type_()));
                if let Some(vgpu) = self.vgpu() {
                    vgpu.record_guest_error(e.code());
                    if req.cmd.type_() == VIRTIO_GPU_CMD_SUBMIT_3D {
                        // The guest sees 39 bytes: drop the stream offset a decode error starts
                        // with ("command at 16: ...").
                        let text = e.to_string();
                        let reason = match text.strip_prefix("command at ") {
                            Some(rest) => rest.split_once(": ").map_or(rest, |(_, r)| r),
                            None => &text,
                        };
                        vgpu.record_refusal(e.code(), reason);
                    }
                }
                Response::Err(e.code())
            }
        };
        if let Some(n) = response.encode(&req.hdr, resp) {
            return CtrlOutcome::Done(n);
        }
        let e = GpuError::ResponseTooLarge {
            needed: response.encoded_len(),
            got: resp.len(),
        };
        self.log
            .warn(format_args!("command {:#x}: {e}", req.cmd.type_()));
        CtrlOutcome::Done(
            Response::Err(ErrorCode::Unspec)
                .encode(&req.hdr, resp)
                .unwrap_or(0),
        )
    }

    /// Handles one cursor-queue request (no response is written for cursor commands).
    pub fn process_cursor(&mut self, req: &Request<'_>, display: &mut dyn DisplaySink) {
        let n = self.config.num_scanouts;
        let result = match req.cmd {
            GpuCommand::UpdateCursor(c) => self.cursor.update(&c, n, &self.resources, display),
            GpuCommand::MoveCursor(c) => self.cursor.move_to(&c, n, display),
            other => Err(cursor::CursorError::NotACursorCommand(other.type_())),
        };
        if let Err(e) = result {
            self.log.warn(format_args!("cursor command ignored: {e}"));
        }
    }

    fn dispatch<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        req: &Request<'_>,
        display: &mut dyn DisplaySink,
        token: u64,
    ) -> Result<Reply, GpuError> {
        match req.cmd {
            GpuCommand::GetDisplayInfo => Ok(Reply::DisplayInfo(self.display_info(display))),
            GpuCommand::ResourceCreate2d(c) => self.create_2d(&c).map(|_| Reply::NoData),
            GpuCommand::ResourceUnref(c) => {
                self.unref(c.resource_id, display).map(|_| Reply::NoData)
            }
            GpuCommand::SetScanout(c) => {
                self.not_a_buffer(c.resource_id)?;
                self.set_scanout(&c, display).map(|_| Reply::NoData)
            }
            GpuCommand::ResourceFlush(c) => {
                self.not_a_buffer(c.resource_id)?;
                let res = self
                    .resources
                    .get(&c.resource_id)
                    .ok_or(GpuError::UnknownResource(c.resource_id))?;
                self.scanouts
                    .flush(res, c.r, display)
                    .map(|_| Reply::NoData)
            }
            GpuCommand::TransferToHost2d(t) => {
                self.not_a_buffer(t.resource_id)?;
                let res = self.resource_mut(t.resource_id)?;
                transfer::transfer_to_host_2d(res, mem, &t).map(|_| Reply::NoData)
            }
            GpuCommand::ResourceAttachBacking(c, entries) => self
                .attach_backing(mem, c.resource_id, entries)
                .map(|_| Reply::NoData),
            GpuCommand::ResourceDetachBacking(c) if self.is_buffer(c.resource_id) => self
                .gpu3d_mut()?
                .detach_backing(c.resource_id)
                .map(|_| Reply::NoData),
            GpuCommand::ResourceDetachBacking(c) => {
                let res = self.resource_mut(c.resource_id)?;
                res.backing
                    .take()
                    .map(|_| Reply::NoData)
                    .ok_or(GpuError::NoBacking(c.resource_id))
            }
            GpuCommand::GetCapsetInfo(c) => {
                let (id, version, size) = capset::capset_info(self.num_capsets(), c.capset_index)?;
                Ok(Reply::CapsetInfo(id, version, size))
            }
            GpuCommand::GetCapset(c) => Ok(Reply::Capset(capset::capset(
                self.vgpu().map(|v| &**v),
                c.capset_id,
                c.capset_version,
            )?)),
            GpuCommand::GetEdid(c) => self.edid(c.scanout),
            GpuCommand::ResourceAssignUuid(c) if self.is_buffer(c.resource_id) => self
                .gpu3d_mut()?
                .assign_uuid(c.resource_id, random_uuid_v4)
                .map(Reply::Uuid),
            GpuCommand::ResourceAssignUuid(c) => {
                let res = self.resource_mut(c.resource_id)?;
                Ok(Reply::Uuid(*res.uuid.get_or_insert_with(random_uuid_v4)))
            }
            GpuCommand::UpdateCursor(_) | GpuCommand::MoveCursor(_) => {
                Err(GpuError::CursorOnControlQueue(req.cmd.type_()))
            }
            GpuCommand::ResourceCreateBlob(..)
            | GpuCommand::SetScanoutBlob(_)
            | GpuCommand::ResourceMapBlob(_)
            | GpuCommand::ResourceUnmapBlob(_) => Err(GpuError::Unsupported(req.cmd.type_())),
            GpuCommand::CtxCreate(_)
            | GpuCommand::CtxDestroy
            | GpuCommand::CtxAttachResource(_)
            | GpuCommand::CtxDetachResource(_)
            | GpuCommand::ResourceCreate3d(_)
            | GpuCommand::TransferToHost3d(_)
            | GpuCommand::TransferFromHost3d(_)
            | GpuCommand::Submit3d(..) => self.context_command(mem, req, token),
        }
    }

    /// 3D commands, served by the [`Gpu3d`] state (ERR_UNSPEC without a vGPU).
    fn context_command<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        req: &Request<'_>,
        token: u64,
    ) -> Result<Reply, GpuError> {
        let ctx_id = req.hdr.ctx_id;
        let resources = &self.resources;
        let Some(g) = self.gpu3d.as_mut().filter(|_| self.virgl_negotiated) else {
            return Err(GpuError::Unsupported(req.cmd.type_()));
        };
        match req.cmd {
            GpuCommand::CtxCreate(c) => g.ctx_create(ctx_id, &c)?,
            GpuCommand::CtxDestroy => g.ctx_destroy(ctx_id)?,
            GpuCommand::CtxAttachResource(c) | GpuCommand::CtxDetachResource(c) => {
                let attach = matches!(req.cmd, GpuCommand::CtxAttachResource(_));
                let is_2d = resources.contains_key(&c.resource_id);
                g.ctx_attach(ctx_id, c.resource_id, attach, is_2d)?
            }
            GpuCommand::ResourceCreate3d(c) => {
                if c.resource_id == 0 {
                    return Err(GpuError::ResourceIdZero);
                }
                if resources.contains_key(&c.resource_id) || g.has_buffer(c.resource_id) {
                    return Err(GpuError::ResourceExists(c.resource_id));
                }
                g.create_buffer(&c)?
            }
            GpuCommand::TransferToHost3d(t) => {
                let is_2d = resources.contains_key(&t.resource_id);
                g.transfer(mem, &t, Direction::ToHost, is_2d)?
            }
            GpuCommand::TransferFromHost3d(t) => {
                let is_2d = resources.contains_key(&t.resource_id);
                g.transfer(mem, &t, Direction::FromHost, is_2d)?
            }
            GpuCommand::Submit3d(_, stream) => {
                if g.submit(ctx_id, stream, token, |id| resources.contains_key(&id))? {
                    return Ok(Reply::Pending);
                }
            }
            _ => return Err(GpuError::Unsupported(req.cmd.type_())),
        }
        Ok(Reply::NoData)
    }

    fn is_buffer(&self, id: u32) -> bool {
        self.gpu3d.as_ref().is_some_and(|g| g.has_buffer(id))
    }

    /// 2D-only commands refuse buffers with INVALID_PARAMETER.
    fn not_a_buffer(&self, id: u32) -> Result<(), GpuError> {
        if self.is_buffer(id) {
            Err(GpuError::BufferNotAllowed(id))
        } else {
            Ok(())
        }
    }

    fn gpu3d_mut(&mut self) -> Result<&mut Gpu3d, GpuError> {
        self.gpu3d
            .as_mut()
            .ok_or(GpuError::Unsupported(VIRTIO_GPU_CMD_CTX_CREATE))
    }

    fn resource_mut(&mut self, id: u32) -> Result<&mut Resource2d, GpuError> {
        self.resources
            .get_mut(&id)
            .ok_or(GpuError::UnknownResource(id))
    }

    fn create_2d(&mut self, c: &ResourceCreate2d) -> Result<(), GpuError> {
        if c.resource_id == 0 {
            return Err(GpuError::ResourceIdZero);
        }
        if self.resources.contains_key(&c.resource_id) || self.is_buffer(c.resource_id) {
            return Err(GpuError::ResourceExists(c.resource_id));
        }
        let res = Resource2d::create(c, &self.budget)?;
        self.resources
            .try_reserve(1)
            .map_err(|_| GpuError::AllocFailed(size_of::<Resource2d>() as u64))?;
        self.resources.insert(c.resource_id, res);
        Ok(())
    }

    fn unref(&mut self, id: u32, display: &mut dyn DisplaySink) -> Result<(), GpuError> {
        if let Some(g) = self.gpu3d.as_mut() {
            if g.unref_buffer(id) {
                return Ok(());
            }
        }
        let res = self
            .resources
            .remove(&id)
            .ok_or(GpuError::UnknownResource(id))?;
        if let Some(g) = self.gpu3d.as_mut() {
            g.forget_attachments(id);
        }
        self.scanouts.disable_resource(id, display);
        drop(res);
        Ok(())
    }

    fn attach_backing<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        id: u32,
        entries: MemEntries<'_>,
    ) -> Result<(), GpuError> {
        let budget = Arc::clone(&self.budget);
        if let Some(g) = self.gpu3d.as_mut().filter(|g| g.has_buffer(id)) {
            return g.attach_backing(mem, id, entries, &budget);
        }
        let res = self.resource_mut(id)?;
        if res.backing.is_some() {
            return Err(GpuError::BackingAttached(id));
        }
        let charge = Charge::new(&budget, Backing::host_bytes(entries.len()))?;
        let backing = Backing::new(mem, entries)?;
        res.backing = Some(AttachedBacking::new(backing, charge));
        Ok(())
    }

    fn set_scanout(
        &mut self,
        c: &SetScanout,
        display: &mut dyn DisplaySink,
    ) -> Result<(), GpuError> {
        self.scanouts.check_id(c.scanout_id)?;
        if c.resource_id == 0 {
            self.scanouts.disable(c.scanout_id, display);
            return Ok(());
        }
        if c.r.width > self.config.max_width || c.r.height > self.config.max_height {
            return Err(GpuError::ScanoutTooLarge {
                scanout_id: c.scanout_id,
                width: c.r.width,
                height: c.r.height,
                max_width: self.config.max_width,
                max_height: self.config.max_height,
            });
        }
        let res = self
            .resources
            .get(&c.resource_id)
            .ok_or(GpuError::UnknownResource(c.resource_id))?;
        self.scanouts.set(c.scanout_id, res, c.r, display)
    }

    /// GET_DISPLAY_INFO: every head offers the preferred mode (`--resolution`, within the type's
    /// maximum). With a frontend display attached, its answer only says which heads beyond the
    /// first exist (QEMU reports outputs past its `max_outputs` disabled); its mode sizes are not
    /// passed through, so the type's maximum and the preferred mode hold under QEMU too.
    fn display_info(&self, display: &mut dyn DisplaySink) -> [DisplayOne; VIRTIO_GPU_MAX_SCANOUTS] {
        let n = self.config.num_scanouts as usize;
        let theirs = display.display_info();
        let mut modes = [DisplayOne::default(); VIRTIO_GPU_MAX_SCANOUTS];
        for (head, m) in modes.iter_mut().enumerate().take(n) {
            let exists = head == 0
                || theirs
                    .as_ref()
                    .is_none_or(|t| t.get(head).is_some_and(|o| o.enabled != 0));
            if exists {
                *m = DisplayOne {
                    r: Rect {
                        x: 0,
                        y: 0,
                        width: self.config.width,
                        height: self.config.height,
                    },
                    enabled: 1,
                    flags: 0,
                };
            }
        }
        modes
    }

    /// GET_EDID: the device's own EDID, whose preferred timing is the preferred mode and whose
    /// other modes all fit in it (so none is above the type's maximum), with or without a
    /// frontend display.
    fn edid(&self, scanout: u32) -> Result<Reply, GpuError> {
        if !self.config.edid {
            return Err(GpuError::EdidDisabled);
        }
        if scanout >= self.config.num_scanouts {
            return Err(GpuError::EdidScanout(scanout));
        }
        let mut out = [0u8; 1024];
        let block = edid::generate(self.config.width, self.config.height, scanout);
        out[..block.len()].copy_from_slice(&block);
        Ok(Reply::Edid(out, block.len()))
    }
}

/// A random (version 4, RFC 4122 variant) UUID.
fn random_uuid_v4() -> [u8; 16] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    for half in bytes.chunks_exact_mut(8) {
        // RandomState is seeded from the OS; the counter makes every call distinct.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}
