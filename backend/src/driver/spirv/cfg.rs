//! Control flow: back edges (which every cycle of a function's CFG contains) and the call graph
//! (acyclic, and not too large once inlined).
//!
//! A back edge is a branch whose target comes at or before the branching block in the
//! function's block order. Every cycle contains one: take the cycle's last block in that order;
//! its edge along the cycle goes backward. So when every back edge is bounded, every loop is.

use std::collections::HashMap;

use rspirv::dr::{Function, Instruction, Module, Operand};
use rspirv::spirv::Op;

use super::facts::id_at;
use super::SpirvError;

/// How a back-edge block's terminator reaches its loop header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EdgeKind {
    /// `OpBranch %header`.
    Branch,
    /// `OpBranchConditional %c %header %merge`.
    TrueToHeader,
    /// `OpBranchConditional %c %merge %header`.
    FalseToHeader,
}

/// One back edge: block `block` (index in the function) branches to loop header `header`
/// (index), whose `OpLoopMerge` names `merge` (a block after `block`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BackEdge {
    pub block: usize,
    pub header: usize,
    pub merge: u32,
    pub kind: EdgeKind,
}

fn malformed(what: String) -> SpirvError {
    SpirvError::Malformed(what)
}

/// The merge instruction of a block (the instruction before its terminator), if any.
pub(super) fn merge_of(block: &rspirv::dr::Block) -> Option<&Instruction> {
    let n = block.instructions.len();
    block
        .instructions
        .get(n.checked_sub(2)?)
        .filter(|i| matches!(i.class.opcode, Op::LoopMerge | Op::SelectionMerge))
}

/// Finds and classifies every back edge of `f`; refuses the ones the instrumentation cannot
/// bound (to a block that is not a loop header, from a switch, or whose other target is not
/// the loop's merge block).
pub(super) fn back_edges(f: &Function) -> Result<Vec<BackEdge>, SpirvError> {
    let mut index = HashMap::with_capacity(f.blocks.len());
    for (i, b) in f.blocks.iter().enumerate() {
        let label = b
            .label_id()
            .ok_or_else(|| malformed("block without a label id".into()))?;
        index.insert(label, i);
    }
    let label = |i: usize| f.blocks.get(i).and_then(|b| b.label_id()).unwrap_or(0);
    let mut edges = Vec::new();
    for (i, b) in f.blocks.iter().enumerate() {
        let Some(term) = b.instructions.last() else {
            return Err(malformed(format!("block %{} is empty", label(i))));
        };
        // Merge instructions may only sit right before the terminator.
        let n = b.instructions.len();
        for (k, inst) in b.instructions.iter().enumerate() {
            if matches!(inst.class.opcode, Op::LoopMerge | Op::SelectionMerge) && k + 2 != n {
                return Err(malformed(format!(
                    "Op{} not right before the terminator of block %{}",
                    inst.class.opname,
                    label(i)
                )));
            }
        }
        let target = |id: u32| -> Result<usize, SpirvError> {
            index.get(&id).copied().ok_or_else(|| {
                malformed(format!(
                    "block %{} branches to %{id}, not a block of its function",
                    label(i)
                ))
            })
        };
        // The loop header's merge block, if `h` is a loop header.
        let loop_merge = |h: usize| -> Option<u32> {
            let m = merge_of(f.blocks.get(h)?)?;
            (m.class.opcode == Op::LoopMerge)
                .then(|| id_at(m, 0))
                .flatten()
        };
        let refuse = |h: usize, reason: &'static str| SpirvError::BackEdge {
            from: label(i),
            to: label(h),
            reason,
        };
        let bounded = |h: usize, kind: EdgeKind| -> Result<BackEdge, SpirvError> {
            let Some(merge) = loop_merge(h) else {
                return Err(SpirvError::UnstructuredBackEdge {
                    from: label(i),
                    to: label(h),
                });
            };
            if target(merge)? <= i {
                return Err(refuse(h, "the loop's merge block does not follow it"));
            }
            Ok(BackEdge {
                block: i,
                header: h,
                merge,
                kind,
            })
        };
        match term.class.opcode {
            Op::Branch => {
                let t = target(id_at(term, 0).ok_or_else(|| malformed("OpBranch".into()))?)?;
                if t <= i {
                    edges.push(bounded(t, EdgeKind::Branch)?);
                }
            }
            Op::BranchConditional => {
                let bad = || malformed("OpBranchConditional operands".into());
                let t = target(id_at(term, 1).ok_or_else(bad)?)?;
                let e = target(id_at(term, 2).ok_or_else(bad)?)?;
                let (h, other, kind) = match (t <= i, e <= i) {
                    (false, false) => continue,
                    (true, false) => (t, e, EdgeKind::TrueToHeader),
                    (false, true) => (e, t, EdgeKind::FalseToHeader),
                    (true, true) => return Err(refuse(t, "both targets go backward")),
                };
                let edge = bounded(h, kind)?;
                if label(other) != edge.merge {
                    return Err(refuse(h, "its other target is not the loop's merge block"));
                }
                edges.push(edge);
            }
            Op::Switch => {
                for op in term.operands.iter().skip(1) {
                    if let Operand::IdRef(id) = op {
                        let t = target(*id)?;
                        if t <= i {
                            if loop_merge(t).is_none() {
                                return Err(SpirvError::UnstructuredBackEdge {
                                    from: label(i),
                                    to: label(t),
                                });
                            }
                            return Err(refuse(t, "a switch may not branch backward"));
                        }
                    }
                }
            }
            Op::Return | Op::ReturnValue | Op::Unreachable => {}
            other => {
                return Err(SpirvError::Instruction(format!("{other:?}")));
            }
        }
    }
    Ok(edges)
}

/// Checks the call graph: every callee is a function of the module, there is no cycle, and
/// the entry point inlined (drivers inline every call) stays within `limit` instructions.
pub(super) fn check_calls(module: &Module, limit: u64) -> Result<(), SpirvError> {
    let mut index = HashMap::with_capacity(module.functions.len());
    for (i, f) in module.functions.iter().enumerate() {
        let id = f
            .def_id()
            .ok_or_else(|| malformed("function without an id".into()))?;
        index.insert(id, i);
    }
    let mut callees: Vec<Vec<usize>> = Vec::with_capacity(module.functions.len());
    let mut own: Vec<u64> = Vec::with_capacity(module.functions.len());
    for f in &module.functions {
        let mut calls = Vec::new();
        let mut count = 0u64;
        for inst in f.blocks.iter().flat_map(|b| b.instructions.iter()) {
            count += 1;
            if inst.class.opcode == Op::FunctionCall {
                let callee = id_at(inst, 0)
                    .and_then(|id| index.get(&id).copied())
                    .ok_or_else(|| {
                        malformed("OpFunctionCall of something not a function".into())
                    })?;
                calls.push(callee);
            }
        }
        callees.push(calls);
        own.push(count);
    }
    // Iterative depth-first search: 0 unvisited, 1 on the stack, 2 done.
    let n = module.functions.len();
    let mut state = vec![0u8; n];
    let mut inlined = vec![0u64; n];
    for root in 0..n {
        if state[root] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        state[root] = 1;
        while let Some(&mut (f, ref mut next)) = stack.last_mut() {
            if let Some(&c) = callees[f].get(*next) {
                *next += 1;
                match state[c] {
                    0 => {
                        state[c] = 1;
                        stack.push((c, 0));
                    }
                    1 => {
                        let id = module.functions[c].def_id().unwrap_or(0);
                        return Err(SpirvError::Recursion(id));
                    }
                    _ => {}
                }
            } else {
                let total = callees[f]
                    .iter()
                    .fold(own[f], |acc, &c| acc.saturating_add(inlined[c]));
                if total > limit {
                    return Err(SpirvError::InlinedSize(limit));
                }
                inlined[f] = total;
                state[f] = 2;
                stack.pop();
            }
        }
    }
    Ok(())
}
