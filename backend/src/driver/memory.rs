//! Device memory: one allocator hands out contiguous, static partitions (first fit).

use std::sync::{Arc, Mutex, MutexGuard};

use thiserror::Error;

/// Bytes in a MiB.
pub const MIB: u64 = 1 << 20;

/// Device memory could not be reserved.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "device memory full: {requested} bytes requested, {free} free, largest contiguous {largest_free}"
)]
pub struct DeviceFull {
    /// Bytes asked for.
    pub requested: u64,
    /// Free bytes in total.
    pub free: u64,
    /// The largest contiguous free range.
    pub largest_free: u64,
}

/// The device's memory: `total` bytes split into contiguous partitions.
#[derive(Debug)]
pub struct DeviceMemory {
    total: u64,
    /// Reserved `(offset, size)` ranges, sorted by offset, never overlapping.
    reserved: Mutex<Vec<(u64, u64)>>,
}

/// A contiguous range of device memory; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    memory: Arc<DeviceMemory>,
    offset: u64,
    size: u64,
}

impl DeviceMemory {
    /// Device memory of `mib` MiB.
    pub fn with_mib(mib: u64) -> Arc<Self> {
        Self::new(mib.saturating_mul(MIB))
    }

    /// Device memory of `total` bytes.
    pub fn new(total: u64) -> Arc<Self> {
        Arc::new(Self {
            total,
            reserved: Mutex::new(Vec::new()),
        })
    }

    fn ranges(&self) -> MutexGuard<'_, Vec<(u64, u64)>> {
        // A panic while holding this lock cannot leave the list inconsistent (pushes are atomic),
        // so a poisoned lock is still usable.
        self.reserved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Total bytes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes reserved by partitions.
    pub fn used(&self) -> u64 {
        self.ranges().iter().map(|&(_, size)| size).sum()
    }

    /// Free `(offset, size)` gaps in address order.
    pub fn free_ranges(&self) -> Vec<(u64, u64)> {
        Self::gaps(&self.ranges(), self.total)
    }

    fn gaps(reserved: &[(u64, u64)], total: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut cursor = 0u64;
        for &(offset, size) in reserved {
            if offset > cursor {
                gaps.push((cursor, offset - cursor));
            }
            cursor = offset.saturating_add(size);
        }
        if total > cursor {
            gaps.push((cursor, total - cursor));
        }
        gaps
    }

    /// Reserves `size` contiguous bytes at the lowest offset where they fit.
    pub fn reserve(self: &Arc<Self>, size: u64) -> Result<Reservation, DeviceFull> {
        let mut reserved = self.ranges();
        let gaps = Self::gaps(&reserved, self.total);
        let fit = gaps.iter().find(|&&(_, len)| size > 0 && len >= size);
        let Some(&(offset, _)) = fit else {
            return Err(DeviceFull {
                requested: size,
                free: gaps.iter().map(|g| g.1).sum(),
                largest_free: gaps.iter().map(|g| g.1).max().unwrap_or(0),
            });
        };
        let at = reserved.partition_point(|&(o, _)| o < offset);
        reserved.insert(at, (offset, size));
        Ok(Reservation {
            memory: Arc::clone(self),
            offset,
            size,
        })
    }
}

impl Reservation {
    /// Offset of the range in device memory.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Size of the range.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut reserved = self.memory.ranges();
        if let Some(at) = reserved.iter().position(|&r| r == (self.offset, self.size)) {
            reserved.remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_reuses_holes_and_reports_full() {
        let mem = DeviceMemory::with_mib(10);
        let a = mem.reserve(4 * MIB).unwrap();
        let b = mem.reserve(4 * MIB).unwrap();
        assert_eq!((a.offset(), b.offset()), (0, 4 * MIB));
        let err = mem.reserve(3 * MIB).unwrap_err();
        assert_eq!(err.free, 2 * MIB);
        assert_eq!(err.largest_free, 2 * MIB);
        drop(a);
        assert_eq!(mem.used(), 4 * MIB);
        let c = mem.reserve(3 * MIB).unwrap();
        assert_eq!(c.offset(), 0);
        assert_eq!(mem.free_ranges(), vec![(3 * MIB, MIB), (8 * MIB, 2 * MIB)]);
        // 3 MiB free in total but not contiguous.
        assert!(mem.reserve(3 * MIB).is_err());
        assert!(mem.reserve(0).is_err());
        drop((b, c));
        assert_eq!(mem.used(), 0);
        assert_eq!(mem.reserve(10 * MIB).unwrap().size(), 10 * MIB);
    }
}
