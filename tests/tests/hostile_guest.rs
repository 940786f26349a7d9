//! A hostile guest through the real vhost-user path, next to a well-behaved neighbour VM on the
//! same `vgpud`.
//!
//! The hostile VM (seeded, reproducible: `VGPU_HOSTILE_SEED=N`, default below; the seed is
//! printed) sends thousands of random and edge-value requests of every virtio-gpu type (blob and
//! 3D commands included) and then malformed chains: split headers, zero-length descriptors,
//! writable-before-readable, too-small response buffers, indirect tables (split, nested, longer
//! than the ring, with loops) and next-loops in the descriptor table.
//!
//! Documented behaviour checked here:
//! - every request that is well-formed at the virtqueue level gets a used element, and a response
//!   (OK or ERR) that decodes whenever the writable part can hold one (≥ 24 bytes); an unknown
//!   or garbled request is answered with an `ERR_*` type;
//! - a chain that is malformed at the virtqueue level (bad directions, descriptors outside
//!   memory, nested indirect tables, `next` loops in the descriptor table) is returned to the
//!   guest with a used length no larger than its writable bytes, never more than once, with
//!   `ERR_UNSPEC` when it has room for it, and the daemon keeps serving;
//! - an indirect table is walked at most its own length (virtio-queue's bound, as in QEMU): one
//!   longer than the ring is served like any chain, and a loop inside one ends at its length;
//! - the neighbour VM's display (UPDATE pixels) and compute (SUBMIT_3D results) stay correct all
//!   along; its round latency is printed before and during the attack (never asserted);
//! - afterwards the hostile VM reconnects and works cleanly.
//!
//! Needs `target/<profile>/vgpud` (or `VGPUD=path`); skips otherwise like `frontend_vgpud`.

use std::mem::size_of;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vgpu_protocol::channel::*;
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{decode_response, ChannelCommand, DecodedResponse, GpuCommand, KernelLaunch};
use vgpu_tests::client::MAX_RESP;
use vgpu_tests::connection::{FrontendConfig, CTRL_QUEUE, CURSOR_QUEUE};
use vgpu_tests::vring::{
    Link, RawDesc, VirtqDesc, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vgpu_tests::workload::{checked_vm_config, Worker};
use vgpu_tests::{Backend, GpuClient};

/// Generous: the suite must pass on a loaded machine.
const T: Duration = Duration::from_secs(30);
const DEFAULT_SEED: u64 = 0x5eed_0bad_9e57;
/// Random requests of the first phase.
const RANDOM_REQUESTS: usize = 3000;
/// Malformed chains of the second phase.
const MALFORMED_CHAINS: usize = 600;
const CTX: u32 = 1;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// An edge value, a small id, or anything.
    fn edge32(&mut self) -> u32 {
        const EDGES: [u32; 14] = [
            0,
            1,
            2,
            3,
            4,
            7,
            16,
            64,
            4096,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_fffe,
            0xffff_ffff,
            VGPU_CAPSET_ID,
        ];
        match self.below(3) {
            0 => EDGES[self.below(EDGES.len() as u64) as usize],
            1 => self.below(8) as u32,
            _ => self.next() as u32,
        }
    }
    fn edge64(&mut self, mem_end: u64) -> u64 {
        match self.below(5) {
            0 => u64::MAX - self.below(64),
            1 => mem_end - self.below(8192),
            2 => self.below(mem_end),
            3 => u64::from(self.edge32()),
            _ => self.next(),
        }
    }
}

fn connect(path: &std::path::Path, record_pixels: bool) -> GpuClient {
    let mut cfg = checked_vm_config(T);
    cfg.peer.record_pixels = record_pixels;
    GpuClient::connect(path, &cfg).expect("connect to vgpud")
}

#[derive(Default)]
struct Latencies {
    before: Vec<Duration>,
    during: Vec<Duration>,
}

fn summary(name: &str, v: &[Duration]) -> String {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return format!("{name}: no rounds");
    }
    let p = |q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    format!(
        "{name}: {} rounds, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        v.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    )
}

/// A random request of type `type_`: a body of edge values, of the right size most of the time.
fn random_request(rng: &mut Rng, type_: u32, mem_end: u64, scratch: u64) -> Vec<u8> {
    let mut b = Vec::new();
    let h = CtrlHeader {
        type_,
        flags: if rng.chance(30) {
            VIRTIO_GPU_FLAG_FENCE
        } else {
            rng.edge32() & 3
        },
        fence_id: rng.next(),
        ctx_id: if rng.chance(70) { CTX } else { rng.edge32() },
        ring_idx: rng.below(4) as u8,
        padding: [0; 3],
    };
    b.extend_from_slice(vm_memory::ByteValued::as_slice(&h));
    let body_words = match type_ {
        VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB => 8,
        VIRTIO_GPU_CMD_SET_SCANOUT_BLOB => 24,
        VIRTIO_GPU_CMD_RESOURCE_CREATE_3D => 18,
        VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D | VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D => 14,
        VIRTIO_GPU_CMD_CTX_CREATE => 2 + 16,
        VIRTIO_GPU_CMD_UPDATE_CURSOR | VIRTIO_GPU_CMD_MOVE_CURSOR => 10,
        _ => 6,
    };
    for _ in 0..body_words {
        b.extend_from_slice(&rng.edge32().to_le_bytes());
    }
    match type_ {
        VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING | VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB => {
            // nr_entries is the second (attach) or fourth (blob) body word; make it match the
            // entries that follow most of the time.
            let n = rng.below(5) as u32;
            let at = if type_ == VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB {
                24 + 12
            } else {
                24 + 4
            };
            if rng.chance(80) {
                b[at..at + 4].copy_from_slice(&n.to_le_bytes());
            }
            let fixed = if type_ == VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB {
                32
            } else {
                8
            };
            b.truncate(24 + fixed);
            for _ in 0..n {
                let addr = if rng.chance(60) {
                    scratch + rng.below(1 << 20)
                } else {
                    rng.edge64(mem_end)
                };
                b.extend_from_slice(&addr.to_le_bytes());
                b.extend_from_slice(&rng.edge32().to_le_bytes());
                b.extend_from_slice(&0u32.to_le_bytes());
            }
        }
        VIRTIO_GPU_CMD_SUBMIT_3D => {
            b.truncate(24 + 8);
            let mut s = Vec::new();
            for _ in 0..rng.below(6) {
                match rng.below(4) {
                    0 => ChannelCommand::Fill(FillCmd {
                        dst_res: rng.edge32(),
                        pattern: rng.next() as u32,
                        offset: u64::from(rng.edge32()),
                        size: u64::from(rng.edge32()),
                    })
                    .encode(&mut s),
                    1 => ChannelCommand::Copy(CopyCmd {
                        src_res: rng.edge32(),
                        dst_res: rng.edge32(),
                        src_offset: rng.edge64(1 << 20),
                        dst_offset: rng.edge64(1 << 20),
                        size: u64::from(rng.edge32()),
                    })
                    .encode(&mut s),
                    2 => ChannelCommand::Launch(KernelLaunch::GemmF32(GemmF32Args {
                        a_res: rng.edge32(),
                        b_res: rng.edge32(),
                        c_res: rng.edge32(),
                        m: rng.edge32() % 64,
                        n: rng.edge32(),
                        k: rng.edge32() % 64,
                        alpha: 1.0,
                        beta: 0.0,
                    }))
                    .encode(&mut s),
                    _ => {
                        // A raw header with any opcode and size.
                        s.extend_from_slice(&rng.edge32().to_le_bytes());
                        s.extend_from_slice(&(rng.edge32() & 0xfff).to_le_bytes());
                    }
                }
            }
            let size = if rng.chance(80) {
                s.len() as u32
            } else {
                rng.edge32()
            };
            b[24..28].copy_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&s);
        }
        _ => {}
    }
    // Sometimes truncated (possibly into the header) or with trailing garbage.
    if rng.chance(10) {
        let n = rng.below(b.len() as u64 + 1) as usize;
        b.truncate(n);
    } else if rng.chance(5) {
        for _ in 0..rng.below(64) {
            b.push(rng.next() as u8);
        }
    }
    b
}

/// Every command type, an unknown one and response types sent as requests.
fn request_types() -> Vec<u32> {
    VIRTIO_GPU_COMMAND_TYPES
        .into_iter()
        .chain([0, VIRTIO_GPU_RESP_OK_NODATA, 0xffff_ffff])
        .collect()
}

/// Phase 1: random requests on both queues, each with a response buffer of a random size.
fn random_requests(c: &mut GpuClient, rng: &mut Rng) -> [usize; 3] {
    let mem_end = c.conn.mem.end();
    let scratch = c.conn.mem.alloc_pages(1 << 20).unwrap();
    let mut counts = [0usize; 3]; // ok, err, no room for an answer
    let types = request_types();
    for i in 0..RANDOM_REQUESTS {
        let type_ = types[rng.below(types.len() as u64) as usize];
        let bytes = random_request(rng, type_, mem_end, scratch);
        let q = if rng.chance(10) {
            CURSOR_QUEUE
        } else {
            CTRL_QUEUE
        };
        let resp_len = match rng.below(6) {
            0 => rng.below(24) as u32,
            1 => 24,
            _ => MAX_RESP,
        };
        // Random guest memory under the backing addresses, so transfers move something.
        if rng.chance(5) {
            let fill = rng.next() as u8;
            c.conn
                .mem
                .fill(scratch + rng.below(1 << 19), fill, 4096)
                .unwrap();
        }
        let done = c
            .send_raw_on(q, &bytes, resp_len)
            .unwrap_or_else(|e| panic!("request {i} (type {type_:#x}) got no answer: {e}"));
        assert!(
            done.used.len <= resp_len,
            "request {i}: used len {}",
            done.used.len
        );
        if q == CURSOR_QUEUE {
            continue;
        }
        if resp_len < 24 {
            counts[2] += 1;
            continue;
        }
        let (rh, resp) = decode_response(&done.written).unwrap_or_else(|| {
            panic!(
                "request {i} (type {type_:#x}, {resp_len}-byte buffer): undecodable answer \
                     (used len {}): {:02x?}",
                done.used.len, done.written
            )
        });
        if matches!(resp, DecodedResponse::Err(_)) {
            counts[1] += 1;
        } else {
            counts[0] += 1;
            assert!(
                VIRTIO_GPU_COMMAND_TYPES.contains(&type_),
                "request {i}: unknown type {type_:#x} answered {resp:?}"
            );
        }
        assert!(
            rh.type_ >= VIRTIO_GPU_RESP_OK_NODATA,
            "request {i}: type {:#x}",
            rh.type_
        );
        // Keep the hostile peer's message log small.
        c.peer().skip_all();
    }
    counts
}

/// Writes a raw indirect table and returns its address.
fn table(c: &GpuClient, descs: &[VirtqDesc]) -> u64 {
    let t = c
        .conn
        .mem
        .alloc(16 * descs.len().max(1) as u64, 16)
        .unwrap();
    for (i, d) in descs.iter().enumerate() {
        c.conn.mem.write_obj(t + 16 * i as u64, d).unwrap();
    }
    t
}

/// Phase 2: chains malformed (or unusual) at the virtqueue level, each carrying a valid
/// GET_DISPLAY_INFO or RESOURCE_CREATE_2D.
/// Returns, per kind, how many were sent and the largest used length seen.
fn malformed_chains(c: &mut GpuClient, rng: &mut Rng) -> Vec<(&'static str, usize, u32)> {
    let mem_end = c.conn.mem.end();
    let mut req = Vec::new();
    GpuCommand::GetDisplayInfo.encode(CtrlHeader::default(), &mut req);
    let q = c.conn.mem.alloc_with(&req).unwrap();
    let n = req.len() as u32;
    let r = c.conn.mem.alloc(4096, 8).unwrap();
    let ring = u32::from(FrontendConfig::default().queue_sizes[0]);
    let mut seen: Vec<(&'static str, usize, u32)> = Vec::new();
    // Indirect tables reuse a few fixed buffers so the bump allocator is not exhausted.
    for i in 0..MALFORMED_CHAINS {
        let kind = rng.below(10);
        let (what, descs): (&'static str, Vec<RawDesc>) = match kind {
            0 => {
                // Split header: the request cut into 1..=8 readable pieces, some empty.
                let mut d = Vec::new();
                let mut at = 0u32;
                while at < n {
                    let len = (rng.below(9) as u32).min(n - at);
                    d.push(RawDesc::readable(q + u64::from(at), len));
                    at += len;
                }
                d.push(RawDesc::writable(r, 1024));
                ("split header", d)
            }
            1 => (
                "zero-length descriptors",
                vec![
                    RawDesc::readable(q, 0),
                    RawDesc::readable(q, n),
                    RawDesc::writable(r, 0),
                    RawDesc::writable(r, 1024),
                ],
            ),
            2 => (
                "wrong directions",
                vec![RawDesc::writable(r, 1024), RawDesc::readable(q, n)],
            ),
            3 => (
                "too-small response buffer",
                vec![
                    RawDesc::readable(q, n),
                    RawDesc::writable(r, rng.below(24) as u32),
                ],
            ),
            4 => {
                let resp: Vec<VirtqDesc> = (0..4)
                    .map(|k| VirtqDesc {
                        addr: r + 256 * k,
                        len: 256,
                        flags: VRING_DESC_F_WRITE | if k < 3 { VRING_DESC_F_NEXT } else { 0 },
                        next: (k + 2) as u16,
                    })
                    .collect();
                let mut t = vec![VirtqDesc {
                    addr: q,
                    len: n,
                    flags: VRING_DESC_F_NEXT,
                    next: 1,
                }];
                t.extend(resp);
                let addr = table(c, &t);
                (
                    "indirect table (response split in 4)",
                    vec![RawDesc {
                        addr,
                        len: 16 * t.len() as u32,
                        flags: VRING_DESC_F_INDIRECT,
                        link: Link::Auto,
                    }],
                )
            }
            5 => {
                // An indirect table longer than the ring.
                let len = ring + 1 + rng.below(16) as u32;
                let mut t: Vec<VirtqDesc> = (0..len)
                    .map(|k| VirtqDesc {
                        addr: q,
                        len: 0,
                        flags: VRING_DESC_F_NEXT,
                        next: (k + 1) as u16,
                    })
                    .collect();
                t[0].len = n;
                let last = t.len() - 1;
                t[last] = VirtqDesc {
                    addr: r,
                    len: 1024,
                    flags: VRING_DESC_F_WRITE,
                    next: 0,
                };
                let addr = table(c, &t);
                (
                    "indirect table longer than the ring",
                    vec![RawDesc {
                        addr,
                        len: 16 * len,
                        flags: VRING_DESC_F_INDIRECT,
                        link: Link::Auto,
                    }],
                )
            }
            6 => {
                // A loop inside an indirect table.
                let t = [
                    VirtqDesc {
                        addr: q,
                        len: n,
                        flags: VRING_DESC_F_NEXT,
                        next: 1,
                    },
                    VirtqDesc {
                        addr: r,
                        len: 1024,
                        flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                        next: 0,
                    },
                ];
                let addr = table(c, &t);
                (
                    "indirect table with a loop",
                    vec![RawDesc {
                        addr,
                        len: 32,
                        flags: VRING_DESC_F_INDIRECT,
                        link: Link::Auto,
                    }],
                )
            }
            7 => {
                // A nested indirect descriptor.
                let inner = table(
                    c,
                    &[VirtqDesc {
                        addr: q,
                        len: n,
                        flags: 0,
                        next: 0,
                    }],
                );
                let t = [
                    VirtqDesc {
                        addr: inner,
                        len: 16,
                        flags: VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT,
                        next: 1,
                    },
                    VirtqDesc {
                        addr: r,
                        len: 1024,
                        flags: VRING_DESC_F_WRITE,
                        next: 0,
                    },
                ];
                let addr = table(c, &t);
                (
                    "nested indirect table",
                    vec![RawDesc {
                        addr,
                        len: 32,
                        flags: VRING_DESC_F_INDIRECT,
                        link: Link::Auto,
                    }],
                )
            }
            8 => (
                "descriptors outside memory",
                vec![
                    RawDesc::readable(rng.edge64(mem_end).max(mem_end), n),
                    RawDesc::writable(rng.edge64(mem_end).max(mem_end), 1024),
                ],
            ),
            _ => (
                "next loop in the descriptor table",
                vec![
                    RawDesc::readable(q, n),
                    RawDesc {
                        link: Link::To(0),
                        ..RawDesc::writable(r, 1024)
                    },
                ],
            ),
        };
        let writable: u64 = descs
            .iter()
            .filter(|d| d.flags & VRING_DESC_F_WRITE != 0)
            .map(|d| u64::from(d.len))
            .sum::<u64>()
            // The indirect tables (kinds 4 to 7) hold 1024 writable bytes.
            .max(if (4..=7).contains(&kind) { 1024 } else { 0 });
        c.conn.mem.fill(r, 0xee, 4096).unwrap();
        let head = c.post_raw(CTRL_QUEUE, &descs).unwrap();
        let used = c
            .wait_any(CTRL_QUEUE, T)
            .unwrap_or_else(|e| panic!("chain {i} ({what}) never returned: {e}"));
        assert_eq!(used.id, u32::from(head), "chain {i} ({what}): used id");
        assert!(
            u64::from(used.len) <= writable,
            "chain {i} ({what}): used len {} > writable {writable}",
            used.len
        );
        // Chains malformed at the virtqueue level that still have room get ERR_UNSPEC.
        if matches!(kind, 2 | 7 | 9) && used.len >= 24 {
            let t = c.conn.mem.read_vec(r, 4).unwrap();
            let t = u32::from_le_bytes(t[..].try_into().unwrap());
            assert_eq!(t, VIRTIO_GPU_RESP_ERR_UNSPEC, "chain {i} ({what})");
        }
        // Well-formed chains carry a real answer. So do the indirect table longer than the ring
        // and the one whose last descriptor links back to the first: a table is walked at most
        // its own length (virtio-queue's bound, as in QEMU), which makes both the two or 257+
        // descriptors they hold.
        if matches!(kind, 0 | 1 | 4 | 5 | 6) {
            assert_eq!(
                used.len as usize,
                size_of::<RespDisplayInfo>(),
                "chain {i} ({what})"
            );
            let got = c.conn.mem.read_vec(r, used.len as usize).unwrap();
            let (h, _) = decode_response(&got).expect("answer");
            assert_eq!(
                h.type_, VIRTIO_GPU_RESP_OK_DISPLAY_INFO,
                "chain {i} ({what})"
            );
        }
        match seen.iter_mut().find(|(w, ..)| *w == what) {
            Some((_, k, max)) => {
                *k += 1;
                *max = (*max).max(used.len);
            }
            None => seen.push((what, 1, used.len)),
        }
        c.peer().skip_all();
    }
    seen
}

#[test]
fn hostile_guest_cannot_hurt_its_neighbour() {
    let dir = tempfile::Builder::new()
        .prefix("vgpu-hostile-")
        .tempdir()
        .unwrap();
    let neighbour_sock = dir.path().join("neighbour.sock");
    let spec = format!("socket={},type=vgpu-64m", neighbour_sock.display());
    let Some(backend) = Backend::vgpud_or_skip(&["--type", "vgpu-64m", "--vgpu", &spec]) else {
        return;
    };
    let seed = std::env::var("VGPU_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("hostile guest seed: {seed} (VGPU_HOSTILE_SEED={seed} reproduces this run)");

    // The neighbour works until told to stop, recording its round latencies.
    let stop = Arc::new(AtomicBool::new(false));
    let attacking = Arc::new(AtomicBool::new(false));
    let lat = Arc::new(Mutex::new(Latencies::default()));
    let mut neighbour = Worker::new(connect(&neighbour_sock, true));
    let neighbour_thread = {
        let (stop, attacking, lat) = (stop.clone(), attacking.clone(), lat.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let during = attacking.load(Ordering::Acquire);
                let d = neighbour.round();
                let mut l = lat.lock().unwrap();
                if during {
                    l.during.push(d);
                } else {
                    l.before.push(d);
                }
            }
            neighbour.round
        })
    };
    // A baseline of 20 rounds before the attack (a condition, with a generous deadline).
    let deadline = Instant::now() + Duration::from_secs(120);
    while lat.lock().unwrap().before.len() < 20 {
        assert!(
            Instant::now() < deadline,
            "neighbour made no progress before the attack"
        );
        assert!(
            !neighbour_thread.is_finished(),
            "neighbour failed before the attack"
        );
        thread::sleep(Duration::from_millis(20));
    }
    attacking.store(true, Ordering::Release);

    let mut rng = Rng(seed | 1);
    let mut hostile = connect(backend.socket(), false);
    let counts = random_requests(&mut hostile, &mut rng);
    eprintln!(
        "random requests: {RANDOM_REQUESTS} answered ({} OK, {} ERR, {} with no room for an answer)",
        counts[0], counts[1], counts[2]
    );
    assert!(counts[0] > 0 && counts[1] > 0, "{counts:?}");
    let seen = malformed_chains(&mut hostile, &mut rng);
    eprintln!("malformed chains, all returned (kind, count, largest used length):");
    for (what, n, max) in &seen {
        eprintln!("  {what}: {n}, {max}");
    }
    assert!(
        seen.len() >= 9,
        "every kind of malformed chain was sent: {seen:?}"
    );

    // The neighbour kept working during the attack (every round checked its own results).
    let deadline = Instant::now() + Duration::from_secs(120);
    while lat.lock().unwrap().during.len() < 5 {
        assert!(
            Instant::now() < deadline,
            "neighbour made no progress during the attack"
        );
        assert!(
            !neighbour_thread.is_finished(),
            "neighbour failed during the attack"
        );
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Release);
    let rounds = neighbour_thread
        .join()
        .expect("neighbour rounds all correct");
    {
        let l = lat.lock().unwrap();
        eprintln!("neighbour ({rounds} rounds, each a checked UPDATE and a checked SUBMIT_3D):");
        eprintln!("  {}", summary("before the attack", &l.before));
        eprintln!("  {}", summary("during the attack", &l.during));
    }

    // The hostile VM reconnects clean: a fresh connection works like a new VM's.
    drop(hostile);
    let mut again = Worker::new(connect(backend.socket(), true));
    for _ in 0..3 {
        again.round();
    }
    eprintln!("hostile VM reconnected: 3 checked rounds");
}
