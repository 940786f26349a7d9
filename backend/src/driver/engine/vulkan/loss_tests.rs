//! Device loss on the Vulkan engine, through the test-only fault hooks: the job on the lost
//! device fails with "device lost", a new device is made on the same physical device, every
//! partition and buffer stays usable with its contents zeroed, later jobs of every vGPU compute
//! the right results, the old device is destroyed, and the validation layer reports nothing.
//! When the device cannot be re-created, jobs fail with "device lost" (no panic) until it can.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::super::testing::{test_engines, vulkan_options, TestEngine};
use super::gpu::Gpu;
use super::{DeviceHealth, VulkanEngine};
use crate::driver::engine::EngineError;
use crate::driver::{
    BufRef, Device, DeviceBuffer, DeviceConfig, Job, JobFailure, JobResult, Op, Policy, Uuid, Vgpu,
};

const N: u64 = 50_000;

fn vulkan_device() -> Option<(Arc<Device>, Arc<Gpu>)> {
    // The loss and recovery log lines show with `--nocapture`.
    let _ = env_logger::builder()
        .is_test(true)
        .filter_level(log::LevelFilter::Info)
        .try_init();
    if !test_engines().contains(&TestEngine::Vulkan) {
        return None;
    }
    let engine = VulkanEngine::new(&vulkan_options()).unwrap();
    let gpu = engine.shared_gpu();
    let config = DeviceConfig {
        memory_mib: 256,
        policy: Policy::BestEffort,
        ..DeviceConfig::default()
    };
    Some((Device::with_engine(config, Box::new(engine)).unwrap(), gpu))
}

fn try_run(vgpu: &Arc<Vgpu>, ops: Vec<Op>) -> JobResult {
    let ch = vgpu.create_channel().unwrap();
    let (tx, rx) = mpsc::channel();
    ch.submit_fn(Job::new(ops).unwrap(), move |r| tx.send(r).unwrap())
        .unwrap();
    rx.recv_timeout(Duration::from_secs(120)).unwrap()
}

fn inputs(seed: u32) -> (Vec<f32>, Vec<f32>) {
    let x = (0..N)
        .map(|i| ((i as u32 ^ seed) % 1000) as f32 * 0.25 - 60.0)
        .collect();
    let y = (0..N)
        .map(|i| ((i as u32).wrapping_mul(seed) % 777) as f32 * 0.5)
        .collect();
    (x, y)
}

/// Writes fresh inputs into `x`, `y`, runs y = 1.5·x + y and checks it bit for bit.
fn axpy_checked(vgpu: &Arc<Vgpu>, x: &Arc<DeviceBuffer>, y: &Arc<DeviceBuffer>, seed: u32) {
    let (xs, ys) = inputs(seed);
    x.write_f32(0, &xs).unwrap();
    y.write_f32(0, &ys).unwrap();
    try_run(vgpu, vec![axpy(x, y)]).expect("axpy after the loss");
    let mut out = vec![0f32; N as usize];
    y.read_f32(0, &mut out).unwrap();
    for (i, ((&a, &b), &c)) in xs.iter().zip(&ys).zip(&out).enumerate() {
        assert_eq!((1.5f32 * a + b).to_bits(), c.to_bits(), "element {i}");
    }
}

fn axpy(x: &Arc<DeviceBuffer>, y: &Arc<DeviceBuffer>) -> Op {
    Op::AxpyF32 {
        n: N,
        alpha: 1.5,
        x: BufRef::new(x, 0),
        y: BufRef::new(y, 0),
    }
}

fn all_zero(b: &Arc<DeviceBuffer>) -> bool {
    let mut out = vec![1u8; b.size() as usize];
    b.read(0, &mut out).unwrap();
    out.iter().all(|&v| v == 0)
}

#[test]
fn a_lost_device_is_recreated_and_every_vgpu_keeps_working() {
    let Some((dev, gpu)) = vulkan_device() else {
        return;
    };
    let a = dev.create_vgpu("vgpu-64m", Uuid::from_u128(1)).unwrap();
    let b = dev.create_vgpu("vgpu-64m", Uuid::from_u128(2)).unwrap();
    let (xa, ya) = (
        a.alloc_buffer(N * 4).unwrap(),
        a.alloc_buffer(N * 4).unwrap(),
    );
    let (xb, yb) = (
        b.alloc_buffer(N * 4).unwrap(),
        b.alloc_buffer(N * 4).unwrap(),
    );
    axpy_checked(&a, &xa, &ya, 3);
    axpy_checked(&b, &xb, &yb, 5);
    let (used_a, used_b) = (a.stats().framebuffer_used, b.stats().framebuffer_used);
    let old = Arc::downgrade(gpu.read().ctx());
    assert_eq!(gpu.health(), DeviceHealth::default());

    // A VM thread keeps writing and reading a buffer of the other partition through the loss:
    // its accesses wait for the switch and go on (no error, no deadlock).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let (stop, zb) = (Arc::clone(&stop), b.alloc_buffer(1 << 20).unwrap());
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                zb.write(4096, &[7u8; 8192]).unwrap();
                zb.read(0, &mut [0u8; 16384]).unwrap();
                rounds += 1;
            }
            rounds
        })
    };
    gpu.inject_device_lost();
    let failed = try_run(&a, vec![axpy(&xa, &ya)]);
    assert_eq!(
        failed.map(|_| ()),
        Err(JobFailure::Engine(EngineError::DeviceLost))
    );
    // The engine reset after the failed job re-created the device.
    assert_eq!(
        gpu.health(),
        DeviceHealth {
            losses: 1,
            recoveries: 1,
            generation: 1
        }
    );
    stop.store(true, std::sync::atomic::Ordering::Release);
    assert!(busy.join().unwrap() > 0);
    // The device-level stats (`vgpud ctl stats`, /metrics) count it too.
    assert_eq!(dev.engine_health(), gpu.health());
    // Every buffer of every partition is still there, zeroed, and charged as before.
    for buf in [&xa, &ya, &xb, &yb] {
        assert!(all_zero(buf), "buffer {} reads zeros", buf.id());
    }
    assert_eq!(
        (a.stats().framebuffer_used, b.stats().framebuffer_used),
        (used_a, used_b)
    );
    // Later jobs on the same and on the other partition compute the right results.
    axpy_checked(&a, &xa, &ya, 7);
    axpy_checked(&b, &xb, &yb, 11);
    // New buffers come from the new device, zeroed.
    let fresh = b.alloc_buffer(4096).unwrap();
    assert!(all_zero(&fresh));
    // The engine left the old device: nothing holds it, so it is destroyed.
    assert!(old.upgrade().is_none(), "the lost device is destroyed");
    TestEngine::Vulkan.assert_no_validation_errors();
    drop(fresh);
    dev.shutdown();
}

#[test]
fn a_device_that_cannot_be_recreated_fails_jobs_until_it_can() {
    let Some((dev, gpu)) = vulkan_device() else {
        return;
    };
    let a = dev.create_vgpu("vgpu-64m", Uuid::from_u128(3)).unwrap();
    let (x, y) = (
        a.alloc_buffer(N * 4).unwrap(),
        a.alloc_buffer(N * 4).unwrap(),
    );
    gpu.fail_recreate
        .store(true, std::sync::atomic::Ordering::Release);
    gpu.inject_device_lost();
    for _ in 0..3 {
        let r = try_run(&a, vec![axpy(&x, &y)]);
        assert_eq!(
            r.map(|_| ()),
            Err(JobFailure::Engine(EngineError::DeviceLost))
        );
    }
    // Host access fails with a clear error too, and allocation does.
    let err = x.read(0, &mut [0u8; 4]).unwrap_err();
    assert!(err.to_string().contains("device lost"), "{err}");
    assert!(a.alloc_buffer(4096).is_err());
    let h = gpu.health();
    assert_eq!((h.losses, h.recoveries, h.generation), (1, 0, 0));

    // Once the device can be made again, the next attempt (at most one a second) succeeds.
    gpu.fail_recreate
        .store(false, std::sync::atomic::Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match try_run(&a, vec![axpy(&x, &y)]) {
            Ok(_) => break,
            Err(JobFailure::Engine(EngineError::DeviceLost)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => panic!("after the device came back: {other:?}"),
        }
    }
    assert_eq!(
        gpu.health(),
        DeviceHealth {
            losses: 1,
            recoveries: 1,
            generation: 1
        }
    );
    axpy_checked(&a, &x, &y, 13);
    TestEngine::Vulkan.assert_no_validation_errors();
    dev.shutdown();
}

/// Names and seccomp modes of this process's threads, by thread id.
fn threads() -> Vec<(u32, String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let tid = task.file_name().to_string_lossy().parse().unwrap_or(0);
        out.push((tid, field("Name:"), field("Seccomp:").parse().unwrap_or(0)));
    }
    out
}

/// The driver's threads: the driver thread and what it created (lavapipe's `llvmpipe-N` and the
/// unnamed ones that keep its name).
fn driver_threads() -> Vec<(u32, String, u32)> {
    threads()
        .into_iter()
        .filter(|(_, n, _)| n.starts_with("vgpu-vkdriver") || n.starts_with("llvmpipe"))
        .collect()
}

const CHILD_ENV: &str = "VGPU_DRIVER_SANDBOX_CHILD";

/// With the sandbox on, the Vulkan driver thread and every thread the driver creates — at
/// start-up and again when the device is re-created after a loss — run under the driver's
/// seccomp filter. Runs in a child process of this test binary, as the driver sandbox is
/// process-wide.
#[test]
fn driver_threads_run_filtered_also_after_a_device_loss() {
    if !test_engines().contains(&TestEngine::Vulkan) {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "driver::engine::vulkan::loss_tests::driver_sandbox_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran the test:\n{text}");
}

/// The body of [`driver_threads_run_filtered_also_after_a_device_loss`] (only in its child).
#[test]
#[ignore = "run by driver_threads_run_filtered_also_after_a_device_loss in a child process"]
fn driver_sandbox_child() {
    if std::env::var(CHILD_ENV).as_deref() != Ok("1") {
        // Run with --ignored outside its parent: the driver sandbox would be process-wide here.
        eprintln!("note: driver_sandbox_child runs only in its parent's child process");
        return;
    }
    crate::sandbox::configure_driver(crate::sandbox::SandboxMode::On);
    let (dev, gpu) = vulkan_device().expect("a Vulkan device");
    let a = dev.create_vgpu("vgpu-64m", Uuid::from_u128(9)).unwrap();
    let (x, y) = (
        a.alloc_buffer(N * 4).unwrap(),
        a.alloc_buffer(N * 4).unwrap(),
    );
    axpy_checked(&a, &x, &y, 17);
    let before = driver_threads();
    eprintln!("driver threads before the loss: {before:?}");
    assert!(before.iter().any(|(_, n, _)| n == "vgpu-vkdriver"));
    assert!(before.iter().all(|&(_, _, mode)| mode == 2), "{before:?}");

    gpu.inject_device_lost();
    let r = try_run(&a, vec![axpy(&x, &y)]);
    assert_eq!(
        r.map(|_| ()),
        Err(JobFailure::Engine(EngineError::DeviceLost))
    );
    axpy_checked(&a, &x, &y, 19);
    assert_eq!(gpu.health().recoveries, 1);
    let after = driver_threads();
    eprintln!("driver threads after the re-creation: {after:?}");
    assert!(after.iter().all(|&(_, _, mode)| mode == 2), "{after:?}");
    // lavapipe keeps its llvmpipe-N threads with the physical device, and starts a queue thread
    // per logical device: the re-created device's is new, made by the driver thread.
    let old: Vec<u32> = before.iter().map(|t| t.0).collect();
    assert!(
        after.iter().any(|(tid, _, _)| !old.contains(tid)),
        "the re-created device started threads of its own"
    );
    TestEngine::Vulkan.assert_no_validation_errors();
    dev.shutdown();
}

/// A fence wait that runs out is treated as a hung device: the job fails with the timeout, the
/// device is re-created once the work still on it ended, and the vGPU computes again.
#[test]
fn a_fence_timeout_recreates_the_device_too() {
    let Some((dev, gpu)) = vulkan_device() else {
        return;
    };
    let a = dev.create_vgpu("vgpu-64m", Uuid::from_u128(4)).unwrap();
    let (x, y) = (
        a.alloc_buffer(N * 4).unwrap(),
        a.alloc_buffer(N * 4).unwrap(),
    );
    gpu.read()
        .ctx()
        .time_out_next_wait
        .store(true, std::sync::atomic::Ordering::Release);
    let r = try_run(&a, vec![axpy(&x, &y)]);
    assert!(
        matches!(r, Err(JobFailure::Engine(EngineError::Timeout(_)))),
        "{r:?}"
    );
    let h = gpu.health();
    assert_eq!((h.losses, h.recoveries, h.generation), (1, 1, 1));
    assert!(all_zero(&y));
    axpy_checked(&a, &x, &y, 23);
    TestEngine::Vulkan.assert_no_validation_errors();
    dev.shutdown();
}

/// A guest module launch: `grid.spv` writes, per workgroup, the grid it sees and its index.
fn grid_launch(vgpu: &Arc<Vgpu>, out: &Arc<DeviceBuffer>, groups: [u32; 3]) -> Op {
    use crate::driver::module::{BoundRange, Dispatch, GuestModule, ModuleShape};
    use crate::driver::spirv;
    const GRID: &[u8] = include_bytes!("../../spirv/testdata/grid.spv");
    let words: Vec<u32> = GRID
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    let compiler = vgpu
        .module_compiler()
        .expect("the Vulkan engine compiles modules");
    let prepared = spirv::prepare(&words, "main", &compiler.limits()).unwrap();
    let compiled = compiler.compile(&prepared).unwrap();
    let charge = vgpu.partition().charge_guard(4096).unwrap();
    let module = Arc::new(GuestModule::new(
        ModuleShape::of(&prepared),
        compiled,
        vgpu.id(),
        charge,
    ));
    let mut bindings: [Option<BoundRange>; 8] = Default::default();
    bindings[0] = Some(BoundRange {
        at: BufRef::new(out, 0),
        len: out.size(),
    });
    Op::Dispatch(Box::new(Dispatch {
        module,
        groups,
        bindings,
        push: [0; 128],
    }))
}

fn grid_checked(out: &Arc<DeviceBuffer>, groups: [u32; 3]) {
    let cells = groups.iter().product::<u32>() as usize;
    let mut words = vec![0u8; cells * 16];
    out.read(0, &mut words).unwrap();
    for (i, cell) in words.chunks_exact(16).enumerate() {
        let w: Vec<u32> = cell
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(
            w,
            [groups[0], groups[1], groups[2], i as u32],
            "workgroup {i}"
        );
    }
}

#[test]
fn a_guest_module_compiled_before_a_loss_runs_after_it() {
    let Some((dev, gpu)) = vulkan_device() else {
        return;
    };
    let a = dev.create_vgpu("vgpu-64m", Uuid::from_u128(1)).unwrap();
    let out = a.alloc_buffer(64 << 10).unwrap();
    let groups = [6, 4, 3];
    let op = grid_launch(&a, &out, groups);
    try_run(&a, vec![op.clone()]).expect("launch before the loss");
    grid_checked(&out, groups);
    gpu.inject_device_lost();
    let failed = try_run(&a, vec![op.clone()]);
    assert_eq!(
        failed.map(|_| ()),
        Err(JobFailure::Engine(EngineError::DeviceLost))
    );
    assert_eq!(gpu.health().recoveries, 1);
    // The same module (compiled on the lost device) is rebuilt on the new one and runs.
    try_run(&a, vec![op]).expect("launch after the loss");
    grid_checked(&out, groups);
    TestEngine::Vulkan.assert_no_validation_errors();
    dev.shutdown();
}
