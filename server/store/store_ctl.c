/*
 * store_ctl.c - the control connection's FIFO queue: everything but ingest
 * goes through it one statement at a time (device checks, store_lookup.c;
 * audit rows; store_query statements of the services; LISTEN; periodic
 * maintenance: partitions ahead on connect and hourly, retention if
 * configured).
 *
 * Control queue rules:
 *   - one statement in flight at a time, in FIFO order;
 *   - bounded by STORE_CTL_QUEUE_MAX items (lookups get CMS_ELIMIT, audit
 *     rows are dropped with an error log line);
 *   - a lookup waits at most query_timeout_ms for the database (then
 *     CMS_EUNAVAIL); an audit row waits across reconnects;
 *   - when the connection is lost with an item in flight, the item goes back
 *     to the head of the queue (a lookup is idempotent; an audit row whose
 *     COMMIT was lost with the connection may be written twice, never zero
 *     times);
 *   - an audit row refused by the database is logged at error level with
 *     its fields and dropped (retrying would not help).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "log.h"
#include "store_int.h"

static const char audit_sql[] = "SELECT cms.audit_append($1, $2, $3, $4, $5)";
static const char partitions_sql[] = "SELECT cms.ensure_partitions($1::integer)";
static const char retention_sql[] = "SELECT cms.drop_partitions_older_than($1::integer)";
static const char wave_retention_sql[] = "SELECT cms.drop_waveforms_older_than($1::integer)";

/* ---- the queue ----------------------------------------------------------- */

void store__ctl_free(ctl_item *it)
{
    for (int i = 0; i < it->nparams; i++)
        free(it->params[i]);
    free(it->sql);
    free(it);
}

ctl_item *store__ctl_new(enum ctl_kind kind, int nparams, const char *const *params)
{
    ctl_item *it = calloc(1, sizeof *it);
    if (!it)
        return NULL;
    it->kind = kind;
    it->nparams = nparams;
    for (int i = 0; i < nparams; i++) {
        if (params[i] && !(it->params[i] = strdup(params[i]))) {
            store__ctl_free(it);
            return NULL;
        }
    }
    return it;
}

void store__ctl_push(store_t *s, ctl_item *it)
{
    it->next = NULL;
    if (s->ctl_tail)
        s->ctl_tail->next = it;
    else
        s->ctl_head = it;
    s->ctl_tail = it;
    s->ctl_n++;
}

static void ctl_push_front(store_t *s, ctl_item *it)
{
    it->next = s->ctl_head;
    s->ctl_head = it;
    if (!s->ctl_tail)
        s->ctl_tail = it;
    s->ctl_n++;
}

ctl_item *store__ctl_pop(store_t *s)
{
    ctl_item *it = s->ctl_head;
    if (!it)
        return NULL;
    s->ctl_head = it->next;
    if (!s->ctl_head)
        s->ctl_tail = NULL;
    s->ctl_n--;
    it->next = NULL;
    return it;
}

static void audit_dropped(const ctl_item *it, const char *why)
{
    /* params: event, actor, device, peer, detail */
    log_error("audit_dropped", it->params[2], it->params[3], "event=%s actor=%s reason=%s",
              it->params[0] ? it->params[0] : "-", it->params[1] ? it->params[1] : "-", why);
    metrics_add(CM_AUDIT_ROWS, CM_AUDIT_DROPPED, 1);
}

/* Ends an item without running it: lookups get status, audits are logged. */
static void ctl_abandon(ctl_item *it, int status, const char *why)
{
    if (it->kind == CTL_LOOKUP)
        it->cb(it->ctx, status, NULL);
    else if (it->kind == CTL_QUERY)
        it->qcb(it->ctx, status, NULL);
    else if (it->kind == CTL_AUDIT)
        audit_dropped(it, why);
    store__ctl_free(it);
}

void store__ctl_kick(store_t *s)
{
    if (s->ctl_inflight || !s->ctl_head || s->control.state != SC_READY)
        return;
    ctl_item *it = store__ctl_pop(s);
    if (it->kind == CTL_LOOKUP) {
        store__lookup_send(s, it);
        return;
    }
    const char *sql = NULL, *what = "?";
    switch (it->kind) {
    case CTL_LOOKUP:
        break;
    case CTL_AUDIT:
        sql = audit_sql;
        what = "audit";
        break;
    case CTL_MAINT_PARTITIONS:
        sql = partitions_sql;
        what = "ensure_partitions";
        break;
    case CTL_MAINT_RETENTION:
        sql = retention_sql;
        what = "retention";
        break;
    case CTL_QUERY:
        sql = it->sql;
        what = "query";
        break;
    case CTL_LISTEN:
        sql = it->sql;
        what = "listen";
        break;
    case CTL_SEEN:
        sql = store__seen_sql;
        what = "devices_seen";
        break;
    case CTL_MAINT_WAVES:
        sql = wave_retention_sql;
        what = "waveform_retention";
        break;
    case CTL_LATEST:
        sql = store__latest_sql;
        what = "latest_upsert";
        break;
    }
    s->ctl_inflight = it;
    /* Lookups carry the peer as a third, unsent parameter (for "seen"). */
    int nparams = it->kind == CTL_LOOKUP ? 2 : it->nparams;
    /* On failure the connection resets and ctl_on_down requeues the item. */
    store__conn_send(&s->control, what, sql, nparams, (const char *const *)it->params);
}

/* Ends every item of an in-flight chain (lookups come in batches). */
static void ctl_abandon_chain(ctl_item *it, int status, const char *why)
{
    while (it) {
        ctl_item *next = it->next;
        ctl_abandon(it, status, why);
        it = next;
    }
}

static void maint_done(ctl_item *it, PGresult *res)
{
    const char *what = it->kind == CTL_MAINT_PARTITIONS ? "ensure_partitions"
                       : it->kind == CTL_MAINT_WAVES    ? "waveform_retention"
                                                        : "retention";
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        char msg[256];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(res));
        for (char *p = msg; *p; p++)
            if (*p == '\n')
                *p = ' ';
        log_error("store_maintenance_failed", NULL, NULL, "task=%s sqlstate=%s error=\"%s\"", what,
                  st ? st : "-", msg);
        return;
    }
    long n = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    log_event(n > 0 ? LOG_INFO : LOG_DEBUG, "store_maintenance", NULL, NULL, "task=%s %s=%ld", what,
              it->kind == CTL_MAINT_PARTITIONS ? "created" : "dropped", n);
}

void store__ctl_on_result(store__conn *c, PGresult *res)
{
    store_t *s = c->s;
    ctl_item *it = s->ctl_inflight;
    s->ctl_inflight = NULL;
    if (it) {
        switch (it->kind) {
        case CTL_LOOKUP:
            store__lookup_done(s, it, res); /* frees the batch */
            it = NULL;
            break;
        case CTL_LATEST:
            store__latest_written(s, (uv_hrtime() - c->sent_ns) / 1000000u);
            if (PQresultStatus(res) != PGRES_TUPLES_OK)
                log_warn("latest_upsert_failed", NULL, NULL, "%s",
                         PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                             ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                             : "-");
            break;
        case CTL_SEEN:
            if (PQresultStatus(res) != PGRES_TUPLES_OK)
                log_warn("devices_seen_failed", NULL, NULL, "%s",
                         PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                             ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                             : "-");
            break;
        case CTL_QUERY: {
            ExecStatusType st = PQresultStatus(res);
            store_rows rows = {res};
            it->qcb(it->ctx, st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK ? CMS_OK : CMS_EPROTO,
                    &rows);
            break;
        }
        case CTL_LISTEN:
            if (PQresultStatus(res) != PGRES_COMMAND_OK) {
                s->dc_listen_failed = true;
                log_error("store_listen_failed", NULL, NULL, "%s: %s", it->sql,
                          PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                              ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                              : "-");
            }
            break;
        case CTL_AUDIT:
            if (PQresultStatus(res) != PGRES_TUPLES_OK) {
                const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                audit_dropped(it, st ? st : "query failed");
            } else {
                metrics_add(CM_AUDIT_ROWS, CM_AUDIT_WRITTEN, 1);
            }
            break;
        default:
            maint_done(it, res);
            break;
        }
        if (it)
            store__ctl_free(it);
    }
    if (s->closing)
        store__maybe_finish_close(s);
    else
        store__ctl_kick(s);
}

void store__ctl_on_down(store__conn *c, bool query_lost)
{
    store_t *s = c->s;
    (void)query_lost;
    store__dc_on_down(s); /* notifications may be missed from now on */
    ctl_item *it = s->ctl_inflight;
    s->ctl_inflight = NULL;
    if (it) {
        if (it->kind == CTL_MAINT_PARTITIONS || it->kind == CTL_MAINT_RETENTION ||
            it->kind == CTL_MAINT_WAVES || it->kind == CTL_LISTEN || it->kind == CTL_SEEN ||
            it->kind == CTL_LATEST)
            store__ctl_free(it); /* runs again on reconnect / made good by the next value */
        else if (it->kind == CTL_QUERY)
            ctl_abandon(it, CMS_EUNAVAIL, "connection lost"); /* outcome unknown */
        else if (it->kind == CTL_LOOKUP) {
            /* A read: ask again after reconnecting, in the same order. */
            ctl_item *items[STORE_LOOKUP_BATCH_MAX];
            size_t n = 0;
            for (ctl_item *x = it; x && n < STORE_LOOKUP_BATCH_MAX; x = x->next)
                items[n++] = x;
            while (n > 0)
                ctl_push_front(s, items[--n]);
        } else
            ctl_push_front(s, it);
    }
    if (s->closing)
        store__maybe_finish_close(s);
}

static void queue_maintenance(store_t *s)
{
    char days[16];
    const char *p[1] = {days};
    snprintf(days, sizeof days, "%u", s->cfg.partitions_ahead_days);
    ctl_item *it = store__ctl_new(CTL_MAINT_PARTITIONS, 1, p);
    if (it)
        store__ctl_push(s, it);
    if (s->cfg.retention_days > 0) {
        snprintf(days, sizeof days, "%u", s->cfg.retention_days);
        it = store__ctl_new(CTL_MAINT_RETENTION, 1, p);
        if (it)
            store__ctl_push(s, it);
    }
    if (s->cfg.waveform_retention_hours > 0) {
        snprintf(days, sizeof days, "%u", s->cfg.waveform_retention_hours);
        it = store__ctl_new(CTL_MAINT_WAVES, 1, p);
        if (it)
            store__ctl_push(s, it);
    }
}

static ctl_item *listen_item(const char *channel)
{
    ctl_item *it = calloc(1, sizeof *it);
    if (!it || !(it->sql = malloc(strlen(channel) + 8))) {
        free(it);
        return NULL;
    }
    it->kind = CTL_LISTEN;
    /* channel was checked against [a-z_]{1,63}: an identifier, not peer data */
    sprintf(it->sql, "LISTEN %s", channel);
    return it;
}

void store__ctl_on_up(store__conn *c)
{
    store_t *s = c->s;
    /* LISTEN first (a session setting that a reconnect lost). */
    for (size_t i = s->nlisteners; i-- > 0;) {
        ctl_item *it = listen_item(s->listeners[i].channel);
        if (it)
            ctl_push_front(s, it);
    }
    store__dc_on_up(s);
    queue_maintenance(s);
    if (s->control_was_up) /* notifications may have been missed while down */
        for (size_t i = 0; i < s->nlisteners; i++)
            s->listeners[i].cb(s->listeners[i].ctx, NULL);
    s->control_was_up = true;
    store__ctl_kick(s);
}

void store__ctl_on_notify(store__conn *c, const char *channel, const char *payload)
{
    store_t *s = c->s;
    for (size_t i = 0; i < s->nlisteners; i++)
        if (strcmp(s->listeners[i].channel, channel) == 0)
            s->listeners[i].cb(s->listeners[i].ctx, payload ? payload : "");
}

int store_query(store_t *s, const char *sql, int nparams, const char *const *params,
                store_query_cb cb, void *ctx)
{
    if (s->closing)
        return CMS_ECLOSED;
    if (!sql || !cb || nparams < 0 || nparams > STORE_QUERY_MAX_PARAMS)
        return CMS_EINVAL;
    if (s->ctl_n >= STORE_CTL_QUEUE_MAX)
        return CMS_ELIMIT;
    ctl_item *it = store__ctl_new(CTL_QUERY, nparams, params);
    if (!it || !(it->sql = strdup(sql))) {
        if (it)
            store__ctl_free(it);
        return CMS_ENOMEM;
    }
    it->qcb = cb;
    it->ctx = ctx;
    it->deadline = uv_now(s->loop) + s->cfg.query_timeout_ms;
    store__ctl_push(s, it);
    store__ctl_kick(s);
    return CMS_OK;
}

int store_listen(store_t *s, const char *channel, void (*cb)(void *ctx, const char *payload),
                 void *ctx)
{
    size_t n = channel ? strlen(channel) : 0;
    if (n == 0 || n > 63 || !cb || strspn(channel, "abcdefghijklmnopqrstuvwxyz_") != n)
        return CMS_EINVAL;
    if (s->nlisteners >= STORE_MAX_CHANNELS)
        return CMS_ELIMIT;
    store__listener *l = &s->listeners[s->nlisteners++];
    memcpy(l->channel, channel, n + 1);
    l->cb = cb;
    l->ctx = ctx;
    if (store__conn_up(&s->control)) {
        ctl_item *it = listen_item(channel);
        if (it) {
            ctl_push_front(s, it);
            store__ctl_kick(s);
        }
    }
    return CMS_OK;
}

/* ---- public: audit rows ------------------------------------------------- */

void store_audit(store_t *s, const char *event, const char *actor, const char *device,
                 const char *peer, const char *detail_json)
{
    const char *p[5] = {event ? event : "unknown", actor, device, peer, detail_json};
    ctl_item tmp = {.kind = CTL_AUDIT, .nparams = 5};
    memcpy(tmp.params, p, sizeof p); /* for the log line only */
    if (s->closing) {
        audit_dropped(&tmp, "store closed");
        return;
    }
    if (s->ctl_n >= STORE_CTL_QUEUE_MAX) {
        audit_dropped(&tmp, "queue full");
        return;
    }
    ctl_item *it = store__ctl_new(CTL_AUDIT, 5, p);
    if (!it) {
        audit_dropped(&tmp, "out of memory");
        return;
    }
    store__ctl_push(s, it);
    store__ctl_kick(s);
}

bool store_ctl_crowded(const store_t *s)
{
    return s->ctl_n >= STORE_CTL_QUEUE_MAX / 2;
}

/* ---- timers and close ---------------------------------------------------- */

void store__ctl_maintenance(store_t *s)
{
    queue_maintenance(s);
    store__ctl_kick(s);
}

void store__ctl_expire(store_t *s, uint64_t now)
{
    ctl_item **pp = &s->ctl_head;
    ctl_item *prev = NULL;
    while (*pp) {
        ctl_item *it = *pp;
        if ((it->kind == CTL_LOOKUP || it->kind == CTL_QUERY) && it->deadline <= now) {
            *pp = it->next;
            if (s->ctl_tail == it)
                s->ctl_tail = prev;
            s->ctl_n--;
            if (it->kind == CTL_LOOKUP)
                log_warn("device_lookup_timeout", it->params[0], it->params[1], "control_conn=%s",
                         store__conn_up(&s->control) ? "up" : "down");
            else
                log_warn("query_timeout", NULL, NULL,
                         "queued statement waited %u ms, control_conn=%s", s->cfg.query_timeout_ms,
                         store__conn_up(&s->control) ? "up" : "down");
            ctl_abandon(it, CMS_EUNAVAIL, "timeout");
            continue; /* callbacks may append: re-read *pp */
        }
        prev = it;
        pp = &it->next;
    }
}

/* Ends every item, in flight or queued, with status (store closed). */
void store__ctl_fail_all(store_t *s, int status)
{
    if (s->ctl_inflight) {
        ctl_abandon_chain(s->ctl_inflight, status, "store closed while in flight");
        s->ctl_inflight = NULL;
    }
    ctl_item *it;
    while ((it = store__ctl_pop(s)) != NULL)
        ctl_abandon(it, status, "store closed");
}

/* store_close: queued lookups and statements end now (CMS_ECLOSED); audit
 * rows and "last seen" batches stay queued to drain. */
void store__ctl_close_queue(store_t *s)
{
    ctl_item *keep_head = NULL, *keep_tail = NULL, *it;
    size_t kept = 0;
    while ((it = store__ctl_pop(s)) != NULL) {
        if (it->kind == CTL_AUDIT || it->kind == CTL_SEEN || it->kind == CTL_LATEST) {
            it->next = NULL;
            if (keep_tail)
                keep_tail->next = it;
            else
                keep_head = it;
            keep_tail = it;
            kept++;
        } else {
            ctl_abandon(it, CMS_ECLOSED, "store closed");
        }
    }
    s->ctl_head = keep_head;
    s->ctl_tail = keep_tail;
    s->ctl_n = kept;
}
