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
};
use vgpu_tests::channel::ChannelSession;
use vgpu_tests::connection::{FrontendConfig, CTRL_QUEUE};
use vgpu_tests::engines;
use vgpu_tests::vring::{Link, RawDesc, VRING_DESC_F_WRITE};
use vgpu_tests::{Backend, GpuClient};

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
    // context_init = our capset id, as a guest that negotiated CONTEXT_INIT creates it.
    let create = CtxCreate {
        context_init: VGPU_CAPSET_ID,
        ..Default::default()
    };
    let mut c = ChannelSession::with_create(c, 1, create).unwrap();
    let cap = c.capset().unwrap();
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

    let (m, n, k) = (32usize, 24usize, 16usize);
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 * 0.5).collect();
    let ga = c.buffer(1, (m * k * 4) as u32).unwrap();
    let gb = c.buffer(2, (k * n * 4) as u32).unwrap();
    let gc = c.buffer(3, (m * n * 4) as u32).unwrap();
    let gout = c.buffer(4, 64).unwrap();
    c.upload(1, ga, &f32s(&a)).unwrap();
    c.upload(2, gb, &f32s(&b)).unwrap();
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
    let r = c.submit_fenced(&cmds).unwrap();
    assert!(matches!(r.1, DecodedResponse::OkNoData), "{:?}", r.1);
    assert_eq!(r.0.fence_id, 1);

    let mut want_c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            want_c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    let got_c_bytes = c.download(3, gc, m * n * 4).unwrap();
    // Small integers and halves: exact in f32 whatever the summation order.
    assert_eq!(to_f32s(&got_c_bytes), want_c);
    let out = c.download(4, gout, 64).unwrap();
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
    assert_eq!(to_f32s(&c.download(1, ga, m * k * 4).unwrap()), want_a);

    // Several fenced submits in flight: used in fence order, the read-back after them sees all.
    let big = 128u32;
    c.buffer(10, big * big * 4).unwrap();
    c.buffer(11, big * big * 4).unwrap();
    let gbig = c.buffer(12, big * big * 4).unwrap();
    let gemm = [ChannelCommand::Launch(KernelLaunch::GemmF32(GemmF32Args {
        a_res: 10,
        b_res: 11,
        c_res: 12,
        m: big,
        n: big,
        k: big,
        alpha: 1.0,
        beta: 0.0,
    }))];
    let fill = [ChannelCommand::Fill(FillCmd {
        dst_res: 12,
        pattern: 0x3f80_0000,
        offset: 0,
        size: 16,
    })];
    let mut heads = Vec::new();
    for cmds in [&gemm, &fill, &gemm] {
        let (bytes, fence) = c.submit_bytes(cmds).unwrap();
        let req = c.client.guest_buffer(&bytes).unwrap();
        let resp = c.client.guest_buffer(&[0u8; 64]).unwrap();
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
        let head = c.client.post_raw(CTRL_QUEUE, &descs).unwrap();
        heads.push((head, resp, fence));
    }
    for (i, &(head, resp, fence)) in heads.iter().enumerate() {
        let used = c
            .client
            .wait_any(CTRL_QUEUE, Duration::from_secs(60))
            .unwrap();
        assert_eq!(used.id, u32::from(head), "fenced submit {i} out of order");
        let bytes = c.client.conn.mem.read_vec(resp, used.len as usize).unwrap();
        let (h, r) = decode_response(&bytes).unwrap();
        assert!(matches!(r, DecodedResponse::OkNoData));
        assert_eq!(h.fence_id, fence);
    }
    // The last GEMM (zeros × zeros) overwrote the fill.
    assert_eq!(c.download(12, gbig, 16).unwrap(), vec![0u8; 16]);

    // Validation: unknown resource, then the partition limit.
    let bad = [ChannelCommand::Fill(FillCmd {
        dst_res: 99,
        pattern: 0,
        offset: 0,
        size: 4,
    })];
    assert!(matches!(
        c.submit_unfenced(&bad).unwrap(),
        DecodedResponse::Err(ErrorCode::InvalidResourceId)
    ));
    assert!(matches!(
        c.create_buffer(50, 64 << 20).unwrap(),
        DecodedResponse::Err(ErrorCode::OutOfMemory)
    ));
    let r = c.send(&GpuCommand::CtxDestroy).unwrap();
    assert!(matches!(r, DecodedResponse::OkNoData), "ctx destroy: {r:?}");
    engines::assert_no_validation_errors(&backend.log());
}
