#!/bin/sh
# Regenerates the committed SPIR-V from the GLSL kernels and validates it (scripts/spirv-modules.sh).
# CI runs this and fails when `git diff` shows a change (the committed .spv must match the sources);
# `--check` rebuilds into a temporary folder instead and fails on a difference.
# Needs glslangValidator (Debian glslang-tools) and spirv-val (Debian spirv-tools).
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/../../scripts/spirv-modules.sh" "$here" "$@"
