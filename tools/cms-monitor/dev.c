/*
 * dev.c - one simulated monitor across its connections: pacing (--rate,
 * --window, --count), ACK matching and counting, resend after reconnect,
 * reconnect backoff, the connect ramp (--connect-rate) and the end of a
 * device's run. The TCP/TLS side is conn.c.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cms_err.h"
#include "hl7.h"
#include "log.h"
#include "monitor.h"

#define LOG_LIMIT 20 /* per kind of event; beyond, only with --verbose */

static hl7_msg ackmsg; /* one loop: one parsed ACK at a time */

int mon_should_log(struct mon *m, const char *event, uint64_t count)
{
    if (m->opts.verbose || count <= LOG_LIMIT)
        return 1;
    if (count == LOG_LIMIT + 1)
        log_warn("log_suppressed", NULL, NULL,
                 "further %s events are counted but not logged (--verbose logs all)", event);
    return 0;
}

void dev_free_pending(struct device *dev)
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

/* The device's side of conn_close(): counts, then reconnects or finishes. */
void dev_conn_lost(struct device *dev, const char *why, int graceful, int proven)
{
    struct mon *m = dev->mon;

    dev->conn = NULL;
    uv_timer_stop(&dev->send_timer);
    if (dev->state == DEV_CONNECTED)
        dev->state = DEV_IDLE;
    if (graceful)
        return;

    if (proven) {
        m->st.drops++;
        if (mon_should_log(m, "connection_lost", m->st.drops))
            log_warn("connection_lost", dev->serial, NULL, "%s (%u unacked)", why, dev->npend);
    } else {
        m->st.conn_failures++;
        dev->fail_streak++;
        if (mon_should_log(m, "connect_failed", m->st.conn_failures))
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
        dev_free_pending(dev);
    if (should_reconnect(dev))
        dev_schedule_reconnect(dev);
    else
        dev_finish(dev);
}

/* ---- sending ---- */

static void on_send_timer(uv_timer_t *t)
{
    dev_pump(t->data);
}

void dev_next_ctrl(struct device *dev, char *out)
{
    dev->seq++;
    snprintf(out, MON_CTRL_LEN, "%s%06" PRIu64, dev->ctrl_prefix, dev->seq);
}

int dev_send_new(struct device *dev, struct conn *c, char *frame, size_t len, const char *ctrl,
                 enum msg_kind kind, unsigned nobs, unsigned nsamples)
{
    struct mon *m = dev->mon;
    struct pmsg *p = &dev->pend[dev->npend];

    p->frame = frame;
    p->len = len;
    p->nobs = nobs;
    p->nsamples = nsamples;
    p->kind = kind;
    snprintf(p->ctrl, sizeof p->ctrl, "%s", ctrl);
    p->sent_ns = uv_hrtime();
    p->tx = 1;
    dev->npend++;
    m->pending++;
    if (kind == MSG_ALARM)
        m->st.alarms_sent++;
    else if (kind == MSG_HEARTBEAT)
        m->st.heartbeats_sent++;
    else
        m->st.sent++;
    if (conn_write_frame(c, p->frame, p->len) < 0)
        return -1;
    if (conn_flush(c) < 0)
        return -1;
    if (!uv_is_active((uv_handle_t *)&c->timer))
        conn_arm_ack_timer(c);
    return 0;
}

void dev_pump(struct device *dev)
{
    struct mon *m = dev->mon;
    struct conn *c = dev->conn;
    const struct mon_opts *o = &m->opts;
    unsigned sent = 0;

    if (c == NULL || c->state != CONN_ACTIVE || m->phase != PHASE_RUN)
        return;
    /* Alarm events first: they are what a central station waits for. */
    if ((dev->alarm.due_alarm || dev->alarm.due_hb) && alarm_pump(dev) < 0)
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
        dev_next_ctrl(dev, p->ctrl);
        int r = gen_message(&dev->gen, p->ctrl, &p->frame, &p->len, &p->nobs, &p->nsamples);
        if (r != CMS_OK) {
            log_error("generate_failed", dev->serial, NULL, "%s", cms_strerror(r));
            m->fatal = 1;
            mon_stop(m);
            return;
        }
        p->kind = MSG_VITALS;
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
static int dev_resend(struct conn *c)
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

int dev_on_frame(void *ctx, const char *payload, size_t len)
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
        if (mon_should_log(m, "ack_unmatched", m->st.unmatched))
            log_warn("ack_unmatched", dev->serial, NULL, "MSA %s for %s matches nothing pending",
                     ack_code_name(code), ctrl);
        return CMS_OK;
    }

    struct pmsg *p = &dev->pend[i];
    m->last_ack_ns = uv_hrtime();
    uint64_t lat_us = (m->last_ack_ns - p->sent_ns) / 1000u;
    hist_add(&m->hist, lat_us);
    hist_add(&m->ihist, lat_us);
    if (p->kind == MSG_ALARM) {
        hist_add(&m->ahist, lat_us);
        if (m->all_up_ns && p->sent_ns >= m->all_up_ns + (uint64_t)(m->opts.steady_after * 1e9))
            hist_add(&m->ahist_steady, lat_us);
    }
    if (!dev->ever_up && ++m->devs_up == m->ndev)
        m->all_up_ns = m->last_ack_ns;
    dev->ever_up = 1;
    m->ever_connected = 1;
    dev->fail_streak = 0;
    dev->backoff_ms = 0;
    if (strcmp(code, "AA") == 0) {
        if (p->kind == MSG_ALARM)
            m->st.alarms_aa++;
        else if (p->kind == MSG_HEARTBEAT)
            m->st.heartbeats_aa++;
        else
            m->st.aa++;
        m->st.obs_acked += p->nobs;
        m->st.samples_acked += p->nsamples;
    } else {
        if (strcmp(code, "AR") == 0)
            m->st.ar++;
        else
            m->st.ae++; /* AE, or anything unexpected counts as an error */
        if (mon_should_log(m, "ack_negative", m->st.ae + m->st.ar))
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

/* ---- connection established ---- */

void dev_on_connected(struct conn *c)
{
    struct mon *m = c->mon;
    struct device *dev = c->dev;

    if (dev->ever_up)
        m->st.reconnects++;
    if (m->opts.resend && dev_resend(c) < 0)
        return;
    conn_arm_ack_timer(c);
    if (dev->next_due_ms < (double)uv_now(m->loop))
        dev->next_due_ms = (double)uv_now(m->loop);
    if ((m->opts.alarm_every > 0 || m->opts.heartbeat > 0) && dev->alarm.next_ms == 0 &&
        dev->alarm.next_hb_ms == 0)
        alarm_sim_start(dev, uv_now(m->loop));
    dev_pump(dev);
    if (c->state == CONN_ACTIVE && dev->npend == 0 && m->phase != PHASE_RUN)
        dev_finish(dev);
}

/* ---- devices ---- */

static void on_backoff(uv_timer_t *t)
{
    dev_enqueue(t->data);
}

void dev_schedule_reconnect(struct device *dev)
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
    uv_timer_stop(&dev->alarm_timer);
    if (dev->conn)
        conn_close(dev->conn, "done", 1);
    dev_free_pending(dev);
    dev->state = DEV_DONE;
    m->done_devs++;
    mon_check_done(m);
}

int dev_init_handles(struct device *dev)
{
    struct mon *m = dev->mon;
    uv_timer_init(m->loop, &dev->send_timer);
    uv_timer_init(m->loop, &dev->backoff_timer);
    uv_timer_init(m->loop, &dev->alarm_timer);
    dev->send_timer.data = dev;
    dev->backoff_timer.data = dev;
    dev->alarm_timer.data = dev;
    return CMS_OK;
}

void dev_close_handles(struct device *dev)
{
    uv_close((uv_handle_t *)&dev->send_timer, NULL);
    uv_close((uv_handle_t *)&dev->backoff_timer, NULL);
    uv_close((uv_handle_t *)&dev->alarm_timer, NULL);
}
