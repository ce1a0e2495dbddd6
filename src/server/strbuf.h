/* A growable NUL-terminated byte buffer used by the server's text pipeline. */
#ifndef PUNIE_SERVER_STRBUF_H
#define PUNIE_SERVER_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct strbuf {
    char *data; /* always NUL-terminated once anything was appended; NULL when empty and unused */
    size_t len, cap;
} strbuf;

void sb_init(strbuf *b);
void sb_free(strbuf *b);
void sb_clear(strbuf *b);
int sb_append(strbuf *b, const char *s, size_t n); /* 0, or -1 on allocation failure */
int sb_appends(strbuf *b, const char *s);
int sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_consume(strbuf *b, size_t n); /* drops the first n bytes */
const char *sb_str(const strbuf *b);  /* "" when empty */
char *sb_take(strbuf *b);             /* hands over the buffer (malloc'd, may be NULL when empty) */

#endif
