#version 450
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
layout(local_size_x = 1) in;
layout(std430, binding = 0) buffer B { uint64_t v[]; };
void main() { v[0] = v[1] * 3ul; }
