/* Error reporting: library functions fill a perr and return -1; the CLI prints the message. */
#ifndef PUNIE_UTIL_ERR_H
#define PUNIE_UTIL_ERR_H

#include <stddef.h>

typedef struct perr {
    char msg[1024];
} perr;

/* Sets the message (printf-style) and returns -1, so callers can `return perr_set(e, ...)`.
 * A NULL perr is allowed and ignored. */
int perr_set(perr *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepends context: "context: previous message". Returns -1. */
int perr_wrap(perr *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Sets the message from errno: "what: strerror(errno)". Returns -1. */
int perr_errno(perr *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
