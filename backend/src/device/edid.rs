//! EDID 1.4 base block (128 bytes) describing a virtual monitor whose preferred mode is the
//! scanout's resolution.

/// Size of an EDID base block.
pub const EDID_BLOCK_LEN: usize = 128;
/// Name in the monitor-name descriptor (at most 13 bytes).
pub const MONITOR_NAME: &[u8] = b"vgpu-mediator";
/// Refresh rate of the preferred mode, in Hz.
pub const PREFERRED_REFRESH_HZ: u32 = 60;
/// Largest width or height a detailed timing descriptor can carry.
pub const MAX_DTD_ACTIVE: u32 = 4095;

const HEADER: [u8; 8] = [0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00];
// Reduced-blanking style timings.
const H_FRONT: u32 = 48;
const H_SYNC: u32 = 32;
const H_BLANK: u32 = 160;
const V_FRONT: u32 = 3;
const V_SYNC: u32 = 6;
const V_BLANK_MIN: u32 = 23;
/// Pixel clock limit of a detailed timing descriptor (u16 in 10 kHz units).
const MAX_CLOCK_10KHZ: u64 = 0xffff;

/// Timings of the preferred mode.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Timing {
    width: u32,
    height: u32,
    v_blank: u32,
    refresh: u32,
    clock_10khz: u64,
}

fn timing(width: u32, height: u32) -> Timing {
    let width = width.clamp(1, MAX_DTD_ACTIVE);
    let height = height.clamp(1, MAX_DTD_ACTIVE);
    // At least 460 µs of vertical blanking (CVT-RB), at least 23 lines.
    let v_blank = V_BLANK_MIN.max((height * 46 * PREFERRED_REFRESH_HZ).div_ceil(100_000) + 1);
    let h_total = u64::from(width + H_BLANK);
    let v_total = u64::from(height + v_blank);
    let mut refresh = PREFERRED_REFRESH_HZ;
    let clock = |r: u32| (h_total * v_total * u64::from(r)).div_ceil(10_000);
    while refresh > 1 && clock(refresh) > MAX_CLOCK_10KHZ {
        refresh -= 1;
    }
    Timing {
        width,
        height,
        v_blank,
        refresh,
        clock_10khz: clock(refresh).min(MAX_CLOCK_10KHZ),
    }
}

fn manufacturer_id(code: &[u8; 3]) -> [u8; 2] {
    let v = code
        .iter()
        .fold(0u16, |acc, &c| (acc << 5) | u16::from(c - b'A' + 1) & 0x1f);
    v.to_be_bytes()
}

/// Physical size in millimetres at 96 dots per inch.
fn size_mm(px: u32) -> u32 {
    px * 254 / 960
}

fn detailed_timing(t: &Timing) -> [u8; 18] {
    let (w, h) = (t.width, t.height);
    let (wmm, hmm) = (size_mm(w).min(4095), size_mm(h).min(4095));
    let clock = (t.clock_10khz as u16).to_le_bytes();
    [
        clock[0],
        clock[1],
        (w & 0xff) as u8,
        (H_BLANK & 0xff) as u8,
        (((w >> 8) & 0xf) << 4 | ((H_BLANK >> 8) & 0xf)) as u8,
        (h & 0xff) as u8,
        (t.v_blank & 0xff) as u8,
        (((h >> 8) & 0xf) << 4 | ((t.v_blank >> 8) & 0xf)) as u8,
        (H_FRONT & 0xff) as u8,
        (H_SYNC & 0xff) as u8,
        (((V_FRONT & 0xf) << 4) | (V_SYNC & 0xf)) as u8,
        (((H_FRONT >> 8) & 3) << 6 | ((H_SYNC >> 8) & 3) << 4) as u8,
        (wmm & 0xff) as u8,
        (hmm & 0xff) as u8,
        (((wmm >> 8) & 0xf) << 4 | ((hmm >> 8) & 0xf)) as u8,
        0,
        0,
        // Digital separate sync, hsync positive, vsync negative (reduced blanking).
        0x1a,
    ]
}

fn range_limits(t: &Timing) -> [u8; 18] {
    let h_total = u64::from(t.width + H_BLANK);
    let h_khz = (t.clock_10khz * 10 / h_total.max(1)).clamp(1, 254) as u8;
    let max_clock_10mhz = t.clock_10khz.div_ceil(1000).clamp(1, 255) as u8;
    let max_v = (t.refresh + 15).clamp(1, 255) as u8;
    [
        0,
        0,
        0,
        0xfd,
        0,
        t.refresh.clamp(1, 50) as u8,
        max_v,
        h_khz.min(30),
        h_khz.saturating_add(1).max(31),
        max_clock_10mhz,
        0x01, // range limits only
        0x0a,
        0x20,
        0x20,
        0x20,
        0x20,
        0x20,
        0x20,
    ]
}

fn monitor_name() -> [u8; 18] {
    let mut d = [0u8; 18];
    d[3] = 0xfc;
    let name = &mut d[5..];
    name.fill(0x20);
    let n = MONITOR_NAME.len().min(13);
    name[..n].copy_from_slice(&MONITOR_NAME[..n]);
    if n < 13 {
        name[n] = 0x0a;
    }
    d
}

/// Standard timings (16:10 = 0, 4:3 = 1, 5:4 = 2, 16:9 = 3) offered when they fit the preferred mode.
const STANDARD: [(u32, u32, u8); 8] = [
    (1920, 1200, 0),
    (1920, 1080, 3),
    (1680, 1050, 0),
    (1600, 900, 3),
    (1440, 900, 0),
    (1280, 1024, 2),
    (1280, 800, 0),
    (1280, 720, 3),
];

/// Builds the EDID base block for a `width`×`height` scanout; `serial` tells monitors apart.
pub fn generate(width: u32, height: u32, serial: u32) -> [u8; EDID_BLOCK_LEN] {
    let t = timing(width, height);
    let mut e = [0u8; EDID_BLOCK_LEN];
    e[0..8].copy_from_slice(&HEADER);
    e[8..10].copy_from_slice(&manufacturer_id(b"VGM"));
    e[10..12].copy_from_slice(&0x0001u16.to_le_bytes());
    e[12..16].copy_from_slice(&serial.to_le_bytes());
    e[16] = 0; // week unspecified
    e[17] = 34; // 2024
    e[18] = 1;
    e[19] = 4;
    e[20] = 0xa0; // digital, 8 bits per colour, interface undefined
    e[21] = (size_mm(t.width) / 10).clamp(1, 255) as u8;
    e[22] = (size_mm(t.height) / 10).clamp(1, 255) as u8;
    e[23] = 120; // gamma 2.2
    e[24] = 0x06; // RGB 4:4:4, sRGB default, preferred timing is native
    e[25..35].copy_from_slice(&chromaticity_srgb());
    // Established timings that fit: 640x480@60, 800x600@60, 1024x768@60.
    let fits = |w: u32, h: u32| w <= t.width && h <= t.height;
    e[35] = if fits(640, 480) { 0x20 } else { 0 } | if fits(800, 600) { 0x01 } else { 0 };
    e[36] = if fits(1024, 768) { 0x08 } else { 0 };
    e[37] = 0;
    let mut slots = e[38..54].chunks_exact_mut(2);
    for &(w, _, aspect) in STANDARD.iter().filter(|&&(w, h, _)| fits(w, h)) {
        if let Some(slot) = slots.next() {
            slot[0] = (w / 8 - 31) as u8;
            slot[1] = (aspect << 6) | (PREFERRED_REFRESH_HZ - 60) as u8;
        }
    }
    for slot in slots {
        slot.copy_from_slice(&[0x01, 0x01]);
    }
    e[54..72].copy_from_slice(&detailed_timing(&t));
    e[72..90].copy_from_slice(&range_limits(&t));
    e[90..108].copy_from_slice(&monitor_name());
    e[108..126].copy_from_slice(&[0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e[126] = 0; // no extensions
    let sum = e[..127].iter().fold(0u8, |a, &b| a.wrapping_add(b));
    e[127] = 0u8.wrapping_sub(sum);
    e
}

/// sRGB primaries and D65 white point as the 10 chromaticity bytes.
fn chromaticity_srgb() -> [u8; 10] {
    // 10-bit fractions (value × 1024): red, green, blue, white; x then y.
    let (rx, ry, gx, gy, bx, by, wx, wy) = (655u16, 338, 307, 614, 154, 61, 320, 337);
    let lo = |v: u16| (v & 3) as u8;
    let hi = |v: u16| (v >> 2) as u8;
    [
        lo(rx) << 6 | lo(ry) << 4 | lo(gx) << 2 | lo(gy),
        lo(bx) << 6 | lo(by) << 4 | lo(wx) << 2 | lo(wy),
        hi(rx),
        hi(ry),
        hi(gx),
        hi(gy),
        hi(bx),
        hi(by),
        hi(wx),
        hi(wy),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Parsed {
        width: u32,
        height: u32,
        clock_khz: u32,
        name: String,
        has_range_limits: bool,
    }

    fn parse(e: &[u8; 128]) -> Parsed {
        assert_eq!(&e[0..8], &HEADER);
        assert_eq!(e.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0, "checksum");
        assert_eq!((e[18], e[19]), (1, 4));
        let d = &e[54..72];
        assert_ne!(
            u16::from_le_bytes([d[0], d[1]]),
            0,
            "first descriptor is a timing"
        );
        let width = u32::from(d[2]) | u32::from(d[4] >> 4) << 8;
        let height = u32::from(d[5]) | u32::from(d[7] >> 4) << 8;
        let clock_khz = u32::from(u16::from_le_bytes([d[0], d[1]])) * 10;
        let mut name = String::new();
        let mut has_range_limits = false;
        for desc in e[72..126].chunks_exact(18) {
            assert_eq!(&desc[0..3], &[0, 0, 0]);
            match desc[3] {
                0xfc => {
                    name = String::from_utf8(desc[5..].to_vec()).unwrap();
                    name = name.trim_end().to_string();
                }
                0xfd => {
                    has_range_limits = true;
                    assert!(desc[5] <= desc[6] && desc[7] <= desc[8]);
                    assert!(u32::from(desc[9]) * 10_000 >= clock_khz);
                }
                _ => {}
            }
        }
        Parsed {
            width,
            height,
            clock_khz,
            name,
            has_range_limits,
        }
    }

    #[test]
    fn preferred_mode_is_the_scanout_size() {
        for (w, h) in [
            (1280, 800),
            (1024, 768),
            (1920, 1080),
            (3840, 2160),
            (640, 480),
        ] {
            let p = parse(&generate(w, h, 7));
            assert_eq!((p.width, p.height), (w, h));
            assert!(p.clock_khz > 0);
            assert_eq!(p.name, "vgpu-mediator");
            assert!(p.has_range_limits);
        }
    }

    #[test]
    fn standard_and_established_timings_fit() {
        let e = generate(1280, 800, 0);
        assert_eq!(e[35], 0x21);
        assert_eq!(e[36], 0x08);
        for slot in e[38..54].chunks_exact(2) {
            if slot != [1, 1] {
                let w = (u32::from(slot[0]) + 31) * 8;
                assert!(w <= 1280);
            }
        }
        // 1280x800 at 60 Hz with reduced blanking: 1440 x 824 total at 60 Hz ≈ 71.2 MHz.
        assert_eq!(parse(&e).clock_khz, 71_200);
        // Tiny and huge sizes still give a valid block.
        parse(&generate(1, 1, 0));
        let big = parse(&generate(16384, 16384, 0));
        assert_eq!((big.width, big.height), (4095, 4095));
        assert_eq!(&manufacturer_id(b"VGM"), &[0x58, 0xed]);
    }
}
