//! AFL++ entry point of the `channel` target (see `vgpu_fuzz::channel`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        vgpu_fuzz::channel::run(data);
    });
}
