#include "hub/local.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "util/fs.h"

int models_dir_resolve(const char *flag, char *out, size_t n, bool *is_default, perr *err)
{
    const char *env = getenv("PUNIE_MODELS_DIR");
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    int w;
    if (is_default)
        *is_default = false;
    if (flag && *flag)
        w = snprintf(out, n, "%s", flag);
    else if (env && *env)
        w = snprintf(out, n, "%s", env);
    else {
        if (is_default)
            *is_default = true;
        if (xdg && *xdg == '/')
            w = snprintf(out, n, "%s/punie/models", xdg);
        else if (home && *home)
            w = snprintf(out, n, "%s/.cache/punie/models", home);
        else
            return perr_set(err, "cannot find the models directory: HOME is not set (use --models-dir)");
    }
    if (w < 0 || (size_t)w >= n)
        return perr_set(err, "models directory path is too long");
    /* Strip trailing slashes so hints print cleanly. */
    size_t len = strlen(out);
    while (len > 1 && out[len - 1] == '/')
        out[--len] = '\0';
    return 0;
}

static bool repo_part_valid(const char *s, size_t len)
{
    if (len == 0 || len > 96)
        return false;
    if (s[0] == '.' || s[0] == '-' || s[len - 1] == '.' || s[len - 1] == '-')
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isalnum(c) || c == '.' || c == '_' || c == '-'))
            return false;
        if (i + 1 < len && ((c == '-' && s[i + 1] == '-') || (c == '.' && s[i + 1] == '.')))
            return false;
    }
    return true;
}

bool repo_id_valid(const char *repo)
{
    if (!repo)
        return false;
    const char *slash = strchr(repo, '/');
    if (!slash || strchr(slash + 1, '/'))
        return false;
    return repo_part_valid(repo, (size_t)(slash - repo)) && repo_part_valid(slash + 1, strlen(slash + 1));
}

int repo_folder_name(const char *repo, char *out, size_t n, perr *err)
{
    if (!repo_id_valid(repo))
        return perr_set(err, "invalid repository id '%s' (expected NAMESPACE/NAME)", repo ? repo : "");
    const char *slash = strchr(repo, '/');
    int w = snprintf(out, n, "models--%.*s--%s", (int)(slash - repo), repo, slash + 1);
    if (w < 0 || (size_t)w >= n)
        return perr_set(err, "repository id too long");
    return 0;
}

static bool has_file(const char *dir, const char *name)
{
    char p[PUNIE_PATH_MAX];
    if (path_join(p, sizeof p, dir, name, NULL) != 0)
        return false;
    return file_exists(p);
}

bool model_dir_complete(const char *dir)
{
    static const char *required[] = {"config.json", "tokenizer.json", "tokenizer_config.json"};
    for (size_t i = 0; i < sizeof required / sizeof *required; i++)
        if (!has_file(dir, required[i]))
            return false;
    char idx[PUNIE_PATH_MAX];
    if (path_join(idx, sizeof idx, dir, "model.safetensors.index.json", NULL) != 0)
        return false;
    if (!file_exists(idx))
        return has_file(dir, "model.safetensors");
    char *text = NULL;
    if (read_file(idx, 64u << 20, &text, NULL, NULL) != 0)
        return false;
    cJSON *root = cJSON_Parse(text);
    free(text);
    cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    bool ok = cJSON_IsObject(map) && map->child != NULL;
    for (cJSON *it = ok ? map->child : NULL; it && ok; it = it->next) {
        const char *f = cJSON_GetStringValue(it);
        /* The index is data from outside: only plain file names inside the folder count. */
        ok = f && *f && !strchr(f, '/') && strcmp(f, "..") != 0 && strcmp(f, ".") != 0 && has_file(dir, f);
    }
    cJSON_Delete(root);
    return ok;
}

static bool commit_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i]))
            return false;
    return true;
}

int local_model_state(const char *models_dir, const char *repo, const char *rev, enum local_state *state,
                      char *snapshot_dir, size_t n, perr *err)
{
    char folder[512], repo_dir[PUNIE_PATH_MAX], ref_path[PUNIE_PATH_MAX];
    if (repo_folder_name(repo, folder, sizeof folder, err) != 0)
        return -1;
    if (path_join(repo_dir, sizeof repo_dir, models_dir, folder, err) != 0)
        return -1;
    *state = LOCAL_MISSING;
    if (!dir_exists(repo_dir))
        return 0;
    *state = LOCAL_PARTIAL;
    if (!rev)
        rev = "main";
    char commit[128] = {0};
    if (commit_valid(rev) && strlen(rev) == 40) {
        snprintf(commit, sizeof commit, "%s", rev);
    } else {
        char refname[600];
        snprintf(refname, sizeof refname, "refs/%s", rev);
        if (strstr(rev, "..") || path_join(ref_path, sizeof ref_path, repo_dir, refname, err) != 0)
            return 0;
        char *text = NULL;
        size_t len = 0;
        if (read_file(ref_path, 256, &text, &len, NULL) != 0)
            return 0;
        while (len > 0 && isspace((unsigned char)text[len - 1]))
            text[--len] = '\0';
        if (commit_valid(text))
            snprintf(commit, sizeof commit, "%s", text);
        free(text);
        if (!commit[0])
            return 0;
    }
    char snap[PUNIE_PATH_MAX];
    int w = snprintf(snap, sizeof snap, "%s/snapshots/%s", repo_dir, commit);
    if (w < 0 || (size_t)w >= sizeof snap)
        return perr_set(err, "path too long");
    if (!model_dir_complete(snap))
        return 0;
    if (snapshot_dir) {
        w = snprintf(snapshot_dir, n, "%s", snap);
        if (w < 0 || (size_t)w >= n)
            return perr_set(err, "path too long");
    }
    *state = LOCAL_COMPLETE;
    return 0;
}

int model_resolve(const char *spec, const char *models_dir_flag, resolved_model *out, perr *err)
{
    memset(out, 0, sizeof *out);
    if (!spec || !*spec)
        spec = getenv("PUNIE_MODEL");
    if (!spec || !*spec)
        spec = "local";

    const char *repo = NULL;
    if (strcmp(spec, "local") == 0)
        repo = PUNIE_DEFAULT_REPO;
    else if (strncmp(spec, "local:", 6) == 0)
        repo = spec + 6;

    if (!repo) {
        /* A path to a model folder. */
        struct stat st;
        if (stat(spec, &st) != 0 || !S_ISDIR(st.st_mode)) {
            if (repo_id_valid(spec))
                return perr_set(err, "Error: '%s' is not a model folder. To use a downloaded repository, "
                                     "write --model local:%s", spec, spec);
            return perr_set(err, "Error: model '%s' not found: expected 'local', 'local:REPO' or a model folder",
                            spec);
        }
        if (!model_dir_complete(spec))
            return perr_set(err, "Error: '%s' is not a complete model folder (it needs config.json, "
                                 "tokenizer.json, tokenizer_config.json and the model's safetensors files)", spec);
        snprintf(out->dir, sizeof out->dir, "%s", spec);
        snprintf(out->name, sizeof out->name, "%s", spec);
        return 0;
    }

    if (!repo_id_valid(repo))
        return perr_set(err, "Error: invalid repository id '%s' (expected NAMESPACE/NAME)", repo);
    char models_dir[PUNIE_PATH_MAX];
    bool is_default = true;
    if (models_dir_resolve(models_dir_flag, models_dir, sizeof models_dir, &is_default, err) != 0)
        return perr_wrap(err, "Error");
    enum local_state state;
    if (local_model_state(models_dir, repo, NULL, &state, out->dir, sizeof out->dir, err) != 0)
        return perr_wrap(err, "Error");
    char hint[PUNIE_PATH_MAX + 600];
    if (is_default)
        snprintf(hint, sizeof hint, "punie download-model %s", repo);
    else
        snprintf(hint, sizeof hint, "punie download-model %s --models-dir %s", repo, models_dir);
    if (state == LOCAL_MISSING)
        return perr_set(err, "Error: Model '%s' is not downloaded.\nDownload it with: %s", repo, hint);
    if (state == LOCAL_PARTIAL)
        return perr_set(err, "Error: Model '%s' is only partially downloaded.\nResume the download with: %s",
                        repo, hint);
    snprintf(out->name, sizeof out->name, "%s", repo);
    return 0;
}
