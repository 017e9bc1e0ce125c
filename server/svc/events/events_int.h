/*
 * events_int.h - the hub's ring of formatted events, without locks, loops or
 * sockets (events_ring.c); events.c holds it under its mutex. Internal to
 * server/svc/events.
 *
 * Thread: none of its own; the caller serializes every call on one ring
 * (events.c: the hub's mutex).
 */
#ifndef CMS_EVENTS_INT_H
#define CMS_EVENTS_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "events.h"
#include "store.h"

/*
 * The last max_events events ("id: N\nevent: T\ndata: J\n\n"), fewer when
 * they pass max_bytes: ids next_id - 1 down to kept_from are held, event id
 * in slot id % max_events.
 */
typedef struct events__ring {
    size_t max_events;  /* slots: at most this many events held */
    size_t max_bytes;   /* held bytes; the newest event is kept even when it alone passes */
    uint64_t first_id;  /* the first id given */
    uint64_t next_id;   /* the id of the next event */
    uint64_t kept_from; /* the oldest id still held (the byte budget frees older ones) */
    size_t bytes;       /* held now */
    char **slot;        /* max_events, owned; NULL: empty */
    size_t *len;        /* max_events */
    char (*ward)[EVENTS_WARD_LEN]; /* max_events: each event's ward, "" = none */
} events__ring;

/*
 * Makes rg an empty ring of at most max_events (> 0) events and max_bytes
 * bytes whose first event gets id first_id (> 0; events.c: the start time in
 * microseconds). Returns CMS_OK, CMS_EINVAL (max_events or first_id 0) or
 * CMS_ENOMEM (rg is then empty: events__ring_free is a no-op on it).
 */
int events__ring_init(events__ring *rg, size_t max_events, size_t max_bytes, uint64_t first_id);
/* Frees every event and the slots; rg is zeroed (a zeroed ring: no-op). */
void events__ring_free(events__ring *rg);

/* The size of the buffer events__ring_put needs for an event of type and json. */
size_t events__ring_event_cap(const char *type, const char *json);

/*
 * Numbers the next event, formats it into ev (events__ring_event_cap(type,
 * json) bytes; the ring takes ownership) with data json (a JSON object on one
 * line, borrowed) preceded by "published_us": published_us, and stores it
 * with ward (borrowed; NULL or "": none; cut to EVENTS_WARD_LEN - 1 bytes).
 * Drops the event max_events before it, then the oldest while the ring holds
 * more than max_bytes (never the new one). Returns the new event's id.
 */
uint64_t events__ring_put(events__ring *rg, char *ev, const char *type, const char *ward,
                          const char *json, uint64_t published_us);

/* The newest event's id; first_id - 1 while there is none. */
uint64_t events__ring_newest(const events__ring *rg);

/*
 * Copies into *buf (*cap bytes) the events after *last, only ward's when
 * ward is not "" (others are skipped: *last moves past them): as many whole
 * events as fit, at least one (*buf grown with realloc to fit it; on failure
 * nothing is copied). When *last is neither the newest id nor one from which
 * every later event is still held (older than kept_from - 1, or after the
 * newest: another process's, a garbled one), copies one
 * "id: NEWEST\nevent: reset\ndata: {}\n\n" instead (whatever the ward) and
 * *last becomes the newest. Returns the bytes copied; *last is the last
 * event copied or skipped (unchanged and 0 returned: nothing new).
 */
size_t events__ring_copy(const events__ring *rg, uint64_t *last, const char *ward, char **buf,
                         size_t *cap);

/*
 * Parses a Last-Event-ID value (v borrowed; NULL: absent): 1 to 19 decimal
 * digits. Returns true with the id in *id; false (nothing to resume, the
 * stream starts live) otherwise.
 */
bool events__parse_last_id(const char *v, uint64_t *id);

/* ---- relay lines (events_wire.c): events carried between instances by NOTIFY ----------------- */

#define EVENTS__ORIGIN_LEN 17     /* a process's origin: 16 lower-case hex digits and NUL */
#define EVENTS__PAYLOAD_MAX 7900u /* bytes of one NOTIFY payload (PostgreSQL's limit: 8000) */
#define EVENTS__TYPE_LEN 16       /* an event type's name, NUL included */

/*
 * One event as a relay line (a NOTIFY payload holds one or more, back to back):
 *   ORIGIN SP PUBLISHED_US SP TYPE SP WARDLEN SP WARD JSON LF
 * ORIGIN: 16 lower-case hex digits (the publishing process); PUBLISHED_US: decimal;
 * TYPE: [a-z_]{1,15}; WARDLEN: decimal 0..EVENTS_WARD_LEN-1, then that many bytes of ward
 * (any byte but NUL), then JSON: a JSON object on one line ('{' ... up to the LF; jansson's
 * compact output never holds a raw LF).
 *
 * events__wire_put writes one line into out (cap bytes) and returns its length, or 0 when it
 * does not fit or an argument is out of those bounds (nothing written then). Borrowed args.
 */
size_t events__wire_put(char *out, size_t cap, const char *origin, uint64_t published_us,
                        const char *type, const char *ward, const char *json);

/* One parsed line: pointers into the payload (json is json_len bytes, not NUL-terminated). */
typedef struct events__wire_event {
    char origin[EVENTS__ORIGIN_LEN];
    uint64_t published_us;
    char type[EVENTS__TYPE_LEN];
    char ward[EVENTS_WARD_LEN];
    const char *json;
    size_t json_len;
} events__wire_event;

/*
 * Reads the line at *p (before end) into ev and moves *p past it. Returns 1 (ev filled),
 * 0 (nothing left), or -1 (a malformed line: *p moves past its LF, or to end without one;
 * the caller goes on with the next). Reads only [*p, end).
 */
int events__wire_next(const char **p, const char *end, events__wire_event *ev);

/* ---- between the hub (events.c) and the relay (events_relay.c) ------------------------------- */

/* events_relay.c: a fresh random origin for this process (events_hub_init). Thread: main. */
void events__relay_init(void);
/* events_relay.c: frees whatever waits to be relayed (events_hub_free). Thread: main. */
void events__relay_free(void);
/* events_relay.c: whether another instance announced a stream in the last 3 * EVENTS_WATCH_MS.
 * Thread: any. */
bool events__relay_remote(void);
/* events_relay.c: queues one published event for the other instances (nothing when none
 * watches or no owner runs). Borrowed args. Thread: any. */
void events__relay_offer(uint64_t published_us, const char *type, const char *ward,
                         const char *json);
/* events_relay.c: NOTIFY cms_events_watch from store (the stream's worker's). Thread: that
 * store's loop. */
void events__relay_announce(store_t *store);

/* events.c: streams open in this process. Thread: any. */
size_t events__local_streams(void);
/* events.c: whether this process keeps events for its own streams (one open, or closed less than
 * EVENTS_IDLE_MS ago). Thread: any. */
bool events__local_publishing(void);
/* events.c: puts another instance's event into the ring (not relayed on) with its
 * published_us, when this process keeps events for its own streams. Returns its id or 0.
 * Thread: any. */
uint64_t events__publish_inbound(const char *type, const char *ward, const char *json,
                                 uint64_t published_us);

#endif
