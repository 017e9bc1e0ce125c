/*
 * https.c - HTTPS sessions: peer classification, routing, one request at a
 * time per connection, replies. Handlers live in their own files.
 */
#include <stdlib.h>
#include <string.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "console.h"
#include "https.h"
#include "log.h"
#include "peer.h"
#include "svc.h"
#include "svc_int.h"

/* peer.c finds the policy at the start of the listener's proto_ctx. */
_Static_assert(offsetof(https_ctx, peer) == 0, "peer_policy must be https_ctx's first member");

typedef struct session {
    http_conn http;
    https_req req;        /* the request being answered */
    bool answered;        /* the current request has its answer */
    bool request_deadline_set;
    bool async;           /* the handler deferred: the answer comes from a callback */
    bool authorized;      /* peer classified and (device) checked */
    enum https_peer_kind peer;
    enum https_role role;
    int64_t device_id;
    const char *cn;       /* the certificate's CN, "" without one (the peer record's) */
    char identity[80];    /* "operator:<cn>" (net_conn_set_identity borrows it) */
    bool streaming;       /* between https_stream_begin and https_stream_end */
    https_stream_cb on_writable;
    void *stream_ctx;
    char *kept;           /* plaintext not consumed while an answer was pending */
    size_t kept_len;
} session;

/* ---- replies --------------------------------------------------------------- */

static int feed(net_conn *c, const char *data, size_t len);

/* cmsd_http_responses_total by status class. */
static void count_status(int status)
{
    if (status >= 200 && status < 600 && status / 100 != 1)
        metrics_add(CM_HTTP_RESPONSES, (unsigned)(status / 100 - 2), 1);
}

/* Sends out (if the connection is open) and ends the request. */
static void finish(https_req *r, http_buf *out)
{
    net_conn *c = r->conn;
    session *s = net_conn_session(c);
    bool open = net_conn_state(c) == NET_ACTIVE;
    bool last = open && !r->http->keep_alive; /* r->http is freed once closed */
    if (open && out->len)
        net_conn_write(c, out->data, out->len);
    http_buf_free(out);
    s->answered = true;
    if (!s->async) { /* synchronous: the feed loop goes on */
        if (open && last)
            net_conn_close(c, NULL);
        return;
    }
    s->async = false;
    if (open)
        http_conn_resume(&s->http);
    if (open && last) {
        net_conn_close(c, NULL);
    } else if (open) {
        char *kept = s->kept;
        size_t kept_len = s->kept_len;
        s->kept = NULL;
        s->kept_len = 0;
        if (kept_len == 0 || feed(c, kept, kept_len) == CMS_OK)
            net_conn_resume(c);
        else if (!s->async)
            net_conn_close(c, NULL);
        free(kept);
    }
    net_conn_unref(c);
}

/* Once the connection closed, r->http (owned by the http_conn) is gone. */
static bool req_open(const https_req *r)
{
    return net_conn_state(r->conn) == NET_ACTIVE;
}

/* Ends a request whose connection closed while its answer was pending. */
static void finish_closed(https_req *r)
{
    http_buf none;
    http_buf_init(&none, 0);
    finish(r, &none);
}

static unsigned resp_flags(const https_req *r)
{
    return r->http->keep_alive ? HTTP_RESP_KEEP_ALIVE : 0;
}

void https_reply(https_req *r, int status, const char *content_type, const void *body, size_t len,
                 const http_field *extra, size_t n_extra)
{
    if (!req_open(r)) {
        finish_closed(r);
        return;
    }
    http_buf out;
    count_status(status);
    http_buf_init(&out, len + 4096);
    if (http_response_start(&out, status, NULL, content_type, len, resp_flags(r) | HTTP_RESP_NO_STORE,
                            extra, n_extra) == CMS_OK &&
        r->http->method != HTTP_HEAD)
        http_buf_append(&out, body, len);
    finish(r, &out);
}

void https_reply_json(https_req *r, int status, json_t *body)
{
    if (!req_open(r)) {
        json_decref(body);
        finish_closed(r);
        return;
    }
    http_buf out;
    http_buf_init(&out, r->ctx->cfg.max_output_bytes);
    if (!body || http_json_response(&out, status, body, resp_flags(r)) != CMS_OK) {
        http_buf_reset(&out);
        http_json_error(&out, 500, "internal_error", "cannot encode the answer", resp_flags(r),
                        NULL, 0);
        status = 500;
    }
    count_status(status);
    json_decref(body);
    finish(r, &out);
}

void https_reply_error(https_req *r, int status, const char *error, const char *detail)
{
    if (!req_open(r)) {
        finish_closed(r);
        return;
    }
    http_buf out;
    count_status(status);
    http_buf_init(&out, 8192);
    log_info("http_error", net_conn_identity(r->conn), r->peer_addr, "%s %s -> %d %s: %s",
             r->http->method_name, r->http->path, status, error, detail ? detail : "");
    http_json_error(&out, status, error, detail, resp_flags(r), NULL, 0);
    finish(r, &out);
}

void https_stream_begin(https_req *r, const char *head, size_t len, https_stream_cb on_writable,
                        void *ctx)
{
    session *s = net_conn_session(r->conn);
    s->streaming = true;
    s->on_writable = on_writable;
    s->stream_ctx = ctx;
    if (len > 12 && memcmp(head, "HTTP/1.", 7) == 0)
        count_status(atoi(head + 9));
    if (net_conn_state(r->conn) == NET_ACTIVE)
        net_conn_write(r->conn, head, len);
    on_writable(r, ctx);
}

int https_stream_write(https_req *r, const void *data, size_t len)
{
    if (net_conn_state(r->conn) != NET_ACTIVE)
        return CMS_ECLOSED;
    return net_conn_write(r->conn, data, len) == CMS_OK ? CMS_OK : CMS_ECLOSED;
}

size_t https_stream_pending(const https_req *r)
{
    return net_conn_output_pending(r->conn);
}

void https_stream_end(https_req *r, bool ok)
{
    session *s = net_conn_session(r->conn);
    s->streaming = false;
    s->on_writable = NULL;
    if (!ok && net_conn_state(r->conn) == NET_ACTIVE)
        net_conn_close(r->conn, "stream aborted");
    finish_closed(r);
}

/* The output drained: let a streaming producer go on. */
static void on_drain(net_conn *c)
{
    session *s = net_conn_session(c);
    if (s->streaming && s->on_writable)
        s->on_writable(&s->req, s->stream_ctx);
}

void https_audit(https_req *r, const char *event, const char *device, json_t *detail)
{
    char actor[96];
    svc_audit(r->ctx->store, event, svc__actor(r->peer, r->peer_cn, actor, sizeof(actor)), device,
              r->peer_addr, detail);
}

/*
 * The one audit row of a refusal made before a handler runs (https.h
 * "refused"): a role below the route's is operator_forbidden, anything else
 * the route's event, or http_refused when no route is known (req NULL: the
 * head did not parse; or no route has this method and path). Detail: status,
 * error, reason, and the method and path when known.
 */
static void audit_refusal(net_conn *c, const https_route *rt, const http_request *req,
                          int status, const char *error, const char *detail)
{
    session *s = net_conn_session(c);
    https_ctx *ctx = net_conn_proto_ctx(c);
    char actor[96];
    const char *event = status == 403 && strcmp(error, "forbidden") == 0 ? "operator_forbidden"
                        : status == 403 && strcmp(error, "csrf_refused") == 0 ? "csrf_refused"
                        : rt && rt->refused                                   ? rt->refused
                                                                              : "http_refused";
    json_t *d = json_pack("{s:i, s:s, s:s}", "status", status, "error", error, "reason",
                          detail ? detail : "");
    if (d && req) {
        json_object_set_new(d, "method", json_string(req->method_name));
        json_object_set_new(d, "path", json_stringn(req->path, req->path_len));
    }
    svc_audit(ctx->store, event, svc__actor(s->peer, s->cn, actor, sizeof(actor)),
              s->peer == HTTPS_PEER_DEVICE ? s->cn : NULL, net_conn_peer(c), d);
}

/* ---- routing --------------------------------------------------------------- */

/* Matches path against pattern, filling r->params. */
static bool route_match(const char *pattern, const char *path, size_t path_len, https_req *r)
{
    const char *p = pattern, *q = path, *end = path + path_len;
    r->nparams = 0;
    while (*p && q < end) {
        if (*p == ':') {
            const char *seg_end = memchr(q, '/', (size_t)(end - q));
            if (!seg_end)
                seg_end = end;
            if (seg_end == q || r->nparams >= HTTPS_MAX_PARAMS)
                return false;
            size_t n;
            if (http_pct_decode(q, (size_t)(seg_end - q), false, r->params[r->nparams],
                                sizeof(r->params[0]), &n) != CMS_OK ||
                n != strlen(r->params[r->nparams]))
                return false;
            r->nparams++;
            q = seg_end;
            while (*p && *p != '/')
                p++;
            continue;
        }
        if (*p != *q)
            return false;
        p++, q++;
    }
    return *p == '\0' && q == end;
}

/* The route for req's method (HEAD as GET) and path, or NULL; fills scratch->params. */
static const https_route *find_route(const https_ctx *ctx, const http_request *req,
                                     https_req *scratch)
{
    for (const https_route *rt = ctx->routes; rt && rt->method; rt++)
        if (route_match(rt->pattern, req->path, req->path_len, scratch) &&
            (strcmp(rt->method, req->method_name) == 0 ||
             (req->method == HTTP_HEAD && strcmp(rt->method, "GET") == 0)))
            return rt;
    return NULL;
}

/* Answers a refusal of the router (the request is complete) and audits it. */
static void route_refuse(https_req *r, const https_route *rt, int status, const char *error,
                         const char *detail)
{
    audit_refusal(r->conn, rt, r->http, status, error, detail);
    https_reply_error(r, status, error, detail);
}

static int route(net_conn *c, const http_request *req)
{
    session *s = net_conn_session(c);
    https_ctx *ctx = net_conn_proto_ctx(c);
    https_req *r = &s->req;
    memset(r, 0, sizeof(*r));
    r->ctx = ctx;
    r->conn = c;
    r->http = req;
    r->peer = s->peer;
    r->role = s->role;
    r->peer_cn = s->cn;
    r->peer_addr = net_conn_peer(c);
    r->device_id = s->device_id;

    const https_route *match = NULL;
    bool path_known = false;
    for (const https_route *rt = ctx->routes; rt && rt->method; rt++) {
        if (!route_match(rt->pattern, req->path, req->path_len, r))
            continue;
        path_known = true;
        if (strcmp(rt->method, req->method_name) == 0 ||
            (req->method == HTTP_HEAD && strcmp(rt->method, "GET") == 0)) {
            match = rt;
            break;
        }
    }
    if (!match) {
        if (path_known)
            https_reply_error(r, 405, "method_not_allowed", req->method_name);
        else
            https_reply_error(r, 404, "not_found", "no such resource");
        return CMS_OK;
    }
    if (match->peer == HTTPS_PEER_OPERATOR) {
        if (s->peer != HTTPS_PEER_OPERATOR) {
            route_refuse(r, match, 401, "unauthenticated",
                         "an operator certificate is required for this resource");
            return CMS_OK;
        }
        if (s->role < match->min_role) {
            static const char *const names[] = {"none", "scraper", "viewer", "operator",
                                                "admin"};
            char why[128];
            snprintf(why, sizeof(why), "role '%s' may not do this (needs '%s')", names[s->role],
                     names[match->min_role]);
            route_refuse(r, match, 403, "forbidden", why);
            return CMS_OK;
        }
        /* The browser sends the certificate on its own (ambient authority): a
         * state change from a browser must prove it comes from the console
         * (console.h, docs/operator-api.md "CSRF"). Decided here, once. */
        char why[160];
        if (req->method != HTTP_GET && req->method != HTTP_HEAD &&
            !console_csrf_ok(((const svc_state *)ctx->svc)->console, r, why, sizeof(why))) {
            route_refuse(r, match, 403, "csrf_refused", why);
            return CMS_OK;
        }
    } else if (match->peer == HTTPS_PEER_DEVICE && s->peer != HTTPS_PEER_DEVICE) {
        route_refuse(r, match, 401, "unauthenticated",
                     "a device certificate is required for this resource");
        return CMS_OK;
    }
    if (!match->upload && req->body_len > ctx->cfg.max_body_bytes) {
        /* A chunked body (no Content-Length to refuse early) of a peer whose
         * connection allows uploads: only upload routes take that much. */
        route_refuse(r, match, 413, "payload_too_large", "request body too large");
        return CMS_OK;
    }
    s->answered = false;
    s->async = false;
    int rc = match->fn(r);
    if (s->answered)
        return CMS_OK;
    if (rc == CMS_EAGAIN) {
        s->async = true;
        net_conn_ref(c); /* released in finish() */
        return CMS_EAGAIN;
    }
    /* A handler that neither answered nor deferred: a bug. */
    log_error("bug", s->cn, net_conn_peer(c), "handler for %s did not answer", req->path);
    https_reply_error(r, 500, "internal_error", "no answer");
    return CMS_OK;
}

/* Refuses a request from its head (inside the parser): audit + answer + close. */
static int head_refuse(net_conn *c, const https_route *rt, const http_request *req, int status,
                       const char *error, const char *detail)
{
    session *s = net_conn_session(c);
    http_buf out;
    count_status(status);
    audit_refusal(c, rt, req, status, error, detail);
    http_buf_init(&out, 8192);
    http_json_error(&out, status, error, detail, 0, NULL, 0);
    net_conn_write(c, out.data, out.len);
    http_buf_free(&out);
    log_info("http_error", s->cn, net_conn_peer(c), "%s %s -> %d %s: %s", req->method_name,
             req->path, status, error, detail);
    return status == 413 ? CMS_ELIMIT : CMS_EPERM;
}

/*
 * The header section is complete, no body byte is buffered yet: enforce the
 * body limit of the route (uploads) and who may send one, then answer
 * "Expect: 100-continue".
 */
static int on_head(void *ctx, const http_request *req)
{
    net_conn *c = ctx;
    session *s = net_conn_session(c);
    https_ctx *hc = net_conn_proto_ctx(c);
    https_req scratch;
    if (net_conn_state(c) != NET_ACTIVE)
        return CMS_ECLOSED;
    const https_route *match = find_route(hc, req, &scratch);
    unsigned limit = hc->cfg.max_body_bytes;
    if (match && match->upload && match->peer == HTTPS_PEER_OPERATOR) {
        if (s->peer != HTTPS_PEER_OPERATOR)
            return head_refuse(c, match, req, 401, "unauthenticated",
                               "an operator certificate is required for this resource");
        if (s->role < match->min_role)
            return head_refuse(c, match, req, 403, "forbidden", "this role may not upload here");
        if (req->chunked || !http_request_header(req, "content-length"))
            return head_refuse(c, match, req, 411, "length_required",
                               "uploads need a Content-Length (no chunked body)");
        if (hc->cfg.max_upload_bytes > limit)
            limit = hc->cfg.max_upload_bytes;
    }
    if (req->content_length > limit) {
        char why[96];
        snprintf(why, sizeof(why), "request body too large (Content-Length %llu, limit %u)",
                 (unsigned long long)req->content_length, limit);
        return head_refuse(c, match, req, 413, "payload_too_large", why);
    }
    if (req->expect_continue)
        net_conn_write(c, HTTP_CONTINUE_RESPONSE, strlen(HTTP_CONTINUE_RESPONSE));
    return 0;
}

static int on_request(void *ctx, const http_request *req)
{
    net_conn *c = ctx;
    if (net_conn_state(c) != NET_ACTIVE)
        return CMS_ECLOSED;
    return route(c, req);
}

/* Feeds plaintext; keeps what is not consumed while an answer is pending. */
/* A request must arrive whole within request_timeout_ms of its first byte
 * (slow senders must not hold a connection by trickling bytes). */
static void update_request_deadline(net_conn *c, session *s)
{
    https_ctx *ctx = net_conn_proto_ctx(c);
    bool in_request = http_conn_in_request(&s->http);
    if (in_request && !s->request_deadline_set && ctx->cfg.request_timeout_ms) {
        net_conn_set_deadline(c, uv_now(net_conn_loop(c)) + ctx->cfg.request_timeout_ms,
                              "request not complete within http_request_timeout_ms");
        s->request_deadline_set = true;
    } else if (!in_request && s->request_deadline_set) {
        net_conn_set_deadline(c, 0, NULL);
        s->request_deadline_set = false;
    }
}

static int feed(net_conn *c, const char *data, size_t len)
{
    session *s = net_conn_session(c);
    size_t used = 0;
    int rc = http_conn_feed(&s->http, data, len, &used);
    if (rc == CMS_OK || rc == CMS_EAGAIN)
        update_request_deadline(c, s);
    if (rc == CMS_OK)
        return CMS_OK;
    if (rc == CMS_EAGAIN) {
        if (used < len) {
            char *k = realloc(s->kept, s->kept_len + (len - used));
            if (!k)
                return CMS_ENOMEM;
            memcpy(k + s->kept_len, data + used, len - used);
            s->kept = k;
            s->kept_len += len - used;
        }
        net_conn_pause(c);
        return CMS_OK;
    }
    if (rc == CMS_ECLOSED)
        return CMS_ECLOSED;
    int status = http_conn_error_status(&s->http);
    if (status >= 400) {
        http_buf out;
        http_buf_init(&out, 8192);
        const char *err = status == 413 ? "payload_too_large"
                        : status == 431 ? "headers_too_large"
                        : status == 414 ? "uri_too_long" : "bad_request";
        http_json_error(&out, status, err, http_conn_error_detail(&s->http), 0, NULL, 0);
        net_conn_write(c, out.data, out.len);
        http_buf_free(&out);
        log_info("http_error", net_conn_identity(c), net_conn_peer(c), "%d %s: %s", status, err,
                 http_conn_error_detail(&s->http));
        /* The route's event when the head had parsed (a body over the limit, a
         * malformed chunk, a bad Host or Expect), http_refused otherwise. */
        https_req scratch;
        const http_request *req = http_conn_failed_request(&s->http);
        audit_refusal(c, req ? find_route(net_conn_proto_ctx(c), req, &scratch) : NULL, req,
                      status, err, http_conn_error_detail(&s->http));
    }
    return rc;
}

static int on_data(net_conn *c, const char *data, size_t len)
{
    session *s = net_conn_session(c);
    if (s->async) { /* paused, but bytes already decrypted: keep them */
        char *k = realloc(s->kept, s->kept_len + len);
        if (!k)
            return CMS_ENOMEM;
        memcpy(k + s->kept_len, data, len);
        s->kept = k;
        s->kept_len += len;
        return CMS_OK;
    }
    return feed(c, data, len);
}

/* ---- peer classification (peer.c decides) ------------------------------------- */

/* The registry allowed the device (peer.c). */
static void on_device(net_conn *c, const store_device *dev)
{
    session *s = net_conn_session(c);
    s->device_id = dev->id;
    net_conn_activate(c);
}

static enum https_role role_of(enum tls_role r)
{
    switch (r) {
    case TLS_ROLE_ADMIN:
        return HTTPS_ROLE_ADMIN;
    case TLS_ROLE_OPERATOR:
        return HTTPS_ROLE_OPERATOR;
    case TLS_ROLE_VIEWER:
        return HTTPS_ROLE_VIEWER;
    case TLS_ROLE_SCRAPER:
        return HTTPS_ROLE_SCRAPER;
    default:
        return HTTPS_ROLE_NONE;
    }
}

static int on_handshake(net_conn *c)
{
    session *s = net_conn_session(c);
    https_ctx *ctx = net_conn_proto_ctx(c);
    const tls_peer *p = net_conn_peer_record(c);
    http_limits lim;
    http_limits_default(&lim);
    lim.max_header_bytes = ctx->cfg.max_header_bytes;
    lim.max_body_bytes = ctx->cfg.max_body_bytes;
    s->cn = p->cn;
    enum peer_verdict v;
    /* Operators may upload (per-route limit enforced in on_head); a certificate
     * refused below is closed before anything is read. */
    if (p->issuer == TLS_ISSUER_OPERATOR_CA && ctx->cfg.max_upload_bytes > lim.max_body_bytes)
        lim.max_body_bytes = ctx->cfg.max_upload_bytes;
    if (http_conn_init(&s->http, &lim, on_request, c) != CMS_OK)
        return CMS_EINTERNAL;
    http_conn_set_head_cb(&s->http, on_head);
    int rc = peer_authorize(c, &ctx->peer, &v);
    if (rc == CMS_EAGAIN)
        s->peer = HTTPS_PEER_DEVICE; /* on_device activates c */
    if (rc != CMS_OK)
        return rc;
    if (v == PEER_OPERATOR) {
        s->peer = HTTPS_PEER_OPERATOR;
        s->role = role_of(p->role);
        snprintf(s->identity, sizeof(s->identity), "operator:%s", s->cn);
        net_conn_set_identity(c, s->identity);
    } /* else anonymous: only public routes and EST bootstrap */
    return CMS_OK;
}

static void on_close(net_conn *c)
{
    session *s = net_conn_session(c);
    if (s->streaming && s->on_writable) /* the producer learns it must stop */
        s->on_writable(&s->req, s->stream_ctx);
    http_conn_free(&s->http);
    free(s->kept);
    s->kept = NULL;
    s->kept_len = 0;
}

const net_proto https_proto = {
    .name = "https",
    .metrics_listener = CM_LISTENER_HTTPS,
    .session_size = sizeof(session),
    .on_handshake = on_handshake,
    .on_data = on_data,
    .on_close = on_close,
    .on_tls_refused = peer_on_tls_refused,
    .on_drain = on_drain,
    .low_water = HTTPS_STREAM_LOW_WATER,
};

/* ---- context ------------------------------------------------------------------ */

void https_ctx_init(https_ctx *ctx, store_t *store, net_server *server, const https_config *cfg,
                    const https_route *routes, void *svc)
{
    memset(ctx, 0, sizeof(*ctx));
    /* Devices (registered, active), operators, and peers without a certificate. */
    ctx->peer = (peer_policy){.store = store,
                              .listener = "https",
                              .anonymous = true,
                              .operators = true,
                              .on_device = on_device};
    ctx->store = store;
    ctx->server = server;
    ctx->cfg = *cfg;
    ctx->routes = routes;
    ctx->svc = svc;
}
