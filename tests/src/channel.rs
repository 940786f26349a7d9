//! A context on a vGPU's compute channel through the test frontend: buffers with guest backing,
//! transfers, fenced SUBMIT_3D streams and QUERY_STATS, as a guest driver would send them.

use vgpu_protocol::capset::StatsRecord;
use vgpu_protocol::channel::{buffer_create, QueryStatsCmd, VGPU_CAPSET_ID};
use vgpu_protocol::virtio_gpu::*;
use vgpu_protocol::{ChannelCommand, DecodedResponse, GpuCommand, VgpuCapset};

use crate::client::GpuClient;
use crate::error::{FrontendError as Error, Result};

/// One context of a connected client.
pub struct ChannelSession {
    /// The client (its guest memory holds the backings).
    pub client: GpuClient,
    ctx: u32,
    fence: u64,
}

fn expect_ok(r: DecodedResponse, what: &str) -> Result<()> {
    match r {
        DecodedResponse::OkNoData => Ok(()),
        other => Err(Error::Protocol(format!("{what}: {other:?}"))),
    }
}

/// `cmds` encoded back to back, as one SUBMIT_3D stream.
pub fn encode_stream(cmds: &[ChannelCommand]) -> Vec<u8> {
    let mut s = Vec::new();
    for cmd in cmds {
        cmd.encode(&mut s);
    }
    s
}

fn submit_command(s: &[u8]) -> Result<GpuCommand<'_>> {
    Ok(GpuCommand::Submit3d(
        Submit3d {
            size: u32::try_from(s.len()).map_err(|_| Error::Protocol("stream too long".into()))?,
            padding: 0,
        },
        s,
    ))
}

impl ChannelSession {
    /// Creates context `ctx` on `client`.
    pub fn new(client: GpuClient, ctx: u32) -> Result<Self> {
        Self::with_create(client, ctx, CtxCreate::default())
    }

    /// Creates context `ctx` on `client` with `create` (e.g. `context_init` = the vgpu capset id,
    /// as a guest that negotiated CONTEXT_INIT sends it).
    pub fn with_create(mut client: GpuClient, ctx: u32, create: CtxCreate) -> Result<Self> {
        let hdr = CtrlHeader {
            ctx_id: ctx,
            ..Default::default()
        };
        let r = client.send_ctrl(&GpuCommand::CtxCreate(create), hdr)?;
        expect_ok(r.1, "ctx create")?;
        Ok(Self {
            client,
            ctx,
            fence: 0,
        })
    }

    /// Creates context `ctx` on the same client and sends later commands on it.
    pub fn open_context(&mut self, ctx: u32) -> Result<()> {
        self.ctx = ctx;
        let r = self.send(&GpuCommand::CtxCreate(CtxCreate::default()))?;
        expect_ok(r, "ctx create")
    }

    /// Sends later commands on context `ctx` (created already).
    pub fn use_context(&mut self, ctx: u32) {
        self.ctx = ctx;
    }

    fn hdr(&mut self, fenced: bool) -> CtrlHeader {
        if fenced {
            self.fence += 1;
        }
        CtrlHeader {
            flags: if fenced { VIRTIO_GPU_FLAG_FENCE } else { 0 },
            fence_id: if fenced { self.fence } else { 0 },
            ctx_id: self.ctx,
            ..Default::default()
        }
    }

    /// Sends `cmd` on the context and returns the response.
    pub fn send(&mut self, cmd: &GpuCommand<'_>) -> Result<DecodedResponse> {
        let hdr = self.hdr(false);
        Ok(self.client.send_ctrl(cmd, hdr)?.1)
    }

    /// The vGPU's capset.
    pub fn capset(&mut self) -> Result<VgpuCapset> {
        let get = GpuCommand::GetCapset(GetCapset {
            capset_id: VGPU_CAPSET_ID,
            capset_version: 1,
        });
        match self.client.ctrl(&get)? {
            DecodedResponse::OkCapset(b) => {
                VgpuCapset::parse(&b).map_err(|e| Error::Protocol(format!("capset: {e}")))
            }
            other => Err(Error::Protocol(format!("GET_CAPSET: {other:?}"))),
        }
    }

    /// A buffer `id` of `size` bytes with guest backing, attached to the context; returns the
    /// backing's guest address.
    pub fn buffer(&mut self, id: u32, size: u32) -> Result<u64> {
        expect_ok(self.create_buffer(id, size)?, "create")?;
        let gpa = self.client.guest_buffer(&vec![0u8; size as usize])?;
        expect_ok(
            self.client.attach_backing(id, &[(gpa, size)])?,
            "attach backing",
        )?;
        let attach = GpuCommand::CtxAttachResource(CtxResource {
            resource_id: id,
            padding: 0,
        });
        let r = self.send(&attach)?;
        expect_ok(r, "ctx attach")?;
        Ok(gpa)
    }

    /// RESOURCE_CREATE_3D of a `size`-byte buffer `id` (nothing attached); returns the response.
    pub fn create_buffer(&mut self, id: u32, size: u32) -> Result<DecodedResponse> {
        self.send(&GpuCommand::ResourceCreate3d(buffer_create(id, size)))
    }

    /// The fenced SUBMIT_3D of `cmds` as it goes on the wire (header included), taking the next
    /// fence id; for callers that post it themselves. Returns the bytes and the fence id.
    pub fn submit_bytes(&mut self, cmds: &[ChannelCommand]) -> Result<(Vec<u8>, u64)> {
        let s = encode_stream(cmds);
        let cmd = submit_command(&s)?;
        let hdr = self.hdr(true);
        let mut bytes = Vec::new();
        cmd.encode(hdr, &mut bytes);
        Ok((bytes, hdr.fence_id))
    }

    fn transfer(&mut self, id: u32, len: usize, to_host: bool) -> Result<()> {
        let t = Transfer3d {
            box_: Box3d {
                w: u32::try_from(len).map_err(|_| Error::Protocol("transfer too long".into()))?,
                h: 1,
                d: 1,
                ..Default::default()
            },
            resource_id: id,
            ..Default::default()
        };
        let cmd = if to_host {
            GpuCommand::TransferToHost3d(t)
        } else {
            GpuCommand::TransferFromHost3d(t)
        };
        let r = self.send(&cmd)?;
        expect_ok(r, "transfer")
    }

    /// Writes `data` to the backing at `gpa` and transfers it to buffer `id` (offset 0).
    pub fn upload(&mut self, id: u32, gpa: u64, data: &[u8]) -> Result<()> {
        self.client.conn.mem.write(gpa, data)?;
        self.transfer(id, data.len(), true)
    }

    /// Transfers `len` bytes of buffer `id` to its backing at `gpa` and reads them.
    pub fn download(&mut self, id: u32, gpa: u64, len: usize) -> Result<Vec<u8>> {
        self.transfer(id, len, false)?;
        self.client.conn.mem.read_vec(gpa, len)
    }

    /// Submits `cmds` as one fenced SUBMIT_3D and returns the response (sent when the work
    /// completed).
    pub fn submit(&mut self, cmds: &[ChannelCommand]) -> Result<DecodedResponse> {
        Ok(self.submit_fenced(cmds)?.1)
    }

    /// Like [`ChannelSession::submit`], also returning the response header (its fence id).
    pub fn submit_fenced(
        &mut self,
        cmds: &[ChannelCommand],
    ) -> Result<(CtrlHeader, DecodedResponse)> {
        let s = encode_stream(cmds);
        let cmd = submit_command(&s)?;
        let hdr = self.hdr(true);
        self.client.send_ctrl(&cmd, hdr)
    }

    /// `cmds` as one unfenced SUBMIT_3D; returns the response.
    pub fn submit_unfenced(&mut self, cmds: &[ChannelCommand]) -> Result<DecodedResponse> {
        let s = encode_stream(cmds);
        self.send(&submit_command(&s)?)
    }

    /// QUERY_STATS into buffer `res` (backing at `gpa`, ≥ 128 bytes), read back.
    pub fn stats(&mut self, res: u32, gpa: u64) -> Result<StatsRecord> {
        let q = ChannelCommand::QueryStats(QueryStatsCmd {
            dst_res: res,
            reserved: 0,
            dst_offset: 0,
        });
        expect_ok(self.submit(&[q])?, "query stats")?;
        let b = self.download(res, gpa, 128)?;
        StatsRecord::parse(&b).map_err(|e| Error::Protocol(format!("stats: {e}")))
    }
}
