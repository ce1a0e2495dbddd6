/* config.json (with its quantization block and per-module overrides) decides every dimension the loader
 * checks tensors against and the engine allocates for. Any config.json next to the fixture model's real
 * weights: model_load fails with a message, or succeeds with a configuration that matches the tensors.
 * Needs: src/model/model_load.c */
#include "fuzz.h"

#include <sys/stat.h>

#include "model/model.h"

static char dir[512];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *shared = getenv("PUNIE_SHARED_DIR");
    char src[4096], link[1024];
    snprintf(dir, sizeof dir, "%s", fuzz_tmpdir());
    static const char *files[] = {"model.safetensors", "model.safetensors.index.json"};
    for (int i = 0; i < 2; i++) {
        snprintf(src, sizeof src, "%s/fixtures/models/tiny-random-qwen2-4bit/%s", shared ? shared : "../shared",
                 files[i]);
        snprintf(link, sizeof link, "%s/%s", dir, files[i]);
        if (symlink(src, link) != 0) {
            fprintf(stderr, "cannot link %s (set PUNIE_SHARED_DIR)\n", src);
            abort();
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024)
        return 0;
    fuzz_write(dir, "config.json", data, size);
    model *m = NULL;
    perr err;
    if (model_load(dir, 1, &m, &err) == 0) {
        const model_config *c = model_get_config(m);
        /* The fixture's tensors fix these: a config that disagrees must have been refused, including one
         * with fewer layers than the file holds (its extra tensors would go unused). */
        if (c->hidden_size != 256 || c->n_layers != 2 || c->vocab_size != 152064 || c->intermediate_size != 640)
            abort();
        model_free(m);
    }
    return 0;
}
