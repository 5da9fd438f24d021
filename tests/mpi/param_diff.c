/* param_diff.c -- how far apart two prompts' parameters are (prompt files or checkpoints).
 *
 *     param_diff A B TOL
 *
 * Prints the largest absolute difference |a - b| over the flat [Z | s | b] parameters, the
 * largest relative one |a - b| / max(|a|, |b|) (led by parameters near zero) and the
 * relative distance ||a - b|| / ||a||, then exits 0 if the largest absolute difference is
 * at most TOL (TOL 0: the parameters must be bit-identical), 1 if not, 2 on an error or
 * when the shapes differ. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ulpt.h"

int main(int argc, char **argv)
{
    if (argc != 4) {
        fputs("usage: param_diff A B TOL\n", stderr);
        return 2;
    }
    char *end;
    double tol = strtod(argv[3], &end);
    if (end == argv[3] || *end || !(tol >= 0)) {
        fprintf(stderr, "param_diff: TOL must be a number >= 0, not \"%s\"\n", argv[3]);
        return 2;
    }
    ulpt_prompt *a = NULL, *b = NULL;
    if (ulpt_prompt_load(&a, argv[1]) != ULPT_OK || ulpt_prompt_load(&b, argv[2]) != ULPT_OK) {
        fprintf(stderr, "param_diff: %s\n", ulpt_last_error());
        ulpt_prompt_free(a);
        return 2;
    }
    const size_t n = ulpt_prompt_num_params(a);
    int rc = 2;
    if (n != ulpt_prompt_num_params(b) || ulpt_prompt_n_tokens(a) != ulpt_prompt_n_tokens(b) ||
        ulpt_prompt_flags(a) != ulpt_prompt_flags(b)) {
        fprintf(stderr, "param_diff: %s and %s have different shapes\n", argv[1], argv[2]);
        goto out;
    }
    const float *x = ulpt_prompt_params(a), *y = ulpt_prompt_params(b);
    double abs_max = 0, rel_max = 0, dd = 0, aa = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)x[i] - (double)y[i]), m = fmax(fabs(x[i]), fabs(y[i]));
        if (d > abs_max)
            abs_max = d, at = i;
        if (d > 0 && d / m > rel_max)
            rel_max = d / m;
        dd += d * d;
        aa += (double)x[i] * x[i];
    }
    const int same = memcmp(x, y, n * sizeof *x) == 0;
    printf("%s vs %s: %zu parameters, max |a-b| %.3g (parameter %zu), max |a-b|/max(|a|,|b|) "
           "%.3g, ||a-b||/||a|| %.3g%s\n", argv[1], argv[2], n, abs_max, at, rel_max,
           aa > 0 ? sqrt(dd / aa) : 0.0, same ? ", bit-identical" : "");
    rc = tol == 0 ? !same : !(abs_max <= tol);
out:
    ulpt_prompt_free(a);
    ulpt_prompt_free(b);
    return rc;
}
