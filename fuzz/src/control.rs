//! The control-socket request parser. Today that is [`ControlState::handle`] in
//! `backend/src/control.rs`, reached through [`parse_and_answer`]; when the protocol moves into
//! `mdev/` with a pure parse function, re-point that one function.

use std::sync::{Arc, OnceLock};

use serde_json::Value;
use vgpu_backend::control::{ControlState, ControlVgpu};
use vgpu_backend::driver::{self, Device, Uuid};
use vgpu_backend::vhost::daemon::ServerStatus;

fn state() -> &'static ControlState {
    static STATE: OnceLock<ControlState> = OnceLock::new();
    STATE.get_or_init(|| {
        let device = Device::new(driver::DeviceConfig {
            memory_mib: 256,
            ..Default::default()
        })
        .expect("driver core starts");
        let vgpus = (0..2u32)
            .map(|i| ControlVgpu {
                name: format!("vgpu{i}"),
                socket: None,
                vgpu: device
                    .create_vgpu("vgpu-64m", Uuid::from_u128(0xc0_0000 + u128::from(i)))
                    .expect("vGPU of the built-in type"),
                status: Arc::new(ServerStatus::default()),
            })
            .collect();
        ControlState { device, vgpus }
    })
}

/// The entry point under test: one request line in, one reply line out.
pub fn parse_and_answer(line: &str) -> String {
    state().handle(line)
}

/// Feeds `data` (as the daemon would after reading and trimming one line) to the parser.
///
/// Oracle: the reply is one line of JSON, an object whose `ok` is a boolean, with an `error`
/// string when `ok` is false.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let line = text.lines().next().unwrap_or_default().trim();
    let reply = parse_and_answer(line);
    assert!(!reply.contains('\n'), "reply spans lines");
    let v: Value = serde_json::from_str(&reply).expect("reply is JSON");
    match v.get("ok") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => assert!(v.get("error").is_some_and(Value::is_string)),
        other => panic!("reply without a boolean ok: {other:?}"),
    }
}
