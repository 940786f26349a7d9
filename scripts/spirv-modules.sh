#!/bin/sh
# Builds the committed SPIR-V modules of one folder: every *.spvasm with spirv-as (SPIR-V 1.3;
# hand-written or hostile modules, not validated) and every *.comp with glslangValidator for
# Vulkan 1.1, each checked with spirv-val.
#   scripts/spirv-modules.sh DIR          # rebuild DIR's .spv files in place
#   scripts/spirv-modules.sh DIR --check  # rebuild into a temp dir; fail if a committed .spv differs
# Needs glslang-tools and spirv-tools (Debian). Each folder's build.sh calls this.
set -eu
dir="$(cd "$1" && pwd)"
out="$dir"
if [ "${2:-}" = "--check" ]; then
    out="$(mktemp -d)"
    trap 'rm -rf "$out"' EXIT
fi
status=0
check() {
    if [ "$out" != "$dir" ] && ! cmp -s "$out/$1.spv" "$dir/$1.spv"; then
        echo "$dir/$1.spv differs from what its source builds to; run $dir/build.sh" >&2
        status=1
    fi
}
for src in "$dir"/*.spvasm; do
    [ -e "$src" ] || continue
    name="$(basename "$src" .spvasm)"
    spirv-as --target-env spv1.3 -o "$out/$name.spv" "$src"
    check "$name"
done
for src in "$dir"/*.comp; do
    [ -e "$src" ] || continue
    name="$(basename "$src" .comp)"
    glslangValidator --quiet --target-env vulkan1.1 -o "$out/$name.spv" "$src"
    spirv-val --target-env vulkan1.1 "$out/$name.spv"
    check "$name"
done
exit $status
