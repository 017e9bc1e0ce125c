/*
 * net_plain.h - a loopback-only, plaintext HTTP/1.1 listener for a local
 * scraper (metrics_listen; off by default). Everything else cmsd serves is
 * behind mutual TLS; this one exists so that a Prometheus on the same host can
 * read /metrics, /healthz and /readyz without a client certificate, and it
 * refuses to bind anything but a loopback address (127.0.0.0/8, ::1).
 *
 * One request per connection (the answer says Connection: close): GET or
 * HEAD, no body, request line and headers at most NET_PLAIN_MAX_REQUEST
 * bytes, received within NET_PLAIN_TIMEOUT_MS, answered within as long
 * again; at most NET_PLAIN_MAX_CONNS connections at once (more are closed at
 * accept). Malformed requests get 400, other methods 405, oversized 431.
 * The handler decides every answer; it runs on the loop's thread and must
 * not block.
 *
 * Thread: the loop's thread.
 */
#ifndef CMS_NET_PLAIN_H
#define CMS_NET_PLAIN_H

#include <stddef.h>
#include <uv.h>

#define NET_PLAIN_MAX_REQUEST 8192
#define NET_PLAIN_TIMEOUT_MS 10000
#define NET_PLAIN_MAX_CONNS 16

typedef struct net_plain net_plain;

/* What the handler fills in. body: malloc()ed, net_plain takes ownership
 * (NULL with len 0 for none); content_type: static. */
typedef struct net_plain_reply {
    int status;
    const char *content_type;
    char *body;
    size_t len;
} net_plain_reply;

/*
 * Answers a request. path is the request target up to '?' (borrowed for the
 * call), e.g. "/metrics"; method is "GET" or "HEAD" (for HEAD the body is
 * measured and not sent). ctx as given to net_plain_listen.
 */
typedef void (*net_plain_handler)(void *ctx, const char *method, const char *path,
                                  net_plain_reply *reply);

/*
 * Listens on addr ("127.0.0.1:9464", "[::1]:9464") on loop (borrowed).
 * Returns the listener, or NULL with a reason in err (cap bytes): not a
 * loopback address, malformed, bind/listen failure, out of memory.
 */
net_plain *net_plain_listen(uv_loop_t *loop, const char *addr, net_plain_handler handler,
                            void *ctx, char *err, size_t cap);

/*
 * Stops listening, closes every connection, frees p once libuv closed all
 * handles, then calls cb(cb_ctx) (cb may be NULL). p must not be used after.
 */
void net_plain_close(net_plain *p, void (*cb)(void *cb_ctx), void *cb_ctx);

/*
 * Whether addr ("host:port", "[v6]:port") names a loopback address: 1, 0,
 * or CMS_EINVAL with a reason in err when it is malformed.
 */
int net_plain_is_loopback(const char *addr, char *err, size_t cap);

#endif
