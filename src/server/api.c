#include "server/api.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "server/stop_filter.h"
#include "server/tool_calls.h"
#include "util/log.h"

struct api_session {
    engine *e;
    openai_request req;
    int32_t *prompt;
    size_t n_prompt;
    gen_params params;
    generation *gen;
    detokenizer *detok;
    stop_filter *stops;
    tool_parser *tools;
    bool started, finished, stopped;
    const char *finish_reason;
    char id[64];
    long created;
    int completion_tokens;
    int cached;       /* prompt tokens reused from the slot's cache */
    strbuf content;   /* non-streaming: the reply text */
    cJSON *calls;     /* the tool calls made */
    cJSON *lp_pending; /* log-probability entries not yet sent */
    cJSON *lp_all;     /* non-streaming: all entries */
    strbuf out;       /* streaming: events not yet sent */
    struct timespec t_start, t_first;
};

static void random_hex(char *out, size_t nbytes)
{
    unsigned char raw[32];
    if (nbytes > sizeof raw)
        nbytes = sizeof raw;
    if (RAND_bytes(raw, (int)nbytes) != 1)
        for (size_t i = 0; i < nbytes; i++)
            raw[i] = (unsigned char)rand();
    for (size_t i = 0; i < nbytes; i++)
        sprintf(out + 2 * i, "%02x", raw[i]);
}

char *api_error_json(const char *message, const char *type, const char *code)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "message", message);
    cJSON_AddStringToObject(e, "type", type);
    cJSON_AddNullToObject(e, "param");
    if (code)
        cJSON_AddStringToObject(e, "code", code);
    else
        cJSON_AddNullToObject(e, "code");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

bool api_session_streaming(const api_session *s) { return s->req.stream; }
strbuf *api_session_output(api_session *s) { return &s->out; }

void api_session_free(api_session *s)
{
    if (!s)
        return;
    if (s->gen)
        generation_end(s->gen);
    openai_request_free(&s->req);
    free(s->prompt);
    if (s->detok)
        detokenizer_free(s->detok);
    stop_filter_free(s->stops);
    tool_parser_free(s->tools);
    sb_free(&s->content);
    sb_free(&s->out);
    cJSON_Delete(s->calls);
    cJSON_Delete(s->lp_pending);
    cJSON_Delete(s->lp_all);
    free(s);
}

int api_session_new(engine *e, openai_request *req, api_session **out, int *status, perr *err)
{
    *out = NULL;
    *status = 500;
    api_session *s = calloc(1, sizeof *s);
    if (!s)
        return perr_set(err, "out of memory");
    s->e = e;
    s->req = *req;
    memset(req, 0, sizeof *req);
    sb_init(&s->content);
    sb_init(&s->out);
    clock_gettime(CLOCK_MONOTONIC, &s->t_start);
    s->created = (long)time(NULL);
    char hex[33] = {0};
    random_hex(hex, 12);
    snprintf(s->id, sizeof s->id, "%s%s", s->req.kind == REQ_CHAT ? "chatcmpl-" : "cmpl-", hex);

    int rc = s->req.kind == REQ_CHAT ? engine_chat_prompt(e, s->req.messages, s->req.tools, &s->prompt, &s->n_prompt, err)
                                     : engine_text_prompt(e, s->req.prompt, &s->prompt, &s->n_prompt, err);
    if (rc != 0) {
        *status = 400;
        api_session_free(s);
        return -1;
    }
    int n_ctx = engine_n_ctx(e);
    if (s->n_prompt == 0) {
        *status = 400;
        api_session_free(s);
        return perr_set(err, "The prompt is empty");
    }
    if (s->n_prompt + 1 > (size_t)n_ctx) {
        *status = 400;
        perr_set(err, "This model's maximum context length is %d tokens, but the prompt has %zu tokens "
                      "(at least 1 more is needed for the reply)", n_ctx, s->n_prompt);
        api_session_free(s);
        return -1;
    }
    engine_default_sampler(e, &s->params.sampling);
    openai_request_sampler(&s->req, &s->params.sampling);
    int room = n_ctx - (int)s->n_prompt;
    s->params.max_tokens = s->req.max_tokens > 0 && s->req.max_tokens < room ? s->req.max_tokens : room;
    s->params.logprobs = s->req.logprobs;
    s->params.top_logprobs = s->req.top_logprobs;
    s->detok = detokenizer_new(engine_tokenizer(e), true);
    s->stops = stop_filter_new(s->req.stop, s->req.n_stop);
    s->tools = tool_parser_new(s->req.kind == REQ_CHAT ? s->req.tools : NULL);
    s->calls = cJSON_CreateArray();
    s->lp_pending = cJSON_CreateArray();
    s->lp_all = cJSON_CreateArray();
    if (!s->detok || !s->stops || !s->tools || !s->calls || !s->lp_pending || !s->lp_all) {
        api_session_free(s);
        return perr_set(err, "out of memory");
    }
    *out = s;
    return 0;
}

/* ---- streaming events ---- */

static cJSON *chunk_base(api_session *s)
{
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "id", s->id);
    cJSON_AddStringToObject(c, "object", s->req.kind == REQ_CHAT ? "chat.completion.chunk" : "text_completion");
    cJSON_AddNumberToObject(c, "created", (double)s->created);
    cJSON_AddStringToObject(c, "model", engine_model_name(s->e));
    cJSON_AddStringToObject(c, "system_fingerprint", "punie-" PUNIE_VERSION);
    return c;
}

static int send_event(api_session *s, cJSON *c)
{
    char *txt = cJSON_PrintUnformatted(c);
    cJSON_Delete(c);
    if (!txt)
        return -1;
    int rc = sb_printf(&s->out, "data: %s\n\n", txt);
    cJSON_free(txt);
    return rc;
}

/* Log-probabilities gathered so far, in the shape of the request's kind; takes them from pending. */
static cJSON *take_logprobs(api_session *s, cJSON **from)
{
    if (!s->req.logprobs)
        return cJSON_CreateNull();
    cJSON *entries = *from;
    *from = cJSON_CreateArray();
    if (s->req.kind == REQ_CHAT) {
        cJSON *lp = cJSON_CreateObject();
        cJSON_AddItemToObject(lp, "content", entries);
        return lp;
    }
    /* Legacy completions shape. */
    cJSON *lp = cJSON_CreateObject();
    cJSON *tokens = cJSON_AddArrayToObject(lp, "tokens");
    cJSON *tlp = cJSON_AddArrayToObject(lp, "token_logprobs");
    cJSON *top = cJSON_AddArrayToObject(lp, "top_logprobs");
    const cJSON *en;
    cJSON_ArrayForEach(en, entries) {
        cJSON_AddItemToArray(tokens, cJSON_Duplicate(cJSON_GetObjectItem(en, "token"), true));
        cJSON_AddItemToArray(tlp, cJSON_Duplicate(cJSON_GetObjectItem(en, "logprob"), true));
        cJSON *m = cJSON_CreateObject();
        const cJSON *alt;
        cJSON_ArrayForEach(alt, cJSON_GetObjectItem(en, "top_logprobs")) {
            const char *t = cJSON_GetStringValue(cJSON_GetObjectItem(alt, "token"));
            if (t && !cJSON_GetObjectItemCaseSensitive(m, t))
                cJSON_AddNumberToObject(m, t, cJSON_GetNumberValue(cJSON_GetObjectItem(alt, "logprob")));
        }
        cJSON_AddItemToArray(top, m);
    }
    cJSON_Delete(entries);
    return lp;
}

static cJSON *delta_chunk(api_session *s, cJSON **delta_out)
{
    cJSON *c = chunk_base(s);
    cJSON *choices = cJSON_AddArrayToObject(c, "choices");
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, ch);
    cJSON_AddNumberToObject(ch, "index", 0);
    if (s->req.kind == REQ_CHAT)
        *delta_out = cJSON_AddObjectToObject(ch, "delta");
    else
        *delta_out = ch;
    cJSON_AddItemToObject(ch, "logprobs", take_logprobs(s, &s->lp_pending));
    cJSON_AddNullToObject(ch, "finish_reason");
    return c;
}

static int on_content(void *ud, const char *text, size_t len)
{
    api_session *s = ud;
    if (!s->req.stream)
        return sb_append(&s->content, text, len);
    char *t = strndup(text, len);
    if (!t)
        return -1;
    cJSON *delta;
    cJSON *c = delta_chunk(s, &delta);
    cJSON_AddStringToObject(delta, s->req.kind == REQ_CHAT ? "content" : "text", t);
    free(t);
    return send_event(s, c);
}

static int on_tool_call(void *ud, const char *name, const char *args)
{
    api_session *s = ud;
    char hex[25] = {0}, id[40];
    random_hex(hex, 12);
    snprintf(id, sizeof id, "call_%s", hex);
    cJSON *call = cJSON_CreateObject();
    int index = cJSON_GetArraySize(s->calls);
    if (s->req.stream)
        cJSON_AddNumberToObject(call, "index", index);
    cJSON_AddStringToObject(call, "id", id);
    cJSON_AddStringToObject(call, "type", "function");
    cJSON *fn = cJSON_AddObjectToObject(call, "function");
    cJSON_AddStringToObject(fn, "name", name);
    cJSON_AddStringToObject(fn, "arguments", args);
    log_info("tool call %s: %s", name, args);
    if (!s->req.stream) {
        cJSON_AddItemToArray(s->calls, call);
        return 0;
    }
    cJSON_AddItemToArray(s->calls, cJSON_Duplicate(call, true));
    cJSON *delta;
    cJSON *c = delta_chunk(s, &delta);
    cJSON *arr = cJSON_AddArrayToObject(delta, "tool_calls");
    cJSON_AddItemToArray(arr, call);
    return send_event(s, c);
}

static cJSON *usage_json(api_session *s)
{
    cJSON *u = cJSON_CreateObject();
    int prompt = (int)s->n_prompt;
    cJSON_AddNumberToObject(u, "prompt_tokens", prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", s->completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", prompt + s->completion_tokens);
    cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", s->cached);
    return u;
}

int api_session_start(api_session *s, bool (*should_abort)(void *), void *ud, perr *err)
{
    s->gen = engine_begin(s->e, s->prompt, s->n_prompt, &s->params, should_abort, ud, err);
    if (!s->gen)
        return -1;
    s->started = true;
    if (s->req.stream && s->req.kind == REQ_CHAT) {
        cJSON *delta;
        cJSON *c = delta_chunk(s, &delta);
        cJSON_AddStringToObject(delta, "role", "assistant");
        cJSON_AddStringToObject(delta, "content", "");
        if (send_event(s, c) != 0)
            return perr_set(err, "out of memory");
    }
    return 0;
}

static const tool_parser_sink *sink_of(api_session *s, tool_parser_sink *sink)
{
    sink->content = on_content;
    sink->tool_call = on_tool_call;
    sink->ud = s;
    return sink;
}

/* Text from the detokenizer through the stop strings to the tool-call parser. Returns 1 at a stop string. */
static int push_text(api_session *s, const char *text, size_t len)
{
    if (s->stopped || len == 0)
        return s->stopped;
    strbuf f;
    sb_init(&f);
    int rc = stop_filter_feed(s->stops, text, len, &f);
    tool_parser_sink sink;
    if (rc >= 0 && tool_parser_feed(s->tools, sb_str(&f), f.len, sink_of(s, &sink)) != 0)
        rc = -1;
    sb_free(&f);
    if (rc == 1)
        s->stopped = true;
    return rc;
}

static double seconds_since(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) * 1e-9;
}

static int finish(api_session *s, const char *reason)
{
    tool_parser_sink sink;
    if (!s->stopped) {
        char *rest = NULL;
        size_t n = 0;
        if (detokenizer_flush(s->detok, &rest, &n) == 0 && n)
            push_text(s, rest, n);
        free(rest);
    }
    if (!s->stopped) {
        strbuf f;
        sb_init(&f);
        stop_filter_flush(s->stops, &f);
        tool_parser_feed(s->tools, sb_str(&f), f.len, sink_of(s, &sink));
        sb_free(&f);
    }
    tool_parser_finish(s->tools, sink_of(s, &sink));
    if (s->stopped)
        reason = "stop";
    if (strcmp(reason, "stop") == 0 && cJSON_GetArraySize(s->calls) > 0)
        reason = "tool_calls";
    s->finish_reason = reason;
    s->finished = true;
    double total = seconds_since(&s->t_start);
    double gen_s = s->completion_tokens > 1 ? seconds_since(&s->t_first) : 0;
    const int batch = s->gen ? generation_max_batch(s->gen) : 0;
    int drafted = 0, accepted = 0;
    if (s->gen)
        generation_lookup_stats(s->gen, &drafted, &accepted);
    char batched[192] = "";
    if (batch > 1)
        snprintf(batched, sizeof batched, ", decoded in batches of up to %d", batch);
    if (drafted > 0)
        snprintf(batched + strlen(batched), sizeof batched - strlen(batched), ", lookup %d of %d draft tokens",
                 accepted, drafted);
    const int beside = s->gen ? generation_steps_beside(s->gen) : 0;
    if (beside > 0)
        snprintf(batched + strlen(batched), sizeof batched - strlen(batched),
                 ", prompt read beside %d decode steps of other replies", beside);
    log_info("%s: prompt %zu tokens (%d cached), reply %d tokens, %s, %.2f s%s%.2f tok/s%s", s->id, s->n_prompt,
             s->gen ? generation_cached_tokens(s->gen) : 0, s->completion_tokens, reason, total,
             gen_s > 0 ? ", decode " : "", gen_s > 0 ? (s->completion_tokens - 1) / gen_s : 0.0, batched);
    /* The slot is free for the next request as soon as the reply is complete. */
    s->cached = s->gen ? generation_cached_tokens(s->gen) : 0;
    generation_end(s->gen);
    s->gen = NULL;
    if (!s->req.stream)
        return 0;
    cJSON *delta;
    cJSON *c = delta_chunk(s, &delta);
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(c, "choices"), 0);
    cJSON_ReplaceItemInObject(ch, "finish_reason", cJSON_CreateString(reason));
    if (s->req.kind != REQ_CHAT)
        cJSON_AddStringToObject(delta, "text", "");
    if (send_event(s, c) != 0)
        return -1;
    if (s->req.include_usage) {
        cJSON *u = chunk_base(s);
        cJSON_AddArrayToObject(u, "choices");
        cJSON_AddItemToObject(u, "usage", usage_json(s));
        if (send_event(s, u) != 0)
            return -1;
    }
    return sb_appends(&s->out, "data: [DONE]\n\n");
}

static cJSON *logprob_entry(api_session *s, const gen_token *t)
{
    const tokenizer *tk = engine_tokenizer(s->e);
    cJSON *en = cJSON_CreateObject();
    for (int k = -1; k < t->n_top; k++) {
        int32_t id = k < 0 ? t->id : t->top_ids[k];
        char *txt = NULL;
        size_t len = 0;
        if (tokenizer_decode(tk, &id, 1, false, &txt, &len, NULL) != 0) {
            txt = strdup("");
            len = 0;
        }
        cJSON *obj = k < 0 ? en : cJSON_CreateObject();
        cJSON_AddStringToObject(obj, "token", txt ? txt : "");
        cJSON_AddNumberToObject(obj, "logprob", k < 0 ? t->logprob : t->top_logprobs[k]);
        cJSON *bytes = cJSON_AddArrayToObject(obj, "bytes");
        for (size_t i = 0; txt && i < len; i++)
            cJSON_AddItemToArray(bytes, cJSON_CreateNumber((unsigned char)txt[i]));
        free(txt);
        if (k < 0)
            cJSON_AddArrayToObject(en, "top_logprobs");
        else
            cJSON_AddItemToArray(cJSON_GetObjectItem(en, "top_logprobs"), obj);
    }
    return en;
}

int api_session_step(api_session *s, perr *err)
{
    if (s->finished)
        return 0;
    if (!s->started)
        return perr_set(err, "the session was not started");
    gen_token tok;
    enum gen_finish why;
    int rc = generation_next(s->gen, &tok, &why, err);
    if (rc < 0) {
        log_error("%s: generation failed: %s", s->id, err->msg);
        return -1;
    }
    if (rc == 0)
        return finish(s, why == GEN_LENGTH ? "length" : "stop") == 0 ? 0 : perr_set(err, "out of memory");
    if (rc == 2) {
        /* Still reading a long prompt: an SSE comment keeps clients and proxies from timing out. */
        if (s->req.stream) {
            int done = 0, total = 0;
            generation_prefill_progress(s->gen, &done, &total);
            if (sb_printf(&s->out, ": keepalive %d/%d\n\n", done, total) != 0)
                return perr_set(err, "out of memory");
        }
        return 1;
    }
    if (s->completion_tokens == 0)
        clock_gettime(CLOCK_MONOTONIC, &s->t_first);
    s->completion_tokens++;
    if (s->req.logprobs) {
        cJSON *en = logprob_entry(s, &tok);
        cJSON_AddItemToArray(s->req.stream ? s->lp_pending : s->lp_all, en);
    }
    char *piece = NULL;
    size_t n = 0;
    if (detokenizer_push(s->detok, tok.id, &piece, &n) != 0) {
        free(piece);
        return perr_set(err, "cannot decode token %d", tok.id);
    }
    int prc = push_text(s, piece ? piece : "", n);
    free(piece);
    if (prc < 0)
        return perr_set(err, "out of memory");
    if (prc == 1)
        return finish(s, "stop") == 0 ? 0 : perr_set(err, "out of memory");
    return 1;
}

char *api_session_result(api_session *s)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", s->id);
    cJSON_AddStringToObject(root, "object", s->req.kind == REQ_CHAT ? "chat.completion" : "text_completion");
    cJSON_AddNumberToObject(root, "created", (double)s->created);
    cJSON_AddStringToObject(root, "model", engine_model_name(s->e));
    cJSON_AddStringToObject(root, "system_fingerprint", "punie-" PUNIE_VERSION);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, ch);
    cJSON_AddNumberToObject(ch, "index", 0);
    bool has_calls = cJSON_GetArraySize(s->calls) > 0;
    if (s->req.kind == REQ_CHAT) {
        cJSON *msg = cJSON_AddObjectToObject(ch, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        /* Whitespace around tool calls is not a reply. */
        bool blank = true;
        for (size_t i = 0; i < s->content.len; i++)
            if (!strchr(" \t\r\n", s->content.data[i]))
                blank = false;
        if (s->content.len == 0 || (has_calls && blank))
            cJSON_AddNullToObject(msg, "content");
        else
            cJSON_AddStringToObject(msg, "content", sb_str(&s->content));
        if (has_calls) {
            cJSON_AddItemToObject(msg, "tool_calls", s->calls);
            s->calls = cJSON_CreateArray();
        }
    } else {
        cJSON_AddStringToObject(ch, "text", sb_str(&s->content));
    }
    cJSON_AddItemToObject(ch, "logprobs", take_logprobs(s, &s->lp_all));
    cJSON_AddStringToObject(ch, "finish_reason", s->finish_reason ? s->finish_reason : "stop");
    cJSON_AddItemToObject(root, "usage", usage_json(s));
    char *txt = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return txt;
}
