#version 450
layout(local_size_x = 1) in;
layout(push_constant) uniform P { uint n; float table[64]; } p;
layout(std430, binding = 0) buffer B { float v[]; };
void main() { v[0] = p.table[p.n]; }
