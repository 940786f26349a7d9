//! Real-guest test: boots a Debian 6.12 kernel under QEMU (TCG) with `-device vhost-user-gpu-pci` against
//! a backend and checks, from inside the guest and from QEMU's `screendump`, that the display works.
//!
//! Needs `tests/guest/install-deps.sh` (QEMU 10, busybox-static, guest kernel cache). Environment:
//! `VGPU_TEST_BACKEND=vgpud|qemu` runs only that backend's test (default: both); `VGPU_SKIP_GUEST=1` skips;
//! `VGPUD=path` picks the daemon; `VGPU_KEEP_GUEST_DIR=1` keeps serial/QEMU/backend logs and the PNG.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vgpu_tests::guest::{
    skip_requested, Backend, BackendKind, Guest, GuestAssets, GuestConfig, Marker, MarkerKind,
    Screen, WorkDir,
};

/// The resolution QEMU's `vhost-user-gpu-pci` configures by default (`xres`/`yres`), first in the EDID.
const EXPECTED_MODE: &str = "1280x800";

/// Guests run one at a time: TCG on two cores gets slow and timing-sensitive when they overlap.
static SERIAL: Mutex<()> = Mutex::new(());

/// The colours `tests/guest/scripts/display.sh` writes: four bars across the top half, one below.
const BARS: [[u8; 3]; 4] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]];
const BOTTOM: [u8; 3] = [32, 192, 160];

#[test]
fn guest_display_vgpud() {
    run_display_test(BackendKind::Vgpud);
}

#[test]
fn guest_display_qemu_backend() {
    run_display_test(BackendKind::Qemu);
}

fn run_display_test(kind: BackendKind) {
    if skip_requested() {
        eprintln!("VGPU_SKIP_GUEST=1: skipping the {kind} real-guest test");
        return;
    }
    if BackendKind::from_env().is_some_and(|only| only != kind) {
        eprintln!("VGPU_TEST_BACKEND selects another backend: skipping the {kind} real-guest test");
        return;
    }
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let assets = GuestAssets::locate().unwrap_or_else(|e| panic!("{e}"));
    let work = WorkDir::new(&format!("display-{kind}")).unwrap();
    let dir = work.path();
    let initrd = dir.join("initrd.gz");
    assets
        .build_initramfs(Path::new("scripts/display.sh"), &[], &initrd)
        .unwrap();
    let socket = dir.join("vgpu.sock");
    let mut backend = Backend::spawn(
        kind,
        &socket,
        &dir.join("backend.log"),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut guest = Guest::boot(&assets, &GuestConfig::new(&initrd, &socket, dir)).unwrap();

    let ready = guest
        .wait_marker("fb-pattern", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\nbackend log:\n{}", backend.log_text()));
    let boot_s = started.elapsed().as_secs_f32();
    let pixels = if ready.kind == MarkerKind::Ready {
        // The guest waited for its damage to be flushed; a slow host gets two more looks.
        let png = dir.join("screen.png");
        let mut result = Err(String::new());
        for attempt in 1..=3 {
            result = match guest.screendump(&png) {
                Ok(screen) => check_pattern(&screen, &ready),
                Err(e) => Err(format!("screendump: {e}")),
            };
            match &result {
                Ok(_) => break,
                Err(why) => eprintln!("screendump attempt {attempt}: {why}"),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        result
    } else {
        Err(format!("guest did not get to the pattern: {ready:?}"))
    };
    // QEMU's backend exits when its VM does, so look now, while the guest still runs.
    let backend_alive = backend.is_running();
    let answer = match &pixels {
        Ok(summary) => format!("ACK pixels ok: {summary}"),
        Err(why) => format!("ACK pixels bad: {why}"),
    };
    // The guest may have given up already; its markers tell.
    let _ = guest.reply(&answer);
    let end = guest.wait_end(Duration::from_secs(30));
    let report = format!(
        "backend {kind}: ready after {boot_s:.1}s, total {:.1}s\nmarkers:\n{}\n{}\nbackend log:\n{}",
        started.elapsed().as_secs_f32(),
        guest
            .markers()
            .iter()
            .filter(|m| m.kind != MarkerKind::Info)
            .map(|m| format!("  {} {:?} {}", m.name, m.kind, m.detail))
            .collect::<Vec<_>>()
            .join("\n"),
        guest.diagnostics(),
        backend.log_text()
    );
    eprintln!("{}", report.lines().take(20).collect::<Vec<_>>().join("\n"));

    if let Err(e) = end {
        panic!("{e}\n{report}");
    }
    let vhost_errors: Vec<String> = guest
        .qemu_log_text()
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("vhost"))
        .map(str::to_string)
        .collect();
    assert!(
        vhost_errors.is_empty(),
        "QEMU reports vhost-user errors: {vhost_errors:#?}\n{report}"
    );
    if let Err(why) = pixels {
        panic!("screendump does not show the pattern: {why}\n{report}");
    }
    let failed = Marker::failed(guest.markers());
    assert!(
        failed.is_empty(),
        "guest checks failed: {failed:?}\n{report}"
    );
    for name in [
        "card0",
        "driver",
        "modes",
        "fb-write",
        "fb-pattern",
        "drm-errors",
    ] {
        assert!(
            guest.marker(name, MarkerKind::Pass).is_some(),
            "no PASS for `{name}`\n{report}"
        );
    }
    let modes = guest.marker("modes", MarkerKind::Pass).unwrap();
    assert_eq!(modes.field("status"), Some("connected"), "{report}");
    assert_eq!(modes.field("first"), Some(EXPECTED_MODE), "{report}");
    assert!(backend_alive, "the backend died during the run\n{report}");
    assert!(
        started.elapsed() < Duration::from_secs(110),
        "the real-guest test took {:?}",
        started.elapsed()
    );
}

/// Checks the screendump against the pattern the guest announced in its READY marker
/// (`w=.. h=.. stride=..`): size, then every pixel of the four bars and of the bottom half.
fn check_pattern(screen: &Screen, ready: &vgpu_tests::guest::Marker) -> Result<String, String> {
    let field = |k: &str| -> Result<u32, String> {
        ready
            .field(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("READY marker lacks {k}: {ready:?}"))
    };
    let (w, h) = (field("w")?, field("h")?);
    if format!("{w}x{h}") != EXPECTED_MODE {
        return Err(format!(
            "guest framebuffer is {w}x{h}, expected {EXPECTED_MODE}"
        ));
    }
    if (screen.width, screen.height) != (w, h) {
        return Err(format!(
            "screendump is {}x{}, the guest framebuffer {w}x{h}",
            screen.width, screen.height
        ));
    }
    let bar = w / 4;
    for (i, rgb) in BARS.iter().enumerate() {
        let x = bar * i as u32;
        let width = if i == 3 { w - x } else { bar };
        screen.expect_rect(x, 0, width, h / 2, *rgb)?;
    }
    screen.expect_rect(0, h / 2, w, h - h / 2, BOTTOM)?;
    let probe = |x, y| {
        screen
            .pixel(x, y)
            .map(|p| format!("({x},{y})={p:?}"))
            .unwrap_or_default()
    };
    Ok(format!(
        "{w}x{h} all pixels match; {} {} {} {} {}",
        probe(bar / 2, h / 4),
        probe(bar + bar / 2, h / 4),
        probe(2 * bar + bar / 2, h / 4),
        probe(3 * bar + bar / 2, h / 4),
        probe(w / 2, 3 * h / 4)
    ))
}
