//! Guest modules (protocol 1.2) end to end through a real `vgpud` over vhost-user: a context
//! loads SPIR-V from one of its buffers, binds buffers, sets push constants and launches grids
//! that run in pieces; hostile modules and bad launches are refused (and the refusal shows in
//! QUERY_STATS), a kernel that loops forever fails with the loop-budget status, and writes past a
//! bound range never land. On the CPU engine, module commands are refused.

use vgpu_protocol::capset::{JobFailure, StatsRecord, MODULE_FLAG_SPIRV};
use vgpu_protocol::channel::*;
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{ChannelCommand, DecodedResponse, ErrorCode, GpuCommand, VgpuCapset};
use vgpu_tests::connection::FrontendConfig;
use vgpu_tests::engines;
use vgpu_tests::{Backend, GpuClient};

const CTX: u32 = 1;
const GRID: &[u8] = include_bytes!("../../backend/src/driver/spirv/testdata/grid.spv");
const FOREVER: &[u8] = include_bytes!("../../backend/src/driver/spirv/testdata/forever.spv");
const KERNEL_CAP: &[u8] = include_bytes!("../../backend/src/driver/spirv/testdata/bad_kernel.spv");

fn hdr(fence: Option<u64>) -> CtrlHeader {
    CtrlHeader {
        flags: if fence.is_some() {
            VIRTIO_GPU_FLAG_FENCE
        } else {
            0
        },
        fence_id: fence.unwrap_or(0),
        ctx_id: CTX,
        ..Default::default()
    }
}

fn send(c: &mut GpuClient, cmd: &GpuCommand<'_>) -> DecodedResponse {
    c.send_ctrl(cmd, hdr(None)).unwrap().1
}

fn ok(c: &mut GpuClient, cmd: GpuCommand<'_>, what: &str) {
    let r = send(c, &cmd);
    assert!(matches!(r, DecodedResponse::OkNoData), "{what}: {r:?}");
}

/// A buffer with guest backing, attached to the context; returns the backing address.
fn buffer(c: &mut GpuClient, id: u32, size: u32) -> u64 {
    let create = GpuCommand::ResourceCreate3d(ResourceCreate3d {
        resource_id: id,
        target: PIPE_BUFFER,
        width: size,
        height: 1,
        depth: 1,
        array_size: 1,
        ..Default::default()
    });
    ok(c, create, "create");
    let gpa = c.guest_buffer(&vec![0u8; size as usize]).unwrap();
    let r = c.attach_backing(id, &[(gpa, size)]).unwrap();
    assert!(matches!(r, DecodedResponse::OkNoData), "{r:?}");
    let attach = GpuCommand::CtxAttachResource(CtxResource {
        resource_id: id,
        padding: 0,
    });
    ok(c, attach, "attach");
    gpa
}

fn transfer(id: u32, len: usize, to_host: bool) -> GpuCommand<'static> {
    let t = Transfer3d {
        box_: Box3d {
            w: len as u32,
            h: 1,
            d: 1,
            ..Default::default()
        },
        resource_id: id,
        ..Default::default()
    };
    if to_host {
        GpuCommand::TransferToHost3d(t)
    } else {
        GpuCommand::TransferFromHost3d(t)
    }
}

fn upload(c: &mut GpuClient, id: u32, gpa: u64, data: &[u8]) {
    c.conn.mem.write(gpa, data).unwrap();
    ok(c, transfer(id, data.len(), true), "upload");
}

fn download(c: &mut GpuClient, id: u32, gpa: u64, len: usize) -> Vec<u8> {
    ok(c, transfer(id, len, false), "download");
    c.conn.mem.read_vec(gpa, len).unwrap()
}

/// Submits `cmds` fenced and returns the response.
fn submit(c: &mut GpuClient, cmds: &[ChannelCommand], fence: u64) -> DecodedResponse {
    let mut s = Vec::new();
    for cmd in cmds {
        cmd.encode(&mut s);
    }
    let cmd = GpuCommand::Submit3d(
        Submit3d {
            size: s.len() as u32,
            padding: 0,
        },
        &s,
    );
    c.send_ctrl(&cmd, hdr(Some(fence))).unwrap().1
}

fn stats(c: &mut GpuClient, res: u32, gpa: u64, fence: u64) -> StatsRecord {
    let q = ChannelCommand::QueryStats(QueryStatsCmd {
        dst_res: res,
        reserved: 0,
        dst_offset: 0,
    });
    let r = submit(c, &[q], fence);
    assert!(matches!(r, DecodedResponse::OkNoData), "{r:?}");
    let b = download(c, res, gpa, 128);
    StatsRecord::parse(&b).unwrap()
}

fn capset(c: &mut GpuClient) -> VgpuCapset {
    let get = GpuCommand::GetCapset(GetCapset {
        capset_id: VGPU_CAPSET_ID,
        capset_version: 1,
    });
    match c.ctrl(&get).unwrap() {
        DecodedResponse::OkCapset(b) => VgpuCapset::parse(&b).unwrap(),
        other => panic!("{other:?}"),
    }
}

fn load(id: u32, res: u32, size: usize, entry: &str) -> ChannelCommand {
    ChannelCommand::ModuleLoad(ModuleLoadCmd::new(id, res, 0, size as u64, entry))
}

fn bind(slot: u32, res: u32, offset: u64, size: u64) -> ChannelCommand {
    ChannelCommand::Bind(BindCmd {
        slot,
        res,
        offset,
        size,
    })
}

fn dispatch(module_id: u32, groups: [u32; 3]) -> ChannelCommand {
    ChannelCommand::Dispatch(DispatchCmd {
        module_id,
        reserved: 0,
        groups,
        reserved2: 0,
    })
}

#[test]
fn guest_modules_load_bind_launch_and_are_bounded() {
    for engine in engines::engines() {
        eprintln!("engine {engine}");
        guest_modules_on(engine);
    }
}

fn guest_modules_on(engine: &str) {
    let args = [
        "--type",
        "vgpu-64m",
        "--engine",
        engine,
        "--loop-budget",
        "4096",
    ];
    let Some(backend) = Backend::vgpud_or_skip(&args) else {
        return;
    };
    let cfg = FrontendConfig {
        device_features: FrontendConfig::default().device_features | (1 << VIRTIO_GPU_F_VIRGL),
        ..Default::default()
    };
    let mut c = GpuClient::connect(backend.socket(), &cfg).expect("connect to vgpud");
    ok(
        &mut c,
        GpuCommand::CtxCreate(CtxCreate::default()),
        "ctx create",
    );
    let cap = capset(&mut c);
    let (src, out, st) = (1, 2, 3);
    let g_src = buffer(&mut c, src, 64 << 10);
    let g_out = buffer(&mut c, out, 64 << 10);
    let g_st = buffer(&mut c, st, 4096);
    upload(&mut c, src, g_src, GRID);
    let mut fence = 1;
    let mut next = || {
        fence += 1;
        fence
    };

    if engine == "cpu" {
        assert_eq!(cap.module_flags, 0, "the CPU engine runs no guest modules");
        let r = submit(&mut c, &[load(1, src, GRID.len(), "main")], next());
        assert!(
            matches!(r, DecodedResponse::Err(ErrorCode::Unspec)),
            "{r:?}"
        );
        let s = stats(&mut c, st, g_st, next());
        assert_eq!(s.submits_refused, 1);
        assert_eq!(s.last_refusal(), "the cpu engine runs no guest mo");
        return;
    }
    assert_eq!(cap.module_flags & MODULE_FLAG_SPIRV, MODULE_FLAG_SPIRV);
    assert_eq!(cap.max_bindings, MAX_BINDINGS);
    assert_eq!(cap.bind_offset_align as u64, BIND_OFFSET_ALIGN);
    assert!(
        cap.loop_budget > 0 && cap.max_workgroup_size[0] >= 64,
        "{cap:?}"
    );

    // A grid of 5×3×2 one-invocation workgroups, run in pieces: each writes the grid it sees
    // (gl_NumWorkGroups must be the whole grid, not a piece's) and its index; push constant
    // `tag` is added to z.
    let grid = [5u32, 3, 2];
    let cells = (grid[0] * grid[1] * grid[2]) as usize;
    let r = submit(
        &mut c,
        &[
            load(7, src, GRID.len(), "main"),
            bind(0, out, 0, (cells * 16) as u64),
            ChannelCommand::PushConstants(PushConstantsCmd::new(0, &100u32.to_le_bytes())),
            dispatch(7, grid),
        ],
        next(),
    );
    assert!(matches!(r, DecodedResponse::OkNoData), "{r:?}");
    let got = download(&mut c, out, g_out, cells * 16);
    for i in 0..cells {
        let w: Vec<u32> = got[i * 16..i * 16 + 16]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(w, vec![5, 3, 2 + 100, i as u32], "workgroup {i}");
    }

    // Loading the same words again shares the context's compiled pipeline and its charge.
    let used = stats(&mut c, st, g_st, next()).framebuffer_used_bytes;
    let r = submit(&mut c, &[load(12, src, GRID.len(), "main")], next());
    assert!(matches!(r, DecodedResponse::OkNoData), "{r:?}");
    assert_eq!(stats(&mut c, st, g_st, next()).framebuffer_used_bytes, used);
    let r = submit(&mut c, &[load(12, src, GRID.len(), "main")], next());
    assert!(
        matches!(r, DecodedResponse::Err(ErrorCode::InvalidParameter)),
        "id in use: {r:?}"
    );

    // The binding and push constants persist across submits; rebinding a shorter range keeps
    // writes past it out of the buffer (robust access): the canary after 256 bytes survives.
    let canary = vec![0xabu8; 4096];
    upload(&mut c, out, g_out, &canary);
    let r = submit(&mut c, &[bind(0, out, 0, 256), dispatch(7, grid)], next());
    assert!(matches!(r, DecodedResponse::OkNoData), "{r:?}");
    let got = download(&mut c, out, g_out, 4096);
    assert_ne!(&got[..256], &canary[..256], "the bound range was written");
    assert_eq!(
        &got[256..],
        &canary[256..],
        "nothing lands past the bound range"
    );

    // Refusals: each changes nothing and shows in the stats with its reason.
    let before = stats(&mut c, st, g_st, next()).submits_refused;
    upload(&mut c, src, g_src, KERNEL_CAP);
    let r = submit(&mut c, &[load(8, src, KERNEL_CAP.len(), "main")], next());
    assert!(
        matches!(r, DecodedResponse::Err(ErrorCode::InvalidParameter)),
        "{r:?}"
    );
    let s = stats(&mut c, st, g_st, next());
    assert_eq!(s.submits_refused, before + 1);
    assert!(
        s.last_refusal().contains("Kernel"),
        "{:?}",
        s.last_refusal()
    );
    let r = submit(&mut c, &[dispatch(8, [1, 1, 1])], next());
    assert!(
        matches!(r, DecodedResponse::Err(ErrorCode::InvalidParameter)),
        "{r:?}"
    );
    assert_eq!(
        stats(&mut c, st, g_st, next()).last_refusal(),
        "no module 8"
    );
    // A stream refused part-way keeps none of its state: module 9 is not loaded.
    upload(&mut c, src, g_src, GRID);
    let r = submit(
        &mut c,
        &[
            load(9, src, GRID.len(), "main"),
            dispatch(9, [1, 1, 1]),
            bind(0, 99, 0, 4),
        ],
        next(),
    );
    assert!(matches!(r, DecodedResponse::Err(_)), "{r:?}");
    let r = submit(&mut c, &[dispatch(9, [1, 1, 1])], next());
    assert!(
        matches!(r, DecodedResponse::Err(ErrorCode::InvalidParameter)),
        "{r:?}"
    );
    // Unbound slot, wrong entry point, oversized grid.
    let r = submit(&mut c, &[bind(0, 0, 0, 0), dispatch(7, [1, 1, 1])], next());
    assert!(
        matches!(r, DecodedResponse::Err(ErrorCode::InvalidParameter)),
        "{r:?}"
    );
    let r = submit(&mut c, &[load(10, src, GRID.len(), "other")], next());
    assert!(
        matches!(r, DecodedResponse::Err(ErrorCode::InvalidParameter)),
        "{r:?}"
    );
    let r = submit(
        &mut c,
        &[
            bind(0, out, 0, 256),
            dispatch(7, [cap.max_workgroups.saturating_add(1), 1, 1]),
        ],
        next(),
    );
    assert!(
        matches!(r, DecodedResponse::Err(ErrorCode::InvalidParameter)),
        "{r:?}"
    );

    // A kernel that loops forever: its launch fails with the loop-budget status, in bounded
    // time, and the vGPU keeps serving.
    upload(&mut c, src, g_src, FOREVER);
    let failed_before = stats(&mut c, st, g_st, next()).jobs_failed;
    let r = submit(
        &mut c,
        &[
            load(11, src, FOREVER.len(), "main"),
            bind(0, out, 0, 4096),
            dispatch(11, [64, 1, 1]),
        ],
        next(),
    );
    assert!(
        matches!(r, DecodedResponse::Err(_)),
        "a failed job answers an error: {r:?}"
    );
    let s = stats(&mut c, st, g_st, next());
    assert_eq!(s.jobs_failed, failed_before + 1);
    assert_eq!(s.failure(), JobFailure::LoopBudget);
    let r = submit(
        &mut c,
        &[bind(0, out, 0, (cells * 16) as u64), dispatch(7, grid)],
        next(),
    );
    assert!(
        matches!(r, DecodedResponse::OkNoData),
        "still serving: {r:?}"
    );

    // Unloading frees the module's charge.
    let used = stats(&mut c, st, g_st, next()).framebuffer_used_bytes;
    let r = submit(
        &mut c,
        &[
            ChannelCommand::ModuleUnload(ModuleUnloadCmd {
                module_id: 7,
                reserved: 0,
            }),
            ChannelCommand::ModuleUnload(ModuleUnloadCmd {
                module_id: 11,
                reserved: 0,
            }),
        ],
        next(),
    );
    assert!(matches!(r, DecodedResponse::OkNoData), "{r:?}");
    let after = stats(&mut c, st, g_st, next()).framebuffer_used_bytes;
    assert!(
        after < used,
        "unloading frees the charge: {used} -> {after}"
    );
    drop(c);
    engines::assert_no_validation_errors(&backend.log());
}
