/* fuzz_prompt.c -- prompt files from arbitrary bytes, through the buffer and file paths. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ulpt_prompt *p = NULL;
    int rc = ulpt_prompt_load_buffer(&p, data, size);
    if (rc == ULPT_OK)
        fuzz_use(p);
    else if (p || ulpt_last_error()[0] == '\0')
        abort(); /* a refusal leaves *out alone and says why */
    ulpt_prompt_free(p);

    uint8_t *sealed = fuzz_reseal(data, size);
    if (sealed) {
        p = NULL;
        if (ulpt_prompt_load_buffer(&p, sealed, size) == ULPT_OK)
            fuzz_use(p);
        else if (p)
            abort();
        ulpt_prompt_free(p);
        free(sealed);
    }

    char path[64];
    int fd = fuzz_file(data, size, path, sizeof path);
    ulpt_file_info info = ULPT_FILE_INFO_INIT;
    int rc2 = ulpt_file_inspect(path, &info);
    if ((rc2 == ULPT_OK) != (rc == ULPT_OK) && info.kind != ULPT_FILE_CHECKPOINT)
        abort(); /* inspect and load agree on prompt files */
    close(fd);
    return 0;
}
