//! The engines integration tests run `vgpud` on: `cpu` always, `vulkan` when `vgpud
//! --list-engines --json` shows a usable Vulkan device. With `VGPU_REQUIRE_VULKAN=1` (set by
//! `scripts/test.sh`, which installs Mesa lavapipe) a missing Vulkan device is a failure, not a
//! skip. `vgpud` runs with the Vulkan validation layer on ([`VALIDATION_ENV`]); a test calls
//! [`assert_no_validation_errors`] on its log.

use std::process::Command;

use crate::backend::vgpud_path;

/// Environment variable `vgpud` reads to enable the Khronos validation layer.
pub const VALIDATION_ENV: &str = "VGPU_VULKAN_VALIDATION";
/// The log line vgpud writes for each validation error.
pub const VALIDATION_ERROR_MARK: &str = "vulkan validation error";

fn require_vulkan() -> bool {
    std::env::var("VGPU_REQUIRE_VULKAN").is_ok_and(|v| v == "1")
}

/// Whether vgpud sees a usable Vulkan device, and its name.
pub fn vulkan_device() -> Option<String> {
    let bin = vgpud_path()?;
    let out = Command::new(bin)
        .args(["--list-engines", "--json"])
        .output()
        .ok()?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    doc.get("engines")?
        .as_array()?
        .iter()
        .filter(|e| e.get("engine").and_then(|v| v.as_str()) != Some("cpu"))
        .find(|e| e.get("usable").and_then(|v| v.as_bool()) == Some(true))
        .and_then(|e| e.get("name")?.as_str().map(str::to_string))
}

/// `--engine` values to run a test with (`VGPU_TEST_ENGINES=cpu` or `=vulkan` picks one).
pub fn engines() -> Vec<&'static str> {
    let only = std::env::var("VGPU_TEST_ENGINES").ok();
    let wanted = |e: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == e));
    let mut list: Vec<&'static str> = Vec::new();
    if wanted("cpu") {
        list.push("cpu");
    }
    if !wanted("vulkan") {
        return list;
    }
    match vulkan_device() {
        Some(_) => list.push("vulkan"),
        None if require_vulkan() => {
            panic!("VGPU_REQUIRE_VULKAN=1 but vgpud --list-engines shows no usable Vulkan device")
        }
        None => eprintln!("note: no Vulkan device; vgpud tests run on the CPU engine only"),
    }
    list
}

/// Fails when a vgpud log shows Vulkan validation errors.
pub fn assert_no_validation_errors(log: &str) {
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(VALIDATION_ERROR_MARK))
        .collect();
    assert!(
        errors.is_empty(),
        "{} Vulkan validation error(s):\n{}",
        errors.len(),
        errors.join("\n")
    );
}
