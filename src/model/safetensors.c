/* safetensors reader: u64 header length | JSON header | data. Files are mmap'd read-only. */
#include "model/safetensors.h"

#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "util/fs.h"

#define ST_MAX_HEADER (100u * 1000u * 1000u)
#define ST_MAX_FILES 256
#define ST_INDEX_MAX (64u * 1024u * 1024u)

struct st_map {
    char name[256];
    uint8_t *base;
    size_t size;
};

struct st_set {
    struct st_map *maps;
    int n_maps;
    st_tensor *tensors;
    int n_tensors, cap_tensors;
};

static const struct {
    const char *name;
    size_t size;
} dtype_info[] = {
    [ST_F32] = {"F32", 4},  [ST_F16] = {"F16", 2},   [ST_BF16] = {"BF16", 2}, [ST_U32] = {"U32", 4},
    [ST_F64] = {"F64", 8},  [ST_I8] = {"I8", 1},     [ST_I16] = {"I16", 2},   [ST_I32] = {"I32", 4},
    [ST_I64] = {"I64", 8},  [ST_U8] = {"U8", 1},     [ST_U16] = {"U16", 2},   [ST_U64] = {"U64", 8},
    [ST_BOOL] = {"BOOL", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E8M0] = {"F8_E8M0", 1},
};

const char *st_dtype_name(enum st_dtype d) { return dtype_info[d].name; }
size_t st_dtype_size(enum st_dtype d) { return dtype_info[d].size; }

static int parse_dtype(const char *s, enum st_dtype *out)
{
    for (size_t i = 0; i < sizeof dtype_info / sizeof *dtype_info; i++) {
        if (strcmp(s, dtype_info[i].name) == 0) {
            *out = (enum st_dtype)i;
            return 0;
        }
    }
    return -1;
}

/* A JSON number that is a non-negative integer exactly representable in a double. */
static int json_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || floor(d) != d)
        return -1;
    *out = (uint64_t)d;
    return 0;
}

void st_close(st_set *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n_maps; i++)
        if (s->maps[i].base)
            munmap(s->maps[i].base, s->maps[i].size);
    for (int i = 0; i < s->n_tensors; i++)
        free(s->tensors[i].name);
    free(s->maps);
    free(s->tensors);
    free(s);
}

struct span {
    uint64_t begin, end;
    const char *name;
};

static int span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end < y->end ? -1 : x->end > y->end);
}

/* Maps path and appends its tensors to s. label is the name used in messages. */
static int add_file(st_set *s, const char *path, const char *label, perr *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return perr_errno(err, "cannot open %s", label);
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return perr_set(err, "%s: not a regular file", label);
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        close(fd);
        return perr_set(err, "%s: truncated safetensors file (%zu bytes, no header)", label, size);
    }
    uint8_t *base = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (base == MAP_FAILED)
        return perr_errno(err, "cannot map %s", label);
#ifdef MADV_HUGEPAGE
    /* Weights are read whole for every token: where the kernel and file system can, let the page
     * cache hold them in 2 MB folios mapped by single page-table entries (fewer faults on first use,
     * fewer TLB misses while streaming). Only advice; an error changes nothing. */
    (void)madvise(base, size, MADV_HUGEPAGE);
#endif

    /* maps never move: tensors point at their names */
    if (s->n_maps >= ST_MAX_FILES) {
        munmap(base, size);
        return perr_set(err, "too many safetensors files");
    }
    struct st_map *m = &s->maps[s->n_maps++];
    snprintf(m->name, sizeof m->name, "%s", label);
    m->base = base;
    m->size = size;

    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)base[i] << (8 * i);
    if (hlen >= ST_MAX_HEADER)
        return perr_set(err, "%s: header length %llu exceeds the 100 MB limit", label, (unsigned long long)hlen);
    if (hlen > size - 8)
        return perr_set(err, "%s: truncated file: header of %llu bytes but file has %zu", label,
                        (unsigned long long)hlen, size);
    const char *hdr = (const char *)base + 8;
    size_t data_start = 8 + (size_t)hlen;
    size_t data_size = size - data_start;

    cJSON *root = cJSON_ParseWithLength(hdr, (size_t)hlen);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return perr_set(err, "%s: header is not a JSON object", label);
    }
    int n_entries = cJSON_GetArraySize(root);
    struct span *spans = calloc((size_t)n_entries + 1, sizeof *spans);
    if (!spans) {
        cJSON_Delete(root);
        return perr_set(err, "out of memory");
    }
    int n_spans = 0, rc = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root)
    {
        const char *name = e->string;
        if (!name) {
            rc = perr_set(err, "%s: header entry without a name", label);
            break;
        }
        if (strcmp(name, "__metadata__") == 0) {
            if (!cJSON_IsObject(e)) {
                rc = perr_set(err, "%s: __metadata__ is not an object", label);
                break;
            }
            continue;
        }
        if (!cJSON_IsObject(e)) {
            rc = perr_set(err, "%s: tensor %s: header entry is not an object", label, name);
            break;
        }
        const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
        const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        enum st_dtype dt;
        if (!cJSON_IsString(jd) || parse_dtype(jd->valuestring, &dt) != 0) {
            rc = perr_set(err, "%s: tensor %s: missing or unknown dtype", label, name);
            break;
        }
        int ndim = cJSON_IsArray(js) ? cJSON_GetArraySize(js) : -1;
        if (ndim < 0 || ndim > ST_MAX_DIMS) {
            rc = perr_set(err, "%s: tensor %s: invalid shape", label, name);
            break;
        }
        st_tensor t = {0};
        t.dtype = dt;
        t.ndim = ndim;
        /* numel * dtype size, refusing overflow */
        uint64_t nbytes = dtype_info[dt].size;
        for (int i = 0; i < ndim && rc == 0; i++) {
            uint64_t d;
            if (json_uint(cJSON_GetArrayItem(js, i), &d) != 0 || d > (1ull << 40)) {
                rc = perr_set(err, "%s: tensor %s: invalid shape", label, name);
                break;
            }
            t.shape[i] = (int64_t)d;
            if (d != 0 && nbytes > UINT64_MAX / d)
                rc = perr_set(err, "%s: tensor %s: shape too large", label, name);
            else
                nbytes *= d;
        }
        if (rc)
            break;
        uint64_t b, en;
        if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || json_uint(cJSON_GetArrayItem(jo, 0), &b) != 0 ||
            json_uint(cJSON_GetArrayItem(jo, 1), &en) != 0 || b > en) {
            rc = perr_set(err, "%s: tensor %s: invalid data_offsets", label, name);
            break;
        }
        if (en > data_size) {
            rc = perr_set(err, "%s: tensor %s: data_offsets [%llu, %llu) beyond the end of the file (%zu data bytes); "
                               "the file is truncated or its header is wrong",
                          label, name, (unsigned long long)b, (unsigned long long)en, data_size);
            break;
        }
        if (en - b != nbytes) {
            rc = perr_set(err, "%s: tensor %s: data_offsets span %llu bytes but dtype %s and shape need %llu", label,
                          name, (unsigned long long)(en - b), dtype_info[dt].name, (unsigned long long)nbytes);
            break;
        }
        if (st_find(s, name)) {
            rc = perr_set(err, "%s: tensor %s appears more than once", label, name);
            break;
        }
        t.name = strdup(name);
        t.data = base + data_start + b;
        t.nbytes = (size_t)nbytes;
        t.file = m->name;
        if (!t.name) {
            rc = perr_set(err, "out of memory");
            break;
        }
        if (s->n_tensors == s->cap_tensors) {
            int cap = s->cap_tensors ? s->cap_tensors * 2 : 256;
            st_tensor *nt = realloc(s->tensors, (size_t)cap * sizeof *nt);
            if (!nt) {
                free(t.name);
                rc = perr_set(err, "out of memory");
                break;
            }
            s->tensors = nt;
            s->cap_tensors = cap;
        }
        /* insertion keeps the array sorted by name for bsearch */
        int pos = s->n_tensors;
        while (pos > 0 && strcmp(s->tensors[pos - 1].name, name) > 0)
            pos--;
        memmove(&s->tensors[pos + 1], &s->tensors[pos], (size_t)(s->n_tensors - pos) * sizeof *s->tensors);
        s->tensors[pos] = t;
        s->n_tensors++;
        if (nbytes > 0)
            spans[n_spans++] = (struct span){b, en, s->tensors[pos].name};
    }
    if (rc == 0) {
        /* two tensors must never share bytes */
        qsort(spans, (size_t)n_spans, sizeof *spans, span_cmp);
        for (int i = 1; i < n_spans; i++) {
            if (spans[i].begin < spans[i - 1].end) {
                rc = perr_set(err, "%s: tensors %s and %s overlap in the data section", label, spans[i - 1].name,
                              spans[i].name);
                break;
            }
        }
    }
    free(spans);
    cJSON_Delete(root);
    return rc;
}

static int tensor_cmp_key(const void *key, const void *elem)
{
    return strcmp((const char *)key, ((const st_tensor *)elem)->name);
}

static st_tensor *lookup(const st_set *s, const char *name)
{
    if (!s || s->n_tensors == 0)
        return NULL;
    return bsearch(name, s->tensors, (size_t)s->n_tensors, sizeof *s->tensors, tensor_cmp_key);
}

const st_tensor *st_find(const st_set *s, const char *name) { return lookup(s, name); }

const st_tensor *st_use(st_set *s, const char *name)
{
    st_tensor *t = lookup(s, name);
    if (t)
        t->used = true;
    return t;
}

const st_tensor *st_first_unused(const st_set *s)
{
    for (int i = 0; i < s->n_tensors; i++)
        if (!s->tensors[i].used)
            return &s->tensors[i];
    return NULL;
}

int st_count(const st_set *s) { return s->n_tensors; }
const st_tensor *st_at(const st_set *s, int i) { return &s->tensors[i]; }

size_t st_mapped_bytes(const st_set *s)
{
    size_t n = 0;
    for (int i = 0; i < s->n_maps; i++)
        n += s->maps[i].size;
    return n;
}

size_t st_warm(const st_set *s, const volatile int *stop)
{
    /* MADV_WILLNEED would be the hint for this, but the kernel reads only part of a large file for
     * it (358 MB of a 1.7 GB one here); touching the pages in order is a read it does not cut short. */
    const size_t page = 4096;
    size_t done = 0;
    unsigned sum = 0;
    for (int i = 0; i < s->n_maps && !*stop; i++) {
        const volatile uint8_t *p = s->maps[i].base;
        for (size_t o = 0; o < s->maps[i].size && !*stop; o += page) {
            sum += p[o];
            done += s->maps[i].size - o < page ? s->maps[i].size - o : page;
        }
    }
    (void)sum;
    return done;
}

int st_open_file(const char *path, st_set **out, perr *err)
{
    st_set *s = calloc(1, sizeof *s);
    if (s && !(s->maps = calloc(ST_MAX_FILES, sizeof *s->maps))) {
        free(s);
        s = NULL;
    }
    if (!s)
        return perr_set(err, "out of memory");
    const char *slash = strrchr(path, '/');
    if (add_file(s, path, slash ? slash + 1 : path, err) != 0) {
        st_close(s);
        return -1;
    }
    *out = s;
    return 0;
}

/* A shard name from index.json must be a plain file name inside the model folder. */
static bool plain_file_name(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len > 200 || strcmp(n, ".") == 0 || strcmp(n, "..") == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (n[i] == '/' || n[i] == '\\' || (unsigned char)n[i] < 0x20)
            return false;
    return true;
}

int st_open_dir(const char *dir, st_set **out, perr *err)
{
    char path[4096];
    st_set *s = calloc(1, sizeof *s);
    if (s && !(s->maps = calloc(ST_MAX_FILES, sizeof *s->maps))) {
        free(s);
        s = NULL;
    }
    if (!s)
        return perr_set(err, "out of memory");
    if (path_join(path, sizeof path, dir, "model.safetensors.index.json", err) != 0)
        goto fail;
    if (!file_exists(path)) {
        if (path_join(path, sizeof path, dir, "model.safetensors", err) != 0)
            goto fail;
        if (add_file(s, path, "model.safetensors", err) != 0)
            goto fail;
        *out = s;
        return 0;
    }

    char *text = NULL;
    size_t len = 0;
    if (read_file(path, ST_INDEX_MAX, &text, &len, err) != 0)
        goto fail;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        perr_set(err, "model.safetensors.index.json: no weight_map object");
        goto fail;
    }
    const cJSON *e;
    int rc = 0;
    cJSON_ArrayForEach(e, wm)
    {
        if (!cJSON_IsString(e) || !plain_file_name(e->valuestring)) {
            rc = perr_set(err, "model.safetensors.index.json: tensor %s: file must be a plain name in the model folder",
                          e->string ? e->string : "?");
            break;
        }
        bool seen = false;
        for (int i = 0; i < s->n_maps && !seen; i++)
            seen = strcmp(s->maps[i].name, e->valuestring) == 0;
        if (seen)
            continue;
        if (path_join(path, sizeof path, dir, e->valuestring, err) != 0 ||
            add_file(s, path, e->valuestring, err) != 0) {
            rc = -1;
            break;
        }
    }
    /* every tensor the index promises must be in the file it names */
    if (rc == 0) {
        cJSON_ArrayForEach(e, wm)
        {
            const st_tensor *t = st_find(s, e->string);
            if (!t || strcmp(t->file, e->valuestring) != 0) {
                rc = perr_set(err, "model.safetensors.index.json: tensor %s is not in %s", e->string, e->valuestring);
                break;
            }
        }
    }
    if (rc == 0 && s->n_maps == 0)
        rc = perr_set(err, "model.safetensors.index.json: weight_map is empty");
    cJSON_Delete(root);
    if (rc != 0)
        goto fail;
    *out = s;
    return 0;
fail:
    st_close(s);
    return -1;
}
