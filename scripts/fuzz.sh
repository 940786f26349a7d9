#!/usr/bin/env bash
# Coverage-guided fuzzing of vgpud with AFL++ through afl.rs (stable toolchain).
#
#   scripts/fuzz.sh smoke [SECONDS]       every target for SECONDS (default 10) from its corpus
#   scripts/fuzz.sh long [EXECS [TARGET...]]
#                                         every target (or the ones named) until EXECS executions
#                                         (default 10000000), in parallel at nice 19
#   scripts/fuzz.sh TARGET [AFL ARGS...]  one target (decoder, channel, device, control, spirv) by hand
#
# Installs cargo-afl (and with it AFL++) when missing. Targets are built with instrumentation into
# target/afl. Output goes to target/afl/out/<mode>-<target>; the script prints executions, crashes,
# hangs and the peak RSS per target and fails if any target saved a crash or a hang. Replay a crash
# with `cargo run -p vgpu-fuzz --bin vgpu-fuzz-replay -- TARGET FILE`, fix it, and copy the file to
# fuzz/regressions/TARGET/ (the crate's tests replay every file there).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

TARGETS=(decoder channel control device spirv)
AFL_VERSION=0.18.2
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1

if ! cargo afl --version >/dev/null 2>&1; then
    echo "=== installing cargo-afl $AFL_VERSION (builds AFL++ once, a few minutes)"
    cargo install cargo-afl --locked --version "$AFL_VERSION"
fi
if ! ls "$HOME"/.local/share/afl.rs/rustc-*/afl.rs-*/afl/bin/afl-fuzz >/dev/null 2>&1; then
    cargo afl config --build
fi

echo "=== building the fuzz targets (instrumented, target/afl)"
cargo afl build --release -p vgpu-fuzz --features afl --bins --target-dir target/afl
BIN=target/afl/release
OUT=target/afl/out

stat() { grep -E "^$2 " "$1/default/fuzzer_stats" | awk -F': ' '{print $2}'; }

# Runs one target; waits; samples the peak RSS of its processes every second.
run_one() {
    local mode=$1 t=$2; shift 2
    local dir=$OUT/$mode-$t
    rm -rf "$dir"
    mkdir -p "$OUT"
    cargo afl fuzz -i "fuzz/corpus/$t" -o "$dir" -t 10000 "$@" "$BIN/fuzz_$t" >"$dir.log" 2>&1 &
    local pid=$! peak=0
    while kill -0 "$pid" 2>/dev/null; do
        local rss
        rss=$(ps -C "fuzz_$t" -o rss= 2>/dev/null | sort -n | tail -1 || true)
        if [ -n "$rss" ] && [ "$rss" -gt "$peak" ]; then peak=$rss; fi
        sleep 1
    done
    wait "$pid" || { echo "afl-fuzz failed for $t:"; tail -20 "$dir.log"; return 1; }
    echo "$peak" >"$dir.peak_rss_kib"
}

report() {
    local mode=$1 bad=0
    printf '%-8s %12s %10s %8s %6s %14s\n' target execs execs/s crashes hangs peak_rss_MiB
    for t in "${TARGETS[@]}"; do
        local dir=$OUT/$mode-$t
        local crashes hangs
        crashes=$(stat "$dir" saved_crashes)
        hangs=$(stat "$dir" saved_hangs)
        printf '%-8s %12s %10s %8s %6s %14s\n' "$t" "$(stat "$dir" execs_done)" \
            "$(stat "$dir" execs_per_sec)" "$crashes" "$hangs" \
            "$(( $(cat "$dir.peak_rss_kib") / 1024 ))"
        if [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then
            bad=1
            ls "$dir"/default/crashes "$dir"/default/hangs
        fi
    done
    return $bad
}

case "${1:-smoke}" in
    smoke)
        secs=${2:-10}
        for t in "${TARGETS[@]}"; do
            echo "=== fuzz smoke: $t for ${secs} s"
            run_one smoke "$t" -V "$secs"
        done
        report smoke
        ;;
    long)
        execs=${2:-10000000}
        if [ $# -gt 2 ]; then TARGETS=("${@:3}"); fi
        pids=()
        for t in "${TARGETS[@]}"; do
            echo "=== fuzz long: $t until $execs executions (nice 19)"
            nice -n 19 bash -c "$(declare -f run_one stat); BIN=$BIN OUT=$OUT run_one long $t -E $execs" &
            pids+=($!)
        done
        for p in "${pids[@]}"; do wait "$p"; done
        report long
        ;;
    decoder | channel | control | device | spirv)
        t=$1
        shift
        mkdir -p "$OUT"
        exec cargo afl fuzz -i "fuzz/corpus/$t" -o "$OUT/manual-$t" -t 10000 "$@" "$BIN/fuzz_$t"
        ;;
    *)
        echo "usage: scripts/fuzz.sh smoke [SECONDS] | long [EXECS] | TARGET [AFL ARGS...]" >&2
        exit 2
        ;;
esac
