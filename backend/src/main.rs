//! vgpud entry point: parse options, start the listeners, wait for a signal or for the served
//! connection to end, shut down cleanly.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vgpu_backend::device::DeviceConfig;
use vgpu_backend::options::{Capabilities, Options};
use vgpu_backend::vhost::backend::GpuFeatures;
use vgpu_backend::vhost::daemon::{Daemon, VgpuConfig};

/// Signals that end the daemon.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
/// How often the main thread checks whether the served connections ended.
const POLL: Duration = Duration::from_millis(100);
/// How long shutdown waits for connection threads before exiting anyway.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

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

fn run(opts: Options) -> Result<(), String> {
    let set = block_stop_signals().map_err(|e| format!("blocking signals: {e}"))?;
    let config = VgpuConfig {
        device: DeviceConfig {
            num_scanouts: opts.scanouts,
            width: opts.resolution.width,
            height: opts.resolution.height,
            edid: true,
        },
        max_hostmem: opts.max_hostmem_bytes(),
        features: GpuFeatures::base(),
    };
    let mut daemon = Daemon::new().map_err(|e| e.to_string())?;
    match (&opts.socket_path, opts.fd) {
        (Some(path), None) => daemon.add_socket(path, config),
        (None, Some(fd)) => daemon.add_connected_fd(fd, config),
        _ => return Err("exactly one of --socket-path and --fd is needed".into()),
    }
    .map_err(|e| e.to_string())?;
    log::info!(
        "vgpud {} serving: {} scanout(s) at {}, {} MiB host memory per VM",
        env!("CARGO_PKG_VERSION"),
        opts.scanouts,
        opts.resolution,
        opts.max_hostmem
    );
    loop {
        if let Some(sig) = wait_signal(&set, POLL) {
            log::info!("signal {sig}: shutting down");
            break;
        }
        if daemon.finished() {
            log::info!("connection ended: exiting");
            break;
        }
    }
    if !daemon.stop(STOP_TIMEOUT) {
        log::warn!("some connections did not end within {STOP_TIMEOUT:?}; exiting anyway");
    }
    // Dropping the daemon removes its socket files and temporary directories.
    drop(daemon);
    Ok(())
}

fn main() -> ExitCode {
    let opts = Options::parse();
    if opts.print_capabilities {
        println!("{}", Capabilities::current().to_json());
        return ExitCode::SUCCESS;
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vgpud: {e}");
            ExitCode::FAILURE
        }
    }
}
