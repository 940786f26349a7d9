//! The vgpu channel end to end: the test frontend negotiates VIRGL with a real `vgpud` serving a
//! vGPU, creates a context and buffers, uploads data, runs every kernel through SUBMIT_3D, reads
//! the results back, checks that fenced submits complete in order and that the partition limit
//! answers ERR_OUT_OF_MEMORY.
//!
//! Needs `target/<profile>/vgpud` (or `VGPUD=path`); skips otherwise like `frontend_vgpud`.

use std::time::Duration;

use vgpu_protocol::capset::{VGPU_CAPSET_SIZE, VGPU_PROTOCOL_MINOR};
use vgpu_protocol::channel::*;
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{
    decode_response, ChannelCommand, DecodedResponse, ErrorCode, GpuCommand, KernelLaunch,
    VgpuCapset,
};
use vgpu_tests::connection::{FrontendConfig, CTRL_QUEUE};
use vgpu_tests::engines;
use vgpu_tests::vring::{Link, RawDesc, VRING_DESC_F_WRITE};
use vgpu_tests::{Backend, GpuClient};

const CTX: u32 = 1;

fn hdr(ctx: u32, fence: Option<u64>) -> CtrlHeader {
    CtrlHeader {
        flags: if fence.is_some() {
            VIRTIO_GPU_FLAG_FENCE
        } else {
            0
        },
        fence_id: fence.unwrap_or(0),
        ctx_id: ctx,
        ..Default::default()
    }
}

fn ok(c: &mut GpuClient, cmd: GpuCommand<'_>, what: &str) {
    let r = c.send_ctrl(&cmd, hdr(CTX, None)).unwrap().1;
    assert!(matches!(r, DecodedResponse::OkNoData), "{what}: {r:?}");
}

fn create(c: &mut GpuClient, id: u32, size: u32) -> DecodedResponse {
    let cmd = GpuCommand::ResourceCreate3d(ResourceCreate3d {
        resource_id: id,
        target: PIPE_BUFFER,
        width: size,
        height: 1,
        depth: 1,
        array_size: 1,
        ..Default::default()
    });
    c.send_ctrl(&cmd, hdr(CTX, None)).unwrap().1
}

/// A buffer with guest backing, attached to the context; returns the backing address.
fn buffer(c: &mut GpuClient, id: u32, size: u32) -> u64 {
    assert!(matches!(create(c, id, size), DecodedResponse::OkNoData));
    let gpa = c.guest_buffer(&vec![0u8; size as usize]).unwrap();
    let r = c.attach_backing(id, &[(gpa, size)]).unwrap();
    assert!(matches!(r, DecodedResponse::OkNoData), "{r:?}");
    ok(
        c,
        GpuCommand::CtxAttachResource(CtxResource {
            resource_id: id,
            padding: 0,
        }),
        "ctx attach",
    );
    gpa
}

fn transfer(id: u32, len: u32, to_host: bool) -> GpuCommand<'static> {
    let t = Transfer3d {
        box_: Box3d {
            w: len,
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
    ok(c, transfer(id, data.len() as u32, true), "upload");
}

fn download(c: &mut GpuClient, id: u32, gpa: u64, len: usize) -> Vec<u8> {
    ok(c, transfer(id, len as u32, false), "download");
    c.conn.mem.read_vec(gpa, len).unwrap()
}

fn stream(cmds: &[ChannelCommand]) -> Vec<u8> {
    let mut s = Vec::new();
    for cmd in cmds {
        cmd.encode(&mut s);
    }
    s
}

fn submit_cmd(s: &[u8]) -> GpuCommand<'_> {
    GpuCommand::Submit3d(
        Submit3d {
            size: s.len() as u32,
            padding: 0,
        },
        s,
    )
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn to_f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn connect(backend: &Backend) -> GpuClient {
    let cfg = FrontendConfig {
        device_features: FrontendConfig::default().device_features
            | (1 << VIRTIO_GPU_F_VIRGL)
            | (1 << VIRTIO_GPU_F_CONTEXT_INIT),
        ..Default::default()
    };
    GpuClient::connect(backend.socket(), &cfg).expect("connect to vgpud")
}

#[test]
fn channel_kernels_fences_and_limits() {
    for engine in engines::engines() {
        eprintln!("engine {engine}");
        channel_kernels_fences_and_limits_on(engine);
    }
}

fn channel_kernels_fences_and_limits_on(engine: &str) {
    let Some(backend) = Backend::vgpud_or_skip(&["--type", "vgpu-64m", "--engine", engine]) else {
        return;
    };
    let mut c = connect(&backend);
    assert!(c.has_gpu_feature(VIRTIO_GPU_F_VIRGL), "VIRGL offered");
    assert!(
        c.has_gpu_feature(VIRTIO_GPU_F_CONTEXT_INIT),
        "CONTEXT_INIT offered"
    );
    assert_eq!(c.config().num_capsets, 1);
    match c
        .ctrl(&GpuCommand::GetCapsetInfo(GetCapsetInfo::default()))
        .unwrap()
    {
        DecodedResponse::OkCapsetInfo(i) => assert_eq!(
            (i.capset_id, i.capset_max_version, i.capset_max_size),
            (VGPU_CAPSET_ID, 1, VGPU_CAPSET_SIZE as u32)
        ),
        other => panic!("{other:?}"),
    }
    let get = GpuCommand::GetCapset(GetCapset {
        capset_id: VGPU_CAPSET_ID,
        capset_version: 1,
    });
    match c.ctrl(&get).unwrap() {
        DecodedResponse::OkCapset(b) => {
            let cap = VgpuCapset::parse(&b).unwrap();
            assert_eq!(cap.type_name(), "vgpu-64m");
            assert_eq!(cap.framebuffer_bytes, 64 << 20);
            assert_eq!(cap.protocol_minor, VGPU_PROTOCOL_MINOR);
            assert_eq!(cap.engine_name(), engine);
            assert!(!cap.device_name().is_empty());
            if engine == "vulkan" {
                assert_eq!(
                    Some(cap.device_name().to_string()),
                    engines::vulkan_device()
                );
                assert!(cap.max_storage_buffer_range > 0 && cap.device_memory_bytes > 0);
            }
        }
        other => panic!("{other:?}"),
    }
    // context_init = our capset id, as a guest that negotiated CONTEXT_INIT creates it.
    ok(
        &mut c,
        GpuCommand::CtxCreate(CtxCreate {
            context_init: VGPU_CAPSET_ID,
            ..Default::default()
        }),
        "ctx create",
    );

    let (m, n, k) = (32usize, 24usize, 16usize);
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 * 0.5).collect();
    let ga = buffer(&mut c, 1, (m * k * 4) as u32);
    let gb = buffer(&mut c, 2, (k * n * 4) as u32);
    let gc = buffer(&mut c, 3, (m * n * 4) as u32);
    let gout = buffer(&mut c, 4, 64);
    upload(&mut c, 1, ga, &f32s(&a));
    upload(&mut c, 2, gb, &f32s(&b));
    let cmds = [
        ChannelCommand::Launch(KernelLaunch::GemmF32(GemmF32Args {
            a_res: 1,
            b_res: 2,
            c_res: 3,
            m: m as u32,
            n: n as u32,
            k: k as u32,
            alpha: 1.0,
            beta: 0.0,
        })),
        ChannelCommand::Launch(KernelLaunch::ReduceSumF32(ReduceSumF32Args {
            x_res: 3,
            out_res: 4,
            n: (m * n) as u32,
            reserved: 0,
            out_offset: 0,
        })),
        ChannelCommand::Launch(KernelLaunch::AxpyF32(AxpyF32Args {
            x_res: 2,
            y_res: 1,
            n: (k * n).min(m * k) as u32,
            alpha: -2.0,
        })),
        ChannelCommand::Launch(KernelLaunch::Crc32c(Crc32cArgs {
            src_res: 3,
            out_res: 4,
            src_offset: 0,
            len: (m * n * 4) as u64,
            out_offset: 8,
        })),
    ];
    let s = stream(&cmds);
    let r = c.send_ctrl(&submit_cmd(&s), hdr(CTX, Some(1))).unwrap();
    assert!(matches!(r.1, DecodedResponse::OkNoData), "{:?}", r.1);
    assert_eq!(r.0.fence_id, 1);

    let mut want_c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            want_c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    let got_c_bytes = download(&mut c, 3, gc, m * n * 4);
    // Small integers and halves: exact in f32 whatever the summation order.
    assert_eq!(to_f32s(&got_c_bytes), want_c);
    let out = download(&mut c, 4, gout, 64);
    let sum = want_c.iter().map(|&v| f64::from(v)).sum::<f64>() as f32;
    assert_eq!(f32::from_le_bytes(out[0..4].try_into().unwrap()), sum);
    assert_eq!(
        u32::from_le_bytes(out[8..12].try_into().unwrap()),
        vgpu_protocol::crc32c::crc32c(&got_c_bytes)
    );
    let mut want_a = a.clone();
    for i in 0..(k * n).min(m * k) {
        want_a[i] += -2.0 * b[i];
    }
    assert_eq!(to_f32s(&download(&mut c, 1, ga, m * k * 4)), want_a);

    // Several fenced submits in flight: used in fence order, the read-back after them sees all.
    let big = 128u32;
    buffer(&mut c, 10, big * big * 4);
    buffer(&mut c, 11, big * big * 4);
    let gbig = buffer(&mut c, 12, big * big * 4);
    let gemm = stream(&[ChannelCommand::Launch(KernelLaunch::GemmF32(GemmF32Args {
        a_res: 10,
        b_res: 11,
        c_res: 12,
        m: big,
        n: big,
        k: big,
        alpha: 1.0,
        beta: 0.0,
    }))]);
    let fill = stream(&[ChannelCommand::Fill(FillCmd {
        dst_res: 12,
        pattern: 0x3f80_0000,
        offset: 0,
        size: 16,
    })]);
    let mut heads = Vec::new();
    for (i, s) in [&gemm, &fill, &gemm].into_iter().enumerate() {
        let mut bytes = Vec::new();
        submit_cmd(s).encode(hdr(CTX, Some(10 + i as u64)), &mut bytes);
        let req = c.guest_buffer(&bytes).unwrap();
        let resp = c.guest_buffer(&[0u8; 64]).unwrap();
        let descs = [
            RawDesc {
                addr: req,
                len: bytes.len() as u32,
                flags: 0,
                link: Link::Auto,
            },
            RawDesc {
                addr: resp,
                len: 64,
                flags: VRING_DESC_F_WRITE,
                link: Link::Auto,
            },
        ];
        heads.push((c.post_raw(CTRL_QUEUE, &descs).unwrap(), resp));
    }
    for (i, &(head, resp)) in heads.iter().enumerate() {
        let used = c.wait_any(CTRL_QUEUE, Duration::from_secs(60)).unwrap();
        assert_eq!(used.id, u32::from(head), "fenced submit {i} out of order");
        let bytes = c.conn.mem.read_vec(resp, used.len as usize).unwrap();
        let (h, r) = decode_response(&bytes).unwrap();
        assert!(matches!(r, DecodedResponse::OkNoData));
        assert_eq!(h.fence_id, 10 + i as u64);
    }
    // The last GEMM (zeros × zeros) overwrote the fill.
    assert_eq!(download(&mut c, 12, gbig, 16), vec![0u8; 16]);

    // Validation: unknown resource, then the partition limit.
    let bad = stream(&[ChannelCommand::Fill(FillCmd {
        dst_res: 99,
        pattern: 0,
        offset: 0,
        size: 4,
    })]);
    assert!(matches!(
        c.send_ctrl(&submit_cmd(&bad), hdr(CTX, None)).unwrap().1,
        DecodedResponse::Err(ErrorCode::InvalidResourceId)
    ));
    assert!(matches!(
        create(&mut c, 50, 64 << 20),
        DecodedResponse::Err(ErrorCode::OutOfMemory)
    ));
    ok(&mut c, GpuCommand::CtxDestroy, "ctx destroy");
    engines::assert_no_validation_errors(&backend.log());
}
