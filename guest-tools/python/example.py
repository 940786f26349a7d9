#!/usr/bin/env python3
"""Softmax of a few rows on the host GPU with the example kernel (guest-tools/kernels/softmax.comp).

    python3 example.py [softmax.spv]    (needs libvgpu.so: $VGPU_LIB or next to vgpu.py)
"""
import array
import math
import os
import random
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vgpu  # noqa: E402

spv = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "kernels", "softmax.spv")
rows, cols = 8, 1000
rng = random.Random(1)
x = array.array("f", (rng.uniform(-4, 4) for _ in range(rows * cols)))

with vgpu.Device() as dev:
    caps = dev.caps()
    print(f"{caps.device_name.decode()}: loop budget {caps.loop_budget}")
    xin, yout = dev.buffer(4 * len(x)), dev.buffer(4 * len(x))
    xin.write(x)
    mod = dev.load_module(open(spv, "rb").read(), "main")
    secs = mod.launch((rows, 1, 1), {0: xin, 1: yout}, push=struct.pack("<I", cols)).wait()
    y = array.array("f", yout.read())

worst = 0.0
for r in range(rows):
    row = x[r * cols:(r + 1) * cols]
    m = max(row)
    s = sum(math.exp(v - m) for v in row)
    for c in range(cols):
        ref = math.exp(row[c] - m) / s
        worst = max(worst, abs(y[r * cols + c] - ref) / ref)
ok = worst < 1e-5
print(f"softmax {rows}x{cols}: max relative error {worst:.2e} {'ok' if ok else 'WRONG'} "
      f"(launch {secs * 1e3:.2f} ms)")
sys.exit(0 if ok else 1)
