//! AFL++ entry point of the `device` target (see `vgpu_fuzz::device`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        vgpu_fuzz::device::run(data);
    });
}
