//! Validation: the module must be a compute kernel of a small, safe subset of SPIR-V that can
//! reach no memory but its bound storage buffers, push constants, shared and private memory.
//!
//! One pass per concern, each linear in the module's size, none recursive.

use std::collections::{HashMap, HashSet};

use rspirv::dr::{Instruction, Module, Operand};
use rspirv::spirv::{
    AddressingModel, BuiltIn, Capability, ExecutionMode, ExecutionModel, MemoryModel, Op,
    StorageClass,
};

use super::cfg;
use super::facts::{check_storage_class, id_at, Decorations, Facts, Ty, Types};
use super::{
    ModuleLimits, ShaderFeatures, SpirvError, MAX_BINDINGS, MAX_FUNCTION_BLOCKS, MAX_ID_BOUND,
    MAX_MODULE_BLOCKS,
};

/// The only extended instruction set accepted.
const GLSL_STD_450: &str = "GLSL.std.450";
/// GLSL.std.450 instructions 1..=81 exist; 76..=78 (InterpolateAt*) are fragment-only.
const GLSL_INTERPOLATE: std::ops::RangeInclusive<u32> = 76..=78;
const GLSL_LAST: u32 = 81;

/// Validates `module` for `entry` within `limits` and returns what was learnt.
pub(super) fn check(
    module: &Module,
    entry: &str,
    limits: &ModuleLimits,
) -> Result<Facts, SpirvError> {
    let header = module
        .header
        .as_ref()
        .ok_or_else(|| SpirvError::Parse("no header".into()))?;
    let version = header.version();
    if version.0 != 1 || version.1 > 6 {
        return Err(SpirvError::Version(version.0, version.1));
    }
    if header.bound > MAX_ID_BOUND {
        return Err(SpirvError::IdBound(header.bound));
    }
    check_ids(module, header.bound)?;
    check_blocks(module)?;
    let caps = check_capabilities(module, &limits.features)?;
    let glsl = check_preamble(module, &limits.features)?;
    let entry_fn = find_entry(module, entry)?;
    for inst in module.all_inst_iter() {
        check_instruction(inst, &caps, glsl)?;
    }
    let decorations = Decorations::read(&module.annotations)?;
    let types = read_globals(module, &decorations)?;
    let workgroup_size = workgroup_size(module, entry_fn, limits, &decorations, &types)?;
    let mut facts = Facts {
        version,
        entry_fn,
        workgroup_size,
        bindings_used: 0,
        bindings_written: 0,
        push_constant_bytes: 0,
        num_workgroups: None,
        back_edges: Vec::with_capacity(module.functions.len()),
        types,
    };
    check_variables(module, limits, &decorations, &mut facts)?;
    check_functions(module, &mut facts)?;
    cfg::check_calls(module, limits.max_words as u64)?;
    Ok(facts)
}

/// Block counts within [`MAX_FUNCTION_BLOCKS`] and [`MAX_MODULE_BLOCKS`].
fn check_blocks(module: &Module) -> Result<(), SpirvError> {
    let mut total = 0;
    for f in &module.functions {
        if f.blocks.len() > MAX_FUNCTION_BLOCKS {
            return Err(SpirvError::Blocks {
                what: format!("function %{}", f.def_id().unwrap_or(0)),
                blocks: f.blocks.len(),
                limit: MAX_FUNCTION_BLOCKS,
            });
        }
        total += f.blocks.len();
    }
    if total > MAX_MODULE_BLOCKS {
        return Err(SpirvError::Blocks {
            what: "the module".into(),
            blocks: total,
            limit: MAX_MODULE_BLOCKS,
        });
    }
    Ok(())
}

/// The ids an instruction refers to (result type and id operands).
pub(super) fn used_ids(inst: &Instruction) -> impl Iterator<Item = u32> + '_ {
    inst.result_type
        .into_iter()
        .chain(inst.operands.iter().filter_map(|op| match op {
            Operand::IdRef(id) | Operand::IdScope(id) | Operand::IdMemorySemantics(id) => Some(*id),
            _ => None,
        }))
}

/// Every result id is below the bound and defined once; every used id is defined.
fn check_ids(module: &Module, bound: u32) -> Result<(), SpirvError> {
    let mut defined = HashSet::new();
    for inst in module.all_inst_iter() {
        if let Some(id) = inst.result_id {
            if id == 0 || id >= bound {
                return Err(SpirvError::Malformed(format!(
                    "id %{id} outside the id bound {bound}"
                )));
            }
            if !defined.insert(id) {
                return Err(SpirvError::Malformed(format!("id %{id} is defined twice")));
            }
        }
    }
    for inst in module.all_inst_iter() {
        for id in used_ids(inst) {
            if !defined.contains(&id) {
                return Err(SpirvError::Malformed(format!(
                    "Op{} uses %{id}, which is never defined",
                    inst.class.opname
                )));
            }
        }
    }
    Ok(())
}

/// The capability a device feature unlocks, for each optional capability.
fn feature_allows(cap: Capability, f: &ShaderFeatures) -> bool {
    match cap {
        Capability::Shader | Capability::Matrix => true,
        Capability::Int64 => f.int64,
        Capability::Float64 => f.float64,
        Capability::Int16 => f.int16,
        Capability::Int8 => f.int8,
        Capability::Float16 => f.float16,
        Capability::StorageBuffer16BitAccess => f.storage_16bit,
        Capability::StorageBuffer8BitAccess => f.storage_8bit,
        Capability::GroupNonUniform
        | Capability::GroupNonUniformVote
        | Capability::GroupNonUniformArithmetic
        | Capability::GroupNonUniformBallot
        | Capability::GroupNonUniformShuffle
        | Capability::GroupNonUniformShuffleRelative
        | Capability::GroupNonUniformClustered
        | Capability::GroupNonUniformQuad => f.subgroups,
        _ => false,
    }
}

/// The declared capabilities, all allowed, plus the ones they imply.
fn check_capabilities(
    module: &Module,
    features: &ShaderFeatures,
) -> Result<HashSet<Capability>, SpirvError> {
    let mut caps = HashSet::new();
    for inst in &module.capabilities {
        let Some(Operand::Capability(cap)) = inst.operands.first() else {
            return Err(SpirvError::Malformed(
                "OpCapability without a capability".into(),
            ));
        };
        if !feature_allows(*cap, features) {
            return Err(SpirvError::Capability(format!("{cap:?}")));
        }
        caps.insert(*cap);
    }
    if !caps.contains(&Capability::Shader) {
        return Err(SpirvError::Malformed(
            "capability Shader is not declared".into(),
        ));
    }
    caps.insert(Capability::Matrix);
    if caps
        .iter()
        .any(|c| format!("{c:?}").starts_with("GroupNonUniform"))
    {
        caps.insert(Capability::GroupNonUniform);
    }
    // Int8/Int16/Float16 imply nothing here; the 8/16-bit storage capabilities only allow
    // those types inside storage buffers, which the driver enforces.
    Ok(caps)
}

/// Extensions, extended instruction sets and the memory model; returns the id of the
/// GLSL.std.450 import (0 when there is none).
fn check_preamble(module: &Module, f: &ShaderFeatures) -> Result<u32, SpirvError> {
    for inst in &module.extensions {
        let Some(Operand::LiteralString(name)) = inst.operands.first() else {
            return Err(SpirvError::Malformed("OpExtension without a name".into()));
        };
        let ok = match name.as_str() {
            "SPV_KHR_storage_buffer_storage_class"
            | "SPV_GOOGLE_decorate_string"
            | "SPV_GOOGLE_hlsl_functionality1"
            | "SPV_GOOGLE_user_type" => true,
            "SPV_KHR_16bit_storage" => f.storage_16bit,
            "SPV_KHR_8bit_storage" => f.storage_8bit,
            _ => false,
        };
        if !ok {
            return Err(SpirvError::Extension(name.clone()));
        }
    }
    let mut glsl = 0;
    for inst in &module.ext_inst_imports {
        match inst.operands.first() {
            Some(Operand::LiteralString(name)) if name == GLSL_STD_450 => {
                glsl = inst.result_id.unwrap_or(0);
            }
            Some(Operand::LiteralString(name)) => return Err(SpirvError::ExtInstSet(name.clone())),
            _ => {
                return Err(SpirvError::Malformed(
                    "OpExtInstImport without a name".into(),
                ))
            }
        }
    }
    let Some(mm) = &module.memory_model else {
        return Err(SpirvError::Malformed("no OpMemoryModel".into()));
    };
    match (mm.operands.first(), mm.operands.get(1)) {
        (
            Some(Operand::AddressingModel(AddressingModel::Logical)),
            Some(Operand::MemoryModel(MemoryModel::GLSL450)),
        ) => Ok(glsl),
        (Some(Operand::AddressingModel(a)), Some(Operand::MemoryModel(m))) => {
            Err(SpirvError::MemoryModel(format!("{a:?} {m:?}")))
        }
        _ => Err(SpirvError::Malformed("OpMemoryModel operands".into())),
    }
}

/// Instructions refused whatever the capabilities: images and samplers, fragment/geometry-only
/// instructions, and everything that makes or compares raw pointers.
fn denied(op: Op, name: &str) -> bool {
    name.starts_with("Image")
        || name.contains("Sampl")
        || matches!(
            op,
            Op::TypeForwardPointer
                | Op::DecorationGroup
                | Op::GroupDecorate
                | Op::GroupMemberDecorate
                | Op::Kill
                | Op::TerminateInvocation
                | Op::DemoteToHelperInvocation
                | Op::IsHelperInvocationEXT
                | Op::DPdx
                | Op::DPdy
                | Op::Fwidth
                | Op::DPdxFine
                | Op::DPdyFine
                | Op::FwidthFine
                | Op::DPdxCoarse
                | Op::DPdyCoarse
                | Op::FwidthCoarse
                | Op::EmitVertex
                | Op::EndPrimitive
                | Op::CopyMemorySized
                | Op::PtrAccessChain
                | Op::InBoundsPtrAccessChain
                | Op::PtrEqual
                | Op::PtrNotEqual
                | Op::PtrDiff
                | Op::ConvertPtrToU
                | Op::ConvertUToPtr
                | Op::GenericCastToPtr
                | Op::PtrCastToGeneric
                | Op::GenericCastToPtrExplicit
        )
}

/// Instructions that may produce a pointer: the logical-addressing ones.
fn makes_pointer(op: Op) -> bool {
    matches!(
        op,
        Op::Variable
            | Op::AccessChain
            | Op::InBoundsAccessChain
            | Op::FunctionParameter
            | Op::CopyObject
            | Op::TypePointer
    )
}

fn check_grammar(
    g: &rspirv::grammar::Instruction<'static>,
    caps: &HashSet<Capability>,
) -> Result<(), SpirvError> {
    let refused = || SpirvError::Instruction(g.opname.to_owned());
    if denied(g.opcode, g.opname) {
        return Err(refused());
    }
    if !g.capabilities.is_empty() && !g.capabilities.iter().any(|c| caps.contains(c)) {
        return Err(refused());
    }
    if g.capabilities.is_empty() && !g.extensions.is_empty() {
        return Err(refused());
    }
    Ok(())
}

/// Per-instruction rules: grammar capabilities, the deny list, extended instructions.
fn check_instruction(
    inst: &Instruction,
    caps: &HashSet<Capability>,
    glsl: u32,
) -> Result<(), SpirvError> {
    check_grammar(inst.class, caps)?;
    match inst.class.opcode {
        Op::SpecConstantOp => {
            let Some(Operand::LiteralSpecConstantOpInteger(op)) = inst.operands.first() else {
                return Err(SpirvError::Malformed("OpSpecConstantOp operands".into()));
            };
            let g = rspirv::grammar::INSTRUCTION_TABLE
                .lookup_opcode(*op as u32)
                .ok_or_else(|| SpirvError::Malformed("OpSpecConstantOp opcode".into()))?;
            check_grammar(g, caps)?;
        }
        Op::ExtInst => {
            let set = id_at(inst, 0);
            let Some(Operand::LiteralExtInstInteger(n)) = inst.operands.get(1) else {
                return Err(SpirvError::Malformed("OpExtInst operands".into()));
            };
            if set != Some(glsl) || glsl == 0 {
                return Err(SpirvError::Malformed(
                    "OpExtInst does not name the GLSL.std.450 import".into(),
                ));
            }
            if *n == 0 || *n > GLSL_LAST || GLSL_INTERPOLATE.contains(n) {
                return Err(SpirvError::Instruction(format!("ExtInst GLSL.std.450 {n}")));
            }
        }
        _ => {}
    }
    Ok(())
}

/// The global section in order: every id is declared before use, types are of the compute
/// subset, and pointers come only from logical-addressing instructions.
fn read_globals(module: &Module, d: &Decorations) -> Result<Types, SpirvError> {
    let mut types = Types::default();
    let mut seen: HashSet<u32> = module
        .ext_inst_imports
        .iter()
        .chain(&module.debug_string_source)
        .filter_map(|i| i.result_id)
        .collect();
    for inst in &module.types_global_values {
        for id in used_ids(inst) {
            if !seen.contains(&id) {
                return Err(SpirvError::Malformed(format!(
                    "Op{} uses %{id} before its declaration",
                    inst.class.opname
                )));
            }
        }
        let op = inst.class.opcode;
        if op.is_type() {
            types.add(inst, d)?;
        } else if op.is_constant() {
            types.add_constant(inst);
        }
        if let Some(Ty::Pointer { .. }) = inst.result_type.and_then(|t| types.ty.get(&t)) {
            if !makes_pointer(op) {
                return Err(SpirvError::Instruction(format!(
                    "{} producing a pointer",
                    inst.class.opname
                )));
            }
        }
        if let Some(id) = inst.result_id {
            seen.insert(id);
        }
    }
    Ok(types)
}

/// Exactly one entry point, the one named, GLCompute; returns its function id.
fn find_entry(module: &Module, entry: &str) -> Result<u32, SpirvError> {
    let ep = match module.entry_points.as_slice() {
        [ep] => ep,
        [] => return Err(SpirvError::EntryPointNotFound(entry.to_owned())),
        many => {
            let found = many.iter().any(
                |e| matches!(e.operands.get(2), Some(Operand::LiteralString(n)) if n == entry),
            );
            return Err(if found {
                SpirvError::EntryPointCount(many.len())
            } else {
                SpirvError::EntryPointNotFound(entry.to_owned())
            });
        }
    };
    let (Some(Operand::ExecutionModel(model)), Some(func), Some(Operand::LiteralString(name))) =
        (ep.operands.first(), id_at(ep, 1), ep.operands.get(2))
    else {
        return Err(SpirvError::Malformed("OpEntryPoint operands".into()));
    };
    if name != entry {
        return Err(SpirvError::EntryPointNotFound(entry.to_owned()));
    }
    if *model != ExecutionModel::GLCompute {
        return Err(SpirvError::EntryPointModel {
            name: name.clone(),
            model: format!("{model:?}"),
        });
    }
    if !module.functions.iter().any(|f| f.def_id() == Some(func)) {
        return Err(SpirvError::Malformed(
            "the entry point names no function".into(),
        ));
    }
    Ok(func)
}

/// The entry point's workgroup size, within limits.
fn workgroup_size(
    module: &Module,
    func: u32,
    limits: &ModuleLimits,
    d: &Decorations,
    types: &Types,
) -> Result<[u32; 3], SpirvError> {
    let mut size = None;
    for em in &module.execution_modes {
        let Some(Operand::ExecutionMode(mode)) = em.operands.get(1) else {
            return Err(SpirvError::Malformed("OpExecutionMode operands".into()));
        };
        if id_at(em, 0) != Some(func) {
            return Err(SpirvError::Malformed(
                "OpExecutionMode for a function that is not the entry point".into(),
            ));
        }
        match mode {
            ExecutionMode::LocalSize if em.class.opcode == Op::ExecutionMode => {
                let dim = |i: usize| match em.operands.get(i) {
                    Some(Operand::LiteralBit32(v)) => Ok(*v),
                    _ => Err(SpirvError::Malformed("LocalSize operands".into())),
                };
                size = Some([dim(2)?, dim(3)?, dim(4)?]);
            }
            // glslang's SPIR-V 1.6 form; the ids name (specialization) constants, and the
            // engine does not specialize, so their defaults are the size.
            ExecutionMode::LocalSizeId if em.class.opcode == Op::ExecutionModeId => {
                let dim = |i: usize| {
                    id_at(em, i)
                        .and_then(|c| types.int_const.get(&c))
                        .and_then(|v| u32::try_from(*v).ok())
                        .ok_or_else(|| {
                            SpirvError::Malformed("LocalSizeId operands are not constants".into())
                        })
                };
                size = Some([dim(2)?, dim(3)?, dim(4)?]);
            }
            other => return Err(SpirvError::ExecutionMode(format!("{other:?}"))),
        }
    }
    // A constant decorated BuiltIn WorkgroupSize overrides LocalSize.
    let wgs: HashSet<u32> = d
        .builtin
        .iter()
        .filter(|(_, b)| **b == BuiltIn::WorkgroupSize)
        .map(|(id, _)| *id)
        .collect();
    let mut found = 0;
    for inst in &module.types_global_values {
        if !inst.result_id.is_some_and(|id| wgs.contains(&id)) {
            continue;
        }
        found += 1;
        if !matches!(
            inst.class.opcode,
            Op::ConstantComposite | Op::SpecConstantComposite
        ) {
            return Err(SpirvError::Malformed(
                "WorkgroupSize is not a constant composite".into(),
            ));
        }
        let dim = |i: usize| {
            id_at(inst, i)
                .and_then(|c| types.int_const.get(&c))
                .and_then(|v| u32::try_from(*v).ok())
                .ok_or_else(|| {
                    SpirvError::Malformed("WorkgroupSize components are not constants".into())
                })
        };
        size = Some([dim(0)?, dim(1)?, dim(2)?]);
    }
    if found != wgs.len() {
        return Err(SpirvError::Malformed(
            "BuiltIn WorkgroupSize on something not a constant".into(),
        ));
    }
    let size = size.ok_or(SpirvError::WorkgroupSize {
        size: [0; 3],
        reason: "is not declared (LocalSize)".into(),
    })?;
    let bad = |reason: String| SpirvError::WorkgroupSize { size, reason };
    for (s, max) in size.iter().zip(limits.max_workgroup_size) {
        if *s == 0 || *s > max {
            return Err(bad(format!(
                "is outside 1..={:?} per dimension",
                limits.max_workgroup_size
            )));
        }
    }
    let total = size.iter().map(|s| u64::from(*s)).product::<u64>();
    if total > u64::from(limits.max_workgroup_invocations) {
        return Err(bad(format!(
            "has {total} invocations, more than {}",
            limits.max_workgroup_invocations
        )));
    }
    Ok(size)
}

/// Input built-ins a compute kernel may read.
fn builtin_allowed(b: BuiltIn, f: &ShaderFeatures) -> bool {
    match b {
        BuiltIn::GlobalInvocationId
        | BuiltIn::LocalInvocationId
        | BuiltIn::LocalInvocationIndex
        | BuiltIn::WorkgroupId
        | BuiltIn::NumWorkgroups => true,
        BuiltIn::SubgroupSize
        | BuiltIn::SubgroupLocalInvocationId
        | BuiltIn::NumSubgroups
        | BuiltIn::SubgroupId
        | BuiltIn::SubgroupEqMask
        | BuiltIn::SubgroupGeMask
        | BuiltIn::SubgroupGtMask
        | BuiltIn::SubgroupLeMask
        | BuiltIn::SubgroupLtMask => f.subgroups,
        _ => false,
    }
}

/// Global variables: storage buffers on set 0 and distinct bindings below [`MAX_BINDINGS`],
/// one push-constant block, shared memory within limits, built-in inputs only.
fn check_variables(
    module: &Module,
    limits: &ModuleLimits,
    d: &Decorations,
    facts: &mut Facts,
) -> Result<(), SpirvError> {
    let mut shared = 0u64;
    let mut push_blocks = 0;
    for inst in &module.types_global_values {
        if inst.class.opcode != Op::Variable {
            continue;
        }
        let id = inst.result_id.unwrap_or(0);
        let Some(Operand::StorageClass(class)) = inst.operands.first() else {
            return Err(SpirvError::Malformed("OpVariable operands".into()));
        };
        check_storage_class(*class)?;
        let pointee = match inst.result_type.and_then(|t| facts.types.ty.get(&t)) {
            Some(Ty::Pointer { class: c, pointee }) if c == class => *pointee,
            _ => {
                return Err(SpirvError::Malformed(format!(
                    "variable %{id} is not of a pointer type of its storage class"
                )))
            }
        };
        let has_init = inst.operands.len() > 1;
        if has_init && *class != StorageClass::Private {
            return Err(SpirvError::Malformed(format!(
                "variable %{id} of storage class {class:?} has an initializer"
            )));
        }
        let ty = facts.types.ty.get(&pointee);
        match class {
            StorageClass::StorageBuffer | StorageClass::Uniform => {
                let members = match ty {
                    Some(Ty::Struct { members }) => members.len(),
                    Some(Ty::Array { .. } | Ty::RuntimeArray { .. }) => {
                        return Err(SpirvError::Bindings(format!(
                            "storage buffer %{id} is an array of descriptors; not supported"
                        )))
                    }
                    _ => {
                        return Err(SpirvError::Malformed(format!(
                            "storage buffer %{id} is not a struct"
                        )))
                    }
                };
                let ok = if *class == StorageClass::StorageBuffer {
                    d.block.contains(&pointee)
                } else {
                    d.buffer_block.contains(&pointee)
                };
                if !ok {
                    return Err(if *class == StorageClass::Uniform {
                        SpirvError::StorageClass(
                            "Uniform (uniform buffers are not supported; use a storage buffer)"
                                .into(),
                        )
                    } else {
                        SpirvError::Malformed(format!("storage buffer %{id} is not a Block"))
                    });
                }
                let set = d.set.get(&id).copied().unwrap_or(0);
                if set != 0 {
                    return Err(SpirvError::DescriptorSet { id, set });
                }
                let binding = *d.binding.get(&id).ok_or_else(|| {
                    SpirvError::Bindings(format!("storage buffer %{id} has no Binding"))
                })?;
                if binding >= MAX_BINDINGS {
                    return Err(SpirvError::Binding(binding));
                }
                let bit = 1u32 << binding;
                if facts.bindings_used & bit != 0 {
                    return Err(SpirvError::Bindings(format!(
                        "binding {binding} is declared twice"
                    )));
                }
                facts.bindings_used |= bit;
                let all_members_ro = d
                    .member_non_writable
                    .get(&pointee)
                    .is_some_and(|m| (0..members).all(|i| m.contains(&(i as u32))));
                if !(d.non_writable.contains(&id) || all_members_ro && members > 0) {
                    facts.bindings_written |= bit;
                }
            }
            StorageClass::PushConstant => {
                push_blocks += 1;
                if push_blocks > 1 {
                    return Err(SpirvError::PushConstants("more than one block".into()));
                }
                if !matches!(ty, Some(Ty::Struct { .. })) || !d.block.contains(&pointee) {
                    return Err(SpirvError::PushConstants("not a Block struct".into()));
                }
                let bytes = facts
                    .types
                    .explicit_size(pointee)
                    .ok_or(SpirvError::TypeSize(pointee))?;
                if bytes > u64::from(limits.max_push_constant_bytes) {
                    return Err(SpirvError::PushConstants(format!(
                        "block is {bytes} bytes, more than the limit of {}",
                        limits.max_push_constant_bytes
                    )));
                }
                facts.push_constant_bytes = bytes as u32;
            }
            StorageClass::Workgroup => {
                let bytes = facts
                    .types
                    .natural_size(pointee)
                    .ok_or(SpirvError::TypeSize(pointee))?;
                shared = shared.saturating_add(bytes);
                if shared > u64::from(limits.max_shared_bytes) {
                    return Err(SpirvError::SharedMemory {
                        bytes: shared,
                        limit: limits.max_shared_bytes,
                    });
                }
            }
            StorageClass::Private => {}
            StorageClass::Input => {
                let b = d.builtin.get(&id).ok_or_else(|| {
                    SpirvError::StorageClass("Input (only built-in inputs)".into())
                })?;
                if !builtin_allowed(*b, &limits.features) {
                    return Err(SpirvError::BuiltIn(format!("{b:?}")));
                }
                if *b == BuiltIn::NumWorkgroups {
                    match ty {
                        Some(Ty::Vector { comp, n: 3 })
                            if matches!(
                                facts.types.ty.get(comp),
                                Some(Ty::Int { width: 32, .. })
                            ) => {}
                        _ => {
                            return Err(SpirvError::Malformed(
                                "NumWorkgroups is not a 3-component 32-bit vector".into(),
                            ))
                        }
                    }
                    facts.num_workgroups = Some(id);
                }
            }
            other => return Err(SpirvError::StorageClass(format!("{other:?}"))),
        }
    }
    Ok(())
}

/// Function bodies: local variables, pointer-producing instructions, uses of NumWorkgroups,
/// back edges.
fn check_functions(module: &Module, facts: &mut Facts) -> Result<(), SpirvError> {
    let is_pointer = |t: Option<u32>| {
        matches!(
            t.and_then(|t| facts.types.ty.get(&t)),
            Some(Ty::Pointer { .. })
        )
    };
    // Result types of every value (for OpBitcast operands).
    let mut value_type: HashMap<u32, u32> = HashMap::new();
    let functions = module.functions.iter().flat_map(|f| f.all_inst_iter());
    for inst in module.types_global_values.iter().chain(functions) {
        if let (Some(id), Some(t)) = (inst.result_id, inst.result_type) {
            value_type.insert(id, t);
        }
    }
    // Access chains into NumWorkgroups, in any function.
    let nwg = facts.num_workgroups;
    let mut chains: HashSet<u32> = HashSet::new();
    for inst in module.functions.iter().flat_map(|f| f.all_inst_iter()) {
        if matches!(inst.class.opcode, Op::AccessChain | Op::InBoundsAccessChain)
            && nwg.is_some()
            && id_at(inst, 0) == nwg
        {
            chains.extend(inst.result_id);
        }
    }
    for f in &module.functions {
        if let Some(def) = &f.def {
            if is_pointer(def.result_type) {
                return Err(SpirvError::Instruction(
                    "Function returning a pointer".into(),
                ));
            }
        }
        for (bi, b) in f.blocks.iter().enumerate() {
            for inst in &b.instructions {
                let op = inst.class.opcode;
                if is_pointer(inst.result_type) && !makes_pointer(op) {
                    return Err(SpirvError::Instruction(format!(
                        "{} producing a pointer",
                        inst.class.opname
                    )));
                }
                let function_ptr = matches!(
                    inst.result_type.and_then(|t| facts.types.ty.get(&t)),
                    Some(Ty::Pointer {
                        class: StorageClass::Function,
                        ..
                    })
                );
                let function_class = matches!(
                    inst.operands.first(),
                    Some(Operand::StorageClass(StorageClass::Function))
                );
                if op == Op::Variable && (!function_ptr || !function_class || bi != 0) {
                    return Err(SpirvError::Malformed(
                        "a function variable must be of storage class Function, in the first \
                         block"
                            .into(),
                    ));
                }
                if op == Op::Bitcast {
                    let t = id_at(inst, 0).and_then(|v| value_type.get(&v).copied());
                    if is_pointer(t) {
                        return Err(SpirvError::Instruction("Bitcast of a pointer".into()));
                    }
                }
                // NumWorkgroups (and chains into it) may only be loaded.
                for (k, id) in inst.operands.iter().enumerate() {
                    let Operand::IdRef(id) = id else { continue };
                    let is_var = Some(*id) == nwg;
                    if !is_var && !chains.contains(id) {
                        continue;
                    }
                    let ok = k == 0
                        && (op == Op::Load
                            || is_var && matches!(op, Op::AccessChain | Op::InBoundsAccessChain));
                    if !ok {
                        return Err(SpirvError::NumWorkgroupsUse(inst.class.opname.to_owned()));
                    }
                }
            }
        }
        facts.back_edges.push(cfg::back_edges(f)?);
    }
    Ok(())
}
