/* punie serve: the model behind an OpenAI-compatible HTTP API. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "hub/local.h"
#include "model/lookup.h"
#include "server/engine.h"
#include "server/http.h"
#include "util/log.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: punie serve [--model M] [--host 127.0.0.1] [--port 8000] [--models-dir DIR] [--threads N]\n"
            "                   [--ctx-size N] [--parallel N] [--draft N] [--api-key KEY] [--log-file PATH]\n\n"
            "  --model M       'local' (the default model), 'local:REPO' or a model folder\n"
            "                  (default: $PUNIE_MODEL, else 'local'). Nothing is ever downloaded.\n"
            "  --host H        address to listen on (default 127.0.0.1)\n"
            "  --port N        port (default 8000; 0 picks a free one)\n"
            "  --models-dir D  where downloaded models live\n"
            "  --threads N     compute threads (default: all cores)\n"
            "  --ctx-size N    context length per generation slot in tokens (default 4096)\n"
            "  --parallel N    generations run at once; more requests wait (default 1)\n"
            "  --draft N       prompt lookup: up to N tokens copied from earlier in the text are checked\n"
            "                  per decode step (0: off; default 8); replies are the same\n"
            "  --api-key KEY   require 'Authorization: Bearer KEY' (default $PUNIE_API_KEY, else none)\n"
            "  --log-file P    append the log to P instead of standard error\n");
}

/* SIGINT/SIGTERM are turned into a byte on a pipe, whatever thread receives them. */
static int stop_pipe[2] = {-1, -1};

static void on_stop_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    if (write(stop_pipe[1], &b, 1) < 0) {
        /* nothing to do: the pipe is full, a stop is already pending */
    }
    errno = saved;
}

/* Once stopping has begun: a second signal, or a shutdown that takes too long, ends the process at once. */
static void *stop_watchdog(void *arg)
{
    (void)arg;
    struct pollfd p = {.fd = stop_pipe[0], .events = POLLIN};
    int limit_s = 15;
    if (poll(&p, 1, limit_s * 1000) > 0)
        log_warn("second signal: exiting now");
    else
        log_warn("shutdown took longer than %d s: exiting now", limit_s);
    _exit(1);
    return NULL;
}

static int parse_int(const char *flag, const char *v, int lo, int hi, int *out)
{
    char *end = NULL;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || !end || *end || end == v || n < lo || n > hi) {
        fprintf(stderr, "punie serve: invalid value '%s' for %s (expected an integer from %d to %d)\n", v, flag, lo, hi);
        return -1;
    }
    *out = (int)n;
    return 0;
}

int cmd_serve(int argc, char **argv)
{
    const char *model_spec = NULL, *host = "127.0.0.1", *models_dir = NULL, *api_key = getenv("PUNIE_API_KEY");
    const char *log_path = NULL;
    int port = 8000, threads = 0, ctx = 4096, parallel = 1, draft = 8;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        const char *names[] = {"--model", "--host", "--port", "--models-dir", "--threads", "--ctx-size",
                               "--parallel", "--api-key", "--log-file", "--draft"};
        int which = -1;
        const char *val = NULL;
        for (int k = 0; k < (int)(sizeof names / sizeof *names); k++) {
            size_t nl = strlen(names[k]);
            if (strcmp(a, names[k]) == 0) {
                if (i + 1 >= argc) {
                    fprintf(stderr, "punie serve: %s needs a value\n", a);
                    return 2;
                }
                which = k;
                val = argv[++i];
            } else if (strncmp(a, names[k], nl) == 0 && a[nl] == '=') {
                which = k;
                val = a + nl + 1;
            }
            if (which >= 0)
                break;
        }
        if (which < 0) {
            fprintf(stderr, "punie serve: unknown option '%s'\n\n", a);
            usage(stderr);
            return 2;
        }
        switch (which) {
        case 0: model_spec = val; break;
        case 1: host = val; break;
        case 2: if (parse_int("--port", val, 0, 65535, &port)) return 2; break;
        case 3: models_dir = val; break;
        case 4: if (parse_int("--threads", val, 0, 1024, &threads)) return 2; break;
        case 5: if (parse_int("--ctx-size", val, 16, 1 << 20, &ctx)) return 2; break;
        case 6: if (parse_int("--parallel", val, 1, 64, &parallel)) return 2; break;
        case 7: api_key = val; break;
        case 8: log_path = val; break;
        case 9: if (parse_int("--draft", val, 0, LOOKUP_DRAFT_MAX, &draft)) return 2; break;
        }
    }

    /* The model is found before anything else happens: nothing is downloaded, no port is taken. */
    resolved_model rm;
    perr err = {{0}};
    if (model_resolve(model_spec, models_dir, &rm, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }

    FILE *log_file = NULL;
    if (log_path) {
        log_file = fopen(log_path, "a");
        if (!log_file) {
            fprintf(stderr, "Error: cannot open log file '%s': %s\n", log_path, strerror(errno));
            return 1;
        }
        log_set_file(log_file);
    }

    if (pipe2(stop_pipe, O_CLOEXEC) != 0) {
        fprintf(stderr, "Error: pipe: %s\n", strerror(errno));
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* The threads started from here on leave the stop signals to the main thread. */
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_set, NULL);

    engine_options eo = {.model_dir = rm.dir, .model_name = rm.name, .n_threads = threads, .n_ctx = ctx,
                         .n_parallel = parallel, .draft_max = draft};
    engine *e = NULL;
    if (engine_load(&eo, &e, &err) != 0) {
        fprintf(stderr, "Error: cannot load model '%s': %s\n", rm.name, err.msg);
        if (log_file)
            fclose(log_file);
        return 1;
    }
    http_options ho = {.host = host, .port = port, .api_key = api_key};
    http_server *srv = NULL;
    if (http_server_start(&ho, e, &srv, &err) != 0) {
        fprintf(stderr, "Error: %s\n", err.msg);
        engine_free(e);
        if (log_file)
            fclose(log_file);
        return 1;
    }
    bool v6 = strchr(host, ':') != NULL;
    printf("🚀 Punie agent started on http://%s%s%s:%d\n", v6 ? "[" : "", host, v6 ? "]" : "",
           http_server_port(srv));
    printf("   Model: %s (context %d tokens, %d parallel)\n", rm.name, engine_n_ctx(e), engine_n_parallel(e));
    printf("   Logs: %s\n", log_path ? log_path : "standard error");
    printf("   Press Ctrl+C to stop.\n");
    fflush(stdout);
    log_info("serving %s from %s", rm.name, rm.dir);

    pthread_sigmask(SIG_UNBLOCK, &stop_set, NULL);
    unsigned char sig = 0;
    while (read(stop_pipe[0], &sig, 1) < 0 && errno == EINTR)
        ;
    log_info("%s received: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
    pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
    pthread_t watchdog;
    if (pthread_create(&watchdog, NULL, stop_watchdog, NULL) == 0)
        pthread_detach(watchdog);
    engine_shutdown(e);
    http_server_stop(srv);
    engine_free(e);
    log_info("stopped");
    if (log_file) {
        log_set_file(NULL);
        fclose(log_file);
    }
    return 0;
}
