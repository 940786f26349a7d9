#!/usr/bin/env bash
# Builds a busybox initramfs (cpio newc, gzip) for the real-guest tests.
#
#   mkinitramfs.sh -o OUT.gz [-s TEST_SCRIPT] [-f SRC[:DEST]]...
#
# The initramfs holds busybox, the virtio-gpu modules from the guest cache ($VGPU_GUEST_CACHE, default
# $REPO/.cache/guest, filled by install-deps.sh), the helper library lib.sh (at /lib/vgpu-test.sh) and an
# /init that mounts proc/sys/devtmpfs, insmods the modules in dependency order, runs TEST_SCRIPT (default:
# scripts/display.sh) as /test.sh and powers off. -f copies extra files in (DEST defaults to
# /bin/<basename of SRC>), e.g. a static guest binary. Results appear on the serial console as
# `VGPU-TEST: <name> PASS|FAIL|INFO|READY <detail>`, ending with `VGPU-TEST: END`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${VGPU_GUEST_CACHE:-$REPO/.cache/guest}
BUSYBOX=${BUSYBOX:-/bin/busybox}

usage() { echo "usage: $0 -o OUT.gz [-s TEST_SCRIPT] [-f SRC[:DEST]]..." >&2; exit 2; }

out= script=$HERE/scripts/display.sh
extra=()
while getopts "o:s:f:h" opt; do
    case $opt in
        o) out=$OPTARG ;;
        s) script=$OPTARG ;;
        f) extra+=("$OPTARG") ;;
        *) usage ;;
    esac
done
[ -n "$out" ] || usage
[ -f "$script" ] || { echo "mkinitramfs: no test script $script" >&2; exit 1; }
[ -s "$CACHE/modules/order" ] || { echo "mkinitramfs: no guest modules in $CACHE (run tests/guest/install-deps.sh)" >&2; exit 1; }
{ ldd "$BUSYBOX" 2>&1 || true; } | grep -q 'not a dynamic' ||
    { echo "mkinitramfs: $BUSYBOX is not a static busybox (install busybox-static)" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,lib/modules}
cp "$BUSYBOX" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
cp "$CACHE/modules/"*.ko "$CACHE/modules/order" "$root/lib/modules/"
cp "$HERE/lib.sh" "$root/lib/vgpu-test.sh"
cp "$script" "$root/test.sh"
for spec in "${extra[@]}"; do
    src=${spec%%:*}
    dest=/bin/$(basename "$src")
    [ "$spec" != "$src" ] && dest=${spec#*:}
    mkdir -p "$root$(dirname "$dest")"
    cp "$src" "$root$dest"
done

cat >"$root/init" <<'INIT'
#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t tmpfs tmpfs /tmp
for m in $(cat /lib/modules/order); do
    insmod /lib/modules/$m || echo "VGPU-TEST: insmod FAIL $m"
done
echo "VGPU-TEST: BOOT $(uname -r) $(cut -d' ' -f1 /proc/uptime)s"
sh /test.sh
echo "VGPU-TEST: END rc=$?"
sync
poweroff -f
INIT
chmod +x "$root/init" "$root/test.sh"

mkdir -p "$(dirname "$out")"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -1) >"$out.tmp"
mv "$out.tmp" "$out"
