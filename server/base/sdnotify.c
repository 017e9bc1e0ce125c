/*
 * sdnotify.c - the notify datagram of sd_notify(3), without libsystemd.
 * See sdnotify.h.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cms_err.h"
#include "sdnotify.h"

int sdnotify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n < 2 || n >= sizeof(sa.sun_path))
        return CMS_EINVAL;
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace: no terminating NUL in the length */
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/'));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return CMS_EUNAVAIL;
    ssize_t w;
    do
        w = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, len);
    while (w < 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    errno = saved;
    return w == (ssize_t)strlen(state) ? 1 : CMS_EUNAVAIL;
}

int sdnotify_ready(const char *status)
{
    char buf[256];
    if (!status)
        return sdnotify("READY=1");
    snprintf(buf, sizeof(buf), "READY=1\nSTATUS=%s", status);
    return sdnotify(buf);
}

int sdnotify_reloading(void)
{
    struct timespec ts;
    char buf[96];
    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned long long usec =
        (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000ull;
    snprintf(buf, sizeof(buf), "RELOADING=1\nMONOTONIC_USEC=%llu", usec);
    return sdnotify(buf);
}

int sdnotify_stopping(void)
{
    return sdnotify("STOPPING=1");
}

int sdnotify_watchdog(void)
{
    return sdnotify("WATCHDOG=1");
}

uint64_t sdnotify_watchdog_usec(void)
{
    const char *pid = getenv("WATCHDOG_PID");
    const char *usec = getenv("WATCHDOG_USEC");
    char *end;
    if (pid && *pid) {
        errno = 0;
        long p = strtol(pid, &end, 10);
        if (errno || *end || p != (long)getpid())
            return 0;
    }
    if (!usec || !*usec)
        return 0;
    errno = 0;
    unsigned long long u = strtoull(usec, &end, 10);
    if (errno || *end || usec[0] == '-')
        return 0;
    return (uint64_t)u;
}
