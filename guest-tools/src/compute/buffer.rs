//! Buffers of the guest library: device memory of the vGPU with a guest staging area of the
//! same size; [`Buffer::write`] and [`Buffer::read`] move bytes and wait for the host.

use std::sync::Arc;

use vgpu_protocol::channel::FillCmd;
use vgpu_protocol::ChannelCommand;

use crate::device::{BufferOf, Stream, VirtGpu};
use crate::error::{Error, Result};

use super::Device;

/// A buffer on the vGPU, `size` bytes, owned by one [`Device`] (context). Freed on drop.
#[derive(Debug)]
pub struct Buffer {
    buf: BufferOf<Arc<VirtGpu>>,
    size: usize,
}

impl Buffer {
    /// Creates `size` bytes on `dev`'s vGPU (the device size rounded up to a multiple of 4) and
    /// checks that the host has it: Linux queues RESOURCE_CREATE_3D and never reports its
    /// failure, so a 4-byte FILL of the new buffer (zeros, as it already is) follows, and a
    /// refusal of that submit (QUERY_STATS) means the buffer does not exist.
    pub(super) fn create(dev: &Device, size: usize) -> Result<Self> {
        let caps = dev.caps();
        let max = caps.max_buffer_bytes();
        let width = size
            .checked_next_multiple_of(4)
            .and_then(|w| u32::try_from(w).ok())
            .filter(|&w| size > 0 && (max == 0 || u64::from(w) <= max))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "buffer size {size}: must be 1 to {} bytes",
                    if max == 0 { u64::from(u32::MAX) } else { max }
                ))
            })?;
        let now = dev.stats()?;
        let free = now
            .framebuffer_total_bytes
            .saturating_sub(now.framebuffer_used_bytes);
        if u64::from(width) > free {
            return Err(Error::Device(format!(
                "out of vGPU memory: a {size}-byte buffer does not fit in the {free} bytes free"
            )));
        }
        let buf = BufferOf::create(Arc::clone(&dev.gpu), width, width)?;
        let mut stream = Stream::new();
        stream.push(&ChannelCommand::Fill(FillCmd {
            dst_res: buf.res_id(),
            pattern: 0,
            offset: 0,
            size: 4,
        }));
        dev.submit(stream.bytes(), &[buf.bo_handle()])?;
        match dev.settle("creating a buffer") {
            Ok(_) => Ok(Buffer { buf, size }),
            Err(Error::Refused { reason, .. }) => Err(Error::Device(format!(
                "the host did not create a {size}-byte buffer (is the vGPU's memory full?): {reason}"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Size on the device: [`Buffer::size`] rounded up to a multiple of 4 (what a binding may
    /// cover).
    pub fn device_size(&self) -> usize {
        self.buf.width() as usize
    }

    /// The virtio-gpu resource id (what the host calls this buffer).
    pub fn res_id(&self) -> u32 {
        self.buf.res_id()
    }

    pub(super) fn bo_handle(&self) -> u32 {
        self.buf.bo_handle()
    }

    pub(super) fn gpu(&self) -> &Arc<VirtGpu> {
        self.buf.handle()
    }

    fn range(&self, offset: usize, len: usize) -> Result<(u32, u32)> {
        let end = offset.checked_add(len).filter(|&e| e <= self.size);
        match (end, u32::try_from(offset), u32::try_from(len)) {
            (Some(_), Ok(o), Ok(l)) => Ok((o, l)),
            _ => Err(Error::InvalidArgument(format!(
                "bytes {offset}..+{len} are outside the {}-byte buffer",
                self.size
            ))),
        }
    }

    /// Copies `data` to the buffer at `offset` and waits until the host has it.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        let (off, len) = self.range(offset, data.len())?;
        if len == 0 {
            return Ok(());
        }
        let dst = self
            .buf
            .bytes()?
            .get_mut(offset..offset + data.len())
            .ok_or_else(|| Error::Device("write outside the staging area".into()))?;
        dst.copy_from_slice(data);
        self.buf.to_host(off, len, off)?;
        self.buf.wait("TRANSFER_TO_HOST of a buffer write")
    }

    /// Reads `out.len()` bytes of the buffer at `offset` from the host (after everything
    /// submitted before that writes it).
    pub fn read(&mut self, offset: usize, out: &mut [u8]) -> Result<()> {
        let (off, len) = self.range(offset, out.len())?;
        if len == 0 {
            return Ok(());
        }
        // Poisoned first, so that a transfer the host skipped cannot pass for data.
        self.buf.poison(offset, out.len())?;
        self.buf.from_host(off, len, off)?;
        self.buf.wait("TRANSFER_FROM_HOST of a buffer read")?;
        let src = self
            .buf
            .bytes()?
            .get(offset..offset + out.len())
            .ok_or_else(|| Error::Device("read outside the staging area".into()))?;
        out.copy_from_slice(src);
        Ok(())
    }

    /// Reads the whole buffer.
    pub fn read_all(&mut self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.size];
        self.read(0, &mut out)?;
        Ok(out)
    }

    /// Writes `values` as little-endian f32s at `offset`.
    pub fn write_f32s(&mut self, offset: usize, values: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write(offset, &bytes)
    }

    /// Reads `count` little-endian f32s at `offset`.
    pub fn read_f32s(&mut self, offset: usize, count: usize) -> Result<Vec<f32>> {
        let len = count
            .checked_mul(4)
            .ok_or_else(|| Error::InvalidArgument(format!("{count} floats")))?;
        let mut bytes = vec![0u8; len];
        self.read(offset, &mut bytes)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}
