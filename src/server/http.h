/* The HTTP side of `punie serve`: libmicrohttpd, one thread per connection, routes of the OpenAI API. */
#ifndef PUNIE_SERVER_HTTP_H
#define PUNIE_SERVER_HTTP_H

#include <stddef.h>

#include "server/engine.h"
#include "util/err.h"

typedef struct http_options {
    const char *host;         /* numeric address or name to bind; NULL: 127.0.0.1 */
    int port;                 /* 0: any free port */
    const char *api_key;      /* NULL: no key required */
    size_t max_body;          /* bytes; 0: 16 MiB */
    size_t conn_memory;       /* per-connection memory (bounds the request headers); 0: 64 KiB */
    unsigned max_connections; /* 0: 64 */
    unsigned timeout_s;       /* idle connection timeout; 0: 120 s */
} http_options;

typedef struct http_server http_server;

/* Binds (a port in use is a clear error) and starts serving. */
int http_server_start(const http_options *o, engine *e, http_server **out, perr *err);
int http_server_port(const http_server *s);
/* Stops accepting, lets the connection threads finish, frees. Call engine_shutdown first so that
 * running generations end promptly. */
void http_server_stop(http_server *s);

#endif
