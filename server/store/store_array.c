/*
 * store_array.c - PostgreSQL array literals for array parameters.
 *
 * Values stay parameters: these literals are sent as the text value of a
 * $n parameter, never spliced into SQL. Quoting rules (PostgreSQL manual,
 * 8.15.6): an element in double quotes may contain anything; '"' and '\'
 * inside it are preceded by '\'. The unquoted word NULL is the null value
 * (a quoted "NULL" is the 4-letter string), so strings are always quoted.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"

void store__buf_reset(store__buf *b)
{
    b->len = 0;
    b->oom = false;
    if (b->p)
        b->p[0] = '\0';
}

void store__buf_free(store__buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = false;
}

static bool buf_reserve(store__buf *b, size_t extra)
{
    if (b->oom)
        return false;
    if (b->len + extra + 1 <= b->cap)
        return true;
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < b->len + extra + 1)
        ncap *= 2;
    char *np = realloc(b->p, ncap);
    if (!np) {
        b->oom = true;
        return false;
    }
    b->p = np;
    b->cap = ncap;
    return true;
}

void store__buf_append(store__buf *b, const char *s, size_t n)
{
    if (!buf_reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sep(store__buf *b)
{
    if (b->len > 1)
        store__buf_append(b, ",", 1);
}

void store__arr_begin(store__buf *b)
{
    store__buf_reset(b);
    store__buf_append(b, "{", 1);
}

void store__arr_end(store__buf *b)
{
    store__buf_append(b, "}", 1);
}

void store__arr_text(store__buf *b, const char *s)
{
    sep(b);
    if (!s) {
        store__buf_append(b, "NULL", 4);
        return;
    }
    size_t n = strlen(s);
    if (!buf_reserve(b, 2 * n + 2))
        return;
    char *o = b->p + b->len;
    *o++ = '"';
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            *o++ = '\\';
        *o++ = *s;
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    b->p[b->len] = '\0';
}

/* v in decimal, as "%lld" would write it: its length. Three numbers per stored
 * observation go through here (snprintf was ~6 % of cmsd's CPU under P2). */
static size_t fmt_ll(char out[24], long long v)
{
    char rev[20];
    size_t n = 0, len = 0;
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    do {
        rev[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        out[len++] = '-';
    while (n)
        out[len++] = rev[--n];
    return len;
}

void store__arr_int(store__buf *b, long long v)
{
    char tmp[24];
    size_t n = fmt_ll(tmp, v);
    sep(b);
    store__buf_append(b, tmp, n);
}

void store__arr_double(store__buf *b, double v)
{
    char tmp[40];
    int n;
    if (isnan(v))
        n = snprintf(tmp, sizeof tmp, "NaN");
    else if (isinf(v))
        n = snprintf(tmp, sizeof tmp, "%s", v > 0 ? "Infinity" : "-Infinity");
    else if (v == trunc(v) && fabs(v) < 9007199254740992.0 && !(v == 0 && signbit(v)))
        /* a whole number (most vitals): exact as an integer, same value for PostgreSQL */
        n = (int)fmt_ll(tmp, (long long)v);
    else
        n = snprintf(tmp, sizeof tmp, "%.17g", v); /* round-trips exactly */
    sep(b);
    store__buf_append(b, tmp, (size_t)n);
}

int store__arr_parse(const char *s, char (*out)[64], size_t max)
{
    size_t n = 0;
    if (!s || *s != '{')
        return -1;
    s++;
    if (*s == '}')
        return 0;
    for (;;) {
        char el[64];
        size_t len = 0;
        bool quoted = false;
        if (*s == '"') {
            quoted = true;
            s++;
            while (*s && *s != '"') {
                if (*s == '\\' && s[1])
                    s++;
                if (len < sizeof el - 1)
                    el[len++] = *s;
                s++;
            }
            if (*s != '"')
                return -1;
            s++;
        } else {
            while (*s && *s != ',' && *s != '}') {
                if (len < sizeof el - 1)
                    el[len++] = *s;
                s++;
            }
        }
        el[len] = '\0';
        if ((quoted || strcmp(el, "NULL") != 0) && n < max) {
            memcpy(out[n], el, len + 1);
            n++;
        }
        if (*s == ',') {
            s++;
            continue;
        }
        if (*s == '}')
            return (int)n;
        return -1;
    }
}

/* ---- JSON text ----------------------------------------------------------- */

void store__json_str(store__buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const char *run = s;

    store__buf_append(b, "\"", 1);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch >= 0x20 && ch != '"' && ch != '\\')
            continue;
        store__buf_append(b, run, (size_t)(s - run));
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            store__buf_append(b, e, 2);
        } else {
            char e[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
            store__buf_append(b, e, 6);
        }
        run = s + 1;
    }
    store__buf_append(b, run, (size_t)(s - run));
    store__buf_append(b, "\"", 1);
}

void store__json_num(store__buf *b, double v)
{
    if (!isfinite(v)) {
        store__buf_append(b, "null", 4);
        return;
    }
    char tmp[40];
    int n;
    if (v == trunc(v) && fabs(v) < 9007199254740992.0 && !(v == 0 && signbit(v)))
        n = (int)fmt_ll(tmp, (long long)v);
    else
        n = snprintf(tmp, sizeof tmp, "%.17g", v); /* a valid JSON number, exact */
    store__buf_append(b, tmp, (size_t)n);
}
