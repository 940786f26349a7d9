//! virtio-gpu request/response codec: round trips of every type and every malformed case.

use std::mem::size_of;

use vgpu_protocol::command::{
    mem_entries_bytes, mem_entries_from_bytes, MAX_MEM_ENTRIES, MAX_SUBMIT_SIZE,
};
use vgpu_protocol::response::response_header;
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{
    decode_request, decode_response, DecodeError, DecodedResponse, ErrorCode, GpuCommand, Response,
};

fn hdr() -> CtrlHeader {
    CtrlHeader {
        type_: 0,
        flags: VIRTIO_GPU_FLAG_FENCE,
        fence_id: 0x1122_3344_5566_7788,
        ctx_id: 3,
        ring_idx: 0,
        padding: [0; 3],
    }
}

fn rect() -> Rect {
    Rect {
        x: 1,
        y: 2,
        width: 640,
        height: 480,
    }
}

fn transfer3d() -> Transfer3d {
    Transfer3d {
        box_: Box3d {
            x: 1,
            y: 2,
            z: 3,
            w: 4,
            h: 5,
            d: 6,
        },
        offset: 4096,
        resource_id: 9,
        level: 1,
        stride: 256,
        layer_stride: 65536,
    }
}

fn cursor() -> UpdateCursor {
    UpdateCursor {
        pos: CursorPos {
            scanout_id: 0,
            x: 10,
            y: 20,
            padding: 0,
        },
        resource_id: 5,
        hot_x: 1,
        hot_y: 2,
        padding: 0,
    }
}

/// One command of every type, with non-trivial fields. Variable parts borrow from `entries` and
/// `stream`.
fn every_command<'a>(entries: &'a [u8], stream: &'a [u8]) -> Vec<GpuCommand<'a>> {
    let e = mem_entries_from_bytes(entries).unwrap();
    let mut ctx = CtxCreate {
        nlen: 5,
        context_init: 42,
        ..Default::default()
    };
    ctx.debug_name[..5].copy_from_slice(b"hello");
    vec![
        GpuCommand::GetDisplayInfo,
        GpuCommand::ResourceCreate2d(ResourceCreate2d {
            resource_id: 1,
            format: VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
            width: 1024,
            height: 768,
        }),
        GpuCommand::ResourceUnref(ResourceUnref {
            resource_id: 1,
            padding: 0,
        }),
        GpuCommand::SetScanout(SetScanout {
            r: rect(),
            scanout_id: 0,
            resource_id: 1,
        }),
        GpuCommand::ResourceFlush(ResourceFlush {
            r: rect(),
            resource_id: 1,
            padding: 0,
        }),
        GpuCommand::TransferToHost2d(TransferToHost2d {
            r: rect(),
            offset: 128,
            resource_id: 1,
            padding: 0,
        }),
        GpuCommand::ResourceAttachBacking(
            ResourceAttachBacking {
                resource_id: 1,
                nr_entries: e.len() as u32,
            },
            e,
        ),
        GpuCommand::ResourceDetachBacking(ResourceDetachBacking {
            resource_id: 1,
            padding: 0,
        }),
        GpuCommand::GetCapsetInfo(GetCapsetInfo {
            capset_index: 0,
            padding: 0,
        }),
        GpuCommand::GetCapset(GetCapset {
            capset_id: 42,
            capset_version: 1,
        }),
        GpuCommand::GetEdid(GetEdid {
            scanout: 1,
            padding: 0,
        }),
        GpuCommand::ResourceAssignUuid(ResourceAssignUuid {
            resource_id: 7,
            padding: 0,
        }),
        GpuCommand::ResourceCreateBlob(
            ResourceCreateBlob {
                resource_id: 8,
                blob_mem: VIRTIO_GPU_BLOB_MEM_GUEST,
                blob_flags: 1,
                nr_entries: e.len() as u32,
                blob_id: 0,
                size: 8192,
            },
            e,
        ),
        GpuCommand::SetScanoutBlob(SetScanoutBlob {
            r: rect(),
            scanout_id: 0,
            resource_id: 8,
            width: 640,
            height: 480,
            format: 1,
            padding: 0,
            strides: [2560, 0, 0, 0],
            offsets: [0, 1, 2, 3],
        }),
        GpuCommand::CtxCreate(ctx),
        GpuCommand::CtxDestroy,
        GpuCommand::CtxAttachResource(CtxResource {
            resource_id: 9,
            padding: 0,
        }),
        GpuCommand::CtxDetachResource(CtxResource {
            resource_id: 9,
            padding: 0,
        }),
        GpuCommand::ResourceCreate3d(ResourceCreate3d {
            resource_id: 9,
            target: 0,
            format: 64,
            bind: 1,
            width: 4096,
            height: 1,
            depth: 1,
            array_size: 1,
            last_level: 0,
            nr_samples: 0,
            flags: 0,
            padding: 0,
        }),
        GpuCommand::TransferToHost3d(transfer3d()),
        GpuCommand::TransferFromHost3d(transfer3d()),
        GpuCommand::Submit3d(
            Submit3d {
                size: stream.len() as u32,
                padding: 0,
            },
            stream,
        ),
        GpuCommand::ResourceMapBlob(ResourceMapBlob {
            resource_id: 8,
            padding: 0,
            offset: 4096,
        }),
        GpuCommand::ResourceUnmapBlob(ResourceUnmapBlob {
            resource_id: 8,
            padding: 0,
        }),
        GpuCommand::UpdateCursor(cursor()),
        GpuCommand::MoveCursor(cursor()),
    ]
}

fn sample_entries() -> Vec<u8> {
    let mut out = Vec::new();
    mem_entries_bytes(
        &[
            MemEntry {
                addr: 0x1000,
                length: 4096,
                padding: 0,
            },
            MemEntry {
                addr: 0x8000_0000,
                length: 64,
                padding: 0,
            },
        ],
        &mut out,
    );
    out
}

fn encode(cmd: &GpuCommand<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    cmd.encode(hdr(), &mut out);
    out
}

/// Size of the fixed part (header + body, without entries or stream) of a command type.
fn fixed_len(cmd: &GpuCommand<'_>) -> usize {
    let body = match cmd {
        GpuCommand::GetDisplayInfo | GpuCommand::CtxDestroy => 0,
        GpuCommand::ResourceCreate2d(_) => size_of::<ResourceCreate2d>(),
        GpuCommand::ResourceUnref(_) => size_of::<ResourceUnref>(),
        GpuCommand::SetScanout(_) => size_of::<SetScanout>(),
        GpuCommand::ResourceFlush(_) => size_of::<ResourceFlush>(),
        GpuCommand::TransferToHost2d(_) => size_of::<TransferToHost2d>(),
        GpuCommand::ResourceAttachBacking(..) => size_of::<ResourceAttachBacking>(),
        GpuCommand::ResourceDetachBacking(_) => size_of::<ResourceDetachBacking>(),
        GpuCommand::GetCapsetInfo(_) => size_of::<GetCapsetInfo>(),
        GpuCommand::GetCapset(_) => size_of::<GetCapset>(),
        GpuCommand::GetEdid(_) => size_of::<GetEdid>(),
        GpuCommand::ResourceAssignUuid(_) => size_of::<ResourceAssignUuid>(),
        GpuCommand::ResourceCreateBlob(..) => size_of::<ResourceCreateBlob>(),
        GpuCommand::SetScanoutBlob(_) => size_of::<SetScanoutBlob>(),
        GpuCommand::CtxCreate(_) => size_of::<CtxCreate>(),
        GpuCommand::CtxAttachResource(_) | GpuCommand::CtxDetachResource(_) => {
            size_of::<CtxResource>()
        }
        GpuCommand::ResourceCreate3d(_) => size_of::<ResourceCreate3d>(),
        GpuCommand::TransferToHost3d(_) | GpuCommand::TransferFromHost3d(_) => {
            size_of::<Transfer3d>()
        }
        GpuCommand::Submit3d(..) => size_of::<Submit3d>(),
        GpuCommand::ResourceMapBlob(_) => size_of::<ResourceMapBlob>(),
        GpuCommand::ResourceUnmapBlob(_) => size_of::<ResourceUnmapBlob>(),
        GpuCommand::UpdateCursor(_) | GpuCommand::MoveCursor(_) => size_of::<UpdateCursor>(),
    };
    size_of::<CtrlHeader>() + body
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn every_command_round_trips() {
    let entries = sample_entries();
    let stream = [1u8, 2, 3, 4, 5, 6, 7, 8];
    let cmds = every_command(&entries, &stream);
    assert_eq!(cmds.len(), 26, "one of each command type");
    for cmd in &cmds {
        let bytes = encode(cmd);
        let req = decode_request(&bytes).unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert_eq!(req.cmd, *cmd);
        assert_eq!(
            req.hdr,
            CtrlHeader {
                type_: cmd.type_(),
                ..hdr()
            }
        );
        assert_eq!(req.cmd.is_cursor(), cmd.type_() >= 0x300);
    }
}

#[test]
fn trailing_bytes_are_ignored() {
    let entries = sample_entries();
    let cmds = every_command(&entries, &[]);
    for cmd in &cmds {
        let mut bytes = encode(cmd);
        bytes.extend_from_slice(&[0xee; 40]);
        assert_eq!(decode_request(&bytes).unwrap().cmd, *cmd);
    }
}

#[test]
fn mem_entries_decode() {
    let entries = sample_entries();
    let cmd = every_command(&entries, &[])[6];
    let bytes = encode(&cmd);
    let GpuCommand::ResourceAttachBacking(b, e) = decode_request(&bytes).unwrap().cmd else {
        panic!("not attach backing");
    };
    assert_eq!(b.nr_entries, 2);
    assert_eq!(e.len(), 2);
    assert!(!e.is_empty());
    let v: Vec<MemEntry> = e.iter().collect();
    assert_eq!(v[0].addr, 0x1000);
    assert_eq!(v[1].length, 64);
    assert_eq!(e.as_bytes(), &entries[..]);
    assert!(mem_entries_from_bytes(&entries[..17]).is_none());
}

#[test]
fn short_header() {
    let bytes = encode(&GpuCommand::GetDisplayInfo);
    for len in 0..size_of::<CtrlHeader>() {
        assert_eq!(
            decode_request(&bytes[..len]),
            Err(DecodeError::Truncated {
                type_: 0,
                needed: 24,
                got: len
            })
        );
    }
}

#[test]
fn short_bodies() {
    let entries = sample_entries();
    let stream = [0u8; 8];
    for cmd in every_command(&entries, &stream) {
        let fixed = fixed_len(&cmd);
        let bytes = encode(&cmd);
        for len in size_of::<CtrlHeader>()..fixed {
            let err = decode_request(&bytes[..len]).unwrap_err();
            assert_eq!(
                err,
                DecodeError::Truncated {
                    type_: cmd.type_(),
                    needed: fixed,
                    got: len
                },
                "{cmd:?} at {len}"
            );
            assert_eq!(err.response_type(), VIRTIO_GPU_RESP_ERR_UNSPEC);
        }
    }
}

#[test]
fn unknown_type() {
    for t in [0u32, 0x10e, 0x20a, 0x302, 0x1100, u32::MAX] {
        let mut bytes = encode(&GpuCommand::GetDisplayInfo);
        put_u32(&mut bytes, 0, t);
        let err = decode_request(&bytes).unwrap_err();
        assert_eq!(err, DecodeError::UnknownCommand(t));
        assert_eq!(err.response_type(), VIRTIO_GPU_RESP_ERR_UNSPEC);
    }
}

#[test]
fn too_many_entries() {
    let entries = sample_entries();
    for idx in [6, 12] {
        let cmd = every_command(&entries, &[])[idx];
        // nr_entries sits at body offset 4 (attach) or 12 (blob).
        let at = size_of::<CtrlHeader>() + if idx == 6 { 4 } else { 12 };
        for n in [MAX_MEM_ENTRIES + 1, u32::MAX] {
            let mut bytes = encode(&cmd);
            put_u32(&mut bytes, at, n);
            assert_eq!(decode_request(&bytes), Err(DecodeError::TooManyEntries(n)));
        }
        // The limit itself only needs its entries.
        let mut bytes = encode(&cmd);
        put_u32(&mut bytes, at, MAX_MEM_ENTRIES);
        assert!(matches!(
            decode_request(&bytes),
            Err(DecodeError::Truncated { .. })
        ));
        bytes.resize(fixed_len(&cmd) + MAX_MEM_ENTRIES as usize * 16, 0);
        assert!(decode_request(&bytes).is_ok());
    }
}

#[test]
fn missing_entries() {
    let entries = sample_entries();
    for idx in [6, 12] {
        let cmd = every_command(&entries, &[])[idx];
        let bytes = encode(&cmd);
        let fixed = fixed_len(&cmd);
        for cut in [1, 15, 16, 17, 32] {
            let len = bytes.len() - cut;
            assert_eq!(
                decode_request(&bytes[..len]),
                Err(DecodeError::Truncated {
                    type_: cmd.type_(),
                    needed: fixed + 32,
                    got: len
                })
            );
        }
    }
}

#[test]
fn submit_size_beyond_the_bytes() {
    let stream = [9u8; 16];
    let cmd = every_command(&[], &stream)[21];
    let mut bytes = encode(&cmd);
    put_u32(&mut bytes, 24, 17);
    assert_eq!(
        decode_request(&bytes),
        Err(DecodeError::Truncated {
            type_: VIRTIO_GPU_CMD_SUBMIT_3D,
            needed: 32 + 17,
            got: 32 + 16
        })
    );
}

#[test]
fn submit_size_above_the_limit() {
    let cmd = every_command(&[], &[])[21];
    for size in [MAX_SUBMIT_SIZE + 1, u32::MAX] {
        let mut bytes = encode(&cmd);
        put_u32(&mut bytes, 24, size);
        let err = decode_request(&bytes).unwrap_err();
        assert_eq!(
            err,
            DecodeError::InvalidField {
                type_: VIRTIO_GPU_CMD_SUBMIT_3D,
                field: "size",
                value: u64::from(size)
            }
        );
        assert_eq!(err.response_type(), VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
    }
    // Exactly the limit is fine.
    let stream = vec![0u8; MAX_SUBMIT_SIZE as usize];
    let cmd = GpuCommand::Submit3d(
        Submit3d {
            size: MAX_SUBMIT_SIZE,
            padding: 0,
        },
        &stream,
    );
    assert_eq!(decode_request(&encode(&cmd)).unwrap().cmd, cmd);
}

#[test]
fn ctx_create_name_too_long() {
    let cmd = every_command(&[], &[])[14];
    for nlen in [65u32, 1000, u32::MAX] {
        let mut bytes = encode(&cmd);
        put_u32(&mut bytes, 24, nlen);
        assert_eq!(
            decode_request(&bytes),
            Err(DecodeError::InvalidField {
                type_: VIRTIO_GPU_CMD_CTX_CREATE,
                field: "nlen",
                value: u64::from(nlen)
            })
        );
    }
    let mut bytes = encode(&cmd);
    put_u32(&mut bytes, 24, 64);
    assert!(decode_request(&bytes).is_ok());
}

fn modes() -> [DisplayOne; VIRTIO_GPU_MAX_SCANOUTS] {
    let mut m = [DisplayOne::default(); VIRTIO_GPU_MAX_SCANOUTS];
    m[0] = DisplayOne {
        r: rect(),
        enabled: 1,
        flags: 0,
    };
    m[3].r.width = 1920;
    m
}

#[test]
fn every_response_round_trips() {
    let modes = modes();
    let capset = [7u8; 128];
    let edid: Vec<u8> = (0..128u8).collect();
    let uuid = [0xabu8; 16];
    let mut cases: Vec<(Response<'_>, DecodedResponse)> = vec![
        (Response::OkNoData, DecodedResponse::OkNoData),
        (
            Response::OkDisplayInfo(&modes),
            DecodedResponse::OkDisplayInfo(Box::new(modes)),
        ),
        (
            Response::OkCapsetInfo {
                capset_id: 42,
                max_version: 1,
                max_size: 128,
            },
            DecodedResponse::OkCapsetInfo(RespCapsetInfo {
                hdr: response_header(&hdr(), VIRTIO_GPU_RESP_OK_CAPSET_INFO),
                capset_id: 42,
                capset_max_version: 1,
                capset_max_size: 128,
                padding: 0,
            }),
        ),
        (
            Response::OkCapset(&capset),
            DecodedResponse::OkCapset(capset.to_vec()),
        ),
        (
            Response::OkEdid(&edid),
            DecodedResponse::OkEdid(edid.clone()),
        ),
        (
            Response::OkResourceUuid(uuid),
            DecodedResponse::OkResourceUuid(uuid),
        ),
        (Response::OkMapInfo(3), DecodedResponse::OkMapInfo(3)),
    ];
    for e in [
        ErrorCode::Unspec,
        ErrorCode::OutOfMemory,
        ErrorCode::InvalidScanoutId,
        ErrorCode::InvalidResourceId,
        ErrorCode::InvalidContextId,
        ErrorCode::InvalidParameter,
    ] {
        assert_eq!(ErrorCode::from_type(e.type_()), Some(e));
        cases.push((Response::Err(e), DecodedResponse::Err(e)));
    }
    let req = hdr();
    for (resp, expect) in cases {
        let mut buf = vec![0xffu8; 2048];
        let n = resp.encode(&req, &mut buf).unwrap();
        assert_eq!(n, resp.encoded_len(), "{resp:?}");
        let (h, d) = decode_response(&buf[..n]).unwrap();
        assert_eq!(h, response_header(&req, resp.type_()));
        assert_eq!(h.fence_id, req.fence_id);
        assert_eq!(h.flags, VIRTIO_GPU_FLAG_FENCE);
        assert_eq!(d, expect, "{resp:?}");
        // Too small by one byte: nothing written.
        let mut small = vec![0x5au8; n - 1];
        assert_eq!(resp.encode(&req, &mut small), None, "{resp:?}");
        assert!(small.iter().all(|&b| b == 0x5a));
        // A truncated fixed-size response does not decode.
        if !matches!(resp, Response::OkCapset(_)) && n > size_of::<CtrlHeader>() {
            assert_eq!(decode_response(&buf[..n - 1]), None, "{resp:?}");
        }
    }
}

#[test]
fn response_edge_cases() {
    let req = hdr();
    // EDID longer than 1024 bytes is cut to 1024.
    let edid = vec![1u8; 2000];
    let mut buf = vec![0u8; 2048];
    let n = Response::OkEdid(&edid).encode(&req, &mut buf).unwrap();
    assert_eq!(n, size_of::<RespEdid>());
    assert_eq!(
        decode_response(&buf[..n]).unwrap().1,
        DecodedResponse::OkEdid(vec![1u8; 1024])
    );
    // An EDID size field above 1024 is clamped by the decoder.
    buf[24..28].copy_from_slice(&5000u32.to_le_bytes());
    assert_eq!(
        decode_response(&buf[..n]).unwrap().1,
        DecodedResponse::OkEdid(vec![1u8; 1024])
    );
    // Empty capset, unknown response type, short header.
    let n = Response::OkCapset(&[]).encode(&req, &mut buf).unwrap();
    assert_eq!(
        decode_response(&buf[..n]).unwrap().1,
        DecodedResponse::OkCapset(vec![])
    );
    buf[0..4].copy_from_slice(&0x1300u32.to_le_bytes());
    assert_eq!(
        decode_response(&buf[..24]).unwrap().1,
        DecodedResponse::Unknown(0x1300)
    );
    for len in 0..24 {
        assert_eq!(decode_response(&buf[..len]), None);
    }
    // Ring index is echoed only with its flag; other flags are dropped.
    let req = CtrlHeader {
        flags: VIRTIO_GPU_FLAG_INFO_RING_IDX | 0x80,
        ring_idx: 2,
        ..hdr()
    };
    let h = response_header(&req, VIRTIO_GPU_RESP_OK_NODATA);
    assert_eq!(h.flags, VIRTIO_GPU_FLAG_INFO_RING_IDX);
    assert_eq!(h.ring_idx, 2);
}
