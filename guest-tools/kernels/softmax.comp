#version 450
// softmax: each row of a rows x cols matrix becomes exp(x - max) / sum(exp(x - max)).
//   binding 0: float x[rows][cols] (read)   binding 1: float y[rows][cols] (written)
//   push constants: uint cols
// Grid: rows x 1 x 1 workgroups of 256: one row per workgroup. The invocations stride over the
// row (cols / 256 elements each) and combine their maxima and sums in shared memory.
layout(local_size_x = 256) in;

layout(std430, set = 0, binding = 0) readonly buffer Input { float x[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Output { float y[]; };
layout(push_constant) uniform Params { uint cols; } pc;

shared float scratch[256];

// Combines scratch[] across the workgroup: maximum when take_max, else sum. Result in scratch[0].
void combine(uint lid, bool take_max) {
    barrier();
    for (uint stride = gl_WorkGroupSize.x / 2; stride > 0; stride /= 2) {
        if (lid < stride) {
            float other = scratch[lid + stride];
            scratch[lid] = take_max ? max(scratch[lid], other) : scratch[lid] + other;
        }
        barrier();
    }
}

void main() {
    uint lid = gl_LocalInvocationID.x;
    uint row = gl_WorkGroupID.x * pc.cols;
    float m = -3.402823466e38;
    for (uint c = lid; c < pc.cols; c += gl_WorkGroupSize.x) {
        m = max(m, x[row + c]);
    }
    scratch[lid] = m;
    combine(lid, true);
    float row_max = scratch[0];
    barrier();
    float s = 0.0;
    for (uint c = lid; c < pc.cols; c += gl_WorkGroupSize.x) {
        s += exp(x[row + c] - row_max);
    }
    scratch[lid] = s;
    combine(lid, false);
    float inv = 1.0 / scratch[0];
    for (uint c = lid; c < pc.cols; c += gl_WorkGroupSize.x) {
        y[row + c] = exp(x[row + c] - row_max) * inv;
    }
}
