//! The seed corpora, built from the protocol's own encoders so they stay valid when the wire
//! structures change. `cargo run -p vgpu-fuzz --bin vgpu-fuzz-seeds` writes them to
//! `fuzz/corpus/<target>/`.

use vgpu_protocol::channel::*;
use vgpu_protocol::command::mem_entries_from_bytes;
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{ChannelCommand, GpuCommand, KernelLaunch};
use vm_memory::ByteValued;

use crate::device::{op, COMMANDS};

/// The committed test modules of `vgpu_backend::driver::spirv` used as `spirv` seeds.
const SPIRV_SEEDS: [(&str, &[u8]); 13] = [
    (
        "reduce",
        include_bytes!("../../backend/src/driver/spirv/testdata/reduce.spv"),
    ),
    (
        "reduce_v10",
        include_bytes!("../../backend/src/driver/spirv/testdata/reduce_v10.spv"),
    ),
    (
        "conv2d",
        include_bytes!("../../backend/src/driver/spirv/testdata/conv2d.spv"),
    ),
    (
        "conv2d_v16",
        include_bytes!("../../backend/src/driver/spirv/testdata/conv2d_v16.spv"),
    ),
    (
        "softmax",
        include_bytes!("../../backend/src/driver/spirv/testdata/softmax.spv"),
    ),
    (
        "grid",
        include_bytes!("../../backend/src/driver/spirv/testdata/grid.spv"),
    ),
    (
        "spin",
        include_bytes!("../../backend/src/driver/spirv/testdata/spin.spv"),
    ),
    (
        "int64",
        include_bytes!("../../backend/src/driver/spirv/testdata/int64.spv"),
    ),
    (
        "ssa_loops",
        include_bytes!("../../backend/src/driver/spirv/testdata/ssa_loops.spv"),
    ),
    (
        "unreachable_merge",
        include_bytes!("../../backend/src/driver/spirv/testdata/unreachable_merge.spv"),
    ),
    (
        "bounds",
        include_bytes!("../../backend/src/driver/spirv/testdata/bounds.spv"),
    ),
    (
        "bad_unstructured",
        include_bytes!("../../backend/src/driver/spirv/testdata/bad_unstructured.spv"),
    ),
    (
        "bad_switch_back",
        include_bytes!("../../backend/src/driver/spirv/testdata/bad_switch_back.spv"),
    ),
];

/// One seed: its target, file name and bytes.
pub type Seed = (&'static str, String, Vec<u8>);

fn entries(list: &[(u64, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(addr, length) in list {
        let e = MemEntry {
            addr,
            length,
            padding: 0,
        };
        out.extend_from_slice(e.as_slice());
    }
    out
}

fn stream(cmds: &[ChannelCommand]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in cmds {
        c.encode(&mut out);
    }
    out
}

fn fill(res: u32, size: u64) -> ChannelCommand {
    ChannelCommand::Fill(FillCmd {
        dst_res: res,
        pattern: 0xdead_beef,
        offset: 0,
        size,
    })
}

fn compute_stream() -> Vec<u8> {
    stream(&[
        fill(10, 256),
        ChannelCommand::Copy(CopyCmd {
            src_res: 10,
            dst_res: 11,
            src_offset: 0,
            dst_offset: 0,
            size: 256,
        }),
        ChannelCommand::Launch(KernelLaunch::AxpyF32(AxpyF32Args {
            x_res: 10,
            y_res: 11,
            n: 64,
            alpha: 2.0,
        })),
        ChannelCommand::Launch(KernelLaunch::ReduceSumF32(ReduceSumF32Args {
            x_res: 10,
            out_res: 11,
            n: 16,
            reserved: 0,
            out_offset: 128,
        })),
        ChannelCommand::Launch(KernelLaunch::Crc32c(Crc32cArgs {
            src_res: 10,
            out_res: 11,
            src_offset: 0,
            len: 64,
            out_offset: 200,
        })),
        ChannelCommand::Launch(KernelLaunch::GemmF32(GemmF32Args {
            a_res: 10,
            b_res: 10,
            c_res: 11,
            m: 4,
            n: 4,
            k: 4,
            alpha: 1.0,
            beta: 0.0,
        })),
        ChannelCommand::QueryStats(QueryStatsCmd {
            dst_res: 11,
            reserved: 0,
            dst_offset: 1024,
        }),
        ChannelCommand::Nop,
    ])
}

/// The commands the decoder and device seeds are made of: a 2D scanout life cycle, a cursor, a
/// blob, and a 3D context with two buffers and a submit.
fn commands(
    blob_entries: &[u8],
    backing: &[u8],
    buf_backing: &[u8],
    submit: &[u8],
) -> Vec<(u32, GpuCommand<'static>)> {
    // The byte slices live for the whole seed generation; leak-free 'static via Box::leak is
    // fine in a generator that exits right after.
    let leak = |b: &[u8]| -> &'static [u8] { Box::leak(b.to_vec().into_boxed_slice()) };
    let backing = leak(backing);
    let buf_backing = leak(buf_backing);
    let blob_entries = leak(blob_entries);
    let submit = leak(submit);
    let r = |x, y, width, height| Rect {
        x,
        y,
        width,
        height,
    };
    let buffer = |id| ResourceCreate3d {
        resource_id: id,
        target: PIPE_BUFFER,
        width: 4096,
        height: 1,
        depth: 1,
        array_size: 1,
        ..Default::default()
    };
    let xfer = |id, to_host: bool| {
        let t = Transfer3d {
            box_: Box3d {
                x: 0,
                y: 0,
                z: 0,
                w: 256,
                h: 1,
                d: 1,
            },
            offset: 0,
            resource_id: id,
            ..Default::default()
        };
        if to_host {
            GpuCommand::TransferToHost3d(t)
        } else {
            GpuCommand::TransferFromHost3d(t)
        }
    };
    vec![
        (0, GpuCommand::GetDisplayInfo),
        (
            0,
            GpuCommand::GetEdid(GetEdid {
                scanout: 0,
                padding: 0,
            }),
        ),
        (
            0,
            GpuCommand::GetCapsetInfo(GetCapsetInfo {
                capset_index: 0,
                padding: 0,
            }),
        ),
        (
            0,
            GpuCommand::GetCapset(GetCapset {
                capset_id: VGPU_CAPSET_ID,
                capset_version: 1,
            }),
        ),
        (
            0,
            GpuCommand::ResourceCreate2d(ResourceCreate2d {
                resource_id: 1,
                format: VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
                width: 64,
                height: 64,
            }),
        ),
        (
            0,
            GpuCommand::ResourceAttachBacking(
                ResourceAttachBacking {
                    resource_id: 1,
                    nr_entries: 2,
                },
                mem_entries_from_bytes(backing).expect("whole entries"),
            ),
        ),
        (
            0,
            GpuCommand::TransferToHost2d(TransferToHost2d {
                r: r(0, 0, 64, 64),
                offset: 0,
                resource_id: 1,
                padding: 0,
            }),
        ),
        (
            0,
            GpuCommand::SetScanout(SetScanout {
                r: r(0, 0, 64, 64),
                scanout_id: 0,
                resource_id: 1,
            }),
        ),
        (
            0,
            GpuCommand::ResourceFlush(ResourceFlush {
                r: r(8, 8, 16, 16),
                resource_id: 1,
                padding: 0,
            }),
        ),
        (
            0,
            GpuCommand::ResourceAssignUuid(ResourceAssignUuid {
                resource_id: 1,
                padding: 0,
            }),
        ),
        (
            0,
            GpuCommand::UpdateCursor(UpdateCursor {
                pos: CursorPos {
                    scanout_id: 0,
                    x: 10,
                    y: 10,
                    padding: 0,
                },
                resource_id: 1,
                hot_x: 1,
                hot_y: 1,
                padding: 0,
            }),
        ),
        (
            0,
            GpuCommand::ResourceCreateBlob(
                ResourceCreateBlob {
                    resource_id: 2,
                    blob_mem: VIRTIO_GPU_BLOB_MEM_GUEST,
                    blob_flags: 0,
                    nr_entries: 1,
                    blob_id: 0,
                    size: 4096,
                },
                mem_entries_from_bytes(blob_entries).expect("whole entries"),
            ),
        ),
        (
            0,
            GpuCommand::SetScanoutBlob(SetScanoutBlob {
                r: r(0, 0, 32, 32),
                scanout_id: 1,
                resource_id: 2,
                width: 32,
                height: 32,
                format: VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
                padding: 0,
                strides: [128, 0, 0, 0],
                offsets: [0; 4],
            }),
        ),
        (
            0,
            GpuCommand::ResourceMapBlob(ResourceMapBlob {
                resource_id: 2,
                padding: 0,
                offset: 0,
            }),
        ),
        (
            0,
            GpuCommand::ResourceUnmapBlob(ResourceUnmapBlob {
                resource_id: 2,
                padding: 0,
            }),
        ),
        (
            1,
            GpuCommand::CtxCreate(CtxCreate {
                context_init: VGPU_CAPSET_ID,
                ..Default::default()
            }),
        ),
        (0, GpuCommand::ResourceCreate3d(buffer(10))),
        (0, GpuCommand::ResourceCreate3d(buffer(11))),
        (
            0,
            GpuCommand::ResourceAttachBacking(
                ResourceAttachBacking {
                    resource_id: 10,
                    nr_entries: 1,
                },
                mem_entries_from_bytes(buf_backing).expect("whole entries"),
            ),
        ),
        (
            1,
            GpuCommand::CtxAttachResource(CtxResource {
                resource_id: 10,
                padding: 0,
            }),
        ),
        (
            1,
            GpuCommand::CtxAttachResource(CtxResource {
                resource_id: 11,
                padding: 0,
            }),
        ),
        (1, xfer(10, true)),
        (
            1,
            GpuCommand::Submit3d(
                Submit3d {
                    size: submit.len() as u32,
                    padding: 0,
                },
                submit,
            ),
        ),
        (1, xfer(10, false)),
        (
            1,
            GpuCommand::CtxDetachResource(CtxResource {
                resource_id: 11,
                padding: 0,
            }),
        ),
        (
            0,
            GpuCommand::ResourceDetachBacking(ResourceDetachBacking {
                resource_id: 1,
                padding: 0,
            }),
        ),
        (
            0,
            GpuCommand::ResourceUnref(ResourceUnref {
                resource_id: 1,
                padding: 0,
            }),
        ),
        (1, GpuCommand::CtxDestroy),
        (
            0,
            GpuCommand::MoveCursor(UpdateCursor {
                pos: CursorPos {
                    scanout_id: 0,
                    x: 20,
                    y: 20,
                    padding: 0,
                },
                ..Default::default()
            }),
        ),
    ]
}

/// Appends one device-target request operation for `cmd` on context `ctx`.
pub fn device_request(out: &mut Vec<u8>, ctx: u32, cmd: &GpuCommand<'_>) {
    let mut bytes = Vec::new();
    cmd.encode(CtrlHeader::default(), &mut bytes);
    let body = &bytes[std::mem::size_of::<CtrlHeader>()..];
    let index = COMMANDS
        .iter()
        .position(|&t| t == cmd.type_())
        .expect("every command type is in COMMANDS");
    out.push(0); // a request
    out.push(index as u8);
    out.push(ctx as u8);
    out.push(0); // flags
    out.push(3); // a full-size response buffer
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(body);
}

/// Appends one device-target guest-memory write of up to 4080 bytes.
pub fn device_write(out: &mut Vec<u8>, addr: u32, bytes: &[u8]) {
    let n = bytes.len().min(255 * 16) / 16;
    out.push(op::WRITE_MEMORY);
    out.extend_from_slice(&addr.to_le_bytes());
    out.push(n as u8);
    out.extend_from_slice(&bytes[..n * 16]);
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let backing = entries(&[(0x1000, 8192), (0x3000, 8192)]);
    let buf_backing = entries(&[(0x2_0000, 4096)]);
    let blob = entries(&[(0x20_0000, 4096)]);
    let submit = compute_stream();
    let cmds = commands(&blob, &backing, &buf_backing, &submit);
    let mut seeds = Vec::new();

    // decoder: each request alone.
    for (i, (ctx, c)) in cmds.iter().enumerate() {
        let mut b = Vec::new();
        c.encode(
            CtrlHeader {
                ctx_id: *ctx,
                ..Default::default()
            },
            &mut b,
        );
        seeds.push(("decoder", format!("{i:02}-{:04x}", c.type_()), b));
    }

    // channel: the compute stream, each command alone, and a truncated stream.
    seeds.push(("channel", "all-commands".into(), submit.clone()));
    let mut iter = vgpu_protocol::decode_stream(&submit);
    let mut start = 0;
    let mut i = 0;
    while let Some(Ok(_)) = iter.next() {
        let end = iter.offset();
        seeds.push((
            "channel",
            format!("single-{i}"),
            submit[start..end].to_vec(),
        ));
        start = end;
        i += 1;
    }
    seeds.push((
        "channel",
        "truncated".into(),
        submit[..submit.len() - 3].to_vec(),
    ));

    // device: the whole life cycle, a 2D-only one, a 3D-only one, and one with resets between.
    let pixels: Vec<u8> = (0..4080u32).map(|i| (i * 7) as u8).collect();
    let floats: Vec<u8> = (0..255u32 * 4)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    let mut whole = Vec::new();
    device_write(&mut whole, 0x1000, &pixels);
    device_write(&mut whole, 0x2_0000, &floats);
    for (ctx, c) in &cmds {
        device_request(&mut whole, *ctx, c);
    }
    seeds.push(("device", "lifecycle".into(), whole));
    let mut two_d = Vec::new();
    device_write(&mut two_d, 0x1000, &pixels);
    for (ctx, c) in cmds
        .iter()
        .filter(|(_, c)| c.type_() < VIRTIO_GPU_CMD_CTX_CREATE)
    {
        device_request(&mut two_d, *ctx, c);
    }
    two_d.push(op::RESET);
    seeds.push(("device", "2d".into(), two_d));
    let mut three_d = Vec::new();
    device_write(&mut three_d, 0x2_0000, &floats);
    let three_d_cmds = cmds.iter().filter(|(_, c)| {
        c.type_() >= VIRTIO_GPU_CMD_CTX_CREATE
            || matches!(c, GpuCommand::ResourceAttachBacking(b, _) if b.resource_id == 10)
    });
    for (ctx, c) in three_d_cmds {
        device_request(&mut three_d, *ctx, c);
    }
    three_d.push(op::TOGGLE_VIRGL);
    device_request(&mut three_d, 1, &cmds[15].1);
    seeds.push(("device", "3d".into(), three_d));

    // control: every command, a limit, and malformed lines.
    for (name, line) in [
        ("list", r#"{"cmd": "list"}"#),
        ("stats", r#"{"cmd": "stats"}"#),
        ("sched-log", r#"{"cmd": "sched-log", "limit": 3}"#),
        ("unknown", r#"{"cmd": "destroy", "uuid": "x"}"#),
        ("bad-limit", r#"{"cmd": "sched-log", "limit": -1}"#),
        ("not-json", "list"),
    ] {
        seeds.push(("control", name.into(), line.as_bytes().to_vec()));
    }

    // spirv: the validator's test modules: glslang kernels (SPIR-V 1.0, 1.3, 1.6), SSA-form
    // loops, and two hand-written refusals.
    for (name, words) in SPIRV_SEEDS {
        seeds.push(("spirv", format!("{name}.spv"), words.to_vec()));
    }
    seeds
}
