/*
 * store.c - store_new/store_close and the control connection's FIFO queue:
 * device lookups, audit rows and periodic maintenance (partitions ahead on
 * connect and hourly, retention if configured). The ingest side lives in
 * store_ingest.c, the connection state machine in store_conn.c.
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
#include "log.h"
#include "store_int.h"

#define MAINT_INTERVAL_MS (3600u * 1000u)

/* A read: a connecting device never waits for a WAL flush (sql/006); the
 * checks waiting at the head of the queue go together (sql/009). */
static const char lookup_sql[] =
    "SELECT idx, id, serial, status, idents FROM cms.device_check_batch($1::text[], $2::text[])";
#define LOOKUP_BATCH_MAX 64
static const char seen_sql[] = "SELECT cms.devices_seen($1::text[], $2::text[])";
static const char audit_sql[] = "SELECT cms.audit_append($1, $2, $3, $4, $5)";
static const char partitions_sql[] = "SELECT cms.ensure_partitions($1::integer)";
static const char retention_sql[] = "SELECT cms.drop_partitions_older_than($1::integer)";

void store_config_defaults(store_config *c)
{
    memset(c, 0, sizeof *c);
    c->conninfo = "";
    c->timezone = "UTC";
    c->batch_max_msgs = 256;
    c->batch_max_delay_ms = 5;
    c->max_queued_msgs = 20000;
    c->query_timeout_ms = 10000;
    c->ingest_timeout_ms = 30000;
    c->reconnect_min_ms = 100;
    c->reconnect_max_ms = 5000;
    c->retention_days = 0;
    c->partitions_ahead_days = 7;
    c->device_cache_ttl_s = 60;
}

/* ---- control queue ----------------------------------------------------- */

static void ctl_free(ctl_item *it)
{
    for (int i = 0; i < it->nparams; i++)
        free(it->params[i]);
    free(it->sql);
    free(it);
}

static ctl_item *ctl_new(enum ctl_kind kind, int nparams, const char *const *params)
{
    ctl_item *it = calloc(1, sizeof *it);
    if (!it)
        return NULL;
    it->kind = kind;
    it->nparams = nparams;
    for (int i = 0; i < nparams; i++) {
        if (params[i] && !(it->params[i] = strdup(params[i]))) {
            ctl_free(it);
            return NULL;
        }
    }
    return it;
}

static void ctl_push(store_t *s, ctl_item *it)
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

static ctl_item *ctl_pop(store_t *s)
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
    ctl_free(it);
}

/* Sends first and the lookups queued right behind it as one statement; the
 * batch is chained through ->next and is the in-flight item. */
static void lookup_batch_send(store_t *s, ctl_item *first)
{
    ctl_item *tail = first;
    size_t n = 1;
    while (n < LOOKUP_BATCH_MAX && s->ctl_head && s->ctl_head->kind == CTL_LOOKUP) {
        tail->next = ctl_pop(s);
        tail = tail->next;
        n++;
    }
    store__buf a = {0}, b = {0};
    store__arr_begin(&a);
    store__arr_begin(&b);
    for (ctl_item *x = first; x; x = x->next) {
        store__arr_text(&a, x->params[0]); /* serial */
        store__arr_text(&b, x->params[1]); /* fingerprint, NULL allowed */
    }
    store__arr_end(&a);
    store__arr_end(&b);
    s->ctl_inflight = first;
    const char *p[2] = {a.oom ? NULL : a.p, b.oom ? NULL : b.p};
    /* On failure (or NULL arrays after OOM: an SQL error) ctl_on_down or
     * ctl_on_result answers every item of the batch. */
    store__conn_send(&s->control, "device_lookup", lookup_sql, 2, p);
    store__buf_free(&a);
    store__buf_free(&b);
}

static void ctl_kick(store_t *s)
{
    if (s->ctl_inflight || !s->ctl_head || s->control.state != SC_READY)
        return;
    ctl_item *it = ctl_pop(s);
    if (it->kind == CTL_LOOKUP) {
        lookup_batch_send(s, it);
        return;
    }
    const char *sql = lookup_sql, *what = "device_lookup";
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
        sql = seen_sql;
        what = "devices_seen";
        break;
    }
    s->ctl_inflight = it;
    /* Lookups carry the peer as a third, unsent parameter (for "seen"). */
    int nparams = it->kind == CTL_LOOKUP ? 2 : it->nparams;
    /* On failure the connection resets and ctl_on_down requeues the item. */
    store__conn_send(&s->control, what, sql, nparams, (const char *const *)it->params);
}

/* ---- last seen, recorded in batches -------------------------------------- */

#define SEEN_MAX 8192           /* entries kept between flushes (then oldest dropped) */
#define SEEN_FLUSH_MS 1000u

static void seen_add(store_t *s, const char *serial, const char *peer)
{
    if (s->seen_n >= SEEN_MAX)
        return; /* best effort: the next connection records it */
    char *a = strdup(serial), *b = strdup(peer ? peer : "");
    if (!a || !b) {
        free(a);
        free(b);
        return;
    }
    if (s->seen_n == s->seen_cap) {
        size_t ncap = s->seen_cap ? s->seen_cap * 2 : 64;
        char **ns = realloc(s->seen_serial, ncap * sizeof(char *));
        if (ns)
            s->seen_serial = ns;
        char **np = ns ? realloc(s->seen_peer, ncap * sizeof(char *)) : NULL;
        if (np)
            s->seen_peer = np;
        if (!ns || !np) {
            free(a);
            free(b);
            return;
        }
        s->seen_cap = ncap;
    }
    s->seen_serial[s->seen_n] = a;
    s->seen_peer[s->seen_n] = b;
    s->seen_n++;
}

/* Moves the collected entries into one queued cms.devices_seen call. */
static void seen_flush(store_t *s)
{
    if (s->seen_n == 0)
        return;
    store__buf a = {0}, b = {0};
    store__arr_begin(&a);
    store__arr_begin(&b);
    for (size_t i = 0; i < s->seen_n; i++) {
        store__arr_text(&a, s->seen_serial[i]);
        store__arr_text(&b, s->seen_peer[i]);
        free(s->seen_serial[i]);
        free(s->seen_peer[i]);
    }
    store__arr_end(&a);
    store__arr_end(&b);
    s->seen_n = 0;
    s->seen_flushed_at = uv_now(s->loop);
    if (!a.oom && !b.oom) {
        const char *p[2] = {a.p, b.p};
        ctl_item *it = ctl_new(CTL_SEEN, 2, p);
        if (it)
            ctl_push(s, it);
    }
    store__buf_free(&a);
    store__buf_free(&b);
}

/* Answers every lookup of the batch headed by first, then frees them. */
static void lookup_batch_done(store_t *s, ctl_item *first, PGresult *res)
{
    ctl_item *items[LOOKUP_BATCH_MAX];
    bool answered[LOOKUP_BATCH_MAX] = {false};
    size_t n = 0;
    for (ctl_item *x = first; x && n < LOOKUP_BATCH_MAX; x = x->next)
        items[n++] = x;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        log_warn("device_lookup_failed", items[0]->params[0], items[0]->params[2],
                 "sqlstate=%s batch=%zu", st ? st : "-", n);
        for (size_t i = 0; i < n; i++)
            items[i]->cb(items[i]->ctx, CMS_EUNAVAIL, NULL);
        goto done;
    }
    for (int r = 0; r < PQntuples(res); r++) {
        long idx = strtol(PQgetvalue(res, r, 0), NULL, 10);
        if (idx < 1 || (size_t)idx > n || answered[idx - 1])
            continue;
        ctl_item *it = items[idx - 1];
        answered[idx - 1] = true;
        store_device dev;
        memset(&dev, 0, sizeof dev);
        dev.id = strtoll(PQgetvalue(res, r, 1), NULL, 10);
        snprintf(dev.serial, sizeof dev.serial, "%s", PQgetvalue(res, r, 2));
        snprintf(dev.status, sizeof dev.status, "%s", PQgetvalue(res, r, 3));
        int ni = store__arr_parse(PQgetvalue(res, r, 4), dev.idents,
                                  sizeof dev.idents / sizeof dev.idents[0]);
        dev.nidents = ni > 0 ? (size_t)ni : 0;
        seen_add(s, it->params[0], it->params[2]);
        store__dc_put(s, it->dc_gen, it->params[1], &dev);
        it->cb(it->ctx, CMS_OK, &dev);
    }
    for (size_t i = 0; i < n; i++)
        if (!answered[i])
            items[i]->cb(items[i]->ctx, CMS_EPERM, NULL); /* not registered */
done:
    for (size_t i = 0; i < n; i++)
        ctl_free(items[i]);
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
    const char *what = it->kind == CTL_MAINT_PARTITIONS ? "ensure_partitions" : "retention";
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

static void ctl_on_result(store__conn *c, PGresult *res)
{
    store_t *s = c->s;
    ctl_item *it = s->ctl_inflight;
    s->ctl_inflight = NULL;
    if (it) {
        switch (it->kind) {
        case CTL_LOOKUP:
            lookup_batch_done(s, it, res); /* frees the batch */
            it = NULL;
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
            }
            break;
        default:
            maint_done(it, res);
            break;
        }
        if (it)
            ctl_free(it);
    }
    if (s->closing)
        store__maybe_finish_close(s);
    else
        ctl_kick(s);
}

static void ctl_on_down(store__conn *c, bool query_lost)
{
    store_t *s = c->s;
    (void)query_lost;
    store__dc_on_down(s); /* notifications may be missed from now on */
    ctl_item *it = s->ctl_inflight;
    s->ctl_inflight = NULL;
    if (it) {
        if (it->kind == CTL_MAINT_PARTITIONS || it->kind == CTL_MAINT_RETENTION ||
            it->kind == CTL_LISTEN || it->kind == CTL_SEEN)
            ctl_free(it); /* runs again on reconnect */
        else if (it->kind == CTL_QUERY)
            ctl_abandon(it, CMS_EUNAVAIL, "connection lost"); /* outcome unknown */
        else if (it->kind == CTL_LOOKUP) {
            /* A read: ask again after reconnecting, in the same order. */
            ctl_item *items[LOOKUP_BATCH_MAX];
            size_t n = 0;
            for (ctl_item *x = it; x && n < LOOKUP_BATCH_MAX; x = x->next)
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
    ctl_item *it = ctl_new(CTL_MAINT_PARTITIONS, 1, p);
    if (it)
        ctl_push(s, it);
    if (s->cfg.retention_days > 0) {
        snprintf(days, sizeof days, "%u", s->cfg.retention_days);
        it = ctl_new(CTL_MAINT_RETENTION, 1, p);
        if (it)
            ctl_push(s, it);
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

static void ctl_on_up(store__conn *c)
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
    ctl_kick(s);
}

static void ctl_on_notify(store__conn *c, const char *channel, const char *payload)
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
    ctl_item *it = ctl_new(CTL_QUERY, nparams, params);
    if (!it || !(it->sql = strdup(sql))) {
        if (it)
            ctl_free(it);
        return CMS_ENOMEM;
    }
    it->qcb = cb;
    it->ctx = ctx;
    it->deadline = uv_now(s->loop) + s->cfg.query_timeout_ms;
    ctl_push(s, it);
    ctl_kick(s);
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
            ctl_kick(s);
        }
    }
    return CMS_OK;
}

static void maint_timer_cb(uv_timer_t *t)
{
    store_t *s = t->data;
    if (s->closing)
        return;
    queue_maintenance(s);
    ctl_kick(s);
}

/* ---- public: lookups and audit ---------------------------------------- */

int store_device_lookup(store_t *s, const char *serial, const char *peer, store_device_cb cb,
                        void *ctx)
{
    return store_device_lookup_cert(s, serial, NULL, peer, cb, ctx);
}

int store_device_lookup_cert(store_t *s, const char *serial, const char *fingerprint,
                             const char *peer, store_device_cb cb, void *ctx)
{
    if (s->closing)
        return CMS_ECLOSED;
    if (!serial || !cb)
        return CMS_EINVAL;
    if (s->ctl_n >= STORE_CTL_QUEUE_MAX)
        return CMS_ELIMIT;
    const char *p[3] = {serial, fingerprint, peer};
    ctl_item *it = ctl_new(CTL_LOOKUP, 3, p);
    if (!it)
        return CMS_ENOMEM;
    it->cb = cb;
    it->ctx = ctx;
    it->deadline = uv_now(s->loop) + s->cfg.query_timeout_ms;
    it->dc_gen = s->dc_gen;
    ctl_push(s, it);
    ctl_kick(s);
    return CMS_OK;
}

bool store_device_cached(store_t *s, const char *serial, const char *fingerprint,
                         const char *peer, store_device *dev)
{
    if (s->closing || !store__dc_get(s, serial, fingerprint, dev))
        return false;
    seen_add(s, serial, peer);
    return true;
}

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
    ctl_item *it = ctl_new(CTL_AUDIT, 5, p);
    if (!it) {
        audit_dropped(&tmp, "out of memory");
        return;
    }
    ctl_push(s, it);
    ctl_kick(s);
}

bool store_ctl_crowded(const store_t *s)
{
    return s->ctl_n >= STORE_CTL_QUEUE_MAX / 2;
}

/* ---- timers ------------------------------------------------------------ */

static void expire_lookups(store_t *s, uint64_t now)
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
                log_warn("device_lookup_timeout", it->params[0], it->params[1],
                         "control_conn=%s", store__conn_up(&s->control) ? "up" : "down");
            else
                log_warn("query_timeout", NULL, NULL, "queued statement waited %u ms, control_conn=%s",
                         s->cfg.query_timeout_ms, store__conn_up(&s->control) ? "up" : "down");
            ctl_abandon(it, CMS_EUNAVAIL, "timeout");
            continue; /* callbacks may append: re-read *pp */
        }
        prev = it;
        pp = &it->next;
    }
}

static void expire_timer_cb(uv_timer_t *t)
{
    store_t *s = t->data;
    if (s->closing)
        return;
    uint64_t now = uv_now(s->loop);
    store__ingest_expire(s, now);
    expire_lookups(s, now);
    store__dc_sweep(s, now);
    if (s->seen_n > 0 && now - s->seen_flushed_at >= SEEN_FLUSH_MS) {
        seen_flush(s);
        ctl_kick(s);
    }
}

/* ---- lifecycle --------------------------------------------------------- */

store_t *store_new(uv_loop_t *loop, const store_config *cfg)
{
    store_config def;
    store_config_defaults(&def);
    store_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->loop = loop;
    s->cfg = *cfg;
    s->conninfo = strdup(cfg->conninfo ? cfg->conninfo : "");
    s->timezone = strdup(cfg->timezone && *cfg->timezone ? cfg->timezone : "UTC");
    if (!s->conninfo || !s->timezone) {
        free(s->conninfo);
        free(s->timezone);
        free(s);
        return NULL;
    }
    store_config *c = &s->cfg;
    c->conninfo = s->conninfo;
    c->timezone = s->timezone;
    if (c->batch_max_msgs == 0)
        c->batch_max_msgs = def.batch_max_msgs;
    if (c->batch_max_msgs > 10000)
        c->batch_max_msgs = 10000;
    if (c->max_queued_msgs == 0)
        c->max_queued_msgs = def.max_queued_msgs;
    if (c->query_timeout_ms == 0)
        c->query_timeout_ms = def.query_timeout_ms;
    if (c->ingest_timeout_ms == 0)
        c->ingest_timeout_ms = def.ingest_timeout_ms;
    if (c->reconnect_min_ms == 0)
        c->reconnect_min_ms = def.reconnect_min_ms;
    if (c->reconnect_max_ms < c->reconnect_min_ms)
        c->reconnect_max_ms = c->reconnect_min_ms;

    store__conn_init(s, &s->ingest, "ingest");
    s->ingest.on_up = store__ingest_on_up;
    s->ingest.on_result = store__ingest_on_result;
    s->ingest.on_down = store__ingest_on_down;
    store__conn_init(s, &s->control, "control");
    s->control.on_up = ctl_on_up;
    s->control.on_result = ctl_on_result;
    s->control.on_down = ctl_on_down;
    s->control.on_notify = ctl_on_notify;
    store__dc_init(s);

    store__ingest_init(s);
    uv_timer_init(loop, &s->expire_timer);
    s->expire_timer.data = s;
    uv_timer_init(loop, &s->maint_timer);
    s->maint_timer.data = s;
    uv_timer_init(loop, &s->close_timer);
    s->close_timer.data = s;

    unsigned tick =
        (c->ingest_timeout_ms < c->query_timeout_ms ? c->ingest_timeout_ms : c->query_timeout_ms) /
        4;
    tick = tick < 50 ? 50 : tick > 1000 ? 1000 : tick;
    uv_timer_start(&s->expire_timer, expire_timer_cb, tick, tick);
    uv_timer_start(&s->maint_timer, maint_timer_cb, MAINT_INTERVAL_MS, MAINT_INTERVAL_MS);

    store__conn_start(&s->ingest);
    store__conn_start(&s->control);
    return s;
}

bool store_ready(const store_t *s)
{
    return !s->closing && store__conn_up(&s->ingest) && store__conn_up(&s->control);
}

void store__release(store_t *s)
{
    if (--s->pending_closes > 0 || !s->closed_conns)
        return;
    void (*cb)(void *) = s->close_cb;
    void *ctx = s->close_ctx;
    store__ingest_free_buffers(s);
    store__dc_free(s);
    free(s->conninfo);
    free(s->timezone);
    free(s);
    if (cb)
        cb(ctx);
}

/* Close callback of the store's own timers (data = the store). */
static void timer_closed(uv_handle_t *h)
{
    store__release(h->data);
}

static void close_handle(store_t *s, uv_timer_t *t)
{
    uv_timer_stop(t);
    s->pending_closes++;
    uv_close((uv_handle_t *)t, timer_closed);
}

/* Everything still pending is ended now; then the handles are closed. */
static void finish_close(store_t *s)
{
    if (s->closed_conns)
        return;
    s->closed_conns = true; /* before callbacks: they may call store_close */
    store__ingest_fail_queued(s, CMS_ECLOSED);
    store__ingest_fail_inflight(s, CMS_ECLOSED);
    if (s->ctl_inflight) {
        ctl_abandon_chain(s->ctl_inflight, CMS_ECLOSED, "store closed while in flight");
        s->ctl_inflight = NULL;
    }
    ctl_item *it;
    while ((it = ctl_pop(s)) != NULL)
        ctl_abandon(it, CMS_ECLOSED, "store closed");
    for (size_t i = 0; i < s->seen_n; i++) {
        free(s->seen_serial[i]);
        free(s->seen_peer[i]);
    }
    free(s->seen_serial);
    free(s->seen_peer);
    s->seen_serial = s->seen_peer = NULL;
    s->seen_n = s->seen_cap = 0;
    /* The last close callback frees s (store__release). */
    store__conn_close(&s->ingest);
    store__conn_close(&s->control);
    close_handle(s, &s->batch_timer);
    close_handle(s, &s->expire_timer);
    close_handle(s, &s->maint_timer);
    close_handle(s, &s->close_timer);
    log_info("store_closed", NULL, NULL, "batches=%llu msgs=%llu obs=%llu",
             (unsigned long long)s->batches_ok, (unsigned long long)s->msgs_ok,
             (unsigned long long)s->obs_ok);
}

void store__maybe_finish_close(store_t *s)
{
    if (!s->closing || s->closed_conns)
        return;
    bool ingest_busy = s->inflight.n > 0 && store__conn_up(&s->ingest);
    bool ctl_busy = (s->ctl_inflight || s->ctl_head) && store__conn_up(&s->control);
    if (ingest_busy || ctl_busy) {
        ctl_kick(s); /* drain the audit rows while we wait */
        return;
    }
    finish_close(s);
}

static void close_timer_cb(uv_timer_t *t)
{
    store_t *s = t->data;
    log_warn("store_close_timeout", NULL, NULL, "in_flight_msgs=%zu control_queue=%zu",
             s->inflight.n, s->ctl_n + (s->ctl_inflight ? 1u : 0u));
    finish_close(s);
}

void store_close(store_t *s, void (*cb)(void *ctx), void *ctx)
{
    if (s->closing)
        return;
    s->closing = true;
    s->close_cb = cb;
    s->close_ctx = ctx;
    if (s->batch_timer_on) {
        uv_timer_stop(&s->batch_timer);
        s->batch_timer_on = false;
    }
    uv_timer_stop(&s->expire_timer);
    uv_timer_stop(&s->maint_timer);
    /* Queued-but-unsent messages and lookups end now; audit rows may drain. */
    store__ingest_fail_queued(s, CMS_ECLOSED);
    seen_flush(s);
    ctl_item *keep_head = NULL, *keep_tail = NULL, *it;
    size_t kept = 0;
    while ((it = ctl_pop(s)) != NULL) {
        if (it->kind == CTL_AUDIT || it->kind == CTL_SEEN) {
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
    uv_timer_start(&s->close_timer, close_timer_cb, s->cfg.query_timeout_ms, 0);
    store__maybe_finish_close(s);
}
