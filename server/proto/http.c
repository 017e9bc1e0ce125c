/*
 * http.c - HTTP/1.1 request push parser over libhttp-parser (responses:
 * http_response.c; URL decoding: http_url.c; Range: http_range.c).
 *
 * Parsing model: libhttp-parser calls us back with pieces of the
 * request-target, header names and values, and body. We copy them into two
 * per-connection buffers (head: target and headers, NUL-separated, offsets
 * only until the header section is complete, since the buffer may move; body)
 * and enforce our limits as the pieces arrive. on_message_complete pauses the
 * parser, so http_parser_execute() returns right after the last byte of a
 * request; the request is then delivered outside libhttp-parser. Un-pausing
 * and calling http_parser_execute() again with the rest continues with the
 * next pipelined request. See include/http.h for the contract.
 */
#include "http.h"
#include "http_int.h"

#include "cms_err.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct http__hdr_off {
    size_t name_off, name_len;
    size_t value_off, value_len;
};

enum { CB_NONE = 0, CB_URL, CB_FIELD, CB_VALUE };

/* Request line overhead counted against max_header_bytes besides the target:
 * "METHOD " (up to 8) + " HTTP/1.1\r\n" (11) + the final "\r\n" (2). */
#define HEAD_BASE_BYTES 21u
/* ": " and "\r\n" around each header value. */
#define HEADER_OVERHEAD 4u
/* A body buffer larger than this is freed between requests. */
#define BODY_KEEP_BYTES 16384u

void http_limits_default(http_limits *l)
{
    l->max_header_bytes = HTTP_DEFAULT_MAX_HEADER_BYTES;
    l->max_headers = HTTP_DEFAULT_MAX_HEADERS;
    l->max_body_bytes = HTTP_DEFAULT_MAX_BODY_BYTES;
}

/* ------------------------------------------------------------------------ */
/* Small string helpers                                                     */

int http__ascii_lower(int ch)
{
    return (ch >= 'A' && ch <= 'Z') ? ch + ('a' - 'A') : ch;
}

static bool ascii_caseeq(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++)
        if (http__ascii_lower((unsigned char)a[i]) != http__ascii_lower((unsigned char)b[i]))
            return false;
    return true;
}

/* Length of the valid UTF-8 sequence starting at s (n bytes available), or
 * 0 if invalid (overlong, surrogate, > U+10FFFF, truncated). ASCII = 1. */
size_t http__utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
            return 0;
        if (c == 0xE0 && s[1] < 0xA0)
            return 0; /* overlong */
        if (c == 0xED && s[1] >= 0xA0)
            return 0; /* surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && s[1] < 0x90)
            return 0; /* overlong */
        if (c == 0xF4 && s[1] >= 0x90)
            return 0; /* > U+10FFFF */
        return 4;
    }
    return 0;
}

static bool is_tchar(int ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return true;
    return ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

bool http__is_token(const char *s)
{
    if (s == NULL || *s == '\0')
        return false;
    for (; *s; s++)
        if (!is_tchar((unsigned char)*s))
            return false;
    return true;
}

/* Field value / reason phrase: visible characters, SP, HTAB, obs-text; no
 * CR, LF, NUL or other controls (header injection). */
bool http__is_field_text(const char *s)
{
    if (s == NULL)
        return false;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return false;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */

const char *http_request_header(const http_request *r, const char *name)
{
    for (size_t i = 0; i < r->n_headers; i++)
        if (ascii_caseeq(r->headers[i].name, r->headers[i].name_len, name))
            return r->headers[i].value;
    return NULL;
}

size_t http_request_header_count(const http_request *r, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < r->n_headers; i++)
        if (ascii_caseeq(r->headers[i].name, r->headers[i].name_len, name))
            n++;
    return n;
}

/* ------------------------------------------------------------------------ */
/* Parser state                                                             */

static http_conn *conn_of(http_parser *p)
{
    return (http_conn *)p->data;
}

/* Records an error decided inside a parser callback; the callback then
 * returns -1 so that libhttp-parser stops. */
static int cb_fail(http_conn *c, int err, int status, const char *detail)
{
    c->cb_err = err;
    c->err_status = status;
    c->err_detail = detail;
    return -1;
}

static int head_reserve(http_conn *c, size_t extra)
{
    if (extra > SIZE_MAX - c->head_len - 1)
        return CMS_ENOMEM;
    size_t need = c->head_len + extra + 1;
    if (need <= c->head_cap)
        return CMS_OK;
    size_t cap = c->head_cap ? c->head_cap : 512;
    while (cap < need)
        cap *= 2;
    char *p = realloc(c->head, cap);
    if (p == NULL)
        return CMS_ENOMEM;
    c->head = p;
    c->head_cap = cap;
    return CMS_OK;
}

static int head_append(http_conn *c, const char *at, size_t len)
{
    if (head_reserve(c, len) != CMS_OK)
        return cb_fail(c, CMS_ENOMEM, 500, "out of memory");
    memcpy(c->head + c->head_len, at, len);
    c->head_len += len;
    c->head[c->head_len] = '\0';
    return 0;
}

/* Appends a NUL separator (the buffer always has room for one more byte
 * after head_reserve, but the separator is content, so reserve again). */
static int head_nul(http_conn *c)
{
    if (head_reserve(c, 1) != CMS_OK)
        return cb_fail(c, CMS_ENOMEM, 500, "out of memory");
    c->head[c->head_len++] = '\0';
    c->head[c->head_len] = '\0';
    return 0;
}

static int account(http_conn *c, size_t len, int status, const char *detail)
{
    if (len > c->limits.max_header_bytes - c->head_bytes ||
        c->head_bytes > c->limits.max_header_bytes)
        return cb_fail(c, CMS_ELIMIT, status, detail);
    c->head_bytes += len;
    return 0;
}

/* Closes whatever piece (target, name, value) was being collected. */
static int finish_piece(http_conn *c)
{
    struct http__hdr_off *h = c->n_headers ? &c->hoff[c->n_headers - 1] : NULL;
    switch (c->last_cb) {
    case CB_NONE:
    case CB_URL:
        c->target_len = c->head_len;
        return head_nul(c);
    case CB_FIELD: /* a name without any value callback: empty value */
        h->name_len = c->head_len - h->name_off;
        if (head_nul(c) != 0)
            return -1;
        h->value_off = c->head_len;
        h->value_len = 0;
        return head_nul(c);
    case CB_VALUE:
        h->value_len = c->head_len - h->value_off;
        return head_nul(c);
    default:
        return 0;
    }
}

static void release_request(http_conn *c)
{
    c->head_len = 0;
    c->head_bytes = 0;
    c->n_headers = 0;
    c->body_len = 0;
    if (c->body != NULL)
        c->body[0] = '\0';
    c->target_len = 0;
    c->last_cb = CB_NONE;
    c->headers_done = false;
    c->message_done = false;
    if (c->body_cap > BODY_KEEP_BYTES) {
        free(c->body);
        c->body = NULL;
        c->body_cap = 0;
    }
    memset(&c->req, 0, sizeof(c->req));
}

static int on_message_begin(http_parser *p)
{
    http_conn *c = conn_of(p);
    release_request(c);
    c->in_message = true;
    c->head_bytes = HEAD_BASE_BYTES;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    http_conn *c = conn_of(p);
    if (account(c, len, 414, "request-target too long") != 0)
        return -1;
    c->last_cb = CB_URL;
    return head_append(c, at, len);
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    http_conn *c = conn_of(p);
    bool new_field = c->last_cb != CB_FIELD;

    if (c->headers_done) { /* trailer of a chunked body: counted, not kept */
        if (account(c, len + (new_field ? HEADER_OVERHEAD : 0), 431, "trailer section too large") !=
            0)
            return -1;
        c->last_cb = CB_FIELD;
        return 0;
    }
    if (new_field) {
        if (finish_piece(c) != 0)
            return -1;
        if (c->n_headers >= c->limits.max_headers)
            return cb_fail(c, CMS_ELIMIT, 431, "too many header fields");
        if (account(c, HEADER_OVERHEAD, 431, "header section too large") != 0)
            return -1;
        if (c->n_headers == c->headers_cap) {
            size_t cap = c->headers_cap ? c->headers_cap * 2 : 16;
            if (cap > c->limits.max_headers)
                cap = c->limits.max_headers;
            struct http__hdr_off *o = realloc(c->hoff, cap * sizeof(*o));
            if (o == NULL)
                return cb_fail(c, CMS_ENOMEM, 500, "out of memory");
            c->hoff = o;
            http_header *h = realloc(c->headers, cap * sizeof(*h));
            if (h == NULL)
                return cb_fail(c, CMS_ENOMEM, 500, "out of memory");
            c->headers = h;
            c->headers_cap = cap;
        }
        memset(&c->hoff[c->n_headers], 0, sizeof(c->hoff[0]));
        c->hoff[c->n_headers].name_off = c->head_len;
        c->n_headers++;
    }
    if (account(c, len, 431, "header section too large") != 0)
        return -1;
    c->last_cb = CB_FIELD;
    return head_append(c, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    http_conn *c = conn_of(p);
    if (c->headers_done) {
        if (account(c, len, 431, "trailer section too large") != 0)
            return -1;
        c->last_cb = CB_VALUE;
        return 0;
    }
    if (c->last_cb == CB_FIELD) {
        struct http__hdr_off *h = &c->hoff[c->n_headers - 1];
        h->name_len = c->head_len - h->name_off;
        if (head_nul(c) != 0)
            return -1;
        h->value_off = c->head_len;
    }
    if (account(c, len, 431, "header section too large") != 0)
        return -1;
    c->last_cb = CB_VALUE;
    return head_append(c, at, len);
}

/* Splits the target into NUL-terminated copies of path and query appended
 * to head; returns their offsets. */
static int split_target(http_conn *c, size_t *path_off, size_t *path_len, size_t *query_off,
                        size_t *query_len, bool *has_query)
{
    struct http_parser_url u;
    const char *t = c->head;
    size_t tlen = c->target_len;
    size_t p_off = 0, p_len = 0, q_off = 0, q_len = 0;

    *has_query = false;
    if (tlen == 0 || tlen > UINT16_MAX)
        return cb_fail(c, CMS_EPROTO, 400, "invalid request-target");
    http_parser_url_init(&u);
    if (tlen == 1 && t[0] == '*') { /* OPTIONS * */
        p_off = 0;
        p_len = 1;
    } else {
        if (http_parser_parse_url(t, tlen, c->parser.method == HTTP_CONNECT, &u) != 0)
            return cb_fail(c, CMS_EPROTO, 400, "invalid request-target");
        if (u.field_set & (1u << UF_PATH)) {
            p_off = u.field_data[UF_PATH].off;
            p_len = u.field_data[UF_PATH].len;
        }
        if (u.field_set & (1u << UF_QUERY)) {
            q_off = u.field_data[UF_QUERY].off;
            q_len = u.field_data[UF_QUERY].len;
            *has_query = true;
        } else if (memchr(t, '?', tlen) != NULL) {
            *has_query = true; /* "?" with an empty query */
        }
    }
    if (head_reserve(c, p_len + q_len + 2) != CMS_OK)
        return cb_fail(c, CMS_ENOMEM, 500, "out of memory");
    /* head cannot move between reserve and these copies */
    *path_off = c->head_len;
    *path_len = p_len;
    memcpy(c->head + c->head_len, c->head + p_off, p_len);
    c->head_len += p_len;
    c->head[c->head_len++] = '\0';
    *query_off = c->head_len;
    *query_len = q_len;
    memcpy(c->head + c->head_len, c->head + q_off, q_len);
    c->head_len += q_len;
    c->head[c->head_len++] = '\0';
    c->head[c->head_len] = '\0';
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    http_conn *c = conn_of(p);
    http_request *r = &c->req;
    size_t path_off, path_len, query_off, query_len;
    bool has_query;

    if (finish_piece(c) != 0)
        return -1;
    c->headers_done = true;
    c->last_cb = CB_NONE;

    if (p->http_major != 1)
        return cb_fail(c, CMS_EPROTO, 505, "HTTP version not supported");
    if (split_target(c, &path_off, &path_len, &query_off, &query_len, &has_query) != 0)
        return -1;

    /* head no longer moves until the request is released: fix pointers. */
    for (size_t i = 0; i < c->n_headers; i++) {
        c->headers[i].name = c->head + c->hoff[i].name_off;
        c->headers[i].name_len = c->hoff[i].name_len;
        c->headers[i].value = c->head + c->hoff[i].value_off;
        c->headers[i].value_len = c->hoff[i].value_len;
    }
    /* The Debian build of libhttp-parser is not strict: it lets a space into
     * a header name ("Content-Length : 5"). Refuse any name that is not a
     * token, so that no header can mean one thing to us and another to a
     * proxy in front. */
    for (size_t i = 0; i < c->n_headers; i++)
        if (!http__is_token(c->headers[i].name) || strlen(c->headers[i].name) != c->headers[i].name_len)
            return cb_fail(c, CMS_EPROTO, 400, "invalid character in header name");
    memset(r, 0, sizeof(*r));
    r->method = (enum http_method)p->method;
    r->method_name = http_method_str(r->method);
    r->version_major = p->http_major;
    r->version_minor = p->http_minor;
    r->target = c->head;
    r->target_len = c->target_len;
    r->path = c->head + path_off;
    r->path_len = path_len;
    r->query = c->head + query_off;
    r->query_len = query_len;
    r->has_query = has_query;
    r->headers = c->headers;
    r->n_headers = c->n_headers;
    r->chunked = (p->flags & F_CHUNKED) != 0;
    r->keep_alive = http_should_keep_alive(p) != 0 && !p->upgrade;
    r->body = "";
    r->body_len = 0;
    r->content_length = (p->flags & F_CONTENTLENGTH) ? p->content_length : 0;

    /* RFC 9112 3.2: exactly one Host in HTTP/1.1, at most one in 1.0. */
    size_t hosts = http_request_header_count(r, "host");
    if (hosts > 1 || (hosts == 0 && p->http_minor >= 1))
        return cb_fail(c, CMS_EPROTO, 400,
                       hosts ? "more than one Host header" : "missing Host header");

    const char *expect = http_request_header(r, "expect");
    if (expect != NULL) {
        if (!ascii_caseeq(expect, strlen(expect), "100-continue"))
            return cb_fail(c, CMS_EPROTO, 417, "unsupported Expect");
        r->expect_continue = true;
    }

    if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->limits.max_body_bytes)
        return cb_fail(c, CMS_ELIMIT, 413, "request body too large");

    if (c->on_head != NULL) {
        int rc = c->on_head(c->ctx, r);
        if (rc != 0)
            return cb_fail(c, rc < 0 ? rc : CMS_EINTERNAL, 0, "refused by on_head");
    }

    /* A declared length is within limits: allocate it once. */
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > 0 &&
        c->body_cap < p->content_length + 1) {
        size_t cap = (size_t)p->content_length + 1;
        char *b = realloc(c->body, cap);
        if (b == NULL)
            return cb_fail(c, CMS_ENOMEM, 500, "out of memory");
        c->body = b;
        c->body_cap = cap;
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    http_conn *c = conn_of(p);
    if (len > c->limits.max_body_bytes - c->body_len)
        return cb_fail(c, CMS_ELIMIT, 413, "request body too large");
    size_t need = c->body_len + len + 1;
    if (need > c->body_cap) {
        size_t cap = c->body_cap ? c->body_cap : 1024;
        while (cap < need)
            cap *= 2;
        if (cap > c->limits.max_body_bytes + 1)
            cap = c->limits.max_body_bytes + 1;
        char *b = realloc(c->body, cap);
        if (b == NULL)
            return cb_fail(c, CMS_ENOMEM, 500, "out of memory");
        c->body = b;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, at, len);
    c->body_len += len;
    c->body[c->body_len] = '\0';
    return 0;
}

static int on_message_complete(http_parser *p)
{
    http_conn *c = conn_of(p);
    c->message_done = true;
    c->in_message = false;
    /* Stop http_parser_execute() right after this request. */
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ------------------------------------------------------------------------ */
/* Connection                                                               */

int http_conn_init(http_conn *c, const http_limits *limits, http_request_cb on_request, void *ctx)
{
    memset(c, 0, sizeof(*c));
    if (limits != NULL)
        c->limits = *limits;
    else
        http_limits_default(&c->limits);
    if (on_request == NULL || c->limits.max_header_bytes == 0 || c->limits.max_headers == 0 ||
        c->limits.max_body_bytes == 0 || c->limits.max_body_bytes >= SIZE_MAX / 2)
        return CMS_EINVAL;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->on_request = on_request;
    c->ctx = ctx;
    c->state = HTTP_CONN_READING;
    c->err_detail = "";
    return CMS_OK;
}

void http_conn_set_head_cb(http_conn *c, http_head_cb on_head)
{
    c->on_head = on_head;
}

void http_conn_free(http_conn *c)
{
    free(c->head);
    free(c->hoff);
    free(c->headers);
    free(c->body);
    c->head = NULL;
    c->hoff = NULL;
    c->headers = NULL;
    c->body = NULL;
    c->head_len = c->head_cap = 0;
    c->n_headers = c->headers_cap = 0;
    c->body_len = c->body_cap = 0;
}

static int conn_fail(http_conn *c, int err, int status, const char *detail)
{
    c->state = HTTP_CONN_FAILED;
    c->in_message = false;
    if (c->err_status == 0)
        c->err_status = status;
    if (c->err_detail == NULL || c->err_detail[0] == '\0')
        c->err_detail = detail;
    return err;
}

int http_conn_feed(http_conn *c, const char *data, size_t len, size_t *consumed)
{
    size_t off = 0;

    *consumed = 0;
    switch (c->state) {
    case HTTP_CONN_READING:
        break;
    case HTTP_CONN_WAITING:
        return CMS_EAGAIN;
    default:
        return CMS_ECLOSED;
    }

    while (off < len) {
        size_t n = http_parser_execute(&c->parser, &parser_settings, data + off, len - off);
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        off += n;
        *consumed = off;

        if (c->message_done) {
            /* Paused by on_message_complete: deliver outside the parser. */
            http_parser_pause(&c->parser, 0);
            c->message_done = false;
            c->req.body = c->body_len > 0 ? c->body : "";
            c->req.body_len = c->body_len;
            c->req.keep_alive = http_should_keep_alive(&c->parser) != 0 && !c->parser.upgrade;
            c->last_request = !c->req.keep_alive;
            int rc = c->on_request(c->ctx, &c->req);
            if (rc == CMS_EAGAIN) {
                c->state = HTTP_CONN_WAITING;
                return CMS_EAGAIN;
            }
            if (rc != CMS_OK)
                return conn_fail(c, rc < 0 ? rc : CMS_EINTERNAL, 500, "refused by on_request");
            release_request(c);
            if (c->last_request) {
                c->state = HTTP_CONN_DONE;
                return CMS_OK;
            }
            continue;
        }
        if (e != HPE_OK) {
            if (c->cb_err != 0)
                return conn_fail(c, c->cb_err, c->err_status, c->err_detail);
            return conn_fail(c, CMS_EPROTO, 400, http_errno_description(e));
        }
        if (n == 0) /* no progress without an error: never expected */
            return conn_fail(c, CMS_EINTERNAL, 500, "parser made no progress");
    }
    return CMS_OK;
}

void http_conn_resume(http_conn *c)
{
    if (c->state != HTTP_CONN_WAITING)
        return;
    release_request(c);
    c->state = c->last_request ? HTTP_CONN_DONE : HTTP_CONN_READING;
}

enum http_conn_state http_conn_get_state(const http_conn *c)
{
    return c->state;
}

bool http_conn_in_request(const http_conn *c)
{
    return c->in_message;
}

size_t http_conn_buffered(const http_conn *c)
{
    return c->head_cap + c->body_cap +
           c->headers_cap * (sizeof(struct http__hdr_off) + sizeof(http_header));
}

int http_conn_error_status(const http_conn *c)
{
    return c->state == HTTP_CONN_FAILED ? c->err_status : 0;
}

const char *http_conn_error_detail(const http_conn *c)
{
    return (c->state == HTTP_CONN_FAILED && c->err_detail != NULL) ? c->err_detail : "";
}

const http_request *http_conn_failed_request(const http_conn *c)
{
    /* req is zeroed at every message begin and filled once the head parsed. */
    return (c->state == HTTP_CONN_FAILED && c->req.path != NULL) ? &c->req : NULL;
}

