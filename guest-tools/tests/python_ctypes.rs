//! The Python wrapper (`python/vgpu.py`) against the shared library built with this crate, on
//! the host (no vGPU here): every function the header declares has a ctypes signature, the
//! ctypes structures have the C sizes, and an error comes back as `vgpu.Error` with the
//! library's status and message. Needs `python3`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>/libvgpu.so`, next to this test's `deps/` directory.
fn shared_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let lib = profile_dir.join("libvgpu.so");
    assert!(
        lib.is_file(),
        "{} not built (scripts/test.sh builds it; by hand: cargo build -p vgpu-guest-tools --lib)",
        lib.display()
    );
    lib
}

const CHECK: &str = r#"
import ctypes, re, sys
sys.path.insert(0, sys.argv[1])
import vgpu
lib = vgpu.load_library()
header = open(sys.argv[2]).read()
declared = set(re.findall(r"\b(vgpu_[a-z_]+)\(", header))
missing = declared - set(vgpu._SIGNATURES)
extra = set(vgpu._SIGNATURES) - declared
assert not missing and not extra, (missing, extra)
assert ctypes.sizeof(vgpu.Caps) == 120, ctypes.sizeof(vgpu.Caps)
assert ctypes.sizeof(vgpu._Binding) == 32, ctypes.sizeof(vgpu._Binding)
assert lib.vgpu_status_name(9) == b"VGPU_ERR_LOOP_BUDGET"
try:
    vgpu.Device("/nonexistent/renderD128")
    raise SystemExit("opened a device that does not exist")
except vgpu.Error as e:
    assert e.status == 3 and e.name == "VGPU_ERR_NO_DEVICE", (e.status, e.name)
    assert "/nonexistent/renderD128" in str(e), str(e)
print("python wrapper ok:", len(declared), "functions, version", lib.vgpu_version().decode())
"#;

#[test]
fn python_wrapper_matches_the_shared_library() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg("-c")
        .arg(CHECK)
        .arg(dir.join("python"))
        .arg(dir.join("include/vgpu.h"))
        .env("VGPU_LIB", shared_library())
        .output()
        .expect("python3 is needed for this test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("python wrapper ok: 15 functions"), "{text}");
}
