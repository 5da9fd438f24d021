/* seeds_tlm.c -- small real .tlm files to start the weights-file fuzzer from.
 * Usage: seeds_tlm DIR */
#include <stdio.h>

#include "tinylm.h"

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    static const tlm_config configs[] = {
        { 16, 8, 1, 2, 16, 8 },
        { 32, 12, 2, 3, 24, 6 },
        { 8, 4, 1, 1, 4, 4 },
    };
    for (int i = 0; i < 3; i++) {
        tlm_model *m;
        char path[512];
        snprintf(path, sizeof path, "%s/model-%d.tlm", argv[1], i);
        if (tlm_create_random(&m, &configs[i], (uint64_t)i + 1) ||
            tlm_save(m, path, (uint64_t)i + 1, (uint64_t)i * 10, i ? "seed corpus" : NULL)) {
            fprintf(stderr, "seeds_tlm: %s\n", tlm_last_error());
            return 1;
        }
        tlm_free(m);
    }
    return 0;
}
