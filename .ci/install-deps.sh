#!/usr/bin/env bash
# CI dependencies (idempotent; runs as root): the real-guest test stack (QEMU 10 from bookworm-backports,
# QEMU's vhost-user-gpu, busybox-static, kmod, cpio, xz and the Debian 6.12 guest kernel cache) and the
# Rust components the checks use.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

"$REPO/tests/guest/install-deps.sh"

if command -v rustup >/dev/null; then
    for c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || timeout 600 rustup component add "$c"
    done
fi

# ── libvirt 11 for tests/tests/libvirt.rs (issue 8 §4): libvirtd + virsh from bookworm-backports,
#    matching QEMU 10 from the same suite. The tests start a private session-mode libvirtd by hand
#    (no systemd needed) and drop to nobody with setpriv (util-linux).
if ! command -v libvirtd >/dev/null || ! command -v virsh >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm-backports --no-install-recommends \
        libvirt-daemon-driver-qemu libvirt-daemon libvirt-clients
fi
command -v setpriv >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q util-linux

# ---- The systemd unit (issue 8): tests/tests/systemd_unit.rs runs `systemd-analyze verify` and
# `systemd-analyze security --offline` on it (the package's tools only; nothing is started).
if ! command -v systemd-analyze >/dev/null; then
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends systemd
fi

# ---- Operators (issue 8): promtool checks the /metrics output (Debian's prometheus package) ----
if ! command -v promtool >/dev/null; then
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus
fi

# ---- Vulkan engine (issue 7): Mesa lavapipe (the bookworm-backports build, Mesa 25), the loader,
# the validation layer, and the shader tools the SPIR-V check uses. Needs root; apt-get update
# first so the backports index is current.
vulkan_pkgs="libvulkan1 glslang-tools spirv-tools vulkan-validationlayers"
if ! dpkg -s mesa-vulkan-drivers $vulkan_pkgs >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $vulkan_pkgs
fi

# ---- Guest kernels (issue 10 §5): a C compiler and glibc's static libraries for the static C
# example (guest-tools/examples/c), python3 for the ctypes wrapper's test; the shader tools above
# rebuild the example and test modules.
if ! command -v cc >/dev/null || ! command -v python3 >/dev/null || [ ! -f /usr/lib/x86_64-linux-gnu/libc.a ]; then
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev python3
fi
