#!/bin/sh
# Compiles the example kernels (*.comp) to SPIR-V (*.spv, committed: vgpu-smi embeds them) with
# glslangValidator for Vulkan 1.1, and checks each with spirv-val (scripts/spirv-modules.sh).
#   guest-tools/kernels/build.sh          # rebuild the .spv files in place
#   guest-tools/kernels/build.sh --check  # rebuild into a temp dir; fail if a committed .spv differs
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/../../scripts/spirv-modules.sh" "$here" "$@"
