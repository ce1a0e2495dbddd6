/* safetensors files come from the Hub: the header's JSON, dtypes, shapes and data offsets must be checked
 * against the file before any tensor is used. For any bytes: open fails cleanly, or every tensor has a
 * size that matches its shape and dtype and lies inside the file (its first and last bytes are read here,
 * so a tensor that points past the mapping crashes the target).
 * Input: a safetensors file; or, when it starts with '{', model.safetensors.index.json, then "\n----\n",
 * then the one shard it may name (model-00001-of-00001.safetensors).
 * Needs: src/model/safetensors.c */
#include "fuzz.h"

#include "model/safetensors.h"

static void check(const st_set *s, size_t file_bytes)
{
    volatile uint8_t sink = 0;
    for (int i = 0; i < st_count(s); i++) {
        const st_tensor *t = st_at(s, i);
        if (!t || !t->name || t->ndim < 0 || t->ndim > ST_MAX_DIMS)
            abort();
        size_t n = st_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0)
                abort();
            if (t->shape[d] && n > SIZE_MAX / (size_t)t->shape[d])
                abort(); /* accepted an overflowing shape */
            n *= (size_t)t->shape[d];
        }
        if (n != t->nbytes || t->nbytes > file_bytes)
            abort();
        if (st_find(s, t->name) != t)
            abort();
        if (t->nbytes) {
            sink ^= t->data[0];
            sink ^= t->data[t->nbytes - 1];
        }
    }
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 20)
        return 0;
    const char *dir = fuzz_tmpdir();
    st_set *s = NULL;
    perr err;
    if (size && data[0] == '{') {
        static const char sep[] = "\n----\n";
        const uint8_t *cut = memmem(data, size, sep, sizeof sep - 1);
        size_t index_len = cut ? (size_t)(cut - data) : size;
        const uint8_t *shard = cut ? cut + sizeof sep - 1 : data + size;
        size_t shard_len = (size_t)(data + size - shard);
        fuzz_write(dir, "model.safetensors.index.json", data, index_len);
        fuzz_write(dir, "model-00001-of-00001.safetensors", shard, shard_len);
        if (st_open_dir(dir, &s, &err) == 0) {
            check(s, shard_len);
            st_close(s);
        }
        char path[512];
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        unlink(path);
        return 0;
    }
    fuzz_write(dir, "model.safetensors", data, size);
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (st_open_file(path, &s, &err) == 0) {
        check(s, size);
        st_close(s);
    }
    return 0;
}
