//! `vgpuctl`: manage the vGPU instances of a running `vgpud` the way `mdevctl` manages mediated
//! devices (`create`, `remove`, `define`, `undefine`, `start`, `stop`, `list`, `types`) and
//! inspect them the way `nvidia-smi vgpu` does (`stats`, `sched-log`), plus `sched` (change
//! the scheduler live), `screenshot` and `claim`. It talks to the daemon's control socket
//! (`-c PATH`, else `$VGPUD_CONTROL`, else `/run/vgpud/control.sock`); the protocol is in
//! mdev/README.md.

use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use vgpu_mdev::ctl::{
    default_control_socket, list_table, sched_log_table, stats_table, types_table, Client,
};
use vgpu_mdev::proto::Request;
use vgpu_mdev::TypeTable;

/// vGPU types and instances of a `vgpud` device.
#[derive(Parser)]
#[command(
    name = "vgpuctl",
    version,
    about = "Manage and inspect the vGPU instances of a running vgpud (in the manner of mdevctl and nvidia-smi vgpu)"
)]
struct Cli {
    /// The daemon's control socket [default: $VGPUD_CONTROL, else /run/vgpud/control.sock].
    #[arg(
        short = 'c',
        long = "control",
        value_name = "PATH",
        global = true,
        alias = "socket",
        short_alias = 's'
    )]
    control: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// What `create` and `define` take to describe an instance.
#[derive(Args)]
struct InstanceSpec {
    /// Its type.
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    type_name: String,
    /// Its UUID [default: random].
    #[arg(short = 'u', long)]
    uuid: Option<String>,
    /// Its vhost-user socket [default: <run-dir>/<uuid>.sock].
    #[arg(long, value_name = "PATH")]
    vhost_socket: Option<PathBuf>,
    /// Start it whenever the daemon starts (`create`: also define it).
    #[arg(short = 'a', long)]
    auto: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// The vGPU types with live available instances (or those of a types file, offline).
    Types {
        /// Types file (TOML, or JSON if it ends in `.json`) to list instead of asking the daemon.
        #[arg(long = "types", value_name = "FILE")]
        types_file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long, alias = "dumpjson")]
        json: bool,
    },
    /// The instances: uuid, type, state (defined/listening/connected), memory, utilization.
    List {
        /// Print a JSON array (keys uuid, type, socket, state, fb_used_bytes, fb_total_bytes, ...).
        #[arg(long, alias = "dumpjson")]
        json: bool,
    },
    /// Creates and starts an instance; prints its UUID once its socket listens.
    Create {
        #[command(flatten)]
        spec: InstanceSpec,
        /// Print {"uuid", "type", "socket"}.
        #[arg(long)]
        json: bool,
    },
    /// Stops an instance and forgets it (and its definition).
    Remove {
        /// The instance.
        uuid: String,
        /// Disconnect a connected VM instead of refusing.
        #[arg(short, long)]
        force: bool,
        /// Print the daemon's reply.
        #[arg(long)]
        json: bool,
    },
    /// Records an instance in the daemon's state directory without starting it.
    Define {
        #[command(flatten)]
        spec: InstanceSpec,
        /// Print the daemon's reply.
        #[arg(long)]
        json: bool,
    },
    /// Forgets a definition (a started instance keeps running until stopped).
    Undefine {
        /// The instance.
        uuid: String,
        /// Print the daemon's reply.
        #[arg(long)]
        json: bool,
    },
    /// Starts a defined instance.
    Start {
        /// The instance.
        uuid: String,
        /// Print the daemon's reply.
        #[arg(long)]
        json: bool,
    },
    /// Stops a started instance (a defined one stays defined).
    Stop {
        /// The instance.
        uuid: String,
        /// Disconnect a connected VM instead of refusing.
        #[arg(short, long)]
        force: bool,
        /// Print the daemon's reply.
        #[arg(long)]
        json: bool,
    },
    /// Per-vGPU utilization, memory, share and time slice.
    Stats {
        /// Print the daemon's JSON reply.
        #[arg(long)]
        json: bool,
    },
    /// The scheduler log: one line per time slice.
    SchedLog {
        /// Newest slices to show.
        #[arg(long, default_value_t = 64)]
        limit: usize,
        /// Print the daemon's JSON reply.
        #[arg(long)]
        json: bool,
    },
    /// Changes the scheduler now (the time slice from the next turn) and prints what changed.
    Sched {
        /// best-effort, equal-share or fixed-share.
        #[arg(long, value_name = "POLICY")]
        policy: Option<String>,
        /// Device time slice in µs (1000..=30000).
        #[arg(long, value_name = "N")]
        timeslice_us: Option<u32>,
        /// Print the daemon's reply.
        #[arg(long)]
        json: bool,
    },
    /// Writes what scanout HEAD of an instance shows as a PNG file.
    Screenshot {
        /// The instance.
        uuid: String,
        /// The file to write.
        file: PathBuf,
        /// The scanout.
        #[arg(long, default_value_t = 0)]
        head: u32,
        /// Print {"width", "height", "file"}.
        #[arg(long)]
        json: bool,
    },
    /// Claims a started instance with no VM, as a per-VM relay does (see mdev/README.md).
    Claim {
        /// Wanted type.
        #[arg(short = 't', long = "type", value_name = "TYPE")]
        type_name: Option<String>,
        /// The VM's name (looked up in the daemon's --vm-map).
        #[arg(long)]
        vm: Option<String>,
        /// Print the daemon's reply.
        #[arg(long)]
        json: bool,
    },
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

fn run(cli: Cli) -> Result<String, String> {
    let client = Client::new(cli.control.unwrap_or_else(default_control_socket));
    let call = |r: Request| client.call(r).map_err(|e| e.to_string());
    let out = |json: bool, reply: &Value, text: String| if json { pretty(reply) } else { text };
    match cli.cmd {
        Cmd::Types {
            types_file: Some(path),
            json,
        } => {
            let table = TypeTable::load_file(&path).map_err(|e| e.to_string())?;
            if json {
                let types: Vec<_> = table.iter().collect();
                return Ok(pretty(&serde_json::to_value(types).unwrap_or_default()));
            }
            Ok(table
                .iter()
                .map(|t| format!("{}\n  {}\n", t.name, t.description()))
                .collect())
        }
        Cmd::Types {
            types_file: None,
            json,
        } => {
            let reply = call(Request::Types { v: None })?;
            Ok(out(json, &reply["types"], types_table(&reply)))
        }
        Cmd::List { json } => {
            let reply = call(Request::List { v: None })?;
            Ok(out(json, &reply["vgpus"], list_table(&reply)))
        }
        Cmd::Create { spec, json } => {
            let r = call(Request::Create {
                v: None,
                type_name: spec.type_name,
                uuid: spec.uuid,
                socket: spec.vhost_socket,
                auto: spec.auto,
            })?;
            let brief =
                serde_json::json!({"uuid": r["uuid"], "type": r["type"], "socket": r["socket"]});
            Ok(out(
                json,
                &brief,
                format!("{}\n", r["uuid"].as_str().unwrap_or("?")),
            ))
        }
        Cmd::Remove { uuid, force, json } => {
            let r = call(Request::Remove {
                v: None,
                uuid,
                force,
            })?;
            let text = if r["disconnected"] == true {
                format!(
                    "removed {} (VM disconnected)\n",
                    r["uuid"].as_str().unwrap_or("?")
                )
            } else {
                format!("removed {}\n", r["uuid"].as_str().unwrap_or("?"))
            };
            Ok(out(json, &r, text))
        }
        Cmd::Define { spec, json } => {
            let r = call(Request::Define {
                v: None,
                type_name: spec.type_name,
                uuid: spec.uuid,
                socket: spec.vhost_socket,
                auto: spec.auto,
            })?;
            Ok(out(
                json,
                &r,
                format!("{}\n", r["uuid"].as_str().unwrap_or("?")),
            ))
        }
        Cmd::Undefine { uuid, json } => {
            let r = call(Request::Undefine { v: None, uuid })?;
            Ok(out(json, &r, String::new()))
        }
        Cmd::Start { uuid, json } => {
            let r = call(Request::Start { v: None, uuid })?;
            Ok(out(
                json,
                &r,
                format!("{}\n", r["socket"].as_str().unwrap_or("?")),
            ))
        }
        Cmd::Stop { uuid, force, json } => {
            let r = call(Request::Stop {
                v: None,
                uuid,
                force,
            })?;
            Ok(out(json, &r, String::new()))
        }
        Cmd::Stats { json } => {
            let reply = call(Request::Stats { v: None })?;
            Ok(out(json, &reply, stats_table(&reply)))
        }
        Cmd::SchedLog { limit, json } => {
            let reply = call(Request::SchedLog {
                v: None,
                limit: Some(limit),
            })?;
            Ok(out(json, &reply, sched_log_table(&reply)))
        }
        Cmd::Sched {
            policy,
            timeslice_us,
            json,
        } => {
            let r = call(Request::Sched {
                v: None,
                policy,
                timeslice_us,
            })?;
            let text = format!(
                "policy: {} -> {}\ntimeslice_us: {} -> {}\n",
                r["policy"]["before"].as_str().unwrap_or("?"),
                r["policy"]["after"].as_str().unwrap_or("?"),
                r["timeslice_us"]["before"],
                r["timeslice_us"]["after"],
            );
            Ok(out(json, &r, text))
        }
        Cmd::Screenshot {
            uuid,
            file,
            head,
            json,
        } => {
            let r = call(Request::Screenshot {
                v: None,
                uuid,
                head,
            })?;
            let png = base64::engine::general_purpose::STANDARD
                .decode(r["png"].as_str().unwrap_or_default())
                .map_err(|e| format!("the daemon's PNG is not base64: {e}"))?;
            if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
                return Err("the daemon's reply is not a PNG".into());
            }
            std::fs::write(&file, &png).map_err(|e| format!("{}: {e}", file.display()))?;
            let brief = serde_json::json!({"width": r["width"], "height": r["height"],
                "file": file, "bytes": png.len()});
            Ok(out(
                json,
                &brief,
                format!("{}: {}x{} PNG\n", file.display(), r["width"], r["height"]),
            ))
        }
        Cmd::Claim {
            type_name,
            vm,
            json,
        } => {
            let r = call(Request::Claim {
                v: None,
                type_name,
                vm,
            })?;
            Ok(out(
                json,
                &r,
                format!(
                    "{} {}\n",
                    r["uuid"].as_str().unwrap_or("?"),
                    r["socket"].as_str().unwrap_or("?")
                ),
            ))
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vgpuctl: {e}");
            ExitCode::from(1)
        }
    }
}
