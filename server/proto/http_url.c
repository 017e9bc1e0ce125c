/* http_url.c - percent-decoding and query parameters (see http.h). */
#include "http.h"
#include "http_int.h"

#include "cms_err.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Percent-decoding and query parameters                                    */

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = http__ascii_lower(ch);
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

/* Decodes into out (if non-NULL, cap bytes incl. NUL) or only validates.
 * segment: a path segment ('/', "." and ".." refused after decoding). */
static int pct_decode(const char *in, size_t len, bool plus_is_space, bool segment, char *out,
                      size_t cap, size_t *out_len)
{
    size_t j = 0;
    unsigned char seq[4]; /* UTF-8 sequence being checked */
    size_t seq_len = 0;
    size_t dots = 0; /* leading decoded '.' count, for dot-segments */

    if (out != NULL && cap == 0)
        return CMS_ELIMIT;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (ch == '%') {
            if (len - i < 3)
                return CMS_EPROTO;
            int hi = hexval((unsigned char)in[i + 1]);
            int lo = hexval((unsigned char)in[i + 2]);
            if (hi < 0 || lo < 0)
                return CMS_EPROTO;
            ch = (unsigned char)(hi * 16 + lo);
            i += 2;
            if (segment && ch == '/')
                return CMS_EPROTO;
        } else if (ch == '+' && plus_is_space) {
            ch = ' ';
        } else if (ch <= 0x20 || ch >= 0x7f || ch == '#' || (segment && (ch == '/' || ch == '?'))) {
            return CMS_EPROTO; /* raw bytes must be URL characters of this component */
        }
        if (ch < 0x20 || ch == 0x7f)
            return CMS_EPROTO;
        if (seq_len > 0 || ch >= 0x80) {
            size_t want;
            seq[seq_len++] = ch;
            want = seq[0] >= 0xF0 ? 4 : seq[0] >= 0xE0 ? 3 : seq[0] >= 0xC0 ? 2 : 0;
            if (want == 0 || (seq_len > 1 && (ch & 0xC0) != 0x80))
                return CMS_EPROTO;
            if (seq_len == want) {
                if (http__utf8_seq_len(seq, seq_len) != want)
                    return CMS_EPROTO;
                seq_len = 0;
            }
        }
        if (ch == '.' && dots == j)
            dots++;
        if (out != NULL) {
            if (j + 1 >= cap)
                return CMS_ELIMIT;
            out[j] = (char)ch;
        }
        j++;
    }
    if (seq_len != 0)
        return CMS_EPROTO; /* truncated UTF-8 sequence */
    if (segment && j > 0 && j <= 2 && dots == j)
        return CMS_EPROTO; /* "." or "..", also written %2e */
    if (out != NULL)
        out[j] = '\0';
    if (out_len != NULL)
        *out_len = j;
    return CMS_OK;
}

int http_pct_decode(const char *in, size_t len, bool plus_is_space, char *out, size_t cap,
                    size_t *out_len)
{
    if (out == NULL || (in == NULL && len > 0))
        return CMS_EINVAL;
    return pct_decode(in, len, plus_is_space, !plus_is_space, out, cap, out_len);
}

#define QUERY_NAME_MAX 128

/* Calls fn for each pair of a valid query, with the decoded name. */
typedef int (*pair_fn)(void *arg, const char *name, const char *raw_value, size_t raw_len);

static int query_each(const char *q, size_t qlen, pair_fn fn, void *arg)
{
    size_t i = 0;
    if (q == NULL && qlen > 0)
        return CMS_EINVAL;
    while (i < qlen) {
        size_t start = i;
        while (i < qlen && q[i] != '&')
            i++;
        const char *pair = q + start;
        size_t plen = i - start;
        if (i < qlen)
            i++; /* skip '&' */
        if (plen == 0)
            return CMS_EPROTO; /* empty pair: "a=1&&b=2", "&a", trailing '&' */
        const char *eq = memchr(pair, '=', plen);
        size_t nlen = eq ? (size_t)(eq - pair) : plen;
        const char *val = eq ? eq + 1 : pair + plen;
        size_t vlen = eq ? plen - nlen - 1 : 0;
        char name[QUERY_NAME_MAX];
        size_t dn;
        if (nlen == 0)
            return CMS_EPROTO;
        int rc = pct_decode(pair, nlen, true, false, name, sizeof(name), &dn);
        if (rc != CMS_OK || dn == 0 || memchr(name, '=', dn) != NULL)
            return CMS_EPROTO;
        rc = pct_decode(val, vlen, true, false, NULL, 0, NULL);
        if (rc != CMS_OK)
            return CMS_EPROTO;
        rc = fn(arg, name, val, vlen);
        if (rc != CMS_OK)
            return rc;
    }
    return CMS_OK;
}

struct query_get_arg {
    const char *name;
    char *out;
    size_t cap;
    size_t *out_len;
    int found;
    int err;
};

static int query_get_pair(void *arg, const char *name, const char *raw, size_t raw_len)
{
    struct query_get_arg *a = arg;
    if (strcmp(name, a->name) != 0)
        return CMS_OK;
    if (a->found)
        return CMS_EPROTO; /* duplicated parameter */
    a->found = 1;
    int rc = pct_decode(raw, raw_len, true, false, a->out, a->cap, a->out_len);
    if (rc != CMS_OK)
        a->err = rc; /* keep validating the rest; report the limit at the end */
    return CMS_OK;
}

int http_query_get(const char *query, size_t query_len, const char *name, char *out, size_t cap,
                   size_t *out_len)
{
    struct query_get_arg a = {name, out, cap, out_len, 0, CMS_OK};
    if (name == NULL || out == NULL || cap == 0)
        return CMS_EINVAL;
    out[0] = '\0';
    if (out_len != NULL)
        *out_len = 0;
    int rc = query_each(query, query_len, query_get_pair, &a);
    if (rc != CMS_OK || a.err != CMS_OK) {
        out[0] = '\0';
        if (out_len != NULL)
            *out_len = 0;
        return rc != CMS_OK ? rc : a.err;
    }
    return a.found;
}

struct query_check_arg {
    const char *const *allowed;
    uint64_t seen;
};

static int query_check_pair(void *arg, const char *name, const char *raw, size_t raw_len)
{
    struct query_check_arg *a = arg;
    (void)raw;
    (void)raw_len;
    for (unsigned i = 0; a->allowed[i] != NULL && i < 64; i++) {
        if (strcmp(a->allowed[i], name) == 0) {
            if (a->seen & (1ull << i))
                return CMS_EPROTO;
            a->seen |= 1ull << i;
            return CMS_OK;
        }
    }
    return CMS_EPROTO;
}

int http_query_check(const char *query, size_t query_len, const char *const *allowed)
{
    struct query_check_arg a = {allowed, 0};
    if (allowed == NULL)
        return CMS_EINVAL;
    return query_each(query, query_len, query_check_pair, &a);
}

