/*
 * log.c - logfmt (or JSON) lines on stderr, one write(2) per line so that
 * lines from several threads never interleave.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "cms_err.h"
#include "log.h"

#define LOG_LINE_MAX 2048

/* Set at start and by a reload (main thread) while the workers log: atomics. */
static _Atomic int log_min_level = LOG_INFO;
static _Atomic int log_fmt = LOG_FORMAT_TEXT;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_set_level(enum log_level level)
{
    atomic_store_explicit(&log_min_level, (int)level, memory_order_relaxed);
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

void log_set_format(enum log_format format)
{
    atomic_store_explicit(&log_fmt, (int)format, memory_order_relaxed);
}

int log_format_parse(const char *s, enum log_format *out)
{
    if (strcasecmp(s, "text") == 0)
        *out = LOG_FORMAT_TEXT;
    else if (strcasecmp(s, "json") == 0)
        *out = LOG_FORMAT_JSON;
    else
        return CMS_EINVAL;
    return CMS_OK;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when s does not start one. */
static size_t utf8_seq(const unsigned char *s)
{
    unsigned char c = s[0];
    size_t n;
    unsigned cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1fu;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0fu;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07u;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3fu);
    }
    if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return n;
}

/* Appends s to line at *pos as a JSON string (quotes included). */
static void append_json(char *line, size_t *pos, const char *s)
{
    size_t p = *pos;
    const unsigned char *c = (const unsigned char *)s;
    if (p < LOG_LINE_MAX - 1)
        line[p++] = '"';
    while (*c && p < LOG_LINE_MAX - 8) {
        size_t n = utf8_seq(c);
        if (n == 0) {
            p += (size_t)snprintf(line + p, LOG_LINE_MAX - p, "\\ufffd");
            c++;
        } else if (n > 1) {
            memcpy(line + p, c, n);
            p += n;
            c += n;
        } else if (*c == '"' || *c == '\\') {
            line[p++] = '\\';
            line[p++] = (char)*c++;
        } else if (*c == '\n') {
            line[p++] = '\\';
            line[p++] = 'n';
            c++;
        } else if (*c < 0x20 || *c == 0x7f) {
            p += (size_t)snprintf(line + p, LOG_LINE_MAX - p, "\\u%04x", *c++);
        } else {
            line[p++] = (char)*c++;
        }
    }
    if (p < LOG_LINE_MAX)
        line[p++] = '"';
    *pos = p;
}

static void append_json_kv(char *line, size_t *pos, const char *key, const char *val)
{
    if (*pos + strlen(key) + 16 > LOG_LINE_MAX)
        return; /* no room left for the field: the line stays valid JSON */
    int n = snprintf(line + *pos, LOG_LINE_MAX - *pos, ",\"%s\":", key);
    if (n > 0 && (size_t)n < LOG_LINE_MAX - *pos)
        *pos += (size_t)n;
    append_json(line, pos, val);
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
    if ((int)level < atomic_load_explicit(&log_min_level, memory_order_relaxed))
        return;
    char line[LOG_LINE_MAX + 2];
    char msg[1024];
    char ts_text[40];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t tl = strftime(ts_text, sizeof(ts_text), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts_text + tl, sizeof(ts_text) - tl, ".%03ldZ", ts.tv_nsec / 1000000);
    bool json = atomic_load_explicit(&log_fmt, memory_order_relaxed) == LOG_FORMAT_JSON;
    if (fmt && *fmt)
        vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t pos;
    if (json) {
        pos = (size_t)snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\"", ts_text,
                               level_names[level & 3]);
        append_json_kv(line, &pos, "event", event ? event : "-");
        if (device && *device)
            append_json_kv(line, &pos, "device", device);
        if (peer && *peer)
            append_json_kv(line, &pos, "peer", peer);
        if (fmt && *fmt)
            append_json_kv(line, &pos, "msg", msg);
        if (pos > LOG_LINE_MAX - 1)
            pos = LOG_LINE_MAX - 1; /* never cut: append_json keeps 8 bytes spare */
        line[pos++] = '}';
    } else {
        pos = (size_t)snprintf(line, sizeof(line), "ts=%s level=%s event=", ts_text,
                               level_names[level & 3]);
        append_value(line, &pos, event ? event : "-");
        if (device && *device)
            append_kv(line, &pos, "device", device);
        if (peer && *peer)
            append_kv(line, &pos, "peer", peer);
        if (fmt && *fmt)
            append_kv(line, &pos, "msg", msg);
        if (pos > LOG_LINE_MAX)
            pos = LOG_LINE_MAX;
    }
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
