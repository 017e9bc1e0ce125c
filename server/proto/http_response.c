/* http_response.c - output buffer, response heads, JSON bodies (see http.h). */
#include "http.h"
#include "http_int.h"

#include "cms_err.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Output buffer                                                            */

#define HTTP_BUF_DEFAULT_MAX (1024u * 1024u)

void http_buf_init(http_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max ? max : HTTP_BUF_DEFAULT_MAX;
}

void http_buf_free(http_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void http_buf_reset(http_buf *b)
{
    b->len = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

static int buf_reserve(http_buf *b, size_t extra)
{
    if (extra > b->max || b->len > b->max - extra)
        return CMS_ELIMIT;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return CMS_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    if (cap > b->max + 1)
        cap = b->max + 1;
    char *p = realloc(b->data, cap);
    if (p == NULL)
        return CMS_ENOMEM;
    b->data = p;
    b->cap = cap;
    return CMS_OK;
}

int http_buf_append(http_buf *b, const void *data, size_t len)
{
    int rc = buf_reserve(b, len);
    if (rc != CMS_OK)
        return rc;
    if (len > 0)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return CMS_OK;
}

int http_buf_appendf(http_buf *b, const char *fmt, ...)
{
    va_list ap;
    char small[256];

    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return CMS_EINVAL;
    if ((size_t)n < sizeof(small))
        return http_buf_append(b, small, (size_t)n);
    int rc = buf_reserve(b, (size_t)n);
    if (rc != CMS_OK)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return CMS_OK;
}

char *http_buf_release(http_buf *b, size_t *len)
{
    char *p = b->data;
    if (len != NULL)
        *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

/* ------------------------------------------------------------------------ */
/* Responses                                                                */

const char *http_reason(int status)
{
    if (status < 100 || status > 599)
        return "Unknown";
    const char *s = http_status_str((enum http_status)status);
    if (s == NULL || s[0] == '<')
        return "Unknown";
    return s;
}

char *http_date_format(char *out, size_t cap, time_t t)
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;
    if (cap == 0)
        return out;
    if (gmtime_r(&t, &tm) == NULL || tm.tm_wday < 0 || tm.tm_wday > 6 || tm.tm_mon < 0 ||
        tm.tm_mon > 11) {
        out[0] = '\0';
        return out;
    }
    snprintf(out, cap, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    return out;
}

int http_response_start(http_buf *out, int status, const char *reason, const char *content_type,
                        uint64_t content_length, unsigned flags, const http_field *extra,
                        size_t n_extra)
{
    char date[40];
    size_t mark = out->len;
    int rc = CMS_OK;

    if (status < 100 || status > 599)
        return CMS_EINVAL;
    if (reason == NULL)
        reason = http_reason(status);
    if (!http__is_field_text(reason) || (content_type != NULL && !http__is_field_text(content_type)))
        return CMS_EINVAL;
    if (n_extra > 0 && extra == NULL)
        return CMS_EINVAL;
    for (size_t i = 0; i < n_extra; i++)
        if (!http__is_token(extra[i].name) || !http__is_field_text(extra[i].value))
            return CMS_EINVAL;

    http_date_format(date, sizeof(date), time(NULL));
    rc = http_buf_appendf(out, "HTTP/1.1 %d %s\r\nDate: %s\r\nServer: cmsd\r\n", status, reason,
                          date);
    if (rc == CMS_OK && content_type != NULL)
        rc = http_buf_appendf(out, "Content-Type: %s\r\n", content_type);
    if (rc == CMS_OK && status >= 200 && status != 204 && !(flags & HTTP_RESP_NO_LENGTH))
        rc = http_buf_appendf(out, "Content-Length: %" PRIu64 "\r\n", content_length);
    if (rc == CMS_OK)
        rc = http_buf_appendf(out, "Connection: %s\r\n",
                              (flags & HTTP_RESP_KEEP_ALIVE) ? "keep-alive" : "close");
    if (rc == CMS_OK && (flags & HTTP_RESP_NO_STORE))
        rc = http_buf_appendf(out, "Cache-Control: no-store\r\n");
    if (rc == CMS_OK)
        rc = http_buf_appendf(out, "X-Content-Type-Options: nosniff\r\n");
    for (size_t i = 0; rc == CMS_OK && i < n_extra; i++)
        rc = http_buf_appendf(out, "%s: %s\r\n", extra[i].name, extra[i].value);
    if (rc == CMS_OK)
        rc = http_buf_append(out, "\r\n", 2);
    if (rc != CMS_OK) {
        out->len = mark;
        if (out->data != NULL)
            out->data[mark] = '\0';
    }
    return rc;
}

/* Copy of s where invalid UTF-8 and control characters become '?'. */
static char *sanitize_text(const char *s, size_t *out_len)
{
    size_t n = strlen(s);
    char *o = malloc(n + 1);
    size_t j = 0;
    if (o == NULL)
        return NULL;
    for (size_t i = 0; i < n;) {
        const unsigned char *u = (const unsigned char *)s + i;
        size_t k = http__utf8_seq_len(u, n - i);
        if (k == 0 || (k == 1 && (u[0] < 0x20 || u[0] == 0x7f))) {
            o[j++] = '?';
            i++;
            continue;
        }
        memcpy(o + j, u, k);
        j += k;
        i += k;
    }
    o[j] = '\0';
    *out_len = j;
    return o;
}

static json_t *json_text(const char *s)
{
    size_t len;
    char *clean = sanitize_text(s != NULL ? s : "", &len);
    if (clean == NULL)
        return NULL;
    json_t *j = json_stringn(clean, len);
    free(clean);
    return j;
}

char *http_json_error_body(const char *error, const char *detail)
{
    char *out = NULL;
    json_t *o = json_object();
    json_t *e = json_text(error);
    json_t *d = json_text(detail);

    if (o == NULL || e == NULL || d == NULL)
        goto cleanup;
    if (json_object_set(o, "error", e) != 0 || json_object_set(o, "detail", d) != 0)
        goto cleanup;
    out = json_dumps(o, JSON_PRESERVE_ORDER);
cleanup:
    json_decref(e);
    json_decref(d);
    json_decref(o);
    return out;
}

static int response_with_body(http_buf *out, int status, const char *ctype, const char *body,
                              unsigned flags, const http_field *extra, size_t n_extra)
{
    size_t mark = out->len;
    size_t blen = strlen(body);
    int rc = http_response_start(out, status, NULL, ctype, blen, flags | HTTP_RESP_NO_STORE, extra,
                                 n_extra);
    if (rc == CMS_OK)
        rc = http_buf_append(out, body, blen);
    if (rc != CMS_OK) {
        out->len = mark;
        if (out->data != NULL)
            out->data[mark] = '\0';
    }
    return rc;
}

int http_json_error(http_buf *out, int status, const char *error, const char *detail,
                    unsigned flags, const http_field *extra, size_t n_extra)
{
    if (status < 100 || status > 599)
        return CMS_EINVAL;
    char *body = http_json_error_body(error, detail);
    if (body == NULL)
        return CMS_ENOMEM;
    int rc = response_with_body(out, status, "application/json", body, flags, extra, n_extra);
    free(body);
    return rc;
}

int http_json_response(http_buf *out, int status, const json_t *body, unsigned flags)
{
    if (body == NULL || status < 100 || status > 599)
        return CMS_EINVAL;
    char *text = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    if (text == NULL)
        return CMS_EINVAL;
    int rc = response_with_body(out, status, "application/json", text, flags, NULL, 0);
    free(text);
    return rc;
}

