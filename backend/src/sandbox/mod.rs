//! The daemon's sandbox: per-thread seccomp filters and Landlock (see the submodules).

/// Name prefix of the per-VM display threads ([`crate::vhost::display_link`]).
pub const DISPLAY_THREAD_PREFIX: &str = "vgpud-display-";
