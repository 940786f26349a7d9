#version 450
// 2D convolution with clamp-to-edge, k x k kernel (k odd).
layout(local_size_x = 8, local_size_y = 8) in;
layout(std430, binding = 0) readonly buffer Img { float img[]; };
layout(std430, binding = 1) readonly buffer Ker { float ker[]; };
layout(std430, binding = 2) writeonly buffer Out { float outp[]; };
layout(push_constant) uniform P { uint w; uint h; uint k; } p;
void main() {
    uint x = gl_GlobalInvocationID.x;
    uint y = gl_GlobalInvocationID.y;
    if (x >= p.w || y >= p.h) {
        return;
    }
    int r = int(p.k) / 2;
    float acc = 0.0;
    for (int dy = -r; dy <= r; ++dy) {
        for (int dx = -r; dx <= r; ++dx) {
            int sx = clamp(int(x) + dx, 0, int(p.w) - 1);
            int sy = clamp(int(y) + dy, 0, int(p.h) - 1);
            acc += img[sy * int(p.w) + sx] * ker[(dy + r) * int(p.k) + (dx + r)];
        }
    }
    outp[y * p.w + x] = acc;
}
