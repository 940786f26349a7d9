//! The eight 2D pixel formats of virtio-gpu and their conversion to the x8r8g8b8 little-endian
//! layout (bytes B, G, R, X in memory) that QEMU's display surfaces use.
//!
//! virtio-gpu format names list the bytes in memory order, e.g. `B8G8R8X8_UNORM` is stored
//! B, G, R, X — which is already x8r8g8b8 on a little-endian host. Conversion is a pure byte
//! permutation: the alpha/X byte of the source lands in the X/A position of the output.

use vgpu_protocol::virtio_gpu::*;

/// Bytes of one output (x8r8g8b8 / a8r8g8b8) pixel.
pub const OUTPUT_BPP: usize = 4;

/// A virtio-gpu 2D pixel format.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// Memory order B, G, R, A.
    B8G8R8A8,
    /// Memory order B, G, R, X.
    B8G8R8X8,
    /// Memory order A, R, G, B.
    A8R8G8B8,
    /// Memory order X, R, G, B.
    X8R8G8B8,
    /// Memory order R, G, B, A.
    R8G8B8A8,
    /// Memory order X, B, G, R.
    X8B8G8R8,
    /// Memory order A, B, G, R.
    A8B8G8R8,
    /// Memory order R, G, B, X.
    R8G8B8X8,
}

/// How a format's bytes map onto B, G, R, X.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Swizzle {
    /// Already B, G, R, X.
    Identity,
    /// X, R, G, B: reverse the four bytes.
    Reverse,
    /// R, G, B, X: swap bytes 0 and 2.
    SwapRedBlue,
    /// X, B, G, R: rotate one byte towards the start.
    RotateLeft,
}

impl Format {
    /// The format for a `VIRTIO_GPU_FORMAT_*` value, if it is one of the eight 2D formats.
    pub fn from_virtio(format: u32) -> Option<Self> {
        Some(match format {
            VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM => Format::B8G8R8A8,
            VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM => Format::B8G8R8X8,
            VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM => Format::A8R8G8B8,
            VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM => Format::X8R8G8B8,
            VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM => Format::R8G8B8A8,
            VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM => Format::X8B8G8R8,
            VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM => Format::A8B8G8R8,
            VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM => Format::R8G8B8X8,
            _ => return None,
        })
    }

    /// The `VIRTIO_GPU_FORMAT_*` value.
    pub fn to_virtio(self) -> u32 {
        match self {
            Format::B8G8R8A8 => VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM,
            Format::B8G8R8X8 => VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
            Format::A8R8G8B8 => VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM,
            Format::X8R8G8B8 => VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM,
            Format::R8G8B8A8 => VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM,
            Format::X8B8G8R8 => VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM,
            Format::A8B8G8R8 => VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM,
            Format::R8G8B8X8 => VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM,
        }
    }

    /// Bytes per pixel (4 for every 2D format).
    pub const fn bytes_per_pixel(self) -> u32 {
        4
    }

    /// True when the memory layout is already B, G, R, X/A, so rows can be shown without conversion.
    pub fn is_native(self) -> bool {
        self.swizzle() == Swizzle::Identity
    }

    fn swizzle(self) -> Swizzle {
        match self {
            Format::B8G8R8A8 | Format::B8G8R8X8 => Swizzle::Identity,
            Format::A8R8G8B8 | Format::X8R8G8B8 => Swizzle::Reverse,
            Format::R8G8B8A8 | Format::R8G8B8X8 => Swizzle::SwapRedBlue,
            Format::A8B8G8R8 | Format::X8B8G8R8 => Swizzle::RotateLeft,
        }
    }

    /// Converts the pixels of `src` (this format) into `dst` as B, G, R, X bytes. Converts
    /// `min(src.len(), dst.len()) / 4` pixels; a trailing partial pixel is left alone.
    pub fn convert_row(self, src: &[u8], dst: &mut [u8]) {
        let n = src.len().min(dst.len()) / OUTPUT_BPP * OUTPUT_BPP;
        let (src, dst) = (&src[..n], &mut dst[..n]);
        let swizzle = self.swizzle();
        if swizzle == Swizzle::Identity {
            dst.copy_from_slice(src);
            return;
        }
        for (s, d) in src.chunks_exact(4).zip(dst.chunks_exact_mut(4)) {
            let v = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            let out = match swizzle {
                Swizzle::Identity => v,
                Swizzle::Reverse => v.swap_bytes(),
                Swizzle::SwapRedBlue => {
                    (v & 0xff00_ff00) | ((v >> 16) & 0x0000_00ff) | ((v & 0x0000_00ff) << 16)
                }
                Swizzle::RotateLeft => v.rotate_right(8),
            };
            d.copy_from_slice(&out.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One pixel with B=0x11, G=0x22, R=0x33, A/X=0x44 in each format's memory order.
    fn pixel(format: Format) -> [u8; 4] {
        let (b, g, r, a) = (0x11, 0x22, 0x33, 0x44);
        match format {
            Format::B8G8R8A8 | Format::B8G8R8X8 => [b, g, r, a],
            Format::A8R8G8B8 | Format::X8R8G8B8 => [a, r, g, b],
            Format::R8G8B8A8 | Format::R8G8B8X8 => [r, g, b, a],
            Format::A8B8G8R8 | Format::X8B8G8R8 => [a, b, g, r],
        }
    }

    const ALL: [Format; 8] = [
        Format::B8G8R8A8,
        Format::B8G8R8X8,
        Format::A8R8G8B8,
        Format::X8R8G8B8,
        Format::R8G8B8A8,
        Format::X8B8G8R8,
        Format::A8B8G8R8,
        Format::R8G8B8X8,
    ];

    #[test]
    fn every_format_converts_to_bgrx() {
        for format in ALL {
            let mut src = Vec::new();
            for _ in 0..5 {
                src.extend_from_slice(&pixel(format));
            }
            let mut dst = vec![0u8; src.len()];
            format.convert_row(&src, &mut dst);
            for px in dst.chunks_exact(4) {
                assert_eq!(px, [0x11, 0x22, 0x33, 0x44], "{format:?}");
            }
            assert_eq!(Format::from_virtio(format.to_virtio()), Some(format));
            assert_eq!(format.bytes_per_pixel(), 4);
        }
    }

    #[test]
    fn unknown_formats_and_short_buffers() {
        assert_eq!(Format::from_virtio(0), None);
        assert_eq!(Format::from_virtio(5), None);
        let mut dst = [9u8; 6];
        Format::A8R8G8B8.convert_row(&[1, 2, 3, 4, 5, 6, 7], &mut dst);
        assert_eq!(dst, [4, 3, 2, 1, 9, 9]);
        assert!(Format::B8G8R8X8.is_native() && !Format::R8G8B8A8.is_native());
    }
}
