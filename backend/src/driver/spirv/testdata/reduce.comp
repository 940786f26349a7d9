#version 450
// Grid-stride partial sums: each workgroup reduces its share in shared memory.
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer In { float x[]; };
layout(std430, binding = 1) buffer Out { float sums[]; };
layout(push_constant) uniform P { uint n; } p;
shared float part[64];
void main() {
    uint lid = gl_LocalInvocationID.x;
    float acc = 0.0;
    for (uint j = gl_GlobalInvocationID.x; j < p.n; j += gl_NumWorkGroups.x * 64u) {
        acc += x[j];
    }
    part[lid] = acc;
    barrier();
    for (uint s = 32u; s > 0u; s >>= 1) {
        if (lid < s) {
            part[lid] += part[lid + s];
        }
        barrier();
    }
    if (lid == 0u) {
        sums[gl_WorkGroupID.x] = part[0];
    }
}
