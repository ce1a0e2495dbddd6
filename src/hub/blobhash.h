/* Content hashes that name blobs in the Hub cache: sha256 for LFS files (64 hex), git blob sha1 for the
 * others (40 hex; sha1 over "blob <size>\0" followed by the content). */
#ifndef PUNIE_HUB_BLOBHASH_H
#define PUNIE_HUB_BLOBHASH_H

#include <stdbool.h>
#include <stddef.h>

#include "util/err.h"

typedef struct blob_hasher {
    void *ctx; /* EVP_MD_CTX */
} blob_hasher;

/* Kind of an etag: 64 -> sha256, 40 -> git sha1, 0 -> not a content hash. Lowercase hex only. */
int etag_hash_kind(const char *etag);

int blob_hasher_init(blob_hasher *h, int kind, long long size, perr *err);
void blob_hasher_update(blob_hasher *h, const void *data, size_t len);
/* Writes lowercase hex into hex (at least 65 bytes) and frees the context. */
void blob_hasher_final(blob_hasher *h, char *hex);
void blob_hasher_free(blob_hasher *h);

/* Hashes a whole file the way etag says; *match tells whether it equals etag. */
int blob_hash_file(const char *path, const char *etag, bool *match, char *hex, perr *err);

#endif
