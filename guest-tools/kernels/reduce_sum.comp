#version 450
// reduce_sum: partial sums of n floats, one per workgroup.
//   binding 0: float x[n] (read)    binding 1: float partial[ceil(n / 2048)] (written)
//   push constants: uint n
// Each invocation adds 8 elements (strided by the workgroup size, so neighbours read neighbours),
// then the workgroup adds its 256 values in shared memory, halving the active invocations each
// step. Run it again on the partial sums until one value is left (2048^k elements in k passes).
layout(local_size_x = 256) in;

layout(std430, set = 0, binding = 0) readonly buffer Input { float x[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Output { float partial[]; };
layout(push_constant) uniform Params { uint n; } pc;

const uint ITEMS = 8;
shared float sums[256];

void main() {
    uint lid = gl_LocalInvocationID.x;
    uint base = gl_WorkGroupID.x * gl_WorkGroupSize.x * ITEMS + lid;
    float acc = 0.0;
    for (uint i = 0; i < ITEMS; i++) {
        uint idx = base + i * gl_WorkGroupSize.x;
        if (idx < pc.n) {
            acc += x[idx];
        }
    }
    sums[lid] = acc;
    barrier();
    for (uint stride = gl_WorkGroupSize.x / 2; stride > 0; stride /= 2) {
        if (lid < stride) {
            sums[lid] += sums[lid + stride];
        }
        barrier();
    }
    if (lid == 0) {
        partial[gl_WorkGroupID.x] = sums[0];
    }
}
