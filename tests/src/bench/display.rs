//! The display benchmark against one backend: TRANSFER_TO_HOST_2D of a full 1920×1080 frame from
//! differently laid-out guest backings, TRANSFER + RESOURCE_FLUSH with a scanout (UPDATE messages
//! on the GPU socket, drained by the peer without recording pixels), and control-queue round trips.

use std::time::{Duration, Instant};

use vgpu_protocol::virtio_gpu::{
    Rect, ResourceFlush, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, VIRTIO_GPU_RESP_OK_DISPLAY_INFO,
    VIRTIO_GPU_RESP_OK_NODATA,
};
use vgpu_protocol::GpuCommand;
use vgpu_tests::client::{encode, expect_ok, rect};
use vgpu_tests::connection::CTRL_QUEUE;
use vgpu_tests::memory::PAGE_SIZE;
use vgpu_tests::{
    Backend, BackendKind, FrontendConfig, FrontendError, GpuClient, GpuPeerConfig, Result,
};

use super::stats::{Bandwidth, Latency, Samples};

/// Frame width.
pub const WIDTH: u32 = 1920;
/// Frame height.
pub const HEIGHT: u32 = 1080;
/// Bytes of one B8G8R8X8 frame.
pub const FRAME_BYTES: u64 = WIDTH as u64 * HEIGHT as u64 * 4;

/// How a resource's guest backing is laid out.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One 4 KiB entry per page, pages in a shuffled order in guest memory (like the Linux
    /// driver's shmem pages, which are not physically contiguous).
    ScatteredPages,
    /// One 4 KiB entry per page, pages consecutive in guest memory.
    OrderedPages,
    /// One entry for the whole frame.
    Contiguous,
}

impl Layout {
    /// Every layout, in table order.
    pub const ALL: [Layout; 3] = [
        Layout::ScatteredPages,
        Layout::OrderedPages,
        Layout::Contiguous,
    ];

    /// Short name (JSON key).
    pub fn key(self) -> &'static str {
        match self {
            Layout::ScatteredPages => "scattered_4k_pages",
            Layout::OrderedPages => "ordered_4k_pages",
            Layout::Contiguous => "contiguous",
        }
    }

    /// Human description.
    pub fn describe(self) -> String {
        let pages = FRAME_BYTES.div_ceil(PAGE_SIZE);
        match self {
            Layout::ScatteredPages => format!("{pages} shuffled 4 KiB entries"),
            Layout::OrderedPages => format!("{pages} in-order 4 KiB entries"),
            Layout::Contiguous => "1 contiguous entry".to_string(),
        }
    }

    fn resource_id(self) -> u32 {
        match self {
            Layout::ScatteredPages => 1,
            Layout::OrderedPages => 2,
            Layout::Contiguous => 3,
        }
    }
}

/// Settings of a run.
#[derive(Copy, Clone, Debug)]
pub struct Settings {
    /// Time spent on each bandwidth row, per backend (split over the rounds).
    pub seconds_per_row: f64,
    /// Round trips timed per latency row and backend (split over the rounds).
    pub round_trips: usize,
    /// Rounds: every row is measured in this many slices, alternating between the backends, so
    /// that load from elsewhere on the machine hits all of them alike.
    pub rounds: usize,
}

/// The bandwidth rows, in table order.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BwRow {
    /// TRANSFER_TO_HOST_2D of the full frame from a backing laid out as given.
    Transfer(Layout),
    /// TRANSFER_TO_HOST_2D + RESOURCE_FLUSH of the scattered-pages resource shown on scanout 0.
    TransferFlush,
    /// RESOURCE_FLUSH alone of that resource (the UPDATE path).
    FlushOnly,
}

impl BwRow {
    /// Every row, in table order.
    pub const ALL: [BwRow; 5] = [
        BwRow::Transfer(Layout::ScatteredPages),
        BwRow::Transfer(Layout::OrderedPages),
        BwRow::Transfer(Layout::Contiguous),
        BwRow::TransferFlush,
        BwRow::FlushOnly,
    ];
}

/// The latency rows.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RttRow {
    /// RESOURCE_FLUSH of a 1×1 rect of a resource no scanout shows (no UPDATE).
    Flush1x1,
    /// GET_DISPLAY_INFO (both backends ask the GPU socket peer).
    DisplayInfo,
}

/// Everything measured against one backend.
#[derive(Debug, Clone)]
pub struct BackendFigures {
    /// Which backend.
    pub kind: BackendKind,
    /// Per bandwidth row (in [`BwRow::ALL`] order).
    pub bandwidth: Vec<(BwRow, Bandwidth)>,
    /// RESOURCE_FLUSH of a 1×1 rect of a resource no scanout shows.
    pub rtt_flush: Latency,
    /// GET_DISPLAY_INFO (both backends ask the GPU socket peer).
    pub rtt_display_info: Latency,
    /// UPDATE messages the peer received and validated (each a full frame).
    pub updates_received: u64,
}

impl BackendFigures {
    /// The figure of one bandwidth row.
    pub fn row(&self, row: BwRow) -> Option<&Bandwidth> {
        self.bandwidth
            .iter()
            .find(|(r, _)| *r == row)
            .map(|(_, b)| b)
    }
}

/// Deterministic permutation of `0..n` (xorshift Fisher–Yates).
pub fn shuffled(n: usize, mut seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    v
}

/// Creates the resource for `layout`, fills a guest buffer and attaches it.
fn create_resource(c: &mut GpuClient, layout: Layout) -> Result<()> {
    let id = layout.resource_id();
    expect_ok(
        c.create_2d(id, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, WIDTH, HEIGHT)?,
        "RESOURCE_CREATE_2D",
    )?;
    let pages = FRAME_BYTES.div_ceil(PAGE_SIZE) as usize;
    let gpa = c.conn.mem.alloc_pages(pages as u64 * PAGE_SIZE)?;
    let fill: Vec<u8> = (0..pages as u64 * PAGE_SIZE)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    c.conn.mem.write(gpa, &fill)?;
    let page_entry = |page: usize, logical: usize| {
        let len = (FRAME_BYTES - logical as u64 * PAGE_SIZE).min(PAGE_SIZE) as u32;
        (gpa + page as u64 * PAGE_SIZE, len)
    };
    let entries: Vec<(u64, u32)> = match layout {
        Layout::Contiguous => vec![(gpa, FRAME_BYTES as u32)],
        Layout::OrderedPages => (0..pages).map(|p| page_entry(p, p)).collect(),
        Layout::ScatteredPages => shuffled(pages, 0x9e37_79b9_7f4a_7c15)
            .into_iter()
            .enumerate()
            .map(|(logical, page)| page_entry(page, logical))
            .collect(),
    };
    expect_ok(c.attach_backing(id, &entries)?, "RESOURCE_ATTACH_BACKING")
}

fn full() -> Rect {
    rect(0, 0, WIDTH, HEIGHT)
}

/// Runs `op` for `seconds` (at least `min_ops` times) after `warm` untimed runs, adding the
/// timings to `s`; returns how many timed and untimed runs there were.
fn timed(
    s: &mut Samples,
    seconds: f64,
    warm: usize,
    min_ops: usize,
    mut op: impl FnMut() -> Result<()>,
) -> Result<u64> {
    for _ in 0..warm {
        op()?;
    }
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < budget || n < min_ops {
        let t = Instant::now();
        op()?;
        s.push(t.elapsed());
        n += 1;
    }
    Ok((warm + n) as u64)
}

/// Sends the pre-encoded control request `req` and checks the response type.
fn round_trip(c: &mut GpuClient, req: &[u8], resp_len: u32, want: u32) -> Result<()> {
    let done = c.send_raw_on(CTRL_QUEUE, req, resp_len)?;
    let got = done
        .written
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if got != Some(want) {
        return Err(FrontendError::Protocol(format!(
            "response {got:x?}, expected {want:#x}"
        )));
    }
    Ok(())
}

/// One backend, connected and set up, with the samples gathered so far.
pub struct Session {
    kind: BackendKind,
    backend: Backend,
    client: GpuClient,
    bw: Vec<(BwRow, Samples)>,
    rtt_flush: Samples,
    rtt_info: Samples,
    flush_req: Vec<u8>,
    info_req: Vec<u8>,
    updates_expected: u64,
}

impl Session {
    /// Starts `kind`, connects, creates and backs one resource per [`Layout`] and shows the
    /// scattered one on scanout 0.
    pub fn start(kind: BackendKind) -> Result<Session> {
        let mut backend = Backend::spawn(kind.clone(), &[])?;
        backend.wait_listening(Duration::from_secs(10))?;
        let mut peer = GpuPeerConfig {
            record_pixels: false,
            ..Default::default()
        };
        peer.displays[0].r.width = WIDTH;
        peer.displays[0].r.height = HEIGHT;
        let cfg = FrontendConfig {
            mem_size: 128 << 20,
            io_timeout: Duration::from_secs(20),
            peer,
            ..Default::default()
        };
        let mut client = GpuClient::connect(backend.socket(), &cfg)?;
        for layout in Layout::ALL {
            create_resource(&mut client, layout)?;
        }
        let id = Layout::ScatteredPages.resource_id();
        expect_ok(client.set_scanout(0, id, full())?, "SET_SCANOUT")?;
        let flush_req = encode(&GpuCommand::ResourceFlush(ResourceFlush {
            r: rect(0, 0, 1, 1),
            resource_id: Layout::Contiguous.resource_id(),
            padding: 0,
        }));
        Ok(Session {
            kind,
            backend,
            client,
            bw: BwRow::ALL
                .iter()
                .map(|&r| (r, Samples::with_capacity(4096)))
                .collect(),
            rtt_flush: Samples::with_capacity(20_000),
            rtt_info: Samples::with_capacity(20_000),
            flush_req,
            info_req: encode(&GpuCommand::GetDisplayInfo),
            updates_expected: 0,
        })
    }

    /// Which backend.
    pub fn kind(&self) -> &BackendKind {
        &self.kind
    }

    /// The backend's log so far.
    pub fn log(&self) -> String {
        self.backend.log()
    }

    /// Measures one slice of `seconds` of a bandwidth row.
    pub fn bandwidth_slice(&mut self, row: BwRow, seconds: f64) -> Result<()> {
        let c = &mut self.client;
        let samples = match self.bw.iter_mut().find(|(r, _)| *r == row) {
            Some((_, s)) => s,
            None => return Err(FrontendError::InvalidArgument("row")),
        };
        let id = Layout::ScatteredPages.resource_id();
        match row {
            BwRow::Transfer(layout) => {
                let id = layout.resource_id();
                timed(samples, seconds, 2, 3, || {
                    expect_ok(c.transfer_2d(id, full(), 0)?, "TRANSFER_TO_HOST_2D")
                })?;
            }
            BwRow::TransferFlush => {
                self.updates_expected += timed(samples, seconds, 2, 3, || {
                    expect_ok(c.transfer_2d(id, full(), 0)?, "TRANSFER_TO_HOST_2D")?;
                    expect_ok(c.flush(id, full())?, "RESOURCE_FLUSH")
                })?;
            }
            BwRow::FlushOnly => {
                self.updates_expected += timed(samples, seconds, 2, 3, || {
                    expect_ok(c.flush(id, full())?, "RESOURCE_FLUSH")
                })?;
            }
        }
        if matches!(row, BwRow::TransferFlush | BwRow::FlushOnly) {
            // Every flush must have produced its full frame before the next slice starts.
            let stats = c
                .peer()
                .wait_updates(self.updates_expected, Duration::from_secs(20))?;
            if stats.updates != self.updates_expected
                || stats.pixel_bytes != self.updates_expected * FRAME_BYTES
            {
                return Err(FrontendError::Protocol(format!(
                    "{} full-frame flushes produced {} UPDATE messages with {} pixel bytes",
                    self.updates_expected, stats.updates, stats.pixel_bytes
                )));
            }
        }
        Ok(())
    }

    /// Times `n` round trips of a latency row (after a short warm-up).
    pub fn latency_slice(&mut self, row: RttRow, n: usize) -> Result<()> {
        let (req, resp_len, want, samples) = match row {
            RttRow::Flush1x1 => (
                &self.flush_req,
                24,
                VIRTIO_GPU_RESP_OK_NODATA,
                &mut self.rtt_flush,
            ),
            RttRow::DisplayInfo => (
                &self.info_req,
                408,
                VIRTIO_GPU_RESP_OK_DISPLAY_INFO,
                &mut self.rtt_info,
            ),
        };
        for _ in 0..n / 20 + 20 {
            round_trip(&mut self.client, req, resp_len, want)?;
        }
        for _ in 0..n {
            let t = Instant::now();
            round_trip(&mut self.client, req, resp_len, want)?;
            samples.push(t.elapsed());
        }
        Ok(())
    }

    /// Checks the GPU socket peer and summarises.
    pub fn finish(mut self) -> Result<BackendFigures> {
        if let Some(e) = self.client.peer().error() {
            return Err(FrontendError::Protocol(format!("GPU socket peer: {e}")));
        }
        let bandwidth = self
            .bw
            .iter_mut()
            .map(|(r, s)| (*r, Bandwidth::from_samples(FRAME_BYTES, s)))
            .collect();
        Ok(BackendFigures {
            kind: self.kind.clone(),
            bandwidth,
            rtt_flush: Latency::from_samples(&mut self.rtt_flush),
            rtt_display_info: Latency::from_samples(&mut self.rtt_info),
            updates_received: self.client.peer().update_stats().updates,
        })
    }
}
