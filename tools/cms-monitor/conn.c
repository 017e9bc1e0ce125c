/*
 * conn.c - one simulated monitor's connection: TCP (libuv), TLS (OpenSSL over
 * memory BIOs), MLLP framing, ACK matching, pacing, reconnect with backoff.
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
 *     ENABLE_PARTIAL_WRITE) or fails fatally; renegotiation does not exist in
 *     TLS 1.3 and is refused by servers we talk to in 1.2.
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
#define LOG_LIMIT 20 /* per kind of event, beyond this only with --verbose */

/* One loop, and callbacks never nest across connections: shared buffers. */
static char rbuf[65536]; /* ciphertext from the socket */
static char pbuf[16384]; /* plaintext out of SSL_read */
static char wbuf[65536]; /* ciphertext staged for the socket */
static hl7_msg ackmsg;   /* parsed ACK */

struct wreq {
    uv_write_t req;
    size_t len;
    char data[];
};

static void conn_close_handles(struct conn *c);
static void conn_pump(struct conn *c);
static void on_conn_timer(uv_timer_t *t);
static void dev_schedule_reconnect(struct device *dev);

static int should_log(struct mon *m, uint64_t count)
{
    return m->opts.verbose || count <= LOG_LIMIT;
}

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
static int conn_flush(struct conn *c)
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

static void pend_free_all(struct device *dev)
{
    struct mon *m = dev->mon;
    for (unsigned i = 0; i < dev->npend; i++)
        free(dev->pend[i].frame);
    m->st.lost += dev->npend;
    m->pending -= dev->npend;
    dev->npend = 0;
}

static int should_reconnect(const struct device *dev)
{
    const struct mon *m = dev->mon;
    const struct mon_opts *o = &m->opts;
    if (dev->state == DEV_DONE)
        return 0;
    if (m->phase == PHASE_RUN)
        return !(o->count && dev->generated >= o->count && dev->npend == 0);
    if (m->phase == PHASE_DRAIN)
        return dev->npend > 0;
    return 0;
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

    if (dev == NULL)
        return;
    dev->conn = NULL;
    uv_timer_stop(&dev->send_timer);
    if (dev->state == DEV_CONNECTED)
        dev->state = DEV_IDLE;
    if (graceful)
        return;

    if (proven) {
        m->st.drops++;
        if (should_log(m, m->st.drops))
            log_warn("connection_lost", dev->serial, NULL, "%s (%u unacked)", why, dev->npend);
    } else {
        m->st.conn_failures++;
        dev->fail_streak++;
        if (should_log(m, m->st.conn_failures))
            log_warn("connect_failed", dev->serial, NULL, "%s (attempt %u)", why, dev->fail_streak);
        if (!m->ever_connected && dev->fail_streak >= m->opts.retries) {
            log_error("server_unreachable", dev->serial, NULL, "giving up after %u attempts: %s",
                      dev->fail_streak, why);
            m->fatal = 1;
            mon_stop(m);
            return;
        }
    }
    if (!m->opts.resend)
        pend_free_all(dev);
    if (should_reconnect(dev))
        dev_schedule_reconnect(dev);
    else
        dev_finish(dev);
}

/* ---- timers ---- */

/* While ACTIVE the conn timer is the ACK deadline of the oldest unacked message. */
static void conn_arm_ack_timer(struct conn *c)
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
static int conn_write_frame(struct conn *c, const char *frame, size_t len)
{
    ERR_clear_error();
    int n = SSL_write(c->ssl, frame, (int)len);
    if (n <= 0) {
        conn_close(c, tls_reason(c, SSL_get_error(c->ssl, n)), 0);
        return -1;
    }
    return 0;
}

static void on_send_timer(uv_timer_t *t)
{
    dev_pump(t->data);
}

void dev_pump(struct device *dev)
{
    struct mon *m = dev->mon;
    struct conn *c = dev->conn;
    const struct mon_opts *o = &m->opts;
    unsigned sent = 0;

    if (c == NULL || c->state != CONN_ACTIVE || m->phase != PHASE_RUN)
        return;
    double now = (double)uv_now(m->loop);
    while (dev->npend < o->window && (o->count == 0 || dev->generated < o->count)) {
        if (o->rate > 0) {
            double period = 1000.0 / o->rate;
            if (dev->next_due_ms + period < now)
                dev->next_due_ms = now; /* far behind (window was full): no burst */
            if (dev->next_due_ms > now) {
                uint64_t wait = (uint64_t)(dev->next_due_ms - now + 0.999);
                uv_timer_start(&dev->send_timer, on_send_timer, wait, 0);
                break;
            }
            dev->next_due_ms += period;
        }
        struct pmsg *p = &dev->pend[dev->npend];
        dev->seq++;
        snprintf(p->ctrl, sizeof p->ctrl, "%s%06" PRIu64, dev->ctrl_prefix, dev->seq);
        int r = gen_message(&dev->gen, p->ctrl, &p->frame, &p->len, &p->nobs);
        if (r != CMS_OK) {
            log_error("generate_failed", dev->serial, NULL, "%s", cms_strerror(r));
            m->fatal = 1;
            mon_stop(m);
            return;
        }
        p->sent_ns = uv_hrtime();
        p->tx = 1;
        dev->npend++;
        dev->generated++;
        m->pending++;
        m->st.sent++;
        sent++;
        if (conn_write_frame(c, p->frame, p->len) < 0)
            return;
    }
    if (sent) {
        if (conn_flush(c) < 0)
            return;
        if (!uv_is_active((uv_handle_t *)&c->timer))
            conn_arm_ack_timer(c);
    }
}

/* After a reconnect: the unacked messages again, same bytes, same MSH-10. */
static int conn_resend(struct conn *c)
{
    struct device *dev = c->dev;
    for (unsigned i = 0; i < dev->npend; i++) {
        struct pmsg *p = &dev->pend[i];
        p->sent_ns = uv_hrtime();
        p->tx++;
        c->mon->st.resent++;
        if (conn_write_frame(c, p->frame, p->len) < 0)
            return -1;
    }
    if (dev->npend && conn_flush(c) < 0)
        return -1;
    return 0;
}

/* ---- receiving ACKs ---- */

static const char *ack_code_name(const char *code)
{
    return code[0] ? code : "(empty)";
}

static int on_frame(void *ctx, const char *payload, size_t len)
{
    struct conn *c = ctx;
    struct mon *m = c->mon;
    struct device *dev = c->dev;
    char reason[256], code[8], ctrl[MON_CTRL_LEN + 64], text[256];
    int msa;

    if (c->state != CONN_ACTIVE || dev == NULL)
        return CMS_ECLOSED;
    if (hl7_parse(&ackmsg, payload, len, reason, sizeof reason) != CMS_OK ||
        (msa = hl7_find_segment(&ackmsg, "MSA", 0)) < 0 ||
        hl7_get_text(&ackmsg, (size_t)msa, 1, 0, 0, 0, code, sizeof code) < 0 ||
        hl7_get_text(&ackmsg, (size_t)msa, 2, 0, 0, 0, ctrl, sizeof ctrl) < 0) {
        m->st.bad_acks++;
        conn_close(c, "server sent a frame that is not an HL7 ACK", 0);
        return CMS_ECLOSED;
    }
    text[0] = '\0';
    if (hl7_get_text(&ackmsg, (size_t)msa, 3, 0, 0, 0, text, sizeof text) <= 0) {
        int err = hl7_find_segment(&ackmsg, "ERR", 0);
        if (err < 0 || hl7_get_text(&ackmsg, (size_t)err, 8, 0, 0, 0, text, sizeof text) < 0)
            text[0] = '\0';
    }
    c->acks++;

    unsigned i;
    for (i = 0; i < dev->npend; i++)
        if (strcmp(dev->pend[i].ctrl, ctrl) == 0)
            break;
    if (i == dev->npend) {
        m->st.unmatched++;
        if (should_log(m, m->st.unmatched))
            log_warn("ack_unmatched", dev->serial, NULL, "MSA %s for %s matches nothing pending",
                     ack_code_name(code), ctrl);
        return CMS_OK;
    }

    struct pmsg *p = &dev->pend[i];
    uint64_t lat_us = (uv_hrtime() - p->sent_ns) / 1000u;
    hist_add(&m->hist, lat_us);
    hist_add(&m->ihist, lat_us);
    dev->ever_up = 1;
    m->ever_connected = 1;
    dev->fail_streak = 0;
    dev->backoff_ms = 0;
    if (strcmp(code, "AA") == 0) {
        m->st.aa++;
        m->st.obs_acked += p->nobs;
    } else {
        if (strcmp(code, "AR") == 0)
            m->st.ar++;
        else
            m->st.ae++; /* AE, or anything unexpected counts as an error */
        if (should_log(m, m->st.ae + m->st.ar))
            log_warn("ack_negative", dev->serial, NULL, "MSA %s for %s: %s", ack_code_name(code),
                     ctrl, text[0] ? text : "(no reason given)");
    }
    if (m->opts.verbose)
        printf("ack %s %s %s %.3f ms%s%s%s\n", dev->serial, ctrl, ack_code_name(code),
               (double)lat_us / 1000.0, p->tx > 1 ? " (resent)" : "", text[0] ? " " : "", text);

    free(p->frame);
    memmove(&dev->pend[i], &dev->pend[i + 1], (dev->npend - i - 1) * sizeof dev->pend[0]);
    dev->npend--;
    m->pending--;
    if (i == 0)
        conn_arm_ack_timer(c);

    if (m->phase == PHASE_RUN)
        dev_pump(dev);
    if (c->state == CONN_ACTIVE && dev->npend == 0 &&
        (m->phase != PHASE_RUN || (m->opts.count && dev->generated >= m->opts.count)))
        dev_finish(dev);
    return c->state == CONN_ACTIVE ? CMS_OK : CMS_ECLOSED;
}

/* ---- TLS engine ---- */

static void conn_on_handshake(struct conn *c)
{
    struct mon *m = c->mon;
    struct device *dev = c->dev;

    c->state = CONN_ACTIVE;
    m->active++;
    m->st.handshakes++;
    if (dev->ever_up)
        m->st.reconnects++;
    uv_timer_stop(&c->timer);
    if (m->opts.verbose)
        log_info("connected", dev->serial, NULL, "%s %s%s, handshake %.1f ms",
                 SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl),
                 SSL_session_reused(c->ssl) ? " (resumed)" : "",
                 (double)(uv_hrtime() - c->started_ns) / 1e6);
    if (m->opts.resend && conn_resend(c) < 0)
        return;
    conn_arm_ack_timer(c);
    if (dev->next_due_ms < (double)uv_now(m->loop))
        dev->next_due_ms = (double)uv_now(m->loop);
    dev_pump(dev);
    if (c->state == CONN_ACTIVE && dev->npend == 0 && m->phase != PHASE_RUN)
        dev_finish(dev);
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
        if (e == SSL_ERROR_ZERO_RETURN)
            conn_close(c, "server closed the TLS session", 0);
        else
            conn_close(c, tls_reason(c, e), 0);
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
    mllp_decoder_init(&c->dec, MON_ACK_MAX_FRAME, on_frame, c);
    uv_timer_init(m->loop, &c->timer);
    c->timer.data = c;
    c->handles_open = 1;
    m->nconns++;
    dev->conn = c;
    dev->state = DEV_CONNECTED;

    r = uv_tcp_init(m->loop, &c->tcp);
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
    r = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&m->addr, on_connect);
    if (r < 0)
        conn_close(c, uv_strerror(r), 0);
}

/* ---- devices ---- */

static void on_backoff(uv_timer_t *t)
{
    dev_enqueue(t->data);
}

static void dev_schedule_reconnect(struct device *dev)
{
    const struct mon_opts *o = &dev->mon->opts;
    unsigned b = dev->backoff_ms ? dev->backoff_ms * 2 : o->backoff_min_ms;
    if (b > o->backoff_max_ms)
        b = o->backoff_max_ms;
    dev->backoff_ms = b;
    /* Jitter: between half and the full backoff, so a fleet does not reconnect in lockstep. */
    uint64_t delay = b / 2 + gen_rand(&dev->gen.rng) % (b / 2 + 1);
    uv_timer_start(&dev->backoff_timer, on_backoff, delay, 0);
}

static void on_ramp(uv_timer_t *t)
{
    struct mon *m = t->data;
    uint64_t now = uv_now(m->loop);
    double rate = m->opts.connect_rate;

    if (rate > 0) {
        double cap = rate / 20.0 > 1.0 ? rate / 20.0 : 1.0; /* at most 50 ms worth at once */
        m->tokens += rate * (double)(now - m->ramp_last_ms) / 1000.0;
        if (m->tokens > cap)
            m->tokens = cap;
    }
    m->ramp_last_ms = now;
    while (m->qhead && (rate <= 0 || m->tokens >= 1.0)) {
        struct device *dev = m->qhead;
        m->qhead = dev->qnext;
        if (m->qhead == NULL)
            m->qtail = NULL;
        dev->qnext = NULL;
        dev->queued = 0;
        if (dev->state != DEV_IDLE || m->phase == PHASE_STOP)
            continue;
        m->tokens -= 1.0;
        conn_start(dev);
    }
    if (m->qhead == NULL)
        uv_timer_stop(t);
}

void dev_enqueue(struct device *dev)
{
    struct mon *m = dev->mon;
    if (dev->queued || dev->state != DEV_IDLE || m->phase == PHASE_STOP)
        return;
    dev->queued = 1;
    dev->qnext = NULL;
    if (m->qtail)
        m->qtail->qnext = dev;
    else
        m->qhead = dev;
    m->qtail = dev;
    if (!uv_is_active((uv_handle_t *)&m->ramp_timer)) {
        if (m->tokens < 1.0)
            m->tokens = 1.0;
        m->ramp_last_ms = uv_now(m->loop);
        uv_timer_start(&m->ramp_timer, on_ramp, 0, 5);
    }
}

void dev_finish(struct device *dev)
{
    struct mon *m = dev->mon;
    if (dev->state == DEV_DONE)
        return;
    uv_timer_stop(&dev->send_timer);
    uv_timer_stop(&dev->backoff_timer);
    if (dev->conn)
        conn_close(dev->conn, "done", 1);
    pend_free_all(dev);
    dev->state = DEV_DONE;
    m->done_devs++;
    mon_check_done(m);
}

int dev_init_handles(struct device *dev)
{
    struct mon *m = dev->mon;
    uv_timer_init(m->loop, &dev->send_timer);
    uv_timer_init(m->loop, &dev->backoff_timer);
    dev->send_timer.data = dev;
    dev->backoff_timer.data = dev;
    return CMS_OK;
}

void dev_close_handles(struct device *dev)
{
    uv_close((uv_handle_t *)&dev->send_timer, NULL);
    uv_close((uv_handle_t *)&dev->backoff_timer, NULL);
}
