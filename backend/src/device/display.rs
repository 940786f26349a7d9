//! Where scanout contents go: the [`DisplaySink`] trait (implemented by the vhost-user glue over
//! QEMU's GPU socket) and [`HeadlessDisplay`], which keeps the contents on the host.

use vgpu_protocol::virtio_gpu::{DisplayOne, VIRTIO_GPU_MAX_SCANOUTS};

/// Size in bytes of a 64×64 ARGB cursor image.
pub const CURSOR_IMAGE_BYTES: usize = 64 * 64 * 4;

/// Receives what the device shows. Pixels are x8r8g8b8 little-endian (bytes B, G, R, X).
pub trait DisplaySink: Send {
    /// Scanout `scanout_id` now shows a `width`×`height` image; width 0 disables it.
    fn scanout(&mut self, scanout_id: u32, width: u32, height: u32);
    /// A rectangle of the scanout changed; `pixels_x8r8g8b8` holds its rows tightly packed
    /// (`width * 4` bytes each).
    fn update(
        &mut self,
        scanout_id: u32,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        pixels_x8r8g8b8: &[u8],
    );
    /// [`DisplaySink::update`] with the pixels in a buffer the sink may keep (a sink that queues
    /// pixels then does not copy them again). Returns a buffer for the caller to fill next time:
    /// a spare of the sink's, or `pixels` back.
    fn update_owned(
        &mut self,
        scanout_id: u32,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        pixels_x8r8g8b8: Vec<u8>,
    ) -> Vec<u8> {
        self.update(scanout_id, x, y, width, height, &pixels_x8r8g8b8);
        pixels_x8r8g8b8
    }
    /// New cursor image (B, G, R, A bytes) at a position, with its hot spot.
    fn cursor_update(
        &mut self,
        scanout_id: u32,
        x: u32,
        y: u32,
        hot_x: u32,
        hot_y: u32,
        image_argb_64x64: &[u8; CURSOR_IMAGE_BYTES],
    );
    /// The cursor moved (and is shown).
    fn cursor_move(&mut self, scanout_id: u32, x: u32, y: u32);
    /// The cursor is hidden.
    fn cursor_hide(&mut self, scanout_id: u32);
    /// The display configuration the frontend reports, if it can (the device uses it to learn
    /// which heads the frontend has).
    fn display_info(&mut self) -> Option<[DisplayOne; VIRTIO_GPU_MAX_SCANOUTS]> {
        None
    }
}

/// Contents of one scanout kept by [`HeadlessDisplay`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeadlessScanout {
    /// Width in pixels (0 = disabled).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// x8r8g8b8 pixels, rows tightly packed.
    pub pixels: Vec<u8>,
    /// Number of updates received.
    pub updates: u64,
}

/// Cursor state kept by [`HeadlessDisplay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadlessCursor {
    /// Scanout the cursor is on.
    pub scanout_id: u32,
    /// Position.
    pub x: u32,
    /// Position.
    pub y: u32,
    /// Hot spot.
    pub hot_x: u32,
    /// Hot spot.
    pub hot_y: u32,
    /// Shown or hidden.
    pub visible: bool,
    /// Last image (B, G, R, A).
    pub image: Vec<u8>,
}

/// A [`DisplaySink`] for frontends with no GPU socket: keeps every scanout's pixels on the host
/// (for screenshots and tests).
#[derive(Debug)]
pub struct HeadlessDisplay {
    scanouts: Vec<HeadlessScanout>,
    cursor: Option<HeadlessCursor>,
}

impl Default for HeadlessDisplay {
    fn default() -> Self {
        Self::new()
    }
}

impl HeadlessDisplay {
    /// A display with every scanout disabled.
    pub fn new() -> Self {
        HeadlessDisplay {
            scanouts: vec![HeadlessScanout::default(); VIRTIO_GPU_MAX_SCANOUTS],
            cursor: None,
        }
    }

    /// The scanout's state, if the id is valid.
    pub fn scanout_state(&self, scanout_id: u32) -> Option<&HeadlessScanout> {
        self.scanouts.get(scanout_id as usize)
    }

    /// The x8r8g8b8 pixel at (x, y) of a scanout, if inside it.
    pub fn pixel(&self, scanout_id: u32, x: u32, y: u32) -> Option<[u8; 4]> {
        let s = self.scanout_state(scanout_id)?;
        if x >= s.width || y >= s.height {
            return None;
        }
        let at = (y as usize * s.width as usize + x as usize) * 4;
        let p = s.pixels.get(at..at + 4)?;
        Some([p[0], p[1], p[2], p[3]])
    }

    /// The cursor state, once the guest has set one.
    pub fn cursor(&self) -> Option<&HeadlessCursor> {
        self.cursor.as_ref()
    }
}

impl DisplaySink for HeadlessDisplay {
    fn scanout(&mut self, scanout_id: u32, width: u32, height: u32) {
        let Some(s) = self.scanouts.get_mut(scanout_id as usize) else {
            return;
        };
        s.pixels = Vec::new();
        s.width = 0;
        s.height = 0;
        let len = (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(4));
        let Some(len) = len.filter(|&n| n > 0) else {
            return;
        };
        if s.pixels.try_reserve_exact(len).is_err() {
            log::warn!("headless scanout {scanout_id}: cannot allocate {width}x{height}");
            return;
        }
        s.pixels.resize(len, 0);
        s.width = width;
        s.height = height;
    }

    fn update(&mut self, scanout_id: u32, x: u32, y: u32, width: u32, height: u32, px: &[u8]) {
        let Some(s) = self.scanouts.get_mut(scanout_id as usize) else {
            return;
        };
        s.updates += 1;
        // Clip to the scanout; the source keeps its own row pitch.
        let src_pitch = width as usize * 4;
        let w = width.min(s.width.saturating_sub(x)) as usize;
        let h = height.min(s.height.saturating_sub(y)) as usize;
        let dst_pitch = s.width as usize * 4;
        for row in 0..h {
            let src = row * src_pitch;
            let dst = (y as usize + row) * dst_pitch + x as usize * 4;
            if let (Some(from), Some(to)) =
                (px.get(src..src + w * 4), s.pixels.get_mut(dst..dst + w * 4))
            {
                to.copy_from_slice(from);
            }
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
        self.cursor = Some(HeadlessCursor {
            scanout_id,
            x,
            y,
            hot_x,
            hot_y,
            visible: true,
            image: image.to_vec(),
        });
    }

    fn cursor_move(&mut self, scanout_id: u32, x: u32, y: u32) {
        if let Some(c) = self.cursor.as_mut() {
            c.scanout_id = scanout_id;
            c.x = x;
            c.y = y;
            c.visible = true;
        }
    }

    fn cursor_hide(&mut self, scanout_id: u32) {
        if let Some(c) = self.cursor.as_mut() {
            c.scanout_id = scanout_id;
            c.visible = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headless_keeps_and_clips_updates() {
        let mut d = HeadlessDisplay::new();
        d.scanout(1, 4, 2);
        let px: Vec<u8> = (0..3 * 2 * 4).map(|i| i as u8).collect();
        d.update(1, 2, 0, 3, 2, &px); // one column falls outside
        assert_eq!(d.pixel(1, 2, 0), Some([0, 1, 2, 3]));
        assert_eq!(d.pixel(1, 3, 1), Some([16, 17, 18, 19]));
        assert_eq!(d.pixel(1, 4, 0), None);
        d.update(99, 0, 0, 1, 1, &[0; 4]);
        d.scanout(1, 0, 0);
        assert_eq!(d.scanout_state(1).unwrap().width, 0);
        assert_eq!(d.pixel(1, 0, 0), None);
    }
}
