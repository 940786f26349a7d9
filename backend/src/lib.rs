//! vgpud library: vhost-user glue, virtio-gpu device and the GPU driver core.
pub mod config;
pub mod control;
pub mod demo;
pub mod device;
pub mod driver;
pub mod libvirt;
pub mod log_limit;
pub mod logging;
pub mod metrics;
pub mod options;
pub mod sandbox;
pub mod signals;
pub mod vhost;
