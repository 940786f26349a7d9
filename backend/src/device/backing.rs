//! Guest scatter-gather backing of a resource: validated once at attach, then read (transfers to
//! the host) and written (TRANSFER_FROM_HOST_3D) by byte range, straight from and to guest memory.
//!
//! Entries that continue each other in guest memory (a driver's pages that happen to be
//! consecutive) are merged into one run at attach, so a contiguous stretch is always copied with a
//! single memcpy. Reads resolve the memory region once and reuse it for the following runs while
//! they stay inside it (plain guest memory has one or two regions), instead of a region lookup and
//! slice iterator per entry.

use std::mem::size_of;

use vgpu_protocol::MemEntries;
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
    Permissions,
};

use super::error::GpuError;

/// Largest total backing accepted for one resource (QEMU bounds nothing; we bound it).
pub const MAX_BACKING_BYTES: u64 = 4 << 30;

/// One validated run: one entry, or several that continue each other in guest memory.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// Guest physical address.
    addr: u64,
    /// Length in bytes (non-zero).
    len: u64,
    /// Offset of this run's first byte within the whole backing.
    start: u64,
}

/// The guest pages behind a resource, in order.
#[derive(Debug)]
pub struct Backing {
    /// Runs of guest-contiguous bytes, in backing order.
    entries: Vec<Entry>,
    /// Entries the guest attached (before merging).
    attached: usize,
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
        let mut stored: Vec<Entry> = Vec::new();
        stored
            .try_reserve_exact(entries.len())
            .map_err(|_| GpuError::AllocFailed(Self::host_bytes(entries.len())))?;
        let mut start = 0u64;
        for e in entries.iter() {
            let len = u64::from(e.length);
            match stored.last_mut() {
                // Continues the previous run in guest memory (no overflow: both were checked
                // against guest memory, and the sum is bounded by `total`).
                Some(prev) if prev.addr.checked_add(prev.len) == Some(e.addr) => prev.len += len,
                _ => stored.push(Entry {
                    addr: e.addr,
                    len,
                    start,
                }),
            }
            start += len;
        }
        stored.shrink_to_fit();
        Ok(Backing {
            entries: stored,
            attached: entries.len(),
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

    /// Number of entries the guest attached.
    pub fn num_entries(&self) -> usize {
        self.attached
    }

    /// Number of guest-contiguous runs those entries form (what a full read copies one by one).
    pub fn num_runs(&self) -> usize {
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
        let runs = self.runs_from(offset);
        match mem.physical_memory() {
            Some(phys) => {
                let mut region = None;
                copy_runs(runs, offset, dst.len(), |addr, range| {
                    dst.get_mut(range)
                        .is_some_and(|chunk| read_physical(phys, &mut region, addr, chunk))
                })
            }
            None => copy_runs(runs, offset, dst.len(), |addr, range| {
                dst.get_mut(range)
                    .is_some_and(|chunk| mem.read_slice(chunk, GuestAddress(addr)).is_ok())
            }),
        }
        .map_err(|(addr, len)| GpuError::GuestMemory { addr, len })
    }

    /// Copies `src` straight into backing bytes `offset..offset + src.len()` in guest memory
    /// (TRANSFER_FROM_HOST_3D). A range past the end is an error and writes nothing.
    pub fn write_from<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        offset: u64,
        src: &[u8],
    ) -> Result<(), GpuError> {
        let want = src.len() as u64;
        if offset.checked_add(want).is_none_or(|e| e > self.total) {
            return Err(GpuError::SourceBeyondBacking {
                resource_id: 0,
                offset,
                end: offset.saturating_add(want),
                total: self.total,
            });
        }
        if src.is_empty() {
            return Ok(());
        }
        copy_runs(self.runs_from(offset), offset, src.len(), |addr, range| {
            src.get(range)
                .is_some_and(|chunk| mem.write_slice(chunk, GuestAddress(addr)).is_ok())
        })
        .map_err(|(addr, len)| GpuError::GuestMemory { addr, len })
    }

    /// The runs from the one holding `offset` (the last one starting at or before it) on.
    fn runs_from(&self, offset: u64) -> &[Entry] {
        let first = self
            .entries
            .partition_point(|e| e.start <= offset)
            .saturating_sub(1);
        self.entries.get(first..).unwrap_or_default()
    }
}

/// Walks backing bytes `offset..offset + len` over `runs` (the first of which holds `offset`),
/// calling `copy(guest_addr, range_in_caller_buffer)` once per guest-contiguous piece; on failure
/// returns the address and length of the piece that could not be copied.
fn copy_runs(
    runs: &[Entry],
    offset: u64,
    len: usize,
    mut copy: impl FnMut(u64, std::ops::Range<usize>) -> bool,
) -> Result<(), (u64, usize)> {
    let mut pos = offset;
    let mut done = 0usize;
    for e in runs {
        if done == len {
            break;
        }
        // `pos` lies inside this run: the first run holds `offset`, and each later run starts
        // where the previous one ended.
        let within = pos.saturating_sub(e.start);
        let avail = e.len.saturating_sub(within);
        let n = usize::try_from(avail).unwrap_or(usize::MAX).min(len - done);
        let addr = e.addr.saturating_add(within);
        if n == 0 || !copy(addr, done..done + n) {
            return Err((addr, n));
        }
        done += n;
        pos += n as u64;
    }
    if done == len {
        Ok(())
    } else {
        Err((pos, len - done))
    }
}

/// Reads `buf.len()` bytes at guest address `addr` of plain (IOMMU-less) guest memory with one
/// memcpy when they lie in one region; a read crossing regions goes through the generic path.
/// `cached` is the region the previous read used; it is looked up again only when `addr` is not
/// inside it.
fn read_physical<'a, P: GuestMemoryBackend + ?Sized>(
    phys: &'a P,
    cached: &mut Option<&'a P::R>,
    addr: u64,
    buf: &mut [u8],
) -> bool {
    let hit = cached.filter(|r| {
        addr.checked_sub(r.start_addr().0)
            .is_some_and(|within| within < r.len())
    });
    let region = match hit {
        Some(r) => r,
        None => match phys.find_region(GuestAddress(addr)) {
            Some(r) => {
                *cached = Some(r);
                r
            }
            None => return false,
        },
    };
    let within = addr - region.start_addr().0;
    let fits = within
        .checked_add(buf.len() as u64)
        .is_some_and(|end| end <= region.len());
    if fits {
        if let Ok(slice) = region.get_slice(MemoryRegionAddress(within), buf.len()) {
            return slice.copy_to(buf) == buf.len();
        }
    }
    phys.read_slice(buf, GuestAddress(addr)).is_ok()
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

    #[test]
    fn writes_across_entries_and_regions() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
        ])
        .unwrap();
        let b = backing(&mem, &[(0xff0, 0x20), (0x100, 0x10), (0x1800, 0x40)]).unwrap();
        let src: Vec<u8> = (0..0x70u32).map(|i| (i * 3 + 1) as u8).collect();
        b.write_from(&mem, 0, &src).unwrap();
        let mut back = [0u8; 0x70];
        b.read_into(&mem, 0, &mut back).unwrap();
        assert_eq!(&back[..], &src[..]);
        let mut raw = [0u8; 0x10];
        mem.read_slice(&mut raw, GuestAddress(0x100)).unwrap();
        assert_eq!(&raw[..], &src[0x20..0x30]);
        // Past the end: an error, and nothing written.
        mem.write_slice(&[0u8; 0x40], GuestAddress(0x1800)).unwrap();
        assert!(matches!(
            b.write_from(&mem, 0x6f, &[9, 9]).unwrap_err(),
            GpuError::SourceBeyondBacking { .. }
        ));
        let mut tail = [0u8; 0x40];
        mem.read_slice(&mut tail, GuestAddress(0x1800)).unwrap();
        assert_eq!(tail, [0u8; 0x40]);
    }

    #[test]
    fn merges_guest_contiguous_entries() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let data: Vec<u8> = (0..0x10000u32).map(|i| (i * 13 + 5) as u8).collect();
        mem.write_slice(&data, GuestAddress(0)).unwrap();
        // Pages 2,3,4 in order, then 9, then 5: three runs.
        let b = backing(
            &mem,
            &[
                (0x2000, 0x1000),
                (0x3000, 0x1000),
                (0x4000, 0x800),
                (0x4800, 0x800),
                (0x9000, 0x1000),
                (0x5000, 0x1000),
            ],
        )
        .unwrap();
        assert_eq!((b.num_entries(), b.num_runs(), b.len()), (6, 3, 0x5000));
        let mut all = vec![0u8; 0x5000];
        b.read_into(&mem, 0, &mut all).unwrap();
        assert_eq!(&all[..0x3000], &data[0x2000..0x5000]);
        assert_eq!(&all[0x3000..0x4000], &data[0x9000..0xa000]);
        assert_eq!(&all[0x4000..], &data[0x5000..0x6000]);
        // A range starting inside a merged run and ending inside the last one.
        let mut mid = vec![0u8; 0x2000];
        b.read_into(&mem, 0x2800, &mut mid).unwrap();
        assert_eq!(&mid[..0x800], &data[0x4800..0x5000]);
        assert_eq!(&mid[0x800..0x1800], &data[0x9000..0xa000]);
        assert_eq!(&mid[0x1800..], &data[0x5000..0x5800]);
    }
}
