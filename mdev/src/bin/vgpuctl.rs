//! `vgpuctl`: manage vGPU types and inspect the vGPU instances of a running `vgpud`, the way
//! `mdevctl` and `nvidia-smi vgpu` do for mdev devices and NVIDIA vGPUs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vgpu_mdev::ctl::{list_table, query, sched_log_table, stats_table};
use vgpu_mdev::TypeTable;

/// vGPU types and instances of a `vgpud` device.
#[derive(Parser)]
#[command(name = "vgpuctl", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the vGPU types (built-in, or with a types file as `vgpud --types` loads it).
    Types {
        /// Types file (TOML, or JSON if it ends in `.json`) overriding or extending the built-ins.
        #[arg(long = "types", value_name = "FILE")]
        types_file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the vGPU instances of a running vgpud (its `--control-socket`).
    List {
        /// The daemon's control socket.
        #[arg(short, long, value_name = "PATH")]
        socket: PathBuf,
        /// Print the daemon's JSON reply.
        #[arg(long)]
        dumpjson: bool,
    },
    /// Per-vGPU utilization, memory, share and time slice.
    Stats {
        /// The daemon's control socket.
        #[arg(short, long, value_name = "PATH")]
        socket: PathBuf,
        /// Print the daemon's JSON reply.
        #[arg(long)]
        json: bool,
    },
    /// The scheduler log: one line per time slice.
    SchedLog {
        /// The daemon's control socket.
        #[arg(short, long, value_name = "PATH")]
        socket: PathBuf,
        /// Newest slices to show.
        #[arg(long, default_value_t = 64)]
        limit: usize,
        /// Print the daemon's JSON reply.
        #[arg(long)]
        json: bool,
    },
}

fn run(cli: Cli) -> Result<String, String> {
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    match cli.cmd {
        Cmd::Types { types_file, json } => {
            let table = match types_file {
                Some(path) => TypeTable::load_file(&path).map_err(|e| e.to_string())?,
                None => TypeTable::builtin(),
            };
            if json {
                let types: Vec<_> = table.iter().collect();
                return Ok(serde_json::to_string_pretty(&types).unwrap_or_default() + "\n");
            }
            Ok(table
                .iter()
                .map(|t| format!("{}\n  {}\n", t.name, t.description()))
                .collect())
        }
        Cmd::List { socket, dumpjson } => {
            let reply = query(&socket, "list", None).map_err(|e| e.to_string())?;
            Ok(if dumpjson {
                pretty(&reply)
            } else {
                list_table(&reply)
            })
        }
        Cmd::Stats { socket, json } => {
            let reply = query(&socket, "stats", None).map_err(|e| e.to_string())?;
            Ok(if json {
                pretty(&reply)
            } else {
                stats_table(&reply)
            })
        }
        Cmd::SchedLog {
            socket,
            limit,
            json,
        } => {
            let reply = query(&socket, "sched-log", Some(limit)).map_err(|e| e.to_string())?;
            Ok(if json {
                pretty(&reply)
            } else {
                sched_log_table(&reply)
            })
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
