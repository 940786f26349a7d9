//! The rewriting pass that bounds a validated module's running time and fixes `NumWorkgroups`.
//!
//! - A `Private` u32 counter (initialised to 0), shared by all loops of all functions.
//! - Every back edge `B → H` (loop header `H`, merge `M`) increments it and continues the loop
//!   only while `counter <= budget`; otherwise it leaves through `M`. Once the budget is spent
//!   every back edge leaves, the CFG that remains is acyclic (every merge follows its back-edge
//!   block) and the call graph is acyclic: the invocation ends.
//! - Before each `OpReturn` of the entry point: `if (counter > budget) control.status = 1`.
//! - Loads of the `NumWorkgroups` input read `control.grid` instead.
//! - Dynamic indices into memory robust buffer access does not cover are clamped
//!   ([`super::bounds`]); undefined values become zeros ([`super::sanitize`]).
//!
//! The control block is a new StorageBuffer `Block { u32 status; (pad) uvec3 grid @16 }` at
//! set 0 / [`CONTROL_BINDING`].

use std::collections::HashMap;

use rspirv::binary::Assemble;
use rspirv::dr::{Block, Instruction, Module, Operand};
use rspirv::spirv::{Decoration, Op, SelectionControl, StorageClass};

use super::cfg::EdgeKind;
use super::facts::{Facts, Ty};
use super::{SpirvError, CONTROL_BINDING, CONTROL_GRID_OFFSET, CONTROL_STATUS_OFFSET};

/// Hands out fresh ids above the module's bound.
pub(super) struct Ids(u32);

impl Ids {
    /// A fresh id.
    pub(super) fn next(&mut self) -> Result<u32, SpirvError> {
        let id = self.0;
        if id >= super::MAX_ID_BOUND {
            return Err(SpirvError::IdBound(id));
        }
        self.0 += 1;
        Ok(id)
    }
}

fn inst(op: Op, ty: Option<u32>, id: Option<u32>, operands: Vec<Operand>) -> Instruction {
    Instruction::new(op, ty, id, operands)
}

/// Ids of everything the instrumentation adds to the global section.
struct Globals {
    uint: u32,
    boolean: u32,
    c0: u32,
    c1: u32,
    budget: u32,
    counter: u32,
    control: u32,
    ptr_sb_uint: u32,
    /// For NumWorkgroups: pointer to the grid vector and to one of its components.
    ptr_sb_grid: u32,
    ptr_sb_grid_comp: u32,
}

/// Finds a type in the module or appends it.
fn type_id(
    module: &mut Module,
    facts: &Facts,
    added: &mut Vec<(Ty, u32)>,
    ids: &mut Ids,
    want: Ty,
) -> Result<u32, SpirvError> {
    if let Some(id) = facts.types.find(&want) {
        return Ok(id);
    }
    if let Some((_, id)) = added.iter().find(|(t, _)| *t == want) {
        return Ok(*id);
    }
    let id = ids.next()?;
    let i = match &want {
        Ty::Bool => inst(Op::TypeBool, None, Some(id), vec![]),
        Ty::Int { width, signed } => inst(
            Op::TypeInt,
            None,
            Some(id),
            vec![
                Operand::LiteralBit32(*width),
                Operand::LiteralBit32(u32::from(*signed)),
            ],
        ),
        Ty::Vector { comp, n } => inst(
            Op::TypeVector,
            None,
            Some(id),
            vec![Operand::IdRef(*comp), Operand::LiteralBit32(*n)],
        ),
        Ty::Pointer { class, pointee } => inst(
            Op::TypePointer,
            None,
            Some(id),
            vec![Operand::StorageClass(*class), Operand::IdRef(*pointee)],
        ),
        _ => return Err(SpirvError::Malformed("internal: unexpected type".into())),
    };
    module.types_global_values.push(i);
    added.push((want, id));
    Ok(id)
}

fn add_globals(
    module: &mut Module,
    facts: &Facts,
    ids: &mut Ids,
    budget: u32,
) -> Result<Globals, SpirvError> {
    let mut added = Vec::new();
    let uint = type_id(
        module,
        facts,
        &mut added,
        ids,
        Ty::Int {
            width: 32,
            signed: false,
        },
    )?;
    let boolean = type_id(module, facts, &mut added, ids, Ty::Bool)?;
    // The grid member has NumWorkgroups' own type, so rewritten loads keep their types.
    let grid = match facts
        .num_workgroups
        .and_then(|v| pointee_of_var(module, facts, v))
    {
        Some(t) => t,
        None => type_id(
            module,
            facts,
            &mut added,
            ids,
            Ty::Vector { comp: uint, n: 3 },
        )?,
    };
    let grid_comp = match facts.types.ty.get(&grid) {
        Some(Ty::Vector { comp, .. }) => *comp,
        _ => uint,
    };
    let sb = StorageClass::StorageBuffer;
    let ptr = |pointee| Ty::Pointer { class: sb, pointee };
    let ptr_private_uint = type_id(
        module,
        facts,
        &mut added,
        ids,
        Ty::Pointer {
            class: StorageClass::Private,
            pointee: uint,
        },
    )?;
    let ptr_sb_uint = type_id(module, facts, &mut added, ids, ptr(uint))?;
    let ptr_sb_grid = type_id(module, facts, &mut added, ids, ptr(grid))?;
    let ptr_sb_grid_comp = type_id(module, facts, &mut added, ids, ptr(grid_comp))?;
    let control_ty = ids.next()?;
    let ptr_control = ids.next()?;
    let (c0, c1, cbudget, counter, control) = (
        ids.next()?,
        ids.next()?,
        ids.next()?,
        ids.next()?,
        ids.next()?,
    );
    let g = &mut module.types_global_values;
    g.push(inst(
        Op::TypeStruct,
        None,
        Some(control_ty),
        vec![Operand::IdRef(uint), Operand::IdRef(grid)],
    ));
    g.push(inst(
        Op::TypePointer,
        None,
        Some(ptr_control),
        vec![Operand::StorageClass(sb), Operand::IdRef(control_ty)],
    ));
    for (id, v) in [(c0, 0), (c1, 1), (cbudget, budget)] {
        g.push(inst(
            Op::Constant,
            Some(uint),
            Some(id),
            vec![Operand::LiteralBit32(v)],
        ));
    }
    g.push(inst(
        Op::Variable,
        Some(ptr_private_uint),
        Some(counter),
        vec![
            Operand::StorageClass(StorageClass::Private),
            Operand::IdRef(c0),
        ],
    ));
    g.push(inst(
        Op::Variable,
        Some(ptr_control),
        Some(control),
        vec![Operand::StorageClass(sb)],
    ));
    let decorate = |target: u32, member: Option<u32>, d: Decoration, arg: Option<u32>| {
        let mut ops = vec![Operand::IdRef(target)];
        ops.extend(member.map(Operand::LiteralBit32));
        ops.push(Operand::Decoration(d));
        ops.extend(arg.map(Operand::LiteralBit32));
        let op = if member.is_some() {
            Op::MemberDecorate
        } else {
            Op::Decorate
        };
        inst(op, None, None, ops)
    };
    module.annotations.extend([
        decorate(control_ty, None, Decoration::Block, None),
        decorate(
            control_ty,
            Some(0),
            Decoration::Offset,
            Some(CONTROL_STATUS_OFFSET as u32),
        ),
        decorate(
            control_ty,
            Some(1),
            Decoration::Offset,
            Some(CONTROL_GRID_OFFSET as u32),
        ),
        decorate(control, None, Decoration::DescriptorSet, Some(0)),
        decorate(control, None, Decoration::Binding, Some(CONTROL_BINDING)),
    ]);
    for (id, name) in [
        (counter, "vgpu_loop_counter"),
        (control, "vgpu_control"),
        (control_ty, "VgpuControl"),
    ] {
        module.debug_names.push(inst(
            Op::Name,
            None,
            None,
            vec![Operand::IdRef(id), Operand::LiteralString(name.into())],
        ));
    }
    Ok(Globals {
        uint,
        boolean,
        c0,
        c1,
        budget: cbudget,
        counter,
        control,
        ptr_sb_uint,
        ptr_sb_grid,
        ptr_sb_grid_comp,
    })
}

fn pointee_of_var(module: &Module, facts: &Facts, var: u32) -> Option<u32> {
    let t = module
        .types_global_values
        .iter()
        .find(|i| i.result_id == Some(var))?
        .result_type?;
    match facts.types.ty.get(&t)? {
        Ty::Pointer { pointee, .. } => Some(*pointee),
        _ => None,
    }
}

/// Rewrites `module` (validated into `facts`) and assembles it; returns the words and the
/// number of back edges instrumented.
pub(super) fn rewrite(
    mut module: Module,
    facts: &Facts,
    budget: u32,
) -> Result<(Vec<u32>, u32), SpirvError> {
    let bound = module.header.as_ref().map_or(0, |h| h.bound);
    let mut ids = Ids(bound);
    let g = add_globals(&mut module, facts, &mut ids, budget)?;
    let mut nulls = super::sanitize::zero_undefs(&mut module, &mut ids)?;
    super::bounds::clamp_indices(&mut module, facts, g.boolean, &mut ids)?;

    // SPIR-V before 1.3 needs the extension for the StorageBuffer storage class.
    if facts.version < (1, 3)
        && !module.extensions.iter().any(|e| {
            matches!(e.operands.first(), Some(Operand::LiteralString(s))
                if s == "SPV_KHR_storage_buffer_storage_class")
        })
    {
        module.extensions.push(inst(
            Op::Extension,
            None,
            None,
            vec![Operand::LiteralString(
                "SPV_KHR_storage_buffer_storage_class".into(),
            )],
        ));
    }
    // From 1.4 the interface lists every global the entry point uses.
    if facts.version >= (1, 4) {
        if let Some(ep) = module.entry_points.first_mut() {
            ep.operands.push(Operand::IdRef(g.counter));
            ep.operands.push(Operand::IdRef(g.control));
        }
    }

    let mut count = 0u32;
    let mut functions = std::mem::take(&mut module.functions);
    for (fi, f) in functions.iter_mut().enumerate() {
        let edges = facts.back_edges.get(fi).map_or(&[][..], |e| &e[..]);
        let returns_void = f
            .def
            .as_ref()
            .and_then(|d| d.result_type)
            .and_then(|t| facts.types.ty.get(&t))
            == Some(&Ty::Void);
        let return_type = f.def.as_ref().and_then(|d| d.result_type).unwrap_or(0);
        let labels: HashMap<u32, usize> = f
            .blocks
            .iter()
            .enumerate()
            .filter_map(|(i, b)| Some((b.label_id()?, i)))
            .collect();
        for e in edges {
            count += 1;
            let b_label = f
                .blocks
                .get(e.block)
                .and_then(|b| b.label_id())
                .unwrap_or(0);
            let header = f
                .blocks
                .get(e.header)
                .and_then(|b| b.label_id())
                .unwrap_or(0);
            let (old, new, ok) = (ids.next()?, ids.next()?, ids.next()?);
            let mut code = vec![
                inst(
                    Op::Load,
                    Some(g.uint),
                    Some(old),
                    vec![Operand::IdRef(g.counter)],
                ),
                inst(
                    Op::IAdd,
                    Some(g.uint),
                    Some(new),
                    vec![Operand::IdRef(old), Operand::IdRef(g.c1)],
                ),
                inst(
                    Op::Store,
                    None,
                    None,
                    vec![Operand::IdRef(g.counter), Operand::IdRef(new)],
                ),
                inst(
                    Op::ULessThanEqual,
                    Some(g.boolean),
                    Some(ok),
                    vec![Operand::IdRef(new), Operand::IdRef(g.budget)],
                ),
            ];
            let Some(block) = f.blocks.get_mut(e.block) else {
                continue;
            };
            let n = block.instructions.len();
            let at = if super::cfg::merge_of(block).is_some() {
                n.saturating_sub(2)
            } else {
                n.saturating_sub(1)
            };
            let Some(term) = block.instructions.last_mut() else {
                continue;
            };
            match e.kind {
                EdgeKind::Branch => {
                    *term = inst(
                        Op::BranchConditional,
                        None,
                        None,
                        vec![
                            Operand::IdRef(ok),
                            Operand::IdRef(header),
                            Operand::IdRef(e.merge),
                        ],
                    );
                }
                EdgeKind::TrueToHeader | EdgeKind::FalseToHeader => {
                    let Some(Operand::IdRef(c)) = term.operands.first().cloned() else {
                        return Err(SpirvError::Malformed("OpBranchConditional".into()));
                    };
                    let c2 = ids.next()?;
                    if e.kind == EdgeKind::TrueToHeader {
                        code.push(inst(
                            Op::LogicalAnd,
                            Some(g.boolean),
                            Some(c2),
                            vec![Operand::IdRef(c), Operand::IdRef(ok)],
                        ));
                    } else {
                        let spent = ids.next()?;
                        code.push(inst(
                            Op::LogicalNot,
                            Some(g.boolean),
                            Some(spent),
                            vec![Operand::IdRef(ok)],
                        ));
                        code.push(inst(
                            Op::LogicalOr,
                            Some(g.boolean),
                            Some(c2),
                            vec![Operand::IdRef(c), Operand::IdRef(spent)],
                        ));
                    }
                    term.operands[0] = Operand::IdRef(c2);
                }
            }
            block.instructions.splice(at..at, code);
            // B is a new predecessor of M: its phis get a zero from B, and if M was unreachable
            // (it ends in OpUnreachable), it now returns.
            if e.kind == EdgeKind::Branch {
                let Some(m) = labels.get(&e.merge).and_then(|&m| f.blocks.get_mut(m)) else {
                    continue;
                };
                for phi in m
                    .instructions
                    .iter_mut()
                    .take_while(|i| matches!(i.class.opcode, Op::Phi | Op::Line | Op::NoLine))
                    .filter(|i| i.class.opcode == Op::Phi)
                {
                    let zero = nulls.get(phi.result_type.unwrap_or(0), &mut ids)?;
                    phi.operands.push(Operand::IdRef(zero));
                    phi.operands.push(Operand::IdRef(b_label));
                }
                if let Some(t) = m.instructions.last_mut() {
                    if t.class.opcode == Op::Unreachable {
                        *t = if returns_void {
                            inst(Op::Return, None, None, vec![])
                        } else {
                            let zero = nulls.get(return_type, &mut ids)?;
                            inst(Op::ReturnValue, None, None, vec![Operand::IdRef(zero)])
                        };
                    }
                }
            }
        }
        if let Some(nwg) = facts.num_workgroups {
            for b in &mut f.blocks {
                redirect_num_workgroups(b, nwg, &g, &mut ids)?;
            }
        }
        if f.def_id() == Some(facts.entry_fn) {
            report_on_return(f, &g, &mut ids)?;
        }
    }
    module.functions = functions;
    nulls.finish(&mut module);
    if let Some(h) = module.header.as_mut() {
        h.bound = ids.0;
    }
    Ok((module.assemble(), count))
}

/// Loads of NumWorkgroups (directly or through an access chain) read the control block's grid.
fn redirect_num_workgroups(
    b: &mut Block,
    nwg: u32,
    g: &Globals,
    ids: &mut Ids,
) -> Result<(), SpirvError> {
    let mut out = Vec::with_capacity(b.instructions.len());
    for mut i in std::mem::take(&mut b.instructions) {
        let base = super::facts::id_at(&i, 0);
        match i.class.opcode {
            Op::Load if base == Some(nwg) => {
                let p = ids.next()?;
                out.push(inst(
                    Op::AccessChain,
                    Some(g.ptr_sb_grid),
                    Some(p),
                    vec![Operand::IdRef(g.control), Operand::IdRef(g.c1)],
                ));
                i.operands[0] = Operand::IdRef(p);
            }
            Op::AccessChain | Op::InBoundsAccessChain if base == Some(nwg) => {
                i.result_type = Some(g.ptr_sb_grid_comp);
                i.operands[0] = Operand::IdRef(g.control);
                i.operands.insert(1, Operand::IdRef(g.c1));
            }
            _ => {}
        }
        out.push(i);
    }
    b.instructions = out;
    Ok(())
}

/// Each `OpReturn` of the entry point becomes a selection that stores 1 into the control
/// block's status when the budget was spent.
fn report_on_return(
    f: &mut rspirv::dr::Function,
    g: &Globals,
    ids: &mut Ids,
) -> Result<(), SpirvError> {
    let mut blocks = Vec::with_capacity(f.blocks.len() + 2);
    for mut b in std::mem::take(&mut f.blocks) {
        let returns = b
            .instructions
            .last()
            .is_some_and(|t| t.class.opcode == Op::Return);
        if !returns {
            blocks.push(b);
            continue;
        }
        let (c, spent, store, ret, p) = (
            ids.next()?,
            ids.next()?,
            ids.next()?,
            ids.next()?,
            ids.next()?,
        );
        b.instructions.pop();
        b.instructions.extend([
            inst(
                Op::Load,
                Some(g.uint),
                Some(c),
                vec![Operand::IdRef(g.counter)],
            ),
            inst(
                Op::UGreaterThan,
                Some(g.boolean),
                Some(spent),
                vec![Operand::IdRef(c), Operand::IdRef(g.budget)],
            ),
            inst(
                Op::SelectionMerge,
                None,
                None,
                vec![
                    Operand::IdRef(ret),
                    Operand::SelectionControl(SelectionControl::NONE),
                ],
            ),
            inst(
                Op::BranchConditional,
                None,
                None,
                vec![
                    Operand::IdRef(spent),
                    Operand::IdRef(store),
                    Operand::IdRef(ret),
                ],
            ),
        ]);
        blocks.push(b);
        let mut s = Block::new();
        s.label = Some(inst(Op::Label, None, Some(store), vec![]));
        s.instructions = vec![
            inst(
                Op::AccessChain,
                Some(g.ptr_sb_uint),
                Some(p),
                vec![Operand::IdRef(g.control), Operand::IdRef(g.c0)],
            ),
            inst(
                Op::Store,
                None,
                None,
                vec![Operand::IdRef(p), Operand::IdRef(g.c1)],
            ),
            inst(Op::Branch, None, None, vec![Operand::IdRef(ret)]),
        ];
        blocks.push(s);
        let mut r = Block::new();
        r.label = Some(inst(Op::Label, None, Some(ret), vec![]));
        r.instructions = vec![inst(Op::Return, None, None, vec![])];
        blocks.push(r);
    }
    f.blocks = blocks;
    Ok(())
}
