//! The per-VM device state machine (`VirtioGpuDevice`, 2D and 3D) driven by sequences of
//! commands over fake guest memory, as the vhost-user glue drives it.
//!
//! Input format (every field is read with [`Reader`], missing bytes read as zero), a sequence of
//! operations, each starting with one byte `op`:
//! - `op % 16 < 12`: a request: `type index` (u8, into [`COMMANDS`]), `ctx_id` (u8 % 4),
//!   `flags` (u8 % 4), `response buffer` (u8 % 4: 24, 0, 100 or `MAX_RESPONSE_LEN` bytes), body
//!   length (u16 % 2048), then the body bytes (the request after its 24-byte header);
//! - `12`: write guest memory: address (u32 % guest span), length (u8 × 16), the bytes;
//! - `13`: device reset (checked: every resource and partition byte is freed);
//! - `14`: flip whether `VIRTIO_GPU_F_VIRGL` was negotiated;
//! - `15`: end of input.
//!
//! Oracles: no panic; every synchronous answer fits its buffer and decodes as a virtio-gpu
//! response to the request; every SUBMIT_3D that went to the driver is reported exactly once
//! (within 60 s, else a hang); display updates carry exactly `w × h × 4` bytes; the partition
//! never exceeds its size; after a reset and at the end of every input the partition's used bytes
//! are back to zero and no resource is left.

use std::mem::size_of;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vgpu_backend::device::{
    CtrlOutcome, DeviceConfig, DisplaySink, JobNotifier, MemoryBudget, VirtioGpuDevice,
    MAX_RESPONSE_LEN,
};
use vgpu_backend::driver::{self, Device, Uuid, Vgpu};
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{decode_request, decode_response};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::Reader;

/// Every command type the device may be sent, indexed by the input's type byte: the protocol's
/// command types, then an unknown one (0x0fff), so the decoder's rejection path is part of
/// sequences too.
pub const COMMANDS: [u32; 27] = {
    let mut all = [0x0fff; 27];
    let mut i = 0;
    while i < VIRTIO_GPU_COMMAND_TYPES.len() {
        all[i] = VIRTIO_GPU_COMMAND_TYPES[i];
        i += 1;
    }
    all
};

/// Operation codes of the input format (see the module doc).
pub mod op {
    /// Write guest memory.
    pub const WRITE_MEMORY: u8 = 12;
    /// Reset the device.
    pub const RESET: u8 = 13;
    /// Flip VIRGL negotiation.
    pub const TOGGLE_VIRGL: u8 = 14;
    /// End of input.
    pub const END: u8 = 15;
}

/// Guest RAM: 1 MiB at 0 and 64 KiB at 2 MiB (a hole between them).
const LOW: (u64, usize) = (0, 1 << 20);
const HIGH: (u64, usize) = (2 << 20, 64 << 10);
/// Span the memory-write operation addresses.
const SPAN: u32 = (2 << 20) + (64 << 10);
/// Response buffer sizes the input picks from.
const RESPONSE_SIZES: [usize; 4] = [24, 0, 100, MAX_RESPONSE_LEN];
/// How long a submitted job may take before the input counts as a hang.
const JOB_DEADLINE: Duration = Duration::from_secs(60);
/// How long after a reset the partition may take to drain (the engine drops finished jobs).
const RELEASE_DEADLINE: Duration = Duration::from_secs(10);

struct Shared {
    _device: Arc<Device>,
    vgpu: Arc<Vgpu>,
    mem: GuestMemoryMmap,
    zeros: Vec<u8>,
}

fn shared() -> &'static Mutex<Shared> {
    static SHARED: OnceLock<Mutex<Shared>> = OnceLock::new();
    SHARED.get_or_init(|| {
        let device = Device::new(driver::DeviceConfig {
            memory_mib: 256,
            ..Default::default()
        })
        .expect("driver core starts");
        let vgpu = device
            .create_vgpu("vgpu-64m", Uuid::from_u128(0xf022))
            .expect("vGPU of the built-in type");
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(LOW.0), LOW.1),
            (GuestAddress(HIGH.0), HIGH.1),
        ])
        .expect("guest memory");
        Mutex::new(Shared {
            _device: device,
            vgpu,
            mem,
            zeros: vec![0; LOW.1],
        })
    })
}

struct Notify(Mutex<Sender<(u64, bool)>>);

impl JobNotifier for Notify {
    fn job_done(&self, token: u64, ok: bool) {
        if let Ok(tx) = self.0.lock() {
            let _ = tx.send((token, ok));
        }
    }
}

/// A display that checks what the device hands it.
struct CheckingSink;

impl DisplaySink for CheckingSink {
    fn scanout(&mut self, id: u32, _w: u32, _h: u32) {
        assert!((id as usize) < VIRTIO_GPU_MAX_SCANOUTS, "scanout id {id}");
    }
    fn update(&mut self, id: u32, x: u32, y: u32, w: u32, h: u32, px: &[u8]) {
        assert!(
            (id as usize) < VIRTIO_GPU_MAX_SCANOUTS,
            "update scanout id {id}"
        );
        assert!(x.checked_add(w).is_some() && y.checked_add(h).is_some());
        assert_eq!(
            px.len() as u64,
            u64::from(w) * u64::from(h) * 4,
            "update size"
        );
    }
    fn cursor_update(&mut self, id: u32, _x: u32, _y: u32, _hx: u32, _hy: u32, _i: &[u8; 16384]) {
        assert!(
            (id as usize) < VIRTIO_GPU_MAX_SCANOUTS,
            "cursor scanout id {id}"
        );
    }
    fn cursor_move(&mut self, id: u32, _x: u32, _y: u32) {
        assert!(
            (id as usize) < VIRTIO_GPU_MAX_SCANOUTS,
            "cursor scanout id {id}"
        );
    }
    fn cursor_hide(&mut self, id: u32) {
        assert!(
            (id as usize) < VIRTIO_GPU_MAX_SCANOUTS,
            "cursor scanout id {id}"
        );
    }
}

/// What one input did, for checking that seeds reach the code they were made for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Requests that decoded and were handed to the device.
    pub requests: usize,
    /// Answers of type `OK_*` (cursor commands and completed submits included).
    pub ok: usize,
    /// Answers of type `ERR_*` (and failed submits).
    pub errors: usize,
    /// Submits that ran on the driver.
    pub submitted: usize,
}

/// Runs one input (see the module doc for its format and the oracles).
pub fn run(data: &[u8]) {
    run_counted(data);
}

/// [`run`], returning what the input did.
pub fn run_counted(data: &[u8]) -> Outcome {
    let guard = shared().lock().unwrap_or_else(|e| e.into_inner());
    let s = &*guard;
    // Fresh guest memory for every input, so an input means the same thing every time.
    s.mem
        .write_slice(&s.zeros, GuestAddress(LOW.0))
        .expect("zero low RAM");
    s.mem
        .write_slice(&s.zeros[..HIGH.1], GuestAddress(HIGH.0))
        .expect("zero high RAM");
    let partition = s.vgpu.partition();
    assert_eq!(partition.used(), 0, "partition not empty before the input");

    let mut dev = VirtioGpuDevice::with_vgpu(
        DeviceConfig {
            num_scanouts: 2,
            ..DeviceConfig::default()
        },
        Arc::clone(&s.vgpu),
    );
    let (tx, rx) = channel();
    dev.set_job_notifier(Arc::new(Notify(Mutex::new(tx))));
    let mut vm = Vm {
        dev,
        rx,
        token: 0,
        sink: CheckingSink,
        virgl: true,
        outcome: Outcome::default(),
    };
    let mut r = Reader::new(data);
    while !r.is_empty() {
        match r.u8() % 16 {
            op::WRITE_MEMORY => {
                let addr = u64::from(r.u32() % SPAN);
                let len = usize::from(r.u8()) * 16;
                let bytes = r.bytes(len);
                // Writes into the hole between the regions fail; that is fine.
                let _ = s.mem.write_slice(bytes, GuestAddress(addr));
            }
            op::RESET => vm.reset(s),
            op::TOGGLE_VIRGL => {
                vm.virgl = !vm.virgl;
                vm.dev.set_virgl_negotiated(vm.virgl);
            }
            op::END => break,
            _ => vm.request(s, &mut r),
        }
        assert!(
            partition.used() <= partition.total(),
            "partition over its size"
        );
    }
    vm.reset(s);
    vm.outcome
}

struct Vm {
    dev: VirtioGpuDevice,
    rx: Receiver<(u64, bool)>,
    token: u64,
    sink: CheckingSink,
    virgl: bool,
    outcome: Outcome,
}

impl Vm {
    /// Builds one request from the input, hands it to the device and checks the answer.
    fn request(&mut self, s: &Shared, r: &mut Reader<'_>) {
        let type_ = COMMANDS[usize::from(r.u8()) % COMMANDS.len()];
        let hdr = CtrlHeader {
            type_,
            ctx_id: u32::from(r.u8() % 4),
            flags: u32::from(r.u8() % 4),
            fence_id: self.token,
            ..Default::default()
        };
        let resp_len = RESPONSE_SIZES[usize::from(r.u8() % 4)];
        let body_len = usize::from(r.u16() % 2048);
        let mut bytes = hdr.as_slice().to_vec();
        bytes.extend_from_slice(r.bytes(body_len));
        let Ok(req) = decode_request(&bytes) else {
            return;
        };
        self.outcome.requests += 1;
        if req.cmd.is_cursor() {
            self.outcome.ok += 1;
            self.dev.process_cursor(&req, &mut self.sink);
            return;
        }
        let mut resp = vec![0u8; resp_len];
        self.token += 1;
        let token = self.token;
        match self
            .dev
            .process_ctrl_async(&s.mem, &req, &mut self.sink, &mut resp, token)
        {
            CtrlOutcome::Done(n) => {
                assert!(
                    n <= resp.len(),
                    "answer of {n} bytes in a {resp_len}-byte buffer"
                );
                if resp_len >= size_of::<CtrlHeader>() {
                    let (rh, _) = decode_response(&resp[..n]).unwrap_or_else(|| {
                        panic!("undecodable answer to {type_:#x}: {:?}", &resp[..n])
                    });
                    assert_eq!(rh.ctx_id, req.hdr.ctx_id, "answer's ctx_id");
                    assert!(rh.type_ >= 0x1100, "answer type {:#x}", rh.type_);
                    if rh.type_ >= 0x1200 {
                        self.outcome.errors += 1;
                    } else {
                        self.outcome.ok += 1;
                    }
                } else {
                    assert_eq!(n, 0, "answer in a buffer smaller than a header");
                }
            }
            CtrlOutcome::Pending => {
                assert_eq!(
                    type_, VIRTIO_GPU_CMD_SUBMIT_3D,
                    "only SUBMIT_3D runs on the driver"
                );
                self.outcome.submitted += 1;
                let (t, ok) = self
                    .rx
                    .recv_timeout(JOB_DEADLINE)
                    .expect("submitted job reported within the deadline");
                assert_eq!(t, token, "job reported with another token");
                if ok {
                    self.outcome.ok += 1;
                } else {
                    self.outcome.errors += 1;
                }
            }
        }
        assert!(self.rx.try_recv().is_err(), "a job was reported twice");
    }

    /// Resets the device and checks that it freed everything.
    fn reset(&mut self, s: &Shared) {
        self.dev.reset();
        assert_eq!(self.dev.resource_count(), 0, "resources left after reset");
        // A finished job's buffers are released by the engine thread just after it reports the
        // job, so the last bytes may come back a moment after the reset: wait for them, bounded.
        let partition = s.vgpu.partition();
        let start = Instant::now();
        while partition.used() != 0 {
            let used = partition.used();
            assert!(
                start.elapsed() < RELEASE_DEADLINE,
                "{used} partition bytes left {RELEASE_DEADLINE:?} after reset"
            );
            std::thread::sleep(Duration::from_micros(50));
        }
        assert!(self.rx.try_recv().is_err(), "a job reported after reset");
    }
}
