//! Runs files through a fuzz target outside AFL, with panics shown in full:
//! `vgpu-fuzz-replay <target> <file>...` (targets: decoder, channel, device, control, spirv).
fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_default();
    let Some((_, run)) = vgpu_fuzz::TARGETS.iter().find(|(t, _)| *t == target) else {
        eprintln!("usage: vgpu-fuzz-replay <decoder|channel|device|control|spirv> <file>...");
        std::process::exit(2);
    };
    for path in args {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        run(&bytes);
        println!("{path}: ok");
    }
}
