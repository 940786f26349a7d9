#version 450
layout(local_size_x = 64, local_size_y = 32) in;
layout(std430, binding = 0) buffer B { uint v[]; };
void main() { v[gl_LocalInvocationIndex] = 1u; }
