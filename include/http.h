/*
 * http.h - HTTP/1.1 protocol module (server side): request push parser,
 * response builder, JSON errors, Range/ETag helpers, percent-decoding and
 * query parameters.
 *
 * Knows nothing of sockets, TLS or SQL. Parsing is done by libhttp-parser
 * (v2.9, Debian libhttp-parser-dev); this module only buffers what the parser
 * hands it, enforces limits, and turns the result into http_request values.
 *
 * ---------------------------------------------------------------------------
 * Pipelining and asynchronous answers
 * ---------------------------------------------------------------------------
 * http_conn_feed() stops the parser at the end of every request (it pauses
 * libhttp-parser in on_message_complete) and only then calls on_request,
 * outside libhttp-parser. on_request returns:
 *
 *   0           the request was answered synchronously (its response is
 *               already queued); parsing goes on with the next pipelined
 *               request in the same feed call, in order.
 *   CMS_EAGAIN  the answer is asynchronous (a database query). Feed returns
 *               CMS_EAGAIN at once with *consumed = the bytes up to and
 *               including the end of that request. The connection is now in
 *               HTTP_CONN_WAITING: every feed returns CMS_EAGAIN and consumes
 *               nothing, so no later pipelined request's on_request can run
 *               before this one is answered. The http_request (and every
 *               pointer in it) stays valid until http_conn_resume().
 *               The caller keeps the unconsumed bytes, should stop reading
 *               (uv_read_stop) for back-pressure, queues the response when the
 *               query completes, then calls http_conn_resume() and feeds the
 *               kept bytes again (then resumes reading).
 *   other < 0   feed stops and returns that code; the connection is failed
 *               (e.g. the owner decided to close).
 *
 * Responses are therefore produced strictly in request order, which is what
 * HTTP/1.1 pipelining requires.
 *
 * When a delivered request is the last one of the connection (keep_alive is
 * false: "Connection: close", HTTP/1.0 without keep-alive, or an Upgrade/
 * CONNECT request, which this module does not support), the connection moves
 * to HTTP_CONN_DONE after the answer (at once for a synchronous answer, at
 * http_conn_resume() for an asynchronous one). Bytes after that request are
 * not consumed; feed returns CMS_ECLOSED from then on. The caller sends the
 * answer with "Connection: close" and closes.
 *
 * ---------------------------------------------------------------------------
 * Errors
 * ---------------------------------------------------------------------------
 * A malformed request gives CMS_EPROTO, a limit gives CMS_ELIMIT. In both
 * cases http_conn_error_status() tells which status to answer (400, 413,
 * 414, 417, 431, 505) and http_conn_error_detail() a short static-or-owned
 * description (for a parse error, libhttp-parser's http_errno description).
 * The connection is then HTTP_CONN_FAILED: answer with http_json_error(...,
 * no keep-alive) and close. A body larger than max_body_bytes is refused from
 * its Content-Length, before any body byte is buffered; a chunked body is
 * refused as soon as the bytes received pass the limit.
 *
 * Thread: an http_conn belongs to its connection's loop thread. The
 * stateless helpers (response builder, range, decoding) may be called from
 * any thread.
 */
#ifndef CMS_HTTP_H
#define CMS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <http_parser.h>
#include <jansson.h>

/* ------------------------------------------------------------------------ */
/* Limits                                                                   */

#define HTTP_DEFAULT_MAX_HEADER_BYTES (16u * 1024u)
#define HTTP_DEFAULT_MAX_HEADERS 64u
#define HTTP_DEFAULT_MAX_BODY_BYTES (64u * 1024u)

typedef struct http_limits {
    /*
     * Request line + header section, counted as the bytes of the method,
     * request-target, version and each "name: value\r\n" (optional whitespace
     * around values is not counted; libhttp-parser's own 80 KiB cap on the
     * raw header section backs this up). Over it: 431 (414 when the
     * request-target alone is over it). Trailers of a chunked body count
     * against the same limit.
     */
    size_t max_header_bytes;
    size_t max_headers;    /* header fields per request; over it: 431 */
    size_t max_body_bytes; /* decoded body bytes; over it: 413 */
} http_limits;

/* Fills l with the defaults above. */
void http_limits_default(http_limits *l);

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */

typedef struct http_header {
    const char *name; /* as received (case kept), NUL-terminated */
    size_t name_len;
    const char *value; /* leading whitespace stripped by the parser, NUL-terminated */
    size_t value_len;
} http_header;

/*
 * A complete request. Every pointer is borrowed from the http_conn: valid
 * during on_request, and, if on_request returned CMS_EAGAIN, until
 * http_conn_resume(). Copy what must live longer.
 */
typedef struct http_request {
    enum http_method method;      /* libhttp-parser's enum: HTTP_GET, HTTP_POST, ... */
    const char *method_name;      /* "GET"; static string */
    unsigned short version_major; /* always 1 (other majors are refused with 505) */
    unsigned short version_minor; /* 0 or 1 */
    const char *target;           /* raw request-target as sent, NUL-terminated, not decoded */
    size_t target_len;
    const char *path; /* raw path of target (no query), NUL-terminated, not decoded */
    size_t path_len;
    const char *query; /* raw query after '?', NUL-terminated; "" when none */
    size_t query_len;
    bool has_query;       /* a '?' was present */
    bool keep_alive;      /* http_should_keep_alive(): false = answer with Connection: close */
    bool chunked;         /* the body came with Transfer-Encoding: chunked */
    bool expect_continue; /* "Expect: 100-continue" was sent (see on_head) */
    const http_header *headers; /* in order received; trailers are not included */
    size_t n_headers;
    const char *body; /* decoded body, NUL-terminated (NUL not counted); "" when none */
    size_t body_len;
    uint64_t content_length; /* declared Content-Length, 0 when absent or chunked */
} http_request;

/*
 * First header named name (ASCII case-insensitive), or NULL. The returned
 * value is NUL-terminated and borrowed like the request.
 */
const char *http_request_header(const http_request *r, const char *name);
/* Number of header fields named name (case-insensitive). */
size_t http_request_header_count(const http_request *r, const char *name);

/* ------------------------------------------------------------------------ */
/* Per-connection push parser                                               */

/*
 * Called once per complete request, in order, outside libhttp-parser.
 * req is borrowed (see http_request). Returns 0, CMS_EAGAIN or another
 * negative cms_err: see "Pipelining and asynchronous answers" above.
 */
typedef int (*http_request_cb)(void *ctx, const http_request *req);

/*
 * Optional. Called once the header section is complete and within limits,
 * before any body byte is read (so inside libhttp-parser: the callee must
 * not call http_conn_* on this connection). req has body "" / 0. Use it to
 * refuse early (authentication, route, method) or to send
 * HTTP_CONTINUE_RESPONSE when req->expect_continue. Return 0 to go on, or a
 * negative cms_err: feed then returns it and the connection is failed (the
 * caller answers and closes, since the body may still be in flight).
 */
typedef int (*http_head_cb)(void *ctx, const http_request *req);

#define HTTP_CONTINUE_RESPONSE "HTTP/1.1 100 Continue\r\n\r\n"

enum http_conn_state {
    HTTP_CONN_READING = 0, /* accepting bytes */
    HTTP_CONN_WAITING,     /* a request is delivered, its answer is pending */
    HTTP_CONN_DONE,        /* the last request (no keep-alive) was answered */
    HTTP_CONN_FAILED,      /* parse or limit error, or a callback error */
};

struct http__hdr_off; /* private */

typedef struct http_conn {
    /* All fields private; use the functions below. */
    http_parser parser;
    http_limits limits;
    enum http_conn_state state;
    http_request_cb on_request;
    http_head_cb on_head;
    void *ctx; /* borrowed; passed to the callbacks */

    char *head; /* owned: target, names, values, path, query (NUL-separated) */
    size_t head_len, head_cap;
    size_t head_bytes;          /* accounted header section bytes (see http_limits) */
    struct http__hdr_off *hoff; /* owned: offsets of headers in head */
    http_header *headers;       /* owned: pointers for delivery */
    size_t n_headers, headers_cap;
    char *body; /* owned */
    size_t body_len, body_cap;
    size_t target_len;
    int last_cb;       /* private parse state */
    bool in_message;   /* between message begin and message complete */
    bool headers_done; /* header section complete (trailers may follow) */
    bool message_done; /* on_message_complete seen, not yet delivered */
    bool last_request; /* the delivered request ends the connection */
    int cb_err;        /* error decided inside a parser callback */
    int err_status;    /* HTTP status to answer after an error, 0 if none */
    const char *err_detail;
    http_request req; /* the request being delivered */
} http_conn;

/*
 * Initialises c. limits: copied; NULL = defaults. on_request: required.
 * ctx: borrowed. Returns CMS_OK, or CMS_EINVAL if on_request is NULL or a
 * limit is 0. Allocation is lazy (first request).
 */
int http_conn_init(http_conn *c, const http_limits *limits, http_request_cb on_request, void *ctx);
/* Sets the optional header-section callback (NULL to remove). */
void http_conn_set_head_cb(http_conn *c, http_head_cb on_head);
/* Frees the buffers. c may be re-initialised afterwards. Idempotent. */
void http_conn_free(http_conn *c);

/*
 * Feeds bytes received from the peer. *consumed (required) is set to the
 * number of bytes used. Returns:
 *   CMS_OK       all bytes consumed, or the connection's last request was
 *                delivered and answered (state DONE; the rest is ignored);
 *   CMS_EAGAIN   an answer is pending (state WAITING): keep data+*consumed..
 *                and feed it again after http_conn_resume();
 *   CMS_EPROTO   malformed request (status 400; 417 for an Expect other
 *                than 100-continue; 505 for an HTTP major version not 1);
 *   CMS_ELIMIT   a limit was hit (status 413, 414 or 431);
 *   CMS_ENOMEM   allocation failed (answer 500 or just close);
 *   CMS_ECLOSED  the connection is DONE; nothing consumed;
 *   other < 0    returned by a callback.
 * After CMS_EPROTO/ELIMIT/ENOMEM/callback errors the state is FAILED and
 * every later feed returns CMS_ECLOSED. len 0 is a no-op (end of stream is
 * the caller's business: an incomplete request is simply dropped).
 */
int http_conn_feed(http_conn *c, const char *data, size_t len, size_t *consumed);

/*
 * Ends the WAITING state after the asynchronous answer has been queued.
 * Releases the request; moves to READING, or to DONE if that request was the
 * last. No-op in other states.
 */
void http_conn_resume(http_conn *c);

enum http_conn_state http_conn_get_state(const http_conn *c);
/* true while a request has started arriving but is not complete (for the
 * caller's choice between the idle and the request timeout). */
bool http_conn_in_request(const http_conn *c);
/* Bytes of memory held for the request in progress (memory accounting). */
size_t http_conn_buffered(const http_conn *c);
/* After CMS_EPROTO/CMS_ELIMIT: the status to answer (400, 413, 414, 417,
 * 431, 505); 500 after CMS_ENOMEM; 0 if none (or after a callback error). */
int http_conn_error_status(const http_conn *c);
/* Short static description of the error, or "" (never NULL). */
const char *http_conn_error_detail(const http_conn *c);
/*
 * After a failure (state FAILED): the request that failed, when its header
 * section was complete (method, path, query and headers valid; body "" / 0),
 * so the caller can tell which resource was refused (e.g. a body over the
 * limit, a malformed chunk, a refusal by on_head). NULL when the failure
 * came before the request line and headers were parsed (431, 414, a
 * malformed head) or in any other state. Borrowed from c: valid until
 * http_conn_free(). Thread: c's loop thread.
 */
const http_request *http_conn_failed_request(const http_conn *c);

/* ------------------------------------------------------------------------ */
/* Output buffer and response builder                                      */

/* A growable byte buffer with a hard limit. */
typedef struct http_buf {
    char *data; /* owned, NUL-terminated when non-NULL (NUL not counted) */
    size_t len;
    size_t cap;
    size_t max; /* len never exceeds this */
} http_buf;

/* Initialises an empty buffer that never grows past max bytes (0 = 1 MiB). */
void http_buf_init(http_buf *b, size_t max);
void http_buf_free(http_buf *b);
/* Empties the buffer, keeping its memory. */
void http_buf_reset(http_buf *b);
/* Appends. Returns CMS_OK, CMS_ELIMIT (nothing appended) or CMS_ENOMEM. */
int http_buf_append(http_buf *b, const void *data, size_t len);
int http_buf_appendf(http_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hands the bytes to the caller (free() them); b becomes empty. May return
 * NULL when empty. */
char *http_buf_release(http_buf *b, size_t *len);

/* An extra response header. name/value borrowed; must not contain CR, LF or
 * NUL (and name must be a token), else the builder returns CMS_EINVAL. */
typedef struct http_field {
    const char *name;
    const char *value;
} http_field;

#define HTTP_RESP_KEEP_ALIVE 0x1u /* "Connection: keep-alive", else "Connection: close" */
#define HTTP_RESP_NO_STORE 0x2u   /* "Cache-Control: no-store" (every API answer) */
#define HTTP_RESP_NO_LENGTH 0x4u  /* omit Content-Length (only for a body-less 304) */

/*
 * Appends a response head to out: status line, Date, Server: cmsd,
 * Content-Type (if content_type != NULL), Content-Length (content_length;
 * omitted for 1xx and 204, where no body is allowed), Connection,
 * Cache-Control: no-store (flag), X-Content-Type-Options: nosniff, the extra
 * fields, and the empty line. The caller then appends exactly
 * content_length body bytes (none for a HEAD request).
 * reason: NULL = the standard phrase. status: 100..599.
 * Returns CMS_OK, CMS_EINVAL (bad status or header text; out unchanged),
 * CMS_ELIMIT or CMS_ENOMEM (out unchanged).
 */
int http_response_start(http_buf *out, int status, const char *reason, const char *content_type,
                        uint64_t content_length, unsigned flags, const http_field *extra,
                        size_t n_extra);

/* Standard reason phrase of status ("Not Found"), or "Unknown". */
const char *http_reason(int status);

/* Formats t as an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") into out
 * (at least 30 bytes). Locale-independent. Returns out. */
char *http_date_format(char *out, size_t cap, time_t t);

/*
 * The JSON error body {"error": error, "detail": detail}, made by jansson.
 * error: short machine-readable code ("payload_too_large"); detail: human
 * text, may be NULL (""), may come from the peer: bytes that are not valid
 * UTF-8 or are control characters are replaced with '?'. Returns a malloc'd
 * NUL-terminated string (free() it), or NULL on allocation failure.
 */
char *http_json_error_body(const char *error, const char *detail);

/*
 * Appends a complete error response (head + JSON body) to out:
 * Content-Type: application/json, Cache-Control: no-store. flags as for
 * http_response_start (HTTP_RESP_NO_STORE is implied). extra/n_extra: more
 * headers (e.g. WWW-Authenticate, Content-Range), may be NULL/0.
 * Returns as http_response_start.
 */
int http_json_error(http_buf *out, int status, const char *error, const char *detail,
                    unsigned flags, const http_field *extra, size_t n_extra);

/*
 * Appends a complete JSON response with body json_dumps(body, JSON_COMPACT)
 * (body borrowed). Cache-Control: no-store is implied. Returns as
 * http_response_start, CMS_EINVAL if body cannot be encoded.
 */
int http_json_response(http_buf *out, int status, const json_t *body, unsigned flags);

/* ------------------------------------------------------------------------ */
/* Target, percent-decoding, query parameters                               */

/*
 * Strict percent-decoding of one path segment or query component.
 * in/len: raw bytes (not NUL-terminated needed). out/cap: destination, gets
 * a NUL-terminated string; *out_len (may be NULL) its length.
 * plus_is_space: true for query components (form encoding: '+' = ' ').
 * Refused with CMS_EPROTO: '%' not followed by two hex digits, a decoded NUL
 * or other control character (< 0x20, 0x7f), invalid UTF-8, and, for a path
 * segment (plus_is_space false), a decoded '/', or a segment "." or "..".
 * Raw bytes must be URL characters (http_parser already checked them).
 * CMS_ELIMIT if the result does not fit in cap (including its NUL).
 */
int http_pct_decode(const char *in, size_t len, bool plus_is_space, char *out, size_t cap,
                    size_t *out_len);

/*
 * Looks up parameter name (compared after decoding) in a raw query string
 * (without '?', e.g. req->query). The whole query is validated: pairs are
 * separated by '&', "name=value" or "name" (value ""), names non-empty,
 * components decoded with http_pct_decode(plus_is_space). Returns:
 *   1            found; the decoded value is in out (NUL-terminated), its
 *                length in *out_len (may be NULL);
 *   0            absent (out = "");
 *   CMS_EPROTO   malformed query, or name present more than once (parameter
 *                pollution is refused, not resolved);
 *   CMS_ELIMIT   the value does not fit in cap.
 */
int http_query_get(const char *query, size_t query_len, const char *name, char *out, size_t cap,
                   size_t *out_len);

/*
 * Checks that every parameter of query is one of the NULL-terminated list
 * allowed (decoded names) and appears at most once. Returns CMS_OK or
 * CMS_EPROTO (unknown, duplicated or malformed).
 */
int http_query_check(const char *query, size_t query_len, const char *const *allowed);

/* ------------------------------------------------------------------------ */
/* Downloads: Range, If-Range, ETag (server/proto/http_range.c)             */

#define HTTP_ETAG_LEN 73 /* '"' "sha256-" 64 hex '"' */
#define HTTP_ETAG_SIZE (HTTP_ETAG_LEN + 1)

/* Formats the strong ETag "\"sha256-<64 lowercase hex>\"" of a SHA-256
 * digest into out (HTTP_ETAG_SIZE bytes). Returns out. */
char *http_etag_format(char *out, const uint8_t sha256[32]);

/*
 * Strong comparison (RFC 9110 8.8.3.2) of one entity-tag (an If-Range
 * value, optional whitespace around it is ignored) with our etag: true only
 * if both are strong and identical. A weak tag (W/...) or a date never
 * matches.
 */
bool http_etag_strong_match(const char *value, const char *etag);

/* What to send for a download. */
typedef struct http_range {
    int status;      /* 200 (whole resource), 206 (one range) or 416 */
    uint64_t first;  /* first byte to send (0 for 200) */
    uint64_t length; /* bytes to send (total for 200, 0 for 416) */
    uint64_t total;  /* resource length */
} http_range;

/*
 * Evaluates a Range header value (may be NULL) against a resource of total
 * bytes. Only one "bytes=" range is served:
 *   "bytes=first-last"  -> 206 [first, min(last, total-1)]
 *   "bytes=first-"      -> 206 [first, total-1]
 *   "bytes=-suffix"     -> 206 the last min(suffix, total) bytes
 *   first >= total, suffix 0, or total 0 -> 416
 * Whitespace around the range is tolerated; the unit is case-insensitive.
 * Ignored (-> 200, whole resource, as RFC 9110 14.2 allows): no header,
 * another unit, syntax errors, last < first, and several ranges
 * ("bytes=0-1,5-6": we never build multipart/byteranges).
 * Numbers that overflow 64 bits saturate. Fills *out; returns out->status.
 */
int http_range_parse(const char *value, uint64_t total, http_range *out);

/*
 * The download decision for req: Range only for GET (RFC 9110 14.2), and
 * only if If-Range is absent or strongly matches etag (a weak tag, a date or
 * a different tag -> 200, whole resource). etag may be NULL (then any
 * If-Range means 200). Fills *out; returns out->status.
 */
int http_range_select(const http_request *req, const char *etag, uint64_t total, http_range *out);

/*
 * Appends the response head for r to out: 200 or 206 with Accept-Ranges:
 * bytes, ETag (if etag != NULL), Content-Length r->length, Content-Range for
 * 206; or, for 416, a complete JSON error response with
 * "Content-Range: bytes * /total" (without the space). content_type may be
 * NULL ("application/octet-stream"). The caller then streams
 * [r->first, r->first + r->length) for 200/206 (nothing for HEAD).
 * Returns as http_response_start.
 */
int http_range_response_start(http_buf *out, const http_range *r, const char *content_type,
                              const char *etag, unsigned flags);

#endif
