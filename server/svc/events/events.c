/*
 * events.c - the process's event hub and the SSE stream of each worker (see
 * events.h).
 *
 * The hub is a ring of formatted events ("id: N\nevent: T\ndata: J\n\n")
 * under one mutex: publishers (worker threads, after a COMMIT) hold it for a
 * copy and a uv_async_send per registered worker; a worker's async callback
 * copies what its clients have not seen yet under the same mutex, then
 * writes outside it. No thread ever waits on a client's socket.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "events.h"
#include "log.h"
#include "metrics.h"
#include "svc.h"
#include "../svc_int.h"

#define MAX_WORKERS 64
#define CHUNK (64u * 1024) /* bytes copied out of the ring per write */

static struct {
    pthread_mutex_t mu;
    bool on;
    uint64_t first_id;  /* the first id this process gives */
    uint64_t next_id;   /* the id of the next event */
    uint64_t kept_from; /* the oldest id still held (the byte budget frees older ones) */
    size_t bytes;       /* held in the ring, at most EVENTS_RING_BYTES (one event over) */
    char *slot[EVENTS_RING];
    size_t len[EVENTS_RING];
    char ward[EVENTS_RING][EVENTS_WARD_LEN]; /* each event's ward, "" = none */
    events_worker *workers[MAX_WORKERS];
    size_t nworkers;
} hub = {.mu = PTHREAD_MUTEX_INITIALIZER};

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
    uv_timer_t flush; /* EVENTS_BATCH_MS after a wake-up: one write per client per batch */
    bool heartbeat_ok, flush_ok, flush_armed;
    sub *subs;
    int open_handles;
    char *buf; /* what one write copies out of the ring */
    size_t cap;
};

/* ---- hub --------------------------------------------------------------------------------- */

int events_hub_init(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    pthread_mutex_lock(&hub.mu);
    hub.first_id = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    hub.next_id = hub.first_id;
    hub.kept_from = hub.first_id;
    hub.bytes = 0;
    hub.on = true;
    pthread_mutex_unlock(&hub.mu);
    return CMS_OK;
}

void events_hub_free(void)
{
    pthread_mutex_lock(&hub.mu);
    hub.on = false;
    for (size_t i = 0; i < EVENTS_RING; i++) {
        free(hub.slot[i]);
        hub.slot[i] = NULL;
        hub.len[i] = 0;
    }
    hub.bytes = 0;
    hub.nworkers = 0;
    pthread_mutex_unlock(&hub.mu);
}

bool events_on(void)
{
    pthread_mutex_lock(&hub.mu);
    bool on = hub.on;
    pthread_mutex_unlock(&hub.mu);
    return on;
}

uint64_t events_publish(const char *type, const char *ward, const char *json)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    size_t cap = strlen(type) + strlen(json) + 96;
    char *ev = malloc(cap);
    if (!ev)
        return 0;
    pthread_mutex_lock(&hub.mu);
    if (!hub.on) {
        pthread_mutex_unlock(&hub.mu);
        free(ev);
        return 0;
    }
    uint64_t id = hub.next_id++;
    /* data: the object with "published_us" (when the hub took it) first */
    unsigned long long us =
        (unsigned long long)ts.tv_sec * 1000000u + (unsigned long long)ts.tv_nsec / 1000u;
    bool empty = json[0] != '{' || json[1] == '}';
    int n = snprintf(ev, cap, "id: %" PRIu64 "\nevent: %s\ndata: {\"published_us\":%llu%s%s\n\n",
                     id, type, us, empty ? "}" : ",", empty ? "" : json + 1);
    size_t i = (size_t)(id % EVENTS_RING);
    if (hub.slot[i]) { /* the event EVENTS_RING before this one */
        hub.bytes -= hub.len[i];
        free(hub.slot[i]);
        hub.slot[i] = NULL;
        if (hub.kept_from <= id - EVENTS_RING)
            hub.kept_from = id - EVENTS_RING + 1;
    }
    hub.slot[i] = ev;
    hub.len[i] = n > 0 ? (size_t)n : 0;
    hub.bytes += hub.len[i];
    snprintf(hub.ward[i], EVENTS_WARD_LEN, "%s", ward ? ward : "");
    while (hub.bytes > EVENTS_RING_BYTES && hub.kept_from < id) { /* large events: fewer kept */
        size_t o = (size_t)(hub.kept_from % EVENTS_RING);
        hub.bytes -= hub.len[o];
        free(hub.slot[o]);
        hub.slot[o] = NULL;
        hub.len[o] = 0;
        hub.kept_from++;
    }
    for (size_t k = 0; k < hub.nworkers;
         k++) /* under the lock: a closing worker unregisters first */
        uv_async_send(&hub.workers[k]->async);
    pthread_mutex_unlock(&hub.mu);
    metrics_add(CM_SSE_EVENTS, 0, 1);
    return id;
}

/*
 * Copies into buf (cap bytes) the events after *last: as many whole events
 * as fit (at least one, buf grown for it). A *last older than the ring, or
 * not one of this process's, gets a reset event instead. Returns the length;
 * *last moves to the last event copied.
 */
static size_t hub_copy(uint64_t *last, const char *ward, char **buf, size_t *cap)
{
    size_t used = 0;
    pthread_mutex_lock(&hub.mu);
    uint64_t newest = hub.next_id - 1; /* first_id - 1: none yet */
    uint64_t oldest = hub.kept_from;
    if (*last != newest && (*last + 1 < oldest || *last > newest)) {
        int n = snprintf(*buf, *cap, "id: %" PRIu64 "\nevent: reset\ndata: {}\n\n", newest);
        used = n > 0 ? (size_t)n : 0;
        *last = newest;
        goto done;
    }
    for (uint64_t id = *last + 1; id <= newest; id++) {
        size_t i = (size_t)(id % EVENTS_RING);
        size_t n = hub.len[i];
        if (ward[0] && strcmp(ward, hub.ward[i]) != 0) { /* another ward's: skipped */
            *last = id;
            continue;
        }
        if (used + n > *cap) {
            if (used > 0)
                break;
            char *b = realloc(*buf, n);
            if (!b)
                break;
            *buf = b;
            *cap = n;
        }
        memcpy(*buf + used, hub.slot[i], n);
        used += n;
        *last = id;
    }
done:
    pthread_mutex_unlock(&hub.mu);
    return used;
}

/* ---- clients ----------------------------------------------------------------------------- */

static void sub_unlink(sub *s)
{
    events_worker *w = s->w;
    if (s->prev)
        s->prev->next = s->next;
    else if (w->subs == s)
        w->subs = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
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

static void on_flush(uv_timer_t *t)
{
    events_worker *w = t->data;
    w->flush_armed = false;
    deliver_all(w);
}

/* New events: written EVENTS_BATCH_MS later, together with those that follow them
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
    if (!w->flush_armed) {
        w->flush_armed = true;
        uv_timer_start(&w->flush, on_flush, EVENTS_BATCH_MS, 0);
    }
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

/* Parses Last-Event-ID (decimal digits); false when absent or not a number. */
static bool last_event_id(const https_req *r, uint64_t *id)
{
    const char *v = http_request_header(r->http, "last-event-id");
    if (!v || !*v || strlen(v) > 19)
        return false;
    uint64_t n = 0;
    for (const char *p = v; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        n = n * 10 + (uint64_t)(*p - '0');
    }
    *id = n;
    return true;
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
    s->last_id = hub.next_id - 1; /* live from now on */
    pthread_mutex_unlock(&hub.mu);
    uint64_t resume;
    bool resuming = last_event_id(r, &resume);
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
