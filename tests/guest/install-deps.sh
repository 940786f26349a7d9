#!/usr/bin/env bash
# Installs what the real-guest tests need (idempotent; runs as root, used by CI):
#   - QEMU 10 with QEMU's own vhost-user-gpu backend, busybox-static, kmod, cpio, xz from bookworm-backports;
#   - the stock Debian 6.12 kernel (vmlinuz + the virtio-gpu modules and their dependencies, decompressed)
#     unpacked into the guest cache ($VGPU_GUEST_CACHE, default $REPO/.cache/guest).
# Re-running is cheap: every step is skipped when its result is already there.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${VGPU_GUEST_CACHE:-$REPO/.cache/guest}
MODULES=(virtio_dma_buf drm drm_kms_helper drm_shmem_helper virtio-gpu)
PKGS=(qemu-system-x86 qemu-system-gui busybox-static kmod cpio xz-utils)
BACKPORTS_LIST=/etc/apt/sources.list.d/bookworm-backports.list

log() { echo "install-deps: $*" >&2; }

SUDO=()
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { log "must run as root (or have sudo)"; exit 1; }
    SUDO=(sudo)
fi

# --- 1. apt sources and packages -------------------------------------------------------------------
apt_updated=false
apt_update_once() {
    if ! $apt_updated; then
        log "apt-get update"
        "${SUDO[@]}" timeout 600 apt-get update -qq
        apt_updated=true
    fi
}

if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding bookworm-backports to $BACKPORTS_LIST"
    echo 'deb http://deb.debian.org/debian bookworm-backports main' | "${SUDO[@]}" tee "$BACKPORTS_LIST" >/dev/null
    apt_update_once
fi

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# QEMU must be the backports one (10.x): bookworm's 7.2 lacks what the tests rely on.
if [ ${#missing[@]} = 0 ] && ! qemu-system-x86_64 --version | grep -qE 'version (9|[1-9][0-9])\.'; then
    missing+=(qemu-system-x86 qemu-system-gui)
fi
if [ ${#missing[@]} -gt 0 ]; then
    apt_update_once
    log "installing ${missing[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive timeout 900 \
        apt-get install -y -qq -t bookworm-backports --no-install-recommends "${missing[@]}"
fi

# --- 2. guest kernel ----------------------------------------------------------------------------------
if [ -s "$CACHE/vmlinuz" ] && [ -s "$CACHE/modules/order" ]; then
    log "guest kernel already in $CACHE ($(cat "$CACHE/kernel-version"))"
    exit 0
fi

kernel_package() { # the 6.12 image linux-image-amd64 from backports depends on
    apt-cache depends -t bookworm-backports linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-6\.12\.[^ ]*-amd64\)$/\1/p' | head -n1
}
kpkg=$(kernel_package)
if [ -z "$kpkg" ]; then
    apt_update_once
    kpkg=$(kernel_package)
fi
[ -n "$kpkg" ] || { log "cannot find a linux-image-6.12.*-amd64 package in bookworm-backports"; exit 1; }

mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 755 "$CACHE" && chmod 1777 "$work" # apt-get download runs as the _apt user where it can
log "downloading $kpkg"
download() { (cd "$work" && timeout 600 apt-get download -q -t bookworm-backports "$kpkg" >/dev/null); }
if ! download; then # stale package lists: the mirror has moved on to a newer kernel
    apt_update_once
    kpkg=$(kernel_package)
    log "retrying with $kpkg"
    download
fi
deb=$(ls "$work"/*.deb)
dpkg -x "$deb" "$work/root"

kver=$(ls "$work/root/lib/modules" | head -n1)
moddir="$work/root/lib/modules/$kver"
[ -f "$moddir/modules.dep" ] || depmod -b "$work/root" "$kver"

# Resolve the dependency closure of MODULES from modules.dep, in load order (dependencies first).
declare -A seen=()
order=()
relpath_of() { # module name (dashes or underscores) -> path relative to $moddir, from modules.dep
    local pat=${1//[-_]/[-_]}
    grep -E "(^|/)${pat}\.ko(\.xz|\.zst|\.gz)?:" "$moddir/modules.dep" | head -n1 | cut -d: -f1
}
visit() { # relative module path
    local rel=$1 deps d
    [ -n "${seen[$rel]:-}" ] && return 0
    seen[$rel]=1
    deps=$(grep -E "^${rel//./\\.}:" "$moddir/modules.dep" | cut -d: -f2-)
    for d in $deps; do visit "$d"; done
    order+=("$rel")
}
for m in "${MODULES[@]}"; do
    rel=$(relpath_of "$m")
    [ -n "$rel" ] || { log "module $m not found in $kpkg"; exit 1; }
    visit "$rel"
done

mkdir -p "$work/out/modules"
: >"$work/out/modules/order"
for rel in "${order[@]}"; do
    base=$(basename "$rel")
    name=${base%%.ko*}.ko
    case "$rel" in
        *.xz) xz -dc "$moddir/$rel" >"$work/out/modules/$name" ;;
        *.zst) zstd -qdc "$moddir/$rel" >"$work/out/modules/$name" ;;
        *.gz) gzip -dc "$moddir/$rel" >"$work/out/modules/$name" ;;
        *) cp "$moddir/$rel" "$work/out/modules/$name" ;;
    esac
    echo "$name" >>"$work/out/modules/order"
done
cp "$work/root/boot/vmlinuz-$kver" "$work/out/vmlinuz"
echo "$kver" >"$work/out/kernel-version"

rm -rf "$CACHE/modules" "$CACHE/vmlinuz" "$CACHE/kernel-version"
mv "$work/out/modules" "$work/out/vmlinuz" "$work/out/kernel-version" "$CACHE/"
log "guest kernel $kver in $CACHE; modules: $(tr '\n' ' ' <"$CACHE/modules/order")"
