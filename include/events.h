/*
 * events.h - live events for the web console: Server-Sent Events on
 * GET /api/v1/events (svc layer; HTTPS through https.h only).
 *
 * One hub per process. The ingest path publishes an event after each
 * COMMIT (vitals, alarms) from whatever worker thread stored it; the hub
 * numbers it (ids strictly increasing within the process, starting from the
 * start time in microseconds, so the ids of a restarted process are above
 * the old ones) and keeps the last EVENTS_RING events in memory (fewer when they
 * pass EVENTS_RING_BYTES). Each
 * worker that serves SSE clients has an events_worker: the hub wakes it
 * (uv_async_send, never blocking the publisher beyond a short mutex) and it
 * writes the new events to its clients on its own loop, batch_ms
 * (events_hub_init, config events_batch_ms) after the wake-up (what arrived
 * meanwhile goes in the same write; 0: on the next loop turn), at most
 * EVENTS_FLUSH_SUBS clients per loop turn: the loop reads, stores and ACKs
 * between two turns, so however many viewers a worker serves, a monitor's
 * ACK waits for the writes of at most that many.
 *
 * A client resumes with Last-Event-ID: the events after that id still in the
 * ring are sent first; an id older than the ring (or unknown to this
 * process) gets one "reset" event (the page reloads its state), then the live
 * events. A client whose unsent output passes EVENTS_CLIENT_BUFFER is
 * dropped (log line event=sse_dropped, cmsd_sse_dropped_total): a slow
 * viewer never holds up ingest or other viewers. Every EVENTS_HEARTBEAT_MS a
 * comment line keeps proxies and the browser's connection alive.
 *
 * No event is built while no stream is open (nor EVENTS_IDLE_MS after the
 * last one closed): events_on() is false then. The first stream after such a
 * gap finds the ring emptied and the ids moved on, so a Last-Event-ID from
 * before the gap gets "reset".
 *
 * Per process: several cmsd instances each have their own hub and ids
 * (docs/scale-out.md). Relay: instances sharing a database hand each other
 * their events through it (PostgreSQL NOTIFY, events_relay.c), so a viewer
 * connected to any instance sees what every instance stored; only while
 * another instance has a stream open (it says so every EVENTS_WATCH_MS).
 */
#ifndef CMS_EVENTS_H
#define CMS_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "https.h"
#include "store.h"

#define EVENTS_RING 4096                     /* events kept for Last-Event-ID ... */
#define EVENTS_RING_BYTES (8u * 1024 * 1024) /* ... and at most this many bytes of them */
#define EVENTS_CLIENT_BUFFER (256u * 1024)   /* unsent bytes before a client is dropped */
#define EVENTS_HEARTBEAT_MS 15000u
#define EVENTS_IDLE_MS 60000u /* events are kept this long after the last stream closed */
#define EVENTS_WARD_LEN 64  /* a ward's name, NUL included */
#define EVENTS_WATCH_MS 5000u /* a process with a stream open tells the others this often */
#define EVENTS_RELAY_MS 20u   /* events for the other instances wait this long for more */
#define EVENTS_FLUSH_SUBS 32u /* streams a worker writes to in one loop turn */

/*
 * Starts the process's hub; workers write new events to their streams
 * batch_ms after the first (0: at once). Returns CMS_OK or CMS_ENOMEM.
 * Thread: main, before any worker runs. Until it is called, events_publish
 * does nothing.
 */
int events_hub_init(unsigned batch_ms);
/* Frees the hub (after every worker's events_worker was closed). Thread: main. */
void events_hub_free(void);

/*
 * Publishes one event: type (static, e.g. "vitals", "alarm"), the ward it
 * belongs to (the first component of the bed's location, cut to
 * EVENTS_WARD_LEN - 1 bytes; "" or NULL: none; streams opened with ?ward=W
 * get only W's events) and data, a JSON object on one line (copied; the hub
 * adds "published_us", its wall-clock time in microseconds, as the first
 * member). Returns its id, or 0 when the hub is off or out of memory.
 * Thread: any.
 */
uint64_t events_publish(const char *type, const char *ward, const char *json);

/*
 * True when the hub runs and keeps events (a stream is open, or closed less
 * than EVENTS_IDLE_MS ago): build an event only then. Thread: any.
 */
bool events_on(void);

typedef struct events_worker events_worker;

/*
 * A worker's side of the hub: registers with the hub, owns its SSE clients.
 * loop borrowed (must outlive it). NULL when out of memory or the hub is
 * off. Thread: loop's.
 */
events_worker *events_worker_new(uv_loop_t *loop, unsigned worker_id);
/*
 * Unregisters from the hub, ends every client's stream (their connections
 * close) and closes the handles; the memory goes in their close callbacks.
 * NULL is a no-op. Thread: loop's.
 */
void events_worker_close(events_worker *w);

/*
 * GET /api/v1/events[?ward=W] (viewer): the SSE stream (only ward W's events
 * with ward). r->ctx->svc is a svc_state whose events member is this
 * worker's events_worker (503 when NULL). Header Last-Event-ID (digits)
 * resumes. Returns CMS_EAGAIN (the stream
 * runs until the client or the server closes it) or CMS_OK after an answer.
 */
int events_get(https_req *r);

/*
 * Relays this process's events to the other instances on the same database and theirs to
 * this process's streams (events_relay.c): LISTENs on cms_events and cms_events_watch through
 * store, sends the relay NOTIFYs and the periodic watch announcement on loop. One relay per
 * process: the first call wins, a second returns CMS_EINVAL. loop and store borrowed (they
 * must outlive events_relay_stop). Returns CMS_OK, CMS_ENOMEM or what store_listen returned.
 * Thread: loop's, after events_hub_init.
 */
int events_relay_start(uv_loop_t *loop, store_t *store);
/* Stops the relay started on loop (no-op otherwise); what waits is dropped. Thread: loop's. */
void events_relay_stop(uv_loop_t *loop);

#endif
