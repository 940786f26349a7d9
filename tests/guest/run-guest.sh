#!/usr/bin/env bash
# Boots the test guest under QEMU (TCG) against a vhost-user-gpu backend, for manual runs and debugging.
# (The Rust test harness, tests/src/guest.rs, does the same from tests.)
#
#   run-guest.sh [-b qemu|vgpud|none] [-k SOCKET] [-i INITRD] [-q QMP_SOCKET] [-l SERIAL_LOG] [-t SECONDS]
#                [-- EXTRA_QEMU_ARGS...]
#
#   -b  backend to start on SOCKET (default qemu: /usr/lib/qemu/vhost-user-gpu; vgpud: target/debug/vgpud;
#       none: SOCKET is already served)
#   -k  vhost-user socket (default: a temporary one)
#   -i  initramfs (default: built from scripts/display.sh with mkinitramfs.sh)
#   -q  QMP socket (default: none)     -l  serial log (default: stdout only)     -t  timeout (default 120)
# The serial console goes to stdout (and to SERIAL_LOG); QEMU and the backend are killed on every exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${VGPU_GUEST_CACHE:-$REPO/.cache/guest}
QEMU=${QEMU:-qemu-system-x86_64}

backend=qemu sock= initrd= qmp= log= secs=120
while getopts "b:k:i:q:l:t:h" opt; do
    case $opt in
        b) backend=$OPTARG ;; k) sock=$OPTARG ;; i) initrd=$OPTARG ;; q) qmp=$OPTARG ;;
        l) log=$OPTARG ;; t) secs=$OPTARG ;; *) sed -n '2,15p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -s "$CACHE/vmlinuz" ] || { echo "run-guest: no guest kernel in $CACHE (run tests/guest/install-deps.sh)" >&2; exit 1; }
if [ -z "$initrd" ]; then
    initrd=$tmp/initrd.gz
    "$HERE/mkinitramfs.sh" -o "$initrd"
fi
[ -n "$sock" ] || sock=$tmp/vgpu.sock

case $backend in
    qemu) timeout -k 5 "$((secs + 10))" /usr/lib/qemu/vhost-user-gpu --socket-path="$sock" & pids+=($!) ;;
    vgpud) timeout -k 5 "$((secs + 10))" "$REPO/target/debug/vgpud" --socket-path "$sock" & pids+=($!) ;;
    none) ;;
    *) echo "run-guest: unknown backend $backend" >&2; exit 2 ;;
esac
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { echo "run-guest: backend did not create $sock" >&2; exit 1; }

args=(-accel tcg -cpu max -m 512 -smp 1 -nodefaults -no-reboot -vga none -display none
    -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem
    -chardev socket,id=vgpu,path="$sock" -device vhost-user-gpu-pci,chardev=vgpu
    -kernel "$CACHE/vmlinuz" -initrd "$initrd" -append "console=ttyS0 quiet panic=-1"
    -chardev stdio,id=ser,signal=off -serial chardev:ser)
[ -n "$qmp" ] && args+=(-qmp "unix:$qmp,server=on,wait=off")
if [ -n "$log" ]; then
    timeout -k 5 "$secs" "$QEMU" "${args[@]}" "$@" | tee "$log"
else
    timeout -k 5 "$secs" "$QEMU" "${args[@]}" "$@"
fi
