/* net_int.h - internals shared by the net layer's files (not a public API). */
#ifndef CMS_NET_INT_H
#define CMS_NET_INT_H

#include "net.h"

typedef struct net_listener {
    uv_tcp_t tcp;
    net_server *srv;
    tls_ctx *tls;
    const net_proto *proto;
    void *proto_ctx;
    char addr[128];
    struct net_listener *next;
} net_listener;

struct net_conn {
    uv_tcp_t tcp;
    uint64_t deadline; /* uv_now() ms of the next check (deadline.c) */
    uint32_t heap_pos; /* 1 + index in srv->heap, 0 = none */
    net_server *srv;
    net_listener *l;        /* only while open: listeners close before their connections */
    const net_proto *proto; /* copied from the listener: valid after it closed */
    void *proto_ctx;
    enum net_state state;
    tls_conn *tls; /* owned; NULL only when accept failed */
    unsigned handles_open; /* the tcp handle until its close callback ran */
    unsigned refs;         /* net_conn_ref holders */
    bool reading, paused, in_process, again, tls_failed;
    bool linked;            /* in the server's list (and counted in cmsd_connections_open) */
    bool linger, lingering; /* see conn_drained() */
    bool peer_done;         /* the peer's close_notify arrived: it sends nothing more */
    bool corked;            /* net_conn_cork */
    uint64_t accepted_at, last_input, write_since, draining_since; /* uv_now() ms */
    uint64_t proto_deadline;         /* net_conn_set_deadline, 0 = none */
    const char *proto_deadline_why;
    size_t out_bytes; /* ciphertext handed to uv_write, not yet written */
    unsigned char *proxy_buf; /* owned: a PROXY v2 header being received (proxy.c) */
    size_t proxy_len;
    bool proxy_wait;          /* the PROXY v2 header has not arrived yet */
    char peer[64];
    const char *identity; /* net_conn_set_identity: borrowed, "" until set */
    net_conn *prev, *next;
    _Alignas(16) unsigned char session[]; /* proto->session_size bytes */
};

struct net_server {
    uv_loop_t *loop;
    net_limits lim;
    const char *proxy_allow; /* net_server_set_proxy: borrowed, NULL = no PROXY header */
    net_listener *listeners;
    net_conn *conns;
    size_t nconns;
    bool closing;
    unsigned closing_handles;
    uv_timer_t drain_timer;
    uv_timer_t timer;     /* at the earliest connection deadline (deadline.c) */
    uint64_t timer_at;    /* what timer is set for, 0 = stopped */
    net_conn **heap;      /* min-heap of connections by deadline */
    size_t heap_len, heap_cap;
    void (*close_cb)(void *ctx);
    void *close_ctx;
    char readbuf[65536];  /* shared: each read is fed to OpenSSL at once */
    char plainbuf[16384]; /* shared: each SSL_read is handed to the protocol at once */
};

void net__conn_accept(net_listener *l);
/* A PROXY v2 header is awaited on c: takes the bytes read (proxy.c). Returns the
 * number of bytes of data that were header (the rest is TLS), or -1 when c was
 * refused and is closing. */
ssize_t net__proxy_input(net_conn *c, const char *data, size_t len);
/* Whether the proxy allowlist admits the TCP peer ss (proxy.c); logs the refusal. */
bool net__proxy_admit(net_conn *c, const struct sockaddr_storage *ss);
/* Parses "host:port" or "[v6]:port" (numeric host) into ss. CMS_OK, or
 * CMS_EINVAL with a reason in err (cap bytes). */
int net__parse_addr(const char *addr, struct sockaddr_storage *ss, char *err, size_t cap);
void net__conn_deadline(net_conn *c); /* its deadline passed (conn.c) */
/* Closes c's socket now: no flush, no close_notify wait, no linger (conn.c). */
void net__conn_abort(net_conn *c);

void net__deadline_init(net_server *s);
void net__deadline_free(net_server *s);
/* Room for n connections, so that net__deadline_set never fails. 0 or -1. */
int net__deadline_reserve(net_server *s, size_t n);
void net__deadline_set(net_conn *c, uint64_t at);
void net__deadline_clear(net_conn *c);
void net__server_link(net_server *s, net_conn *c);
void net__server_unlink(net_server *s, net_conn *c);

#endif
