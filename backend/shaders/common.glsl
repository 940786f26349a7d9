// Shared by every kernel: one descriptor set of four storage buffers and one push-constant
// block. The engine binds each operand as a window of at most maxStorageBufferRange bytes
// starting at an offset aligned to minStorageBufferOffsetAlignment; the *_off fields say where the
// operand starts inside its window (in elements of the binding's type).
layout(push_constant) uniform Params {
    uint count;    // elements (axpy, reduce), bytes (crc32c), rows of C (gemm) in this dispatch
    uint n;        // gemm: columns of B and C
    uint k;        // gemm: columns of A, rows of B
    uint off0;     // start of operand 0 in its window
    uint off1;     // start of operand 1 in its window
    uint off2;     // start of operand 2 in its window
    uint row_base; // gemm: global row of the first row of the A and C windows
    uint m;        // gemm: rows of A and C
    float alpha;
    float beta;
} p;
