#version 450
// Each workgroup writes the grid it sees (gl_NumWorkGroups) and its linear index.
layout(local_size_x = 1) in;
layout(std430, binding = 0) writeonly buffer O { uvec4 o[]; };
layout(push_constant) uniform P { uint tag; } p;
void main() {
    uvec3 g = gl_WorkGroupID;
    uvec3 n = gl_NumWorkGroups;
    uint idx = g.x + gl_NumWorkGroups.x * (g.y + gl_NumWorkGroups.y * g.z);
    o[idx] = uvec4(n.x, n.y, n.z + p.tag, idx);
}
