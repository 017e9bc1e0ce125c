/*
 * net.h - TCP listeners and TLS connections on a libuv loop.
 *
 * The net layer owns sockets, timers, limits and the single close path; it
 * knows nothing of HL7, HTTP or SQL. A protocol plugs in with a net_proto
 * (callbacks + per-connection state size). Life of a connection:
 *
 *   accept -> NET_HANDSHAKE --TLS done--> proto->on_handshake()
 *          -> NET_AUTHORIZING (until the protocol calls net_conn_activate)
 *          -> NET_ACTIVE (plaintext goes to proto->on_data)
 *          -> NET_DRAINING (net_conn_close: output flushed, TLS close_notify, FIN)
 *          -> NET_CLOSED (handles closed; memory freed when no reference remains)
 *
 * Every callback checks the state first; callbacks that arrive after close
 * do nothing. proto->on_close runs exactly once, when the connection leaves
 * the open states, whatever the reason. Memory is freed only after libuv's
 * close callbacks and the last net_conn_unref().
 *
 * Timers: one per connection, lazily re-armed: handshake_timeout_ms until
 * NET_ACTIVE, idle_timeout_ms of no input after that, write_timeout_ms while
 * output waits to be sent (also bounds NET_DRAINING).
 *
 * Thread: everything here runs on the loop's thread.
 */
#ifndef CMS_NET_H
#define CMS_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "tls.h"

typedef struct net_conn net_conn;
typedef struct net_server net_server;

enum net_state {
    NET_HANDSHAKE = 0,
    NET_AUTHORIZING,
    NET_ACTIVE,
    NET_DRAINING,
    NET_CLOSED
};

typedef struct net_limits {
    unsigned max_connections;      /* per server (loop); extra connections are closed at accept */
    unsigned handshake_timeout_ms; /* accept -> NET_ACTIVE */
    unsigned idle_timeout_ms;      /* no input while NET_ACTIVE */
    unsigned write_timeout_ms;     /* output not drained */
    unsigned max_output_bytes;     /* unsent ciphertext; beyond, the connection is closed */
    unsigned preauth_buffer_bytes; /* plaintext accepted before NET_ACTIVE (then closed) */
} net_limits;

typedef struct net_proto {
    const char *name;    /* "mllp", "https": for logs */
    unsigned metrics_listener; /* the listener label of its metrics (cms_metrics.h cm_listener) */
    size_t session_size; /* bytes of zeroed protocol state allocated with each connection */
    /*
     * TLS handshake complete (peer certificate verified if one was required).
     * Return CMS_OK to activate at once, CMS_EAGAIN when the protocol will
     * call net_conn_activate() or net_conn_close() later, or a negative
     * cms_err to close now.
     */
    int (*on_handshake)(net_conn *c);
    /*
     * Decrypted bytes while NET_ACTIVE. data is borrowed for the call.
     * Return CMS_OK, or a negative cms_err to close (output queued before is
     * still flushed).
     */
    int (*on_data)(net_conn *c, const char *data, size_t len);
    /* The connection is closing; release what the session holds. Once. */
    void (*on_close)(net_conn *c);
    /*
     * Optional: the TLS handshake failed (no, bad or refused client
     * certificate, protocol error). proto_ctx as given to net_listen; peer
     * and reason are borrowed. For auditing; the connection closes anyway.
     */
    void (*on_tls_refused)(void *proto_ctx, const char *peer, const char *reason);
    /*
     * Optional: the output not yet handed to the kernel fell to low_water
     * bytes or less (for producers that stream large answers with flat
     * memory: with low_water > 0 they queue the next piece while the kernel
     * still sends the last one, so the socket never idles).
     */
    void (*on_drain)(net_conn *c);
    size_t low_water;
} net_proto;

/* Creates the per-loop server object. loop and limits are borrowed (limits copied). */
net_server *net_server_new(uv_loop_t *loop, const net_limits *limits);

/*
 * PROXY protocol v2 in front of TLS on every listener of s (a load balancer in
 * TCP mode, e.g. HAProxy's send-proxy-v2): allow is the allowlist of proxy
 * source addresses (proxy.h: addresses or CIDR blocks; borrowed, must outlive
 * s), or NULL for none (the default: connections start with TLS).
 *
 * With an allowlist, a connection from an address not on it is closed at
 * accept; the others must begin with a v2 header within handshake_timeout_ms,
 * which net_conn_peer then reports ("ip:port" of the monitor; the proxy's own
 * address for a LOCAL header, e.g. a health check). A v1 header, a malformed,
 * truncated (closed or timed out) or over-long header, or none at all is
 * refused: the connection is closed, a "proxy_refused" line logged and
 * proto->on_tls_refused called with the reason (audited like a TLS refusal).
 * Call before net_listen. CMS_OK, or CMS_EINVAL when allow is malformed.
 */
int net_server_set_proxy(net_server *s, const char *allow);

/*
 * Listens on "host:port" ("[v6]:port" for IPv6) with SO_REUSEPORT (so several
 * loops may listen on the same address). tls and proto are borrowed and must
 * outlive the server; proto_ctx is handed to the protocol via
 * net_conn_proto_ctx(). Returns CMS_OK or CMS_EINVAL (bad address, bind
 * failure) with a reason in err.
 */
int net_listen(net_server *s, const char *addr, tls_ctx *tls, const net_proto *proto,
               void *proto_ctx, char *err, size_t cap);

/*
 * Whether listeners on addresses a and b ("host:port", "[v6]:port") would take
 * the same connections: the same port, and the same host or a wildcard ("0.0.0.0"
 * against IPv4, "::" against either). Listeners set SO_REUSEPORT (one socket per
 * worker), so the kernel lets both bind and then splits the connections between
 * them. 1, 0, or CMS_EINVAL with a reason in err when either is malformed.
 */
int net_listen_overlap(const char *a, const char *b, char *err, size_t cap);

/*
 * Stops accepting: closes the listening sockets (the kernel hands new
 * connections to other sockets on the same address, or refuses them);
 * connections already accepted go on. Idempotent.
 */
void net_server_stop_accepting(net_server *s);

/* Stops accepting, closes every connection, then calls cb(ctx) and frees s. */
void net_server_close(net_server *s, void (*cb)(void *ctx), void *ctx);

/*
 * The same without waiting for connections to flush their output or linger:
 * every socket is closed now (the bound of a drain). On a server already
 * closing (net_server_close), closes what is left of its connections now; cb
 * and ctx are then ignored.
 */
void net_server_close_now(net_server *s, void (*cb)(void *ctx), void *ctx);

/* Number of open connections. */
size_t net_server_conn_count(const net_server *s);

/* Calls fn for every connection in NET_ACTIVE/NET_AUTHORIZING state. */
void net_server_foreach(net_server *s, void (*fn)(net_conn *c, void *arg), void *arg);

/* Accessors. The pointers are borrowed and live as long as the connection. */
void *net_conn_session(net_conn *c);        /* the proto's session_size bytes */
void *net_conn_proto_ctx(net_conn *c);      /* as given to net_listen */
/* The peer record its TLS handshake made (tls.h): all zero before the handshake. */
const tls_peer *net_conn_peer_record(const net_conn *c);
enum net_state net_conn_state(const net_conn *c);
const char *net_conn_peer(const net_conn *c);   /* "ip:port" */
const char *net_conn_identity(const net_conn *c);/* set by the protocol, "" until then */
/* id is borrowed, not copied: it must live as long as c (e.g. in the proto's session). */
void net_conn_set_identity(net_conn *c, const char *id);
uv_loop_t *net_conn_loop(net_conn *c);

/* NET_AUTHORIZING -> NET_ACTIVE; delivers input that arrived meanwhile. */
void net_conn_activate(net_conn *c);

/*
 * Encrypts and queues plaintext. Returns CMS_OK, CMS_ECLOSED (not open),
 * CMS_ELIMIT (output limit hit: the connection is being closed).
 */
int net_conn_write(net_conn *c, const void *data, size_t len);

/*
 * Holds output back: net_conn_write only encrypts it until net_conn_uncork,
 * which sends it all in one system call (e.g. the ACKs one commit
 * releases for a monitor). Not nestable.
 */
void net_conn_cork(net_conn *c);
void net_conn_uncork(net_conn *c);

/*
 * Sets (abs_ms = uv_now() + delay) or clears (0) a protocol deadline, e.g.
 * "this HTTP request must be complete by then". When it passes while the
 * connection is NET_ACTIVE, the connection is closed with reason.
 * reason must be a static string.
 */
void net_conn_set_deadline(net_conn *c, uint64_t abs_ms, const char *reason);

/* Ciphertext queued but not yet written to the socket. */
size_t net_conn_output_pending(const net_conn *c);

/* Stops / resumes reading input (backpressure). Idempotent. */
void net_conn_pause(net_conn *c);
void net_conn_resume(net_conn *c);
bool net_conn_paused(const net_conn *c);

/*
 * The one close path. Idempotent. Flushes queued output and a TLS
 * close_notify (bounded by write_timeout_ms), then closes. reason goes to
 * the log line (may be NULL for a quiet close).
 */
void net_conn_close(net_conn *c, const char *reason);

/* Keeps the connection's memory alive past close (e.g. a pending query). */
void net_conn_ref(net_conn *c);
void net_conn_unref(net_conn *c);

#endif
