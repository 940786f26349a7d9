//! The control protocol of `vgpud` (version [`PROTOCOL_VERSION`]), spoken on its control socket.
//!
//! One request per connection: the client writes one JSON object on one line (at most
//! [`MAX_REQUEST_BYTES`], newline included) and reads one JSON object on one line back. Every
//! request names its verb in `"cmd"` and may carry the protocol version in `"v"` (absent means 1,
//! what clients before versioning sent). Replies carry `"ok"` and `"v"`; errors carry `"error"`
//! (a sentence) and `"kind"` (a stable word, see [`ErrorKind`]). mdev/README.md documents every
//! verb with its fields and reply.
//!
//! [`parse_request`] is the daemon's whole request parser: pure, bounded, and fuzzed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request accepted, in bytes (the newline included).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Longest VM name or type name accepted in a request.
pub const MAX_NAME_LEN: usize = 256;
/// Longest socket path accepted in a request (`sun_path` holds 108 bytes).
pub const MAX_SOCKET_PATH: usize = 107;
/// Most scheduler-log entries one `sched-log` returns.
pub const MAX_LOG_LIMIT: usize = 1 << 16;

/// One control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The instances: uuid, type, socket, state, memory.
    List {
        /// Protocol version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v: Option<u32>,
    },
    /// Per-instance scheduling and memory figures.
    Stats {
        /// Protocol version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v: Option<u32>,
    },
    /// The newest `limit` scheduler slices (default 256).
    SchedLog {
        /// Protocol version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v: Option<u32>,
        /// Entries to return.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// The device's types with live `available_instances`.
    Types {
        /// Protocol version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v: Option<u32>,
    },
    /// Creates and starts an instance; the reply comes once its socket listens.
    Create {
        /// Protocol version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v: Option<u32>,
        /// Its type.
        #[serde(rename = "type")]
        type_name: String,
        /// Its UUID (default: random).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uuid: Option<String>,
        /// Its vhost-user socket (default: `<run-dir>/<uuid>.sock`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        socket: Option<PathBuf>,
        /// Also define it, started again whenever the daemon starts.
        #[serde(default, skip_serializing_if = "is_false")]
        auto: bool,
    },
    /// Stops an instance and forgets it (its definition too).
    Remove {
        /// Protocol version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v: Option<u32>,
        /// The instance.
        uuid: String,
        /// Disconnect a connected VM instead of refusing.
        #[serde(default, skip_serializing_if = "is_false")]
        force: bool,
    },
    /// Records an instance in the state directory without starting it.
    Define {
        /// Protocol version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v: Option<u32>,
        /// Its type.
        #[serde(rename = "type")]
        type_name: String,
        /// Its UUID (default: random).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uuid: Option<String>,
        /// Its vhost-user socket (default: `<run-dir>/<uuid>.sock`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        socket: Option<PathBuf>,
        /// Start it whenever the daemon starts.
        #[serde(default, skip_serializing_if = "is_false")]
        auto: bool,
    },
    /// Forgets a definition (a running instance keeps running, as a transient one).
    Undefine {
        /// Protocol version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v: Option<u32>,
        /// The instance.
        uuid: String,
    },
    /// Starts a defined instance.
    Start {
        /// Protocol version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v: Option<u32>,
        /// The instance.
        uuid: String,
    },
    /// Stops a running instance (a defined one stays defined).
    Stop {
        /// Protocol version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v: Option<u32>,
        /// The instance.
        uuid: String,
        /// Disconnect a connected VM instead of refusing.
        #[serde(default, skip_serializing_if = "is_false")]
        force: bool,
    },
    /// Changes the scheduler now; the reply says what changed.
    Sched {
        /// Protocol version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v: Option<u32>,
        /// New policy (`best-effort`, `equal-share`, `fixed-share`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<String>,
        /// New device time slice (µs, 1000..=30000), from the next turn.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeslice_us: Option<u32>,
    },
    /// The scanout `head` of an instance as a PNG (base64 in `"png"`).
    Screenshot {
        /// Protocol version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v: Option<u32>,
        /// The instance.
        uuid: String,
        /// The scanout (default 0).
        #[serde(default)]
        head: u32,
    },
    /// A per-VM relay asks for a started instance with no VM (see mdev/README.md).
    Claim {
        /// Protocol version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v: Option<u32>,
        /// Wanted type (default: the VM map's, else the daemon's `--type`).
        #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
        type_name: Option<String>,
        /// The VM's name, looked up in the daemon's `--vm-map`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vm: Option<String>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Request {
    /// True for verbs that only read state, and for `claim`, which a per-VM relay running as the
    /// QEMU user may send: the verbs any client that can open the control socket may use.
    pub fn unprivileged_ok(&self) -> bool {
        matches!(
            self,
            Request::List { .. }
                | Request::Stats { .. }
                | Request::SchedLog { .. }
                | Request::Types { .. }
                | Request::Claim { .. }
        )
    }

    /// The verb, as on the wire.
    pub fn cmd(&self) -> &'static str {
        match self {
            Request::List { .. } => "list",
            Request::Stats { .. } => "stats",
            Request::SchedLog { .. } => "sched-log",
            Request::Types { .. } => "types",
            Request::Create { .. } => "create",
            Request::Remove { .. } => "remove",
            Request::Define { .. } => "define",
            Request::Undefine { .. } => "undefine",
            Request::Start { .. } => "start",
            Request::Stop { .. } => "stop",
            Request::Sched { .. } => "sched",
            Request::Screenshot { .. } => "screenshot",
            Request::Claim { .. } => "claim",
        }
    }

    /// The version field, if sent.
    pub fn version(&self) -> Option<u32> {
        match self {
            Request::List { v }
            | Request::Stats { v }
            | Request::SchedLog { v, .. }
            | Request::Types { v }
            | Request::Create { v, .. }
            | Request::Remove { v, .. }
            | Request::Define { v, .. }
            | Request::Undefine { v, .. }
            | Request::Start { v, .. }
            | Request::Stop { v, .. }
            | Request::Sched { v, .. }
            | Request::Screenshot { v, .. }
            | Request::Claim { v, .. } => *v,
        }
    }

    /// Stamps the request with [`PROTOCOL_VERSION`] (what [`crate::ctl::Client`] sends).
    pub fn versioned(mut self) -> Self {
        match &mut self {
            Request::List { v }
            | Request::Stats { v }
            | Request::SchedLog { v, .. }
            | Request::Types { v }
            | Request::Create { v, .. }
            | Request::Remove { v, .. }
            | Request::Define { v, .. }
            | Request::Undefine { v, .. }
            | Request::Start { v, .. }
            | Request::Stop { v, .. }
            | Request::Sched { v, .. }
            | Request::Screenshot { v, .. }
            | Request::Claim { v, .. } => *v = Some(PROTOCOL_VERSION),
        }
        self
    }

    fn check(&self) -> Result<(), ProtoError> {
        let name = |field: &'static str, s: &str| {
            if s.is_empty() || s.len() > MAX_NAME_LEN || s.chars().any(char::is_control) {
                Err(ProtoError::BadField {
                    field,
                    reason: format!("must be 1..={MAX_NAME_LEN} printable characters"),
                })
            } else {
                Ok(())
            }
        };
        let socket = |p: &Option<PathBuf>| match p {
            Some(p) if p.as_os_str().is_empty() || p.as_os_str().len() > MAX_SOCKET_PATH => {
                Err(ProtoError::BadField {
                    field: "socket",
                    reason: format!("must be 1..={MAX_SOCKET_PATH} bytes"),
                })
            }
            _ => Ok(()),
        };
        match self {
            Request::Create {
                type_name,
                uuid,
                socket: s,
                ..
            }
            | Request::Define {
                type_name,
                uuid,
                socket: s,
                ..
            } => {
                name("type", type_name)?;
                if let Some(u) = uuid {
                    name("uuid", u)?;
                }
                socket(s)
            }
            Request::Remove { uuid, .. }
            | Request::Undefine { uuid, .. }
            | Request::Start { uuid, .. }
            | Request::Stop { uuid, .. }
            | Request::Screenshot { uuid, .. } => name("uuid", uuid),
            Request::Claim { type_name, vm, .. } => {
                if let Some(t) = type_name {
                    name("type", t)?;
                }
                if let Some(vm) = vm {
                    name("vm", vm)?;
                }
                Ok(())
            }
            Request::SchedLog { limit: Some(n), .. } if *n > MAX_LOG_LIMIT => {
                Err(ProtoError::BadField {
                    field: "limit",
                    reason: format!("at most {MAX_LOG_LIMIT}"),
                })
            }
            _ => Ok(()),
        }
    }
}

/// Why a request was refused before it reached the daemon's state.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    /// Longer than [`MAX_REQUEST_BYTES`].
    #[error("request longer than {MAX_REQUEST_BYTES} bytes")]
    TooLong,
    /// Not UTF-8.
    #[error("request is not UTF-8")]
    NotUtf8,
    /// Not a JSON object of a known verb with its fields.
    #[error("bad request: {0}")]
    Malformed(String),
    /// A field is out of range.
    #[error("bad request: {field} {reason}")]
    BadField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The client speaks a newer protocol.
    #[error("protocol version {0} not supported (this daemon speaks {PROTOCOL_VERSION})")]
    Version(u32),
}

/// Parses one request line (with or without its newline): bounded, never panics.
pub fn parse_request(bytes: &[u8]) -> Result<Request, ProtoError> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(ProtoError::TooLong);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| ProtoError::NotUtf8)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(ProtoError::Malformed("empty request".into()));
    }
    let req: Request =
        serde_json::from_str(text).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    match req.version() {
        Some(v) if v == 0 || v > PROTOCOL_VERSION => return Err(ProtoError::Version(v)),
        _ => {}
    }
    req.check()?;
    Ok(req)
}

/// Stable error kinds in replies (`"kind"`), for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The request could not be parsed ([`ProtoError`]).
    BadRequest,
    /// No instance with that UUID.
    NotFound,
    /// The UUID or socket is taken.
    Exists,
    /// A VM is connected (use `force`).
    Busy,
    /// Not enough device memory or instances of the type; the message has the figures.
    NoRoom,
    /// Unknown type, policy or bad value.
    Invalid,
    /// The state directory could not be written.
    State,
    /// The client may not use this verb (only root and the daemon's own user change state).
    Denied,
    /// Anything else.
    Failed,
}

/// An error reply.
pub fn error_reply(kind: ErrorKind, message: &str) -> Value {
    json!({"ok": false, "v": PROTOCOL_VERSION, "kind": kind, "error": message})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_verb_and_round_trips() {
        let reqs = [
            Request::List { v: None },
            Request::SchedLog {
                v: None,
                limit: Some(5),
            },
            Request::Create {
                v: None,
                type_name: "vgpu-1q".into(),
                uuid: None,
                socket: Some("/run/a.sock".into()),
                auto: true,
            },
            Request::Remove {
                v: None,
                uuid: "u".into(),
                force: true,
            },
            Request::Sched {
                v: None,
                policy: Some("fixed-share".into()),
                timeslice_us: Some(4000),
            },
            Request::Claim {
                v: None,
                type_name: None,
                vm: Some("web1".into()),
            },
        ];
        for r in reqs {
            let r = r.versioned();
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(parse_request(line.as_bytes()).unwrap(), r, "{line}");
        }
        assert_eq!(
            parse_request(br#"{"cmd":"list"}"#).unwrap(),
            Request::List { v: None }
        );
        assert_eq!(
            parse_request(br#"{"cmd":"screenshot","uuid":"x"}"#).unwrap(),
            Request::Screenshot {
                v: None,
                uuid: "x".into(),
                head: 0
            }
        );
    }

    #[test]
    fn refuses_bad_requests() {
        assert_eq!(
            parse_request(&vec![b' '; MAX_REQUEST_BYTES + 1]),
            Err(ProtoError::TooLong)
        );
        assert_eq!(parse_request(b"\xff\xfe"), Err(ProtoError::NotUtf8));
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            br#"{"cmd":"reboot"}"#,
            br#"{"cmd":"list","x":1}"#,
            br#"{"cmd":"create"}"#,
            br#"{"cmd":"create","type":""}"#,
            br#"{"cmd":"remove","uuid":"a\nb"}"#,
            br#"{"cmd":"sched-log","limit":100000000}"#,
            br#"{"cmd":"create","type":"t","socket":""}"#,
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_request(br#"{"cmd":"list","v":2}"#),
            Err(ProtoError::Version(2))
        );
        let long = format!(
            r#"{{"cmd":"claim","vm":"{}"}}"#,
            "a".repeat(MAX_NAME_LEN + 1)
        );
        assert!(parse_request(long.as_bytes()).is_err());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives on the socket, the parser answers without panicking, and whatever it
        /// accepts re-encodes to a request it accepts again.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(req) = parse_request(&bytes) {
                let line = serde_json::to_string(&req).unwrap();
                prop_assert_eq!(parse_request(line.as_bytes()).unwrap(), req);
            }
        }

        /// Near-valid requests: known verbs with arbitrary field values.
        #[test]
        fn mutated_requests_never_panic(
            cmd in prop::sample::select(vec!["list", "create", "remove", "claim", "sched",
                                             "screenshot", "define", "stop", "sched-log"]),
            key in "[a-z_]{1,12}",
            value in prop_oneof![
                any::<i64>().prop_map(|n| json!(n)),
                ".{0,40}".prop_map(|s| json!(s)),
                any::<bool>().prop_map(|b| json!(b)),
            ],
        ) {
            let line = json!({"cmd": cmd, key: value, "v": 1}).to_string();
            let _ = parse_request(line.as_bytes());
        }
    }
}
