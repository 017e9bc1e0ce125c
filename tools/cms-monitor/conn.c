/*
 * conn.c - one connection of a simulated monitor: TCP (libuv), TLS (OpenSSL
 * over memory BIOs), MLLP deframing of the ACKs, per-connection timer, and
 * the one close path. What the device does with it (pacing, ACK matching,
 * resend, reconnect) is dev.c.
 *
 * TLS over memory BIOs. The SSL object never touches the socket: ciphertext
 * read from the socket is appended to rbio (BIO_write on a memory BIO never
 * fails short), and whatever OpenSSL produces lands in wbio, which
 * conn_flush() moves to the socket after *every* SSL_* call (handshake
 * records, application data, alerts, TLS 1.3 KeyUpdate responses).
 *   - SSL_ERROR_WANT_READ: OpenSSL needs more ciphertext than rbio holds.
 *     Nothing to do but flush and wait for the next read callback, which
 *     feeds rbio and runs the handshake / SSL_read loop again.
 *   - SSL_ERROR_WANT_WRITE: only happens when the write BIO refuses data;
 *     a memory BIO grows instead, so it cannot happen here. It is treated as
 *     a fatal internal error rather than silently spun on.
 *   - SSL_write of a whole frame either succeeds completely (no
 *     ENABLE_PARTIAL_WRITE) or fails fatally. Renegotiation (which could make
 *     SSL_write want to read) does not exist in TLS 1.3 and is switched off
 *     for TLS 1.2 (SSL_OP_NO_RENEGOTIATION, see ident.c).
 *   - After SSL_read returns data, the loop goes on until WANT_READ, so a
 *     record that held several ACKs is fully drained; post-handshake
 *     messages (NewSessionTicket, KeyUpdate) are consumed the same way and
 *     any answer they cause is flushed.
 * Output is bounded by the window: at most --window frames are unacknowledged
 * per connection, so the socket write queue never holds more than that.
 *
 * Lifetime: a conn is allocated per connection attempt. conn_close() is the
 * one close path (idempotent): it detaches the conn from its device at once
 * (so the device may start a new attempt) and frees the conn only in the
 * last uv_close callback. Callbacks that arrive for a CLOSING conn return
 * without doing anything.
 */
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "cms_err.h"
#include "hl7.h"
#include "log.h"
#include "monitor.h"

#define CLOSE_GRACE_MS 2000

/* One loop, and callbacks never nest across connections: shared buffers. */
static char rbuf[65536]; /* ciphertext from the socket */
static char pbuf[16384]; /* plaintext out of SSL_read */
static char wbuf[65536]; /* ciphertext staged for the socket */

struct wreq {
    uv_write_t req;
    size_t len;
    char data[];
};

static void conn_close_handles(struct conn *c);
static void conn_pump(struct conn *c);
static void on_conn_timer(uv_timer_t *t);

/* ---- socket output ---- */

static void on_write(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;
    struct conn *c = req->handle->data;
    free(w);
    if (status < 0 && c->state != CONN_CLOSING)
        conn_close(c, uv_strerror(status), 0);
}

/*
 * Moves everything OpenSSL wrote into wbio to the socket: uv_try_write first
 * (no allocation in the common case), the rest copied into a uv_write.
 * Returns 0, or -1 after closing the connection.
 */
int conn_flush(struct conn *c)
{
    size_t pending;
    while ((pending = BIO_ctrl_pending(c->wbio)) > 0) {
        int n = BIO_read(c->wbio, wbuf, (int)(pending < sizeof wbuf ? pending : sizeof wbuf));
        if (n <= 0)
            break;
        size_t len = (size_t)n, off = 0;
        c->mon->st.bytes_out += len;
        if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) == 0) {
            uv_buf_t b = uv_buf_init(wbuf, (unsigned)len);
            int w = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
            if (w > 0)
                off = (size_t)w;
            else if (w != UV_EAGAIN) {
                conn_close(c, uv_strerror(w), 0);
                return -1;
            }
        }
        if (off == len)
            continue;
        struct wreq *wr = malloc(sizeof *wr + (len - off));
        if (wr == NULL) {
            conn_close(c, "out of memory", 0);
            return -1;
        }
        wr->len = len - off;
        memcpy(wr->data, wbuf + off, wr->len);
        uv_buf_t b = uv_buf_init(wr->data, (unsigned)wr->len);
        int r = uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
        if (r < 0) {
            free(wr);
            conn_close(c, uv_strerror(r), 0);
            return -1;
        }
    }
    return 0;
}

/* Human-readable reason for a failed SSL_* call (static buffer). */
static const char *tls_reason(struct conn *c, int sslerr)
{
    static char buf[256];
    unsigned long e = ERR_peek_last_error();
    long vr = SSL_get_verify_result(c->ssl);
    if (vr != X509_V_OK && c->state == CONN_HANDSHAKING) {
        snprintf(buf, sizeof buf, "server certificate rejected: %s",
                 X509_verify_cert_error_string(vr));
    } else if (e != 0) {
        char es[200];
        ERR_error_string_n(e, es, sizeof es);
        snprintf(buf, sizeof buf, "TLS error: %s", es);
    } else if (sslerr == SSL_ERROR_SYSCALL || sslerr == SSL_ERROR_SSL) {
        snprintf(buf, sizeof buf, "TLS connection ended without close_notify");
    } else {
        snprintf(buf, sizeof buf, "TLS error %d", sslerr);
    }
    ERR_clear_error();
    return buf;
}

/* ---- the one close path ---- */

static void on_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->handles_open > 0)
        return;
    struct mon *m = c->mon;
    SSL_free(c->ssl);
    mllp_decoder_free(&c->dec);
    free(c);
    m->nconns--;
    mon_check_done(m);
}

static void conn_close_handles(struct conn *c)
{
    if (c->handles_closing)
        return;
    c->handles_closing = 1;
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    conn_close_handles(req->handle->data);
}

void conn_close(struct conn *c, const char *why, int graceful)
{
    if (c->state == CONN_CLOSING)
        return;
    struct mon *m = c->mon;
    struct device *dev = c->dev;
    enum conn_state prev = c->state;
    int proven = c->acks > 0;

    c->state = CONN_CLOSING;
    c->dev = NULL;
    if (prev == CONN_ACTIVE)
        m->active--;
    if (prev != CONN_CONNECTING)
        uv_read_stop((uv_stream_t *)&c->tcp);
    uv_timer_stop(&c->timer);

    if (graceful && prev == CONN_ACTIVE) {
        /* close_notify, then a TCP FIN once the queued writes are out. */
        (void)SSL_shutdown(c->ssl);
        if (conn_flush(c) == 0 && uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) == 0)
            uv_timer_start(&c->timer, on_conn_timer, CLOSE_GRACE_MS, 0);
        else
            conn_close_handles(c);
    } else {
        conn_close_handles(c);
    }

    if (dev != NULL)
        dev_conn_lost(dev, why, graceful, proven);
}

/* ---- timers ---- */

/* While ACTIVE the conn timer is the ACK deadline of the oldest unacked message. */
void conn_arm_ack_timer(struct conn *c)
{
    struct device *dev = c->dev;
    if (dev == NULL || dev->npend == 0) {
        uv_timer_stop(&c->timer);
        return;
    }
    uint64_t deadline = dev->pend[0].sent_ns + (uint64_t)c->mon->opts.ack_timeout_ms * 1000000u;
    uint64_t now = uv_hrtime();
    uint64_t wait_ms = deadline > now ? (deadline - now) / 1000000u + 1 : 0;
    uv_timer_start(&c->timer, on_conn_timer, wait_ms, 0);
}

/* One timer per conn, its meaning follows the state: connect+handshake
 * deadline, ACK deadline, or the grace period of a graceful close. */
static void on_conn_timer(uv_timer_t *t)
{
    struct conn *c = t->data;
    char why[MON_CTRL_LEN + 96];
    switch (c->state) {
    case CONN_CONNECTING:
    case CONN_HANDSHAKING:
        snprintf(why, sizeof why, "%s timed out after %u ms",
                 c->state == CONN_CONNECTING ? "TCP connect" : "TLS handshake",
                 c->mon->opts.handshake_timeout_ms);
        conn_close(c, why, 0);
        break;
    case CONN_ACTIVE: {
        struct device *dev = c->dev;
        uint64_t age_ms = dev->npend ? (uv_hrtime() - dev->pend[0].sent_ns) / 1000000u : 0;
        if (dev->npend == 0 || age_ms < c->mon->opts.ack_timeout_ms) {
            conn_arm_ack_timer(c);
            break;
        }
        c->mon->st.ack_timeouts++;
        snprintf(why, sizeof why, "no ACK for %s within %u ms", dev->pend[0].ctrl,
                 c->mon->opts.ack_timeout_ms);
        c->acks++; /* a late ACK is a drop, not a failed connect */
        conn_close(c, why, 0);
        break;
    }
    case CONN_CLOSING:
        conn_close_handles(c);
        break;
    }
}

/* ---- sending ---- */

/* Writes one frame into the TLS session (ciphertext stays in wbio until flushed). */
int conn_write_frame(struct conn *c, const char *frame, size_t len)
{
    ERR_clear_error();
    int n = SSL_write(c->ssl, frame, (int)len);
    if (n <= 0) {
        conn_close(c, tls_reason(c, SSL_get_error(c->ssl, n)), 0);
        return -1;
    }
    return 0;
}

/* ---- TLS engine ---- */

static void conn_on_handshake(struct conn *c)
{
    struct mon *m = c->mon;

    c->state = CONN_ACTIVE;
    m->active++;
    m->st.handshakes++;
    if (SSL_session_reused(c->ssl))
        m->st.resumed++;
    uv_timer_stop(&c->timer);
    if (m->opts.verbose)
        log_info("connected", c->dev->serial, NULL, "%s %s%s, handshake %.1f ms",
                 SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl),
                 SSL_session_reused(c->ssl) ? " (resumed)" : "",
                 (double)(uv_hrtime() - c->started_ns) / 1e6);
    dev_on_connected(c);
}

/* Runs OpenSSL on whatever ciphertext rbio holds. See the comment at the top. */
static void conn_pump(struct conn *c)
{
    if (c->state == CONN_HANDSHAKING) {
        ERR_clear_error();
        int r = SSL_do_handshake(c->ssl);
        if (conn_flush(c) < 0)
            return;
        if (r != 1) {
            int e = SSL_get_error(c->ssl, r);
            if (e != SSL_ERROR_WANT_READ)
                conn_close(c, tls_reason(c, e), 0);
            return;
        }
        conn_on_handshake(c);
    }
    while (c->state == CONN_ACTIVE) {
        ERR_clear_error();
        int n = SSL_read(c->ssl, pbuf, sizeof pbuf);
        if (n > 0) {
            int r = mllp_decoder_feed(&c->dec, pbuf, (size_t)n);
            if (c->state != CONN_ACTIVE)
                return;
            if (r < 0) {
                c->mon->st.bad_acks++;
                conn_close(
                    c, r == CMS_ELIMIT ? "ACK frame too large" : "malformed MLLP from server", 0);
                return;
            }
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (conn_flush(c) < 0)
            return;
        if (e == SSL_ERROR_WANT_READ)
            return;
        if (e == SSL_ERROR_ZERO_RETURN) {
            /* Answer close_notify with ours: a session that ends without
             * it is marked non-resumable by OpenSSL. */
            (void)SSL_shutdown(c->ssl);
            if (conn_flush(c) < 0)
                return;
            conn_close(c, "server closed the TLS session", 0);
        } else {
            conn_close(c, tls_reason(c, e), 0);
        }
        return;
    }
}

/* ---- socket input and connect ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(rbuf, sizeof rbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    if (c->state == CONN_CLOSING || nread == 0)
        return;
    if (nread < 0) {
        conn_close(c, nread == UV_EOF ? "server closed the connection" : uv_strerror((int)nread),
                   0);
        return;
    }
    c->mon->st.bytes_in += (uint64_t)nread;
    if (BIO_write(c->rbio, buf->base, (int)nread) != (int)nread) {
        conn_close(c, "out of memory", 0);
        return;
    }
    conn_pump(c);
}

static void on_connect(uv_connect_t *req, int status)
{
    struct conn *c = req->handle->data;
    if (c->state != CONN_CONNECTING)
        return; /* closed meanwhile (status is UV_ECANCELED) */
    if (status < 0) {
        conn_close(c, uv_strerror(status), 0);
        return;
    }
    c->state = CONN_HANDSHAKING;
    int r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (r < 0) {
        conn_close(c, uv_strerror(r), 0);
        return;
    }
    conn_pump(c); /* sends the ClientHello */
}

/* Creates the SSL object for c with the device's identity. */
static int conn_tls_setup(struct conn *c)
{
    struct mon *m = c->mon;
    struct device *dev = c->dev;

    c->ssl = SSL_new(m->ctx);
    if (c->ssl == NULL)
        return -1;
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    if (c->rbio == NULL || c->wbio == NULL) {
        BIO_free(c->rbio);
        BIO_free(c->wbio);
        return -1;
    }
    /* A memory BIO that runs dry reports "retry", not EOF. */
    BIO_set_mem_eof_return(c->rbio, -1);
    SSL_set_bio(c->ssl, c->rbio, c->wbio);
    SSL_set_app_data(c->ssl, c);
    SSL_set_connect_state(c->ssl);
    if (SSL_use_certificate(c->ssl, dev->cert) != 1 || SSL_use_PrivateKey(c->ssl, dev->key) != 1)
        return -1;
    if (dev->chain && SSL_set1_chain(c->ssl, dev->chain) != 1)
        return -1;
    if (m->host_is_ip) {
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), m->opts.host) != 1)
            return -1;
    } else {
        if (SSL_set1_host(c->ssl, m->opts.host) != 1 ||
            SSL_set_tlsext_host_name(c->ssl, m->opts.host) != 1)
            return -1;
    }
    if (m->opts.resume && dev->session)
        SSL_set_session(c->ssl, dev->session);
    return 0;
}

int conn_new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    struct conn *c = SSL_get_app_data(ssl);
    if (c == NULL || c->dev == NULL)
        return 0;
    SSL_SESSION_free(c->dev->session);
    c->dev->session = sess;
    return 1; /* we keep the reference */
}

/* The TCP handle of c; with --source its socket is created at once (so that
 * conn_bind_source can bind it before the connect). Returns 0 or a libuv
 * error (then there is no handle to close). */
static int conn_tcp_init(struct conn *c)
{
    struct mon *m = c->mon;
    if (m->opts.source == NULL)
        return uv_tcp_init(m->loop, &c->tcp);
    return uv_tcp_init_ex(m->loop, &c->tcp, m->src.ss_family);
}

/*
 * --source: binds c's socket to the source address, port 0.
 * IP_BIND_ADDRESS_NO_PORT leaves the choice of the local port to connect(),
 * where it need only be unique per (source, destination) pair rather than
 * per source address (best effort: without it, bind picks the port).
 * Returns 0 or a libuv error (the handle is open: the caller closes c).
 */
static int conn_bind_source(struct conn *c)
{
    struct mon *m = c->mon;
    uv_os_fd_t fd;
    int one = 1;
    if (m->opts.source == NULL)
        return 0;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
        (void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    return uv_tcp_bind(&c->tcp, (const struct sockaddr *)&m->src, 0);
}

void conn_start(struct device *dev)
{
    struct mon *m = dev->mon;
    struct conn *c = calloc(1, sizeof *c);
    int r;

    if (c == NULL) {
        dev_schedule_reconnect(dev);
        return;
    }
    c->mon = m;
    c->dev = dev;
    c->state = CONN_CONNECTING;
    c->started_ns = uv_hrtime();
    mllp_decoder_init(&c->dec, MON_ACK_MAX_FRAME, dev_on_frame, c);
    uv_timer_init(m->loop, &c->timer);
    c->timer.data = c;
    c->handles_open = 1;
    m->nconns++;
    dev->conn = c;
    dev->state = DEV_CONNECTED;

    r = conn_tcp_init(c);
    if (r < 0) {
        /* Only the timer exists; close it through the common path. */
        c->handles_closing = 1;
        uv_close((uv_handle_t *)&c->timer, on_handle_closed);
        c->state = CONN_CLOSING;
        c->dev = NULL;
        dev->conn = NULL;
        dev->state = DEV_IDLE;
        m->st.conn_failures++;
        log_error("socket_failed", dev->serial, NULL, "%s", uv_strerror(r));
        dev_schedule_reconnect(dev);
        return;
    }
    c->tcp.data = c;
    c->handles_open = 2;
    uv_timer_start(&c->timer, on_conn_timer, m->opts.handshake_timeout_ms, 0);
    if (conn_tls_setup(c) < 0) {
        log_error("tls_setup_failed", dev->serial, NULL, "%s", tls_reason(c, SSL_ERROR_SSL));
        m->fatal = 1;
        conn_close(c, "TLS setup failed", 1);
        mon_stop(m);
        return;
    }
    (void)uv_tcp_nodelay(&c->tcp, 1);
    r = conn_bind_source(c);
    if (r < 0) {
        conn_close(c, uv_strerror(r), 0);
        return;
    }
    r = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&m->addr, on_connect);
    if (r < 0)
        conn_close(c, uv_strerror(r), 0);
}
