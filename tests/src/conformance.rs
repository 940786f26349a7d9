//! The 2D conformance sequence, run against any backend through a [`GpuClient`].
//!
//! It plays a guest doing what Linux's driver and fbcon do (display info, EDID, a scanout resource
//! with guest backing, full and partial transfers, flushes, a cursor) plus the error responses QEMU's
//! backend gives, and checks the GPU socket messages byte for byte. It panics on the first
//! difference (it is test code); the returned report lists what was observed.

use std::sync::Arc;
use std::time::Duration;

use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{DecodedResponse, ErrorCode, GpuCommand};

use crate::client::{crop, header_bytes, pattern, rect, GpuClient};
use crate::gpu_socket::{test_edid, GpuMsg, GPU_PROTOCOL_F_EDID};

const T: Duration = Duration::from_secs(5);

/// How a backend answers GET_DISPLAY_INFO and GET_EDID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisplayModel {
    /// Both are forwarded to the GPU socket and the peer's answers come back unchanged (QEMU's
    /// `vhost-user-gpu`).
    Forwarded,
    /// The backend answers both itself (`vgpud`): every head offers this preferred mode (the
    /// vGPU type's maximum caps it) and the EDID is its own with that preferred timing. Only
    /// GET_DISPLAY_INFO reaches the peer, which says which heads exist.
    Own {
        /// Preferred width.
        width: u32,
        /// Preferred height.
        height: u32,
    },
}

/// `vgpud`'s answers for its default type (`vgpu-1q`, preferred 1280x800).
pub const VGPUD_DEFAULT: DisplayModel = DisplayModel::Own {
    width: 1280,
    height: 800,
};

/// The active size of an EDID's first detailed timing (its preferred mode).
pub fn edid_preferred_mode(edid: &[u8]) -> Option<(u32, u32)> {
    let d = edid.get(54..72)?;
    let w = u32::from(d[2]) | (u32::from(d[4] >> 4) << 8);
    let h = u32::from(d[5]) | (u32::from(d[7] >> 4) << 8);
    Some((w, h))
}

/// What the sequence saw, for printing.
#[derive(Debug, Default)]
pub struct ConformanceReport {
    /// Observations in order.
    pub notes: Vec<String>,
}

impl ConformanceReport {
    fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("conformance: {s}");
        self.notes.push(s);
    }
}

fn summarize(m: &GpuMsg) -> String {
    match m {
        GpuMsg::Update {
            scanout,
            x,
            y,
            width,
            height,
            data,
        } => format!(
            "UPDATE s{scanout} {x},{y} {width}x{height} ({} bytes)",
            data.len()
        ),
        GpuMsg::CursorUpdate {
            scanout,
            x,
            y,
            hot_x,
            hot_y,
            data,
        } => format!(
            "CURSOR_UPDATE s{scanout} {x},{y} hot {hot_x},{hot_y} ({} bytes)",
            data.len()
        ),
        other => format!("{other:?}"),
    }
}

/// Asserts the response is the error `code`.
#[track_caller]
pub fn assert_err(resp: DecodedResponse, code: ErrorCode, what: &str) {
    assert_eq!(resp, DecodedResponse::Err(code), "{what}");
}

/// Asserts the response is OK_NODATA.
#[track_caller]
pub fn assert_ok(resp: DecodedResponse, what: &str) {
    assert_eq!(resp, DecodedResponse::OkNoData, "{what}");
}

/// Asserts that no GPU socket message arrived since the last check.
#[track_caller]
fn assert_quiet(client: &mut GpuClient, what: &str) {
    let new = client.peer().take_new();
    assert!(
        new.is_empty(),
        "{what}: unexpected GPU socket messages {:?}",
        new.iter().map(|m| summarize(m)).collect::<Vec<_>>()
    );
}

#[track_caller]
fn expect_update(msg: &Arc<GpuMsg>, r: Rect, pixels: &[u8], what: &str) {
    match &**msg {
        GpuMsg::Update {
            scanout,
            x,
            y,
            width,
            height,
            data,
        } => {
            assert_eq!(
                (*scanout, *x, *y, *width, *height),
                (0, r.x, r.y, r.width, r.height),
                "{what}: UPDATE rectangle"
            );
            assert_eq!(data.len(), pixels.len(), "{what}: UPDATE payload size");
            if let Some(i) = data.iter().zip(pixels).position(|(a, b)| a != b) {
                panic!(
                    "{what}: UPDATE pixels differ first at byte {i} (pixel {}): got {:?} want {:?}",
                    i / 4,
                    &data[i - i % 4..i - i % 4 + 4],
                    &pixels[i - i % 4..i - i % 4 + 4]
                );
            }
        }
        other => panic!("{what}: expected UPDATE, got {}", summarize(other)),
    }
}

/// Runs the whole 2D sequence. The client must be freshly connected with a GPU socket peer (with
/// its default configuration: one 1280x800 output).
pub fn run_2d_conformance(client: &mut GpuClient, model: DisplayModel) -> ConformanceReport {
    let mut rep = ConformanceReport::default();
    let cfg = client.config();
    rep.note(format!(
        "config: num_scanouts {} num_capsets {} features acked {:#x} protocol {:#x}",
        cfg.num_scanouts, cfg.num_capsets, client.conn.acked_features, client.conn.acked_protocol
    ));

    // GET_DISPLAY_INFO asks the frontend.
    let (want_w, want_h) = match model {
        DisplayModel::Forwarded => (1280, 800),
        DisplayModel::Own { width, height } => (width, height),
    };
    let resp = client.display_info().expect("GET_DISPLAY_INFO");
    match resp {
        DecodedResponse::OkDisplayInfo(modes) => {
            assert_eq!(modes[0].r.width, want_w, "display 0 width");
            assert_eq!(modes[0].r.height, want_h, "display 0 height");
            assert_eq!(modes[0].enabled, 1, "display 0 enabled");
            assert!(modes[1..].iter().all(|m| m.enabled == 0), "other displays");
        }
        other => panic!("GET_DISPLAY_INFO: {other:?}"),
    }
    let m = client.peer().next_display(T).expect("GPU GET_DISPLAY_INFO");
    assert!(matches!(*m, GpuMsg::GetDisplayInfo), "{m:?}");

    // By now the backend has negotiated GPU protocol features (QEMU's right after SET_SOCKET,
    // others lazily before the first message), GET before SET, before anything else.
    let msgs = client.peer().messages();
    assert!(
        matches!(*msgs[0], GpuMsg::GetProtocolFeatures),
        "first GPU socket message: {:?}",
        msgs[0]
    );
    let GpuMsg::SetProtocolFeatures(pf) = *msgs[1] else {
        panic!("second GPU socket message: {:?}", msgs[1]);
    };
    assert_eq!(
        pf & !client.conn.peer_config_features(),
        0,
        "set features not offered"
    );
    rep.note(format!("GPU protocol features set to {pf:#x}"));
    let edid = client.has_gpu_feature(VIRTIO_GPU_F_EDID);
    if edid {
        assert!(
            pf & GPU_PROTOCOL_F_EDID != 0,
            "EDID negotiated without PROTOCOL_F_EDID"
        );
    }

    if edid {
        let resp = client.get_edid(0).expect("GET_EDID");
        match model {
            DisplayModel::Forwarded => {
                assert_eq!(resp, DecodedResponse::OkEdid(test_edid()), "GET_EDID bytes");
                let m = client.peer().next_display(T).expect("GPU GET_EDID");
                assert!(matches!(*m, GpuMsg::GetEdid { scanout: 0 }), "{m:?}");
                rep.note("GET_EDID forwarded to the GPU socket and answered byte-exact");
            }
            DisplayModel::Own { width, height } => {
                let DecodedResponse::OkEdid(e) = resp else {
                    panic!("GET_EDID: {resp:?}");
                };
                assert_eq!(e.len(), 128, "EDID base block");
                assert_eq!(e[..8], test_edid()[..8], "EDID header");
                assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "checksum");
                assert_eq!(edid_preferred_mode(&e), Some((width, height)), "preferred");
                rep.note(format!(
                    "GET_EDID answered by the backend, preferred {width}x{height}"
                ));
            }
        }
    }
    assert_quiet(client, "after display info");

    // A scanout resource with a 3-entry guest backing.
    let (w, h) = (64u32, 48u32);
    let img = pattern(w, h, 1);
    let gpa = client
        .create_backed_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, w, h, &img, 3)
        .expect("create + attach");
    assert_ok(
        client.transfer_2d(1, rect(0, 0, w, h), 0).unwrap(),
        "full TRANSFER_TO_HOST_2D",
    );
    assert_quiet(client, "create/attach/transfer");

    assert_ok(
        client.set_scanout(0, 1, rect(0, 0, w, h)).unwrap(),
        "SET_SCANOUT",
    );
    let m = client.peer().next_display(T).expect("SCANOUT");
    match *m {
        GpuMsg::Scanout {
            scanout: 0,
            width,
            height,
        } => assert_eq!((width, height), (w, h), "SCANOUT size"),
        ref other => panic!("after SET_SCANOUT: {}", summarize(other)),
    }
    rep.note(format!("SET_SCANOUT -> SCANOUT {{0, {w}, {h}}}"));

    assert_ok(client.flush(1, rect(0, 0, w, h)).unwrap(), "full flush");
    let m = client.peer().next_display(T).expect("UPDATE");
    expect_update(&m, rect(0, 0, w, h), &img, "full flush");
    assert_quiet(client, "after full flush");
    rep.note("full flush -> one UPDATE, pixels byte-exact to the guest's B8G8R8X8 bytes");

    // Sub-rectangle transfer from a rewritten backing, with the matching offset.
    let img2 = pattern(w, h, 99);
    client.conn.mem.write(gpa, &img2).unwrap();
    let sub = rect(8, 4, 16, 10);
    let offset = u64::from((sub.y * w + sub.x) * 4);
    assert_ok(client.transfer_2d(1, sub, offset).unwrap(), "sub transfer");
    assert_ok(client.flush(1, sub).unwrap(), "sub flush");
    let m = client.peer().next_display(T).expect("sub UPDATE");
    expect_update(&m, sub, &crop(&img2, w, sub), "sub flush");
    // The rest of the resource must still hold the first image.
    let mut model = img.clone();
    for y in sub.y..sub.y + sub.height {
        let s = ((y * w + sub.x) * 4) as usize;
        let e = s + (sub.width * 4) as usize;
        model[s..e].copy_from_slice(&img2[s..e]);
    }
    assert_ok(
        client.flush(1, rect(0, 0, w, h)).unwrap(),
        "flush after sub",
    );
    let m = client
        .peer()
        .next_display(T)
        .expect("full UPDATE after sub");
    expect_update(&m, rect(0, 0, w, h), &model, "flush after sub transfer");
    rep.note("sub-rectangle transfer with offset updates only that rectangle");

    // A small rectangle touching the bottom-right corner.
    let edge = rect(w - 5, h - 3, 5, 3);
    assert_ok(client.flush(1, edge).unwrap(), "edge flush");
    let m = client.peer().next_display(T).expect("edge UPDATE");
    expect_update(&m, edge, &crop(&model, w, edge), "edge flush");
    assert_quiet(client, "after flushes");

    // Cursor: a 64x64 resource, UPDATE_CURSOR then MOVE_CURSOR.
    let cur = pattern(64, 64, 42);
    client
        .create_backed_2d(2, VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM, 64, 64, &cur, 1)
        .expect("cursor resource");
    assert_ok(
        client.transfer_2d(2, rect(0, 0, 64, 64), 0).unwrap(),
        "cursor transfer",
    );
    let c = client
        .update_cursor(0, 10, 20, 2, (3, 4))
        .expect("UPDATE_CURSOR");
    rep.note(format!("UPDATE_CURSOR used len {}", c.used.len));
    let m = client.peer().next_display(T).expect("CURSOR_UPDATE");
    match &*m {
        GpuMsg::CursorUpdate {
            scanout,
            x,
            y,
            hot_x,
            hot_y,
            data,
        } => {
            assert_eq!(
                (*scanout, *x, *y, *hot_x, *hot_y),
                (0, 10, 20, 3, 4),
                "CURSOR_UPDATE"
            );
            assert_eq!(data.len(), 64 * 64 * 4, "cursor image size");
            assert!(data == &cur, "cursor image bytes differ");
        }
        other => panic!("after UPDATE_CURSOR: {}", summarize(other)),
    }
    let c = client.move_cursor(0, 30, 40, 2).expect("MOVE_CURSOR");
    rep.note(format!("MOVE_CURSOR used len {}", c.used.len));
    let m = client.peer().next_display(T).expect("CURSOR_POS");
    assert!(
        matches!(
            *m,
            GpuMsg::CursorPos {
                scanout: 0,
                x: 30,
                y: 40
            }
        ),
        "after MOVE_CURSOR: {m:?}"
    );
    client.move_cursor(0, 31, 41, 0).expect("MOVE_CURSOR hide");
    let m = client.peer().next_display(T).expect("CURSOR_POS_HIDE");
    // QEMU's backend passes the position along with the hide; the position of a hidden cursor
    // does not matter, so only the scanout is checked.
    assert!(
        matches!(*m, GpuMsg::CursorPosHide { scanout: 0, .. }),
        "after MOVE_CURSOR with resource 0: {m:?}"
    );
    rep.note(format!("MOVE_CURSOR with resource 0 -> {m:?}"));
    rep.note("cursor: CURSOR_UPDATE with exact image, CURSOR_POS, CURSOR_POS_HIDE for resource 0");

    // Fences are echoed.
    let hdr = CtrlHeader {
        flags: VIRTIO_GPU_FLAG_FENCE,
        fence_id: 0x1234_5678_9abc,
        ..Default::default()
    };
    let (rh, resp) = client
        .send_ctrl(
            &GpuCommand::ResourceFlush(ResourceFlush {
                r: rect(0, 0, 1, 1),
                resource_id: 1,
                padding: 0,
            }),
            hdr,
        )
        .unwrap();
    assert_eq!(resp, DecodedResponse::OkNoData, "fenced flush");
    assert!(rh.flags & VIRTIO_GPU_FLAG_FENCE != 0, "fence flag echoed");
    assert_eq!(rh.fence_id, hdr.fence_id, "fence id echoed");
    let _ = client
        .peer()
        .next_display(T)
        .expect("UPDATE for fenced flush");

    // Error responses.
    use ErrorCode::*;
    assert_err(
        client.transfer_2d(99, rect(0, 0, 1, 1), 0).unwrap(),
        InvalidResourceId,
        "transfer unknown id",
    );
    assert_err(
        client.flush(99, rect(0, 0, 1, 1)).unwrap(),
        InvalidResourceId,
        "flush unknown id",
    );
    assert_err(
        client.unref(99).unwrap(),
        InvalidResourceId,
        "unref unknown id",
    );
    assert_err(
        client.detach_backing(99).unwrap(),
        InvalidResourceId,
        "detach unknown id",
    );
    assert_err(
        client.attach_backing(99, &[(gpa, 4096)]).unwrap(),
        InvalidResourceId,
        "attach unknown id",
    );
    assert_err(
        client.set_scanout(0, 99, rect(0, 0, 1, 1)).unwrap(),
        InvalidResourceId,
        "scanout unknown id",
    );
    assert_err(
        client
            .create_2d(0, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4, 4)
            .unwrap(),
        InvalidResourceId,
        "create id 0",
    );
    assert_err(
        client
            .create_2d(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4, 4)
            .unwrap(),
        InvalidResourceId,
        "create existing id",
    );
    assert_err(
        client.create_2d(3, 999, 4, 4).unwrap(),
        InvalidParameter,
        "create bad format",
    );
    assert_err(
        client.set_scanout(16, 1, rect(0, 0, 1, 1)).unwrap(),
        InvalidScanoutId,
        "scanout 16",
    );
    assert_err(
        client.transfer_2d(1, rect(1, 0, w, h), 0).unwrap(),
        InvalidParameter,
        "transfer outside",
    );
    assert_err(
        client.flush(1, rect(0, h, 1, 1)).unwrap(),
        InvalidParameter,
        "flush outside",
    );
    assert_err(
        client.set_scanout(0, 1, rect(0, 0, w + 1, h)).unwrap(),
        InvalidParameter,
        "scanout outside",
    );
    assert_err(
        client.attach_backing(1, &[(gpa, 4096)]).unwrap(),
        Unspec,
        "attach twice",
    );
    let resp = client.send_raw(&header_bytes(0x1ff)).unwrap();
    assert_eq!(
        vgpu_protocol::decode_response(&resp).map(|r| r.1),
        Some(DecodedResponse::Err(Unspec)),
        "unknown command type"
    );
    // A header only half there. QEMU 10.0 warns and then processes the 12 bytes it got as a
    // command (a short GET_DISPLAY_INFO is answered with display info), so use an unknown type:
    // every backend must answer it with some error.
    let short = &header_bytes(0x1ff)[..12];
    let resp = client.send_raw(short).unwrap();
    let code = vgpu_protocol::decode_response(&resp).map(|r| r.1);
    rep.note(format!(
        "12-byte request of unknown type answered with {code:?}"
    ));
    assert!(
        matches!(code, Some(DecodedResponse::Err(_))),
        "short header: {code:?}"
    );
    assert_quiet(client, "after error cases");
    rep.note("error responses match QEMU's choices");

    // Disable the scanout, detach, unref.
    assert_ok(
        client.set_scanout(0, 0, rect(0, 0, 0, 0)).unwrap(),
        "disable scanout",
    );
    let m = client.peer().next_display(T).expect("SCANOUT disable");
    assert!(
        matches!(
            *m,
            GpuMsg::Scanout {
                scanout: 0,
                width: 0,
                ..
            }
        ),
        "after disabling scanout: {m:?}"
    );
    assert_ok(client.detach_backing(1).unwrap(), "detach");
    assert_err(
        client.detach_backing(1).unwrap(),
        InvalidResourceId,
        "detach without backing",
    );
    assert_err(
        client.transfer_2d(1, rect(0, 0, 1, 1), 0).unwrap(),
        InvalidResourceId,
        "transfer without backing",
    );
    assert_ok(client.unref(1).unwrap(), "unref 1");
    assert_ok(client.unref(2).unwrap(), "unref 2");
    assert_err(client.unref(1).unwrap(), InvalidResourceId, "unref twice");
    assert_quiet(client, "after unref");
    rep.note("disable scanout -> SCANOUT {0, 0, 0}; detach/unref OK");
    rep
}
