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
//! - [`compute`]: the guest library (`Device`, `Buffer`, `Module`, `Launch`), re-exported here.

#![deny(missing_docs)]

pub mod bench;
pub mod capi;
pub mod compute;
pub mod device;
pub mod drm;
pub mod error;
pub mod kbench;
pub mod kernels;
pub mod memtest;
pub mod reference;
pub mod run;
pub mod runspec;
pub mod smi;

pub use compute::{Binding, Buffer, Caps, Device, Launch, Module, PendingLaunch};
pub use error::{Error, Result};

/// A report as pretty JSON (an `{"error": ...}` object if it cannot be serialized).
pub fn pretty_json<T: serde::Serialize>(report: &T) -> String {
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
