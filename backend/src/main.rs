//! vgpud entry point: parse options and the config file, create the driver core and every vGPU
//! (failing before any socket exists if they do not fit), start one listener per vGPU socket,
//! then wait for a signal or for the served connection to end and shut down cleanly.
//!
//! Exit status: 0 success; 1 runtime failure (socket in use, I/O, unreachable `--attach`
//! socket); 2 invalid command line or config file; 3 the device cannot hold the vGPUs asked for.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use vgpu_backend::config::{self, ConfigError, Plan};
use vgpu_backend::control::{self, ControlState, ControlVgpu};
use vgpu_backend::driver::engine::DynEngine;
use vgpu_backend::driver::scheduler::{DEFAULT_TIMESLICE_US, DENSE_TIMESLICE_US, DENSE_VGPU_COUNT};
use vgpu_backend::driver::{Device, DriverError};
use vgpu_backend::options::{Capabilities, Options};
use vgpu_backend::vhost::backend::GpuFeatures;
use vgpu_backend::vhost::daemon::{Daemon, ServerStatus, VgpuConfig};

/// Signals that end the daemon.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
/// How often the main thread checks whether the served connections ended.
const POLL: Duration = Duration::from_millis(100);
/// How long shutdown waits for connection threads before exiting anyway.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
const MIB: u64 = 1 << 20;

/// A failure with its exit status.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn runtime(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

/// Blocks the stop signals in this thread (and every thread spawned later), so that only
/// [`wait_signal`] receives them.
fn block_stop_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it; pthread_sigmask only
    // reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(std::io::Error::from_raw_os_error(r));
        }
        Ok(set)
    }
}

/// Waits up to `timeout` for one of the blocked stop signals; returns it if one arrived.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<libc::c_int> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` is an initialised sigset, `ts` a valid timespec; no siginfo is requested.
    let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (r > 0).then_some(r)
}

/// Waits for a stop signal or for every daemon thread to end; logs stats every `interval`.
fn wait_until_done(
    set: &libc::sigset_t,
    daemon: &Daemon,
    stats: Option<(&ControlState, Duration)>,
) {
    let mut next_stats = stats.map(|(_, every)| Instant::now() + every);
    loop {
        if let Some(sig) = wait_signal(set, POLL) {
            log::info!("signal {sig}: shutting down");
            return;
        }
        if daemon.finished() {
            log::info!("connection ended: exiting");
            return;
        }
        if let (Some((state, every)), Some(due)) = (stats, next_stats) {
            if Instant::now() >= due {
                for line in state.stats_lines() {
                    log::info!("stats {line}");
                }
                next_stats = Some(due + every);
            }
        }
    }
}

fn stop(mut daemon: Daemon) {
    if !daemon.stop(STOP_TIMEOUT) {
        log::warn!("some connections did not end within {STOP_TIMEOUT:?}; exiting anyway");
    }
    // Dropping the daemon removes its socket files and temporary directories.
    drop(daemon);
}

/// `vgpud --fd N --attach SOCKET`: hand a libvirt connection to the shared daemon.
fn run_attach(fd: i32, socket: &Path) -> Result<(), Failure> {
    let set = block_stop_signals().map_err(|e| Failure::runtime(format!("signals: {e}")))?;
    let mut daemon = Daemon::new().map_err(|e| Failure::runtime(e.to_string()))?;
    daemon
        .attach_fd(fd, socket)
        .map_err(|e| Failure::runtime(e.to_string()))?;
    log::info!("--fd {fd}: relaying to {}", socket.display());
    wait_until_done(&set, &daemon, None);
    stop(daemon);
    Ok(())
}

fn driver_failure(name: &str, e: DriverError) -> Failure {
    let code = match e {
        DriverError::Config(_) | DriverError::UnknownType(_) | DriverError::DuplicateUuid(_) => 2,
        DriverError::TooManyInstances { .. }
        | DriverError::DeviceFull { .. }
        | DriverError::Engine(_) => 3,
        _ => 1,
    };
    Failure {
        code,
        message: format!("{name}: {e}"),
    }
}

/// Raises the open-file limit to its hard maximum: each connected VM holds a dozen descriptors
/// (socket, memory regions, eventfds, GPU socket, epoll).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn run(plan: Plan, fd: Option<i32>, engine: Box<dyn DynEngine>) -> Result<(), Failure> {
    let set = block_stop_signals().map_err(|e| Failure::runtime(format!("signals: {e}")))?;
    raise_fd_limit();
    let settings = &plan.settings;
    let device = Device::with_engine(settings.driver.clone(), engine)
        .map_err(|e| driver_failure("device", e))?;
    // Every partition is reserved before any socket exists.
    let mut served = Vec::with_capacity(plan.vgpus.len());
    for v in &plan.vgpus {
        let vgpu = device
            .create_vgpu(&v.type_name, v.uuid)
            .map_err(|e| driver_failure(&v.name, e))?;
        served.push(ControlVgpu {
            name: v.name.clone(),
            socket: v.socket.clone(),
            vgpu,
            status: Arc::new(ServerStatus::default()),
        });
    }
    let (total, reserved) = device.memory();
    let slice = settings
        .driver
        .timeslice_us
        .unwrap_or(if plan.vgpus.len() <= DENSE_VGPU_COUNT {
            DEFAULT_TIMESLICE_US
        } else {
            DENSE_TIMESLICE_US
        });
    log::info!(
        "vgpud {}: device {} MiB ({} MiB reserved by {} vGPUs), policy {}, time slice {slice} µs",
        env!("CARGO_PKG_VERSION"),
        total / MIB,
        reserved / MIB,
        plan.vgpus.len(),
        settings.driver.policy.as_str(),
    );
    let mut daemon = Daemon::new().map_err(|e| Failure::runtime(e.to_string()))?;
    for (v, s) in plan.vgpus.iter().zip(&served) {
        let config = VgpuConfig {
            name: v.name.clone(),
            device: v.device,
            features: GpuFeatures::base(),
            vgpu: Arc::clone(&s.vgpu),
            status: Arc::clone(&s.status),
        };
        let added = match (&v.socket, fd) {
            (Some(path), _) => daemon.add_socket(path, config),
            (None, Some(fd)) => daemon.add_connected_fd(fd, config),
            (None, None) => continue,
        };
        added.map_err(|e| Failure::runtime(format!("{}: {e}", v.name)))?;
        log::info!(
            "{} type={} fb={}M uuid={} socket={} scanouts={} resolution={}x{}",
            v.name,
            v.type_name,
            s.vgpu.vgpu_type().framebuffer_bytes / MIB,
            v.uuid,
            v.socket.as_ref().map_or_else(
                || format!("fd:{}", fd.unwrap_or(-1)),
                |p| p.display().to_string()
            ),
            v.device.num_scanouts,
            v.device.width,
            v.device.height,
        );
    }
    let state = ControlState {
        device: Arc::clone(&device),
        vgpus: served,
    };
    if let Some(path) = &settings.control_socket {
        let handler_state = state.clone();
        daemon
            .add_control(path, Arc::new(move |line: &str| handler_state.handle(line)))
            .map_err(|e| Failure::runtime(format!("control socket: {e}")))?;
    }
    let stats = (settings.stats_interval > 0)
        .then(|| (&state, Duration::from_secs(settings.stats_interval)));
    wait_until_done(&set, &daemon, stats);
    stop(daemon);
    drop(state);
    device.shutdown();
    Ok(())
}

fn list_types(opts: &Options) -> Result<(), Failure> {
    let settings = config::settings(opts)?;
    let list = config::list_types(&settings.driver.types, settings.driver.memory_mib);
    if opts.json {
        let text = serde_json::to_string_pretty(&list)
            .map_err(|e| Failure::runtime(format!("json: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", config::format_types(&list));
    }
    Ok(())
}

// ---- Engines (see README "Engines") ----
mod engines {
    use super::{Failure, Options, MIB};
    use vgpu_backend::driver::engine::cpu::cpu_caps;
    use vgpu_backend::driver::engine::vulkan::{list_devices, PhysicalDeviceInfo};
    use vgpu_backend::driver::engine::{
        default_device_memory, DynEngine, EngineChoice, DEFAULT_CHUNK_TARGET_NS,
    };

    /// Opens `--engine` before any socket exists (exit 3 when the device is unusable) and
    /// records its `--device-memory` default in `opts`.
    pub fn open(opts: &mut Options) -> Result<Box<dyn DynEngine>, Failure> {
        let choice = opts.engine.clone().unwrap_or_default();
        let engine = choice.open(DEFAULT_CHUNK_TARGET_NS).map_err(|e| Failure {
            code: 3,
            message: format!(
                "engine {}: {e} (see `vgpud --list-engines`)",
                match &choice {
                    EngineChoice::Cpu => "cpu".to_string(),
                    EngineChoice::Vulkan(s) => format!("vulkan ({s:?})"),
                }
            ),
        })?;
        let caps = engine.caps();
        opts.engine_memory_default_mib = default_device_memory(&caps).map(|b| b / MIB);
        log::info!(
            "engine {}: {} ({} {})",
            caps.kind.as_str(),
            caps.device_name,
            caps.driver_name,
            caps.driver_version
        );
        Ok(engine)
    }

    fn heaps_text(d: &PhysicalDeviceInfo) -> String {
        d.heaps
            .iter()
            .map(|h| {
                format!(
                    "{} MiB{}",
                    h.bytes / MIB,
                    if h.device_local { " device-local" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `--list-engines [--json]`.
    pub fn list(json: bool) -> Result<(), Failure> {
        let cpu = cpu_caps();
        let (devices, error) = match list_devices() {
            Ok(d) => (d, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        if json {
            let doc = serde_json::json!({
                "engines": std::iter::once(serde_json::json!({
                    "engine": "cpu",
                    "name": cpu.device_name,
                    "driver": cpu.driver_name,
                    "usable": true,
                }))
                .chain(devices.iter().map(|d| {
                    let mut v = serde_json::to_value(d).unwrap_or_default();
                    if let Some(o) = v.as_object_mut() {
                        o.insert("engine".into(), format!("vulkan:{}", d.index).into());
                    }
                    v
                }))
                .collect::<Vec<_>>(),
                "vulkan_error": error,
            });
            let text = serde_json::to_string_pretty(&doc)
                .map_err(|e| Failure::runtime(format!("json: {e}")))?;
            println!("{text}");
            return Ok(());
        }
        println!(
            "cpu        {} (embedded, host memory) [default]",
            cpu.device_name
        );
        for d in &devices {
            println!(
                "vulkan:{:<3} {} ({}, {}, Vulkan {}), heaps: {}{}",
                d.index,
                d.name,
                d.device_type,
                d.driver,
                d.api_version,
                heaps_text(d),
                if d.usable {
                    ""
                } else {
                    " [not usable: no compute queue or Vulkan < 1.1]"
                }
            );
        }
        if let Some(e) = error {
            println!("vulkan     unavailable: {e}");
        }
        Ok(())
    }
}

/// `vgpud demo [...]`: the in-process demo of the driver core (see `vgpud demo --help`).
fn run_demo(args: &[String]) -> ExitCode {
    #[derive(Parser)]
    #[command(
        name = "vgpud demo",
        bin_name = "vgpud demo",
        about = "Several vGPUs with different workloads under each policy"
    )]
    struct DemoCommand {
        #[command(flatten)]
        args: vgpu_backend::demo::DemoArgs,
    }
    let cmd = DemoCommand::parse_from(args);
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match vgpu_backend::demo::run(&cmd.args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vgpud demo: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("demo") {
        return run_demo(&args[1..]);
    }
    if let Some(verb @ ("ctl" | "status")) = args.get(1).map(String::as_str) {
        return ExitCode::from(control::client_main(
            verb,
            args.get(2..).unwrap_or_default(),
        ));
    }
    let opts = Options::parse();
    if opts.print_capabilities {
        println!("{}", Capabilities::current().to_json());
        return ExitCode::SUCCESS;
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut opts = opts;
    let result = if opts.list_types {
        list_types(&opts)
    } else if opts.list_engines {
        engines::list(opts.json)
    } else if let (Some(fd), Some(socket)) = (opts.fd, &opts.attach) {
        run_attach(fd, socket)
    } else {
        engines::open(&mut opts).and_then(|engine| {
            config::plan(&opts)
                .map_err(Failure::from)
                .and_then(|plan| run(plan, opts.fd, engine))
        })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("vgpud: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
