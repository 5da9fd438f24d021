/* fit.c -- initialise a prompt from target rows T (e.g. the host's embeddings of a text):
 * the least-squares fit of E = (Z_g . P_g) (.) s + b to T within the prompt's structure.
 *
 * The problem is bilinear in Z and s, so it is solved by alternating least squares over
 * the blocks Z, s, b, each solved exactly with the others fixed (in double):
 *
 *     Z-step  z_i = (A_g A_g^T)^+ A_g (T_i - b)^T,   A_g = P_g diag(s)   (per row, r x r)
 *             identity projection: z_ij = (T_ij - b_j) / s_j
 *     s-step  s_j = sum_i y_ij (T_ij - b_j) / sum_i y_ij^2,   y_i = z_i P_g
 *     b-step  b_j = mean_i (T_ij - y_ij s_j)
 *
 * An exact block minimum never raises ||E - T||, so the residual falls monotonically.
 * (.)^+ is the pseudo-inverse through a Jacobi eigendecomposition, eigenvalues below
 * 1e-12 of the largest taken as zero: rank-deficient Grams give the minimum-norm z.  An
 * s_j or z_ij whose denominator is zero (a column the fit cannot reach) keeps its value,
 * which changes nothing in E.  The start depends on T alone (s = 1, b = the mean row of
 * T), so the result is a function of T, P, the flags and the options. */
#include "internal.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <string.h>

ULPT__VERSIONED(fit_options_v, ulpt_fit_options, ULPT_FIT_OPTIONS_VERSION, "options",
                ULPT_FIT_OPTIONS_INIT);

int ulpt_fit_options_init(ulpt_fit_options *opts, unsigned version)
{
    if (!opts)
        return ULPT_FAIL(ULPT_ERR_INVALID, "opts is NULL");
    return ulpt__versioned_write(__func__, &fit_options_v, opts, version, &fit_options_v_defaults);
}

/* Eigendecomposition of the symmetric r x r matrix a (destroyed: its diagonal becomes
 * the eigenvalues) into orthonormal columns v, by cyclic Jacobi rotations. */
static void jacobi_eigen(double *a, double *v, size_t r)
{
    for (size_t i = 0; i < r; i++)
        for (size_t j = 0; j < r; j++)
            v[i * r + j] = i == j;
    for (int sweep = 0; sweep < 60; sweep++) {
        double off = 0, diag = 0;
        for (size_t p = 0; p < r; p++) {
            diag += a[p * r + p] * a[p * r + p];
            for (size_t q = p + 1; q < r; q++)
                off += a[p * r + q] * a[p * r + q];
        }
        if (off <= 1e-30 * diag || off == 0)
            return;
        for (size_t p = 0; p < r; p++)
            for (size_t q = p + 1; q < r; q++) {
                double apq = a[p * r + q];
                if (apq == 0)
                    continue;
                double theta = (a[q * r + q] - a[p * r + p]) / (2 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (size_t k = 0; k < r; k++) { /* a <- J^T a J, columns then rows */
                    double akp = a[k * r + p], akq = a[k * r + q];
                    a[k * r + p] = c * akp - s * akq;
                    a[k * r + q] = s * akp + c * akq;
                }
                for (size_t k = 0; k < r; k++) {
                    double apk = a[p * r + k], aqk = a[q * r + k];
                    a[p * r + k] = c * apk - s * aqk;
                    a[q * r + k] = s * apk + c * aqk;
                }
                for (size_t k = 0; k < r; k++) {
                    double vkp = v[k * r + p], vkq = v[k * r + q];
                    v[k * r + p] = c * vkp - s * vkq;
                    v[k * r + q] = s * vkp + c * vkq;
                }
            }
    }
}

/* The pseudo-inverse of the symmetric positive semi-definite r x r matrix g, in place;
 * w holds 2r^2 doubles of scratch. */
static void pinv_psd(double *g, size_t r, double *w)
{
    double *v = w, *a = w + r * r;
    memcpy(a, g, r * r * sizeof *a);
    jacobi_eigen(a, v, r);
    double top = 0;
    for (size_t k = 0; k < r; k++)
        top = fmax(top, a[k * r + k]);
    for (size_t i = 0; i < r; i++)
        for (size_t j = 0; j < r; j++) {
            double acc = 0;
            for (size_t k = 0; k < r; k++) {
                double lambda = a[k * r + k];
                if (lambda > 1e-12 * top && lambda > 0)
                    acc += v[i * r + k] * v[j * r + k] / lambda;
            }
            g[i * r + j] = acc;
        }
}

typedef struct {
    const ulpt_prompt *p;
    const float *t; /* target, row stride ld */
    size_t ld;
    double *z, *s, *b, *y; /* n x r (n x d for the identity), d, d, n x d */
    double *gram, *work, *rhs;
} fit;

static void z_step(fit *f)
{
    const ulpt_prompt *p = f->p;
    const size_t n = p->n, r = p->r, d = p->d, ng = n / p->groups;
    if (p->kind == ULPT_PROJ_IDENTITY) {
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < d; j++) {
                if (f->s[j] != 0) {
                    double v = ((double)f->t[i * f->ld + j] - f->b[j]) / f->s[j];
                    if (isfinite(v))
                        f->z[i * d + j] = v;
                }
                f->y[i * d + j] = f->z[i * d + j];
            }
        return;
    }
    for (size_t g = 0; g < p->groups; g++) {
        const float *P = ulpt_projection_data(p->proj[g]);
        for (size_t k = 0; k < r; k++) /* A A^T = P diag(s^2) P^T */
            for (size_t l = k; l < r; l++) {
                double acc = 0;
                for (size_t j = 0; j < d; j++)
                    acc += (double)P[k * d + j] * P[l * d + j] * f->s[j] * f->s[j];
                f->gram[k * r + l] = f->gram[l * r + k] = acc;
            }
        pinv_psd(f->gram, r, f->work);
        for (size_t i = g * ng; i < (g + 1) * ng; i++) {
            const float *ti = f->t + i * f->ld;
            for (size_t k = 0; k < r; k++) { /* A (T_i - b)^T */
                double acc = 0;
                for (size_t j = 0; j < d; j++)
                    acc += ((double)ti[j] - f->b[j]) * f->s[j] * P[k * d + j];
                f->rhs[k] = acc;
            }
            double *zi = f->z + i * r, *yi = f->y + i * d;
            for (size_t k = 0; k < r; k++) {
                double acc = 0;
                for (size_t l = 0; l < r; l++)
                    acc += f->gram[k * r + l] * f->rhs[l];
                zi[k] = acc;
            }
            for (size_t j = 0; j < d; j++) {
                double acc = 0;
                for (size_t k = 0; k < r; k++)
                    acc += zi[k] * P[k * d + j];
                yi[j] = acc;
            }
        }
    }
}

static void s_step(fit *f)
{
    const size_t n = f->p->n, d = f->p->d;
    for (size_t j = 0; j < d; j++) {
        double num = 0, den = 0;
        for (size_t i = 0; i < n; i++) {
            double y = f->y[i * d + j];
            num += y * ((double)f->t[i * f->ld + j] - f->b[j]);
            den += y * y;
        }
        if (den > 0 && isfinite(num / den))
            f->s[j] = num / den;
    }
}

static void b_step(fit *f)
{
    const size_t n = f->p->n, d = f->p->d;
    for (size_t j = 0; j < d; j++) {
        double acc = 0;
        for (size_t i = 0; i < n; i++)
            acc += (double)f->t[i * f->ld + j] - f->y[i * d + j] * f->s[j];
        f->b[j] = acc / (double)n;
    }
}

/* ||E - T||^2 of the current blocks. */
static double residual2(const fit *f)
{
    const size_t n = f->p->n, d = f->p->d;
    double acc = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < d; j++) {
            double e = f->y[i * d + j] * f->s[j] + f->b[j] - f->t[i * f->ld + j];
            acc += e * e;
        }
    return acc;
}

int ulpt_prompt_init_from_embeddings(ulpt_prompt *p, const float *target, size_t ld,
                                     const ulpt_fit_options *in, double *residual)
{
    if (!p || !target)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !p ? "prompt" : "target");
    if (ld < p->d || ld > INT_MAX)
        return ULPT_FAIL(ULPT_ERR_INVALID, "row stride %zu is outside [dim %u, %d]", ld, p->d,
                         INT_MAX);
    ulpt_fit_options o;
    int rc = ulpt__versioned_read(__func__, &fit_options_v, in, &o);
    if (rc)
        return rc;
    if (o.max_iters < 1)
        return ULPT_FAIL(ULPT_ERR_INVALID, "max_iters is 0; at least one round is needed");
    if (!(o.tol >= 0) || !isfinite(o.tol))
        return ULPT_FAIL(ULPT_ERR_INVALID, "tol %g is not a finite number >= 0", o.tol);
    const size_t n = p->n, r = p->r, d = p->d;
    double tnorm2 = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < d; j++) {
            float x = target[i * ld + j];
            if (!isfinite(x))
                return ULPT_FAIL(ULPT_ERR_NONFINITE, "target[%zu][%zu] is %g", i, j, (double)x);
            tnorm2 += (double)x * x;
        }

    /* one block of doubles: z | s | b | y | gram | work (2 r^2) | rhs; sizes are those
       of a prompt that exists (n*d floats fit), so only the double count can overflow */
    const int identity = p->kind == ULPT_PROJ_IDENTITY;
    size_t nd = n * d, nz = identity ? nd : n * r, rr = identity ? 0 : r * r, total;
    if (nz > SIZE_MAX / 2 - nd || (total = nz + 2 * d + nd) > SIZE_MAX / 2 - 3 * rr - r ||
        (total += 3 * rr + r) > SIZE_MAX / sizeof(double))
        return ULPT_FAIL(ULPT_ERR_INVALID, "a fit of %zu x %u is past addressable memory", n, p->d);
    ulpt_allocator al = ulpt__allocator(); /* working memory, gone when the call returns */
    double *block = ulpt__calloc(&al, total, sizeof(double));
    float *out = block ? ulpt__alloc(&al, p->n_params * sizeof(float)) : NULL;
    if (!out) {
        ulpt__free(&al, block);
        return ULPT_FAIL(ULPT_ERR_NOMEM, "no memory for the fit (%zu doubles)", total);
    }
    fit f = {.p = p, .t = target, .ld = ld, .z = block};
    f.s = f.z + nz, f.b = f.s + d, f.y = f.b + d, f.gram = f.y + nd;
    f.work = f.gram + rr, f.rhs = f.work + 2 * rr;
    for (size_t j = 0; j < d; j++)
        f.s[j] = 1;
    if (p->b) /* the b-step with y = 0 */
        b_step(&f);

    double prev = INFINITY;
    for (uint32_t it = 0; it < o.max_iters; it++) {
        z_step(&f);
        if (p->s)
            s_step(&f);
        if (p->b)
            b_step(&f);
        double res = residual2(&f);
        if (res == 0 || (it > 0 && prev - res <= o.tol * prev))
            break;
        prev = res;
    }

    /* to float; a value past float's range is refused rather than stored as inf */
    rc = ULPT_OK;
    for (size_t k = 0; k < p->n_params; k++) {
        size_t nzp = n * r;
        double v = k < nzp ? f.z[k] : p->s && k < nzp + d ? f.s[k - nzp] : f.b[k - nzp - (p->s ? d : 0)];
        if (!(fabs(v) <= FLT_MAX)) {
            rc = ULPT_FAIL(ULPT_ERR_NONFINITE, "the fit needs a value of %g, past float's range", v);
            break;
        }
        out[k] = (float)v;
    }
    if (!rc) /* the one write: nothing else may be reading or writing the prompt */
        rc = ulpt__lock_hold(__func__, &p->lock, "prompt", 1);
    if (!rc) {
        memcpy(p->params, out, p->n_params * sizeof(float));
        if (residual) {
            /* the residual of what the prompt now holds: E from the float parameters */
            for (size_t k = 0; k < nz; k++)
                f.z[k] = p->z[k];
            for (size_t j = 0; j < d; j++) {
                f.s[j] = p->s ? p->s[j] : 1.0;
                f.b[j] = p->b ? p->b[j] : 0.0;
            }
            const size_t ng = n / p->groups;
            for (size_t i = 0; i < n; i++) {
                const float *P = ulpt_projection_data(p->proj[i / ng]);
                for (size_t j = 0; j < d; j++) {
                    double acc = 0;
                    if (identity)
                        acc = f.z[i * d + j];
                    else
                        for (size_t k = 0; k < r; k++)
                            acc += f.z[i * r + k] * P[k * d + j];
                    f.y[i * d + j] = acc;
                }
            }
            double e2 = residual2(&f);
            *residual = tnorm2 > 0 ? sqrt(e2 / tnorm2) : sqrt(e2);
        }
        ulpt__lock_release(&p->lock);
    }
    ulpt__free(&al, out);
    ulpt__free(&al, block);
    return rc;
}
