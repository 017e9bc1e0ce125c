/*
 * ops.h - what an operations team's tools read: readiness (GET /readyz),
 * metrics (GET /metrics), on the HTTPS listener and on the optional
 * loopback-only plaintext one (metrics_listen).
 *
 * Readiness is one process-wide state that the workers and the main thread
 * report into: cmsd is ready when every worker listens, every worker's
 * database connections are up, the schema has every migration this cmsd was
 * built with (sql/NNN_*.sql up to CMS_SCHEMA_VERSION: a newer schema also
 * passes, an older one not) and it is not draining (SIGTERM). /healthz stays
 * liveness (routes.c).
 *
 * Thread: the reporting functions and ops_ready* from any thread (atomics);
 * the handlers on the loop that serves them.
 */
#ifndef CMS_OPS_H
#define CMS_OPS_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "https.h"
#include "net_plain.h"
#include "store.h"

/* Sets the number of workers (1..64) and whether metrics are on (GET /metrics
 * answers 404 when off). Call once before the workers start. */
void ops_init(unsigned nworkers, bool metrics_on);

/* Worker w listens (or stopped listening). */
void ops_worker_listening(unsigned w, bool on);
/* Worker w's database connections are up (store_ready) or not. */
void ops_worker_db(unsigned w, bool up);
/* SIGTERM: from now on never ready again. */
void ops_set_draining(void);

/* The newest migration this cmsd was built with (sql/NNN_*.sql). */
int ops_schema_expected(void);

/* Whether the last schema check found every migration (false before the first). */
bool ops_schema_ok(void);

/*
 * Asks the database which migrations are applied (store_query on the control
 * connection; the answer updates the readiness state). One question at a
 * time: a call while one is out does nothing. Thread: store's loop.
 */
void ops_schema_check(store_t *store);

/*
 * Whether cmsd is ready; when not, why (the first reason, into why: cap
 * bytes; why may be NULL).
 */
bool ops_ready(char *why, size_t cap);

/* The readiness answer: {"status": "ready"|"not_ready", "reasons": [...],
 * "workers", "listening", "database_up", "schema": {...}, "draining"}. New
 * reference; *ready set. NULL when out of memory. */
json_t *ops_ready_json(bool *ready);

/*
 * The metrics text (Prometheus text format 0.0.4) of the installed registry,
 * after sampling the process gauges and readiness; malloc()ed, its length in
 * *len. NULL when metrics are off or out of memory.
 */
char *ops_metrics_text(size_t *len);

/* GET /readyz (anyone): 200 ready, 503 not, with ops_ready_json's body. */
int ops_readyz(https_req *r);
/* GET /metrics (an operator certificate, role scraper or above): the text;
 * 404 when metrics are off. */
int ops_metrics(https_req *r);

/* The loopback plaintext listener's answers (net_plain_handler): /metrics,
 * /readyz, /healthz (liveness: 200 while the process answers); 404 else. */
void ops_plain_handler(void *ctx, const char *method, const char *path, net_plain_reply *reply);

#endif
