/*
 * plain.c - the loopback-only plaintext listener for a local scraper
 * (net_plain.h): one GET or HEAD per connection, answered by a handler, then
 * closed. Bounded: NET_PLAIN_MAX_CONNS connections, NET_PLAIN_MAX_REQUEST
 * bytes of request, NET_PLAIN_TIMEOUT_MS to receive it and as long to send the
 * answer.
 */
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "log.h"
#include "net_int.h"
#include "net_plain.h"

typedef struct plain_conn plain_conn;

struct net_plain {
    uv_loop_t *loop;
    uv_tcp_t tcp;
    net_plain_handler handler;
    void *ctx;
    char addr[128];
    plain_conn *conns;
    unsigned nconns;
    bool closing;
    unsigned handles; /* the listener's, until its close callback */
    void (*close_cb)(void *);
    void *close_ctx;
};

enum plain_state { PC_READING = 0, PC_WRITING, PC_CLOSING };

struct plain_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wr;
    uv_shutdown_t sd;
    net_plain *p;
    enum plain_state state;
    unsigned handles;
    char *out; /* the answer being written (owned) */
    size_t len;
    char peer[64];
    plain_conn *prev, *next;
    char buf[NET_PLAIN_MAX_REQUEST + 1];
};

static void plain_maybe_done(net_plain *p)
{
    if (!p->closing || p->handles > 0 || p->conns)
        return;
    void (*cb)(void *) = p->close_cb;
    void *ctx = p->close_ctx;
    free(p);
    if (cb)
        cb(ctx);
}

/* ---- one connection -------------------------------------------------------- */

static void on_conn_handle_closed(uv_handle_t *h)
{
    plain_conn *c = h->data;
    if (--c->handles > 0)
        return;
    net_plain *p = c->p;
    free(c->out);
    free(c);
    plain_maybe_done(p);
}

/* The one close path: idempotent. */
static void conn_close(plain_conn *c)
{
    if (c->state == PC_CLOSING)
        return;
    c->state = PC_CLOSING;
    net_plain *p = c->p;
    if (c->prev)
        c->prev->next = c->next;
    else
        p->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    p->nconns--;
    metrics_gauge_add(CM_CONN_OPEN, CM_LISTENER_METRICS, -1);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
}

static void on_timeout(uv_timer_t *t)
{
    plain_conn *c = t->data;
    log_info("timeout", NULL, c->peer, "metrics listener: request not %s in %u ms",
             c->state == PC_READING ? "received" : "sent", NET_PLAIN_TIMEOUT_MS);
    conn_close(c);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    conn_close(req->data);
}

static void on_written(uv_write_t *req, int status)
{
    plain_conn *c = req->data;
    if (c->state != PC_WRITING)
        return;
    if (status < 0 || uv_shutdown(&c->sd, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        conn_close(c);
}

static const char *status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 431:
        return "Request Header Fields Too Large";
    case 503:
        return "Service Unavailable";
    default:
        return status >= 500 ? "Internal Server Error" : status >= 400 ? "Error" : "OK";
    }
}

/* Sends status with body (taken; sent unless head), then closes. */
static void conn_answer(plain_conn *c, int status, const char *type, char *body, size_t len,
                        bool head)
{
    char hdr[320];
    int n = snprintf(hdr, sizeof(hdr),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
                     status, status_text(status), type ? type : "text/plain", len,
                     status == 405 ? "Allow: GET, HEAD\r\n" : "");
    size_t blen = head ? 0 : len;
    c->out = malloc((size_t)n + blen);
    if (!c->out) {
        free(body);
        conn_close(c);
        return;
    }
    memcpy(c->out, hdr, (size_t)n);
    if (blen)
        memcpy(c->out + n, body, blen);
    free(body);
    c->len = (size_t)n + blen;
    c->state = PC_WRITING;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_timer_start(&c->timer, on_timeout, NET_PLAIN_TIMEOUT_MS, 0);
    uv_buf_t b = uv_buf_init(c->out, (unsigned)c->len);
    c->wr.data = c;
    if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0)
        conn_close(c);
}

static void conn_error(plain_conn *c, int status, const char *why)
{
    size_t n = strlen(why);
    char *body = malloc(n + 2);
    if (body) {
        memcpy(body, why, n);
        body[n++] = '\n';
        body[n] = '\0';
    }
    log_info("metrics_http_refused", NULL, c->peer, "%d %s", status, why);
    conn_answer(c, status, "text/plain; charset=utf-8", body, body ? n : 0, false);
}

/* A complete request head is in c->buf (NUL-terminated, ends with CRLFCRLF). */
static void conn_request(plain_conn *c)
{
    char *line_end = strstr(c->buf, "\r\n");
    char *sp1 = memchr(c->buf, ' ', (size_t)(line_end - c->buf));
    char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(line_end - sp1 - 1)) : NULL;
    if (!sp1 || !sp2 || sp1[1] != '/' ||
        (strncmp(sp2 + 1, "HTTP/1.1\r\n", 10) != 0 && strncmp(sp2 + 1, "HTTP/1.0\r\n", 10) != 0)) {
        conn_error(c, 400, "malformed request line");
        return;
    }
    *sp1 = '\0';
    *sp2 = '\0';
    const char *method = c->buf, *target = sp1 + 1;
    bool head = strcmp(method, "HEAD") == 0;
    if (!head && strcmp(method, "GET") != 0) {
        conn_error(c, 405, "only GET and HEAD");
        return;
    }
    for (const char *t = target; *t; t++) {
        if ((unsigned char)*t <= 0x20 || (unsigned char)*t >= 0x7f) {
            conn_error(c, 400, "malformed request target");
            return;
        }
    }
    /* A request with a body is not one of ours (and would desynchronise nothing
     * here, but say so rather than ignore it). */
    for (char *h = line_end + 2; *h && strncmp(h, "\r\n", 2) != 0;) {
        char *e = strstr(h, "\r\n");
        if (!e)
            break;
        if (strncasecmp(h, "Transfer-Encoding:", 18) == 0 ||
            (strncasecmp(h, "Content-Length:", 15) == 0 && strtoul(h + 15, NULL, 10) != 0)) {
            conn_error(c, 400, "no request body expected");
            return;
        }
        h = e + 2;
    }
    char path[NET_PLAIN_MAX_REQUEST];
    size_t plen = strcspn(target, "?");
    memcpy(path, target, plen);
    path[plen] = '\0';
    net_plain_reply r = {.status = 500, .content_type = "text/plain; charset=utf-8"};
    c->p->handler(c->p->ctx, method, path, &r);
    conn_answer(c, r.status, r.content_type, r.body, r.len, head);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    plain_conn *c = h->data;
    size_t room = NET_PLAIN_MAX_REQUEST - c->len;
    *buf = uv_buf_init(c->buf + c->len, (unsigned)room);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    plain_conn *c = s->data;
    if (c->state != PC_READING || nread == 0)
        return;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    size_t from = c->len >= 3 ? c->len - 3 : 0;
    c->len += (size_t)nread;
    c->buf[c->len] = '\0';
    if (memchr(c->buf + from, '\0', c->len - from)) {
        conn_error(c, 400, "NUL byte in request");
        return;
    }
    if (strstr(c->buf + from, "\r\n\r\n")) {
        conn_request(c);
        return;
    }
    if (c->len >= NET_PLAIN_MAX_REQUEST)
        conn_error(c, 431, "request head too large");
}

static void on_connection(uv_stream_t *server, int status)
{
    net_plain *p = server->data;
    if (status < 0 || p->closing)
        return;
    plain_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->p = p;
    uv_tcp_init(p->loop, &c->tcp);
    uv_timer_init(p->loop, &c->timer);
    c->tcp.data = c->timer.data = c->sd.data = c;
    c->handles = 2;
    c->next = p->conns;
    if (p->conns)
        p->conns->prev = c;
    p->conns = c;
    p->nconns++;
    metrics_gauge_add(CM_CONN_OPEN, CM_LISTENER_METRICS, 1);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    metrics_add(CM_CONN_ACCEPTED, CM_LISTENER_METRICS, 1);
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        } else {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        }
    }
    snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, port);
    if (p->nconns > NET_PLAIN_MAX_CONNS) {
        log_warn("conn_refused", NULL, c->peer, "metrics listener: %u connections open",
                 NET_PLAIN_MAX_CONNS);
        metrics_add(CM_CONN_REFUSED,
                    cm_refused(CM_LISTENER_METRICS, CM_REFUSED_MAX_CONNECTIONS), 1);
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, NET_PLAIN_TIMEOUT_MS, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        conn_close(c);
}

/* ---- the listener ---------------------------------------------------------- */

static bool ss_is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

int net_plain_is_loopback(const char *addr, char *err, size_t cap)
{
    struct sockaddr_storage ss;
    if (net__parse_addr(addr, &ss, err, cap) != CMS_OK)
        return CMS_EINVAL;
    return ss_is_loopback(&ss) ? 1 : 0;
}

net_plain *net_plain_listen(uv_loop_t *loop, const char *addr, net_plain_handler handler,
                            void *ctx, char *err, size_t cap)
{
    struct sockaddr_storage ss;
    if (net__parse_addr(addr, &ss, err, cap) != CMS_OK)
        return NULL;
    if (!ss_is_loopback(&ss)) {
        snprintf(err, cap,
                 "address \"%s\": the plaintext metrics listener binds only a loopback "
                 "address (127.0.0.0/8 or [::1]); use /metrics on the HTTPS listener with a "
                 "scraper certificate from elsewhere",
                 addr);
        return NULL;
    }
    net_plain *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    p->loop = loop;
    p->handler = handler;
    p->ctx = ctx;
    snprintf(p->addr, sizeof(p->addr), "%s", addr);
    uv_tcp_init(loop, &p->tcp);
    p->tcp.data = p;
    p->handles = 1;
    int rc = uv_tcp_bind(&p->tcp, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&p->tcp, 64, on_connection);
    if (rc != 0) {
        snprintf(err, cap, "listen %s: %s", addr, uv_strerror(rc));
        net_plain_close(p, NULL, NULL);
        return NULL;
    }
    log_info("listening", NULL, NULL, "metrics (plaintext, loopback) on %s", addr);
    return p;
}

static void on_listener_closed(uv_handle_t *h)
{
    net_plain *p = h->data;
    p->handles--;
    plain_maybe_done(p);
}

void net_plain_close(net_plain *p, void (*cb)(void *cb_ctx), void *cb_ctx)
{
    if (!p || p->closing)
        return;
    p->closing = true;
    p->close_cb = cb;
    p->close_ctx = cb_ctx;
    uv_close((uv_handle_t *)&p->tcp, on_listener_closed);
    while (p->conns)
        conn_close(p->conns);
}
