/* Downloading one model repository into the Hugging Face cache layout inside the models directory:
 * verified (sha256 / git blob sha1 while streaming), resumable across runs, parallel, atomic. */
#ifndef PUNIE_HUB_DOWNLOAD_H
#define PUNIE_HUB_DOWNLOAD_H

#include <stdbool.h>

#include "hub/local.h"
#include "util/err.h"

typedef struct download_opts {
    const char *repo;
    const char *revision;     /* NULL = "main" */
    const char *models_dir;   /* resolved, not NULL */
    int jobs;                 /* parallel connections */
    bool quiet;               /* no progress output */
    const char **include;     /* fnmatch patterns replacing the default selection; NULL/0 = default */
    int n_include;
    const char **exclude;
    int n_exclude;
} download_opts;

typedef struct download_result {
    char snapshot_dir[PUNIE_PATH_MAX];
    char commit[64];
    int files_total;
    int files_fetched;
    long long bytes_total;
    bool from_cache_offline;  /* HF_HUB_OFFLINE and the snapshot was already there */
    bool hub_unreachable;     /* the hub could not be reached; the complete local copy was used */
} download_result;

int hub_download(const download_opts *o, download_result *res, perr *err);

/* Whether a repo file is part of what a model needs (or matches the user's patterns). */
bool hub_file_wanted(const char *path, const char **include, int n_include, const char **exclude, int n_exclude);

/* Rejects server-supplied file names that could escape the snapshot folder. */
bool hub_path_safe(const char *path);

#endif
