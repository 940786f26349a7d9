//! Test support: the engines tests run on. Every test that takes an engine runs on each of
//! [`test_engines`]: the CPU engine always, the Vulkan engine when a device opens (with the
//! validation layer when installed). With `VGPU_REQUIRE_VULKAN=1` (set by `scripts/test.sh`
//! after installing lavapipe) a missing Vulkan device fails the test instead of skipping it.

use super::cpu::CpuEngine;
use super::vulkan::{validation_errors, Validation, VulkanEngine, VulkanOptions};
use super::DynEngine;

/// An engine a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TestEngine {
    Cpu,
    Vulkan,
}

fn require_vulkan() -> bool {
    std::env::var("VGPU_REQUIRE_VULKAN").is_ok_and(|v| v == "1")
}

/// Options tests open the Vulkan engine with.
pub(crate) fn vulkan_options() -> VulkanOptions {
    VulkanOptions {
        validation: if require_vulkan() {
            Validation::Required
        } else {
            Validation::IfPresent
        },
        ..VulkanOptions::default()
    }
}

/// The engines to run on: CPU, and Vulkan when a device opens (or when it is required).
pub(crate) fn test_engines() -> Vec<TestEngine> {
    let mut engines = vec![TestEngine::Cpu];
    match VulkanEngine::new(&vulkan_options()) {
        Ok(_) => engines.push(TestEngine::Vulkan),
        Err(e) if require_vulkan() => panic!("VGPU_REQUIRE_VULKAN=1 but no Vulkan engine: {e}"),
        Err(e) => eprintln!("note: Vulkan engine not tested here: {e}"),
    }
    engines
}

impl TestEngine {
    /// A new engine of this kind.
    pub fn make(self) -> Box<dyn DynEngine> {
        match self {
            TestEngine::Cpu => Box::new(CpuEngine::default()),
            TestEngine::Vulkan => match VulkanEngine::new(&vulkan_options()) {
                Ok(e) => Box::new(e),
                Err(e) => panic!("Vulkan engine: {e}"),
            },
        }
    }

    /// Fails the test if the Vulkan validation layer reported an error so far.
    pub fn assert_no_validation_errors(self) {
        assert_eq!(validation_errors(), 0, "Vulkan validation errors (see log)");
    }
}
