/* Stop strings come from the request and the text from the model (src/server/stop_filter.c). For any
 * split of the text into chunks: the output is a prefix of the text with no stop string inside it; when a
 * stop is reported the text continues with a stop string right there; otherwise the output is the text.
 * Input: stop strings, one per line, then "\n----\n", then the text; the first byte also seeds the chunks.
 * Needs: src/server/stop_filter.c */
#include "fuzz.h"

#include "server/stop_filter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024)
        return 0;
    char *stops_text, *text;
    fuzz_split(data, size, &stops_text, &text);
    char *stops[8];
    int n = 0;
    for (char *line = strtok(stops_text, "\n"); line && n < 8; line = strtok(NULL, "\n"))
        stops[n++] = line;
    stop_filter *f = stop_filter_new(stops, n);
    if (!f)
        abort();
    size_t len = strlen(text);
    unsigned seed = size ? data[0] : 0;
    strbuf out;
    sb_init(&out);
    int found = 0;
    for (size_t pos = 0; pos < len && !found;) {
        seed = seed * 1103515245u + 12345u;
        size_t k = 1 + (seed >> 16) % 6;
        if (k > len - pos)
            k = len - pos;
        found = stop_filter_feed(f, text + pos, k, &out);
        if (found < 0)
            abort();
        pos += k;
    }
    if (!found && stop_filter_flush(f, &out) != 0)
        abort();
    if (out.len > len || (out.len && memcmp(out.data, text, out.len) != 0))
        abort(); /* not a prefix */
    bool stop_follows = false;
    for (int i = 0; i < n; i++) {
        if (!*stops[i])
            continue;
        if (out.len && memmem(out.data, out.len, stops[i], strlen(stops[i])))
            abort(); /* a stop string leaked into the output */
        if (strncmp(text + out.len, stops[i], strlen(stops[i])) == 0)
            stop_follows = true;
    }
    if (found ? !stop_follows : out.len != len)
        abort();
    sb_free(&out);
    stop_filter_free(f);
    free(stops_text);
    free(text);
    return 0;
}
