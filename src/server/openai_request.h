/* Parsing and validating OpenAI-style request bodies (/v1/chat/completions, /v1/completions). */
#ifndef PUNIE_SERVER_OPENAI_REQUEST_H
#define PUNIE_SERVER_OPENAI_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "model/sampler.h"
#include "util/err.h"

#define REQ_MAX_MESSAGES 4096
#define REQ_MAX_TOOLS 256
#define REQ_MAX_STOP 16
#define REQ_MAX_STOP_LEN 256
#define REQ_MAX_TOP_LOGPROBS 20
#define REQ_MAX_TOKENS_LIMIT (1 << 20)

enum request_kind { REQ_CHAT, REQ_COMPLETION };

typedef struct openai_request {
    enum request_kind kind;
    cJSON *root;          /* the parsed body (owned) */
    cJSON *messages;      /* chat: normalised copy for the template (owned) */
    const cJSON *tools;   /* chat: tools array inside root, NULL when none or tool_choice "none" */
    const char *prompt;   /* completions: raw prompt inside root */
    bool stream, include_usage;
    int max_tokens;       /* -1: not given */
    /* sampling fields given by the client (has_*) */
    bool has_temperature, has_top_p, has_top_k, has_min_p, has_repetition_penalty, has_repetition_context;
    bool has_presence, has_frequency, has_seed;
    float temperature, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty;
    int top_k, repetition_context;
    uint64_t seed;
    char *stop[REQ_MAX_STOP];
    int n_stop;
    bool logprobs;
    int top_logprobs;     /* 0 when not asked */
} openai_request;

/* Parses body[0..len). On failure returns -1 with a client-facing message in err (HTTP 400). */
int openai_request_parse(enum request_kind kind, const char *body, size_t len, openai_request *out, perr *err);
void openai_request_free(openai_request *r);

/* Applies the client's sampling fields over defaults. */
void openai_request_sampler(const openai_request *r, sampler_params *p);

#endif
