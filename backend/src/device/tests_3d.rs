//! 3D channel tests at device level: capsets, contexts, buffers, transfers, SUBMIT_3D validation
//! and results, QUERY_STATS and cross-VM isolation.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vgpu_protocol::capset::StatsRecord;
use vgpu_protocol::channel::*;
use vgpu_protocol::command::mem_entries_from_bytes;
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{decode_request, decode_response, DecodedResponse, ErrorCode, GpuCommand};
use vgpu_protocol::{ChannelCommand, KernelLaunch, VgpuCapset};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::backing::tests::entries_bytes;
use super::*;
use crate::driver::{self, Device, MIB};

struct Notify(Mutex<Sender<(u64, bool)>>);

impl JobNotifier for Notify {
    fn job_done(&self, token: u64, ok: bool) {
        let _ = self.0.lock().unwrap().send((token, ok));
    }
}

struct Vm {
    dev: VirtioGpuDevice,
    mem: GuestMemoryMmap<()>,
    display: HeadlessDisplay,
    done: Receiver<(u64, bool)>,
    token: u64,
}

const OK: Result<(), ErrorCode> = Ok(());

fn gpu() -> Arc<Device> {
    Device::new(driver::DeviceConfig {
        memory_mib: 256,
        ..Default::default()
    })
    .unwrap()
}

impl Vm {
    fn new(device: &Arc<Device>, n: u128) -> Vm {
        let vgpu = device
            .create_vgpu("vgpu-64m", driver::Uuid::from_u128(n))
            .unwrap();
        let mut dev = VirtioGpuDevice::with_vgpu(DeviceConfig::default(), vgpu);
        let (tx, rx) = channel();
        dev.set_job_notifier(Arc::new(Notify(Mutex::new(tx))));
        Vm {
            dev,
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap(),
            display: HeadlessDisplay::new(),
            done: rx,
            token: 0,
        }
    }

    /// Sends `cmd` on context `ctx`; waits for an asynchronous answer. Returns the response.
    fn send(&mut self, ctx: u32, cmd: GpuCommand<'_>) -> (CtrlHeader, DecodedResponse) {
        let mut bytes = Vec::new();
        let hdr = CtrlHeader {
            ctx_id: ctx,
            ..Default::default()
        };
        cmd.encode(hdr, &mut bytes);
        let req = decode_request(&bytes).unwrap();
        let mut resp = [0u8; 1024];
        self.token += 1;
        match self
            .dev
            .process_ctrl_async(&self.mem, &req, &mut self.display, &mut resp, self.token)
        {
            CtrlOutcome::Done(n) => decode_response(&resp[..n]).unwrap(),
            CtrlOutcome::Pending => {
                let (t, ok) = self.done.recv_timeout(Duration::from_secs(20)).unwrap();
                assert_eq!(t, self.token);
                let r = if ok {
                    DecodedResponse::OkNoData
                } else {
                    DecodedResponse::Err(ErrorCode::Unspec)
                };
                (req.hdr, r)
            }
        }
    }

    fn result(&mut self, ctx: u32, cmd: GpuCommand<'_>) -> Result<(), ErrorCode> {
        match self.send(ctx, cmd).1 {
            DecodedResponse::Err(e) => Err(e),
            _ => Ok(()),
        }
    }

    fn ctx(&mut self, ctx: u32, init: u32) -> Result<(), ErrorCode> {
        self.result(
            ctx,
            GpuCommand::CtxCreate(CtxCreate {
                context_init: init,
                ..Default::default()
            }),
        )
    }

    /// Creates a buffer of `size` bytes backed at guest address `gpa`, attached to `ctx`.
    fn buffer(&mut self, ctx: u32, id: u32, size: u32, gpa: u64) {
        assert_eq!(self.create_buffer(id, size), OK);
        let e = entries_bytes(&[(gpa, size)]);
        let cmd = GpuCommand::ResourceAttachBacking(
            ResourceAttachBacking {
                resource_id: id,
                nr_entries: 1,
            },
            mem_entries_from_bytes(&e).unwrap(),
        );
        assert_eq!(self.result(0, cmd), OK);
        assert_eq!(self.attach(ctx, id, true), OK);
    }

    fn create_buffer(&mut self, id: u32, size: u32) -> Result<(), ErrorCode> {
        self.result(0, GpuCommand::ResourceCreate3d(buffer_create(id, size)))
    }

    fn attach(&mut self, ctx: u32, id: u32, on: bool) -> Result<(), ErrorCode> {
        let c = CtxResource {
            resource_id: id,
            padding: 0,
        };
        let cmd = if on {
            GpuCommand::CtxAttachResource(c)
        } else {
            GpuCommand::CtxDetachResource(c)
        };
        self.result(ctx, cmd)
    }

    fn transfer(
        &mut self,
        ctx: u32,
        id: u32,
        x: u32,
        w: u32,
        off: u64,
        to_host: bool,
    ) -> Result<(), ErrorCode> {
        let t = Transfer3d {
            box_: Box3d {
                x,
                y: 0,
                z: 0,
                w,
                h: 1,
                d: 1,
            },
            offset: off,
            resource_id: id,
            ..Default::default()
        };
        let cmd = if to_host {
            GpuCommand::TransferToHost3d(t)
        } else {
            GpuCommand::TransferFromHost3d(t)
        };
        self.result(ctx, cmd)
    }

    fn submit(&mut self, ctx: u32, cmds: &[ChannelCommand]) -> Result<(), ErrorCode> {
        let mut stream = Vec::new();
        for c in cmds {
            c.encode(&mut stream);
        }
        self.result(
            ctx,
            GpuCommand::Submit3d(
                Submit3d {
                    size: stream.len() as u32,
                    padding: 0,
                },
                &stream,
            ),
        )
    }

    fn upload(&mut self, ctx: u32, id: u32, gpa: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(gpa)).unwrap();
        assert_eq!(self.transfer(ctx, id, 0, data.len() as u32, 0, true), OK);
    }

    fn download(&mut self, ctx: u32, id: u32, gpa: u64, len: usize) -> Vec<u8> {
        assert_eq!(self.transfer(ctx, id, 0, len as u32, 0, false), OK);
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(gpa)).unwrap();
        out
    }
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn to_f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn capsets() {
    let g = gpu();
    let mut vm = Vm::new(&g, 1);
    assert_eq!(vm.dev.config_space().num_capsets, 1);
    match vm
        .send(0, GpuCommand::GetCapsetInfo(GetCapsetInfo::default()))
        .1
    {
        DecodedResponse::OkCapsetInfo(i) => {
            assert_eq!(
                (i.capset_id, i.capset_max_version, i.capset_max_size),
                (42, 1, vgpu_protocol::capset::VGPU_CAPSET_SIZE as u32)
            )
        }
        other => panic!("{other:?}"),
    }
    let bad = GpuCommand::GetCapsetInfo(GetCapsetInfo {
        capset_index: 1,
        padding: 0,
    });
    assert_eq!(vm.result(0, bad), Err(ErrorCode::InvalidParameter));
    let get = |id, version| {
        GpuCommand::GetCapset(GetCapset {
            capset_id: id,
            capset_version: version,
        })
    };
    match vm.send(0, get(42, 1)).1 {
        DecodedResponse::OkCapset(bytes) => {
            let c = VgpuCapset::parse(&bytes).unwrap();
            assert_eq!(c.type_name(), "vgpu-64m");
            assert_eq!(c.framebuffer_bytes, 64 * MIB);
            assert_eq!((c.max_heads, c.max_width, c.max_height), (1, 1024, 768));
            assert_eq!(c.kernel_mask, 0x1e);
            assert_eq!(c.engine_count, 1);
            // Protocol 1.1: the engine behind the vGPU, from the driver's caps.
            assert_eq!(c.protocol_minor, vgpu_protocol::capset::VGPU_PROTOCOL_MINOR);
            assert_eq!(c.engine_name(), "cpu");
            assert_eq!(c.driver_name(), "vgpud-cpu");
            assert!(!c.device_name().is_empty());
            assert_eq!(c.max_commands_per_submit, 1024);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(vm.result(0, get(42, 2)), Err(ErrorCode::InvalidParameter));
    assert_eq!(vm.result(0, get(1, 1)), Err(ErrorCode::InvalidParameter));
    // A 2D-only device has none.
    let mut two_d = VirtioGpuDevice::new(
        DeviceConfig::default(),
        Arc::new(HostMemoryLimit::new(1 << 20)),
    );
    assert_eq!(two_d.config_space().num_capsets, 0);
    assert!(!two_d.has_3d());
    let mut bytes = Vec::new();
    get(42, 1).encode(CtrlHeader::default(), &mut bytes);
    let mut resp = [0u8; 256];
    let n = two_d.process_ctrl(
        &vm.mem,
        &decode_request(&bytes).unwrap(),
        &mut vm.display,
        &mut resp,
    );
    assert_eq!(
        decode_response(&resp[..n]).unwrap().1,
        DecodedResponse::Err(ErrorCode::InvalidParameter)
    );
}

#[test]
fn three_d_needs_virgl_negotiated() {
    let g = gpu();
    let mut vm = Vm::new(&g, 1);
    vm.dev.set_virgl_negotiated(false);
    assert_eq!(vm.ctx(1, 0), Err(ErrorCode::Unspec));
    assert_eq!(vm.create_buffer(7, 64), Err(ErrorCode::Unspec));
    vm.dev.set_virgl_negotiated(true);
    assert_eq!(vm.ctx(1, 0), OK);
}

#[test]
fn context_lifecycle() {
    let g = gpu();
    let mut vm = Vm::new(&g, 1);
    assert_eq!(vm.ctx(0, 0), Err(ErrorCode::InvalidContextId));
    assert_eq!(vm.ctx(1, 0), OK);
    assert_eq!(vm.ctx(1, 0), Err(ErrorCode::InvalidContextId));
    assert_eq!(vm.ctx(2, 42), OK);
    assert_eq!(vm.ctx(3, 1), Err(ErrorCode::InvalidParameter));
    // CONTEXT_INIT: only the low 8 bits name a capset; reserved bits set are refused.
    assert_eq!(vm.ctx(4, 0x100 | 42), Err(ErrorCode::InvalidParameter));
    assert_eq!(vm.ctx(5, 2), Err(ErrorCode::InvalidParameter));
    assert_eq!(
        vm.result(9, GpuCommand::CtxDestroy),
        Err(ErrorCode::InvalidContextId)
    );
    assert_eq!(vm.attach(9, 1, true), Err(ErrorCode::InvalidContextId));
    assert_eq!(vm.attach(1, 77, true), Err(ErrorCode::InvalidResourceId));
    assert_eq!(vm.attach(1, 77, false), Err(ErrorCode::InvalidResourceId));
    assert_eq!(vm.submit(9, &[]), Err(ErrorCode::InvalidContextId));
    assert_eq!(vm.submit(1, &[]), OK);
    assert_eq!(vm.result(2, GpuCommand::CtxDestroy), OK);
    assert_eq!(vm.submit(2, &[]), Err(ErrorCode::InvalidContextId));
    // Mesa virgl probing: a virgl stream is rejected cleanly.
    let virgl = [0x0001_0001u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
    let cmd = GpuCommand::Submit3d(
        Submit3d {
            size: 8,
            padding: 0,
        },
        &virgl,
    );
    assert_eq!(vm.result(1, cmd), Err(ErrorCode::InvalidParameter));
    // Bounded.
    for c in 10..10 + context::MAX_CONTEXTS as u32 - 1 {
        assert_eq!(vm.ctx(c, 0), OK, "ctx {c}");
    }
    assert_eq!(vm.ctx(500, 0), Err(ErrorCode::OutOfMemory));
    vm.dev.reset();
    assert_eq!(vm.ctx(1, 0), OK);
}

#[test]
fn buffers_and_transfers() {
    let g = gpu();
    let mut vm = Vm::new(&g, 1);
    vm.ctx(1, 0).unwrap();
    vm.buffer(1, 5, 4096, 0x10000);
    assert_eq!(vm.create_buffer(5, 16), Err(ErrorCode::InvalidResourceId));
    assert_eq!(vm.create_buffer(0, 16), Err(ErrorCode::InvalidResourceId));
    // Not a buffer shape.
    let tex = GpuCommand::ResourceCreate3d(ResourceCreate3d {
        resource_id: 6,
        target: 2,
        width: 16,
        height: 16,
        depth: 1,
        array_size: 1,
        ..Default::default()
    });
    assert_eq!(vm.result(0, tex), Err(ErrorCode::InvalidParameter));
    // Over the 64 MiB partition.
    assert_eq!(vm.create_buffer(7, 65 << 20), Err(ErrorCode::OutOfMemory));
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    vm.upload(1, 5, 0x10000, &data);
    vm.mem
        .write_slice(&[0u8; 4096], GuestAddress(0x10000))
        .unwrap();
    assert_eq!(vm.download(1, 5, 0x10000, 4096), data);
    // Partial: buffer bytes [100, 132) to backing [8, 40).
    assert_eq!(vm.transfer(1, 5, 100, 32, 8, false), OK);
    let mut part = [0u8; 32];
    vm.mem.read_slice(&mut part, GuestAddress(0x10008)).unwrap();
    assert_eq!(&part[..], &data[100..132]);
    assert_eq!(
        vm.transfer(1, 5, 4000, 97, 0, true),
        Err(ErrorCode::InvalidParameter)
    );
    assert_eq!(
        vm.transfer(1, 5, 0, 32, 4090, true),
        Err(ErrorCode::InvalidParameter)
    );
    assert_eq!(
        vm.transfer(1, 99, 0, 32, 0, true),
        Err(ErrorCode::InvalidResourceId)
    );
    assert_eq!(vm.create_buffer(8, 64), OK);
    assert_eq!(
        vm.transfer(1, 8, 0, 32, 0, true),
        Err(ErrorCode::InvalidResourceId)
    );
    // 2D-only commands refuse buffers.
    let flush = GpuCommand::ResourceFlush(ResourceFlush {
        r: Rect::default(),
        resource_id: 5,
        padding: 0,
    });
    assert_eq!(vm.result(0, flush), Err(ErrorCode::InvalidParameter));
    // Detach, unref.
    let detach = GpuCommand::ResourceDetachBacking(ResourceDetachBacking {
        resource_id: 5,
        padding: 0,
    });
    assert_eq!(vm.result(0, detach), OK);
    assert_eq!(
        vm.transfer(1, 5, 0, 32, 0, true),
        Err(ErrorCode::InvalidResourceId)
    );
    let used = vm.dev.vgpu().unwrap().partition().used();
    let unref = |id| {
        GpuCommand::ResourceUnref(ResourceUnref {
            resource_id: id,
            padding: 0,
        })
    };
    assert_eq!(vm.result(0, unref(5)), OK);
    assert_eq!(vm.dev.vgpu().unwrap().partition().used(), used - 4096);
    assert_eq!(vm.result(0, unref(5)), Err(ErrorCode::InvalidResourceId));
}

#[test]
fn submit_validation_rejects_before_anything_runs() {
    let g = gpu();
    let mut vm = Vm::new(&g, 1);
    vm.ctx(1, 0).unwrap();
    vm.ctx(2, 0).unwrap();
    vm.buffer(1, 1, 64, 0x10000);
    vm.buffer(1, 2, 64, 0x20000);
    vm.create_buffer(3, 64).unwrap(); // not attached
    let fill = |res, off, size| {
        ChannelCommand::Fill(FillCmd {
            dst_res: res,
            pattern: 0xAABB_CCDD,
            offset: off,
            size,
        })
    };
    let cases: [(Vec<ChannelCommand>, ErrorCode); 5] = [
        (
            vec![fill(1, 0, 64), fill(9, 0, 4)],
            ErrorCode::InvalidResourceId,
        ),
        (
            vec![fill(1, 0, 64), fill(3, 0, 4)],
            ErrorCode::InvalidResourceId,
        ),
        (
            vec![fill(1, 0, 64), fill(2, 60, 8)],
            ErrorCode::InvalidParameter,
        ),
        (
            vec![fill(1, 0, 64), fill(2, 2, 4)],
            ErrorCode::InvalidParameter,
        ),
        (
            vec![
                fill(1, 0, 64),
                ChannelCommand::Launch(KernelLaunch::GemmF32(GemmF32Args {
                    a_res: 1,
                    b_res: 2,
                    c_res: 1,
                    m: 1,
                    n: 1,
                    k: 1,
                    ..Default::default()
                })),
            ],
            ErrorCode::InvalidParameter,
        ),
    ];
    for (cmds, code) in cases {
        assert_eq!(vm.submit(1, &cmds), Err(code), "{cmds:?}");
    }
    // Buffer 1 attached to ctx 1 only.
    assert_eq!(
        vm.submit(2, &[fill(1, 0, 4)]),
        Err(ErrorCode::InvalidResourceId)
    );
    // Nothing ran: buffer 1 still zero.
    assert_eq!(vm.download(1, 1, 0x10000, 64), vec![0u8; 64]);
    // A 2D resource is not a buffer.
    let c2d = GpuCommand::ResourceCreate2d(ResourceCreate2d {
        resource_id: 20,
        format: VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
        width: 4,
        height: 4,
    });
    vm.result(0, c2d).unwrap();
    vm.attach(1, 20, true).unwrap();
    assert_eq!(
        vm.submit(1, &[fill(20, 0, 4)]),
        Err(ErrorCode::InvalidResourceId)
    );
    assert_eq!(vm.dev.vgpu().unwrap().stats().jobs_completed, 0);
    // Detach then use: refused.
    vm.attach(1, 2, false).unwrap();
    assert_eq!(
        vm.submit(1, &[fill(2, 0, 4)]),
        Err(ErrorCode::InvalidResourceId)
    );
}

#[test]
fn kernels_match_reference_and_stats() {
    let g = gpu();
    let mut vm = Vm::new(&g, 1);
    vm.ctx(1, 0).unwrap();
    let (m, n, k) = (5usize, 3usize, 4usize);
    let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 2.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| 1.0 - i as f32 * 0.25).collect();
    let c0: Vec<f32> = (0..m * n).map(|i| i as f32).collect();
    vm.buffer(1, 1, 4096, 0x10000);
    vm.buffer(1, 2, 4096, 0x20000);
    vm.buffer(1, 3, 4096, 0x30000);
    vm.buffer(1, 4, 4096, 0x40000);
    vm.upload(1, 1, 0x10000, &f32s(&a));
    vm.upload(1, 2, 0x20000, &f32s(&b));
    vm.upload(1, 3, 0x30000, &f32s(&c0));
    let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 31 + 7) as u8).collect();
    vm.upload(1, 4, 0x40000, &bytes);
    let cmds = [
        ChannelCommand::Launch(KernelLaunch::GemmF32(GemmF32Args {
            a_res: 1,
            b_res: 2,
            c_res: 3,
            m: m as u32,
            n: n as u32,
            k: k as u32,
            alpha: 2.0,
            beta: 0.5,
        })),
        // y(=a, 20 floats) += 3 * x(=b, first 12 floats..): use n = 12.
        ChannelCommand::Launch(KernelLaunch::AxpyF32(AxpyF32Args {
            x_res: 2,
            y_res: 1,
            n: 12,
            alpha: 3.0,
        })),
        ChannelCommand::Launch(KernelLaunch::ReduceSumF32(ReduceSumF32Args {
            x_res: 1,
            out_res: 4,
            n: 20,
            reserved: 0,
            out_offset: 2000,
        })),
        ChannelCommand::Launch(KernelLaunch::Crc32c(Crc32cArgs {
            src_res: 4,
            out_res: 2,
            src_offset: 0,
            len: 1000,
            out_offset: 1000,
        })),
        ChannelCommand::QueryStats(QueryStatsCmd {
            dst_res: 4,
            reserved: 0,
            dst_offset: 3000,
        }),
        // Copies the stats record: must see it written in order.
        ChannelCommand::Copy(CopyCmd {
            src_res: 4,
            dst_res: 3,
            src_offset: 3000,
            dst_offset: 2048,
            size: 128,
        }),
    ];
    assert_eq!(vm.submit(1, &cmds), OK);
    // References.
    let mut c = c0.clone();
    for i in 0..m {
        for j in 0..n {
            let dot: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            c[i * n + j] = 2.0 * dot + 0.5 * c0[i * n + j];
        }
    }
    let got_c = to_f32s(&vm.download(1, 3, 0x30000, m * n * 4));
    for (g, w) in got_c.iter().zip(&c) {
        assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{g} vs {w}");
    }
    let mut y = a.clone();
    for i in 0..12 {
        y[i] += 3.0 * b[i];
    }
    assert_eq!(to_f32s(&vm.download(1, 1, 0x10000, 80)), y);
    let sum = y.iter().map(|&v| f64::from(v)).sum::<f64>() as f32;
    let out = vm.download(1, 4, 0x40000, 4096);
    assert_eq!(f32::from_le_bytes(out[2000..2004].try_into().unwrap()), sum);
    let crc_ref = vgpu_protocol::crc32c::crc32c(&bytes);
    let b2 = vm.download(1, 2, 0x20000, 1004);
    assert_eq!(
        u32::from_le_bytes(b2[1000..1004].try_into().unwrap()),
        crc_ref
    );
    let rec = StatsRecord::parse(&out[3000..3128]).unwrap();
    assert_eq!(rec.framebuffer_total_bytes, 64 * MIB);
    assert!(rec.framebuffer_used_bytes >= 4 * 4096);
    // The first job (everything up to QUERY_STATS) is counted.
    assert_eq!(rec.jobs_completed, 1);

    assert!(rec.busy_ns > 0);
    let copied = vm.download(1, 3, 0x30000, 2048 + 128);
    assert_eq!(&copied[2048..], &out[3000..3128]);
}

/// A stats record is written at its job's completion, when the vGPU's runlist is empty but the
/// scheduler still counts it busy until the turn ends: a lone best-effort vGPU is one active vGPU
/// with the whole share (it reported 2 when the two work flags were mixed).
#[test]
fn lone_vgpu_counts_itself_once_in_stats() {
    let g = gpu();
    let mut vm = Vm::new(&g, 1);
    vm.ctx(1, 0).unwrap();
    vm.buffer(1, 5, 4096, 0x10000);
    for round in 0..20u64 {
        let offset = (round % 32) * 128;
        let q = ChannelCommand::QueryStats(QueryStatsCmd {
            dst_res: 5,
            reserved: 0,
            dst_offset: offset,
        });
        assert_eq!(vm.submit(1, &[q]), OK);
        let out = vm.download(1, 5, 0x10000, 4096);
        let at = offset as usize;
        let rec = StatsRecord::parse(&out[at..at + 128]).unwrap();
        assert_eq!(rec.policy, 0, "best-effort");
        assert_eq!(rec.active_vgpus, 1, "round {round}");
        assert_eq!(rec.share_permille, 1000, "round {round}");
    }
}

#[test]
fn resources_are_per_vm() {
    let g = gpu();
    let mut a = Vm::new(&g, 1);
    let mut b = Vm::new(&g, 2);
    a.ctx(1, 0).unwrap();
    b.ctx(1, 0).unwrap();
    a.buffer(1, 7, 64, 0x10000);
    assert_eq!(b.attach(1, 7, true), Err(ErrorCode::InvalidResourceId));
    let fill = ChannelCommand::Fill(FillCmd {
        dst_res: 7,
        pattern: 1,
        offset: 0,
        size: 4,
    });
    assert_eq!(b.submit(1, &[fill]), Err(ErrorCode::InvalidResourceId));
    assert_eq!(
        b.transfer(1, 7, 0, 4, 0, false),
        Err(ErrorCode::InvalidResourceId)
    );
    assert_eq!(a.submit(1, &[fill]), OK);
}
