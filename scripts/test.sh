#!/usr/bin/env bash
# The project's test command: installs what the tests need (QEMU 10, the guest kernel — needs root or
# sudo; cached after the first run), builds the daemon and the static guest tool, and runs every test,
# the real-guest tests included.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

step() { printf '\n=== %s\n' "$*"; }

step "dependencies"
.ci/install-deps.sh

step "build vgpud and the tools"
# Build in the profile the tests run in (`scripts/test.sh --release` tests release binaries; the
# tests also build `vgpud` themselves from the current source, see tests/src/backend.rs).
profile_args=()
prev=""
for a in "$@"; do
    case "$a" in
        --release | --profile=*) profile_args+=("$a") ;;
    esac
    [ "$prev" = "--profile" ] && profile_args+=(--profile "$a")
    prev="$a"
done
# --lib too: the guest library's cdylib (libvgpu.so) is what the Python wrapper test loads.
cargo build --workspace --lib --bins "${profile_args[@]}"
if [ -x guest-tools/build-static.sh ]; then
    guest-tools/build-static.sh
fi

# ---- Vulkan engine (issue 7): the committed SPIR-V must match the GLSL and pass spirv-val, and
# every engine test runs on lavapipe too (installed above), under the validation layer: a missing
# Vulkan device or layer fails the tests instead of skipping them.
step "shaders: regenerate SPIR-V, diff against the committed files, spirv-val"
backend/shaders/build.sh
git diff --exit-code -- backend/shaders/
export VGPU_REQUIRE_VULKAN=1 VGPU_VULKAN_VALIDATION=required

# ---- Guest kernels (issue 10 §5): the committed example and test modules must match their GLSL /
# SPIR-V assembly (and pass spirv-val); the C example must build against the static library.
step "guest kernels: regenerate the example and test modules, diff, build the C example"
guest-tools/kernels/build.sh --check
tests/guest/kernels/build.sh --check
guest-tools/examples/c/build.sh

step "cargo test"
unset VGPU_SKIP_GUEST VGPU_TEST_BACKEND VGPUD
# The one "required" switch: every test dependency (vgpud, QEMU's vhost-user-gpu, QEMU and the
# guest kernel) must be there; a missing one fails its test instead of skipping it.
export VGPU_REQUIRE_VGPUD=1
cargo test --workspace "$@"
