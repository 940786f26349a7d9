//! Screenshots: the pixels a scanout shows, read from the host-side copy of its resource (what
//! the guest last transferred), for `vgpuctl screenshot`.

use thiserror::Error;

use super::format::OUTPUT_BPP;
use super::VirtioGpuDevice;

/// Largest screenshot in pixels (a 8192x8192 scanout).
const MAX_PIXELS: u64 = 8192 * 8192;

/// Why a scanout cannot be captured.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScreenshotError {
    /// No such scanout on this device.
    #[error("scanout {head} does not exist (the device has {count})")]
    NoScanout {
        /// The scanout asked for.
        head: u32,
        /// Scanouts the device has.
        count: u32,
    },
    /// The scanout shows nothing.
    #[error("scanout {0} is disabled")]
    Disabled(u32),
    /// The scanout shows a resource without host-side pixels (a 3D or blob resource).
    #[error("scanout {head} shows resource {resource}, which has no host-side 2D pixels")]
    NotCapturable {
        /// The scanout.
        head: u32,
        /// The resource it shows.
        resource: u32,
    },
}

/// An RGB8 image of one scanout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanoutImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` R, G, B triples, row-major.
    pub rgb: Vec<u8>,
}

impl VirtioGpuDevice {
    /// The pixels scanout `head` shows now, as RGB.
    pub fn scanout_image(&self, head: u32) -> Result<ScanoutImage, ScreenshotError> {
        let count = self.config().num_scanouts;
        let s = self
            .scanout(head)
            .filter(|_| head < count)
            .ok_or(ScreenshotError::NoScanout { head, count })?;
        if s.resource_id == 0 {
            return Err(ScreenshotError::Disabled(head));
        }
        let not = ScreenshotError::NotCapturable {
            head,
            resource: s.resource_id,
        };
        let res = self.resource(s.resource_id).ok_or(not)?;
        let r = s.rect;
        let inside = r.x.checked_add(r.width).is_some_and(|x| x <= res.width())
            && r.y.checked_add(r.height).is_some_and(|y| y <= res.height());
        if !inside || r.width == 0 || u64::from(r.width) * u64::from(r.height) > MAX_PIXELS {
            return Err(ScreenshotError::NotCapturable {
                head,
                resource: s.resource_id,
            });
        }
        let (w, h) = (r.width as usize, r.height as usize);
        let bpp = res.format().bytes_per_pixel() as usize;
        let stride = res.stride();
        let data = res.data();
        let mut row = vec![0u8; w * OUTPUT_BPP];
        let mut rgb = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            let start = (r.y as usize + y) * stride + r.x as usize * bpp;
            let src = data.get(start..start + w * bpp).unwrap_or_default();
            res.format().convert_row(src, &mut row);
            // Output rows are B, G, R, X bytes.
            for px in row.chunks_exact(OUTPUT_BPP) {
                rgb.extend_from_slice(&[px[2], px[1], px[0]]);
            }
        }
        Ok(ScanoutImage {
            width: r.width,
            height: r.height,
            rgb,
        })
    }
}

/// Encodes `image` as a PNG file's bytes.
pub fn encode_png(image: &ScanoutImage) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, image.width, image.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&image.rgb)?;
        writer.finish()?;
    }
    Ok(out)
}
