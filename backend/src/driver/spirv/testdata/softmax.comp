#version 450
// Row-wise softmax, one invocation per row: loops with break, continue and do-while, and a
// loop in a called function.
layout(local_size_x = 4) in;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) buffer Y { float y[]; };
layout(push_constant) uniform P { uint cols; uint rows; } p;
float row_max(uint base) {
    float m = x[base];
    uint j = 1u;
    do {
        if (j >= p.cols) {
            break;
        }
        m = max(m, x[base + j]);
        j++;
    } while (true);
    return m;
}
void main() {
    uint row = gl_GlobalInvocationID.x;
    if (row >= p.rows) {
        return;
    }
    uint base = row * p.cols;
    float m = row_max(base);
    float sum = 0.0;
    for (uint j = 0u; j < p.cols; ++j) {
        float e = exp(x[base + j] - m);
        y[base + j] = e;
        if (isnan(e)) {
            continue;
        }
        sum += e;
    }
    uint j = 0u;
    do {
        y[base + j] /= sum;
        j++;
    } while (j < p.cols);
}
