//! virtio-gpu responses: encoding into the writable bytes of a descriptor chain, and decoding them
//! (used by frontends and tests).

use std::mem::size_of;

use vm_memory::ByteValued;

use crate::command::read_obj;
use crate::virtio_gpu::*;

/// Largest capset payload we will ever put in a response.
pub const MAX_CAPSET_SIZE: usize = 4096;

/// A virtio-gpu error response code.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// `VIRTIO_GPU_RESP_ERR_UNSPEC`.
    Unspec,
    /// `VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY`.
    OutOfMemory,
    /// `VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID`.
    InvalidScanoutId,
    /// `VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID`.
    InvalidResourceId,
    /// `VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID`.
    InvalidContextId,
    /// `VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER`.
    InvalidParameter,
}

impl ErrorCode {
    /// The wire response type.
    pub fn type_(self) -> u32 {
        match self {
            ErrorCode::Unspec => VIRTIO_GPU_RESP_ERR_UNSPEC,
            ErrorCode::OutOfMemory => VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY,
            ErrorCode::InvalidScanoutId => VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,
            ErrorCode::InvalidResourceId => VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
            ErrorCode::InvalidContextId => VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID,
            ErrorCode::InvalidParameter => VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
        }
    }

    /// The code for a wire response type, if it is an error.
    pub fn from_type(type_: u32) -> Option<Self> {
        Some(match type_ {
            VIRTIO_GPU_RESP_ERR_UNSPEC => ErrorCode::Unspec,
            VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY => ErrorCode::OutOfMemory,
            VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID => ErrorCode::InvalidScanoutId,
            VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID => ErrorCode::InvalidResourceId,
            VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID => ErrorCode::InvalidContextId,
            VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER => ErrorCode::InvalidParameter,
            _ => return None,
        })
    }
}

/// A response body, borrowed where it is variable-length.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Response<'a> {
    /// `OK_NODATA`.
    OkNoData,
    /// `OK_DISPLAY_INFO`.
    OkDisplayInfo(&'a [DisplayOne; VIRTIO_GPU_MAX_SCANOUTS]),
    /// `OK_CAPSET_INFO`.
    OkCapsetInfo {
        /// Capset id.
        capset_id: u32,
        /// Highest version.
        max_version: u32,
        /// Largest size.
        max_size: u32,
    },
    /// `OK_CAPSET` with the capset bytes.
    OkCapset(&'a [u8]),
    /// `OK_EDID` with the EDID bytes (at most 1024).
    OkEdid(&'a [u8]),
    /// `OK_RESOURCE_UUID`.
    OkResourceUuid([u8; 16]),
    /// `OK_MAP_INFO`.
    OkMapInfo(u32),
    /// An error.
    Err(ErrorCode),
}

/// Response header for a request header: same fence and context, `FLAG_FENCE`/ring index echoed.
pub fn response_header(req: &CtrlHeader, type_: u32) -> CtrlHeader {
    CtrlHeader {
        type_,
        flags: req.flags & (VIRTIO_GPU_FLAG_FENCE | VIRTIO_GPU_FLAG_INFO_RING_IDX),
        fence_id: req.fence_id,
        ctx_id: req.ctx_id,
        ring_idx: req.ring_idx,
        padding: [0; 3],
    }
}

impl Response<'_> {
    /// The wire response type.
    pub fn type_(&self) -> u32 {
        match self {
            Response::OkNoData => VIRTIO_GPU_RESP_OK_NODATA,
            Response::OkDisplayInfo(_) => VIRTIO_GPU_RESP_OK_DISPLAY_INFO,
            Response::OkCapsetInfo { .. } => VIRTIO_GPU_RESP_OK_CAPSET_INFO,
            Response::OkCapset(_) => VIRTIO_GPU_RESP_OK_CAPSET,
            Response::OkEdid(_) => VIRTIO_GPU_RESP_OK_EDID,
            Response::OkResourceUuid(_) => VIRTIO_GPU_RESP_OK_RESOURCE_UUID,
            Response::OkMapInfo(_) => VIRTIO_GPU_RESP_OK_MAP_INFO,
            Response::Err(e) => e.type_(),
        }
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        size_of::<CtrlHeader>()
            + match self {
                Response::OkNoData | Response::Err(_) => 0,
                Response::OkDisplayInfo(_) => {
                    size_of::<RespDisplayInfo>() - size_of::<CtrlHeader>()
                }
                Response::OkCapsetInfo { .. } => {
                    size_of::<RespCapsetInfo>() - size_of::<CtrlHeader>()
                }
                Response::OkCapset(data) => data.len(),
                Response::OkEdid(_) => size_of::<RespEdid>() - size_of::<CtrlHeader>(),
                Response::OkResourceUuid(_) => 16,
                Response::OkMapInfo(_) => 8,
            }
    }

    /// Encodes the response for request header `req` into `out`, returning the bytes written, or
    /// `None` if `out` is too small.
    pub fn encode(&self, req: &CtrlHeader, out: &mut [u8]) -> Option<usize> {
        let len = self.encoded_len();
        let out = out.get_mut(..len)?;
        let hdr = response_header(req, self.type_());
        let (head, tail) = out.split_at_mut(size_of::<CtrlHeader>());
        head.copy_from_slice(hdr.as_slice());
        match self {
            Response::OkNoData | Response::Err(_) => {}
            Response::OkDisplayInfo(modes) => {
                for (chunk, mode) in tail
                    .chunks_exact_mut(size_of::<DisplayOne>())
                    .zip(modes.iter())
                {
                    chunk.copy_from_slice(mode.as_slice());
                }
            }
            Response::OkCapsetInfo {
                capset_id,
                max_version,
                max_size,
            } => {
                tail[0..4].copy_from_slice(&capset_id.to_le_bytes());
                tail[4..8].copy_from_slice(&max_version.to_le_bytes());
                tail[8..12].copy_from_slice(&max_size.to_le_bytes());
                tail[12..16].fill(0);
            }
            Response::OkCapset(data) => tail.copy_from_slice(data),
            Response::OkEdid(edid) => {
                let n = edid.len().min(1024);
                tail[0..4].copy_from_slice(&(n as u32).to_le_bytes());
                tail[4..8].fill(0);
                tail[8..8 + n].copy_from_slice(&edid[..n]);
                tail[8 + n..].fill(0);
            }
            Response::OkResourceUuid(uuid) => tail.copy_from_slice(uuid),
            Response::OkMapInfo(info) => {
                tail[0..4].copy_from_slice(&info.to_le_bytes());
                tail[4..8].fill(0);
            }
        }
        Some(len)
    }
}

/// A decoded response as a frontend sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodedResponse {
    /// `OK_NODATA`.
    OkNoData,
    /// `OK_DISPLAY_INFO`.
    OkDisplayInfo(Box<[DisplayOne; VIRTIO_GPU_MAX_SCANOUTS]>),
    /// `OK_CAPSET_INFO`.
    OkCapsetInfo(RespCapsetInfo),
    /// `OK_CAPSET` with its bytes.
    OkCapset(Vec<u8>),
    /// `OK_EDID` with the valid EDID bytes.
    OkEdid(Vec<u8>),
    /// `OK_RESOURCE_UUID`.
    OkResourceUuid([u8; 16]),
    /// `OK_MAP_INFO`.
    OkMapInfo(u32),
    /// An error response.
    Err(ErrorCode),
    /// A response type this crate does not know.
    Unknown(u32),
}

/// Decodes a response written by a device; `None` if it is truncated.
pub fn decode_response(bytes: &[u8]) -> Option<(CtrlHeader, DecodedResponse)> {
    let hdr = read_obj::<CtrlHeader>(bytes)?;
    let resp = match hdr.type_ {
        VIRTIO_GPU_RESP_OK_NODATA => DecodedResponse::OkNoData,
        VIRTIO_GPU_RESP_OK_DISPLAY_INFO => {
            let r = read_obj::<RespDisplayInfo>(bytes)?;
            DecodedResponse::OkDisplayInfo(Box::new(r.pmodes))
        }
        VIRTIO_GPU_RESP_OK_CAPSET_INFO => {
            DecodedResponse::OkCapsetInfo(read_obj::<RespCapsetInfo>(bytes)?)
        }
        VIRTIO_GPU_RESP_OK_CAPSET => {
            let data = bytes.get(size_of::<CtrlHeader>()..).unwrap_or_default();
            DecodedResponse::OkCapset(data.to_vec())
        }
        VIRTIO_GPU_RESP_OK_EDID => {
            let r = read_obj::<RespEdid>(bytes)?;
            let n = (r.size as usize).min(r.edid.len());
            DecodedResponse::OkEdid(r.edid.get(..n).unwrap_or_default().to_vec())
        }
        VIRTIO_GPU_RESP_OK_RESOURCE_UUID => {
            DecodedResponse::OkResourceUuid(read_obj::<RespResourceUuid>(bytes)?.uuid)
        }
        VIRTIO_GPU_RESP_OK_MAP_INFO => {
            DecodedResponse::OkMapInfo(read_obj::<RespMapInfo>(bytes)?.map_info)
        }
        t => match ErrorCode::from_type(t) {
            Some(e) => DecodedResponse::Err(e),
            None => DecodedResponse::Unknown(t),
        },
    };
    Some((hdr, resp))
}
