/* Repository ids and revisions come from the command line and from model specs ("local:REPO"):
 * validation and the cache folder name must hold for any bytes.
 * Needs: src/hub/local.c */
#include "fuzz.h"

#include "hub/local.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *repo = fuzz_strdup(data, size);
    char folder[512];
    perr err;
    bool valid = repo_id_valid(repo);
    int rc = repo_folder_name(repo, folder, sizeof folder, &err);
    if (valid != (rc == 0))
        abort();
    /* A valid id never yields a folder name that could escape the models directory. */
    if (rc == 0 && (strchr(folder, '/') || strstr(folder, "..")))
        abort();
    free(repo);
    return 0;
}
