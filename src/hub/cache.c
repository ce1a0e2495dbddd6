#include "hub/cache.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hub/blobhash.h"
#include "util/fs.h"

static bool read_ref(const char *path, char *commit, size_t n)
{
    char *text = NULL;
    size_t len = 0;
    if (read_file(path, 256, &text, &len, NULL) != 0)
        return false;
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' '))
        text[--len] = '\0';
    bool ok = etag_hash_kind(text) == 40;
    if (ok)
        snprintf(commit, n, "%s", text);
    free(text);
    return ok;
}

/* refs/<name>, nested names like refs/pr/1 included. */
static void scan_refs(const char *dir, const char *prefix, cached_model *m, int depth)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) && m->nrevs < CACHE_MAX_REVS) {
        if (e->d_name[0] == '.')
            continue;
        char path[PUNIE_PATH_MAX], name[256];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        snprintf(name, sizeof name, "%s%s", prefix, e->d_name);
        if (dir_exists(path)) {
            if (depth < 3) {
                char np[256];
                snprintf(np, sizeof np, "%s/", name);
                scan_refs(path, np, m, depth + 1);
            }
            continue;
        }
        if (strstr(e->d_name, ".tmp."))
            continue;
        cached_rev *r = &m->revs[m->nrevs];
        if (read_ref(path, r->commit, sizeof r->commit)) {
            snprintf(r->rev, sizeof r->rev, "%s", name);
            m->nrevs++;
        }
    }
    closedir(d);
}

static long long dir_usage(const char *dir, bool *incomplete)
{
    long long total = 0;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char path[PUNIE_PATH_MAX];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (e->d_name[0] == '.' || lstat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        total += (long long)st.st_blocks * 512;
        if (strstr(e->d_name, ".incomplete"))
            *incomplete = true;
    }
    closedir(d);
    return total;
}

static int cmp_model(const void *a, const void *b)
{
    return strcmp(((const cached_model *)a)->repo, ((const cached_model *)b)->repo);
}

int cache_scan(const char *models_dir, cached_model **out, int *n, perr *err)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(models_dir);
    if (!d) {
        if (errno == ENOENT)
            return 0;
        return perr_errno(err, "cannot read %s", models_dir);
    }
    int cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "models--", 8) != 0)
            continue;
        char repo[256];
        const char *rest = e->d_name + 8, *sep = strstr(rest, "--");
        if (!sep || snprintf(repo, sizeof repo, "%.*s/%s", (int)(sep - rest), rest, sep + 2) >= (int)sizeof repo ||
            !repo_id_valid(repo))
            continue;
        char repo_dir[PUNIE_PATH_MAX];
        snprintf(repo_dir, sizeof repo_dir, "%s/%s", models_dir, e->d_name);
        if (!dir_exists(repo_dir))
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 8;
            cached_model *nm = realloc(*out, (size_t)cap * sizeof *nm);
            if (!nm) {
                closedir(d);
                return perr_set(err, "out of memory");
            }
            *out = nm;
        }
        cached_model *m = &(*out)[(*n)++];
        memset(m, 0, sizeof *m);
        snprintf(m->repo, sizeof m->repo, "%s", repo);
        char sub[PUNIE_PATH_MAX + 16];
        snprintf(sub, sizeof sub, "%s/refs", repo_dir);
        scan_refs(sub, "", m, 0);
        snprintf(sub, sizeof sub, "%s/blobs", repo_dir);
        m->size_on_disk = dir_usage(sub, &m->has_incomplete);
        for (int i = 0; i < m->nrevs; i++)
            local_model_state(models_dir, repo, m->revs[i].rev, &m->revs[i].state, NULL, 0, NULL);
        /* Snapshots that no ref names (downloaded by commit, or an interrupted first download). */
        snprintf(sub, sizeof sub, "%s/snapshots", repo_dir);
        DIR *sd = opendir(sub);
        struct dirent *se;
        while (sd && (se = readdir(sd)) && m->nrevs < CACHE_MAX_REVS) {
            if (etag_hash_kind(se->d_name) != 40)
                continue;
            bool named = false;
            for (int i = 0; i < m->nrevs; i++)
                named |= strcmp(m->revs[i].commit, se->d_name) == 0;
            if (named)
                continue;
            cached_rev *r = &m->revs[m->nrevs++];
            r->rev[0] = '\0';
            snprintf(r->commit, sizeof r->commit, "%s", se->d_name);
            local_model_state(models_dir, repo, r->commit, &r->state, NULL, 0, NULL);
            /* Without a ref, punie's downloader has not finished it (it writes the ref last). */
            if (r->state == LOCAL_COMPLETE && m->has_incomplete)
                r->state = LOCAL_PARTIAL;
        }
        if (sd)
            closedir(sd);
    }
    closedir(d);
    if (*n > 1)
        qsort(*out, (size_t)*n, sizeof **out, cmp_model);
    return 0;
}

/* ---- removal ----------------------------------------------------------------------------------- */

static long long removed_bytes;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)ftw;
    if (flag == FTW_F && S_ISREG(st->st_mode))
        removed_bytes += (long long)st->st_blocks * 512;
    return remove(path) != 0 && errno != ENOENT ? -1 : 0;
}

static int rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -1;
    return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The blob name a snapshot link points to (the last component of its target), or NULL. */
static const char *link_blob_name(const char *path, char *target, size_t n)
{
    ssize_t len = readlink(path, target, n - 1);
    if (len <= 0)
        return NULL;
    target[len] = '\0';
    const char *base = strrchr(target, '/');
    return base ? base + 1 : target;
}

/* Blob names linked from the snapshots that remain. */
static char **keep_list;
static int keep_n, keep_cap;

static int collect_link(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if (flag != FTW_SL)
        return 0;
    char target[PUNIE_PATH_MAX];
    const char *base = link_blob_name(path, target, sizeof target);
    if (!base)
        return 0;
    if (keep_n == keep_cap) {
        keep_cap = keep_cap ? keep_cap * 2 : 64;
        char **nk = realloc(keep_list, (size_t)keep_cap * sizeof *nk);
        if (!nk)
            return -1;
        keep_list = nk;
    }
    keep_list[keep_n++] = strdup(base);
    return 0;
}

int cache_remove(const char *models_dir, const char *repo, const char *rev, long long *freed, perr *err)
{
    char folder[512], repo_dir[PUNIE_PATH_MAX], path[PUNIE_PATH_MAX + 300];
    if (!repo_id_valid(repo))
        return perr_set(err, "invalid repository id '%s' (expected NAMESPACE/NAME)", repo);
    if (repo_folder_name(repo, folder, sizeof folder, err) != 0 ||
        path_join(repo_dir, sizeof repo_dir, models_dir, folder, err) != 0)
        return -1;
    if (!dir_exists(repo_dir))
        return perr_set(err, "model %s is not in %s (see 'punie models')", repo, models_dir);
    removed_bytes = 0;
    if (!rev) {
        snprintf(path, sizeof path, "%s/.locks/%s", models_dir, folder);
        rm_rf(path);
        if (rm_rf(repo_dir) != 0)
            return perr_errno(err, "cannot remove %s", repo_dir);
        *freed = removed_bytes;
        return 0;
    }
    /* One revision: its refs and snapshot go, then every blob nothing links to any more. */
    char commit[64] = "";
    if (etag_hash_kind(rev) == 40)
        snprintf(commit, sizeof commit, "%s", rev);
    else if (strstr(rev, "..") || rev[0] == '/' ||
             (snprintf(path, sizeof path, "%s/refs/%s", repo_dir, rev), !read_ref(path, commit, sizeof commit)))
        return perr_set(err, "revision '%s' of %s is not downloaded", rev, repo);
    snprintf(path, sizeof path, "%s/snapshots/%s", repo_dir, commit);
    if (!dir_exists(path))
        return perr_set(err, "revision '%s' of %s is not downloaded", rev, repo);
    cached_model m;
    memset(&m, 0, sizeof m);
    snprintf(path, sizeof path, "%s/refs", repo_dir);
    scan_refs(path, "", &m, 0);
    for (int i = 0; i < m.nrevs; i++)
        if (strcmp(m.revs[i].commit, commit) == 0) {
            snprintf(path, sizeof path, "%s/refs/%s", repo_dir, m.revs[i].rev);
            unlink(path);
        }
    snprintf(path, sizeof path, "%s/snapshots/%s", repo_dir, commit);
    if (rm_rf(path) != 0)
        return perr_errno(err, "cannot remove %s", path);
    snprintf(path, sizeof path, "%s/snapshots", repo_dir);
    keep_n = 0;
    nftw(path, collect_link, 16, FTW_PHYS);
    snprintf(path, sizeof path, "%s/blobs", repo_dir);
    DIR *d = opendir(path);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!etag_hash_kind(e->d_name))
            continue; /* partial downloads and foreign files stay */
        bool keep = false;
        for (int i = 0; i < keep_n && !keep; i++)
            keep = strcmp(keep_list[i], e->d_name) == 0;
        if (keep)
            continue;
        char blob[PUNIE_PATH_MAX + 400];
        struct stat st;
        snprintf(blob, sizeof blob, "%s/%s", path, e->d_name);
        if (lstat(blob, &st) == 0 && unlink(blob) == 0)
            removed_bytes += (long long)st.st_blocks * 512;
    }
    if (d)
        closedir(d);
    for (int i = 0; i < keep_n; i++)
        free(keep_list[i]);
    keep_n = 0;
    /* Nothing left: drop the whole folder so the model no longer shows up. */
    snprintf(path, sizeof path, "%s/snapshots", repo_dir);
    DIR *sd = opendir(path);
    bool any = false;
    while (sd && (e = readdir(sd)))
        any |= e->d_name[0] != '.';
    if (sd)
        closedir(sd);
    if (!any) {
        rm_rf(repo_dir);
        snprintf(path, sizeof path, "%s/.locks/%s", models_dir, folder);
        rm_rf(path);
    }
    *freed = removed_bytes;
    return 0;
}

/* ---- verification ------------------------------------------------------------------------------ */

typedef struct vctx {
    verify_report report;
    void *user;
    size_t prefix;
    int checked, bad;
} vctx;

static vctx *cur_v;

static int verify_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    vctx *v = cur_v;
    const char *rel = path + v->prefix;
    if (flag == FTW_D || flag == FTW_DP)
        return 0;
    if (flag != FTW_SL) {
        v->report(rel, "unchecked", v->user);
        return 0;
    }
    char target[PUNIE_PATH_MAX];
    const char *base = link_blob_name(path, target, sizeof target);
    if (!base)
        return 0;
    v->checked++;
    if (!file_exists(path)) {
        v->bad++;
        v->report(rel, "MISSING", v->user);
        return 0;
    }
    if (!etag_hash_kind(base)) {
        v->report(rel, "unchecked", v->user);
        return 0;
    }
    bool match = false;
    char hex[72];
    perr e;
    if (blob_hash_file(path, base, &match, hex, &e) != 0 || !match) {
        v->bad++;
        v->report(rel, "MISMATCH", v->user);
    } else {
        v->report(rel, "ok", v->user);
    }
    return 0;
}

int cache_verify(const char *models_dir, const char *repo, const char *rev, verify_report report, void *user,
                 int *checked, int *bad, char *snapshot, size_t snapshot_n, perr *err)
{
    char folder[512], repo_dir[PUNIE_PATH_MAX], commit[64] = "", path[PUNIE_PATH_MAX + 300];
    if (!rev)
        rev = "main";
    if (!repo_id_valid(repo))
        return perr_set(err, "invalid repository id '%s' (expected NAMESPACE/NAME)", repo);
    if (repo_folder_name(repo, folder, sizeof folder, err) != 0 ||
        path_join(repo_dir, sizeof repo_dir, models_dir, folder, err) != 0)
        return -1;
    if (!dir_exists(repo_dir))
        return perr_set(err, "model %s is not in %s", repo, models_dir);
    if (etag_hash_kind(rev) == 40)
        snprintf(commit, sizeof commit, "%s", rev);
    else if (strstr(rev, "..") ||
             (snprintf(path, sizeof path, "%s/refs/%s", repo_dir, rev), !read_ref(path, commit, sizeof commit)))
        return perr_set(err, "model %s has no complete download of revision '%s' (it may be partial; run "
                             "punie download-model %s to finish it)", repo, rev, repo);
    snprintf(path, sizeof path, "%s/snapshots/%s", repo_dir, commit);
    if (!dir_exists(path))
        return perr_set(err, "snapshot %s of %s is missing", commit, repo);
    snprintf(snapshot, snapshot_n, "%s", path);
    vctx v = {report, user, strlen(path) + 1, 0, 0};
    cur_v = &v;
    nftw(path, verify_entry, 16, FTW_PHYS);
    cur_v = NULL;
    *checked = v.checked;
    *bad = v.bad;
    return 0;
}
