/* test_http.c - HTTP/1.1 proto module: parser, limits, pipelining, responses,
 * Range/If-Range/ETag, percent-decoding and query parameters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "cms_err.h"
#include "http.h"

/* ------------------------------------------------------------------------ */
/* Recording harness                                                        */

#define MAX_SEEN 8

struct seen {
    char method[16];
    char path[256];
    char query[256];
    char host[64];
    char body[2048];
    size_t body_len;
    bool keep_alive;
    bool chunked;
    unsigned minor;
};

struct rec {
    struct seen req[MAX_SEEN];
    size_t n;
    int ret; /* what on_request returns */
    int head_calls;
};

static int record(void *ctx, const http_request *r)
{
    struct rec *rec = ctx;
    assert_true(rec->n < MAX_SEEN);
    struct seen *s = &rec->req[rec->n++];
    snprintf(s->method, sizeof(s->method), "%s", r->method_name);
    snprintf(s->path, sizeof(s->path), "%s", r->path);
    snprintf(s->query, sizeof(s->query), "%s", r->query);
    const char *h = http_request_header(r, "host");
    snprintf(s->host, sizeof(s->host), "%s", h ? h : "");
    assert_true(r->body_len < sizeof(s->body));
    memcpy(s->body, r->body, r->body_len);
    s->body[r->body_len] = '\0';
    assert_int_equal(r->body[r->body_len], '\0');
    s->body_len = r->body_len;
    s->keep_alive = r->keep_alive;
    s->chunked = r->chunked;
    s->minor = r->version_minor;
    return rec->ret;
}

static int count_head(void *ctx, const http_request *r)
{
    struct rec *rec = ctx;
    (void)r;
    rec->head_calls++;
    return 0;
}

static http_conn conn;
static struct rec rec;

static int setup(void **state)
{
    (void)state;
    memset(&rec, 0, sizeof(rec));
    assert_int_equal(http_conn_init(&conn, NULL, record, &rec), CMS_OK);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    http_conn_free(&conn);
    return 0;
}

static int feed_all(const char *s)
{
    size_t used = 0;
    int rc = http_conn_feed(&conn, s, strlen(s), &used);
    if (rc == CMS_OK && http_conn_get_state(&conn) == HTTP_CONN_READING)
        assert_int_equal(used, strlen(s));
    return rc;
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

#define GET_REQ "GET /fw/v1/manifest?since=5 HTTP/1.1\r\nHost: cms.local\r\nUser-Agent: t\r\n\r\n"

/* ------------------------------------------------------------------------ */
/* Parser                                                                   */

static void test_simple_get(void **state)
{
    (void)state;
    assert_int_equal(feed_all(GET_REQ), CMS_OK);
    assert_int_equal(rec.n, 1);
    assert_string_equal(rec.req[0].method, "GET");
    assert_string_equal(rec.req[0].path, "/fw/v1/manifest");
    assert_string_equal(rec.req[0].query, "since=5");
    assert_string_equal(rec.req[0].host, "cms.local");
    assert_int_equal(rec.req[0].body_len, 0);
    assert_true(rec.req[0].keep_alive);
    assert_int_equal(rec.req[0].minor, 1);
    assert_false(http_conn_in_request(&conn));
    assert_int_equal(http_conn_get_state(&conn), HTTP_CONN_READING);
}

static void test_byte_by_byte(void **state)
{
    (void)state;
    const char *req = "POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: h\r\n"
                      "Content-Type: application/pkcs10\r\nContent-Length: 11\r\n\r\nMIIBcsr==\r\n";
    size_t n = strlen(req);
    for (size_t i = 0; i < n; i++) {
        size_t used = 0;
        assert_int_equal(http_conn_feed(&conn, req + i, 1, &used), CMS_OK);
        assert_int_equal(used, 1);
        if (i + 1 < n) {
            assert_int_equal(rec.n, 0);
            assert_true(http_conn_in_request(&conn));
        }
    }
    assert_int_equal(rec.n, 1);
    assert_string_equal(rec.req[0].method, "POST");
    assert_string_equal(rec.req[0].path, "/.well-known/est/simpleenroll");
    assert_string_equal(rec.req[0].body, "MIIBcsr==\r\n");
    assert_int_equal(rec.req[0].body_len, 11);
}

static void test_two_pipelined(void **state)
{
    (void)state;
    const char *two = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
                      "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz";
    assert_int_equal(feed_all(two), CMS_OK);
    assert_int_equal(rec.n, 2);
    assert_string_equal(rec.req[0].path, "/a");
    assert_string_equal(rec.req[1].path, "/b");
    assert_string_equal(rec.req[1].body, "xyz");
    /* a body-less request after one with a body has an empty body */
    assert_int_equal(feed_all("GET /c HTTP/1.1\r\nHost: h\r\n\r\n"), CMS_OK);
    assert_int_equal(rec.n, 3);
    assert_int_equal(rec.req[2].body_len, 0);
    assert_string_equal(rec.req[2].body, "");
}

/* An asynchronous answer holds back the next pipelined request. */
static void test_pipelined_async(void **state)
{
    (void)state;
    const char *two = "GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
    size_t len = strlen(two), used = 0;
    size_t first_len = strlen("GET /a HTTP/1.1\r\nHost: h\r\n\r\n");

    rec.ret = CMS_EAGAIN;
    assert_int_equal(http_conn_feed(&conn, two, len, &used), CMS_EAGAIN);
    assert_int_equal(used, first_len);
    assert_int_equal(rec.n, 1);
    assert_int_equal(http_conn_get_state(&conn), HTTP_CONN_WAITING);
    /* the request stays readable while the answer is pending */
    assert_string_equal(conn.req.path, "/a");

    /* feeding while waiting delivers nothing and consumes nothing */
    size_t used2 = 99;
    assert_int_equal(http_conn_feed(&conn, two + used, len - used, &used2), CMS_EAGAIN);
    assert_int_equal(used2, 0);
    assert_int_equal(rec.n, 1);

    http_conn_resume(&conn);
    rec.ret = CMS_OK;
    assert_int_equal(http_conn_feed(&conn, two + used, len - used, &used2), CMS_OK);
    assert_int_equal(used2, len - used);
    assert_int_equal(rec.n, 2);
    assert_string_equal(rec.req[1].path, "/b");
}

static void test_chunked_body(void **state)
{
    (void)state;
    const char *req = "POST /api/v1/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n";
    assert_int_equal(feed_all(req), CMS_OK);
    assert_int_equal(rec.n, 1);
    assert_true(rec.req[0].chunked);
    assert_string_equal(rec.req[0].body, "hello, world");
}

static void test_oversize_header_431(void **state)
{
    (void)state;
    char *big = malloc(20000);
    assert_non_null(big);
    int n = snprintf(big, 20000, "GET / HTTP/1.1\r\nHost: h\r\nX-Big: ");
    memset(big + n, 'a', 17000);
    strcpy(big + n + 17000, "\r\n\r\n");
    size_t used;
    assert_int_equal(http_conn_feed(&conn, big, strlen(big), &used), CMS_ELIMIT);
    assert_int_equal(http_conn_error_status(&conn), 431);
    assert_int_equal(rec.n, 0);
    assert_int_equal(http_conn_get_state(&conn), HTTP_CONN_FAILED);
    /* a failed connection consumes nothing more */
    assert_int_equal(http_conn_feed(&conn, "x", 1, &used), CMS_ECLOSED);
    free(big);
}

static void test_too_many_headers_431(void **state)
{
    (void)state;
    char req[4096];
    size_t n = (size_t)snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 0; i < 70; i++)
        n += (size_t)snprintf(req + n, sizeof(req) - n, "X-%d: v\r\n", i);
    snprintf(req + n, sizeof(req) - n, "\r\n");
    assert_int_equal(feed_all(req), CMS_ELIMIT);
    assert_int_equal(http_conn_error_status(&conn), 431);
}

static void test_long_target_414(void **state)
{
    (void)state;
    char *big = malloc(20000);
    assert_non_null(big);
    memcpy(big, "GET /", 5);
    memset(big + 5, 'a', 17000);
    strcpy(big + 5 + 17000, " HTTP/1.1\r\nHost: h\r\n\r\n");
    size_t used;
    assert_int_equal(http_conn_feed(&conn, big, strlen(big), &used), CMS_ELIMIT);
    assert_int_equal(http_conn_error_status(&conn), 414);
    free(big);
}

/* 413 is decided from Content-Length, before any body byte arrives. */
static void test_oversize_body_413(void **state)
{
    (void)state;
    const char *head = "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 70000\r\n\r\n";
    size_t used;
    assert_int_equal(http_conn_feed(&conn, head, strlen(head), &used), CMS_ELIMIT);
    assert_int_equal(http_conn_error_status(&conn), 413);
    assert_int_equal(rec.n, 0);
    assert_true(http_conn_buffered(&conn) < 8192); /* nothing of the body allocated */
}

static void test_oversize_chunked_413(void **state)
{
    (void)state;
    http_limits l;
    http_conn_free(&conn);
    http_limits_default(&l);
    l.max_body_bytes = 8;
    assert_int_equal(http_conn_init(&conn, &l, record, &rec), CMS_OK);
    const char *req = "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n";
    assert_int_equal(feed_all(req), CMS_ELIMIT);
    assert_int_equal(http_conn_error_status(&conn), 413);
    assert_int_equal(rec.n, 0);
}

static void test_malformed_400(void **state)
{
    (void)state;
    assert_int_equal(feed_all("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n"), CMS_EPROTO);
    assert_int_equal(http_conn_error_status(&conn), 400);
    assert_true(strlen(http_conn_error_detail(&conn)) > 0);
    assert_int_equal(rec.n, 0);
}

static void test_bad_method_400(void **state)
{
    (void)state;
    assert_int_equal(feed_all("BREW /pot HTTP/1.1\r\nHost: h\r\n\r\n"), CMS_EPROTO);
    assert_int_equal(http_conn_error_status(&conn), 400);
    assert_string_equal(http_conn_error_detail(&conn), "invalid HTTP method");
}

static void test_missing_host_400(void **state)
{
    (void)state;
    assert_int_equal(feed_all("GET / HTTP/1.1\r\n\r\n"), CMS_EPROTO);
    assert_int_equal(http_conn_error_status(&conn), 400);
}

static void test_cl_and_te_400(void **state)
{
    (void)state;
    /* request smuggling shape: both framings */
    assert_int_equal(feed_all("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                              "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
                     CMS_EPROTO);
    assert_int_equal(http_conn_error_status(&conn), 400);
}

static void test_space_in_header_name_400(void **state)
{
    (void)state;
    assert_int_equal(feed_all("POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\nhello"),
                     CMS_EPROTO);
    assert_int_equal(http_conn_error_status(&conn), 400);
    assert_int_equal(rec.n, 0);
}

static void test_http2_version_505(void **state)
{
    (void)state;
    assert_int_equal(feed_all("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), CMS_EPROTO);
    assert_int_equal(http_conn_error_status(&conn), 505);
}

static void test_keep_alive_variants(void **state)
{
    (void)state;
    size_t used;
    const char *close_req =
        "GET /1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\n";
    assert_int_equal(http_conn_feed(&conn, close_req, strlen(close_req), &used), CMS_OK);
    assert_int_equal(rec.n, 1);
    assert_false(rec.req[0].keep_alive);
    assert_int_equal(used, strlen("GET /1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"));
    assert_int_equal(http_conn_get_state(&conn), HTTP_CONN_DONE);
    assert_int_equal(http_conn_feed(&conn, "GET", 3, &used), CMS_ECLOSED);
    assert_int_equal(rec.n, 1);

    /* HTTP/1.0 without keep-alive: last request */
    http_conn_free(&conn);
    memset(&rec, 0, sizeof(rec));
    http_conn_init(&conn, NULL, record, &rec);
    assert_int_equal(feed_all("GET /10 HTTP/1.0\r\n\r\n"), CMS_OK);
    assert_false(rec.req[0].keep_alive);
    assert_int_equal(rec.req[0].minor, 0);
    assert_int_equal(http_conn_get_state(&conn), HTTP_CONN_DONE);

    /* HTTP/1.0 with Connection: keep-alive */
    http_conn_free(&conn);
    memset(&rec, 0, sizeof(rec));
    http_conn_init(&conn, NULL, record, &rec);
    assert_int_equal(feed_all("GET /10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), CMS_OK);
    assert_true(rec.req[0].keep_alive);
    assert_int_equal(http_conn_get_state(&conn), HTTP_CONN_READING);
}

/* Asynchronous answer to a Connection: close request: DONE at resume. */
static void test_async_close(void **state)
{
    (void)state;
    rec.ret = CMS_EAGAIN;
    assert_int_equal(feed_all("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
                     CMS_EAGAIN);
    assert_int_equal(http_conn_get_state(&conn), HTTP_CONN_WAITING);
    http_conn_resume(&conn);
    assert_int_equal(http_conn_get_state(&conn), HTTP_CONN_DONE);
}

static void test_header_lookup_case_insensitive(void **state)
{
    (void)state;
    rec.ret = CMS_EAGAIN; /* keep the request to inspect it */
    assert_int_equal(feed_all("GET / HTTP/1.1\r\nHOST: h\r\nx-Device-Serial: MON-0001\r\n"
                              "Empty:\r\nAccept: a\r\naccept: b\r\n\r\n"),
                     CMS_EAGAIN);
    const http_request *r = &conn.req;
    assert_string_equal(http_request_header(r, "X-DEVICE-SERIAL"), "MON-0001");
    assert_string_equal(http_request_header(r, "host"), "h");
    assert_string_equal(http_request_header(r, "empty"), "");
    assert_null(http_request_header(r, "x-device"));
    assert_string_equal(http_request_header(r, "Accept"), "a");
    assert_int_equal(http_request_header_count(r, "ACCEPT"), 2);
    assert_int_equal(r->n_headers, 5);
    assert_string_equal(r->headers[1].name, "x-Device-Serial");
}

static void test_expect_continue_head_cb(void **state)
{
    (void)state;
    http_conn_set_head_cb(&conn, count_head);
    const char *head =
        "POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
    size_t used;
    assert_int_equal(http_conn_feed(&conn, head, strlen(head), &used), CMS_OK);
    assert_int_equal(rec.head_calls, 1);
    assert_int_equal(rec.n, 0);
    assert_true(http_conn_in_request(&conn));
    assert_int_equal(http_conn_feed(&conn, "ok", 2, &used), CMS_OK);
    assert_int_equal(rec.n, 1);
    assert_string_equal(rec.req[0].body, "ok");
}

/* Which request failed: known once its head parsed, not before, never a
 * previous request's. */
static int refuse_head(void *ctx, const http_request *r)
{
    (void)ctx;
    (void)r;
    return CMS_EPERM;
}

static void test_failed_request(void **state)
{
    (void)state;
    const http_request *f;
    /* a chunk that is not hex: the head had parsed */
    assert_int_equal(feed_all("GET /ok HTTP/1.1\r\nHost: h\r\n\r\n"
                              "POST /fw/v1/report?x=1 HTTP/1.1\r\nHost: h\r\n"
                              "Transfer-Encoding: chunked\r\n\r\nzz\r\n"),
                     CMS_EPROTO);
    assert_int_equal(rec.n, 1);
    f = http_conn_failed_request(&conn);
    assert_non_null(f);
    assert_string_equal(f->method_name, "POST");
    assert_string_equal(f->path, "/fw/v1/report");
    assert_string_equal(f->query, "x=1");
    assert_true(f->chunked);
    /* over the body limit from Content-Length */
    http_conn_free(&conn);
    assert_int_equal(http_conn_init(&conn, NULL, record, &rec), CMS_OK);
    assert_int_equal(feed_all("PUT /big HTTP/1.1\r\nHost: h\r\nContent-Length: 70000\r\n\r\n"),
                     CMS_ELIMIT);
    f = http_conn_failed_request(&conn);
    assert_non_null(f);
    assert_string_equal(f->path, "/big");
    /* refused by on_head */
    http_conn_free(&conn);
    assert_int_equal(http_conn_init(&conn, NULL, record, &rec), CMS_OK);
    http_conn_set_head_cb(&conn, refuse_head);
    assert_int_equal(feed_all("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n"),
                     CMS_EPERM);
    f = http_conn_failed_request(&conn);
    assert_non_null(f);
    assert_string_equal(f->path, "/up");
    /* a second request whose head never parsed, after a good one: none */
    http_conn_free(&conn);
    assert_int_equal(http_conn_init(&conn, NULL, record, &rec), CMS_OK);
    assert_int_equal(feed_all("GET /first HTTP/1.1\r\nHost: h\r\n\r\n"
                              "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n"),
                     CMS_EPROTO);
    assert_null(http_conn_failed_request(&conn));
    /* a bad header name (refused before the request is built): none */
    http_conn_free(&conn);
    assert_int_equal(http_conn_init(&conn, NULL, record, &rec), CMS_OK);
    assert_int_equal(feed_all("GET / HTTP/1.1\r\nHost: h\r\nBad Name: 1\r\n\r\n"),
                     CMS_EPROTO);
    assert_null(http_conn_failed_request(&conn));
    /* not failed: none */
    http_conn_free(&conn);
    assert_int_equal(http_conn_init(&conn, NULL, record, &rec), CMS_OK);
    assert_null(http_conn_failed_request(&conn));
    assert_int_equal(feed_all("GET /x HTTP/1.1\r\nHost: h\r\n"), CMS_OK);
    assert_null(http_conn_failed_request(&conn));
}

static void test_absolute_form_and_encoded_path(void **state)
{
    (void)state;
    assert_int_equal(
        feed_all("GET https://cms.local:8443/fw/v1/images/ab%2Fcd?x=1#frag HTTP/1.1\r\n"
                 "Host: cms.local\r\n\r\n"),
        CMS_OK);
    assert_string_equal(rec.req[0].path, "/fw/v1/images/ab%2Fcd");
    assert_string_equal(rec.req[0].query, "x=1");
}

/* ------------------------------------------------------------------------ */
/* Responses                                                                */

static void test_response_head(void **state)
{
    (void)state;
    http_buf b;
    http_field extra[] = {{"WWW-Authenticate", "Bearer"}};
    http_buf_init(&b, 0);
    assert_int_equal(http_response_start(&b, 200, NULL, "text/plain", 5,
                                         HTTP_RESP_KEEP_ALIVE | HTTP_RESP_NO_STORE, extra, 1),
                     CMS_OK);
    assert_true(starts_with(b.data, "HTTP/1.1 200 OK\r\nDate: "));
    assert_non_null(strstr(b.data, " GMT\r\nServer: cmsd\r\n"));
    assert_non_null(strstr(b.data, "\r\nContent-Type: text/plain\r\n"));
    assert_non_null(strstr(b.data, "\r\nContent-Length: 5\r\n"));
    assert_non_null(strstr(b.data, "\r\nConnection: keep-alive\r\n"));
    assert_non_null(strstr(b.data, "\r\nCache-Control: no-store\r\n"));
    assert_non_null(strstr(b.data, "\r\nWWW-Authenticate: Bearer\r\n\r\n"));

    /* header injection refused, buffer unchanged */
    size_t before = b.len;
    http_field bad[] = {{"X-A", "a\r\nSet-Cookie: x"}};
    assert_int_equal(http_response_start(&b, 200, NULL, NULL, 0, 0, bad, 1), CMS_EINVAL);
    assert_int_equal(b.len, before);

    /* 204: no Content-Length */
    http_buf_reset(&b);
    assert_int_equal(http_response_start(&b, 204, NULL, NULL, 0, 0, NULL, 0), CMS_OK);
    assert_null(strstr(b.data, "Content-Length"));
    assert_non_null(strstr(b.data, "Connection: close\r\n"));

    /* limit */
    http_buf small;
    http_buf_init(&small, 40);
    assert_int_equal(http_response_start(&small, 200, NULL, NULL, 0, 0, NULL, 0), CMS_ELIMIT);
    assert_int_equal(small.len, 0);
    http_buf_free(&small);
    http_buf_free(&b);
}

static void test_date_format(void **state)
{
    (void)state;
    char d[40];
    assert_string_equal(http_date_format(d, sizeof(d), 784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
}

static void test_json_error_parses_back(void **state)
{
    (void)state;
    http_buf b;
    http_buf_init(&b, 0);
    assert_int_equal(http_json_error(&b, 413, "payload_too_large",
                                     "body \"too\" large\n\xff\xfe from peer", 0, NULL, 0),
                     CMS_OK);
    assert_true(starts_with(b.data, "HTTP/1.1 413 Payload Too Large\r\n"));
    assert_non_null(strstr(b.data, "Content-Type: application/json\r\n"));
    assert_non_null(strstr(b.data, "Cache-Control: no-store\r\n"));
    assert_non_null(strstr(b.data, "Connection: close\r\n"));
    const char *body = strstr(b.data, "\r\n\r\n") + 4;
    char cl[48];
    snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", strlen(body));
    assert_non_null(strstr(b.data, cl));

    json_error_t jerr;
    json_t *j = json_loads(body, 0, &jerr);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "error")), "payload_too_large");
    assert_string_equal(json_string_value(json_object_get(j, "detail")),
                        "body \"too\" large??? from peer");
    assert_int_equal(json_object_size(j), 2);
    json_decref(j);
    assert_true(starts_with(body, "{\"error\": "));
    http_buf_free(&b);
}

static void test_json_response(void **state)
{
    (void)state;
    http_buf b;
    http_buf_init(&b, 0);
    json_t *o = json_pack("{s:s, s:i}", "status", "ok", "n", 3);
    assert_int_equal(http_json_response(&b, 200, o, HTTP_RESP_KEEP_ALIVE), CMS_OK);
    json_decref(o);
    assert_non_null(strstr(b.data, "Content-Length: 21\r\n"));
    assert_non_null(strstr(b.data, "\r\n\r\n{\"status\":\"ok\",\"n\":3}"));
    http_buf_free(&b);
}

/* ------------------------------------------------------------------------ */
/* Range / If-Range / ETag                                                  */

static void test_range_cases(void **state)
{
    (void)state;
    http_range r;
    assert_int_equal(http_range_parse("bytes=0-99", 1000, &r), 206);
    assert_int_equal(r.first, 0);
    assert_int_equal(r.length, 100);
    assert_int_equal(http_range_parse("bytes=100-", 1000, &r), 206);
    assert_int_equal(r.first, 100);
    assert_int_equal(r.length, 900);
    assert_int_equal(http_range_parse("bytes=-50", 1000, &r), 206);
    assert_int_equal(r.first, 950);
    assert_int_equal(r.length, 50);
    assert_int_equal(http_range_parse("bytes=-5000", 1000, &r), 206);
    assert_int_equal(r.first, 0);
    assert_int_equal(r.length, 1000);
    assert_int_equal(http_range_parse("bytes=900-5000", 1000, &r), 206);
    assert_int_equal(r.length, 100);
    assert_int_equal(http_range_parse("Bytes=999-999", 1000, &r), 206);
    assert_int_equal(r.length, 1);
    /* unsatisfiable */
    assert_int_equal(http_range_parse("bytes=1000-", 1000, &r), 416);
    assert_int_equal(http_range_parse("bytes=5000-6000", 1000, &r), 416);
    assert_int_equal(http_range_parse("bytes=-0", 1000, &r), 416);
    assert_int_equal(http_range_parse("bytes=0-", 0, &r), 416);
    assert_int_equal(http_range_parse("bytes=99999999999999999999999-", 1000, &r), 416);
    /* ignored: whole resource */
    assert_int_equal(http_range_parse("bytes=0-1,5-6", 1000, &r), 200);
    assert_int_equal(r.first, 0);
    assert_int_equal(r.length, 1000);
    assert_int_equal(http_range_parse(NULL, 1000, &r), 200);
    assert_int_equal(http_range_parse("items=0-1", 1000, &r), 200);
    assert_int_equal(http_range_parse("bytes=5-1", 1000, &r), 200);
    assert_int_equal(http_range_parse("bytes=a-b", 1000, &r), 200);
    assert_int_equal(http_range_parse("bytes=-", 1000, &r), 200);
    assert_int_equal(http_range_parse("bytes=1-2x", 1000, &r), 200);
    assert_int_equal(http_range_parse("bytes=0-18446744073709551615", 1000, &r), 206);
    assert_int_equal(r.length, 1000);
}

static void test_range_response_heads(void **state)
{
    (void)state;
    http_buf b;
    http_range r;
    char etag[HTTP_ETAG_SIZE];
    uint8_t digest[32];
    for (int i = 0; i < 32; i++)
        digest[i] = (uint8_t)(i * 7);
    http_etag_format(etag, digest);
    assert_int_equal(strlen(etag), HTTP_ETAG_LEN);
    assert_true(starts_with(etag, "\"sha256-00070e15"));
    assert_int_equal(etag[HTTP_ETAG_LEN - 1], '"');

    http_buf_init(&b, 0);
    http_range_parse("bytes=100-", 1000, &r);
    assert_int_equal(http_range_response_start(&b, &r, NULL, etag, HTTP_RESP_KEEP_ALIVE), CMS_OK);
    assert_true(starts_with(b.data, "HTTP/1.1 206 Partial Content\r\n"));
    assert_non_null(strstr(b.data, "Content-Range: bytes 100-999/1000\r\n"));
    assert_non_null(strstr(b.data, "Content-Length: 900\r\n"));
    assert_non_null(strstr(b.data, "Accept-Ranges: bytes\r\n"));
    assert_non_null(strstr(b.data, etag));

    http_buf_reset(&b);
    http_range_parse("bytes=2000-", 1000, &r);
    assert_int_equal(http_range_response_start(&b, &r, NULL, etag, 0), CMS_OK);
    assert_true(starts_with(b.data, "HTTP/1.1 416 Range Not Satisfiable\r\n"));
    assert_non_null(strstr(b.data, "Content-Range: bytes */1000\r\n"));

    http_buf_reset(&b);
    http_range_parse(NULL, 1000, &r);
    assert_int_equal(http_range_response_start(&b, &r, NULL, NULL, 0), CMS_OK);
    assert_true(starts_with(b.data, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(b.data, "Content-Length: 1000\r\n"));
    assert_null(strstr(b.data, "Content-Range"));
    http_buf_free(&b);
}

static void test_if_range(void **state)
{
    (void)state;
    const char *etag = "\"sha256-abc\"";
    http_range r;

    rec.ret = CMS_EAGAIN;
    assert_int_equal(feed_all("GET /img HTTP/1.1\r\nHost: h\r\nRange: bytes=10-\r\n"
                              "If-Range: \"sha256-abc\"\r\n\r\n"),
                     CMS_EAGAIN);
    assert_int_equal(http_range_select(&conn.req, etag, 100, &r), 206);
    assert_int_equal(r.first, 10);
    /* mismatch: whole resource */
    assert_int_equal(http_range_select(&conn.req, "\"sha256-def\"", 100, &r), 200);
    assert_int_equal(r.length, 100);
    assert_int_equal(http_range_select(&conn.req, NULL, 100, &r), 200);
    http_conn_resume(&conn);

    /* a weak validator never matches */
    assert_int_equal(feed_all("GET /img HTTP/1.1\r\nHost: h\r\nRange: bytes=10-\r\n"
                              "If-Range: W/\"sha256-abc\"\r\n\r\n"),
                     CMS_EAGAIN);
    assert_int_equal(http_range_select(&conn.req, etag, 100, &r), 200);
    http_conn_resume(&conn);

    /* a date never matches (we do not serve Last-Modified) */
    assert_int_equal(feed_all("GET /img HTTP/1.1\r\nHost: h\r\nRange: bytes=10-\r\n"
                              "If-Range: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"),
                     CMS_EAGAIN);
    assert_int_equal(http_range_select(&conn.req, etag, 100, &r), 200);
    http_conn_resume(&conn);

    /* Range is ignored on HEAD */
    assert_int_equal(feed_all("HEAD /img HTTP/1.1\r\nHost: h\r\nRange: bytes=10-\r\n\r\n"),
                     CMS_EAGAIN);
    assert_int_equal(http_range_select(&conn.req, etag, 100, &r), 200);
    http_conn_resume(&conn);
}

/* ------------------------------------------------------------------------ */
/* Percent-decoding and query                                               */

static void test_pct_decode(void **state)
{
    (void)state;
    char out[64];
    size_t n;
    assert_int_equal(http_pct_decode("MON-0001", 8, false, out, sizeof(out), &n), CMS_OK);
    assert_string_equal(out, "MON-0001");
    assert_int_equal(http_pct_decode("a%20b%C3%A9", 11, false, out, sizeof(out), &n), CMS_OK);
    assert_string_equal(out, "a b\xc3\xa9");
    assert_int_equal(n, 5);
    assert_int_equal(http_pct_decode("a+b", 3, false, out, sizeof(out), &n), CMS_OK);
    assert_string_equal(out, "a+b");
    assert_int_equal(http_pct_decode("a+b", 3, true, out, sizeof(out), &n), CMS_OK);
    assert_string_equal(out, "a b");
    /* refused */
    assert_int_equal(http_pct_decode("a%2Fb", 5, false, out, sizeof(out), &n), CMS_EPROTO);
    assert_int_equal(http_pct_decode("a%00", 4, false, out, sizeof(out), &n), CMS_EPROTO);
    assert_int_equal(http_pct_decode("a%0a", 4, true, out, sizeof(out), &n), CMS_EPROTO);
    assert_int_equal(http_pct_decode("a%2", 3, false, out, sizeof(out), &n), CMS_EPROTO);
    assert_int_equal(http_pct_decode("a%zz", 4, false, out, sizeof(out), &n), CMS_EPROTO);
    assert_int_equal(http_pct_decode("%C3", 3, false, out, sizeof(out), &n), CMS_EPROTO);
    assert_int_equal(http_pct_decode("%C0%AF", 6, false, out, sizeof(out), &n), CMS_EPROTO);
    assert_int_equal(http_pct_decode("..", 2, false, out, sizeof(out), &n), CMS_EPROTO);
    assert_int_equal(http_pct_decode("%2e%2E", 6, false, out, sizeof(out), &n), CMS_EPROTO);
    assert_int_equal(http_pct_decode(".", 1, false, out, sizeof(out), &n), CMS_EPROTO);
    assert_int_equal(http_pct_decode("...", 3, false, out, sizeof(out), &n), CMS_OK);
    assert_int_equal(http_pct_decode("abcdef", 6, false, out, 4, &n), CMS_ELIMIT);
}

static void test_query(void **state)
{
    (void)state;
    char v[64];
    size_t n;
    const char *q = "since=2026-11-28T06%3A14%3A54%2B00%3A00&device=MON-0001&flag";
    size_t ql = strlen(q);
    assert_int_equal(http_query_get(q, ql, "since", v, sizeof(v), &n), 1);
    assert_string_equal(v, "2026-11-28T06:14:54+00:00");
    assert_int_equal(http_query_get(q, ql, "device", v, sizeof(v), &n), 1);
    assert_string_equal(v, "MON-0001");
    assert_int_equal(http_query_get(q, ql, "flag", v, sizeof(v), &n), 1);
    assert_string_equal(v, "");
    assert_int_equal(http_query_get(q, ql, "limit", v, sizeof(v), &n), 0);
    assert_int_equal(http_query_get("", 0, "limit", v, sizeof(v), &n), 0);
    assert_int_equal(http_query_get("a=b+c", 5, "a", v, sizeof(v), &n), 1);
    assert_string_equal(v, "b c");
    /* strict */
    assert_int_equal(http_query_get("a=1&a=2", 7, "a", v, sizeof(v), &n), CMS_EPROTO);
    assert_int_equal(http_query_get("a=1&b=%zz", 9, "a", v, sizeof(v), &n), CMS_EPROTO);
    assert_int_equal(http_query_get("a=1&&b=2", 8, "a", v, sizeof(v), &n), CMS_EPROTO);
    assert_int_equal(http_query_get("=1", 2, "a", v, sizeof(v), &n), CMS_EPROTO);
    assert_int_equal(http_query_get("a=%00", 5, "a", v, sizeof(v), &n), CMS_EPROTO);
    assert_int_equal(http_query_get("a=123456", 8, "a", v, 4, &n), CMS_ELIMIT);

    const char *allowed[] = {"since", "device", "flag", NULL};
    assert_int_equal(http_query_check(q, ql, allowed), CMS_OK);
    assert_int_equal(http_query_check("since=1&x=2", 11, allowed), CMS_EPROTO);
    assert_int_equal(http_query_check("since=1&since=2", 15, allowed), CMS_EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_simple_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_byte_by_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_pipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_async, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunked_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversize_header_431, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_many_headers_431, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_target_414, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversize_body_413, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversize_chunked_413, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_400, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_method_400, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_host_400, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cl_and_te_400, setup, teardown),
        cmocka_unit_test_setup_teardown(test_space_in_header_name_400, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http2_version_505, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keep_alive_variants, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_lookup_case_insensitive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expect_continue_head_cb, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_absolute_form_and_encoded_path, setup, teardown),
        cmocka_unit_test(test_response_head),
        cmocka_unit_test(test_date_format),
        cmocka_unit_test(test_json_error_parses_back),
        cmocka_unit_test(test_json_response),
        cmocka_unit_test(test_range_cases),
        cmocka_unit_test(test_range_response_heads),
        cmocka_unit_test_setup_teardown(test_if_range, setup, teardown),
        cmocka_unit_test(test_pct_decode),
        cmocka_unit_test(test_query),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
