//! Guest kernels from real guests: a program inside a stock Linux guest (Debian 6.12, TCG) loads
//! its own SPIR-V through the `vgpu` guest library and runs it on the host's Vulkan device
//! (lavapipe in CI), through stock QEMU and `vgpud --engine vulkan`.
//!
//! One guest: `vgpu-smi kbench` runs the three example kernels (reduce_sum, conv2d, softmax) and
//! verifies them against CPU references; hostile modules (the Kernel capability, physical
//! storage-buffer pointers, a module over 1 MiB, garbage) are refused with the host's reason
//! visible in the guest; an out-of-bounds writer leaves canaries (the rest of its buffer, the
//! other binding's buffer) untouched; a `while (true)` kernel fails with the loop-budget status;
//! the static C example verifies; the vGPU's stats count the refusals and the failure.
//!
//! Two guests, equal-share: both run the examples at once and verify; then one runs the infinite
//! loop again and again while the other's `vgpu-smi bench` keeps running and verifying.
//!
//! The guests run `tests/guest/scripts/guest-kernels.sh`. Needs what `two_guests.rs` needs plus
//! a Vulkan device (skipped without one unless `VGPU_REQUIRE_VULKAN=1`) and a C compiler for the
//! static C example. `VGPU_SKIP_GUEST=1` skips; `VGPU_KEEP_GUEST_DIR=1` keeps the logs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use vgpu_tests::guest::{
    repo_root, skip_requested, vgpu_smi_static, Backend, Guest, GuestAssets, GuestConfig,
    GuestGroup, Marker, WorkDir,
};

/// Guests boot one test at a time: TCG on a shared 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

const TYPES_TOML: &str = r#"
[[types]]
name = "gk-256"
framebuffer = "256M"
max_instances = 2
max_width = 1280
max_height = 800
weight = 1
"#;

/// Long deadlines (not sleeps): TCG guests on a loaded 2-core host.
const STEP: Duration = Duration::from_secs(400);

/// `SPIR-V magic, version 1.3, generator 0, bound 1, schema 0` and then OpNop words up to one
/// word more than the 1 MiB module limit.
fn oversized_module() -> Vec<u8> {
    let mut words: Vec<u32> = vec![0x0723_0203, 0x0001_0300, 0, 1, 0];
    words.resize((1 << 20) / 4 + 1, 0x0001_0000); // OpNop: word count 1, opcode 0
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// 4 KiB that are not SPIR-V.
fn garbage_module() -> Vec<u8> {
    (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// The static C example (`guest-tools/examples/c/build.sh`), built once per test process.
fn c_example() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = repo_root().join("guest-tools/examples/c/build.sh");
            let out = Command::new(&script)
                .current_dir(repo_root())
                .output()
                .map_err(|e| format!("{}: {e}", script.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "{} failed: {}",
                    script.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
        .clone()
        .unwrap_or_else(|e| panic!("static C example: {e}"))
}

/// The files every guest gets: the tools, the example and test modules.
fn guest_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let root = repo_root();
    let mut files = vec![
        (
            vgpu_smi_static().unwrap_or_else(|e| panic!("{e}")),
            "/bin/vgpu-smi".to_string(),
        ),
        (c_example(), "/bin/vgpu-reduce".to_string()),
    ];
    for name in ["reduce_sum", "conv2d", "softmax"] {
        files.push((
            root.join(format!("guest-tools/kernels/{name}.spv")),
            format!("/share/vgpu/{name}.spv"),
        ));
    }
    for name in [
        "kernel_capability",
        "physical_pointer",
        "oob_write",
        "infinite_loop",
    ] {
        files.push((
            root.join(format!("tests/guest/kernels/{name}.spv")),
            format!("/share/vgpu/{name}.spv"),
        ));
    }
    for (name, bytes) in [
        ("oversized", oversized_module()),
        ("garbage", garbage_module()),
    ] {
        let path = dir.join(format!("{name}.spv"));
        std::fs::write(&path, bytes).unwrap();
        files.push((path, format!("/share/vgpu/{name}.spv")));
    }
    files
}

/// One `vgpud --engine vulkan` with `count` vGPUs and a guest on each.
struct Vms {
    group: GuestGroup,
    _work: WorkDir,
}

impl std::ops::Deref for Vms {
    type Target = GuestGroup;
    fn deref(&self) -> &GuestGroup {
        &self.group
    }
}

impl std::ops::DerefMut for Vms {
    fn deref_mut(&mut self) -> &mut GuestGroup {
        &mut self.group
    }
}

impl Vms {
    fn start(name: &str, count: usize) -> Vms {
        let started = Instant::now();
        let assets = GuestAssets::locate().unwrap_or_else(|e| panic!("{e}"));
        let work = WorkDir::new(name).unwrap();
        let dir = work.path().to_path_buf();
        let initrd = dir.join("initrd.gz");
        assets
            .build_initramfs(
                Path::new("scripts/guest-kernels.sh"),
                &guest_files(&dir),
                &initrd,
            )
            .unwrap();
        let types = dir.join("types.toml");
        std::fs::write(&types, TYPES_TOML).unwrap();
        let sockets: Vec<PathBuf> = (0..count)
            .map(|i| dir.join(format!("vm{i}.sock")))
            .collect();
        let mut args: Vec<String> = [
            "--types",
            &types.display().to_string(),
            "--device-memory",
            "1024",
            "--policy",
            "equal-share",
            "--engine",
            "vulkan",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for socket in &sockets {
            args.push("--vgpu".into());
            args.push(format!("socket={},type=gk-256", socket.display()));
        }
        let backend = Backend::spawn_vgpud(
            &args,
            &sockets,
            &dir.join("backend.log"),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut guests = Vec::new();
        for (i, socket) in sockets.iter().enumerate() {
            let gdir = dir.join(format!("vm{i}"));
            std::fs::create_dir_all(&gdir).unwrap();
            guests.push(Guest::boot(&assets, &GuestConfig::new(&initrd, socket, &gdir)).unwrap());
        }
        let mut vms = Vms {
            group: GuestGroup::new(guests, backend, started, STEP, 40),
            _work: work,
        };
        for i in 0..count {
            let m = vms.wait(i, "render-node");
            vms.expect_pass(i, &m);
        }
        eprintln!(
            "[{name}] {count} guest(s) up after {:.1}s",
            vms.started.elapsed().as_secs_f32()
        );
        vms
    }

    /// The `kbench-case` INFO markers guest `i` printed so far.
    fn kbench_cases(&self, i: usize) -> Vec<Marker> {
        self.guests[i]
            .markers()
            .iter()
            .filter(|m| m.name == "kbench-case")
            .cloned()
            .collect()
    }

    fn finish(mut self) {
        self.group.finish();
        vgpu_tests::engines::assert_no_validation_errors(&self.backend.log_text());
        eprintln!("total {:.1}s", self.started.elapsed().as_secs_f32());
    }
}

/// Skips without QEMU (VGPU_SKIP_GUEST=1) or without a Vulkan device (unless required).
fn guard(what: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    if skip_requested() {
        eprintln!("VGPU_SKIP_GUEST=1: skipping {what}");
        return None;
    }
    if !vgpu_tests::engines::engines().contains(&"vulkan") {
        eprintln!("no Vulkan engine: skipping {what} (guest modules run on the Vulkan engine)");
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

fn print_cases(cases: &[Marker]) {
    for c in cases {
        eprintln!("  kbench {}", c.detail);
    }
}

/// The examples verify, hostile modules are refused with the host's reason, out-of-bounds
/// writes do not land, an infinite loop fails with the loop-budget status, the C example runs.
#[test]
fn guest_kernels_in_a_real_guest() {
    let Some(_one_at_a_time) = guard("the guest-kernel test") else {
        return;
    };
    let mut vms = Vms::start("guest-kernels", 1);
    let smi = vms.one(0, "smi", "smi");
    eprintln!("smi: {}", smi.detail);
    assert_eq!(smi.field("engine"), Some("vulkan"), "{smi:?}");
    assert_eq!(smi.field("modules"), Some("true"), "{smi:?}");
    let budget = smi.num("loop_budget");
    assert!(budget >= 1.0, "{smi:?}");
    let refused_before = smi.num("refused");

    // The examples at every size, verified in the guest.
    let kb = vms.one(0, "kbench --launches 3", "kbench");
    let cases = vms.kbench_cases(0);
    print_cases(&cases);
    assert_eq!(kb.num("cases"), 9.0, "{kb:?}");
    assert_eq!(cases.len(), 9, "{cases:#?}");
    for c in &cases {
        assert_eq!(c.field("verified"), Some("true"), "{c:?}");
        assert!(c.num("err_ratio") <= 1.0, "{c:?}");
    }

    // Hostile modules: refused (exit 8) with the host's reason in the guest.
    let hostile = [
        ("kernel", "kernel_capability", &["Kernel", "Addresses"][..]),
        (
            "pointer",
            "physical_pointer",
            &["PhysicalStorage", "physical_st"][..],
        ),
        ("oversized", "oversized", &["size"][..]),
        ("garbage", "garbage", &["SPIR-V"][..]),
    ];
    for (name, file, words) in hostile {
        let m = vms.one(
            0,
            &format!("refuse {name} /share/vgpu/{file}.spv"),
            &format!("refuse-{name}"),
        );
        eprintln!("refuse {name}: {}", m.detail);
        assert!(
            m.detail.contains("the_host_refused_the_module:"),
            "{name}: {m:?}"
        );
        assert!(
            words.iter().any(|w| m.detail.contains(w)),
            "{name}: the reason names none of {words:?}: {m:?}"
        );
    }
    let smi = vms.one(0, "smi", "smi");
    assert!(
        smi.num("refused") >= refused_before + 4.0,
        "four refusals counted: {smi:?}"
    );

    // Out-of-bounds writes: the in-range words are written, every canary holds.
    let oob = vms.one(0, "oob", "oob");
    eprintln!("oob: {}", oob.detail);
    assert_eq!(oob.detail.matches(":_ok").count(), 3, "{oob:?}");

    // while (true): the launch fails with the loop-budget status; the stats say why.
    let lp = vms.one(0, "loop 16", "loop");
    eprintln!("loop: {}", lp.detail);
    let smi = vms.one(0, "smi", "smi");
    assert!(smi.num("jobs_failed") >= 1.0, "{smi:?}");
    assert_eq!(
        smi.field("last_failure"),
        Some("loop_budget_exceeded"),
        "{smi:?}"
    );

    // The C example through the static library, and the examples again in a fresh context.
    let c = vms.one(0, "c-example", "c-example");
    eprintln!("c-example: {}", c.detail);
    let again = vms.one(0, "kbench --quick --launches 2", "kbench");
    assert_eq!(again.num("unverified"), 0.0, "{again:?}");
    vms.finish();
}

/// Two guests under equal-share run their own kernels at once; an infinite loop in one does
/// not stop the other's benchmark.
#[test]
fn guest_kernels_two_guests() {
    let Some(_one_at_a_time) = guard("the two-guest guest-kernel test") else {
        return;
    };
    let mut vms = Vms::start("guest-kernels-two", 2);
    // Both guests run the examples at the same time.
    vms.send(&[
        (0, "kbench --quick --launches 3"),
        (1, "kbench --quick --launches 3"),
    ]);
    for i in 0..2 {
        let m = vms.wait(i, "kbench");
        vms.expect_pass(i, &m);
        eprintln!("guest {i} kbench: {}", m.detail);
        print_cases(&vms.kbench_cases(i));
    }
    // Guest 1's bench alone, then beside guest 0's infinite loops.
    let alone = vms.one(1, "bench gemm 128 4", "bench");
    vms.send(&[(0, "loop-for 25 16"), (1, "bench gemm 128 12")]);
    let beside = vms.wait(1, "bench");
    let loops = vms.wait(0, "loop-for");
    vms.expect_pass(1, &beside);
    vms.expect_pass(0, &loops);
    eprintln!("guest 1 bench alone: {}", alone.detail);
    eprintln!("guest 1 bench beside the loops: {}", beside.detail);
    eprintln!("guest 0 loops: {}", loops.detail);
    assert_eq!(beside.field("verified"), Some("true"), "{beside:?}");
    assert!(beside.num("jobs") >= 3.0, "{beside:?}");
    assert!(loops.num("launches") >= 1.0, "{loops:?}");
    eprintln!(
        "gemm 128 p50 beside the loops / alone: {:.2}",
        beside.num("p50_us") / alone.num("p50_us")
    );
    vms.finish();
}
