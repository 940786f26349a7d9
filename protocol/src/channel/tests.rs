//! Unit tests of the channel stream codec.

use super::*;
use crate::virtio_gpu::{Box3d, ResourceCreate3d, Transfer3d};

fn all_commands() -> Vec<ChannelCommand> {
    vec![
        ChannelCommand::Copy(CopyCmd {
            src_res: 1,
            dst_res: 2,
            src_offset: 16,
            dst_offset: 32,
            size: 4096,
        }),
        ChannelCommand::Fill(FillCmd {
            dst_res: 3,
            pattern: 0xdead_beef,
            offset: 8,
            size: 64,
        }),
        ChannelCommand::Launch(KernelLaunch::GemmF32(GemmF32Args {
            a_res: 4,
            b_res: 5,
            c_res: 6,
            m: 3,
            n: 5,
            k: 7,
            alpha: 1.5,
            beta: -0.25,
        })),
        ChannelCommand::Launch(KernelLaunch::AxpyF32(AxpyF32Args {
            x_res: 7,
            y_res: 8,
            n: 100,
            alpha: 2.0,
        })),
        ChannelCommand::Launch(KernelLaunch::ReduceSumF32(ReduceSumF32Args {
            x_res: 9,
            out_res: 10,
            n: 1000,
            reserved: 0,
            out_offset: 12,
        })),
        ChannelCommand::Launch(KernelLaunch::Crc32c(Crc32cArgs {
            src_res: 11,
            out_res: 12,
            src_offset: 1,
            len: 333,
            out_offset: 4,
        })),
        ChannelCommand::QueryStats(QueryStatsCmd {
            dst_res: 13,
            reserved: 0,
            dst_offset: 256,
        }),
        ChannelCommand::Nop,
    ]
}

fn encode(cmds: &[ChannelCommand]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in cmds {
        c.encode(&mut out);
    }
    out
}

fn decode_all(bytes: &[u8]) -> Result<Vec<ChannelCommand>, ChannelError> {
    decode_stream(bytes).collect()
}

/// The single error a stream decodes to (after any good commands).
fn first_err(bytes: &[u8]) -> ChannelError {
    decode_all(bytes).unwrap_err()
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn body_sizes() {
    assert_eq!(size_of::<CmdHeader>(), 8);
    assert_eq!(size_of::<CopyCmd>(), 32);
    assert_eq!(size_of::<FillCmd>(), 24);
    assert_eq!(size_of::<LaunchHeader>(), 8);
    assert_eq!(size_of::<GemmF32Args>(), 32);
    assert_eq!(size_of::<AxpyF32Args>(), 16);
    assert_eq!(size_of::<ReduceSumF32Args>(), 24);
    assert_eq!(size_of::<Crc32cArgs>(), 32);
    assert_eq!(size_of::<QueryStatsCmd>(), 16);
    let lens: Vec<usize> = all_commands().iter().map(|c| c.encoded_len()).collect();
    assert_eq!(lens, vec![40, 32, 48, 32, 40, 48, 24, 8]);
}

#[test]
fn every_command_round_trips() {
    for cmd in all_commands() {
        let bytes = encode(&[cmd]);
        assert_eq!(bytes.len(), cmd.encoded_len());
        assert_eq!(decode_all(&bytes).unwrap(), vec![cmd], "{cmd:?}");
    }
    let cmds = all_commands();
    let bytes = encode(&cmds);
    assert_eq!(decode_all(&bytes).unwrap(), cmds);
    assert_eq!(validate_stream(&bytes), Ok(cmds.len()));
}

#[test]
fn exact_wire_bytes_of_a_fill() {
    let bytes = encode(&[ChannelCommand::Fill(FillCmd {
        dst_res: 7,
        pattern: 0x0403_0201,
        offset: 4,
        size: 8,
    })]);
    let expect: Vec<u8> = [
        &2u32.to_le_bytes()[..],
        &32u32.to_le_bytes(),
        &7u32.to_le_bytes(),
        &[1, 2, 3, 4],
        &4u64.to_le_bytes(),
        &8u64.to_le_bytes(),
    ]
    .concat();
    assert_eq!(bytes, expect);
}

#[test]
fn empty_stream_is_empty() {
    assert_eq!(decode_all(&[]).unwrap(), vec![]);
    assert_eq!(validate_stream(&[]), Ok(0));
}

#[test]
fn nop_may_carry_padding() {
    let mut bytes = vec![0u8; 24];
    put_u32(&mut bytes, 0, Opcode::Nop as u32);
    put_u32(&mut bytes, 4, 24);
    bytes[12] = 0xaa;
    ChannelCommand::Nop.encode(&mut bytes);
    assert_eq!(
        decode_all(&bytes).unwrap(),
        vec![ChannelCommand::Nop, ChannelCommand::Nop]
    );
}

#[test]
fn short_header() {
    for len in 1..8 {
        let bytes = encode(&[ChannelCommand::Nop]);
        let mut s = encode(&[ChannelCommand::Nop]);
        s.extend_from_slice(&bytes[..len]);
        let mut it = decode_stream(&s);
        assert_eq!(it.next(), Some(Ok(ChannelCommand::Nop)));
        assert_eq!(
            it.next(),
            Some(Err(ChannelError::Truncated {
                offset: 8,
                needed: 8,
                remaining: len
            }))
        );
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
    }
}

#[test]
fn size_beyond_the_stream() {
    let mut bytes = encode(&all_commands()[..1]);
    bytes.truncate(36);
    assert_eq!(
        first_err(&bytes),
        ChannelError::Truncated {
            offset: 0,
            needed: 40,
            remaining: 36
        }
    );
    let mut bytes = encode(&[ChannelCommand::Nop]);
    put_u32(&mut bytes, 4, u32::MAX - 3);
    assert!(matches!(
        first_err(&bytes),
        ChannelError::Truncated { offset: 0, .. }
    ));
}

#[test]
fn size_not_multiple_of_4() {
    let mut bytes = encode(&all_commands());
    // Corrupt the second command (FILL at offset 40).
    put_u32(&mut bytes, 44, 30);
    let mut it = decode_stream(&bytes);
    assert!(matches!(it.next(), Some(Ok(ChannelCommand::Copy(_)))));
    assert_eq!(
        it.next(),
        Some(Err(ChannelError::UnalignedSize {
            offset: 40,
            size: 30
        }))
    );
    assert_eq!(it.next(), None);
}

#[test]
fn size_smaller_than_the_body() {
    for cmd in all_commands() {
        if cmd == ChannelCommand::Nop {
            continue;
        }
        let full = encode(&[cmd]);
        for size in (0..cmd.encoded_len()).step_by(4) {
            let mut bytes = full.clone();
            put_u32(&mut bytes, 4, size as u32);
            let err = first_err(&bytes);
            assert!(
                matches!(err, ChannelError::BadSize { offset: 0, .. }),
                "{cmd:?} size {size}: {err:?}"
            );
        }
    }
    // NOP shorter than its header.
    let mut bytes = encode(&[ChannelCommand::Nop]);
    put_u32(&mut bytes, 4, 4);
    assert_eq!(
        first_err(&bytes),
        ChannelError::BadSize {
            offset: 0,
            opcode: 5,
            size: 4,
            expected: 8
        }
    );
    // Zero-size commands must not loop forever.
    let mut bytes = encode(&[ChannelCommand::Nop]);
    put_u32(&mut bytes, 4, 0);
    assert_eq!(decode_stream(&bytes).count(), 1);
}

#[test]
fn size_larger_than_the_body() {
    let cmd = all_commands()[0];
    let mut bytes = encode(&[cmd]);
    bytes.extend_from_slice(&[0; 4]);
    put_u32(&mut bytes, 4, 44);
    assert_eq!(
        first_err(&bytes),
        ChannelError::BadSize {
            offset: 0,
            opcode: 1,
            size: 44,
            expected: 40
        }
    );
}

#[test]
fn unknown_opcode() {
    for op in [0u32, 11, 0x100, u32::MAX] {
        let mut bytes = encode(&[ChannelCommand::Nop]);
        put_u32(&mut bytes, 0, op);
        assert_eq!(
            first_err(&bytes),
            ChannelError::UnknownOpcode {
                offset: 0,
                opcode: op
            }
        );
    }
}

#[test]
fn unknown_kernel() {
    let launch = all_commands()[3];
    for k in [0u32, 5, u32::MAX] {
        let mut bytes = encode(&[ChannelCommand::Nop, launch]);
        put_u32(&mut bytes, 16, k);
        assert_eq!(
            first_err(&bytes),
            ChannelError::UnknownKernel {
                offset: 8,
                kernel: k
            }
        );
    }
}

#[test]
fn nonzero_reserved() {
    // LAUNCH header reserved (offset 12 of any launch).
    let mut bytes = encode(&all_commands()[3..4]);
    put_u32(&mut bytes, 12, 1);
    assert_eq!(
        first_err(&bytes),
        ChannelError::ReservedNonZero {
            offset: 0,
            field: "launch.reserved",
            value: 1
        }
    );
    // REDUCE_SUM reserved.
    let mut cmd = all_commands()[4];
    if let ChannelCommand::Launch(KernelLaunch::ReduceSumF32(r)) = &mut cmd {
        r.reserved = 9;
    }
    assert_eq!(
        first_err(&encode(&[cmd])),
        ChannelError::ReservedNonZero {
            offset: 0,
            field: "reserved",
            value: 9
        }
    );
    // QUERY_STATS reserved.
    let mut cmd = all_commands()[6];
    if let ChannelCommand::QueryStats(q) = &mut cmd {
        q.reserved = 2;
    }
    assert_eq!(
        first_err(&encode(&[cmd])),
        ChannelError::ReservedNonZero {
            offset: 0,
            field: "reserved",
            value: 2
        }
    );
}

#[test]
fn fill_alignment() {
    for (offset, size, field, value) in [(2, 8, "offset", 2), (4, 6, "size", 6)] {
        let cmd = ChannelCommand::Fill(FillCmd {
            dst_res: 1,
            pattern: 0,
            offset,
            size,
        });
        assert_eq!(
            first_err(&encode(&[cmd])),
            ChannelError::Unaligned {
                offset: 0,
                field,
                value
            }
        );
    }
}

#[test]
fn range_overflow() {
    let copy = ChannelCommand::Copy(CopyCmd {
        src_res: 1,
        dst_res: 2,
        src_offset: u64::MAX,
        dst_offset: 0,
        size: 1,
    });
    let gemm = ChannelCommand::Launch(KernelLaunch::GemmF32(GemmF32Args {
        a_res: 1,
        b_res: 2,
        c_res: 3,
        m: u32::MAX,
        n: 1,
        k: u32::MAX,
        alpha: 1.0,
        beta: 0.0,
    }));
    let crc = ChannelCommand::Launch(KernelLaunch::Crc32c(Crc32cArgs {
        src_res: 1,
        out_res: 2,
        src_offset: 0,
        len: 4,
        out_offset: u64::MAX - 2,
    }));
    let stats = ChannelCommand::QueryStats(QueryStatsCmd {
        dst_res: 1,
        reserved: 0,
        dst_offset: u64::MAX - 100,
    });
    for (cmd, field) in [(copy, "src"), (gemm, "a"), (crc, "out"), (stats, "dst")] {
        assert_eq!(
            first_err(&encode(&[cmd])),
            ChannelError::RangeOverflow { offset: 0, field }
        );
    }
}

#[test]
fn gemm_output_must_not_alias_an_input() {
    for (a, b) in [(3, 2), (1, 3)] {
        let cmd = ChannelCommand::Launch(KernelLaunch::GemmF32(GemmF32Args {
            a_res: a,
            b_res: b,
            c_res: 3,
            m: 1,
            n: 1,
            k: 1,
            alpha: 1.0,
            beta: 0.0,
        }));
        assert_eq!(
            first_err(&encode(&[cmd])),
            ChannelError::Aliased {
                offset: 0,
                resource: 3
            }
        );
    }
}

#[test]
fn too_many_commands() {
    let mut bytes = Vec::new();
    for _ in 0..MAX_COMMANDS_PER_SUBMIT {
        ChannelCommand::Nop.encode(&mut bytes);
    }
    assert_eq!(validate_stream(&bytes), Ok(MAX_COMMANDS_PER_SUBMIT));
    ChannelCommand::Nop.encode(&mut bytes);
    let results: Vec<_> = decode_stream(&bytes).collect();
    assert_eq!(results.len(), MAX_COMMANDS_PER_SUBMIT + 1);
    assert_eq!(
        results.last(),
        Some(&Err(ChannelError::TooManyCommands {
            limit: MAX_COMMANDS_PER_SUBMIT
        }))
    );
    assert_eq!(
        validate_stream(&bytes),
        Err(ChannelError::TooManyCommands {
            limit: MAX_COMMANDS_PER_SUBMIT
        })
    );
}

#[test]
fn accesses_and_resources() {
    let cmds = all_commands();
    let res: Vec<Vec<u32>> = cmds.iter().map(|c| c.resources().collect()).collect();
    assert_eq!(
        res,
        vec![
            vec![1, 2],
            vec![3],
            vec![4, 5, 6],
            vec![7, 8],
            vec![9, 10],
            vec![11, 12],
            vec![13],
            vec![],
        ]
    );
    let acc = |i: usize| -> Vec<(u32, u64, u64, bool)> {
        cmds[i]
            .accesses()
            .map(|a| (a.resource, a.offset, a.len, a.write))
            .collect()
    };
    assert_eq!(acc(0), vec![(1, 16, 4096, false), (2, 32, 4096, true)]);
    assert_eq!(acc(1), vec![(3, 8, 64, true)]);
    assert_eq!(
        acc(2),
        vec![(4, 0, 84, false), (5, 0, 140, false), (6, 0, 60, true)]
    );
    assert_eq!(acc(3), vec![(7, 0, 400, false), (8, 0, 400, true)]);
    assert_eq!(acc(4), vec![(9, 0, 4000, false), (10, 12, 4, true)]);
    assert_eq!(acc(5), vec![(11, 1, 333, false), (12, 4, 4, true)]);
    assert_eq!(acc(6), vec![(13, 256, 128, true)]);
    let a = cmds[0].accesses().next().unwrap();
    assert_eq!(a.end(), Some(16 + 4096));
}

#[test]
fn kernel_ids_and_mask() {
    for k in Kernel::ALL {
        assert_eq!(Kernel::from_u32(k as u32), Some(k));
    }
    assert_eq!(Kernel::mask_all(), 0b1_1110);
    assert_eq!(Kernel::Crc32c.bit(), 1 << 4);
    for op in 1..=5 {
        assert_eq!(Opcode::from_u32(op).map(|o| o as u32), Some(op));
    }
}

fn buffer(width: u32) -> ResourceCreate3d {
    ResourceCreate3d {
        resource_id: 1,
        target: PIPE_BUFFER,
        format: PIPE_FORMAT_R8_UNORM,
        bind: 0x1234,
        width,
        height: 1,
        depth: 1,
        array_size: 1,
        last_level: 0,
        nr_samples: 0,
        flags: 7,
        padding: 0,
    }
}

#[test]
fn buffer_size_accepts_buffers() {
    assert_eq!(buffer_size(&buffer(4096)), Ok(4096));
    assert_eq!(buffer_size(&buffer(u32::MAX)), Ok(u64::from(u32::MAX)));
    let b = ResourceCreate3d {
        format: 0,
        ..buffer(1)
    };
    assert_eq!(buffer_size(&b), Ok(1));
    assert_eq!(buffer_size(&buffer_create(7, 65536)), Ok(65536));
    assert_eq!(buffer_create(7, 65536).resource_id, 7);
}

#[test]
fn buffer_size_rejects_everything_else() {
    let cases: [(ResourceCreate3d, &str, u64); 8] = [
        (
            ResourceCreate3d {
                target: 2,
                ..buffer(16)
            },
            "target",
            2,
        ),
        (
            ResourceCreate3d {
                format: 1,
                ..buffer(16)
            },
            "format",
            1,
        ),
        (
            ResourceCreate3d {
                height: 2,
                ..buffer(16)
            },
            "height",
            2,
        ),
        (
            ResourceCreate3d {
                depth: 0,
                ..buffer(16)
            },
            "depth",
            0,
        ),
        (
            ResourceCreate3d {
                array_size: 6,
                ..buffer(16)
            },
            "array_size",
            6,
        ),
        (
            ResourceCreate3d {
                last_level: 1,
                ..buffer(16)
            },
            "last_level",
            1,
        ),
        (
            ResourceCreate3d {
                nr_samples: 4,
                ..buffer(16)
            },
            "nr_samples",
            4,
        ),
        (buffer(0), "width", 0),
    ];
    for (c, field, value) in cases {
        assert_eq!(
            buffer_size(&c),
            Err(ChannelError::NotABuffer { field, value }),
            "{field}"
        );
    }
}

#[test]
fn buffer_transfers() {
    let t = Transfer3d {
        box_: Box3d {
            x: 100,
            y: 0,
            z: 0,
            w: 50,
            h: 1,
            d: 1,
        },
        offset: 4096,
        resource_id: 1,
        level: 0,
        stride: 999,
        layer_stride: 5,
    };
    assert_eq!(
        buffer_transfer(&t),
        Ok(BufferTransfer {
            resource_offset: 100,
            backing_offset: 4096,
            len: 50
        })
    );
    let mut bad = t;
    bad.box_.h = 2;
    assert_eq!(
        buffer_transfer(&bad),
        Err(ChannelError::NotABuffer {
            field: "box.h",
            value: 2
        })
    );
    let mut bad = t;
    bad.level = 1;
    assert!(buffer_transfer(&bad).is_err());
    let mut bad = t;
    bad.offset = u64::MAX;
    assert_eq!(
        buffer_transfer(&bad),
        Err(ChannelError::NotABuffer {
            field: "offset",
            value: u64::MAX
        })
    );
}

#[test]
fn errors_map_to_invalid_parameter() {
    let e = ChannelError::TooManyCommands { limit: 1 };
    assert_eq!(
        e.response_type(),
        crate::virtio_gpu::VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER
    );
    assert!(e.to_string().contains("1"));
}

#[test]
fn iterator_reports_offset() {
    let bytes = encode(&all_commands()[..2]);
    let mut it = decode_stream(&bytes);
    assert_eq!(it.offset(), 0);
    it.next();
    assert_eq!(it.offset(), 40);
    it.next();
    assert_eq!(it.offset(), 72);
    assert_eq!(it.next(), None);
}

#[test]
fn readme_axpy_example() {
    let mut bytes: Vec<u8> = vec![3, 0, 0, 0, 32, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
    bytes.extend_from_slice(&[7, 0, 0, 0, 8, 0, 0, 0]);
    bytes.extend_from_slice(&[0, 4, 0, 0, 0, 0, 0, 0x40]);
    assert_eq!(
        decode_all(&bytes).unwrap(),
        vec![ChannelCommand::Launch(KernelLaunch::AxpyF32(AxpyF32Args {
            x_res: 7,
            y_res: 8,
            n: 1024,
            alpha: 2.0,
        }))]
    );
}

fn module_commands() -> Vec<ChannelCommand> {
    vec![
        ChannelCommand::ModuleLoad(ModuleLoadCmd::new(7, 3, 64, 1024, "main")),
        ChannelCommand::Bind(BindCmd {
            slot: 2,
            res: 4,
            offset: 512,
            size: 4096,
        }),
        ChannelCommand::Bind(BindCmd {
            slot: 7,
            res: 0,
            offset: 0,
            size: 0,
        }),
        ChannelCommand::PushConstants(PushConstantsCmd::new(8, &[1, 2, 3, 4, 5, 6, 7, 8])),
        ChannelCommand::Dispatch(DispatchCmd::new(7, [4, 2, 1])),
        ChannelCommand::ModuleUnload(ModuleUnloadCmd {
            module_id: 7,
            reserved: 0,
        }),
    ]
}

#[test]
fn module_commands_round_trip() {
    assert_eq!(size_of::<ModuleLoadCmd>(), 56);
    assert_eq!(size_of::<BindCmd>(), 24);
    assert_eq!(size_of::<DispatchCmd>(), 24);
    let lens: Vec<usize> = module_commands().iter().map(|c| c.encoded_len()).collect();
    assert_eq!(lens, vec![64, 32, 32, 24, 32, 16]);
    let cmds = module_commands();
    let bytes = encode(&cmds);
    assert_eq!(decode_all(&bytes).unwrap(), cmds);
    if let ChannelCommand::ModuleLoad(l) = cmds[0] {
        assert_eq!(l.entry_name(), "main");
    }
    let long = ModuleLoadCmd::new(1, 1, 0, 4, &"é".repeat(40));
    assert_eq!(long.entry_name().len(), 30, "truncated at a char boundary");
    let accesses: Vec<_> = cmds.iter().flat_map(|c| c.accesses()).collect();
    assert_eq!(accesses.len(), 2, "the load's source and the bound range");
    assert_eq!(
        (accesses[1].resource, accesses[1].offset, accesses[1].len),
        (4, 512, 4096)
    );
}

#[test]
fn module_commands_are_checked() {
    let one = |c: ChannelCommand| first_err(&encode(&[c]));
    let load = |f: &dyn Fn(&mut ModuleLoadCmd)| {
        let mut l = ModuleLoadCmd::new(1, 2, 0, 64, "main");
        f(&mut l);
        one(ChannelCommand::ModuleLoad(l))
    };
    assert!(matches!(
        load(&|l| l.module_id = 0),
        ChannelError::BadField {
            field: "module_id",
            ..
        }
    ));
    assert!(matches!(
        load(&|l| l.size = 0),
        ChannelError::BadField { field: "size", .. }
    ));
    assert!(matches!(
        load(&|l| l.size = 6),
        ChannelError::BadField { field: "size", .. }
    ));
    assert!(matches!(
        load(&|l| l.size = MAX_MODULE_BYTES + 4),
        ChannelError::BadField { field: "size", .. }
    ));
    assert!(matches!(
        load(&|l| l.src_offset = 2),
        ChannelError::Unaligned { .. }
    ));
    assert!(matches!(
        load(&|l| l.src_offset = u64::MAX - 3),
        ChannelError::RangeOverflow { .. }
    ));
    assert!(matches!(
        load(&|l| l.entry = [0; ENTRY_NAME_LEN]),
        ChannelError::BadField { field: "entry", .. }
    ));
    assert!(matches!(
        load(&|l| l.entry = [b'a'; ENTRY_NAME_LEN]),
        ChannelError::BadField { field: "entry", .. }
    ));
    assert!(matches!(
        load(&|l| l.entry[6] = b'x'),
        ChannelError::BadField { field: "entry", .. }
    ));
    assert!(matches!(
        load(&|l| l.entry[0] = 0xff),
        ChannelError::BadField { field: "entry", .. }
    ));

    let bind = |slot, res, offset, size| {
        one(ChannelCommand::Bind(BindCmd {
            slot,
            res,
            offset,
            size,
        }))
    };
    assert!(matches!(
        bind(MAX_BINDINGS, 1, 0, 4),
        ChannelError::BadField { field: "slot", .. }
    ));
    assert!(matches!(bind(0, 1, 4, 4), ChannelError::Unaligned { .. }));
    assert!(matches!(
        bind(0, 1, 0, 0),
        ChannelError::BadField { field: "size", .. }
    ));
    assert!(matches!(
        bind(0, 1, 0, 6),
        ChannelError::BadField { field: "size", .. }
    ));
    assert!(matches!(bind(0, 0, 0, 4), ChannelError::BadField { .. }));
    assert!(matches!(
        bind(0, 1, u64::MAX - 255, 256),
        ChannelError::RangeOverflow { .. }
    ));

    let mut push = encode(&[ChannelCommand::PushConstants(PushConstantsCmd::new(
        124, &[0; 8],
    ))]);
    assert!(
        matches!(first_err(&push), ChannelError::BadField { .. }),
        "past 128 bytes"
    );
    push = encode(&[ChannelCommand::PushConstants(PushConstantsCmd::new(
        2, &[0; 4],
    ))]);
    assert!(matches!(first_err(&push), ChannelError::Unaligned { .. }));
    push = encode(&[ChannelCommand::PushConstants(PushConstantsCmd::new(
        0, &[0; 8],
    ))]);
    put_u32(&mut push, 12, 12);
    assert!(
        matches!(first_err(&push), ChannelError::BadSize { .. }),
        "size field and command size disagree"
    );

    let dispatch = |module_id, groups, reserved| {
        one(ChannelCommand::Dispatch(DispatchCmd {
            module_id,
            reserved,
            groups,
            reserved2: 0,
        }))
    };
    assert!(matches!(
        dispatch(0, [1, 1, 1], 0),
        ChannelError::BadField { .. }
    ));
    assert!(matches!(
        dispatch(1, [1, 0, 1], 0),
        ChannelError::BadField {
            field: "groups",
            ..
        }
    ));
    assert!(matches!(
        dispatch(1, [1, 1, 1], 5),
        ChannelError::ReservedNonZero { .. }
    ));
    let unload = ChannelCommand::ModuleUnload(ModuleUnloadCmd {
        module_id: 0,
        reserved: 0,
    });
    assert!(matches!(one(unload), ChannelError::BadField { .. }));
}
