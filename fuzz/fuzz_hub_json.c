/* The hub's JSON answers: the revision (its "sha" decides the snapshot folder) and the tree listing (file
 * names become paths on disk, sizes and hashes drive the download). Also the downloader's own resume
 * sidecar, which is read back from disk after a crash. Any bytes: no crash, and no accepted file name
 * can leave the snapshot folder. The parsers are static in src/hub/download.c, so that file is compiled
 * into this target. Input: one byte picks the parser (tree page, revision, sidecar), the rest is the text.
 * Needs: src/hub/download.c */
#include "fuzz.h"

#include "hub/download.c"

/* Relative, and no segment is empty, "." or "..". */
static bool stays_inside(const char *path)
{
    if (path[0] == '/')
        return false;
    for (const char *seg = path;;) {
        const char *slash = strchr(seg, '/');
        size_t len = slash ? (size_t)(slash - seg) : strlen(seg);
        if (len == 0 || (len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
            return false;
        if (!slash)
            return true;
        seg = slash + 1;
    }
}

static void check_tree(const char *body, size_t len)
{
    entry *list = NULL;
    int n = 0, cap = 0;
    perr err;
    if (parse_tree_page(body, len, &list, &n, &cap, &err) == 0) {
        for (int i = 0; i < n; i++) {
            const char *path = list[i].path;
            if (!stays_inside(path) || list[i].size < 0 || !etag_hash_kind(list[i].etag))
                abort(); /* an accepted entry must be safe to use as a path under the snapshot */
            (void)hub_file_wanted(path, NULL, 0, NULL, 0);
        }
    }
    free(list);
}

static void check_revision(const char *body, size_t len)
{
    /* What resolve_revision does with the answer's body. */
    cJSON *root = cJSON_ParseWithLength(body, len);
    const char *sha = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "sha"));
    if (sha && is_commit(sha) && (strlen(sha) != 40 || strchr(sha, '/') || strchr(sha, '.')))
        abort(); /* a commit id becomes a folder name */
    if (sha)
        (void)revision_safe(sha);
    cJSON_Delete(root);
}

static void check_sidecar(const char *body, size_t len)
{
    static dfile f;
    const char *dir = fuzz_tmpdir();
    fuzz_write(dir, "sidecar", body, len);
    snprintf(f.sidecar, sizeof f.sidecar, "%s/sidecar", dir);
    f.size = 44579402;
    if (load_sidecar(&f)) {
        long long at = 0;
        if (f.nchunks < 1 || f.nchunks > MAX_CHUNKS)
            abort();
        for (int i = 0; i < f.nchunks; i++) {
            const chunk *c = &f.chunks[i];
            if (c->start != at || c->end <= c->start || c->done < 0 || c->done > c->end - c->start)
                abort(); /* resuming from it must only ever write inside the file */
            at = c->end;
        }
        if (at != f.size)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 256 * 1024)
        return 0;
    char *body = fuzz_strdup(data + 1, size - 1);
    switch (data[0] % 3) {
    case 0: check_tree(body, size - 1); break;
    case 1: check_revision(body, size - 1); break;
    default: check_sidecar(body, size - 1); break;
    }
    free(body);
    return 0;
}
