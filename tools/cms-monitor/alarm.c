/*
 * alarm.c - IHE PCD-04 ORU^R40 alarms and heartbeats of one simulated monitor
 * (--alarms SEC, --heartbeat SEC).
 *
 * Each device raises an alarm after an exponentially distributed pause of
 * mean --alarms seconds (an SpO2 desaturation, a high heart rate or an ECG
 * lead-off), reports it again ("continue") every CONTINUE_MS while it lasts
 * (5 to 30 s), then ends it (acknowledged). One alarm at a time per device.
 * A heartbeat (priority PN, phase continue) goes every --heartbeat seconds.
 * The layout follows the IHE PCD TF-2 examples (tests/unit/sample_pcd04.h):
 * OBR-3 the alarm identifier, then one OBX per facet with the sub-id facet
 * number (.1 type, .2 source with value and limits, .3 phase, .4 state,
 * .5 inactivation state, .6 priority, .7 kind).
 *
 * An event that falls due while the window is full waits (due_*) and goes
 * first when an ACK frees a slot (dev_pump calls alarm_pump).
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cms_err.h"
#include "log.h"
#include "mllp.h"
#include "monitor.h"

#define CONTINUE_MS 10000u

struct alarm_def {
    const char *code, *label, *text, *prio, *kind;
    const char *src_code, *src_label, *src_sub, *unit_code, *unit_label, *limits;
    double value_lo, value_hi; /* the current value while it lasts; 0/0: none */
};

static const struct alarm_def defs[] = {
    {"196674", "MDC_EVT_DESAT", "SpO2 Desat", "PH", "SP", "150456", "MDC_PULS_OXIM_SAT_O2",
     "1.22.1.150456", "262688", "MDC_DIM_PERCENT", "90-100", 78, 89},
    {"196648", "MDC_EVT_HI", "HR High", "PM", "SP", "147842", "MDC_ECG_HEART_RATE", "1.5.1.147842",
     "264864", "MDC_DIM_BEAT_PER_MIN", "50-120", 125, 160},
    {"196680", "MDC_EVT_LEAD_OFF", "ECG Lead Off", "PL", "ST", "69798", "MDC_DEV_ECG_VMD",
     "1.5.0.0", "", "", "", 0, 0},
};
#define NDEFS (sizeof defs / sizeof defs[0])

/* HL7 DTM in UTC with milliseconds for wall-clock ms. */
static void dtm(uint64_t ms, char out[32])
{
    time_t t = (time_t)(ms / 1000u);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, 32, "%04u%02u%02u%02u%02u%02u.%03u+0000", (unsigned)(tm.tm_year + 1900) % 10000u,
             (unsigned)(tm.tm_mon + 1) % 100u, (unsigned)tm.tm_mday % 100u,
             (unsigned)tm.tm_hour % 100u, (unsigned)tm.tm_min % 100u, (unsigned)tm.tm_sec % 100u,
             (unsigned)(ms % 1000u));
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Builds one ORU^R40 frame. hb: a heartbeat (no source, priority PN). */
static int build(struct device *dev, const char *ctrl, const char *phase, int hb, char **out,
                 size_t *len)
{
    struct gen *g = &dev->gen;
    struct alarm_sim *a = &dev->alarm;
    const struct alarm_def *d = &defs[a->type];
    char now_s[32], body[4096];
    uint64_t now = wall_ms();
    int n;

    dtm(now, now_s);
    if (hb) {
        n = snprintf(body, sizeof body,
                     "MSH|^~\\&|%s|%s|CMS|%s|%s||ORU^R40^ORU_R40|%s|P|2.6|||AL|NE||UNICODE UTF-8|||"
                     "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4^ISO\r"
                     "%s\r%s\r"
                     "OBR|1|%s^%s|HEARTBEAT^%s|196616^MDC_EVT_ALARM^MDC|||%s\r"
                     "OBX|1|ST|196616^MDC_EVT_ALARM^MDC|0.0.0.0.1|watchdog||||||F|||%s\r"
                     "OBX|2|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|0.0.0.0.3|continue||||||F\r"
                     "OBX|3|ST|68484^MDC_ATTR_ALARM_PRIORITY^MDC|0.0.0.0.6|PN||||||F\r"
                     "OBX|4|ST|68485^MDC_ATTR_ALERT_TYPE^MDC|0.0.0.0.7|SA||||||F\r",
                     g->msh3, g->sending_fac, g->facility_esc, now_s, ctrl, g->pid, g->pv1, ctrl,
                     g->serial_esc, g->serial_esc, now_s, now_s);
    } else {
        const char *state = strcmp(phase, "end") == 0 ? "inactive" : "active";
        const char *inact = strcmp(phase, "end") == 0        ? "alert-acknowledged"
                            : (gen_rand(&g->rng) & 3u) == 0u ? "audio-paused"
                                                             : "enabled";
        char src[256];
        if (d->value_hi > 0) {
            double v = d->value_lo + (d->value_hi - d->value_lo) * gen_uniform(&g->rng);
            if (strcmp(phase, "end") == 0)
                v = d->value_lo < 100 ? 93 : 110; /* back within the limits */
            snprintf(src, sizeof src, "OBX|2|NM|%s^%s^MDC|%s.2|%.0f|%s^%s^MDC|%s|%s|||F|||%s\r",
                     d->src_code, d->src_label, d->src_sub, v, d->unit_code, d->unit_label,
                     d->limits, strcmp(phase, "end") == 0 ? "N" : "A", now_s);
        } else {
            snprintf(src, sizeof src,
                     "OBX|2|CWE|68480^MDC_ATTR_ALERT_SOURCE^MDC|%s.2|%s^%s^MDC||||||F\r",
                     d->src_sub, d->src_code, d->src_label);
        }
        n = snprintf(body, sizeof body,
                     "MSH|^~\\&|%s|%s|CMS|%s|%s||ORU^R40^ORU_R40|%s|P|2.6|||AL|NE||UNICODE UTF-8|||"
                     "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4^ISO\r"
                     "%s\r%s\r"
                     "OBR|1|%s^%s|%s^%s|196616^MDC_EVT_ALARM^MDC|||%s\r"
                     "OBX|1|ST|%s^%s^MDC|%s.1|%s||||||F|||%s\r"
                     "%s"
                     "OBX|3|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|%s.3|%s||||||F\r"
                     "OBX|4|ST|68482^MDC_ATTR_ALARM_STATE^MDC|%s.4|%s||||||F\r"
                     "OBX|5|ST|68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC|%s.5|%s||||||F\r"
                     "OBX|6|ST|68484^MDC_ATTR_ALARM_PRIORITY^MDC|%s.6|%s||||||F\r"
                     "OBX|7|ST|68485^MDC_ATTR_ALERT_TYPE^MDC|%s.7|%s||||||F\r",
                     g->msh3, g->sending_fac, g->facility_esc, now_s, ctrl, g->pid, g->pv1, ctrl,
                     g->serial_esc, a->id, g->serial_esc, now_s, d->code, d->label, d->src_sub,
                     d->text, now_s, src, d->src_sub, phase, d->src_sub, state, d->src_sub, inact,
                     d->src_sub, d->prio, d->src_sub, d->kind);
    }
    if (n < 0 || (size_t)n >= sizeof body)
        return CMS_ELIMIT;
    *out = malloc((size_t)n + 3);
    if (*out == NULL)
        return CMS_ENOMEM;
    *len = mllp_encode(*out, (size_t)n + 3, body, (size_t)n);
    return CMS_OK;
}

/* Exponential pause of mean mean_s seconds, in ms, at least 1 s. */
static uint64_t pause_ms(struct gen *g, double mean_s)
{
    double u = gen_uniform(&g->rng);
    double s = -log(1.0 - u) * mean_s;
    if (s < 1.0)
        s = 1.0;
    if (s > 86400.0)
        s = 86400.0;
    return (uint64_t)(s * 1000.0);
}

static void on_alarm_timer(uv_timer_t *t)
{
    struct device *dev = t->data;
    uint64_t now = uv_now(dev->mon->loop);
    struct alarm_sim *a = &dev->alarm;

    if (a->next_ms && a->next_ms <= now)
        a->due_alarm = 1;
    if (a->next_hb_ms && a->next_hb_ms <= now)
        a->due_hb = 1;
    (void)alarm_pump(dev);
}

static void arm(struct device *dev)
{
    struct alarm_sim *a = &dev->alarm;
    uint64_t now = uv_now(dev->mon->loop), next = 0;

    if (a->next_ms && !a->due_alarm)
        next = a->next_ms;
    if (a->next_hb_ms && !a->due_hb && (next == 0 || a->next_hb_ms < next))
        next = a->next_hb_ms;
    if (next)
        uv_timer_start(&dev->alarm_timer, on_alarm_timer, next > now ? next - now : 0, 0);
}

void alarm_sim_start(struct device *dev, uint64_t now_ms)
{
    const struct mon_opts *o = &dev->mon->opts;
    struct alarm_sim *a = &dev->alarm;

    if (o->alarm_every > 0)
        a->next_ms = now_ms + pause_ms(&dev->gen, o->alarm_every);
    if (o->heartbeat > 0)
        a->next_hb_ms = now_ms + (uint64_t)(o->heartbeat * 1000.0);
    arm(dev);
}

/* Sends one message now. Returns 0, 1 (nothing sent: no room), -1 (closed). */
static int send_one(struct device *dev, int hb)
{
    struct mon *m = dev->mon;
    struct conn *c = dev->conn;
    struct alarm_sim *a = &dev->alarm;
    uint64_t now = uv_now(m->loop);
    const char *phase;
    char ctrl[MON_CTRL_LEN], *frame = NULL;
    size_t len = 0;

    if (c == NULL || c->state != CONN_ACTIVE || m->phase != PHASE_RUN ||
        dev->npend >= m->opts.window)
        return 1;
    if (hb) {
        phase = "continue";
    } else if (!a->active) {
        a->active = 1;
        a->type = (unsigned)(gen_rand(&dev->gen.rng) % NDEFS);
        a->n++;
        snprintf(a->id, sizeof a->id, "ALM-%.24s-%u", dev->serial, a->n);
        a->ends_ms = now + 5000u + gen_rand(&dev->gen.rng) % 25001u;
        phase = "start";
    } else if (now >= a->ends_ms) {
        a->active = 0;
        phase = "end";
    } else {
        phase = "continue";
    }
    dev_next_ctrl(dev, ctrl);
    int r = build(dev, ctrl, phase, hb, &frame, &len);
    if (r != CMS_OK) {
        log_error("generate_failed", dev->serial, NULL, "alarm: %s", cms_strerror(r));
        m->fatal = 1;
        mon_stop(m);
        return -1;
    }
    if (hb) {
        a->due_hb = 0;
        a->next_hb_ms = now + (uint64_t)(m->opts.heartbeat * 1000.0);
    } else {
        a->due_alarm = 0;
        if (a->active) {
            uint64_t next = now + CONTINUE_MS;
            a->next_ms = next < a->ends_ms ? next : a->ends_ms;
        } else {
            a->next_ms = now + pause_ms(&dev->gen, m->opts.alarm_every);
        }
    }
    return dev_send_new(dev, c, frame, len, ctrl, hb ? MSG_HEARTBEAT : MSG_ALARM, 0, 0);
}

int alarm_pump(struct device *dev)
{
    struct alarm_sim *a = &dev->alarm;
    int r;

    if (a->due_alarm && (r = send_one(dev, 0)) != 0)
        return r < 0 ? -1 : (arm(dev), 0);
    if (a->due_hb && (r = send_one(dev, 1)) != 0)
        return r < 0 ? -1 : (arm(dev), 0);
    arm(dev);
    return 0;
}
