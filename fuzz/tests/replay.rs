//! Replays the committed seed corpora and every crash ever found (`fuzz/regressions/<target>/`)
//! through the fuzz targets, and checks that the seeds exercise what they were made for.

use std::path::Path;

use vgpu_fuzz::TARGETS;

fn replay(dir: &Path, run: fn(&[u8])) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries {
        let path = e.expect("directory entry").path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let bytes = std::fs::read(&path).expect("readable file");
        eprintln!("replaying {}", path.display());
        run(&bytes);
        n += 1;
    }
    n
}

#[test]
fn committed_corpora_and_regressions_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, run) in TARGETS {
        let seeds = replay(&root.join("corpus").join(name), run);
        assert!(seeds > 0, "no committed seeds for {name}");
        let regressions = replay(&root.join("regressions").join(name), run);
        eprintln!("{name}: {seeds} seeds, {regressions} regressions");
    }
}

#[test]
fn generated_seeds_pass_and_match_the_committed_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (target, name, bytes) in vgpu_fuzz::seeds::all() {
        let run = TARGETS
            .iter()
            .find(|(t, _)| *t == target)
            .expect("known target")
            .1;
        run(&bytes);
        let committed = std::fs::read(root.join("corpus").join(target).join(&name))
            .unwrap_or_else(|e| panic!("corpus/{target}/{name}: {e} (run vgpu-fuzz-seeds)"));
        assert_eq!(
            committed, bytes,
            "corpus/{target}/{name} is stale (run vgpu-fuzz-seeds)"
        );
    }
}

#[test]
fn device_seeds_reach_the_device() {
    let _ = env_logger::builder().is_test(true).try_init();
    let seeds = vgpu_fuzz::seeds::all();
    let get = |name: &str| {
        let (_, _, b) = seeds
            .iter()
            .find(|(t, n, _)| *t == "device" && n == name)
            .expect("seed exists");
        vgpu_fuzz::device::run_counted(b)
    };
    let whole = get("lifecycle");
    eprintln!("lifecycle: {whole:?}");
    assert_eq!(whole.requests, 29);
    // Blob commands (CREATE_BLOB, SET_SCANOUT_BLOB, MAP_BLOB, UNMAP_BLOB) are not offered and
    // are refused; everything else succeeds.
    assert_eq!(whole.errors, 4, "only the blob commands fail: {whole:?}");
    assert_eq!(whole.submitted, 1);
    let three_d = get("3d");
    // MAP_BLOB and UNMAP_BLOB are refused, and so is the last request, CTX_CREATE with VIRGL
    // no longer negotiated.
    assert_eq!((three_d.errors, three_d.submitted), (3, 1), "{three_d:?}");
}
