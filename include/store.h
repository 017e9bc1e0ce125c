/*
 * store.h - PostgreSQL on the event loop (async libpq), group commit.
 *
 * The store owns a small set of libpq connections driven without blocking:
 * PQconnectStart/PQconnectPoll, PQsendQueryParams, PQflush with writable
 * interest while it returns 1, PQconsumeInput/PQisBusy/PQgetResult on
 * readable, a uv_poll_t on PQsocket() per connection and a uv_timer_t per
 * query (query_timeout_ms; on expiry the connection is reset). One close
 * path per connection; a lost connection is reconnected with exponential
 * backoff (reconnect_min_ms doubling to reconnect_max_ms), logged.
 *
 *   - the ingest connection runs group commits: messages queued with
 *     store_ingest() are sent as one statement (array parameters to
 *     cms.ingest_batch(), one transaction) when batch_max_msgs are queued or
 *     batch_max_delay_ms after the first one was queued; each message's
 *     callback runs only after that statement (and so its COMMIT) succeeded.
 *     If the connection is lost while a batch is in flight, the outcome is
 *     unknown, so the whole batch is sent again after reconnecting: the
 *     (device, control id) dedup key makes that exactly-once.
 *     If the batch fails with a data error (SQLSTATE class 22 or 23), it is
 *     split and retried one message at a time so that only the offending
 *     message fails (callback with CMS_EPROTO).
 *     While the database is unreachable, queued messages wait; a message that
 *     has waited longer than ingest_timeout_ms fails with CMS_EUNAVAIL (the
 *     sender gets AE and resends later).
 *     With alarm_lane, a second ingest connection does the same for the
 *     messages that carry an alarm (not only PN heartbeats), without the
 *     batch delay: an alarm does not wait for a numerics batch in flight.
 *   - the control connection runs everything else (device lookups, audit
 *     rows, maintenance) one query at a time from a FIFO queue.
 *
 * Never a blocking libpq call after store_new() returns.
 * Thread: the loop's thread only.
 */
#ifndef CMS_STORE_H
#define CMS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "clinical.h"
#include "vitals.h"

typedef struct store store_t;

typedef struct store_config {
    const char *conninfo;        /* libpq connection string (borrowed, copied) */
    const char *timezone;        /* session TimeZone for times without offset, e.g. "UTC" */
    unsigned batch_max_msgs;     /* flush a batch at this many messages (default 256) */
    unsigned batch_max_delay_ms; /* ... or this long after the first one (default 5) */
    bool alarm_lane;             /* a second ingest connection for messages carrying an
                                    alarm (priority other than PN), sent without delay and
                                    never behind a numerics batch (default true) */
    unsigned max_queued_msgs;    /* backlog limit: above it store_ingest refuses (default 20000) */
    unsigned query_timeout_ms;   /* per statement (default 10000) */
    unsigned ingest_timeout_ms;  /* a queued message fails after this (default 30000) */
    unsigned reconnect_min_ms;   /* backoff start (default 100) */
    unsigned reconnect_max_ms;   /* backoff cap (default 5000) */
    unsigned retention_days;     /* drop observation partitions older (0 = keep) */
    unsigned partitions_ahead_days; /* create daily partitions ahead (default 7) */
    unsigned waveform_retention_hours; /* drop waveform partitions older (0 = keep;
                                          default 72) */
    unsigned device_cache_ttl_s; /* keep "active" device verdicts this long (0 = never;
                                    default 60; see store_device_cached) */
} store_config;

/* Fills c with the defaults above (conninfo "", timezone "UTC"). */
void store_config_defaults(store_config *c);

/*
 * Creates the store and starts connecting (asynchronously). Returns NULL on
 * allocation failure only; connection problems are retried with backoff and
 * logged. loop and cfg are borrowed (cfg is copied).
 */
store_t *store_new(uv_loop_t *loop, const store_config *cfg);

/* True once the (bulk) ingest and the control connections are up (for
 * readiness / health; the alarm lane is not required: alarms go bulk while
 * it is down). */
bool store_ready(const store_t *s);

/*
 * Called with the result of a store_ingest():
 *   status CMS_OK       committed (duplicate = true when the (device,
 *                       control id) pair was already stored: nothing new
 *                       was written, and the sender gets AA again);
 *   status CMS_EPROTO   the database refused this message's data (AE);
 *   status CMS_EUNAVAIL database unavailable for ingest_timeout_ms (AE);
 *   status CMS_ECLOSED  the store is shutting down (no ACK is sent).
 * Runs on the loop thread, exactly once per accepted store_ingest().
 */
typedef void (*store_ingest_cb)(void *ctx, int status, bool duplicate);

/*
 * Queues one message of device_id for the next group commit. msg is copied
 * (borrowed only during the call). The store stamps the message's
 * received_at (server receive time, UTC, microseconds) during this call;
 * observations without a time get received_at as observed_at. Returns
 * CMS_OK (cb will be called once), CMS_ELIMIT when max_queued_msgs are
 * already queued, CMS_ENOMEM, or CMS_ECLOSED after store_close (cb is not
 * called on error).
 */
int store_ingest(store_t *s, int64_t device_id, const vitals_msg *msg, store_ingest_cb cb,
                 void *ctx);

/* What a stored message turned out to be (store_ingest_full). */
typedef struct store_ingest_result {
    bool duplicate;          /* as for store_ingest_cb */
    unsigned unknown_alarms; /* alarm events stored flagged unknown_alarm: a continue,
                                update or end whose alarm was not open
                                (docs/clinical-data.md) */
} store_ingest_result;

/* As store_ingest_cb; res is borrowed for the call, NULL unless status is CMS_OK. */
typedef void (*store_ingest_full_cb)(void *ctx, int status, const store_ingest_result *res);

/*
 * store_ingest, with the message's other content (text observations,
 * waveform blocks, alarms; more may be NULL): all of it is written in the
 * statement that records the message, so the (device, control id) key
 * keeps it exactly once too. msg and more (with everything they point to)
 * are copied during the call. Heartbeat alarms (priority PN) only refresh
 * the device's last heard. Same returns as store_ingest (CMS_EINVAL: cb or
 * msg NULL); cb runs exactly once per CMS_OK, on the loop thread.
 *
 * The newest committed numeric value of each (device, code, sub id) is kept
 * in memory and written to cms.latest_observations about once a second on
 * the control connection (cms.latest_upsert; a lost write is made good by
 * the next value); when a write takes longer than 100 ms, the next goes 10
 * times its duration later (at most 10 s): store_latest.c.
 */
int store_ingest_full(store_t *s, int64_t device_id, const vitals_msg *msg,
                      const clinical_content *more, store_ingest_full_cb cb, void *ctx);

/* Messages queued or in flight (for backpressure decisions). */
size_t store_backlog(const store_t *s);

/*
 * True when the control queue (device checks, audit rows, queries) is half
 * full or more: work that anonymous peers cause should then be refused, so
 * that the other half stays for monitors' device checks. Thread: the store's.
 */
bool store_ctl_crowded(const store_t *s);

/*
 * Registers a callback run whenever the backlog falls back below half of
 * max_queued_msgs after store_ingest() refused with CMS_ELIMIT (so the
 * caller can resume reading from its peers). ctx is borrowed.
 */
void store_on_drain(store_t *s, void (*cb)(void *ctx), void *ctx);

/*
 * Registers a callback run after each round of store_ingest callbacks (the
 * results of one batch, an expiry sweep, a failure), before the next batch
 * is sent: a caller that only records each result in its callback answers
 * here, all at once (e.g. one write per monitor for all its ACKs).
 */
void store_on_results(store_t *s, void (*cb)(void *ctx), void *ctx);

/* Result of a device lookup by certificate CN (serial). */
typedef struct store_device {
    int64_t id;
    char serial[64];
    char status[16];        /* "pending", "active", "revoked", "decommissioned" */
    size_t nidents;
    char idents[8][64];     /* other identifiers (e.g. EUI-64) from cms.device_identifiers */
} store_device;

/*
 * Called with the result of store_device_lookup():
 *   CMS_OK (dev filled; dev is borrowed for the call), CMS_EPERM (no such
 *   device), CMS_EUNAVAIL (database unavailable or query failed), CMS_ECLOSED.
 */
typedef void (*store_device_cb)(void *ctx, int status, const store_device *dev);

/*
 * Looks up a device by serial on the control connection and, in the same
 * statement, records last_seen_at/last_peer when found (peer may be NULL).
 * Returns CMS_OK (cb will be called once), CMS_ELIMIT (control queue full),
 * CMS_ECLOSED. serial and peer are copied.
 */
int store_device_lookup(store_t *s, const char *serial, const char *peer,
                        store_device_cb cb, void *ctx);

/*
 * Same, also checking the certificate the device presented: fingerprint is
 * its SHA-256 (64 hex digits, pki_cert_fingerprint_sha256), copied. The
 * status is then "active" only if the device is active AND the certificate
 * is allowed (sql/002_enrollment.sql, cms.device_cert_verdict); otherwise
 * the reason: "pending", "revoked", "decommissioned", "cert revoked",
 * "cert superseded" or "cert unknown".
 */
int store_device_lookup_cert(store_t *s, const char *serial, const char *fingerprint,
                             const char *peer, store_device_cb cb, void *ctx);

/*
 * The same check answered from memory, without a query: true (dev filled,
 * "active", last seen recorded as a lookup would) when this worker's
 * database check of (serial, fingerprint) said "active" less than
 * device_cache_ttl_s ago and nothing about the device changed since
 * (sql/010 NOTIFY cms_registry; see server/store/store_devcache.c for why a
 * kept verdict can not outlive a revocation). False: call
 * store_device_lookup_cert. Refusals are never kept.
 */
bool store_device_cached(store_t *s, const char *serial, const char *fingerprint,
                         const char *peer, store_device *dev);
/* Verdicts kept (tests, logs). */
size_t store_device_cache_size(const store_t *s);

/*
 * Appends an audit event (fire and forget, queued on the control connection
 * and retried across reconnects; the queue is bounded, and an overflow is
 * logged as an error). event: e.g. "impersonation", "tls_refused".
 * device, peer, actor may be NULL. detail: a JSON object text or NULL.
 * All strings are copied. The row's hash chain is computed by the database.
 */
void store_audit(store_t *s, const char *event, const char *actor,
                 const char *device, const char *peer, const char *detail_json);

/*
 * Stops accepting work, fails queued-but-unsent messages with CMS_ECLOSED,
 * waits for an in-flight batch (up to query_timeout_ms), closes the
 * connections and handles, then calls cb(ctx) and frees s.
 */
void store_close(store_t *s, void (*cb)(void *ctx), void *ctx);

/*
 * store_close, waiting at most grace_ms (instead of query_timeout_ms) for the
 * in-flight batch and the audit rows; what is left then is abandoned (an
 * unfinished batch was acknowledged to nobody). On a store already closing,
 * shortens what is left of its wait to grace_ms (cb and ctx are ignored: the
 * first close's callback runs).
 */
void store_close_within(store_t *s, unsigned grace_ms, void (*cb)(void *ctx), void *ctx);


/* ---- generic statements and notifications (HTTPS services) ---------------- */

/*
 * The rows (or the error) of one statement, as the store hands them to a
 * store_query callback: an opaque view, borrowed for the duration of the
 * callback only (the store frees it afterwards; copy what you keep). Values
 * are text (text-format results). Every accessor accepts a NULL rows (the
 * statement did not run: CMS_EUNAVAIL, CMS_ECLOSED) and answers as for an
 * empty result. Thread: the loop's thread (inside the callback).
 */
typedef struct store_rows store_rows;

/* Number of rows (0 for a command, an error or NULL rows). */
int store_rows_count(const store_rows *rows);

/* Index of the column called name, or -1 when there is none (or NULL rows). */
int store_rows_col(const store_rows *rows, const char *name);

/*
 * The value at (row, col) as text (borrowed, valid during the callback).
 * Never NULL: "" for SQL NULL and for a row or column out of range (use
 * store_rows_null to tell SQL NULL from an empty text).
 */
const char *store_rows_text(const store_rows *rows, int row, int col);

/* True when (row, col) is SQL NULL or out of range. */
bool store_rows_null(const store_rows *rows, int row, int col);

/*
 * The value of the column called name at row, or NULL when the column is
 * absent, the row out of range or the value SQL NULL (borrowed).
 */
const char *store_rows_get(const store_rows *rows, int row, const char *name);

/*
 * A failed statement (callback status CMS_EPROTO): its SQLSTATE (five
 * characters, e.g. "22023", "P0002", a custom "CE001") and its primary
 * message (e.g. the text of a RAISE). NULL when there is none (success, or
 * NULL rows). Borrowed, valid during the callback.
 */
const char *store_rows_sqlstate(const store_rows *rows);
const char *store_rows_error(const store_rows *rows);

/*
 * Called with the result of store_query():
 *   CMS_OK       rows holds the result (rows of a query, none of a command);
 *   CMS_EPROTO   the statement failed in SQL: store_rows_sqlstate(rows) and
 *                store_rows_error(rows) tell why (e.g. a RAISE from a
 *                function with a custom SQLSTATE);
 *   CMS_EUNAVAIL database unavailable or the statement timed out (rows NULL);
 *   CMS_ECLOSED  the store is closing (rows NULL).
 * rows is borrowed for the call.
 */
typedef void (*store_query_cb)(void *ctx, int status, const store_rows *rows);

/*
 * Runs one parameterized statement (text parameters; NULL = SQL NULL) on the
 * control connection, in FIFO order with lookups and audit rows. A statement
 * is its own transaction (put multi-step work in a SQL function). sql and
 * params are copied. Not retried after a connection loss (the outcome would
 * be unknown: cb gets CMS_EUNAVAIL). Returns CMS_OK (cb will be called
 * once), CMS_ELIMIT (queue full), CMS_EINVAL (nparams > 16), CMS_ECLOSED.
 */
int store_query(store_t *s, const char *sql, int nparams, const char *const *params,
                store_query_cb cb, void *ctx);

/*
 * Subscribes to a PostgreSQL NOTIFY channel (LISTEN on the control
 * connection, re-issued after every reconnect). cb(ctx, payload) runs on the
 * loop for each notification (payload borrowed). After a reconnect, cb is
 * also called once with payload NULL: notifications may have been missed,
 * so the subscriber must re-read the state it cares about. At most 8
 * channels. Returns CMS_OK, CMS_ELIMIT, CMS_EINVAL (channel not
 * [a-z_]{1,63}).
 */
int store_listen(store_t *s, const char *channel, void (*cb)(void *ctx, const char *payload),
                 void *ctx);

#endif
