#!/bin/sh
# Builds the C example as a static x86_64 binary against libvgpu.a and prints its path:
#   guest-tools/examples/c/build.sh [OUT]      (default: target/vgpu-c-example/reduce)
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
"$root/guest-tools/build-static.sh" >/dev/null
lib="$root/target/x86_64-unknown-linux-gnu/release/libvgpu.a"
out="${1:-$root/target/vgpu-c-example/reduce}"
mkdir -p "$(dirname "$out")"
${CC:-cc} -std=c11 -O2 -Wall -Wextra -Werror -static -s -I "$root/guest-tools/include" \
    -o "$out" "$here/reduce.c" "$lib" -lpthread -ldl -lm
echo "$out"
