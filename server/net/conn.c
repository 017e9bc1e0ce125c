/*
 * conn.c - one TLS connection on the loop: read, handshake, write, timers,
 * and the single close path. See net.h for the state machine.
 */
#include <stdlib.h>
#include <string.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "log.h"
#include "net_int.h"

static void conn_process(net_conn *c);
static void conn_finish(net_conn *c);
static void conn_arm_timer(net_conn *c);
static void conn_drained(net_conn *c);

#define LINGER_MS 2000u /* nginx's lingering_close: read and drop, then close */

/* ---- memory ------------------------------------------------------------ */

static void conn_free_if_done(net_conn *c)
{
    if (c->handles_open > 0 || c->refs > 0)
        return;
    tls_conn_free(c->tls);
    free(c->proxy_buf);
    free(c);
}

void net_conn_ref(net_conn *c)
{
    c->refs++;
}

void net_conn_unref(net_conn *c)
{
    if (c->refs == 0) {
        log_error("bug", c->identity, c->peer, "net_conn_unref without reference");
        return;
    }
    c->refs--;
    conn_free_if_done(c);
}

static void on_handle_closed(uv_handle_t *h)
{
    net_conn *c = h->data;
    c->handles_open--;
    conn_free_if_done(c);
}

/* ---- accessors --------------------------------------------------------- */

void *net_conn_session(net_conn *c)
{
    return c->session;
}
void *net_conn_proto_ctx(net_conn *c)
{
    return c->proto_ctx;
}
const tls_peer *net_conn_peer_record(const net_conn *c)
{
    static const tls_peer none = {.version = ""};
    return c->tls ? tls_conn_peer(c->tls) : &none;
}
enum net_state net_conn_state(const net_conn *c)
{
    return c->state;
}
const char *net_conn_peer(const net_conn *c)
{
    return c->peer;
}
const char *net_conn_identity(const net_conn *c)
{
    return c->identity;
}
void net_conn_set_identity(net_conn *c, const char *id)
{
    c->identity = id ? id : "";
}
uv_loop_t *net_conn_loop(net_conn *c)
{
    return c->srv->loop;
}
bool net_conn_paused(const net_conn *c)
{
    return c->paused;
}

/* ---- output ------------------------------------------------------------ */

typedef struct write_req {
    uv_write_t req;
    char *buf;
    size_t len;
} write_req;

static void on_write(uv_write_t *req, int status)
{
    write_req *w = (write_req *)req;
    net_conn *c = req->data;
    c->out_bytes -= w->len;
    free(w->buf);
    free(w);
    if (c->state == NET_CLOSED)
        return;
    if (status < 0) {
        net_conn_close(c, uv_strerror(status));
        conn_finish(c);
        return;
    }
    if (c->out_bytes == 0) {
        c->write_since = 0;
        if (c->state == NET_DRAINING) {
            conn_drained(c);
            return;
        }
    }
    if (c->out_bytes <= c->proto->low_water && c->state == NET_ACTIVE && c->proto->on_drain)
        c->proto->on_drain(c);
}

void net_conn_set_deadline(net_conn *c, uint64_t abs_ms, const char *reason)
{
    c->proto_deadline = abs_ms;
    c->proto_deadline_why = reason;
    if (abs_ms && c->state == NET_ACTIVE)
        conn_arm_timer(c);
}

size_t net_conn_output_pending(const net_conn *c)
{
    return c->out_bytes + tls_conn_pending_output(c->tls);
}

/* Moves every pending TLS record to the socket. Returns CMS_OK or an error
 * after which the connection is being closed. */
static int conn_flush(net_conn *c)
{
    for (;;) {
        char *buf;
        long n = tls_conn_take_output(c->tls, &buf);
        if (n == 0) {
            /* Every write and every processing step ends here: the TLS record buffers
             * and the kept input go back until the next one. */
            tls_conn_trim(c->tls);
            return CMS_OK;
        }
        if (n < 0) {
            net_conn_close(c, "out of memory");
            conn_finish(c);
            return CMS_ENOMEM;
        }
        size_t len = (size_t)n, off = 0;
        if (c->out_bytes == 0) {
            uv_buf_t b = uv_buf_init(buf, (unsigned)len);
            int w = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
            if (w > 0)
                off = (size_t)w;
            else if (w < 0 && w != UV_EAGAIN) {
                free(buf);
                net_conn_close(c, uv_strerror(w));
                conn_finish(c);
                return CMS_EPROTO;
            }
            if (off == len) {
                free(buf);
                continue;
            }
            if (off > 0)
                memmove(buf, buf + off, len - off);
            len -= off;
        }
        write_req *w = malloc(sizeof(*w));
        if (!w) {
            free(buf);
            net_conn_close(c, "out of memory");
            conn_finish(c);
            return CMS_ENOMEM;
        }
        w->buf = buf;
        w->len = len;
        w->req.data = c;
        uv_buf_t b = uv_buf_init(buf, (unsigned)len);
        int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
        if (rc < 0) {
            free(buf);
            free(w);
            net_conn_close(c, uv_strerror(rc));
            conn_finish(c);
            return CMS_EPROTO;
        }
        bool was_idle = c->out_bytes == 0;
        c->out_bytes += len;
        if (was_idle) { /* the write deadline starts now */
            c->write_since = uv_now(c->srv->loop);
            conn_arm_timer(c);
        }
        if (c->out_bytes > c->srv->lim.max_output_bytes && c->state < NET_DRAINING) {
            net_conn_close(c, "output limit exceeded (peer not reading)");
            conn_finish(c);
            return CMS_ELIMIT;
        }
    }
}

int net_conn_write(net_conn *c, const void *data, size_t len)
{
    if (c->state != NET_ACTIVE && c->state != NET_AUTHORIZING)
        return CMS_ECLOSED;
    if (tls_conn_write(c->tls, data, len) != CMS_OK) {
        net_conn_close(c, "TLS write failed");
        return CMS_ECLOSED;
    }
    if (c->in_process || c->corked)
        return CMS_OK; /* flushed when the processing step ends / at net_conn_uncork */
    return conn_flush(c) == CMS_OK ? CMS_OK : CMS_ELIMIT;
}

void net_conn_cork(net_conn *c)
{
    c->corked = true;
}

void net_conn_uncork(net_conn *c)
{
    if (!c->corked)
        return;
    c->corked = false;
    if (!c->in_process && (c->state == NET_ACTIVE || c->state == NET_AUTHORIZING))
        (void)conn_flush(c); /* on failure the connection is being closed */
}

/* ---- timers ------------------------------------------------------------ */

void net__conn_deadline(net_conn *c)
{
    uint64_t now = uv_now(c->srv->loop);
    const net_limits *lim = &c->srv->lim;
    switch (c->state) {
    case NET_HANDSHAKE:
    case NET_AUTHORIZING:
        if (now >= c->accepted_at + lim->handshake_timeout_ms) {
            if (c->proxy_wait)
                log_warn("proxy_refused", NULL, c->peer, "%s: PROXY protocol: no complete "
                         "header after %u ms", c->proto->name, lim->handshake_timeout_ms);
            log_warn("handshake_timeout", c->identity, c->peer, "%s: no authenticated session "
                     "after %u ms", c->proto->name, lim->handshake_timeout_ms);
            metrics_add(CM_CONN_REFUSED,
                        cm_refused(c->proto->metrics_listener,
                                   c->proxy_wait ? CM_REFUSED_PROXY_HEADER
                                                 : CM_REFUSED_HANDSHAKE_TIMEOUT), 1);
            net_conn_close(c, NULL);
            conn_finish(c);
            return;
        }
        break;
    case NET_ACTIVE:
        if (c->out_bytes > 0 && now >= c->write_since + lim->write_timeout_ms) {
            net_conn_close(c, "write timeout (peer not reading)");
            conn_finish(c);
            return;
        }
        if (c->proto_deadline && now >= c->proto_deadline) {
            log_info("timeout", c->identity, c->peer, "%s: %s", c->proto->name,
                     c->proto_deadline_why);
            net_conn_close(c, NULL);
            return;
        }
        if (!c->paused && now >= c->last_input + lim->idle_timeout_ms) {
            log_info("idle_timeout", c->identity, c->peer, "no input for %u ms",
                     lim->idle_timeout_ms);
            net_conn_close(c, NULL);
            return;
        }
        break;
    case NET_DRAINING:
        if (now >= c->draining_since + (c->lingering ? LINGER_MS : lim->write_timeout_ms)) {
            conn_finish(c);
            return;
        }
        break;
    case NET_CLOSED:
        return;
    }
    conn_arm_timer(c);
}

/* Sets the connection's one deadline: the earliest of its current state. */
static void conn_arm_timer(net_conn *c)
{
    const net_limits *lim = &c->srv->lim;
    uint64_t now = uv_now(c->srv->loop), deadline;
    switch (c->state) {
    case NET_HANDSHAKE:
    case NET_AUTHORIZING:
        deadline = c->accepted_at + lim->handshake_timeout_ms;
        break;
    case NET_ACTIVE:
        deadline = c->last_input + lim->idle_timeout_ms;
        if (c->paused)
            deadline = now + lim->idle_timeout_ms;
        if (c->out_bytes > 0 && c->write_since + lim->write_timeout_ms < deadline)
            deadline = c->write_since + lim->write_timeout_ms;
        if (c->proto_deadline && c->proto_deadline < deadline)
            deadline = c->proto_deadline;
        break;
    case NET_DRAINING:
        deadline = c->draining_since + (c->lingering ? LINGER_MS : lim->write_timeout_ms);
        break;
    default:
        return;
    }
    net__deadline_set(c, deadline > now ? deadline : now + 1);
}

/* ---- input ------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    net_conn *c = h->data;
    /* One buffer per loop: every read is fed to OpenSSL before returning. */
    *buf = uv_buf_init(c->srv->readbuf, sizeof(c->srv->readbuf));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    net_conn *c = stream->data;
    if (c->lingering) { /* discard until the peer's FIN or the linger timer */
        if (nread < 0 && c->state == NET_DRAINING)
            conn_finish(c);
        return;
    }
    if (nread == 0 || c->state >= NET_DRAINING)
        return;
    if (nread < 0) {
        if (c->proxy_wait && c->proxy_len > 0) {
            log_warn("proxy_refused", NULL, c->peer, "%s: PROXY protocol: connection closed "
                     "before a complete header", c->proto->name);
            metrics_add(CM_CONN_REFUSED,
                        cm_refused(c->proto->metrics_listener, CM_REFUSED_PROXY_HEADER), 1);
        } else if (nread == UV_EOF) /* also a port probe that sent nothing */
            log_debug("peer_closed", c->identity, c->peer, NULL);
        net_conn_close(c, nread == UV_EOF ? NULL : uv_strerror((int)nread));
        conn_finish(c);
        return;
    }
    c->last_input = uv_now(c->srv->loop);
    const char *data = buf->base;
    size_t len = (size_t)nread;
    if (c->proxy_wait) {
        ssize_t used = net__proxy_input(c, data, len);
        if (used < 0) {
            conn_finish(c);
            return;
        }
        data += used;
        len -= (size_t)used;
        if (len == 0)
            return;
    }
    if (tls_conn_feed(c->tls, data, len) != CMS_OK) {
        net_conn_close(c, "out of memory");
        conn_finish(c);
        return;
    }
    net_conn_ref(c);
    conn_process(c);
    /* buf is the loop's: what OpenSSL left of it (a partial record, input
     * held back until the peer is authorized) is copied aside now. */
    if (tls_conn_keep_input(c->tls) != CMS_OK && c->state < NET_DRAINING) {
        net_conn_close(c, "out of memory");
        conn_finish(c);
    }
    net_conn_unref(c);
}

static void conn_read_start(net_conn *c)
{
    if (!c->reading && c->state < NET_DRAINING) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = true;
    }
}

static void conn_read_stop(net_conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static void conn_handshake(net_conn *c)
{
    char reason[256] = "";
    int rc = tls_conn_handshake(c->tls, reason, sizeof(reason));
    if (rc == CMS_EAGAIN) {
        if (tls_conn_pending_input(c->tls) > c->srv->lim.preauth_buffer_bytes) {
            log_warn("tls_refused", NULL, c->peer, "handshake input over %u bytes",
                     c->srv->lim.preauth_buffer_bytes);
            metrics_add(CM_CONN_REFUSED,
                        cm_refused(c->proto->metrics_listener, CM_REFUSED_TLS_ALERT), 1);
            net_conn_close(c, NULL);
        }
        return;
    }
    if (rc == CMS_ENOMEM) { /* our failure, not the peer's: no refusal to audit */
        net_conn_close(c, "out of memory");
        return;
    }
    if (rc != CMS_OK) {
        /* Every refusal in TLS itself passes here (peer.c audits it): counted by class. */
        static const enum cm_refusal by_failure[] = {
            [TLS_FAIL_PROTOCOL] = CM_REFUSED_TLS_ALERT,
            [TLS_FAIL_NO_CERT] = CM_REFUSED_NO_CERTIFICATE,
            [TLS_FAIL_UNKNOWN_CA] = CM_REFUSED_UNKNOWN_CA,
            [TLS_FAIL_EXPIRED] = CM_REFUSED_EXPIRED,
            [TLS_FAIL_REVOKED] = CM_REFUSED_REVOKED,
            [TLS_FAIL_BAD_CERT] = CM_REFUSED_BAD_CERTIFICATE,
        };
        metrics_add(CM_CONN_REFUSED,
                    cm_refused(c->proto->metrics_listener, by_failure[tls_conn_failure(c->tls)]),
                    1);
        log_warn("tls_refused", NULL, c->peer, "%s: %s", c->proto->name, reason);
        if (c->proto->on_tls_refused)
            c->proto->on_tls_refused(c->proto_ctx, c->peer, reason);
        c->tls_failed = true;
        net_conn_close(c, NULL); /* the alert OpenSSL queued is flushed first */
        return;
    }
    c->state = NET_AUTHORIZING;
    metrics_add(CM_HANDSHAKES,
                cm_handshake(c->proto->metrics_listener, tls_conn_peer(c->tls)->resumed
                                                             ? CM_HANDSHAKE_RESUMED
                                                             : CM_HANDSHAKE_FULL),
                1);
    rc = c->proto->on_handshake(c);
    if (rc == CMS_OK)
        net_conn_activate(c);
    else if (rc != CMS_EAGAIN)
        net_conn_close(c, NULL);
    else if (c->state == NET_AUTHORIZING)
        /* The protocol decides later (a registry query): input stays in the kernel /
         * the TLS buffer until then. When it decided at once (a kept verdict), reading
         * simply goes on: no stop/start of the socket's events. */
        conn_read_stop(c);
}

static void conn_process(net_conn *c)
{
    if (c->in_process) {
        c->again = true;
        return;
    }
    c->in_process = true;
    net_conn_ref(c);
    do {
        c->again = false;
        if (c->state == NET_HANDSHAKE)
            conn_handshake(c);
        while (c->state == NET_ACTIVE && !c->paused) {
            int n = tls_conn_read(c->tls, c->srv->plainbuf, sizeof(c->srv->plainbuf));
            if (n == CMS_EAGAIN)
                break;
            if (n < 0) {
                c->peer_done = n == CMS_ECLOSED;
                net_conn_close(c, n == CMS_ECLOSED ? NULL : "TLS error");
                break;
            }
            int rc = c->proto->on_data(c, c->srv->plainbuf, (size_t)n);
            if (rc != CMS_OK) {
                net_conn_close(c, NULL);
                break;
            }
        }
    } while (c->again && c->state < NET_DRAINING);
    c->in_process = false;
    if (c->state != NET_CLOSED && conn_flush(c) == CMS_OK && c->state == NET_DRAINING &&
        c->out_bytes == 0)
        conn_drained(c);
    net_conn_unref(c);
}

void net_conn_activate(net_conn *c)
{
    if (c->state != NET_AUTHORIZING)
        return;
    c->state = NET_ACTIVE;
    c->last_input = uv_now(c->srv->loop);
    conn_arm_timer(c);
    if (!c->paused)
        conn_read_start(c);
    conn_process(c); /* records that arrived with the handshake */
}

void net_conn_pause(net_conn *c)
{
    if (c->paused || c->state >= NET_DRAINING)
        return;
    c->paused = true;
    conn_read_stop(c);
}

void net_conn_resume(net_conn *c)
{
    if (!c->paused || c->state >= NET_DRAINING)
        return;
    c->paused = false;
    c->last_input = uv_now(c->srv->loop);
    if (c->state == NET_ACTIVE) {
        conn_read_start(c);
        conn_process(c); /* plaintext already decrypted-able in the TLS buffer */
    }
}

/* ---- close ------------------------------------------------------------- */

void net_conn_close(net_conn *c, const char *reason)
{
    if (c->state >= NET_DRAINING)
        return;
    enum net_state prev = c->state;
    c->state = NET_DRAINING;
    c->draining_since = uv_now(c->srv->loop);
    /* We close an established session: the peer may still be sending (a
     * request body we refused). Closing with unread input would send an RST
     * that can destroy our last answer in flight, so linger; not when it said
     * close_notify (nothing more comes: our close_notify goes, then close). */
    c->linger = prev == NET_ACTIVE && !c->peer_done;
    if (reason)
        log_info("conn_closed", c->identity, c->peer, "%s: %s", c->proto->name, reason);
    conn_read_stop(c);
    if (prev >= NET_AUTHORIZING)
        c->proto->on_close(c);
    if (prev >= NET_AUTHORIZING)
        tls_conn_shutdown(c->tls); /* close_notify */
    if (c->in_process)
        return; /* conn_process flushes and finishes */
    if (conn_flush(c) != CMS_OK || c->state != NET_DRAINING)
        return;
    if (c->out_bytes == 0)
        conn_drained(c);
    else
        conn_arm_timer(c);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    free(req);
}

/* Everything we had to say is sent: FIN, then linger or close at once. */
static void conn_drained(net_conn *c)
{
    if (!c->linger || c->lingering) {
        conn_finish(c);
        return;
    }
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (!req || uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        free(req);
        conn_finish(c);
        return;
    }
    c->lingering = true;
    c->draining_since = uv_now(c->srv->loop);
    if (!c->reading && uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->reading = true;
    conn_arm_timer(c);
}

static void conn_finish(net_conn *c);

void net__conn_abort(net_conn *c)
{
    conn_finish(c);
}

/* Closes the handles; memory goes when their callbacks ran and refs are 0. */
static void conn_finish(net_conn *c)
{
    if (c->state == NET_CLOSED)
        return;
    if (c->state < NET_DRAINING)
        net_conn_close(c, NULL);
    if (c->state == NET_CLOSED)
        return;
    c->state = NET_CLOSED;
    net__server_unlink(c->srv, c);
    if (c->linked) /* counted open since net__conn_accept linked it */
        metrics_gauge_add(CM_CONN_OPEN, c->proto->metrics_listener, -1);
    net__deadline_clear(c);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

/* ---- accept ------------------------------------------------------------ */

void net__conn_accept(net_listener *l)
{
    net_server *s = l->srv;
    net_conn *c = calloc(1, sizeof(*c) + l->proto->session_size);
    if (!c) {
        log_error("accept_failed", NULL, NULL, "out of memory");
        return;
    }
    c->srv = s;
    c->l = l;
    c->proto = l->proto;
    c->proto_ctx = l->proto_ctx;
    c->state = NET_HANDSHAKE;
    c->identity = "";
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    c->handles_open = 1;
    if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&c->tcp) != 0) {
        c->state = NET_CLOSED;
        uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
        return;
    }
    metrics_add(CM_CONN_ACCEPTED, l->proto->metrics_listener, 1);
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
    if (s->proxy_allow) {
        if (!net__proxy_admit(c, &ss)) {
            c->state = NET_CLOSED;
            uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
            return;
        }
        c->proxy_wait = true;
    }
    if (s->nconns >= s->lim.max_connections) {
        log_warn("conn_refused", NULL, c->peer, "%s: max_connections (%u) reached",
                 l->proto->name, s->lim.max_connections);
        metrics_add(CM_CONN_REFUSED,
                    cm_refused(l->proto->metrics_listener, CM_REFUSED_MAX_CONNECTIONS), 1);
        c->state = NET_CLOSED;
        uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
        return;
    }
    if (net__deadline_reserve(s, s->nconns + 1) != 0 ||
        !(c->tls = tls_conn_new_server(l->tls))) {
        log_error("accept_failed", NULL, c->peer, "out of memory");
        c->state = NET_CLOSED;
        uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
        return;
    }
    /* TCP_NODELAY and keepalive come from the listening socket (listener.c). */
    net__server_link(s, c);
    c->linked = true;
    metrics_gauge_add(CM_CONN_OPEN, l->proto->metrics_listener, 1);
    c->accepted_at = uv_now(s->loop);
    conn_arm_timer(c);
    conn_read_start(c);
}
