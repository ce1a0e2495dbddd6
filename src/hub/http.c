#include "hub/http.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util/fs.h"

#define MAX_HOPS 10
#define JSON_MAX (64u << 20)

bool env_truthy(const char *name)
{
    const char *v = getenv(name);
    return v && (!strcasecmp(v, "1") || !strcasecmp(v, "on") || !strcasecmp(v, "yes") || !strcasecmp(v, "true"));
}

static long env_long(const char *name, long def, long lo, long hi)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return def;
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || *end || d < lo || d > hi)
        return def;
    return (long)d;
}

static void trim(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    size_t i = 0;
    while (s[i] && isspace((unsigned char)s[i]))
        i++;
    memmove(s, s + i, strlen(s + i) + 1);
}

static int load_token(hub_config *c, perr *err)
{
    const char *t = getenv("HF_TOKEN");
    if (!t || !*t)
        t = getenv("HUGGING_FACE_HUB_TOKEN");
    if (t && *t) {
        snprintf(c->token, sizeof c->token, "%s", t);
    } else {
        char path[4096];
        const char *tp = getenv("HF_TOKEN_PATH"), *hf_home = getenv("HF_HOME");
        const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
        if (tp && *tp)
            snprintf(path, sizeof path, "%s", tp);
        else if (hf_home && *hf_home)
            snprintf(path, sizeof path, "%s/token", hf_home);
        else if (xdg && *xdg)
            snprintf(path, sizeof path, "%s/huggingface/token", xdg);
        else if (home && *home)
            snprintf(path, sizeof path, "%s/.cache/huggingface/token", home);
        else
            return 0;
        char *text = NULL;
        if (file_exists(path) && read_file(path, 8192, &text, NULL, NULL) == 0) {
            snprintf(c->token, sizeof c->token, "%s", text);
            free(text);
        }
    }
    trim(c->token);
    /* A token goes into a header line: refuse anything that could break or inject headers. */
    for (const char *p = c->token; *p; p++)
        if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e) {
            c->token[0] = '\0';
            return perr_set(err, "the Hugging Face token contains invalid characters (check HF_TOKEN or the token file)");
        }
    return 0;
}

int hub_config_load(hub_config *c, perr *err)
{
    memset(c, 0, sizeof *c);
    const char *e = getenv("HF_ENDPOINT");
    snprintf(c->endpoint, sizeof c->endpoint, "%s", e && *e ? e : "https://huggingface.co");
    size_t n = strlen(c->endpoint);
    while (n > 0 && c->endpoint[n - 1] == '/')
        c->endpoint[--n] = '\0';
    if (strncmp(c->endpoint, "https://", 8) != 0 && strncmp(c->endpoint, "http://", 7) != 0)
        return perr_set(err, "HF_ENDPOINT must start with http:// or https://");
    if (load_token(c, err) != 0)
        return -1;
    static const char *const ca_vars[] = {"SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE"};
    for (size_t i = 0; i < sizeof ca_vars / sizeof *ca_vars; i++) {
        const char *ca = getenv(ca_vars[i]);
        if (ca && *ca) {
            snprintf(c->cainfo, sizeof c->cainfo, "%s", ca);
            c->cainfo_var = ca_vars[i];
            break;
        }
    }
    const char *cp = getenv("SSL_CERT_DIR");
    if (cp && *cp)
        snprintf(c->capath, sizeof c->capath, "%s", cp);
    c->offline = env_truthy("HF_HUB_OFFLINE");
    c->stall_timeout_s = env_long("HF_HUB_DOWNLOAD_TIMEOUT", 10, 1, 3600);
    c->backoff_ms = env_long("PUNIE_HUB_BACKOFF_MS", 1000, 0, 60000);
    c->max_retries = (int)env_long("PUNIE_HUB_MAX_RETRIES", 5, 0, 100);
    c->max_wait_s = env_long("PUNIE_HUB_MAX_WAIT", 120, 0, 3600);
    return 0;
}

void hub_response_free(hub_response *r)
{
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
}

void sanitize_text(const char *s, char *out, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; s && s[i] && j + 1 < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        out[j++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    if (n)
        out[j] = '\0';
}

void etag_normalize(const char *in, char *out, size_t n)
{
    if (strncmp(in, "W/", 2) == 0)
        in += 2;
    size_t len = strlen(in);
    if (len >= 2 && in[0] == '"' && in[len - 1] == '"') {
        in++;
        len -= 2;
    }
    if (len >= n)
        len = n - 1;
    memcpy(out, in, len);
    out[len] = '\0';
}

int url_escape(const char *s, bool keep_slash, char *out, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t j = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        bool plain = isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/');
        if (j + 4 >= n)
            return -1;
        if (plain)
            out[j++] = (char)c;
        else {
            out[j++] = '%';
            out[j++] = hex[c >> 4];
            out[j++] = hex[c & 15];
        }
    }
    out[j] = '\0';
    return 0;
}

/* ---- headers ---------------------------------------------------------------------------------- */

typedef struct transfer {
    hub_headers h;
    const hub_request *req;
    char *body;
    size_t body_len, body_cap;
    bool too_big;
} transfer;

static void copy_value(char *dst, size_t n, const char *v, size_t len)
{
    if (len >= n)
        len = n - 1;
    memcpy(dst, v, len);
    dst[len] = '\0';
}

static long long parse_ll(const char *v, size_t len)
{
    char buf[32];
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, v, len);
    buf[len] = '\0';
    char *end;
    errno = 0;
    long long x = strtoll(buf, &end, 10);
    if (errno || *end || x < 0)
        return -1;
    return x;
}

/* Link: <url>; rel="next", <url2>; rel="prev" */
static void parse_link(hub_headers *h, const char *v, size_t len)
{
    const char *p = v, *end = v + len;
    while (p < end) {
        const char *lt = memchr(p, '<', (size_t)(end - p));
        if (!lt)
            return;
        const char *gt = memchr(lt, '>', (size_t)(end - lt));
        if (!gt)
            return;
        const char *next = memchr(gt, ',', (size_t)(end - gt));
        const char *params_end = next ? next : end;
        size_t plen = (size_t)(params_end - gt);
        char params[256];
        copy_value(params, sizeof params, gt + 1, plen > 0 ? plen - 1 : 0);
        if (strstr(params, "rel=\"next\"") || strstr(params, "rel=next"))
            copy_value(h->link_next, sizeof h->link_next, lt + 1, (size_t)(gt - lt - 1));
        if (!next)
            return;
        p = next + 1;
    }
}

static size_t header_cb(char *data, size_t size, size_t nmemb, void *user)
{
    transfer *t = user;
    size_t len = size * nmemb;
    if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        /* A new response (after 1xx): start over. */
        memset(&t->h, 0, sizeof t->h);
        t->h.linked_size = t->h.content_length = -1;
        const char *sp = memchr(data, ' ', len);
        if (sp && (size_t)(sp - data) + 4 <= len)
            t->h.status = (sp[1] - '0') * 100 + (sp[2] - '0') * 10 + (sp[3] - '0');
        return len;
    }
    const char *colon = memchr(data, ':', len);
    if (!colon)
        return len;
    size_t nlen = (size_t)(colon - data);
    const char *v = colon + 1, *end = data + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    size_t vlen = (size_t)(end - v);
    hub_headers *h = &t->h;
#define IS(name) (nlen == sizeof(name) - 1 && strncasecmp(data, name, nlen) == 0)
    if (IS("X-Error-Code"))
        copy_value(h->error_code, sizeof h->error_code, v, vlen);
    else if (IS("X-Error-Message"))
        copy_value(h->error_message, sizeof h->error_message, v, vlen);
    else if (IS("X-Repo-Commit"))
        copy_value(h->repo_commit, sizeof h->repo_commit, v, vlen);
    else if (IS("ETag"))
        copy_value(h->etag, sizeof h->etag, v, vlen);
    else if (IS("X-Linked-Etag"))
        copy_value(h->linked_etag, sizeof h->linked_etag, v, vlen);
    else if (IS("X-Linked-Size"))
        h->linked_size = parse_ll(v, vlen);
    else if (IS("Content-Length"))
        h->content_length = parse_ll(v, vlen);
    else if (IS("Content-Range"))
        copy_value(h->content_range, sizeof h->content_range, v, vlen);
    else if (IS("Content-Encoding"))
        copy_value(h->content_encoding, sizeof h->content_encoding, v, vlen);
    else if (IS("Retry-After"))
        copy_value(h->retry_after, sizeof h->retry_after, v, vlen);
    else if (IS("RateLimit"))
        copy_value(h->ratelimit, sizeof h->ratelimit, v, vlen);
    else if (IS("Link"))
        parse_link(h, v, vlen);
    else if (IS("Location"))
        copy_value(h->location, sizeof h->location, v, vlen);
#undef IS
    return len;
}

static size_t body_cb(char *data, size_t size, size_t nmemb, void *user)
{
    transfer *t = user;
    size_t len = size * nmemb;
    if (t->h.status >= 300 && t->h.status < 400)
        return len; /* redirect bodies are ignored */
    if (t->req->body_fn && t->h.status >= 200 && t->h.status < 300)
        return t->req->body_fn(data, len, t->req->body_user, &t->h);
    size_t max = t->req->body_fn ? 64 * 1024 : (t->req->max_body ? t->req->max_body : JSON_MAX);
    if (t->body_len + len > max) {
        t->too_big = true;
        return 0;
    }
    if (t->body_len + len + 1 > t->body_cap) {
        size_t cap = t->body_cap ? t->body_cap : 4096;
        while (cap < t->body_len + len + 1)
            cap *= 2;
        char *nb = realloc(t->body, cap);
        if (!nb)
            return 0;
        t->body = nb;
        t->body_cap = cap;
    }
    memcpy(t->body + t->body_len, data, len);
    t->body_len += len;
    t->body[t->body_len] = '\0';
    return len;
}

/* ---- origins ---------------------------------------------------------------------------------- */

static bool url_origin(const char *url, char *out, size_t n)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL;
    bool ok = u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
              curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
              curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
              curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK;
    if (ok) {
        for (char *p = host; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        snprintf(out, n, "%s://%s:%s", scheme, host, port);
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    return ok;
}

bool hub_tls_error(CURLcode rc)
{
    return rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE;
}

/* libcurl's own text for these ("SSL peer certificate or SSH remote key was not OK") does not tell a user
 * what to do; its error buffer has the detail (which check failed, which file). */
static int transport_error(const hub_config *cfg, const char *origin, CURLcode rc, const char *detail, perr *err)
{
    const char *why = detail[0] ? detail : curl_easy_strerror(rc);
    if (rc == CURLE_PEER_FAILED_VERIFICATION)
        return perr_set(err, "TLS certificate verification failed for %s (%s). If it is served with a private "
                             "certificate authority, point SSL_CERT_FILE (a PEM bundle) or SSL_CERT_DIR at it",
                        origin, why);
    if (rc == CURLE_SSL_CACERT_BADFILE && cfg->cainfo[0])
        return perr_set(err, "cannot load TLS CA certificates from %s=%s (%s): it must be a readable PEM file "
                             "holding at least one certificate",
                        cfg->cainfo_var, cfg->cainfo, why);
    if (rc == CURLE_SSL_CACERT_BADFILE)
        return perr_set(err, "cannot load the system's TLS CA certificates (%s): install ca-certificates or set "
                             "SSL_CERT_FILE / SSL_CERT_DIR",
                        why);
    return perr_set(err, "%s", why);
}

static void merge_meta(hub_headers *meta, const hub_headers *h)
{
    if (h->repo_commit[0])
        memcpy(meta->repo_commit, h->repo_commit, sizeof meta->repo_commit);
    if (h->linked_etag[0] && !meta->linked_etag[0])
        memcpy(meta->linked_etag, h->linked_etag, sizeof meta->linked_etag);
    if (h->linked_size >= 0 && meta->linked_size < 0)
        meta->linked_size = h->linked_size;
}

int hub_perform(CURL *curl, const hub_config *cfg, const char *url, const hub_request *req, hub_response *resp,
                perr *err)
{
    char endpoint_origin[1024], origin[1024], cur[4096], detail[CURL_ERROR_SIZE];
    hub_response_free(resp);
    memset(resp, 0, sizeof *resp);
    resp->meta.linked_size = resp->meta.content_length = -1;
    if (!url_origin(cfg->endpoint, endpoint_origin, sizeof endpoint_origin))
        return perr_set(err, "invalid HF_ENDPOINT");
    snprintf(cur, sizeof cur, "%s", url);
    char auth[1100] = "";
    if (cfg->token[0])
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", cfg->token);

    for (int hop = 0; hop <= MAX_HOPS; hop++) {
        if (!url_origin(cur, origin, sizeof origin))
            return perr_set(err, "invalid URL in a server redirect");
        bool to_endpoint = strcmp(origin, endpoint_origin) == 0;
        resp->left_endpoint = !to_endpoint;
        transfer t;
        memset(&t, 0, sizeof t);
        t.req = req;
        t.h.linked_size = t.h.content_length = -1;

        struct curl_slist *hdrs = NULL;
        hdrs = curl_slist_append(hdrs, "Accept-Encoding: identity");
        if (to_endpoint && auth[0])
            hdrs = curl_slist_append(hdrs, auth);
        char range[96];
        if (req->range_start >= 0) {
            if (req->range_end >= 0)
                snprintf(range, sizeof range, "Range: bytes=%lld-%lld", req->range_start, req->range_end);
            else
                snprintf(range, sizeof range, "Range: bytes=%lld-", req->range_start);
            hdrs = curl_slist_append(hdrs, range);
        }
        curl_easy_reset(curl);
        curl_easy_setopt(curl, CURLOPT_URL, cur);
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(curl, CURLOPT_USERAGENT, "punie/" PUNIE_VERSION "; hf_hub/compatible");
        curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 30L);
        curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, cfg->stall_timeout_s);
        curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, header_cb);
        curl_easy_setopt(curl, CURLOPT_HEADERDATA, &t);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, body_cb);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, &t);
        curl_easy_setopt(curl, CURLOPT_BUFFERSIZE, 512L * 1024);
        curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
        /* Our headers (Authorization) go to the server only, never into a CONNECT to a proxy. */
        curl_easy_setopt(curl, CURLOPT_HEADEROPT, (long)CURLHEADER_SEPARATE);
        detail[0] = '\0';
        curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, detail);
        if (req->head)
            curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
        if (cfg->cainfo[0])
            curl_easy_setopt(curl, CURLOPT_CAINFO, cfg->cainfo);
        if (cfg->capath[0])
            curl_easy_setopt(curl, CURLOPT_CAPATH, cfg->capath);
        CURLcode rc = curl_easy_perform(curl);
        curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, NULL); /* detail is local to this call */
        curl_slist_free_all(hdrs);
        resp->curl_code = rc;
        merge_meta(&resp->meta, &t.h);
        if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && req->body_fn && !t.too_big)) {
            free(t.body);
            resp->h = t.h;
            if (t.too_big)
                return perr_set(err, "response from the hub is too large");
            return transport_error(cfg, origin, rc, detail, err);
        }
        resp->h = t.h;
        long st = t.h.status;
        bool redirect = st == 301 || st == 302 || st == 303 || st == 307 || st == 308;
        if (redirect && t.h.location[0]) {
            free(t.body);
            /* Resolve Location against the current URL; relative references keep their own query. */
            CURLU *u = curl_url();
            char *next = NULL;
            bool ok = u && curl_url_set(u, CURLUPART_URL, cur, 0) == CURLUE_OK &&
                      curl_url_set(u, CURLUPART_URL, t.h.location, 0) == CURLUE_OK &&
                      curl_url_get(u, CURLUPART_URL, &next, 0) == CURLUE_OK;
            if (ok && strlen(next) < sizeof cur &&
                (strncmp(next, "http://", 7) == 0 || strncmp(next, "https://", 8) == 0))
                snprintf(cur, sizeof cur, "%s", next);
            else
                ok = false;
            curl_free(next);
            curl_url_cleanup(u);
            if (!ok)
                return perr_set(err, "the hub sent an invalid redirect");
            continue;
        }
        resp->body = t.body;
        resp->body_len = t.body_len;
        snprintf(resp->final_url, sizeof resp->final_url, "%s", cur);
        return 0;
    }
    return perr_set(err, "too many redirects (more than %d) from the hub", MAX_HOPS);
}

/* ---- errors and retries ----------------------------------------------------------------------- */

void hub_status_error(const hub_config *cfg, const hub_headers *h, const char *repo, const char *revision,
                      const char *what, perr *err)
{
    char msg[300] = "", code[80];
    sanitize_text(h->error_message, msg, sizeof msg);
    sanitize_text(h->error_code, code, sizeof code);
    char extra[340] = "";
    if (msg[0])
        snprintf(extra, sizeof extra, " (server says: %s)", msg);
    long st = h->status;
    if (!strcmp(code, "GatedRepo") && st == 401) {
        perr_set(err, "Repository %s is gated: you must be authenticated to access it. Set HF_TOKEN to a "
                      "Hugging Face access token (or log in so that $HF_HOME/token exists)%s", repo, extra);
    } else if (!strcmp(code, "GatedRepo") || (st == 403 && !strcmp(code, "GatedRepo"))) {
        perr_set(err, "Repository %s is gated and your token is not authorized yet: accept the terms at %s/%s%s",
                 repo, cfg->endpoint, repo, extra);
    } else if (!strcmp(code, "RevisionNotFound")) {
        perr_set(err, "Revision '%s' not found in repository %s%s", revision ? revision : "?", repo, extra);
    } else if (!strcmp(code, "EntryNotFound")) {
        perr_set(err, "%s not found in repository %s%s", what ? what : "file", repo, extra);
    } else if (!strcmp(code, "RepoNotFound") || st == 401 || (st == 404 && !what)) {
        perr_set(err, "Repository %s not found on %s. Check the name; if it is private, set HF_TOKEN%s", repo,
                 cfg->endpoint, extra);
    } else if (st == 403) {
        perr_set(err, "Access to %s was denied (HTTP 403): make sure your token has the right permissions%s", repo,
                 extra);
    } else if (st == 404) {
        perr_set(err, "%s not found in repository %s (HTTP 404)%s", what, repo, extra);
    } else if (st == 429) {
        perr_set(err, "rate limited by the hub (HTTP 429) and retries ran out; try again later or set HF_TOKEN%s",
                 extra);
    } else {
        perr_set(err, "the hub answered HTTP %ld for %s%s", st, what ? what : repo, extra);
    }
}

long hub_retry_wait_s(const hub_config *cfg, const hub_headers *h)
{
    long wait = -1;
    const char *t = strstr(h->ratelimit, "t=");
    if (t) {
        char *end;
        long x = strtol(t + 2, &end, 10);
        if (end != t + 2 && x >= 0)
            wait = x < LONG_MAX ? x + 1 : x; /* strtol saturates on huge values */
    }
    if (wait < 0 && h->retry_after[0]) {
        char *end;
        long x = strtol(h->retry_after, &end, 10);
        if (end != h->retry_after && *end == '\0' && x >= 0)
            wait = x;
    }
    if (wait < 0)
        wait = 1;
    if (wait > cfg->max_wait_s)
        wait = cfg->max_wait_s;
    return wait;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void hub_backoff(const hub_config *cfg, int attempt)
{
    long ms = cfg->backoff_ms;
    for (int i = 0; i < attempt && i < 3; i++)
        ms *= 2;
    sleep_ms(ms);
}

int hub_get_json(CURL *curl, const hub_config *cfg, const char *url, const char *repo, const char *revision,
                 hub_response *resp, perr *err)
{
    hub_request req = {.range_start = -1, .range_end = -1, .max_body = JSON_MAX};
    int failures = 0;
    for (;;) {
        if (hub_perform(curl, cfg, url, &req, resp, err) != 0) {
            if (resp->curl_code == CURLE_OK) /* not a transport problem */
                return -1;
            if (hub_tls_error(resp->curl_code)) { /* retrying cannot help; a complete local copy still may */
                resp->unreachable = true;
                return -1;
            }
            if (failures >= cfg->max_retries) {
                resp->unreachable = true;
                return perr_wrap(err, "cannot reach %s", cfg->endpoint);
            }
            hub_backoff(cfg, failures++);
            continue;
        }
        long st = resp->h.status;
        if (st >= 200 && st < 300)
            return 0;
        if (st == 429 && failures < cfg->max_retries) {
            long w = hub_retry_wait_s(cfg, &resp->h);
            fprintf(stderr, "Rate limited by the hub; waiting %ld s before retrying\n", w);
            sleep_ms(w * 1000);
            failures++;
            continue;
        }
        if ((st == 408 || st >= 500) && failures < cfg->max_retries) {
            hub_backoff(cfg, failures++);
            continue;
        }
        hub_status_error(cfg, &resp->h, repo, revision, NULL, err);
        return -1;
    }
}
