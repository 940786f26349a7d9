//! Guest backing of a buffer resource: the staging area TRANSFER_*_3D copy through. Validated
//! once at attach like 2D backing, then read and written by byte range.

use std::mem::size_of;

use vgpu_protocol::MemEntries;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::backing::MAX_BACKING_BYTES;
use super::error::GpuError;

#[derive(Copy, Clone, Debug)]
struct Entry {
    addr: u64,
    len: u32,
    start: u64,
}

/// The guest pages behind a buffer, in order.
#[derive(Debug)]
pub struct Staging {
    entries: Vec<Entry>,
    total: u64,
}

impl Staging {
    /// Host bytes holding `nr_entries` entries costs (charged before attach).
    pub fn host_bytes(nr_entries: usize) -> u64 {
        (nr_entries as u64).saturating_mul(size_of::<Entry>() as u64)
    }

    /// Validates `entries` (non-empty, every entry non-empty and inside guest memory, total at
    /// most [`MAX_BACKING_BYTES`]) and stores them.
    pub fn new<M: GuestMemory + ?Sized>(
        mem: &M,
        entries: MemEntries<'_>,
    ) -> Result<Self, GpuError> {
        if entries.is_empty() {
            return Err(GpuError::BackingEmpty);
        }
        let mut stored = Vec::new();
        stored
            .try_reserve_exact(entries.len())
            .map_err(|_| GpuError::AllocFailed(Self::host_bytes(entries.len())))?;
        let mut total = 0u64;
        for (index, e) in entries.iter().enumerate() {
            if e.length == 0 {
                return Err(GpuError::BackingEmptyEntry {
                    index,
                    addr: e.addr,
                });
            }
            let inside = e.addr.checked_add(u64::from(e.length)).is_some()
                && mem.check_range(GuestAddress(e.addr), e.length as usize, Permissions::Read);
            if !inside {
                return Err(GpuError::BackingOutsideMemory {
                    index,
                    addr: e.addr,
                    len: e.length,
                });
            }
            stored.push(Entry {
                addr: e.addr,
                len: e.length,
                start: total,
            });
            total = total.saturating_add(u64::from(e.length));
        }
        if total > MAX_BACKING_BYTES {
            return Err(GpuError::BackingTooLarge {
                total,
                limit: MAX_BACKING_BYTES,
            });
        }
        Ok(Staging {
            entries: stored,
            total,
        })
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True when empty (never, once validated).
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Calls `f(guest_addr, buf_range)` for each guest piece of backing bytes
    /// `offset..offset + len`, in order. The caller has checked the range against [`Self::len`].
    fn pieces(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), GpuError>,
    ) -> Result<(), GpuError> {
        let mut idx = self
            .entries
            .partition_point(|e| e.start <= offset)
            .saturating_sub(1);
        let mut pos = offset;
        let mut done = 0usize;
        while done < len {
            let Some(e) = self.entries.get(idx) else {
                return Err(GpuError::BeyondBacking {
                    resource: 0,
                    offset,
                    len: len as u64,
                    total: self.total,
                });
            };
            let within = pos.saturating_sub(e.start);
            let avail = u64::from(e.len).saturating_sub(within);
            let n = usize::try_from(avail).unwrap_or(usize::MAX).min(len - done);
            f(GuestAddress(e.addr + within), done..done + n)?;
            done += n;
            pos += n as u64;
            idx += 1;
        }
        Ok(())
    }

    fn check(&self, offset: u64, len: usize) -> Result<(), GpuError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.total => Ok(()),
            _ => Err(GpuError::BeyondBacking {
                resource: 0,
                offset,
                len: len as u64,
                total: self.total,
            }),
        }
    }

    /// Copies backing bytes `offset..offset + dst.len()` into `dst`.
    pub fn read<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), GpuError> {
        self.check(offset, dst.len())?;
        self.pieces(offset, dst.len(), |addr, r| {
            let len = r.len();
            let chunk = dst
                .get_mut(r)
                .ok_or(GpuError::GuestMemory { addr: addr.0, len })?;
            mem.read_slice(chunk, addr)
                .map_err(|_| GpuError::GuestMemory { addr: addr.0, len })
        })
    }

    /// Copies `src` into backing bytes `offset..offset + src.len()`.
    pub fn write<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        offset: u64,
        src: &[u8],
    ) -> Result<(), GpuError> {
        self.check(offset, src.len())?;
        self.pieces(offset, src.len(), |addr, r| {
            let len = r.len();
            let chunk = src
                .get(r)
                .ok_or(GpuError::GuestMemoryWrite { addr: addr.0, len })?;
            mem.write_slice(chunk, addr)
                .map_err(|_| GpuError::GuestMemoryWrite { addr: addr.0, len })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::backing::tests::entries_bytes;
    use super::*;
    use vgpu_protocol::command::mem_entries_from_bytes;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn reads_and_writes_across_entries() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let bytes = entries_bytes(&[(0x1000, 0x10), (0x3000, 0x20)]);
        let s = Staging::new(&mem, mem_entries_from_bytes(&bytes).unwrap()).unwrap();
        assert_eq!(s.len(), 0x30);
        let data: Vec<u8> = (0..0x20u8).collect();
        s.write(&mem, 0x8, &data).unwrap();
        let mut back = [0u8; 0x20];
        s.read(&mem, 0x8, &mut back).unwrap();
        assert_eq!(&back[..], &data[..]);
        let mut direct = [0u8; 8];
        mem.read_slice(&mut direct, GuestAddress(0x1008)).unwrap();
        assert_eq!(&direct, &data[..8]);
        mem.read_slice(&mut direct, GuestAddress(0x3000)).unwrap();
        assert_eq!(&direct, &data[8..16]);
        assert!(s.write(&mem, 0x29, &data[..8]).is_err());
        assert!(s.read(&mem, u64::MAX, &mut back).is_err());
    }
}
