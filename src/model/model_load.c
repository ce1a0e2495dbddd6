/* Loading a Qwen2 model: config.json, the quantization block, and a check of every tensor's
 * presence, dtype and shape before anything is computed (spec/engine.md §2, §3, §5.6); tensors the
 * model does not use are refused, as mlx-lm's strict load does. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "model/model_internal.h"
#include "util/clock.h"
#include "util/fs.h"

#define CONFIG_MAX_BYTES (4u * 1024u * 1024u)
#define SUPPORTED "punie supports model_type qwen2 with MLX affine quantization (4 or 8 bits, group size 32, 64 or 128)"

/* What config.json says about quantization, globally and per module. */
typedef struct quant_cfg {
    const cJSON *block; /* the "quantization" object (owned by the parsed config) */
    int bits, group_size;
} quant_cfg;

static int get_int(const cJSON *root, const char *key, int def, bool required, int *out, perr *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (required)
            return perr_set(err, "config.json: missing %s", key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 1 ||
        v->valuedouble > 1e9)
        return perr_set(err, "config.json: %s must be a positive integer", key);
    *out = (int)v->valuedouble;
    return 0;
}

static int get_float(const cJSON *root, const char *key, double def, float *out, perr *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        *out = (float)def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0) || !isfinite(v->valuedouble))
        return perr_set(err, "config.json: %s must be a positive number", key);
    *out = (float)v->valuedouble;
    return 0;
}

static int check_mode(const cJSON *obj, const char *where, perr *err)
{
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(obj, "mode");
    if (!mode || cJSON_IsNull(mode))
        return 0;
    if (!cJSON_IsString(mode))
        return perr_set(err, "config.json: %s: mode must be a string", where);
    if (strcmp(mode->valuestring, "affine") != 0)
        return perr_set(err, "config.json: %s: quantization mode '%s' is not supported; " SUPPORTED, where,
                        mode->valuestring);
    return 0;
}

static int parse_config(const char *dir, const cJSON *root, model_config *c, quant_cfg *q, perr *err)
{
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt))
        return perr_set(err, "config.json: no model_type; " SUPPORTED);
    if (strcmp(mt->valuestring, "qwen2") != 0)
        return perr_set(err, "config.json: model_type '%s' is not supported; " SUPPORTED, mt->valuestring);
    if (get_int(root, "hidden_size", 0, true, &c->hidden_size, err) ||
        get_int(root, "intermediate_size", 0, true, &c->intermediate_size, err) ||
        get_int(root, "num_hidden_layers", 0, true, &c->n_layers, err) ||
        get_int(root, "num_attention_heads", 0, true, &c->n_heads, err) ||
        get_int(root, "num_key_value_heads", c->n_heads, false, &c->n_kv_heads, err) ||
        get_int(root, "vocab_size", 0, true, &c->vocab_size, err) ||
        get_int(root, "max_position_embeddings", 32768, false, &c->max_position_embeddings, err) ||
        get_float(root, "rope_theta", 1000000.0, &c->rope_theta, err) ||
        get_float(root, "rms_norm_eps", 1e-6, &c->rms_norm_eps, err))
        return -1;
    if (c->n_layers > 4096 || c->hidden_size > 1 << 20 || c->intermediate_size > 1 << 22 || c->vocab_size > 1 << 24)
        return perr_set(err, "config.json: dimensions are implausibly large");
    if (c->hidden_size % c->n_heads != 0)
        return perr_set(err, "config.json: hidden_size %d is not a multiple of num_attention_heads %d", c->hidden_size,
                        c->n_heads);
    c->head_dim = c->hidden_size / c->n_heads;
    int hd;
    if (get_int(root, "head_dim", c->head_dim, false, &hd, err))
        return -1;
    if (hd != c->head_dim)
        return perr_set(err, "config.json: head_dim %d differs from hidden_size / num_attention_heads = %d", hd,
                        c->head_dim);
    if (c->head_dim % 2 != 0)
        return perr_set(err, "config.json: head dimension %d must be even for RoPE", c->head_dim);
    if (c->n_heads % c->n_kv_heads != 0)
        return perr_set(err, "config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                        c->n_heads, c->n_kv_heads);
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (rs && !cJSON_IsNull(rs))
        return perr_set(err, "config.json: rope_scaling is not supported (plain RoPE only)");
    const cJSON *rt = cJSON_GetObjectItemCaseSensitive(root, "rope_traditional");
    if (cJSON_IsTrue(rt))
        return perr_set(err, "config.json: rope_traditional is not supported (rotate-half RoPE only)");

    const cJSON *qb = cJSON_GetObjectItemCaseSensitive(root, "quantization");
    if (!qb)
        qb = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    if (!cJSON_IsObject(qb))
        return perr_set(err, "config.json: no quantization block: the model is not MLX-quantized; " SUPPORTED);
    if (check_mode(qb, "quantization", err) != 0)
        return -1;
    /* per-module overrides may carry their own mode */
    const cJSON *e;
    cJSON_ArrayForEach(e, qb)
    {
        if (cJSON_IsObject(e) && check_mode(e, e->string, err) != 0)
            return -1;
    }
    if (get_int(qb, "bits", 0, true, &q->bits, err) || get_int(qb, "group_size", 0, true, &q->group_size, err))
        return perr_wrap(err, "quantization block");
    q->block = qb;
    (void)dir;
    return 0;
}

/* ---- tensor checks ---- */

static enum float_dtype to_float_dtype(enum st_dtype d) { return d == ST_F32 ? DT_F32 : d == ST_F16 ? DT_F16 : DT_BF16; }
static bool is_float(enum st_dtype d) { return d == ST_F32 || d == ST_F16 || d == ST_BF16; }

static const st_tensor *need(st_set *s, const char *name, perr *err)
{
    const st_tensor *t = st_use(s, name);
    if (!t)
        perr_set(err, "tensor %s is missing from the safetensors files", name);
    return t;
}

static int shape_err(const st_tensor *t, const char *expect, perr *err)
{
    char got[128] = "[";
    for (int i = 0; i < t->ndim; i++) {
        size_t l = strlen(got);
        snprintf(got + l, sizeof got - l, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    }
    strncat(got, "]", sizeof got - strlen(got) - 1);
    return perr_set(err, "%s: tensor %s has shape %s, expected %s", t->file, t->name, got, expect);
}

/* A float vector [n] (norm weight or Linear bias), converted to f32 (small). */
static int load_vector(st_set *s, const char *name, int n, float **out, perr *err)
{
    const st_tensor *t = need(s, name, err);
    if (!t)
        return -1;
    if (!is_float(t->dtype))
        return perr_set(err, "%s: tensor %s has dtype %s, expected F16, BF16 or F32", t->file, name,
                        st_dtype_name(t->dtype));
    if (t->ndim != 1 || t->shape[0] != n) {
        char e[64];
        snprintf(e, sizeof e, "[%d]", n);
        return shape_err(t, e, err);
    }
    float *v = malloc((size_t)n * sizeof *v);
    if (!v)
        return perr_set(err, "out of memory");
    for (int i = 0; i < n; i++)
        v[i] = load_float(t->data, to_float_dtype(t->dtype), (size_t)i);
    *out = v;
    return 0;
}

/* The expected bits/group for a module: the per-module override if any, else the global values. */
static int module_quant(const quant_cfg *q, const char *module, int *bits, int *group, perr *err)
{
    *bits = q->bits;
    *group = q->group_size;
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(q->block, module);
    if (!o)
        return 0;
    if (cJSON_IsFalse(o))
        return perr_set(err, "config.json: module %s is marked unquantized; punie needs every Linear quantized",
                        module);
    if (cJSON_IsObject(o)) {
        if (get_int(o, "bits", q->bits, false, bits, err) || get_int(o, "group_size", q->group_size, false, group, err))
            return perr_wrap(err, "quantization override %s", module);
    }
    return 0;
}

/* A quantized Linear `module` with logical shape [rows][cols]; bits and group size are derived from the
 * tensor shapes and must agree with config.json. */
static int load_qlinear(st_set *s, const quant_cfg *q, const char *module, int rows, int cols, qweight *w,
                        perr *err)
{
    char name[256];
    snprintf(name, sizeof name, "%s.weight", module);
    const st_tensor *tw = need(s, name, err);
    if (!tw)
        return -1;
    snprintf(name, sizeof name, "%s.scales", module);
    const st_tensor *ts = st_use(s, name);
    if (!ts) {
        if (tw->dtype != ST_U32)
            return perr_set(err, "%s: tensor %s.weight is not quantized (dtype %s, no %s.scales); " SUPPORTED, tw->file,
                            module, st_dtype_name(tw->dtype), module);
        return perr_set(err, "tensor %s is missing from the safetensors files", name);
    }
    snprintf(name, sizeof name, "%s.biases", module);
    const st_tensor *tb = need(s, name, err);
    if (!tb)
        return perr_wrap(err, "MLX affine quantization needs biases (other modes such as mxfp4 are not supported)");

    if (tw->dtype != ST_U32)
        return perr_set(err, "%s: tensor %s has dtype %s, expected U32 (packed quantized weights)", tw->file, tw->name,
                        st_dtype_name(tw->dtype));
    if (!is_float(ts->dtype))
        return perr_set(err, "%s: tensor %s has dtype %s, expected F16, BF16 or F32", ts->file, ts->name,
                        st_dtype_name(ts->dtype));
    if (tb->dtype != ts->dtype)
        return perr_set(err, "%s: tensor %s has dtype %s but %s has %s; they must match", tb->file, tb->name,
                        st_dtype_name(tb->dtype), ts->name, st_dtype_name(ts->dtype));
    char expect[128];
    if (tw->ndim != 2 || tw->shape[0] != rows || tw->shape[1] <= 0 || (tw->shape[1] * 32) % cols != 0) {
        snprintf(expect, sizeof expect, "[%d, %d * bits / 32]", rows, cols);
        return shape_err(tw, expect, err);
    }
    int bits = (int)(tw->shape[1] * 32 / cols);
    if (ts->ndim != 2 || ts->shape[0] != rows || ts->shape[1] <= 0 || cols % ts->shape[1] != 0) {
        snprintf(expect, sizeof expect, "[%d, %d / group_size]", rows, cols);
        return shape_err(ts, expect, err);
    }
    int group = (int)(cols / ts->shape[1]);
    if (tb->ndim != 2 || tb->shape[0] != ts->shape[0] || tb->shape[1] != ts->shape[1]) {
        snprintf(expect, sizeof expect, "[%lld, %lld] like %s", (long long)ts->shape[0], (long long)ts->shape[1],
                 ts->name);
        return shape_err(tb, expect, err);
    }
    if (bits != 4 && bits != 8)
        return perr_set(err, "%s: tensor %s: shapes imply %d-bit weights; " SUPPORTED, tw->file, tw->name, bits);
    if (group != 32 && group != 64 && group != 128)
        return perr_set(err, "%s: tensor %s: shapes imply group size %d; " SUPPORTED, ts->file, ts->name, group);
    int cbits, cgroup;
    if (module_quant(q, module, &cbits, &cgroup, err) != 0)
        return -1;
    if (cbits != bits || cgroup != group)
        return perr_set(err, "%s: tensors of %s are %d-bit with group size %d but config.json says %d-bit, group %d",
                        tw->file, module, bits, group, cbits, cgroup);
    *w = (qweight){
        .packed = tw->data, .scales = ts->data, .biases = tb->data, .sdtype = to_float_dtype(ts->dtype),
        .rows = rows, .cols = cols, .bits = bits, .group_size = group,
    };
    return 0;
}

static int load_layer(model *m, const quant_cfg *q, int l, perr *err)
{
    const model_config *c = &m->cfg;
    layer_weights *L = &m->layers[l];
    st_set *s = m->st;
    char p[128], n[192];
    int H = c->hidden_size, I = c->intermediate_size;
    int qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    snprintf(p, sizeof p, "model.layers.%d", l);
#define MOD(suffix) (snprintf(n, sizeof n, "%s.%s", p, suffix), n)
    if (load_vector(s, MOD("input_layernorm.weight"), H, &L->attn_norm, err) ||
        load_vector(s, MOD("post_attention_layernorm.weight"), H, &L->mlp_norm, err) ||
        load_qlinear(s, q, MOD("self_attn.q_proj"), qd, H, &L->wq, err) ||
        load_qlinear(s, q, MOD("self_attn.k_proj"), kvd, H, &L->wk, err) ||
        load_qlinear(s, q, MOD("self_attn.v_proj"), kvd, H, &L->wv, err) ||
        load_vector(s, MOD("self_attn.q_proj.bias"), qd, &L->bq, err) ||
        load_vector(s, MOD("self_attn.k_proj.bias"), kvd, &L->bk, err) ||
        load_vector(s, MOD("self_attn.v_proj.bias"), kvd, &L->bv, err) ||
        load_qlinear(s, q, MOD("self_attn.o_proj"), H, qd, &L->wo, err) ||
        load_qlinear(s, q, MOD("mlp.gate_proj"), I, H, &L->w_gate, err) ||
        load_qlinear(s, q, MOD("mlp.up_proj"), I, H, &L->w_up, err) ||
        load_qlinear(s, q, MOD("mlp.down_proj"), H, I, &L->w_down, err))
        return -1;
#undef MOD
    m->weight_bytes += qweight_bytes(&L->wq) + qweight_bytes(&L->wk) + qweight_bytes(&L->wv) +
                       qweight_bytes(&L->wo) + qweight_bytes(&L->w_gate) + qweight_bytes(&L->w_up) +
                       qweight_bytes(&L->w_down) + (size_t)(2 * H + qd + 2 * kvd) * 4;
    return 0;
}

static void *warm_main(void *arg)
{
    model *m = arg;
    const double t0 = monotonic_s();
    const size_t bytes = st_warm(m->st, &m->warm_stop);
    if (!m->warm_stop && m->warm_done)
        m->warm_done(m->warm_ud, bytes, monotonic_s() - t0);
    return NULL;
}

int model_warm_start(model *m, model_warm_done_fn done, void *ud)
{
    if (m->warm_started)
        return 0;
    m->warm_stop = 0;
    m->warm_done = done;
    m->warm_ud = ud;
    if (pthread_create(&m->warm_thread, NULL, warm_main, m) != 0)
        return -1;
    m->warm_started = true;
    return 0;
}

void model_free(model *m)
{
    if (!m)
        return;
    if (m->warm_started) { /* before the files are unmapped */
        m->warm_stop = 1;
        pthread_join(m->warm_thread, NULL);
    }
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layers; l++) {
            layer_weights *L = &m->layers[l];
            free(L->attn_norm);
            free(L->mlp_norm);
            free(L->bq);
            free(L->bk);
            free(L->bv);
        }
        free(m->layers);
    }
    free(m->final_norm);
    free(m->rope_inv_freq);
    if (m->pool)
        threadpool_free(m->pool);
    qact_free(m->act);
    pthread_mutex_destroy(&m->pool_lock);
    st_close(m->st);
    free(m);
}

int model_load(const char *dir, int n_threads, model **out, perr *err)
{
    char path[4096];
    char *text = NULL;
    size_t len = 0;
    if (path_join(path, sizeof path, dir, "config.json", err) != 0 ||
        read_file(path, CONFIG_MAX_BYTES, &text, &len, err) != 0)
        return -1;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return perr_set(err, "config.json: not a JSON object");
    }
    model *m = calloc(1, sizeof *m);
    if (!m) {
        cJSON_Delete(root);
        return perr_set(err, "out of memory");
    }
    pthread_mutex_init(&m->pool_lock, NULL);
    quant_cfg q;
    model_config *c = &m->cfg;
    if (parse_config(dir, root, c, &q, err) != 0)
        goto fail;
    if (st_open_dir(dir, &m->st, err) != 0)
        goto fail;

    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) {
        perr_set(err, "out of memory");
        goto fail;
    }
    if (load_qlinear(m->st, &q, "model.embed_tokens", c->vocab_size, c->hidden_size, &m->embed, err) != 0)
        goto fail;
    for (int l = 0; l < c->n_layers; l++)
        if (load_layer(m, &q, l, err) != 0)
            goto fail;
    if (load_vector(m->st, "model.norm.weight", c->hidden_size, &m->final_norm, err) != 0)
        goto fail;

    /* Tying is decided by the presence of lm_head (mlx-lm drops it from tied models). */
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    bool has_head = st_find(m->st, "lm_head.weight") != NULL;
    if (!has_head && cJSON_IsFalse(tie)) {
        perr_set(err, "tensor lm_head.weight is missing from the safetensors files (config.json says "
                      "tie_word_embeddings is false)");
        goto fail;
    }
    c->tied_embeddings = !has_head;
    if (has_head) {
        if (load_qlinear(m->st, &q, "lm_head", c->vocab_size, c->hidden_size, &m->head, err) != 0)
            goto fail;
    } else {
        m->head = m->embed;
    }
    m->weight_bytes += qweight_bytes(&m->head) + (size_t)c->hidden_size * 4;

    /* mlx-lm loads weights strictly; a tensor left over means config.json and the weights disagree
     * (e.g. more layers in the files than num_hidden_layers), so it is refused, not ignored. */
    const st_tensor *extra = st_first_unused(m->st);
    if (extra) {
        perr_set(err, "%s: tensor %s is not used by a qwen2 model with num_hidden_layers %d; the weights do not "
                      "match config.json", extra->file, extra->name, c->n_layers);
        goto fail;
    }

    m->rope_inv_freq = malloc((size_t)(c->head_dim / 2) * sizeof(double));
    if (!m->rope_inv_freq) {
        perr_set(err, "out of memory");
        goto fail;
    }
    for (int i = 0; i < c->head_dim / 2; i++)
        m->rope_inv_freq[i] = pow((double)c->rope_theta, -2.0 * i / c->head_dim);

    qwen2_setup(m);
    m->act = qact_new(); /* optional: without it each thread quantizes its own copy */
    m->pool = threadpool_new(n_threads);
    if (!m->pool) {
        perr_set(err, "cannot start worker threads");
        goto fail;
    }
    cJSON_Delete(root);
    *out = m;
    return 0;
fail:
    cJSON_Delete(root);
    model_free(m);
    return -1;
}

const model_config *model_get_config(const model *m) { return &m->cfg; }
size_t model_weight_bytes(const model *m) { return m->weight_bytes; }
