//! Relay for `--fd` (in progress).
