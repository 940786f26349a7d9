#!/bin/bash
# Runs the shipped vgpud.service under a real systemd, without touching the host: systemd boots as
# PID 1 of its own PID and mount namespaces, chrooted into an overlay of / whose writable layer is
# a tmpfs (so every file it or the unit writes is thrown away), with fresh tmpfs on /run and /tmp.
# The unit is installed as the README says (vgpud and vgpuctl in /usr/libexec, the unit in
# /etc/systemd/system, vgpud.sysusers applied, /etc/vgpud/vgpud.toml), and a target that wants it
# is booted. Then, inside: the service is active as user vgpud; `vgpuctl create --auto` makes a
# vGPU socket; `vgpuctl sched` changes the policy; after `systemctl restart vgpud` the same
# instance is back on the same socket; every vgpud thread runs under a seccomp filter.
#
#   tests/systemd/boot-unit.sh VGPUD VGPUCTL UNIT_DIR
#
# Prints `OK <step>` lines; exits non-zero (with the journal) on the first failure. Needs root,
# unshare/nsenter (util-linux), overlayfs and systemd (PID 1 binary at /lib/systemd/systemd).
set -euo pipefail
vgpud=$1 vgpuctl=$2 unit_dir=$3
work=$(mktemp -d /tmp/vgpu-systemd-XXXXXX)
root=$work/root
boot_pid=

cleanup() {
    set +e
    # --kill-child: killing unshare kills the namespace's PID 1, and with it everything in it.
    [ -n "$boot_pid" ] && kill -9 "$boot_pid" 2>/dev/null && wait "$boot_pid" 2>/dev/null
    umount -l "$root" 2>/dev/null
    umount -l "$work" 2>/dev/null
    rmdir "$work" 2>/dev/null
}
trap cleanup EXIT

mount -t tmpfs tmpfs "$work"
mkdir -p "$work/upper" "$work/work" "$root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$root"

install -m 755 "$vgpud" "$vgpuctl" "$root/usr/libexec/"
install -m 644 "$unit_dir/vgpud.service" "$root/etc/systemd/system/"
install -D -m 644 "$unit_dir/vgpud.sysusers" "$root/usr/lib/sysusers.d/vgpud.conf"
systemd-sysusers --root="$root" >/dev/null
install -d "$root/etc/vgpud"
echo 'device_memory_mib = 512' >"$root/etc/vgpud/vgpud.toml"
printf '[Unit]\nDescription=vgpud unit test\nWants=vgpud.service\n' \
    >"$root/etc/systemd/system/vgpu-unit-test.target"
rm -rf "$root/var/lib/vgpud"

cat >"$work/boot.sh" <<EOF
#!/bin/bash
set -e
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
exec chroot "$root" /bin/bash -c 'mount -t proc proc /proc && mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /tmp && exec env container=vgpu-test /lib/systemd/systemd --system --unit=vgpu-unit-test.target --log-target=null --show-status=false'
EOF
chmod +x "$work/boot.sh"
unshare --mount --pid --fork --kill-child --propagation private "$work/boot.sh" </dev/null >/dev/null 2>&1 &
boot_pid=$!

# The namespace's PID 1 is unshare's child.
init=
for _ in $(seq 1 200); do
    init=$(cat /proc/$boot_pid/task/*/children 2>/dev/null | awk '{print $1}')
    [ -n "$init" ] && break
    sleep 0.1
done
[ -n "$init" ] || { echo "FAIL systemd did not start"; exit 1; }
inside() { nsenter -t "$init" -m -p -r -w "$@"; }
journal() { inside journalctl -u vgpud --no-pager 2>&1 | tail -30; }
fail() { echo "FAIL $*"; journal; exit 1; }

state=
for _ in $(seq 1 600); do
    state=$(inside systemctl is-active vgpud 2>/dev/null || true)
    [ "$state" = active ] && inside test -S /run/vgpud/control.sock && break
    [ "$state" = failed ] && fail "vgpud.service failed to start"
    sleep 0.1
done
[ "$state" = active ] || fail "vgpud.service is $state"
user=$(inside systemctl show vgpud -p User --value)
[ "$user" = vgpud ] || fail "runs as $user"
echo "OK vgpud.service active as user $user"

ctl() { inside /usr/libexec/vgpuctl -c /run/vgpud/control.sock "$@"; }
uuid=$(ctl create --type vgpu-64m --auto) || fail "vgpuctl create"
sock=/run/vgpud/$uuid.sock
mode=$(inside stat -c '%a %G' "$sock") || fail "no socket $sock"
[ "$mode" = "660 vgpud" ] || fail "vGPU socket is $mode"
echo "OK vgpuctl create --auto: $uuid on $sock ($mode)"
ctl sched --policy equal-share | grep -q 'best-effort -> equal-share' || fail "vgpuctl sched"
echo "OK vgpuctl sched --policy equal-share"

inside systemctl restart vgpud || fail "systemctl restart"
for _ in $(seq 1 600); do
    ctl list 2>/dev/null | grep -q "$uuid" && break
    sleep 0.1
done
ctl list | grep "$uuid" | grep -q "$sock" || fail "instance $uuid not back after a restart"
ctl list --json | grep -q '"state"' || fail "vgpuctl list --json"
echo "OK after systemctl restart: $uuid back on $sock"

pid=$(inside systemctl show vgpud -p MainPID --value)
threads=0
for t in $(inside sh -c "ls /proc/$pid/task"); do
    line=$(inside sh -c "grep Seccomp: /proc/$pid/task/$t/status; cat /proc/$pid/task/$t/comm" | tr '\n' ' ')
    case "$line" in
    *"Seccomp:"*2*) threads=$((threads + 1)) ;;
    *) fail "thread without a seccomp filter: $line" ;;
    esac
done
echo "OK all $threads vgpud threads under a seccomp filter"
