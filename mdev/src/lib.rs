//! vGPU types in the style of Linux mediated devices (mdev).
//!
//! A [`VgpuType`] says how much of the device one vGPU gets: a contiguous framebuffer partition of
//! `framebuffer_bytes`, at most `max_instances` such vGPUs per device, the display limits the guest
//! sees, and a scheduling `weight` (used by the fixed-share policy). A [`TypeTable`] holds the
//! built-in types ([`TypeTable::builtin`]) and can be extended or overridden from a TOML or JSON
//! file ([`TypeTable::load_file`]). [`ctl`] is the client of a running `vgpud`'s control socket
//! behind the `vgpuctl` tool.

#![deny(missing_docs)]

pub mod ctl;
pub mod proto;
mod size;
mod table;
mod vgpu_type;

pub use size::{format_size, parse_size};
pub use table::{TypeFile, TypeTable};
pub use vgpu_type::{VgpuType, MAX_HEADS, MAX_INSTANCES, MAX_WEIGHT, TIMESLICE_RANGE_US};

/// Errors from building, validating or loading vGPU types.
#[derive(Debug, thiserror::Error)]
pub enum MdevError {
    /// A type field is out of range; the message names the field.
    #[error("vGPU type {name:?}: {reason}")]
    InvalidType {
        /// The type's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A size string such as `1024M` could not be parsed.
    #[error("invalid size {0:?} (expected bytes or a number with K, M, G or T)")]
    InvalidSize(String),
    /// The type file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The type file is not valid TOML for a [`TypeFile`].
    #[error("{path}: {source}")]
    Toml {
        /// The file.
        path: String,
        /// The parse error.
        #[source]
        source: toml::de::Error,
    },
    /// The type file is not valid JSON for a [`TypeFile`].
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The same type name appears twice in one file.
    #[error("vGPU type {0:?} is defined twice in one file")]
    Duplicate(String),
}
