#!/bin/sh
# Builds vgpu-smi as a static x86_64 binary for a guest initramfs and prints its path.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
target=x86_64-unknown-linux-gnu
cd "$root"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release -p vgpu-guest-tools --target "$target" >&2
bin="$root/target/$target/release/vgpu-smi"
if command -v file >/dev/null 2>&1; then
    case "$(file -b "$bin")" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) echo "build-static.sh: $bin is not static: $(file -b "$bin")" >&2; exit 1 ;;
    esac
fi
echo "$bin"
