//! Guest modules (protocol 1.2) end to end through a real `vgpud` over vhost-user: a context
//! loads SPIR-V from one of its buffers, binds buffers, sets push constants and launches grids
//! that run in pieces; hostile modules and bad launches are refused (and the refusal shows in
//! QUERY_STATS), a kernel that loops forever fails with the loop-budget status, and writes past a
//! bound range never land. On the CPU engine, module commands are refused.

use vgpu_protocol::capset::{JobFailure, MODULE_FLAG_SPIRV};
use vgpu_protocol::channel::*;
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{ChannelCommand, DecodedResponse, ErrorCode};
use vgpu_tests::channel::ChannelSession;
use vgpu_tests::connection::FrontendConfig;
use vgpu_tests::engines;
use vgpu_tests::{Backend, GpuClient};

const GRID: &[u8] = include_bytes!("../../backend/src/driver/spirv/testdata/grid.spv");
const FOREVER: &[u8] = include_bytes!("../../backend/src/driver/spirv/testdata/forever.spv");
const KERNEL_CAP: &[u8] = include_bytes!("../../backend/src/driver/spirv/testdata/bad_kernel.spv");

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
    ChannelCommand::Dispatch(DispatchCmd::new(module_id, groups))
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
    let client = GpuClient::connect(backend.socket(), &cfg).expect("connect to vgpud");
    let mut c = ChannelSession::new(client, 1).unwrap();
    let cap = c.capset().unwrap();
    let (src, out, st) = (1, 2, 3);
    let g_src = c.buffer(src, 64 << 10).unwrap();
    let g_out = c.buffer(out, 64 << 10).unwrap();
    let g_st = c.buffer(st, 4096).unwrap();
    c.upload(src, g_src, GRID).unwrap();

    if engine == "cpu" {
        assert_eq!(cap.module_flags, 0, "the CPU engine runs no guest modules");
        let r = c.submit(&[load(1, src, GRID.len(), "main")]).unwrap();
        assert!(
            matches!(r, DecodedResponse::Err(ErrorCode::Unspec)),
            "{r:?}"
        );
        let s = c.stats(st, g_st).unwrap();
        assert_eq!(s.submits_refused, 1);
        assert_eq!(s.last_refusal(), "the cpu engine runs no guest modules");
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
    let r = c
        .submit(&[
            load(7, src, GRID.len(), "main"),
            bind(0, out, 0, (cells * 16) as u64),
            ChannelCommand::PushConstants(PushConstantsCmd::new(0, &100u32.to_le_bytes())),
            dispatch(7, grid),
        ])
        .unwrap();
    assert!(matches!(r, DecodedResponse::OkNoData), "{r:?}");
    let got = c.download(out, g_out, cells * 16).unwrap();
    for i in 0..cells {
        let w: Vec<u32> = got[i * 16..i * 16 + 16]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(w, vec![5, 3, 2 + 100, i as u32], "workgroup {i}");
    }

    // Loading the same words again shares the context's compiled pipeline and its charge.
    let used = c.stats(st, g_st).unwrap().framebuffer_used_bytes;
    let r = c.submit(&[load(12, src, GRID.len(), "main")]).unwrap();
    assert!(matches!(r, DecodedResponse::OkNoData), "{r:?}");
    assert_eq!(c.stats(st, g_st).unwrap().framebuffer_used_bytes, used);
    let r = c.submit(&[load(12, src, GRID.len(), "main")]).unwrap();
    assert!(
        matches!(r, DecodedResponse::Err(ErrorCode::InvalidParameter)),
        "id in use: {r:?}"
    );

    // The binding and push constants persist across submits; rebinding a shorter range keeps
    // writes past it out of the buffer (robust access): the canary after 256 bytes survives.
    let canary = vec![0xabu8; 4096];
    c.upload(out, g_out, &canary).unwrap();
    let r = c
        .submit(&[bind(0, out, 0, 256), dispatch(7, grid)])
        .unwrap();
    assert!(matches!(r, DecodedResponse::OkNoData), "{r:?}");
    let got = c.download(out, g_out, 4096).unwrap();
    assert_ne!(&got[..256], &canary[..256], "the bound range was written");
    assert_eq!(
        &got[256..],
        &canary[256..],
        "nothing lands past the bound range"
    );

    // Refusals: each changes nothing and shows in the stats with its reason.
    let before = c.stats(st, g_st).unwrap().submits_refused;
    c.upload(src, g_src, KERNEL_CAP).unwrap();
    let r = c.submit(&[load(8, src, KERNEL_CAP.len(), "main")]).unwrap();
    assert!(
        matches!(r, DecodedResponse::Err(ErrorCode::InvalidParameter)),
        "{r:?}"
    );
    let s = c.stats(st, g_st).unwrap();
    assert_eq!(s.submits_refused, before + 1);
    assert!(
        s.last_refusal().contains("Kernel"),
        "{:?}",
        s.last_refusal()
    );
    let r = c.submit(&[dispatch(8, [1, 1, 1])]).unwrap();
    assert!(
        matches!(r, DecodedResponse::Err(ErrorCode::InvalidParameter)),
        "{r:?}"
    );
    assert_eq!(c.stats(st, g_st).unwrap().last_refusal(), "no module 8");
    // A stream refused part-way keeps none of its state: module 9 is not loaded.
    c.upload(src, g_src, GRID).unwrap();
    let r = c
        .submit(&[
            load(9, src, GRID.len(), "main"),
            dispatch(9, [1, 1, 1]),
            bind(0, 99, 0, 4),
        ])
        .unwrap();
    assert!(matches!(r, DecodedResponse::Err(_)), "{r:?}");
    let r = c.submit(&[dispatch(9, [1, 1, 1])]).unwrap();
    assert!(
        matches!(r, DecodedResponse::Err(ErrorCode::InvalidParameter)),
        "{r:?}"
    );
    // Unbound slot, wrong entry point, oversized grid.
    let r = c
        .submit(&[bind(0, 0, 0, 0), dispatch(7, [1, 1, 1])])
        .unwrap();
    assert!(
        matches!(r, DecodedResponse::Err(ErrorCode::InvalidParameter)),
        "{r:?}"
    );
    let r = c.submit(&[load(10, src, GRID.len(), "other")]).unwrap();
    assert!(
        matches!(r, DecodedResponse::Err(ErrorCode::InvalidParameter)),
        "{r:?}"
    );
    let r = c
        .submit(&[
            bind(0, out, 0, 256),
            dispatch(7, [cap.max_workgroups.saturating_add(1), 1, 1]),
        ])
        .unwrap();
    assert!(
        matches!(r, DecodedResponse::Err(ErrorCode::InvalidParameter)),
        "{r:?}"
    );

    // Another context of the same VM reaches neither the first one's buffers nor its modules.
    c.open_context(2).unwrap();
    let r = c.submit(&[bind(0, out, 0, 256)]).unwrap();
    assert!(
        matches!(r, DecodedResponse::Err(ErrorCode::InvalidResourceId)),
        "a buffer not attached to the context: {r:?}"
    );
    let r = c.submit(&[dispatch(7, [1, 1, 1])]).unwrap();
    assert!(
        matches!(r, DecodedResponse::Err(ErrorCode::InvalidParameter)),
        "another context's module: {r:?}"
    );
    c.use_context(1);

    // A kernel that loops forever: its launch fails with the loop-budget status, in bounded
    // time, and the vGPU keeps serving.
    c.upload(src, g_src, FOREVER).unwrap();
    let failed_before = c.stats(st, g_st).unwrap().jobs_failed;
    let r = c
        .submit(&[
            load(11, src, FOREVER.len(), "main"),
            bind(0, out, 0, 4096),
            dispatch(11, [64, 1, 1]),
        ])
        .unwrap();
    assert!(
        matches!(r, DecodedResponse::Err(_)),
        "a failed job answers an error: {r:?}"
    );
    let s = c.stats(st, g_st).unwrap();
    assert_eq!(s.jobs_failed, failed_before + 1);
    assert_eq!(s.failure(), JobFailure::LoopBudget);
    let r = c
        .submit(&[bind(0, out, 0, (cells * 16) as u64), dispatch(7, grid)])
        .unwrap();
    assert!(
        matches!(r, DecodedResponse::OkNoData),
        "still serving: {r:?}"
    );

    // Unloading frees the module's charge.
    let used = c.stats(st, g_st).unwrap().framebuffer_used_bytes;
    let r = c
        .submit(&[
            ChannelCommand::ModuleUnload(ModuleUnloadCmd {
                module_id: 7,
                reserved: 0,
            }),
            ChannelCommand::ModuleUnload(ModuleUnloadCmd {
                module_id: 11,
                reserved: 0,
            }),
        ])
        .unwrap();
    assert!(matches!(r, DecodedResponse::OkNoData), "{r:?}");
    let after = c.stats(st, g_st).unwrap().framebuffer_used_bytes;
    assert!(
        after < used,
        "unloading frees the charge: {used} -> {after}"
    );
    drop(c);
    engines::assert_no_validation_errors(&backend.log());
}

const REDUCE: &[u8] = include_bytes!("../../backend/src/driver/spirv/testdata/reduce.spv");

/// One vGPU's share of the two-vGPU test: loads the reduction module and runs `rounds` launches
/// over its own data, checking every result; returns the vGPU's jobs completed and busy time.
fn reduce_rounds(path: std::path::PathBuf, seed: u32, rounds: usize) -> (u64, u64) {
    let cfg = FrontendConfig {
        device_features: FrontendConfig::default().device_features | (1 << VIRTIO_GPU_F_VIRGL),
        ..Default::default()
    };
    let client = GpuClient::connect(&path, &cfg).expect("connect");
    let mut c = ChannelSession::new(client, 1).unwrap();
    let n = 1u32 << 16;
    let (src, x, sums, st) = (1, 2, 3, 4);
    let g_src = c.buffer(src, 64 << 10).unwrap();
    let g_x = c.buffer(x, n * 4).unwrap();
    let g_sums = c.buffer(sums, 4096).unwrap();
    let g_st = c.buffer(st, 4096).unwrap();
    c.upload(src, g_src, REDUCE).unwrap();
    // Small integers: the sum is exact in f32 whatever the order.
    let data: Vec<f32> = (0..n).map(|i| ((i * seed) % 7) as f32).collect();
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    c.upload(x, g_x, &bytes).unwrap();
    let want: f32 = data.iter().sum();
    let groups = 16u32;
    let setup = [
        load(1, src, REDUCE.len(), "main"),
        bind(0, x, 0, u64::from(n) * 4),
        bind(1, sums, 0, u64::from(groups) * 4),
        ChannelCommand::PushConstants(PushConstantsCmd::new(0, &n.to_le_bytes())),
    ];
    assert!(matches!(
        c.submit(&setup).unwrap(),
        DecodedResponse::OkNoData
    ));
    for round in 0..rounds {
        let r = c.submit(&[dispatch(1, [groups, 1, 1])]).unwrap();
        assert!(
            matches!(r, DecodedResponse::OkNoData),
            "round {round}: {r:?}"
        );
        let got = c.download(sums, g_sums, groups as usize * 4).unwrap();
        let total: f32 = got
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .sum();
        assert_eq!(total, want, "vGPU seed {seed}, round {round}");
    }
    let s = c.stats(st, g_st).unwrap();
    (s.jobs_completed, s.busy_ns)
}

#[test]
fn two_vgpus_run_their_own_kernels_under_equal_share() {
    if !engines::engines().contains(&"vulkan") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock_b = dir.path().join("b.sock");
    let spec = format!("socket={},type=vgpu-64m", sock_b.display());
    let args = [
        "--engine",
        "vulkan",
        "--policy",
        "equal-share",
        "--type",
        "vgpu-64m",
        "--vgpu",
        &spec,
    ];
    let Some(backend) = Backend::vgpud_or_skip(&args) else {
        return;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !sock_b.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "second socket never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let a = backend.socket().to_path_buf();
    let t1 = std::thread::spawn(move || reduce_rounds(a, 3, 20));
    let t2 = std::thread::spawn(move || reduce_rounds(sock_b, 5, 20));
    let (jobs1, busy1) = t1.join().expect("vGPU 0");
    let (jobs2, busy2) = t2.join().expect("vGPU 1");
    // Both ran all their launches (and checked every result); both were charged device time.
    assert!(jobs1 >= 21 && jobs2 >= 21, "{jobs1} {jobs2}");
    assert!(busy1 > 0 && busy2 > 0, "{busy1} {busy2}");
    engines::assert_no_validation_errors(&backend.log());
}
