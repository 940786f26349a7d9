//! Vulkan engine tests against the CPU reference (run when a Vulkan device opens; required
//! under `scripts/test.sh`): every kernel, copies and fills at odd offsets, memmove, buffers
//! larger than `maxStorageBufferRange`, the staging path, and zero validation errors.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::super::testing::{test_engines, vulkan_options, TestEngine};
use super::{VulkanEngine, VulkanOptions};
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
    dev.shutdown();
    result
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
