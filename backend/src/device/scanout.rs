//! Scanouts: which resource rectangle each display shows (SET_SCANOUT) and pushing flushed
//! pixels to the display (RESOURCE_FLUSH).

use vgpu_protocol::virtio_gpu::{Rect, VIRTIO_GPU_MAX_SCANOUTS};

use super::display::DisplaySink;
use super::error::GpuError;
use super::format::OUTPUT_BPP;
use super::resource::Resource2d;

/// Largest conversion buffer a device keeps for flushes; bigger flushes are sent in bands.
pub const MAX_FLUSH_BUFFER_BYTES: usize = 4 << 20;

/// What one scanout shows.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Scanout {
    /// Resource shown, 0 when disabled.
    pub resource_id: u32,
    /// Rectangle of the resource shown.
    pub rect: Rect,
}

/// Intersection of two rectangles; `None` when empty.
pub fn intersect(a: &Rect, b: &Rect) -> Option<Rect> {
    let x1 = a.x.max(b.x);
    let y1 = a.y.max(b.y);
    let x2 = a.x.saturating_add(a.width).min(b.x.saturating_add(b.width));
    let y2 =
        a.y.saturating_add(a.height)
            .min(b.y.saturating_add(b.height));
    (x2 > x1 && y2 > y1).then(|| Rect {
        x: x1,
        y: y1,
        width: x2 - x1,
        height: y2 - y1,
    })
}

/// The scanouts of one device.
#[derive(Debug)]
pub struct Scanouts {
    list: [Scanout; VIRTIO_GPU_MAX_SCANOUTS],
    count: u32,
    /// Reused conversion buffer (grows to at most [`MAX_FLUSH_BUFFER_BYTES`]).
    buf: Vec<u8>,
}

impl Scanouts {
    /// `count` scanouts (1..=16), all disabled.
    pub fn new(count: u32) -> Self {
        Scanouts {
            list: [Scanout::default(); VIRTIO_GPU_MAX_SCANOUTS],
            count: count.clamp(1, VIRTIO_GPU_MAX_SCANOUTS as u32),
            buf: Vec::new(),
        }
    }

    /// Number of scanouts.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The state of a scanout, if the id is valid.
    pub fn get(&self, scanout_id: u32) -> Option<&Scanout> {
        if scanout_id < self.count {
            self.list.get(scanout_id as usize)
        } else {
            None
        }
    }

    /// Disables every scanout (no sink calls) and drops the conversion buffer.
    pub fn clear(&mut self) {
        self.list = [Scanout::default(); VIRTIO_GPU_MAX_SCANOUTS];
        self.buf = Vec::new();
    }

    /// Validates the scanout id.
    pub fn check_id(&self, scanout_id: u32) -> Result<(), GpuError> {
        if scanout_id < self.count {
            Ok(())
        } else {
            Err(GpuError::InvalidScanoutId(scanout_id))
        }
    }

    /// Disables one scanout and tells the sink.
    pub fn disable(&mut self, scanout_id: u32, sink: &mut dyn DisplaySink) {
        if let Some(s) = self.list.get_mut(scanout_id as usize) {
            *s = Scanout::default();
            sink.scanout(scanout_id, 0, 0);
        }
    }

    /// Disables every scanout showing `resource_id` (used by RESOURCE_UNREF).
    pub fn disable_resource(&mut self, resource_id: u32, sink: &mut dyn DisplaySink) {
        for id in 0..self.count {
            if self.get(id).is_some_and(|s| s.resource_id == resource_id) {
                self.disable(id, sink);
            }
        }
    }

    /// SET_SCANOUT with a resource: checks the id and the rect (inside the resource, not empty),
    /// then shows it.
    pub fn set(
        &mut self,
        scanout_id: u32,
        res: &Resource2d,
        rect: Rect,
        sink: &mut dyn DisplaySink,
    ) -> Result<(), GpuError> {
        self.check_id(scanout_id)?;
        res.check_rect(&rect)?;
        if rect.width == 0 || rect.height == 0 {
            return Err(GpuError::EmptyScanoutRect { scanout_id, rect });
        }
        if let Some(s) = self.list.get_mut(scanout_id as usize) {
            *s = Scanout {
                resource_id: res.id(),
                rect,
            };
            sink.scanout(scanout_id, rect.width, rect.height);
        }
        Ok(())
    }

    /// RESOURCE_FLUSH: sends the part of `rect` visible on each scanout showing `res`, in
    /// scanout coordinates, converted to x8r8g8b8.
    pub fn flush(
        &mut self,
        res: &Resource2d,
        rect: Rect,
        sink: &mut dyn DisplaySink,
    ) -> Result<(), GpuError> {
        res.check_rect(&rect)?;
        for id in 0..self.count {
            let Some(s) = self.get(id).copied() else {
                continue;
            };
            if s.resource_id != res.id() {
                continue;
            }
            if let Some(area) = intersect(&rect, &s.rect) {
                self.send(id, &s.rect, res, area, sink);
            }
        }
        Ok(())
    }

    /// Sends `area` (resource coordinates, inside the resource) to scanout `id`.
    fn send(
        &mut self,
        id: u32,
        origin: &Rect,
        res: &Resource2d,
        area: Rect,
        sink: &mut dyn DisplaySink,
    ) {
        let stride = res.stride();
        let bpp = res.format().bytes_per_pixel() as usize;
        let (sx, sy) = (area.x - origin.x, area.y - origin.y);
        let data = res.data();
        if res.format().is_native() && area.x == 0 && area.width == res.width() {
            // Rows are contiguous and already x8r8g8b8: hand them over untouched.
            let start = area.y as usize * stride;
            if let Some(rows) = data.get(start..start + area.height as usize * stride) {
                sink.update(id, sx, sy, area.width, area.height, rows);
            }
            return;
        }
        // Split into column chunks if even one row is larger than the buffer, then into bands.
        let max_cols = (MAX_FLUSH_BUFFER_BYTES / OUTPUT_BPP).max(1) as u32;
        let mut col = 0u32;
        while col < area.width {
            let cols = (area.width - col).min(max_cols);
            let row_bytes = cols as usize * OUTPUT_BPP;
            let band_rows = (MAX_FLUSH_BUFFER_BYTES / row_bytes.max(1)).max(1) as u32;
            let mut row = 0u32;
            while row < area.height {
                let rows = (area.height - row).min(band_rows);
                let need = rows as usize * row_bytes;
                if self.buf.len() < need {
                    let extra = need - self.buf.len();
                    if self.buf.try_reserve_exact(extra).is_err() {
                        log::warn!("flush: cannot allocate a {need}-byte conversion buffer");
                        return;
                    }
                    self.buf.resize(need, 0);
                }
                let x = (area.x + col) as usize;
                for r in 0..rows as usize {
                    let src = (area.y + row) as usize * stride + r * stride + x * bpp;
                    let src = data.get(src..src + cols as usize * bpp);
                    let dst = self.buf.get_mut(r * row_bytes..(r + 1) * row_bytes);
                    if let (Some(src), Some(dst)) = (src, dst) {
                        res.format().convert_row(src, dst);
                    }
                }
                // Hand the converted rows over without another copy; keep what comes back
                // (a spare buffer of the sink's) for the next band.
                let mut px = std::mem::take(&mut self.buf);
                px.truncate(need);
                self.buf = sink.update_owned(id, sx + col, sy + row, cols, rows, px);
                row += rows;
            }
            col += cols;
        }
    }
}
