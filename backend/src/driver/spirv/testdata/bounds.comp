#version 450
// Guest-controlled indices into function, shared and push-constant arrays: out-of-range ones
// must read element 0, not memory beyond the arrays.
layout(local_size_x = 4) in;
layout(std430, binding = 0) buffer B { int idx[4]; uint outv[]; };
layout(push_constant) uniform P { uint table[4]; } p;
shared uint sh[4];
void main() {
    uint i = gl_LocalInvocationID.x;
    uint local[4] = uint[4](10u, 11u, 12u, 13u);
    sh[i] = 20u + i;
    barrier();
    int k = idx[i];
    local[k] += 100u;
    outv[i * 3u + 0u] = local[k];
    outv[i * 3u + 1u] = sh[k];
    outv[i * 3u + 2u] = p.table[k];
}
