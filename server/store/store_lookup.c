/*
 * store_lookup.c - device checks on the control connection: a connecting
 * device's certificate verdict (store_device_lookup_cert), asked in batches
 * (the checks waiting at the head of the control queue go as one
 * cms.device_check_batch statement), answered from memory when a verdict is
 * kept (store_device_cached, store_devcache.c), and "last seen" recorded a
 * second later in one cms.devices_seen call for all the devices accepted
 * meanwhile. The queue itself is store_ctl.c's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cms_err.h"
#include "log.h"
#include "store_int.h"

/* A read: a connecting device never waits for a WAL flush (sql/006); the
 * checks waiting at the head of the queue go together (sql/009). */
static const char lookup_sql[] =
    "SELECT idx, id, serial, status, idents FROM cms.device_check_batch($1::text[], $2::text[])";
const char store__seen_sql[] = "SELECT cms.devices_seen($1::text[], $2::text[])";

/* Sends first and the lookups queued right behind it as one statement; the
 * batch is chained through ->next and is the in-flight item. */
void store__lookup_send(store_t *s, ctl_item *first)
{
    ctl_item *tail = first;
    size_t n = 1;
    while (n < STORE_LOOKUP_BATCH_MAX && s->ctl_head && s->ctl_head->kind == CTL_LOOKUP) {
        tail->next = store__ctl_pop(s);
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
    /* On failure (or NULL arrays after OOM: an SQL error) store__ctl_on_down or
     * store__ctl_on_result answers every item of the batch. */
    store__conn_send(&s->control, "device_lookup", lookup_sql, 2, p);
    store__buf_free(&a);
    store__buf_free(&b);
}

/* ---- last seen, recorded in batches -------------------------------------- */

#define SEEN_MAX 8192 /* entries kept between flushes (then oldest dropped) */
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
void store__seen_flush(store_t *s)
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
        ctl_item *it = store__ctl_new(CTL_SEEN, 2, p);
        if (it)
            store__ctl_push(s, it);
    }
    store__buf_free(&a);
    store__buf_free(&b);
}

/* Answers every lookup of the batch headed by first, then frees them. */
void store__lookup_done(store_t *s, ctl_item *first, PGresult *res)
{
    ctl_item *items[STORE_LOOKUP_BATCH_MAX];
    bool answered[STORE_LOOKUP_BATCH_MAX] = {false};
    size_t n = 0;
    for (ctl_item *x = first; x && n < STORE_LOOKUP_BATCH_MAX; x = x->next)
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
        store__ctl_free(items[i]);
}

/* ---- public ------------------------------------------------------------ */

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
    ctl_item *it = store__ctl_new(CTL_LOOKUP, 3, p);
    if (!it)
        return CMS_ENOMEM;
    it->cb = cb;
    it->ctx = ctx;
    it->deadline = uv_now(s->loop) + s->cfg.query_timeout_ms;
    it->dc_gen = s->dc_gen;
    store__ctl_push(s, it);
    store__ctl_kick(s);
    return CMS_OK;
}

bool store_device_cached(store_t *s, const char *serial, const char *fingerprint, const char *peer,
                         store_device *dev)
{
    if (s->closing || !store__dc_get(s, serial, fingerprint, dev))
        return false;
    seen_add(s, serial, peer);
    return true;
}

void store__seen_tick(store_t *s, uint64_t now)
{
    if (s->seen_n > 0 && now - s->seen_flushed_at >= SEEN_FLUSH_MS) {
        store__seen_flush(s);
        store__ctl_kick(s);
    }
}

void store__seen_free(store_t *s)
{
    for (size_t i = 0; i < s->seen_n; i++) {
        free(s->seen_serial[i]);
        free(s->seen_peer[i]);
    }
    free(s->seen_serial);
    free(s->seen_peer);
    s->seen_serial = s->seen_peer = NULL;
    s->seen_n = s->seen_cap = 0;
}
