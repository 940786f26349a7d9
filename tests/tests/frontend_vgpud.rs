//! The test frontend against our `vgpud`: the same 2D conformance sequence as QEMU's backend passes,
//! malformed input that must be answered while the daemon keeps serving, and reconnects.
//!
//! Needs `target/<profile>/vgpud` (`cargo build -p vgpu-backend`) or `VGPUD=path`; skips with a
//! message otherwise (set `VGPU_REQUIRE_VGPUD=1` to fail instead).

use std::mem::size_of;
use std::time::Duration;

use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{decode_response, DecodedResponse, ErrorCode, GpuCommand};
use vgpu_tests::client::{encode, header_bytes, pattern, rect};
use vgpu_tests::conformance::{
    assert_err, assert_ok, edid_preferred_mode, run_2d_conformance, VGPUD_DEFAULT,
};
use vgpu_tests::connection::{
    FrontendConfig, CTRL_QUEUE, CURSOR_QUEUE, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vgpu_tests::gpu_socket::GpuMsg;
use vgpu_tests::vring::{Link, RawDesc, Segment, VRING_DESC_F_INDIRECT, VRING_DESC_F_WRITE};
use vgpu_tests::{Backend, GpuClient};

const T: Duration = Duration::from_secs(5);

fn connect(backend: &Backend, cfg: &FrontendConfig) -> GpuClient {
    GpuClient::connect(backend.socket(), cfg).expect("connect to vgpud")
}

/// A request that must still work: the daemon is alive and serving this connection.
#[track_caller]
fn assert_serving(client: &mut GpuClient, what: &str) {
    match client.display_info() {
        Ok(DecodedResponse::OkDisplayInfo(_)) => {}
        other => panic!("after {what}: GET_DISPLAY_INFO gave {other:?}"),
    }
    let m = client
        .peer()
        .next_display(T)
        .expect("GET_DISPLAY_INFO on the GPU socket");
    assert!(matches!(*m, GpuMsg::GetDisplayInfo), "after {what}: {m:?}");
}

/// Any error response (the spec leaves the exact code open in several cases); returns it.
#[track_caller]
fn assert_some_err(resp: DecodedResponse, what: &str) -> ErrorCode {
    match resp {
        DecodedResponse::Err(e) => {
            eprintln!("{what}: {e:?}");
            e
        }
        other => panic!("{what}: expected an error, got {other:?}"),
    }
}

#[test]
fn vgpud_2d_conformance() {
    let Some(backend) = Backend::vgpud_or_skip(&[]) else {
        return;
    };
    let mut client = connect(&backend, &FrontendConfig::default());
    run_2d_conformance(&mut client, VGPUD_DEFAULT);
}

#[test]
fn vgpud_2d_conformance_no_event_idx() {
    let Some(backend) = Backend::vgpud_or_skip(&[]) else {
        return;
    };
    let cfg = FrontendConfig {
        event_idx: false,
        reply_ack: false,
        ..Default::default()
    };
    let mut client = GpuClient::connect(backend.socket(), &cfg).unwrap();
    assert!(!client.conn.has_feature(VIRTIO_RING_F_EVENT_IDX));
    run_2d_conformance(&mut client, VGPUD_DEFAULT);
}

#[test]
fn vgpud_malformed_commands() {
    let Some(backend) = Backend::vgpud_or_skip(&[]) else {
        return;
    };
    let mut client = connect(&backend, &FrontendConfig::default());
    let mem_end = client.conn.mem.end();

    // Unknown types, short headers, truncated bodies.
    assert_err(
        decode_response(&client.send_raw(&header_bytes(0x1ff)).unwrap())
            .unwrap()
            .1,
        ErrorCode::Unspec,
        "unknown type",
    );
    assert_some_err(
        decode_response(&client.send_raw(&header_bytes(0x100)[..12]).unwrap())
            .unwrap()
            .1,
        "12-byte header",
    );
    let create = encode(&GpuCommand::ResourceCreate2d(ResourceCreate2d {
        resource_id: 1,
        format: VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
        width: 32,
        height: 32,
    }));
    assert_some_err(
        decode_response(&client.send_raw(&create[..30]).unwrap())
            .unwrap()
            .1,
        "truncated RESOURCE_CREATE_2D",
    );
    assert_serving(&mut client, "short requests");

    // A real resource to aim at.
    let img = pattern(32, 32, 5);
    let gpa = client
        .create_backed_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 32, 32, &img, 2)
        .unwrap();

    // Rectangles outside the resource, including u32 overflow of x + width.
    for r in [
        rect(0, 0, 33, 32),
        rect(32, 0, 1, 1),
        rect(u32::MAX - 4, 0, 8, 1),
        rect(0, u32::MAX, 1, 2),
        rect(16, 16, u32::MAX, u32::MAX),
    ] {
        assert_err(
            client.transfer_2d(1, r, 0).unwrap(),
            ErrorCode::InvalidParameter,
            "transfer rect",
        );
        assert_err(
            client.flush(1, r).unwrap(),
            ErrorCode::InvalidParameter,
            "flush rect",
        );
        assert_err(
            client.set_scanout(0, 1, r).unwrap(),
            ErrorCode::InvalidParameter,
            "scanout rect",
        );
    }
    // Offset + length past the backing or overflowing u64.
    for off in [u64::MAX - 3, u64::MAX / 2, 32 * 32 * 4, 32 * 32 * 4 - 4] {
        let resp = client.transfer_2d(1, rect(0, 1, 32, 1), off).unwrap();
        eprintln!("transfer offset {off:#x}: {resp:?}");
        assert!(
            matches!(resp, DecodedResponse::OkNoData | DecodedResponse::Err(_)),
            "offset {off:#x}: {resp:?}"
        );
    }
    assert_serving(&mut client, "bad rectangles and offsets");

    // Backing outside guest memory, straddling its end, or overflowing u64.
    assert_ok(
        client
            .create_2d(2, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16, 16)
            .unwrap(),
        "create 2",
    );
    for (addr, len) in [
        (mem_end + 0x10000, 4096u32),
        (mem_end - 100, 4096),
        (u64::MAX - 100, 4096),
        (0xdead_0000_0000, 1024),
    ] {
        assert_some_err(
            client.attach_backing(2, &[(addr, len)]).unwrap(),
            "backing outside memory",
        );
    }
    // A failed attach leaves no backing: transfer refused, a good attach still works.
    assert_err(
        client.transfer_2d(2, rect(0, 0, 16, 16), 0).unwrap(),
        ErrorCode::InvalidResourceId,
        "transfer after failed attach",
    );
    assert_ok(
        client.attach_backing(2, &[(gpa, 16 * 16 * 4)]).unwrap(),
        "good attach",
    );
    assert_ok(
        client.transfer_2d(2, rect(0, 0, 16, 16), 0).unwrap(),
        "transfer 2",
    );

    // Huge or lying nr_entries.
    for nr in [u32::MAX, 16385, 1000] {
        let mut bytes = encode(&GpuCommand::ResourceAttachBacking(
            ResourceAttachBacking {
                resource_id: 1,
                nr_entries: 0,
            },
            vgpu_protocol::command::mem_entries_from_bytes(&[]).unwrap(),
        ));
        bytes[24 + 4..24 + 8].copy_from_slice(&nr.to_le_bytes());
        let entry = MemEntry {
            addr: gpa,
            length: 4096,
            padding: 0,
        };
        bytes.extend_from_slice(vm_memory::ByteValued::as_slice(&entry));
        assert_some_err(
            decode_response(&client.send_raw(&bytes).unwrap())
                .unwrap()
                .1,
            &format!("nr_entries {nr}"),
        );
    }
    // Zero-length entries and a backing too small for the resource.
    let resp = client.attach_backing(3, &[(gpa, 0)]).unwrap();
    assert_err(resp, ErrorCode::InvalidResourceId, "attach to unknown 3");
    assert_serving(&mut client, "bad backings");

    // Huge resources must be refused, not allocated.
    for (w, h) in [(u32::MAX, u32::MAX), (65536, 65536), (0, 16), (16, 0)] {
        let resp = client
            .create_2d(10, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, w, h)
            .unwrap();
        assert_some_err(resp, &format!("create {w}x{h}"));
    }
    assert_serving(&mut client, "huge resources");

    // Cursor queue: a short command and an unknown resource are consumed without a crash.
    let c = client
        .send_raw_on(
            CURSOR_QUEUE,
            &header_bytes(VIRTIO_GPU_CMD_UPDATE_CURSOR),
            24,
        )
        .unwrap();
    eprintln!("short cursor command: {:?}", c.used);
    client.update_cursor(0, 1, 1, 77, (0, 0)).unwrap();
    client.peer().skip_all();
    assert_serving(&mut client, "bad cursor commands");
}

#[test]
fn vgpud_malformed_chains() {
    let Some(backend) = Backend::vgpud_or_skip(&[]) else {
        return;
    };
    let cfg = FrontendConfig {
        indirect: true,
        ..Default::default()
    };
    let mut client = connect(&backend, &cfg);
    let mem_end = client.conn.mem.end();
    let req = encode(&GpuCommand::GetDisplayInfo);
    let q = client.conn.mem.alloc_with(&req).unwrap();
    let resp_len = size_of::<RespDisplayInfo>() as u32;
    let r = client.conn.mem.alloc(u64::from(resp_len), 8).unwrap();
    let n = req.len() as u32;

    let cases: Vec<(&str, Vec<RawDesc>)> = vec![
        ("no writable descriptor", vec![RawDesc::readable(q, n)]),
        (
            "only a writable descriptor",
            vec![RawDesc::writable(r, resp_len)],
        ),
        (
            "readable outside memory",
            vec![
                RawDesc::readable(mem_end + 4096, n),
                RawDesc::writable(r, resp_len),
            ],
        ),
        (
            "writable outside memory",
            vec![
                RawDesc::readable(q, n),
                RawDesc::writable(mem_end + 4096, resp_len),
            ],
        ),
        (
            "readable straddling the end",
            vec![
                RawDesc::readable(mem_end - 8, n),
                RawDesc::writable(r, resp_len),
            ],
        ),
        (
            "huge readable length",
            vec![
                RawDesc::readable(q, u32::MAX),
                RawDesc::writable(r, resp_len),
            ],
        ),
        (
            "huge writable length",
            vec![RawDesc::readable(q, n), RawDesc::writable(r, u32::MAX)],
        ),
        (
            "address overflow",
            vec![
                RawDesc::readable(u64::MAX - 4, n),
                RawDesc::writable(r, resp_len),
            ],
        ),
        (
            "writable too short for the response",
            vec![RawDesc::readable(q, n), RawDesc::writable(r, 8)],
        ),
        (
            "readable after writable",
            vec![RawDesc::writable(r, resp_len), RawDesc::readable(q, n)],
        ),
        (
            "next index out of range",
            vec![RawDesc {
                link: Link::Raw(4000),
                ..RawDesc::readable(q, n)
            }],
        ),
        (
            "indirect table outside memory",
            vec![RawDesc {
                addr: mem_end + 4096,
                len: 32,
                flags: VRING_DESC_F_INDIRECT,
                link: Link::Auto,
            }],
        ),
        (
            "indirect table of odd length",
            vec![RawDesc {
                addr: q,
                len: 17,
                flags: VRING_DESC_F_INDIRECT,
                link: Link::Auto,
            }],
        ),
        (
            "zero-length descriptors",
            vec![RawDesc::readable(q, 0), RawDesc::writable(r, 0)],
        ),
    ];
    assert!(client.conn.has_feature(VIRTIO_RING_F_INDIRECT_DESC));
    for (what, descs) in cases {
        let head = client.post_raw(CTRL_QUEUE, &descs).unwrap();
        let used = client
            .wait_any(CTRL_QUEUE, T)
            .unwrap_or_else(|e| panic!("{what}: chain never returned: {e}"));
        assert_eq!(used.id, u32::from(head), "{what}: used id");
        let writable: u64 = descs
            .iter()
            .filter(|d| d.flags & VRING_DESC_F_WRITE != 0)
            .map(|d| u64::from(d.len))
            .sum();
        assert!(
            u64::from(used.len) <= writable,
            "{what}: used len {} > writable {writable}",
            used.len
        );
        eprintln!("{what}: used len {}", used.len);
        assert_serving(&mut client, what);
    }

    // A well-formed indirect request works.
    let done = client
        .submit_indirect(
            CTRL_QUEUE,
            &[
                Segment::Readable { addr: q, len: n },
                Segment::Writable {
                    addr: r,
                    len: resp_len,
                },
            ],
        )
        .unwrap();
    assert_eq!(done.used.len, resp_len);
    client.peer().skip_all();

    // A descriptor loop, last: it may never be returned.
    let head = client
        .post_raw(
            CTRL_QUEUE,
            &[
                RawDesc::readable(q, n),
                RawDesc {
                    link: Link::To(0),
                    ..RawDesc::writable(r, resp_len)
                },
            ],
        )
        .unwrap();
    match client.wait_any(CTRL_QUEUE, Duration::from_secs(2)) {
        Ok(u) => {
            assert_eq!(u.id, u32::from(head));
            eprintln!("descriptor loop: returned with len {}", u.len);
        }
        Err(e) => eprintln!("descriptor loop: not returned ({e})"),
    }
    // The daemon must still accept a new connection.
    drop(client);
    let mut again = connect(&backend, &FrontendConfig::default());
    assert_serving(&mut again, "descriptor loop");
}

#[test]
fn vgpud_reconnect_on_same_socket() {
    let Some(mut backend) = Backend::vgpud_or_skip(&[]) else {
        return;
    };
    for round in 0..3u8 {
        let mut client = connect(&backend, &FrontendConfig::default());
        assert_serving(&mut client, "connect");
        // Each connection starts with no resources: id 1 is free again.
        let img = pattern(16, 16, round);
        client
            .create_backed_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16, 16, &img, 1)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_ok(
            client.transfer_2d(1, rect(0, 0, 16, 16), 0).unwrap(),
            "transfer",
        );
        assert_ok(
            client.set_scanout(0, 1, rect(0, 0, 16, 16)).unwrap(),
            "scanout",
        );
        assert_ok(client.flush(1, rect(0, 0, 16, 16)).unwrap(), "flush");
        let m = client
            .peer()
            .wait_for(vgpu_tests::gpu_socket::GPU_UPDATE, T)
            .unwrap();
        match &*m {
            GpuMsg::Update { data, .. } => assert!(data == &img, "round {round}: pixels"),
            other => panic!("{other:?}"),
        }
        // Leave mid-session with a resource on the scanout: the daemon must clean up.
        client.conn.shutdown().unwrap();
        drop(client);
        assert!(
            backend.is_running(),
            "vgpud exited after disconnect {round}"
        );
    }
}

#[test]
fn vgpud_restart_gets_a_fresh_gpu_socket() {
    let Some(backend) = Backend::vgpud_or_skip(&[]) else {
        return;
    };
    let cfg = FrontendConfig::default();
    let mut client = connect(&backend, &cfg);
    let img = pattern(16, 16, 3);
    client
        .create_backed_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16, 16, &img, 1)
        .unwrap();
    for (round, reset) in [(0, false), (1, true)] {
        // A guest reboot as QEMU plays it: rings stopped, then SET_SOCKET with a new socketpair.
        client.conn.restart(&cfg, reset).unwrap();
        assert_serving(&mut client, "restart");
        assert!(
            client.peer().negotiated_features().is_some(),
            "round {round}: no negotiation on the new GPU socket"
        );
        // Resources may or may not survive a ring restart; the guest re-creates its own.
        let resp = client
            .create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16, 16)
            .unwrap();
        eprintln!("round {round} (reset_device {reset}): re-create id 1 -> {resp:?}");
        assert!(
            matches!(
                resp,
                DecodedResponse::OkNoData | DecodedResponse::Err(ErrorCode::InvalidResourceId)
            ),
            "{resp:?}"
        );
        let gpa = client.guest_buffer(&img).unwrap();
        // Drop a surviving backing, if any.
        let _ = client.detach_backing(1);
        assert_ok(
            client.attach_backing(1, &[(gpa, 16 * 16 * 4)]).unwrap(),
            "attach",
        );
        assert_ok(
            client.transfer_2d(1, rect(0, 0, 16, 16), 0).unwrap(),
            "transfer",
        );
        assert_ok(
            client.set_scanout(0, 1, rect(0, 0, 16, 16)).unwrap(),
            "scanout",
        );
        let m = client
            .peer()
            .wait_for(vgpu_tests::gpu_socket::GPU_SCANOUT, T)
            .unwrap();
        assert!(matches!(*m, GpuMsg::Scanout { width: 16, .. }), "{m:?}");
        assert_ok(client.flush(1, rect(0, 0, 16, 16)).unwrap(), "flush");
        let m = client
            .peer()
            .wait_for(vgpu_tests::gpu_socket::GPU_UPDATE, T)
            .unwrap();
        assert!(
            matches!(&*m, GpuMsg::Update { data, .. } if data == &img),
            "round {round}"
        );
    }
}

#[test]
fn vgpud_headless_without_gpu_socket() {
    let Some(backend) = Backend::vgpud_or_skip(&[]) else {
        return;
    };
    // A frontend like cloud-hypervisor's generic vhost-user device: no SET_SOCKET at all.
    let cfg = FrontendConfig {
        gpu_socket: false,
        ..Default::default()
    };
    let mut client = GpuClient::connect(backend.socket(), &cfg).unwrap();
    match client.display_info().unwrap() {
        DecodedResponse::OkDisplayInfo(m) => eprintln!("headless display 0: {:?}", m[0]),
        other => panic!("GET_DISPLAY_INFO without GPU socket: {other:?}"),
    }
    let img = pattern(16, 16, 7);
    client
        .create_backed_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16, 16, &img, 1)
        .unwrap();
    assert_ok(
        client.transfer_2d(1, rect(0, 0, 16, 16), 0).unwrap(),
        "transfer",
    );
    assert_ok(
        client.set_scanout(0, 1, rect(0, 0, 16, 16)).unwrap(),
        "scanout",
    );
    assert_ok(client.flush(1, rect(0, 0, 16, 16)).unwrap(), "flush");
    client.update_cursor(0, 1, 1, 0, (0, 0)).unwrap();
    assert_ok(client.unref(1).unwrap(), "unref");
}

/// A `vgpu-64m` (max 1024x768) behind a display that reports 1280x800, and headless: the modes
/// offered, the EDID and SET_SCANOUT all stay within the type's maximum.
#[test]
fn vgpud_type_maximum_caps_modes_with_and_without_display() {
    let Some(backend) = Backend::vgpud_or_skip(&["--type", "vgpu-64m"]) else {
        return;
    };
    for gpu_socket in [true, false] {
        let cfg = FrontendConfig {
            gpu_socket,
            ..Default::default()
        };
        let mut client = connect(&backend, &cfg);
        match client.display_info().unwrap() {
            DecodedResponse::OkDisplayInfo(m) => {
                assert_eq!(
                    (m[0].r.width, m[0].r.height),
                    (1024, 768),
                    "display {gpu_socket}"
                )
            }
            other => panic!("GET_DISPLAY_INFO: {other:?}"),
        }
        match client.get_edid(0).unwrap() {
            DecodedResponse::OkEdid(e) => {
                assert_eq!(
                    edid_preferred_mode(&e),
                    Some((1024, 768)),
                    "EDID {gpu_socket}"
                )
            }
            other => panic!("GET_EDID: {other:?}"),
        }
        let img = pattern(1280, 800, 3);
        client
            .create_backed_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 1280, 800, &img, 4)
            .unwrap();
        assert_err(
            client.set_scanout(0, 1, rect(0, 0, 1280, 800)).unwrap(),
            ErrorCode::InvalidParameter,
            "SET_SCANOUT above the type's maximum",
        );
        assert_ok(
            client.set_scanout(0, 1, rect(0, 0, 1024, 768)).unwrap(),
            "SET_SCANOUT at the maximum",
        );
    }
}

/// `--resolution` is the preferred mode whether or not the frontend has a display.
#[test]
fn vgpud_resolution_option_is_the_preferred_mode() {
    let Some(backend) = Backend::vgpud_or_skip(&["--resolution", "1024x600"]) else {
        return;
    };
    for gpu_socket in [true, false] {
        let cfg = FrontendConfig {
            gpu_socket,
            ..Default::default()
        };
        let mut client = connect(&backend, &cfg);
        match client.display_info().unwrap() {
            DecodedResponse::OkDisplayInfo(m) => {
                assert_eq!(
                    (m[0].r.width, m[0].r.height),
                    (1024, 600),
                    "display {gpu_socket}"
                )
            }
            other => panic!("GET_DISPLAY_INFO: {other:?}"),
        }
        match client.get_edid(0).unwrap() {
            DecodedResponse::OkEdid(e) => {
                assert_eq!(
                    edid_preferred_mode(&e),
                    Some((1024, 600)),
                    "EDID {gpu_socket}"
                )
            }
            other => panic!("GET_EDID: {other:?}"),
        }
    }
}

/// Open descriptors of a process (`/proc/PID/fd`).
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits (generously) until `pid` holds `want` descriptors; returns the last count seen.
fn wait_fd_count(pid: u32, want: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = fd_count(pid);
        if n == want || std::time::Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The descriptor count of `pid` once it has not changed for 500 ms (at most 30 s).
fn stable_fd_count(pid: u32) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = fd_count(pid);
    let mut since = std::time::Instant::now();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let n = fd_count(pid);
        if n != last {
            last = n;
            since = std::time::Instant::now();
        } else if since.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }
    last
}

/// Every connection's descriptors are closed when it ends: after many well-behaved connections
/// (and as many abrupt ones) the daemon holds exactly what it held before the first.
#[test]
fn vgpud_leaks_no_descriptor_per_connection() {
    let Some(backend) = Backend::vgpud_or_skip(&[]) else {
        return;
    };
    let pid = backend.pid();
    // The count once the daemon is up: it serves a first connection (start-up, including the
    // sandbox's Landlock set-up, opens and closes descriptors of its own), and the count has
    // then stayed the same for half a second.
    let mut first = connect(&backend, &FrontendConfig::default());
    assert_serving(&mut first, "first connection");
    drop(first);
    let base = stable_fd_count(pid);
    assert!(base > 0, "cannot read /proc/{pid}/fd");
    for round in 0..20u8 {
        let mut client = connect(&backend, &FrontendConfig::default());
        assert_serving(&mut client, "connect");
        if round % 2 == 0 {
            let img = pattern(8, 8, round);
            client
                .create_backed_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 8, 8, &img, 1)
                .unwrap();
            client.conn.shutdown().unwrap();
        }
        drop(client);
        // The next connection is accepted only once this one is torn down.
    }
    let last = wait_fd_count(pid, base);
    assert_eq!(
        last, base,
        "vgpud held {base} descriptors before 20 connections and {last} after them"
    );
}
