//! Memory accounting for the virtio-gpu device: the driver core's budget types
//! ([`crate::driver::budget`]), re-exported so the device layer names them locally.

pub use crate::driver::budget::{Charge, HostMemoryLimit, MemoryBudget, OutOfBudget};
