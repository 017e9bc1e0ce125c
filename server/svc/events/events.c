/*
 * events.c - the process's event hub and the SSE stream of each worker (see
 * events.h).
 *
 * The hub is a ring of formatted events ("id: N\nevent: T\ndata: J\n\n",
 * events_ring.c) under one mutex: publishers (worker threads, after a
 * COMMIT) hold it for a copy and a uv_async_send per registered worker; a
 * worker's async callback copies what its clients have not seen yet under
 * the same mutex, then writes outside it. No thread ever waits on a client's
 * socket.
 *
 * Idle: while no stream is open, and EVENTS_IDLE_MS after the last one
 * closed, events_on() is false and ingest builds no event at all (building
 * the JSON of every committed message for nobody cost more cmsd CPU than the
 * rest of the ingest path: P1, docs/benchmarks.md). Events skipped so are a
 * gap: the first stream after one empties the ring and numbers on past the
 * gap, so a Last-Event-ID from before it gets "reset", never a silent skip.
 * Only workers with a stream of their own are woken by a publish.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "events.h"
#include "events_int.h"
#include "log.h"
#include "metrics.h"
#include "svc.h"
#include "../svc_int.h"

#define MAX_WORKERS 64
#define CHUNK (64u * 1024) /* bytes copied out of the ring per write */

static struct {
    pthread_mutex_t mu;
    bool on;
    events__ring ring; /* EVENTS_RING events, EVENTS_RING_BYTES bytes */
    events_worker *workers[MAX_WORKERS];
    size_t nworkers;
    /* Publishing: streams open in the process, and when the last one closed (monotonic ms;
     * 0: never one). Written under mu, read without it by events_on(). */
    atomic_size_t nsubs;
    _Atomic uint64_t idle_since_ms;
    unsigned batch_ms; /* set before any worker runs (events_hub_init) */
} hub = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Wall-clock microseconds: event ids start from it, published_us is it. */
static uint64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

bool events__local_publishing(void)
{
    if (atomic_load_explicit(&hub.nsubs, memory_order_relaxed) > 0)
        return true;
    uint64_t since = atomic_load_explicit(&hub.idle_since_ms, memory_order_relaxed);
    return since != 0 && mono_ms() - since < EVENTS_IDLE_MS;
}

size_t events__local_streams(void)
{
    return atomic_load_explicit(&hub.nsubs, memory_order_relaxed);
}

/* Whether events are being kept: for a stream of this process (events__local_publishing) or of
 * another instance (events_relay.c). */
static bool hub_publishing(void)
{
    return events__local_publishing() || events__relay_remote();
}

typedef struct sub {
    struct sub *prev, *next;
    events_worker *w;
    https_req *r;
    uint64_t last_id;           /* the last event it was sent */
    char ward[EVENTS_WARD_LEN]; /* only this ward's events; "" = every event */
    bool writing;               /* inside sub_write: a close it causes must not end s under it */
} sub;

struct events_worker {
    uv_loop_t *loop;
    unsigned id;
    uv_async_t async;
    uv_timer_t heartbeat;
    uv_timer_t flush; /* hub.batch_ms after a wake-up: one write per client per batch; */
                      /* active: a batch waits for its timer or for its next turn */
    bool heartbeat_ok, flush_ok;
    bool flushing;    /* being written, EVENTS_FLUSH_SUBS streams per loop turn ... */
    bool flush_more;  /* ... and events came meanwhile: another batch after it */
    sub *resume;      /* while flushing: the stream the next turn starts with */
    sub *subs;
    size_t nsubs; /* streams in subs (under the hub's mutex: publishers read it) */
    int open_handles;
    char *buf; /* what one write copies out of the ring */
    size_t cap;
};

/* ---- hub --------------------------------------------------------------------------------- */

int events_hub_init(unsigned batch_ms)
{
    uint64_t first_id = wall_us();
    pthread_mutex_lock(&hub.mu);
    hub.batch_ms = batch_ms;
    events__ring_free(&hub.ring);
    int rc = events__ring_init(&hub.ring, EVENTS_RING, EVENTS_RING_BYTES, first_id);
    hub.on = rc == CMS_OK;
    events__relay_init();
    atomic_store(&hub.nsubs, 0);
    atomic_store(&hub.idle_since_ms, 0);
    pthread_mutex_unlock(&hub.mu);
    return rc == CMS_OK ? CMS_OK : CMS_ENOMEM;
}

void events_hub_free(void)
{
    pthread_mutex_lock(&hub.mu);
    hub.on = false;
    events__ring_free(&hub.ring);
    hub.nworkers = 0;
    pthread_mutex_unlock(&hub.mu);
    events__relay_free();
}

bool events_on(void)
{
    if (!hub_publishing())
        return false;
    pthread_mutex_lock(&hub.mu);
    bool on = hub.on;
    pthread_mutex_unlock(&hub.mu);
    return on;
}

/* Into the ring, when publishing (for this process's streams only: local). */
static uint64_t publish(const char *type, const char *ward, const char *json, uint64_t us,
                        bool local)
{
    char *ev = malloc(events__ring_event_cap(type, json));
    if (!ev)
        return 0;
    pthread_mutex_lock(&hub.mu);
    if (!hub.on || !(local ? events__local_publishing() : hub_publishing())) {
        /* the next stream finds the gap: events_get */
        pthread_mutex_unlock(&hub.mu);
        free(ev);
        return 0;
    }
    uint64_t id = events__ring_put(&hub.ring, ev, type, ward, json, us);
    for (size_t k = 0; k < hub.nworkers;
         k++) /* under the lock: a closing worker unregisters first */
        if (hub.workers[k]->nsubs > 0)
            uv_async_send(&hub.workers[k]->async);
    pthread_mutex_unlock(&hub.mu);
    return id;
}

uint64_t events_publish(const char *type, const char *ward, const char *json)
{
    uint64_t us = wall_us();
    uint64_t id = publish(type, ward, json, us, false);
    if (id) {
        metrics_add(CM_SSE_EVENTS, 0, 1);
        events__relay_offer(us, type, ward, json);
    }
    return id;
}

uint64_t events__publish_inbound(const char *type, const char *ward, const char *json,
                                 uint64_t published_us)
{
    return publish(type, ward, json, published_us, true);
}

/* events__ring_copy under the hub's lock. */
static size_t hub_copy(uint64_t *last, const char *ward, char **buf, size_t *cap)
{
    pthread_mutex_lock(&hub.mu);
    size_t used = events__ring_copy(&hub.ring, last, ward, buf, cap);
    pthread_mutex_unlock(&hub.mu);
    return used;
}

/* ---- clients ----------------------------------------------------------------------------- */

static void sub_unlink(sub *s)
{
    events_worker *w = s->w;
    if (w->resume == s)
        w->resume = s->next;
    if (s->prev)
        s->prev->next = s->next;
    else if (w->subs == s)
        w->subs = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    pthread_mutex_lock(&hub.mu);
    w->nsubs--;
    if (atomic_fetch_sub(&hub.nsubs, 1) == 1)
        atomic_store(&hub.idle_since_ms, mono_ms() | 1); /* never 0 */
    pthread_mutex_unlock(&hub.mu);
    metrics_gauge_add(CM_SSE_CLIENTS, 0, -1);
}

/* Ends s's stream (ok = false: close the connection) and frees it. */
static void sub_end(sub *s, bool ok)
{
    https_req *r = s->r;
    sub_unlink(s);
    free(s);
    https_stream_end(r, ok);
}

/*
 * Writes to s's stream. A failed write closes the connection inside the call,
 * and the close calls on_writable (https.h): that nested call sees s->writing
 * and leaves s alone. Returns true when the stream is still open; on false the
 * caller ends s.
 */
static bool sub_write(sub *s, const char *data, size_t n)
{
    s->writing = true;
    int rc = https_stream_write(s->r, data, n);
    s->writing = false;
    return rc == CMS_OK && net_conn_state(s->r->conn) == NET_ACTIVE;
}

/* Writes what s has not seen; drops it when its output passes the bound. */
static void sub_deliver(sub *s)
{
    events_worker *w = s->w;
    if (s->writing)
        return;
    if (net_conn_state(s->r->conn) != NET_ACTIVE) {
        sub_end(s, false);
        return;
    }
    for (;;) {
        uint64_t before = s->last_id;
        size_t n = hub_copy(&s->last_id, s->ward, &w->buf, &w->cap);
        if (n == 0 && s->last_id == before)
            return;
        if (n && !sub_write(s, w->buf, n)) {
            sub_end(s, false);
            return;
        }
        if (https_stream_pending(s->r) > EVENTS_CLIENT_BUFFER) {
            log_warn("sse_dropped", net_conn_identity(s->r->conn), s->r->peer_addr,
                     "event stream client not reading: %zu bytes unsent (limit %u), dropped "
                     "at event %" PRIu64,
                     https_stream_pending(s->r), EVENTS_CLIENT_BUFFER, s->last_id);
            metrics_add(CM_SSE_DROPPED, 0, 1);
            sub_end(s, false);
            return;
        }
    }
}

/* The stream's on_writable: right after begin, when drained, and once at close. */
static void on_writable(https_req *r, void *ctx)
{
    (void)r;
    sub_deliver(ctx);
}

static void deliver_all(events_worker *w)
{
    for (sub *s = w->subs, *next; s; s = next) {
        next = s->next;
        sub_deliver(s);
    }
}

/*
 * One loop turn of a batch: at most EVENTS_FLUSH_SUBS streams, then the rest on
 * the next turn (a 0 ms timer runs after that turn's I/O), so that the monitors
 * this worker serves are read and answered in between. Streams opened meanwhile
 * start live (events_get); streams ended meanwhile move resume on (sub_unlink).
 */
static void on_flush(uv_timer_t *t)
{
    events_worker *w = t->data;
    sub *s = w->flushing ? w->resume : w->subs;
    w->flushing = true;
    for (unsigned n = 0; s && n < EVENTS_FLUSH_SUBS; n++) {
        w->resume = s->next;
        sub_deliver(s); /* may end s, never another stream */
        s = w->resume;
    }
    if (s) {
        uv_timer_start(&w->flush, on_flush, 0, 0);
        return;
    }
    w->flushing = false;
    w->resume = NULL;
    if (w->flush_more) { /* the streams written before those events came lack them */
        w->flush_more = false;
        uv_timer_start(&w->flush, on_flush, hub.batch_ms, 0);
    }
}

/* New events: written hub.batch_ms later, together with those that follow them
 * meanwhile (a commit every few ms would otherwise be a TLS record and a system call per
 * client each). */
static void on_async(uv_async_t *a)
{
    events_worker *w = a->data;
    if (!w->subs)
        return;
    if (!w->flush_ok) {
        deliver_all(w);
        return;
    }
    if (w->flushing)
        w->flush_more = true;
    else if (!uv_is_active((uv_handle_t *)&w->flush))
        uv_timer_start(&w->flush, on_flush, hub.batch_ms, 0);
}

static void on_heartbeat(uv_timer_t *t)
{
    events_worker *w = t->data;
    static const char beat[] = ": keep-alive\n\n";
    for (sub *s = w->subs, *next; s; s = next) {
        next = s->next;
        if (net_conn_state(s->r->conn) != NET_ACTIVE || !sub_write(s, beat, sizeof(beat) - 1))
            sub_end(s, false);
    }
}

int events_get(https_req *r)
{
    static const char head[] = "HTTP/1.1 200 OK\r\n"
                               "Server: cmsd\r\n"
                               "Content-Type: text/event-stream; charset=utf-8\r\n"
                               "Cache-Control: no-store\r\n"
                               "X-Content-Type-Options: nosniff\r\n"
                               "X-Accel-Buffering: no\r\n"
                               "Connection: close\r\n"
                               "\r\n"
                               "retry: 2000\n"
                               ": cmsd events\n\n";
    static const char *const allowed[] = {"ward", NULL};
    svc_state *st = r->ctx->svc;
    events_worker *w = st->events;
    char ward[EVENTS_WARD_LEN];
    if (!svc__query_ok(r, allowed))
        return CMS_OK;
    if (http_query_get(r->http->query, r->http->query_len, "ward", ward, sizeof(ward), NULL) < 0) {
        https_reply_error(r, 400, "bad_request", "ward: at most 63 bytes");
        return CMS_OK;
    }
    if (!w) {
        https_reply_error(r, 503, "unavailable", "live events are off in this process");
        return CMS_OK;
    }
    sub *s = calloc(1, sizeof(*s));
    if (!s) {
        https_reply_error(r, 503, "unavailable", "out of memory");
        return CMS_OK;
    }
    s->w = w;
    s->r = r;
    snprintf(s->ward, sizeof(s->ward), "%s", ward);
    pthread_mutex_lock(&hub.mu);
    if (!hub_publishing()) {
        /* Events were skipped while nobody watched (or may be, from now until this
         * stream is counted; publishing starts again only here): empty the ring and
         * number on past the gap, so that a Last-Event-ID from before it is answered
         * with reset. */
        uint64_t now = wall_us();
        uint64_t next = events__ring_newest(&hub.ring) + 2; /* one id left out: the gap */
        size_t max_ev = hub.ring.max_events, max_b = hub.ring.max_bytes;
        events__ring_free(&hub.ring);
        if (events__ring_init(&hub.ring, max_ev, max_b, next > now ? next : now) != CMS_OK)
            hub.on = false; /* out of memory: events off, as at a failed start */
    }
    w->nsubs++;
    atomic_fetch_add(&hub.nsubs, 1);
    s->last_id = events__ring_newest(&hub.ring); /* live from now on */
    pthread_mutex_unlock(&hub.mu);
    uint64_t resume;
    bool resuming = events__parse_last_id(http_request_header(r->http, "last-event-id"), &resume);
    if (resuming)
        s->last_id = resume;
    s->next = w->subs;
    if (w->subs)
        w->subs->prev = s;
    w->subs = s;
    metrics_gauge_add(CM_SSE_CLIENTS, 0, 1);
    log_info("sse_open", net_conn_identity(r->conn), r->peer_addr, "event stream opened%s%s%s",
             ward[0] ? " for ward " : "", ward, resuming ? " (resuming)" : "");
    https_stream_begin(r, head, sizeof(head) - 1, on_writable, s);
    events__relay_announce(st->store); /* the other instances relay their events from now on */
    return CMS_EAGAIN;
}

/* ---- worker ------------------------------------------------------------------------------ */

events_worker *events_worker_new(uv_loop_t *loop, unsigned worker_id)
{
    events_worker *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->loop = loop;
    w->id = worker_id;
    w->cap = CHUNK;
    if (!(w->buf = malloc(w->cap))) {
        free(w);
        return NULL;
    }
    if (uv_async_init(loop, &w->async, on_async) != 0) {
        free(w->buf);
        free(w);
        return NULL;
    }
    w->async.data = w;
    w->open_handles = 1;
    if (uv_timer_init(loop, &w->heartbeat) == 0) {
        w->heartbeat.data = w;
        w->heartbeat_ok = true;
        w->open_handles++;
        uv_timer_start(&w->heartbeat, on_heartbeat, EVENTS_HEARTBEAT_MS, EVENTS_HEARTBEAT_MS);
    }
    if (uv_timer_init(loop, &w->flush) == 0) { /* else: written at each wake-up */
        w->flush.data = w;
        w->flush_ok = true;
        w->open_handles++;
    }
    pthread_mutex_lock(&hub.mu);
    bool ok = hub.on && hub.nworkers < MAX_WORKERS;
    if (ok)
        hub.workers[hub.nworkers++] = w;
    pthread_mutex_unlock(&hub.mu);
    if (!ok) {
        events_worker_close(w);
        return NULL;
    }
    return w;
}

static void on_handle_closed(uv_handle_t *h)
{
    events_worker *w = h->data;
    if (--w->open_handles == 0) {
        free(w->buf);
        free(w);
    }
}

void events_worker_close(events_worker *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&hub.mu);
    for (size_t k = 0; k < hub.nworkers; k++)
        if (hub.workers[k] == w) {
            hub.workers[k] = hub.workers[--hub.nworkers];
            break;
        }
    pthread_mutex_unlock(&hub.mu);
    while (w->subs)
        sub_end(w->subs, false);
    bool heartbeat = w->heartbeat_ok, flush = w->flush_ok; /* w may go in a close callback */
    uv_close((uv_handle_t *)&w->async, on_handle_closed);
    if (heartbeat) {
        uv_timer_stop(&w->heartbeat);
        uv_close((uv_handle_t *)&w->heartbeat, on_handle_closed);
    }
    if (flush) {
        uv_timer_stop(&w->flush);
        uv_close((uv_handle_t *)&w->flush, on_handle_closed);
    }
}
