#version 450
#extension GL_GOOGLE_include_directive : require
// Partial sums of `count` f32s: workgroup g sums elements [g·4096, (g+1)·4096) (each invocation 16
// of them, strided, then a tree in shared memory) and writes one f32 to partials[off1 + g]. The
// engine adds the partials in order in f64.
layout(local_size_x = 256, local_size_y = 1, local_size_z = 1) in;
#include "common.glsl"
layout(set = 0, binding = 0) readonly buffer BufX { float x[]; };
layout(set = 0, binding = 1) buffer BufPartials { float partials[]; };

const uint PER_INVOCATION = 16u;
shared float sums[256];

void main() {
    uint lid = gl_LocalInvocationID.x;
    uint base = gl_WorkGroupID.x * 256u * PER_INVOCATION;
    float acc = 0.0;
    for (uint j = 0u; j < PER_INVOCATION; j++) {
        uint i = base + j * 256u + lid;
        if (i < p.count) {
            acc += x[p.off0 + i];
        }
    }
    sums[lid] = acc;
    barrier();
    for (uint s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            sums[lid] += sums[lid + s];
        }
        barrier();
    }
    if (lid == 0u) {
        partials[p.off1 + gl_WorkGroupID.x] = sums[0];
    }
}
