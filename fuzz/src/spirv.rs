//! The guest-kernel validator and instrumentation, [`vgpu_backend::driver::spirv::prepare`]:
//! whatever words a guest sends as a compute module.

use vgpu_backend::driver::spirv::{prepare, ModuleLimits, ShaderFeatures, SpirvError};

/// Limits with every optional feature on (more code reachable) and a small word limit.
fn limits() -> ModuleLimits {
    ModuleLimits {
        max_words: 1 << 16,
        loop_budget: 1000,
        features: ShaderFeatures {
            int64: true,
            float64: true,
            int16: true,
            int8: true,
            float16: true,
            storage_16bit: true,
            storage_8bit: true,
            subgroups: true,
        },
        ..ModuleLimits::default()
    }
}

/// Feeds `data` (little-endian words; a trailing partial word is dropped) to `prepare`.
///
/// Oracle: `prepare` never panics and is deterministic; a module that passes validation is
/// never turned into one the Khronos validator refuses (`SpirvError::Instrumented`); what it
/// accepts is a module that `prepare` itself refuses (its control binding is the engine's), that
/// is longer than the input, and whose reflection fits the limits.
pub fn run(data: &[u8]) {
    let words: Vec<u32> = data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let l = limits();
    let p = match prepare(&words, "main", &l) {
        Ok(p) => p,
        Err(SpirvError::Instrumented(e)) => panic!("the instrumentation broke a valid module: {e}"),
        Err(_) => return,
    };
    let again = prepare(&words, "main", &l).expect("prepare is deterministic");
    assert_eq!(again.words, p.words, "prepare is not deterministic");
    assert!(p.words.len() > words.len(), "nothing was instrumented");
    assert!(
        prepare(&p.words, "main", &l).is_err(),
        "an instrumented module (binding 8 taken) was accepted again"
    );
    let invocations: u64 = p.workgroup_size.iter().map(|d| u64::from(*d)).product();
    assert!(invocations >= 1 && invocations <= u64::from(l.max_workgroup_invocations));
    assert!(p.push_constant_bytes <= l.max_push_constant_bytes);
    assert_eq!(p.bindings_written & !p.bindings_used, 0);
    assert!(p.bindings_used < 1 << 8);
}
