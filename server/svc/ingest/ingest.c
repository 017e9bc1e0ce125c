/*
 * ingest.c - HL7 v2 / IHE PCD-01 (ORU^R01) and PCD-04 (ORU^R40) over MLLP
 * from authenticated monitors.
 * See ingest.h for the rules; this file is the per-connection session.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "events.h"
#include "ingest.h"
#include "ingest_int.h"
#include "log.h"
#include "mllp.h"
#include "peer.h"
#include "svc.h"

/* peer.c finds the policy at the start of the listener's proto_ctx. */
_Static_assert(offsetof(ingest_ctx, peer) == 0, "peer_policy must be ingest_ctx's first member");

#define ACK_BUF 8192 /* escaping can triple a 199-char control id */

/* One frame awaiting its ACK; the session keeps them in arrival order. */
typedef struct pending {
    struct pending *next;
    net_conn *conn; /* referenced while the entry exists */
    bool done;
    enum hl7_ack_code code;
    unsigned char type;  /* cm_hl7_type, for the metrics */
    uint64_t received;   /* uv_hrtime() when the frame was complete */
    char control_id[sizeof(((vitals_msg *)0)->control_id)];
    char their_app[PCD01_ID_LEN];
    char their_facility[PCD01_ID_LEN];
    char version[16];
    char trigger[8];
    char err_code[8];
    char reason[200];
    char *event;            /* the live event to publish after COMMIT (events.h), or NULL */
    const char *event_type; /* its type (static) */
    char event_ward[EVENTS_WARD_LEN];
} pending;

typedef struct session {
    mllp_decoder dec;
    int64_t device_id;
    const char *serial; /* the certificate's CN (borrowed from the peer record) */
    size_t nidents;
    char (*idents)[64]; /* owned: the device's other identifiers */
    pending *head, *tail;
    unsigned npending;
    bool paused_local; /* by max_pending_per_conn */
    bool ack_due;      /* listed in ix->due */
} session;

/* ---- ACKs ---------------------------------------------------------------- */

static void hl7_now(char *out, size_t cap)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, cap, "%Y%m%d%H%M%S", &tm);
    snprintf(out + n, cap - n, ".%03ld+0000", ts.tv_nsec / 1000000);
}

static void send_ack(net_conn *c, ingest_ctx *ix, const pending *p)
{
    char ts[40], ack_id[64], body[ACK_BUF], frame[ACK_BUF + 3];
    hl7_now(ts, sizeof(ts));
    snprintf(ack_id, sizeof(ack_id), "%s-%u-%llu", ix->cfg.hl7_app, ix->worker_id,
             (unsigned long long)++ix->ack_seq);
    hl7_ack a = {
        .code = p->code,
        .their_app = p->their_app,
        .their_facility = p->their_facility,
        .control_id = p->control_id,
        .version = p->version,
        .trigger = p->trigger[0] ? p->trigger : "R01",
        .our_app = ix->cfg.hl7_app,
        .our_facility = ix->cfg.hl7_facility,
        .ack_control_id = ack_id,
        .timestamp = ts,
        .reason = p->code == HL7_AA ? NULL : p->reason,
        .err_code = p->code == HL7_AA ? NULL : p->err_code,
    };
    int n = hl7_ack_encode(&a, body, sizeof(body));
    if (n < 0) {
        log_error("ack_encode_failed", net_conn_identity(c), net_conn_peer(c), "%s",
                  cms_strerror(n));
        net_conn_close(c, "cannot encode ACK");
        return;
    }
    size_t fl = mllp_encode(frame, sizeof(frame), body, (size_t)n);
    if (fl == 0 || net_conn_write(c, frame, fl) != CMS_OK)
        return; /* the connection is closing; the monitor resends what it misses */
    static const enum cm_result results[] = {[HL7_AA] = CM_RESULT_AA, [HL7_AE] = CM_RESULT_AE,
                                              [HL7_AR] = CM_RESULT_AR};
    metrics_add(CM_HL7_MESSAGES, cm_hl7(p->type, results[p->code]), 1);
    metrics_observe(CM_ACK_LATENCY, 0, (double)(uv_hrtime() - p->received) / 1e9);
}

static void maybe_resume(net_conn *c, session *s, ingest_ctx *ix)
{
    if (s->paused_local && s->npending < ix->cfg.max_pending_per_conn) {
        s->paused_local = false;
        if (!ix->global_paused && !ix->draining)
            net_conn_resume(c);
    }
}

/* Draining: the last session gone and nothing in flight in the store. */
static void drain_check(ingest_ctx *ix)
{
    if (!ix->draining || !ix->drained || ix->nsessions > 0 || store_backlog(ix->store) > 0)
        return;
    void (*cb)(void *) = ix->drained;
    ix->drained = NULL;
    cb(ix->drained_arg);
}

/* Sends (or, once closed, drops) every ACK that is ready, in order. */
static void flush_acks(net_conn *c)
{
    session *s = net_conn_session(c);
    ingest_ctx *ix = net_conn_proto_ctx(c);
    net_conn_ref(c);
    net_conn_cork(c); /* the ACKs released together leave in one write */
    while (s->head && s->head->done) {
        pending *p = s->head;
        s->head = p->next;
        if (!s->head)
            s->tail = NULL;
        s->npending--;
        if (net_conn_state(c) == NET_ACTIVE)
            send_ack(c, ix, p);
        free(p->event);
        free(p);
        net_conn_unref(c);
    }
    net_conn_uncork(c);
    if (net_conn_state(c) == NET_ACTIVE) {
        maybe_resume(c, s, ix);
        if (ix->draining && s->npending == 0) /* every ACK it was owed is out */
            net_conn_close(c, NULL);
    }
    net_conn_unref(c);
}

/*
 * A stored message's ACK waits for the end of the store's round of results
 * (on_results): a monitor with several messages in one commit then gets
 * all their ACKs in one write, not one system call each.
 */
static void ack_later(ingest_ctx *ix, net_conn *c)
{
    session *s = net_conn_session(c);
    if (s->ack_due)
        return;
    if (ix->ndue == ix->due_cap) {
        size_t cap = ix->due_cap ? ix->due_cap * 2 : 64;
        net_conn **n = realloc(ix->due, cap * sizeof(*n));
        if (!n) {
            flush_acks(c); /* at once, then */
            return;
        }
        ix->due = n;
        ix->due_cap = cap;
    }
    s->ack_due = true;
    net_conn_ref(c);
    ix->due[ix->ndue++] = c;
}

static void on_results(void *ctx)
{
    ingest_ctx *ix = ctx;
    /* flush_acks may resume a monitor whose queued frames add entries: taken from the end */
    while (ix->ndue > 0) {
        net_conn *c = ix->due[--ix->ndue];
        ((session *)net_conn_session(c))->ack_due = false;
        flush_acks(c);
        net_conn_unref(c);
    }
    drain_check(ix);
}

/* src into dst (cap bytes), cut to fit: a plain copy, as snprintf("%s") but
 * without the formatter (five per message here). */
static void copy_field(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static pending *pending_new(net_conn *c, const pcd01_msg *m)
{
    session *s = net_conn_session(c);
    pending *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->conn = c;
    p->received = uv_hrtime();
    p->type = CM_HL7_OTHER;
    if (strcmp(m->msg_type, "ORU") == 0 && strcmp(m->trigger, "R01") == 0)
        p->type = CM_HL7_ORU_R01;
    else if (strcmp(m->msg_type, "ORU") == 0 && strcmp(m->trigger, "R40") == 0)
        p->type = CM_HL7_ORU_R40;
    net_conn_ref(c);
    copy_field(p->control_id, sizeof(p->control_id), m->vitals.control_id);
    copy_field(p->their_app, sizeof(p->their_app), m->sending_app[0]);
    copy_field(p->their_facility, sizeof(p->their_facility), m->sending_facility);
    copy_field(p->version, sizeof(p->version), m->version[0] ? m->version : "2.6");
    copy_field(p->trigger, sizeof(p->trigger), m->trigger);
    if (s->tail)
        s->tail->next = p;
    else
        s->head = p;
    s->tail = p;
    s->npending++;
    return p;
}

static void pending_fail(pending *p, enum hl7_ack_code code, const char *err_code,
                         const char *reason)
{
    p->done = true;
    p->code = code;
    snprintf(p->err_code, sizeof(p->err_code), "%s", err_code);
    snprintf(p->reason, sizeof(p->reason), "%s", reason);
}

/* ---- identity ------------------------------------------------------------ */

static bool names_this_device(const session *s, const char *id)
{
    if (strcasecmp(id, s->serial) == 0)
        return true;
    for (size_t i = 0; i < s->nidents; i++)
        if (strcasecmp(id, s->idents[i]) == 0)
            return true;
    return false;
}

/* id when it is set and not this device, else NULL. */
static const char *foreign(const session *s, const char *id)
{
    return id[0] && !names_this_device(s, id) ? id : NULL;
}

/*
 * Returns the first sender identifier in m that is not this device, or NULL.
 * MSH-3 is an HD: when its universal ID (component 2, e.g. an EUI-64 with
 * type "EUI-64") is present, that is the device identifier and component 1
 * is only the application's namespace name (IHE PCD puts a product name
 * there); otherwise component 1 names the device. Every OBX-18 equipment
 * identifier must name this device too (numeric, text and waveform rows,
 * and every row of an alarm), and so must the assigner of each alarm's
 * identifier (OBR-3, an EI: its universal ID, else its namespace ID): a
 * device may only raise alarms for itself. waves, r40: what the message
 * carried beyond m (NULL when it is not that kind).
 */
static const char *foreign_sender(const session *s, const pcd01_msg *m, const pcd01_waves *waves,
                                  const pcd04_msg *r40)
{
    const char *id;
    if ((id = foreign(s, m->sending_app[1][0] ? m->sending_app[1] : m->sending_app[0])))
        return id;
    for (size_t i = 0; i < m->vitals.nobs; i++)
        if ((id = foreign(s, m->vitals.obs[i].equipment_id)))
            return id;
    for (size_t i = 0; i < m->ntexts; i++)
        if ((id = foreign(s, m->texts[i].equipment_id)))
            return id;
    for (size_t i = 0; waves && i < waves->nwaves; i++)
        if ((id = foreign(s, waves->waves[i].equipment_id)))
            return id;
    for (size_t i = 0; r40 && i < r40->nequipment; i++)
        if ((id = foreign(s, r40->equipment_ids[i])))
            return id;
    for (size_t i = 0; r40 && i < r40->nalarms; i++) {
        const pcd04_alarm *a = &r40->alarms[i];
        if ((id = foreign(s, a->alarm_uid[0] ? a->alarm_uid : a->alarm_ns)))
            return id;
    }
    return NULL;
}

static void audit(ingest_ctx *ix, const char *event, net_conn *c, json_t *detail)
{
    svc_audit(ix->store, event, NULL, net_conn_identity(c)[0] ? net_conn_identity(c) : NULL,
              net_conn_peer(c), detail);
}

/* ---- frames -------------------------------------------------------------- */

static void on_stored(void *ctx, int status, const store_ingest_result *res)
{
    pending *p = ctx;
    net_conn *c = p->conn;
    p->done = true;
    if (status == CMS_OK) {
        p->code = HL7_AA;
        metrics_observe(CM_COMMIT_LATENCY, 0, (double)(uv_hrtime() - p->received) / 1e9);
        if (res->duplicate)
            log_debug("duplicate", net_conn_identity(c), net_conn_peer(c),
                      "control id %s already stored", p->control_id);
        if (p->event && !res->duplicate)
            events_publish(p->event_type, p->event_ward, p->event);
        if (res->unknown_alarms)
            log_warn("alarm_unknown", net_conn_identity(c), net_conn_peer(c),
                     "control_id=%s: %u alarm event(s) for an alarm that was not open (stored, "
                     "flagged unknown_alarm)",
                     p->control_id, res->unknown_alarms);
    } else if (status == CMS_EPROTO) {
        pending_fail(p, HL7_AE, "207", "the database refused this message's data");
    } else if (status == CMS_EUNAVAIL) {
        pending_fail(p, HL7_AE, "207", "database unavailable, message not stored: resend later");
    } else {
        pending_fail(p, HL7_AE, "207", "server shutting down, message not stored: resend later");
    }
    ack_later(net_conn_proto_ctx(c), c);
}

static void pause_one(net_conn *c, void *arg)
{
    (void)arg;
    net_conn_pause(c);
}

static int on_frame(void *ctx, const char *payload, size_t len)
{
    net_conn *c = ctx;
    session *s = net_conn_session(c);
    ingest_ctx *ix = net_conn_proto_ctx(c);
    pcd01_msg *m = &ix->msg;
    char reason[200] = "";
    pending *p;

    if (net_conn_state(c) != NET_ACTIVE)
        return CMS_ECLOSED;
    memset(m, 0, offsetof(pcd01_msg, vitals.obs));
    if (hl7_parse(&ix->hl7, payload, len, reason, sizeof(reason)) != CMS_OK) {
        if (!(p = pending_new(c, m)))
            return CMS_ENOMEM;
        pending_fail(p, HL7_AR, "100", reason);
        log_warn("hl7_rejected", s->serial, net_conn_peer(c), "%s", reason);
        goto out;
    }
    (void)pcd01_read_header(&ix->hl7, m);
    bool r40 = strcmp(m->msg_type, "ORU") == 0 && strcmp(m->trigger, "R40") == 0;
    pcd01_verdict v;
    int rc = r40 ? pcd04_extract(&ix->hl7, m, &ix->r40, &v)
                 : pcd01_extract_full(&ix->hl7, m, &ix->waves, &v);
    if (!(p = pending_new(c, m)))
        return CMS_ENOMEM;
    if (rc != CMS_OK) {
        pending_fail(p, v.ack == HL7_AE ? HL7_AE : HL7_AR, v.err_code ? v.err_code : "100",
                     v.reason);
        log_warn("hl7_rejected", s->serial, net_conn_peer(c), "control_id=%s: %s %s",
                 m->vitals.control_id, v.ack == HL7_AE ? "AE" : "AR", v.reason);
        goto out;
    }
    const char *claimed = foreign_sender(s, m, r40 ? NULL : &ix->waves, r40 ? &ix->r40 : NULL);
    if (claimed) {
        snprintf(reason, sizeof(reason),
                 "sender '%s' is not the authenticated device '%s': message refused", claimed,
                 s->serial);
        pending_fail(p, HL7_AR, "204", reason); /* 0357: unknown key identifier */
        log_warn("impersonation", s->serial, net_conn_peer(c), "control_id=%s claims %s",
                 m->vitals.control_id, claimed);
        audit(ix, "impersonation", c,
              json_pack("{s:s, s:s, s:s}", "claimed", claimed, "control_id",
                        m->vitals.control_id, "message", r40 ? "ORU^R40" : "ORU^R01"));
        goto out;
    }
    clinical_content more = {
        .texts = m->texts,
        .ntexts = m->ntexts,
        .waves = r40 ? NULL : ix->waves.waves,
        .nwaves = r40 ? 0 : ix->waves.nwaves,
        .samples = ix->waves.samples,
        .wave_facets = ix->waves.facets,
        .nwave_facets = r40 ? 0 : ix->waves.nfacets,
        .alarms = r40 ? ix->r40.alarms : NULL,
        .nalarms = r40 ? ix->r40.nalarms : 0,
        .alarm_facets = ix->r40.facets,
        .nalarm_facets = r40 ? ix->r40.nfacets : 0,
    };
    p->event = ingest__event_json(s->serial, m, r40 ? &ix->r40 : NULL, &p->event_type);
    if (p->event)
        ingest__ward(m->vitals.location, p->event_ward, sizeof(p->event_ward));
    rc = store_ingest_full(ix->store, s->device_id, &m->vitals, &more, on_stored, p);
    if (rc != CMS_OK) {
        pending_fail(p, HL7_AE, "207",
                     rc == CMS_ELIMIT ? "server busy, message not stored: resend later"
                                      : "server shutting down, message not stored");
        log_warn("ingest_refused", s->serial, net_conn_peer(c), "control_id=%s: %s",
                 m->vitals.control_id, cms_strerror(rc));
    }
out:
    if (s->npending >= ix->cfg.max_pending_per_conn && !s->paused_local) {
        s->paused_local = true;
        net_conn_pause(c);
    }
    if (!ix->global_paused &&
        store_backlog(ix->store) >= (size_t)ix->cfg.max_queued_msgs * 9 / 10) {
        ix->global_paused = true;
        log_warn("backpressure", NULL, NULL, "ingest backlog %zu: pausing all monitors",
                 store_backlog(ix->store));
        net_server_foreach(ix->server, pause_one, NULL);
    }
    if (s->head && s->head->done)
        flush_acks(c);
    return CMS_OK;
}

static void resume_one(net_conn *c, void *arg)
{
    (void)arg;
    session *s = net_conn_session(c);
    if (net_conn_proto_ctx(c) && !s->paused_local && !((ingest_ctx *)arg)->draining)
        net_conn_resume(c);
}

static void on_store_drain(void *ctx)
{
    ingest_ctx *ix = ctx;
    if (!ix->global_paused)
        return;
    ix->global_paused = false;
    log_info("backpressure", NULL, NULL, "ingest backlog drained: resuming monitors");
    net_server_foreach(ix->server, resume_one, ix);
}

/* ---- connection callbacks ------------------------------------------------ */

/* The registry allowed the device (peer.c): the session starts. */
static void on_device(net_conn *c, const store_device *dev)
{
    session *s = net_conn_session(c);
    ingest_ctx *ix = net_conn_proto_ctx(c);
    const tls_peer *p = net_conn_peer_record(c);
    s->device_id = dev->id;
    if (dev->nidents) {
        s->idents = calloc(dev->nidents, sizeof(*s->idents));
        if (!s->idents) {
            net_conn_close(c, "out of memory");
            return;
        }
        memcpy(s->idents, dev->idents, dev->nidents * sizeof(*s->idents));
        s->nidents = dev->nidents;
    }
    if (ix->draining) { /* the registry answered after the drain began */
        net_conn_close(c, NULL);
        return;
    }
    log_info("device_connected", s->serial, net_conn_peer(c), "%s%s", p->version,
             p->resumed ? " resumed" : "");
    if (ix->global_paused)
        net_conn_pause(c);
    net_conn_activate(c);
}

static int on_handshake(net_conn *c)
{
    session *s = net_conn_session(c);
    ingest_ctx *ix = net_conn_proto_ctx(c);
    /* The CN is the serial whatever the verdict: refusals are logged under it. */
    s->serial = net_conn_peer_record(c)->cn;
    ix->nsessions++; /* on_close follows, whatever happens now */
    if (ix->draining)
        return CMS_ECLOSED;
    /* Before the verdict: a kept one activates c, and input is decoded, at once. */
    mllp_decoder_init(&s->dec, ix->cfg.max_frame_bytes, on_frame, c);
    enum peer_verdict v;
    return peer_authorize(c, &ix->peer, &v); /* CMS_EAGAIN for a device, else refused */
}

static int on_data(net_conn *c, const char *data, size_t len)
{
    session *s = net_conn_session(c);
    int rc = mllp_decoder_feed(&s->dec, data, len);
    if (rc == CMS_OK)
        return CMS_OK;
    if (rc == CMS_ELIMIT)
        log_warn("frame_too_large", s->serial, net_conn_peer(c),
                 "MLLP frame over max_frame_bytes: closing");
    else if (rc == CMS_EPROTO)
        log_warn("mllp_error", s->serial, net_conn_peer(c),
                 "MLLP framing violated (bytes outside a frame, or a bad frame end): closing");
    return rc;
}

static void on_close(net_conn *c)
{
    session *s = net_conn_session(c);
    mllp_decoder_free(&s->dec);
    free(s->idents);
    s->idents = NULL;
    s->nidents = 0;
    flush_acks(c); /* frees what is done; the rest is freed by on_stored */
    ingest_ctx *ix = net_conn_proto_ctx(c);
    ix->nsessions--;
    drain_check(ix);
}

static void drain_one(net_conn *c, void *arg)
{
    ingest_ctx *ix = arg;
    if (net_conn_proto_ctx(c) != ix)
        return; /* another listener's */
    session *s = net_conn_session(c);
    net_conn_pause(c);
    if (net_conn_state(c) == NET_ACTIVE && s->npending == 0)
        net_conn_close(c, NULL);
}

void ingest_drain(ingest_ctx *ix, void (*drained)(void *arg), void *arg)
{
    ix->draining = true;
    ix->drained = drained;
    ix->drained_arg = arg;
    net_server_foreach(ix->server, drain_one, ix);
    drain_check(ix);
}

const net_proto ingest_mllp_proto = {
    .name = "mllp",
    .metrics_listener = CM_LISTENER_MLLP,
    .session_size = sizeof(session),
    .on_handshake = on_handshake,
    .on_data = on_data,
    .on_close = on_close,
    .on_tls_refused = peer_on_tls_refused,
};

int ingest_ctx_init(ingest_ctx *ctx, store_t *store, net_server *server, const ingest_config *cfg,
                    unsigned worker_id)
{
    memset(ctx, 0, offsetof(ingest_ctx, hl7));
    /* Monitors only: a device CA certificate, registered and active. */
    ctx->peer = (peer_policy){.store = store, .listener = "mllp", .on_device = on_device};
    ctx->store = store;
    ctx->server = server;
    ctx->cfg = *cfg;
    ctx->worker_id = worker_id;
    pcd01_waves_init(&ctx->waves, cfg->waveform_max_samples);
    store_on_drain(store, on_store_drain, ctx);
    store_on_results(store, on_results, ctx);
    return CMS_OK;
}

void ingest_ctx_free(ingest_ctx *ctx)
{
    on_results(ctx); /* nothing is listed once the loop ended; just in case */
    free(ctx->due);
    ctx->due = NULL;
    ctx->due_cap = 0;
    pcd01_waves_free(&ctx->waves);
}
