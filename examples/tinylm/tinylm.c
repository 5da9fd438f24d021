/* tinylm.c -- the byte-level transformer of docs/TINYLM.md, frozen: forward, the
 * gradient with respect to the input rows, the two losses and the .tlm weights file.
 *
 * Layers are pairs `x_forward` / `x_backward` with the shapes on the first line.  n rows
 * go through; activations live in one block taken at creation, sized for T rows.  The
 * backward pass keeps one residual gradient dres (n x C) that every block adds into, the
 * way the residual stream adds into x going forward. */
#include "tinylm.h"

#include <cblas.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ---- errors -------------------------------------------------------------------------- */

static _Thread_local char last_error[512];

const char *tlm_last_error(void) { return last_error; }

static int fail(const char *func, const char *fmt, ...)
{
    int k = snprintf(last_error, sizeof last_error, "%s: ", func);
    if (k < 0 || (size_t)k >= sizeof last_error)
        k = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error + k, sizeof last_error - (size_t)k, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- configuration and memory layout -------------------------------------------------- */

/* Sizes are checked in saturating 64-bit arithmetic, so a forged configuration can only
 * produce a number that is too big, never one that wrapped round to a small one. */
static uint64_t sat_mul(uint64_t a, uint64_t b)
{
    return b && a > UINT64_MAX / b ? UINT64_MAX : a * b;
}

static uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

/* Floats of one block's parameters: 2C + (3C^2 + 3C) + (C^2 + C) + 2C + (CF + F) + (FC + C). */
static uint64_t block_param_count(const tlm_config *c)
{
    uint64_t C = c->width, F = c->mlp;
    return sat_add(sat_add(sat_mul(4 * C, C), sat_mul(2 * C, F)), 9 * C + F);
}

/* P = VC + TC + L (block) + 2C */
static uint64_t param_count(const tlm_config *c)
{
    uint64_t C = c->width;
    uint64_t p = sat_add(sat_mul(c->vocab, C), sat_mul(c->max_len, C));
    return sat_add(sat_add(p, sat_mul(c->layers, block_param_count(c))), 2 * C);
}

/* Floats of one block's activations for T rows:
 * ln1, atty, mid, ln2 (T x C each), qkv (T x 3C), att (H x T x T), fch and fchg (T x F),
 * the mean and 1/std of both LayerNorms (T each). */
static uint64_t block_act_count(const tlm_config *c)
{
    uint64_t T = c->max_len, C = c->width, F = c->mlp;
    uint64_t tc = sat_mul(T, C);
    return sat_add(sat_add(sat_mul(7, tc), 4 * T),
                   sat_add(sat_mul(c->heads, sat_mul(T, T)), sat_mul(2 * T, F)));
}

/* Floats of everything else: the residual stream at every block boundary ((L+1) x T x C),
 * lnf (T x C, mean and 1/std), logits and dlogits (T x V), rows for tlm_lm_loss, and the
 * backward scratch dres, dln, datty (T x C), dqkv (T x 3C), dfch (T x F), datt (T x T). */
static uint64_t global_act_count(const tlm_config *c)
{
    uint64_t T = c->max_len, C = c->width, F = c->mlp;
    uint64_t tc = sat_mul(T, C);
    uint64_t n = sat_mul((uint64_t)c->layers + 1, tc);
    n = sat_add(n, sat_add(sat_mul(9, tc), 2 * T));
    n = sat_add(n, sat_mul(2 * T, c->vocab));
    return sat_add(n, sat_add(sat_mul(T, F), sat_mul(T, T)));
}

static uint64_t total_bytes(const tlm_config *c)
{
    uint64_t floats = sat_add(param_count(c), global_act_count(c));
    floats = sat_add(floats, sat_mul(c->layers, block_act_count(c)));
    return sat_mul(floats, sizeof(float));
}

static int check_config(const char *func, const char *where, const tlm_config *c)
{
    if (!c->vocab || !c->width || !c->layers || !c->heads || !c->mlp || !c->max_len)
        return fail(func, "%sa configuration field is 0 (V=%u C=%u L=%u H=%u F=%u T=%u)", where,
                    c->vocab, c->width, c->layers, c->heads, c->mlp, c->max_len);
    if (c->width % c->heads)
        return fail(func, "%swidth C=%u is not divisible by heads H=%u", where, c->width, c->heads);
    /* BLAS takes int dimensions; 3C is the widest. */
    if (c->width > INT_MAX / 3 || c->vocab > INT_MAX || c->mlp > INT_MAX || c->max_len > INT_MAX)
        return fail(func, "%sa dimension is past the BLAS limit %d", where, INT_MAX);
    uint64_t bytes = total_bytes(c);
    if (bytes > TLM_MAX_BYTES || bytes > SIZE_MAX)
        return fail(func,
                    "%sV=%u C=%u L=%u H=%u F=%u T=%u needs %llu bytes, more than the %llu-byte "
                    "limit",
                    where, c->vocab, c->width, c->layers, c->heads, c->mlp, c->max_len,
                    (unsigned long long)bytes, (unsigned long long)TLM_MAX_BYTES);
    return 0;
}

typedef struct {
    float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *proj_w, *proj_b;
    float *ln2_w, *ln2_b, *fc_w, *fc_b, *fcproj_w, *fcproj_b;
} block_params;

typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *mid;
    float *ln2, *ln2_mean, *ln2_rstd, *fch, *fchg;
} block_acts;

struct tlm_model {
    tlm_config cfg;
    tlm_meta meta;
    size_t n_params, block_params, block_acts;
    float *params; /* P floats in file order */
    float *wte, *wpe, *lnf_w, *lnf_b;
    float *acts; /* the blocks' activations, then the buffers below */
    float *res;  /* (L+1) x T x C: res[0] = rows + wpe, res[l+1] = output of block l */
    float *lnf, *lnf_mean, *lnf_rstd, *logits, *dlogits, *rows;
    float *dres, *dln, *datty, *dqkv, *dfch, *datt;
    uint32_t n; /* rows of the last forward; 0 before the first */
    int gelu_half; /* tlm_set_gelu_half */
};

/* Hands out the next `count` floats of a block. */
static float *take(float **cursor, size_t count)
{
    float *p = *cursor;
    *cursor += count;
    return p;
}

static block_params params_of(const tlm_model *m, uint32_t l)
{
    size_t C = m->cfg.width, F = m->cfg.mlp;
    float *p = m->params + ((size_t)m->cfg.vocab + m->cfg.max_len) * C + l * m->block_params;
    block_params b;
    b.ln1_w = take(&p, C), b.ln1_b = take(&p, C);
    b.qkv_w = take(&p, C * 3 * C), b.qkv_b = take(&p, 3 * C);
    b.proj_w = take(&p, C * C), b.proj_b = take(&p, C);
    b.ln2_w = take(&p, C), b.ln2_b = take(&p, C);
    b.fc_w = take(&p, C * F), b.fc_b = take(&p, F);
    b.fcproj_w = take(&p, F * C), b.fcproj_b = take(&p, C);
    return b;
}

static block_acts acts_of(const tlm_model *m, uint32_t l)
{
    size_t T = m->cfg.max_len, C = m->cfg.width, F = m->cfg.mlp, H = m->cfg.heads;
    float *p = m->acts + l * m->block_acts;
    block_acts a;
    a.ln1 = take(&p, T * C), a.ln1_mean = take(&p, T), a.ln1_rstd = take(&p, T);
    a.qkv = take(&p, T * 3 * C), a.att = take(&p, H * T * T), a.atty = take(&p, T * C);
    a.mid = take(&p, T * C);
    a.ln2 = take(&p, T * C), a.ln2_mean = take(&p, T), a.ln2_rstd = take(&p, T);
    a.fch = take(&p, T * F), a.fchg = take(&p, T * F);
    return a;
}

/* A zeroed model for a configuration check_config accepted. */
static int model_alloc(const char *func, tlm_model **out, const tlm_config *cfg)
{
    tlm_model *m = calloc(1, sizeof *m);
    if (!m)
        return fail(func, "out of memory");
    m->cfg = *cfg;
    m->n_params = (size_t)param_count(cfg);
    m->block_params = (size_t)block_param_count(cfg);
    m->block_acts = (size_t)block_act_count(cfg);
    size_t n_acts = (size_t)global_act_count(cfg) + (size_t)cfg->layers * m->block_acts;
    m->params = calloc(m->n_params, sizeof(float));
    m->acts = calloc(n_acts, sizeof(float));
    if (!m->params || !m->acts) {
        size_t wanted = m->n_params + n_acts;
        tlm_free(m);
        return fail(func, "out of memory (%zu floats)", wanted);
    }
    size_t T = cfg->max_len, C = cfg->width, F = cfg->mlp, V = cfg->vocab, L = cfg->layers;
    float *p = m->params;
    m->wte = take(&p, V * C), m->wpe = take(&p, T * C);
    p += L * m->block_params;
    m->lnf_w = take(&p, C), m->lnf_b = take(&p, C);
    p = m->acts + L * m->block_acts;
    m->res = take(&p, (L + 1) * T * C);
    m->lnf = take(&p, T * C), m->lnf_mean = take(&p, T), m->lnf_rstd = take(&p, T);
    m->logits = take(&p, T * V), m->dlogits = take(&p, T * V), m->rows = take(&p, T * C);
    m->dres = take(&p, T * C), m->dln = take(&p, T * C), m->datty = take(&p, T * C);
    m->dqkv = take(&p, T * 3 * C), m->dfch = take(&p, T * F), m->datt = take(&p, T * T);
    *out = m;
    return 0;
}

void tlm_free(tlm_model *m)
{
    if (!m)
        return;
    free(m->params);
    free(m->acts);
    free(m);
}

const tlm_config *tlm_config_of(const tlm_model *m) { return &m->cfg; }
const tlm_meta *tlm_meta_of(const tlm_model *m) { return &m->meta; }
float *tlm_params(tlm_model *m) { return m->params; }
size_t tlm_num_params(const tlm_model *m) { return m->n_params; }
void tlm_set_gelu_half(tlm_model *m, int on) { m->gelu_half = on != 0; }

const float *tlm_token_embedding(const tlm_model *m, int byte)
{
    if (byte < 0 || (uint32_t)byte >= m->cfg.vocab)
        return NULL;
    return m->wte + (size_t)byte * m->cfg.width;
}

/* ---- random initialisation -------------------------------------------------------------- */

/* splitmix64: a tiny generator whose stream is the same on every platform. */
static uint64_t next_u64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

/* N(0, std) by Box-Muller, one draw per pair of uniforms; u1 in (0, 1] keeps log finite. */
static void fill_normal(float *x, size_t count, float std, uint64_t *state)
{
    const double two_pi = 6.283185307179586;
    for (size_t i = 0; i < count; i++) {
        double u1 = (double)((next_u64(state) >> 11) + 1) * 0x1p-53;
        double u2 = (double)(next_u64(state) >> 11) * 0x1p-53;
        x[i] = (float)(std * sqrt(-2.0 * log(u1)) * cos(two_pi * u2));
    }
}

static void fill_ones(float *x, size_t count)
{
    for (size_t i = 0; i < count; i++)
        x[i] = 1.0f;
}

int tlm_create_random(tlm_model **out, const tlm_config *cfg, uint64_t seed)
{
    static const char func[] = "tlm_create_random";
    if (!out || !cfg)
        return fail(func, "%s is NULL", !out ? "out" : "cfg");
    tlm_model *m;
    if (check_config(func, "", cfg) || model_alloc(func, &m, cfg))
        return -1;
    size_t T = cfg->max_len, C = cfg->width, F = cfg->mlp, V = cfg->vocab;
    const float std = 0.02f;
    uint64_t state = seed;
    /* In file order; biases stay at the zeros calloc gave. */
    fill_normal(m->wte, V * C, std, &state);
    fill_normal(m->wpe, T * C, std, &state);
    for (uint32_t l = 0; l < cfg->layers; l++) {
        block_params b = params_of(m, l);
        fill_ones(b.ln1_w, C);
        fill_normal(b.qkv_w, C * 3 * C, std, &state);
        fill_normal(b.proj_w, C * C, std, &state);
        fill_ones(b.ln2_w, C);
        fill_normal(b.fc_w, C * F, std, &state);
        fill_normal(b.fcproj_w, F * C, std, &state);
    }
    fill_ones(m->lnf_w, C);
    m->meta.seed = seed;
    *out = m;
    return 0;
}

/* ---- layers ------------------------------------------------------------------------------ */

/* x (n x C) = rows (n x C) + wpe (first n rows) */
static void encoder_forward(float *x, const float *rows, const float *wpe, size_t n, size_t C)
{
    for (size_t i = 0; i < n * C; i++)
        x[i] = rows[i] + wpe[i];
}

/* drows (n x C) = dx: the position table is frozen */
static void encoder_backward(float *drows, const float *dx, size_t n, size_t C)
{
    memcpy(drows, dx, n * C * sizeof *drows);
}

/* out (n x C) = (x - mean) * rstd * w + b, row by row; keeps mean and rstd (n) */
static void layernorm_forward(float *out, float *mean, float *rstd, const float *x, const float *w,
                              const float *b, size_t n, size_t C)
{
    for (size_t t = 0; t < n; t++) {
        const float *xt = x + t * C;
        double mu = 0, var = 0;
        for (size_t i = 0; i < C; i++)
            mu += xt[i];
        mu /= (double)C;
        for (size_t i = 0; i < C; i++)
            var += (xt[i] - mu) * (xt[i] - mu);
        var /= (double)C; /* biased, as TINYLM.md says */
        float r = (float)(1.0 / sqrt(var + 1e-5));
        for (size_t i = 0; i < C; i++)
            out[t * C + i] = ((float)(xt[i] - mu) * r) * w[i] + b[i];
        mean[t] = (float)mu;
        rstd[t] = r;
    }
}

/* dx (n x C) += dL/dx given dout (n x C); with g = dout * w and xhat the normalised x,
 * dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) */
static void layernorm_backward(float *dx, const float *dout, const float *x, const float *mean,
                               const float *rstd, const float *w, size_t n, size_t C)
{
    for (size_t t = 0; t < n; t++) {
        const float *xt = x + t * C, *dt = dout + t * C;
        double g_mean = 0, gx_mean = 0;
        for (size_t i = 0; i < C; i++) {
            double g = (double)dt[i] * w[i], xhat = (double)(xt[i] - mean[t]) * rstd[t];
            g_mean += g;
            gx_mean += g * xhat;
        }
        g_mean /= (double)C;
        gx_mean /= (double)C;
        for (size_t i = 0; i < C; i++) {
            double g = (double)dt[i] * w[i], xhat = (double)(xt[i] - mean[t]) * rstd[t];
            dx[t * C + i] += (float)(rstd[t] * (g - g_mean - xhat * gx_mean));
        }
    }
}

/* out (n x oc) = in (n x ic) . w (ic x oc) + bias (oc) */
static void matmul_forward(float *out, const float *in, const float *w, const float *bias, size_t n,
                           size_t ic, size_t oc)
{
    for (size_t t = 0; t < n; t++)
        memcpy(out + t * oc, bias, oc * sizeof *out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)oc, (int)ic, 1.0f, in,
                (int)ic, w, (int)oc, 1.0f, out, (int)oc);
}

/* din (n x ic) = dout (n x oc) . w^T; no weight or bias gradient */
static void matmul_backward(float *din, const float *dout, const float *w, size_t n, size_t ic,
                            size_t oc)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)ic, (int)oc, 1.0f, dout,
                (int)oc, w, (int)oc, 0.0f, din, (int)ic);
}

/* y (n x C) from qkv (n x 3C); att (H x T x T, row stride T) keeps the probabilities.
 * Per head h: S = Q_h K_h^T / sqrt(D), P = causal softmax of each row of S, Y_h = P V_h.
 * S is computed in full and the entries u > t are then set to exactly 0, so P V_h adds
 * nothing from the future. */
static void attention_forward(float *y, float *att, const float *qkv, size_t n, size_t T, size_t C,
                              size_t H)
{
    size_t D = C / H, C3 = 3 * C;
    float scale = (float)(1.0 / sqrt((double)D));
    for (size_t h = 0; h < H; h++) {
        const float *q = qkv + h * D, *k = qkv + C + h * D, *v = qkv + 2 * C + h * D;
        float *p = att + h * T * T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)n, (int)D, scale, q,
                    (int)C3, k, (int)C3, 0.0f, p, (int)T);
        for (size_t t = 0; t < n; t++) {
            float *pt = p + t * T, top = pt[0], sum = 0;
            for (size_t u = 1; u <= t; u++)
                top = pt[u] > top ? pt[u] : top;
            for (size_t u = 0; u <= t; u++)
                sum += pt[u] = expf(pt[u] - top);
            for (size_t u = 0; u <= t; u++)
                pt[u] /= sum;
            for (size_t u = t + 1; u < n; u++)
                pt[u] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)D, (int)n, 1.0f, p,
                    (int)T, v, (int)C3, 0.0f, y + h * D, (int)C);
    }
}

/* dqkv (n x 3C) from dy (n x C), qkv and att of the forward; datt (T x T) is scratch.
 *   dP = dY_h V_h^T      dV_h = P^T dY_h
 *   dS = P (.) (dP - rowsum(P (.) dP)) / sqrt(D)      (0 where P is 0: the future)
 *   dQ_h = dS K_h        dK_h = dS^T Q_h */
static void attention_backward(float *dqkv, float *datt, const float *dy, const float *qkv,
                               const float *att, size_t n, size_t T, size_t C, size_t H)
{
    size_t D = C / H, C3 = 3 * C;
    float scale = (float)(1.0 / sqrt((double)D));
    for (size_t h = 0; h < H; h++) {
        const float *q = qkv + h * D, *k = qkv + C + h * D, *v = qkv + 2 * C + h * D;
        const float *p = att + h * T * T, *dyh = dy + h * D;
        float *dq = dqkv + h * D, *dk = dqkv + C + h * D, *dv = dqkv + 2 * C + h * D;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)n, (int)D, 1.0f, dyh,
                    (int)C, v, (int)C3, 0.0f, datt, (int)T);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)D, (int)n, 1.0f, p,
                    (int)T, dyh, (int)C, 0.0f, dv, (int)C3);
        for (size_t t = 0; t < n; t++) {
            const float *pt = p + t * T;
            float *dt = datt + t * T, dot = 0;
            for (size_t u = 0; u <= t; u++)
                dot += pt[u] * dt[u];
            for (size_t u = 0; u <= t; u++)
                dt[u] = pt[u] * (dt[u] - dot) * scale;
            for (size_t u = t + 1; u < n; u++)
                dt[u] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)D, (int)n, 1.0f, datt,
                    (int)T, k, (int)C3, 0.0f, dq, (int)C3);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)D, (int)n, 1.0f, datt,
                    (int)T, q, (int)C3, 0.0f, dk, (int)C3);
    }
}

#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */

/* out (N) = 0.5 z (1 + tanh(u)), u = sqrt(2/pi) (z + 0.044715 z^3), computed as
 * z / (1 + exp(-2u)): the same function, and expf costs a fraction of tanhf, which
 * dominated the whole model's time. */
static void gelu_forward(float *out, const float *z, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        float x = z[i];
        out[i] = x / (1.0f + expf(-2.0f * GELU_SCALE * (x + 0.044715f * x * x * x)));
    }
}

/* x rounded to the nearest IEEE half (ties to even) and back: the value a half-precision
 * table lookup sees.  Past the half range gives infinity, as the conversion does. */
static float round_to_half(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    uint32_t sign = u & 0x80000000u, a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) /* inf or NaN: unchanged */
        return x;
    float y;
    if (a < 0x38800000u) { /* below 2^-14: half subnormals are multiples of 2^-24 */
        float f;
        memcpy(&f, &a, 4);
        y = nearbyintf(f * 16777216.0f) / 16777216.0f; /* default rounding: to even */
    } else {
        /* drop 13 of the 23 mantissa bits, rounding to nearest, ties to even */
        uint32_t r = a + 0x0fffu + ((a >> 13) & 1u);
        r &= ~0x1fffu;
        if (r >= 0x47800000u) /* 65520 and up round past 65504, the largest half */
            r = 0x7f800000u;
        memcpy(&y, &r, 4);
    }
    uint32_t v;
    memcpy(&v, &y, 4);
    v |= sign;
    memcpy(&y, &v, 4);
    return y;
}

/* out (N) = GELU as a half-precision table gives it: fp16(gelu(fp16(z))), 0 for z <= -10,
 * z for z >= 10, with gelu evaluated in float as 0.5 z (1 + tanh(sqrt(2/pi) z (1 +
 * 0.044715 z^2))). */
static void gelu_half_forward(float *out, const float *z, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        float x = z[i];
        if (x <= -10.0f) {
            out[i] = 0.0f;
        } else if (x >= 10.0f) {
            out[i] = x;
        } else {
            float h = round_to_half(x);
            out[i] = round_to_half(0.5f * h * (1.0f + tanhf(GELU_SCALE * h * (1.0f + 0.044715f * h * h))));
        }
    }
}

/* dz (N) = dout * GELU'(z); dz may be dout.  With g = sigmoid(2u) = 0.5 (1 + tanh(u)),
 * GELU = z g and GELU' = g + 2 z g (1 - g) u'. */
static void gelu_backward(float *dz, const float *z, const float *dout, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        float x = z[i], u = GELU_SCALE * (x + 0.044715f * x * x * x);
        float g = 1.0f / (1.0f + expf(-2.0f * u));
        float du = GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        dz[i] = dout[i] * (g + 2.0f * x * g * (1.0f - g) * du);
    }
}

/* x (N) += r: the residual connection.  Its backward is the identity, which the shared
 * residual gradient dres gives for free. */
static void residual_forward(float *x, const float *r, size_t count)
{
    for (size_t i = 0; i < count; i++)
        x[i] += r[i];
}

/* logits (n x V) = h (n x C) . wte^T: the output head is the token table */
static void head_forward(float *logits, const float *h, const float *wte, size_t n, size_t C,
                         size_t V)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)V, (int)C, 1.0f, h, (int)C,
                wte, (int)C, 0.0f, logits, (int)V);
}

/* dh (n x C) = dlogits (n x V) . wte */
static void head_backward(float *dh, const float *dlogits, const float *wte, size_t n, size_t C,
                          size_t V)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)C, (int)V, 1.0f, dlogits,
                (int)V, wte, (int)C, 0.0f, dh, (int)C);
}

/* ---- the model ----------------------------------------------------------------------------- */

static void block_forward(tlm_model *m, uint32_t l, const float *x, float *out, size_t n)
{
    size_t T = m->cfg.max_len, C = m->cfg.width, F = m->cfg.mlp, H = m->cfg.heads;
    block_params p = params_of(m, l);
    block_acts a = acts_of(m, l);
    layernorm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, x, p.ln1_w, p.ln1_b, n, C);
    matmul_forward(a.qkv, a.ln1, p.qkv_w, p.qkv_b, n, C, 3 * C);
    attention_forward(a.atty, a.att, a.qkv, n, T, C, H);
    matmul_forward(a.mid, a.atty, p.proj_w, p.proj_b, n, C, C);
    residual_forward(a.mid, x, n * C);
    layernorm_forward(a.ln2, a.ln2_mean, a.ln2_rstd, a.mid, p.ln2_w, p.ln2_b, n, C);
    matmul_forward(a.fch, a.ln2, p.fc_w, p.fc_b, n, C, F);
    if (m->gelu_half)
        gelu_half_forward(a.fchg, a.fch, n * F);
    else
        gelu_forward(a.fchg, a.fch, n * F);
    matmul_forward(out, a.fchg, p.fcproj_w, p.fcproj_b, n, F, C);
    residual_forward(out, a.mid, n * C);
}

/* dres (n x C): dL/d(block output) in, dL/d(block input) out. */
static void block_backward(tlm_model *m, uint32_t l, const float *x, size_t n)
{
    size_t T = m->cfg.max_len, C = m->cfg.width, F = m->cfg.mlp, H = m->cfg.heads;
    block_params p = params_of(m, l);
    block_acts a = acts_of(m, l);
    matmul_backward(m->dfch, m->dres, p.fcproj_w, n, F, C);
    gelu_backward(m->dfch, a.fch, m->dfch, n * F);
    matmul_backward(m->dln, m->dfch, p.fc_w, n, C, F);
    layernorm_backward(m->dres, m->dln, a.mid, a.ln2_mean, a.ln2_rstd, p.ln2_w, n, C);
    matmul_backward(m->datty, m->dres, p.proj_w, n, C, C);
    attention_backward(m->dqkv, m->datt, m->datty, a.qkv, a.att, n, T, C, H);
    matmul_backward(m->dln, m->dqkv, p.qkv_w, n, C, 3 * C);
    layernorm_backward(m->dres, m->dln, x, a.ln1_mean, a.ln1_rstd, p.ln1_w, n, C);
}

int tlm_forward(tlm_model *m, const float *rows, uint32_t n, float *logits)
{
    static const char func[] = "tlm_forward";
    if (!m || !rows || !logits)
        return fail(func, "%s is NULL", !m ? "model" : !rows ? "rows" : "logits");
    if (n == 0 || n > m->cfg.max_len)
        return fail(func, "%u rows; the model takes 1 to %u", n, m->cfg.max_len);
    size_t T = m->cfg.max_len, C = m->cfg.width, L = m->cfg.layers;
    encoder_forward(m->res, rows, m->wpe, n, C);
    for (size_t l = 0; l < L; l++)
        block_forward(m, (uint32_t)l, m->res + l * T * C, m->res + (l + 1) * T * C, n);
    layernorm_forward(m->lnf, m->lnf_mean, m->lnf_rstd, m->res + L * T * C, m->lnf_w, m->lnf_b, n,
                      C);
    head_forward(logits, m->lnf, m->wte, n, C, m->cfg.vocab);
    m->n = n;
    return 0;
}

int tlm_backward(tlm_model *m, const float *dlogits, float *drows)
{
    static const char func[] = "tlm_backward";
    if (!m || !dlogits || !drows)
        return fail(func, "%s is NULL", !m ? "model" : !dlogits ? "dlogits" : "drows");
    if (m->n == 0)
        return fail(func, "no forward pass to go back through");
    size_t n = m->n, T = m->cfg.max_len, C = m->cfg.width, L = m->cfg.layers;
    head_backward(m->dln, dlogits, m->wte, n, C, m->cfg.vocab);
    memset(m->dres, 0, n * C * sizeof *m->dres);
    layernorm_backward(m->dres, m->dln, m->res + L * T * C, m->lnf_mean, m->lnf_rstd, m->lnf_w, n,
                       C);
    for (size_t l = L; l-- > 0;)
        block_backward(m, (uint32_t)l, m->res + l * T * C, n);
    encoder_backward(drows, m->dres, n, C);
    return 0;
}

/* ---- losses ------------------------------------------------------------------------------- */

/* The losses return NaN on failure. */
#define FAIL_NAN(...) (fail(__VA_ARGS__), NAN)

double tlm_class_loss(tlm_model *m, const float *rows, uint32_t n, const uint8_t *label_bytes,
                      int n_labels, int target, float *drows, int *predicted)
{
    static const char func[] = "tlm_class_loss";
    if (!m || !label_bytes)
        return FAIL_NAN(func, "%s is NULL", !m ? "model" : "label_bytes");
    if (n_labels < 1 || target < 0 || target >= n_labels)
        return FAIL_NAN(func, "target %d is not a label index in [0, %d)", target, n_labels);
    for (int j = 0; j < n_labels; j++)
        if (label_bytes[j] >= m->cfg.vocab)
            return FAIL_NAN(func, "label byte %u is outside the vocabulary of %u", label_bytes[j],
                            m->cfg.vocab);
    if (tlm_forward(m, rows, n, m->logits))
        return NAN;
    size_t V = m->cfg.vocab;
    const float *last = m->logits + (n - 1) * V;
    int best = 0;
    for (int j = 1; j < n_labels; j++)
        if (last[label_bytes[j]] > last[label_bytes[best]])
            best = j;
    double top = last[label_bytes[best]], sum = 0;
    for (int j = 0; j < n_labels; j++)
        sum += exp(last[label_bytes[j]] - top);
    double loss = top + log(sum) - last[label_bytes[target]];
    if (drows) {
        /* dL/dz_j = softmax_j - [j == target], added so that a repeated byte sums */
        memset(m->dlogits, 0, n * V * sizeof *m->dlogits);
        float *dlast = m->dlogits + (n - 1) * V;
        for (int j = 0; j < n_labels; j++)
            dlast[label_bytes[j]] += (float)(exp(last[label_bytes[j]] - top) / sum - (j == target));
        tlm_backward(m, m->dlogits, drows);
    }
    if (predicted)
        *predicted = best;
    return loss;
}

double tlm_lm_loss(tlm_model *m, const uint8_t *bytes, uint32_t n)
{
    static const char func[] = "tlm_lm_loss";
    if (!m || !bytes)
        return FAIL_NAN(func, "%s is NULL", !m ? "model" : "bytes");
    if (n < 2 || n > m->cfg.max_len)
        return FAIL_NAN(func, "%u bytes; the loss needs 2 to %u", n, m->cfg.max_len);
    size_t C = m->cfg.width, V = m->cfg.vocab;
    for (size_t t = 0; t < n; t++) {
        if (bytes[t] >= V)
            return FAIL_NAN(func, "byte %u is outside the vocabulary of %zu", bytes[t], V);
        memcpy(m->rows + t * C, m->wte + bytes[t] * C, C * sizeof *m->rows);
    }
    if (tlm_forward(m, m->rows, n, m->logits))
        return NAN;
    double total = 0;
    for (size_t t = 0; t + 1 < n; t++) {
        const float *z = m->logits + t * V;
        double top = z[0], sum = 0;
        for (size_t i = 1; i < V; i++)
            top = z[i] > top ? z[i] : top;
        for (size_t i = 0; i < V; i++)
            sum += exp(z[i] - top);
        total += top + log(sum) - z[bytes[t + 1]];
    }
    return total / (n - 1);
}

/* ---- the .tlm file ------------------------------------------------------------------------- */

#define HEADER_SIZE 136
/* The most deflate can expand: a 258-byte match in two 1-bit codes.  A compressed length
 * that cannot hold the parameters even at this ratio is refused before any allocation. */
#define DEFLATE_MAX_RATIO 1032

static const unsigned char tlm_magic[8] = {0x89, 'T', 'L', 'M', '\r', '\n', 0x1a, '\n'};

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static int host_is_little_endian(void)
{
    const uint16_t one = 1;
    return *(const unsigned char *)&one == 1;
}

/* The file stores floats little-endian; a big-endian host swaps each one in place. */
static void swap_floats(void *data, size_t count)
{
    unsigned char *p = data;
    for (size_t i = 0; i < count; i++, p += 4) {
        unsigned char t0 = p[0], t1 = p[1];
        p[0] = p[3], p[1] = p[2], p[2] = t1, p[3] = t0;
    }
}

static void header_encode(unsigned char *h, const tlm_model *m, uint64_t seed, uint64_t steps,
                          const char *corpus, size_t corpus_len)
{
    const tlm_config *c = &m->cfg;
    memset(h, 0, HEADER_SIZE);
    memcpy(h, tlm_magic, 8);
    put_u32(h + 8, 1);
    put_u32(h + 12, c->vocab), put_u32(h + 16, c->width), put_u32(h + 20, c->layers);
    put_u32(h + 24, c->heads), put_u32(h + 28, c->mlp), put_u32(h + 32, c->max_len);
    put_u64(h + 40, m->n_params);
    put_u64(h + 48, seed);
    put_u64(h + 56, steps);
    memcpy(h + 64, corpus, corpus_len);
}

int tlm_save(const tlm_model *m, const char *path, uint64_t seed, uint64_t steps,
             const char *corpus)
{
    static const char func[] = "tlm_save";
    if (!m || !path)
        return fail(func, "%s is NULL", !m ? "model" : "path");
    size_t corpus_len = corpus ? strlen(corpus) : 0;
    if (corpus_len > TLM_CORPUS_MAX)
        return fail(func, "corpus name of %zu bytes; the file holds %d", corpus_len,
                    TLM_CORPUS_MAX);
    size_t raw_len = m->n_params * sizeof(float);
    if (raw_len > (uLong)-1)
        return fail(func, "%zu bytes of parameters are more than zlib takes at once", raw_len);
    uLong bound = compressBound((uLong)raw_len);
    unsigned char *buf = malloc(HEADER_SIZE + bound + 4), *swapped = NULL;
    const unsigned char *raw = (const unsigned char *)m->params;
    if (buf && !host_is_little_endian()) {
        if ((swapped = malloc(raw_len)) != NULL) {
            memcpy(swapped, m->params, raw_len);
            swap_floats(swapped, m->n_params);
        }
        raw = swapped;
    }
    if (!buf || !raw) {
        free(buf), free(swapped);
        return fail(func, "out of memory");
    }
    uLongf z_len = bound;
    int zrc = compress2(buf + HEADER_SIZE, &z_len, raw, (uLong)raw_len, Z_DEFAULT_COMPRESSION);
    free(swapped);
    if (zrc != Z_OK) {
        free(buf);
        return fail(func, "zlib compress failed (%d)", zrc);
    }
    header_encode(buf, m, seed, steps, corpus ? corpus : "", corpus_len);
    put_u64(buf + 128, z_len);
    size_t end = HEADER_SIZE + z_len;
    put_u32(buf + end, (uint32_t)crc32_z(0, buf, end));

    FILE *f = fopen(path, "wb");
    if (!f) {
        free(buf);
        return fail(func, "%s: %s", path, strerror(errno));
    }
    int ok = fwrite(buf, 1, end + 4, f) == end + 4;
    int err = errno;
    ok = (fclose(f) == 0) & ok;
    free(buf);
    if (!ok) {
        remove(path);
        return fail(func, "%s: write failed: %s", path, strerror(err ? err : errno));
    }
    return 0;
}

/* Fields of a header, checked in the order TINYLM.md lists the refusals. */
static int header_check(const char *path, const unsigned char *h, uint64_t file_size,
                        tlm_config *cfg, uint64_t *z_len)
{
    static const char func[] = "tlm_load";
    if (memcmp(h, tlm_magic, 8) != 0)
        return fail(func, "%s: not a .tlm file (bad magic)", path);
    uint32_t version = get_u32(h + 8);
    if (version != 1)
        return fail(func, "%s: unsupported .tlm version %u (this reader knows 1)", path, version);
    if (get_u32(h + 36) != 0)
        return fail(func, "%s: reserved field is %u, not 0", path, get_u32(h + 36));
    cfg->vocab = get_u32(h + 12), cfg->width = get_u32(h + 16), cfg->layers = get_u32(h + 20);
    cfg->heads = get_u32(h + 24), cfg->mlp = get_u32(h + 28), cfg->max_len = get_u32(h + 32);
    char where[300];
    snprintf(where, sizeof where, "%s: ", path);
    if (check_config(func, where, cfg))
        return -1;
    uint64_t p = get_u64(h + 40), want = param_count(cfg);
    if (p != want)
        return fail(func, "%s: parameter count %llu, the configuration implies %llu", path,
                    (unsigned long long)p, (unsigned long long)want);
    *z_len = get_u64(h + 128);
    uint64_t size = file_size, expect = sat_add(*z_len, HEADER_SIZE + 4);
    if (size < expect)
        return fail(func, "%s: truncated (%llu bytes, the header says %llu)", path,
                    (unsigned long long)size, (unsigned long long)expect);
    if (size > expect)
        return fail(func, "%s: %llu bytes of trailing data", path,
                    (unsigned long long)(size - expect));
    if (sat_mul(*z_len, DEFLATE_MAX_RATIO) < 4 * p)
        return fail(func, "%s: zlib data of %llu bytes cannot inflate to %llu bytes", path,
                    (unsigned long long)*z_len, (unsigned long long)(4 * p));
    return 0;
}

/* Inflates exactly `len` bytes from exactly `z_len` bytes, in pieces zlib's uInt counts
 * can hold. */
static int inflate_exact(unsigned char *dst, size_t len, const unsigned char *src, size_t z_len)
{
    const size_t piece = (size_t)1 << 30;
    z_stream s;
    memset(&s, 0, sizeof s);
    if (inflateInit(&s) != Z_OK)
        return 0;
    size_t in_left = z_len, out_left = len;
    s.next_in = (unsigned char *)src;
    s.next_out = dst;
    int rc;
    do {
        if (s.avail_in == 0 && in_left) {
            s.avail_in = (uInt)(in_left < piece ? in_left : piece);
            in_left -= s.avail_in;
        }
        if (s.avail_out == 0 && out_left) {
            s.avail_out = (uInt)(out_left < piece ? out_left : piece);
            out_left -= s.avail_out;
        }
        rc = inflate(&s, Z_NO_FLUSH);
    } while (rc == Z_OK);
    int ok =
        rc == Z_STREAM_END && s.avail_in == 0 && in_left == 0 && s.avail_out == 0 && out_left == 0;
    inflateEnd(&s);
    return ok;
}

/* Reads `size` bytes the file is known to hold. */
static int read_exact(const char *path, FILE *f, unsigned char *buf, size_t size)
{
    if (fread(buf, 1, size, f) != size)
        return fail("tlm_load", "%s: read failed: %s", path,
                    ferror(f) ? strerror(errno) : "file shrank while reading");
    return 0;
}

/* The CRC, the model and its weights from a checked header h and the z_len + 4 bytes
 * after it (zlib data, CRC-32). */
static int load_rest(tlm_model **out, const char *name, const unsigned char *h,
                     const tlm_config *cfg, const unsigned char *z, uint64_t z_len)
{
    static const char func[] = "tlm_load";
    uint32_t crc = (uint32_t)crc32_z(crc32_z(0, h, HEADER_SIZE), z, (size_t)z_len);
    if (crc != get_u32(z + z_len))
        return fail(func, "%s: bad CRC-32 (computed %08x, stored %08x)", name, crc,
                    get_u32(z + z_len));
    tlm_model *m;
    if (model_alloc(func, &m, cfg))
        return -1;
    const size_t bytes = m->n_params * sizeof(float);
    if (!inflate_exact((unsigned char *)m->params, bytes, z, (size_t)z_len)) {
        tlm_free(m);
        return fail(func, "%s: zlib data does not inflate to exactly %zu bytes", name, bytes);
    }
    if (!host_is_little_endian())
        swap_floats(m->params, m->n_params);
    m->meta.seed = get_u64(h + 48);
    m->meta.steps = get_u64(h + 56);
    memcpy(m->meta.corpus, h + 64, TLM_CORPUS_MAX); /* the byte after stays 0 */
    *out = m;
    return 0;
}

int tlm_load(tlm_model **out, const char *path)
{
    static const char func[] = "tlm_load";
    if (!out || !path)
        return fail(func, "%s is NULL", !out ? "out" : "path");
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(func, "%s: %s", path, strerror(errno));
    unsigned char h[HEADER_SIZE];
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return fail(func, "%s: cannot read its size (not a regular file?)", path);
    }
    if (size < HEADER_SIZE) {
        fclose(f);
        return fail(func, "%s: truncated (%ld bytes, the header is %d)", path, size, HEADER_SIZE);
    }
    tlm_config cfg;
    uint64_t z_len = 0;
    unsigned char *z = NULL;
    int rc = read_exact(path, f, h, HEADER_SIZE);
    if (!rc)
        rc = header_check(path, h, (uint64_t)size, &cfg, &z_len);
    /* The compressed data and the CRC: no more than the file holds. */
    if (!rc && !(z = malloc((size_t)z_len + 4)))
        rc = fail(func, "out of memory");
    if (!rc)
        rc = read_exact(path, f, z, (size_t)z_len + 4);
    fclose(f);
    if (!rc)
        rc = load_rest(out, path, h, &cfg, z, z_len);
    free(z);
    return rc;
}

int tlm_load_buffer(tlm_model **out, const void *buf, size_t len)
{
    static const char func[] = "tlm_load";
    if (!out || !buf)
        return fail(func, "%s is NULL", !out ? "out" : "buf");
    if (len < HEADER_SIZE)
        return fail(func, "buffer: truncated (%zu bytes, the header is %d)", len, HEADER_SIZE);
    tlm_config cfg;
    uint64_t z_len = 0;
    const unsigned char *h = buf;
    if (header_check("buffer", h, (uint64_t)len, &cfg, &z_len))
        return -1;
    return load_rest(out, "buffer", h, &cfg, h + HEADER_SIZE, z_len);
}
