#!/usr/bin/env bash
# Rebuilds the committed SPIR-V test modules (the tests read the .spv files; no compiler needed).
#   build.sh [OUTDIR]   (default: this folder; a test builds into a temporary folder and diffs)
#   *.comp / *.vert  -> glslangValidator -V --target-env vulkan1.1 (SPIR-V 1.3)
#   *_v10 variants   -> --target-env vulkan1.0 (SPIR-V 1.0: Uniform + BufferBlock storage buffers)
#   *_v16 variants   -> --target-env vulkan1.3 (SPIR-V 1.6: interface lists every global)
#   *.spvasm         -> spirv-as (hand-written modules; spirv-as does not validate)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
out=${1:-.}
mkdir -p "$out"
for f in *.comp *.vert; do
    glslangValidator -V --target-env vulkan1.1 -o "$out/${f%.*}.spv" "$f" >/dev/null
done
glslangValidator -V --target-env vulkan1.0 -o "$out/reduce_v10.spv" reduce.comp >/dev/null
glslangValidator -V --target-env vulkan1.3 -o "$out/conv2d_v16.spv" conv2d.comp >/dev/null
glslangValidator -V --target-env vulkan1.3 -o "$out/grid_v16.spv" grid.comp >/dev/null
for f in *.spvasm; do
    spirv-as --target-env spv1.3 -o "$out/${f%.spvasm}.spv" "$f"
done
echo "built $(ls "$out"/*.spv | wc -l) modules in $out"
