#version 450
#extension GL_GOOGLE_include_directive : require
// CRC-32C of blocks: invocation i computes the CRC-32C (Castagnoli, reflected, init and final
// xor 0xFFFFFFFF) of bytes [i·16384, min((i+1)·16384, count)) of the window starting at byte off0
// and writes it to partials[off1 + i]. The engine joins the block CRCs in order with
// crc32c_combine, so the result is exact.
layout(local_size_x = 64, local_size_y = 1, local_size_z = 1) in;
#include "common.glsl"
layout(set = 0, binding = 0) readonly buffer BufData { uint data[]; };
layout(set = 0, binding = 1) buffer BufPartials { uint partials[]; };

const uint BLOCK = 16384u;
shared uint table[256];

void main() {
    uint lid = gl_LocalInvocationID.x;
    for (uint e = lid; e < 256u; e += 64u) {
        uint c = e;
        for (uint b = 0u; b < 8u; b++) {
            c = ((c & 1u) != 0u) ? (0x82F63B78u ^ (c >> 1u)) : (c >> 1u);
        }
        table[e] = c;
    }
    barrier();
    uint i = gl_GlobalInvocationID.x;
    uint start = i * BLOCK;
    if (start >= p.count) {
        return;
    }
    uint end = min(start + BLOCK, p.count);
    uint crc = 0xFFFFFFFFu;
    for (uint j = start; j < end; j++) {
        uint at = p.off0 + j;
        uint byte_value = (data[at >> 2u] >> ((at & 3u) << 3u)) & 0xFFu;
        crc = table[(crc ^ byte_value) & 0xFFu] ^ (crc >> 8u);
    }
    partials[p.off1 + i] = crc ^ 0xFFFFFFFFu;
}
