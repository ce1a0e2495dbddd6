#include "util/progress.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/clock.h"

#define MAX_FILES 4096
#define MAX_SHOWN 8

struct pfile {
    char name[96];
    long long size;
    atomic_llong done;
    atomic_int state; /* 0 waiting, 1 active, 2 finished */
};

struct progress {
    bool enabled, tty;
    FILE *out;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool running, stop;
    struct pfile *files;
    int nfiles;
    long long total, already;
    atomic_llong done;
    double t0;
    int lines_drawn;
};

const char *format_bytes(long long n, char *buf, size_t len)
{
    const char *units[] = {"B", "KB", "MB", "GB", "TB"};
    double v = (double)n;
    int u = 0;
    while (v >= 1000.0 && u < 4) {
        v /= 1000.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%lld B", n);
    else
        snprintf(buf, len, "%.1f %s", v, units[u]);
    return buf;
}

static void format_eta(double s, char *buf, size_t len)
{
    if (s < 0 || s > 99 * 3600) {
        snprintf(buf, len, "--:--");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, len, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else
        snprintf(buf, len, "%ld:%02ld", t / 60, t % 60);
}

progress *progress_new(bool enabled, FILE *out)
{
    progress *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->files = calloc(MAX_FILES, sizeof *p->files);
    if (!p->files) {
        free(p);
        return NULL;
    }
    p->enabled = enabled;
    p->out = out;
    p->tty = isatty(fileno(out));
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    return p;
}

int progress_add_file(progress *p, const char *name, long long size, long long already)
{
    if (!p || p->nfiles >= MAX_FILES)
        return -1;
    pthread_mutex_lock(&p->mu);
    int id = p->nfiles++;
    struct pfile *f = &p->files[id];
    const char *base = strrchr(name, '/');
    snprintf(f->name, sizeof f->name, "%s", base ? base + 1 : name);
    f->size = size;
    atomic_store(&f->done, already);
    p->total += size;
    p->already += already;
    atomic_fetch_add(&p->done, already);
    pthread_mutex_unlock(&p->mu);
    return id;
}

void progress_advance(progress *p, int id, long long bytes)
{
    if (!p || id < 0)
        return;
    atomic_store(&p->files[id].state, 1);
    atomic_fetch_add(&p->files[id].done, bytes);
    atomic_fetch_add(&p->done, bytes);
}

void progress_rewind(progress *p, int id, long long bytes)
{
    if (!p || id < 0)
        return;
    atomic_fetch_sub(&p->files[id].done, bytes);
    atomic_fetch_sub(&p->done, bytes);
}

void progress_file_done(progress *p, int id)
{
    if (!p || id < 0)
        return;
    atomic_store(&p->files[id].state, 2);
}

static void total_line(progress *p, char *line, size_t n)
{
    long long done = atomic_load(&p->done);
    double el = monotonic_s() - p->t0;
    double rate = el > 0.2 ? (double)(done - p->already) / el : 0;
    char a[32], b[32], r[32], eta[32];
    format_bytes(done, a, sizeof a);
    format_bytes(p->total, b, sizeof b);
    format_bytes((long long)rate, r, sizeof r);
    format_eta(rate > 0 ? (double)(p->total - done) / rate : -1, eta, sizeof eta);
    int pct = p->total > 0 ? (int)(100.0 * (double)done / (double)p->total) : 100;
    snprintf(line, n, "Total %s / %s  %3d%%  %s/s  ETA %s", a, b, pct, r, eta);
}

static void draw(progress *p)
{
    char line[256];
    if (!p->tty) {
        total_line(p, line, sizeof line);
        fprintf(p->out, "%s\n", line);
        fflush(p->out);
        return;
    }
    if (p->lines_drawn > 0)
        fprintf(p->out, "\033[%dA", p->lines_drawn);
    int shown = 0;
    for (int i = 0; i < p->nfiles && shown < MAX_SHOWN; i++) {
        struct pfile *f = &p->files[i];
        if (atomic_load(&f->state) != 1)
            continue;
        long long d = atomic_load(&f->done);
        char a[32], b[32];
        int pct = f->size > 0 ? (int)(100.0 * (double)d / (double)f->size) : 100;
        fprintf(p->out, "\033[2K  %-40.40s %10s / %-10s %3d%%\n", f->name, format_bytes(d, a, sizeof a),
                format_bytes(f->size, b, sizeof b), pct);
        shown++;
    }
    /* Blank out lines left over from a taller previous frame. */
    for (int i = shown; i < p->lines_drawn - 1; i++)
        fprintf(p->out, "\033[2K\n");
    int lines = shown > p->lines_drawn - 1 ? shown : p->lines_drawn - 1;
    total_line(p, line, sizeof line);
    fprintf(p->out, "\033[2K%s\n", line);
    p->lines_drawn = lines + 1;
    fflush(p->out);
}

static void *draw_thread(void *arg)
{
    progress *p = arg;
    double period = p->tty ? 0.2 : 5.0;
    pthread_mutex_lock(&p->mu);
    while (!p->stop) {
        const struct timespec until = deadline_after((long)(period * 1e9));
        int rc = pthread_cond_timedwait(&p->cv, &p->mu, &until);
        if (p->stop)
            break;
        if (rc == ETIMEDOUT)
            draw(p);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

void progress_start(progress *p)
{
    if (!p)
        return;
    p->t0 = monotonic_s();
    if (!p->enabled)
        return;
    p->running = pthread_create(&p->thread, NULL, draw_thread, p) == 0;
}

void progress_finish(progress *p, bool ok)
{
    if (!p)
        return;
    if (p->running) {
        pthread_mutex_lock(&p->mu);
        p->stop = true;
        pthread_cond_signal(&p->cv);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->thread, NULL);
    }
    if (p->enabled && ok) {
        if (p->tty && p->lines_drawn > 0) {
            fprintf(p->out, "\033[%dA", p->lines_drawn);
            for (int i = 0; i < p->lines_drawn; i++)
                fprintf(p->out, "\033[2K\n");
            fprintf(p->out, "\033[%dA", p->lines_drawn);
        }
        double el = monotonic_s() - p->t0;
        long long fetched = atomic_load(&p->done) - p->already;
        char a[32], r[32];
        format_bytes(fetched, a, sizeof a);
        format_bytes(el > 0 ? (long long)((double)fetched / el) : 0, r, sizeof r);
        fprintf(p->out, "Fetched %s in %.1f s (%s/s)\n", a, el, r);
        fflush(p->out);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->files);
    free(p);
}
