//! AFL++ entry point of the `decoder` target (see `vgpu_fuzz::decoder`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        vgpu_fuzz::decoder::run(data);
    });
}
