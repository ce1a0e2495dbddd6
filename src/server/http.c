#include "server/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <openssl/crypto.h>

#include "server/api.h"
#include "server/openai_request.h"
#include "server/strbuf.h"
#include "util/log.h"

struct http_server {
    struct MHD_Daemon *daemon;
    engine *e;
    int port;
    char *api_key;
    size_t max_body;
    unsigned timeout_s;
    long started;
    atomic_bool stopping; /* the daemon is being stopped: streams end without their clients leaving */
};

enum route { R_NONE, R_HEALTH, R_MODELS, R_CHAT, R_COMPLETIONS };

typedef struct req_ctx {
    enum route route;
    strbuf body;
    size_t expected;
    bool too_large;
} req_ctx;

typedef struct stream_ctx {
    http_server *srv;
    api_session *sess;
    struct MHD_Connection *conn;
    bool done; /* the reply is complete (or ended with its error event) */
} stream_ctx;

static enum route match_route(const char *url)
{
    if (strcmp(url, "/health") == 0)
        return R_HEALTH;
    if (strcmp(url, "/v1/models") == 0 || strcmp(url, "/models") == 0)
        return R_MODELS;
    if (strcmp(url, "/v1/chat/completions") == 0 || strcmp(url, "/chat/completions") == 0)
        return R_CHAT;
    if (strcmp(url, "/v1/completions") == 0 || strcmp(url, "/completions") == 0)
        return R_COMPLETIONS;
    return R_NONE;
}

static void add_common_headers(struct MHD_Response *r)
{
    MHD_add_response_header(r, "Access-Control-Allow-Origin", "*");
}

/* Queues body (malloc'd; taken over) with status. */
static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, char *body)
{
    if (!body)
        return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    add_common_headers(r);
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *message, const char *code)
{
    const char *type = status == 401   ? "authentication_error"
                       : status == 404 ? "not_found_error"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    return send_json(c, status, api_error_json(message, type, code));
}

static bool peer_gone(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return false;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0)
        return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR))
        return true;
    if (p.revents & POLLIN) {
        char ch;
        return recv(ci->connect_fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
    }
    return false;
}

static bool abort_if_gone(void *ud) { return peer_gone(ud); }

static bool authorized(const http_server *srv, struct MHD_Connection *c)
{
    if (!srv->api_key)
        return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncmp(h, "Bearer ", 7) != 0)
        return false;
    h += 7;
    size_t n = strlen(h), m = strlen(srv->api_key);
    return n == m && CRYPTO_memcmp(h, srv->api_key, n) == 0;
}

static enum MHD_Result send_models(http_server *srv, struct MHD_Connection *c)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", engine_model_name(srv->e));
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)srv->started);
    cJSON_AddStringToObject(m, "owned_by", "punie");
    cJSON_AddItemToArray(data, m);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return send_json(c, MHD_HTTP_OK, s);
}

static ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    stream_ctx *sc = cls;
    strbuf *out = api_session_output(sc->sess);
    while (out->len == 0) {
        if (sc->done) {
            MHD_set_connection_option(sc->conn, MHD_CONNECTION_OPTION_TIMEOUT, sc->srv->timeout_s);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (peer_gone(sc->conn))
            return MHD_CONTENT_READER_END_WITH_ERROR; /* logged when the stream is freed */
        perr err = {{0}};
        int rc = api_session_step(sc->sess, &err);
        if (rc < 0) {
            char *e = api_error_json(err.msg, "server_error", NULL);
            sb_printf(out, "data: %s\n\ndata: [DONE]\n\n", e ? e : "{}");
            free(e);
            sc->done = true;
        } else if (rc == 0) {
            sc->done = true;
        }
    }
    size_t n = out->len < max ? out->len : max;
    memcpy(buf, out->data, n);
    sb_consume(out, n);
    return (ssize_t)n;
}

/* Runs however the stream ended. Whether this server saw the client leave (sse_reader) or
 * libmicrohttpd did, when a send failed, depends on timing: the generation stops either way, and an
 * unfinished reply is logged here, once. */
static void sse_free(void *cls)
{
    stream_ctx *sc = cls;
    if (!sc->done && !atomic_load(&sc->srv->stopping))
        log_info("client went away during a streamed reply: generation stopped");
    api_session_free(sc->sess);
    free(sc);
}

static enum MHD_Result handle_generation(http_server *srv, struct MHD_Connection *c, req_ctx *rc)
{
    enum request_kind kind = rc->route == R_CHAT ? REQ_CHAT : REQ_COMPLETION;
    openai_request req;
    perr err = {{0}};
    if (openai_request_parse(kind, sb_str(&rc->body), rc->body.len, &req, &err) != 0)
        return send_error(c, MHD_HTTP_BAD_REQUEST, err.msg, NULL);
    api_session *s = NULL;
    int status = 500;
    if (api_session_new(srv->e, &req, &s, &status, &err) != 0) {
        openai_request_free(&req);
        return send_error(c, (unsigned)status, err.msg,
                          strstr(err.msg, "maximum context length") ? "context_length_exceeded" : NULL);
    }
    /* A generation may take longer than the idle timeout: no timeout until it is done. */
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, 0);
    if (api_session_start(s, abort_if_gone, c, &err) != 0) {
        api_session_free(s);
        MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, srv->timeout_s);
        return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, err.msg, NULL);
    }
    if (api_session_streaming(s)) {
        stream_ctx *sc = calloc(1, sizeof *sc);
        if (!sc) {
            api_session_free(s);
            return MHD_NO;
        }
        sc->srv = srv;
        sc->sess = s;
        sc->conn = c;
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, sse_reader, sc, sse_free);
        if (!r) {
            sc->done = true; /* nothing was streamed */
            sse_free(sc);
            return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        add_common_headers(r);
        enum MHD_Result q = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return q;
    }
    for (;;) {
        int step = api_session_step(s, &err);
        if (step < 0) {
            api_session_free(s);
            MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, srv->timeout_s);
            return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, err.msg, NULL);
        }
        if (step == 0)
            break;
        if (peer_gone(c)) {
            log_info("client went away while waiting for its reply: generation stopped");
            api_session_free(s);
            return MHD_NO;
        }
    }
    char *body = api_session_result(s);
    api_session_free(s);
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, srv->timeout_s);
    return send_json(c, MHD_HTTP_OK, body);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    http_server *srv = cls;
    req_ctx *rc = *con_cls;
    if (!rc) {
        rc = calloc(1, sizeof *rc);
        if (!rc)
            return MHD_NO;
        sb_init(&rc->body);
        *con_cls = rc;
        if (strcmp(method, "OPTIONS") == 0) {
            struct MHD_Response *r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
            add_common_headers(r);
            MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
            MHD_add_response_header(r, "Access-Control-Allow-Headers", "Content-Type, Authorization");
            MHD_add_response_header(r, "Access-Control-Max-Age", "86400");
            enum MHD_Result q = MHD_queue_response(c, MHD_HTTP_NO_CONTENT, r);
            MHD_destroy_response(r);
            return q;
        }
        rc->route = match_route(url);
        bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
        bool post = strcmp(method, "POST") == 0;
        switch (rc->route) {
        case R_NONE:
            return send_error(c, MHD_HTTP_NOT_FOUND, "Not Found", "not_found");
        case R_HEALTH:
            if (!get)
                return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "Method Not Allowed: use GET", "method_not_allowed");
            return send_json(c, MHD_HTTP_OK, strdup("{\"status\":\"ok\"}"));
        default:
            break;
        }
        if (!authorized(srv, c))
            return send_error(c, MHD_HTTP_UNAUTHORIZED,
                              "Incorrect or missing API key: send the header 'Authorization: Bearer KEY'",
                              "invalid_api_key");
        if (rc->route == R_MODELS) {
            if (!get)
                return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "Method Not Allowed: use GET", "method_not_allowed");
            return send_models(srv, c);
        }
        if (!post)
            return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "Method Not Allowed: use POST", "method_not_allowed");
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (!cl)
            return send_error(c, MHD_HTTP_LENGTH_REQUIRED, "A Content-Length header is required", "length_required");
        char *end = NULL;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno || !end || *end || end == cl)
            return send_error(c, MHD_HTTP_BAD_REQUEST, "Invalid Content-Length header", NULL);
        if (n > srv->max_body) {
            char msg[160];
            snprintf(msg, sizeof msg, "Request body of %llu bytes is larger than the limit of %zu bytes", n,
                     srv->max_body);
            return send_error(c, MHD_HTTP_CONTENT_TOO_LARGE, msg, "request_too_large");
        }
        rc->expected = (size_t)n;
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (!rc->too_large && rc->body.len + *upload_data_size <= srv->max_body) {
            if (sb_append(&rc->body, upload_data, *upload_data_size) != 0)
                return MHD_NO;
        } else {
            rc->too_large = true;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (rc->too_large)
        return send_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "Request body too large", "request_too_large");
    return handle_generation(srv, c, rc);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    req_ctx *rc = *con_cls;
    if (rc) {
        sb_free(&rc->body);
        free(rc);
        *con_cls = NULL;
    }
}

static int open_listener(const char *host, int port, bool *ipv6, int *bound_port, perr *err)
{
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int gai = getaddrinfo(host, portstr, &hints, &res);
    if (gai != 0)
        return perr_set(err, "cannot use host '%s': %s", host, gai_strerror(gai));
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(res);
        return perr_errno(err, "socket");
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* Streamed tokens are small writes: send each at once (accepted sockets inherit this). */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    *ipv6 = res->ai_family == AF_INET6;
    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0) {
        int e = errno;
        freeaddrinfo(res);
        close(fd);
        if (e == EADDRINUSE)
            return perr_set(err, "port %d on %s is already in use (choose another with --port)", port, host);
        errno = e;
        return perr_errno(err, "cannot bind %s:%d", host, port);
    }
    freeaddrinfo(res);
    if (listen(fd, 128) != 0) {
        close(fd);
        return perr_errno(err, "listen");
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    *bound_port = port;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        *bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                     : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

int http_server_start(const http_options *o, engine *e, http_server **out, perr *err)
{
    *out = NULL;
    http_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return perr_set(err, "out of memory");
    srv->e = e;
    srv->max_body = o->max_body ? o->max_body : 16u << 20;
    srv->timeout_s = o->timeout_s ? o->timeout_s : 120;
    srv->started = (long)time(NULL);
    if (o->api_key && *o->api_key && !(srv->api_key = strdup(o->api_key))) {
        free(srv);
        return perr_set(err, "out of memory");
    }
    const char *host = o->host && *o->host ? o->host : "127.0.0.1";
    bool ipv6 = false;
    int fd = open_listener(host, o->port, &ipv6, &srv->port, err);
    if (fd < 0) {
        free(srv->api_key);
        free(srv);
        return -1;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC;
    if (ipv6)
        flags |= MHD_USE_IPv6;
    srv->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, srv, MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)(o->max_connections ? o->max_connections : 64), MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)(o->conn_memory ? o->conn_memory : 64 * 1024), MHD_OPTION_CONNECTION_TIMEOUT, srv->timeout_s,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv, MHD_OPTION_END);
    if (!srv->daemon) {
        close(fd);
        free(srv->api_key);
        free(srv);
        return perr_set(err, "cannot start the HTTP server on %s:%d", host, o->port);
    }
    *out = srv;
    return 0;
}

int http_server_port(const http_server *s) { return s->port; }

void http_server_stop(http_server *s)
{
    if (!s)
        return;
    atomic_store(&s->stopping, true);
    MHD_stop_daemon(s->daemon);
    free(s->api_key);
    free(s);
}
