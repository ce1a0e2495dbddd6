#include "server/openai_request.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "server/strbuf.h"

static const cJSON *field(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsNull(v) ? NULL : v; /* null means "not given", as in OpenAI's API */
}

static int get_number(const cJSON *root, const char *name, double lo, double hi, bool *has, float *out, perr *err)
{
    const cJSON *v = field(root, name);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return perr_set(err, "Invalid type for '%s': expected a number", name);
    if (v->valuedouble < lo || v->valuedouble > hi)
        return perr_set(err, "Invalid value for '%s': %g is out of range [%g, %g]", name, v->valuedouble, lo, hi);
    *has = true;
    *out = (float)v->valuedouble;
    return 0;
}

static int get_int(const cJSON *root, const char *name, double lo, double hi, bool *has, double *out, perr *err)
{
    const cJSON *v = field(root, name);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || floor(v->valuedouble) != v->valuedouble)
        return perr_set(err, "Invalid type for '%s': expected an integer", name);
    if (v->valuedouble < lo || v->valuedouble > hi)
        return perr_set(err, "Invalid value for '%s': %.0f is out of range [%.0f, %.0f]", name, v->valuedouble, lo,
                        hi);
    *has = true;
    *out = v->valuedouble;
    return 0;
}

static int get_bool(const cJSON *root, const char *name, bool *out, perr *err)
{
    const cJSON *v = field(root, name);
    if (!v)
        return 0;
    if (!cJSON_IsBool(v))
        return perr_set(err, "Invalid type for '%s': expected a boolean", name);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Content: a string, null, or a list of {"type":"text","text":...} parts, made into one string. */
static int normalise_content(const cJSON *content, int i, cJSON *msg_out, perr *err)
{
    if (!content || cJSON_IsNull(content))
        return cJSON_AddStringToObject(msg_out, "content", "") ? 0 : perr_set(err, "out of memory");
    if (cJSON_IsString(content))
        return cJSON_AddStringToObject(msg_out, "content", content->valuestring) ? 0 : perr_set(err, "out of memory");
    if (!cJSON_IsArray(content))
        return perr_set(err, "Invalid type for 'messages[%d].content': expected a string, null or an array of text parts", i);
    strbuf sb;
    sb_init(&sb);
    int j = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, content) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 ||
            !cJSON_IsString(text)) {
            sb_free(&sb);
            return perr_set(err, "Invalid value for 'messages[%d].content[%d]': only parts of type 'text' with a "
                                 "string 'text' are supported", i, j);
        }
        if (sb_appends(&sb, text->valuestring) != 0) {
            sb_free(&sb);
            return perr_set(err, "out of memory");
        }
        j++;
    }
    int rc = cJSON_AddStringToObject(msg_out, "content", sb_str(&sb)) ? 0 : perr_set(err, "out of memory");
    sb_free(&sb);
    return rc;
}

/* Assistant tool_calls: copied, with string arguments parsed into objects for the template. */
static int normalise_tool_calls(const cJSON *calls, int i, cJSON *msg_out, perr *err)
{
    if (!cJSON_IsArray(calls))
        return perr_set(err, "Invalid type for 'messages[%d].tool_calls': expected an array", i);
    cJSON *copy = cJSON_AddArrayToObject(msg_out, "tool_calls");
    if (!copy)
        return perr_set(err, "out of memory");
    int j = 0;
    const cJSON *call;
    cJSON_ArrayForEach(call, calls) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(call, "function");
        if (!cJSON_IsObject(call) || !cJSON_IsObject(fn))
            return perr_set(err, "Invalid value for 'messages[%d].tool_calls[%d]': expected an object with 'function'", i, j);
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        if (!cJSON_IsString(name))
            return perr_set(err, "Invalid type for 'messages[%d].tool_calls[%d].function.name': expected a string", i, j);
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
        cJSON *c = cJSON_Duplicate(call, true);
        if (!c)
            return perr_set(err, "out of memory");
        cJSON_AddItemToArray(copy, c);
        if (cJSON_IsString(args)) {
            cJSON *parsed = cJSON_Parse(args->valuestring);
            if (!parsed)
                return perr_set(err, "Invalid value for 'messages[%d].tool_calls[%d].function.arguments': not valid JSON", i, j);
            cJSON_ReplaceItemInObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(c, "function"), "arguments", parsed);
        }
        j++;
    }
    return 0;
}

static int parse_messages(const cJSON *msgs, openai_request *r, perr *err)
{
    if (!msgs)
        return perr_set(err, "Missing required field 'messages'");
    if (!cJSON_IsArray(msgs))
        return perr_set(err, "Invalid type for 'messages': expected an array");
    int n = cJSON_GetArraySize(msgs);
    if (n == 0)
        return perr_set(err, "Invalid value for 'messages': it must not be empty");
    if (n > REQ_MAX_MESSAGES)
        return perr_set(err, "Invalid value for 'messages': %d messages, at most %d are accepted", n, REQ_MAX_MESSAGES);
    r->messages = cJSON_CreateArray();
    if (!r->messages)
        return perr_set(err, "out of memory");
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        if (!cJSON_IsObject(m))
            return perr_set(err, "Invalid type for 'messages[%d]': expected an object", i);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsString(role))
            return perr_set(err, "Invalid type for 'messages[%d].role': expected a string", i);
        const char *rs = role->valuestring;
        if (strcmp(rs, "developer") == 0)
            rs = "system";
        if (strcmp(rs, "system") != 0 && strcmp(rs, "user") != 0 && strcmp(rs, "assistant") != 0 &&
            strcmp(rs, "tool") != 0)
            return perr_set(err, "Invalid value for 'messages[%d].role': '%.64s' (expected system, user, assistant "
                                 "or tool)", i, role->valuestring);
        cJSON *out = cJSON_CreateObject();
        if (!out)
            return perr_set(err, "out of memory");
        cJSON_AddItemToArray(r->messages, out);
        if (!cJSON_AddStringToObject(out, "role", rs))
            return perr_set(err, "out of memory");
        if (normalise_content(cJSON_GetObjectItemCaseSensitive(m, "content"), i, out, err) != 0)
            return -1;
        const cJSON *calls = field(m, "tool_calls");
        if (calls && strcmp(rs, "assistant") == 0 && cJSON_GetArraySize(calls) > 0) {
            if (normalise_tool_calls(calls, i, out, err) != 0)
                return -1;
        } else if (calls && !cJSON_IsArray(calls)) {
            return perr_set(err, "Invalid type for 'messages[%d].tool_calls': expected an array", i);
        }
        const cJSON *name = field(m, "name");
        if (name && !cJSON_IsString(name))
            return perr_set(err, "Invalid type for 'messages[%d].name': expected a string", i);
        const cJSON *tcid = field(m, "tool_call_id");
        if (tcid) {
            if (!cJSON_IsString(tcid))
                return perr_set(err, "Invalid type for 'messages[%d].tool_call_id': expected a string", i);
            cJSON_AddStringToObject(out, "tool_call_id", tcid->valuestring);
        }
        i++;
    }
    return 0;
}

static int parse_tools(const cJSON *root, openai_request *r, perr *err)
{
    const cJSON *tools = field(root, "tools");
    const cJSON *choice = field(root, "tool_choice");
    bool none = false;
    if (choice) {
        if (!cJSON_IsString(choice))
            return perr_set(err, "Invalid value for 'tool_choice': only \"none\" and \"auto\" are supported");
        if (strcmp(choice->valuestring, "none") == 0)
            none = true;
        else if (strcmp(choice->valuestring, "auto") != 0)
            return perr_set(err, "Invalid value for 'tool_choice': '%.64s' (only \"none\" and \"auto\" are supported)",
                            choice->valuestring);
    }
    if (!tools)
        return 0;
    if (!cJSON_IsArray(tools))
        return perr_set(err, "Invalid type for 'tools': expected an array");
    int n = cJSON_GetArraySize(tools);
    if (n > REQ_MAX_TOOLS)
        return perr_set(err, "Invalid value for 'tools': %d tools, at most %d are accepted", n, REQ_MAX_TOOLS);
    int i = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, tools) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(t, "type");
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        if (!cJSON_IsObject(t) || !cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0 ||
            !cJSON_IsObject(fn))
            return perr_set(err, "Invalid value for 'tools[%d]': expected {\"type\": \"function\", \"function\": {...}}", i);
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        if (!cJSON_IsString(name) || !name->valuestring[0])
            return perr_set(err, "Invalid value for 'tools[%d].function.name': expected a non-empty string", i);
        i++;
    }
    if (n > 0 && !none)
        r->tools = tools;
    return 0;
}

static int parse_stop(const cJSON *root, openai_request *r, perr *err)
{
    const cJSON *stop = field(root, "stop");
    if (!stop)
        return 0;
    if (cJSON_IsString(stop)) {
        if (!stop->valuestring[0])
            return 0;
        if (strlen(stop->valuestring) > REQ_MAX_STOP_LEN)
            return perr_set(err, "Invalid value for 'stop': longer than %d bytes", REQ_MAX_STOP_LEN);
        r->stop[r->n_stop] = strdup(stop->valuestring);
        if (!r->stop[r->n_stop])
            return perr_set(err, "out of memory");
        r->n_stop++;
        return 0;
    }
    if (!cJSON_IsArray(stop))
        return perr_set(err, "Invalid type for 'stop': expected a string or an array of strings");
    if (cJSON_GetArraySize(stop) > REQ_MAX_STOP)
        return perr_set(err, "Invalid value for 'stop': at most %d stop strings are accepted", REQ_MAX_STOP);
    int i = 0;
    const cJSON *s;
    cJSON_ArrayForEach(s, stop) {
        if (!cJSON_IsString(s))
            return perr_set(err, "Invalid type for 'stop[%d]': expected a string", i);
        if (strlen(s->valuestring) > REQ_MAX_STOP_LEN)
            return perr_set(err, "Invalid value for 'stop[%d]': longer than %d bytes", i, REQ_MAX_STOP_LEN);
        if (s->valuestring[0]) {
            r->stop[r->n_stop] = strdup(s->valuestring);
            if (!r->stop[r->n_stop])
                return perr_set(err, "out of memory");
            r->n_stop++;
        }
        i++;
    }
    return 0;
}

static int parse_fields(enum request_kind kind, openai_request *r, perr *err)
{
    const cJSON *root = r->root;
    if (kind == REQ_CHAT) {
        if (parse_messages(field(root, "messages"), r, err) != 0 || parse_tools(root, r, err) != 0)
            return -1;
    } else {
        const cJSON *prompt = field(root, "prompt");
        if (!prompt)
            return perr_set(err, "Missing required field 'prompt'");
        if (!cJSON_IsString(prompt))
            return perr_set(err, "Invalid type for 'prompt': expected a string");
        r->prompt = prompt->valuestring;
    }
    const cJSON *model = field(root, "model");
    if (model && !cJSON_IsString(model))
        return perr_set(err, "Invalid type for 'model': expected a string");
    if (get_bool(root, "stream", &r->stream, err) != 0)
        return -1;
    const cJSON *so = field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so))
            return perr_set(err, "Invalid type for 'stream_options': expected an object");
        const cJSON *iu = field(so, "include_usage");
        if (iu && !cJSON_IsBool(iu))
            return perr_set(err, "Invalid type for 'stream_options.include_usage': expected a boolean");
        r->include_usage = cJSON_IsTrue(iu);
    }
    bool has = false;
    double d = 0;
    const char *mt = field(root, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    if (get_int(root, mt, 1, REQ_MAX_TOKENS_LIMIT, &has, &d, err) != 0)
        return -1;
    r->max_tokens = has ? (int)d : -1;
    if (get_number(root, "temperature", 0, 100, &r->has_temperature, &r->temperature, err) != 0 ||
        get_number(root, "top_p", 0, 1, &r->has_top_p, &r->top_p, err) != 0 ||
        get_number(root, "min_p", 0, 1, &r->has_min_p, &r->min_p, err) != 0 ||
        get_number(root, "repetition_penalty", 0, 100, &r->has_repetition_penalty, &r->repetition_penalty, err) != 0 ||
        get_number(root, "presence_penalty", -2, 2, &r->has_presence, &r->presence_penalty, err) != 0 ||
        get_number(root, "frequency_penalty", -2, 2, &r->has_frequency, &r->frequency_penalty, err) != 0)
        return -1;
    if (r->has_top_p && r->top_p <= 0)
        return perr_set(err, "Invalid value for 'top_p': must be greater than 0");
    if (get_int(root, "top_k", -1, 1 << 30, &r->has_top_k, &d, err) != 0)
        return -1;
    r->top_k = r->has_top_k ? (int)(d < 0 ? 0 : d) : 0;
    if (get_int(root, "repetition_context_size", 0, 1 << 20, &r->has_repetition_context, &d, err) != 0)
        return -1;
    r->repetition_context = r->has_repetition_context ? (int)d : 0;
    if (get_int(root, "seed", -9007199254740991.0, 9007199254740991.0, &r->has_seed, &d, err) != 0)
        return -1;
    r->seed = r->has_seed ? (uint64_t)(int64_t)d : 0;
    const cJSON *n = field(root, "n");
    if (n && (!cJSON_IsNumber(n) || n->valuedouble != 1))
        return perr_set(err, "Invalid value for 'n': only 1 is supported");
    if (parse_stop(root, r, err) != 0)
        return -1;
    /* logprobs: a boolean for chat; an integer (how many alternatives) for completions. */
    const cJSON *lp = field(root, "logprobs");
    if (lp) {
        if (kind == REQ_COMPLETION && cJSON_IsNumber(lp)) {
            if (lp->valuedouble < 0 || lp->valuedouble > REQ_MAX_TOP_LOGPROBS || floor(lp->valuedouble) != lp->valuedouble)
                return perr_set(err, "Invalid value for 'logprobs': expected an integer in [0, %d]", REQ_MAX_TOP_LOGPROBS);
            r->logprobs = true;
            r->top_logprobs = (int)lp->valuedouble;
        } else if (cJSON_IsBool(lp)) {
            r->logprobs = cJSON_IsTrue(lp);
        } else {
            return perr_set(err, "Invalid type for 'logprobs': expected a boolean");
        }
    }
    bool has_top = false;
    if (get_int(root, "top_logprobs", -1, REQ_MAX_TOP_LOGPROBS, &has_top, &d, err) != 0)
        return -1;
    if (has_top && d > 0) {
        r->top_logprobs = (int)d;
        if (!r->logprobs && kind == REQ_CHAT)
            return perr_set(err, "Invalid value for 'top_logprobs': 'logprobs' must be true to use it");
    }
    return 0;
}

int openai_request_parse(enum request_kind kind, const char *body, size_t len, openai_request *out, perr *err)
{
    memset(out, 0, sizeof *out);
    out->kind = kind;
    out->max_tokens = -1;
    const char *end = NULL;
    out->root = cJSON_ParseWithLengthOpts(body, len, &end, false);
    if (!out->root)
        return perr_set(err, "Invalid JSON in request body");
    while (end && (size_t)(end - body) < len && (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t'))
        end++;
    if (!end || (size_t)(end - body) != len) {
        openai_request_free(out);
        return perr_set(err, "Invalid JSON in request body: unexpected data after the object");
    }
    if (!cJSON_IsObject(out->root)) {
        openai_request_free(out);
        return perr_set(err, "Invalid request body: expected a JSON object");
    }
    if (parse_fields(kind, out, err) != 0) {
        openai_request_free(out);
        return -1;
    }
    return 0;
}

void openai_request_free(openai_request *r)
{
    cJSON_Delete(r->root);
    cJSON_Delete(r->messages);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    memset(r, 0, sizeof *r);
}

void openai_request_sampler(const openai_request *r, sampler_params *p)
{
    if (r->has_temperature)
        p->temperature = r->temperature;
    if (r->has_top_p)
        p->top_p = r->top_p;
    if (r->has_top_k)
        p->top_k = r->top_k;
    if (r->has_min_p)
        p->min_p = r->min_p;
    if (r->has_repetition_penalty)
        p->repetition_penalty = r->repetition_penalty;
    if (r->has_repetition_context)
        p->repetition_context = r->repetition_context;
    if (r->has_presence)
        p->presence_penalty = r->presence_penalty;
    if (r->has_frequency)
        p->frequency_penalty = r->frequency_penalty;
    if (r->has_seed) {
        p->seed = r->seed;
        p->has_seed = true;
    }
}
