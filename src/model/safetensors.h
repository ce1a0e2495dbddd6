/* Read-only access to safetensors files (spec/engine.md §4), mapped with mmap so weights are never
 * copied. Every header field is validated; tensor data may be unaligned. */
#ifndef PUNIE_MODEL_SAFETENSORS_H
#define PUNIE_MODEL_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

enum st_dtype {
    ST_F32, ST_F16, ST_BF16, ST_U32, ST_F64, ST_I8, ST_I16, ST_I32, ST_I64,
    ST_U8, ST_U16, ST_U64, ST_BOOL, ST_F8_E4M3, ST_F8_E8M0,
};

#define ST_MAX_DIMS 8

typedef struct st_tensor {
    char *name;
    enum st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const uint8_t *data;  /* inside the mapping; unaligned */
    size_t nbytes;
    const char *file;     /* base name of the file holding it */
    bool used;            /* asked for through st_use */
} st_tensor;

typedef struct st_set st_set;

/* Opens a model folder: the shards named in model.safetensors.index.json when present, else
 * model.safetensors. Tensor names must be unique across files. */
int st_open_dir(const char *dir, st_set **out, perr *err);

/* Opens one file (tests, tools). */
int st_open_file(const char *path, st_set **out, perr *err);

void st_close(st_set *s);

const st_tensor *st_find(const st_set *s, const char *name); /* NULL if absent */
/* st_find that also records the tensor as consumed, so a loader can refuse weights it would ignore. */
const st_tensor *st_use(st_set *s, const char *name);
const st_tensor *st_first_unused(const st_set *s);           /* NULL when every tensor was used */
int st_count(const st_set *s);
const st_tensor *st_at(const st_set *s, int i);              /* sorted by name */
size_t st_mapped_bytes(const st_set *s);

const char *st_dtype_name(enum st_dtype d);
size_t st_dtype_size(enum st_dtype d);

/* Reads the mapped files into memory in file order (one byte of every page, so the kernel's readahead
 * streams them), stopping early once *stop is set; returns the bytes covered. For a server between its
 * start and its first request: otherwise that request waits for the weights to come from disk. */
size_t st_warm(const st_set *s, const volatile int *stop);

#endif
