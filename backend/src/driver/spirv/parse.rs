//! Parsing with rspirv, made safe for hostile input.
//!
//! - The word stream's framing (every instruction's word count is at least 1 and ends within
//!   the stream) is checked first: rspirv 0.13 slices past the end of the stream, and panics,
//!   on a string operand of an instruction whose word count runs past it.
//! - rspirv's loader does not know `OpExecutionModeId` (which glslang emits for SPIR-V 1.6,
//!   `LocalSizeId`); this consumer puts it with the execution modes.

use rspirv::binary::{Consumer, ParseAction};
use rspirv::dr::{Instruction, Loader, Module, ModuleHeader};
use rspirv::spirv::Op;

use super::SpirvError;

/// Words in the module header.
const HEADER_WORDS: usize = 5;

/// Checks that `words` is a header followed by whole instructions.
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
