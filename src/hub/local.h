/* Where models live on disk and how a model name given by the user maps to a model folder.
 * Shared by download-model, models, remove-model, verify, generate and serve. */
#ifndef PUNIE_HUB_LOCAL_H
#define PUNIE_HUB_LOCAL_H

#include <stdbool.h>
#include <stddef.h>

#include "util/err.h"

#define PUNIE_DEFAULT_REPO "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit"
#define PUNIE_PATH_MAX 4096

/* --models-dir, else $PUNIE_MODELS_DIR, else $XDG_CACHE_HOME/punie/models, else ~/.cache/punie/models.
 * flag may be NULL. *is_default tells whether the user chose nothing (for hints). */
int models_dir_resolve(const char *flag, char *out, size_t n, bool *is_default, perr *err);

/* A Hub repo id: "namespace/name", each part [A-Za-z0-9._-], not starting or ending with '.' or '-',
 * no "--" and no "..", at most 96 characters per part. */
bool repo_id_valid(const char *repo);

/* "models--org--name" */
int repo_folder_name(const char *repo, char *out, size_t n, perr *err);

enum local_state {
    LOCAL_MISSING,  /* nothing of it in the models directory */
    LOCAL_PARTIAL,  /* some of it is there, but not a complete snapshot */
    LOCAL_COMPLETE, /* refs/<rev> names a snapshot that holds every file the model needs */
};

/* Looks up repo at revision rev (NULL = "main") in models_dir. On LOCAL_COMPLETE, snapshot_dir gets
 * models_dir/models--org--name/snapshots/<commit>. A snapshot is complete when refs/<rev> exists and
 * the snapshot holds config.json, tokenizer.json, tokenizer_config.json and every weight file
 * (those named in model.safetensors.index.json when present, else model.safetensors), each resolving
 * to a regular file. punie's downloader writes refs/<rev> last, after every file is verified. */
int local_model_state(const char *models_dir, const char *repo, const char *rev, enum local_state *state,
                      char *snapshot_dir, size_t n, perr *err);

/* Checks that a folder holds every file a model needs (see above). */
bool model_dir_complete(const char *dir);

/* A model as the user named it: "local" (the default repo), "local:REPO", or a path to a model folder. */
typedef struct resolved_model {
    char dir[PUNIE_PATH_MAX];  /* folder holding config.json etc. */
    char name[512];            /* repo id, or the path as given */
} resolved_model;

/* Resolves spec (NULL = $PUNIE_MODEL, else "local"). On failure err holds the user-facing message:
 *   Error: Model 'REPO' is not downloaded.\nDownload it with: punie download-model REPO [--models-dir DIR]
 * or the partial-download variant, without a trailing newline. models_dir_flag may be NULL. */
int model_resolve(const char *spec, const char *models_dir_flag, resolved_model *out, perr *err);

#endif
