/* Download progress: per-file and total bytes, rate and ETA. On a terminal it redraws a few lines in place;
 * otherwise it prints a plain line every few seconds. Thread-safe: workers call progress_advance. */
#ifndef PUNIE_UTIL_PROGRESS_H
#define PUNIE_UTIL_PROGRESS_H

#include <stdbool.h>
#include <stdio.h>

typedef struct progress progress;

/* enabled=false makes every call a no-op (for --quiet). out is usually stderr. */
progress *progress_new(bool enabled, FILE *out);
/* Registers a file to fetch; already = bytes on disk from an earlier run. Returns its id. */
int progress_add_file(progress *p, const char *name, long long size, long long already);
void progress_start(progress *p);
void progress_advance(progress *p, int id, long long bytes);
/* Bytes that had been counted but were thrown away (a restart); keeps the totals honest. */
void progress_rewind(progress *p, int id, long long bytes);
void progress_file_done(progress *p, int id);
/* Stops the drawing thread and prints a final summary line when ok. Frees p. */
void progress_finish(progress *p, bool ok);

/* "1.5 GB" style, into buf. */
const char *format_bytes(long long n, char *buf, size_t len);

#endif
