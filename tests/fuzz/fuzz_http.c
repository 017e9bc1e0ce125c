/*
 * fuzz_http.c - libFuzzer target for the HTTP/1.1 proto module.
 *
 * Input: byte 0 chooses the split size and which requests are answered
 * asynchronously; the rest is a byte stream from a peer. The stream is fed
 * twice, whole and in small chunks (with pause/resume on CMS_EAGAIN), and
 * both runs must deliver the same requests and both fail or both not (the
 * parser must not depend on how TCP split the bytes). Each
 * delivered request is also run through the helpers a router uses (header
 * lookup, query, percent-decoding, Range, response builder), whose results
 * are checked for invariants, and an "anchor" query parameter to the audit
 * anchor parser. Finally the raw input is given to the Range, percent-decoding,
 * query and anchor parsers directly.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cms_err.h"
#include "http.h"
#include "svc.h"

#define MAX_REQS 64

struct run {
    uint64_t digest[MAX_REQS];
    size_t n;
    unsigned async_mask; /* request i is answered asynchronously if bit i%8 */
    int status;          /* error status at the end, 0 if none */
};

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* The audit verify anchor (?anchor=ID:SHA256, svc_audit_anchor_parse): what it
 * accepts is canonical, i.e. printed back as cmsd logs it, it is the input again
 * apart from the hex digits' case; what it refuses leaves the outputs alone. */
static void check_anchor(const char *s)
{
    long long id = -7;
    char hex[65] = "untouched";
    char back[96];
    if (!svc_audit_anchor_parse(s, &id, hex)) {
        if (id != -7 || strcmp(hex, "untouched") != 0)
            abort();
        return;
    }
    if (id < 1 || strlen(hex) != 64 || strspn(hex, "0123456789abcdef") != 64)
        abort();
    snprintf(back, sizeof(back), "%lld:%s", id, hex);
    if (strcasecmp(back, s) != 0)
        abort();
}

static void exercise(const http_request *r)
{
    char buf[512];
    size_t n;
    http_range rg;
    http_buf out;

    /* header lookup agrees with the array */
    for (size_t i = 0; i < r->n_headers; i++) {
        const char *v = http_request_header(r, r->headers[i].name);
        if (v == NULL || strlen(r->headers[i].name) != r->headers[i].name_len)
            abort();
        if (http_request_header_count(r, r->headers[i].name) == 0)
            abort();
    }
    if (strlen(r->path) != r->path_len || strlen(r->query) != r->query_len)
        abort();

    (void)http_query_get(r->query, r->query_len, "since", buf, sizeof(buf), &n);
    static const char *const allowed[] = {"since", "device", "limit", NULL};
    (void)http_query_check(r->query, r->query_len, allowed);
    if (http_query_get(r->query, r->query_len, "anchor", buf, sizeof(buf), &n) == 1)
        check_anchor(buf);

    /* decode each path segment */
    const char *p = r->path;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t seg = slash ? (size_t)(slash - p) : strlen(p);
        if (http_pct_decode(p, seg, false, buf, sizeof(buf), &n) == CMS_OK) {
            if (n >= sizeof(buf) || memchr(buf, '/', n) != NULL || strlen(buf) != n)
                abort();
        }
        p += seg;
        if (*p == '/')
            p++;
    }

    uint64_t total = r->body_len * 37u + r->n_headers;
    int st = http_range_select(r, "\"sha256-0\"", total, &rg);
    if (st != rg.status || (st != 200 && st != 206 && st != 416))
        abort();
    if (st == 206 && (rg.length == 0 || rg.first >= total || rg.length > total - rg.first))
        abort();
    if (st == 200 && (rg.first != 0 || rg.length != total))
        abort();

    http_buf_init(&out, 8192);
    if (http_range_response_start(&out, &rg, NULL, "\"sha256-0\"", 0) != CMS_OK)
        abort();
    http_buf_reset(&out);
    /* the peer's path as error detail: must stay one valid JSON response */
    if (http_json_error(&out, 404, "not_found", r->path, HTTP_RESP_KEEP_ALIVE, NULL, 0) == CMS_OK) {
        const char *body = strstr(out.data, "\r\n\r\n");
        json_error_t je;
        json_t *j = body ? json_loads(body + 4, 0, &je) : NULL;
        if (j == NULL)
            abort();
        json_decref(j);
    }
    http_buf_free(&out);
}

static int on_request(void *ctx, const http_request *r)
{
    struct run *run = ctx;
    uint64_t h = 1469598103934665603ull;
    h = fnv(h, r->method_name, strlen(r->method_name));
    h = fnv(h, r->target, r->target_len);
    h = fnv(h, r->path, r->path_len);
    h = fnv(h, r->query, r->query_len);
    for (size_t i = 0; i < r->n_headers; i++) {
        h = fnv(h, r->headers[i].name, r->headers[i].name_len + 1);
        h = fnv(h, r->headers[i].value, r->headers[i].value_len + 1);
    }
    h = fnv(h, r->body, r->body_len);
    h = fnv(h, &r->keep_alive, sizeof(r->keep_alive));
    if (r->body[r->body_len] != '\0')
        abort();
    exercise(r);
    size_t i = run->n;
    if (run->n < MAX_REQS)
        run->digest[run->n++] = h;
    return (run->async_mask >> (i % 8)) & 1u ? CMS_EAGAIN : CMS_OK;
}

static void drive(struct run *run, const uint8_t *data, size_t len, size_t chunk)
{
    http_conn c;
    http_limits l = {.max_header_bytes = 2048, .max_headers = 16, .max_body_bytes = 4096};
    size_t pos = 0;

    if (http_conn_init(&c, &l, on_request, run) != CMS_OK)
        abort();
    while (pos < len) {
        size_t n = len - pos < chunk ? len - pos : chunk;
        size_t used = 0;
        int rc = http_conn_feed(&c, (const char *)data + pos, n, &used);
        if (used > n)
            abort();
        pos += used;
        if (rc == CMS_EAGAIN) {
            if (http_conn_get_state(&c) != HTTP_CONN_WAITING)
                abort();
            size_t again = 1;
            if (http_conn_feed(&c, "G", 1, &again) != CMS_EAGAIN || again != 0)
                abort(); /* nothing may be delivered while waiting */
            http_conn_resume(&c);
            continue;
        }
        if (rc != CMS_OK) {
            run->status = http_conn_error_status(&c);
            if (run->status == 0 && rc != CMS_ECLOSED)
                abort();
            break;
        }
        if (http_conn_get_state(&c) == HTTP_CONN_DONE)
            break;
        if (used != n)
            abort();
    }
    if (http_conn_buffered(&c) > 64 * 1024)
        abort();
    http_conn_free(&c);
}

static void raw_helpers(const uint8_t *data, size_t len)
{
    char *s = malloc(len + 1);
    char out[256];
    size_t n;
    http_range rg;
    if (s == NULL)
        return;
    memcpy(s, data, len);
    s[len] = '\0';
    uint64_t total = len > 8 ? ((uint64_t)data[0] << 8 | data[1]) : len;
    if (http_range_parse(s, total, &rg) == 206 &&
        (rg.length == 0 || rg.first >= total || rg.length > total - rg.first))
        abort();
    (void)http_etag_strong_match(s, "\"sha256-0\"");
    if (http_pct_decode(s, len, len & 1, out, sizeof(out), &n) == CMS_OK && strlen(out) != n)
        abort();
    (void)http_query_get(s, len, "device", out, sizeof(out), &n);
    check_anchor(s);
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct run whole, split;
    if (size < 1)
        return 0;
    size_t chunk = (size_t)(data[0] & 0x0f) + 1;
    unsigned mask = data[0] >> 4;
    data++;
    size--;

    memset(&whole, 0, sizeof(whole));
    memset(&split, 0, sizeof(split));
    whole.async_mask = split.async_mask = mask;
    drive(&whole, data, size, size ? size : 1);
    drive(&split, data, size, chunk);
    /* When a limit and a parse error are a few bytes apart in one request,
     * which one is seen first depends on where the parser flushed partial
     * data, so only "failed or not" must agree. */
    if (whole.n != split.n || (whole.status != 0) != (split.status != 0) ||
        memcmp(whole.digest, split.digest, whole.n * sizeof(whole.digest[0])) != 0)
        abort();

    raw_helpers(data, size);
    return 0;
}
