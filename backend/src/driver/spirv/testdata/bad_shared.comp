#version 450
layout(local_size_x = 64) in;
shared float big[16384];
layout(std430, binding = 0) buffer B { float v[]; };
void main() {
    big[gl_LocalInvocationIndex] = 1.0;
    barrier();
    v[0] = big[gl_LocalInvocationIndex + 1u];
}
