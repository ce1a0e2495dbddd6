/* Chat template: compiles the model's Jinja chat_template once and renders OpenAI-style requests
 * with Hugging Face semantics (see jinja_parse.c for whitespace rules, jinja_eval.c for values). */
#include "tokenizer/chat_template.h"

#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/jinja_eval.h"
#include "tokenizer/jinja_parse.h"

#define MAX_TEMPLATE_BYTES ((size_t)4 << 20)
#define COMPILE_MEMORY ((size_t)64 << 20)
#define RENDER_MEMORY ((size_t)256 << 20)

static const jinja_limits LIMITS = {
    .max_output = (size_t)16 << 20,
    .max_steps = 5000000,
    .max_call_depth = 64,
};

struct chat_template {
    jarena arena;
    jnodes body;
};

int chat_template_compile(const char *source, chat_template **out, perr *err)
{
    *out = NULL;
    if (!source)
        return perr_set(err, "chat template: no template source");
    size_t len = strlen(source);
    if (len > MAX_TEMPLATE_BYTES)
        return perr_set(err, "chat template: template larger than %zu bytes", MAX_TEMPLATE_BYTES);
    chat_template *t = calloc(1, sizeof *t);
    if (!t)
        return perr_set(err, "chat template: out of memory");
    jarena_init(&t->arena, COMPILE_MEMORY);
    jmp_buf jump;
    jctx c = {.arena = &t->arena, .err = err, .jump = &jump};
    if (setjmp(jump)) {
        jarena_free(&t->arena);
        free(t);
        return perr_wrap(err, "chat template");
    }
    t->body = jinja_parse(&c, source, len);
    *out = t;
    return 0;
}

void chat_template_free(chat_template *t)
{
    if (!t)
        return;
    jarena_free(&t->arena);
    free(t);
}

/* Request normalisation as mlx-lm's server does it before templating: content lists become the
 * concatenation of their text parts, null content becomes "", and tool-call arguments given as a
 * JSON string are parsed into an object. */
static jv content_value(jctx *c, const cJSON *content, size_t index)
{
    if (cJSON_IsString(content))
        return jv_str(c, content->valuestring ? content->valuestring : "");
    if (cJSON_IsNull(content))
        return jv_strn("", 0);
    if (!cJSON_IsArray(content))
        jinja_fail(c, "messages[%zu]: content must be a string, null or a list of text parts", index);
    jbuf b = {0};
    const cJSON *part;
    cJSON_ArrayForEach(part, content)
    {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type))
            jinja_fail(c, "messages[%zu]: content parts must be objects with a \"type\"", index);
        if (strcmp(type->valuestring, "text") != 0)
            jinja_fail(c, "messages[%zu]: only 'text' content parts are supported, got '%.64s'", index,
                       type->valuestring);
        if (!cJSON_IsString(text))
            jinja_fail(c, "messages[%zu]: text content part without a \"text\" string", index);
        jbuf_puts(c, &b, text->valuestring);
    }
    return jbuf_value(c, &b);
}

static jv tool_calls_value(jctx *c, const cJSON *calls, size_t index)
{
    jv v = jv_from_cjson(c, calls, 1);
    if (v.k != JV_LIST)
        return v;
    for (size_t i = 0; i < v.u.l->n; i++) {
        jv call = v.u.l->items[i], fn, args;
        if (call.k != JV_DICT || !jv_dict_get_str(call, "function", &fn) || fn.k != JV_DICT)
            continue;
        if (!jv_dict_get_str(fn, "arguments", &args) || args.k != JV_STR || args.u.s.n == 0)
            continue;
        cJSON *parsed = cJSON_ParseWithLength(args.u.s.p, args.u.s.n);
        if (!parsed)
            jinja_fail(c, "messages[%zu].tool_calls[%zu]: function.arguments is not valid JSON", index, i);
        /* Convert, then free the cJSON tree even if conversion fails. */
        jmp_buf *outer = c->jump, inner;
        c->jump = &inner;
        if (setjmp(inner)) {
            c->jump = outer;
            cJSON_Delete(parsed);
            jinja_rethrow(c);
        }
        jv obj = jv_from_cjson(c, parsed, 3);
        c->jump = outer;
        cJSON_Delete(parsed);
        jv_dict_set_str(c, fn, "arguments", obj);
    }
    return v;
}

static jv messages_value(jctx *c, const cJSON *messages)
{
    if (!cJSON_IsArray(messages))
        jinja_fail(c, "messages must be an array");
    jv list = jv_list_new(c, 0);
    size_t index = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, messages)
    {
        if (!cJSON_IsObject(m))
            jinja_fail(c, "messages[%zu] must be an object", index);
        jv msg = jv_dict_new(c);
        const cJSON *field;
        cJSON_ArrayForEach(field, m)
        {
            const char *key = field->string ? field->string : "";
            jv val;
            if (!strcmp(key, "content"))
                val = content_value(c, field, index);
            else if (!strcmp(key, "tool_calls"))
                val = tool_calls_value(c, field, index);
            else
                val = jv_from_cjson(c, field, 1);
            jv_dict_set_str(c, msg, key, val);
        }
        jv_list_push(c, list, msg);
        index++;
    }
    return list;
}

int chat_template_render(const chat_template *t, const cJSON *messages, const cJSON *tools,
                         bool add_generation_prompt, const cJSON *extra, char **out, size_t *len, perr *err)
{
    *out = NULL;
    if (len)
        *len = 0;
    if (!t)
        return perr_set(err, "chat template: no template");
    jarena arena;
    jarena_init(&arena, RENDER_MEMORY);
    jmp_buf jump;
    jctx c = {.arena = &arena, .err = err, .jump = &jump};
    if (setjmp(jump)) {
        jarena_free(&arena);
        /* raise_exception() messages are the template author's words for the client; keep them. */
        if (c.raised)
            return -1;
        return perr_wrap(err, "chat template");
    }
    jv vars = jv_dict_new(&c);
    if (extra) {
        if (!cJSON_IsObject(extra))
            jinja_fail(&c, "extra template variables must be an object");
        const cJSON *it;
        cJSON_ArrayForEach(it, extra)
            jv_dict_set_str(&c, vars, it->string ? it->string : "", jv_from_cjson(&c, it, 0));
    }
    jv_dict_set_str(&c, vars, "messages", messages_value(&c, messages));
    jv_dict_set_str(&c, vars, "tools", tools && !cJSON_IsNull(tools) ? jv_from_cjson(&c, tools, 0) : jv_none());
    jv doc;
    if (!jv_dict_get_str(vars, "documents", &doc))
        jv_dict_set_str(&c, vars, "documents", jv_none());
    jv_dict_set_str(&c, vars, "add_generation_prompt", jv_bool(add_generation_prompt));
    jbuf text = {0};
    jinja_render(&c, &t->body, vars, &LIMITS, &text);
    char *res = malloc(text.n + 1);
    if (!res) {
        jarena_free(&arena);
        return perr_set(err, "chat template: out of memory");
    }
    if (text.n)
        memcpy(res, text.p, text.n);
    res[text.n] = 0;
    *out = res;
    if (len)
        *len = text.n;
    jarena_free(&arena);
    return 0;
}
