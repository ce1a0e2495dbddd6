/* Talking to a Hugging Face Hub endpoint with libcurl: configuration from the environment, requests with
 * manual redirect handling (the token only ever goes to the endpoint's own origin), error mapping. */
#ifndef PUNIE_HUB_HTTP_H
#define PUNIE_HUB_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include <curl/curl.h>

#include "util/err.h"

typedef struct hub_config {
    char endpoint[512];  /* $HF_ENDPOINT or https://huggingface.co, no trailing '/' */
    char token[1024];    /* empty when there is none; never printed */
    char cainfo[4096];   /* CA bundle file, empty = libcurl default */
    const char *cainfo_var;  /* the variable cainfo came from, for messages */
    char capath[4096];   /* hashed CA directory ($SSL_CERT_DIR), empty = none */
    bool offline;        /* HF_HUB_OFFLINE */
    long stall_timeout_s;  /* no byte for this long = dropped connection (HF_HUB_DOWNLOAD_TIMEOUT) */
    long backoff_ms;       /* first retry delay, doubled each time (max 8x) */
    int max_retries;
    long max_wait_s;       /* longest 429 wait we accept */
} hub_config;

int hub_config_load(hub_config *c, perr *err);

/* True for 1/ON/YES/TRUE (any case). */
bool env_truthy(const char *name);

/* Headers of one response that the downloader cares about. */
typedef struct hub_headers {
    long status;
    char error_code[64];
    char error_message[256];
    char repo_commit[64];
    char etag[160];
    char linked_etag[160];
    long long linked_size;     /* -1 when absent */
    long long content_length;  /* -1 when absent */
    char content_range[128];
    char content_encoding[64];
    char retry_after[64];
    char ratelimit[160];
    char link_next[4096];
    char location[4096];
} hub_headers;

typedef size_t (*hub_body_fn)(const char *data, size_t len, void *user, const hub_headers *h);

typedef struct hub_request {
    bool head;               /* HEAD instead of GET */
    long long range_start;   /* -1 = no Range header */
    long long range_end;     /* inclusive, -1 = open */
    hub_body_fn body_fn;     /* NULL: keep the body in memory (up to max_body bytes) */
    void *body_user;
    size_t max_body;
} hub_request;

typedef struct hub_response {
    hub_headers h;           /* of the final (non-redirect) response */
    hub_headers meta;        /* merged metadata seen along the redirect chain (X-Linked-*, X-Repo-Commit) */
    char final_url[4096];
    bool left_endpoint;      /* the final URL is on another origin (a CDN) */
    char *body;
    size_t body_len;
    CURLcode curl_code;      /* transport error of the last attempt, CURLE_OK if none */
    bool unreachable;        /* hub_get_json gave up on transport errors */
} hub_response;

void hub_response_free(hub_response *r);

/* One request to url, following at most 10 redirects by hand: a relative Location is resolved against
 * the current URL (query kept), an absolute one is followed too. Authorization is attached only while the
 * URL's scheme, host and port equal the endpoint's. Returns 0 when a final response arrived (any status),
 * -1 on transport errors, bad redirects or a redirect loop (err says which). */
int hub_perform(CURL *curl, const hub_config *cfg, const char *url, const hub_request *req, hub_response *resp,
                perr *err);

/* Transport errors that another attempt cannot fix: the server's certificate fails verification or the CA
 * certificates cannot be loaded. hub_perform's message for them names the host and the variables to set. */
bool hub_tls_error(CURLcode rc);

/* GET url expecting JSON (max 64 MiB), with retries on transport errors, 408, 429 and 5xx.
 * Non-2xx finals are turned into user-facing messages using repo (and revision when given). */
int hub_get_json(CURL *curl, const hub_config *cfg, const char *url, const char *repo, const char *revision,
                 hub_response *resp, perr *err);

/* Message for a failed status (401/403/404/429/5xx...), using X-Error-Code / X-Error-Message. */
void hub_status_error(const hub_config *cfg, const hub_headers *h, const char *repo, const char *revision,
                      const char *what, perr *err);

/* Seconds to wait after a 429 (RateLimit t=, else numeric Retry-After, else 1), capped at cfg->max_wait_s. */
long hub_retry_wait_s(const hub_config *cfg, const hub_headers *h);

/* Sleeps the backoff for retry number attempt (0-based). */
void hub_backoff(const hub_config *cfg, int attempt);

/* Percent-encodes s into out; keep_slash keeps '/' (file paths). */
int url_escape(const char *s, bool keep_slash, char *out, size_t n);

/* "W/\"abc\"" -> "abc" */
void etag_normalize(const char *in, char *out, size_t n);

/* Copies s keeping only printable ASCII (for echoing server-supplied text safely). */
void sanitize_text(const char *s, char *out, size_t n);

#endif
