//! The GPU driver core: one [`Device`] per process shared by all VMs, partitioned into vGPUs.
//!
//! - [`memory`]/[`partition`]: static contiguous framebuffer partitions with hard limits.
//! - [`buffer`]: zeroed device buffers charged to a partition.
//! - [`job`]: validated operation lists; [`kernels`]: the compute kernels.
//! - [`engine`]: engines that run operations in bounded chunks ([`engine::cpu::CpuEngine`]).
//! - [`scheduler`]: the time-slice policy core; [`runlist`]: per-vGPU job queues;
//!   [`channel`]: submission and completion; [`stats`]: the scheduler log and counters.
//! - [`device`]: [`Device`] and [`Vgpu`], tying it together around one engine thread.
//!
//! No vhost or virtio code lives here.

pub mod budget;
pub mod buffer;
pub mod channel;
pub mod device;
pub mod engine;
pub mod job;
pub mod kernels;
pub mod memory;
pub mod module;
pub mod partition;
pub mod runlist;
pub mod scheduler;
pub mod spirv;
pub mod stats;
mod worker;

#[cfg(test)]
mod tests;

pub use budget::{Charge, HostMemoryLimit, MemoryBudget, OutOfBudget};
pub use buffer::{BufferError, DeviceBuffer};
pub use channel::{Channel, Completion, JobFailure, JobReport, JobResult, SubmitError};
pub use device::{Device, DeviceConfig, DriverError, Vgpu, VgpuInfo, DEFAULT_DEVICE_MEMORY_MIB};
pub use job::{BufRef, Job, JobError, Op};
pub use memory::{DeviceMemory, MIB};
pub use partition::MemoryPartition;
pub use scheduler::Policy;
pub use stats::{SliceRecord, VgpuStats};
pub use uuid::Uuid;
