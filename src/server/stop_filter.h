/* User stop strings over streamed text: text that might be the start of a stop string is held back
 * until it is known not to be; a stop string ends the reply and is not part of it. */
#ifndef PUNIE_SERVER_STOP_FILTER_H
#define PUNIE_SERVER_STOP_FILTER_H

#include <stddef.h>

#include "server/strbuf.h"

typedef struct stop_filter stop_filter;

/* stops: n non-empty strings (copied). n may be 0. */
stop_filter *stop_filter_new(char *const *stops, int n);
void stop_filter_free(stop_filter *f);

/* Appends the text that can be passed on to out. Returns 1 when a stop string was found (out then
 * ends just before it and the filter must not be fed again), 0 otherwise, -1 on allocation failure. */
int stop_filter_feed(stop_filter *f, const char *text, size_t len, strbuf *out);
/* End of the reply: the held-back text is passed on. */
int stop_filter_flush(stop_filter *f, strbuf *out);

#endif
