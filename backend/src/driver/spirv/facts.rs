//! What validation learns about a module: its decorations, its types and their sizes, and the
//! results the engine and the instrumentation need.
//!
//! Types are read in one forward pass over the global section: SPIR-V declares a type before
//! any use (forward pointers are refused), so each size is computed from sizes already known,
//! with checked arithmetic and no recursion.

use std::collections::{HashMap, HashSet};

use rspirv::dr::{Instruction, Operand};
use rspirv::spirv::{BuiltIn, Decoration, Op, StorageClass};

use super::cfg::BackEdge;
use super::SpirvError;

/// A type of the compute subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ty {
    Void,
    Bool,
    Int { width: u32, signed: bool },
    Float { width: u32 },
    Vector { comp: u32, n: u32 },
    Matrix { col: u32, n: u32 },
    Array { elem: u32, len: u64 },
    RuntimeArray { elem: u32 },
    Struct { members: Vec<u32> },
    Pointer { class: StorageClass, pointee: u32 },
    Function,
}

/// Decorations by target id.
#[derive(Debug, Default)]
pub(super) struct Decorations {
    pub binding: HashMap<u32, u32>,
    pub set: HashMap<u32, u32>,
    pub builtin: HashMap<u32, BuiltIn>,
    pub block: HashSet<u32>,
    pub buffer_block: HashSet<u32>,
    pub non_writable: HashSet<u32>,
    /// Struct id → members decorated `NonWritable`.
    pub member_non_writable: HashMap<u32, HashSet<u32>>,
    pub member_offset: HashMap<(u32, u32), u32>,
    pub member_matrix_stride: HashMap<(u32, u32), u32>,
    pub array_stride: HashMap<u32, u32>,
}

/// Decorations with no bearing on what memory a kernel can reach or how long it runs.
const ALLOWED_DECORATIONS: &[Decoration] = &[
    Decoration::RelaxedPrecision,
    Decoration::SpecId,
    Decoration::Block,
    Decoration::BufferBlock,
    Decoration::RowMajor,
    Decoration::ColMajor,
    Decoration::ArrayStride,
    Decoration::MatrixStride,
    Decoration::BuiltIn,
    Decoration::NoContraction,
    Decoration::Restrict,
    Decoration::Aliased,
    Decoration::Volatile,
    Decoration::Coherent,
    Decoration::NonWritable,
    Decoration::NonReadable,
    Decoration::Uniform,
    Decoration::UniformId,
    Decoration::Binding,
    Decoration::DescriptorSet,
    Decoration::Offset,
    Decoration::NonUniform,
    Decoration::RestrictPointer,
    Decoration::AliasedPointer,
    Decoration::NoSignedWrap,
    Decoration::NoUnsignedWrap,
    Decoration::UserSemantic,
    Decoration::UserTypeGOOGLE,
];

fn lit(ops: &[Operand], i: usize) -> Option<u32> {
    match ops.get(i) {
        Some(Operand::LiteralBit32(v)) => Some(*v),
        _ => None,
    }
}

/// The id operand `i` of `inst`.
pub(super) fn id_at(inst: &Instruction, i: usize) -> Option<u32> {
    match inst.operands.get(i) {
        Some(Operand::IdRef(v)) => Some(*v),
        _ => None,
    }
}

fn malformed(inst: &Instruction) -> SpirvError {
    SpirvError::Malformed(format!("Op{} has unexpected operands", inst.class.opname))
}

impl Decorations {
    /// Reads the annotation section, refusing decorations outside the allowlist.
    pub fn read(annotations: &[Instruction]) -> Result<Self, SpirvError> {
        let mut d = Self::default();
        for inst in annotations {
            let (target, member, at) = match inst.class.opcode {
                Op::Decorate | Op::DecorateId | Op::DecorateString => {
                    (id_at(inst, 0).ok_or_else(|| malformed(inst))?, None, 1)
                }
                Op::MemberDecorate | Op::MemberDecorateString => (
                    id_at(inst, 0).ok_or_else(|| malformed(inst))?,
                    Some(lit(&inst.operands, 1).ok_or_else(|| malformed(inst))?),
                    2,
                ),
                _ => return Err(SpirvError::Instruction(inst.class.opname.to_owned())),
            };
            let Some(Operand::Decoration(dec)) = inst.operands.get(at) else {
                return Err(malformed(inst));
            };
            if !ALLOWED_DECORATIONS.contains(dec) {
                return Err(SpirvError::Decoration(format!("{dec:?}")));
            }
            let arg = lit(&inst.operands, at + 1);
            let need = || arg.ok_or_else(|| malformed(inst));
            match (member, dec) {
                (None, Decoration::Binding) => {
                    d.binding.insert(target, need()?);
                }
                (None, Decoration::DescriptorSet) => {
                    d.set.insert(target, need()?);
                }
                (None, Decoration::BuiltIn) => {
                    let Some(Operand::BuiltIn(b)) = inst.operands.get(at + 1) else {
                        return Err(malformed(inst));
                    };
                    d.builtin.insert(target, *b);
                }
                (Some(_), Decoration::BuiltIn) => {
                    return Err(SpirvError::Decoration("BuiltIn on a struct member".into()))
                }
                (None, Decoration::Block) => {
                    d.block.insert(target);
                }
                (None, Decoration::BufferBlock) => {
                    d.buffer_block.insert(target);
                }
                (None, Decoration::NonWritable) => {
                    d.non_writable.insert(target);
                }
                (Some(m), Decoration::NonWritable) => {
                    d.member_non_writable.entry(target).or_default().insert(m);
                }
                (Some(m), Decoration::Offset) => {
                    d.member_offset.insert((target, m), need()?);
                }
                (Some(m), Decoration::MatrixStride) => {
                    d.member_matrix_stride.insert((target, m), need()?);
                }
                (None, Decoration::ArrayStride) => {
                    d.array_stride.insert(target, need()?);
                }
                _ => {}
            }
        }
        Ok(d)
    }
}

/// The types of a module with two sizes each: `natural` (no explicit layout, padded the way
/// drivers pad, for shared memory) and `explicit` (from Offset/ArrayStride/MatrixStride, for
/// push constants; an upper bound).
#[derive(Debug, Default)]
pub(super) struct Types {
    pub ty: HashMap<u32, Ty>,
    natural: HashMap<u32, u64>,
    explicit: HashMap<u32, u64>,
    /// Constant id → its value when it is a 32/64-bit integer constant (spec constants: default).
    pub int_const: HashMap<u32, u64>,
}

fn round_up(v: u64, to: u64) -> Option<u64> {
    v.checked_add(to - 1).map(|x| x / to * to)
}

impl Types {
    /// Records a type instruction; its operands name only types recorded before.
    pub fn add(&mut self, inst: &Instruction, d: &Decorations) -> Result<(), SpirvError> {
        let id = inst.result_id.ok_or_else(|| malformed(inst))?;
        let ops = &inst.operands;
        let known = |t: u32| -> Result<&Ty, SpirvError> {
            self.ty.get(&t).ok_or_else(|| {
                SpirvError::Malformed(format!("type %{id} names %{t}, which is not a type"))
            })
        };
        let not_pointer = |t: u32| -> Result<(), SpirvError> {
            match known(t)? {
                Ty::Pointer { .. } => Err(SpirvError::Type(format!(
                    "%{id}: a pointer inside a composite or pointer needs VariablePointers"
                ))),
                Ty::Void | Ty::Function => Err(SpirvError::Malformed(format!(
                    "type %{id} contains void or a function type"
                ))),
                _ => Ok(()),
            }
        };
        let size = |t: u32, m: &HashMap<u32, u64>| m.get(&t).copied();
        let too_big = || SpirvError::TypeSize(id);
        let (ty, natural, explicit) = match inst.class.opcode {
            Op::TypeVoid => (Ty::Void, None, None),
            Op::TypeFunction => (Ty::Function, None, None),
            Op::TypeBool => (Ty::Bool, Some(4), None),
            Op::TypeInt => {
                let width = lit(ops, 0).ok_or_else(|| malformed(inst))?;
                let signed = lit(ops, 1).ok_or_else(|| malformed(inst))? != 0;
                if ![8, 16, 32, 64].contains(&width) {
                    return Err(SpirvError::Type(format!("{width}-bit integer")));
                }
                let b = u64::from(width / 8);
                (Ty::Int { width, signed }, Some(b), Some(b))
            }
            Op::TypeFloat => {
                let width = lit(ops, 0).ok_or_else(|| malformed(inst))?;
                if ops.len() != 1 || ![16, 32, 64].contains(&width) {
                    return Err(SpirvError::Type(format!("{width}-bit float")));
                }
                let b = u64::from(width / 8);
                (Ty::Float { width }, Some(b), Some(b))
            }
            Op::TypeVector => {
                let comp = id_at(inst, 0).ok_or_else(|| malformed(inst))?;
                let n = lit(ops, 1).ok_or_else(|| malformed(inst))?;
                if !matches!(known(comp)?, Ty::Bool | Ty::Int { .. } | Ty::Float { .. })
                    || !(2..=4).contains(&n)
                {
                    return Err(SpirvError::Type(format!("vector %{id}")));
                }
                let c = size(comp, &self.natural).ok_or_else(too_big)?;
                // vec3 occupies four components' worth in shared memory on most drivers.
                let padded = if n == 3 { 4 } else { u64::from(n) };
                (
                    Ty::Vector { comp, n },
                    Some(c * padded),
                    Some(c * u64::from(n)),
                )
            }
            Op::TypeMatrix => {
                let col = id_at(inst, 0).ok_or_else(|| malformed(inst))?;
                let n = lit(ops, 1).ok_or_else(|| malformed(inst))?;
                if !matches!(known(col)?, Ty::Vector { .. }) || !(2..=4).contains(&n) {
                    return Err(SpirvError::Type(format!("matrix %{id}")));
                }
                let c = size(col, &self.natural).ok_or_else(too_big)?;
                let colsize = round_up(c, 16).ok_or_else(too_big)?;
                let s = colsize * u64::from(n);
                (Ty::Matrix { col, n }, Some(s), Some(s))
            }
            Op::TypeArray => {
                let elem = id_at(inst, 0).ok_or_else(|| malformed(inst))?;
                let len_id = id_at(inst, 1).ok_or_else(|| malformed(inst))?;
                not_pointer(elem)?;
                let len = *self.int_const.get(&len_id).ok_or_else(|| {
                    SpirvError::Type(format!("array %{id} whose length is not a constant"))
                })?;
                let e = size(elem, &self.natural).ok_or_else(too_big)?;
                let natural = e.checked_mul(len).ok_or_else(too_big)?;
                let ex = size(elem, &self.explicit).unwrap_or(e);
                let stride = d
                    .array_stride
                    .get(&id)
                    .map_or(ex, |s| u64::from(*s).max(ex));
                let explicit = stride.checked_mul(len).ok_or_else(too_big)?;
                (Ty::Array { elem, len }, Some(natural), Some(explicit))
            }
            Op::TypeRuntimeArray => {
                let elem = id_at(inst, 0).ok_or_else(|| malformed(inst))?;
                not_pointer(elem)?;
                (Ty::RuntimeArray { elem }, None, None)
            }
            Op::TypeStruct => {
                let mut members = Vec::with_capacity(ops.len());
                let mut natural = Some(0u64);
                let mut explicit = Some(0u64);
                for (m, op) in ops.iter().enumerate() {
                    let Operand::IdRef(t) = op else {
                        return Err(malformed(inst));
                    };
                    not_pointer(*t)?;
                    members.push(*t);
                    let m = u32::try_from(m).map_err(|_| too_big())?;
                    let nat = size(*t, &self.natural);
                    natural = match (natural, nat) {
                        (Some(a), Some(b)) => Some(
                            round_up(a.checked_add(b).ok_or_else(too_big)?, 4)
                                .ok_or_else(too_big)?,
                        ),
                        _ => None,
                    };
                    let mut ex = size(*t, &self.explicit).or(nat);
                    if let (Some(Ty::Matrix { n, .. }), Some(s)) =
                        (self.ty.get(t), d.member_matrix_stride.get(&(id, m)))
                    {
                        ex = ex.map(|e| e.max(u64::from(*n) * u64::from(*s)));
                    }
                    let offset = d.member_offset.get(&(id, m)).map(|o| u64::from(*o));
                    explicit = match (explicit, ex) {
                        (Some(a), Some(b)) => {
                            let end = offset.unwrap_or(a).checked_add(b).ok_or_else(too_big)?;
                            Some(a.max(end))
                        }
                        _ => None,
                    };
                }
                let natural = natural.and_then(|n| round_up(n, 16));
                (Ty::Struct { members }, natural, explicit)
            }
            Op::TypePointer => {
                let Some(Operand::StorageClass(class)) = ops.first() else {
                    return Err(malformed(inst));
                };
                let pointee = id_at(inst, 1).ok_or_else(|| malformed(inst))?;
                check_storage_class(*class)?;
                not_pointer(pointee)?;
                (
                    Ty::Pointer {
                        class: *class,
                        pointee,
                    },
                    None,
                    None,
                )
            }
            op => return Err(SpirvError::Type(format!("Op{op:?}"))),
        };
        self.ty.insert(id, ty);
        if let Some(n) = natural {
            self.natural.insert(id, n);
        }
        if let Some(e) = explicit {
            self.explicit.insert(id, e);
        }
        Ok(())
    }

    /// Records an integer constant's value (for array lengths and the workgroup size).
    pub fn add_constant(&mut self, inst: &Instruction) {
        let (Some(id), Some(t)) = (inst.result_id, inst.result_type) else {
            return;
        };
        if !matches!(self.ty.get(&t), Some(Ty::Int { .. })) {
            return;
        }
        let v = match inst.operands.first() {
            Some(Operand::LiteralBit32(v)) => u64::from(*v),
            Some(Operand::LiteralBit64(v)) => *v,
            _ => return,
        };
        self.int_const.insert(id, v);
    }

    /// Size of `t` without explicit layout (shared memory).
    pub fn natural_size(&self, t: u32) -> Option<u64> {
        self.natural.get(&t).copied()
    }

    /// Size of `t` with its explicit layout (push constants).
    pub fn explicit_size(&self, t: u32) -> Option<u64> {
        self.explicit.get(&t).copied()
    }

    /// The id of a type equal to `want`, if the module declares one.
    pub fn find(&self, want: &Ty) -> Option<u32> {
        // Lowest id: deterministic output.
        self.ty
            .iter()
            .filter(|(_, t)| *t == want)
            .map(|(id, _)| *id)
            .min()
    }
}

/// Storage classes of the compute subset (in pointer types and variables).
pub(super) fn check_storage_class(class: StorageClass) -> Result<(), SpirvError> {
    match class {
        StorageClass::StorageBuffer
        | StorageClass::Uniform
        | StorageClass::PushConstant
        | StorageClass::Workgroup
        | StorageClass::Private
        | StorageClass::Function
        | StorageClass::Input => Ok(()),
        other => Err(SpirvError::StorageClass(format!("{other:?}"))),
    }
}

/// Everything [`super::prepare`] and the instrumentation need from validation.
#[derive(Debug)]
pub(super) struct Facts {
    /// SPIR-V version (major, minor).
    pub version: (u8, u8),
    /// The entry point's function id.
    pub entry_fn: u32,
    pub workgroup_size: [u32; 3],
    pub bindings_used: u32,
    pub bindings_written: u32,
    pub push_constant_bytes: u32,
    /// The `NumWorkgroups` input variable, if declared.
    pub num_workgroups: Option<u32>,
    /// Back edges per function (same order as the module's functions).
    pub back_edges: Vec<Vec<BackEdge>>,
    pub types: Types,
}
