#include "hub/download.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "hub/blobhash.h"
#include "hub/http.h"
#include "util/clock.h"
#include "util/fs.h"
#include "util/progress.h"

/* Big files are cut into blocks that the workers take in order, so several connections fill one file
 * while the written prefix (which the hash follows) keeps advancing. */
#define BLOCK_SIZE (32LL << 20)
#define MAX_BLOCKS 1024
#define MAX_CHUNKS 4096             /* accepted from a sidecar */
#define MAX_FILE_SIZE (1LL << 50)
#define MAX_TREE_PAGES 10000
#define MAX_FILES 10000

/* What a model needs to run; everything else (README, images, .gitattributes...) is skipped. */
static const char *default_patterns[] = {
    "*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.tiktoken", "vocab.txt", "merges.txt",
    "*/vocab.txt", "*/merges.txt",
};

typedef struct chunk {
    long long start, end, done; /* [start, end), done bytes written from start */
} chunk;

/* Received bytes are gathered into buffers of this size: one write per buffer instead of one per libcurl
 * callback (16 KB), and the same buffer is then hashed from memory. */
#define WRITE_BUF (1u << 20)
#define CONN_BUFS 8   /* per connection, allocated as needed: how far receiving may run ahead of hashing */
#define HASH_QUEUE 16

typedef struct hash_buf {
    char *data;
    size_t len;
    bool busy; /* queued for the hashing thread; guarded by the file's mutex */
} hash_buf;

struct dl;

typedef struct dfile {
    struct dl *dl;
    char path[1024];
    char etag[72];
    long long size;
    int prog;
    long long counted;        /* bytes already reported to progress */
    char url[4096];
    char blob[PUNIE_PATH_MAX], incomplete[PUNIE_PATH_MAX], sidecar[PUNIE_PATH_MAX], lockpath[PUNIE_PATH_MAX];
    int fd, lock_fd;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    chunk *chunks;
    int nchunks, chunks_left;
    /* hashing follows the contiguous written prefix in its own thread */
    pthread_t hasher;
    bool hasher_running, hash_stop, hash_done, hash_failed;
    long long hashed, claimed;
    hash_buf *queue[HASH_QUEUE];
    int qhead, nqueued;
    int front;                /* first chunk not yet complete */
    blob_hasher hash;
    char digest[72];
    double last_sidecar;
    bool needs_download;
    /* Connections are added to a file one at a time, and not while its hashing is the bottleneck: then they
     * would only write ahead for the hash to read back later. conns and conn_started are guarded by dl->mu. */
    int conns;
    double conn_started;
    _Atomic double backlog_at; /* last time receiving had to wait for the hash */
} dfile;

typedef struct task {
    dfile *f;
    int chunk; /* -1: prepare the file */
} task;

typedef struct dl {
    const hub_config *cfg;
    const download_opts *o;
    char repo_dir[PUNIE_PATH_MAX], lock_dir[PUNIE_PATH_MAX], commit[64];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    task *q;
    int qcap, qhead, qlen, active;
    atomic_bool abort;
    perr err;
    progress *prog;
} dl;

/* ---- selection and safety --------------------------------------------------------------------- */

static bool match_any(const char *path, const char **pats, int n)
{
    for (int i = 0; i < n; i++) {
        char pat[1024];
        const char *p = pats[i];
        size_t len = strlen(p);
        /* "dir/" means everything below dir, like the Hub tools. */
        if (len > 0 && p[len - 1] == '/' && len + 2 < sizeof pat) {
            snprintf(pat, sizeof pat, "%s*", p);
            p = pat;
        }
        if (fnmatch(p, path, 0) == 0)
            return true;
    }
    return false;
}

bool hub_file_wanted(const char *path, const char **include, int n_include, const char **exclude, int n_exclude)
{
    bool in = n_include > 0 ? match_any(path, include, n_include)
                            : match_any(path, default_patterns, (int)(sizeof default_patterns / sizeof *default_patterns));
    return in && !match_any(path, exclude, n_exclude);
}

bool hub_path_safe(const char *path)
{
    size_t n = strlen(path);
    if (n == 0 || n >= 1000 || path[0] == '/')
        return false;
    if (isalpha((unsigned char)path[0]) && path[1] == ':')
        return false; /* drive letter */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)path[i];
        if (c < 0x20 || c == 0x7f || c == '\\')
            return false;
    }
    const char *seg = path;
    for (;;) {
        const char *slash = strchr(seg, '/');
        size_t len = slash ? (size_t)(slash - seg) : strlen(seg);
        if (len == 0 || (len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
            return false;
        if (!slash)
            return true;
        seg = slash + 1;
    }
}

static bool revision_safe(const char *rev)
{
    /* It becomes refs/<rev> on disk: branch names like "main", "v1.0" or "refs/pr/1" only. */
    if (!hub_path_safe(rev) || strlen(rev) > 200)
        return false;
    for (const char *p = rev; *p; p++)
        if (!(isalnum((unsigned char)*p) || strchr("._-/+@", *p)))
            return false;
    return true;
}

static bool is_commit(const char *s)
{
    return etag_hash_kind(s) == 40;
}

/* ---- fatal errors and the task queue ----------------------------------------------------------- */

static void fail(dl *d, const perr *e)
{
    pthread_mutex_lock(&d->mu);
    if (!atomic_load(&d->abort)) {
        d->err = *e;
        atomic_store(&d->abort, true);
    }
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static void push(dl *d, task t, bool front)
{
    pthread_mutex_lock(&d->mu);
    if (d->qlen == d->qcap) {
        int ncap = d->qcap ? d->qcap * 2 : 64;
        task *nq = malloc((size_t)ncap * sizeof *nq);
        if (nq) {
            for (int i = 0; i < d->qlen; i++)
                nq[i] = d->q[(d->qhead + i) % d->qcap];
            free(d->q);
            d->q = nq;
            d->qcap = ncap;
            d->qhead = 0;
        }
    }
    if (d->qlen < d->qcap) {
        if (front) {
            d->qhead = (d->qhead + d->qcap - 1) % d->qcap;
            d->q[d->qhead] = t;
        } else {
            d->q[(d->qhead + d->qlen) % d->qcap] = t;
        }
        d->qlen++;
    }
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

/* ---- on-disk pieces ---------------------------------------------------------------------------- */

static int write_small_atomic(const char *path, const char *data, size_t len)
{
    /* No fsync: this only has to survive a killed process; the final hash check catches the rest. */
    char tmp[PUNIE_PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    ssize_t w = write(fd, data, len);
    close(fd);
    if (w != (ssize_t)len || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Caller holds f->mu. */
static void save_sidecar(dfile *f)
{
    size_t cap = 64 + (size_t)f->nchunks * 64;
    char *buf = malloc(cap);
    if (!buf)
        return;
    int n = snprintf(buf, cap, "punie-partial 1 %lld %d\n", f->size, f->nchunks);
    for (int i = 0; i < f->nchunks; i++)
        n += snprintf(buf + n, cap - (size_t)n, "%lld %lld %lld\n", f->chunks[i].start, f->chunks[i].end,
                      f->chunks[i].done);
    write_small_atomic(f->sidecar, buf, (size_t)n);
    free(buf);
    f->last_sidecar = monotonic_s();
}

static bool alloc_chunks(dfile *f, int n)
{
    chunk *c = realloc(f->chunks, (size_t)n * sizeof *c);
    if (!c)
        return false;
    f->chunks = c;
    return true;
}

static bool load_sidecar(dfile *f)
{
    char *text = NULL;
    if (read_file(f->sidecar, 1 << 20, &text, NULL, NULL) != 0)
        return false;
    long long size = -1;
    int n = 0, off = 0;
    bool ok = sscanf(text, "punie-partial 1 %lld %d\n%n", &size, &n, &off) == 2 && off > 0 && size == f->size &&
              n >= 1 && n <= MAX_CHUNKS && alloc_chunks(f, n);
    const char *p = text + off;
    long long expect = 0;
    for (int i = 0; ok && i < n; i++) {
        long long s, e, dn;
        int used = 0;
        ok = sscanf(p, "%lld %lld %lld\n%n", &s, &e, &dn, &used) == 3 && used > 0 && s == expect && e > s &&
             e <= size && dn >= 0 && dn <= e - s;
        if (ok) {
            f->chunks[i] = (chunk){s, e, dn};
            expect = e;
            p += used;
        }
    }
    free(text);
    if (!ok || expect != size)
        return false;
    f->nchunks = n;
    return true;
}

static bool plan_chunks(dfile *f)
{
    long long block = BLOCK_SIZE;
    if ((f->size + block - 1) / block > MAX_BLOCKS)
        block = (f->size + MAX_BLOCKS - 1) / MAX_BLOCKS;
    int n = f->size > block ? (int)((f->size + block - 1) / block) : 1;
    if (!alloc_chunks(f, n))
        return false;
    for (int i = 0; i < n; i++)
        f->chunks[i] = (chunk){block * i, i == n - 1 ? f->size : block * (i + 1), 0};
    f->nchunks = n;
    return true;
}

static long long chunks_done(const dfile *f)
{
    long long s = 0;
    for (int i = 0; i < f->nchunks; i++)
        s += f->chunks[i].done;
    return s;
}

static int link_pointer(dl *d, dfile *f, perr *err)
{
    char pointer[PUNIE_PATH_MAX], dir[PUNIE_PATH_MAX], target[PUNIE_PATH_MAX], tmp[PUNIE_PATH_MAX + 64];
    int w = snprintf(pointer, sizeof pointer, "%s/snapshots/%s/%s", d->repo_dir, d->commit, f->path);
    if (w < 0 || (size_t)w >= sizeof pointer)
        return perr_set(err, "path too long for %s", f->path);
    snprintf(dir, sizeof dir, "%s", pointer);
    *strrchr(dir, '/') = '\0';
    if (mkdir_p(dir, err) != 0)
        return -1;
    int depth = 2;
    for (const char *p = f->path; *p; p++)
        depth += *p == '/';
    target[0] = '\0';
    for (int i = 0; i < depth; i++)
        strcat(target, "../");
    strcat(target, "blobs/");
    strcat(target, f->etag);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%lx", pointer, (long)getpid(), (unsigned long)pthread_self());
    unlink(tmp);
    if (symlink(target, tmp) != 0)
        return perr_errno(err, "cannot create %s", tmp);
    if (rename(tmp, pointer) != 0) {
        perr_errno(err, "cannot create %s", pointer);
        unlink(tmp);
        return -1;
    }
    return 0;
}

static bool blob_ready(const dfile *f)
{
    struct stat st;
    return stat(f->blob, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == f->size;
}

static void release_lock(dfile *f)
{
    if (f->lock_fd >= 0) {
        flock(f->lock_fd, LOCK_UN);
        close(f->lock_fd);
        f->lock_fd = -1;
    }
}

/* ---- hashing thread ---------------------------------------------------------------------------- */

/* End of the contiguous written prefix. Caller holds f->mu; front only moves forward. */
static long long frontier(dfile *f)
{
    while (f->front < f->nchunks && f->chunks[f->front].done >= f->chunks[f->front].end - f->chunks[f->front].start)
        f->front++;
    return f->front < f->nchunks ? f->chunks[f->front].start + f->chunks[f->front].done : f->size;
}

/* Give back every buffer still waiting to be hashed. Caller holds f->mu. */
static void drop_queue(dfile *f)
{
    for (int i = 0; i < f->nqueued; i++)
        f->queue[(f->qhead + i) % HASH_QUEUE]->busy = false;
    f->nqueued = 0;
    pthread_cond_broadcast(&f->cv);
}

/* The hash follows the written prefix in order, on its own thread so that it overlaps the network. Data
 * written exactly where the claimed prefix ends is handed over in memory (no re-read); data that arrived
 * ahead of it (other connections) is read back from the file once the gap before it is filled.
 * [hashed, claimed) is what this thread has taken on: queued buffers or a range being read back. */
static void *hash_thread(void *arg)
{
    dfile *f = arg;
    size_t cap = 4u << 20;
    char *buf = NULL;
    bool failed = false;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        long long upto = 0;
        while (!failed && !f->hash_stop && f->hashed < f->size && f->nqueued == 0 &&
               (upto = frontier(f)) <= f->claimed)
            pthread_cond_wait(&f->cv, &f->mu);
        if (failed || f->hash_stop || f->hashed >= f->size)
            break;
        if (f->nqueued > 0) {
            hash_buf *b = f->queue[f->qhead];
            pthread_mutex_unlock(&f->mu);
            blob_hasher_update(&f->hash, b->data, b->len);
            pthread_mutex_lock(&f->mu);
            f->hashed += (long long)b->len;
            f->qhead = (f->qhead + 1) % HASH_QUEUE;
            f->nqueued--;
            b->busy = false;
            pthread_cond_broadcast(&f->cv);
            continue;
        }
        long long pos = f->claimed;
        if (upto - pos > (long long)cap)
            upto = pos + (long long)cap;
        f->claimed = upto;
        pthread_mutex_unlock(&f->mu);
        if (!buf && !(buf = malloc(cap)))
            failed = true;
        while (!failed && pos < upto) {
            ssize_t r = pread(f->fd, buf, (size_t)(upto - pos), pos);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                failed = true;
                break;
            }
            blob_hasher_update(&f->hash, buf, (size_t)r);
            pos += r;
        }
        pthread_mutex_lock(&f->mu);
        f->hashed = pos;
    }
    drop_queue(f);
    if (!failed && f->hashed == f->size)
        blob_hasher_final(&f->hash, f->digest);
    else
        blob_hasher_free(&f->hash);
    f->hash_failed = failed || f->hashed != f->size;
    f->hash_done = true;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    free(buf);
    return NULL;
}

static void stop_hasher(dfile *f)
{
    if (!f->hasher_running)
        return;
    pthread_mutex_lock(&f->mu);
    f->hash_stop = true;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->hasher, NULL);
    f->hasher_running = false;
}

/* ---- finishing a file -------------------------------------------------------------------------- */

static int finalize(dl *d, dfile *f, perr *err)
{
    /* Wait for the hash of the whole content (includes bytes from an earlier run). */
    pthread_mutex_lock(&f->mu);
    while (!f->hash_done)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->hasher, NULL);
    f->hasher_running = false;
    if (f->hash_failed || strcmp(f->digest, f->etag) != 0) {
        close(f->fd);
        f->fd = -1;
        unlink(f->incomplete);
        unlink(f->sidecar);
        release_lock(f);
        progress_rewind(d->prog, f->prog, f->size);
        if (f->hash_failed)
            return perr_set(err, "could not re-read %s to check its hash; the partial file was discarded", f->path);
        return perr_set(err, "hash mismatch for %s: expected %s %s but the downloaded content hashes to %s. "
                              "The corrupt file was discarded; run the command again to retry",
                        f->path, etag_hash_kind(f->etag) == 64 ? "sha256" : "git-sha1", f->etag, f->digest);
    }
    fchmod(f->fd, 0644);
    close(f->fd);
    f->fd = -1;
    if (rename(f->incomplete, f->blob) != 0) {
        perr_errno(err, "cannot move %s into place", f->incomplete);
        release_lock(f);
        return -1;
    }
    unlink(f->sidecar);
    release_lock(f);
    if (link_pointer(d, f, err) != 0)
        return -1;
    progress_file_done(d->prog, f->prog);
    return 0;
}

/* ---- fetching bytes ---------------------------------------------------------------------------- */

typedef struct chunk_io {
    dfile *f;
    int ci;
    long long want;      /* absolute offset we asked for */
    long long skip;      /* bytes of a 200 reply to drop before our range starts */
    bool started, bad_range, io_error, reached_end;
    int io_errno;
    hash_buf *bufs;      /* the worker's CONN_BUFS buffers: one fills while others wait for the hash */
    int cur;
} chunk_io;

/* Write the current buffer at the end of the chunk's written part, then count it as done. When it sits right
 * where the hashing thread's work ends, hand it over so the bytes are hashed from memory. */
static bool flush_buf(chunk_io *io)
{
    dfile *f = io->f;
    chunk *c = &f->chunks[io->ci];
    hash_buf *b = &io->bufs[io->cur];
    if (b->len == 0)
        return true;
    pthread_mutex_lock(&f->mu);
    long long pos = c->start + c->done;
    pthread_mutex_unlock(&f->mu);
    size_t off = 0;
    while (off < b->len) {
        ssize_t w = pwrite(f->fd, b->data + off, b->len - off, pos + (long long)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            io->io_error = true;
            io->io_errno = w < 0 ? errno : EIO;
            b->len = 0;
            return false;
        }
        off += (size_t)w;
    }
    long long written = (long long)b->len;
    pthread_mutex_lock(&f->mu);
    c->done += written;
    bool wake = false;
    if (pos == f->claimed && f->nqueued < HASH_QUEUE && !f->hash_done) {
        f->queue[(f->qhead + f->nqueued) % HASH_QUEUE] = b;
        f->nqueued++;
        f->claimed += (long long)b->len;
        b->busy = true;
        wake = true;
    } else {
        wake = frontier(f) > f->claimed;
    }
    if (monotonic_s() - f->last_sidecar > 0.5)
        save_sidecar(f);
    if (wake)
        pthread_cond_broadcast(&f->cv);
    /* Move to the next buffer, which may still be queued for hashing. */
    if (b->busy)
        io->cur = (io->cur + 1) % CONN_BUFS;
    hash_buf *next = &io->bufs[io->cur];
    if (next->busy)
        atomic_store(&f->backlog_at, monotonic_s());
    while (next->busy)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
    progress_advance(f->dl->prog, f->prog, written);
    next->len = 0;
    if (!next->data && !(next->data = malloc(WRITE_BUF))) {
        io->io_error = true;
        io->io_errno = ENOMEM;
        return false;
    }
    return true;
}

/* Wait until the hashing thread has let go of every buffer, so that the next transfer may reuse them. */
static void release_bufs(chunk_io *io)
{
    dfile *f = io->f;
    pthread_mutex_lock(&f->mu);
    for (int i = 0; i < CONN_BUFS; i++)
        while (io->bufs[i].busy)
            pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
    for (int i = 0; i < CONN_BUFS; i++)
        io->bufs[i].len = 0;
}

static size_t chunk_body(const char *data, size_t len, void *user, const hub_headers *h)
{
    chunk_io *io = user;
    dfile *f = io->f;
    chunk *c = &f->chunks[io->ci];
    if (atomic_load(&f->dl->abort))
        return 0;
    if (!io->started) {
        io->started = true;
        if (h->status == 206) {
            long long a = -1, b = -1, total = -1;
            if (sscanf(h->content_range, "bytes %lld-%lld/%lld", &a, &b, &total) != 3 || a != io->want ||
                (total >= 0 && total != f->size)) {
                io->bad_range = true;
                return 0;
            }
        } else {
            /* The server ignored our Range: read from the start and drop what we already have. */
            io->skip = io->want;
        }
    }
    size_t used = len;
    if (io->skip > 0) {
        size_t drop = (long long)len < io->skip ? len : (size_t)io->skip;
        io->skip -= (long long)drop;
        data += drop;
        len -= drop;
    }
    pthread_mutex_lock(&f->mu);
    long long room = c->end - (c->start + c->done);
    pthread_mutex_unlock(&f->mu);
    room -= (long long)io->bufs[io->cur].len;
    if ((long long)len > room) {
        len = (size_t)room;
        io->reached_end = true;
    }
    while (len > 0) {
        hash_buf *b = &io->bufs[io->cur];
        size_t take = WRITE_BUF - b->len < len ? WRITE_BUF - b->len : len;
        memcpy(b->data + b->len, data, take);
        b->len += take;
        data += take;
        len -= take;
        if (b->len == WRITE_BUF && !flush_buf(io))
            return 0;
    }
    if (io->reached_end && !flush_buf(io))
        return 0;
    return io->reached_end ? 0 : used;
}

static int resolve_url(dl *d, dfile *f, CURL *curl, perr *err);

static int fetch_chunk(dl *d, dfile *f, int ci, CURL *curl, hash_buf *bufs, perr *err)
{
    const hub_config *cfg = d->cfg;
    chunk *c = &f->chunks[ci];
    int failures = 0;
    bool refreshed = false;
    hub_response resp = {0};
    while (!atomic_load(&d->abort)) {
        pthread_mutex_lock(&f->mu);
        long long pos = c->start + c->done, before = c->done;
        pthread_mutex_unlock(&f->mu);
        if (pos >= c->end)
            break;
        chunk_io io = {.f = f, .ci = ci, .want = pos, .bufs = bufs};
        if (!bufs[0].data && !(bufs[0].data = malloc(WRITE_BUF))) {
            hub_response_free(&resp);
            return perr_set(err, "out of memory");
        }
        hub_request req = {.range_start = -1, .range_end = -1, .body_fn = chunk_body, .body_user = &io};
        if (pos > 0 || c->end < f->size) {
            req.range_start = pos;
            req.range_end = c->end - 1;
        }
        perr e = {{0}};
        /* Another worker may refresh the URL (expired CDN link) meanwhile: use a copy. */
        char url[sizeof f->url];
        pthread_mutex_lock(&f->mu);
        memcpy(url, f->url, sizeof url);
        pthread_mutex_unlock(&f->mu);
        int rc = hub_perform(curl, cfg, url, &req, &resp, &e);
        /* What arrived before the end or a drop is good: keep it. */
        if (!io.io_error)
            flush_buf(&io);
        release_bufs(&io);
        pthread_mutex_lock(&f->mu);
        save_sidecar(f);
        bool progressed = c->done > before;
        bool complete = c->start + c->done >= c->end;
        pthread_mutex_unlock(&f->mu);
        if (io.io_error) {
            hub_response_free(&resp);
            errno = io.io_errno;
            if (io.io_errno == ENOSPC || io.io_errno == EDQUOT)
                return perr_set(err, "disk full while writing %s (%s)", f->path, strerror(io.io_errno));
            return perr_errno(err, "cannot write %s", f->incomplete);
        }
        if (complete)
            break;
        if (progressed)
            failures = 0;
        long st = resp.h.status;
        if (rc != 0 && (resp.curl_code == CURLE_OK || hub_tls_error(resp.curl_code))) {
            /* bad redirect, a loop or a certificate problem: retrying will not help */
            hub_response_free(&resp);
            return perr_set(err, "%s: %s", f->path, e.msg);
        }
        if (rc == 0 && (st == 200 || st == 206) && !io.bad_range) {
            /* Connection ended early without an error: same as a drop. */
            snprintf(e.msg, sizeof e.msg, "connection closed after a partial response");
        } else if (rc == 0 && io.bad_range) {
            snprintf(e.msg, sizeof e.msg, "server answered with the wrong byte range");
        } else if (rc == 0 && st == 429 && failures < cfg->max_retries) {
            long wsec = hub_retry_wait_s(cfg, &resp.h);
            fprintf(stderr, "Rate limited by the hub; waiting %ld s before retrying %s\n", wsec, f->path);
            struct timespec ts = {wsec, 0};
            nanosleep(&ts, NULL);
            failures++;
            continue;
        } else if (rc == 0 && st == 403 && resp.left_endpoint && !refreshed) {
            /* Signed CDN links expire: ask the hub for a fresh one and continue. */
            refreshed = true;
            if (resolve_url(d, f, curl, err) != 0) {
                hub_response_free(&resp);
                return -1;
            }
            continue;
        } else if (rc == 0 && st != 408 && st < 500) {
            hub_status_error(cfg, &resp.h, d->o->repo, d->o->revision, f->path, err);
            hub_response_free(&resp);
            return -1;
        } else if (rc == 0) {
            snprintf(e.msg, sizeof e.msg, "HTTP %ld", st);
        }
        if (failures >= cfg->max_retries) {
            hub_response_free(&resp);
            return perr_set(err, "%s: %s (gave up after %d retries)", f->path, e.msg, cfg->max_retries);
        }
        hub_backoff(cfg, failures++);
    }
    hub_response_free(&resp);
    return atomic_load(&d->abort) ? -1 : 0;
}

/* HEAD the resolve URL: where the bytes are, and whether the hub agrees with the tree listing. */
static int resolve_url(dl *d, dfile *f, CURL *curl, perr *err)
{
    const hub_config *cfg = d->cfg;
    char path_enc[3200], url[4096];
    if (url_escape(f->path, true, path_enc, sizeof path_enc) != 0)
        return perr_set(err, "file name too long: %s", f->path);
    snprintf(url, sizeof url, "%s/%s/resolve/%s/%s", cfg->endpoint, d->o->repo, d->commit, path_enc);
    hub_request req = {.head = true, .range_start = -1, .range_end = -1};
    hub_response resp = {0};
    int failures = 0;
    for (;;) {
        perr e = {{0}};
        int rc = hub_perform(curl, cfg, url, &req, &resp, &e);
        long st = resp.h.status;
        if (rc == 0 && st >= 200 && st < 300)
            break;
        if (rc != 0 && resp.curl_code == CURLE_OK) { /* bad redirect / loop: not worth retrying */
            hub_response_free(&resp);
            return perr_set(err, "%s: %s", f->path, e.msg);
        }
        bool retry = (rc != 0 && !hub_tls_error(resp.curl_code)) || st == 408 || st == 429 || st >= 500;
        if (!retry || failures >= cfg->max_retries) {
            if (rc == 0)
                hub_status_error(cfg, &resp.h, d->o->repo, d->o->revision, f->path, err);
            else
                perr_set(err, "%s: %s", f->path, e.msg);
            hub_response_free(&resp);
            return -1;
        }
        if (rc == 0 && st == 429) {
            struct timespec ts = {hub_retry_wait_s(cfg, &resp.h), 0};
            nanosleep(&ts, NULL);
            failures++;
        } else {
            hub_backoff(cfg, failures++);
        }
    }
    char etag[160] = "";
    if (resp.meta.linked_etag[0])
        etag_normalize(resp.meta.linked_etag, etag, sizeof etag);
    else if (!resp.left_endpoint && resp.h.etag[0])
        etag_normalize(resp.h.etag, etag, sizeof etag);
    if (etag_hash_kind(etag) && strcmp(etag, f->etag) != 0) {
        hub_response_free(&resp);
        return perr_set(err, "the hub's metadata for %s (etag %.80s) does not match its file listing (%s)", f->path,
                        etag, f->etag);
    }
    if (resp.meta.repo_commit[0] && strcmp(resp.meta.repo_commit, d->commit) != 0) {
        hub_response_free(&resp);
        return perr_set(err, "the hub served %s from another commit than %s", f->path, d->commit);
    }
    long long size = resp.meta.linked_size >= 0 ? resp.meta.linked_size
                     : (!resp.left_endpoint && !resp.h.content_encoding[0]) ? resp.h.content_length
                                                                            : -1;
    if (size >= 0 && size != f->size) {
        hub_response_free(&resp);
        return perr_set(err, "the hub reports %lld bytes for %s but its file listing says %lld", size, f->path,
                        f->size);
    }
    pthread_mutex_lock(&f->mu);
    snprintf(f->url, sizeof f->url, "%s", resp.final_url);
    pthread_mutex_unlock(&f->mu);
    hub_response_free(&resp);
    return 0;
}

static int open_incomplete(dl *d, dfile *f, perr *err)
{
    f->fd = open(f->incomplete, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (f->fd < 0)
        return perr_errno(err, "cannot create %s", f->incomplete);
    struct stat st;
    fstat(f->fd, &st);
    if (!load_sidecar(f)) {
        if (!plan_chunks(f))
            return perr_set(err, "out of memory");
        /* An .incomplete without our sidecar comes from an append-only downloader (huggingface_hub before
         * 1.18 used the same name): keep its prefix. The final hash check covers a wrong guess. */
        if (st.st_size > 0 && st.st_size <= f->size) {
            for (int i = 0; i < f->nchunks; i++) {
                long long have = st.st_size - f->chunks[i].start, len = f->chunks[i].end - f->chunks[i].start;
                f->chunks[i].done = have <= 0 ? 0 : have < len ? have : len;
            }
        } else if (st.st_size > 0 && ftruncate(f->fd, 0) != 0) {
            return perr_errno(err, "cannot reset %s", f->incomplete);
        }
    }
    pthread_mutex_lock(&f->mu);
    save_sidecar(f);
    pthread_mutex_unlock(&f->mu);
    if (f->size > 0) {
        int rc = posix_fallocate(f->fd, 0, f->size);
        if (rc == ENOSPC || rc == EDQUOT)
            return perr_set(err, "disk full: cannot reserve %lld bytes for %s", f->size, f->path);
        if (rc != 0 && ftruncate(f->fd, f->size) != 0) /* filesystems without fallocate: sparse file */
            return perr_errno(err, "cannot size %s", f->incomplete);
    }
    long long had = chunks_done(f);
    if (had > f->counted)
        progress_advance(d->prog, f->prog, had - f->counted);
    else if (had < f->counted)
        progress_rewind(d->prog, f->prog, f->counted - had);
    f->counted = had;
    f->front = 0;
    f->chunks_left = 0;
    for (int i = 0; i < f->nchunks; i++)
        f->chunks_left += f->chunks[i].done < f->chunks[i].end - f->chunks[i].start;
    return 0;
}

static int prepare_file(dl *d, dfile *f, CURL *curl, bool *run_chunk0, perr *err)
{
    *run_chunk0 = false;
    f->lock_fd = open(f->lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0664);
    if (f->lock_fd < 0)
        return perr_errno(err, "cannot create lock file %s", f->lockpath);
    if (flock(f->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        if (!d->o->quiet)
            fprintf(stderr, "Another process is downloading %s; waiting for it...\n", f->path);
        while (flock(f->lock_fd, LOCK_EX) != 0)
            if (errno != EINTR)
                return perr_errno(err, "cannot lock %s", f->lockpath);
    }
    if (blob_ready(f)) {
        /* Someone else finished it meanwhile. */
        release_lock(f);
        progress_advance(d->prog, f->prog, f->size - f->counted);
        progress_file_done(d->prog, f->prog);
        return link_pointer(d, f, err);
    }
    if (resolve_url(d, f, curl, err) != 0 || open_incomplete(d, f, err) != 0)
        return -1;
    if (blob_hasher_init(&f->hash, etag_hash_kind(f->etag), f->size, err) != 0)
        return -1;
    if (pthread_create(&f->hasher, NULL, hash_thread, f) != 0) {
        blob_hasher_free(&f->hash);
        return perr_set(err, "cannot start a thread");
    }
    f->hasher_running = true;
    if (f->chunks_left == 0)
        return finalize(d, f, err);
    /* Other workers take the remaining chunks; this one continues with the first unfinished chunk. */
    int first = -1;
    for (int i = f->nchunks - 1; i >= 0; i--)
        if (f->chunks[i].done < f->chunks[i].end - f->chunks[i].start) {
            if (first >= 0)
                push(d, (task){f, first}, true);
            first = i;
        }
    *run_chunk0 = true;
    return first;
}

static int run_chunk(dl *d, dfile *f, int ci, CURL *curl, hash_buf *bufs, perr *err)
{
    if (fetch_chunk(d, f, ci, curl, bufs, err) != 0)
        return -1;
    pthread_mutex_lock(&f->mu);
    bool last = --f->chunks_left == 0;
    pthread_mutex_unlock(&f->mu);
    return last ? finalize(d, f, err) : 0;
}

/* One more connection on a file that already has some pays only when the file is not already arriving
 * faster than it can be hashed. Caller holds d->mu. */
#define RAMP_S 0.3

static bool task_runnable(const task *t, double now)
{
    if (t->chunk < 0 || t->f->conns == 0)
        return true;
    return now - t->f->conn_started >= RAMP_S && now - atomic_load(&t->f->backlog_at) >= RAMP_S;
}

/* Take the first runnable task off the queue; -1 when none is. Caller holds d->mu. */
static int take_task(dl *d, task *out)
{
    double now = monotonic_s();
    for (int i = 0; i < d->qlen; i++) {
        int at = (d->qhead + i) % d->qcap;
        if (!task_runnable(&d->q[at], now))
            continue;
        *out = d->q[at];
        for (int j = i; j > 0; j--) /* close the gap, keeping the order */
            d->q[(d->qhead + j) % d->qcap] = d->q[(d->qhead + j - 1) % d->qcap];
        d->qhead = (d->qhead + 1) % d->qcap;
        d->qlen--;
        return 0;
    }
    return -1;
}

static void *worker(void *arg)
{
    dl *d = arg;
    CURL *curl = curl_easy_init();
    /* Kept for the worker's lifetime: fresh buffers per transfer cost page faults on every use. */
    hash_buf bufs[CONN_BUFS] = {{0}};
    pthread_mutex_lock(&d->mu);
    for (;;) {
        task t;
        bool got = false;
        while (!atomic_load(&d->abort) && d->qlen > 0 && !(got = take_task(d, &t) == 0)) {
            /* Only deferred connections are left: look again shortly or when something changes. */
            const struct timespec until = deadline_after(100 * 1000000L);
            pthread_cond_timedwait(&d->cv, &d->mu, &until);
        }
        if (!got) {
            while (d->qlen == 0 && d->active > 0 && !atomic_load(&d->abort))
                pthread_cond_wait(&d->cv, &d->mu);
            if (atomic_load(&d->abort) || d->qlen == 0)
                break;
            continue;
        }
        d->active++;
        t.f->conns++;
        t.f->conn_started = monotonic_s();
        pthread_mutex_unlock(&d->mu);

        perr e = {{0}};
        int rc = 0;
        if (!curl) {
            rc = perr_set(&e, "cannot start libcurl");
        } else if (t.chunk < 0) {
            bool run = false;
            int first = prepare_file(d, t.f, curl, &run, &e);
            rc = first < 0 ? -1 : 0;
            if (rc == 0 && run)
                rc = run_chunk(d, t.f, first, curl, bufs, &e);
        } else {
            rc = run_chunk(d, t.f, t.chunk, curl, bufs, &e);
        }
        if (rc != 0 && !atomic_load(&d->abort))
            fail(d, &e);

        pthread_mutex_lock(&d->mu);
        d->active--;
        t.f->conns--;
        pthread_cond_broadcast(&d->cv);
    }
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    curl_easy_cleanup(curl);
    for (int i = 0; i < CONN_BUFS; i++)
        free(bufs[i].data);
    return NULL;
}

/* ---- revision and listing ---------------------------------------------------------------------- */

static int resolve_revision(const hub_config *cfg, CURL *curl, const char *repo, const char *rev, char *commit,
                            bool *unreachable, perr *err)
{
    if (is_commit(rev)) {
        snprintf(commit, 64, "%s", rev);
        return 0;
    }
    char enc[700], url[1400];
    if (url_escape(rev, false, enc, sizeof enc) != 0)
        return perr_set(err, "revision name too long");
    snprintf(url, sizeof url, "%s/api/models/%s/revision/%s?expand=sha", cfg->endpoint, repo, enc);
    hub_response resp = {0};
    if (hub_get_json(curl, cfg, url, repo, rev, &resp, err) != 0) {
        *unreachable = resp.unreachable;
        hub_response_free(&resp);
        return -1;
    }
    cJSON *root = cJSON_ParseWithLength(resp.body ? resp.body : "", resp.body_len);
    const char *sha = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "sha"));
    bool ok = sha && is_commit(sha);
    if (ok)
        snprintf(commit, 64, "%s", sha);
    cJSON_Delete(root);
    hub_response_free(&resp);
    if (!ok)
        return perr_set(err, "unexpected answer from the hub for %s revision %s (no commit id)", repo, rev);
    return 0;
}

typedef struct entry {
    char path[1024];
    char etag[72];
    long long size;
} entry;

static int parse_tree_page(const char *body, size_t len, entry **list, int *n, int *cap, perr *err)
{
    cJSON *root = cJSON_ParseWithLength(body ? body : "", len);
    if (!cJSON_IsArray(root)) {
        cJSON_Delete(root);
        return perr_set(err, "unexpected file listing from the hub (not a JSON array)");
    }
    int rc = 0;
    cJSON *it;
    cJSON_ArrayForEach(it, root)
    {
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "type"));
        const char *path = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "path"));
        if (!type || strcmp(type, "file") != 0)
            continue;
        char shown[200];
        sanitize_text(path ? path : "", shown, sizeof shown);
        if (!path || !hub_path_safe(path)) {
            rc = perr_set(err, "refusing unsafe file name from the hub: '%s'", shown);
            break;
        }
        cJSON *lfs = cJSON_GetObjectItemCaseSensitive(it, "lfs");
        const char *oid = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "oid"));
        cJSON *size = cJSON_GetObjectItemCaseSensitive(it, "size");
        if (cJSON_IsObject(lfs)) {
            const char *loid = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(lfs, "oid"));
            cJSON *lsize = cJSON_GetObjectItemCaseSensitive(lfs, "size");
            oid = loid;
            if (cJSON_IsNumber(lsize))
                size = lsize;
        }
        if (!oid || !etag_hash_kind(oid) || !cJSON_IsNumber(size) || size->valuedouble < 0 ||
            size->valuedouble > (double)MAX_FILE_SIZE || size->valuedouble != (double)(long long)size->valuedouble) {
            rc = perr_set(err, "malformed entry for '%s' in the hub's file listing", shown);
            break;
        }
        if (*n >= MAX_FILES) {
            rc = perr_set(err, "the repository lists too many files");
            break;
        }
        if (*n == *cap) {
            int nc = *cap ? *cap * 2 : 64;
            entry *ne = realloc(*list, (size_t)nc * sizeof *ne);
            if (!ne) {
                rc = perr_set(err, "out of memory");
                break;
            }
            *list = ne;
            *cap = nc;
        }
        entry *e = &(*list)[(*n)++];
        snprintf(e->path, sizeof e->path, "%s", path);
        snprintf(e->etag, sizeof e->etag, "%s", oid);
        e->size = (long long)size->valuedouble;
    }
    cJSON_Delete(root);
    return rc;
}

static int list_tree(const hub_config *cfg, CURL *curl, const char *repo, const char *rev, const char *commit,
                     entry **list, int *n, perr *err)
{
    char url[4096];
    snprintf(url, sizeof url, "%s/api/models/%s/tree/%s?recursive=true&expand=false", cfg->endpoint, repo, commit);
    int cap = 0;
    *list = NULL;
    *n = 0;
    for (int page = 0; page < MAX_TREE_PAGES; page++) {
        hub_response resp = {0};
        if (hub_get_json(curl, cfg, url, repo, rev, &resp, err) != 0 ||
            parse_tree_page(resp.body, resp.body_len, list, n, &cap, err) != 0) {
            hub_response_free(&resp);
            return -1;
        }
        char next[4096];
        snprintf(next, sizeof next, "%s", resp.h.link_next);
        hub_response_free(&resp);
        if (!next[0])
            return 0;
        if (strcmp(next, url) == 0)
            return perr_set(err, "the hub's file listing points back to the same page");
        snprintf(url, sizeof url, "%s", next);
    }
    return perr_set(err, "the hub's file listing has too many pages");
}

/* ---- the whole download ------------------------------------------------------------------------ */

static int check_writable(const char *dir, perr *err)
{
    if (mkdir_p(dir, err) != 0)
        return perr_wrap(err, "cannot use the models directory %s", dir);
    char probe[PUNIE_PATH_MAX];
    snprintf(probe, sizeof probe, "%s/.punie-write-test.%ld", dir, (long)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return perr_errno(err, "the models directory %s is not writable", dir);
    close(fd);
    unlink(probe);
    return 0;
}

static int offline_lookup(const download_opts *o, const char *rev, download_result *res, perr *err)
{
    enum local_state st;
    if (local_model_state(o->models_dir, o->repo, rev, &st, res->snapshot_dir, sizeof res->snapshot_dir, err) != 0)
        return -1;
    if (st != LOCAL_COMPLETE)
        return perr_set(err, "offline mode is on (HF_HUB_OFFLINE) and %s (revision %s) is %s in %s; "
                             "unset HF_HUB_OFFLINE to download it",
                        o->repo, rev, st == LOCAL_PARTIAL ? "only partially downloaded" : "not downloaded",
                        o->models_dir);
    const char *slash = strrchr(res->snapshot_dir, '/');
    snprintf(res->commit, sizeof res->commit, "%s", slash ? slash + 1 : "");
    res->from_cache_offline = true;
    return 0;
}

int hub_download(const download_opts *o, download_result *res, perr *err)
{
    memset(res, 0, sizeof *res);
    const char *rev = o->revision && *o->revision ? o->revision : "main";
    if (!repo_id_valid(o->repo))
        return perr_set(err, "invalid repository id '%s' (expected NAMESPACE/NAME, e.g. %s)", o->repo,
                        PUNIE_DEFAULT_REPO);
    if (!revision_safe(rev))
        return perr_set(err, "invalid revision '%s'", rev);
    hub_config cfg;
    if (hub_config_load(&cfg, err) != 0)
        return -1;
    if (cfg.offline)
        return offline_lookup(o, rev, res, err);
    if (check_writable(o->models_dir, err) != 0)
        return -1;

    dl d;
    memset(&d, 0, sizeof d);
    d.cfg = &cfg;
    d.o = o;
    pthread_mutex_init(&d.mu, NULL);
    pthread_cond_init(&d.cv, NULL);
    char folder[512];
    if (repo_folder_name(o->repo, folder, sizeof folder, err) != 0 ||
        path_join(d.repo_dir, sizeof d.repo_dir, o->models_dir, folder, err) != 0)
        return -1;
    snprintf(d.lock_dir, sizeof d.lock_dir, "%s/.locks/%s", o->models_dir, folder);

    CURL *curl = curl_easy_init();
    if (!curl)
        return perr_set(err, "cannot start libcurl");
    entry *list = NULL;
    int nlist = 0;
    bool unreachable = false;
    if (resolve_revision(&cfg, curl, o->repo, rev, d.commit, &unreachable, err) != 0) {
        curl_easy_cleanup(curl);
        /* Like the Hub's own tools: when the hub cannot be reached, a complete local copy will do. */
        perr local = {{0}};
        if (unreachable && offline_lookup(o, rev, res, &local) == 0) {
            res->from_cache_offline = false;
            res->hub_unreachable = true;
            return 0;
        }
        if (unreachable) {
            char msg[sizeof err->msg];
            snprintf(msg, sizeof msg, "%s", err->msg);
            perr_set(err, "%s (and %s is not fully downloaded in %s)", msg, o->repo, o->models_dir);
        }
        return -1;
    }
    if (list_tree(&cfg, curl, o->repo, rev, d.commit, &list, &nlist, err) != 0) {
        curl_easy_cleanup(curl);
        free(list);
        return -1;
    }
    curl_easy_cleanup(curl);
    snprintf(res->commit, sizeof res->commit, "%s", d.commit);

    dfile *files = calloc((size_t)(nlist ? nlist : 1), sizeof *files);
    int nf = 0;
    for (int i = 0; files && i < nlist; i++) {
        if (!hub_file_wanted(list[i].path, o->include, o->n_include, o->exclude, o->n_exclude))
            continue;
        dfile *f = &files[nf++];
        f->dl = &d;
        snprintf(f->path, sizeof f->path, "%s", list[i].path);
        snprintf(f->etag, sizeof f->etag, "%s", list[i].etag);
        f->size = list[i].size;
        f->fd = f->lock_fd = -1;
        f->prog = -1;
        pthread_mutex_init(&f->mu, NULL);
        pthread_cond_init(&f->cv, NULL);
        snprintf(f->blob, sizeof f->blob, "%s/blobs/%s", d.repo_dir, f->etag);
        snprintf(f->incomplete, sizeof f->incomplete, "%s.incomplete", f->blob);
        snprintf(f->sidecar, sizeof f->sidecar, "%s.incomplete.parts", f->blob);
        snprintf(f->lockpath, sizeof f->lockpath, "%s/%s.lock", d.lock_dir, f->etag);
    }
    free(list);
    if (!files)
        return perr_set(err, "out of memory");
    if (nf == 0) {
        free(files);
        return perr_set(err, "no files of %s match the selection", o->repo);
    }
    res->files_total = nf;

    char sub[PUNIE_PATH_MAX + 32];
    snprintf(sub, sizeof sub, "%s/blobs", d.repo_dir);
    int rc = mkdir_p(sub, err);
    snprintf(sub, sizeof sub, "%s/snapshots/%s", d.repo_dir, d.commit);
    rc = rc ? rc : mkdir_p(sub, err);
    rc = rc ? rc : mkdir_p(d.lock_dir, err);
    if (rc != 0) {
        free(files);
        return -1;
    }

    /* What is already here, and what remains to fetch. */
    d.prog = progress_new(!o->quiet && !env_truthy("HF_HUB_DISABLE_PROGRESS_BARS"), stderr);
    long long remaining = 0;
    int ndl = 0;
    for (int i = 0; i < nf && rc == 0; i++) {
        dfile *f = &files[i];
        res->bytes_total += f->size;
        char pointer[PUNIE_PATH_MAX];
        snprintf(pointer, sizeof pointer, "%s/snapshots/%s/%s", d.repo_dir, d.commit, f->path);
        struct stat st;
        if (stat(pointer, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == f->size)
            continue;
        if (blob_ready(f)) {
            rc = link_pointer(&d, f, err);
            continue;
        }
        f->needs_download = true;
        ndl++;
        long long had = 0;
        struct stat ist;
        if (load_sidecar(f))
            had = chunks_done(f);
        f->nchunks = 0;
        remaining += f->size;
        if (stat(f->incomplete, &ist) == 0) /* space already reserved by an earlier run */
            remaining -= (long long)ist.st_blocks * 512 < f->size ? (long long)ist.st_blocks * 512 : f->size;
        f->counted = had;
        f->prog = progress_add_file(d.prog, f->path, f->size, had);
    }
    struct statvfs vfs;
    snprintf(sub, sizeof sub, "%s/blobs", d.repo_dir);
    if (rc == 0 && ndl > 0 && statvfs(sub, &vfs) == 0) {
        long long avail = (long long)vfs.f_bavail * (long long)vfs.f_frsize;
        if (avail < remaining) {
            char a[32], b[32];
            rc = perr_set(err, "not enough disk space in %s: %s more is needed but only %s is free", o->models_dir,
                          format_bytes(remaining, a, sizeof a), format_bytes(avail, b, sizeof b));
        }
    }

    if (rc == 0 && ndl > 0) {
        int jobs = o->jobs > 0 ? o->jobs : 8;
        for (int i = 0; rc == 0 && i < nf; i++)
            if (files[i].needs_download)
                push(&d, (task){&files[i], -1}, false);
        pthread_t th[64];
        int nth = 0;
        if (jobs > 64)
            jobs = 64;
        progress_start(d.prog);
        for (int i = 0; rc == 0 && i < jobs; i++)
            if (pthread_create(&th[nth], NULL, worker, &d) == 0)
                nth++;
        for (int i = 0; i < nth; i++)
            pthread_join(th[i], NULL);
        if (rc == 0 && atomic_load(&d.abort)) {
            *err = d.err;
            rc = -1;
        }
        res->files_fetched = ndl;
    }
    progress_finish(d.prog, rc == 0 && ndl > 0);

    /* Leave every unfinished file resumable and unlocked. */
    for (int i = 0; i < nf; i++) {
        dfile *f = &files[i];
        stop_hasher(f);
        if (f->fd >= 0) {
            pthread_mutex_lock(&f->mu);
            save_sidecar(f);
            pthread_mutex_unlock(&f->mu);
            close(f->fd);
        }
        release_lock(f);
        pthread_mutex_destroy(&f->mu);
        pthread_cond_destroy(&f->cv);
        free(f->chunks);
    }
    free(files);
    free(d.q);
    if (rc != 0)
        return -1;

    /* Every file is verified and linked: only now does the revision point at the snapshot. */
    if (strcmp(rev, d.commit) != 0) {
        char refpath[PUNIE_PATH_MAX], refdir[PUNIE_PATH_MAX];
        snprintf(refpath, sizeof refpath, "%s/refs/%s", d.repo_dir, rev);
        snprintf(refdir, sizeof refdir, "%s", refpath);
        *strrchr(refdir, '/') = '\0';
        if (mkdir_p(refdir, err) != 0 || write_file_atomic(refpath, d.commit, strlen(d.commit), err) != 0)
            return -1;
    }
    snprintf(res->snapshot_dir, sizeof res->snapshot_dir, "%s/snapshots/%s", d.repo_dir, d.commit);
    return 0;
}
