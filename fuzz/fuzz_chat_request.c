/* The body of POST /v1/chat/completions and /v1/completions, as any client may send it: parsing and
 * validation answer 400 with a message or give a request whose fields are within the documented bounds,
 * and the sampler settings derived from it are usable.
 * Input: one byte picks the endpoint (even: chat, odd: completions), the rest is the body.
 * Needs: src/server/openai_request.c */
#include "fuzz.h"

#include <math.h>

#include "server/openai_request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 256 * 1024)
        return 0;
    enum request_kind kind = (data[0] & 1) ? REQ_COMPLETION : REQ_CHAT;
    /* An exact-size copy without a terminator: the parser is given a length and must respect it. */
    size_t len = size - 1;
    char *body = malloc(len ? len : 1);
    memcpy(body, data + 1, len);
    openai_request r;
    perr err;
    if (openai_request_parse(kind, body, len, &r, &err) == 0) {
        if (r.kind != kind || r.n_stop < 0 || r.n_stop > REQ_MAX_STOP || r.max_tokens < -1 ||
            r.max_tokens > REQ_MAX_TOKENS_LIMIT || r.top_logprobs < 0 || r.top_logprobs > REQ_MAX_TOP_LOGPROBS)
            abort();
        for (int i = 0; i < r.n_stop; i++)
            if (!r.stop[i] || strlen(r.stop[i]) > REQ_MAX_STOP_LEN)
                abort();
        if (kind == REQ_CHAT && !cJSON_IsArray(r.messages))
            abort();
        if (kind == REQ_COMPLETION && !r.prompt)
            abort();
        if ((r.has_temperature && !isfinite(r.temperature)) || (r.has_top_p && !isfinite(r.top_p)))
            abort();
        sampler_params p;
        memset(&p, 0, sizeof p);
        openai_request_sampler(&r, &p);
        openai_request_free(&r);
    } else if (!err.msg[0]) {
        abort(); /* a refusal always says why */
    }
    free(body);
    return 0;
}
