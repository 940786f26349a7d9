//! vhost-user glue: everything between QEMU's `vhost-user-gpu-pci` and the per-VM virtio-gpu device.
//!
//! - [`backend`]: the `VhostUserBackend` (features, config space, GPU socket, resets).
//! - [`queue`]: descriptor chains → requests → device → responses.
//! - [`display`]: the device's display sink over QEMU's vhost-user-gpu socket.
//! - [`display_link`]: the per-VM display thread, with timeouts, stall and recovery.
//! - [`daemon`]: listeners, the reconnect loop and shutdown.
//! - [`fd_relay`]: serving a connected `--fd` by relaying it to a listening socket.
//! - [`socket_access`]: group and mode of the vGPU sockets.

pub mod backend;
pub mod completion;
pub mod daemon;
pub mod display;
pub mod display_link;
pub mod fd_relay;
pub mod inflight;
pub mod queue;
pub mod socket_access;
