#version 450
// Marks its slot, then loops forever.
layout(local_size_x = 4) in;
layout(std430, binding = 0) buffer B { uint v[]; };
void main() {
    v[gl_GlobalInvocationID.x] = 1u;
    while (true) {
    }
}
