//! `GpuClient`: virtio-gpu commands over a [`Connection`], playing the guest driver.

use std::mem::size_of;
use std::path::Path;
use std::time::Duration;

use vgpu_protocol::command::{mem_entries_bytes, mem_entries_from_bytes};
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{decode_response, DecodedResponse, GpuCommand};
use vm_memory::ByteValued;

use crate::connection::{Connection, FrontendConfig, CTRL_QUEUE, CURSOR_QUEUE};
use crate::error::{FrontendError, Result};
use crate::gpu_socket::GpuPeer;
use crate::vring::{RawDesc, Segment, UsedElem};

/// Size of the largest fixed response (GET_EDID's).
pub const MAX_RESP: u32 = size_of::<RespEdid>() as u32;

/// The result of one submitted chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The used element.
    pub used: UsedElem,
    /// The bytes of the writable buffers, concatenated, truncated to `used.len` (or their full
    /// length if the device claimed more).
    pub written: Vec<u8>,
}

/// A virtio-gpu driver over a vhost-user connection.
pub struct GpuClient {
    /// The connection (memory, queues, GPU socket peer).
    pub conn: Connection,
    req_buf: u64,
    req_cap: u32,
    resp_buf: u64,
}

/// Request staging buffer size (large enough for ATTACH_BACKING with 16384 entries).
const REQ_CAP: u32 = 8 + 24 + 16384 * 16 + 4096;

impl GpuClient {
    /// Connects to `path` with `cfg`.
    pub fn connect(path: &Path, cfg: &FrontendConfig) -> Result<Self> {
        Self::new(Connection::connect(path, cfg)?)
    }

    /// Wraps an established connection.
    pub fn new(conn: Connection) -> Result<Self> {
        let req_buf = conn.mem.alloc_pages(u64::from(REQ_CAP))?;
        let resp_buf = conn.mem.alloc_pages(u64::from(MAX_RESP))?;
        Ok(GpuClient {
            conn,
            req_buf,
            req_cap: REQ_CAP,
            resp_buf,
        })
    }

    /// The GPU socket peer.
    pub fn peer(&mut self) -> &mut GpuPeer {
        self.conn.peer()
    }

    /// The device config read at setup.
    pub fn config(&self) -> VirtioGpuConfig {
        self.conn.config
    }

    /// Whether a device feature bit (`VIRTIO_GPU_F_*` number) was negotiated.
    pub fn has_gpu_feature(&self, bit: u32) -> bool {
        self.conn.has_feature(1u64 << bit)
    }

    /// Submits a chain on queue `q`, waits for its used element and reads back what the device
    /// wrote into the writable segments.
    pub fn submit(&mut self, q: usize, segs: &[Segment]) -> Result<Completion> {
        let head = {
            let queue = self
                .conn
                .queues
                .get_mut(q)
                .ok_or(FrontendError::InvalidArgument("queue index"))?;
            queue.ring.add_chain(&self.conn.mem, segs)?
        };
        self.finish(q, head, segs)
    }

    /// Like [`GpuClient::submit`] but through one indirect descriptor (needs INDIRECT_DESC).
    pub fn submit_indirect(&mut self, q: usize, segs: &[Segment]) -> Result<Completion> {
        let head = {
            let queue = self
                .conn
                .queues
                .get_mut(q)
                .ok_or(FrontendError::InvalidArgument("queue index"))?;
            queue.ring.add_indirect(&self.conn.mem, segs)?
        };
        self.finish(q, head, segs)
    }

    /// Submits a raw (possibly malformed) chain and waits for it; `written` holds the bytes of the
    /// writable descriptors that lie inside memory.
    pub fn submit_raw(&mut self, q: usize, descs: &[RawDesc]) -> Result<Completion> {
        let head = {
            let queue = self
                .conn
                .queues
                .get_mut(q)
                .ok_or(FrontendError::InvalidArgument("queue index"))?;
            queue.ring.add_raw(&self.conn.mem, descs)?
        };
        let segs: Vec<Segment> = descs
            .iter()
            .filter(|d| d.flags & crate::vring::VRING_DESC_F_WRITE != 0)
            .map(|d| Segment::Writable {
                addr: d.addr,
                len: d.len,
            })
            .collect();
        self.finish(q, head, &segs)
    }

    /// Publishes a raw chain without waiting; returns its head for [`GpuClient::wait_any`].
    pub fn post_raw(&mut self, q: usize, descs: &[RawDesc]) -> Result<u16> {
        let queue = self
            .conn
            .queues
            .get_mut(q)
            .ok_or(FrontendError::InvalidArgument("queue index"))?;
        let head = queue.ring.add_raw(&self.conn.mem, descs)?;
        self.conn.publish(q, head)?;
        Ok(head)
    }

    /// Waits for any used element on queue `q`.
    pub fn wait_any(&mut self, q: usize, timeout: Duration) -> Result<UsedElem> {
        self.conn.wait_used(q, timeout)
    }

    fn finish(&mut self, q: usize, head: u16, segs: &[Segment]) -> Result<Completion> {
        self.conn.publish(q, head)?;
        let used = self.conn.wait_used(q, self.conn.io_timeout)?;
        if used.id != u32::from(head) {
            return Err(FrontendError::Protocol(format!(
                "used id {} while waiting for {head}",
                used.id
            )));
        }
        let mut written = Vec::new();
        let mut left = used.len as usize;
        for s in segs {
            if let Segment::Writable { addr, len } = *s {
                let n = (len as usize).min(left);
                if n == 0 {
                    break;
                }
                if let Ok(bytes) = self.conn.mem.read_vec(addr, n) {
                    written.extend_from_slice(&bytes);
                }
                left -= n;
            }
        }
        Ok(Completion { used, written })
    }

    /// Sends request bytes on queue `q` with a `resp_len`-byte response buffer (two descriptors)
    /// and returns what the device wrote.
    pub fn send_raw_on(&mut self, q: usize, bytes: &[u8], resp_len: u32) -> Result<Completion> {
        let len = u32::try_from(bytes.len()).map_err(|_| FrontendError::InvalidArgument("len"))?;
        if len > self.req_cap || resp_len > MAX_RESP {
            return Err(FrontendError::InvalidArgument(
                "request or response too large",
            ));
        }
        self.conn.mem.write(self.req_buf, bytes)?;
        self.conn.mem.fill(self.resp_buf, 0xee, resp_len as usize)?;
        self.submit(
            q,
            &[
                Segment::Readable {
                    addr: self.req_buf,
                    len,
                },
                Segment::Writable {
                    addr: self.resp_buf,
                    len: resp_len,
                },
            ],
        )
    }

    /// Sends request bytes on the control queue and returns the response bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        Ok(self.send_raw_on(CTRL_QUEUE, bytes, MAX_RESP)?.written)
    }

    /// Encodes and sends a control command; decodes the response.
    pub fn send_ctrl(
        &mut self,
        cmd: &GpuCommand<'_>,
        hdr: CtrlHeader,
    ) -> Result<(CtrlHeader, DecodedResponse)> {
        let mut bytes = Vec::new();
        cmd.encode(hdr, &mut bytes);
        let resp = self.send_raw(&bytes)?;
        decode_response(&resp).ok_or_else(|| {
            FrontendError::Protocol(format!(
                "short response ({} bytes) to command {:#x}",
                resp.len(),
                cmd.type_()
            ))
        })
    }

    /// Sends a command with a default header and returns just the decoded response.
    pub fn ctrl(&mut self, cmd: &GpuCommand<'_>) -> Result<DecodedResponse> {
        Ok(self.send_ctrl(cmd, CtrlHeader::default())?.1)
    }

    /// Sends a cursor command on the cursor queue; returns the used element (devices write
    /// nothing back for cursor commands, but a response buffer of 24 bytes is offered as Linux does).
    pub fn send_cursor(&mut self, cmd: &GpuCommand<'_>) -> Result<Completion> {
        let mut bytes = Vec::new();
        cmd.encode(CtrlHeader::default(), &mut bytes);
        self.send_raw_on(CURSOR_QUEUE, &bytes, size_of::<CtrlHeader>() as u32)
    }

    // ---- 2D helpers ----

    /// GET_DISPLAY_INFO.
    pub fn display_info(&mut self) -> Result<DecodedResponse> {
        self.ctrl(&GpuCommand::GetDisplayInfo)
    }

    /// GET_EDID for a scanout.
    pub fn get_edid(&mut self, scanout: u32) -> Result<DecodedResponse> {
        self.ctrl(&GpuCommand::GetEdid(GetEdid {
            scanout,
            padding: 0,
        }))
    }

    /// RESOURCE_CREATE_2D.
    pub fn create_2d(&mut self, id: u32, format: u32, w: u32, h: u32) -> Result<DecodedResponse> {
        self.ctrl(&GpuCommand::ResourceCreate2d(ResourceCreate2d {
            resource_id: id,
            format,
            width: w,
            height: h,
        }))
    }

    /// RESOURCE_ATTACH_BACKING with `(addr, len)` entries.
    pub fn attach_backing(&mut self, id: u32, entries: &[(u64, u32)]) -> Result<DecodedResponse> {
        let ents: Vec<MemEntry> = entries
            .iter()
            .map(|&(addr, length)| MemEntry {
                addr,
                length,
                padding: 0,
            })
            .collect();
        let mut eb = Vec::new();
        mem_entries_bytes(&ents, &mut eb);
        let me = mem_entries_from_bytes(&eb).ok_or(FrontendError::InvalidArgument("entries"))?;
        let nr = u32::try_from(ents.len()).map_err(|_| FrontendError::InvalidArgument("nr"))?;
        self.ctrl(&GpuCommand::ResourceAttachBacking(
            ResourceAttachBacking {
                resource_id: id,
                nr_entries: nr,
            },
            me,
        ))
    }

    /// RESOURCE_DETACH_BACKING.
    pub fn detach_backing(&mut self, id: u32) -> Result<DecodedResponse> {
        self.ctrl(&GpuCommand::ResourceDetachBacking(ResourceDetachBacking {
            resource_id: id,
            padding: 0,
        }))
    }

    /// TRANSFER_TO_HOST_2D.
    pub fn transfer_2d(&mut self, id: u32, r: Rect, offset: u64) -> Result<DecodedResponse> {
        self.ctrl(&GpuCommand::TransferToHost2d(TransferToHost2d {
            r,
            offset,
            resource_id: id,
            padding: 0,
        }))
    }

    /// SET_SCANOUT.
    pub fn set_scanout(&mut self, scanout: u32, id: u32, r: Rect) -> Result<DecodedResponse> {
        self.ctrl(&GpuCommand::SetScanout(SetScanout {
            r,
            scanout_id: scanout,
            resource_id: id,
        }))
    }

    /// RESOURCE_FLUSH.
    pub fn flush(&mut self, id: u32, r: Rect) -> Result<DecodedResponse> {
        self.ctrl(&GpuCommand::ResourceFlush(ResourceFlush {
            r,
            resource_id: id,
            padding: 0,
        }))
    }

    /// RESOURCE_UNREF.
    pub fn unref(&mut self, id: u32) -> Result<DecodedResponse> {
        self.ctrl(&GpuCommand::ResourceUnref(ResourceUnref {
            resource_id: id,
            padding: 0,
        }))
    }

    /// UPDATE_CURSOR on the cursor queue.
    pub fn update_cursor(
        &mut self,
        scanout: u32,
        x: u32,
        y: u32,
        id: u32,
        hot: (u32, u32),
    ) -> Result<Completion> {
        self.send_cursor(&GpuCommand::UpdateCursor(UpdateCursor {
            pos: CursorPos {
                scanout_id: scanout,
                x,
                y,
                padding: 0,
            },
            resource_id: id,
            hot_x: hot.0,
            hot_y: hot.1,
            padding: 0,
        }))
    }

    /// MOVE_CURSOR on the cursor queue (`id` 0 hides the cursor on QEMU's backend).
    pub fn move_cursor(&mut self, scanout: u32, x: u32, y: u32, id: u32) -> Result<Completion> {
        self.send_cursor(&GpuCommand::MoveCursor(UpdateCursor {
            pos: CursorPos {
                scanout_id: scanout,
                x,
                y,
                padding: 0,
            },
            resource_id: id,
            ..Default::default()
        }))
    }

    /// Allocates a page-aligned guest buffer filled with `data`.
    pub fn guest_buffer(&mut self, data: &[u8]) -> Result<u64> {
        let gpa = self.conn.mem.alloc_pages(data.len() as u64)?;
        self.conn.mem.write(gpa, data)?;
        Ok(gpa)
    }

    /// Creates a `w`×`h` resource backed by a fresh guest buffer holding `pixels` (4 bytes a
    /// pixel, rows packed) split into `chunks` memory entries; returns the buffer address.
    pub fn create_backed_2d(
        &mut self,
        id: u32,
        format: u32,
        w: u32,
        h: u32,
        pixels: &[u8],
        chunks: usize,
    ) -> Result<u64> {
        expect_ok(self.create_2d(id, format, w, h)?, "RESOURCE_CREATE_2D")?;
        let gpa = self.guest_buffer(pixels)?;
        let total = pixels.len() as u64;
        let chunks = chunks.max(1) as u64;
        let step = total.div_ceil(chunks).max(1);
        let mut entries = Vec::new();
        let mut off = 0;
        while off < total {
            let len = step.min(total - off);
            entries.push((gpa + off, len as u32));
            off += len;
        }
        expect_ok(
            self.attach_backing(id, &entries)?,
            "RESOURCE_ATTACH_BACKING",
        )?;
        Ok(gpa)
    }
}

/// Turns a non-OK_NODATA response into an error.
pub fn expect_ok(resp: DecodedResponse, what: &str) -> Result<()> {
    match resp {
        DecodedResponse::OkNoData => Ok(()),
        other => Err(FrontendError::Protocol(format!("{what}: {other:?}"))),
    }
}

/// Bytes of a test pattern: pixel (x, y) of a `w`-wide image is `[x, y, x ^ y, 0xff]` mixed with
/// `seed` so different images differ.
pub fn pattern(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 4) as usize);
    for y in 0..h {
        for x in 0..w {
            v.extend_from_slice(&[
                (x as u8).wrapping_add(seed),
                (y as u8).wrapping_mul(3).wrapping_add(seed),
                ((x ^ y) as u8).wrapping_add(seed.wrapping_mul(7)),
                0xff,
            ]);
        }
    }
    v
}

/// Copies the `r` rectangle out of a packed 4-byte-per-pixel image of width `w`.
pub fn crop(img: &[u8], w: u32, r: Rect) -> Vec<u8> {
    let mut out = Vec::with_capacity((r.width * r.height * 4) as usize);
    for y in r.y..r.y + r.height {
        let start = ((y * w + r.x) * 4) as usize;
        out.extend_from_slice(&img[start..start + (r.width * 4) as usize]);
    }
    out
}

/// Builds a [`Rect`].
pub fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

/// Encodes a command with a default header (helper for raw/malformed sends).
pub fn encode(cmd: &GpuCommand<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    cmd.encode(CtrlHeader::default(), &mut v);
    v
}

/// A bare header of type `type_` (e.g. for unknown command types).
pub fn header_bytes(type_: u32) -> Vec<u8> {
    CtrlHeader {
        type_,
        ..Default::default()
    }
    .as_slice()
    .to_vec()
}
