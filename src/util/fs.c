#include "util/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int path_join(char *out, size_t n, const char *a, const char *b, perr *err)
{
    size_t la = strlen(a);
    const char *sep = (la > 0 && a[la - 1] == '/') ? "" : "/";
    int w = snprintf(out, n, "%s%s%s", a, sep, b);
    if (w < 0 || (size_t)w >= n)
        return perr_set(err, "path too long: %s/%s", a, b);
    return 0;
}

int mkdir_p(const char *path, perr *err)
{
    char buf[4096];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof buf)
        return perr_set(err, "invalid directory path");
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return perr_errno(err, "cannot create directory %s", buf);
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return perr_errno(err, "cannot create directory %s", buf);
    if (!dir_exists(buf))
        return perr_set(err, "%s exists and is not a directory", buf);
    return 0;
}

int open_regular_file(const char *path, struct stat *st, perr *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return perr_errno(err, "cannot open %s", path);
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        close(fd);
        return perr_set(err, "%s is not a regular file", path);
    }
    return fd;
}

int read_file(const char *path, size_t max_bytes, char **out, size_t *len, perr *err)
{
    struct stat st;
    int fd = open_regular_file(path, &st, err);
    if (fd < 0)
        return -1;
    if ((unsigned long long)st.st_size > max_bytes) {
        close(fd);
        return perr_set(err, "%s is too large (%lld bytes, limit %zu)", path, (long long)st.st_size, max_bytes);
    }
    size_t size = (size_t)st.st_size;
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        return perr_set(err, "out of memory reading %s", path);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            free(buf);
            close(fd);
            return r < 0 ? perr_errno(err, "cannot read %s", path) : perr_set(err, "%s shrank while reading", path);
        }
        got += (size_t)r;
    }
    close(fd);
    buf[size] = '\0';
    *out = buf;
    if (len)
        *len = size;
    return 0;
}

int write_file_atomic(const char *path, const void *data, size_t len, perr *err)
{
    char tmp[4096];
    int w = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (w < 0 || (size_t)w >= sizeof tmp)
        return perr_set(err, "path too long: %s", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return perr_errno(err, "cannot create %s", tmp);
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t r = write(fd, p, left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            perr_errno(err, "cannot write %s", tmp);
            close(fd);
            unlink(tmp);
            return -1;
        }
        p += r;
        left -= (size_t)r;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        perr_errno(err, "cannot write %s", tmp);
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        perr_errno(err, "cannot rename %s to %s", tmp, path);
        unlink(tmp);
        return -1;
    }
    return 0;
}

bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

bool dir_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}
