//! The test frontend against QEMU's own C backend (`/usr/lib/qemu/vhost-user-gpu`): proves the
//! frontend against a real peer. Skips with a message when QEMU's backend is not installed.

use std::time::Duration;

use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::DecodedResponse;
use vgpu_tests::client::rect;
use vgpu_tests::conformance::run_2d_conformance;
use vgpu_tests::connection::{FrontendConfig, CTRL_QUEUE, VIRTIO_RING_F_EVENT_IDX};
use vgpu_tests::vring::Segment;
use vgpu_tests::{Backend, GpuClient};

fn connect(backend: &Backend, cfg: &FrontendConfig) -> GpuClient {
    GpuClient::connect(backend.socket(), cfg).expect("connect to backend")
}

#[test]
fn qemu_2d_conformance_event_idx() {
    let Some(backend) = Backend::qemu_or_skip() else {
        return;
    };
    let cfg = FrontendConfig::default();
    let mut client = connect(&backend, &cfg);
    assert!(
        client.conn.has_feature(VIRTIO_RING_F_EVENT_IDX),
        "QEMU's backend offers EVENT_IDX"
    );
    let rep = run_2d_conformance(&mut client);
    assert!(!rep.notes.is_empty());
}

#[test]
fn qemu_2d_conformance_no_event_idx_no_reply_ack() {
    let Some(backend) = Backend::qemu_or_skip() else {
        return;
    };
    let cfg = FrontendConfig {
        event_idx: false,
        reply_ack: false,
        ..Default::default()
    };
    let mut client = connect(&backend, &cfg);
    assert!(!client.conn.has_feature(VIRTIO_RING_F_EVENT_IDX));
    run_2d_conformance(&mut client);
}

#[test]
fn qemu_many_requests_wrap_the_ring() {
    let Some(backend) = Backend::qemu_or_skip() else {
        return;
    };
    let cfg = FrontendConfig {
        queue_sizes: [16, 16],
        ..Default::default()
    };
    let mut client = connect(&backend, &cfg);
    client.peer().wait_count(2, Duration::from_secs(5)).unwrap();
    assert_eq!(
        client
            .create_2d(5, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 8, 8)
            .unwrap(),
        DecodedResponse::OkNoData
    );
    // 16-entry ring, 2 descriptors a request: 200 requests wrap indexes many times.
    for i in 0..200u32 {
        let r = client.flush(5, rect(0, 0, 1 + i % 8, 1)).unwrap();
        assert_eq!(r, DecodedResponse::OkNoData, "flush {i}");
    }
    let kicks = client.conn.queues[CTRL_QUEUE].kicks;
    eprintln!("200+1 requests, {kicks} kicks");
}

#[test]
fn qemu_multi_descriptor_chains() {
    let Some(backend) = Backend::qemu_or_skip() else {
        return;
    };
    let mut client = connect(&backend, &FrontendConfig::default());
    client.peer().wait_count(2, Duration::from_secs(5)).unwrap();
    // GET_DISPLAY_INFO request split over 3 readable descriptors, response over 3 writable ones.
    let req = vgpu_tests::client::encode(&vgpu_protocol::GpuCommand::GetDisplayInfo);
    let mem = &client.conn.mem;
    let a = mem.alloc_with(&req[..5]).unwrap();
    let b = mem.alloc_with(&req[5..13]).unwrap();
    let c = mem.alloc_with(&req[13..]).unwrap();
    let total = std::mem::size_of::<RespDisplayInfo>() as u32;
    let r1 = mem.alloc(7, 8).unwrap();
    let r2 = mem.alloc(100, 8).unwrap();
    let r3 = mem.alloc(u64::from(total), 8).unwrap();
    let done = client
        .submit(
            CTRL_QUEUE,
            &[
                Segment::Readable { addr: a, len: 5 },
                Segment::Readable { addr: b, len: 8 },
                Segment::Readable {
                    addr: c,
                    len: (req.len() - 13) as u32,
                },
                Segment::Writable { addr: r1, len: 7 },
                Segment::Writable { addr: r2, len: 100 },
                Segment::Writable {
                    addr: r3,
                    len: total,
                },
            ],
        )
        .unwrap();
    assert_eq!(done.used.len, total, "used length is the response size");
    let (_, resp) = vgpu_protocol::decode_response(&done.written).unwrap();
    match resp {
        DecodedResponse::OkDisplayInfo(m) => assert_eq!(m[0].r.width, 1280),
        other => panic!("{other:?}"),
    }
}
