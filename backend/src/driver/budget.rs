//! The memory-budget interface shared with the virtio-gpu device: a vGPU's
//! [`MemoryPartition`](super::partition::MemoryPartition) implements it, so 2D surfaces are
//! charged to the same hard limit as device buffers.

pub use crate::device::budget::{MemoryBudget, OutOfBudget};
