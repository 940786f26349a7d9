#!/bin/sh
# Guest script for guest kernels (tests/guest/mkinitramfs.sh -s guest-tools/guest/kernels.sh with
# /bin/vgpu-smi, /bin/vgpu-reduce (guest-tools/examples/c/build.sh) and the modules in /share/vgpu/):
# prints vgpu-smi's status, kbench, a few `vgpu-smi run`s, two refusals and the C example, each with
# its exit code checked. Needs a vgpud with --engine vulkan.
. /lib/vgpu-test.sh
K=/share/vgpu
check() {
    name=$1 expect=$2; shift 2
    echo "\$ $*" | sed "s/^/[$name] /"
    out=$("$@" 2>&1); rc=$?
    echo "$out" | sed "s/^/[$name] /"
    if [ "$rc" = "$expect" ]; then pass "$name" "rc=$rc"; else fail "$name" "rc=$rc expected $expect"; fi
}
wait_until 20 test -c /dev/dri/renderD128
check smi 0 vgpu-smi
check kbench 0 vgpu-smi kbench --launches 3
check run-reduce 0 vgpu-smi run $K/reduce_sum.spv --grid 2 --buf 0:16K:f32=0.5 --buf 1:8 --push-u32 4096 \
    --dump 1:f32
check run-softmax 0 vgpu-smi run $K/softmax.spv --grid 2 --buf 0:32:random=1 --buf 1:32 --push-u32 4 \
    --dump 0:f32 --dump 1:f32 --repeat 5
check run-oob 0 vgpu-smi run $K/oob_write.spv --grid 4 --buf 0:1M:pattern=0xcafef00d:bind=0+1024 \
    --buf 1:64K:pattern=0x5eed5eed --push-u32 16384,15 --expect 0:0+1024=0x600df00d \
    --expect 0:1024+1047552=0xcafef00d --expect 1:0+64K=0x5eed5eed
check refuse-kernel 8 vgpu-smi run $K/kernel_capability.spv --grid 1 --buf 0:4K
check refuse-pointer 8 vgpu-smi run $K/physical_pointer.spv --grid 1 --buf 0:4K
check loop 9 vgpu-smi run $K/infinite_loop.spv --grid 16 --buf 0:64K
check smi-after 0 vgpu-smi
check c-example 0 vgpu-reduce $K/reduce_sum.spv
exit $FAILED
