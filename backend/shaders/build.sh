#!/bin/sh
# Regenerates the committed SPIR-V from the GLSL kernels and validates it. CI runs this and
# fails when `git diff` shows a change (the committed .spv must match the sources).
# Needs glslangValidator (Debian glslang-tools) and spirv-val (Debian spirv-tools).
set -eu
cd "$(dirname "$0")"
for s in gemm_f32 axpy_f32 reduce_sum_f32 crc32c; do
    glslangValidator --quiet --target-env vulkan1.1 -V "$s.comp" -o "$s.spv"
    spirv-val --target-env vulkan1.1 "$s.spv"
done
