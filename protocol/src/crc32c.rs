//! Reference CRC-32C (Castagnoli, reflected polynomial 0x82F6_3B78, as iSCSI: initial value !0,
//! final xor !0), the result the CRC32C kernel must produce. Table driven, no allocation.

/// Reflected Castagnoli polynomial.
const POLY: u32 = 0x82F6_3B78;

const fn make_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static TABLE: [u32; 256] = make_table();

/// Continues a CRC-32C over `data`. Start with `state = !0`; the checksum is `!state` at the end
/// (use [`crc32c`] for the whole thing at once).
pub fn crc32c_update(mut state: u32, data: &[u8]) -> u32 {
    for &b in data {
        let idx = (state ^ u32::from(b)) & 0xff;
        // idx < 256, so the lookup always succeeds.
        let t = TABLE.get(idx as usize).copied().unwrap_or(0);
        state = (state >> 8) ^ t;
    }
    state
}

/// The CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // RFC 3720 B.4 and the usual check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46DD_794E);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn incremental_equals_whole() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let (a, b) = data.split_at(377);
        assert_eq!(!crc32c_update(crc32c_update(!0, a), b), crc32c(&data));
    }
}
