//! The device's display sink over QEMU's vhost-user-gpu socket (`VHOST_USER_GPU_SET_SOCKET`).
//!
//! [`VmDisplay`] is what a VM's device draws into: the GPU socket while QEMU gave one and it works,
//! [`HeadlessDisplay`] otherwise. Everything for the socket goes through the VM's
//! [`DisplaySender`] thread (see [`super::display_sender`]), so a flush returns once its pixels
//! are copied and queued. When the sender stops (the socket failed, the frontend stopped reading
//! or answering), the VM keeps running headless until QEMU hands over a new socket (next
//! DRIVER_OK). Replacing the display (new socket, disconnect) joins the old sender.
//!
//! The protocol handshake (`GET_PROTOCOL_FEATURES`, then `SET_PROTOCOL_FEATURES` with EDID if
//! offered) is done by the sender before its first message, never from the vhost-user handler
//! thread: QEMU only reads the GPU socket from its main loop, which is blocked while it waits for
//! replies on the vhost-user socket during device start.

use std::os::unix::net::UnixStream;

use vgpu_protocol::virtio_gpu::{DisplayOne, Rect, VIRTIO_GPU_MAX_SCANOUTS};
use vhost::vhost_user::GpuBackend;

use super::display_sender::{DisplaySender, Stopped};
use super::gpu_socket_fd;
use crate::device::{DisplaySink, HeadlessDisplay, CURSOR_IMAGE_BYTES};

pub use super::display_sender::{GPU_PROTOCOL_F_DMABUF2, GPU_PROTOCOL_F_EDID};

/// What one VM's device draws into.
#[derive(Debug)]
pub enum VmDisplay {
    /// QEMU's GPU socket, served by its sender thread.
    Socket(DisplaySender),
    /// No (working) GPU socket: contents stay on the host.
    Headless(HeadlessDisplay),
}

impl Default for VmDisplay {
    fn default() -> Self {
        VmDisplay::Headless(HeadlessDisplay::new())
    }
}

impl VmDisplay {
    /// A display over the GPU socket the vhost crate received (headless if it cannot be used).
    pub fn socket(gpu: GpuBackend) -> Self {
        match gpu_socket_fd::into_stream(gpu) {
            Ok(sock) => Self::stream(sock),
            Err(e) => {
                log::warn!("GPU socket unusable ({e}); continuing headless");
                Self::default()
            }
        }
    }

    /// A display over a connected GPU socket.
    pub fn stream(sock: UnixStream) -> Self {
        match DisplaySender::spawn(sock) {
            Ok(s) => VmDisplay::Socket(s),
            Err(e) => {
                log::warn!("GPU socket: cannot start its sender ({e}); continuing headless");
                Self::default()
            }
        }
    }

    /// True while drawing into a GPU socket.
    pub fn has_socket(&self) -> bool {
        matches!(self, VmDisplay::Socket(s) if s.is_alive())
    }

    /// Runs `op` on the socket's sender; once the sender has stopped (it logged why), joins it and
    /// goes headless. Returns `None` when headless (then `headless` ran instead) or when the
    /// sender just stopped.
    fn with_socket<T>(
        &mut self,
        op: impl FnOnce(&mut DisplaySender) -> Result<T, Stopped>,
        headless: impl FnOnce(&mut HeadlessDisplay),
    ) -> Option<T> {
        match self {
            VmDisplay::Socket(s) => match op(s) {
                Ok(v) => Some(v),
                Err(Stopped) => {
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
            |s| s.cursor_update([scanout_id, x, y], hot_x, hot_y, image),
            |h| h.cursor_update(scanout_id, x, y, hot_x, hot_y, image),
        );
    }

    fn cursor_move(&mut self, scanout_id: u32, x: u32, y: u32) {
        self.with_socket(
            |s| s.cursor_move([scanout_id, x, y]),
            |h| h.cursor_move(scanout_id, x, y),
        );
    }

    fn cursor_hide(&mut self, scanout_id: u32) {
        self.with_socket(
            |s| s.cursor_hide([scanout_id, 0, 0]),
            |h| h.cursor_hide(scanout_id),
        );
    }

    fn display_info(&mut self) -> Option<[DisplayOne; VIRTIO_GPU_MAX_SCANOUTS]> {
        match self {
            VmDisplay::Headless(h) => h.display_info(),
            VmDisplay::Socket(_) => self.with_socket(|s| s.display_info(), |_| ()).flatten(),
        }
    }

    fn edid(&mut self, scanout_id: u32) -> Option<Vec<u8>> {
        match self {
            VmDisplay::Headless(h) => h.edid(scanout_id),
            VmDisplay::Socket(_) => self.with_socket(|s| s.edid(scanout_id), |_| ()).flatten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::thread;
    use std::time::{Duration, Instant};

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
        // The peer is gone: the sender's next write fails, and the VM goes headless.
        d.cursor_move(0, 1, 1);
        let t = Instant::now();
        while d.has_socket() && t.elapsed() < Duration::from_secs(2) {
            thread::sleep(Duration::from_millis(5));
        }
        d.scanout(0, 640, 480);
        assert!(matches!(d, VmDisplay::Headless(_)));
        assert_eq!(d.display_info(), None);
    }

    #[test]
    fn a_frontend_that_stops_reading_leaves_the_vm_headless_and_drawing() {
        let (ours, mut qemu) = UnixStream::pair().unwrap();
        let peer = thread::spawn(move || {
            let (req, _) = read_msg(&mut qemu);
            assert_eq!(req, 1);
            let mut reply = Vec::new();
            for v in [1u32, 0x4, 8] {
                reply.extend_from_slice(&v.to_le_bytes());
            }
            reply.extend_from_slice(&1u64.to_le_bytes());
            qemu.write_all(&reply).unwrap();
            qemu // kept open, never read again
        });
        let mut d = VmDisplay::stream(ours);
        let frame = vec![7u8; 1024 * 1024 * 4];
        d.scanout(0, 1024, 1024);
        let t = Instant::now();
        while d.has_socket() && t.elapsed() < Duration::from_secs(10) {
            d.update(0, 0, 0, 1024, 1024, &frame);
        }
        assert!(!d.has_socket());
        // The VM goes on drawing, headless.
        d.scanout(0, 4, 4);
        d.update(0, 0, 0, 1, 1, &[1, 2, 3, 4]);
        let VmDisplay::Headless(h) = &d else {
            panic!("not headless")
        };
        assert_eq!(h.pixel(0, 0, 0), Some([1, 2, 3, 4]));
        drop(peer.join().unwrap());
    }

    #[test]
    fn each_new_socket_joins_the_previous_sender() {
        let mut watches = Vec::new();
        let mut peers = Vec::new();
        let mut d = VmDisplay::default();
        assert!(!d.has_socket());
        for _ in 0..3 {
            let (ours, qemu) = UnixStream::pair().unwrap();
            d = VmDisplay::socket(GpuBackend::from_stream(ours));
            let VmDisplay::Socket(s) = &d else {
                panic!("no sender")
            };
            watches.push(s.watch());
            d.scanout(0, 8, 8); // queued behind a handshake nobody answers
            peers.push(qemu);
        }
        assert!(watches[..2].iter().all(|w| w.gone()));
        assert!(!watches[2].gone());
        d = VmDisplay::default();
        assert!(watches.iter().all(|w| w.gone()));
        assert!(!d.has_socket());
    }
}
