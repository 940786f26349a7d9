//! `vgpu-smi`: status, benchmark and memory test of a vgpu-mediator vGPU from inside the guest.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vgpu::bench::{self, BenchKernel, BenchOptions};
use vgpu::device::VirtGpu;
use vgpu::error::{Error, Result, EXIT_VERIFY};
use vgpu::kbench::{self, KbenchOptions};
use vgpu::kernels::Example;
use vgpu::run::{self as run_cmd, RunOptions};
use vgpu::{memtest, runspec, smi, Device};

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
    /// Run your own SPIR-V compute kernel: load FILE, create and fill buffers, launch a grid,
    /// print or check the buffers. A module the host refuses exits 8 with the host's reason; a
    /// launch out of its loop budget exits 9.
    Run {
        /// The SPIR-V module (e.g. from `glslangValidator --target-env vulkan1.1 -o k.spv k.comp`).
        file: PathBuf,
        /// Entry point.
        #[arg(long, default_value = "main")]
        entry: String,
        /// Workgroups: X[,Y[,Z]].
        #[arg(long, value_parser = runspec::parse_grid)]
        grid: [u32; 3],
        /// A buffer: SLOT:SIZE[:OPT]... with SLOT a binding (or - for unbound), SIZE like 4096,
        /// 64K, 1M, OPT one of zero, iota, pattern=0xHEX32, f32=V, random=SEED, init=FILE, bind=OFF+LEN.
        #[arg(long = "buf", value_name = "SLOT:SIZE[:OPT]", allow_hyphen_values = true, value_parser = runspec::parse_buf)]
        bufs: Vec<runspec::BufSpec>,
        /// Push constants: comma list of u32:V, i32:V, f32:V, hex:BYTES or a bare u32.
        #[arg(long, value_parser = runspec::parse_push_arg)]
        push: Option<runspec::PushBytes>,
        /// Push constants as u32s: A,B,... (shorthand for --push A,B,...).
        #[arg(long, value_name = "A,B,...", conflicts_with = "push", value_parser = runspec::parse_push_arg)]
        push_u32: Option<runspec::PushBytes>,
        /// Print a buffer after the launch: SLOT[:hex|u32|i32|f32[:OFF+LEN]].
        #[arg(long = "dump", value_name = "SLOT[:FMT[:OFF+LEN]]", value_parser = runspec::parse_dump)]
        dumps: Vec<runspec::DumpSpec>,
        /// Check a range after the launch: SLOT:OFF+LEN=0xPATTERN (exit 1 if any word differs).
        #[arg(long = "expect", value_name = "SLOT:OFF+LEN=0xPAT", value_parser = runspec::parse_expect)]
        expects: Vec<runspec::ExpectSpec>,
        /// Launch this many times (timed); dumps and checks see the last launch.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// Send the module without the library's own size checks, to see what the host says.
        #[arg(long)]
        unchecked: bool,
    },
    /// Run the example kernels (reduce_sum, conv2d, softmax) at a few sizes, verify against CPU
    /// references, report time and throughput.
    Kbench {
        /// Examples to run (default: all three).
        #[arg(long = "kernel", value_enum)]
        kernels: Vec<Example>,
        /// Only the smallest size of each.
        #[arg(long)]
        quick: bool,
        /// Timed runs per size.
        #[arg(long, default_value_t = 5)]
        launches: u32,
        /// Seed of the random inputs.
        #[arg(long, default_value_t = 0x5eed)]
        seed: u64,
    },
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
        Some(Cmd::Run {
            file,
            entry,
            grid,
            bufs,
            push,
            push_u32,
            dumps,
            expects,
            repeat,
            unchecked,
        }) => {
            let dev = Device::from_gpu(gpu)?;
            let opts = RunOptions {
                file: file.clone(),
                entry: entry.clone(),
                grid: *grid,
                bufs: bufs.clone(),
                push: push
                    .clone()
                    .or_else(|| push_u32.clone())
                    .map(|p| p.0)
                    .unwrap_or_default(),
                dumps: dumps.clone(),
                expects: expects.clone(),
                repeat: *repeat,
                unchecked: *unchecked,
            };
            let r = run_cmd::run(&dev, &opts)?;
            print(&if cli.json { r.to_json() } else { r.render() })?;
            Ok(r.ok)
        }
        Some(Cmd::Kbench {
            kernels,
            quick,
            launches,
            seed,
        }) => {
            let dev = Device::from_gpu(gpu)?;
            let opts = KbenchOptions {
                examples: if kernels.is_empty() {
                    Example::ALL.to_vec()
                } else {
                    kernels.clone()
                },
                quick: *quick,
                launches: *launches,
                seed: *seed,
            };
            let r = kbench::run(&dev, &opts)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definitions() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "vgpu-smi",
            "run",
            "k.spv",
            "--grid",
            "4,2",
            "--buf",
            "0:1M:pattern=0xcafef00d:bind=0+1024",
            "--buf",
            "-:4K",
            "--push-u32",
            "16384,15",
            "--dump",
            "0:u32:0+16",
            "--expect",
            "0:0+1024=0x600df00d",
            "--repeat",
            "2",
        ])
        .unwrap();
        match cli.cmd {
            Some(Cmd::Run {
                grid,
                bufs,
                push,
                push_u32,
                dumps,
                expects,
                repeat,
                ..
            }) => {
                assert_eq!(grid, [4, 2, 1]);
                assert_eq!(bufs.len(), 2);
                assert!(push.is_none());
                assert_eq!(push_u32.unwrap().0, [0, 0x40, 0, 0, 15, 0, 0, 0]);
                assert_eq!((dumps.len(), expects.len(), repeat), (1, 1, 2));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "vgpu-smi",
            "run",
            "k.spv",
            "--grid",
            "1",
            "--push",
            "1,f32:0.5",
        ])
        .unwrap();
        assert!(matches!(cli.cmd, Some(Cmd::Run { push: Some(_), .. })));
        assert!(Cli::try_parse_from([
            "vgpu-smi",
            "run",
            "k.spv",
            "--grid",
            "1",
            "--push",
            "1",
            "--push-u32",
            "2"
        ])
        .is_err());
        let cli =
            Cli::try_parse_from(["vgpu-smi", "kbench", "--kernel", "softmax", "--quick"]).unwrap();
        assert!(matches!(cli.cmd, Some(Cmd::Kbench { quick: true, .. })));
    }
}
