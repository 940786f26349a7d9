#version 450
layout(local_size_x = 1) in;
layout(binding = 0) uniform sampler2D tex;
layout(std430, binding = 1) buffer B { vec4 v[]; };
void main() { v[0] = textureLod(tex, vec2(0.5), 0.0); }
