/*
 * store_int.h - internals shared by the files of server/store (not public).
 *
 *   store_array.c  PostgreSQL array literals (build, parse) and a byte buffer
 *   store_conn.c   one async libpq connection: connect, query, timers, close,
 *                  reconnect with backoff
 *   store_ingest.c ingest queue, group commit, resend, split-and-retry
 *   store_more.c   a message's text observations, waveform blocks and alarms
 *                  as JSON pieces (copied at store_ingest_full)
 *   store_latest.c the newest committed value per (device, code, sub id),
 *                  written to cms.latest_observations once a second
 *   store_rows.c   the result view store_query callbacks get (store_rows)
 *   store_ctl.c    the control connection's queue (statements, audit rows,
 *                  LISTEN, maintenance)
 *   store_lookup.c device checks in batches, "last seen" in batches
 *   store_devcache.c "active" verdicts kept in memory
 *   store.c        store_new/close, the timers
 *
 * Thread: the loop's thread only.
 */
#ifndef CMS_STORE_INT_H
#define CMS_STORE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <uv.h>

#include "store.h"

/* ------------------------------------------------------------------------ */
/* store_array.c                                                            */
/* ------------------------------------------------------------------------ */

/* Growable byte buffer, always NUL-terminated once anything was written. */
typedef struct store__buf {
    char *p;
    size_t len, cap;
    bool oom; /* sticky: an append failed */
} store__buf;

void store__buf_reset(store__buf *b);
void store__buf_free(store__buf *b);
void store__buf_append(store__buf *b, const char *s, size_t n);

/*
 * Array literal builder: store__arr_begin, then one store__arr_* per element,
 * then store__arr_end. Text elements are always double-quoted with '"' and
 * '\' backslash-escaped; a NULL pointer becomes the unquoted NULL. The result
 * is a value for a text-format parameter ("{...}"), never SQL text.
 */
void store__arr_begin(store__buf *b);
void store__arr_text(store__buf *b, const char *s);
void store__arr_int(store__buf *b, long long v);
void store__arr_double(store__buf *b, double v);
void store__arr_end(store__buf *b);

/*
 * JSON text helpers (for jsonb parameters): store__json_str appends s as a
 * JSON string (quotes, backslash, control characters escaped; other bytes
 * as they are: the database checks UTF-8); store__json_num a finite double
 * (shortest exact form), non-finite as null.
 */
void store__json_str(store__buf *b, const char *s);
void store__json_num(store__buf *b, double v);

/*
 * Parses a one-dimensional text array as PostgreSQL outputs it
 * ({a,"b c",NULL}) into at most max strings of cap bytes (longer ones are
 * truncated; NULL elements are skipped; elements beyond max are ignored).
 * Returns the number stored, or -1 if s is not an array literal.
 */
int store__arr_parse(const char *s, char (*out)[64], size_t max);

/* ------------------------------------------------------------------------ */
/* store_rows.c                                                             */
/* ------------------------------------------------------------------------ */

/* What a store_query callback gets: the connection's result, borrowed. */
struct store_rows {
    const PGresult *res;
};

/* ------------------------------------------------------------------------ */
/* store_conn.c                                                             */
/* ------------------------------------------------------------------------ */

enum store__conn_state {
    SC_DOWN = 0,   /* not connected, nothing scheduled (initial) */
    SC_BACKOFF,    /* waiting to reconnect (timer) */
    SC_CONNECTING, /* PQconnectPoll in progress */
    SC_SETUP,      /* connected; session settings query in flight */
    SC_READY,      /* idle, may send */
    SC_BUSY,       /* a query is in flight */
    SC_CLOSED,     /* closed for good (store_close) */
};

typedef struct store__conn store__conn;

struct store__conn {
    store_t *s;
    const char *name; /* "ingest" or "control" (static) */
    enum store__conn_state state;
    PGconn *pg;
    uv_poll_t *poll; /* heap; NULL when none; freed in close cb */
    int poll_fd;
    int poll_events;
    uv_timer_t timer; /* connect, query or backoff timeout */
    unsigned backoff_ms;
    unsigned failures; /* consecutive failed attempts (for logs) */
    unsigned first_host; /* multi-host conninfo: the host the next attempt starts with */
    PGresult *result;  /* result being collected */
    char what[32];     /* label of the query in flight (logs) */
    uint64_t sent_ns;  /* uv_hrtime() when the query in flight was sent (metrics) */
    /* Owner callbacks (set once by the owner). */
    void (*on_up)(store__conn *c);
    /* The query finished; res is owned by the connection (cleared after). */
    void (*on_result)(store__conn *c, PGresult *res);
    /* The connection was lost; query_lost when a query was in flight. */
    void (*on_down)(store__conn *c, bool query_lost);
    /* A NOTIFY arrived (channel and payload borrowed); may be NULL. */
    void (*on_notify)(store__conn *c, const char *channel, const char *payload);
};

void store__conn_init(store_t *s, store__conn *c, const char *name);

/* store_hosts.c: a multi-host conninfo (hosts tried in turn). Thread: the caller's. */
/* PQconnectStart of conninfo with its host list rotated to start at host first
 * (0: as written); the caller owns the result (NULL only when out of memory). */
PGconn *store__hosts_connect(const char *conninfo, unsigned first);
/* Index in conninfo's host list of the host pg is connecting to; UINT_MAX when
 * conninfo has one host or it is not found. */
unsigned store__hosts_index(const char *conninfo, const PGconn *pg);
/* The connect attempt's time limit: conninfo's connect_timeout (s, at least 2)
 * when below fallback_ms, else fallback_ms. */
unsigned store__hosts_connect_timeout_ms(const char *conninfo, unsigned fallback_ms);
/* Starts connecting now (from SC_DOWN). */
void store__conn_start(store__conn *c);
/*
 * Sends one parameterized statement (text parameters, text results). Only in
 * SC_READY. Returns CMS_OK (on_result or on_down will follow) or
 * CMS_EUNAVAIL (connection not ready or libpq refused: the connection is
 * then being reset, on_down follows with query_lost = false).
 */
int store__conn_send(store__conn *c, const char *what, const char *sql, int nparams,
                     const char *const *values);
/* Drops the connection and reconnects after backoff (e.g. on bad state). */
void store__conn_reset(store__conn *c, const char *why);
/* Closes for good (idempotent); handles are released asynchronously. */
void store__conn_close(store__conn *c);
static inline bool store__conn_up(const store__conn *c)
{
    return c->state == SC_READY || c->state == SC_BUSY;
}

/* ------------------------------------------------------------------------ */
/* store_ingest.c                                                           */
/* ------------------------------------------------------------------------ */

typedef struct ingest_obs {
    unsigned set_id;
    double value;
    const char *code, *label, *coding_system, *sub_id, *value_text, *unit_code, *unit_label,
        *status, *observed_at, *equipment_id;
} ingest_obs;

/* One queued message: a single allocation (obs and strings follow). */
/*
 * A message's content beyond its vitals, serialized when it is queued
 * (store_more.c): JSON object members (no braces, no "msg"/"i": the batch
 * adds them) one after the other, each NUL-terminated; samples: one array
 * literal per block ("{1,2,3}"), NUL-terminated, in the order of w.
 */
typedef struct ingest_more {
    unsigned nt, nw, na;
    const char *t, *w, *a, *samples;
} ingest_more;

typedef struct ingest_item {
    struct ingest_item *next;
    store_ingest_cb cb;           /* one of cb and full_cb */
    store_ingest_full_cb full_cb;
    void *ctx;
    ingest_more *more;            /* owned, NULL when the message had only vitals */
    uint64_t deadline; /* uv_now() ms after which it fails (queued only) */
    int64_t device_id;
    const char *control_id, *patient_authority, *patient_id, *location, *msg_time;
    char received_at[40];
    bool alarm_in_bulk; /* carries an alarm and is on the bulk lane (s->bulk_alarms) */
    size_t nobs;
    ingest_obs *obs;
} ingest_item;

#define STORE_NARRAYS 21 /* the vitals' arrays; then t, w, w_samples, a */
#define STORE_NPARAMS (STORE_NARRAYS + 4)

typedef struct ingest_fifo {
    ingest_item *head, *tail;
    size_t n;
} ingest_fifo;

/*
 * An ingest lane: one connection with its own queue and group commit.
 * STORE_LANE_BULK carries every message by default; STORE_LANE_ALARM (when
 * store_config.alarm_lane) carries messages with a real alarm (priority
 * other than PN), sent at once and never behind a numerics batch. While
 * the alarm lane's connection is down its messages go to the bulk lane.
 */
enum { STORE_LANE_BULK, STORE_LANE_ALARM, STORE_NLANES };

typedef struct store__lane {
    store__conn conn;       /* its connection (conn.s: the store); see store__lane_of() */
    const char *name;       /* "bulk" or "alarm" (static, for logs) */
    bool on;                /* started (the alarm lane only with cfg.alarm_lane) */
    ingest_fifo queue;      /* waiting, oldest first */
    ingest_fifo inflight;   /* the batch in flight on conn */
    size_t split_remaining; /* head items to send one at a time */
    bool inflight_split;    /* the in-flight batch is one of those */
    uint64_t hold_until;    /* no batch before (transient error backoff) */
    unsigned retry_ms;      /* transient error backoff */
    bool batch_timer_on;
    uv_timer_t batch_timer;               /* bulk: batch_max_delay_ms; both: retry hold */
    uint64_t batches_ok, msgs_ok, obs_ok; /* counters (logs) */
} store__lane;

static inline store__lane *store__lane_of(store__conn *c)
{
    return (store__lane *)((char *)c - offsetof(store__lane, conn));
}

/* ------------------------------------------------------------------------ */
/* store_ctl.c: the control queue                                           */
/* ------------------------------------------------------------------------ */

typedef struct store__dc_entry store__dc_entry;

enum ctl_kind { CTL_LOOKUP, CTL_AUDIT, CTL_MAINT_PARTITIONS, CTL_MAINT_RETENTION, CTL_QUERY,
                CTL_LISTEN, CTL_SEEN, CTL_MAINT_WAVES, CTL_LATEST };

#define STORE_QUERY_MAX_PARAMS 16
#define STORE_LOOKUP_BATCH_MAX 64 /* device checks sent as one statement */
#define STORE_MAX_CHANNELS 8

typedef struct ctl_item {
    struct ctl_item *next;
    enum ctl_kind kind;
    uint64_t deadline; /* lookups: fail with EUNAVAIL after this */
    uint64_t dc_gen;   /* lookups: s->dc_gen when asked (store_devcache.c) */
    store_device_cb cb;
    void *ctx;
    int nparams;
    char *params[STORE_QUERY_MAX_PARAMS]; /* owned copies; NULL = SQL NULL */
    char *sql;               /* CTL_QUERY / CTL_LISTEN: owned statement text */
    store_query_cb qcb;      /* CTL_QUERY */
} ctl_item;

typedef struct store__listener {
    char channel[64];
    void (*cb)(void *ctx, const char *payload);
    void *ctx;
} store__listener;

#define STORE_CTL_QUEUE_MAX 4096

struct store {
    uv_loop_t *loop;
    store_config cfg;
    char *conninfo, *timezone; /* owned copies of cfg strings */
    bool closing;
    bool closed_conns;
    void (*close_cb)(void *ctx);
    void *close_ctx;
    int pending_closes; /* handles whose close callback is due */

    store__conn control;

    /* ingest (store_ingest.c) */
    store__lane lanes[STORE_NLANES];
    size_t bulk_alarms;      /* alarm messages on the bulk lane: new alarms follow them there */
    uv_timer_t expire_timer; /* ingest_timeout / lookup deadlines (periodic) */
    store__buf arr[STORE_NPARAMS]; /* a batch's parameters, built just before sending */
    store__buf more_buf; /* store_more.c scratch */
    bool refused; /* store_ingest returned ELIMIT since last drain */
    void (*drain_cb)(void *ctx);
    void *drain_ctx;
    void (*results_cb)(void *ctx); /* store_on_results */
    void *results_ctx;
    bool results_due; /* an ingest callback ran since results_cb last did */

    /* control */
    ctl_item *ctl_head, *ctl_tail;
    size_t ctl_n;
    ctl_item *ctl_inflight;
    store__listener listeners[STORE_MAX_CHANNELS];
    size_t nlisteners;
    bool control_was_up;     /* for the NULL "maybe missed" notification */
    /* devices whose connection was accepted, recorded by one batch a second */
    char **seen_serial, **seen_peer;
    size_t seen_n, seen_cap;
    uint64_t seen_flushed_at;
    /* "active" device verdicts kept in memory (store_devcache.c) */
    store__dc_entry **dc_buckets; /* NULL: not kept (device_cache_ttl_s = 0) */
    size_t dc_n;
    uint64_t dc_gen; /* bumped by every invalidation */
    uint64_t dc_swept_at;
    bool dc_ready;         /* LISTEN cms_registry in place and sql/010 applied */
    bool dc_listen_failed; /* since the control connection came up */
    bool dc_warned;
    /* the newest committed values, written once a second (store_latest.c) */
    struct store__latest *latest;
    uint64_t latest_flushed_at;
    uint64_t latest_cost_ms; /* how long the last write took, sent -> result */
    uv_timer_t maint_timer;  /* hourly maintenance */
    uv_timer_t close_timer;  /* store_close deadline */
};

/* store_more.c */
/* Serializes c (may be NULL or empty: returns NULL, no error) into one
 * allocation. *oom is set when it could not. */
ingest_more *store__more_new(store_t *s, const clinical_content *c, bool *oom);

/* store_latest.c */
/* Keeps the vitals of a committed, new (not duplicate) message. */
void store__latest_put(store_t *s, const ingest_item *it);
/* Queues the write of what was kept when a second has passed (or now: force). */
void store__latest_tick(store_t *s, uint64_t now, bool force);
/* The last write's result came after cost_ms (paces the next ones). */
void store__latest_written(store_t *s, uint64_t cost_ms);
extern const char store__latest_sql[]; /* CTL_LATEST's statement */
void store__latest_free(store_t *s);

/* store.c */
/* A handle of s finished closing; frees s after the last one once closed. */
void store__release(store_t *s);
/* While closing: ends the store once nothing is in flight any more. */
void store__maybe_finish_close(store_t *s);

/* store_ctl.c */
/* An item with copies of params (NULL = SQL NULL); NULL on allocation failure. */
ctl_item *store__ctl_new(enum ctl_kind kind, int nparams, const char *const *params);
void store__ctl_free(ctl_item *it);
void store__ctl_push(store_t *s, ctl_item *it); /* at the tail */
ctl_item *store__ctl_pop(store_t *s);           /* the head, or NULL */
/* Sends the head of the queue when the connection is idle. */
void store__ctl_kick(store_t *s);
/* The control connection's callbacks (store__conn). */
void store__ctl_on_up(store__conn *c);
void store__ctl_on_result(store__conn *c, PGresult *res);
void store__ctl_on_down(store__conn *c, bool query_lost);
void store__ctl_on_notify(store__conn *c, const char *channel, const char *payload);
/* Queues the maintenance statements and kicks (hourly timer). */
void store__ctl_maintenance(store_t *s);
/* Ends queued lookups and statements whose deadline passed (CMS_EUNAVAIL). */
void store__ctl_expire(store_t *s, uint64_t now);
/* Ends every item, in flight or queued, with status (cb called). */
void store__ctl_fail_all(store_t *s, int status);
/* store_close: ends queued lookups and statements (CMS_ECLOSED), keeps the
 * audit rows and "last seen" batches to drain. */
void store__ctl_close_queue(store_t *s);

/* store_lookup.c */
extern const char store__seen_sql[]; /* CTL_SEEN's statement */
/* Sends first and the lookups queued right behind it as one statement. */
void store__lookup_send(store_t *s, ctl_item *first);
/* Answers every lookup of the batch headed by first from res; frees them. */
void store__lookup_done(store_t *s, ctl_item *first, PGresult *res);
/* Moves the devices seen into one queued CTL_SEEN item. */
void store__seen_flush(store_t *s);
/* Flushes when the last flush is SEEN_FLUSH_MS old (expiry tick). */
void store__seen_tick(store_t *s, uint64_t now);
/* Drops what was collected (closing). */
void store__seen_free(store_t *s);

/* store_devcache.c */
void store__dc_init(store_t *s);
void store__dc_free(store_t *s);
void store__dc_clear(store_t *s);
void store__dc_forget(store_t *s, const char *serial);
void store__dc_on_up(store_t *s);
void store__dc_on_down(store_t *s);
void store__dc_put(store_t *s, uint64_t gen, const char *fingerprint, const store_device *dev);
bool store__dc_get(store_t *s, const char *serial, const char *fingerprint, store_device *dev);
void store__dc_sweep(store_t *s, uint64_t now);

/* store_ingest.c */
/* Sets up the lanes (timers, connections; the alarm lane only with cfg.alarm_lane). */
void store__ingest_init(store_t *s);
/* Starts connecting every lane that is on. */
void store__ingest_start(store_t *s);
void store__lane_kick(store__lane *l); /* send a batch if possible */
/* Messages in flight on lanes whose connection is up (closing waits for them). */
size_t store__ingest_inflight_up(const store_t *s);
void store__ingest_on_up(store__conn *c);
void store__ingest_on_result(store__conn *c, PGresult *res);
void store__ingest_on_down(store__conn *c, bool query_lost);
void store__ingest_expire(store_t *s, uint64_t now);
void store__ingest_fail_queued(store_t *s, int status);
void store__ingest_fail_inflight(store_t *s, int status);
void store__ingest_free_buffers(store_t *s);

#endif
