//! vgpud entry point.

fn main() {}
