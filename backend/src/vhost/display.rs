//! The device's display sink over QEMU's vhost-user-gpu socket (`VHOST_USER_GPU_SET_SOCKET`).
//!
//! [`VmDisplay`] is what a VM's device draws into: the GPU socket while QEMU gave one and it works,
//! [`HeadlessDisplay`] otherwise. The socket is driven from the VM's display thread
//! ([`super::display_link`]) with bounded waits, so a stalled QEMU never blocks the VM's queues.
//! The first failure on the socket is logged once and the socket is dropped; the VM keeps running
//! headless until QEMU hands over a new socket (next DRIVER_OK).
//!
//! [`GpuSocketDisplay`] is the blocking protocol client the display thread uses.
//!
//! The protocol handshake (`GET_PROTOCOL_FEATURES`, then `SET_PROTOCOL_FEATURES` with EDID if
//! offered) is done lazily, on the first use from the queue worker, never from the vhost-user
//! handler thread: QEMU only reads the GPU socket from its main loop, which is blocked while it waits
//! for replies on the vhost-user socket during device start, so a synchronous handshake there would
//! deadlock.

use std::io;

use vgpu_protocol::virtio_gpu::{
    DisplayOne, Rect, VIRTIO_GPU_MAX_SCANOUTS, VIRTIO_GPU_RESP_OK_DISPLAY_INFO,
};
use vhost::vhost_user::gpu_message::{
    VhostUserGpuCursorPos, VhostUserGpuCursorUpdate, VhostUserGpuScanout, VhostUserGpuUpdate,
};
use vhost::vhost_user::message::VhostUserU64;
use vhost::vhost_user::GpuBackend;

use super::display_link::{DisplayLink, DisplayTimeouts, LinkState};
use crate::device::{DisplaySink, HeadlessDisplay, CURSOR_IMAGE_BYTES};

/// `VHOST_USER_GPU_PROTOCOL_F_EDID` as a bit mask (the `vhost` crate's bitflags constant has the
/// value 0, not the bit).
pub const GPU_PROTOCOL_F_EDID: u64 = 1 << 0;
/// `VHOST_USER_GPU_PROTOCOL_F_DMABUF2` as a bit mask (not used: we send no dma-bufs).
pub const GPU_PROTOCOL_F_DMABUF2: u64 = 1 << 1;

/// A display over QEMU's GPU socket.
pub struct GpuSocketDisplay {
    gpu: GpuBackend,
    handshake_done: bool,
    edid: bool,
}

impl GpuSocketDisplay {
    /// Wraps a freshly received GPU socket; the handshake happens on first use.
    pub fn new(gpu: GpuBackend) -> Self {
        GpuSocketDisplay {
            gpu,
            handshake_done: false,
            edid: false,
        }
    }

    /// Whether QEMU offered (and we enabled) `VHOST_USER_GPU_PROTOCOL_F_EDID`.
    pub fn edid_enabled(&self) -> bool {
        self.edid
    }

    fn handshake(&mut self) -> io::Result<()> {
        if self.handshake_done {
            return Ok(());
        }
        let offered = self.gpu.get_protocol_features()?.value;
        let wanted = offered & GPU_PROTOCOL_F_EDID;
        self.gpu.set_protocol_features(&VhostUserU64::new(wanted))?;
        self.edid = wanted != 0;
        self.handshake_done = true;
        log::debug!(
            "GPU socket: frontend offers protocol features {offered:#x}, using {wanted:#x}"
        );
        Ok(())
    }

    /// Sends `VHOST_USER_GPU_SCANOUT`.
    pub fn scanout(&mut self, scanout_id: u32, width: u32, height: u32) -> io::Result<()> {
        self.handshake()?;
        self.gpu.set_scanout(&VhostUserGpuScanout {
            scanout_id,
            width,
            height,
        })
    }

    /// Sends `VHOST_USER_GPU_UPDATE` with its pixels, which must be exactly `width * height * 4`
    /// bytes (QEMU reads the image by those dimensions).
    pub fn update(
        &mut self,
        scanout_id: u32,
        rect: Rect,
        pixels_x8r8g8b8: &[u8],
    ) -> io::Result<bool> {
        let expected = (rect.width as usize)
            .checked_mul(rect.height as usize)
            .and_then(|n| n.checked_mul(4));
        if expected != Some(pixels_x8r8g8b8.len()) || expected == Some(0) {
            return Ok(false);
        }
        self.handshake()?;
        self.gpu.update_scanout(
            &VhostUserGpuUpdate {
                scanout_id,
                x: rect.x,
                y: rect.y,
                width: rect.width,
                height: rect.height,
            },
            pixels_x8r8g8b8,
        )?;
        Ok(true)
    }

    /// Sends `VHOST_USER_GPU_CURSOR_UPDATE`.
    pub fn cursor_update(
        &mut self,
        pos: VhostUserGpuCursorPos,
        hot_x: u32,
        hot_y: u32,
        image: &[u8; CURSOR_IMAGE_BYTES],
    ) -> io::Result<()> {
        self.handshake()?;
        self.gpu
            .cursor_update(&VhostUserGpuCursorUpdate { pos, hot_x, hot_y }, image)
    }

    /// Sends `VHOST_USER_GPU_CURSOR_POS`.
    pub fn cursor_move(&mut self, pos: VhostUserGpuCursorPos) -> io::Result<()> {
        self.handshake()?;
        self.gpu.cursor_pos(&pos)
    }

    /// Sends `VHOST_USER_GPU_CURSOR_POS_HIDE`.
    pub fn cursor_hide(&mut self, pos: VhostUserGpuCursorPos) -> io::Result<()> {
        self.handshake()?;
        self.gpu.cursor_pos_hide(&pos)
    }

    /// Asks QEMU for its display configuration (`VHOST_USER_GPU_GET_DISPLAY_INFO`).
    pub fn display_info(&mut self) -> io::Result<Option<[DisplayOne; VIRTIO_GPU_MAX_SCANOUTS]>> {
        self.handshake()?;
        let reply = self.gpu.get_display_info()?;
        if reply.hdr.type_ != VIRTIO_GPU_RESP_OK_DISPLAY_INFO {
            return Ok(None);
        }
        let mut modes = [DisplayOne::default(); VIRTIO_GPU_MAX_SCANOUTS];
        for (dst, src) in modes.iter_mut().zip(reply.pmodes.iter()) {
            *dst = DisplayOne {
                r: Rect {
                    x: src.r.x,
                    y: src.r.y,
                    width: src.r.width,
                    height: src.r.height,
                },
                enabled: src.enabled,
                flags: src.flags,
            };
        }
        Ok(Some(modes))
    }
}

/// What one VM's device draws into.
pub enum VmDisplay {
    /// QEMU's GPU socket, through the VM's display thread (see [`DisplayLink`]).
    Socket(DisplayLink),
    /// No (working) GPU socket: contents stay on the host.
    Headless(HeadlessDisplay),
}

impl Default for VmDisplay {
    fn default() -> Self {
        VmDisplay::Headless(HeadlessDisplay::new())
    }
}

impl VmDisplay {
    /// A display over a new GPU socket, with the default timeouts.
    pub fn socket(gpu: GpuBackend) -> Self {
        Self::socket_named(gpu, "vm", DisplayTimeouts::default())
    }

    /// A display over a new GPU socket of VM `name` (for logs), with its own display thread.
    pub fn socket_named(gpu: GpuBackend, name: &str, timeouts: DisplayTimeouts) -> Self {
        match DisplayLink::spawn(gpu, name, timeouts) {
            Ok(link) => VmDisplay::Socket(link),
            Err(e) => {
                log::error!("{name}: cannot start the display thread ({e}); running headless");
                VmDisplay::default()
            }
        }
    }

    /// True while drawing into a GPU socket that has not failed (a stalled one counts).
    pub fn has_socket(&mut self) -> bool {
        match self {
            VmDisplay::Socket(link) => link.state() != LinkState::Failed,
            VmDisplay::Headless(_) => false,
        }
    }

    /// True once after a stalled display recovered: every scanout must be sent again.
    pub fn take_redraw(&mut self) -> bool {
        match self {
            VmDisplay::Socket(link) => link.take_redraw(),
            VmDisplay::Headless(_) => false,
        }
    }

    /// Runs `op` on the link, or `headless` when there is none; a failed link is dropped here
    /// (the VM goes headless until the frontend hands over a new socket).
    fn with_link<T>(
        &mut self,
        op: impl FnOnce(&mut DisplayLink) -> T,
        headless: impl FnOnce(&mut HeadlessDisplay),
    ) -> Option<T> {
        if let VmDisplay::Socket(link) = self {
            if link.state() == LinkState::Failed {
                *self = VmDisplay::default();
            }
        }
        match self {
            VmDisplay::Socket(link) => Some(op(link)),
            VmDisplay::Headless(h) => {
                headless(h);
                None
            }
        }
    }
}

/// The rectangle of an UPDATE whose pixels are exactly `w * h * 4` bytes (QEMU reads the image
/// by those dimensions); `None` (logged) for an empty or mismatched one.
fn update_rect(scanout_id: u32, x: u32, y: u32, w: u32, h: u32, len: usize) -> Option<Rect> {
    let expected = (w as usize)
        .checked_mul(h as usize)
        .and_then(|n| n.checked_mul(4));
    if expected != Some(len) || expected == Some(0) {
        log::debug!("scanout {scanout_id}: update {w}x{h} with {len} bytes not sent");
        return None;
    }
    Some(Rect {
        x,
        y,
        width: w,
        height: h,
    })
}

fn cursor_pos(scanout_id: u32, x: u32, y: u32) -> VhostUserGpuCursorPos {
    VhostUserGpuCursorPos { scanout_id, x, y }
}

impl DisplaySink for VmDisplay {
    fn scanout(&mut self, scanout_id: u32, width: u32, height: u32) {
        self.with_link(
            |l| l.scanout(scanout_id, width, height),
            |h| h.scanout(scanout_id, width, height),
        );
    }

    fn update(&mut self, scanout_id: u32, x: u32, y: u32, w: u32, h: u32, pixels: &[u8]) {
        let Some(rect) = update_rect(scanout_id, x, y, w, h, pixels.len()) else {
            return;
        };
        self.with_link(
            |l| l.update(scanout_id, rect, pixels),
            |hd| hd.update(scanout_id, x, y, w, h, pixels),
        );
    }

    fn update_owned(
        &mut self,
        scanout_id: u32,
        x: u32,
        y: u32,
        w: u32,
        h: u32,
        pixels: Vec<u8>,
    ) -> Vec<u8> {
        let Some(rect) = update_rect(scanout_id, x, y, w, h, pixels.len()) else {
            return pixels;
        };
        if let VmDisplay::Socket(link) = self {
            if link.state() != LinkState::Failed {
                return link.update_owned(scanout_id, rect, pixels);
            }
        }
        self.update(scanout_id, x, y, w, h, &pixels);
        pixels
    }

    fn cursor_update(
        &mut self,
        scanout_id: u32,
        x: u32,
        y: u32,
        hot_x: u32,
        hot_y: u32,
        image: &[u8; CURSOR_IMAGE_BYTES],
    ) {
        self.with_link(
            |l| l.cursor_update(cursor_pos(scanout_id, x, y), hot_x, hot_y, image),
            |h| h.cursor_update(scanout_id, x, y, hot_x, hot_y, image),
        );
    }

    fn cursor_move(&mut self, scanout_id: u32, x: u32, y: u32) {
        self.with_link(
            |l| l.cursor_move(cursor_pos(scanout_id, x, y)),
            |h| h.cursor_move(scanout_id, x, y),
        );
    }

    fn cursor_hide(&mut self, scanout_id: u32) {
        self.with_link(
            |l| l.cursor_hide(cursor_pos(scanout_id, 0, 0)),
            |h| h.cursor_hide(scanout_id),
        );
    }

    fn display_info(&mut self) -> Option<[DisplayOne; VIRTIO_GPU_MAX_SCANOUTS]> {
        match self {
            VmDisplay::Headless(h) => h.display_info(),
            VmDisplay::Socket(_) => self.with_link(|l| l.display_info(), |_| ()).flatten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::thread;

    fn read_msg(s: &mut UnixStream) -> (u32, Vec<u8>) {
        let mut hdr = [0u8; 12];
        s.read_exact(&mut hdr).unwrap();
        let req = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
        let mut body = vec![0u8; size];
        s.read_exact(&mut body).unwrap();
        (req, body)
    }

    #[test]
    fn handshake_then_messages_then_headless_after_socket_dies() {
        let (ours, mut qemu) = UnixStream::pair().unwrap();
        let peer = thread::spawn(move || {
            // GET_PROTOCOL_FEATURES -> EDID | DMABUF2, as QEMU 10 answers.
            let (req, body) = read_msg(&mut qemu);
            assert_eq!((req, body.len()), (1, 0));
            let mut reply = Vec::new();
            for v in [1u32, 0x4, 8] {
                reply.extend_from_slice(&v.to_le_bytes());
            }
            reply.extend_from_slice(&3u64.to_le_bytes());
            qemu.write_all(&reply).unwrap();
            // SET_PROTOCOL_FEATURES with EDID only.
            let (req, body) = read_msg(&mut qemu);
            assert_eq!(req, 2);
            assert_eq!(u64::from_le_bytes(body[..8].try_into().unwrap()), 1);
            // SCANOUT 0, 640x480.
            let (req, body) = read_msg(&mut qemu);
            assert_eq!(req, 7);
            assert_eq!(u32::from_le_bytes(body[4..8].try_into().unwrap()), 640);
            // UPDATE 2x1 with 8 bytes of pixels.
            let (req, body) = read_msg(&mut qemu);
            assert_eq!((req, body.len()), (8, 20 + 8));
        });
        let mut d = VmDisplay::socket(GpuBackend::from_stream(ours));
        d.scanout(0, 640, 480);
        d.update(0, 0, 0, 2, 1, &[1; 8]);
        // A pixel buffer that does not match the rectangle is not sent.
        d.update(0, 0, 0, 2, 2, &[1; 8]);
        peer.join().unwrap();
        assert!(d.has_socket());
        // The peer is gone: the first failing call ends the link, the VM goes headless.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while d.has_socket() {
            assert!(std::time::Instant::now() < deadline, "socket never failed");
            d.cursor_move(0, 1, 1);
            thread::sleep(std::time::Duration::from_millis(5));
        }
        d.scanout(0, 640, 480);
        assert!(!d.has_socket());
        assert_eq!(d.display_info(), None);
    }
}
