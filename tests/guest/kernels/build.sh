#!/bin/sh
# Builds the guest-kernel test modules (tests/tests/guest_kernels.rs): the hostile hand-written or
# disassembled modules (*.spvasm, assembled with spirv-as) and the GLSL kernels that must load but
# misbehave at run time (*.comp, glslangValidator --target-env vulkan1.1, checked with spirv-val);
# see scripts/spirv-modules.sh.
#   tests/guest/kernels/build.sh          # rebuild the .spv files in place
#   tests/guest/kernels/build.sh --check  # rebuild into a temp dir; fail if a committed .spv differs
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/../../../scripts/spirv-modules.sh" "$here" "$@"
