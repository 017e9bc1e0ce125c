/*
 * listener.c - listening sockets (SO_REUSEPORT, so that several loops can
 * share an address) and the per-loop connection list.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cms_err.h"
#include "log.h"
#include "net_int.h"

net_server *net_server_new(uv_loop_t *loop, const net_limits *limits)
{
    net_server *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->loop = loop;
    s->lim = *limits;
    net__deadline_init(s);
    return s;
}

void net__server_link(net_server *s, net_conn *c)
{
    c->prev = NULL;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
}

void net__server_unlink(net_server *s, net_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else if (s->conns == c)
        s->conns = c->next;
    else
        return; /* not linked */
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    s->nconns--;
}

size_t net_server_conn_count(const net_server *s)
{
    return s->nconns;
}

void net_server_foreach(net_server *s, void (*fn)(net_conn *c, void *arg), void *arg)
{
    net_conn *c = s->conns, *next;
    for (; c; c = next) {
        next = c->next;
        if (c->state == NET_ACTIVE || c->state == NET_AUTHORIZING)
            fn(c, arg);
    }
}

int net__parse_addr(const char *addr, struct sockaddr_storage *ss, char *err, size_t cap)
{
    char host[128];
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr) {
        snprintf(err, cap, "address \"%s\": expected host:port", addr);
        return CMS_EINVAL;
    }
    size_t hl = (size_t)(colon - addr);
    const char *h = addr;
    if (*h == '[') {
        if (hl < 2 || addr[hl - 1] != ']') {
            snprintf(err, cap, "address \"%s\": bad IPv6 literal", addr);
            return CMS_EINVAL;
        }
        h++;
        hl -= 2;
    }
    if (hl >= sizeof(host)) {
        snprintf(err, cap, "address \"%s\": host too long", addr);
        return CMS_EINVAL;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 1 || port > 65535) {
        snprintf(err, cap, "address \"%s\": bad port", addr);
        return CMS_EINVAL;
    }
    memset(ss, 0, sizeof(*ss));
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0)
        return CMS_OK;
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0)
        return CMS_OK;
    snprintf(err, cap, "address \"%s\": host must be a numeric IPv4 or IPv6 address", addr);
    return CMS_EINVAL;
}

static bool addr_is_any(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
    return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

static unsigned addr_port(const struct sockaddr_storage *ss)
{
    return ntohs(ss->ss_family == AF_INET ? ((const struct sockaddr_in *)ss)->sin_port
                                          : ((const struct sockaddr_in6 *)ss)->sin6_port);
}

int net_listen_overlap(const char *a, const char *b, char *err, size_t cap)
{
    struct sockaddr_storage x, y;
    if (net__parse_addr(a, &x, err, cap) != CMS_OK || net__parse_addr(b, &y, err, cap) != CMS_OK)
        return CMS_EINVAL;
    if (addr_port(&x) != addr_port(&y))
        return 0;
    if (x.ss_family != y.ss_family) /* only "::" also takes IPv4 (dual stack) */
        return (x.ss_family == AF_INET6 && addr_is_any(&x)) ||
               (y.ss_family == AF_INET6 && addr_is_any(&y));
    if (addr_is_any(&x) || addr_is_any(&y))
        return 1;
    if (x.ss_family == AF_INET)
        return ((struct sockaddr_in *)&x)->sin_addr.s_addr ==
               ((struct sockaddr_in *)&y)->sin_addr.s_addr;
    return memcmp(&((struct sockaddr_in6 *)&x)->sin6_addr, &((struct sockaddr_in6 *)&y)->sin6_addr,
                  sizeof(struct in6_addr)) == 0;
}

static void on_connection(uv_stream_t *server, int status)
{
    net_listener *l = server->data;
    if (status < 0) {
        log_warn("accept_failed", NULL, NULL, "%s: %s", l->addr, uv_strerror(status));
        return;
    }
    if (l->srv->closing)
        return;
    net__conn_accept(l);
}

int net_listen(net_server *s, const char *addr, tls_ctx *tls, const net_proto *proto,
               void *proto_ctx, char *err, size_t cap)
{
    struct sockaddr_storage ss;
    if (net__parse_addr(addr, &ss, err, cap) != CMS_OK)
        return CMS_EINVAL;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, cap, "socket: %s", strerror(errno));
        return CMS_EINVAL;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    /* Accepted sockets inherit these from the listening one (Linux copies them on
     * accept), which saves five setsockopt() calls per connection: no Nagle delay
     * for ACKs; keepalive probes after 60 s idle, every 10 s, 6 unanswered = dead
     * (a powered-off monitor's session is reaped in about two minutes). */
    int idle = 60, intvl = 10, cnt = 6;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    socklen_t sl = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                            : sizeof(struct sockaddr_in);
    if (bind(fd, (struct sockaddr *)&ss, sl) != 0) {
        snprintf(err, cap, "bind %s: %s", addr, strerror(errno));
        close(fd);
        return CMS_EINVAL;
    }
    net_listener *l = calloc(1, sizeof(*l));
    if (!l) {
        close(fd);
        snprintf(err, cap, "out of memory");
        return CMS_ENOMEM;
    }
    l->srv = s;
    l->tls = tls;
    l->proto = proto;
    l->proto_ctx = proto_ctx;
    snprintf(l->addr, sizeof(l->addr), "%s", addr);
    uv_tcp_init(s->loop, &l->tcp);
    l->tcp.data = l;
    int rc = uv_tcp_open(&l->tcp, fd);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->tcp, 4096, on_connection);
    if (rc != 0) {
        snprintf(err, cap, "listen %s: %s", addr, uv_strerror(rc));
        uv_close((uv_handle_t *)&l->tcp, (uv_close_cb)free);
        return CMS_EINVAL;
    }
    l->next = s->listeners;
    s->listeners = l;
    log_info("listening", NULL, NULL, "%s on %s", proto->name, addr);
    return CMS_OK;
}

static void server_maybe_done(net_server *s)
{
    if (!s->closing || s->closing_handles > 0 || s->conns)
        return;
    void (*cb)(void *) = s->close_cb;
    void *ctx = s->close_ctx;
    s->close_cb = NULL;
    net__deadline_free(s);
    free(s);
    if (cb)
        cb(ctx);
}

static void on_listener_closed(uv_handle_t *h)
{
    net_listener *l = h->data;
    net_server *s = l->srv;
    free(l);
    s->closing_handles--;
    server_maybe_done(s);
}

static void on_timer_closed(uv_handle_t *h)
{
    net_server *s = h->data;
    s->closing_handles--;
    server_maybe_done(s);
}

void net_server_close_now(net_server *s, void (*cb)(void *ctx), void *ctx)
{
    if (!s->closing)
        net_server_close(s, cb, ctx);
    for (net_conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        net__conn_abort(c);
    }
}

/* Connections still draining unlink themselves; check every 50 ms. */
static void on_drain_timer(uv_timer_t *t)
{
    net_server *s = t->data;
    if (s->conns)
        return;
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, on_timer_closed);
    /* no connection left: nothing has a deadline any more */
    s->closing_handles++;
    uv_close((uv_handle_t *)&s->timer, on_timer_closed);
}

void net_server_stop_accepting(net_server *s)
{
    for (net_conn *c = s->conns; c; c = c->next)
        c->l = NULL; /* their listeners go now */
    for (net_listener *l = s->listeners, *next; l; l = next) {
        next = l->next;
        s->closing_handles++;
        uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
    }
    s->listeners = NULL;
}

void net_server_close(net_server *s, void (*cb)(void *ctx), void *ctx)
{
    if (s->closing)
        return;
    s->closing = true;
    s->close_cb = cb;
    s->close_ctx = ctx;
    for (net_listener *l = s->listeners, *next; l; l = next) {
        next = l->next;
        s->closing_handles++;
        uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
    }
    s->listeners = NULL;
    for (net_conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        net_conn_close(c, NULL);
    }
    uv_timer_init(s->loop, &s->drain_timer);
    s->drain_timer.data = s;
    s->closing_handles++;
    uv_timer_start(&s->drain_timer, on_drain_timer, 0, 50);
}
