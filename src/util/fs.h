/* Small file-system helpers shared by every module. */
#ifndef PUNIE_UTIL_FS_H
#define PUNIE_UTIL_FS_H

#include <stdbool.h>
#include <stddef.h>

#include "util/err.h"

/* Joins a and b with one '/', into out (size n). Returns -1 (with err) if it does not fit. */
int path_join(char *out, size_t n, const char *a, const char *b, perr *err);

/* mkdir -p with mode 0755. */
int mkdir_p(const char *path, perr *err);

struct stat;
/* Opens path read-only and checks it is a regular file; fills *st. Returns the fd, or -1 with err. */
int open_regular_file(const char *path, struct stat *st, perr *err);

/* Reads a whole regular file into a NUL-terminated malloc'd buffer; refuses files over max_bytes. */
int read_file(const char *path, size_t max_bytes, char **out, size_t *len, perr *err);

/* Writes data to path atomically: a temporary file in the same folder, fsync, rename. */
int write_file_atomic(const char *path, const void *data, size_t len, perr *err);

bool file_exists(const char *path);  /* follows symlinks: a dangling link is false */
bool dir_exists(const char *path);

#endif
