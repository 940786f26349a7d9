#version 450
#extension GL_GOOGLE_include_directive : require
// y = alpha·x + y over `count` f32s. `precise` forbids fusing into an FMA, so every element is
// rounded exactly as the CPU reference rounds it (bit-identical results).
layout(local_size_x = 256, local_size_y = 1, local_size_z = 1) in;
#include "common.glsl"
layout(set = 0, binding = 0) readonly buffer BufX { float x[]; };
layout(set = 0, binding = 1) buffer BufY { float y[]; };

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < p.count) {
        precise float prod = p.alpha * x[p.off0 + i];
        precise float sum = prod + y[p.off1 + i];
        y[p.off1 + i] = sum;
    }
}
