//! Vulkan engine tests against the CPU reference (run when a Vulkan device opens; required
//! under `scripts/test.sh`): every kernel, copies and fills at odd offsets, memmove, buffers
//! larger than `maxStorageBufferRange`, the staging path, and zero validation errors.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::super::testing::{test_engines, vulkan_options, TestEngine};
use super::{VulkanEngine, VulkanOptions, MAX_PIPELINE_DEPTH};
use crate::driver::engine::cpu::CpuEngine;
use crate::driver::engine::DynEngine;
use crate::driver::{
    BufRef, Device, DeviceBuffer, DeviceConfig, Job, JobReport, Op, Policy, Uuid, Vgpu, MIB,
};

fn vulkan_available() -> bool {
    test_engines().contains(&TestEngine::Vulkan)
}

fn device(engine: Box<dyn DynEngine>, memory_mib: u64) -> Arc<Device> {
    let config = DeviceConfig {
        memory_mib,
        policy: Policy::BestEffort,
        ..DeviceConfig::default()
    };
    Device::with_engine(config, engine).unwrap()
}

fn run(vgpu: &Arc<Vgpu>, ops: Vec<Op>) -> JobReport {
    let ch = vgpu.create_channel().unwrap();
    let (tx, rx) = mpsc::channel();
    ch.submit_fn(Job::new(ops).unwrap(), move |r| tx.send(r).unwrap())
        .unwrap();
    rx.recv_timeout(Duration::from_secs(120)).unwrap().unwrap()
}

/// Deterministic pseudo-random bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Floats in [-1, 1).
fn floats(seed: u64, len: usize) -> Vec<f32> {
    noise(seed, len * 2)
        .chunks(2)
        .map(|c| (f32::from(u16::from_le_bytes([c[0], c[1]])) / 32768.0) - 1.0)
        .collect()
}

fn read_all(buf: &Arc<DeviceBuffer>) -> Vec<u8> {
    let mut out = vec![0u8; buf.size() as usize];
    buf.read(0, &mut out).unwrap();
    out
}

/// One job of every operation, run on `engine`; returns the buffers' bytes afterwards.
fn mixed_job(engine: Box<dyn DynEngine>) -> Vec<Vec<u8>> {
    mixed_job_in_flight(engine).0
}

/// [`mixed_job`], with the most submissions the engine had in flight at once.
fn mixed_job_in_flight(engine: Box<dyn DynEngine>) -> (Vec<Vec<u8>>, usize) {
    let dev = device(engine, 256);
    let vgpu = dev.create_vgpu("vgpu-64m", Uuid::from_u128(1)).unwrap();
    let (m, n, k) = (70u32, 45u32, 33u32);
    let a = vgpu.alloc_buffer(u64::from(m * k) * 4 + 12).unwrap();
    let b = vgpu.alloc_buffer(u64::from(k * n) * 4).unwrap();
    let c = vgpu.alloc_buffer(u64::from(m * n) * 4 + 4).unwrap();
    let x = vgpu.alloc_buffer(200_003 * 4).unwrap();
    let y = vgpu.alloc_buffer(200_003 * 4 + 8).unwrap();
    let bytes = vgpu.alloc_buffer(300_001).unwrap();
    let out = vgpu.alloc_buffer(64).unwrap();
    a.write_f32(12, &floats(1, (m * k) as usize)).unwrap();
    b.write_f32(0, &floats(2, (k * n) as usize)).unwrap();
    c.write_f32(0, &floats(3, (m * n) as usize)).unwrap();
    x.write_f32(0, &floats(4, 200_003)).unwrap();
    y.write_f32(8, &floats(5, 200_003)).unwrap();
    bytes.write(0, &noise(6, 300_001)).unwrap();
    let ops = vec![
        Op::GemmF32 {
            m,
            n,
            k,
            alpha: 0.75,
            beta: -0.5,
            a: BufRef::new(&a, 12),
            b: BufRef::new(&b, 0),
            c: BufRef::new(&c, 0),
        },
        Op::AxpyF32 {
            n: 200_003,
            alpha: 1.3,
            x: BufRef::new(&x, 0),
            y: BufRef::new(&y, 8),
        },
        Op::ReduceSumF32 {
            n: 200_003,
            x: BufRef::new(&y, 8),
            out: BufRef::new(&out, 0),
        },
        Op::Crc32c {
            src: BufRef::new(&bytes, 3),
            len: 299_990,
            out: BufRef::new(&out, 4),
        },
        Op::Crc32c {
            src: BufRef::new(&bytes, 1),
            len: 5,
            out: BufRef::new(&out, 8),
        },
        // Unaligned fills and copies, a memmove up and one down in one buffer.
        Op::Fill {
            dst: BufRef::new(&out, 13),
            len: 37,
            pattern: 0xA1B2_C3D4,
        },
        Op::Copy {
            src: BufRef::new(&bytes, 5),
            dst: BufRef::new(&bytes, 1000),
            len: 150_001,
        },
        Op::Copy {
            src: BufRef::new(&bytes, 200_000),
            dst: BufRef::new(&bytes, 199_003),
            len: 99_000,
        },
        Op::Copy {
            src: BufRef::new(&a, 12),
            dst: BufRef::new(&out, 51),
            len: 13,
        },
    ];
    run(&vgpu, ops);
    let result = [&a, &b, &c, &x, &y, &bytes, &out]
        .iter()
        .map(|b| read_all(b))
        .collect();
    let in_flight = dev.engine_max_in_flight();
    dev.shutdown();
    (result, in_flight)
}

fn as_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn check_against_cpu(vk: &[Vec<u8>], cpu: &[Vec<u8>]) {
    // a, b, x: inputs, unchanged. bytes: copies and memmoves, exact.
    for i in [0, 1, 3, 5] {
        assert!(vk[i] == cpu[i], "buffer {i} differs");
    }
    // axpy: bit-identical.
    assert!(vk[4] == cpu[4], "axpy result differs");
    // gemm: within 2·k·2⁻²⁴·Σ|αab| + rounding of β·c, bounded here with |a|,|b| < 1.
    let (gv, gc) = (as_f32(&vk[2]), as_f32(&cpu[2]));
    let bound = 2.0 * 33.0 * 0.75 * 33.0 * f32::EPSILON + 4.0 * f32::EPSILON;
    for (i, (v, c)) in gv.iter().zip(&gc).enumerate() {
        assert!((v - c).abs() <= bound, "gemm[{i}]: {v} vs {c}");
    }
    let (ov, oc) = (as_f32(&vk[6]), as_f32(&cpu[6]));
    // reduce: |s - s_ref| ≤ 24·2⁻²⁴·Σ|x| (Σ|x| < 2.3·n here) plus the final rounding.
    let bound = 24.0 / 16_777_216.0 * 2.3 * 200_003.0 + oc[0].abs() * f32::EPSILON;
    assert!(
        (ov[0] - oc[0]).abs() <= bound,
        "reduce {} vs {}",
        ov[0],
        oc[0]
    );
    // crc32c, fills and the copy into `out`: exact.
    assert_eq!(vk[6][4..], cpu[6][4..]);
}

#[test]
fn every_op_matches_the_cpu_reference() {
    if !vulkan_available() {
        return;
    }
    let cpu = mixed_job(Box::new(CpuEngine::default()));
    let vk = mixed_job(Box::new(VulkanEngine::new(&vulkan_options()).unwrap()));
    check_against_cpu(&vk, &cpu);
    // The same through staging buffers (memory treated as not host-visible).
    let staged = VulkanOptions {
        force_staging: true,
        ..vulkan_options()
    };
    let vk = mixed_job(Box::new(VulkanEngine::new(&staged).unwrap()));
    check_against_cpu(&vk, &cpu);
    TestEngine::Vulkan.assert_no_validation_errors();
}

/// A Vulkan engine with `depth` pieces in flight and tiny chunk targets (many pieces per op).
fn pipelined(depth: usize) -> Box<dyn DynEngine> {
    Box::new(
        VulkanEngine::new(&VulkanOptions {
            pipeline_depth: depth,
            chunk_target_ns: 10_000,
            ..vulkan_options()
        })
        .unwrap(),
    )
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn pieces_are_pipelined_and_results_still_match_the_cpu() {
    if !vulkan_available() {
        return;
    }
    let cpu = mixed_job(Box::new(CpuEngine::default()));
    let (vk, _) = mixed_job_in_flight(pipelined(MAX_PIPELINE_DEPTH));
    check_against_cpu(&vk, &cpu);
    // A long op is cut into many pieces, several on the device at once; its result is exact.
    let dev = device(pipelined(MAX_PIPELINE_DEPTH), 128);
    let v = dev.create_vgpu("vgpu-64m", Uuid::from_u128(7)).unwrap();
    let src = v.alloc_buffer(32 * MIB).unwrap();
    let out = v.alloc_buffer(4).unwrap();
    let data = noise(9, 32 << 20);
    src.write(0, &data).unwrap();
    let report = run(
        &v,
        vec![Op::Crc32c {
            src: BufRef::new(&src, 0),
            len: 32 * MIB,
            out: BufRef::new(&out, 0),
        }],
    );
    let mut crc = [0u8; 4];
    out.read(0, &mut crc).unwrap();
    assert_eq!(u32::from_ne_bytes(crc), crc32c::crc32c(&data));
    let in_flight = dev.engine_max_in_flight();
    assert!(
        (2..=MAX_PIPELINE_DEPTH).contains(&in_flight),
        "{in_flight} submission(s) in flight at most, over {} chunks",
        report.chunks
    );
    dev.shutdown();
    // Depth 1 is the old submit-and-wait: never more than one in flight, same results.
    let (vk, in_flight) = mixed_job_in_flight(pipelined(1));
    check_against_cpu(&vk, &cpu);
    assert_eq!(in_flight, 1);
    TestEngine::Vulkan.assert_no_validation_errors();
}

#[test]
fn preempted_ops_settle_their_pieces_and_stay_exact() {
    // Two vGPUs run long crc32c and axpy ops at once with tiny chunks: every turn ends with
    // pieces in flight, which are settled (and charged) before the other vGPU runs. The partial
    // results folded across preemptions must still be exact.
    if !vulkan_available() {
        return;
    }
    const LEN: usize = 8 << 20;
    let dev = device(pipelined(3), 256);
    let vgpus: Vec<_> = (0..2)
        .map(|i| {
            dev.create_vgpu("vgpu-64m", Uuid::from_u128(10 + i))
                .unwrap()
        })
        .collect();
    let mut pending = Vec::new();
    for (i, v) in vgpus.iter().enumerate() {
        let src = v.alloc_buffer(LEN as u64).unwrap();
        let x = v.alloc_buffer(LEN as u64).unwrap();
        let y = v.alloc_buffer(LEN as u64).unwrap();
        let out = v.alloc_buffer(4).unwrap();
        let data = noise(40 + i as u64, LEN);
        src.write(0, &data).unwrap();
        let xs = floats(45 + i as u64, LEN / 4);
        x.write_f32(0, &xs).unwrap();
        let ys = floats(50 + i as u64, LEN / 4);
        y.write_f32(0, &ys).unwrap();
        let ch = v.create_channel().unwrap();
        let (tx, rx) = mpsc::channel();
        let ops = vec![
            Op::Crc32c {
                src: BufRef::new(&src, 0),
                len: LEN as u64,
                out: BufRef::new(&out, 0),
            },
            Op::AxpyF32 {
                n: (LEN / 4) as u64,
                alpha: 0.5,
                x: BufRef::new(&x, 0),
                y: BufRef::new(&y, 0),
            },
        ];
        ch.submit_fn(Job::new(ops).unwrap(), move |r| tx.send(r).unwrap())
            .unwrap();
        pending.push((ch, rx, (src, x), y, out, data, (xs, ys)));
    }
    for (_ch, rx, _inputs, y, out, data, (xs, ys)) in &pending {
        rx.recv_timeout(Duration::from_secs(120)).unwrap().unwrap();
        let mut crc = [0u8; 4];
        out.read(0, &mut crc).unwrap();
        assert_eq!(u32::from_ne_bytes(crc), crc32c::crc32c(data));
        let mut got = vec![0f32; ys.len()];
        y.read_f32(0, &mut got).unwrap();
        for (i, ((g, x), y0)) in got.iter().zip(xs).zip(ys).enumerate() {
            // Bit-identical to the CPU reference (no FMA contraction).
            let want = 0.5f32 * *x + *y0;
            assert_eq!(g.to_bits(), want.to_bits(), "axpy[{i}]: {g} vs {want}");
        }
    }
    let log = dev.scheduler_log();
    for v in &vgpus {
        assert!(
            log.iter().any(|r| r.vgpu_id == v.id() && r.preempted),
            "vGPU {} was never preempted",
            v.id()
        );
    }
    assert!(dev.engine_max_in_flight() >= 2);
    dev.shutdown();
    TestEngine::Vulkan.assert_no_validation_errors();
}

#[test]
fn a_destroyed_vgpus_buffers_are_freed_only_after_its_pieces_complete() {
    // A vGPU is destroyed while its fills are on the device. Its buffers (and its partition,
    // the whole device here) are handed on only once those pieces completed, so the next vGPU
    // gets the memory zeroed and nothing writes it afterwards; the validation layer would also
    // report a buffer destroyed while in use.
    if !vulkan_available() {
        return;
    }
    let dev = device(pipelined(3), 64);
    for round in 0..3u128 {
        let a = dev
            .create_vgpu("vgpu-64m", Uuid::from_u128(100 + round))
            .unwrap();
        let buf = a.alloc_buffer(48 * MIB).unwrap();
        let ch = a.create_channel().unwrap();
        for _ in 0..8 {
            let job = Job::single(Op::Fill {
                dst: BufRef::new(&buf, 0),
                len: 48 * MIB,
                pattern: 0xFFFF_FFFF,
            })
            .unwrap();
            ch.submit_fn(job, |_| {}).unwrap();
        }
        wait_until("the fills to start", || a.stats().busy_ns > 0);
        a.destroy();
        drop((ch, buf, a));
        // The partition comes back once the engine let go of the buffers.
        let mut c = None;
        wait_until("the partition to come back", || {
            c = dev
                .create_vgpu("vgpu-64m", Uuid::from_u128(200 + round))
                .ok();
            c.is_some()
        });
        let c = c.unwrap();
        let fresh = c.alloc_buffer(48 * MIB).unwrap();
        assert!(read_all(&fresh).iter().all(|&b| b == 0), "round {round}");
        // A job of the new vGPU runs after everything of the old one left the device.
        run(
            &c,
            vec![Op::Fill {
                dst: BufRef::new(&fresh, 0),
                len: 4,
                pattern: 0x0101_0101,
            }],
        );
        let bytes = read_all(&fresh);
        assert!(bytes[..4].iter().all(|&b| b == 1));
        assert!(
            bytes[4..].iter().all(|&b| b == 0),
            "round {round}: late write"
        );
        c.destroy();
    }
    dev.shutdown();
    TestEngine::Vulkan.assert_no_validation_errors();
}

#[test]
fn buffers_beyond_the_binding_range_are_windowed() {
    if !vulkan_available() {
        return;
    }
    let engine = VulkanEngine::new(&vulkan_options()).unwrap();
    let range = engine.ctx.limits.max_storage_buffer_range as u64;
    let mut types = vgpu_mdev::TypeTable::builtin();
    let big = (2 * range + 64 * MIB).next_multiple_of(MIB);
    types
        .insert(vgpu_mdev::VgpuType::new("big", big + 8 * MIB, 1))
        .unwrap();
    let config = DeviceConfig {
        memory_mib: (big + 8 * MIB) / MIB,
        policy: Policy::BestEffort,
        types,
        ..DeviceConfig::default()
    };
    let dev = Device::with_engine(config, Box::new(engine)).unwrap();
    let vgpu = dev.create_vgpu("big", Uuid::from_u128(9)).unwrap();
    // Both operands past maxStorageBufferRange, at odd (but 4-aligned) offsets.
    let elems = range / 4 + 3_000_001;
    let x = vgpu.alloc_buffer(elems * 4 + 4).unwrap();
    let y = vgpu.alloc_buffer(elems * 4 + 4).unwrap();
    let out = vgpu.alloc_buffer(8).unwrap();
    let ops = vec![
        Op::Fill {
            dst: BufRef::new(&x, 4),
            len: elems * 4,
            pattern: 1.0f32.to_bits(),
        },
        Op::Fill {
            dst: BufRef::new(&y, 0),
            len: elems * 4,
            pattern: 2.0f32.to_bits(),
        },
        Op::AxpyF32 {
            n: elems,
            alpha: 3.0,
            x: BufRef::new(&x, 4),
            y: BufRef::new(&y, 0),
        },
        Op::ReduceSumF32 {
            n: elems,
            x: BufRef::new(&y, 0),
            out: BufRef::new(&out, 0),
        },
        Op::Crc32c {
            src: BufRef::new(&x, 4),
            len: elems * 4,
            out: BufRef::new(&out, 4),
        },
    ];
    let report = run(&vgpu, ops);
    assert!(report.chunks > 5);
    let mut tail = [0f32; 2];
    y.read_f32((elems - 2) * 4, &mut tail).unwrap();
    assert_eq!(tail, [5.0, 5.0]);
    let mut res = [0u8; 8];
    out.read(0, &mut res).unwrap();
    let sum = f32::from_ne_bytes([res[0], res[1], res[2], res[3]]);
    assert_eq!(sum, (5.0 * elems as f64) as f32);
    let ones: Vec<u8> = 1.0f32.to_ne_bytes().repeat(elems as usize);
    assert_eq!(
        u32::from_ne_bytes([res[4], res[5], res[6], res[7]]),
        crc32c::crc32c(&ones)
    );
    dev.shutdown();
    TestEngine::Vulkan.assert_no_validation_errors();
}

#[test]
fn caps_describe_the_device() {
    if !vulkan_available() {
        return;
    }
    let engine = VulkanEngine::new(&vulkan_options()).unwrap();
    let caps = crate::driver::engine::Engine::caps(&engine);
    assert_eq!(caps.kind.as_str(), "vulkan");
    assert!(!caps.device_name.is_empty());
    assert!(caps.device_memory_bytes > 0);
    assert!(caps.max_storage_buffer_range >= 1 << 27);
    assert!(engine.default_memory_bytes() < caps.device_memory_bytes);
    let list = super::list_devices().unwrap();
    assert!(list.iter().any(|d| d.name == caps.device_name && d.usable));
}

/// A GEMM whose tiles cost more than the chunk target runs in pieces smaller than a tile row (2-D
/// sub-grids within a row), and its result still matches the CPU engine's within the bound.
#[test]
fn gemm_pieces_split_tile_rows_when_a_row_is_too_long() {
    if !vulkan_available() {
        return;
    }
    let (m, n, k) = (32u32, 160u32, 4096u32);
    let gemm = |engine: Box<dyn DynEngine>| {
        let dev = device(engine, 256);
        let vgpu = dev.create_vgpu("vgpu-64m", Uuid::from_u128(7)).unwrap();
        let a = vgpu.alloc_buffer(u64::from(m * k) * 4).unwrap();
        let b = vgpu.alloc_buffer(u64::from(k * n) * 4).unwrap();
        let c = vgpu.alloc_buffer(u64::from(m * n) * 4).unwrap();
        a.write_f32(0, &floats(11, (m * k) as usize)).unwrap();
        b.write_f32(0, &floats(12, (k * n) as usize)).unwrap();
        run(
            &vgpu,
            vec![Op::GemmF32 {
                m,
                n,
                k,
                alpha: 1.0,
                beta: 0.0,
                a: BufRef::new(&a, 0),
                b: BufRef::new(&b, 0),
                c: BufRef::new(&c, 0),
            }],
        );
        let chunks: u32 = dev
            .scheduler_log()
            .iter()
            .filter(|r| r.vgpu_id == vgpu.id())
            .map(|r| r.chunks)
            .sum();
        let out = as_f32(&read_all(&c));
        dev.shutdown();
        (out, chunks)
    };
    let (cpu, _) = gemm(Box::<CpuEngine>::default());
    let (vk, pieces) = gemm(Box::new(
        VulkanEngine::new(&VulkanOptions {
            chunk_target_ns: 10_000,
            pipeline_depth: 1,
            ..vulkan_options()
        })
        .unwrap(),
    ));
    // Two tile rows of ten tiles: whole-row pieces would be at most two.
    assert!(pieces > 2, "{pieces} pieces: tile rows were not split");
    let bound = 2.0 * k as f32 * k as f32 * f32::EPSILON;
    for (i, (v, c)) in vk.iter().zip(&cpu).enumerate() {
        assert!((v - c).abs() <= bound, "gemm[{i}]: {v} vs {c}");
    }
    TestEngine::Vulkan.assert_no_validation_errors();
}
