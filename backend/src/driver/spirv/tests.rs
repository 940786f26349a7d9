//! Validation and instrumentation tests over the committed modules in `testdata/` (built by
//! `testdata/build.sh`). Instrumented output must pass `/usr/bin/spirv-val`.

use std::path::PathBuf;
use std::process::Command;

use super::*;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/driver/spirv/testdata")
        .join(name)
}

/// The words of `testdata/<name>.spv`.
pub(super) fn module(name: &str) -> Vec<u32> {
    let bytes = std::fs::read(testdata(&format!("{name}.spv")))
        .unwrap_or_else(|e| panic!("{name}.spv: {e} (run testdata/build.sh)"));
    assert_eq!(bytes.len() % 4, 0, "{name}.spv is not whole words");
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn limits() -> ModuleLimits {
    ModuleLimits {
        max_shared_bytes: 32768,
        ..ModuleLimits::default()
    }
}

/// Runs spirv-val on `words`; a missing spirv-val fails the test.
pub(super) fn spirv_val(words: &[u32], env: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.spv");
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new("/usr/bin/spirv-val")
        .args(["--target-env", env])
        .arg(&path)
        .output()
        .expect("/usr/bin/spirv-val must be installed (SPIRV-Tools)");
    if !out.status.success() {
        let dis = Command::new("/usr/bin/spirv-dis")
            .arg(&path)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!(
            "spirv-val --target-env {env} failed:\n{}{}\n{dis}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn prepared(name: &str) -> PreparedModule {
    prepare(&module(name), "main", &limits()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn refused(name: &str) -> SpirvError {
    refused_with(name, &limits())
}

fn refused_with(name: &str, l: &ModuleLimits) -> SpirvError {
    match prepare(&module(name), "main", l) {
        Ok(_) => panic!("{name} was accepted"),
        Err(e) => e,
    }
}

struct Expect {
    name: &'static str,
    env: &'static str,
    size: [u32; 3],
    used: u32,
    written: u32,
    push: u32,
    back_edges: u32,
}

#[test]
fn glslang_kernels_pass_and_their_instrumented_form_validates() {
    let cases = [
        Expect {
            name: "reduce",
            env: "vulkan1.1",
            size: [64, 1, 1],
            used: 0b11,
            written: 0b10,
            push: 4,
            back_edges: 2,
        },
        Expect {
            name: "reduce_v10",
            env: "vulkan1.0",
            size: [64, 1, 1],
            used: 0b11,
            written: 0b10,
            push: 4,
            back_edges: 2,
        },
        Expect {
            name: "conv2d",
            env: "vulkan1.1",
            size: [8, 8, 1],
            used: 0b111,
            written: 0b100,
            push: 12,
            back_edges: 2,
        },
        Expect {
            name: "conv2d_v16",
            env: "vulkan1.3",
            size: [8, 8, 1],
            used: 0b111,
            written: 0b100,
            push: 12,
            back_edges: 2,
        },
        Expect {
            name: "softmax",
            env: "vulkan1.1",
            size: [4, 1, 1],
            used: 0b11,
            written: 0b10,
            push: 8,
            back_edges: 3,
        },
        Expect {
            name: "grid",
            env: "vulkan1.1",
            size: [1, 1, 1],
            used: 0b1,
            written: 0b1,
            push: 4,
            back_edges: 0,
        },
        Expect {
            name: "grid_v16",
            env: "vulkan1.3",
            size: [1, 1, 1],
            used: 0b1,
            written: 0b1,
            push: 4,
            back_edges: 0,
        },
        Expect {
            name: "bounds",
            env: "vulkan1.1",
            size: [4, 1, 1],
            used: 0b1,
            written: 0b1,
            push: 16,
            back_edges: 0,
        },
        Expect {
            name: "ssa_loops",
            env: "vulkan1.1",
            size: [1, 1, 1],
            used: 0b1,
            written: 0b1,
            push: 0,
            back_edges: 2,
        },
        Expect {
            name: "unreachable_merge",
            env: "vulkan1.1",
            size: [1, 1, 1],
            used: 0b1,
            written: 0b1,
            push: 0,
            back_edges: 1,
        },
        Expect {
            name: "forever",
            env: "vulkan1.1",
            size: [4, 1, 1],
            used: 0b1,
            written: 0b1,
            push: 0,
            back_edges: 1,
        },
        Expect {
            name: "spin",
            env: "vulkan1.1",
            size: [4, 1, 1],
            used: 0b1,
            written: 0b1,
            push: 0,
            back_edges: 1,
        },
    ];
    for c in cases {
        let input = module(c.name);
        spirv_val(&input, c.env);
        let p = prepared(c.name);
        assert_eq!(p.entry, "main");
        assert_eq!(p.workgroup_size, c.size, "{}", c.name);
        assert_eq!(p.bindings_used, c.used, "{}", c.name);
        assert_eq!(p.bindings_written, c.written, "{}", c.name);
        assert_eq!(p.push_constant_bytes, c.push, "{}", c.name);
        assert_eq!(p.back_edges, c.back_edges, "{}", c.name);
        let minor = match c.env {
            "vulkan1.0" => 0,
            "vulkan1.3" => 6,
            _ => 3,
        };
        assert_eq!(p.spirv_version, (1, minor), "{}", c.name);
        assert!(p.words.len() > input.len(), "{}: nothing added", c.name);
        spirv_val(&p.words, c.env);
        // The control binding is the engine's: a guest module declaring it is refused, so the
        // instrumented module is not accepted a second time.
        assert_eq!(
            prepare(&p.words, "main", &limits()).unwrap_err(),
            SpirvError::Binding(CONTROL_BINDING),
            "{}",
            c.name
        );
    }
}

/// The instrumented module, disassembled.
fn disassemble(words: &[u32]) -> String {
    use rspirv::binary::Disassemble;
    rspirv::dr::load_words(words).unwrap().disassemble()
}

#[test]
fn instrumentation_rewrites_what_it_says() {
    let p = prepared("softmax");
    let text = disassemble(&p.words);
    // One counter increment per back edge, the budget comparison, the status store per return
    // (softmax's main returns in two places).
    assert_eq!(text.matches("OpULessThanEqual").count(), 3, "{text}");
    assert_eq!(text.matches("OpUGreaterThan ").count(), 2, "{text}");
    assert!(
        text.contains("OpDecorate %") && text.contains("Binding 8"),
        "{text}"
    );
    // The do-while(true) in row_max and the do-while(j < cols) combine the condition.
    assert_eq!(text.matches("OpLogicalAnd").count(), 2, "{text}");

    // NumWorkgroups is read from the control block: no load of the built-in remains.
    let p = prepared("grid");
    let m = rspirv::dr::load_words(&p.words).unwrap();
    let nwg = m
        .annotations
        .iter()
        .find(|a| {
            a.operands.get(2).is_some_and(|o| {
                *o == rspirv::dr::Operand::BuiltIn(rspirv::spirv::BuiltIn::NumWorkgroups)
            })
        })
        .and_then(|a| facts::id_at(a, 0))
        .expect("NumWorkgroups decoration kept");
    let uses = m
        .functions
        .iter()
        .flat_map(|f| f.all_inst_iter())
        .filter(|i| validate::used_ids(i).any(|id| id == nwg))
        .count();
    assert_eq!(uses, 0, "{}", disassemble(&p.words));
}

#[test]
fn ssa_loops_get_zero_phi_inputs_and_an_or_for_a_false_back_edge() {
    let text = disassemble(&prepared("ssa_loops").words);
    // m1's phi gains (null, cont1): `%r = OpPhi %uint %i %h1 %null %cont1`.
    let undefs: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("= OpConstantNull"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(undefs.len(), 1, "{text}");
    let phis_with_undef = text
        .lines()
        .filter(|l| l.contains("OpPhi"))
        .filter(|l| l.split_whitespace().nth(6) == Some(undefs[0]))
        .count();
    assert_eq!(phis_with_undef, 1, "{text}");
    // The do-while loops on its false edge: `done || spent`.
    assert_eq!(text.matches("OpLogicalOr").count(), 1, "{text}");
    assert_eq!(text.matches("OpLogicalNot").count(), 1, "{text}");
}

#[test]
fn undefined_values_become_zeros_and_a_newly_reached_merge_returns() {
    let text = disassemble(&prepared("unreachable_merge").words);
    assert!(!text.contains("OpUndef"), "{text}");
    assert!(!text.contains("OpUnreachable"), "{text}");
    assert!(text.contains("OpConstantNull"), "{text}");
}

#[test]
fn dynamic_indices_outside_storage_buffers_are_clamped() {
    let text = disassemble(&prepared("bounds").words);
    // local[k] three times (glslang makes one chain for each side of `+=`), sh[i], sh[k],
    // p.table[k]; not idx[i] or outv[..] (storage buffers, bounded by robust buffer access) nor
    // gl_LocalInvocationID.x (a constant index in range).
    assert_eq!(text.matches("OpSelect ").count(), 6, "{text}");
    assert_eq!(text.matches("OpULessThan ").count(), 6, "{text}");
}

#[test]
fn budget_is_a_constant_of_the_module() {
    let l = ModuleLimits {
        loop_budget: 12345,
        ..limits()
    };
    let p = prepare(&module("forever"), "main", &l).unwrap();
    assert!(disassemble(&p.words).contains("12345"));
    // Budgets are clamped so the counter cannot wrap.
    let l = ModuleLimits {
        loop_budget: u32::MAX,
        ..limits()
    };
    let p = prepare(&module("forever"), "main", &l).unwrap();
    assert!(disassemble(&p.words).contains(&MAX_LOOP_BUDGET.to_string()));
}

fn assert_err(e: SpirvError, want: &str) {
    let text = e.to_string();
    assert!(text.contains(want), "error {text:?} does not say {want:?}");
}

#[test]
fn hostile_modules_are_refused_with_the_reason() {
    assert_err(refused("bad_kernel"), "capability Kernel is not allowed");
    assert_err(
        refused("bad_addresses"),
        "capability Addresses is not allowed",
    );
    assert_err(
        refused("bad_uniform_constant"),
        "storage class UniformConstant is not allowed",
    );
    assert_err(refused("bad_physical"), "capability Int64 is not allowed");
    let with_int64 = ModuleLimits {
        features: ShaderFeatures {
            int64: true,
            ..ShaderFeatures::default()
        },
        ..limits()
    };
    assert_err(
        refused_with("bad_physical", &with_int64),
        "capability PhysicalStorageBufferAddresses is not allowed",
    );
    assert_err(
        refused("bad_physical_nocap"),
        "storage class PhysicalStorageBuffer is not allowed",
    );
    assert_err(
        refused("bad_ptr_to_int"),
        "instruction OpConvertPtrToU is not allowed",
    );
    assert_err(refused("bad_sampler"), "not allowed");
    assert_err(refused("bad_image"), "not allowed");
    assert_err(refused("bad_set1"), "descriptor set 1; only set 0");
    assert_eq!(refused("bad_binding9"), SpirvError::Binding(9));
    assert_err(refused("bad_binding9"), "binding 9 outside 0..8");
    assert_err(refused("bad_ubo"), "uniform buffers are not supported");
    assert_err(
        refused("bad_push"),
        "push constants: block is 260 bytes, more than the limit of 128",
    );
    assert_err(
        refused("bad_shared"),
        "shared memory is 65536 bytes, more than the limit of 32768",
    );
    assert_err(
        refused("bad_wgsize"),
        "has 2048 invocations, more than 1024",
    );
    assert_err(
        refused("bad_unstructured"),
        "unstructured back edge from block %5 to %5",
    );
    assert_err(refused("bad_recursion"), "recursion: function");
    assert_err(
        refused("bad_switch_back"),
        "a switch may not branch backward",
    );
    assert_err(refused("int64"), "capability Int64 is not allowed");
    // Within the allowlist but not valid SPIR-V: the Khronos validator refuses it.
    assert_err(refused("bad_invalid"), "invalid SPIR-V: ");
    assert_err(refused("bad_invalid"), "Result Type");
    assert_eq!(
        refused("vertex"),
        SpirvError::EntryPointModel {
            name: "main".into(),
            model: "Vertex".into()
        }
    );
    assert_err(
        prepare(&module("reduce"), "foo", &limits()).unwrap_err(),
        "entry point \"foo\" not found",
    );
    // Per-dimension limits.
    let small = ModuleLimits {
        max_workgroup_size: [4, 4, 4],
        ..limits()
    };
    assert_err(refused_with("conv2d", &small), "workgroup size [8, 8, 1]");
    // The samplers and images fail on their descriptor types.
    let e = refused("bad_sampler").to_string();
    assert!(
        e.contains("OpTypeImage")
            || e.contains("OpTypeSampledImage")
            || e.contains("UniformConstant"),
        "{e}"
    );
}

#[test]
fn optional_features_unlock_their_capabilities() {
    let l = ModuleLimits {
        features: ShaderFeatures {
            int64: true,
            ..ShaderFeatures::default()
        },
        ..limits()
    };
    let p = prepare(&module("int64"), "main", &l).unwrap();
    spirv_val(&p.words, "vulkan1.1");
}

#[test]
fn garbage_is_refused_without_panicking() {
    let good = module("reduce");
    assert!(matches!(
        prepare(&[], "main", &limits()),
        Err(SpirvError::Parse(_))
    ));
    assert!(matches!(
        prepare(&[0xdead_beef; 64], "main", &limits()),
        Err(SpirvError::Parse(_))
    ));
    // Every truncation.
    for n in 0..good.len() {
        assert!(
            prepare(&good[..n], "main", &limits()).is_err(),
            "prefix {n} accepted"
        );
    }
    // OpSpecConstantOp computing OpConstant, OpSwitch or OpSpecConstantOp (rspirv 0.13 panics
    // parsing those; found by the fuzzer).
    for inner in [43u32, 251, 52] {
        let words = [
            0x0723_0203,
            0x0001_0300,
            0,
            100,
            0,
            (5 << 16) | 52,
            1,
            2,
            inner,
            7,
        ];
        assert_err(
            prepare(&words, "main", &limits()).unwrap_err(),
            &format!("OpSpecConstantOp of opcode {inner}"),
        );
    }
    // SPIR-V 1.7 and a huge id bound.
    let mut v = good.clone();
    v[1] = 0x0001_0700;
    assert_eq!(
        prepare(&v, "main", &limits()).unwrap_err(),
        SpirvError::Version(1, 7)
    );
    let mut v = good.clone();
    v[3] = u32::MAX;
    assert_eq!(
        prepare(&v, "main", &limits()).unwrap_err(),
        SpirvError::IdBound(u32::MAX)
    );
    let mut v = good.clone();
    v[3] = 10;
    assert_err(
        prepare(&v, "main", &limits()).unwrap_err(),
        "outside the id bound",
    );
    // Too many words.
    let l = ModuleLimits {
        max_words: good.len() - 1,
        ..limits()
    };
    assert_eq!(
        prepare(&good, "main", &l).unwrap_err(),
        SpirvError::TooLarge {
            words: good.len(),
            limit: good.len() - 1
        }
    );
    let huge = vec![0u32; ModuleLimits::default().max_words + 1];
    assert!(matches!(
        prepare(&huge, "main", &ModuleLimits::default()),
        Err(SpirvError::TooLarge { .. })
    ));
    // A bit flip in every word (deterministic): never a panic; a flipped module that passes
    // validation (a flipped constant is still a valid module) is instrumented into one that
    // passes the Khronos validator and re-parses.
    let mut x = 0x9e37_79b9_u32;
    let mut accepted = 0;
    for i in 5..good.len() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let mut v = good.clone();
        v[i] ^= 1 << (x % 32);
        match prepare(&v, "main", &limits()) {
            Ok(p) => {
                accepted += 1;
                rspirv::dr::load_words(&p.words).expect("output re-parses");
            }
            Err(SpirvError::Instrumented(e)) => panic!("word {i}: instrumentation broke it: {e}"),
            Err(_) => {}
        }
    }
    assert!(accepted < good.len());
}

#[test]
fn committed_modules_are_built_from_their_sources() {
    // glslangValidator and spirv-as must be installed (glslang-tools, spirv-tools).
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(testdata("build.sh"))
        .arg(dir.path())
        .output()
        .expect("testdata/build.sh runs");
    assert!(
        out.status.success(),
        "build.sh failed (glslangValidator and spirv-as needed): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut n = 0;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let committed = std::fs::read(testdata(&name))
            .unwrap_or_else(|e| panic!("{name} is built but not committed: {e}"));
        assert!(
            committed == std::fs::read(&path).unwrap(),
            "{name} differs from its source (run testdata/build.sh)"
        );
        n += 1;
    }
    let committed = std::fs::read_dir(testdata(""))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "spv")
        })
        .count();
    assert_eq!(n, committed, "a committed .spv has no source");
}

/// A compute module whose entry point calls `functions` functions, each a chain of `blocks`
/// blocks (the entry point too).
fn chains_of_blocks(functions: usize, blocks: usize) -> Vec<u32> {
    use rspirv::binary::Assemble;
    use rspirv::spirv::{
        AddressingModel, Capability, ExecutionMode, ExecutionModel, FunctionControl, MemoryModel,
    };
    let mut b = rspirv::dr::Builder::new();
    b.set_version(1, 3);
    b.capability(Capability::Shader);
    b.memory_model(AddressingModel::Logical, MemoryModel::GLSL450);
    let void = b.type_void();
    let fn_ty = b.type_function(void, vec![]);
    let mut ids = Vec::new();
    for i in 0..=functions {
        let f = b
            .begin_function(void, None, FunctionControl::NONE, fn_ty)
            .unwrap();
        b.begin_block(None).unwrap();
        if i == functions {
            for &callee in &ids {
                b.function_call(void, None, callee, vec![]).unwrap();
            }
        }
        for _ in 1..blocks {
            let next = b.id();
            b.branch(next).unwrap();
            b.begin_block(Some(next)).unwrap();
        }
        b.ret().unwrap();
        b.end_function().unwrap();
        ids.push(f);
    }
    let main = *ids.last().unwrap();
    b.entry_point(ExecutionModel::GLCompute, main, "main", vec![]);
    b.execution_mode(main, ExecutionMode::LocalSize, vec![1, 1, 1]);
    b.module().assemble()
}

#[test]
fn functions_and_modules_with_too_many_blocks_are_refused() {
    // The Khronos validator's structured checks are quadratic in a function's blocks.
    let p = prepare(&chains_of_blocks(0, MAX_FUNCTION_BLOCKS), "main", &limits()).unwrap();
    spirv_val(&p.words, "vulkan1.1");
    assert_eq!(
        prepare(
            &chains_of_blocks(0, MAX_FUNCTION_BLOCKS + 1),
            "main",
            &limits()
        )
        .unwrap_err(),
        SpirvError::Blocks {
            what: "function %3".into(),
            blocks: MAX_FUNCTION_BLOCKS + 1,
            limit: MAX_FUNCTION_BLOCKS
        }
    );
    let per = MAX_MODULE_BLOCKS / 4;
    prepare(&chains_of_blocks(3, per), "main", &limits()).unwrap();
    assert_eq!(
        prepare(&chains_of_blocks(4, per), "main", &limits()).unwrap_err(),
        SpirvError::Blocks {
            what: "the module".into(),
            blocks: 5 * per,
            limit: MAX_MODULE_BLOCKS
        }
    );
}
