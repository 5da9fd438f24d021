/* nan_model.c -- a copy of a tinylm whose last parameter (the final LayerNorm's last
 * bias) is NaN, so that every loss it computes is NaN: check-mpi.sh gives it to one rank
 * to see a host fail in the middle of a step.
 *
 *     nan_model IN.tlm OUT.tlm */
#include <math.h>
#include <stdio.h>

#include "tinylm.h"

int main(int argc, char **argv)
{
    if (argc != 3) {
        fputs("usage: nan_model IN.tlm OUT.tlm\n", stderr);
        return 2;
    }
    tlm_model *m;
    if (tlm_load(&m, argv[1])) {
        fprintf(stderr, "nan_model: %s\n", tlm_last_error());
        return 1;
    }
    tlm_params(m)[tlm_num_params(m) - 1] = NAN;
    int rc = tlm_save(m, argv[2], 0, 0, "nan");
    if (rc)
        fprintf(stderr, "nan_model: %s\n", tlm_last_error());
    tlm_free(m);
    return rc != 0;
}
