/* gen_model: writes a random-weight Qwen2 model in the exact mlx-community layout, for tests and
 * benchmarks. Weights are quantized with MLX's affine quantizer (spec/engine.md §3.4); safetensors
 * headers are compact sorted JSON with __metadata__ {"format":"mlx"} and no padding; an index.json is
 * always written. Tensor data is laid out in reverse name order, so readers must honour data_offsets.
 *
 *   gen_model --out DIR [--hidden N] [--intermediate N] [--layers N] [--heads N] [--kv-heads N]
 *             [--vocab N] [--bits 4|8] [--group 32|64|128] [--scale-dtype f16|bf16|f32] [--tied]
 *             [--materialize-tied] [--shards N] [--seed S] [--tokenizer DIR] [--fast]
 *
 * --materialize-tied writes an untied model whose lm_head is an exact copy of the embedding.
 * --fast fills packed weights with random codes and plausible scales instead of quantizing floats
 * (benchmark-sized models in seconds; the numbers are still a valid model). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "kernels/qmatmul.h" /* f32_to_f16 */
#include "util/fs.h"

enum kind { K_QWEIGHT, K_SCALES, K_BIASES, K_NORM, K_BIAS };

struct tensor {
    char name[160];
    char module[160];  /* owning module (quantized parts) */
    char seed_name[160]; /* whose random stream it uses (lm_head copy = embedding) */
    enum kind kind;
    const char *dtype;
    int64_t shape[2];
    int ndim;
    int rows, cols;    /* logical matrix of a quantized module */
    uint64_t nbytes, offset;
    int shard;
};

static struct opts {
    const char *out, *tokenizer, *scale_dtype;
    int hidden, intermediate, layers, heads, kv_heads, vocab, bits, group, shards;
    bool tied, materialize, fast;
    uint64_t seed;
} o = {
    .scale_dtype = "f16", .hidden = 256, .intermediate = 640, .layers = 2, .heads = 2, .kv_heads = 1,
    .vocab = 1024, .bits = 4, .group = 64, .shards = 1, .seed = 1,
};

static struct tensor *tensors;
static int n_tensors, cap_tensors;

/* ---- random numbers ---- */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t name_seed(const char *name)
{
    uint64_t h = 1469598103934665603ull ^ o.seed;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return h;
}

static float uniform(uint64_t *s) { return (float)((splitmix(s) >> 40) * (1.0 / 16777216.0)); }

static float normal(uint64_t *s)
{
    float u1 = uniform(s), u2 = uniform(s);
    if (u1 < 1e-7f)
        u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

/* ---- float storage ---- */

static uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

static size_t float_size(void) { return strcmp(o.scale_dtype, "f32") == 0 ? 4 : 2; }
static const char *float_dtype_name(void)
{
    return strcmp(o.scale_dtype, "f32") == 0 ? "F32" : strcmp(o.scale_dtype, "bf16") == 0 ? "BF16" : "F16";
}

static void store_float(uint8_t *dst, size_t i, float v)
{
    if (strcmp(o.scale_dtype, "f32") == 0) {
        memcpy(dst + i * 4, &v, 4);
    } else {
        uint16_t h = strcmp(o.scale_dtype, "bf16") == 0 ? f32_to_bf16(v) : f32_to_f16(v);
        memcpy(dst + i * 2, &h, 2);
    }
}

/* ---- MLX affine quantization of one group (spec §3.4, float32, round half to even) ---- */

static void quantize_group(const float *w, int n, int bits, float *scale_out, float *bias_out, uint8_t *q)
{
    float n_bins = (float)((1 << bits) - 1);
    float wmin = w[0], wmax = w[0];
    for (int i = 1; i < n; i++) {
        if (w[i] < wmin)
            wmin = w[i];
        if (w[i] > wmax)
            wmax = w[i];
    }
    float scale = (wmax - wmin) / n_bins;
    if (scale < 1e-7f)
        scale = 1e-7f;
    float edge;
    if (fabsf(wmin) > fabsf(wmax)) {
        edge = wmin;
    } else {
        scale = -scale;
        edge = wmax;
    }
    float q0 = rintf(edge / scale), bias = 0.0f;
    if (q0 != 0.0f) {
        scale = edge / q0;
        bias = edge;
    }
    for (int i = 0; i < n; i++) {
        float v = rintf((w[i] - bias) / scale);
        q[i] = (uint8_t)(v < 0 ? 0 : v > n_bins ? n_bins : v);
    }
    *scale_out = scale;
    *bias_out = bias;
}

/* ---- the tensor list ---- */

static struct tensor *add(const char *name, enum kind k)
{
    if (n_tensors == cap_tensors) {
        cap_tensors = cap_tensors ? cap_tensors * 2 : 64;
        tensors = realloc(tensors, (size_t)cap_tensors * sizeof *tensors);
        if (!tensors) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
    }
    struct tensor *t = &tensors[n_tensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    snprintf(t->seed_name, sizeof t->seed_name, "%s", name);
    t->kind = k;
    return t;
}

static void add_qlinear(const char *module, const char *seed_module, int rows, int cols)
{
    static const char *parts[] = {"weight", "scales", "biases"};
    for (int i = 0; i < 3; i++) {
        char n[200];
        snprintf(n, sizeof n, "%s.%s", module, parts[i]);
        struct tensor *t = add(n, i == 0 ? K_QWEIGHT : i == 1 ? K_SCALES : K_BIASES);
        snprintf(t->module, sizeof t->module, "%s", module);
        snprintf(t->seed_name, sizeof t->seed_name, "%s", seed_module);
        t->rows = rows;
        t->cols = cols;
        t->ndim = 2;
        t->shape[0] = rows;
        if (i == 0) {
            t->dtype = "U32";
            t->shape[1] = (int64_t)cols * o.bits / 32;
            t->nbytes = (uint64_t)rows * cols * o.bits / 8;
        } else {
            t->dtype = float_dtype_name();
            t->shape[1] = cols / o.group;
            t->nbytes = (uint64_t)rows * (cols / o.group) * float_size();
        }
    }
}

static void add_vector(const char *name, enum kind k, int n)
{
    struct tensor *t = add(name, k);
    t->dtype = float_dtype_name();
    t->ndim = 1;
    t->shape[0] = n;
    t->nbytes = (uint64_t)n * float_size();
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const struct tensor *)a)->name, ((const struct tensor *)b)->name);
}

static void build_tensor_list(void)
{
    int D = o.hidden / o.heads, qd = o.hidden, kvd = o.kv_heads * D;
    add_qlinear("model.embed_tokens", "model.embed_tokens", o.vocab, o.hidden);
    add_vector("model.norm.weight", K_NORM, o.hidden);
    if (!o.tied)
        add_qlinear("lm_head", o.materialize ? "model.embed_tokens" : "lm_head", o.vocab, o.hidden);
    for (int l = 0; l < o.layers; l++) {
        char p[64], n[160];
        snprintf(p, sizeof p, "model.layers.%d", l);
#define NAME(s) (snprintf(n, sizeof n, "%s.%s", p, s), n)
        add_vector(NAME("input_layernorm.weight"), K_NORM, o.hidden);
        add_vector(NAME("post_attention_layernorm.weight"), K_NORM, o.hidden);
        add_qlinear(NAME("self_attn.q_proj"), n, qd, o.hidden);
        add_vector(NAME("self_attn.q_proj.bias"), K_BIAS, qd);
        add_qlinear(NAME("self_attn.k_proj"), n, kvd, o.hidden);
        add_vector(NAME("self_attn.k_proj.bias"), K_BIAS, kvd);
        add_qlinear(NAME("self_attn.v_proj"), n, kvd, o.hidden);
        add_vector(NAME("self_attn.v_proj.bias"), K_BIAS, kvd);
        add_qlinear(NAME("self_attn.o_proj"), n, o.hidden, qd);
        add_qlinear(NAME("mlp.gate_proj"), n, o.intermediate, o.hidden);
        add_qlinear(NAME("mlp.up_proj"), n, o.intermediate, o.hidden);
        add_qlinear(NAME("mlp.down_proj"), n, o.hidden, o.intermediate);
#undef NAME
    }
    qsort(tensors, (size_t)n_tensors, sizeof *tensors, by_name);
}

/* ---- writing ---- */

static void die_errno(const char *what, const char *path)
{
    fprintf(stderr, "gen_model: %s %s: %s\n", what, path, strerror(errno));
    exit(1);
}

static void pwrite_all(int fd, const void *buf, size_t n, uint64_t off, const char *path)
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            die_errno("cannot write", path);
        }
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
}

struct shard {
    char name[64], path[4096];
    int fd;
    uint64_t data_start;
};

/* Writes one quantized part (weight, scales or biases) of a module, generating the module's floats
 * row by row with the module's own random stream so that every part agrees. */
static void write_qpart(const struct tensor *t, struct shard *sh)
{
    const int rows = t->rows, cols = t->cols, groups = cols / o.group;
    const size_t row_bytes = (size_t)cols * o.bits / 8, fs = float_size();
    uint64_t rs = name_seed(t->seed_name);
    float *w = malloc((size_t)cols * sizeof *w);
    uint8_t *q = malloc((size_t)cols);
    const size_t out_row = t->kind == K_QWEIGHT ? row_bytes : (size_t)groups * fs;
    const int block = 256;
    uint8_t *buf = malloc(out_row * block);
    float std = strstr(t->seed_name, "embed") ? 0.05f : 0.03f;
    for (int r0 = 0; r0 < rows; r0 += block) {
        int nr = rows - r0 < block ? rows - r0 : block;
        for (int r = 0; r < nr; r++) {
            uint8_t *dst = buf + (size_t)r * out_row;
            if (o.fast) {
                /* random codes, scales around std and biases centring the codes on zero */
                for (size_t b = 0; b < row_bytes; b += 8) {
                    uint64_t v = splitmix(&rs);
                    if (t->kind == K_QWEIGHT)
                        memcpy(dst + b, &v, row_bytes - b < 8 ? row_bytes - b : 8);
                }
                for (int g = 0; g < groups; g++) {
                    float s = std * (0.5f + uniform(&rs)) * 4.0f / (float)((1 << o.bits) - 1);
                    float bias = -s * (float)((1 << o.bits) - 1) / 2.0f;
                    if (t->kind == K_SCALES)
                        store_float(dst, (size_t)g, s);
                    else if (t->kind == K_BIASES)
                        store_float(dst, (size_t)g, bias);
                }
                continue;
            }
            for (int c = 0; c < cols; c++)
                w[c] = std * normal(&rs);
            if (t->kind == K_QWEIGHT)
                memset(dst, 0, row_bytes);
            for (int g = 0; g < groups; g++) {
                float s, b;
                quantize_group(w + (size_t)g * o.group, o.group, o.bits, &s, &b, q + (size_t)g * o.group);
                if (t->kind == K_SCALES)
                    store_float(dst, (size_t)g, s);
                else if (t->kind == K_BIASES)
                    store_float(dst, (size_t)g, b);
            }
            if (t->kind == K_QWEIGHT) {
                /* element j at bit bits*(j mod 32/bits) of little-endian word j/(32/bits) */
                for (int j = 0; j < cols; j++) {
                    if (o.bits == 8)
                        dst[j] = q[j];
                    else
                        dst[j / 2] |= (uint8_t)(q[j] << (4 * (j & 1)));
                }
            }
        }
        pwrite_all(sh->fd, buf, out_row * (size_t)nr, sh->data_start + t->offset + (uint64_t)r0 * out_row, sh->path);
    }
    free(buf);
    free(w);
    free(q);
}

static void write_vector(const struct tensor *t, struct shard *sh)
{
    uint64_t rs = name_seed(t->seed_name);
    int n = (int)t->shape[0];
    uint8_t *buf = malloc(t->nbytes);
    for (int i = 0; i < n; i++) {
        float v = t->kind == K_NORM ? 1.0f + 0.1f * normal(&rs) : 0.1f * normal(&rs);
        store_float(buf, (size_t)i, v);
    }
    pwrite_all(sh->fd, buf, t->nbytes, sh->data_start + t->offset, sh->path);
    free(buf);
}

static void write_shards(void)
{
    /* shard boundaries: roughly equal bytes, tensors in name order (as mlx-lm cuts them) */
    uint64_t total = 0;
    for (int i = 0; i < n_tensors; i++)
        total += tensors[i].nbytes;
    uint64_t per = (total + (uint64_t)o.shards - 1) / (uint64_t)o.shards, acc = 0;
    for (int i = 0; i < n_tensors; i++) {
        int s = (int)(acc / (per ? per : 1));
        tensors[i].shard = s < o.shards ? s : o.shards - 1;
        acc += tensors[i].nbytes;
    }
    cJSON *index = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(index, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", (double)total);
    cJSON *wmap = cJSON_AddObjectToObject(index, "weight_map");

    for (int s = 0; s < o.shards; s++) {
        struct shard sh = {0};
        if (o.shards == 1)
            snprintf(sh.name, sizeof sh.name, "model.safetensors");
        else
            snprintf(sh.name, sizeof sh.name, "model-%05d-of-%05d.safetensors", s + 1, o.shards);
        if (path_join(sh.path, sizeof sh.path, o.out, sh.name, NULL) != 0) {
            fprintf(stderr, "gen_model: path too long\n");
            exit(1);
        }
        /* data in reverse name order */
        uint64_t off = 0;
        for (int i = n_tensors - 1; i >= 0; i--) {
            if (tensors[i].shard != s)
                continue;
            tensors[i].offset = off;
            off += tensors[i].nbytes;
        }
        cJSON *hdr = cJSON_CreateObject();
        bool meta_done = false;
        for (int i = 0; i < n_tensors; i++) {
            if (tensors[i].shard != s)
                continue;
            if (!meta_done && strcmp("__metadata__", tensors[i].name) < 0) {
                cJSON_AddStringToObject(cJSON_AddObjectToObject(hdr, "__metadata__"), "format", "mlx");
                meta_done = true;
            }
            cJSON *e = cJSON_AddObjectToObject(hdr, tensors[i].name);
            cJSON *offs = cJSON_AddArrayToObject(e, "data_offsets");
            cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)tensors[i].offset));
            cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(tensors[i].offset + tensors[i].nbytes)));
            cJSON_AddStringToObject(e, "dtype", tensors[i].dtype);
            cJSON *shape = cJSON_AddArrayToObject(e, "shape");
            for (int d = 0; d < tensors[i].ndim; d++)
                cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)tensors[i].shape[d]));
            cJSON_AddStringToObject(wmap, tensors[i].name, sh.name);
        }
        if (!meta_done)
            cJSON_AddStringToObject(cJSON_AddObjectToObject(hdr, "__metadata__"), "format", "mlx");
        char *text = cJSON_PrintUnformatted(hdr);
        uint64_t hlen = strlen(text);
        sh.fd = open(sh.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (sh.fd < 0)
            die_errno("cannot create", sh.path);
        uint8_t len8[8];
        for (int i = 0; i < 8; i++)
            len8[i] = (uint8_t)(hlen >> (8 * i));
        pwrite_all(sh.fd, len8, 8, 0, sh.path);
        pwrite_all(sh.fd, text, hlen, 8, sh.path);
        sh.data_start = 8 + hlen;
        if (ftruncate(sh.fd, (off_t)(sh.data_start + off)) != 0)
            die_errno("cannot size", sh.path);
        free(text);
        cJSON_Delete(hdr);
        for (int i = 0; i < n_tensors; i++) {
            if (tensors[i].shard != s)
                continue;
            if (tensors[i].kind == K_NORM || tensors[i].kind == K_BIAS)
                write_vector(&tensors[i], &sh);
            else
                write_qpart(&tensors[i], &sh);
        }
        if (close(sh.fd) != 0)
            die_errno("cannot close", sh.path);
    }
    char path[4096], *text = cJSON_Print(index);
    path_join(path, sizeof path, o.out, "model.safetensors.index.json", NULL);
    if (write_file_atomic(path, text, strlen(text), NULL) != 0)
        die_errno("cannot write", path);
    free(text);
    cJSON_Delete(index);
}

static void write_config(void)
{
    /* keys in sorted order, as mlx-lm saves them */
    cJSON *c = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(c, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("Qwen2ForCausalLM"));
    cJSON_AddNumberToObject(c, "attention_dropout", 0.0);
    cJSON_AddNumberToObject(c, "bos_token_id", 151643);
    cJSON_AddNumberToObject(c, "eos_token_id", 151645);
    cJSON_AddStringToObject(c, "hidden_act", "silu");
    cJSON_AddNumberToObject(c, "hidden_size", o.hidden);
    cJSON_AddNumberToObject(c, "intermediate_size", o.intermediate);
    cJSON_AddNumberToObject(c, "max_position_embeddings", 32768);
    cJSON_AddStringToObject(c, "model_type", "qwen2");
    cJSON_AddNumberToObject(c, "num_attention_heads", o.heads);
    cJSON_AddNumberToObject(c, "num_hidden_layers", o.layers);
    cJSON_AddNumberToObject(c, "num_key_value_heads", o.kv_heads);
    for (int i = 0; i < 2; i++) {
        cJSON *q = cJSON_AddObjectToObject(c, i == 0 ? "quantization" : "quantization_config");
        cJSON_AddNumberToObject(q, "bits", o.bits);
        cJSON_AddNumberToObject(q, "group_size", o.group);
    }
    cJSON_AddNumberToObject(c, "rms_norm_eps", 1e-6);
    cJSON_AddNumberToObject(c, "rope_theta", 1000000.0);
    cJSON_AddBoolToObject(c, "tie_word_embeddings", o.tied);
    cJSON_AddStringToObject(c, "torch_dtype", "bfloat16");
    cJSON_AddBoolToObject(c, "use_sliding_window", false);
    cJSON_AddNumberToObject(c, "vocab_size", o.vocab);
    char path[4096], *text = cJSON_Print(c);
    path_join(path, sizeof path, o.out, "config.json", NULL);
    if (write_file_atomic(path, text, strlen(text), NULL) != 0)
        die_errno("cannot write", path);
    free(text);
    cJSON_Delete(c);
}

static void copy_tokenizer(void)
{
    static const char *files[] = {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                                  "special_tokens_map.json", "added_tokens.json", "generation_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char src[4096], dst[4096];
        if (path_join(src, sizeof src, o.tokenizer, files[i], NULL) != 0 || !file_exists(src))
            continue;
        char *data;
        size_t len;
        perr err;
        path_join(dst, sizeof dst, o.out, files[i], NULL);
        if (read_file(src, 256u << 20, &data, &len, &err) != 0 || write_file_atomic(dst, data, len, &err) != 0) {
            fprintf(stderr, "gen_model: %s\n", err.msg);
            exit(1);
        }
        free(data);
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: gen_model --out DIR [--hidden N] [--intermediate N] [--layers N] [--heads N] "
                    "[--kv-heads N] [--vocab N] [--bits 4|8] [--group 32|64|128] [--scale-dtype f16|bf16|f32] "
                    "[--tied] [--materialize-tied] [--shards N] [--seed S] [--tokenizer DIR] [--fast]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define INTOPT(flag, field)                                                                                           \
    if (strcmp(a, flag) == 0 && v) {                                                                                  \
        o.field = atoi(v);                                                                                            \
        i++;                                                                                                          \
        continue;                                                                                                     \
    }
        INTOPT("--hidden", hidden)
        INTOPT("--intermediate", intermediate)
        INTOPT("--layers", layers)
        INTOPT("--heads", heads)
        INTOPT("--kv-heads", kv_heads)
        INTOPT("--vocab", vocab)
        INTOPT("--bits", bits)
        INTOPT("--group", group)
        INTOPT("--shards", shards)
#undef INTOPT
        if (strcmp(a, "--out") == 0 && v) {
            o.out = v;
            i++;
        } else if (strcmp(a, "--tokenizer") == 0 && v) {
            o.tokenizer = v;
            i++;
        } else if (strcmp(a, "--scale-dtype") == 0 && v) {
            o.scale_dtype = v;
            i++;
        } else if (strcmp(a, "--seed") == 0 && v) {
            o.seed = strtoull(v, NULL, 10);
            i++;
        } else if (strcmp(a, "--tied") == 0) {
            o.tied = true;
        } else if (strcmp(a, "--materialize-tied") == 0) {
            o.materialize = true;
        } else if (strcmp(a, "--fast") == 0) {
            o.fast = true;
        } else {
            usage();
        }
    }
    if (!o.out || o.hidden <= 0 || o.heads <= 0 || o.kv_heads <= 0 || o.layers <= 0 || o.vocab <= 0 ||
        o.intermediate <= 0 || o.shards <= 0 || (o.bits != 4 && o.bits != 8) ||
        (o.group != 32 && o.group != 64 && o.group != 128) || o.hidden % o.heads || o.heads % o.kv_heads ||
        o.hidden % o.group || o.intermediate % o.group ||
        (strcmp(o.scale_dtype, "f16") && strcmp(o.scale_dtype, "bf16") && strcmp(o.scale_dtype, "f32")))
        usage();
    perr err;
    if (mkdir_p(o.out, &err) != 0) {
        fprintf(stderr, "gen_model: %s\n", err.msg);
        return 1;
    }
    build_tensor_list();
    if (o.shards > n_tensors)
        o.shards = n_tensors;
    write_config();
    write_shards();
    if (o.tokenizer)
        copy_tokenizer();
    return 0;
}
