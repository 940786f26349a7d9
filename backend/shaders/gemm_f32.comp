#version 450
#extension GL_GOOGLE_include_directive : require
// C[m×n] = alpha·A[m×k]·B[k×n] + beta·C, row-major f32. One workgroup computes a 16×16 tile
// of C, each invocation one element, summing its k products in index order. No shared memory
// and no barriers: on a CPU device (lavapipe) neighbouring invocations run as SIMD lanes that
// load B's row contiguously and A's element once, from the caches; barriers there cost far more
// than the loads they would save. The engine runs bands of tile rows with
// vkCmdDispatchBase (gl_WorkGroupID.y is the global tile row); A and C are bound as windows
// starting at row `row_base`.
layout(local_size_x = 16, local_size_y = 16, local_size_z = 1) in;
#include "common.glsl"
layout(set = 0, binding = 0) readonly buffer BufA { float a[]; };
layout(set = 0, binding = 1) readonly buffer BufB { float b[]; };
layout(set = 0, binding = 2) buffer BufC { float c[]; };

void main() {
    uint row = gl_WorkGroupID.y * 16u + gl_LocalInvocationID.y;
    uint col = gl_WorkGroupID.x * 16u + gl_LocalInvocationID.x;
    if (row >= p.m || col >= p.n) {
        return;
    }
    uint local_row = row - p.row_base;
    uint ai = p.off0 + local_row * p.k;
    uint bi = p.off1 + col;
    float acc = 0.0;
    for (uint i = 0u; i < p.k; i++) {
        acc += a[ai + i] * b[bi];
        bi += p.n;
    }
    uint ci = p.off2 + local_row * p.n + col;
    c[ci] = (p.beta == 0.0) ? p.alpha * acc : p.alpha * acc + p.beta * c[ci];
}
