#version 450
layout(local_size_x = 1) in;
layout(std140, binding = 0) uniform U { uint k; } u;
layout(std430, binding = 1) buffer B { uint v[]; };
void main() { v[0] = u.k; }
