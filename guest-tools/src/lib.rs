//! `vgpu-smi`: guest-side tools for a vgpu-mediator vGPU. Everything goes through the stock
//! Linux `virtio_gpu` DRM driver (render node ioctls), so the tools work in any guest whose
//! device was negotiated with VIRGL.
//!
//! - [`drm`]: raw ioctls and their structs.
//! - [`device`]: render-node discovery, capset check, buffers, submission.
//! - [`smi`]: the status table / JSON.
//! - [`bench`]: kernel throughput and latency with verification of every result.
//! - [`memtest`]: framebuffer limit, zero-fill and free checks.
//! - [`reference`]: CPU references and the seeded input generator.
//! - [`error`]: errors and exit codes.

#![deny(missing_docs)]

pub mod bench;
pub mod device;
pub mod drm;
pub mod error;
pub mod memtest;
pub mod reference;
pub mod smi;
