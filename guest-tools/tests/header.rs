//! `include/vgpu.h` is what cbindgen generates from `src/capi.rs`: this test regenerates it and
//! fails when the committed header differs. `VGPU_UPDATE_HEADER=1` rewrites the header instead.

use std::path::Path;

#[test]
fn header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/capi.rs"))
        .generate()
        .expect("cbindgen")
        .write(&mut generated);
    let path = crate_dir.join("include/vgpu.h");
    if std::env::var("VGPU_UPDATE_HEADER").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: run `VGPU_UPDATE_HEADER=1 cargo test -p vgpu-guest-tools --test header`",
        path.display()
    );
}
