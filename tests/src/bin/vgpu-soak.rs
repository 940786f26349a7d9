//! `vgpu-soak`: 32 vGPUs on one `vgpud` under mixed 2D and compute load with connects and
//! disconnects, for 10 minutes (default), sampling the daemon's RSS, open fds and partition bytes
//! every second. Prints a verdict ("no growth", or the growth) with the figures and plots the
//! samples to a PNG. A benchmark program, not a test.
//!
//! ```text
//! cargo build --release -p vgpu-backend -p vgpu-tests      # target/release/vgpud, vgpu-soak
//! nice target/release/vgpu-soak [--seconds 600] [--vgpus 32] [--png docs/soak.png] [--csv F]
//! ```
//!
//! Every vGPU has one frontend thread that connects, does 50 to 249 checked rounds (a 2D round
//! whose UPDATE pixels are checked on the GPU socket and a compute round whose SUBMIT_3D results
//! are read back and checked, see `vgpu_tests::workload`), pauses 20 ms between rounds and
//! disconnects, until the time is up. Any wrong pixel or result ends the run with an error.
//!
//! Verdict: after a warm-up (the first 10 % of the run, at least 30 s), the last minute's
//! median RSS is compared with the first post-warm-up minute's, and the fd count and partition
//! bytes after every frontend has left are compared with those of the idle daemon at the start.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use plotters::prelude::*;
use serde_json::Value;
use vgpu_tests::workload::{checked_vm_config, Worker};
use vgpu_tests::{Backend, BackendKind, GpuClient};

/// Checked rounds per connection: `ROUNDS_MIN + rand % ROUNDS_SPREAD` (50 to 249), so each VM
/// reconnects every few seconds.
const ROUNDS_MIN: u64 = 50;
const ROUNDS_SPREAD: u64 = 200;
/// RSS growth below this counts as none (allocator noise).
const RSS_TOLERANCE_KIB: u64 = 2048;

struct Args {
    seconds: u64,
    vgpus: usize,
    png: PathBuf,
    csv: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        seconds: 600,
        vgpus: 32,
        png: PathBuf::from("docs/soak.png"),
        csv: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--vgpus" => a.vgpus = value()?.parse().map_err(|e| format!("--vgpus: {e}"))?,
            "--png" => a.png = PathBuf::from(value()?),
            "--csv" => a.csv = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                return Err("usage: vgpu-soak [--seconds N] [--vgpus N] [--png F] [--csv F]".into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.vgpus == 0 || a.vgpus > 64 || a.seconds < 10 {
        return Err("--vgpus must be 1..=64 and --seconds at least 10".into());
    }
    Ok(a)
}

/// One sample of the daemon.
#[derive(Clone, Copy, Debug)]
struct Sample {
    t: f64,
    rss_kib: u64,
    fds: u64,
    partition_bytes: u64,
    rounds: u64,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn fd_count(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

fn ctl(path: &Path, cmd: &str) -> Option<Value> {
    let mut s = UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("{{\"cmd\": \"{cmd}\"}}\n").as_bytes())
        .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    serde_json::from_str(&reply).ok()
}

/// Bytes charged to all partitions together, from the control socket.
fn partition_bytes(ctl_path: &Path) -> Option<u64> {
    let stats = ctl(ctl_path, "stats")?;
    Some(
        stats["vgpus"]
            .as_array()?
            .iter()
            .filter_map(|v| v["framebuffer_used"].as_u64())
            .sum(),
    )
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// One frontend's life: connect, checked rounds, disconnect, again, until `stop`.
fn frontend(socket: PathBuf, seed: u64, stop: Arc<AtomicBool>, rounds: Arc<AtomicU64>) -> u64 {
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut connections = 0;
    while !stop.load(Ordering::Acquire) {
        let client = GpuClient::connect(&socket, &checked_vm_config(Duration::from_secs(60)))
            .unwrap_or_else(|e| panic!("{}: connect: {e}", socket.display()));
        connections += 1;
        let mut vm = Worker::new(client);
        for _ in 0..ROUNDS_MIN + next() % ROUNDS_SPREAD {
            if stop.load(Ordering::Acquire) {
                break;
            }
            vm.round();
            rounds.fetch_add(1, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(20));
        }
        drop(vm);
    }
    connections
}

fn plot(path: &Path, samples: &[Sample], title: &str) -> Result<(), Box<dyn std::error::Error>> {
    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
        .map_err(|e| format!("DejaVuSans.ttf (fonts-dejavu-core): {e}"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into()))
        .map_err(|_| "cannot load DejaVuSans.ttf")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = BitMapBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let panels = root.split_evenly((3, 1));
    let t_max = samples.last().map(|s| s.t).unwrap_or(1.0).max(1.0);
    type Series<'a> = (&'a str, &'a str, RGBColor, Box<dyn Fn(&Sample) -> f64>);
    let series: [Series; 3] = [
        (
            "vgpud RSS",
            "MiB",
            BLUE,
            Box::new(|s| s.rss_kib as f64 / 1024.0),
        ),
        ("vgpud open fds", "fds", RED, Box::new(|s| s.fds as f64)),
        (
            "partition bytes (all vGPUs)",
            "MiB",
            GREEN,
            Box::new(|s| s.partition_bytes as f64 / (1 << 20) as f64),
        ),
    ];
    for (panel, (name, unit, color, f)) in panels.iter().zip(series.iter()) {
        let y_max = samples.iter().map(f).fold(0.0, f64::max).max(1.0) * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(*name, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(*unit)
            .label_style(("sans-serif", 13))
            .draw()?;
        chart.draw_series(LineSeries::new(samples.iter().map(|s| (s.t, f(s))), color))?;
    }
    root.present()?;
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vgpu-soak: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let dir = tempfile::Builder::new().prefix("vgpu-soak-").tempdir()?;
    let ctl_path = dir.path().join("control.sock");
    let sockets: Vec<PathBuf> = (1..args.vgpus)
        .map(|i| dir.path().join(format!("vgpu{i}.sock")))
        .collect();
    let specs: Vec<String> = sockets
        .iter()
        .map(|s| format!("socket={},type=vgpu-64m", s.display()))
        .collect();
    let mut extra = vec![
        "--type",
        "vgpu-64m",
        "--control-socket",
        ctl_path.to_str().ok_or("path")?,
    ];
    for s in &specs {
        extra.extend(["--vgpu", s.as_str()]);
    }
    if std::env::var_os("RUST_LOG").is_none() {
        // The daemon's own log is not what is measured; keep it quiet.
        std::env::set_var("RUST_LOG", "warn");
    }
    let mut backend = Backend::spawn(BackendKind::Vgpud, &extra)?;
    backend.wait_listening(Duration::from_secs(60))?;
    let mut all: Vec<PathBuf> = vec![backend.socket().to_path_buf()];
    all.extend(sockets);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(all.iter().all(|p| p.exists()) && ctl_path.exists()) {
        if Instant::now() > deadline || !backend.is_running() {
            return Err(format!("vgpud did not come up:\n{}", backend.log()).into());
        }
        thread::sleep(Duration::from_millis(50));
    }
    let pid = backend.pid();
    let idle_fds = fd_count(pid).ok_or("fd count")?;
    let idle_rss = rss_kib(pid).ok_or("rss")?;
    println!(
        "vgpu-soak: {} vGPUs (vgpu-64m) on vgpud pid {pid}, {} s; idle: RSS {} KiB, {idle_fds} fds",
        args.vgpus, args.seconds, idle_rss
    );

    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = all
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (s, stop, rounds) = (s.clone(), stop.clone(), rounds.clone());
            thread::Builder::new()
                .name(format!("vm{i}"))
                .spawn(move || frontend(s, 0x50a4 + i as u64 * 7919, stop, rounds))
        })
        .collect::<Result<_, _>>()?;

    let start = Instant::now();
    let mut samples = Vec::new();
    let mut next = start;
    while start.elapsed() < Duration::from_secs(args.seconds) {
        next += Duration::from_secs(1);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        if threads.iter().any(|t| t.is_finished()) || !backend.is_running() {
            break;
        }
        let s = Sample {
            t: start.elapsed().as_secs_f64(),
            rss_kib: rss_kib(pid).unwrap_or(0),
            fds: fd_count(pid).unwrap_or(0),
            partition_bytes: partition_bytes(&ctl_path).unwrap_or(0),
            rounds: rounds.load(Ordering::Relaxed),
        };
        if samples.len() % 60 == 0 {
            println!(
                "t={:4.0}s rss={} KiB fds={} partitions={} KiB rounds={}",
                s.t,
                s.rss_kib,
                s.fds,
                s.partition_bytes / 1024,
                s.rounds
            );
        }
        samples.push(s);
    }
    stop.store(true, Ordering::Release);
    let mut connections = 0;
    let mut failed = None;
    for t in threads {
        match t.join() {
            Ok(n) => connections += n,
            Err(e) => {
                failed = Some(
                    e.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default(),
                )
            }
        }
    }
    // A failed frontend or a dead daemon still gets its figures and plot, then fails the run.
    let mut failure = failed.map(|e| format!("a frontend failed: {e}"));
    if !backend.is_running() {
        failure = Some(format!("vgpud exited:\n{}", backend.log()));
    }
    // Every frontend has left: wait (bounded) for the daemon to settle back to idle.
    let settle = Instant::now() + Duration::from_secs(30);
    let (mut end_fds, mut end_bytes);
    loop {
        end_fds = fd_count(pid).unwrap_or(0);
        end_bytes = partition_bytes(&ctl_path).unwrap_or(u64::MAX);
        if (end_fds <= idle_fds && end_bytes == 0) || Instant::now() > settle {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let end_rss = rss_kib(pid).unwrap_or(0);

    let total = rounds.load(Ordering::Relaxed);
    let warm = (args.seconds / 10).max(30) as usize;
    let window = 60.min(samples.len() / 4).max(1);
    let first = samples
        .iter()
        .skip(warm)
        .take(window)
        .map(|s| s.rss_kib)
        .collect::<Vec<_>>();
    let last = samples
        .iter()
        .rev()
        .take(window)
        .map(|s| s.rss_kib)
        .collect::<Vec<_>>();
    let (rss_first, rss_last) = (median(first), median(last));
    let rss_growth = rss_last.saturating_sub(rss_first);
    let max_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let max_bytes = samples.iter().map(|s| s.partition_bytes).max().unwrap_or(0);
    println!(
        "--- vgpu-soak results ({:.0} s, {} vGPUs)",
        start.elapsed().as_secs_f64(),
        args.vgpus
    );
    println!(
        "load: {total} checked rounds, {connections} connections (each ended by a disconnect)"
    );
    println!(
        "RSS: idle {idle_rss} KiB; median of the first minute after warm-up {rss_first} KiB, of \
         the last minute {rss_last} KiB (growth {rss_growth} KiB, tolerance {RSS_TOLERANCE_KIB}); \
         after all disconnects {end_rss} KiB"
    );
    println!("fds: idle {idle_fds}, max under load {max_fds}, after all disconnects {end_fds}");
    println!(
        "partition bytes: max under load {} KiB, after all disconnects {end_bytes}",
        max_bytes / 1024
    );
    let ok = rss_growth <= RSS_TOLERANCE_KIB && end_fds <= idle_fds && end_bytes == 0;
    if let Some(f) = &failure {
        println!("verdict: FAILED ({f})");
    } else if ok {
        println!("verdict: no growth");
    } else {
        println!(
            "verdict: GROWTH (RSS +{rss_growth} KiB, fds {idle_fds} -> {end_fds}, partition bytes \
             left {end_bytes})"
        );
    }
    if let Some(csv) = &args.csv {
        let mut out = String::from("t_s,rss_kib,fds,partition_bytes,rounds\n");
        for s in &samples {
            out += &format!(
                "{:.1},{},{},{},{}\n",
                s.t, s.rss_kib, s.fds, s.partition_bytes, s.rounds
            );
        }
        std::fs::write(csv, out)?;
    }
    let title = format!(
        "vgpu-soak: {} vGPUs, {:.0} s, {total} rounds, {connections} connections",
        args.vgpus,
        start.elapsed().as_secs_f64()
    );
    plot(&args.png, &samples, &title)?;
    println!("plot: {}", args.png.display());
    Ok(ok && failure.is_none())
}
