//! Test frontend library: a real vhost-user frontend used by tests and benchmarks.
//!
//! It plays QEMU's role towards a vhost-user GPU backend (ours or QEMU's own):
//! - [`memory`]: memfd-backed guest memory with a bump allocator.
//! - [`vring`]: the driver side of split virtqueues (well-formed and malformed chains, EVENT_IDX).
//! - [`gpu_socket`]: QEMU's side of the GPU socket (answers and records backend messages).
//! - [`connection`]: the vhost-user setup sequence, GPU_SET_SOCKET, kicks and calls.
//! - [`client`]: `GpuClient`, virtio-gpu commands and 2D helpers.
//! - [`backend`]: spawning `vgpud` or QEMU's `vhost-user-gpu` on a temporary socket.
//! - [`conformance`]: the reusable 2D conformance sequence.
//! - [`libvirt`]: a private libvirtd for tests, `virsh`, and a guest console on a socket.
//!
//! Typical use (a test):
//! ```no_run
//! use vgpu_tests::{Backend, FrontendConfig, GpuClient};
//! let backend = Backend::qemu_or_skip().expect("QEMU's vhost-user-gpu installed");
//! let mut client = GpuClient::connect(backend.socket(), &FrontendConfig::default()).unwrap();
//! vgpu_tests::conformance::run_2d_conformance(&mut client, vgpu_tests::conformance::DisplayModel::Forwarded);
//! ```
//! Tests against `vgpud` need it built first (`cargo build -p vgpu-backend`, found as
//! `target/<profile>/vgpud` or through `VGPUD`); they skip otherwise unless `VGPU_REQUIRE_VGPUD` is
//! set. `VGPU_TEST_SHOW_LOG=1` prints a backend's captured log when it is dropped.

#![deny(missing_docs)]

pub mod backend;
pub mod channel;
pub mod client;
pub mod conformance;
pub mod connection;
pub mod engines;
pub mod error;
pub mod gpu_socket;
pub mod guest;
pub mod libvirt;
pub mod memory;
pub mod vring;
// ---- fuzz helper: a checked well-behaved VM (hostile-guest test, soak benchmark)
pub mod workload;

pub use backend::{Backend, BackendKind};
pub use client::{Completion, GpuClient};
pub use connection::{Connection, FrontendConfig};
pub use error::{FrontendError, Result};
pub use gpu_socket::{GpuMsg, GpuPeer, GpuPeerConfig};
pub use memory::GuestMemory;
pub use vring::{RawDesc, Segment, SplitQueue, UsedElem};
