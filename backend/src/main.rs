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
use vgpu_backend::driver::scheduler::{DEFAULT_TIMESLICE_US, DENSE_TIMESLICE_US, DENSE_VGPU_COUNT};
use vgpu_backend::driver::{Device, DriverError};
use vgpu_backend::logging::{self, Sinks};
use vgpu_backend::options::{self, Capabilities, Options};
use vgpu_backend::signals::{block_stop_signals, wait_signal};
use vgpu_backend::vhost::backend::GpuFeatures;
use vgpu_backend::vhost::daemon::{Daemon, ServerStatus, VgpuConfig};
use vgpu_backend::vhost::socket_access::SocketAccess;

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
    vgpu_backend::libvirt::relay_until_stopped(fd, socket).map_err(Failure::runtime)
}

fn driver_failure(name: &str, e: DriverError) -> Failure {
    let code = match e {
        DriverError::Config(_) | DriverError::UnknownType(_) | DriverError::DuplicateUuid(_) => 2,
        DriverError::TooManyInstances { .. } | DriverError::DeviceFull { .. } => 3,
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

fn run(plan: Plan, fd: Option<i32>, access: SocketAccess) -> Result<(), Failure> {
    let set = block_stop_signals().map_err(|e| Failure::runtime(format!("signals: {e}")))?;
    raise_fd_limit();
    let settings = &plan.settings;
    let device = Device::new(settings.driver.clone()).map_err(|e| driver_failure("device", e))?;
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
    daemon.set_socket_access(access);
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
    // libvirt probes with `--print-capabilities` alone, but wrappers add their own options: answer
    // it before anything else can fail.
    if options::wants_capabilities(args.get(1..).unwrap_or_default()) {
        println!("{}", Capabilities::current().to_json());
        return ExitCode::SUCCESS;
    }
    let opts = Options::parse();
    if let Err(e) = logging::init(
        c"vgpud",
        log::LevelFilter::Info,
        Sinks::detect(),
        opts.log_file.as_deref(),
    ) {
        eprintln!("vgpud: {e}");
        return ExitCode::from(2);
    }
    let result = if opts.list_types {
        list_types(&opts)
    } else if let Some(Err(message)) = opts
        .render_node
        .as_deref()
        .map(vgpu_backend::libvirt::check_render_node)
    {
        Err(Failure { code: 2, message })
    } else if let (Some(fd), Some(socket)) = (opts.fd, &opts.attach) {
        run_attach(fd, socket)
    } else {
        if let Some(node) = &opts.render_node {
            log::info!(
                "render node {}: accepted; the embedded CPU engine serves every vGPU",
                node.display()
            );
        }
        let access = SocketAccess::new(opts.socket_group, opts.socket_mode);
        config::plan(&opts)
            .map_err(Failure::from)
            .and_then(|plan| run(plan, opts.fd, access))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("vgpud: {}", f.message);
            logging::persist_error(&f.message);
            ExitCode::from(f.code)
        }
    }
}
