//! Undefined values become zeros.
//!
//! A driver's compiler may treat an undefined value as anything, and LLVM (lavapipe's backend)
//! may treat a branch or an address computed from one as impossible and optimise the check
//! that guarded it away. So every `OpUndef` of the guest becomes a null constant of its type
//! (`OpConstantNull` in the global section; `OpCopyObject` of one inside functions), and the
//! values the instrumentation must invent (phi inputs from a new predecessor, the value a
//! function returns from a block that used to be unreachable) are null constants too.

use std::collections::HashMap;

use rspirv::dr::{Instruction, Module, Operand};
use rspirv::spirv::Op;

use super::instrument::Ids;
use super::SpirvError;

/// `OpConstantNull` per type: the guest's own (from its global `OpUndef`s) and new ones.
#[derive(Default)]
pub(super) struct Nulls {
    map: HashMap<u32, u32>,
    new: Vec<Instruction>,
}

impl Nulls {
    /// The null constant of type `ty`.
    pub fn get(&mut self, ty: u32, ids: &mut Ids) -> Result<u32, SpirvError> {
        if let Some(id) = self.map.get(&ty) {
            return Ok(*id);
        }
        let id = ids.next()?;
        self.new.push(Instruction::new(
            Op::ConstantNull,
            Some(ty),
            Some(id),
            vec![],
        ));
        self.map.insert(ty, id);
        Ok(id)
    }

    /// Appends the new constants to the global section (after every type they name).
    pub fn finish(self, module: &mut Module) {
        module.types_global_values.extend(self.new);
    }
}

/// Replaces every `OpUndef` with a null constant of its type.
pub(super) fn zero_undefs(module: &mut Module, ids: &mut Ids) -> Result<Nulls, SpirvError> {
    let mut nulls = Nulls::default();
    for inst in &mut module.types_global_values {
        if inst.class.opcode == Op::Undef {
            *inst = Instruction::new(Op::ConstantNull, inst.result_type, inst.result_id, vec![]);
            if let (Some(t), Some(id)) = (inst.result_type, inst.result_id) {
                nulls.map.entry(t).or_insert(id);
            }
        }
    }
    for inst in module
        .functions
        .iter_mut()
        .flat_map(|f| f.blocks.iter_mut())
        .flat_map(|b| b.instructions.iter_mut())
    {
        if inst.class.opcode == Op::Undef {
            let ty = inst.result_type.unwrap_or(0);
            let null = nulls.get(ty, ids)?;
            *inst = Instruction::new(
                Op::CopyObject,
                inst.result_type,
                inst.result_id,
                vec![Operand::IdRef(null)],
            );
        }
    }
    Ok(nulls)
}
