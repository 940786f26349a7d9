//! `vgpu-smi`: status, benchmark and memory test of a vgpu-mediator vGPU from inside the guest.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vgpu_guest_tools::bench::{self, BenchKernel, BenchOptions};
use vgpu_guest_tools::device::VirtGpu;
use vgpu_guest_tools::error::{Error, Result, EXIT_VERIFY};
use vgpu_guest_tools::{memtest, smi};

/// Status of this VM's vGPU (like nvidia-smi), a verified kernel benchmark, and a memory test.
#[derive(Debug, Parser)]
#[command(name = "vgpu-smi", version)]
struct Cli {
    /// Render node to use (default: the first /dev/dri/renderD* of driver virtio_gpu).
    #[arg(long, global = true)]
    device: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for the host to finish one job before reporting an error.
    #[arg(long, global = true, default_value_t = 120, value_name = "SECS")]
    timeout: u64,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a kernel repeatedly, verify every result against a CPU reference, report throughput
    /// and latency.
    Bench {
        /// Kernel to run.
        #[arg(long, value_enum, default_value_t = BenchKernel::Gemm)]
        kernel: BenchKernel,
        /// Matrix order (gemm), elements (axpy, reduce) or bytes (hash).
        #[arg(long)]
        size: Option<u32>,
        /// How long to run.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Seed of the random inputs.
        #[arg(long, default_value_t = 0x5eed)]
        seed: u64,
    },
    /// Fill the framebuffer budget until the host refuses; check the limit, zero-fill and free.
    Memtest,
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| {
            if text.ends_with('\n') {
                Ok(())
            } else {
                out.write_all(b"\n")
            }
        })
        .map_err(|e| Error::Output(e.to_string()))
}

/// Runs the command; `Ok(false)` when a check failed (results were printed).
fn run(cli: &Cli) -> Result<bool> {
    let mut gpu = VirtGpu::open(cli.device.as_deref())?;
    gpu.set_fence_timeout(Duration::from_secs(cli.timeout));
    match &cli.cmd {
        None => {
            let r = smi::run(&gpu)?;
            print(&if cli.json {
                r.to_json()
            } else {
                r.render_table()
            })?;
            Ok(true)
        }
        Some(Cmd::Bench {
            kernel,
            size,
            seconds,
            seed,
        }) => {
            let opts = BenchOptions {
                kernel: *kernel,
                size: size.unwrap_or_else(|| kernel.default_size()),
                seconds: *seconds,
                seed: *seed,
            };
            let r = bench::run(&gpu, &opts)?;
            print(&if cli.json { r.to_json() } else { r.render() })?;
            Ok(r.verified)
        }
        Some(Cmd::Memtest) => {
            let r = memtest::run(&gpu)?;
            print(&if cli.json { r.to_json() } else { r.render() })?;
            Ok(r.passed)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_VERIFY as u8),
        Err(e) => {
            eprintln!("vgpu-smi: {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}
