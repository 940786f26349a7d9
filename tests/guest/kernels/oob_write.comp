#version 450
// Out-of-bounds writer: each invocation writes its own word inside the bound range (0x600DF00D),
// then tries words far past it: `count` strides of `stride` words, and wrapped-around negative
// indices. With robust buffer access every write outside the bound range is discarded, so a
// canary after the range (same buffer) and the other bindings' buffers keep their contents.
//   binding 0: uint data[] (bound to a small range of a bigger buffer)
//   binding 1: uint other[] (read only; its buffer is a canary too)
//   push constants: uint stride (words), uint count
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) buffer Data { uint data[]; };
layout(std430, set = 0, binding = 1) readonly buffer Other { uint other[]; };
layout(push_constant) uniform Params { uint stride; uint count; } pc;

void main() {
    uint i = gl_GlobalInvocationID.x;
    data[i] = 0x600DF00Du + (other[0] & 0u);
    for (uint k = 1; k <= pc.count; k++) {
        data[i + k * pc.stride] = 0xBAD0BAD0u;
        data[i - k * pc.stride] = 0xBAD1BAD1u;
    }
    data[0xFFFFFFF0u - i] = 0xBAD2BAD2u;
}
