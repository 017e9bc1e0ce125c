/*
 * https.h - the HTTPS service: one listener for EST enrollment, firmware,
 * the operator API, health and metrics (svc layer; net through net.h only).
 *
 * TLS asks for a client certificate but does not require one (EST bootstrap
 * has none); a certificate that is sent must verify against the device CA or
 * the operator CA. The peer is then classified (peer.h decides, from the TLS
 * layer's peer record):
 *   - HTTPS_PEER_DEVICE:   issued directly by the device CA, CN = device
 *                          serial; the device must be registered and active
 *                          (checked on every connection, resumed sessions
 *                          included);
 *   - HTTPS_PEER_OPERATOR: issued directly by an operator CA, CN = operator
 *                          name, role from the certificate's OU (admin,
 *                          operator, viewer);
 *   - HTTPS_PEER_NONE:     no certificate.
 * Any other certificate is refused (tls_refused).
 * The connection's identity (net_conn_identity) is the serial for a device
 * and "operator:<CN>" for an operator, so revocation can find devices.
 * Each route says which peer kind and which minimum role it needs; the
 * router answers 401/403 with a JSON body otherwise, and audits it (see
 * https_route.refused). Requests on a
 * connection are answered one at a time, in order (pipelining-safe).
 *
 * Thread: one https_ctx per worker loop.
 */
#ifndef CMS_HTTPS_H
#define CMS_HTTPS_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "http.h"
#include "net.h"
#include "peer.h"
#include "store.h"

enum https_peer_kind { HTTPS_PEER_NONE = 0, HTTPS_PEER_DEVICE, HTTPS_PEER_OPERATOR };
/* Ordered: a route's min_role admits every role at or above it. A scraper (OU
 * "scraper") may read GET /metrics and nothing else (every other operator
 * route needs viewer or more). */
enum https_role {
    HTTPS_ROLE_NONE = 0,
    HTTPS_ROLE_SCRAPER,
    HTTPS_ROLE_VIEWER,
    HTTPS_ROLE_OPERATOR,
    HTTPS_ROLE_ADMIN
};

typedef struct https_ctx https_ctx;
typedef struct https_req https_req;

/*
 * A route handler. Returns CMS_OK when it already answered with one of the
 * https_reply_* functions, or CMS_EAGAIN when it will answer later (exactly
 * once, e.g. from a store callback). While an answer is pending the
 * connection reads nothing more.
 */
typedef int (*https_handler)(https_req *r);

typedef struct https_route {
    const char *method;  /* "GET", "POST" */
    const char *pattern; /* "/api/v1/devices/:serial/revoke": ":name" matches one segment */
    https_handler fn;
    enum https_peer_kind peer; /* required peer kind; HTTPS_PEER_NONE = anyone */
    enum https_role min_role;  /* for HTTPS_PEER_OPERATOR routes */
    /*
     * Large uploads (firmware import): the body may be up to
     * cfg.max_upload_bytes instead of cfg.max_body_bytes. Only honoured on
     * HTTPS_PEER_OPERATOR routes. The head of such a request is checked
     * before any body byte is buffered: peer kind and role (401/403), a
     * Content-Length (411 without one) within the limit (413); then
     * "Expect: 100-continue" is answered. Bodies of every other route stay
     * within max_body_bytes (413 from Content-Length, before buffering).
     */
    bool upload;
    /*
     * The audit event of a refusal of this route's requests made before its
     * handler runs, by the HTTP layer or the router: no or the wrong kind of
     * certificate (401), no Content-Length on an upload (411), a body over
     * the limit (413, from the Content-Length or while a chunked body
     * arrives), a malformed head or body (400, 417). Exactly one audit row
     * per refusal; a role below min_role is "operator_forbidden" on every
     * route (403). A static string, e.g. "est_refused" (the event the
     * route's handler uses for its own refusals) or "http_refused".
     * docs/operator-api.md lists every route's.
     */
    const char *refused;
} https_route;

#define HTTPS_MAX_PARAMS 4

struct https_req {
    https_ctx *ctx;
    net_conn *conn;           /* borrowed; may close while the answer is pending */
    const http_request *http; /* borrowed until the answer */
    enum https_peer_kind peer;
    enum https_role role;
    const char *peer_cn;      /* "" when no certificate */
    const char *peer_addr;
    int64_t device_id;        /* HTTPS_PEER_DEVICE: the registry id */
    size_t nparams;
    char params[HTTPS_MAX_PARAMS][128]; /* percent-decoded ":name" segments, in order */
    void *user;               /* for the handler */
};

typedef struct https_config {
    unsigned max_header_bytes, max_body_bytes;
    unsigned max_output_bytes;
    unsigned max_upload_bytes; /* body limit of "upload" routes; 0 = max_body_bytes */
    unsigned request_timeout_ms; /* first byte of a request -> complete; 0 = none */
} https_config;

/* Service hooks shared by the handlers (filled by cmsd). */
struct https_ctx {
    peer_policy peer;        /* first (peer.h): who may connect, refusals */
    store_t *store;          /* borrowed */
    net_server *server;      /* borrowed */
    https_config cfg;
    const https_route *routes; /* borrowed, NULL-method terminated */
    void *svc;               /* borrowed: the services' shared state (enrollment, ...) */
};

/* The protocol to pass to net_listen with an https_ctx as proto_ctx. */
extern const net_proto https_proto;

/*
 * Initialises ctx. store, server, routes and svc are borrowed and must
 * outlive it; cfg is copied. ctx holds nothing to free. The issuing CAs
 * that classify peers are the listener's TLS context's (tls_server_config).
 */
void https_ctx_init(https_ctx *ctx, store_t *store, net_server *server, const https_config *cfg,
                    const https_route *routes, void *svc);

/*
 * Answers r. Each takes over nothing the caller owns except where noted; all
 * may be called after the connection closed (they then only release r).
 * Exactly one reply per request.
 */
void https_reply_json(https_req *r, int status, json_t *body /* stolen */);
void https_reply_error(https_req *r, int status, const char *error, const char *detail);
void https_reply(https_req *r, int status, const char *content_type, const void *body,
                 size_t len, const http_field *extra, size_t n_extra);

/*
 * Streaming answers (large downloads with memory that does not grow with
 * the body). The handler returns CMS_EAGAIN, then:
 *   https_stream_begin(r, head, len, on_writable, ctx): head is a complete
 *       HTTP head (e.g. from http_range_response_start), sent at once;
 *   on_writable(r, ctx) runs whenever the unsent output fell to
 *       HTTPS_STREAM_LOW_WATER or less (and once right after begin), and
 *       also once when the connection closes: the producer then sees
 *       https_stream_write() return CMS_ECLOSED;
 *   https_stream_write(r, data, len): CMS_OK, or CMS_ECLOSED (stop producing
 *       and call https_stream_end);
 *   https_stream_pending(r): bytes not yet handed to the kernel. At or
 *       under HTTPS_STREAM_LOW_WATER no on_writable may follow: the producer
 *       then goes on by itself (its next asynchronous read); otherwise it
 *       waits for on_writable. Keep pending under ~512 KiB;
 *   https_stream_end(r, ok): exactly once; ok = false (body cut short, e.g.
 *       a hash mismatch in storage) closes the connection so the client sees
 *       a truncated body, never a wrong one.
 * Between begin and end nothing else is read from the connection.
 */
#define HTTPS_STREAM_LOW_WATER (128u * 1024)
typedef void (*https_stream_cb)(https_req *r, void *ctx);
void https_stream_begin(https_req *r, const char *head, size_t len, https_stream_cb on_writable,
                        void *ctx);
int https_stream_write(https_req *r, const void *data, size_t len);
size_t https_stream_pending(const https_req *r);
void https_stream_end(https_req *r, bool ok);

/* Adds an audit row naming r's peer as actor (event e.g. "device_revoked"). detail stolen. */
void https_audit(https_req *r, const char *event, const char *device, json_t *detail);

#endif
