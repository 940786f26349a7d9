//! The compute-channel stream carried in SUBMIT_3D: `validate_stream` (what vgpud runs before
//! accepting a submit) and `decode_stream`, plus the 3D buffer geometry checks.

use vgpu_protocol::channel::{buffer_transfer, MAX_COMMANDS_PER_SUBMIT};
use vgpu_protocol::command::read_obj;
use vgpu_protocol::virtio_gpu::{ResourceCreate3d, Transfer3d};
use vgpu_protocol::{buffer_size, decode_stream, validate_stream, ChannelCommand};

/// Validates and decodes `data` as a command stream.
///
/// Oracles: `validate_stream` accepts exactly the streams whose every command decodes, and
/// counts them; a valid stream holds at most `MAX_COMMANDS_PER_SUBMIT` commands; every decoded
/// command's `encoded_len` matches the bytes it consumed (a NOP may carry an ignored payload), its re-encoding decodes to a command
/// that encodes identically, and none of its buffer accesses overflows.
pub fn run(data: &[u8]) {
    let validated = validate_stream(data);
    let mut iter = decode_stream(data);
    let mut count = 0usize;
    let mut failed = false;
    loop {
        let start = iter.offset();
        let Some(item) = iter.next() else { break };
        let Ok(cmd) = item else {
            failed = true;
            break;
        };
        count += 1;
        let consumed = iter.offset() - start;
        let mut first = Vec::new();
        cmd.encode(&mut first);
        assert_eq!(first.len(), cmd.encoded_len(), "encoding length of {cmd:?}");
        if cmd == ChannelCommand::Nop {
            // NOP alone may carry an ignored payload (protocol/README.md).
            assert!(
                consumed >= cmd.encoded_len() && consumed % 4 == 0,
                "NOP of {consumed}"
            );
        } else {
            assert_eq!(cmd.encoded_len(), consumed, "encoded_len of {cmd:?}");
        }
        let mut again = decode_stream(&first);
        let redecoded = match again.next() {
            Some(Ok(c)) => c,
            other => panic!("re-encoded {cmd:?} does not decode: {other:?}"),
        };
        assert!(
            again.next().is_none(),
            "re-encoded {cmd:?} decodes to more than one command"
        );
        let mut second = Vec::new();
        redecoded.encode(&mut second);
        assert_eq!(first, second, "re-encoding of {cmd:?} is not stable");
        for a in cmd.accesses() {
            assert!(
                a.end().is_some(),
                "decoded {cmd:?} has an overflowing access {a:?}"
            );
        }
        let _ = cmd.resources().count();
    }
    match validated {
        Ok(n) => {
            assert!(
                !failed,
                "validate_stream accepted a stream that fails to decode"
            );
            assert_eq!(n, count, "validate_stream count");
            assert!(n <= MAX_COMMANDS_PER_SUBMIT);
        }
        Err(e) => {
            assert!(
                failed,
                "validate_stream rejected ({e}) a stream that decodes"
            );
            let _ = (e.to_string(), e.response_type());
        }
    }
    if let Some(c) = read_obj::<ResourceCreate3d>(data) {
        let _ = buffer_size(&c);
    }
    if let Some(t) = read_obj::<Transfer3d>(data) {
        if let Ok(b) = buffer_transfer(&t) {
            assert!(b.backing_offset.checked_add(b.len).is_some());
        }
    }
}
