#version 450
// Never ends on its own: every invocation counts forever, storing the counter so the loop cannot
// be optimised away. vgpud's loop budget cuts it after `loop_budget` back edges per invocation and
// the launch fails with JobFailure::LoopBudget.
//   binding 0: uint counters[] (one per invocation)
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) buffer Counters { uint counters[]; };

void main() {
    uint i = gl_GlobalInvocationID.x;
    uint n = 0;
    while (true) {
        n += 1;
        counters[i] = n;
    }
}
