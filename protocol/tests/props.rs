//! Property tests: no decoder panics on any input, and encode/decode round trips for arbitrary
//! field values.

use std::mem::size_of;

use proptest::prelude::*;
use vgpu_protocol::capset::{StatsRecord, VgpuCapset};
use vgpu_protocol::channel::{
    decode_stream, validate_stream, ChannelCommand, ChannelError, CopyCmd, Crc32cArgs, FillCmd,
    GemmF32Args, KernelLaunch, QueryStatsCmd, ReduceSumF32Args, MAX_COMMANDS_PER_SUBMIT,
};
use vgpu_protocol::command::{mem_entries_from_bytes, read_obj};
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{decode_request, decode_response, GpuCommand};

const CASES: u32 = 1024;

/// Every request type, plus a few that are not.
fn request_types() -> Vec<u32> {
    VIRTIO_GPU_COMMAND_TYPES
        .into_iter()
        .chain([0, 0x10e, 0x1100])
        .collect()
}

/// Response types, known and not.
const RESPONSE_TYPES: [u32; 15] = [
    VIRTIO_GPU_RESP_OK_NODATA,
    VIRTIO_GPU_RESP_OK_DISPLAY_INFO,
    VIRTIO_GPU_RESP_OK_CAPSET_INFO,
    VIRTIO_GPU_RESP_OK_CAPSET,
    VIRTIO_GPU_RESP_OK_EDID,
    VIRTIO_GPU_RESP_OK_RESOURCE_UUID,
    VIRTIO_GPU_RESP_OK_MAP_INFO,
    VIRTIO_GPU_RESP_ERR_UNSPEC,
    VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY,
    VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,
    VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
    VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID,
    VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    0x1107,
    0x1300,
];

/// A value of `T` whose bytes are `bytes` (padded with zeros).
fn obj<T: vm_memory::ByteValued + Default>(bytes: &[u8]) -> T {
    let mut b = bytes.to_vec();
    b.resize(size_of::<T>().max(b.len()), 0);
    read_obj(&b).unwrap()
}

fn header_bytes(type_: u32, rest: &[u8]) -> Vec<u8> {
    let mut h: CtrlHeader = obj(rest);
    h.type_ = type_;
    vm_memory::ByteValued::as_slice(&h).to_vec()
}

/// Checks a successful decode is canonical: re-encoding it gives back the bytes it consumed.
fn check_request_canonical(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(req) = decode_request(bytes) {
        let mut out = Vec::new();
        req.cmd.encode(req.hdr, &mut out);
        prop_assert!(out.len() <= bytes.len());
        prop_assert_eq!(&out[..], &bytes[..out.len()]);
    }
    Ok(())
}

/// Decodes a whole stream, checking each good command re-encodes to the bytes it came from.
fn check_stream(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut it = decode_stream(bytes);
    let mut n = 0usize;
    loop {
        let at = it.offset();
        match it.next() {
            None => break,
            Some(Ok(cmd)) => {
                n += 1;
                let mut out = Vec::new();
                cmd.encode(&mut out);
                if cmd != ChannelCommand::Nop {
                    prop_assert_eq!(&out[..], &bytes[at..at + out.len()]);
                }
                prop_assert!(cmd.accesses().all(|a| a.end().is_some()));
            }
            Some(Err(_)) => {
                prop_assert!(it.next().is_none());
                break;
            }
        }
    }
    prop_assert!(n <= MAX_COMMANDS_PER_SUBMIT);
    let _ = validate_stream(bytes);
    Ok(())
}

/// A fixed-size command of kind `kind` (mod 23) with every field taken from `b`.
fn fixed_command(kind: usize, b: &[u8]) -> GpuCommand<'static> {
    match kind % 23 {
        0 => GpuCommand::GetDisplayInfo,
        1 => GpuCommand::ResourceCreate2d(obj(b)),
        2 => GpuCommand::ResourceUnref(obj(b)),
        3 => GpuCommand::SetScanout(obj(b)),
        4 => GpuCommand::ResourceFlush(obj(b)),
        5 => GpuCommand::TransferToHost2d(obj(b)),
        6 => GpuCommand::ResourceDetachBacking(obj(b)),
        7 => GpuCommand::GetCapsetInfo(obj(b)),
        8 => GpuCommand::GetCapset(obj(b)),
        9 => GpuCommand::GetEdid(obj(b)),
        10 => GpuCommand::ResourceAssignUuid(obj(b)),
        11 => GpuCommand::SetScanoutBlob(obj(b)),
        12 => {
            let mut c: CtxCreate = obj(b);
            c.nlen %= 65;
            GpuCommand::CtxCreate(c)
        }
        13 => GpuCommand::CtxDestroy,
        14 => GpuCommand::CtxAttachResource(obj(b)),
        15 => GpuCommand::CtxDetachResource(obj(b)),
        16 => GpuCommand::ResourceCreate3d(obj(b)),
        17 => GpuCommand::TransferToHost3d(obj(b)),
        18 => GpuCommand::TransferFromHost3d(obj(b)),
        19 => GpuCommand::ResourceMapBlob(obj(b)),
        20 => GpuCommand::ResourceUnmapBlob(obj(b)),
        21 => GpuCommand::UpdateCursor(obj(b)),
        _ => GpuCommand::MoveCursor(obj(b)),
    }
}

/// A channel command of kind `kind` (mod 8) with every field taken from `b`, made valid.
fn channel_command(kind: usize, b: &[u8]) -> ChannelCommand {
    let small = |v: u64| v & 0xffff_ffff;
    match kind % 8 {
        0 => {
            let mut c: CopyCmd = obj(b);
            c.src_offset = small(c.src_offset);
            c.dst_offset = small(c.dst_offset);
            c.size = small(c.size);
            ChannelCommand::Copy(c)
        }
        1 => {
            let mut c: FillCmd = obj(b);
            c.offset = small(c.offset) & !3;
            c.size = small(c.size) & !3;
            ChannelCommand::Fill(c)
        }
        2 => {
            let mut g: GemmF32Args = obj(b);
            if g.c_res == g.a_res || g.c_res == g.b_res {
                g.c_res = g.a_res.wrapping_add(1);
                if g.c_res == g.b_res {
                    g.c_res = g.c_res.wrapping_add(1);
                }
            }
            g.m &= 0xffff;
            g.n &= 0xffff;
            g.k &= 0xffff;
            ChannelCommand::Launch(KernelLaunch::GemmF32(g))
        }
        3 => ChannelCommand::Launch(KernelLaunch::AxpyF32(obj(b))),
        4 => {
            let mut r: ReduceSumF32Args = obj(b);
            r.reserved = 0;
            r.out_offset = small(r.out_offset);
            ChannelCommand::Launch(KernelLaunch::ReduceSumF32(r))
        }
        5 => {
            let mut c: Crc32cArgs = obj(b);
            c.src_offset = small(c.src_offset);
            c.len = small(c.len);
            c.out_offset = small(c.out_offset);
            ChannelCommand::Launch(KernelLaunch::Crc32c(c))
        }
        6 => {
            let mut q: QueryStatsCmd = obj(b);
            q.reserved = 0;
            q.dst_offset = small(q.dst_offset);
            ChannelCommand::QueryStats(q)
        }
        _ => ChannelCommand::Nop,
    }
}

/// The same, with no sanitizing at all.
fn raw_channel_command(kind: usize, b: &[u8]) -> ChannelCommand {
    match kind % 8 {
        0 => ChannelCommand::Copy(obj(b)),
        1 => ChannelCommand::Fill(obj(b)),
        2 => ChannelCommand::Launch(KernelLaunch::GemmF32(obj(b))),
        3 => ChannelCommand::Launch(KernelLaunch::AxpyF32(obj(b))),
        4 => ChannelCommand::Launch(KernelLaunch::ReduceSumF32(obj(b))),
        5 => ChannelCommand::Launch(KernelLaunch::Crc32c(obj(b))),
        6 => ChannelCommand::QueryStats(obj(b)),
        _ => ChannelCommand::Nop,
    }
}

fn bytes_up_to(n: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..n)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in bytes_up_to(600)) {
        check_request_canonical(&bytes)?;
        let _ = decode_response(&bytes);
        check_stream(&bytes)?;
        let _ = VgpuCapset::parse(&bytes);
        let _ = StatsRecord::parse(&bytes);
    }

    #[test]
    fn bytes_after_a_valid_request_header(
        t in prop::sample::select(request_types()),
        hdr in bytes_up_to(24),
        body in bytes_up_to(400),
        small_count in 0u32..40,
        use_small in any::<bool>(),
    ) {
        let mut bytes = header_bytes(t, &hdr);
        bytes.extend_from_slice(&body);
        // Make counts/sizes plausible half of the time so the variable parts get exercised.
        if use_small {
            let at = match t {
                VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING => Some(28),
                VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB => Some(36),
                VIRTIO_GPU_CMD_SUBMIT_3D | VIRTIO_GPU_CMD_CTX_CREATE => Some(24),
                _ => None,
            };
            if let Some(at) = at {
                if bytes.len() >= at + 4 {
                    bytes[at..at + 4].copy_from_slice(&small_count.to_le_bytes());
                }
            }
        }
        check_request_canonical(&bytes)?;
    }

    #[test]
    fn bytes_after_a_valid_response_header(
        t in prop::sample::select(&RESPONSE_TYPES[..]),
        hdr in bytes_up_to(24),
        body in bytes_up_to(1200),
    ) {
        let mut bytes = header_bytes(t, &hdr);
        bytes.extend_from_slice(&body);
        if let Some((h, _)) = decode_response(&bytes) {
            prop_assert_eq!(h.type_, t);
        }
    }

    #[test]
    fn bytes_after_a_valid_channel_header(
        opcode in 0u32..7,
        kernel in 0u32..6,
        exact_size in any::<bool>(),
        size in any::<u32>(),
        body in bytes_up_to(64),
        tail in bytes_up_to(64),
    ) {
        let mut bytes = Vec::new();
        let mut cmd_body = Vec::new();
        if opcode == 3 {
            cmd_body.extend_from_slice(&kernel.to_le_bytes());
        }
        cmd_body.extend_from_slice(&body);
        let size = if exact_size { (8 + cmd_body.len() as u32) & !3 } else { size };
        bytes.extend_from_slice(&opcode.to_le_bytes());
        bytes.extend_from_slice(&size.to_le_bytes());
        bytes.extend_from_slice(&cmd_body);
        bytes.extend_from_slice(&tail);
        check_stream(&bytes)?;
    }

    #[test]
    fn request_round_trip(
        kind in 0usize..23,
        hdr in prop::collection::vec(any::<u8>(), 24),
        body in prop::collection::vec(any::<u8>(), 128),
    ) {
        let cmd = fixed_command(kind, &body);
        let h: CtrlHeader = obj(&hdr);
        let mut bytes = Vec::new();
        cmd.encode(h, &mut bytes);
        let req = decode_request(&bytes).unwrap();
        prop_assert_eq!(req.cmd, cmd);
        prop_assert_eq!(req.hdr, CtrlHeader { type_: cmd.type_(), ..h });
    }

    #[test]
    fn variable_request_round_trip(
        which in 0usize..3,
        hdr in prop::collection::vec(any::<u8>(), 24),
        body in prop::collection::vec(any::<u8>(), 32),
        entries in prop::collection::vec(any::<u8>(), 0..10).prop_map(|v| {
            v.iter().flat_map(|&b| [b; 16]).collect::<Vec<u8>>()
        }),
        stream in bytes_up_to(300),
    ) {
        let e = mem_entries_from_bytes(&entries).unwrap();
        let n = e.len() as u32;
        let cmd = match which {
            0 => GpuCommand::ResourceAttachBacking(
                ResourceAttachBacking { nr_entries: n, ..obj(&body) }, e),
            1 => GpuCommand::ResourceCreateBlob(
                ResourceCreateBlob { nr_entries: n, ..obj(&body) }, e),
            _ => GpuCommand::Submit3d(
                Submit3d { size: stream.len() as u32, ..obj(&body) }, &stream),
        };
        let h: CtrlHeader = obj(&hdr);
        let mut bytes = Vec::new();
        cmd.encode(h, &mut bytes);
        prop_assert_eq!(decode_request(&bytes).unwrap().cmd, cmd);
    }

    #[test]
    fn channel_round_trip(
        cmds in prop::collection::vec(
            (0usize..8, prop::collection::vec(any::<u8>(), 32)), 0..20),
    ) {
        let cmds: Vec<ChannelCommand> =
            cmds.iter().map(|(k, b)| channel_command(*k, b)).collect();
        let mut bytes = Vec::new();
        for c in &cmds {
            c.encode(&mut bytes);
        }
        let decoded: Vec<ChannelCommand> =
            decode_stream(&bytes).collect::<Result<_, _>>().unwrap();
        let mut again = Vec::new();
        for c in &decoded {
            c.encode(&mut again);
        }
        // Compare encodings: f32 fields may be NaN.
        prop_assert_eq!(again, bytes);
        prop_assert_eq!(decoded.len(), cmds.len());
    }

    #[test]
    fn encoded_channel_commands_only_fail_on_values(
        kind in 0usize..8,
        body in prop::collection::vec(any::<u8>(), 32),
    ) {
        let cmd = raw_channel_command(kind, &body);
        let mut bytes = Vec::new();
        cmd.encode(&mut bytes);
        match decode_stream(&bytes).next() {
            Some(Ok(d)) => {
                let mut again = Vec::new();
                d.encode(&mut again);
                prop_assert_eq!(again, bytes);
            }
            Some(Err(e)) => prop_assert!(matches!(
                e,
                ChannelError::ReservedNonZero { .. }
                    | ChannelError::Unaligned { .. }
                    | ChannelError::RangeOverflow { .. }
                    | ChannelError::Aliased { .. }
            ), "{:?}", e),
            None => prop_assert!(false, "no command"),
        }
    }

    #[test]
    fn capset_and_stats_round_trip(
        cap in prop::collection::vec(any::<u8>(), 128),
        stats in prop::collection::vec(any::<u8>(), 128),
    ) {
        let mut c: VgpuCapset = obj(&cap);
        c.magic = vgpu_protocol::capset::VGPU_CAPSET_MAGIC;
        c.protocol_version |= 1;
        prop_assert_eq!(VgpuCapset::parse(c.as_bytes()), Ok(c));
        let _ = c.type_name();
        let mut s: StatsRecord = obj(&stats);
        s.magic = vgpu_protocol::capset::VGPU_STATS_MAGIC;
        s.protocol_version |= 1;
        prop_assert_eq!(StatsRecord::parse(s.as_bytes()), Ok(s));
    }
}
