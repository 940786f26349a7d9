//! Finds SPIRV-Tools (`libSPIRV-Tools.a`, Debian's `spirv-tools`), whose validator checks every
//! guest SPIR-V module before the Vulkan driver sees it. Without it vgpud still builds (the demo
//! and the CPU engine need nothing installed), but runs no guest modules: the Vulkan engine then
//! reports `module_flags` 0. `SPIRV_TOOLS_LIB_DIR` names another directory to look in;
//! `VGPU_NO_SPIRV_TOOLS=1` builds without it on purpose.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(spirv_tools)");
    println!("cargo::rerun-if-env-changed=SPIRV_TOOLS_LIB_DIR");
    println!("cargo::rerun-if-env-changed=VGPU_NO_SPIRV_TOOLS");
    if std::env::var_os("VGPU_NO_SPIRV_TOOLS").is_some() {
        println!("cargo::warning=VGPU_NO_SPIRV_TOOLS: built without the SPIR-V validator");
        return;
    }
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("SPIRV_TOOLS_LIB_DIR") {
        dirs.push(d.into());
    }
    dirs.extend(
        [
            format!("/usr/lib/{arch}-linux-gnu"),
            "/usr/lib64".into(),
            "/usr/lib".into(),
            "/usr/local/lib".into(),
        ]
        .map(PathBuf::from),
    );
    match dirs
        .iter()
        .find(|d| Path::new(d).join("libSPIRV-Tools.a").exists())
    {
        Some(dir) => {
            println!(
                "cargo::rerun-if-changed={}",
                dir.join("libSPIRV-Tools.a").display()
            );
            println!("cargo::rustc-link-search=native={}", dir.display());
            println!("cargo::rustc-cfg=spirv_tools");
        }
        None => println!(
            "cargo::warning=SPIRV-Tools (libSPIRV-Tools.a, package spirv-tools) not found: \
             vgpud is built without the SPIR-V validator and runs no guest modules"
        ),
    }
}
