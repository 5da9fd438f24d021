/* ggml's OUT_PROD on its CPU backend (patch 0003 gives the float32 case a tiled kernel)
 * against a double-precision sum, for tests/llama/test_out_prod.py.
 *
 *     ggml_out_prod N M P Q1 QQ R1 RR TRANSPOSED THREADS
 *
 * a is [N, M, Q1, R1], b is [P, M, QQ, RR] (with TRANSPOSED = 1, the transpose of a
 * contiguous [M, P, QQ, RR], as ggml's backward of a matrix product passes it); the
 * result is [N, P, QQ, RR], a broadcast over the outer two dimensions.  Prints the
 * largest |got - want| / max(1, |want|) and exits 0, or a message and 1.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ggml.h"
#include "ggml-cpu.h"

static float uniform(unsigned long long *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float) ((*s >> 40) / (double) (1ULL << 24)) * 2.0f - 1.0f;
}

int main(int argc, char **argv)
{
    if (argc != 10) {
        fprintf(stderr, "usage: ggml_out_prod N M P Q1 QQ R1 RR TRANSPOSED THREADS\n");
        return 1;
    }
    long v[9];
    for (int i = 0; i < 9; i++) {
        v[i] = strtol(argv[i + 1], NULL, 10);
        if (v[i] < (i == 7 ? 0 : 1) || v[i] > 4096) {
            fprintf(stderr, "ggml_out_prod: argument %d out of range\n", i + 1);
            return 1;
        }
    }
    const long n = v[0], m = v[1], p = v[2], q1 = v[3], qq = v[4], r1 = v[5], rr = v[6];
    const int transposed = (int) v[7], threads = (int) v[8];
    if (qq % q1 || rr % r1) {
        fprintf(stderr, "ggml_out_prod: QQ must be a multiple of Q1, RR of R1\n");
        return 1;
    }

    const size_t floats = (size_t) (n * m * q1 * r1 + 2 * p * m * qq * rr + n * p * qq * rr);
    struct ggml_init_params ip = { floats * sizeof(float) + 64 * ggml_tensor_overhead() +
                                   ggml_graph_overhead() + (1 << 20), NULL, false };
    struct ggml_context *ctx = ggml_init(ip);
    if (!ctx) {
        fprintf(stderr, "ggml_out_prod: ggml_init failed\n");
        return 1;
    }
    struct ggml_tensor *a = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, n, m, q1, r1);
    struct ggml_tensor *b = transposed
        ? ggml_transpose(ctx, ggml_new_tensor_4d(ctx, GGML_TYPE_F32, m, p, qq, rr))
        : ggml_new_tensor_4d(ctx, GGML_TYPE_F32, p, m, qq, rr);
    struct ggml_tensor *out = ggml_out_prod(ctx, a, b);

    unsigned long long seed = 12345;
    float *ad = (float *) a->data;
    for (long i = 0; i < n * m * q1 * r1; i++) {
        ad[i] = uniform(&seed);
    }
    /* b's logical element (i1, k, i2, i3), whatever its layout */
    float *bd = (float *) b->data;
    for (long i = 0; i < p * m * qq * rr; i++) {
        bd[i] = uniform(&seed);
    }
#define B(i1, k, i2, i3) (*(const float *) ((const char *) b->data + (i1) * b->nb[0] + \
                          (k) * b->nb[1] + (i2) * b->nb[2] + (i3) * b->nb[3]))

    struct ggml_cgraph *gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    if (ggml_graph_compute_with_ctx(ctx, gf, threads) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "ggml_out_prod: compute failed\n");
        return 1;
    }

    double worst = 0.0;
    for (long i3 = 0; i3 < rr; i3++) {
        for (long i2 = 0; i2 < qq; i2++) {
            const long a2 = i2 / (qq / q1), a3 = i3 / (rr / r1);
            for (long i1 = 0; i1 < p; i1++) {
                for (long i0 = 0; i0 < n; i0++) {
                    double want = 0.0;
                    for (long k = 0; k < m; k++) {
                        want += (double) ad[((a3 * q1 + a2) * m + k) * n + i0] *
                                (double) B(i1, k, i2, i3);
                    }
                    const float got = *(const float *) ((const char *) out->data +
                        i0 * out->nb[0] + i1 * out->nb[1] + i2 * out->nb[2] + i3 * out->nb[3]);
                    const double err = fabs(got - want) / fmax(1.0, fabs(want));
                    if (!(err <= worst)) {
                        worst = isnan(err) ? INFINITY : err;
                    }
                }
            }
        }
    }
    printf("%.3e\n", worst);
    ggml_free(ctx);
    return 0;
}
