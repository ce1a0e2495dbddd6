#include "server/tool_calls.h"

#include <stdlib.h>
#include <string.h>

#include "server/strbuf.h"

#define TAG_OPEN "<tool_call>"
#define TAG_CLOSE "</tool_call>"
#define FENCE_OPEN "```json"
#define FENCE_CLOSE "```"
/* A candidate that grows past this without closing is not a tool call: pass it on as content. */
#define CANDIDATE_MAX (256 * 1024)
#define MAX_TOOL_NAMES 256

enum state { ST_TEXT, ST_TAG, ST_FENCE, ST_BARE };

struct tool_parser {
    bool enabled;   /* tools were offered */
    char **names;   /* offered tool names (for the fenced / bare forms) */
    int n_names;
    enum state st;
    strbuf pend;    /* ST_TEXT: text not yet passed on */
    strbuf body;    /* candidate text, opener included */
    strbuf ws;      /* whitespace just before the candidate: dropped if it is a call */
    bool line_start; /* the text passed on so far ends a line (or nothing but whitespace was seen) */
    /* ST_BARE scanner state */
    size_t scan_pos;
    int depth;
    bool in_str, esc;
    int n_calls;
    bool skip_ws;   /* whitespace right after a call separates calls: not content */
};

tool_parser *tool_parser_new(const cJSON *tools)
{
    tool_parser *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    sb_init(&p->pend);
    sb_init(&p->body);
    sb_init(&p->ws);
    p->line_start = true;
    if (!cJSON_IsArray(tools) || cJSON_GetArraySize(tools) == 0)
        return p;
    p->enabled = true;
    int n = cJSON_GetArraySize(tools);
    if (n > MAX_TOOL_NAMES)
        n = MAX_TOOL_NAMES;
    p->names = calloc((size_t)n, sizeof *p->names);
    if (!p->names) {
        tool_parser_free(p);
        return NULL;
    }
    const cJSON *t;
    cJSON_ArrayForEach(t, tools) {
        if (p->n_names >= n)
            break;
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn ? fn : t, "name");
        if (cJSON_IsString(name) && name->valuestring[0]) {
            p->names[p->n_names] = strdup(name->valuestring);
            if (!p->names[p->n_names]) {
                tool_parser_free(p);
                return NULL;
            }
            p->n_names++;
        }
    }
    return p;
}

void tool_parser_free(tool_parser *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->n_names; i++)
        free(p->names[i]);
    free(p->names);
    sb_free(&p->pend);
    sb_free(&p->body);
    sb_free(&p->ws);
    free(p);
}

int tool_parser_n_calls(const tool_parser *p) { return p->n_calls; }

static bool known_name(const tool_parser *p, const char *name)
{
    for (int i = 0; i < p->n_names; i++)
        if (strcmp(p->names[i], name) == 0)
            return true;
    return false;
}

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

int tool_call_parse(const tool_parser *p, const char *text, size_t len, bool require_known, char **name,
                    char **arguments)
{
    *name = *arguments = NULL;
    while (len && is_ws(*text)) {
        text++;
        len--;
    }
    while (len && is_ws(text[len - 1]))
        len--;
    if (len == 0 || text[0] != '{')
        return -1;
    const char *end = NULL;
    cJSON *obj = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!obj)
        return -1;
    int rc = -1;
    if (!cJSON_IsObject(obj) || (size_t)(end - text) != len)
        goto out;
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(obj, "name");
    if (!cJSON_IsString(nm) || !nm->valuestring[0])
        goto out;
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(obj, "arguments");
    if (!args)
        args = cJSON_GetObjectItemCaseSensitive(obj, "parameters");
    if (require_known && (!args || !known_name(p, nm->valuestring)))
        goto out;
    char *a;
    if (!args)
        a = strdup("{}");
    else if (cJSON_IsString(args))
        a = strdup(args->valuestring);
    else
        a = cJSON_PrintUnformatted(args);
    char *n = strdup(nm->valuestring);
    if (!a || !n) {
        free(a);
        free(n);
        goto out;
    }
    *name = n;
    *arguments = a;
    rc = 0;
out:
    cJSON_Delete(obj);
    return rc;
}

static int emit(tool_parser *p, const tool_parser_sink *sink, const char *s, size_t n)
{
    if (n == 0)
        return 0;
    p->line_start = s[n - 1] == '\n';
    return sink->content ? sink->content(sink->ud, s, n) : 0;
}

/* The candidate body[0..end) is decided: a call (inner = body[a..b)) or content. */
static int resolve(tool_parser *p, const tool_parser_sink *sink, size_t a, size_t b, size_t end, bool require_known)
{
    char *name = NULL, *args = NULL;
    int rc = 0;
    if (b > a && tool_call_parse(p, p->body.data + a, b - a, require_known, &name, &args) == 0) {
        p->n_calls++;
        rc = sink->tool_call ? sink->tool_call(sink->ud, name, args) : 0;
        p->line_start = true;
        p->skip_ws = true;
    } else {
        rc = emit(p, sink, sb_str(&p->ws), p->ws.len);
        if (rc == 0)
            rc = emit(p, sink, sb_str(&p->body), end);
    }
    free(name);
    free(args);
    sb_clear(&p->ws);
    /* What follows the candidate goes back to plain text, ahead of anything pending. */
    strbuf rest;
    sb_init(&rest);
    if (sb_append(&rest, sb_str(&p->body) + end, p->body.len - end) != 0 ||
        sb_append(&rest, sb_str(&p->pend), p->pend.len) != 0) {
        sb_free(&rest);
        return -1;
    }
    sb_free(&p->pend);
    p->pend = rest;
    sb_clear(&p->body);
    p->st = ST_TEXT;
    return rc;
}

/* Longest k < strlen(m) such that s ends with the first k bytes of m. */
static size_t partial_suffix(const char *s, size_t n, const char *m)
{
    size_t ml = strlen(m);
    for (size_t k = ml - 1 < n ? ml - 1 : n; k > 0; k--)
        if (memcmp(s + n - k, m, k) == 0)
            return k;
    return 0;
}

/* Is position i of pend at the start of a line (only spaces or tabs before it on its line)? */
static bool at_line_start(const tool_parser *p, const char *s, size_t i)
{
    while (i > 0) {
        char c = s[i - 1];
        if (c == '\n')
            return true;
        if (c != ' ' && c != '\t' && c != '\r')
            return false;
        i--;
    }
    return p->line_start;
}

/* Plain text: pass on what cannot start a call, switch state at the first opener. */
static int step_text(tool_parser *p, const tool_parser_sink *sink, bool final, bool *progressed)
{
    *progressed = false;
    if (p->skip_ws) {
        size_t k = 0;
        while (k < p->pend.len && is_ws(p->pend.data[k]))
            k++;
        sb_consume(&p->pend, k);
        if (p->pend.len)
            p->skip_ws = false;
    }
    const char *s = sb_str(&p->pend);
    size_t n = p->pend.len;
    if (n == 0)
        return 0;
    size_t best = n;
    enum state kind = ST_TEXT;
    const char *hit = memmem(s, n, TAG_OPEN, strlen(TAG_OPEN));
    if (hit) {
        best = (size_t)(hit - s);
        kind = ST_TAG;
    }
    if (p->enabled && p->n_names > 0) {
        hit = memmem(s, best, FENCE_OPEN, strlen(FENCE_OPEN));
        if (hit && (size_t)(hit - s) < best) {
            best = (size_t)(hit - s);
            kind = ST_FENCE;
        }
        for (size_t i = 0; i < best; i++)
            if (s[i] == '{' && at_line_start(p, s, i)) {
                best = i;
                kind = ST_BARE;
                break;
            }
    }
    if (!p->enabled && kind != ST_TEXT) {
        /* Without tools, the tag form is still content. */
        kind = ST_TEXT;
        best = n;
    }
    if (kind == ST_TEXT) {
        size_t hold = 0;
        if (!final) {
            if (p->enabled) {
                hold = partial_suffix(s, n, TAG_OPEN);
                if (p->n_names > 0) {
                    size_t h = partial_suffix(s, n, FENCE_OPEN);
                    if (h > hold)
                        hold = h;
                }
                /* and the whitespace before it, which is dropped if a call follows */
                while (hold < n && is_ws(s[n - hold - 1]))
                    hold++;
            }
        }
        int rc = emit(p, sink, s, n - hold);
        sb_consume(&p->pend, n - hold);
        return rc;
    }
    size_t ws_start = best;
    while (ws_start > 0 && is_ws(s[ws_start - 1]))
        ws_start--;
    int rc = emit(p, sink, s, ws_start);
    if (rc != 0)
        return rc;
    sb_clear(&p->ws);
    sb_clear(&p->body);
    if (sb_append(&p->ws, s + ws_start, best - ws_start) != 0 || sb_append(&p->body, s + best, n - best) != 0)
        return -1;
    sb_clear(&p->pend);
    p->st = kind;
    p->scan_pos = 0;
    p->depth = 0;
    p->in_str = p->esc = false;
    *progressed = true;
    return 0;
}

/* A candidate: look for its end. */
static int step_candidate(tool_parser *p, const tool_parser_sink *sink, bool final, bool *progressed)
{
    *progressed = false;
    const char *s = sb_str(&p->body);
    size_t n = p->body.len;
    if (p->st == ST_TAG) {
        size_t open = strlen(TAG_OPEN);
        const char *hit = n > open ? memmem(s + open, n - open, TAG_CLOSE, strlen(TAG_CLOSE)) : NULL;
        if (hit) {
            *progressed = true;
            size_t b = (size_t)(hit - s);
            /* A fenced body inside the tags is accepted too. */
            size_t a = open;
            while (a < b && is_ws(s[a]))
                a++;
            size_t e = b;
            if (b - a > strlen(FENCE_OPEN) + 3 && memcmp(s + a, FENCE_OPEN, strlen(FENCE_OPEN)) == 0) {
                while (e > a && is_ws(s[e - 1]))
                    e--;
                if (e >= 3 && memcmp(s + e - 3, FENCE_CLOSE, 3) == 0) {
                    a += strlen(FENCE_OPEN);
                    e -= 3;
                } else {
                    e = b;
                }
            }
            return resolve(p, sink, a, e, b + strlen(TAG_CLOSE), false);
        }
        if (final || n > CANDIDATE_MAX) {
            *progressed = true;
            return resolve(p, sink, open, n, n, false);
        }
        return 0;
    }
    if (p->st == ST_FENCE) {
        size_t open = strlen(FENCE_OPEN);
        /* Only an object can be a call: give up as soon as the fence holds something else. */
        size_t i = open;
        while (i < n && is_ws(s[i]))
            i++;
        bool newline_after_lang = open < n && (s[open] == '\n' || s[open] == '\r' || s[open] == ' ');
        if ((i < n && s[i] != '{') || (n > open && !newline_after_lang)) {
            /* Only the fence up to what ruled it out is content: the rest is scanned again, as it would
             * be had it arrived in a later chunk. */
            *progressed = true;
            return resolve(p, sink, 0, 0, n > open && !newline_after_lang ? open + 1 : i + 1, true);
        }
        const char *hit = n > open ? memmem(s + open, n - open, FENCE_CLOSE, strlen(FENCE_CLOSE)) : NULL;
        if (hit) {
            *progressed = true;
            size_t b = (size_t)(hit - s);
            return resolve(p, sink, open, b, b + strlen(FENCE_CLOSE), true);
        }
        if (final || n > CANDIDATE_MAX) {
            *progressed = true;
            return resolve(p, sink, open, n, n, true);
        }
        return 0;
    }
    /* ST_BARE: balance braces outside strings. */
    for (size_t i = p->scan_pos; i < n; i++) {
        char c = s[i];
        if (p->in_str) {
            if (p->esc)
                p->esc = false;
            else if (c == '\\')
                p->esc = true;
            else if (c == '"')
                p->in_str = false;
            continue;
        }
        if (c == '"') {
            p->in_str = true;
        } else if (c == '{' || c == '[') {
            p->depth++;
        } else if (c == '}' || c == ']') {
            p->depth--;
            if (p->depth == 0) {
                *progressed = true;
                p->scan_pos = 0;
                return resolve(p, sink, 0, i + 1, i + 1, true);
            }
        } else if (p->depth == 1 && !is_ws(c)) {
            /* Outside strings at the top level only keys, ':' and ',' can appear before a value. */
            bool first_key_pending = true;
            for (size_t j = 1; j < i; j++)
                if (!is_ws(s[j])) {
                    first_key_pending = false;
                    break;
                }
            if (first_key_pending) {
                *progressed = true;
                return resolve(p, sink, 0, 0, i + 1, true);
            }
        }
        p->scan_pos = i + 1;
    }
    p->scan_pos = n;
    if (final || n > CANDIDATE_MAX) {
        *progressed = true;
        p->scan_pos = 0;
        return resolve(p, sink, 0, n, n, true);
    }
    return 0;
}

static int run(tool_parser *p, const tool_parser_sink *sink, bool final)
{
    for (int guard = 0; guard < 1000000; guard++) {
        bool progressed = false;
        int rc = p->st == ST_TEXT ? step_text(p, sink, final, &progressed)
                                  : step_candidate(p, sink, final, &progressed);
        if (rc != 0)
            return rc;
        if (!progressed)
            return 0;
    }
    return 0;
}

int tool_parser_feed(tool_parser *p, const char *text, size_t len, const tool_parser_sink *sink)
{
    strbuf *dst = p->st == ST_TEXT ? &p->pend : &p->body;
    if (sb_append(dst, text, len) != 0)
        return -1;
    return run(p, sink, false);
}

int tool_parser_finish(tool_parser *p, const tool_parser_sink *sink)
{
    int rc = run(p, sink, true);
    if (rc == 0 && p->st != ST_TEXT)
        rc = run(p, sink, true);
    if (rc == 0 && p->pend.len) {
        rc = emit(p, sink, sb_str(&p->pend), p->pend.len);
        sb_clear(&p->pend);
    }
    return rc;
}
