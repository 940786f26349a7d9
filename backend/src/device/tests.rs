//! Device-level tests: whole command sequences through `process_ctrl`/`process_cursor` with guest
//! memory and a recording sink.

use std::sync::Arc;

use vgpu_protocol::command::mem_entries_from_bytes;
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{decode_request, decode_response, DecodedResponse, ErrorCode, GpuCommand};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::backing::tests::entries_bytes;
use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Scanout(u32, u32, u32),
    Update {
        id: u32,
        x: u32,
        y: u32,
        w: u32,
        h: u32,
        pixels: Vec<u8>,
    },
    CursorUpdate {
        id: u32,
        x: u32,
        y: u32,
        hot: (u32, u32),
        image: Vec<u8>,
    },
    CursorMove(u32, u32, u32),
    CursorHide(u32),
}

#[derive(Default)]
struct Recorder {
    events: Vec<Event>,
    info: Option<[DisplayOne; VIRTIO_GPU_MAX_SCANOUTS]>,
}

impl DisplaySink for Recorder {
    fn scanout(&mut self, id: u32, w: u32, h: u32) {
        self.events.push(Event::Scanout(id, w, h));
    }
    fn update(&mut self, id: u32, x: u32, y: u32, w: u32, h: u32, px: &[u8]) {
        assert_eq!(px.len(), (w * h * 4) as usize);
        self.events.push(Event::Update {
            id,
            x,
            y,
            w,
            h,
            pixels: px.to_vec(),
        });
    }
    fn cursor_update(&mut self, id: u32, x: u32, y: u32, hx: u32, hy: u32, img: &[u8; 16384]) {
        self.events.push(Event::CursorUpdate {
            id,
            x,
            y,
            hot: (hx, hy),
            image: img.to_vec(),
        });
    }
    fn cursor_move(&mut self, id: u32, x: u32, y: u32) {
        self.events.push(Event::CursorMove(id, x, y));
    }
    fn cursor_hide(&mut self, id: u32) {
        self.events.push(Event::CursorHide(id));
    }
    fn display_info(&mut self) -> Option<[DisplayOne; VIRTIO_GPU_MAX_SCANOUTS]> {
        self.info
    }
}

struct Rig {
    dev: VirtioGpuDevice,
    mem: GuestMemoryMmap,
    sink: Recorder,
    budget: Arc<dyn MemoryBudget>,
}

const FB: u64 = 0x10_0000;

fn rig_with(config: DeviceConfig, budget: u64) -> Rig {
    let budget: Arc<dyn MemoryBudget> = Arc::new(HostMemoryLimit::new(budget));
    Rig {
        dev: VirtioGpuDevice::new(config, Arc::clone(&budget)),
        mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap(),
        sink: Recorder::default(),
        budget,
    }
}

fn rig() -> Rig {
    rig_with(
        DeviceConfig {
            num_scanouts: 2,
            ..DeviceConfig::default()
        },
        64 << 20,
    )
}

fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

impl Rig {
    fn ctrl(&mut self, cmd: GpuCommand<'_>) -> DecodedResponse {
        let hdr = CtrlHeader {
            flags: VIRTIO_GPU_FLAG_FENCE,
            fence_id: 77,
            ..CtrlHeader::default()
        };
        let mut bytes = Vec::new();
        cmd.encode(hdr, &mut bytes);
        let req = decode_request(&bytes).unwrap();
        let mut resp = [0u8; MAX_RESPONSE_LEN];
        let n = self
            .dev
            .process_ctrl(&self.mem, &req, &mut self.sink, &mut resp);
        let (rh, decoded) = decode_response(&resp[..n]).unwrap();
        assert_eq!((rh.flags & VIRTIO_GPU_FLAG_FENCE, rh.fence_id), (1, 77));
        decoded
    }

    fn cursor(&mut self, cmd: GpuCommand<'_>) {
        let mut bytes = Vec::new();
        cmd.encode(CtrlHeader::default(), &mut bytes);
        let req = decode_request(&bytes).unwrap();
        self.dev.process_cursor(&req, &mut self.sink);
    }

    fn create(&mut self, id: u32, format: u32, w: u32, h: u32) -> DecodedResponse {
        self.ctrl(GpuCommand::ResourceCreate2d(ResourceCreate2d {
            resource_id: id,
            format,
            width: w,
            height: h,
        }))
    }

    fn attach(&mut self, id: u32, entries: &[(u64, u32)]) -> DecodedResponse {
        let bytes = entries_bytes(entries);
        let e = mem_entries_from_bytes(&bytes).unwrap();
        self.ctrl(GpuCommand::ResourceAttachBacking(
            ResourceAttachBacking {
                resource_id: id,
                nr_entries: entries.len() as u32,
            },
            e,
        ))
    }

    fn transfer(&mut self, id: u32, r: Rect, offset: u64) -> DecodedResponse {
        self.ctrl(GpuCommand::TransferToHost2d(TransferToHost2d {
            r,
            offset,
            resource_id: id,
            padding: 0,
        }))
    }

    fn set_scanout(&mut self, scanout_id: u32, id: u32, r: Rect) -> DecodedResponse {
        self.ctrl(GpuCommand::SetScanout(SetScanout {
            r,
            scanout_id,
            resource_id: id,
        }))
    }

    fn flush(&mut self, id: u32, r: Rect) -> DecodedResponse {
        self.ctrl(GpuCommand::ResourceFlush(ResourceFlush {
            r,
            resource_id: id,
            padding: 0,
        }))
    }

    fn unref(&mut self, id: u32) -> DecodedResponse {
        self.ctrl(GpuCommand::ResourceUnref(ResourceUnref {
            resource_id: id,
            padding: 0,
        }))
    }

    /// A resource of `w`×`h` with its guest framebuffer at FB (split into two entries at an
    /// odd boundary) filled by `pattern`.
    fn framebuffer(&mut self, id: u32, format: u32, w: u32, h: u32) -> Vec<u8> {
        let size = (w * h * 4) as usize;
        let fb: Vec<u8> = (0..size).map(|i| (i * 13 + i / 7) as u8).collect();
        // Two chunks, not adjacent in guest memory, split mid-pixel.
        let split = (size / 3) | 1;
        self.mem
            .write_slice(&fb[..split], GuestAddress(FB))
            .unwrap();
        self.mem
            .write_slice(&fb[split..], GuestAddress(FB + 0x20_0000))
            .unwrap();
        assert_eq!(self.create(id, format, w, h), DecodedResponse::OkNoData);
        let entries = [(FB, split as u32), (FB + 0x20_0000, (size - split) as u32)];
        assert_eq!(self.attach(id, &entries), DecodedResponse::OkNoData);
        fb
    }
}

fn err(code: ErrorCode) -> DecodedResponse {
    DecodedResponse::Err(code)
}

/// The bytes of `r` cut out of a `stride`-byte-per-row image.
fn cut(image: &[u8], stride: usize, r: Rect) -> Vec<u8> {
    let mut out = Vec::new();
    for row in r.y..r.y + r.height {
        let s = row as usize * stride + r.x as usize * 4;
        out.extend_from_slice(&image[s..s + r.width as usize * 4]);
    }
    out
}

fn convert(format: Format, px: &[u8]) -> Vec<u8> {
    let mut out = vec![0; px.len()];
    format.convert_row(px, &mut out);
    out
}

#[test]
fn full_2d_sequence_is_byte_exact() {
    let mut t = rig();
    let (w, h) = (64u32, 32u32);
    let stride = (w * 4) as usize;
    let fb = t.framebuffer(1, VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM, w, h);

    // Partial transfer: offset points at (x, y) of the same-stride guest framebuffer.
    let part = rect(3, 2, 10, 5);
    let offset = (2 * stride + 3 * 4) as u64;
    assert_eq!(t.transfer(1, part, offset), DecodedResponse::OkNoData);
    let data = t.dev.resource(1).unwrap().data().to_vec();
    let mut expect = vec![0u8; fb.len()];
    for row in 2..7 {
        let s = row * stride + 12;
        expect[s..s + 40].copy_from_slice(&fb[s..s + 40]);
    }
    assert_eq!(data, expect);

    // Full transfer (fast path), then show a sub-rectangle and flush everything.
    assert_eq!(
        t.transfer(1, rect(0, 0, w, h), 0),
        DecodedResponse::OkNoData
    );
    assert_eq!(t.dev.resource(1).unwrap().data(), &fb[..]);
    let view = rect(4, 4, 32, 16);
    assert_eq!(t.set_scanout(0, 1, view), DecodedResponse::OkNoData);
    assert_eq!(t.flush(1, rect(0, 0, w, h)), DecodedResponse::OkNoData);
    let expected = convert(Format::R8G8B8A8, &cut(&fb, stride, view));
    assert_eq!(
        t.sink.events,
        vec![
            Event::Scanout(0, 32, 16),
            Event::Update {
                id: 0,
                x: 0,
                y: 0,
                w: 32,
                h: 16,
                pixels: expected
            }
        ]
    );
}

#[test]
fn transfer_uses_offset_and_stride_for_each_row() {
    let mut t = rig();
    let fb = t.framebuffer(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16, 8);
    // An offset unrelated to (x, y): rows come from offset + row * stride.
    assert_eq!(
        t.transfer(1, rect(4, 3, 5, 2), 100),
        DecodedResponse::OkNoData
    );
    let data = t.dev.resource(1).unwrap().data();
    for row in 0..2usize {
        let dst = (3 + row) * 64 + 16;
        let src = 100 + row * 64;
        assert_eq!(&data[dst..dst + 20], &fb[src..src + 20]);
    }
    assert!(data.iter().filter(|&&b| b != 0).count() <= 40);
    // Full width with a non-zero y on the fast path lands at y * stride.
    assert_eq!(
        t.transfer(1, rect(0, 6, 16, 2), 0),
        DecodedResponse::OkNoData
    );
    let data = t.dev.resource(1).unwrap().data();
    assert_eq!(&data[6 * 64..8 * 64], &fb[..128]);
}

#[test]
fn flush_translates_to_scanout_coordinates() {
    let mut t = rig();
    let fb = t.framebuffer(1, VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM, 40, 20);
    t.transfer(1, rect(0, 0, 40, 20), 0);
    t.set_scanout(1, 1, rect(10, 5, 20, 10));
    t.sink.events.clear();
    t.flush(1, rect(0, 0, 15, 8));
    t.flush(1, rect(25, 12, 10, 8));
    t.flush(1, rect(0, 0, 5, 5)); // outside the scanout: nothing sent
    let conv = |r: Rect| convert(Format::X8R8G8B8, &cut(&fb, 160, r));
    assert_eq!(
        t.sink.events,
        vec![
            Event::Update {
                id: 1,
                x: 0,
                y: 0,
                w: 5,
                h: 3,
                pixels: conv(rect(10, 5, 5, 3))
            },
            Event::Update {
                id: 1,
                x: 15,
                y: 7,
                w: 5,
                h: 3,
                pixels: conv(rect(25, 12, 5, 3))
            },
        ]
    );
}

#[test]
fn native_full_width_flush_passes_rows_and_both_scanouts_get_it() {
    let mut t = rig();
    let fb = t.framebuffer(7, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 32, 16);
    t.transfer(7, rect(0, 0, 32, 16), 0);
    t.set_scanout(0, 7, rect(0, 0, 32, 16));
    t.set_scanout(1, 7, rect(0, 8, 32, 8));
    t.sink.events.clear();
    t.flush(7, rect(0, 4, 32, 8));
    assert_eq!(
        t.sink.events,
        vec![
            Event::Update {
                id: 0,
                x: 0,
                y: 4,
                w: 32,
                h: 8,
                pixels: fb[4 * 128..12 * 128].to_vec()
            },
            Event::Update {
                id: 1,
                x: 0,
                y: 0,
                w: 32,
                h: 4,
                pixels: fb[8 * 128..12 * 128].to_vec()
            },
        ]
    );
}

#[test]
fn headless_display_shows_the_frame() {
    let mut t = rig();
    let fb = t.framebuffer(1, VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM, 8, 4);
    t.transfer(1, rect(0, 0, 8, 4), 0);
    let mut bytes = Vec::new();
    let mut headless = HeadlessDisplay::new();
    for cmd in [
        GpuCommand::SetScanout(SetScanout {
            r: rect(0, 0, 8, 4),
            scanout_id: 0,
            resource_id: 1,
        }),
        GpuCommand::ResourceFlush(ResourceFlush {
            r: rect(0, 0, 8, 4),
            resource_id: 1,
            padding: 0,
        }),
    ] {
        bytes.clear();
        cmd.encode(CtrlHeader::default(), &mut bytes);
        let req = decode_request(&bytes).unwrap();
        let mut resp = [0u8; 64];
        t.dev.process_ctrl(&t.mem, &req, &mut headless, &mut resp);
    }
    let s = headless.scanout_state(0).unwrap();
    assert_eq!(s.pixels, convert(Format::A8B8G8R8, &fb));
    let p = &fb[(3 * 8 + 5) * 4..][..4];
    assert_eq!(headless.pixel(0, 5, 3), Some([p[1], p[2], p[3], p[0]]));
}

#[test]
fn create_errors() {
    let mut t = rig();
    let bgrx = VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM;
    assert_eq!(t.create(0, bgrx, 4, 4), err(ErrorCode::InvalidResourceId));
    assert_eq!(t.create(1, bgrx, 4, 4), DecodedResponse::OkNoData);
    assert_eq!(t.create(1, bgrx, 4, 4), err(ErrorCode::InvalidResourceId));
    assert_eq!(t.create(2, 99, 4, 4), err(ErrorCode::InvalidParameter));
    assert_eq!(t.create(2, bgrx, 0, 4), err(ErrorCode::InvalidParameter));
    assert_eq!(t.create(2, bgrx, 4, 0), err(ErrorCode::InvalidParameter));
    assert_eq!(
        t.create(2, bgrx, u32::MAX, u32::MAX),
        err(ErrorCode::InvalidParameter)
    );
    assert_eq!(t.create(2, bgrx, 65536, 65536), err(ErrorCode::OutOfMemory));
    assert_eq!(t.dev.resource_count(), 1);
}

#[test]
fn backing_errors() {
    let mut t = rig();
    let bgrx = VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM;
    assert_eq!(t.attach(5, &[(0, 64)]), err(ErrorCode::InvalidResourceId));
    t.create(5, bgrx, 4, 4);
    assert_eq!(t.attach(5, &[]), err(ErrorCode::Unspec));
    assert_eq!(t.attach(5, &[(0, 0)]), err(ErrorCode::Unspec));
    assert_eq!(t.attach(5, &[((16 << 20) - 8, 64)]), err(ErrorCode::Unspec));
    assert_eq!(t.attach(5, &[(u64::MAX - 8, 64)]), err(ErrorCode::Unspec));
    let detach = |t: &mut Rig, id| {
        t.ctrl(GpuCommand::ResourceDetachBacking(ResourceDetachBacking {
            resource_id: id,
            padding: 0,
        }))
    };
    assert_eq!(detach(&mut t, 5), err(ErrorCode::InvalidResourceId));
    assert_eq!(detach(&mut t, 6), err(ErrorCode::InvalidResourceId));
    let before = t.budget.used();
    assert_eq!(t.attach(5, &[(0, 64)]), DecodedResponse::OkNoData);
    assert!(t.budget.used() > before, "entry list is charged");
    assert_eq!(t.attach(5, &[(0, 64)]), err(ErrorCode::Unspec));
    assert_eq!(detach(&mut t, 5), DecodedResponse::OkNoData);
    assert_eq!(t.budget.used(), before);
    assert_eq!(
        t.transfer(5, rect(0, 0, 4, 4), 0),
        err(ErrorCode::InvalidResourceId)
    );
}

#[test]
fn transfer_errors_change_nothing() {
    let mut t = rig();
    assert_eq!(
        t.transfer(9, rect(0, 0, 1, 1), 0),
        err(ErrorCode::InvalidResourceId)
    );
    t.framebuffer(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16, 8);
    for r in [
        rect(0, 0, 17, 1),
        rect(1, 0, 16, 1),
        rect(0, 8, 1, 1),
        rect(u32::MAX, 0, 2, 1),
        rect(0, u32::MAX, 1, 2),
    ] {
        assert_eq!(
            t.transfer(1, r, 0),
            err(ErrorCode::InvalidParameter),
            "{r:?}"
        );
    }
    // Backing is exactly 16*8*4 = 512 bytes.
    assert_eq!(
        t.transfer(1, rect(0, 0, 16, 8), 1),
        err(ErrorCode::InvalidParameter)
    );
    assert_eq!(
        t.transfer(1, rect(8, 7, 8, 1), 481),
        err(ErrorCode::InvalidParameter)
    );
    assert_eq!(
        t.transfer(1, rect(8, 7, 8, 1), 480),
        DecodedResponse::OkNoData
    );
    assert_eq!(
        t.transfer(1, rect(0, 0, 1, 1), u64::MAX),
        err(ErrorCode::InvalidParameter)
    );
    let data = t.dev.resource(1).unwrap().data();
    assert!(data[..7 * 64 + 32].iter().all(|&b| b == 0));
    assert_eq!(
        t.transfer(1, rect(0, 0, 0, 0), 0),
        DecodedResponse::OkNoData
    );
}

#[test]
fn scanout_errors() {
    let mut t = rig();
    t.create(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16, 16);
    assert_eq!(
        t.set_scanout(2, 1, rect(0, 0, 16, 16)),
        err(ErrorCode::InvalidScanoutId)
    );
    assert_eq!(
        t.set_scanout(0, 3, rect(0, 0, 16, 16)),
        err(ErrorCode::InvalidResourceId)
    );
    assert_eq!(
        t.set_scanout(0, 1, rect(1, 0, 16, 16)),
        err(ErrorCode::InvalidParameter)
    );
    assert_eq!(
        t.set_scanout(0, 1, rect(0, 0, 0, 16)),
        err(ErrorCode::InvalidParameter)
    );
    assert_eq!(
        t.set_scanout(0, 1, rect(2, 2, 14, 14)),
        DecodedResponse::OkNoData
    );
    assert_eq!(
        t.set_scanout(0, 0, rect(0, 0, 0, 0)),
        DecodedResponse::OkNoData
    );
    assert_eq!(
        t.flush(3, rect(0, 0, 1, 1)),
        err(ErrorCode::InvalidResourceId)
    );
    assert_eq!(
        t.flush(1, rect(0, 0, 17, 1)),
        err(ErrorCode::InvalidParameter)
    );
    assert_eq!(
        t.sink.events,
        vec![Event::Scanout(0, 14, 14), Event::Scanout(0, 0, 0)]
    );
    assert_eq!(t.dev.scanout(0), Some(Scanout::default()));
}

#[test]
fn unref_disables_scanouts_and_frees() {
    let mut t = rig();
    let base = t.budget.used();
    t.framebuffer(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 16, 16);
    t.set_scanout(0, 1, rect(0, 0, 16, 16));
    t.set_scanout(1, 1, rect(0, 0, 8, 8));
    assert_eq!(t.unref(2), err(ErrorCode::InvalidResourceId));
    assert_eq!(t.unref(1), DecodedResponse::OkNoData);
    assert_eq!(t.unref(1), err(ErrorCode::InvalidResourceId));
    assert_eq!(
        &t.sink.events[2..],
        &[Event::Scanout(0, 0, 0), Event::Scanout(1, 0, 0)]
    );
    assert_eq!(t.budget.used(), base);
}

#[test]
fn budget_exhaustion_then_success_after_unref() {
    let bytes = 64 * 64 * 4 + resource::RESOURCE_OVERHEAD_BYTES + 1024;
    let mut t = rig_with(DeviceConfig::default(), bytes);
    let bgrx = VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM;
    assert_eq!(t.create(1, bgrx, 64, 64), DecodedResponse::OkNoData);
    assert_eq!(t.create(2, bgrx, 64, 64), err(ErrorCode::OutOfMemory));
    assert_eq!(t.dev.resource_count(), 1);
    // The entry list is charged too: 16384 entries do not fit the rest of the budget.
    let many: Vec<(u64, u32)> = (0..16384).map(|i| (i * 4096, 4096)).collect();
    assert_eq!(t.attach(1, &many), err(ErrorCode::OutOfMemory));
    assert_eq!(t.unref(1), DecodedResponse::OkNoData);
    assert_eq!(t.budget.used(), 0);
    assert_eq!(t.create(2, bgrx, 64, 64), DecodedResponse::OkNoData);
}

#[test]
fn reset_frees_everything() {
    let mut t = rig();
    t.framebuffer(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 32, 32);
    t.framebuffer(2, VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM, 16, 16);
    t.set_scanout(0, 1, rect(0, 0, 32, 32));
    assert!(t.budget.used() > 0);
    t.dev.reset();
    assert_eq!(t.budget.used(), 0);
    assert_eq!(t.dev.resource_count(), 0);
    assert_eq!(t.dev.scanout(0), Some(Scanout::default()));
    assert_eq!(
        t.flush(1, rect(0, 0, 1, 1)),
        err(ErrorCode::InvalidResourceId)
    );
    // Ids can be reused after reset.
    assert_eq!(
        t.create(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4, 4),
        DecodedResponse::OkNoData
    );
}

#[test]
fn display_info_edid_and_capsets() {
    let mut t = rig();
    let DecodedResponse::OkDisplayInfo(modes) = t.ctrl(GpuCommand::GetDisplayInfo) else {
        panic!("no display info");
    };
    assert_eq!(modes[1].r, rect(0, 0, 1280, 800));
    assert_eq!((modes[1].enabled, modes[2].enabled), (1, 0));
    // The frontend's modes are not passed through (only which heads it has).
    let mut theirs = [DisplayOne::default(); VIRTIO_GPU_MAX_SCANOUTS];
    for m in theirs.iter_mut() {
        m.r = rect(0, 0, 1024, 768);
        m.enabled = 1;
    }
    t.sink.info = Some(theirs);
    let DecodedResponse::OkDisplayInfo(modes) = t.ctrl(GpuCommand::GetDisplayInfo) else {
        panic!("no display info");
    };
    assert_eq!(
        (modes[0].r.width, modes[1].enabled, modes[2].enabled),
        (1280, 1, 0)
    );
    theirs[1].enabled = 0;
    t.sink.info = Some(theirs);
    let DecodedResponse::OkDisplayInfo(modes) = t.ctrl(GpuCommand::GetDisplayInfo) else {
        panic!("no display info");
    };
    assert_eq!((modes[0].enabled, modes[1].enabled), (1, 0));

    let get_edid = |t: &mut Rig, scanout| {
        t.ctrl(GpuCommand::GetEdid(GetEdid {
            scanout,
            padding: 0,
        }))
    };
    let DecodedResponse::OkEdid(e) = get_edid(&mut t, 1) else {
        panic!("no edid");
    };
    assert_eq!(e.len(), 128);
    assert_eq!(e.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
    assert_eq!(get_edid(&mut t, 2), err(ErrorCode::InvalidParameter));
    let mut off = rig_with(
        DeviceConfig {
            edid: false,
            ..DeviceConfig::default()
        },
        1 << 20,
    );
    assert_eq!(get_edid(&mut off, 0), err(ErrorCode::Unspec));

    assert_eq!(
        t.ctrl(GpuCommand::GetCapsetInfo(GetCapsetInfo::default())),
        err(ErrorCode::InvalidParameter)
    );
    assert_eq!(
        t.ctrl(GpuCommand::GetCapset(GetCapset::default())),
        err(ErrorCode::InvalidParameter)
    );
    let cs = t.dev.config_space();
    assert_eq!((cs.num_scanouts, cs.num_capsets), (2, 0));
}

#[test]
fn uuids_are_v4_and_stable() {
    let mut t = rig();
    let assign =
        |t: &mut Rig, id| match t.ctrl(GpuCommand::ResourceAssignUuid(ResourceAssignUuid {
            resource_id: id,
            padding: 0,
        })) {
            DecodedResponse::OkResourceUuid(u) => Ok(u),
            other => Err(other),
        };
    assert_eq!(assign(&mut t, 1), Err(err(ErrorCode::InvalidResourceId)));
    t.create(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4, 4);
    t.create(2, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 4, 4);
    let a = assign(&mut t, 1).unwrap();
    assert_eq!(assign(&mut t, 1).unwrap(), a);
    let b = assign(&mut t, 2).unwrap();
    assert_ne!(a, b);
    assert_eq!((a[6] >> 4, a[8] >> 6), (4, 2));
}

#[test]
fn unsupported_commands_answer_unspec() {
    let mut t = rig();
    let stream = [0u8; 8];
    for cmd in [
        GpuCommand::CtxCreate(CtxCreate::default()),
        GpuCommand::CtxDestroy,
        GpuCommand::ResourceCreate3d(ResourceCreate3d::default()),
        GpuCommand::Submit3d(
            Submit3d {
                size: 8,
                padding: 0,
            },
            &stream,
        ),
        GpuCommand::SetScanoutBlob(SetScanoutBlob::default()),
        GpuCommand::ResourceMapBlob(ResourceMapBlob::default()),
        GpuCommand::UpdateCursor(UpdateCursor::default()),
        GpuCommand::MoveCursor(UpdateCursor::default()),
    ] {
        assert_eq!(t.ctrl(cmd), err(ErrorCode::Unspec), "{cmd:?}");
    }
}

#[test]
fn small_response_buffer_gets_an_error_header() {
    let mut t = rig();
    let mut bytes = Vec::new();
    GpuCommand::GetDisplayInfo.encode(CtrlHeader::default(), &mut bytes);
    let req = decode_request(&bytes).unwrap();
    let mut resp = [0u8; 24];
    let n = t.dev.process_ctrl(&t.mem, &req, &mut t.sink, &mut resp);
    assert_eq!(n, 24);
    assert_eq!(decode_response(&resp).unwrap().1, err(ErrorCode::Unspec));
    assert_eq!(
        t.dev.process_ctrl(&t.mem, &req, &mut t.sink, &mut [0u8; 8]),
        0
    );
}

#[test]
fn cursor_queue() {
    let mut t = rig();
    let fb = t.framebuffer(3, VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM, 64, 64);
    t.transfer(3, rect(0, 0, 64, 64), 0);
    t.create(4, VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM, 32, 32);
    let cur = |scanout_id, resource_id| UpdateCursor {
        pos: CursorPos {
            scanout_id,
            x: 100,
            y: 50,
            padding: 0,
        },
        resource_id,
        hot_x: 2,
        hot_y: 3,
        padding: 0,
    };
    t.cursor(GpuCommand::UpdateCursor(cur(1, 3)));
    t.cursor(GpuCommand::UpdateCursor(cur(0, 4))); // not 64x64: ignored
    t.cursor(GpuCommand::UpdateCursor(cur(0, 9))); // unknown: ignored
    t.cursor(GpuCommand::UpdateCursor(cur(5, 3))); // bad scanout: ignored
    t.cursor(GpuCommand::MoveCursor(cur(1, 3)));
    t.cursor(GpuCommand::MoveCursor(cur(1, 0)));
    t.cursor(GpuCommand::MoveCursor(cur(2, 3))); // bad scanout: ignored
    t.cursor(GpuCommand::UpdateCursor(cur(0, 0)));
    t.cursor(GpuCommand::GetDisplayInfo); // not a cursor command: ignored
    assert_eq!(
        t.sink.events,
        vec![
            Event::CursorUpdate {
                id: 1,
                x: 100,
                y: 50,
                hot: (2, 3),
                image: convert(Format::A8R8G8B8, &fb)
            },
            Event::CursorMove(1, 100, 50),
            Event::CursorHide(1),
            Event::CursorHide(0),
        ]
    );
}

#[test]
fn config_is_clamped() {
    let budget: Arc<dyn MemoryBudget> = Arc::new(HostMemoryLimit::new(0));
    let dev = VirtioGpuDevice::new(
        DeviceConfig {
            num_scanouts: 40,
            width: 0,
            height: 0,
            max_width: 0,
            max_height: 100_000,
            edid: true,
        },
        budget,
    );
    assert_eq!(dev.config().num_scanouts, 16);
    assert_eq!((dev.config().width, dev.config().height), (1, 800));
    assert_eq!(
        (dev.config().max_width, dev.config().max_height),
        (1, MAX_SCANOUT_SIDE)
    );
}

#[test]
fn large_converted_flush_is_sent_in_bands() {
    let mut t = rig();
    let (w, h) = (1100u32, 1000u32); // 4.4 MB: above the 4 MiB conversion buffer
    let fb = t.framebuffer(1, VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM, w, h);
    t.transfer(1, rect(0, 0, w, h), 0);
    t.set_scanout(0, 1, rect(0, 0, w, h));
    t.sink.events.clear();
    t.flush(1, rect(0, 0, w, h));
    let mut got = vec![0u8; fb.len()];
    let mut covered = 0;
    for e in &t.sink.events {
        let Event::Update {
            id: 0,
            x: 0,
            y,
            w: ew,
            h: eh,
            pixels,
        } = e
        else {
            panic!("unexpected {e:?}");
        };
        assert_eq!(*ew, w);
        let start = (*y * w * 4) as usize;
        got[start..start + pixels.len()].copy_from_slice(pixels);
        covered += eh;
    }
    assert!(t.sink.events.len() > 1);
    assert_eq!(covered, h);
    assert_eq!(got, convert(Format::R8G8B8A8, &fb));
}

#[test]
fn device_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<VirtioGpuDevice>();
    assert_send::<HeadlessDisplay>();
}

/// A `vgpu-64m`-like device (max 1024x768): a frontend display answering 1280x800 does not raise
/// the modes offered, the EDID names nothing larger, and SET_SCANOUT refuses larger rectangles.
#[test]
fn type_maximum_caps_modes_edid_and_scanouts() {
    let mut t = rig_with(
        DeviceConfig {
            num_scanouts: 1,
            width: 1280,
            height: 800,
            max_width: 1024,
            max_height: 768,
            edid: true,
        },
        64 << 20,
    );
    for frontend in [false, true] {
        if frontend {
            let mut theirs = [DisplayOne::default(); VIRTIO_GPU_MAX_SCANOUTS];
            theirs[0].r = rect(0, 0, 1280, 800);
            theirs[0].enabled = 1;
            t.sink.info = Some(theirs);
        }
        let DecodedResponse::OkDisplayInfo(modes) = t.ctrl(GpuCommand::GetDisplayInfo) else {
            panic!("no display info");
        };
        assert_eq!(modes[0].r, rect(0, 0, 1024, 768), "frontend {frontend}");
        let DecodedResponse::OkEdid(e) = t.ctrl(GpuCommand::GetEdid(GetEdid {
            scanout: 0,
            padding: 0,
        })) else {
            panic!("no edid");
        };
        let (w, h) = edid_preferred(&e);
        assert_eq!((w, h), (1024, 768), "EDID preferred timing");
        for slot in e[38..54].chunks_exact(2) {
            if slot != [1, 1] {
                assert!(
                    (u32::from(slot[0]) + 31) * 8 <= 1024,
                    "standard timing {slot:?}"
                );
            }
        }
    }
    assert_eq!(
        t.create(1, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, 1280, 800),
        DecodedResponse::OkNoData
    );
    assert_eq!(
        t.set_scanout(0, 1, rect(0, 0, 1280, 800)),
        err(ErrorCode::InvalidParameter)
    );
    assert_eq!(
        t.set_scanout(0, 1, rect(0, 0, 1024, 769)),
        err(ErrorCode::InvalidParameter)
    );
    assert!(
        t.sink.events.is_empty(),
        "nothing shown: {:?}",
        t.sink.events.len()
    );
    assert_eq!(
        t.set_scanout(0, 1, rect(0, 0, 1024, 768)),
        DecodedResponse::OkNoData
    );
}

/// `--resolution` picks the preferred mode, with or without a frontend display.
#[test]
fn preferred_resolution_is_offered_with_and_without_a_frontend() {
    let mut t = rig_with(
        DeviceConfig {
            num_scanouts: 1,
            width: 800,
            height: 600,
            max_width: 1920,
            max_height: 1080,
            edid: true,
        },
        64 << 20,
    );
    for frontend in [false, true] {
        if frontend {
            let mut theirs = [DisplayOne::default(); VIRTIO_GPU_MAX_SCANOUTS];
            theirs[0].r = rect(0, 0, 1280, 800);
            theirs[0].enabled = 1;
            t.sink.info = Some(theirs);
        }
        let DecodedResponse::OkDisplayInfo(modes) = t.ctrl(GpuCommand::GetDisplayInfo) else {
            panic!("no display info");
        };
        assert_eq!(modes[0].r, rect(0, 0, 800, 600), "frontend {frontend}");
        let DecodedResponse::OkEdid(e) = t.ctrl(GpuCommand::GetEdid(GetEdid {
            scanout: 0,
            padding: 0,
        })) else {
            panic!("no edid");
        };
        assert_eq!(edid_preferred(&e), (800, 600));
    }
}

/// The active size of an EDID's first detailed timing (the preferred mode).
fn edid_preferred(e: &[u8]) -> (u32, u32) {
    let d = &e[54..72];
    let w = u32::from(d[2]) | (u32::from(d[4] >> 4) << 8);
    let h = u32::from(d[5]) | (u32::from(d[7] >> 4) << 8);
    (w, h)
}
