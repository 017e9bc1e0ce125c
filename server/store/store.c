/*
 * store.c - the store's life: store_config defaults, store_new (the two
 * connections, timers), readiness, the expiry and maintenance ticks, and
 * store_close with its single path to freeing everything. The control
 * queue lives in store_ctl.c (device checks in store_lookup.c), the ingest
 * side in store_ingest.c, the connection state machine in store_conn.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cms_err.h"
#include "log.h"
#include "store_int.h"

#define MAINT_INTERVAL_MS (3600u * 1000u)

void store_config_defaults(store_config *c)
{
    memset(c, 0, sizeof *c);
    c->conninfo = "";
    c->timezone = "UTC";
    c->batch_max_msgs = 256;
    c->batch_max_delay_ms = 5;
    c->alarm_lane = true;
    c->max_queued_msgs = 20000;
    c->query_timeout_ms = 10000;
    c->ingest_timeout_ms = 30000;
    c->reconnect_min_ms = 100;
    c->reconnect_max_ms = 5000;
    c->retention_days = 0;
    c->partitions_ahead_days = 7;
    c->device_cache_ttl_s = 60;
    c->waveform_retention_hours = 72;
}

/* ---- timers ------------------------------------------------------------ */

static void maint_timer_cb(uv_timer_t *t)
{
    store_t *s = t->data;
    if (s->closing)
        return;
    store__ctl_maintenance(s);
}

static void expire_timer_cb(uv_timer_t *t)
{
    store_t *s = t->data;
    if (s->closing)
        return;
    uint64_t now = uv_now(s->loop);
    store__ingest_expire(s, now);
    store__ctl_expire(s, now);
    store__dc_sweep(s, now);
    store__seen_tick(s, now);
    store__latest_tick(s, now, false);
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

    store__conn_init(s, &s->control, "control");
    s->control.on_up = store__ctl_on_up;
    s->control.on_result = store__ctl_on_result;
    s->control.on_down = store__ctl_on_down;
    s->control.on_notify = store__ctl_on_notify;
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

    store__ingest_start(s);
    store__conn_start(&s->control);
    return s;
}

bool store_ready(const store_t *s)
{
    /* The alarm lane is not required: while it is down, alarms go bulk. */
    return !s->closing && store__conn_up(&s->lanes[STORE_LANE_BULK].conn) &&
           store__conn_up(&s->control);
}

void store__release(store_t *s)
{
    if (--s->pending_closes > 0 || !s->closed_conns)
        return;
    void (*cb)(void *) = s->close_cb;
    void *ctx = s->close_ctx;
    store__ingest_free_buffers(s);
    store__latest_free(s);
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
    t->data = s; /* a lane's batch timer had its lane there: no callback runs any more */
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
    store__ctl_fail_all(s, CMS_ECLOSED);
    store__seen_free(s);
    /* The last close callback frees s (store__release). */
    for (int i = 0; i < STORE_NLANES; i++) {
        store__conn_close(&s->lanes[i].conn);
        close_handle(s, &s->lanes[i].batch_timer);
    }
    store__conn_close(&s->control);
    close_handle(s, &s->expire_timer);
    close_handle(s, &s->maint_timer);
    close_handle(s, &s->close_timer);
    for (int i = 0; i < STORE_NLANES; i++) {
        const store__lane *l = &s->lanes[i];
        if (l->on)
            log_info("store_closed", NULL, NULL, "lane=%s batches=%llu msgs=%llu obs=%llu", l->name,
                     (unsigned long long)l->batches_ok, (unsigned long long)l->msgs_ok,
                     (unsigned long long)l->obs_ok);
    }
}

void store__maybe_finish_close(store_t *s)
{
    if (!s->closing || s->closed_conns)
        return;
    bool ingest_busy = store__ingest_inflight_up(s) > 0;
    bool ctl_busy = (s->ctl_inflight || s->ctl_head) && store__conn_up(&s->control);
    if (ingest_busy || ctl_busy) {
        store__ctl_kick(s); /* drain the audit rows while we wait */
        return;
    }
    finish_close(s);
}

static void close_timer_cb(uv_timer_t *t)
{
    store_t *s = t->data;
    log_warn("store_close_timeout", NULL, NULL, "in_flight_msgs=%zu control_queue=%zu",
             store_backlog(s), s->ctl_n + (s->ctl_inflight ? 1u : 0u));
    finish_close(s);
}

void store_close(store_t *s, void (*cb)(void *ctx), void *ctx)
{
    store_close_within(s, s->cfg.query_timeout_ms, cb, ctx);
}

void store_close_within(store_t *s, unsigned grace_ms, void (*cb)(void *ctx), void *ctx)
{
    if (s->closing) { /* hurry a close under way: its callback stays the first one */
        if (!s->closed_conns && uv_timer_get_due_in(&s->close_timer) > grace_ms)
            uv_timer_start(&s->close_timer, close_timer_cb, grace_ms, 0);
        return;
    }
    s->closing = true;
    s->close_cb = cb;
    s->close_ctx = ctx;
    for (int i = 0; i < STORE_NLANES; i++) {
        if (s->lanes[i].batch_timer_on) {
            uv_timer_stop(&s->lanes[i].batch_timer);
            s->lanes[i].batch_timer_on = false;
        }
    }
    uv_timer_stop(&s->expire_timer);
    uv_timer_stop(&s->maint_timer);
    /* Queued-but-unsent messages and lookups end now; audit rows may drain. */
    store__ingest_fail_queued(s, CMS_ECLOSED);
    store__seen_flush(s);
    store__latest_tick(s, uv_now(s->loop), true);
    store__ctl_close_queue(s);
    uv_timer_start(&s->close_timer, close_timer_cb, grace_ms, 0);
    store__maybe_finish_close(s);
}
