/*
 * log.c - logfmt lines on stderr, one write(2) per line so that lines from
 * several threads never interleave.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "cms_err.h"
#include "log.h"

#define LOG_LINE_MAX 2048

static volatile int log_min_level = LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_set_level(enum log_level level)
{
    log_min_level = (int)level;
}

int log_level_parse(const char *s, enum log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return CMS_OK;
        }
    }
    return CMS_EINVAL;
}

/* Appends s to line at *pos, quoted and escaped when it needs to be. */
static void append_value(char *line, size_t *pos, const char *s)
{
    size_t p = *pos;
    int quote = (*s == '\0');
    for (const char *c = s; *c; c++) {
        if (*c == ' ' || *c == '"' || *c == '=' || (unsigned char)*c < 0x20) {
            quote = 1;
            break;
        }
    }
    if (quote && p < LOG_LINE_MAX - 1)
        line[p++] = '"';
    for (const char *c = s; *c && p < LOG_LINE_MAX - 8; c++) {
        unsigned char ch = (unsigned char)*c;
        if (ch == '"' || ch == '\\') {
            line[p++] = '\\';
            line[p++] = (char)ch;
        } else if (ch == '\n') {
            line[p++] = '\\';
            line[p++] = 'n';
        } else if (ch < 0x20 || ch == 0x7f) {
            p += (size_t)snprintf(line + p, LOG_LINE_MAX - p, "\\x%02x", ch);
        } else {
            line[p++] = (char)ch;
        }
    }
    if (quote && p < LOG_LINE_MAX - 1)
        line[p++] = '"';
    *pos = p;
}

static void append_kv(char *line, size_t *pos, const char *key, const char *val)
{
    int n = snprintf(line + *pos, LOG_LINE_MAX - *pos, " %s=", key);
    if (n > 0 && (size_t)n < LOG_LINE_MAX - *pos)
        *pos += (size_t)n;
    append_value(line, pos, val);
}

void log_eventv(enum log_level level, const char *event, const char *device, const char *peer,
                const char *fmt, va_list ap)
{
    if ((int)level < log_min_level)
        return;
    char line[LOG_LINE_MAX + 2];
    char msg[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t pos = strftime(line, sizeof(line), "ts=%Y-%m-%dT%H:%M:%S", &tm);
    pos += (size_t)snprintf(line + pos, sizeof(line) - pos, ".%03ldZ level=%s event=",
                            ts.tv_nsec / 1000000, level_names[level & 3]);
    append_value(line, &pos, event ? event : "-");
    if (device && *device)
        append_kv(line, &pos, "device", device);
    if (peer && *peer)
        append_kv(line, &pos, "peer", peer);
    if (fmt && *fmt) {
        vsnprintf(msg, sizeof(msg), fmt, ap);
        append_kv(line, &pos, "msg", msg);
    }
    if (pos > LOG_LINE_MAX)
        pos = LOG_LINE_MAX;
    line[pos++] = '\n';
    ssize_t rc = write(STDERR_FILENO, line, pos);
    (void)rc;
}

void log_event(enum log_level level, const char *event, const char *device, const char *peer,
               const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_eventv(level, event, device, peer, fmt, ap);
    va_end(ap);
}
