//! The shipped systemd unit (`backend/systemd/vgpud.service`): systemd accepts it, its sandboxing
//! rates as documented, and its `ExecStart=` line starts a daemon that serves the control socket
//! the way the unit promises (mode 0660, the control group), and creates vGPU sockets for that group.
//!
//! There is no systemd running on the test machines, so the unit is checked with
//! `systemd-analyze verify` and `systemd-analyze security --offline`, and its command line is run
//! as the unit would run it, with its directories moved into a temporary root: `/run/vgpud`
//! (`RuntimeDirectory=`), `/etc/vgpud` (`ConfigurationDirectory=`), `/var/lib/vgpud`
//! (`StateDirectory=`), and the group `vgpud` replaced by the test's own group.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vgpu_tests::backend::{dependencies_required, vgpud_or_skip_path};

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../backend/systemd/vgpud.service")
}

/// The value of `ExecStart=`, continuation lines joined.
fn exec_start(unit: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in unit.lines() {
        let line = line.trim();
        if !inside {
            match line.strip_prefix("ExecStart=") {
                Some(rest) => {
                    inside = true;
                    out.push_str(rest);
                }
                None => continue,
            }
        } else {
            out.push(' ');
            out.push_str(line);
        }
        match out.strip_suffix('\\') {
            Some(cut) => out = cut.to_string(),
            None => break,
        }
    }
    out
}

/// `systemd-analyze`, or `None` (skip) when systemd's tools are not installed.
fn systemd_analyze() -> Option<&'static str> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            !dependencies_required(),
            "systemd-analyze not found (Debian package systemd)"
        );
        eprintln!("SKIP: systemd-analyze not found");
        return None;
    }
    Some("systemd-analyze")
}

fn group_name(gid: u32) -> String {
    // SAFETY: getgrgid returns a pointer to static storage or null; it is read at once.
    let name = unsafe {
        let g = libc::getgrgid(gid);
        if g.is_null() {
            return gid.to_string();
        }
        std::ffi::CStr::from_ptr((*g).gr_name)
    };
    name.to_string_lossy().into_owned()
}

#[test]
fn the_unit_verifies_rates_and_its_command_line_serves() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let Some(vgpud) = vgpud_or_skip_path() else {
        return;
    };
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let exec = exec_start(&unit);
    assert!(exec.starts_with("/usr/libexec/vgpud "), "ExecStart={exec}");
    let root = tempfile::Builder::new()
        .prefix("vgpu-unit-")
        .tempdir()
        .unwrap();
    // The unit as installed, but starting the binary just built (verify checks it exists).
    let copy = root.path().join("vgpud.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/libexec/vgpud", &vgpud.display().to_string()),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The sandboxing directives: the README documents an exposure of 1.6 ("OK").
    let out = Command::new(analyze)
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&copy)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze security: exposure above 2.0:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", report.lines().last().unwrap_or(""));

    // ExecStart= as the unit runs it, its directories inside the temporary root.
    let dir = |d: &str| {
        let p = root.path().join(d);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let (etc, run, state) = (dir("etc"), dir("run"), dir("state"));
    std::fs::write(etc.join("vgpud.toml"), "device_memory_mib = 512\n").unwrap();
    let group = group_name(unsafe { libc::getegid() });
    let mut args: Vec<String> = exec
        .split_whitespace()
        .skip(1)
        .map(|a| {
            a.replace("/etc/vgpud", &etc.display().to_string())
                .replace("/run/vgpud", &run.display().to_string())
        })
        .collect();
    if let Some(i) = args.iter().position(|a| a == "--control-group") {
        args[i + 1] = group.clone();
    }
    // StateDirectory=vgpud is vgpud's default --state-dir (/var/lib/vgpud); the run directory of
    // the instances' sockets defaults to the control socket's directory's, RuntimeDirectory=.
    args.extend([
        "--state-dir".to_string(),
        state.display().to_string(),
        "--run-dir".to_string(),
        run.display().to_string(),
    ]);
    let log = std::fs::File::create(root.path().join("vgpud.log")).unwrap();
    let mut child = Command::new(&vgpud)
        .args(&args)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let log_text = || std::fs::read_to_string(root.path().join("vgpud.log")).unwrap_or_default();
    let control = run.join("control.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !control.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("vgpud {args:?} exited with {status}:\n{}", log_text());
        }
        assert!(
            Instant::now() < deadline,
            "no control socket:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let meta = std::fs::metadata(&control).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o660,
        "control socket mode"
    );
    assert_eq!(
        meta.gid(),
        unsafe { libc::getegid() },
        "control socket group"
    );
    // `vgpuctl` (built beside vgpud by `cargo build --workspace --bins`) creates an instance: its
    // socket lies in the runtime directory, open to the group.
    let vgpuctl = vgpud.with_file_name("vgpuctl");
    assert!(
        vgpuctl.is_file() || !dependencies_required(),
        "{} not built (cargo build --workspace --bins)",
        vgpuctl.display()
    );
    if !vgpuctl.is_file() {
        eprintln!("SKIP: {} not built", vgpuctl.display());
        let _ = child.kill();
        let _ = child.wait();
        return;
    }
    let out = Command::new(&vgpuctl)
        .arg("--control")
        .arg(&control)
        .args(["create", "--type", "vgpu-64m", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "create: {text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log_text()
    );
    let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
    let socket = PathBuf::from(reply["socket"].as_str().unwrap());
    assert!(socket.starts_with(&run), "{socket:?} outside {run:?}");
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "vGPU socket mode");
    let _ = child.kill();
    let _ = child.wait();
}

/// The unit under a real systemd (`tests/systemd/boot-unit.sh`): systemd boots as PID 1 of its own
/// namespaces in a throw-away overlay of the host's root, starts `vgpud.service` as user `vgpud`
/// with every sandboxing directive of the unit, and `vgpuctl` creates an `--auto` vGPU, changes the
/// policy, and finds the vGPU back on its socket after `systemctl restart vgpud`; every thread of the
/// daemon runs under its seccomp filter.
#[test]
fn the_unit_runs_under_systemd() {
    let Some(vgpud) = vgpud_or_skip_path() else {
        return;
    };
    let vgpuctl = vgpud.with_file_name("vgpuctl");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let have = root
        && vgpuctl.is_file()
        && Path::new("/lib/systemd/systemd").is_file()
        && Command::new("unshare")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !have {
        assert!(
            !dependencies_required(),
            "needs root, unshare/nsenter (util-linux), systemd and vgpuctl built beside vgpud"
        );
        eprintln!("SKIP: needs root, unshare, systemd and vgpuctl");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/boot-unit.sh");
    let unit_dir = unit_path().parent().unwrap().to_path_buf();
    let out = Command::new(&script)
        .arg(&vgpud)
        .arg(&vgpuctl)
        .arg(&unit_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{}: {}", script.display(), out.status);
    for step in [
        "OK vgpud.service active as user vgpud",
        "OK vgpuctl create --auto",
        "OK vgpuctl sched --policy equal-share",
        "OK after systemctl restart",
        "OK all ",
    ] {
        assert!(text.contains(step), "missing {step:?}");
    }
}
