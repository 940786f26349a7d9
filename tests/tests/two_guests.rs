//! Two real guests, one device: one `vgpud` serves two vGPUs of different types to two QEMU guests
//! (Debian 6.12, TCG) booted at the same time, and `vgpu-smi` inside each guest checks what its own
//! VM sees: its type and framebuffer, a memory test that stops exactly at its own limit, verified
//! kernel benchmarks, the scheduler's shares (fixed-share 1:2, best-effort work conservation) and that
//! the fbdev console keeps drawing in both guests while both run jobs.
//!
//! The guests run `tests/guest/scripts/vgpu-smi.sh`, which asks the host for each step on the serial
//! console (`cmd READY`); answering both guests back to back starts their benchmarks together.
//!
//! Needs what `real_guest.rs` needs plus the static guest tool (`guest-tools/build-static.sh`, or
//! `VGPU_SMI=path`). `VGPU_SKIP_GUEST=1` skips; `VGPU_KEEP_GUEST_DIR=1` keeps the logs and PNGs;
//! `VGPU_TWO_GUESTS_GEMM=N` overrides the gemm order of the share benchmarks.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vgpu_tests::guest::{
    skip_requested, vgpu_smi_static, Backend, Guest, GuestAssets, GuestConfig, GuestGroup, Marker,
    MarkerKind, Screen, WorkDir,
};

/// The two tests boot two guests each; four TCG guests at once on two cores would distort timing.
static SERIAL: Mutex<()> = Mutex::new(());

/// Two small types so that the memory tests are quick; weights 1 and 2 for fixed-share.
const TYPES_TOML: &str = r#"
[[types]]
name = "tg-w1"
framebuffer = "128M"
max_instances = 4
max_width = 1280
max_height = 800
weight = 1

[[types]]
name = "tg-w2"
framebuffer = "256M"
max_instances = 2
max_width = 1280
max_height = 800
weight = 2
"#;
const TYPES: [(&str, u64); 2] = [("tg-w1", 128 << 20), ("tg-w2", 256 << 20)];
/// Colours each guest writes to its /dev/fb0 during the bench, as the guest's (B, G, R) bytes.
const FILL_BGR: [[u8; 3]; 2] = [[40, 40, 200], [200, 40, 40]];

/// Long waits (deadlines, not sleeps): everything in the guest runs under TCG on a shared 2-core
/// machine; under heavy host load a guest boot alone took 90 s.
const STEP: Duration = Duration::from_secs(240);

/// Gemm order for the share benchmarks: a 192×192×192 gemm is ~100 ms of engine time in the debug
/// `vgpud` here, far above the fixed per-job cost inside a job's latency (EXECBUFFER and the fence
/// wake-up of the vhost worker and the TCG vCPU: a few ms, over 10 ms when other work overloads the
/// two cores), so the latency reflects the engine share.
fn gemm_order() -> u32 {
    std::env::var("VGPU_TWO_GUESTS_GEMM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(192)
}

/// One `vgpud` with two vGPUs and a guest on each.
struct Pair {
    group: GuestGroup,
    dirs: Vec<PathBuf>,
    _work: WorkDir,
}

impl std::ops::Deref for Pair {
    type Target = GuestGroup;
    fn deref(&self) -> &GuestGroup {
        &self.group
    }
}

impl std::ops::DerefMut for Pair {
    fn deref_mut(&mut self) -> &mut GuestGroup {
        &mut self.group
    }
}

impl Pair {
    fn start(policy: &str) -> Pair {
        Self::start_on(policy, "cpu")
    }

    /// Both guests on one vgpud running `--engine engine`.
    fn start_on(policy: &str, engine: &str) -> Pair {
        let started = Instant::now();
        let assets = GuestAssets::locate().unwrap_or_else(|e| panic!("{e}"));
        let smi = vgpu_smi_static().unwrap_or_else(|e| panic!("{e}"));
        let work = WorkDir::new(&format!("two-{policy}-{engine}")).unwrap();
        let dir = work.path().to_path_buf();
        let initrd = dir.join("initrd.gz");
        assets
            .build_initramfs(
                Path::new("scripts/vgpu-smi.sh"),
                &[(smi, "/bin/vgpu-smi".to_string())],
                &initrd,
            )
            .unwrap();
        let types = dir.join("types.toml");
        std::fs::write(&types, TYPES_TOML).unwrap();
        let sockets: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("vm{i}.sock"))).collect();
        let mut args = vec![
            "--types".to_string(),
            types.display().to_string(),
            "--device-memory".into(),
            "1024".into(),
            "--policy".into(),
            policy.into(),
            "--engine".into(),
            engine.into(),
        ];
        for (socket, (ty, _)) in sockets.iter().zip(TYPES) {
            args.push("--vgpu".into());
            args.push(format!("socket={},type={ty}", socket.display()));
        }
        let backend = Backend::spawn_vgpud(
            &args,
            &sockets,
            &dir.join("backend.log"),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut guests = Vec::new();
        let mut dirs = Vec::new();
        for (i, socket) in sockets.iter().enumerate() {
            let gdir = dir.join(format!("vm{i}"));
            std::fs::create_dir_all(&gdir).unwrap();
            guests.push(Guest::boot(&assets, &GuestConfig::new(&initrd, socket, &gdir)).unwrap());
            dirs.push(gdir);
        }
        let mut pair = Pair {
            group: GuestGroup::new(guests, backend, started, STEP, 30),
            dirs,
            _work: work,
        };
        for i in 0..2 {
            let m = pair.wait(i, "render-node");
            pair.expect_pass(i, &m);
        }
        eprintln!(
            "[{policy}] both guests up after {:.1}s",
            pair.started.elapsed().as_secs_f32()
        );
        pair
    }

    /// Runs `cmd` in both guests at once and returns both guests' `result` markers (PASS required).
    fn both(&mut self, cmd: [&str; 2], result: &str) -> [Marker; 2] {
        self.send(&[(0, cmd[0]), (1, cmd[1])]);
        [0, 1].map(|i| {
            let m = self.wait(i, result);
            self.expect_pass(i, &m);
            m
        })
    }

    /// Ends both guests and checks that no guest check failed and the daemon still runs.
    fn finish(mut self) {
        self.group.finish();
        eprintln!("total {:.1}s", self.started.elapsed().as_secs_f32());
    }
}

/// Engine time this vGPU got per second of its own job time, from `smi` before/after a `bench`:
/// busy_ns delta over the summed job latencies (jobs / jobs_per_second).
fn engine_share(before: &Marker, after: &Marker, bench: &Marker) -> f64 {
    let busy_s = (after.num("busy_ns") - before.num("busy_ns")) / 1e9;
    let job_s = bench.num("jobs") / bench.num("jps");
    busy_s / job_s
}

fn bench_line(m: &Marker) -> String {
    format!(
        "jobs={} jps={:.2} p50_us={:.0} verified={} wall={:.2}",
        m.num("jobs"),
        m.num("jps"),
        m.num("p50_us"),
        m.field("verified").unwrap_or("?"),
        m.num("wall")
    )
}

fn check_verified(m: &Marker) {
    assert_eq!(m.field("verified"), Some("true"), "{m:?}");
    assert!(m.num("jobs") >= 3.0, "too few jobs to judge: {m:?}");
}

fn guard() -> Option<std::sync::MutexGuard<'static, ()>> {
    if skip_requested() {
        eprintln!("VGPU_SKIP_GUEST=1: skipping the two-guest test");
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Fraction of the screen in `rgb`.
fn coverage(screen: &Screen, rgb: [u8; 3]) -> f64 {
    let mut hits = 0u64;
    for y in 0..screen.height {
        for x in 0..screen.width {
            if screen.pixel(x, y) == Some(rgb) {
                hits += 1;
            }
        }
    }
    hits as f64 / (f64::from(screen.width) * f64::from(screen.height)).max(1.0)
}

/// Fixed-share with weights 1:2: each guest sees its own type, memory limit and zeroed memory; the
/// concurrent gemm throughput ratio is 2; both consoles draw during the bench.
#[test]
fn two_guests_fixed_share() {
    let Some(_one_at_a_time) = guard() else {
        return;
    };
    let mut p = Pair::start("fixed-share");

    // Status: each guest sees its own type and framebuffer, and the policy.
    let smi = p.both(["smi", "smi"], "smi");
    for (i, m) in smi.iter().enumerate() {
        eprintln!("guest {i} smi: {}", m.detail);
        assert_eq!(m.field("type"), Some(TYPES[i].0), "guest {i}: {m:?}");
        assert_eq!(m.num("fb_total") as u64, TYPES[i].1, "guest {i}: {m:?}");
        assert_eq!(m.field("policy"), Some("fixed-share"), "guest {i}: {m:?}");
        assert_eq!(m.field("active"), Some("2"), "guest {i}: {m:?}");
    }
    // Shares from the weights: 1/3 and 2/3.
    assert_eq!(smi[0].field("share"), Some("33.3"), "{:?}", smi[0]);
    assert_eq!(smi[1].field("share"), Some("66.6"), "{:?}", smi[1]);

    // Memory: both at once; each stops exactly at its own limit and reads zeros.
    let mem = p.both(["memtest", "memtest"], "memtest");
    for (i, m) in mem.iter().enumerate() {
        eprintln!("guest {i} memtest: {}", m.detail);
        assert_eq!(m.num("limit") as u64, TYPES[i].1, "guest {i}: {m:?}");
        assert_eq!(m.num("fb") as u64, TYPES[i].1, "guest {i}: {m:?}");
        assert_eq!(m.field("zeroed"), Some("true"), "guest {i}: {m:?}");
        assert_eq!(m.field("freed"), Some("true"), "guest {i}: {m:?}");
    }

    // Shares: the same gemm in both guests, started together, while both draw on their consoles.
    let n = gemm_order();
    let secs = 10;
    let before = p.both(["smi", "smi"], "smi");
    let cmds: Vec<String> = FILL_BGR
        .iter()
        .map(|[b, g, r]| format!("bench-fb gemm {n} {secs} {b} {g} {r}"))
        .collect();
    p.send(&[(0, &cmds[0]), (1, &cmds[1])]);
    for i in 0..2 {
        let ready = p.wait(i, "fb-during-bench");
        assert_eq!(
            ready.kind,
            MarkerKind::Ready,
            "guest {i}: {ready:?}{}",
            p.context()
        );
    }
    // Both guests wait for an answer now; their benchmarks keep running.
    for i in 0..2 {
        let [b, g, r] = FILL_BGR[i];
        let png = p.dirs[i].join("during-bench.png");
        let mut answer = String::new();
        for attempt in 1..=3 {
            answer = match p.guests[i].screendump(&png) {
                Ok(screen) => {
                    let share = coverage(&screen, [r, g, b]);
                    let other = FILL_BGR[1 - i];
                    let foreign = coverage(&screen, [other[2], other[1], other[0]]);
                    if share >= 0.99 && foreign == 0.0 {
                        format!(
                            "ACK pixels ok: {}x{} {:.2}% in ({r},{g},{b})",
                            screen.width,
                            screen.height,
                            share * 100.0
                        )
                    } else {
                        format!(
                            "ACK pixels bad: {:.2}% in ({r},{g},{b}), {:.2}% in the other guest's colour",
                            share * 100.0,
                            foreign * 100.0
                        )
                    }
                }
                Err(e) => format!("ACK pixels bad: screendump: {e}"),
            };
            if answer.starts_with("ACK pixels ok") {
                break;
            }
            eprintln!("guest {i} screendump attempt {attempt}: {answer}");
            std::thread::sleep(Duration::from_millis(500));
        }
        p.guests[i].reply(&answer).unwrap();
    }
    let fb: Vec<Marker> = (0..2).map(|i| p.wait(i, "fb-during-bench")).collect();
    let bench: Vec<Marker> = (0..2).map(|i| p.wait(i, "bench")).collect();
    for i in 0..2 {
        p.expect_pass(i, &fb[i]);
        p.expect_pass(i, &bench[i]);
        assert_eq!(
            fb[i].field("bench_running"),
            Some("yes"),
            "guest {i}: the console was checked after the bench ended: {:?}",
            fb[i]
        );
        check_verified(&bench[i]);
    }
    let after = p.both(["smi", "smi"], "smi");
    let shares: Vec<f64> = (0..2)
        .map(|i| engine_share(&before[i], &after[i], &bench[i]))
        .collect();
    let ratio = bench[1].num("jps") / bench[0].num("jps");
    for i in 0..2 {
        eprintln!(
            "guest {i} ({}) bench gemm {n}: {} engine share {:.3}",
            TYPES[i].0,
            bench_line(&bench[i]),
            shares[i]
        );
    }
    eprintln!("fixed-share throughput ratio (weight 2 / weight 1): {ratio:.3}");
    // Expected 2. Fixed-share holds each vGPU's share even while it idles, so a guest's job
    // latency is its engine time divided by its share, whatever the guest does between jobs:
    // jobs_per_second (jobs over summed EXECBUFFER-to-fence latency) does not count the guest's
    // own verification time, which under TCG varies with host load. What remains is a fixed
    // per-job cost inside every latency (submit, completion and fence wake-up through the vhost
    // worker and the TCG vCPU thread: a few ms, 10-20 ms when other work overloads the 2 cores)
    // against ~300 and ~150 ms of held-share job time, which pulls the ratio below 2 (to ~1.85
    // at 15 ms), and host CPU contention: the engine thread shares 2 cores with two TCG vCPUs,
    // and a slice is charged by wall time, so a preempted slice costs whichever vGPU owned it;
    // over ~10 s that noise averages out but stays around ±10%. Measured here: 1.86-1.98 at load
    // average 3.5-4. Hence [1.6, 2.5].
    assert!(
        (0.2..=0.42).contains(&shares[0]) && (0.45..=0.8).contains(&shares[1]),
        "fixed-share engine shares {shares:?}, expected ~1/3 and ~2/3{}",
        p.context()
    );
    assert!(
        (1.6..=2.5).contains(&ratio),
        "fixed-share 1:2 throughput ratio {ratio:.3} outside [1.6, 2.5]; shares {shares:?}{}",
        p.context()
    );
    p.finish();
}

/// Best-effort: a guest alone gets the whole engine (its jobs are never held back for the idle
/// one), and with both busy the engine is split evenly and stays fully used.
#[test]
fn two_guests_best_effort() {
    let Some(_one_at_a_time) = guard() else {
        return;
    };
    let mut p = Pair::start("best-effort");
    let smi = p.both(["smi", "smi"], "smi");
    for (i, m) in smi.iter().enumerate() {
        eprintln!("guest {i} smi: {}", m.detail);
        assert_eq!(m.field("type"), Some(TYPES[i].0), "guest {i}: {m:?}");
        assert_eq!(m.num("fb_total") as u64, TYPES[i].1, "guest {i}: {m:?}");
        assert_eq!(m.field("policy"), Some("best-effort"), "guest {i}: {m:?}");
    }
    let n = gemm_order();
    let bench_cmd = |secs: u32| format!("bench gemm {n} {secs}");

    // Guest 0 alone (guest 1 waits for its next command, idle).
    let before = p.one(0, "smi", "smi");
    let solo = p.one(0, &bench_cmd(5), "bench");
    let after = p.one(0, "smi", "smi");
    check_verified(&solo);
    let solo_share = engine_share(&before, &after, &solo);
    // Guest 1 has no work: guest 0 is the only active vGPU and is entitled to the whole engine.
    assert_eq!(after.field("active"), Some("1"), "{after:?}");
    assert_eq!(after.field("share"), Some("100.0"), "{after:?}");
    eprintln!(
        "guest 0 alone: {} engine share {solo_share:.3}",
        bench_line(&solo)
    );

    // Both at once.
    let both = p.both([&bench_cmd(6), &bench_cmd(6)], "bench");
    for (i, m) in both.iter().enumerate() {
        check_verified(m);
        eprintln!("guest {i} contended: {}", bench_line(m));
    }
    let both_after = p.both(["smi", "smi"], "smi");
    let jps = |m: &Marker| m.num("jps");
    let sum = jps(&both[0]) + jps(&both[1]);
    let fairness = jps(&both[0]) / jps(&both[1]);
    // Guest 0's "after" of the solo run is its "before" here; guest 1 has done no jobs since boot
    // besides QUERY_STATS, whose busy time is negligible.
    let shares = [
        engine_share(&after, &both_after[0], &both[0]),
        engine_share(&smi[1], &both_after[1], &both[1]),
    ];
    eprintln!(
        "best-effort: alone {:.2} jobs/s (engine share {solo_share:.3}); together {:.2} + {:.2} = {sum:.2} jobs/s \
         ({:.3} of alone, engine shares {:.3} + {:.3}), guest0/guest1 {fairness:.3}",
        jps(&solo),
        jps(&both[0]),
        jps(&both[1]),
        sum / jps(&solo),
        shares[0],
        shares[1]
    );
    // The criteria are engine time over job time, both measured by vgpud and the guest in the
    // same window, so they hold whatever the host's speed: this 2-core machine is shared, and
    // throughput measured in two different windows (alone, then together) can differ several
    // times over when other work lands on the host between them. The throughput sum against the
    // solo rate is printed above for information only.
    //
    // Alone, a best-effort vGPU gets the engine whenever it has work: ~1 (a held share would
    // give 1/2 with two vGPUs); the gap is the guest's submit and fence wake-up under TCG.
    assert!(
        solo_share >= 0.75,
        "guest 0 alone got only {solo_share:.3} of the engine while it had work{}",
        p.context()
    );
    // Together, the engine is split evenly and kept busy: each gets ~1/2 while it has work, a
    // little more when the other is between jobs; the sum is ~1 (above 1 by the time one guest
    // runs alone while the other verifies). Equal weights: throughput within 1.5x of each other.
    for (i, s) in shares.iter().enumerate() {
        assert!(
            (0.3..=0.8).contains(s),
            "best-effort: guest {i} got {s:.3} of the engine while both had work{}",
            p.context()
        );
    }
    let total = shares[0] + shares[1];
    assert!(
        (0.8..=1.4).contains(&total),
        "best-effort: engine shares sum to {total:.3} with both busy{}",
        p.context()
    );
    assert!(
        (0.67..=1.5).contains(&fairness),
        "best-effort: uneven split {fairness:.3}{}",
        p.context()
    );
    p.finish();
}

/// Equal-share on each engine (`cpu`, and `vulkan` on the test machine's Vulkan device, lavapipe
/// in CI): each guest's `vgpu-smi --json` names the engine and device, memtest stops exactly at
/// its own limit with zeroed memory, every kernel's bench verifies, and with both guests busy
/// the gemm throughputs are within 25% of each other (equal shares). `VGPU_TEST_ENGINES=vulkan`
/// (or `=cpu`) runs it on one engine.
#[test]
fn two_guests_equal_share_on_each_engine() {
    let Some(_one_at_a_time) = guard() else {
        return;
    };
    for engine in vgpu_tests::engines::engines() {
        two_guests_equal_share_on(engine);
    }
}

fn two_guests_equal_share_on(engine: &str) {
    let mut p = Pair::start_on("equal-share", engine);
    let smi = p.both(["smi", "smi"], "smi");
    let device = vgpu_tests::engines::vulkan_device().map(|d| d.replace([' ', ','], "_"));
    for (i, m) in smi.iter().enumerate() {
        eprintln!("[{engine}] guest {i} smi: {}", m.detail);
        assert_eq!(m.field("type"), Some(TYPES[i].0), "guest {i}: {m:?}");
        assert_eq!(m.field("policy"), Some("equal-share"), "guest {i}: {m:?}");
        assert_eq!(m.field("engine"), Some(engine), "guest {i}: {m:?}");
        assert!(!m.field("device").unwrap_or("").is_empty(), "{m:?}");
        if engine == "vulkan" {
            assert_eq!(m.field("device"), device.as_deref(), "guest {i}: {m:?}");
        }
    }
    let mem = p.both(["memtest", "memtest"], "memtest");
    for (i, m) in mem.iter().enumerate() {
        eprintln!("[{engine}] guest {i} memtest: {}", m.detail);
        assert_eq!(m.num("limit") as u64, TYPES[i].1, "guest {i}: {m:?}");
        assert_eq!(m.num("fb") as u64, TYPES[i].1, "guest {i}: {m:?}");
        assert_eq!(m.field("zeroed"), Some("true"), "guest {i}: {m:?}");
        assert_eq!(m.field("freed"), Some("true"), "guest {i}: {m:?}");
    }
    // Every kernel, both guests at once, verified against the guest's CPU reference.
    for cmd in [
        "bench axpy 1048576 2",
        "bench reduce 1048576 2",
        "bench hash 4194304 2",
    ] {
        for (i, m) in p.both([cmd, cmd], "bench").iter().enumerate() {
            check_verified(m);
            eprintln!("[{engine}] guest {i} {cmd}: {}", bench_line(m));
        }
    }
    let gemm = format!("bench gemm {} 8", gemm_order());
    let both = p.both([&gemm, &gemm], "bench");
    for (i, m) in both.iter().enumerate() {
        check_verified(m);
        eprintln!("[{engine}] guest {i} {gemm}: {}", bench_line(m));
    }
    // Equal shares: the two guests' throughputs, measured in the same window, within 25%.
    let ratio = both[0].num("jps") / both[1].num("jps");
    eprintln!("[{engine}] equal-share gemm throughput guest0/guest1 {ratio:.3}");
    assert!(
        (0.8..=1.25).contains(&ratio),
        "[{engine}] equal-share throughputs differ by more than 25%: {ratio:.3}{}",
        p.context()
    );
    vgpu_tests::engines::assert_no_validation_errors(&p.backend.log_text());
    p.finish();
}
