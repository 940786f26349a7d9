//! Memory accounting: the [`MemoryBudget`] a vGPU charges before it allocates (its
//! [`MemoryPartition`](super::partition::MemoryPartition) implements it, so 2D surfaces are charged
//! to the same hard limit as device buffers), a simple atomic limit ([`HostMemoryLimit`]) and an
//! RAII [`Charge`] that gives the bytes back when dropped.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use thiserror::Error;

/// A charge was refused: it would take the budget above its total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("memory budget exceeded: {requested} bytes requested, {used} of {total} in use")]
pub struct OutOfBudget {
    /// Bytes asked for.
    pub requested: u64,
    /// Bytes in use when the charge was refused.
    pub used: u64,
    /// The budget's total.
    pub total: u64,
}

/// A host-memory budget shared by everything one VM allocates on the host.
pub trait MemoryBudget: Send + Sync {
    /// Reserves `bytes`, or refuses without changing anything.
    fn charge(&self, bytes: u64) -> Result<(), OutOfBudget>;
    /// Gives back `bytes` reserved earlier by [`MemoryBudget::charge`].
    fn release(&self, bytes: u64);
    /// Bytes currently reserved.
    fn used(&self) -> u64;
    /// The most that can be reserved.
    fn total(&self) -> u64;
}

/// A [`MemoryBudget`] that is a plain atomic counter with a limit.
#[derive(Debug)]
pub struct HostMemoryLimit {
    used: AtomicU64,
    total: u64,
}

impl HostMemoryLimit {
    /// A budget of `total` bytes, none used.
    pub fn new(total: u64) -> Self {
        HostMemoryLimit {
            used: AtomicU64::new(0),
            total,
        }
    }
}

impl MemoryBudget for HostMemoryLimit {
    fn charge(&self, bytes: u64) -> Result<(), OutOfBudget> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.total)
            })
            .map(|_| ())
            .map_err(|used| OutOfBudget {
                requested: bytes,
                used,
                total: self.total,
            })
    }

    fn release(&self, bytes: u64) {
        // Saturate rather than wrap if a caller releases more than it charged.
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    fn total(&self) -> u64 {
        self.total
    }
}

/// Bytes reserved from a budget; released when dropped.
pub struct Charge {
    budget: Arc<dyn MemoryBudget>,
    bytes: u64,
}

impl Charge {
    /// Reserves `bytes` from `budget`.
    pub fn new(budget: &Arc<dyn MemoryBudget>, bytes: u64) -> Result<Self, OutOfBudget> {
        budget.charge(bytes)?;
        Ok(Charge {
            budget: Arc::clone(budget),
            bytes,
        })
    }

    /// Bytes held by this charge.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl fmt::Debug for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Charge")
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_refuses_above_total_and_recovers() {
        let limit = HostMemoryLimit::new(100);
        limit.charge(60).unwrap();
        let err = limit.charge(41).unwrap_err();
        assert_eq!(
            err,
            OutOfBudget {
                requested: 41,
                used: 60,
                total: 100
            }
        );
        limit.charge(40).unwrap();
        assert_eq!(limit.used(), 100);
        limit.release(100);
        assert_eq!(limit.used(), 0);
        assert!(limit.charge(u64::MAX).is_err());
    }

    #[test]
    fn charge_releases_on_drop() {
        let budget: Arc<dyn MemoryBudget> = Arc::new(HostMemoryLimit::new(10));
        let c = Charge::new(&budget, 7).unwrap();
        assert_eq!(c.bytes(), 7);
        assert!(Charge::new(&budget, 4).is_err());
        drop(c);
        assert_eq!(budget.used(), 0);
    }
}
