//! `vgpu-smi memtest`: fills the vGPU's framebuffer budget until the host refuses, checks that
//! the refusal comes where the capset says, that fresh buffers read back as zeros, and that
//! freeing returns the memory.
//!
//! Linux 6.12 queues RESOURCE_CREATE_3D and returns without waiting for the answer; an
//! `ERR_OUT_OF_MEMORY` response is only logged ("response 0x1201 (command 0x200)") and the fence
//! still signals. So each allocation is confirmed by WAIT on the new BO (its create fence) and a
//! QUERY_STATS: `framebuffer_used_bytes` must grow. An allocation that leaves it unchanged failed.
//!
//! Buffers get a one-page guest backing: device memory is charged by `width`, and the guest need
//! not have as much RAM as the vGPU has framebuffer. The backend also charges the host-side
//! bookkeeping of each attached backing (a few bytes per page entry) to the same budget, after
//! the buffer itself (Linux sends RESOURCE_ATTACH_BACKING after RESOURCE_CREATE_3D). A one-page
//! backing is one entry, so that overhead is the same for every buffer: the test learns it from
//! allocations (the smallest seen) and leaves room for it at the tail, so the last buffer that
//! fits is a whole buffer with its backing, and the budget is used to the byte. An allocation
//! charged exactly its width, when the backend charges backings, lost its backing and does not
//! count.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use vgpu_protocol::channel::{Crc32cArgs, FillCmd, KernelLaunch};
use vgpu_protocol::{ChannelCommand, Kernel, StatsRecord};

use crate::device::{Buffer, Stream, VirtGpu};
use crate::error::Result;
use crate::reference::crc32c_of_zeros;

/// Largest allocation step.
pub const CHUNK: u32 = 16 << 20;
/// Smallest allocation step (and the probe size once the budget is full).
pub const MIN_CHUNK: u32 = 4096;
/// Guest backing per buffer (one page, one backing entry): the staging window for the zero
/// read-back.
pub const BACKING: u32 = 4096;
/// Scratch layout: stats record at 0, CRC results from here.
const CRC_BASE: u32 = 4096;
/// CRC result slots in the scratch buffer: one FILL plus this many launches fill a submit to
/// `MAX_COMMANDS_PER_SUBMIT` (1024).
const CRC_SLOTS: u32 = vgpu_protocol::channel::MAX_COMMANDS_PER_SUBMIT as u32 - 1;
/// Upper bound on allocation attempts.
const MAX_STEPS: usize = 200_000;

/// The memtest result; its JSON keys are stable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemtestReport {
    /// Framebuffer in use when the next allocation failed (device's count).
    pub limit_bytes: u64,
    /// Bytes this test allocated successfully (sum of buffer widths).
    pub allocated_bytes: u64,
    /// Every fresh buffer read back as zeros.
    pub zeroed: bool,
    /// The capset's framebuffer size.
    pub framebuffer_bytes: u64,
    /// Used before the test (other buffers of this VM and this tool's scratch buffer).
    pub used_before_bytes: u64,
    /// Largest charge over the requested width seen (allocation granularity).
    pub granularity_bytes: u64,
    /// Buffers allocated.
    pub buffers: usize,
    /// The limit is the capset's framebuffer size (within the granularity).
    pub limit_matches_capset: bool,
    /// After freeing, used bytes returned to `used_before_bytes`.
    pub freed: bool,
    /// Everything above held.
    pub passed: bool,
    /// What failed, if anything.
    pub failures: Vec<String>,
}

impl MemtestReport {
    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        crate::pretty_json(self)
    }

    /// Human-readable summary.
    pub fn render(&self) -> String {
        let mut s = format!(
            "framebuffer {} bytes (capset); used before {}; allocated {} bytes in {} buffers; \
             limit at {} bytes used ({}); granularity {} bytes; fresh buffers {}; {}\n",
            self.framebuffer_bytes,
            self.used_before_bytes,
            self.allocated_bytes,
            self.buffers,
            self.limit_bytes,
            if self.limit_matches_capset {
                "matches the capset"
            } else {
                "DOES NOT match the capset"
            },
            self.granularity_bytes,
            if self.zeroed { "zeroed" } else { "NOT ZEROED" },
            if self.freed {
                "all memory freed"
            } else {
                "memory NOT returned"
            },
        );
        for f in &self.failures {
            s.push_str("FAILED: ");
            s.push_str(f);
            s.push('\n');
        }
        s
    }
}

/// The size of the next allocation: up to `max_step`, exactly the remaining budget at the tail,
/// and a [`MIN_CHUNK`] probe once the budget is used up.
pub fn next_request(total: u64, used: u64, max_step: u32) -> u32 {
    let remaining = total.saturating_sub(used);
    if remaining == 0 {
        MIN_CHUNK
    } else {
        u32::try_from(remaining.min(u64::from(max_step))).unwrap_or(max_step)
    }
}

/// True when `limit` is `total` within `granularity` (never above it).
pub fn limit_matches(limit: u64, total: u64, granularity: u64) -> bool {
    limit <= total && total - limit < granularity.max(u64::from(MIN_CHUNK))
}

struct Ctx<'d, 's> {
    gpu: &'d VirtGpu,
    scratch: &'s mut Buffer<'d>,
    stream: Stream,
}

impl Ctx<'_, '_> {
    fn stats(&mut self) -> Result<StatsRecord> {
        self.gpu.query_stats(self.scratch, 0, &mut self.stream)
    }
}

/// Runs the memory test.
pub fn run(gpu: &VirtGpu) -> Result<MemtestReport> {
    let mut scratch = gpu.create_buffer(CRC_BASE + CRC_SLOTS * 4, CRC_BASE + CRC_SLOTS * 4)?;
    let mut ctx = Ctx {
        gpu,
        scratch: &mut scratch,
        stream: Stream::new(),
    };
    let fb = gpu.capset().framebuffer_bytes;
    let s0 = ctx.stats()?;
    let mut failures = Vec::new();
    if s0.framebuffer_total_bytes != fb {
        failures.push(format!(
            "QUERY_STATS total {} differs from the capset's framebuffer {fb}",
            s0.framebuffer_total_bytes
        ));
    }
    let total = s0.framebuffer_total_bytes;
    let mut max_step = CHUNK;
    if gpu.capset().max_buffer_bytes != 0 {
        let cap = u32::try_from(gpu.capset().max_buffer_bytes).unwrap_or(u32::MAX);
        max_step = max_step.min(cap).max(MIN_CHUNK);
    }

    let mut bufs: Vec<Buffer<'_>> = Vec::new();
    let mut used = s0.framebuffer_used_bytes;
    let mut allocated = 0u64;
    let mut granularity = 0u64;
    // Host bookkeeping charged per buffer beyond its width: the smallest seen.
    let mut overhead: Option<u64> = None;
    for _ in 0..MAX_STEPS {
        let reserve = overhead.unwrap_or(0);
        let want = next_request(total, used.saturating_add(reserve), max_step);
        let full = used.saturating_add(reserve) >= total;
        let buf = gpu.create_buffer(want, want.min(BACKING))?;
        buf.wait("RESOURCE_CREATE")?;
        let s = ctx.stats()?;
        let delta = s.framebuffer_used_bytes.saturating_sub(used);
        let extra = delta.saturating_sub(u64::from(want));
        // A refused backing leaves exactly the width charged; any charge beyond it is the
        // backing's (or, at worst, someone else's allocation in this VM, which is no reason to
        // drop the buffer).
        let whole = delta >= u64::from(want) && (extra > 0 || overhead.is_none_or(|o| o == 0));
        if !whole {
            drop(buf);
            if delta != 0 && !wait_freed(&mut ctx, used)? {
                failures.push(format!(
                    "a refused allocation of {want} bytes was not given back"
                ));
                break;
            }
            if full || want <= MIN_CHUNK {
                break;
            }
            // Refused below the budget: retry smaller to find the exact edge.
            max_step = (want / 2).max(MIN_CHUNK);
            continue;
        }
        if full {
            failures.push(format!(
                "an allocation of {want} bytes succeeded with the budget ({total}) already used"
            ));
            drop(buf);
            break;
        }
        overhead = Some(overhead.map_or(extra, |o| o.min(extra)));
        granularity = granularity.max(extra);
        used = s.framebuffer_used_bytes;
        allocated += u64::from(want);
        bufs.push(buf);
        if used > total {
            failures.push(format!("used {used} exceeds the budget {total}"));
            break;
        }
    }
    let limit = used;
    let limit_ok = limit_matches(limit, fb, granularity);
    if !limit_ok {
        failures.push(format!(
            "allocation stopped at {limit} bytes used, the capset says {fb}"
        ));
    }

    let zeroed = check_zeroed(&mut ctx, &mut bufs, &mut failures)?;
    let count = bufs.len();
    drop(bufs);
    let freed = wait_freed(&mut ctx, s0.framebuffer_used_bytes)?;
    if !freed {
        failures.push("used bytes did not return to their value before the test".into());
    }
    Ok(MemtestReport {
        limit_bytes: limit,
        allocated_bytes: allocated,
        zeroed,
        framebuffer_bytes: fb,
        used_before_bytes: s0.framebuffer_used_bytes,
        granularity_bytes: granularity,
        buffers: count,
        limit_matches_capset: limit_ok,
        freed,
        passed: failures.is_empty(),
        failures,
    })
}

/// Reads the first and last window of every buffer (into poisoned backings) and, when the vGPU
/// has CRC32C, checksums every buffer whole against the CRC of zeros.
fn check_zeroed(
    ctx: &mut Ctx<'_, '_>,
    bufs: &mut [Buffer<'_>],
    failures: &mut Vec<String>,
) -> Result<bool> {
    let mut ok = true;
    for (i, b) in bufs.iter_mut().enumerate() {
        let w = b.width();
        let win = w.min(u32::try_from(b.backing_len()).unwrap_or(BACKING));
        let last = w - win;
        for off in if last == 0 { vec![0] } else { vec![0, last] } {
            b.poison(0, win as usize)?;
            b.from_host(off, win, 0)?;
            b.wait("TRANSFER_FROM_HOST of a fresh buffer")?;
            let bytes = b.bytes()?;
            if let Some(pos) = bytes
                .get(..win as usize)
                .and_then(|s| s.iter().position(|&x| x != 0))
            {
                failures.push(format!(
                    "buffer {i}: byte {} is {:#04x}, not 0",
                    u64::from(off) + pos as u64,
                    bytes.get(pos).copied().unwrap_or(0)
                ));
                ok = false;
                break;
            }
        }
    }
    if !ctx.gpu.capset().supports(Kernel::Crc32c) {
        return Ok(ok);
    }
    let mut expected: HashMap<u32, u32> = HashMap::new();
    for (group_idx, group) in bufs.chunks(CRC_SLOTS as usize).enumerate() {
        let count = group.len() as u32;
        ctx.stream.clear();
        ctx.stream.push(&ChannelCommand::Fill(FillCmd {
            dst_res: ctx.scratch.res_id(),
            pattern: 0xa5a5_a5a5,
            offset: u64::from(CRC_BASE),
            size: u64::from(count) * 4,
        }));
        for (slot, b) in group.iter().enumerate() {
            ctx.stream
                .push(&ChannelCommand::Launch(KernelLaunch::Crc32c(Crc32cArgs {
                    src_res: b.res_id(),
                    out_res: ctx.scratch.res_id(),
                    src_offset: 0,
                    len: u64::from(b.width()),
                    out_offset: u64::from(CRC_BASE) + slot as u64 * 4,
                })));
        }
        ctx.gpu
            .submit(ctx.stream.bytes(), &[ctx.scratch.bo_handle()])?;
        ctx.scratch.wait("CRC32C of fresh buffers")?;
        ctx.scratch.poison(CRC_BASE as usize, count as usize * 4)?;
        ctx.scratch.from_host(CRC_BASE, count * 4, CRC_BASE)?;
        ctx.scratch.wait("TRANSFER_FROM_HOST of CRC results")?;
        let got = ctx.scratch.bytes()?;
        for (slot, b) in group.iter().enumerate() {
            let at = CRC_BASE as usize + slot * 4;
            let crc = got
                .get(at..at + 4)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
                .unwrap_or(0);
            let want = *expected
                .entry(b.width())
                .or_insert_with(|| crc32c_of_zeros(u64::from(b.width())));
            if crc != want {
                failures.push(format!(
                    "buffer {}: CRC-32C {crc:#010x} over {} bytes, zeros give {want:#010x}",
                    group_idx * CRC_SLOTS as usize + slot,
                    b.width()
                ));
                ok = false;
            }
        }
    }
    Ok(ok)
}

/// Polls QUERY_STATS (up to ~2 s) until used bytes are back to `before`.
fn wait_freed(ctx: &mut Ctx<'_, '_>, before: u64) -> Result<bool> {
    for _ in 0..200 {
        if ctx.stats()?.framebuffer_used_bytes == before {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_fill_the_tail_exactly() {
        let total = 100 << 20;
        assert_eq!(next_request(total, 0, CHUNK), CHUNK);
        assert_eq!(next_request(total, total - 5000, CHUNK), 5000);
        assert_eq!(next_request(total, total, CHUNK), MIN_CHUNK);
        assert_eq!(next_request(total, total + 1, CHUNK), MIN_CHUNK);
        assert_eq!(next_request(total, 0, MIN_CHUNK), MIN_CHUNK);
        // Simulate a 4 KiB-granular allocator: the sequence lands exactly on the budget.
        let mut used = 8192u64;
        let mut steps = 0;
        while used < total {
            let want = next_request(total, used, CHUNK);
            used += u64::from(want).div_ceil(4096) * 4096;
            steps += 1;
        }
        assert_eq!(used, total);
        assert_eq!(steps, 7);
    }

    #[test]
    fn limit_tolerance() {
        let total = 1 << 30;
        assert!(limit_matches(total, total, 0));
        assert!(limit_matches(total - 4095, total, 0));
        assert!(!limit_matches(total - 4096, total, 0));
        assert!(limit_matches(total - 60_000, total, 65_536));
        assert!(!limit_matches(total + 1, total, 65_536));
    }

    #[test]
    fn report_json_keys() {
        let r = MemtestReport {
            limit_bytes: 1,
            allocated_bytes: 2,
            zeroed: true,
            framebuffer_bytes: 3,
            used_before_bytes: 0,
            granularity_bytes: 0,
            buffers: 1,
            limit_matches_capset: true,
            freed: true,
            passed: true,
            failures: vec![],
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        for key in ["limit_bytes", "allocated_bytes", "zeroed"] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert!(r.render().contains("all memory freed"));
    }
}
