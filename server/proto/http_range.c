/*
 * http_range.c - download helpers: single-range "Range: bytes=" requests,
 * If-Range with strong ETag comparison, ETag formatting, and the response
 * heads for 200/206/416 (RFC 9110 sections 8.8.3, 13.1.5, 14).
 *
 * We never build multipart/byteranges: a request for several ranges gets the
 * whole resource with 200, which RFC 9110 14.2 allows ("A server MAY ignore
 * the Range header field"), and which every resuming client handles.
 */
#include "http.h"

#include "cms_err.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* Trims optional whitespace; returns the start, *len the trimmed length. */
static const char *trim_ows(const char *s, size_t *len)
{
    size_t n = strlen(s);
    while (n > 0 && is_ows(*s)) {
        s++;
        n--;
    }
    while (n > 0 && is_ows(s[n - 1]))
        n--;
    *len = n;
    return s;
}

char *http_etag_format(char *out, const uint8_t sha256[32])
{
    static const char hex[] = "0123456789abcdef";
    char *p = out;
    memcpy(p, "\"sha256-", 8);
    p += 8;
    for (size_t i = 0; i < 32; i++) {
        *p++ = hex[sha256[i] >> 4];
        *p++ = hex[sha256[i] & 0x0f];
    }
    *p++ = '"';
    *p = '\0';
    return out;
}

/* entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE ; etagc = %x21 / %x23-7E / obs-text */
static bool is_strong_etag(const char *s, size_t n)
{
    if (n < 2 || s[0] != '"' || s[n - 1] != '"')
        return false;
    for (size_t i = 1; i + 1 < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch < 0x21 || ch == 0x7f)
            return false;
    }
    return true;
}

bool http_etag_strong_match(const char *value, const char *etag)
{
    size_t vn, en;
    if (value == NULL || etag == NULL)
        return false;
    value = trim_ows(value, &vn);
    etag = trim_ows(etag, &en);
    if (!is_strong_etag(value, vn) || !is_strong_etag(etag, en))
        return false; /* weak tags ("W/...") and dates never match strongly */
    return vn == en && memcmp(value, etag, vn) == 0;
}

/* Parses 1*DIGIT at s[*i], saturating at UINT64_MAX. false if no digit. */
static bool parse_u64(const char *s, size_t n, size_t *i, uint64_t *out)
{
    uint64_t v = 0;
    size_t start = *i;
    while (*i < n && s[*i] >= '0' && s[*i] <= '9') {
        unsigned d = (unsigned)(s[*i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            v = UINT64_MAX;
        else
            v = v * 10 + d;
        (*i)++;
    }
    *out = v;
    return *i > start;
}

static int range_full(uint64_t total, http_range *out)
{
    out->status = 200;
    out->first = 0;
    out->length = total;
    out->total = total;
    return out->status;
}

static int range_unsatisfiable(uint64_t total, http_range *out)
{
    out->status = 416;
    out->first = 0;
    out->length = 0;
    out->total = total;
    return out->status;
}

int http_range_parse(const char *value, uint64_t total, http_range *out)
{
    size_t n, i;
    const char *s;
    uint64_t first = 0, last = UINT64_MAX, suffix = 0;
    bool has_first, has_last;

    if (value == NULL)
        return range_full(total, out);
    s = trim_ows(value, &n);
    /* range-unit is case-insensitive (RFC 9110 14.1); no space before '='. */
    if (n < 6 || strncasecmp(s, "bytes=", 6) != 0)
        return range_full(total, out); /* other unit: ignore */
    i = 6;
    while (i < n && is_ows(s[i]))
        i++;
    if (memchr(s + i, ',', n - i) != NULL)
        return range_full(total, out); /* several ranges: whole resource, documented */

    has_first = parse_u64(s, n, &i, &first);
    if (i >= n || s[i] != '-')
        return range_full(total, out); /* syntax error: ignore */
    i++;
    has_last = parse_u64(s, n, &i, has_first ? &last : &suffix);
    if (i != n)
        return range_full(total, out);

    if (!has_first) {
        if (!has_last)
            return range_full(total, out); /* "bytes=-" */
        /* suffix-range: the last `suffix` bytes */
        if (suffix == 0 || total == 0)
            return range_unsatisfiable(total, out);
        if (suffix > total)
            suffix = total;
        out->status = 206;
        out->first = total - suffix;
        out->length = suffix;
        out->total = total;
        return out->status;
    }
    if (has_last && last < first)
        return range_full(total, out); /* invalid int-range: ignore */
    if (first >= total)
        return range_unsatisfiable(total, out);
    if (!has_last || last >= total)
        last = total - 1;
    out->status = 206;
    out->first = first;
    out->length = last - first + 1;
    out->total = total;
    return out->status;
}

int http_range_select(const http_request *req, const char *etag, uint64_t total, http_range *out)
{
    const char *range = http_request_header(req, "range");
    const char *if_range;

    if (range == NULL || req->method != HTTP_GET)
        return range_full(total, out);
    /* Several Range fields are as ambiguous as several ranges. */
    if (http_request_header_count(req, "range") > 1)
        return range_full(total, out);
    if_range = http_request_header(req, "if-range");
    if (if_range != NULL) {
        if (http_request_header_count(req, "if-range") > 1 || etag == NULL ||
            !http_etag_strong_match(if_range, etag))
            return range_full(total, out);
    }
    return http_range_parse(range, total, out);
}

int http_range_response_start(http_buf *out, const http_range *r, const char *content_type,
                              const char *etag, unsigned flags)
{
    char crange[96];
    http_field extra[3];
    size_t n = 0;

    if (content_type == NULL)
        content_type = "application/octet-stream";
    if (r->status == 416) {
        snprintf(crange, sizeof(crange), "bytes */%" PRIu64, r->total);
        extra[n++] = (http_field){"Content-Range", crange};
        return http_json_error(out, 416, "range_not_satisfiable",
                               "the requested range is outside the resource", flags, extra, n);
    }
    if (r->status != 200 && r->status != 206)
        return CMS_EINVAL;
    if (r->status == 206) {
        if (r->length == 0 || r->first >= r->total || r->length > r->total - r->first)
            return CMS_EINVAL;
        snprintf(crange, sizeof(crange), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, r->first,
                 r->first + r->length - 1, r->total);
        extra[n++] = (http_field){"Content-Range", crange};
    }
    extra[n++] = (http_field){"Accept-Ranges", "bytes"};
    if (etag != NULL)
        extra[n++] = (http_field){"ETag", etag};
    return http_response_start(out, r->status, NULL, content_type, r->length, flags, extra, n);
}
