#version 450
layout(local_size_x = 1) in;
layout(std430, binding = 9) buffer B { uint v[]; };
void main() { v[0] = 1u; }
