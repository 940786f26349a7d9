//! Index clamping for memory that robust buffer access does not cover.
//!
//! `robustBufferAccess` bounds every access to a storage buffer, but not to shared
//! (`Workgroup`), `Private`, `Function`, `PushConstant` or `Input` memory: an out-of-range index
//! there is undefined behaviour, and on a CPU device (lavapipe) it reads or writes the daemon's
//! own memory. So every dynamic array, vector or matrix index of an access chain into those
//! storage classes is clamped: `idx < len ? idx : 0` (an unsigned compare, so negative indices
//! clamp too). Constant indices in range are left alone; struct member indices must be constants
//! in range.

use std::collections::HashMap;

use rspirv::dr::{Instruction, Module, Operand};
use rspirv::spirv::{Op, StorageClass};

use super::facts::{Facts, Ty};
use super::instrument::Ids;
use super::SpirvError;

/// Storage classes whose accesses robust buffer access bounds.
fn robust(class: StorageClass) -> bool {
    matches!(class, StorageClass::StorageBuffer | StorageClass::Uniform)
}

/// Constants this pass adds: (type, value) → id.
struct Constants<'a> {
    map: HashMap<(u32, u64), u32>,
    out: Vec<Instruction>,
    facts: &'a Facts,
}

impl Constants<'_> {
    fn get(&mut self, ty: u32, value: u64, ids: &mut Ids) -> Result<u32, SpirvError> {
        if let Some(id) = self.map.get(&(ty, value)) {
            return Ok(*id);
        }
        let literal = match self.facts.types.ty.get(&ty) {
            Some(Ty::Int { width: 64, .. }) => Operand::LiteralBit64(value),
            Some(Ty::Int { width: 32, .. }) => {
                Operand::LiteralBit32(u32::try_from(value).unwrap_or(u32::MAX))
            }
            _ => {
                return Err(SpirvError::Malformed(format!(
                    "index of type %{ty}: only 32- and 64-bit integer indices are accepted"
                )))
            }
        };
        let id = ids.next()?;
        self.out.push(Instruction::new(
            Op::Constant,
            Some(ty),
            Some(id),
            vec![literal],
        ));
        self.map.insert((ty, value), id);
        Ok(id)
    }
}

/// Clamps the indices of every access chain into non-robust memory; returns how many dynamic
/// indices were clamped.
pub(super) fn clamp_indices(
    module: &mut Module,
    facts: &Facts,
    boolean: u32,
    ids: &mut Ids,
) -> Result<u32, SpirvError> {
    let mut value_type: HashMap<u32, u32> = HashMap::new();
    let functions = module.functions.iter().flat_map(|f| f.all_inst_iter());
    for inst in module.types_global_values.iter().chain(functions) {
        if let (Some(id), Some(t)) = (inst.result_id, inst.result_type) {
            value_type.insert(id, t);
        }
    }
    let mut consts = Constants {
        map: HashMap::new(),
        out: Vec::new(),
        facts,
    };
    let mut clamped = 0;
    for f in &mut module.functions {
        for b in &mut f.blocks {
            let mut out = Vec::with_capacity(b.instructions.len());
            for mut inst in std::mem::take(&mut b.instructions) {
                if matches!(inst.class.opcode, Op::AccessChain | Op::InBoundsAccessChain) {
                    clamped += clamp_chain(
                        &mut inst,
                        facts,
                        &value_type,
                        boolean,
                        &mut consts,
                        ids,
                        &mut out,
                    )?;
                }
                out.push(inst);
            }
            b.instructions = out;
        }
    }
    module.types_global_values.append(&mut consts.out);
    Ok(clamped)
}

/// Clamps one access chain's indices, pushing the selects before it into `out`.
fn clamp_chain(
    chain: &mut Instruction,
    facts: &Facts,
    value_type: &HashMap<u32, u32>,
    boolean: u32,
    consts: &mut Constants<'_>,
    ids: &mut Ids,
    out: &mut Vec<Instruction>,
) -> Result<u32, SpirvError> {
    let types = &facts.types.ty;
    let base = super::facts::id_at(chain, 0).unwrap_or(0);
    let Some(Ty::Pointer { class, pointee }) = value_type.get(&base).and_then(|t| types.get(t))
    else {
        return Err(SpirvError::Malformed(format!(
            "access chain base %{base} is not a pointer"
        )));
    };
    if robust(*class) {
        return Ok(0);
    }
    let mut ty = *pointee;
    let mut clamped = 0;
    for op in chain.operands.iter_mut().skip(1) {
        let Operand::IdRef(idx) = op else {
            return Err(SpirvError::Malformed("access chain index".into()));
        };
        let constant = facts.types.int_const.get(idx).copied();
        let (next, len) = match types.get(&ty) {
            Some(Ty::Struct { members }) => {
                let m = constant
                    .and_then(|c| usize::try_from(c).ok())
                    .and_then(|c| members.get(c))
                    .ok_or_else(|| {
                        SpirvError::Malformed(format!(
                            "struct index %{idx} into %{ty} is not a constant member index"
                        ))
                    })?;
                ty = *m;
                continue;
            }
            Some(Ty::Array { elem, len }) => (*elem, *len),
            Some(Ty::Vector { comp, n }) => (*comp, u64::from(*n)),
            Some(Ty::Matrix { col, n }) => (*col, u64::from(*n)),
            _ => {
                return Err(SpirvError::Malformed(format!(
                    "access chain indexes into %{ty}, which is not a composite"
                )))
            }
        };
        ty = next;
        if constant.is_some_and(|c| c < len) {
            continue;
        }
        let Some(itype) = value_type.get(idx).copied() else {
            return Err(SpirvError::Malformed(format!("index %{idx} has no type")));
        };
        let (limit, zero) = (consts.get(itype, len, ids)?, consts.get(itype, 0, ids)?);
        let (inside, safe) = (ids.next()?, ids.next()?);
        out.push(Instruction::new(
            Op::ULessThan,
            Some(boolean),
            Some(inside),
            vec![Operand::IdRef(*idx), Operand::IdRef(limit)],
        ));
        out.push(Instruction::new(
            Op::Select,
            Some(itype),
            Some(safe),
            vec![
                Operand::IdRef(inside),
                Operand::IdRef(*idx),
                Operand::IdRef(zero),
            ],
        ));
        *op = Operand::IdRef(safe);
        clamped += 1;
    }
    Ok(clamped)
}
