//! Control verbs through [`handle`] and the socket transport.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::state::StateStore;
use super::*;
use crate::driver::{Device, DeviceConfig};

struct Fixture {
    dir: tempfile::TempDir,
    device: Arc<Device>,
    shutdown: Arc<ShutdownSignal>,
}

impl Fixture {
    fn new(memory_mib: u64) -> Self {
        Fixture {
            dir: tempfile::Builder::new()
                .prefix("vgpud-ctl-")
                .tempdir()
                .unwrap(),
            device: Device::new(DeviceConfig {
                memory_mib,
                ..Default::default()
            })
            .unwrap(),
            shutdown: ShutdownSignal::new().unwrap(),
        }
    }

    fn manager(&self, vm_map: Option<PathBuf>) -> Manager {
        Manager::new(
            Arc::clone(&self.device),
            Arc::clone(&self.shutdown),
            ManagerConfig {
                run_dir: self.dir.path().join("run"),
                state: Some(StateStore::new(self.dir.path().join("state"))),
                vm_map,
                default_type: "vgpu-64m".into(),
                device_config: Box::new(|_| crate::device::DeviceConfig::default()),
                features: crate::vhost::backend::GpuFeatures::base(),
            },
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn call(m: &Manager, req: Value) -> Value {
    serde_json::from_str(&handle(m, req.to_string().as_bytes(), Access::Full)).unwrap()
}

#[test]
fn create_list_remove_and_no_room() {
    let f = Fixture::new(256);
    let m = f.manager(None);
    let sock = f.path("a.sock");
    let r = call(
        &m,
        json!({"cmd": "create", "type": "vgpu-64m", "socket": sock, "v": 1}),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert!(sock.exists(), "the socket listens when create returns");
    let uuid = r["uuid"].as_str().unwrap().to_string();
    let dup = call(
        &m,
        json!({"cmd": "create", "type": "vgpu-64m", "uuid": uuid}),
    );
    assert_eq!(dup["kind"], "exists", "{dup}");
    let list = call(&m, json!({"cmd": "list"}));
    let v = &list["vgpus"][0];
    assert_eq!(v["state"], "listening");
    assert_eq!(v["fb_total_bytes"], 64 << 20);
    assert_eq!(v["fb_used_bytes"], 0);
    assert_eq!(v["socket"], json!(sock));
    // 192 MiB free: a 512 MiB type does not fit, and nothing is left behind.
    let full = call(&m, json!({"cmd": "create", "type": "vgpu-512m"}));
    assert_eq!(full["kind"], "no-room", "{full}");
    let msg = full["error"].as_str().unwrap();
    assert!(msg.contains("512 MiB") && msg.contains("192 MiB"), "{msg}");
    assert_eq!(
        call(&m, json!({"cmd": "list"}))["vgpus"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(f.device.memory().1, 64 << 20);
    let types = call(&m, json!({"cmd": "types"}));
    let t64 = types["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "vgpu-64m")
        .unwrap()
        .clone();
    assert_eq!(t64["available_instances"], 3);
    let r = call(&m, json!({"cmd": "remove", "uuid": uuid}));
    assert_eq!(r["ok"], true, "{r}");
    assert!(!sock.exists());
    assert_eq!(f.device.memory().1, 0);
    let r = call(&m, json!({"cmd": "remove", "uuid": uuid}));
    assert_eq!(r["kind"], "not-found");
    let r = call(&m, json!({"cmd": "remove", "uuid": "not-a-uuid"}));
    assert_eq!(r["kind"], "invalid");
    for bad in [&b"garbage"[..], b"", b"{\"cmd\":\"list\",\"v\":99}"] {
        let r: Value = serde_json::from_str(&handle(&m, bad, Access::Full)).unwrap();
        assert_eq!(r["kind"], "bad-request", "{r}");
    }
    m.stop_all();
}

#[test]
fn definitions_persist_and_restore() {
    let f = Fixture::new(512);
    let m = f.manager(None);
    let auto = call(
        &m,
        json!({"cmd": "create", "type": "vgpu-64m", "auto": true, "socket": f.path("auto.sock")}),
    );
    let auto_uuid = auto["uuid"].as_str().unwrap().to_string();
    let def = call(&m, json!({"cmd": "define", "type": "vgpu-64m"}));
    assert_eq!(def["ok"], true, "{def}");
    let def_uuid = def["uuid"].as_str().unwrap().to_string();
    let transient = call(&m, json!({"cmd": "create", "type": "vgpu-64m"}));
    assert_eq!(transient["ok"], true);
    let r = call(
        &m,
        json!({"cmd": "sched", "policy": "equal-share", "timeslice_us": 3000}),
    );
    assert_eq!(r["changed"], json!(["policy", "timeslice_us"]), "{r}");
    assert_eq!(
        call(&m, json!({"cmd": "sched", "timeslice_us": 999}))["kind"],
        "invalid"
    );
    let r = call(&m, json!({"cmd": "start", "uuid": def_uuid}));
    assert_eq!(r["ok"], true, "{r}");
    let r = call(&m, json!({"cmd": "stop", "uuid": def_uuid}));
    assert_eq!(r["ok"], true, "{r}");
    m.stop_all();
    drop(m);

    let state = StateStore::new(f.path("state")).load().unwrap();
    assert_eq!(state.instances.len(), 2, "{state:?}");
    assert_eq!(state.scheduler.policy.as_deref(), Some("equal-share"));
    let f2 = Fixture::new(512);
    let m2 = Manager::new(
        Arc::clone(&f2.device),
        Arc::clone(&f2.shutdown),
        ManagerConfig {
            run_dir: f.path("run"),
            state: Some(StateStore::new(f.path("state"))),
            vm_map: None,
            default_type: "vgpu-64m".into(),
            device_config: Box::new(|_| crate::device::DeviceConfig::default()),
            features: crate::vhost::backend::GpuFeatures::base(),
        },
    );
    m2.restore(&state).unwrap();
    let list = call(&m2, json!({"cmd": "list"}));
    let by = |u: &str| {
        list["vgpus"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["uuid"] == u)
            .cloned()
            .unwrap()
    };
    assert_eq!(by(&auto_uuid)["state"], "listening");
    assert_eq!(by(&auto_uuid)["socket"], json!(f.path("auto.sock")));
    assert_eq!(by(&def_uuid)["state"], "defined");
    assert_eq!(f2.device.policy().as_str(), "equal-share");
    assert_eq!(f2.device.timeslice_us(), 3000);
    let r = call(&m2, json!({"cmd": "undefine", "uuid": def_uuid}));
    assert_eq!(r["ok"], true);
    let r = call(&m2, json!({"cmd": "remove", "uuid": auto_uuid}));
    assert_eq!(r["ok"], true);
    assert!(StateStore::new(f.path("state"))
        .load()
        .unwrap()
        .instances
        .is_empty());
    m2.stop_all();
}

#[test]
fn claims_never_hand_out_one_instance_twice() {
    let f = Fixture::new(1024);
    let map = f.path("vms.toml");
    std::fs::write(
        &map,
        "[vm.big]\ntype = \"vgpu-512m\"\n[vm.pinned]\nuuid = \"00000000-0000-0000-0000-0000000000aa\"\n",
    )
    .unwrap();
    let m = f.manager(Some(map));
    let pinned = call(
        &m,
        json!({"cmd": "create", "type": "vgpu-64m", "uuid": "00000000-0000-0000-0000-0000000000aa"}),
    );
    assert_eq!(pinned["ok"], true, "{pinned}");
    let free = call(&m, json!({"cmd": "create", "type": "vgpu-64m"}));
    // The pinned instance is reserved for its VM: other claims get the free one, then new ones.
    let a = call(&m, json!({"cmd": "claim", "vm": "a"}));
    let b = call(&m, json!({"cmd": "claim", "vm": "b"}));
    assert_eq!(a["uuid"], free["uuid"], "{a}");
    assert_eq!(a["created"], false);
    assert_eq!(b["created"], true, "{b}");
    assert_ne!(a["uuid"], b["uuid"]);
    // The same VM asking again gets its own instance back.
    assert_eq!(
        call(&m, json!({"cmd": "claim", "vm": "a"}))["uuid"],
        a["uuid"]
    );
    let p = call(&m, json!({"cmd": "claim", "vm": "pinned"}));
    assert_eq!(p["uuid"], "00000000-0000-0000-0000-0000000000aa");
    let big = call(&m, json!({"cmd": "claim", "vm": "big", "type": "vgpu-64m"}));
    assert_eq!(big["type"], "vgpu-512m", "the map wins: {big}");
    // Every vgpu-64m is reserved or freshly claimed: a new one is made.
    let t = call(&m, json!({"cmd": "claim", "type": "vgpu-64m"}));
    assert_eq!(t["created"], true, "{t}");
    // 4 * 64 + 512 = 768 MiB used: no room for another 512 MiB.
    let none = call(&m, json!({"cmd": "claim", "type": "vgpu-512m"}));
    assert_eq!(none["kind"], "no-room", "{none}");
    // Claim-created instances are defined with auto, so a restart brings them back.
    let state = StateStore::new(f.path("state")).load().unwrap();
    assert!(state.instances.iter().all(|i| i.auto));
    assert_eq!(state.instances.len(), 3);
    m.stop_all();
}

fn spawn_server(f: &Fixture, m: Manager) -> (PathBuf, std::thread::JoinHandle<()>) {
    let path = f.path("control.sock");
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    secure_socket(&path, None).unwrap();
    let sd = Arc::clone(&f.shutdown);
    let m = Arc::new(m);
    let t = std::thread::spawn(move || {
        let m2 = Arc::clone(&m);
        serve(
            &listener,
            &sd,
            Arc::new(move |l: &[u8], a: Access| handle(&m2, l, a)),
        );
        m.stop_all();
    });
    (path, t)
}

fn read_reply(s: &mut UnixStream) -> Value {
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

#[test]
fn socket_serves_others_while_one_client_stalls() {
    let f = Fixture::new(256);
    let m = f.manager(None);
    let (path, t) = spawn_server(&f, m);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A half request that never ends...
    let mut stalled = UnixStream::connect(&path).unwrap();
    stalled.write_all(br#"{"cmd":"li"#).unwrap();
    // ...does not delay another client.
    let start = Instant::now();
    let reply = vgpu_mdev::ctl::Client::new(&path)
        .call(Request::List { v: None })
        .unwrap();
    assert!(reply["vgpus"].as_array().unwrap().is_empty());
    assert!(
        start.elapsed() < REQUEST_TIMEOUT,
        "served while the other stalls"
    );
    // The stalled one gets a timeout error.
    stalled
        .set_read_timeout(Some(REQUEST_TIMEOUT + Duration::from_secs(30)))
        .unwrap();
    let r = read_reply(&mut stalled);
    assert_eq!(r["kind"], "bad-request", "{r}");
    assert!(r["error"].as_str().unwrap().contains("timed out"), "{r}");
    // Oversized: refused with an error, the daemon lives on.
    let mut big = UnixStream::connect(&path).unwrap();
    let junk = vec![b'x'; MAX_REQUEST_BYTES + 10];
    let _ = big.write_all(&junk);
    let r = read_reply(&mut big);
    assert!(r["error"].as_str().unwrap().contains("longer than"), "{r}");
    // Garbage.
    let r = vgpu_mdev::ctl::Client::new(&path)
        .raw("\u{1}\u{2}garbage")
        .unwrap();
    assert_eq!(r["ok"], false);
    let reply = vgpu_mdev::ctl::Client::new(&path)
        .call(Request::Types { v: None })
        .unwrap();
    assert!(!reply["types"].as_array().unwrap().is_empty());
    f.shutdown.trigger();
    t.join().unwrap();
    let _ = Path::new(&path);
}

#[test]
fn fragmented_memory_gives_no_room_with_figures_and_creates_nothing() {
    let f = Fixture::new(2048);
    let m = f.manager(None);
    let uuids: Vec<String> = (0..4)
        .map(|_| {
            let r = call(&m, json!({"cmd": "create", "type": "vgpu-512m"}));
            assert_eq!(r["ok"], true, "{r}");
            r["uuid"].as_str().unwrap().to_string()
        })
        .collect();
    for u in [&uuids[0], &uuids[2]] {
        assert_eq!(call(&m, json!({"cmd": "remove", "uuid": u}))["ok"], true);
    }
    // 1024 MiB free, but in two 512 MiB ranges.
    assert_eq!(f.device.memory().1, 1024 << 20);
    let r = call(&m, json!({"cmd": "create", "type": "vgpu-1q"}));
    assert_eq!(r["kind"], "no-room", "{r}");
    let msg = r["error"].as_str().unwrap();
    assert!(
        msg.contains("needs 1024 MiB")
            && msg.contains("1024 MiB are free")
            && msg.contains("largest free range is 512 MiB"),
        "{msg}"
    );
    assert_eq!(
        call(&m, json!({"cmd": "list"}))["vgpus"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(f.device.memory().1, 1024 << 20, "nothing half-created");
    // The holes are reused.
    for _ in 0..2 {
        assert_eq!(
            call(&m, json!({"cmd": "create", "type": "vgpu-512m"}))["ok"],
            true
        );
    }
    m.stop_all();
}

#[test]
fn clients_other_than_root_and_the_daemons_user_may_only_claim_and_read() {
    let f = Fixture::new(1024);
    let m = f.manager(None);
    let ask = |req: Value, access: Access| -> Value {
        serde_json::from_str(&handle(&m, req.to_string().as_bytes(), access)).unwrap()
    };
    for req in [
        json!({"cmd": "create", "type": "vgpu-64m"}),
        json!({"cmd": "remove", "uuid": "6c1e0d7e-4e8e-4bd4-8c36-0b0e8a3b2f10", "force": true}),
        json!({"cmd": "sched", "policy": "equal-share"}),
        json!({"cmd": "screenshot", "uuid": "6c1e0d7e-4e8e-4bd4-8c36-0b0e8a3b2f10"}),
    ] {
        let r = ask(req.clone(), Access::ClaimAndRead);
        assert_eq!(r["ok"], false, "{req}: {r}");
        assert_eq!(r["kind"], "denied", "{req}: {r}");
    }
    for req in [
        json!({"cmd": "list"}),
        json!({"cmd": "types"}),
        json!({"cmd": "stats"}),
    ] {
        let r = ask(req.clone(), Access::ClaimAndRead);
        assert_eq!(r["ok"], true, "{req}: {r}");
    }
    let r = ask(
        json!({"cmd": "claim", "type": "vgpu-64m"}),
        Access::ClaimAndRead,
    );
    assert_eq!(r["ok"], true, "claim: {r}");
    let r = ask(json!({"cmd": "create", "type": "vgpu-64m"}), Access::Full);
    assert_eq!(r["ok"], true, "create as root: {r}");
    assert_eq!(Access::of_uid(0), Access::Full);
    assert_eq!(Access::of_uid(65534), Access::ClaimAndRead);
}
