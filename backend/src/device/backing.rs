//! Guest scatter-gather backing of a resource: validated once at attach, then read by byte range.

use std::mem::size_of;

use vgpu_protocol::MemEntries;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::error::GpuError;

/// Largest total backing accepted for one resource (QEMU bounds nothing; we bound it).
pub const MAX_BACKING_BYTES: u64 = 4 << 30;

/// One validated entry.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// Guest physical address.
    addr: u64,
    /// Length in bytes (non-zero).
    len: u32,
    /// Offset of this entry's first byte within the whole backing.
    start: u64,
}

/// The guest pages behind a resource, in order.
#[derive(Debug)]
pub struct Backing {
    entries: Vec<Entry>,
    total: u64,
}

impl Backing {
    /// Host bytes that holding `nr_entries` entries costs (charged to the budget before attach).
    pub fn host_bytes(nr_entries: usize) -> u64 {
        (nr_entries as u64).saturating_mul(size_of::<Entry>() as u64)
    }

    /// Validates `entries` against `mem` (each entry non-empty and wholly inside guest memory,
    /// possibly across regions; total non-zero and at most [`MAX_BACKING_BYTES`]) and stores them.
    pub fn new<M: GuestMemory + ?Sized>(
        mem: &M,
        entries: MemEntries<'_>,
    ) -> Result<Self, GpuError> {
        if entries.is_empty() {
            return Err(GpuError::BackingEmpty);
        }
        let mut total: u64 = 0;
        for (index, e) in entries.iter().enumerate() {
            if e.length == 0 {
                return Err(GpuError::BackingEmptyEntry {
                    index,
                    addr: e.addr,
                });
            }
            let outside = GpuError::BackingOutsideMemory {
                index,
                addr: e.addr,
                len: e.length,
            };
            let len = usize::try_from(e.length).map_err(|_| outside.clone())?;
            if e.addr.checked_add(u64::from(e.length)).is_none()
                || !mem.check_range(GuestAddress(e.addr), len, Permissions::Read)
            {
                return Err(outside);
            }
            // Cannot overflow: at most 16384 entries of at most 4 GiB each.
            total = total.saturating_add(u64::from(e.length));
        }
        if total > MAX_BACKING_BYTES {
            return Err(GpuError::BackingTooLarge {
                total,
                limit: MAX_BACKING_BYTES,
            });
        }
        let mut stored = Vec::new();
        stored
            .try_reserve_exact(entries.len())
            .map_err(|_| GpuError::AllocFailed(Self::host_bytes(entries.len())))?;
        let mut start = 0u64;
        for e in entries.iter() {
            stored.push(Entry {
                addr: e.addr,
                len: e.length,
                start,
            });
            start += u64::from(e.length);
        }
        Ok(Backing {
            entries: stored,
            total,
        })
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True when the backing holds no bytes (never, once validated).
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Number of entries.
    pub fn num_entries(&self) -> usize {
        self.entries.len()
    }

    /// Copies backing bytes `offset..offset + dst.len()` straight from guest memory into `dst`.
    /// The caller checks the range against [`Backing::len`]; a range past the end is an error.
    pub fn read_into<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), GpuError> {
        let want = dst.len() as u64;
        let end = offset.checked_add(want).filter(|&e| e <= self.total);
        if end.is_none() {
            return Err(GpuError::SourceBeyondBacking {
                resource_id: 0,
                offset,
                end: offset.saturating_add(want),
                total: self.total,
            });
        }
        if dst.is_empty() {
            return Ok(());
        }
        // The entry holding `offset`: the last one starting at or before it.
        let mut idx = self
            .entries
            .partition_point(|e| e.start <= offset)
            .saturating_sub(1);
        let mut pos = offset;
        let mut done = 0usize;
        while done < dst.len() {
            let e = self.entries.get(idx).ok_or(GpuError::SourceBeyondBacking {
                resource_id: 0,
                offset,
                end: offset.saturating_add(want),
                total: self.total,
            })?;
            let within = pos - e.start;
            let avail = u64::from(e.len) - within;
            let n = usize::try_from(avail)
                .unwrap_or(usize::MAX)
                .min(dst.len() - done);
            let addr = e.addr + within;
            let chunk = dst
                .get_mut(done..done + n)
                .ok_or(GpuError::GuestMemory { addr, len: n })?;
            mem.read_slice(chunk, GuestAddress(addr))
                .map_err(|_| GpuError::GuestMemory { addr, len: n })?;
            done += n;
            pos += n as u64;
            idx += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vgpu_protocol::command::mem_entries_from_bytes;
    use vgpu_protocol::virtio_gpu::MemEntry;
    use vm_memory::{ByteValued, GuestMemoryMmap};

    pub(crate) fn entries_bytes(entries: &[(u64, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(addr, length) in entries {
            let e = MemEntry {
                addr,
                length,
                padding: 0,
            };
            out.extend_from_slice(e.as_slice());
        }
        out
    }

    fn backing(mem: &GuestMemoryMmap, entries: &[(u64, u32)]) -> Result<Backing, GpuError> {
        let bytes = entries_bytes(entries);
        Backing::new(mem, mem_entries_from_bytes(&bytes).unwrap())
    }

    #[test]
    fn validates_entries() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        assert_eq!(backing(&mem, &[]).unwrap_err(), GpuError::BackingEmpty);
        assert!(matches!(
            backing(&mem, &[(0, 16), (0x100, 0)]).unwrap_err(),
            GpuError::BackingEmptyEntry { index: 1, .. }
        ));
        assert!(matches!(
            backing(&mem, &[(0xfff0, 0x20)]).unwrap_err(),
            GpuError::BackingOutsideMemory { index: 0, .. }
        ));
        assert!(matches!(
            backing(&mem, &[(u64::MAX - 4, 0x20)]).unwrap_err(),
            GpuError::BackingOutsideMemory { .. }
        ));
        let b = backing(&mem, &[(0x1000, 0x10), (0x3000, 0x20)]).unwrap();
        assert_eq!((b.len(), b.num_entries(), b.is_empty()), (0x30, 2, false));
    }

    #[test]
    fn reads_across_entries_and_regions() {
        // Two adjacent regions: an entry crossing the boundary is accepted and read whole.
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
        ])
        .unwrap();
        let data: Vec<u8> = (0..0x2000u32).map(|i| (i * 7) as u8).collect();
        mem.write_slice(&data, GuestAddress(0)).unwrap();
        let b = backing(&mem, &[(0xff0, 0x20), (0x100, 0x10), (0x1800, 0x40)]).unwrap();
        let mut out = [0u8; 0x70];
        b.read_into(&mem, 0, &mut out).unwrap();
        assert_eq!(&out[..0x20], &data[0xff0..0x1010]);
        assert_eq!(&out[0x20..0x30], &data[0x100..0x110]);
        assert_eq!(&out[0x30..], &data[0x1800..0x1840]);
        let mut mid = [0u8; 0x14];
        b.read_into(&mem, 0x1c, &mut mid).unwrap();
        assert_eq!(&mid[..4], &data[0x100c..0x1010]);
        assert_eq!(&mid[4..], &data[0x100..0x110]);
        let mut past = [0u8; 2];
        assert!(matches!(
            b.read_into(&mem, 0x6f, &mut past).unwrap_err(),
            GpuError::SourceBeyondBacking { .. }
        ));
        assert!(b.read_into(&mem, u64::MAX, &mut past).is_err());
    }
}
