//! vgpud library: vhost-user glue, virtio-gpu device and the GPU driver core.
pub mod device;
pub mod driver;
pub mod vhost;
pub mod options;
