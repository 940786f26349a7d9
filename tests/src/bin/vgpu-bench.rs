//! `vgpu-bench`: benchmarks of vgpud against QEMU's `vhost-user-gpu` through the same test
//! frontend, with physical baselines measured in the same run. A program, not a test: nothing
//! here asserts on timing.
//!
//! ```text
//! cargo build --release -p vgpu-backend
//! cargo run --release -p vgpu-tests --bin vgpu-bench -- display [--seconds S] [--json]
//! ```
//! `vgpud` is `$VGPUD` or `target/<profile>/vgpud`; QEMU's backend is `$VHOST_USER_GPU` or
//! `/usr/lib/qemu/vhost-user-gpu` (its rows are left out when it is missing).

#[path = "../bench/baseline.rs"]
mod baseline;
#[path = "../bench/display.rs"]
mod display;
#[path = "../bench/report.rs"]
mod report;
#[path = "../bench/stats.rs"]
mod stats;

use std::process::ExitCode;

use vgpu_tests::BackendKind;

const USAGE: &str =
    "usage: vgpu-bench display [--seconds S] [--round-trips N] [--backend B] [--json]
  --seconds S       time per bandwidth row and backend (default 1.0)
  --round-trips N   round trips per latency row and backend (default 10000)
  --backend B       vgpud, qemu or both (default both)
  --json            print the results as JSON instead of a table
  env: VGPUD (vgpud binary), VHOST_USER_GPU (QEMU's backend), VGPU_BENCH_SHOW_LOG=1";

struct Args {
    seconds: f64,
    round_trips: usize,
    json: bool,
    kinds: Vec<BackendKind>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("display") => {}
        Some("-h" | "--help") | None => return Err(String::new()),
        Some(other) => return Err(format!("unknown benchmark {other:?}")),
    }
    let mut a = Args {
        seconds: 1.0,
        round_trips: 10_000,
        json: false,
        kinds: vec![BackendKind::Vgpud, BackendKind::Qemu],
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => a.json = true,
            "--seconds" => {
                a.seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|s: &f64| *s > 0.0 && *s <= 30.0)
                    .ok_or("--seconds needs a number in (0, 30]")?;
            }
            "--round-trips" => {
                a.round_trips = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n: &usize| *n >= 100)
                    .ok_or("--round-trips needs a number >= 100")?;
            }
            "--backend" => {
                a.kinds = match it.next().map(String::as_str) {
                    Some("vgpud") => vec![BackendKind::Vgpud],
                    Some("qemu") => vec![BackendKind::Qemu],
                    Some("both") => vec![BackendKind::Vgpud, BackendKind::Qemu],
                    _ => return Err("--backend needs vgpud, qemu or both".into()),
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("vgpu-bench: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.kinds.contains(&BackendKind::Vgpud) && BackendKind::Vgpud.binary().is_none() {
        eprintln!(
            "vgpu-bench: vgpud not found: run `cargo build --release -p vgpu-backend` or set VGPUD"
        );
        return ExitCode::FAILURE;
    }
    let settings = display::Settings {
        seconds_per_row: args.seconds,
        round_trips: args.round_trips,
        rounds: 5,
    };
    let loadavg_before = loadavg();
    match run(&args, settings) {
        Ok(mut r) => {
            r.loadavg = (loadavg_before, loadavg());
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r.json()).unwrap_or_default()
                );
            } else {
                print!("{}", r.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vgpu-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Measures everything, interleaving the baselines and the backends round by round.
fn run(args: &Args, settings: display::Settings) -> Result<report::Report, String> {
    let progress = |what: &str| {
        if !args.json {
            eprintln!("vgpu-bench: {what}");
        }
    };
    let frame = display::FRAME_BYTES as usize;
    let err = |what: &'static str| move |e: vgpu_tests::FrontendError| format!("{what}: {e}");
    let mut memcpy =
        baseline::Memcpy::new(baseline::CopySource::Heap, frame).map_err(err("memcpy baseline"))?;
    let mut memcpy_memfd = baseline::Memcpy::new(baseline::CopySource::Memfd, frame)
        .map_err(err("memcpy baseline"))?;
    let mut memcpy_pages = baseline::Memcpy::new(baseline::CopySource::MemfdShuffledPages, frame)
        .map_err(err("memcpy baseline"))?;
    let mut socket = baseline::SocketSend::new().map_err(|e| format!("socket baseline: {e}"))?;
    let mut sessions = Vec::new();
    for kind in args.kinds.clone() {
        if kind.binary().is_none() {
            eprintln!("vgpu-bench: {} not found, skipping it", kind.name());
            continue;
        }
        progress(&format!("starting {}", kind.name()));
        sessions.push(
            display::Session::start(kind.clone()).map_err(|e| format!("{}: {e}", kind.name()))?,
        );
    }
    let rounds = settings.rounds.max(1);
    let slice = settings.seconds_per_row / rounds as f64;
    let fail = |s: &display::Session, e: vgpu_tests::FrontendError| {
        if std::env::var_os("VGPU_BENCH_SHOW_LOG").is_some() {
            eprintln!("---- {} log ----\n{}", s.kind().name(), s.log());
        }
        format!("{}: {e}", s.kind().name())
    };
    for round in 0..rounds {
        progress(&format!("bandwidth round {}/{rounds}", round + 1));
        memcpy.slice(6);
        memcpy_memfd.slice(6);
        memcpy_pages.slice(6);
        socket
            .slice(4)
            .map_err(|e| format!("socket baseline: {e}"))?;
        for row in display::BwRow::ALL {
            // Alternate which backend goes first.
            for i in 0..sessions.len() {
                let k = (i + round) % sessions.len();
                let s = &mut sessions[k];
                s.bandwidth_slice(row, slice).map_err(|e| fail(s, e))?;
            }
        }
    }
    let mut eventfd = stats::Samples::with_capacity(settings.round_trips);
    let per = settings.round_trips.div_ceil(rounds);
    for round in 0..rounds {
        progress(&format!("round-trip round {}/{rounds}", round + 1));
        baseline::eventfd_pingpong(per, &mut eventfd)
            .map_err(|e| format!("eventfd baseline: {e}"))?;
        for row in [display::RttRow::Flush1x1, display::RttRow::DisplayInfo] {
            for i in 0..sessions.len() {
                let k = (i + round) % sessions.len();
                let s = &mut sessions[k];
                s.latency_slice(row, per).map_err(|e| fail(s, e))?;
            }
        }
    }
    let mut backends = Vec::new();
    for s in sessions {
        let name = s.kind().name();
        backends.push(s.finish().map_err(|e| format!("{name}: {e}"))?);
    }
    let bytes = display::FRAME_BYTES;
    Ok(report::Report {
        seconds_per_row: settings.seconds_per_row,
        rounds,
        loadavg: (String::new(), String::new()),
        memcpy: stats::Bandwidth::from_samples(bytes, &mut memcpy.samples),
        memcpy_memfd: stats::Bandwidth::from_samples(bytes, &mut memcpy_memfd.samples),
        memcpy_memfd_pages: stats::Bandwidth::from_samples(bytes, &mut memcpy_pages.samples),
        socket: stats::Bandwidth::from_samples(
            baseline::SOCKET_MSG_BYTES as u64,
            &mut socket.samples,
        ),
        eventfd: stats::Latency::from_samples(&mut eventfd),
        backends,
    })
}
