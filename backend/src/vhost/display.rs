//! The device's display sink over QEMU's vhost-user-gpu socket (`VHOST_USER_GPU_SET_SOCKET`).
//!
//! [`VmDisplay`] is what a VM's device draws into: the GPU socket while QEMU gave one and it works,
//! [`HeadlessDisplay`] otherwise. The first failure on the socket is logged once and the socket is
//! dropped; the VM keeps running headless until QEMU hands over a new socket (next DRIVER_OK).
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
    /// QEMU's GPU socket.
    Socket(GpuSocketDisplay),
    /// No (working) GPU socket: contents stay on the host.
    Headless(HeadlessDisplay),
}

impl Default for VmDisplay {
    fn default() -> Self {
        VmDisplay::Headless(HeadlessDisplay::new())
    }
}

impl VmDisplay {
    /// A display over a new GPU socket.
    pub fn socket(gpu: GpuBackend) -> Self {
        VmDisplay::Socket(GpuSocketDisplay::new(gpu))
    }

    /// True while drawing into a GPU socket.
    pub fn has_socket(&self) -> bool {
        matches!(self, VmDisplay::Socket(_))
    }

    /// Runs `op` on the socket; on failure logs once, drops the socket and goes headless. Returns
    /// `None` when headless (then `headless` ran instead) or when the socket just failed.
    fn with_socket<T>(
        &mut self,
        op: impl FnOnce(&mut GpuSocketDisplay) -> io::Result<T>,
        headless: impl FnOnce(&mut HeadlessDisplay),
    ) -> Option<T> {
        match self {
            VmDisplay::Socket(s) => match op(s) {
                Ok(v) => Some(v),
                Err(e) => {
                    log::warn!("GPU socket to the frontend failed ({e}); continuing headless");
                    *self = VmDisplay::default();
                    None
                }
            },
            VmDisplay::Headless(h) => {
                headless(h);
                None
            }
        }
    }
}

fn cursor_pos(scanout_id: u32, x: u32, y: u32) -> VhostUserGpuCursorPos {
    VhostUserGpuCursorPos { scanout_id, x, y }
}

impl DisplaySink for VmDisplay {
    fn scanout(&mut self, scanout_id: u32, width: u32, height: u32) {
        self.with_socket(
            |s| s.scanout(scanout_id, width, height),
            |h| h.scanout(scanout_id, width, height),
        );
    }

    fn update(&mut self, scanout_id: u32, x: u32, y: u32, w: u32, h: u32, pixels: &[u8]) {
        let rect = Rect {
            x,
            y,
            width: w,
            height: h,
        };
        let sent = self.with_socket(
            |s| s.update(scanout_id, rect, pixels),
            |hd| hd.update(scanout_id, x, y, w, h, pixels),
        );
        if sent == Some(false) {
            log::debug!(
                "scanout {scanout_id}: update {w}x{h} with {} bytes not sent",
                pixels.len()
            );
        }
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
        self.with_socket(
            |s| s.cursor_update(cursor_pos(scanout_id, x, y), hot_x, hot_y, image),
            |h| h.cursor_update(scanout_id, x, y, hot_x, hot_y, image),
        );
    }

    fn cursor_move(&mut self, scanout_id: u32, x: u32, y: u32) {
        self.with_socket(
            |s| s.cursor_move(cursor_pos(scanout_id, x, y)),
            |h| h.cursor_move(scanout_id, x, y),
        );
    }

    fn cursor_hide(&mut self, scanout_id: u32) {
        self.with_socket(
            |s| s.cursor_hide(cursor_pos(scanout_id, 0, 0)),
            |h| h.cursor_hide(scanout_id),
        );
    }

    fn display_info(&mut self) -> Option<[DisplayOne; VIRTIO_GPU_MAX_SCANOUTS]> {
        match self {
            VmDisplay::Headless(h) => h.display_info(),
            VmDisplay::Socket(_) => self.with_socket(|s| s.display_info(), |_| ()).flatten(),
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
        if let VmDisplay::Socket(s) = &d {
            assert!(s.edid_enabled());
        }
        assert!(d.has_socket());
        // The peer is gone: the first failing call drops the socket, the VM goes headless.
        d.cursor_move(0, 1, 1);
        d.scanout(0, 640, 480);
        d.cursor_move(0, 1, 1);
        assert!(!d.has_socket());
        assert_eq!(d.display_info(), None);
    }
}
