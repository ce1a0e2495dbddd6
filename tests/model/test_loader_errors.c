/* Broken, truncated or lying model files and unsupported configurations are clear errors that name
 * the file and the tensor, never crashes. */
#include <unistd.h>

#include "model/model.h"
#include "model/safetensors.h"
#include "model_test_util.h"

#define DIMS "--hidden 64 --heads 1 --kv-heads 1 --intermediate 128 --layers 1 --vocab 64"

static char base[4096], good[4300], work[4300];

/* A fresh copy of the good model in work/. */
static void fresh(void)
{
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", work, good, work);
    if (system(cmd) != 0)
        exit(1);
}

static void path_in(char *out, size_t n, const char *file) { snprintf(out, n, "%s/%s", work, file); }

/* model_load on work/ must fail with a message holding every needle. */
static void expect_error(const char *what, const char *n1, const char *n2)
{
    model *m = NULL;
    perr err = {{0}};
    int rc = model_load(work, 1, &m, &err);
    CHECK(rc != 0, "%s: model_load succeeded", what);
    if (rc == 0) {
        model_free(m);
        return;
    }
    CHECK(!n1 || strstr(err.msg, n1), "%s: message lacks '%s': %s", what, n1, err.msg);
    CHECK(!n2 || strstr(err.msg, n2), "%s: message lacks '%s': %s", what, n2, err.msg);
    printf("%-28s -> %s\n", what, err.msg);
}

/* file's safetensors header; *data_len = the size of its data section */
static cJSON *read_header(const char *file, size_t *data_len)
{
    char p[4400];
    size_t len, off;
    path_in(p, sizeof p, file);
    char *data = slurp(p, &len);
    cJSON *h = st_header(data, len, &off);
    free(data);
    *data_len = len - off;
    return h;
}

static cJSON *load_header(const char *file)
{
    size_t data_len;
    return read_header(file, &data_len);
}

static void save_header(const char *file, cJSON *h)
{
    char p[4400];
    path_in(p, sizeof p, file);
    st_rewrite(p, h);
    cJSON_Delete(h);
}

static void edit_config(const char *key, cJSON *value)
{
    char p[4400];
    size_t len;
    path_in(p, sizeof p, "config.json");
    char *text = slurp(p, &len);
    cJSON *c = cJSON_Parse(text);
    free(text);
    cJSON_ReplaceItemInObject(c, key, value);
    text = cJSON_Print(c);
    spit(p, text, strlen(text));
    free(text);
    cJSON_Delete(c);
}

/* Adds a small F32 tensor `name` to file, its bytes appended to the data section. */
static void add_tensor(const char *file, const char *name)
{
    size_t data_len;
    cJSON *h = read_header(file, &data_len);
    static const float values[4] = {1, 2, 3, 4};
    double end = (double)data_len;
    cJSON *t = cJSON_AddObjectToObject(h, name);
    cJSON_AddStringToObject(t, "dtype", "F32");
    cJSON_AddItemToObject(t, "shape", cJSON_CreateIntArray((const int[]){4}, 1));
    cJSON *offs = cJSON_AddArrayToObject(t, "data_offsets");
    cJSON_AddItemToArray(offs, cJSON_CreateNumber(end));
    cJSON_AddItemToArray(offs, cJSON_CreateNumber(end + sizeof values));
    save_header(file, h);
    char p[4400];
    path_in(p, sizeof p, file);
    FILE *f = fopen(p, "ab");
    if (!f || fwrite(values, sizeof values, 1, f) != 1 || fclose(f) != 0) {
        fprintf(stderr, "cannot append to %s\n", p);
        exit(1);
    }
}

int main(void)
{
    const char *tmp = getenv("PUNIE_TEST_TMP");
    snprintf(base, sizeof base, "%s/loader", tmp ? tmp : "/tmp");
    mkdir_p(base, NULL);
    snprintf(good, sizeof good, "%s/good", base);
    snprintf(work, sizeof work, "%s/work", base);
    if (gen_model(good, DIMS " --seed 3"))
        return 1;
    const char *ST = "model.safetensors";
    char p[4400];

    /* sanity: the untouched copy loads */
    fresh();
    model *m;
    perr err;
    CHECK(model_load(work, 1, &m, &err) == 0, "good model: %s", err.msg);
    model_free(m);

    /* truncated file: the data section ends early */
    fresh();
    path_in(p, sizeof p, ST);
    size_t len;
    char *data = slurp(p, &len);
    spit(p, data, len / 2);
    expect_error("truncated file", ST, "truncated");
    spit(p, data, 5);
    expect_error("file shorter than 8 bytes", ST, "truncated");
    /* header length larger than the file */
    memcpy(data, "\xff\xff\xff\x00\x00\x00\x00\x00", 8);
    spit(p, data, len);
    expect_error("header length beyond file", ST, "truncated");
    memcpy(data, "\xff\xff\xff\xff\xff\x00\x00\x00", 8);
    spit(p, data, len);
    expect_error("header length over 100 MB", ST, "100 MB");
    free(data);

    /* header not JSON */
    fresh();
    data = slurp(p, &len);
    data[8] = '[';
    spit(p, data, len);
    free(data);
    expect_error("header not JSON", ST, "header");

    /* lying offsets: beyond the end, wrong length, overlapping */
    fresh();
    cJSON *h = load_header(ST);
    cJSON *offs = cJSON_GetObjectItem(cJSON_GetObjectItem(h, "model.norm.weight"), "data_offsets");
    cJSON_ReplaceItemInArray(offs, 1, cJSON_CreateNumber(1e12));
    save_header(ST, h);
    expect_error("offset beyond the file", "model.norm.weight", "beyond the end");

    fresh();
    h = load_header(ST);
    offs = cJSON_GetObjectItem(cJSON_GetObjectItem(h, "model.norm.weight"), "data_offsets");
    cJSON_ReplaceItemInArray(offs, 1, cJSON_CreateNumber(cJSON_GetArrayItem(offs, 1)->valuedouble - 2));
    save_header(ST, h);
    expect_error("length != shape x dtype", "model.norm.weight", "need");

    fresh();
    h = load_header(ST);
    offs = cJSON_GetObjectItem(cJSON_GetObjectItem(h, "model.norm.weight"), "data_offsets");
    double b = cJSON_GetArrayItem(offs, 0)->valuedouble;
    cJSON_ReplaceItemInArray(offs, 0, cJSON_CreateNumber(b + 2));
    cJSON_ReplaceItemInArray(offs, 1, cJSON_CreateNumber(cJSON_GetArrayItem(offs, 1)->valuedouble + 2));
    save_header(ST, h);
    expect_error("overlapping tensors", "model.norm.weight", "overlap");

    fresh();
    h = load_header(ST);
    offs = cJSON_GetObjectItem(cJSON_GetObjectItem(h, "model.norm.weight"), "data_offsets");
    cJSON_ReplaceItemInArray(offs, 0, cJSON_CreateNumber(-8));
    save_header(ST, h);
    expect_error("negative offset", "model.norm.weight", "data_offsets");

    /* wrong dtype, same byte size */
    fresh();
    h = load_header(ST);
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, "model.norm.weight"), "dtype", cJSON_CreateString("I16"));
    save_header(ST, h);
    expect_error("wrong dtype (norm)", "model.norm.weight", "I16");

    fresh();
    h = load_header(ST);
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, "model.layers.0.mlp.up_proj.weight"), "dtype",
                              cJSON_CreateString("F32"));
    save_header(ST, h);
    expect_error("wrong dtype (packed)", "model.layers.0.mlp.up_proj.weight", "U32");

    fresh();
    h = load_header(ST);
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, "model.norm.weight"), "dtype", cJSON_CreateString("Q7"));
    save_header(ST, h);
    expect_error("unknown dtype", "model.norm.weight", "dtype");

    /* wrong shape, same number of elements */
    fresh();
    h = load_header(ST);
    cJSON *shape = cJSON_GetObjectItem(cJSON_GetObjectItem(h, "model.layers.0.self_attn.q_proj.scales"), "shape");
    int rows = cJSON_GetArrayItem(shape, 0)->valueint, cols = cJSON_GetArrayItem(shape, 1)->valueint;
    cJSON_ReplaceItemInArray(shape, 0, cJSON_CreateNumber(rows / 2));
    cJSON_ReplaceItemInArray(shape, 1, cJSON_CreateNumber(cols * 2));
    save_header(ST, h);
    expect_error("wrong shape", "model.layers.0.self_attn.q_proj.scales", "expected");

    /* missing tensor (from the file and the index) */
    fresh();
    h = load_header(ST);
    cJSON_DeleteItemFromObject(h, "model.layers.0.self_attn.k_proj.bias");
    save_header(ST, h);
    path_in(p, sizeof p, "model.safetensors.index.json");
    unlink(p);
    expect_error("missing tensor", "model.layers.0.self_attn.k_proj.bias", "missing");

    /* index.json naming a file outside the folder, or a tensor the file lacks */
    fresh();
    data = slurp(p, &len);
    cJSON *idx = cJSON_Parse(data);
    free(data);
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(idx, "weight_map"), "model.norm.weight",
                              cJSON_CreateString("../good/model.safetensors"));
    char *text = cJSON_Print(idx);
    spit(p, text, strlen(text));
    free(text);
    expect_error("index path escape", "model.norm.weight", "plain name");
    cJSON_AddStringToObject(cJSON_GetObjectItem(idx, "weight_map"), "model.extra.weight", ST);
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(idx, "weight_map"), "model.norm.weight", cJSON_CreateString(ST));
    text = cJSON_Print(idx);
    spit(p, text, strlen(text));
    free(text);
    cJSON_Delete(idx);
    expect_error("index lists absent tensor", "model.extra.weight", ST);

    /* untied config without lm_head */
    fresh();
    h = load_header(ST);
    cJSON_DeleteItemFromObject(h, "lm_head.weight");
    cJSON_DeleteItemFromObject(h, "lm_head.scales");
    cJSON_DeleteItemFromObject(h, "lm_head.biases");
    save_header(ST, h);
    path_in(p, sizeof p, "model.safetensors.index.json");
    unlink(p);
    expect_error("missing lm_head", "lm_head.weight", "tie_word_embeddings");

    /* tensors the model would not use are refused, not ignored: a layer beyond num_hidden_layers, an
     * unknown name (the index need not list it) */
    if (gen_model(work, DIMS " --layers 2 --seed 3"))
        return 1;
    edit_config("num_hidden_layers", cJSON_CreateNumber(1));
    expect_error("layer beyond the config", "model.safetensors: tensor model.layers.1.", "num_hidden_layers 1");
    fresh();
    add_tensor(ST, "model.layers.0.self_attn.rotary_emb.inv_freq");
    expect_error("unknown tensor (inv_freq)", "model.safetensors: tensor model.layers.0.self_attn.rotary_emb.inv_freq",
                 "not used");
    fresh();
    add_tensor(ST, "model.extra.weight");
    expect_error("unknown tensor", "model.safetensors: tensor model.extra.weight", "not used");

    /* unsupported architecture and quantization */
    fresh();
    edit_config("model_type", cJSON_CreateString("llama"));
    expect_error("model_type llama", "llama", "qwen2");
    fresh();
    cJSON *q = cJSON_CreateObject();
    cJSON_AddNumberToObject(q, "bits", 4);
    cJSON_AddNumberToObject(q, "group_size", 32);
    cJSON_AddStringToObject(q, "mode", "mxfp4");
    edit_config("quantization", q);
    expect_error("mode mxfp4", "mxfp4", "affine");
    fresh();
    q = cJSON_CreateObject();
    cJSON_AddNumberToObject(q, "bits", 8);
    cJSON_AddNumberToObject(q, "group_size", 64);
    edit_config("quantization", q);
    expect_error("config bits mismatch", "model.embed_tokens", "8-bit");
    fresh();
    q = cJSON_CreateObject();
    cJSON_AddNumberToObject(q, "bits", 4);
    cJSON_AddNumberToObject(q, "group_size", 64);
    cJSON *ov = cJSON_AddObjectToObject(q, "model.layers.0.mlp.down_proj");
    cJSON_AddNumberToObject(ov, "bits", 8);
    cJSON_AddNumberToObject(ov, "group_size", 64);
    edit_config("quantization", q);
    expect_error("override mismatch", "model.layers.0.mlp.down_proj", "8-bit");
    fresh();
    edit_config("quantization", cJSON_CreateNull());
    edit_config("quantization_config", cJSON_CreateNull());
    expect_error("not quantized", "quantization", "affine");
    fresh();
    edit_config("num_attention_heads", cJSON_CreateNumber(3));
    expect_error("heads do not divide", "num_attention_heads", NULL);

    /* an override that matches the tensors is accepted */
    fresh();
    q = cJSON_CreateObject();
    cJSON_AddNumberToObject(q, "bits", 4);
    cJSON_AddNumberToObject(q, "group_size", 64);
    cJSON_AddStringToObject(q, "mode", "affine");
    ov = cJSON_AddObjectToObject(q, "model.layers.0.mlp.down_proj");
    cJSON_AddNumberToObject(ov, "bits", 4);
    cJSON_AddNumberToObject(ov, "group_size", 64);
    cJSON_AddStringToObject(ov, "mode", "affine");
    edit_config("quantization", q);
    CHECK(model_load(work, 1, &m, &err) == 0, "matching override: %s", err.msg);
    model_free(m);

    /* every single-byte corruption of the header fails cleanly or loads: never a crash */
    fresh();
    path_in(p, sizeof p, ST);
    data = slurp(p, &len);
    size_t hl = 0;
    for (int i = 0; i < 8; i++)
        hl |= (size_t)(unsigned char)data[i] << (8 * i);
    unsigned seed = 12345;
    for (int i = 0; i < 300; i++) {
        char *copy = malloc(len);
        memcpy(copy, data, len);
        for (int k = 0; k < 3; k++) {
            seed = seed * 1103515245u + 12345u;
            size_t at = 8 + (seed >> 8) % hl;
            seed = seed * 1103515245u + 12345u;
            copy[at] = "0123456789[]{},:\"-.eE \x01\xff"[(seed >> 8) % 24];
        }
        spit(p, copy, len);
        free(copy);
        if (model_load(work, 1, &m, &err) == 0)
            model_free(m);
    }
    free(data);

    return test_result("ok");
}
