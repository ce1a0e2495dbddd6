#include "util/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <time.h>

static enum log_level min_level = LOG_INFO;
static FILE *log_file;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void log_set_level(enum log_level lvl) { min_level = lvl; }
void log_set_file(FILE *f) { log_file = f; }

void log_msg(enum log_level lvl, const char *fmt, ...)
{
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    if (lvl < min_level)
        return;
    FILE *out = log_file ? log_file : stderr;
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
    pthread_mutex_lock(&log_lock);
    fprintf(out, "%s %s ", stamp, names[lvl]);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(out, fmt, ap);
    va_end(ap);
    fputc('\n', out);
    fflush(out);
    pthread_mutex_unlock(&log_lock);
}
