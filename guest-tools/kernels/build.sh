#!/bin/sh
# Compiles the example kernels (*.comp) to SPIR-V (*.spv, committed: vgpu-smi embeds them) with
# glslangValidator for Vulkan 1.1, and checks each with spirv-val.
#   guest-tools/kernels/build.sh          # rebuild the .spv files in place
#   guest-tools/kernels/build.sh --check  # rebuild into a temp dir; fail if a committed .spv differs
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
out="$here"
if [ "${1:-}" = "--check" ]; then
    out="$(mktemp -d)"
    trap 'rm -rf "$out"' EXIT
fi
status=0
for src in "$here"/*.comp; do
    name="$(basename "$src" .comp)"
    glslangValidator --quiet --target-env vulkan1.1 -o "$out/$name.spv" "$src"
    spirv-val --target-env vulkan1.1 "$out/$name.spv"
    if [ "$out" != "$here" ] && ! cmp -s "$out/$name.spv" "$here/$name.spv"; then
        echo "kernels/build.sh: $name.spv differs from what $name.comp compiles to; run guest-tools/kernels/build.sh" >&2
        status=1
    fi
done
exit $status
