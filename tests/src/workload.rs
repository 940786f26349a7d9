//! A well-behaved VM for tests and benchmarks: one 2D scanout round whose UPDATE pixels are
//! checked on the GPU socket, and one compute round (FILL, then CRC32C into a second buffer)
//! whose results are read back and checked. Used by the hostile-guest test (the neighbour) and
//! the soak benchmark (`vgpu-soak`).
//!
//! Connect with [`checked_vm_config`] (VIRGL and CONTEXT_INIT negotiated). Every check panics
//! with a message naming the round: these are test helpers.

use std::time::{Duration, Instant};

use vgpu_protocol::channel::*;
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{ChannelCommand, DecodedResponse, GpuCommand, KernelLaunch};

use crate::client::{pattern, rect};
use crate::conformance::assert_ok;
use crate::connection::FrontendConfig;
use crate::gpu_socket::{GpuMsg, GPU_UPDATE};
use crate::GpuClient;

/// How long one step may take (generous: machines are loaded).
const T: Duration = Duration::from_secs(30);
/// The context the worker creates.
const CTX: u32 = 1;

/// A frontend configuration with VIRGL, CONTEXT_INIT and indirect descriptors, and `io_timeout`.
pub fn checked_vm_config(io_timeout: Duration) -> FrontendConfig {
    FrontendConfig {
        device_features: FrontendConfig::default().device_features
            | (1 << VIRTIO_GPU_F_VIRGL)
            | (1 << VIRTIO_GPU_F_CONTEXT_INIT),
        indirect: true,
        io_timeout,
        ..Default::default()
    }
}

fn hdr(ctx: u32) -> CtrlHeader {
    CtrlHeader {
        ctx_id: ctx,
        ..Default::default()
    }
}

fn ok(c: &mut GpuClient, cmd: GpuCommand<'_>, what: &str) {
    let r = c.send_ctrl(&cmd, hdr(CTX)).expect(what).1;
    assert!(matches!(r, DecodedResponse::OkNoData), "{what}: {r:?}");
}

fn stream(cmds: &[ChannelCommand]) -> Vec<u8> {
    let mut s = Vec::new();
    for c in cmds {
        c.encode(&mut s);
    }
    s
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

/// A VM that does real work: a 2D scanout round and a compute round, both checked.
/// A VM doing checked 2D and compute rounds.
pub struct Worker {
    /// Its connection.
    pub client: GpuClient,
    buf_gpa: u64,
    out_gpa: u64,
    /// Rounds started so far.
    pub round: u32,
}

/// Size of each compute buffer.
const BUF: u32 = 4096;

impl Worker {
    /// Sets up the context and two 4 KiB buffers on a connected client.
    pub fn new(client: GpuClient) -> Worker {
        let mut client = client;
        let r = client
            .send_ctrl(
                &GpuCommand::CtxCreate(CtxCreate {
                    context_init: VGPU_CAPSET_ID,
                    ..Default::default()
                }),
                hdr(CTX),
            )
            .expect("ctx create")
            .1;
        assert!(matches!(r, DecodedResponse::OkNoData), "ctx create: {r:?}");
        let mut gpas = [0u64; 2];
        for (k, id) in [100u32, 101].into_iter().enumerate() {
            let create = GpuCommand::ResourceCreate3d(buffer_create(id, BUF));
            ok(&mut client, create, "buffer create");
            gpas[k] = client.guest_buffer(&[0u8; BUF as usize]).unwrap();
            let r = client.attach_backing(id, &[(gpas[k], BUF)]).unwrap();
            assert!(matches!(r, DecodedResponse::OkNoData), "{r:?}");
            let attach = GpuCommand::CtxAttachResource(CtxResource {
                resource_id: id,
                padding: 0,
            });
            ok(&mut client, attach, "ctx attach");
        }
        let [buf_gpa, out_gpa] = gpas;
        Worker {
            client,
            buf_gpa,
            out_gpa,
            round: 0,
        }
    }

    /// A 2D round whose UPDATE pixels are checked on the GPU socket.
    pub fn display_round(&mut self) {
        self.round += 1;
        let id = 10 + self.round % 4;
        let (w, h) = (32, 24);
        let img = pattern(w, h, self.round as u8);
        let c = &mut self.client;
        c.create_backed_2d(id, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, w, h, &img, 2)
            .unwrap_or_else(|e| panic!("create {id}: {e}"));
        assert_ok(c.transfer_2d(id, rect(0, 0, w, h), 0).unwrap(), "transfer");
        assert_ok(c.set_scanout(0, id, rect(0, 0, w, h)).unwrap(), "scanout");
        c.peer().skip_all();
        assert_ok(c.flush(id, rect(0, 0, w, h)).unwrap(), "flush");
        let m = c.peer().wait_for(GPU_UPDATE, T).expect("UPDATE");
        match &*m {
            GpuMsg::Update { data, .. } => assert!(data == &img, "pixels of round {}", self.round),
            other => panic!("{other:?}"),
        }
        assert_ok(c.set_scanout(0, 0, rect(0, 0, 0, 0)).unwrap(), "disable");
        assert_ok(c.detach_backing(id).unwrap(), "detach");
        assert_ok(c.unref(id).unwrap(), "unref");
    }

    /// A compute round: FILL then CRC32C of the buffer, read back and checked.
    pub fn compute_round(&mut self) {
        let pattern = 0x0101_0101u32.wrapping_mul(self.round % 200 + 1);
        let s = stream(&[
            ChannelCommand::Fill(FillCmd {
                dst_res: 100,
                pattern,
                offset: 0,
                size: 2048,
            }),
            ChannelCommand::Launch(KernelLaunch::Crc32c(Crc32cArgs {
                src_res: 100,
                out_res: 101,
                src_offset: 0,
                len: 2048,
                out_offset: 0,
            })),
        ]);
        let c = &mut self.client;
        let submit = GpuCommand::Submit3d(
            Submit3d {
                size: s.len() as u32,
                padding: 0,
            },
            &s,
        );
        ok(c, submit, "submit");
        ok(c, transfer(100, BUF, false), "download");
        let got = c.conn.mem.read_vec(self.buf_gpa, BUF as usize).unwrap();
        let filled: Vec<u8> = pattern.to_le_bytes().repeat(512);
        assert!(
            got[..2048] == filled[..],
            "FILL result of round {}",
            self.round
        );
        ok(c, transfer(101, 4, false), "download CRC");
        let out = c.conn.mem.read_vec(self.out_gpa, 4).unwrap();
        let crc = u32::from_le_bytes(out[..].try_into().unwrap());
        assert_eq!(crc, vgpu_protocol::crc32c::crc32c(&filled), "CRC32C result");
    }

    /// One display and one compute round; returns how long it took.
    pub fn round(&mut self) -> Duration {
        let start = Instant::now();
        self.display_round();
        self.compute_round();
        start.elapsed()
    }
}
