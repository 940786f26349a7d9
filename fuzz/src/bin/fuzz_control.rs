//! AFL++ entry point of the `control` target (see `vgpu_fuzz::control`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        vgpu_fuzz::control::run(data);
    });
}
