/*
 * events_relay.c - live events across cmsd instances (see events.h,
 * "Relay").
 *
 * Behind a load balancer a monitor's session and a viewer's stream are on
 * different instances as often as not. Each instance hands its events to the
 * others through the database they share, with PostgreSQL NOTIFY:
 *
 *   - An instance with a stream open says so: NOTIFY cms_events_watch
 *     (payload: its origin) when a stream opens and every EVENTS_WATCH_MS
 *     while one is open.
 *   - An instance that heard another's watch in the last 3 * EVENTS_WATCH_MS
 *     builds its events (events_on()) and, besides its own ring, appends
 *     each as a relay line (events_wire.c) to payloads of at most
 *     EVENTS__PAYLOAD_MAX bytes; the owner worker sends them EVENTS_RELAY_MS
 *     later, up to RELAY_PER_STATEMENT payloads per statement
 *     (pg_notify over an array, autocommit: never inside an ingest
 *     transaction, so ingest COMMITs never queue on the notification lock).
 *   - The owner LISTENs on cms_events and puts the others' events into this
 *     process's ring with their origin's published_us (so a viewer's delay
 *     is measured from the first COMMIT's instance), never relaying them on.
 *
 * Nothing is relayed while no other instance watches: one instance alone,
 * or several with nobody watching, send no NOTIFY at all. Relayed events
 * take this process's ids (Last-Event-ID stays per instance). An event that
 * cannot go (its line alone over the payload limit, RELAY_PENDING_MAX bytes
 * already waiting, RELAY_INFLIGHT_MAX statements still unanswered, a failed
 * statement) is counted in
 * cmsd_sse_relay_dropped_total and logged; the viewers on other instances
 * miss it, nothing stored is affected.
 *
 * Thread: events__relay_offer from any worker thread (under relay.mu); the
 * rest on the owner worker's loop.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "events.h"
#include "events_int.h"
#include "log.h"
#include "metrics.h"
#include "store.h"

#define RELAY_PER_STATEMENT 8                /* payloads per pg_notify statement */
#define RELAY_PENDING_MAX (4u * 1024 * 1024) /* bytes waiting before events are dropped */
#define RELAY_INFLIGHT_MAX 4 /* statements queued or running on the owner's control connection:
                              * beyond, events are dropped, so that the relay never crowds out
                              * the audit rows and service queries that share that queue */

typedef struct relay_payload {
    char *data; /* EVENTS__PAYLOAD_MAX + 1 bytes (room for a NUL) */
    size_t len;
    unsigned nevents;
} relay_payload;

typedef struct relay_owner {
    uv_loop_t *loop;
    store_t *store;
    uv_async_t async;
    uv_timer_t flush;
    uv_timer_t watch;
    bool flush_armed;
    int open_handles;
} relay_owner;

static struct {
    pthread_mutex_t mu;
    char origin[EVENTS__ORIGIN_LEN];
    _Atomic uint64_t remote_until_ms; /* another instance watches until then (monotonic) */
    relay_owner *owner;               /* NULL: not relaying (no HTTPS, stopping) */
    relay_payload *full;              /* payloads ready to go */
    size_t nfull, capfull;
    relay_payload cur; /* the one being filled (data NULL: none) */
    size_t pending_bytes;
    unsigned inflight; /* relay statements handed to the store, not answered yet */
    uint64_t dropped_logged_ms;
} relay = {.mu = PTHREAD_MUTEX_INITIALIZER};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void events__relay_init(void)
{
    unsigned char r[8];
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) { /* never on Linux >= 3.17 */
        uint64_t x = ((uint64_t)getpid() << 40) ^ (uint64_t)time(NULL) ^ mono_ms();
        memcpy(r, &x, sizeof(r));
    }
    pthread_mutex_lock(&relay.mu);
    for (size_t i = 0; i < sizeof(r); i++)
        snprintf(relay.origin + 2 * i, 3, "%02x", r[i]);
    atomic_store(&relay.remote_until_ms, 0);
    pthread_mutex_unlock(&relay.mu);
}

static void payloads_free_locked(void)
{
    for (size_t i = 0; i < relay.nfull; i++)
        free(relay.full[i].data);
    free(relay.full);
    free(relay.cur.data);
    relay.full = NULL;
    relay.nfull = relay.capfull = 0;
    relay.cur = (relay_payload){0};
    relay.pending_bytes = 0;
}

void events__relay_free(void)
{
    pthread_mutex_lock(&relay.mu);
    payloads_free_locked();
    pthread_mutex_unlock(&relay.mu);
}

bool events__relay_remote(void)
{
    uint64_t until = atomic_load_explicit(&relay.remote_until_ms, memory_order_relaxed);
    return until != 0 && mono_ms() < until;
}

/* Counts n dropped events; one log line every 10 s at most. Under relay.mu. */
static void dropped_locked(unsigned n, const char *why)
{
    metrics_add(CM_SSE_RELAY_DROPPED, 0, n);
    uint64_t now = mono_ms();
    if (relay.dropped_logged_ms == 0 || now - relay.dropped_logged_ms >= 10000) {
        relay.dropped_logged_ms = now;
        log_warn("sse_relay_dropped", NULL, NULL,
                 "%u live event(s) not relayed to the other instances: %s", n, why);
    }
}

/* Moves the current payload to the ready list. Under relay.mu. */
static bool push_cur_locked(void)
{
    if (!relay.cur.data || relay.cur.len == 0)
        return true;
    if (relay.nfull == relay.capfull) {
        size_t cap = relay.capfull ? relay.capfull * 2 : 16;
        relay_payload *p = realloc(relay.full, cap * sizeof(*p));
        if (!p)
            return false;
        relay.full = p;
        relay.capfull = cap;
    }
    relay.full[relay.nfull++] = relay.cur;
    relay.cur = (relay_payload){0};
    return true;
}

void events__relay_offer(uint64_t published_us, const char *type, const char *ward,
                         const char *json)
{
    if (!events__relay_remote())
        return;
    pthread_mutex_lock(&relay.mu);
    if (!relay.owner) {
        pthread_mutex_unlock(&relay.mu);
        return;
    }
    if (relay.pending_bytes >= RELAY_PENDING_MAX) {
        dropped_locked(1, "too much waiting (database slow or down)");
        pthread_mutex_unlock(&relay.mu);
        return;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!relay.cur.data && !(relay.cur.data = malloc(EVENTS__PAYLOAD_MAX + 1))) {
            dropped_locked(1, "out of memory");
            break;
        }
        size_t n =
            events__wire_put(relay.cur.data + relay.cur.len, EVENTS__PAYLOAD_MAX - relay.cur.len,
                             relay.origin, published_us, type, ward, json);
        if (n) {
            relay.cur.len += n;
            relay.cur.nevents++;
            relay.pending_bytes += n;
            break;
        }
        if (relay.cur.len == 0) { /* alone over the limit */
            dropped_locked(1, "event larger than a NOTIFY payload");
            break;
        }
        if (!push_cur_locked()) {
            dropped_locked(1, "out of memory");
            break;
        }
    }
    uv_async_send(&relay.owner->async); /* under the lock: the owner unregisters first */
    pthread_mutex_unlock(&relay.mu);
}

/* ---- the owner: sending ------------------------------------------------------------------ */

typedef struct sent {
    unsigned nevents;
} sent;

static void on_sent(void *ctx, int status, const store_rows *rows)
{
    (void)rows;
    sent *s = ctx;
    pthread_mutex_lock(&relay.mu);
    relay.inflight--;
    if (status == CMS_OK)
        metrics_add(CM_SSE_RELAYED, 0, s->nevents);
    else
        dropped_locked(s->nevents, cms_strerror(status));
    pthread_mutex_unlock(&relay.mu);
    free(s);
}

static const char notify_sql[] =
    "SELECT count(pg_notify('cms_events', p)) FROM unnest(ARRAY[$1, $2, $3, $4, $5, $6, $7, "
    "$8]::text[]) AS u (p) WHERE p IS NOT NULL";

static void on_flush(uv_timer_t *t)
{
    relay_owner *o = t->data;
    o->flush_armed = false;
    pthread_mutex_lock(&relay.mu);
    (void)push_cur_locked();
    relay_payload *full = relay.full;
    size_t nfull = relay.nfull;
    relay.full = NULL;
    relay.nfull = relay.capfull = 0;
    relay.pending_bytes = relay.cur.len;
    pthread_mutex_unlock(&relay.mu);
    for (size_t i = 0; i < nfull; i += RELAY_PER_STATEMENT) {
        const char *p[RELAY_PER_STATEMENT] = {0};
        unsigned nev = 0;
        for (size_t k = 0; k < RELAY_PER_STATEMENT && i + k < nfull; k++) {
            full[i + k].data[full[i + k].len] = '\0'; /* len <= MAX: room for it */
            p[k] = full[i + k].data;
            nev += full[i + k].nevents;
        }
        pthread_mutex_lock(&relay.mu);
        bool room = relay.inflight < RELAY_INFLIGHT_MAX;
        if (room)
            relay.inflight++;
        else
            dropped_locked(nev, "database slow: relay statements still unanswered");
        pthread_mutex_unlock(&relay.mu);
        if (!room)
            continue;
        sent *s = malloc(sizeof(*s));
        int rc = s ? CMS_OK : CMS_ENOMEM;
        if (s) {
            s->nevents = nev;
            rc = store_query(o->store, notify_sql, RELAY_PER_STATEMENT, p, on_sent, s);
        }
        if (rc != CMS_OK) { /* store_query copied nothing, calls nothing */
            free(s);
            pthread_mutex_lock(&relay.mu);
            relay.inflight--;
            dropped_locked(nev, cms_strerror(rc));
            pthread_mutex_unlock(&relay.mu);
        }
    }
    for (size_t i = 0; i < nfull; i++)
        free(full[i].data);
    free(full);
}

static void on_async(uv_async_t *a)
{
    relay_owner *o = a->data;
    if (!o->flush_armed) {
        o->flush_armed = true;
        uv_timer_start(&o->flush, on_flush, EVENTS_RELAY_MS, 0);
    }
}

/* ---- watching ---------------------------------------------------------------------------- */

static void on_announced(void *ctx, int status, const store_rows *rows)
{
    (void)ctx;
    (void)rows;
    if (status != CMS_OK)
        log_warn("sse_relay_watch", NULL, NULL,
                 "cannot tell the other instances a stream is open: %s", cms_strerror(status));
}

void events__relay_announce(store_t *store)
{
    char origin[EVENTS__ORIGIN_LEN];
    pthread_mutex_lock(&relay.mu);
    memcpy(origin, relay.origin, sizeof(origin));
    bool on = relay.owner != NULL;
    pthread_mutex_unlock(&relay.mu);
    const char *p[1] = {origin};
    if (on && store)
        (void)store_query(store, "SELECT pg_notify('cms_events_watch', $1)", 1, p, on_announced,
                          NULL);
}

static void on_watch_tick(uv_timer_t *t)
{
    relay_owner *o = t->data;
    if (events__local_streams() > 0)
        events__relay_announce(o->store);
}

/* ---- the owner: receiving ---------------------------------------------------------------- */

static bool from_self(const char *origin)
{
    pthread_mutex_lock(&relay.mu);
    bool self = strcmp(origin, relay.origin) == 0;
    pthread_mutex_unlock(&relay.mu);
    return self;
}

static void on_watch(void *ctx, const char *payload)
{
    (void)ctx;
    /* NULL: the connection came back (notifications may be lost): the watchers say it again
     * within EVENTS_WATCH_MS, well inside the 3 * EVENTS_WATCH_MS they are believed for. */
    if (!payload || strlen(payload) != EVENTS__ORIGIN_LEN - 1 || from_self(payload))
        return;
    if (!events__relay_remote())
        log_info("sse_relay_on", NULL, NULL,
                 "instance %.16s has a live event stream open: relaying events to it", payload);
    atomic_store(&relay.remote_until_ms, mono_ms() + 3u * EVENTS_WATCH_MS);
}

static void on_events(void *ctx, const char *payload)
{
    (void)ctx;
    if (!payload || !events__local_publishing())
        return;
    const char *p = payload, *end = payload + strlen(payload);
    events__wire_event ev;
    char *json = NULL;
    size_t cap = 0;
    unsigned got = 0, bad = 0;
    int rc;
    while ((rc = events__wire_next(&p, end, &ev)) != 0) {
        if (rc < 0) {
            bad++;
            continue;
        }
        if (strcmp(ev.origin, relay.origin) == 0) /* origin is written once, at init */
            continue;
        if (ev.json_len + 1 > cap) {
            char *j = realloc(json, ev.json_len + 1);
            if (!j)
                break;
            json = j;
            cap = ev.json_len + 1;
        }
        memcpy(json, ev.json, ev.json_len);
        json[ev.json_len] = '\0';
        if (events__publish_inbound(ev.type, ev.ward, json, ev.published_us))
            got++;
    }
    free(json);
    if (got)
        metrics_add(CM_SSE_RELAY_RECEIVED, 0, got);
    if (bad)
        log_warn("sse_relay_malformed", NULL, NULL, "%u malformed relay line(s) skipped", bad);
}

/* ---- start / stop ------------------------------------------------------------------------ */

static void on_closed(uv_handle_t *h)
{
    relay_owner *o = h->data;
    if (--o->open_handles == 0)
        free(o);
}

int events_relay_start(uv_loop_t *loop, store_t *store)
{
    relay_owner *o = calloc(1, sizeof(*o));
    if (!o)
        return CMS_ENOMEM;
    o->loop = loop;
    o->store = store;
    if (uv_async_init(loop, &o->async, on_async) != 0) {
        free(o);
        return CMS_ENOMEM;
    }
    o->async.data = o;
    o->open_handles = 1;
    uv_timer_init(loop, &o->flush); /* cannot fail: no allocation */
    o->flush.data = o;
    o->open_handles++;
    uv_timer_init(loop, &o->watch);
    o->watch.data = o;
    o->open_handles++;
    int rc = store_listen(store, "cms_events", on_events, NULL);
    if (rc == CMS_OK)
        rc = store_listen(store, "cms_events_watch", on_watch, NULL);
    pthread_mutex_lock(&relay.mu);
    bool taken = relay.owner != NULL;
    if (rc == CMS_OK && !taken)
        relay.owner = o;
    pthread_mutex_unlock(&relay.mu);
    if (rc != CMS_OK || taken) {
        uv_close((uv_handle_t *)&o->async, on_closed);
        uv_close((uv_handle_t *)&o->flush, on_closed);
        uv_close((uv_handle_t *)&o->watch, on_closed);
        return rc != CMS_OK ? rc : CMS_EINVAL;
    }
    uv_timer_start(&o->watch, on_watch_tick, EVENTS_WATCH_MS, EVENTS_WATCH_MS);
    return CMS_OK;
}

void events_relay_stop(uv_loop_t *loop)
{
    pthread_mutex_lock(&relay.mu);
    relay_owner *o = relay.owner;
    if (!o || o->loop != loop) {
        pthread_mutex_unlock(&relay.mu);
        return;
    }
    relay.owner = NULL;
    payloads_free_locked();
    pthread_mutex_unlock(&relay.mu);
    uv_timer_stop(&o->flush);
    uv_timer_stop(&o->watch);
    uv_close((uv_handle_t *)&o->async, on_closed);
    uv_close((uv_handle_t *)&o->flush, on_closed);
    uv_close((uv_handle_t *)&o->watch, on_closed);
}
