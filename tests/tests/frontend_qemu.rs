//! The test frontend against QEMU's own C backend (`/usr/lib/qemu/vhost-user-gpu`): proves the
//! frontend against a real peer. Skips with a message when QEMU's backend is not installed.

use std::time::Duration;

use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::DecodedResponse;
use vgpu_tests::client::rect;
use vgpu_tests::conformance::{run_2d_conformance, DisplayModel};
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
    let rep = run_2d_conformance(&mut client, DisplayModel::Forwarded);
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
    run_2d_conformance(&mut client, DisplayModel::Forwarded);
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

#[test]
fn qemu_indirect_descriptors() {
    let Some(backend) = Backend::qemu_or_skip() else {
        return;
    };
    let cfg = FrontendConfig {
        indirect: true,
        ..Default::default()
    };
    let mut client = connect(&backend, &cfg);
    assert!(client
        .conn
        .has_feature(vgpu_tests::connection::VIRTIO_RING_F_INDIRECT_DESC));
    client.peer().wait_count(2, Duration::from_secs(5)).unwrap();
    let req = vgpu_tests::client::encode(&vgpu_protocol::GpuCommand::GetDisplayInfo);
    let mem = &client.conn.mem;
    let a = mem.alloc_with(&req[..10]).unwrap();
    let b = mem.alloc_with(&req[10..]).unwrap();
    let total = std::mem::size_of::<RespDisplayInfo>() as u32;
    let r = mem.alloc(u64::from(total), 8).unwrap();
    let done = client
        .submit_indirect(
            CTRL_QUEUE,
            &[
                Segment::Readable { addr: a, len: 10 },
                Segment::Readable {
                    addr: b,
                    len: (req.len() - 10) as u32,
                },
                Segment::Writable {
                    addr: r,
                    len: total,
                },
            ],
        )
        .unwrap();
    assert_eq!(done.used.len, total);
    let (_, resp) = vgpu_protocol::decode_response(&done.written).unwrap();
    assert!(
        matches!(resp, DecodedResponse::OkDisplayInfo(_)),
        "{resp:?}"
    );
}

#[test]
fn qemu_pipelined_requests() {
    let Some(backend) = Backend::qemu_or_skip() else {
        return;
    };
    let mut client = connect(&backend, &FrontendConfig::default());
    client.peer().wait_count(2, Duration::from_secs(5)).unwrap();
    // 32 RESOURCE_CREATE_2D in flight at once, each with its own response buffer.
    let mut heads = Vec::new();
    let mut resps = Vec::new();
    for id in 1..=32u32 {
        let req = vgpu_tests::client::encode(&vgpu_protocol::GpuCommand::ResourceCreate2d(
            ResourceCreate2d {
                resource_id: id,
                format: VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
                width: 16,
                height: 16,
            },
        ));
        let mem = &client.conn.mem;
        let q = mem.alloc_with(&req).unwrap();
        let r = mem.alloc(24, 8).unwrap();
        let head = client
            .post_raw(
                CTRL_QUEUE,
                &[
                    vgpu_tests::RawDesc::readable(q, req.len() as u32),
                    vgpu_tests::RawDesc::writable(r, 24),
                ],
            )
            .unwrap();
        heads.push(head);
        resps.push(r);
    }
    let mut seen = Vec::new();
    for _ in 0..32 {
        let u = client.wait_any(CTRL_QUEUE, Duration::from_secs(5)).unwrap();
        assert_eq!(u.len, 24);
        seen.push(u.id as u16);
    }
    assert_eq!(seen, heads, "QEMU completes in order");
    for r in resps {
        let bytes = client.conn.mem.read_vec(r, 24).unwrap();
        let (_, resp) = vgpu_protocol::decode_response(&bytes).unwrap();
        assert_eq!(resp, DecodedResponse::OkNoData);
    }
    eprintln!(
        "32 pipelined requests, {} kicks",
        client.conn.queues[CTRL_QUEUE].kicks
    );
}

/// A guest reboot on the same connection: rings stopped, a fresh GPU socket, rings set up again.
/// QEMU's C backend keeps its first GPU socket (`sock_fd != -1` makes it ignore the second
/// SET_SOCKET), so this only checks that the control queue works again and reports what the GPU
/// socket saw.
#[test]
fn qemu_restart_like_a_reboot() {
    let Some(backend) = Backend::qemu_or_skip() else {
        return;
    };
    let cfg = FrontendConfig::default();
    let mut client = connect(&backend, &cfg);
    client.peer().wait_count(2, Duration::from_secs(5)).unwrap();
    assert_eq!(
        client
            .create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 8, 8)
            .unwrap(),
        DecodedResponse::OkNoData
    );
    client.conn.restart(&cfg, false).unwrap();
    let r = client.flush(1, rect(0, 0, 8, 8)).unwrap();
    eprintln!("after restart: flush -> {r:?}");
    std::thread::sleep(Duration::from_millis(200));
    let msgs = client.peer().messages();
    eprintln!("new GPU socket saw {} messages: {msgs:?}", msgs.len());
}
