//! `vgpud-relay`: the per-VM process libvirt starts (`--fd N`) when VMs share one `vgpud`.
//!
//! It names the VM from the pidfile libvirt hands it, asks the shared daemon's control socket for
//! that VM's instance (`{"cmd":"claim","vm":NAME}`: the operator's VM map, else a free instance of
//! the default type), and relays the libvirt connection into the instance's vhost-user socket,
//! descriptors included, until the VM stops (SIGTERM) or the connection ends.
//!
//! Nothing per VM is configured here: one descriptor serves every VM. The control socket and a
//! default type come from `--control`/`--type`, else the config file (`--config`, else
//! `$VGPUD_RELAY_CONFIG`, else `/etc/vgpud/relay.toml` if present), else `$VGPUD_CONTROL`, else
//! `/run/vgpud/control.sock`.
//!
//! Exit status: 0 after a clean end; 1 the claim or the relay failed (logged to stderr, syslog and
//! the log file); 2 invalid command line or config file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vgpu_backend::libvirt::{self, RelayConfig};
use vgpu_backend::logging::{self, Sinks};
use vgpu_backend::options::{self, Capabilities};

/// The per-VM relay of a shared `vgpud` (named in the vhost-user descriptor libvirt reads).
#[derive(Debug, Parser)]
#[command(name = "vgpud-relay", version, about)]
struct RelayOptions {
    /// The connected vhost-user socket libvirt passes.
    #[arg(short = 'f', long, value_name = "FDNUM", value_parser = clap::value_parser!(i32).range(3..))]
    fd: i32,

    /// Print the backend capabilities as JSON and exit (answered before any other option is
    /// looked at).
    #[arg(short = 'c', long)]
    print_capabilities: bool,

    /// Accepted as libvirt passes it for `accel3d='yes'`; the shared daemon offers VIRGL anyway.
    #[arg(long)]
    virgl: bool,

    /// Accepted as libvirt passes it; must be a DRM device. The shared daemon's own device serves
    /// the VM.
    #[arg(long, value_name = "PATH")]
    render_node: Option<PathBuf>,

    /// The relay's config file [default: $VGPUD_RELAY_CONFIG, else /etc/vgpud/relay.toml if it
    /// exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// The shared daemon's control socket [default: the config's `control`, else $VGPUD_CONTROL,
    /// else /run/vgpud/control.sock].
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,

    /// The vGPU type to claim when the daemon's VM map names none [default: the config's `type`,
    /// else the daemon's default].
    #[arg(long = "type", value_name = "TYPE")]
    type_name: Option<String>,

    /// The VM's name for the daemon's VM map [default: read from libvirt's pidfile].
    #[arg(long, value_name = "NAME")]
    vm: Option<String>,

    /// Append log lines to this file too [default: the config's `log_file`].
    #[arg(long, value_name = "FILE", env = "VGPUD_LOG_FILE")]
    log_file: Option<PathBuf>,
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("vgpud-relay: {message}");
    logging::persist_error(message);
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if options::wants_capabilities(args.get(1..).unwrap_or_default()) {
        println!("{}", Capabilities::current().to_json());
        return ExitCode::SUCCESS;
    }
    let opts = RelayOptions::parse();
    let (config_path, must_exist) = match (&opts.config, std::env::var_os("VGPUD_RELAY_CONFIG")) {
        (Some(p), _) => (p.clone(), true),
        (None, Some(p)) => (PathBuf::from(p), true),
        (None, None) => (PathBuf::from(libvirt::DEFAULT_RELAY_CONFIG), false),
    };
    // Read the config before logging is set up, so that its log_file is honoured; report a bad
    // one to the system log at least.
    let config = RelayConfig::load(&config_path, must_exist);
    let log_file = opts
        .log_file
        .clone()
        .or_else(|| config.as_ref().ok().and_then(|c| c.log_file.clone()));
    if let Err(e) = logging::init(
        c"vgpud-relay",
        log::LevelFilter::Info,
        Sinks::detect(),
        log_file.as_deref(),
    ) {
        let _ = logging::init(
            c"vgpud-relay",
            log::LevelFilter::Info,
            Sinks::detect(),
            None,
        );
        return fail(2, &e.to_string());
    }
    let config = match config {
        Ok(c) => c,
        Err(e) => return fail(2, &e.to_string()),
    };
    if let Some(node) = &opts.render_node {
        if let Err(e) = libvirt::check_render_node(node) {
            return fail(2, &e);
        }
    }
    let identity = libvirt::identify();
    let vm = opts
        .vm
        .clone()
        .or_else(|| identity.as_ref().map(|i| i.name.clone()));
    let control = opts
        .control
        .clone()
        .or(config.control)
        .unwrap_or_else(vgpu_mdev::ctl::default_control_socket);
    let type_name = opts.type_name.clone().or(config.type_name);
    log::info!(
        "fd {} for VM {} (libvirt domain id {}, {}){}{}: claiming from {}",
        opts.fd,
        vm.as_deref().unwrap_or("(unnamed)"),
        identity.as_ref().map_or("-".into(), |i| i.id.to_string()),
        identity.as_ref().map_or("-", |i| i.alias.as_str()),
        if opts.virgl { ", --virgl" } else { "" },
        opts.render_node.as_ref().map_or(String::new(), |n| format!(
            ", --render-node {}",
            n.display()
        )),
        control.display()
    );
    let claim = match libvirt::claim(&control, type_name.as_deref(), vm.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(1, &e.to_string()),
    };
    log::info!(
        "VM {}: vGPU {} ({}) on {}",
        vm.as_deref().unwrap_or("(unnamed)"),
        claim.uuid,
        claim.type_name,
        claim.socket.display()
    );
    match libvirt::relay_until_stopped(opts.fd, &claim.socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &format!("relay to {}: {e}", claim.socket.display())),
    }
}
