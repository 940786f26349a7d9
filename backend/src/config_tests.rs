use super::*;
use clap::Parser;

fn opts(args: &[&str]) -> Options {
    Options::try_parse_from(std::iter::once("vgpud").chain(args.iter().copied())).unwrap()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "vgpud-config-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const TOML: &str = r#"
device_memory_mib = 8192
policy = "equal-share"
timeslice_us = 3000
scanouts = 1
resolution = "1024x768"
stats_interval = 10
control_socket = "/run/vgpud/control.sock"

[[vgpu]]
socket = "/run/vgpud/vm1.sock"
type = "vgpu-1q"
uuid = "6c1e0d7e-4e8e-4bd4-8c36-0b0e8a3b2f10"

[[vgpu]]
socket = "/run/vgpud/vm2.sock"
type = "vgpu-2q"
scanouts = 2
resolution = "1920x1080"
"#;

#[test]
fn toml_config_file() {
    let dir = TempDir::new("toml");
    let path = dir.write("vgpud.toml", TOML);
    let plan = plan(&opts(&["--config", path.to_str().unwrap()])).unwrap();
    let s = &plan.settings;
    assert_eq!(s.driver.memory_mib, 8192);
    assert_eq!(s.driver.policy, Policy::EqualShare);
    assert_eq!(s.driver.timeslice_us, Some(3000));
    assert_eq!(s.stats_interval, 10);
    assert_eq!(
        s.control_socket,
        Some(PathBuf::from("/run/vgpud/control.sock"))
    );
    assert_eq!(plan.vgpus.len(), 2);
    let v0 = &plan.vgpus[0];
    assert_eq!(v0.name, "vgpu0");
    assert_eq!(v0.type_name, "vgpu-1q");
    assert_eq!(v0.uuid.to_string(), "6c1e0d7e-4e8e-4bd4-8c36-0b0e8a3b2f10");
    assert_eq!((v0.device.width, v0.device.height), (1024, 768));
    let v1 = &plan.vgpus[1];
    assert_eq!(v1.socket, Some(PathBuf::from("/run/vgpud/vm2.sock")));
    assert_eq!(v1.device.num_scanouts, 2);
    assert_eq!((v1.device.width, v1.device.height), (1920, 1080));
    // A derived UUID is stable for the socket path.
    assert_eq!(v1.uuid, stable_uuid("/run/vgpud/vm2.sock"));
    assert_ne!(v0.uuid, v1.uuid);
}

#[test]
fn json_config_file_and_command_line_precedence() {
    let dir = TempDir::new("json");
    dir.write(
        "types.toml",
        "[[types]]\nname = \"vgpu-tiny\"\nframebuffer = \"16M\"\nmax_instances = 4\n",
    );
    let path = dir.write(
        "vgpud.json",
        r#"{"device_memory_mib": 2048, "policy": "fixed-share", "types_file": "types.toml",
            "vgpu": [{"socket": "/tmp/a.sock", "type": "vgpu-tiny"}]}"#,
    );
    let plan = plan(&opts(&[
        "--config",
        path.to_str().unwrap(),
        "--device-memory",
        "1024",
        "--policy",
        "best-effort",
        "--vgpu",
        "socket=/tmp/b.sock,type=vgpu-64m",
        "--socket-path",
        "/tmp/c.sock",
        "--type",
        "vgpu-512m",
    ]))
    .unwrap();
    assert_eq!(plan.settings.driver.memory_mib, 1024);
    assert_eq!(plan.settings.driver.policy, Policy::BestEffort);
    assert_eq!(plan.settings.driver.timeslice_us, None);
    let names: Vec<_> = plan
        .vgpus
        .iter()
        .map(|v| (v.name.as_str(), v.type_name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("vgpu0", "vgpu-512m"),
            ("vgpu1", "vgpu-tiny"),
            ("vgpu2", "vgpu-64m")
        ]
    );
    // Defaults from the type: vgpu-64m has one head of at most 1024x768.
    let v2 = &plan.vgpus[2].device;
    assert_eq!((v2.num_scanouts, v2.width, v2.height), (1, 1024, 768));
    assert_eq!((v2.max_width, v2.max_height), (1024, 768));
    let v0 = &plan.vgpus[0].device;
    assert_eq!((v0.num_scanouts, v0.width, v0.height), (1, 1280, 800));
}

#[test]
fn socket_path_shorthand_defaults() {
    let plan = plan(&opts(&["--socket-path", "/tmp/s.sock"])).unwrap();
    assert_eq!(plan.vgpus.len(), 1);
    assert_eq!(plan.vgpus[0].type_name, DEFAULT_TYPE);
    assert_eq!(
        plan.vgpus[0].device,
        DeviceConfig {
            max_width: 1920,
            max_height: 1080,
            ..DeviceConfig::default()
        }
    );
    assert_eq!(plan.settings.driver.memory_mib, DEFAULT_DEVICE_MEMORY_MIB);
    assert_eq!(plan.settings.driver.policy, Policy::BestEffort);
    assert_eq!(plan.settings.stats_interval, 0);
    let fd = plan_fd();
    assert_eq!(fd.vgpus[0].socket, None);
}

fn plan_fd() -> Plan {
    plan(&opts(&["--fd", "3"])).unwrap()
}

fn usage_err(args: &[&str]) -> String {
    match plan(&opts(args)) {
        Err(e @ ConfigError::Usage(_)) => {
            assert_eq!(e.exit_code(), 2);
            e.to_string()
        }
        other => panic!("{args:?}: {other:?}"),
    }
}

fn capacity_err(args: &[&str]) -> String {
    match plan(&opts(args)) {
        Err(e @ ConfigError::Capacity(_)) => {
            assert_eq!(e.exit_code(), 3);
            e.to_string()
        }
        other => panic!("{args:?}: {other:?}"),
    }
}

#[test]
fn config_errors() {
    let dir = TempDir::new("errors");
    let file = |name: &str, text: &str| dir.write(name, text).to_string_lossy().into_owned();
    let cases = [
        (file("a.toml", "bogus = 1\n"), "bogus"),
        (file("b.toml", "policy = \"fair\"\n"), "fair"),
        (file("c.toml", "timeslice_us = 500\n"), "1000..=30000"),
        (
            file("d.json", "{\"vgpu\": [{\"type\": \"vgpu-1q\"}]}"),
            "socket",
        ),
        (
            file("e.toml", "[[vgpu]]\nsocket = \"/a\"\nuuid = \"x\"\n"),
            "uuid",
        ),
        (
            file("f.toml", "[[vgpu]]\nsocket = \"/a\"\nscanouts = 0\n"),
            "scanouts",
        ),
        (file("g.toml", "device_memory_mib = 0\n"), "device memory"),
        (file("h.toml", "not toml ["), "config file"),
        (file("i.json", "{"), "config file"),
        (
            file("j.toml", "types_file = \"missing.toml\"\n"),
            "missing.toml",
        ),
    ];
    for (path, needle) in &cases {
        let e = usage_err(&["--config", path, "--socket-path", "/tmp/x.sock"]);
        assert!(e.contains(needle), "{path}: {e}");
    }
    let e = usage_err(&["--config", "/nonexistent/vgpud.toml"]);
    assert!(e.contains("cannot read"), "{e}");
    // No vGPU at all: the daemon starts empty and waits for `create`.
    assert!(plan(&opts(&[])).unwrap().vgpus.is_empty());
    assert!(usage_err(&["--vgpu", "socket=/a,type=vgpu-9z"]).contains("vgpu-9z"));
    assert!(
        usage_err(&["--vgpu", "socket=/a", "--vgpu", "socket=/a"]).contains("used by two vGPUs")
    );
    let u = "6c1e0d7e-4e8e-4bd4-8c36-0b0e8a3b2f10";
    assert!(usage_err(&[
        "--vgpu",
        &format!("socket=/a,uuid={u}"),
        "--vgpu",
        &format!("socket=/b,uuid={u}"),
    ])
    .contains("UUID"));
    assert!(usage_err(&["--vgpu", "socket=/a,type=vgpu-1q,scanouts=2"]).contains("max_heads"));
    assert!(
        usage_err(&["--vgpu", "socket=/a,type=vgpu-64m,resolution=1920x1080"])
            .contains("maximum 1024x768")
    );
    assert!(usage_err(&["--fd", "3", "--vgpu", "socket=/a"]).contains("--attach"));
}

#[test]
fn too_many_instances_names_the_type_and_limit() {
    let mut args = Vec::new();
    for i in 0..9 {
        args.push("--vgpu".to_string());
        args.push(format!("socket=/tmp/v{i}.sock,type=vgpu-1q"));
    }
    args.extend(["--device-memory".into(), "65536".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let e = capacity_err(&refs);
    assert!(e.contains("vgpu-1q") && e.contains("at most 8"), "{e}");
    // Eight fit in 8 GiB, but not in the default 4 GiB.
    let e = capacity_err(&refs[..16]);
    assert!(
        e.contains("device memory full") && e.contains("vgpu-1q") && e.contains("at most 4"),
        "{e}"
    );
    let mut eight = refs[..16].to_vec();
    eight.extend(["--device-memory", "8192"]);
    assert_eq!(plan(&opts(&eight)).unwrap().vgpus.len(), 8);
}

#[test]
fn list_types_text_and_json() {
    let list = list_types(&TypeTable::builtin(), 4096);
    let text = format_types(&list);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5);
    let q1 = lines.iter().find(|l| l.starts_with("vgpu-1q ")).unwrap();
    assert!(
        q1.ends_with(
            "num_heads=1, framebuffer=1024M, max_resolution=1920x1080, max_instance=8, \
             weight=1, available_instances=4"
        ),
        "{q1}"
    );
    let m64 = list.iter().find(|t| t.name == "vgpu-64m").unwrap();
    assert_eq!(m64.available_instances, 64);
    let small = list_types(&TypeTable::builtin(), 1024);
    let q4 = small.iter().find(|t| t.name == "vgpu-4q").unwrap();
    assert_eq!(q4.available_instances, 0);
    let json = serde_json::to_value(&list).unwrap();
    assert_eq!(json[0]["name"], "vgpu-64m");
    assert_eq!(json[0]["available_instances"], 64);
}

#[test]
fn operator_settings_from_file_and_command_line() {
    let dir = TempDir::new("ops");
    let path = dir.write(
        "vgpud.toml",
        "control_group = \"kvm\"\nstate_dir = \"/srv/vgpud\"\nmetrics_addr = \"127.0.0.1:9464\"\n\
         vm_map = \"/etc/vgpud/vms.toml\"\n",
    );
    let s = settings(&opts(&["--config", path.to_str().unwrap()])).unwrap();
    assert_eq!(s.ops.control_group.as_deref(), Some("kvm"));
    assert_eq!(s.ops.state_dir, PathBuf::from("/srv/vgpud"));
    assert_eq!(s.ops.run_dir, PathBuf::from(DEFAULT_RUN_DIR));
    assert_eq!(s.ops.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(s.ops.vm_map, Some(PathBuf::from("/etc/vgpud/vms.toml")));
    let s = settings(&opts(&[
        "--config",
        path.to_str().unwrap(),
        "--state-dir",
        "/tmp/st",
        "--run-dir",
        "/tmp/run",
        "--metrics-addr",
        "[::1]:9000",
    ]))
    .unwrap();
    assert_eq!(s.ops.state_dir, PathBuf::from("/tmp/st"));
    assert_eq!(s.ops.run_dir, PathBuf::from("/tmp/run"));
    assert_eq!(s.ops.metrics_addr, Some("[::1]:9000".parse().unwrap()));
    let s = settings(&opts(&[])).unwrap();
    assert_eq!(s.ops.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert!(Options::try_parse_from(["vgpud", "--metrics-addr", "nope"]).is_err());
}
