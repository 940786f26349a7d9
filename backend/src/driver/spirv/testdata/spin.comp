#version 450
// Waits for a flag nobody sets: the loop's exit depends on a buffer value that never changes.
layout(local_size_x = 4) in;
layout(std430, binding = 0) buffer B { uint flag; uint seen[]; };
void main() {
    uint spins = 0u;
    while (flag == 0u) {
        spins++;
    }
    seen[gl_GlobalInvocationID.x] = spins + 1u;
}
