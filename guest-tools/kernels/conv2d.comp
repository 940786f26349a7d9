#version 450
// conv2d: 2D convolution (cross-correlation, as in neural networks) of a width x height
// single-channel image with a k x k filter, zero padding, output the size of the input.
//   binding 0: float image[height][width]   binding 1: float filter[k][k]
//   binding 2: float out[height][width]
//   push constants: uint width, height, k (odd, at most 15)
// Grid: ceil(width / 16) x ceil(height / 16) workgroups of 16 x 16; one output pixel each.
layout(local_size_x = 16, local_size_y = 16) in;

layout(std430, set = 0, binding = 0) readonly buffer Image { float image[]; };
layout(std430, set = 0, binding = 1) readonly buffer Filter { float weights[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Out { float result[]; };
layout(push_constant) uniform Params { uint width; uint height; uint k; } pc;

void main() {
    uint x = gl_GlobalInvocationID.x;
    uint y = gl_GlobalInvocationID.y;
    if (x >= pc.width || y >= pc.height) {
        return;
    }
    int r = int(pc.k / 2);
    float acc = 0.0;
    for (int dy = -r; dy <= r; dy++) {
        int sy = int(y) + dy;
        if (sy < 0 || sy >= int(pc.height)) {
            continue;
        }
        for (int dx = -r; dx <= r; dx++) {
            int sx = int(x) + dx;
            if (sx >= 0 && sx < int(pc.width)) {
                acc += image[sy * int(pc.width) + sx] * weights[(dy + r) * int(pc.k) + (dx + r)];
            }
        }
    }
    result[y * pc.width + x] = acc;
}
