#!/bin/sh
# Builds the guest-kernel test modules (tests/tests/guest_kernels.rs): the hostile hand-written or
# disassembled modules (*.spvasm, assembled with spirv-as) and the GLSL kernels that must load but
# misbehave at run time (*.comp, glslangValidator --target-env vulkan1.1, checked with spirv-val).
#   tests/guest/kernels/build.sh          # rebuild the .spv files in place
#   tests/guest/kernels/build.sh --check  # rebuild into a temp dir; fail if a committed .spv differs
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
out="$here"
if [ "${1:-}" = "--check" ]; then
    out="$(mktemp -d)"
    trap 'rm -rf "$out"' EXIT
fi
status=0
check() {
    if [ "$out" != "$here" ] && ! cmp -s "$out/$1.spv" "$here/$1.spv"; then
        echo "tests/guest/kernels/build.sh: $1.spv is stale; run tests/guest/kernels/build.sh" >&2
        status=1
    fi
}
for src in "$here"/*.spvasm; do
    name="$(basename "$src" .spvasm)"
    spirv-as --target-env spv1.3 -o "$out/$name.spv" "$src"
    check "$name"
done
for src in "$here"/*.comp; do
    name="$(basename "$src" .comp)"
    glslangValidator --quiet --target-env vulkan1.1 -o "$out/$name.spv" "$src"
    spirv-val --target-env vulkan1.1 "$out/$name.spv"
    check "$name"
done
exit $status
