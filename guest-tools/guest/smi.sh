#!/bin/sh
# Guest script (tests/guest/mkinitramfs.sh -s guest-tools/guest/smi.sh -f PATH/TO/vgpu-smi):
# runs vgpu-smi, bench and memtest and reports their exit codes as VGPU-TEST markers.
# Expected exit codes: 0 against vgpud with the 3D path; 4 (no VIRGL) against QEMU's
# vhost-user-gpu without --virgl; 5 (protocol mismatch) against a VIRGL backend without capset 42.
. /lib/vgpu-test.sh
# The expected exit code comes from the kernel command line (vgpu_smi_expect=N), default 0:
#   run-guest.sh -i INITRD -- -append "console=ttyS0 quiet panic=-1 vgpu_smi_expect=4"
expect=0
for w in $(cat /proc/cmdline); do
    case $w in vgpu_smi_expect=*) expect=${w#vgpu_smi_expect=} ;; esac
done
check() {
    name=$1; shift
    out=$("$@" 2>&1); rc=$?
    echo "$out" | sed "s/^/[$name] /"
    if [ "$rc" = "$expect" ]; then pass "$name" "rc=$rc"; else fail "$name" "rc=$rc expected $expect"; fi
}
check smi vgpu-smi
check smi-json vgpu-smi --json
check bench-gemm vgpu-smi bench --kernel gemm --size 64 --seconds 2
check bench-gemm-json vgpu-smi bench --kernel gemm --size 64 --seconds 2 --json
check bench-axpy vgpu-smi bench --kernel axpy --size 4096 --seconds 2 --json
check bench-reduce vgpu-smi bench --kernel reduce --size 65536 --seconds 2 --json
check bench-hash vgpu-smi bench --kernel hash --size 65536 --seconds 2 --json
check memtest vgpu-smi memtest
check memtest-json vgpu-smi memtest --json
dmesg | grep -i -E "virtio_gpu|\[drm\]" | tail -20 | sed 's/^/[dmesg] /'
exit $FAILED
