//! The control-socket request parser, [`vgpu_mdev::proto::parse_request`]: the one function the
//! daemon runs on every request line before it acts on it.

use vgpu_mdev::proto::parse_request;

/// Feeds `data` (one request line, as the daemon reads it) to the parser.
///
/// Oracle: the parser never panics, and what it accepts serializes and parses back to the same
/// request (the client and the daemon agree on every request the daemon acts on).
pub fn run(data: &[u8]) {
    let Ok(req) = parse_request(data) else {
        return;
    };
    let text = serde_json::to_string(&req).expect("an accepted request serializes");
    let again = parse_request(text.as_bytes()).expect("a serialized request parses");
    assert_eq!(again, req, "request does not round-trip");
}
