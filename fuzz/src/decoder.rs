//! The virtio-gpu decoder: whatever a guest puts in a request's readable descriptors, and the
//! response and capset records the guest side decodes.

use vgpu_protocol::{decode_request, decode_response, StatsRecord, VgpuCapset};

/// Decodes `data` as a control/cursor request, a response, a capset and a stats record.
///
/// Oracle: a decoded request re-encodes to exactly the bytes it was decoded from (a prefix of
/// `data`: trailing bytes are ignored), and those bytes decode to the same request.
pub fn run(data: &[u8]) {
    if let Ok(req) = decode_request(data) {
        let mut out = Vec::with_capacity(data.len());
        req.cmd.encode(req.hdr, &mut out);
        assert!(
            out.len() <= data.len(),
            "encoding grew: {} > {}",
            out.len(),
            data.len()
        );
        assert_eq!(
            out[..],
            data[..out.len()],
            "re-encoding differs for {:?}",
            req.cmd.type_()
        );
        let again = decode_request(&out);
        assert_eq!(again, Ok(req), "re-encoded request decodes differently");
        // Every decoded command reports a type and a queue without panicking.
        let _ = (req.cmd.type_(), req.cmd.is_cursor());
    }
    if let Some((hdr, resp)) = decode_response(data) {
        let _ = (hdr, format!("{resp:?}"));
    }
    if let Ok(c) = VgpuCapset::parse(data) {
        let _ = (c.type_name().len(), c.as_bytes().len());
    }
    if let Ok(s) = StatsRecord::parse(data) {
        let _ = (s.sched_policy(), s.as_bytes().len());
    }
}
