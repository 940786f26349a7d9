//! A vGPU's framebuffer partition: a hard memory limit every allocation is charged against.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::budget::HostMemoryLimit;
use super::budget::{MemoryBudget, OutOfBudget};
use super::engine::PartitionArena;
use super::memory::Reservation;

/// One vGPU's slice of device memory. Everything the vGPU allocates (buffers, command buffers,
/// 2D surfaces through [`MemoryBudget`]) is charged here before it exists; past the partition's
/// size the charge fails with [`OutOfBudget`].
pub struct MemoryPartition {
    vgpu_id: u32,
    reservation: Reservation,
    /// The hard limit: a counter capped at the reservation's size.
    limit: HostMemoryLimit,
    peak: AtomicU64,
    /// The engine memory buffers are carved from (`None`: host memory).
    arena: Option<Arc<dyn PartitionArena>>,
}

impl MemoryPartition {
    /// Wraps a device-memory reservation as the partition of vGPU `vgpu_id`.
    pub fn new(vgpu_id: u32, reservation: Reservation) -> Arc<Self> {
        Self::with_arena(vgpu_id, reservation, None)
    }

    /// Like [`MemoryPartition::new`], with buffers carved from the engine memory `arena`.
    pub fn with_arena(
        vgpu_id: u32,
        reservation: Reservation,
        arena: Option<Arc<dyn PartitionArena>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            vgpu_id,
            limit: HostMemoryLimit::new(reservation.size()),
            reservation,
            peak: AtomicU64::new(0),
            arena,
        })
    }

    /// The engine memory buffers are carved from (`None`: host memory).
    pub fn arena(&self) -> Option<&Arc<dyn PartitionArena>> {
        self.arena.as_ref()
    }

    /// The owning vGPU's id.
    pub fn vgpu_id(&self) -> u32 {
        self.vgpu_id
    }

    /// Offset of the partition in device memory.
    pub fn offset(&self) -> u64 {
        self.reservation.offset()
    }

    /// Bytes still available.
    pub fn available(&self) -> u64 {
        self.total().saturating_sub(self.used())
    }

    /// The most ever in use at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Charges `bytes` and returns a guard that releases them when dropped (command buffers and
    /// other driver-side allocations).
    pub fn charge_guard(self: &Arc<Self>, bytes: u64) -> Result<PartitionCharge, OutOfBudget> {
        self.charge(bytes)?;
        Ok(PartitionCharge {
            partition: Arc::clone(self),
            bytes,
        })
    }
}

impl MemoryBudget for MemoryPartition {
    fn charge(&self, bytes: u64) -> Result<(), OutOfBudget> {
        self.limit.charge(bytes)?;
        self.peak.fetch_max(self.limit.used(), Ordering::Relaxed);
        Ok(())
    }

    fn release(&self, bytes: u64) {
        self.limit.release(bytes);
    }

    fn used(&self) -> u64 {
        self.limit.used()
    }

    fn total(&self) -> u64 {
        self.limit.total()
    }
}

impl fmt::Debug for MemoryPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPartition")
            .field("vgpu_id", &self.vgpu_id)
            .field("offset", &self.offset())
            .field("used", &self.used())
            .field("total", &self.total())
            .finish()
    }
}

/// Bytes charged to a partition; released when dropped.
#[derive(Debug)]
pub struct PartitionCharge {
    partition: Arc<MemoryPartition>,
    bytes: u64,
}

impl PartitionCharge {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for PartitionCharge {
    fn drop(&mut self) {
        self.partition.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory::{DeviceMemory, MIB};
    use super::*;

    #[test]
    fn hard_limit_and_guards() {
        let mem = DeviceMemory::with_mib(8);
        let p = MemoryPartition::new(1, mem.reserve(2 * MIB).unwrap());
        assert_eq!(p.total(), 2 * MIB);
        let g = p.charge_guard(MIB).unwrap();
        p.charge(MIB).unwrap();
        let err = p.charge(1).unwrap_err();
        assert_eq!(err.used, 2 * MIB);
        assert_eq!(p.available(), 0);
        drop(g);
        assert_eq!(p.used(), MIB);
        assert!(p.charge(u64::MAX).is_err());
        p.release(MIB);
        assert_eq!(p.used(), 0);
        assert_eq!(p.peak(), 2 * MIB);
        drop(p);
        assert_eq!(mem.used(), 0);
    }
}
