//! Decoded screen contents (from a QEMU `screendump` PNG) and pixel checks on them.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use super::GuestError;

/// An 8-bit RGB picture.
#[derive(Clone, Debug)]
pub struct Screen {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    rgb: Vec<u8>,
}

impl Screen {
    /// Decodes a PNG file (any colour type and bit depth, normalised to 8-bit RGB).
    pub fn from_png(path: &Path) -> Result<Self, GuestError> {
        let file =
            File::open(path).map_err(|e| GuestError::io(format!("open {}", path.display()), e))?;
        let mut decoder = png::Decoder::new(BufReader::new(file));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().map_err(GuestError::Png)?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| GuestError::Image("PNG too large".into()))?;
        let mut buf = vec![0; size];
        let info = reader.next_frame(&mut buf).map_err(GuestError::Png)?;
        let channels = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            other => {
                return Err(GuestError::Image(format!(
                    "unexpected PNG colour type {other:?}"
                )))
            }
        };
        let mut rgb = Vec::with_capacity(info.width as usize * info.height as usize * 3);
        for row in buf.chunks(info.line_size).take(info.height as usize) {
            for px in row.chunks(channels).take(info.width as usize) {
                match channels {
                    1 | 2 => rgb.extend_from_slice(&[px[0], px[0], px[0]]),
                    _ => rgb.extend_from_slice(&px[..3]),
                }
            }
        }
        Ok(Screen {
            width: info.width,
            height: info.height,
            rgb,
        })
    }

    /// The RGB value at (`x`, `y`), or `None` outside the picture.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        let px = self.rgb.get(i..i + 3)?;
        Some([px[0], px[1], px[2]])
    }

    /// Checks that every pixel of the rectangle (`x`, `y`, `w`, `h`) has colour `rgb`; on a mismatch, says
    /// where and what was found.
    pub fn expect_rect(&self, x: u32, y: u32, w: u32, h: u32, rgb: [u8; 3]) -> Result<(), String> {
        for py in y..y.saturating_add(h) {
            for px in x..x.saturating_add(w) {
                match self.pixel(px, py) {
                    Some(found) if found == rgb => {}
                    found => {
                        return Err(format!(
                        "pixel ({px},{py}) is {found:?}, expected {rgb:?} in rect {x},{y} {w}x{h}"
                    ))
                    }
                }
            }
        }
        Ok(())
    }
}
