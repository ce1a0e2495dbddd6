/* Managing what is in the models directory: listing, removing and re-verifying models. */
#ifndef PUNIE_HUB_CACHE_H
#define PUNIE_HUB_CACHE_H

#include <stdbool.h>

#include "hub/local.h"
#include "util/err.h"

#define CACHE_MAX_REVS 16

typedef struct cached_rev {
    char rev[256];       /* ref name, or "" for a snapshot no ref points at */
    char commit[64];
    enum local_state state;
} cached_rev;

typedef struct cached_model {
    char repo[256];
    long long size_on_disk;   /* blobs (including partial downloads) */
    bool has_incomplete;      /* an interrupted download is waiting to be resumed */
    int nrevs;
    cached_rev revs[CACHE_MAX_REVS];
} cached_model;

/* Every models--ORG--NAME folder in models_dir, sorted by repo. *out is malloc'd. */
int cache_scan(const char *models_dir, cached_model **out, int *n, perr *err);

/* Removes repo (rev NULL: all of it; else that revision's snapshot and the refs naming it). Blobs still
 * linked from a remaining snapshot are kept. */
int cache_remove(const char *models_dir, const char *repo, const char *rev, long long *freed, perr *err);

/* Re-hashes every file of repo's snapshot for rev (NULL = main). report(path, status) is called per file
 * with status "ok", "MISMATCH", "MISSING" or "unchecked". Counts problems in *bad. */
typedef void (*verify_report)(const char *path, const char *status, void *user);
int cache_verify(const char *models_dir, const char *repo, const char *rev, verify_report report, void *user,
                 int *checked, int *bad, char *snapshot, size_t snapshot_n, perr *err);

#endif
