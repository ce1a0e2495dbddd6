#include "hub/blobhash.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "util/fs.h"

int etag_hash_kind(const char *etag)
{
    size_t n = strlen(etag);
    if (n != 64 && n != 40)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((etag[i] >= '0' && etag[i] <= '9') || (etag[i] >= 'a' && etag[i] <= 'f')))
            return 0;
    return (int)n;
}

int blob_hasher_init(blob_hasher *h, int kind, long long size, perr *err)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    h->ctx = ctx;
    if (!ctx || (kind != 64 && kind != 40))
        return perr_set(err, "cannot start a hash");
    if (EVP_DigestInit_ex(ctx, kind == 64 ? EVP_sha256() : EVP_sha1(), NULL) != 1)
        return perr_set(err, "cannot start a hash");
    if (kind == 40) {
        char hdr[64];
        int w = snprintf(hdr, sizeof hdr, "blob %lld", size);
        EVP_DigestUpdate(ctx, hdr, (size_t)w + 1); /* includes the NUL */
    }
    return 0;
}

void blob_hasher_update(blob_hasher *h, const void *data, size_t len)
{
    EVP_DigestUpdate(h->ctx, data, len);
}

void blob_hasher_final(blob_hasher *h, char *hex)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(h->ctx, md, &n);
    for (unsigned int i = 0; i < n; i++)
        sprintf(hex + 2 * i, "%02x", md[i]);
    hex[2 * n] = '\0';
    blob_hasher_free(h);
}

void blob_hasher_free(blob_hasher *h)
{
    EVP_MD_CTX_free(h->ctx);
    h->ctx = NULL;
}

int blob_hash_file(const char *path, const char *etag, bool *match, char *hex, perr *err)
{
    int kind = etag_hash_kind(etag);
    *match = false;
    hex[0] = '\0';
    if (!kind)
        return perr_set(err, "%s: '%s' is not a content hash", path, etag);
    struct stat st;
    int fd = open_regular_file(path, &st, err);
    if (fd < 0)
        return -1;
    blob_hasher h;
    if (blob_hasher_init(&h, kind, (long long)st.st_size, err) != 0) {
        blob_hasher_free(&h);
        close(fd);
        return -1;
    }
    size_t cap = 4u << 20;
    char *buf = malloc(cap);
    if (!buf) {
        blob_hasher_free(&h);
        close(fd);
        return perr_set(err, "out of memory");
    }
    for (;;) {
        ssize_t r = read(fd, buf, cap);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            perr_errno(err, "cannot read %s", path);
            free(buf);
            blob_hasher_free(&h);
            close(fd);
            return -1;
        }
        if (r == 0)
            break;
        blob_hasher_update(&h, buf, (size_t)r);
    }
    free(buf);
    close(fd);
    blob_hasher_final(&h, hex);
    *match = strcmp(hex, etag) == 0;
    return 0;
}
