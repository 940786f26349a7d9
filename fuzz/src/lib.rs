//! Fuzz targets for vgpud: pure functions from bytes that panic only on a bug.
//!
//! Each module has one `run(&[u8])` entry point. The AFL++ binaries (`src/bin/fuzz_*.rs`, built
//! with `cargo afl build -p vgpu-fuzz --features afl`) call it; the tests of this crate replay the
//! committed seed corpora (`fuzz/corpus/<target>/`) and every crash ever found
//! (`fuzz/regressions/<target>/`) through it, so a fixed crash stays fixed.
//!
//! - [`decoder`]: the virtio-gpu request/response decoder, with a re-encoding oracle.
//! - [`channel`]: the compute-channel stream validator and decoder, with a re-encoding oracle.
//! - [`device`]: the per-VM device state machine driven by decoded command sequences over fake
//!   guest memory; checks responses, sink calls and that partition bytes return to zero.
//! - [`control`]: the control-socket request parser (`vgpu_mdev::proto::parse_request`).
//! - [`spirv`]: the guest-kernel validator and instrumentation
//!   (`vgpu_backend::driver::spirv::prepare`), with an idempotence oracle.

#![deny(missing_docs)]

pub mod channel;
pub mod control;
pub mod decoder;
pub mod device;
mod reader;
pub mod seeds;
pub mod spirv;

pub use reader::Reader;

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name (the corpus folder and the binary suffix).
pub const TARGETS: [(&str, Target); 5] = [
    ("decoder", decoder::run),
    ("channel", channel::run),
    ("device", device::run),
    ("control", control::run),
    ("spirv", spirv::run),
];
