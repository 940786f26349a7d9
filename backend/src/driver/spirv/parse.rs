//! Parsing with rspirv, made safe for hostile input.
//!
//! - The word stream's framing (every instruction's word count is at least 1 and ends within
//!   the stream) is checked first: rspirv 0.13 slices past the end of the stream, and panics,
//!   on a string operand of an instruction whose word count runs past it.
//! - rspirv 0.13 panics on an `OpSpecConstantOp` whose inner opcode has a context-dependent
//!   operand (`OpConstant`, `OpSwitch`, `OpSpecConstantOp`, …); the inner opcode must be one the
//!   specification allows there for shaders, checked before rspirv parses.
//! - rspirv's loader does not know `OpExecutionModeId` (which glslang emits for SPIR-V 1.6,
//!   `LocalSizeId`); this consumer puts it with the execution modes.

use rspirv::binary::{Consumer, ParseAction};
use rspirv::dr::{Instruction, Loader, Module, ModuleHeader};
use rspirv::spirv::Op;

use super::SpirvError;

/// Words in the module header.
const HEADER_WORDS: usize = 5;

/// The opcodes `OpSpecConstantOp` may compute in a shader (SPIR-V specification, 3.52.7).
const SPEC_CONSTANT_OPS: &[Op] = &[
    Op::SConvert,
    Op::UConvert,
    Op::FConvert,
    Op::SNegate,
    Op::Not,
    Op::IAdd,
    Op::ISub,
    Op::IMul,
    Op::UDiv,
    Op::SDiv,
    Op::UMod,
    Op::SRem,
    Op::SMod,
    Op::ShiftRightLogical,
    Op::ShiftRightArithmetic,
    Op::ShiftLeftLogical,
    Op::BitwiseOr,
    Op::BitwiseXor,
    Op::BitwiseAnd,
    Op::VectorShuffle,
    Op::CompositeExtract,
    Op::CompositeInsert,
    Op::LogicalOr,
    Op::LogicalAnd,
    Op::LogicalNot,
    Op::LogicalEqual,
    Op::LogicalNotEqual,
    Op::Select,
    Op::IEqual,
    Op::INotEqual,
    Op::ULessThan,
    Op::SLessThan,
    Op::UGreaterThan,
    Op::SGreaterThan,
    Op::ULessThanEqual,
    Op::SLessThanEqual,
    Op::UGreaterThanEqual,
    Op::SGreaterThanEqual,
    Op::QuantizeToF16,
];

/// Checks that `words` is a header followed by whole instructions, and that every
/// `OpSpecConstantOp` computes an allowed opcode.
fn check_framing(words: &[u32]) -> Result<(), SpirvError> {
    if words.len() < HEADER_WORDS {
        return Err(SpirvError::Parse(format!(
            "{} words, shorter than the header",
            words.len()
        )));
    }
    let mut at = HEADER_WORDS;
    while let Some(w) = words.get(at) {
        let count = (w >> 16) as usize;
        if count == 0 {
            return Err(SpirvError::Parse(format!("word count 0 at word {at}")));
        }
        if at + count > words.len() {
            return Err(SpirvError::Parse(format!(
                "instruction at word {at} ({count} words) runs past the end"
            )));
        }
        if w & 0xffff == Op::SpecConstantOp as u32 && count >= 4 {
            let inner = words.get(at + 3).copied().unwrap_or(0);
            if !SPEC_CONSTANT_OPS.iter().any(|op| *op as u32 == inner) {
                return Err(SpirvError::Parse(format!(
                    "OpSpecConstantOp of opcode {inner} at word {at}"
                )));
            }
        }
        at += count;
    }
    Ok(())
}

/// rspirv's loader, plus the execution modes it does not place.
struct SafeLoader {
    inner: Loader,
    mode_ids: Vec<Instruction>,
}

impl Consumer for SafeLoader {
    fn initialize(&mut self) -> ParseAction {
        self.inner.initialize()
    }

    fn finalize(&mut self) -> ParseAction {
        self.inner.finalize()
    }

    fn consume_header(&mut self, header: ModuleHeader) -> ParseAction {
        self.inner.consume_header(header)
    }

    fn consume_instruction(&mut self, inst: Instruction) -> ParseAction {
        if inst.class.opcode == Op::ExecutionModeId {
            self.mode_ids.push(inst);
            return ParseAction::Continue;
        }
        self.inner.consume_instruction(inst)
    }
}

/// Parses `words` into rspirv's data representation.
pub(super) fn load(words: &[u32]) -> Result<Module, SpirvError> {
    check_framing(words)?;
    let mut loader = SafeLoader {
        inner: Loader::new(),
        mode_ids: Vec::new(),
    };
    rspirv::binary::parse_words(words, &mut loader)
        .map_err(|e| SpirvError::Parse(e.to_string()))?;
    let mut module = loader.inner.module();
    module.execution_modes.extend(loader.mode_ids);
    Ok(module)
}
