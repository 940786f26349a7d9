#version 450
#extension GL_GOOGLE_include_directive : require
// C[m×n] = alpha·A[m×k]·B[k×n] + beta·C, row-major f32, 16×16 tiles through shared memory.
// One workgroup computes a 16×16 tile of C. The engine runs bands of tile rows with
// vkCmdDispatchBase (gl_WorkGroupID.y is the global tile row); A and C are bound as windows
// starting at row `row_base`.
layout(local_size_x = 16, local_size_y = 16, local_size_z = 1) in;
#include "common.glsl"
layout(set = 0, binding = 0) readonly buffer BufA { float a[]; };
layout(set = 0, binding = 1) readonly buffer BufB { float b[]; };
layout(set = 0, binding = 2) buffer BufC { float c[]; };

shared float tile_a[16][16];
shared float tile_b[16][16];

void main() {
    uint lx = gl_LocalInvocationID.x;
    uint ly = gl_LocalInvocationID.y;
    uint row = gl_WorkGroupID.y * 16u + ly;
    uint col = gl_WorkGroupID.x * 16u + lx;
    bool in_c = row < p.m && col < p.n;
    uint local_row = row - p.row_base;
    float acc = 0.0;
    for (uint t = 0u; t < p.k; t += 16u) {
        uint ak = t + lx;
        tile_a[ly][lx] = (row < p.m && ak < p.k) ? a[p.off0 + local_row * p.k + ak] : 0.0;
        uint bk = t + ly;
        tile_b[ly][lx] = (bk < p.k && col < p.n) ? b[p.off1 + bk * p.n + col] : 0.0;
        barrier();
        for (uint i = 0u; i < 16u; i++) {
            acc += tile_a[ly][i] * tile_b[i][lx];
        }
        barrier();
    }
    if (in_c) {
        uint ci = p.off2 + local_row * p.n + col;
        c[ci] = (p.beta == 0.0) ? p.alpha * acc : p.alpha * acc + p.beta * c[ci];
    }
}
