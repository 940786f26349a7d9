//! vgpud entry point: parse options and the config file, create the driver core and every vGPU
//! (failing before any socket exists if they do not fit), start one listener per vGPU socket,
//! then wait for a signal or for the served connection to end and shut down cleanly.
//!
//! Exit status: 0 success; 1 runtime failure (socket in use, I/O, unreachable `--attach`
//! socket); 2 invalid command line or config file; 3 the device cannot hold the vGPUs asked for.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use vgpu_backend::config::{self, ConfigError, Plan};
use vgpu_backend::control::state::StateStore;
use vgpu_backend::control::{self, Manager, ManagerConfig, NewInstance};
use vgpu_backend::driver::engine::DynEngine;
use vgpu_backend::driver::scheduler::{DEFAULT_TIMESLICE_US, DENSE_TIMESLICE_US, DENSE_VGPU_COUNT};
use vgpu_backend::driver::{Device, DriverError};
use vgpu_backend::logging::{self, Sinks};
use vgpu_backend::options::{self, Capabilities, Options};
use vgpu_backend::sandbox::{self, SandboxMode, ThreadKind};
use vgpu_backend::signals::{block_stop_signals, wait_signal};
use vgpu_backend::vhost::backend::GpuFeatures;
use vgpu_backend::vhost::daemon::{Daemon, DaemonError, ServerStatus, VgpuConfig};
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

/// Waits for a stop signal or for every daemon thread to end (`daemon`: the per-VM modes; the
/// shared daemon runs until a signal); logs stats every `interval`.
fn wait_until_done(
    set: &libc::sigset_t,
    daemon: Option<&Daemon>,
    stats: Option<(&dyn Fn() -> Vec<String>, Duration)>,
) {
    let mut next_stats = stats.map(|(_, every)| Instant::now() + every);
    loop {
        if let Some(sig) = wait_signal(set, POLL) {
            log::info!("signal {sig}: shutting down");
            return;
        }
        if daemon.is_some_and(Daemon::finished) {
            log::info!("connection ended: exiting");
            return;
        }
        if let (Some((lines, every)), Some(due)) = (stats, next_stats) {
            if Instant::now() >= due {
                for line in lines() {
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
fn run_attach(fd: i32, socket: &Path, sandbox: SandboxMode) -> Result<(), Failure> {
    sandbox::configure(sandbox, Vec::new())
        .map_err(|e| Failure::runtime(format!("sandbox: {e}")))?;
    vgpu_backend::libvirt::relay_until_stopped(fd, socket).map_err(Failure::runtime)
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

/// The directories a sandboxed daemon keeps using: its sockets' (it removes them at exit), the
/// state and run directories and the VM map's (instances are created and persisted live) and,
/// for `--fd`, the temporary directory of its private socket.
fn sandbox_dirs(plan: &Plan, fd: Option<i32>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = plan
        .vgpus
        .iter()
        .filter_map(|v| v.socket.as_deref())
        .chain(plan.settings.control_socket.as_deref())
        .chain(plan.settings.ops.vm_map.as_deref())
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .chain([
            plan.settings.ops.state_dir.clone(),
            plan.settings.ops.run_dir.clone(),
        ])
        .map(|d| {
            if d.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                d
            }
        })
        .collect();
    if fd.is_some() {
        dirs.push(std::env::temp_dir());
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

fn run(
    plan: Plan,
    fd: Option<i32>,
    sandbox: SandboxMode,
    engine: Box<dyn DynEngine>,
) -> Result<(), Failure> {
    let set = block_stop_signals().map_err(|e| Failure::runtime(format!("signals: {e}")))?;
    raise_fd_limit();
    if fd.is_none() && uses_control(&plan) {
        // Landlock only admits directories that exist: make the ones `create` and the state
        // writes use now, while the filesystem is open.
        for dir in [&plan.settings.ops.state_dir, &plan.settings.ops.run_dir] {
            if let Err(e) = std::fs::create_dir_all(dir) {
                log::warn!("{}: {e}", dir.display());
            }
        }
    }
    // Before any thread exists: every thread sandboxes itself when it starts.
    sandbox::configure(sandbox, sandbox_dirs(&plan, fd))
        .map_err(|e| Failure::runtime(format!("sandbox: {e}")))?;
    if sandbox == SandboxMode::Off {
        log::warn!("--sandbox off: no seccomp filters, no Landlock (for debugging only)");
    }
    let settings = &plan.settings;
    let device = Device::with_engine(settings.driver.clone(), engine)
        .map_err(|e| driver_failure("device", e))?;
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
    if let Some(fd) = fd {
        // The standalone per-VM backend: one vGPU on the inherited connection, no control.
        let v = plan
            .vgpus
            .first()
            .ok_or_else(|| Failure::runtime("--fd: nothing to serve"))?;
        let vgpu = device
            .create_vgpu(&v.type_name, v.uuid)
            .map_err(|e| driver_failure(&v.name, e))?;
        log::info!(
            "{} type={} fb={}M uuid={} socket=fd:{fd} scanouts={} resolution={}x{}",
            v.name,
            v.type_name,
            vgpu.vgpu_type().framebuffer_bytes / MIB,
            v.uuid,
            v.device.num_scanouts,
            v.device.width,
            v.device.height,
        );
        let config = VgpuConfig {
            name: v.name.clone(),
            device: v.device,
            features: GpuFeatures::base(),
            vgpu,
            status: Arc::new(ServerStatus::default()),
        };
        daemon
            .add_connected_fd(fd, config)
            .map_err(|e| Failure::runtime(format!("{}: {e}", v.name)))?;
        sandbox::enter(ThreadKind::Main);
        wait_until_done(&set, Some(&daemon), None);
        stop(daemon);
        device.shutdown();
        return Ok(());
    }
    let manager = Arc::new(start_manager(&plan, &device, &daemon)?);
    if let Err(e) = serve_operators(&plan, &manager, &mut daemon) {
        manager.stop_all();
        return Err(e);
    }
    let lines = || control::stats_lines(&manager);
    let stats = (settings.stats_interval > 0).then(|| {
        (
            &lines as &dyn Fn() -> Vec<String>,
            Duration::from_secs(settings.stats_interval),
        )
    });
    // Start-up is over: the main thread only waits for signals and cleans up from here on.
    sandbox::enter(ThreadKind::Main);
    wait_until_done(&set, None, stats);
    stop(daemon);
    manager.stop_all();
    drop(manager);
    device.shutdown();
    Ok(())
}

// ---- Operating the daemon: instances, state, control socket, metrics (issue 8) ----

/// Starts the command line's vGPUs, then restores `--state-dir` (scheduler settings, defined
/// instances, the `auto` ones started).
fn start_manager(plan: &Plan, device: &Arc<Device>, daemon: &Daemon) -> Result<Manager, Failure> {
    let settings = plan.settings.clone();
    let ops = &plan.settings.ops;
    let persist = uses_control(plan);
    let store = persist.then(|| StateStore::new(&ops.state_dir));
    let state = match &store {
        Some(s) => Some(s.load().map_err(|e| Failure {
            code: 2,
            message: e.to_string(),
        })?),
        None => None,
    };
    let manager = Manager::new(
        Arc::clone(device),
        daemon.shutdown_signal(),
        ManagerConfig {
            run_dir: ops.run_dir.clone(),
            state: store,
            vm_map: ops.vm_map.clone(),
            default_type: settings.default_type.clone(),
            device_config: Box::new(move |ty| config::live_device_config(ty, &settings)),
            features: GpuFeatures::base(),
        },
    );
    for v in &plan.vgpus {
        let Some(socket) = &v.socket else { continue };
        manager
            .start_instance(NewInstance {
                name: Some(v.name.clone()),
                type_name: v.type_name.clone(),
                uuid: Some(v.uuid),
                socket: Some(socket.clone()),
                device: Some(v.device),
            })
            .map_err(|e| {
                manager.stop_all();
                Failure {
                    code: match e.kind {
                        vgpu_mdev::proto::ErrorKind::NoRoom => 3,
                        vgpu_mdev::proto::ErrorKind::Invalid
                        | vgpu_mdev::proto::ErrorKind::Exists => 2,
                        _ => 1,
                    },
                    message: e.message,
                }
            })?;
    }
    if let (Some(state), Some(path)) = (&state, manager.state_path()) {
        manager.restore(state).map_err(|e| {
            manager.stop_all();
            Failure {
                code: 2,
                message: format!("{}: {e}", path.display()),
            }
        })?;
        log::info!(
            "state {}: {} defined instances ({} auto)",
            path.display(),
            state.instances.len(),
            state.instances.iter().filter(|i| i.auto).count()
        );
    }
    Ok(manager)
}

/// Whether this daemon serves a control socket (and so keeps state): always but with `--fd`,
/// unless the default socket is taken.
fn uses_control(plan: &Plan) -> bool {
    plan.settings.control_socket.is_some() || control_default_free()
}

fn control_default_free() -> bool {
    let path = vgpu_mdev::ctl::default_control_socket();
    !matches!(
        vgpu_backend::vhost::daemon::prepare_socket_path_check(&path),
        Err(DaemonError::SocketInUse(_))
    )
}

/// The control socket (the given one, else the default) and the metrics endpoint.
fn serve_operators(
    plan: &Plan,
    manager: &Arc<Manager>,
    daemon: &mut Daemon,
) -> Result<(), Failure> {
    let ops = &plan.settings.ops;
    let explicit = plan.settings.control_socket.clone();
    let path = explicit
        .clone()
        .unwrap_or_else(vgpu_mdev::ctl::default_control_socket);
    let handler_manager = Arc::clone(manager);
    let handler = Arc::new(move |line: &[u8], access: control::Access| {
        control::handle(&handler_manager, line, access)
    });
    match daemon.add_control(&path, ops.control_group.as_deref(), handler) {
        Ok(()) => {}
        Err(e) if explicit.is_some() => {
            return Err(Failure::runtime(format!("control socket: {e}")))
        }
        Err(e) => log::warn!(
            "no control socket (vgpuctl cannot reach this daemon; give --control-socket): {e}"
        ),
    }
    if let Some(addr) = ops.metrics_addr {
        let handle =
            vgpu_backend::metrics::serve(addr, Arc::clone(manager), daemon.shutdown_signal())
                .map_err(|e| Failure::runtime(e.to_string()))?;
        daemon.adopt_thread(handle);
    }
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
    use std::path::Path;
    use vgpu_backend::driver::engine::cpu::cpu_caps;
    use vgpu_backend::driver::engine::vulkan::{
        list_devices, DeviceSelector, DrmNode, PhysicalDeviceInfo,
    };
    use vgpu_backend::driver::engine::{
        default_device_memory, DynEngine, EngineChoice, DEFAULT_CHUNK_TARGET_NS,
    };
    use vgpu_backend::libvirt::{node_path, DRI_DIR};
    use vgpu_backend::options::resolve_engine;

    /// Opens the engine `--engine` and `--render-node` select ([`resolve_engine`]) before any
    /// socket exists (exit 3 when the device is unusable or no device has the node) and records
    /// its `--device-memory` default in `opts`.
    pub fn open(
        opts: &mut Options,
        node: Option<(DrmNode, &Path)>,
    ) -> Result<Box<dyn DynEngine>, Failure> {
        let (choice, note) = resolve_engine(opts.engine.as_ref(), node);
        if let Some(note) = note {
            log::warn!("{note}");
        }
        let engine = choice
            .open(DEFAULT_CHUNK_TARGET_NS, opts.loop_budget)
            .map_err(|e| Failure {
                code: 3,
                message: format!(
                    "engine {}: {e} (see `vgpud --list-engines`)",
                    match &choice {
                        EngineChoice::Cpu => "cpu".to_string(),
                        EngineChoice::Vulkan(DeviceSelector::RenderNode { .. }) => "vulkan".into(),
                        EngineChoice::Vulkan(s) => format!("vulkan ({s})"),
                    }
                ),
            })?;
        let caps = engine.caps();
        if engine.module_compiler().is_none() && caps.kind.as_str() == "vulkan" {
            log::warn!(
                "vgpud was built without SPIRV-Tools (package spirv-tools): guest kernels are off"
            );
        }
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

    /// Where a device's render node is on this host (its usual name if `/dev/dri` lacks it).
    fn render_node_path(node: DrmNode) -> std::path::PathBuf {
        node_path(Path::new(DRI_DIR), node).unwrap_or_else(|| node.default_path())
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
                        if let Some(node) = d.render_node {
                            o.insert(
                                "render_node_path".into(),
                                render_node_path(node).display().to_string().into(),
                            );
                        }
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
                "vulkan:{:<3} {} ({}, {}, Vulkan {}), heaps: {}{}{}",
                d.index,
                d.name,
                d.device_type,
                d.driver,
                d.api_version,
                heaps_text(d),
                d.render_node.map_or(String::new(), |n| format!(
                    ", render node {} ({n})",
                    render_node_path(n).display()
                )),
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
    let _ = logging::init(
        c"vgpud",
        log::LevelFilter::Warn,
        Sinks {
            stderr: true,
            syslog: false,
        },
        None,
    );
    match vgpu_backend::demo::run(&cmd.args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vgpud demo: {e}");
            ExitCode::from(1)
        }
    }
}

/// Makes glibc return large freed blocks to the system at once: with its default (a threshold
/// that rises to the largest block freed so far) the buffers a VM frees (8 MiB for a 1080p
/// surface) stay in the heap of whichever thread freed them, so RSS grows by steps as VMs come and
/// go. A fixed 256 KiB threshold maps every surface and buffer on its own and unmaps it when freed.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

fn main() -> ExitCode {
    tune_allocator();
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
    let node = match opts.render_node.as_deref().filter(|_| !opts.list_types) {
        Some(path) => match vgpu_backend::libvirt::check_render_node(path) {
            Ok(node) => Some((node, path.to_path_buf())),
            Err(message) => {
                eprintln!("vgpud: {message}");
                logging::persist_error(&message);
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let result = if opts.list_types {
        list_types(&opts)
    } else if opts.list_engines {
        engines::list(opts.json)
    } else if let (Some(fd), Some(socket)) = (opts.fd, &opts.attach) {
        if let Some((node, path)) = &node {
            log::info!(
                "render node {} ({node}): accepted; the shared daemon's engine serves the VM",
                path.display()
            );
        }
        run_attach(fd, socket, opts.sandbox)
    } else {
        SocketAccess::new(opts.socket_group, opts.socket_mode).install();
        let mut opts = opts;
        sandbox::configure_driver(opts.sandbox);
        let node = node.as_ref().map(|(n, p)| (*n, p.as_path()));
        engines::open(&mut opts, node).and_then(|engine| {
            config::plan(&opts)
                .map_err(Failure::from)
                .and_then(|plan| run(plan, opts.fd, opts.sandbox, engine))
        })
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
