/*
 * ops.c - readiness and metrics for the operations team (ops.h): the
 * process-wide readiness state, the schema check, GET /readyz and GET
 * /metrics on the HTTPS listener and on the loopback plaintext one.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "log.h"
#include "ops.h"

#ifndef CMS_SCHEMA_VERSION
#error "CMS_SCHEMA_VERSION (the newest sql/NNN_*.sql) must be defined by the build"
#endif

static struct {
    unsigned nworkers;
    bool metrics_on;
    _Atomic uint64_t listening; /* bit w: worker w listens */
    _Atomic uint64_t db_up;     /* bit w: worker w's database connections are up */
    _Atomic int schema;         /* 1 every migration applied, 0 not, -1 not known yet */
    _Atomic long long schema_applied;
    _Atomic bool draining;
    _Atomic bool schema_asking;
} ops = {.schema = -1};

void ops_init(unsigned nworkers, bool metrics_on)
{
    ops.nworkers = nworkers > 64 ? 64 : nworkers;
    ops.metrics_on = metrics_on;
}

static void set_bit(_Atomic uint64_t *mask, unsigned w, bool on)
{
    if (w >= 64)
        return;
    if (on)
        atomic_fetch_or(mask, UINT64_C(1) << w);
    else
        atomic_fetch_and(mask, ~(UINT64_C(1) << w));
}

void ops_worker_listening(unsigned w, bool on)
{
    set_bit(&ops.listening, w, on);
}

void ops_worker_db(unsigned w, bool up)
{
    set_bit(&ops.db_up, w, up);
}

void ops_set_draining(void)
{
    atomic_store(&ops.draining, true);
}

int ops_schema_expected(void)
{
    return CMS_SCHEMA_VERSION;
}

/* ---- the schema ------------------------------------------------------------- */

/* Every version 1..expected applied (the table holds one row per migration). */
static const char schema_sql[] =
    "SELECT count(*) FILTER (WHERE version BETWEEN 1 AND $1::int) AS have, "
    "coalesce(max(version), 0) AS newest FROM cms.schema_migrations";

static void on_schema(void *ctx, int status, const store_rows *rows)
{
    (void)ctx;
    atomic_store(&ops.schema_asking, false);
    if (status != CMS_OK || store_rows_count(rows) != 1) {
        if (status == CMS_EPROTO) { /* e.g. no such table: never migrated */
            if (atomic_exchange(&ops.schema, 0) != 0)
                log_warn("schema_mismatch", NULL, NULL, "cannot read cms.schema_migrations: %s",
                         store_rows_error(rows) ? store_rows_error(rows) : "?");
        }
        return; /* database away: db_up says so; keep what we knew */
    }
    long long have = atoll(store_rows_text(rows, 0, 0));
    long long newest = atoll(store_rows_text(rows, 0, 1));
    int ok = have == CMS_SCHEMA_VERSION;
    atomic_store(&ops.schema_applied, newest);
    int was = atomic_exchange(&ops.schema, ok);
    if (!ok && was != 0)
        log_warn("schema_mismatch", NULL, NULL,
                 "the database has %lld of the %d migrations this cmsd needs (newest applied: "
                 "%lld): not ready until `cmsctl db migrate`",
                 have, CMS_SCHEMA_VERSION, newest);
    else if (ok && was == 0)
        log_info("schema_ok", NULL, NULL, "every migration up to %d applied (newest %lld)",
                 CMS_SCHEMA_VERSION, newest);
}

bool ops_schema_ok(void)
{
    return atomic_load(&ops.schema) == 1;
}

void ops_schema_check(store_t *store)
{
    if (atomic_exchange(&ops.schema_asking, true))
        return;
    char v[16];
    snprintf(v, sizeof(v), "%d", CMS_SCHEMA_VERSION);
    const char *params[1] = {v};
    if (store_query(store, schema_sql, 1, params, on_schema, NULL) != CMS_OK)
        atomic_store(&ops.schema_asking, false);
}

/* ---- readiness ---------------------------------------------------------------- */

static unsigned popcount64(uint64_t v)
{
    return (unsigned)__builtin_popcountll(v);
}

bool ops_ready(char *why, size_t cap)
{
    uint64_t all = ops.nworkers >= 64 ? UINT64_MAX : (UINT64_C(1) << ops.nworkers) - 1;
    uint64_t l = atomic_load(&ops.listening), db = atomic_load(&ops.db_up);
    int schema = atomic_load(&ops.schema);
    const char *reason = NULL;
    char buf[96];
    if (atomic_load(&ops.draining)) {
        reason = "draining (SIGTERM)";
    } else if (ops.nworkers == 0 || (l & all) != all) {
        snprintf(buf, sizeof(buf), "listening: %u of %u workers", popcount64(l & all),
                 ops.nworkers);
        reason = buf;
    } else if ((db & all) != all) {
        snprintf(buf, sizeof(buf), "database down for %u of %u workers",
                 ops.nworkers - popcount64(db & all), ops.nworkers);
        reason = buf;
    } else if (schema != 1) {
        reason = schema < 0 ? "schema not checked yet" : "schema migrations missing";
    }
    if (why && cap)
        snprintf(why, cap, "%s", reason ? reason : "");
    return reason == NULL;
}

json_t *ops_ready_json(bool *ready)
{
    char why[128];
    *ready = ops_ready(why, sizeof(why));
    uint64_t all = ops.nworkers >= 64 ? UINT64_MAX : (UINT64_C(1) << ops.nworkers) - 1;
    int schema = atomic_load(&ops.schema);
    json_t *j = json_pack(
        "{s:s, s:I, s:I, s:I, s:{s:i, s:I, s:s}, s:b}", "status", *ready ? "ready" : "not_ready",
        "workers", (json_int_t)ops.nworkers, "listening",
        (json_int_t)popcount64(atomic_load(&ops.listening) & all), "database_up",
        (json_int_t)popcount64(atomic_load(&ops.db_up) & all), "schema", "expected",
        CMS_SCHEMA_VERSION, "newest_applied", (json_int_t)atomic_load(&ops.schema_applied),
        "state", schema < 0 ? "unknown" : schema ? "ok" : "missing", "draining",
        atomic_load(&ops.draining));
    if (j && !*ready)
        json_object_set_new(j, "reason", json_string(why));
    return j;
}

int ops_readyz(https_req *r)
{
    bool ready;
    json_t *j = ops_ready_json(&ready);
    https_reply_json(r, ready ? 200 : 503, j);
    return CMS_OK;
}

/* ---- metrics ------------------------------------------------------------------ */

char *ops_metrics_text(size_t *len)
{
    metrics_registry *m = metrics_installed();
    if (!ops.metrics_on || !m)
        return NULL;
    cms_metrics_sample_process();
    metrics_gauge_set(CM_READY, 0, ops_ready(NULL, 0) ? 1 : 0);
    return metrics_render(m, len);
}

int ops_metrics(https_req *r)
{
    size_t len = 0;
    char *text = ops_metrics_text(&len);
    if (!text) {
        https_reply_error(r, 404, "not_found", ops.metrics_on ? "out of memory" : "metrics = off");
        return CMS_OK;
    }
    https_reply(r, 200, METRICS_CONTENT_TYPE, text, len, NULL, 0);
    free(text);
    return CMS_OK;
}

static void plain_text(net_plain_reply *out, int status, const char *text)
{
    out->status = status;
    out->content_type = "text/plain; charset=utf-8";
    out->body = strdup(text);
    out->len = out->body ? strlen(text) : 0;
}

void ops_plain_handler(void *ctx, const char *method, const char *path, net_plain_reply *out)
{
    (void)ctx;
    (void)method;
    if (strcmp(path, "/metrics") == 0) {
        size_t len = 0;
        char *text = ops_metrics_text(&len);
        if (!text) {
            plain_text(out, 404, ops.metrics_on ? "out of memory\n" : "metrics = off\n");
            return;
        }
        out->status = 200;
        out->content_type = METRICS_CONTENT_TYPE;
        out->body = text;
        out->len = len;
    } else if (strcmp(path, "/readyz") == 0) {
        bool ready;
        json_t *j = ops_ready_json(&ready);
        char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        out->status = body ? (ready ? 200 : 503) : 500;
        out->content_type = "application/json";
        out->body = body;
        out->len = body ? strlen(body) : 0;
    } else if (strcmp(path, "/healthz") == 0) {
        plain_text(out, 200, "{\"status\":\"alive\"}");
        out->content_type = "application/json";
    } else {
        plain_text(out, 404, "not found: this listener serves /metrics, /readyz and /healthz\n");
    }
}
