//! Test frontend library: a real vhost-user frontend used by tests and benchmarks.
