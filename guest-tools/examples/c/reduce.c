/*
 * reduce.c: sums 65536 floats on the host GPU from inside a VM with the vgpu guest library.
 *
 *   reduce [KERNEL.spv]     (default /share/vgpu/reduce_sum.spv, the example kernel)
 *
 * Loads the reduce_sum example kernel (guest-tools/kernels/reduce_sum.comp), launches one pass
 * (32 workgroups, each adding 2048 floats), reads the 32 partial sums back, adds them and checks
 * the result against the CPU. The inputs are small integers, so every sum is exact in float.
 * Exit status: 0 ok, 1 wrong result, otherwise the VGPU_ERR_* code of the failing call.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vgpu.h"

#define N 65536u
#define PER_GROUP 2048u
#define GROUPS (N / PER_GROUP)

static int fail(const char *what, int rc) {
    fprintf(stderr, "reduce: %s: %s (%s)\n", what, vgpu_last_error(), vgpu_status_name(rc));
    return rc;
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *buf = NULL;
    size_t cap = 0, n = 0, got;
    do {
        if (n == cap) {
            cap = cap ? cap * 2 : 4096;
            unsigned char *grown = realloc(buf, cap);
            if (!grown) { free(buf); fclose(f); return NULL; }
            buf = grown;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
    } while (got > 0);
    fclose(f);
    *len = n;
    return buf;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "/share/vgpu/reduce_sum.spv";
    size_t spv_len = 0;
    unsigned char *spv = read_file(path, &spv_len);
    if (!spv) { perror(path); return 2; }

    vgpu_device *dev = NULL;
    int rc = vgpu_open(NULL, &dev);
    if (rc != VGPU_OK) return fail("open", rc);
    vgpu_caps caps;
    if ((rc = vgpu_get_caps(dev, &caps)) != VGPU_OK) return fail("caps", rc);
    printf("vgpu %s on %s: guest modules %s, loop budget %u\n", vgpu_version(), caps.device_name,
           caps.runs_modules ? "yes" : "no", caps.loop_budget);

    static float x[N];
    double expected = 0.0;
    for (unsigned i = 0; i < N; i++) {
        x[i] = (float)(i % 7);
        expected += x[i];
    }
    vgpu_buffer *in = NULL, *out = NULL;
    if ((rc = vgpu_buffer_create(dev, sizeof x, &in)) != VGPU_OK) return fail("buffer", rc);
    if ((rc = vgpu_buffer_create(dev, GROUPS * sizeof(float), &out)) != VGPU_OK) return fail("buffer", rc);
    if ((rc = vgpu_buffer_write(in, 0, x, sizeof x)) != VGPU_OK) return fail("write", rc);

    vgpu_module *mod = NULL;
    if ((rc = vgpu_module_load(dev, spv, spv_len, "main", &mod)) != VGPU_OK) return fail("load", rc);
    free(spv);

    vgpu_binding bind[2] = {
        {.slot = 0, .buffer = in, .offset = 0, .size = 0},
        {.slot = 1, .buffer = out, .offset = 0, .size = 0},
    };
    uint32_t grid[3] = {GROUPS, 1, 1};
    uint32_t n = N;
    vgpu_launch *launch = NULL;
    uint64_t ns = 0;
    if ((rc = vgpu_module_launch(mod, grid, bind, 2, &n, sizeof n, &launch)) != VGPU_OK) return fail("launch", rc);
    if ((rc = vgpu_launch_wait(launch, &ns)) != VGPU_OK) return fail("wait", rc);

    float partial[GROUPS];
    if ((rc = vgpu_buffer_read(out, 0, partial, sizeof partial)) != VGPU_OK) return fail("read", rc);
    double sum = 0.0;
    for (unsigned g = 0; g < GROUPS; g++) sum += partial[g];
    int ok = sum == expected;
    printf("reduce_sum of %u floats: device %.1f, cpu %.1f, %s (launch %.3f ms)\n", N, sum, expected,
           ok ? "ok" : "WRONG", (double)ns / 1e6);

    vgpu_module_free(mod);
    vgpu_buffer_free(in);
    vgpu_buffer_free(out);
    vgpu_close(dev);
    return ok ? 0 : 1;
}
