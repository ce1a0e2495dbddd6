/* One OpenAI request carried out: prompt, generation, text pipeline (detokenizer, stop strings,
 * tool calls) and the response in OpenAI's shapes, whole or as server-sent events. */
#ifndef PUNIE_SERVER_API_H
#define PUNIE_SERVER_API_H

#include <stdbool.h>

#include "server/engine.h"
#include "server/openai_request.h"
#include "server/strbuf.h"
#include "util/err.h"

typedef struct api_session api_session;

/* Takes over req (it is cleared). On failure *status is the HTTP status (400: prompt too long, with
 * both numbers in err; 500 otherwise). */
int api_session_new(engine *e, openai_request *req, api_session **out, int *status, perr *err);
void api_session_free(api_session *s);
bool api_session_streaming(const api_session *s);

/* Waits for a generation slot; should_abort is polled meanwhile. -1 (status 503) when it gave up. */
int api_session_start(api_session *s, bool (*should_abort)(void *), void *ud, perr *err);

/* Generates one more token. Returns 1 while there is more, 0 when finished, -1 on error.
 * When streaming, the events produced are appended to the session's output buffer. */
int api_session_step(api_session *s, perr *err);
strbuf *api_session_output(api_session *s);

/* The whole response body (non-streaming), after the last step; malloc'd. */
char *api_session_result(api_session *s);

/* {"error": {...}} in OpenAI's shape; malloc'd. */
char *api_error_json(const char *message, const char *type, const char *code);

#endif
