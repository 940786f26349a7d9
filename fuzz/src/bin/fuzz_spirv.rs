//! AFL++ entry point of the `spirv` target (see `vgpu_fuzz::spirv`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        vgpu_fuzz::spirv::run(data);
    });
}
