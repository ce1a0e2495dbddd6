/* Response headers come from the hub, a CDN or anything in between. They are fed line by line, as libcurl
 * delivers them, to the downloader's header parser, and what it keeps goes through everything that
 * reads it: retry waits, ETag normalisation, error messages, URL escaping.
 * The parser is static in src/hub/http.c, so that file is compiled into this target.
 * Needs: src/hub/http.c */
#include "fuzz.h"

#include "hub/http.c"

#include "hub/blobhash.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024)
        return 0;
    transfer t;
    memset(&t, 0, sizeof t);
    t.h.linked_size = t.h.content_length = -1;
    const char *p = (const char *)data, *end = p + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        char *line = fuzz_strdup((const uint8_t *)p, len); /* an exact-size copy: overreads show */
        if (header_cb(line, 1, len, &t) != len)
            abort();
        free(line);
        p += len;
    }
    hub_headers *h = &t.h;
    hub_config cfg;
    memset(&cfg, 0, sizeof cfg);
    snprintf(cfg.endpoint, sizeof cfg.endpoint, "https://huggingface.co");
    cfg.max_wait_s = 300;
    long wait = hub_retry_wait_s(&cfg, h);
    if (wait < 0 || wait > cfg.max_wait_s)
        abort();
    char etag[200], escaped[16384], shown[300];
    etag_normalize(h->linked_etag[0] ? h->linked_etag : h->etag, etag, sizeof etag);
    (void)etag_hash_kind(etag);
    url_escape(h->location, true, escaped, sizeof escaped);
    url_escape(h->link_next, false, escaped, sizeof escaped);
    sanitize_text(h->error_message, shown, sizeof shown);
    perr err;
    hub_status_error(&cfg, h, "org/name", "main", "config.json", &err);
    hub_status_error(&cfg, h, "org/name", NULL, NULL, &err);
    return 0;
}
