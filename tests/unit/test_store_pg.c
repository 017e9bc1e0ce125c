/*
 * test_store_pg.c - the store against a real PostgreSQL (migrated schema).
 *
 * Skipped unless CMS_TEST_DSN is set, e.g.
 *   CMS_TEST_DSN="host=/tmp/st-pg port=55432 user=postgres dbname=cmstest"
 * The test side uses blocking libpq to prepare and check rows; the store
 * under test runs on a libuv loop as in cmsd.
 *
 * CMS_TEST_ADMIN_DSN (default: CMS_TEST_DSN) is used by the test itself to
 * create devices and check rows, so that the store can run as a role that
 * only has cms_server's grants.
 *
 * CMS_TEST_STORE_N (default 10000) messages of 10 observations are used for
 * the throughput and kill tests, in batches of CMS_TEST_STORE_BATCH (256);
 * the measured obs/s is printed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <uv.h>

#include "cms_err.h"
#include "log.h"
#include "store.h"

static const char *dsn;
static PGconn *side;     /* blocking connection of the test itself */
static int64_t dev_id;   /* a device created for this run */
static char run_tag[64]; /* unique per run, prefixes control ids */
static vitals_msg tmpl;
static unsigned n_msgs = 10000;
static unsigned batch_msgs = 256; /* CMS_TEST_STORE_BATCH */

/* ---- helpers ----------------------------------------------------------- */

static PGresult *q(const char *sql, int n, const char *const *vals)
{
    PGresult *r = PQexecParams(side, sql, n, NULL, vals, NULL, NULL, 0);
    if (PQstatus(side) == CONNECTION_BAD) { /* e.g. a server restart during a test */
        PQclear(r);
        PQreset(side);
        r = PQexecParams(side, sql, n, NULL, vals, NULL, NULL, 0);
    }
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    return r;
}

static long q_long(const char *sql, int n, const char *const *vals)
{
    PGresult *r = q(sql, n, vals);
    long v = PQntuples(r) ? strtol(PQgetvalue(r, 0, 0), NULL, 10) : -1;
    PQclear(r);
    return v;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void make_template(void)
{
    static const struct {
        const char *code, *label, *unit, *ulabel;
        double v;
    } o[10] = {
        {"147842", "MDC_ECG_HEART_RATE", "264864", "MDC_DIM_BEAT_PER_MIN", 72},
        {"150456", "MDC_PULS_OXIM_SAT_O2", "262688", "MDC_DIM_PERCENT", 98},
        {"149530", "MDC_PULS_OXIM_PULS_RATE", "264864", "MDC_DIM_BEAT_PER_MIN", 71},
        {"150021", "MDC_PRESS_BLD_NONINV_SYS", "266016", "MDC_DIM_MMHG", 120},
        {"150022", "MDC_PRESS_BLD_NONINV_DIA", "266016", "MDC_DIM_MMHG", 80},
        {"150023", "MDC_PRESS_BLD_NONINV_MEAN", "266016", "MDC_DIM_MMHG", 93},
        {"151562", "MDC_RESP_RATE", "264928", "MDC_DIM_RESP_PER_MIN", 16},
        {"150344", "MDC_TEMP", "268192", "MDC_DIM_DEGC", 36.6},
        {"151712", "MDC_CONC_AWAY_CO2_ET", "266016", "MDC_DIM_MMHG", 38},
        {"150033", "MDC_PRESS_BLD_ART_SYS", "266016", "MDC_DIM_MMHG", 118},
    };
    memset(&tmpl, 0, sizeof tmpl);
    snprintf(tmpl.patient_id, sizeof tmpl.patient_id, "PAT-\"q\\1");
    snprintf(tmpl.patient_authority, sizeof tmpl.patient_authority, "HOSP");
    snprintf(tmpl.location, sizeof tmpl.location, "CCU^^BED-07");
    snprintf(tmpl.msg_time, sizeof tmpl.msg_time, "2026-11-15 08:30:00.310000+01:00");
    tmpl.nobs = 10;
    for (int i = 0; i < 10; i++) {
        vitals_obs *x = &tmpl.obs[i];
        x->set_id = (unsigned)i + 1;
        snprintf(x->code, sizeof x->code, "%s", o[i].code);
        snprintf(x->label, sizeof x->label, "%s", o[i].label);
        snprintf(x->coding_system, sizeof x->coding_system, "MDC");
        snprintf(x->sub_id, sizeof x->sub_id, "1.1.1.%d", i);
        x->value = o[i].v;
        snprintf(x->value_text, sizeof x->value_text, "%g", o[i].v);
        snprintf(x->unit_code, sizeof x->unit_code, "%s", o[i].unit);
        snprintf(x->unit_label, sizeof x->unit_label, "%s", o[i].ulabel);
        snprintf(x->status, sizeof x->status, "R");
        /* one without offset (session TimeZone), one empty (received_at) */
        snprintf(x->observed_at, sizeof x->observed_at, "%s",
                 i == 0   ? "2026-11-15 08:30:00"
                 : i == 1 ? ""
                          : "2026-11-15 08:30:00+01:00");
        snprintf(x->equipment_id, sizeof x->equipment_id, "%s", i == 2 ? "0012A1FFFE000001" : "");
    }
}

/* ---- a run of messages through a store -------------------------------- */

typedef struct run {
    uv_loop_t *loop;
    store_t *s;
    unsigned total, done, ok, dup, eproto, eunavail, eclosed, other;
    unsigned kill_at; /* terminate backends when done reaches it */
    bool killed;
    bool closed;
    unsigned drains;
} run;

typedef struct msg_ctx {
    run *r;
    unsigned i;
} msg_ctx;

static void terminate_backends(void)
{
    long n = q_long("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name IN ('cmsd-ingest', 'cmsd-control')",
                    0, NULL);
    printf("    terminated %ld backends\n", n);
}

static void on_ingest(void *ctx, int status, bool duplicate)
{
    msg_ctx *m = ctx;
    run *r = m->r;
    r->done++;
    switch (status) {
    case CMS_OK:
        r->ok++;
        r->dup += duplicate;
        break;
    case CMS_EPROTO:
        r->eproto++;
        break;
    case CMS_EUNAVAIL:
        r->eunavail++;
        break;
    case CMS_ECLOSED:
        r->eclosed++;
        break;
    default:
        r->other++;
        break;
    }
    if (r->kill_at && r->done >= r->kill_at) { /* at 1/4, 2/4, 3/4 of the run */
        r->killed = true;
        terminate_backends();
        r->kill_at = r->kill_at + n_msgs / 4 < n_msgs ? r->kill_at + n_msgs / 4 : 0;
    }
}

static void on_closed(void *ctx)
{
    run *r = ctx;
    r->closed = true;
}

static store_t *open_store(uv_loop_t *loop, const char *conninfo, store_config *cfg)
{
    store_config_defaults(cfg);
    cfg->conninfo = conninfo;
    cfg->timezone = "Europe/Berlin";
    cfg->batch_max_msgs = batch_msgs;
    store_t *s = store_new(loop, cfg);
    assert_non_null(s);
    double t0 = now_s();
    while (!store_ready(s) && now_s() - t0 < 10)
        uv_run(loop, UV_RUN_ONCE);
    return s;
}

static void close_store(run *r)
{
    store_close(r->s, on_closed, r);
    while (!r->closed)
        uv_run(r->loop, UV_RUN_ONCE);
}

static void set_control_id(vitals_msg *m, const char *kind, unsigned i)
{
    snprintf(m->control_id, sizeof m->control_id, "%s-%s-%u", run_tag, kind, i);
}

/* Queues n messages kind-0..n-1 (waiting when the backlog is full). */
static double push_all(run *r, const char *kind, unsigned n, msg_ctx *ctxs)
{
    static vitals_msg m;
    m = tmpl;
    double t0 = now_s();
    for (unsigned i = 0; i < n; i++) {
        set_control_id(&m, kind, i);
        ctxs[i].r = r;
        ctxs[i].i = i;
        int rc;
        while ((rc = store_ingest(r->s, dev_id, &m, on_ingest, &ctxs[i])) == CMS_ELIMIT)
            uv_run(r->loop, UV_RUN_ONCE); /* backlog full: let it drain */
        assert_int_equal(rc, CMS_OK);
        r->total++;
    }
    while (r->done < r->total)
        uv_run(r->loop, UV_RUN_ONCE);
    return now_s() - t0;
}

static long count_msgs(const char *kind)
{
    char like[96], dev[32];
    snprintf(like, sizeof like, "%s-%s-%%", run_tag, kind);
    snprintf(dev, sizeof dev, "%lld", (long long)dev_id);
    const char *v[2] = {dev, like};
    return q_long("SELECT count(*) FROM cms.messages WHERE device_id = $1 AND control_id LIKE $2",
                  2, v);
}

static long count_obs(const char *kind)
{
    char like[96], dev[32];
    snprintf(like, sizeof like, "%s-%s-%%", run_tag, kind);
    snprintf(dev, sizeof dev, "%lld", (long long)dev_id);
    const char *v[2] = {dev, like};
    return q_long("SELECT count(*) FROM cms.observations o JOIN cms.messages m "
                  "ON m.id = o.message_id WHERE m.device_id = $1 AND m.control_id LIKE $2",
                  2, v);
}

/* ---- tests ------------------------------------------------------------- */

/* CPU seconds used so far by the ingest backend (same host only, else -1). */
static double ingest_backend_cpu(void)
{
    long pid = q_long("SELECT pid FROM pg_stat_activity WHERE application_name = 'cmsd-ingest' "
                      "ORDER BY backend_start DESC LIMIT 1",
                      0, NULL);
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static void test_throughput_and_duplicates(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    store_config cfg;
    run r = {.loop = &loop};
    r.s = open_store(&loop, dsn, &cfg);
    assert_true(store_ready(r.s));
    msg_ctx *ctxs = calloc(n_msgs, sizeof *ctxs);

    double cpu0 = ingest_backend_cpu();
    double dt = push_all(&r, "tp", n_msgs, ctxs);
    double cpu = ingest_backend_cpu() - cpu0;
    assert_int_equal(r.ok, n_msgs);
    assert_int_equal(r.dup, 0);
    printf("    %u msgs x 10 obs in %.3f s: %.0f msgs/s, %.0f obs/s (batch %u);"
           " ingest backend CPU %.2f s = %.0f obs per backend CPU second\n",
           n_msgs, dt, n_msgs / dt, n_msgs * 10 / dt, cfg.batch_max_msgs, cpu,
           cpu > 0 ? n_msgs * 10 / cpu : 0.0);
    assert_int_equal(count_msgs("tp"), n_msgs);
    assert_int_equal(count_obs("tp"), (long)n_msgs * 10);

    /* The same messages again: all duplicates, nothing new written. */
    memset(&r.ok, 0, sizeof r - offsetof(run, ok));
    r.total = r.done = 0;
    push_all(&r, "tp", n_msgs, ctxs);
    assert_int_equal(r.ok, n_msgs);
    assert_int_equal(r.dup, n_msgs);
    assert_int_equal(count_obs("tp"), (long)n_msgs * 10);

    /* Duplicates inside one batch: the first is new, the second not. */
    static vitals_msg m;
    m = tmpl;
    set_control_id(&m, "inbatch", 1);
    memset(&r.ok, 0, sizeof r - offsetof(run, ok));
    r.total = r.done = 0;
    msg_ctx a = {&r, 0}, b = {&r, 1};
    assert_int_equal(store_ingest(r.s, dev_id, &m, on_ingest, &a), CMS_OK);
    assert_int_equal(store_ingest(r.s, dev_id, &m, on_ingest, &b), CMS_OK);
    r.total = 2;
    while (r.done < 2)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(r.ok, 2);
    assert_int_equal(r.dup, 1);
    assert_int_equal(count_obs("inbatch"), 10);

    /* Values made it intact (quoting of " and \, times, received_at). */
    char like[96];
    snprintf(like, sizeof like, "%s-inbatch-1", run_tag);
    const char *v[1] = {like};
    PGresult *res = q("SELECT p.patient_id, p.authority, m.location, "
                      " to_char(m.msg_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'),"
                      " (SELECT to_char(o.observed_at AT TIME ZONE 'UTC', 'HH24:MI') FROM "
                      "   cms.observations o WHERE o.message_id = m.id AND o.set_id = 1),"
                      " (SELECT o.observed_at = m.received_at FROM cms.observations o "
                      "   WHERE o.message_id = m.id AND o.set_id = 2),"
                      " (SELECT equipment_id FROM cms.observations o "
                      "   WHERE o.message_id = m.id AND o.set_id = 3),"
                      " (SELECT value FROM cms.observations o "
                      "   WHERE o.message_id = m.id AND o.set_id = 8),"
                      " abs(extract(epoch FROM now() - m.received_at)) < 60 "
                      "FROM cms.messages m JOIN cms.patients p ON p.id = m.patient_ref "
                      "WHERE m.control_id = $1",
                      1, v);
    assert_int_equal(PQntuples(res), 1);
    assert_string_equal(PQgetvalue(res, 0, 0), "PAT-\"q\\1");
    assert_string_equal(PQgetvalue(res, 0, 1), "HOSP");
    assert_string_equal(PQgetvalue(res, 0, 2), "CCU^^BED-07");
    assert_string_equal(PQgetvalue(res, 0, 3), "2026-11-15 07:30:00.310");
    assert_string_equal(PQgetvalue(res, 0, 4), "07:30"); /* Europe/Berlin, no offset */
    assert_string_equal(PQgetvalue(res, 0, 5), "t");
    assert_string_equal(PQgetvalue(res, 0, 6), "0012A1FFFE000001");
    assert_string_equal(PQgetvalue(res, 0, 7), "36.6");
    assert_string_equal(PQgetvalue(res, 0, 8), "t");
    PQclear(res);

    close_store(&r);
    free(ctxs);
    uv_loop_close(&loop);
}

static void test_kill_backend_exactly_once(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    store_config cfg;
    run r = {.loop = &loop};
    r.s = open_store(&loop, dsn, &cfg);
    msg_ctx *ctxs = calloc(n_msgs, sizeof *ctxs);
    r.kill_at = n_msgs / 4;
    push_all(&r, "kill", n_msgs, ctxs);
    assert_true(r.killed);
    printf("    after kill: ok=%u (dup=%u, i.e. committed before the loss) eunavail=%u\n", r.ok,
           r.dup, r.eunavail);
    assert_int_equal(r.ok, n_msgs);
    assert_int_equal(count_msgs("kill"), n_msgs);
    assert_int_equal(count_obs("kill"), (long)n_msgs * 10);
    /* Both connections came back. */
    double t0 = now_s();
    while (!store_ready(r.s) && now_s() - t0 < 5)
        uv_run(&loop, UV_RUN_ONCE);
    assert_true(store_ready(r.s));
    close_store(&r);
    free(ctxs);
    uv_loop_close(&loop);
}

/* A batch blocked on a row lock: the statement is cancelled by the server
 * (statement_timeout) or our timer, retried, and succeeds once the lock goes. */
static void test_blocked_batch_retried(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    store_config cfg;
    store_config_defaults(&cfg);
    cfg.conninfo = dsn;
    cfg.query_timeout_ms = 400;
    cfg.reconnect_min_ms = 50;
    run r = {.loop = &loop};
    r.s = store_new(&loop, &cfg);
    double t0 = now_s();
    while (!store_ready(r.s) && now_s() - t0 < 10)
        uv_run(&loop, UV_RUN_ONCE);
    static vitals_msg m;
    m = tmpl;
    set_control_id(&m, "locked", 0);
    char dev[32];
    snprintf(dev, sizeof dev, "%lld", (long long)dev_id);
    const char *v[2] = {dev, m.control_id};
    PQclear(q("BEGIN", 0, NULL));
    PQclear(q("INSERT INTO cms.messages (device_id, control_id, received_at, nobs) "
              "VALUES ($1, $2, now(), 0)",
              2, v));
    msg_ctx a = {&r, 0};
    assert_int_equal(store_ingest(r.s, dev_id, &m, on_ingest, &a), CMS_OK);
    r.total = 1;
    t0 = now_s();
    while (now_s() - t0 < 1.2)
        uv_run(&loop, UV_RUN_NOWAIT), usleep(1000);
    assert_int_equal(r.done, 0); /* still blocked, being retried */
    PQclear(q("ROLLBACK", 0, NULL));
    while (r.done < 1)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(r.ok, 1);
    assert_int_equal(r.dup, 0);
    assert_int_equal(count_obs("locked"), 10);
    close_store(&r);
    uv_loop_close(&loop);
}

static void test_split_on_data_error(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    store_config cfg;
    run r = {.loop = &loop};
    r.s = open_store(&loop, dsn, &cfg);
    static vitals_msg m;
    msg_ctx ctxs[50];
    for (unsigned i = 0; i < 50; i++) {
        m = tmpl;
        set_control_id(&m, "split", i);
        if (i == 17)
            snprintf(m.msg_time, sizeof m.msg_time, "not a time");
        if (i == 33)
            snprintf(m.obs[4].label, sizeof m.obs[4].label, "bad utf8 \xff\xfe");
        ctxs[i] = (msg_ctx){&r, i};
        assert_int_equal(store_ingest(r.s, dev_id, &m, on_ingest, &ctxs[i]), CMS_OK);
    }
    r.total = 50;
    while (r.done < 50)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(r.ok, 48);
    assert_int_equal(r.eproto, 2);
    assert_int_equal(count_msgs("split"), 48);
    close_store(&r);
    uv_loop_close(&loop);
}

static int lookup_status;
static store_device lookup_dev;
static int lookups_done;

static void on_lookup(void *ctx, int status, const store_device *dev)
{
    (void)ctx;
    lookup_status = status;
    if (dev)
        lookup_dev = *dev;
    lookups_done++;
}

static void test_lookup_and_audit(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    store_config cfg;
    run r = {.loop = &loop};
    r.s = open_store(&loop, dsn, &cfg);
    char serial[80];
    snprintf(serial, sizeof serial, "%s-DEV", run_tag);

    lookups_done = 0;
    assert_int_equal(store_device_lookup(r.s, serial, "127.0.0.1:5555", on_lookup, NULL), CMS_OK);
    while (lookups_done < 1)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(lookup_status, CMS_OK);
    assert_int_equal(lookup_dev.id, dev_id);
    assert_string_equal(lookup_dev.serial, serial);
    assert_string_equal(lookup_dev.status, "active");
    assert_int_equal(lookup_dev.nidents, 2);
    assert_string_equal(lookup_dev.idents[0], "\"quoted\" ,{x}");
    const char *v[1] = {serial};
    /* "last seen" is recorded in batches, about once a second */
    long seen = 0;
    for (double t0 = now_s(); seen == 0 && now_s() - t0 < 5;) {
        uv_run(&loop, UV_RUN_NOWAIT);
        seen = q_long("SELECT count(*) FROM cms.devices WHERE serial = $1 AND "
                      "last_peer = '127.0.0.1:5555' AND last_seen_at > now() - '1 min'::interval",
                      1, v);
    }
    assert_int_equal(seen, 1);

    assert_int_equal(
        store_device_lookup(r.s, "no-such-device'; DROP TABLE x", NULL, on_lookup, NULL), CMS_OK);
    while (lookups_done < 2)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(lookup_status, CMS_EPERM);

    long before = q_long("SELECT count(*) FROM cms.audit_events WHERE device = $1", 1, v);
    store_audit(r.s, "test_event", "test", serial, "127.0.0.1:1", "{\"k\": \"v\"}");
    store_audit(r.s, "test_event", "test", serial, NULL, "not json");
    store_audit(r.s, "test_event", NULL, serial, NULL, NULL);
    close_store(&r); /* audit rows drain before the close completes */
    assert_int_equal(q_long("SELECT count(*) FROM cms.audit_events WHERE device = $1", 1, v),
                     before + 3);
    assert_int_equal(q_long("SELECT count(*) FROM cms.audit_events WHERE device = $1 AND "
                            "detail->>'raw' = 'not json'",
                            1, v),
                     1);
    PGresult *res = q("SELECT cms.audit_verify() IS NULL", 0, NULL);
    assert_string_equal(PQgetvalue(res, 0, 0), "t");
    PQclear(res);
    uv_loop_close(&loop);
}



/* Many lookups queued at once go in batches; each gets its own answer. */
static int batch_ok, batch_eperm, batch_other, batch_done;
static int64_t batch_ids[150];

static void on_batch_lookup(void *ctx, int status, const store_device *dev)
{
    size_t i = (size_t)(uintptr_t)ctx;
    if (status == CMS_OK) {
        batch_ok++;
        batch_ids[i] = dev->id;
    } else if (status == CMS_EPERM) {
        batch_eperm++;
    } else {
        batch_other++;
    }
    batch_done++;
}

static void test_lookup_batches(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    store_config cfg;
    run r = {.loop = &loop};
    r.s = open_store(&loop, dsn, &cfg);
    char serial[80], unknown[80];
    snprintf(serial, sizeof serial, "%s-DEV", run_tag);
    batch_ok = batch_eperm = batch_other = batch_done = 0;
    for (size_t i = 0; i < 150; i++) { /* more than one batch of 64 */
        snprintf(unknown, sizeof unknown, "%s-NOPE-%zu", run_tag, i);
        assert_int_equal(store_device_lookup(r.s, i % 3 == 0 ? unknown : serial, "127.0.0.1:1",
                                             on_batch_lookup, (void *)(uintptr_t)i),
                         CMS_OK);
    }
    while (batch_done < 150)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(batch_eperm, 50);
    assert_int_equal(batch_ok, 100);
    assert_int_equal(batch_other, 0);
    for (size_t i = 0; i < 150; i++)
        if (i % 3 != 0)
            assert_int_equal(batch_ids[i], dev_id);
    close_store(&r);
    uv_loop_close(&loop);
}

/* ---- store_query / store_listen ------------------------------------------ */

static int q_status, q_done;
static char q_value[128];
static char q_sqlstate[8];

static char q_message[128];

static void on_query(void *ctx, int status, const store_rows *res)
{
    (void)ctx;
    q_status = status;
    q_value[0] = q_sqlstate[0] = q_message[0] = '\0';
    if (status == CMS_OK && store_rows_count(res) > 0)
        snprintf(q_value, sizeof q_value, "%s", store_rows_text(res, 0, 0));
    if (status == CMS_EPROTO) {
        const char *st = store_rows_sqlstate(res), *msg = store_rows_error(res);
        snprintf(q_sqlstate, sizeof q_sqlstate, "%s", st ? st : "");
        snprintf(q_message, sizeof q_message, "%s", msg ? msg : "");
    }
    q_done++;
}

/* What the rows view said about a two-row result with a NULL (test_query_rows). */
static struct {
    int count, col_first, col_second, col_none;
    bool null_0_1, null_1_0, null_out;
    char text_0_1[8], text_1_0[8], text_1_1[8], text_out[8];
    const char *get_0_second;
    char get_1_second[8];
    const char *sqlstate;
} rv;

static void on_rows(void *ctx, int status, const store_rows *res)
{
    (void)ctx;
    q_status = status;
    rv.count = store_rows_count(res);
    rv.col_first = store_rows_col(res, "first");
    rv.col_second = store_rows_col(res, "second");
    rv.col_none = store_rows_col(res, "none");
    rv.null_0_1 = store_rows_null(res, 0, rv.col_second);
    rv.null_1_0 = store_rows_null(res, 1, rv.col_first);
    rv.null_out = store_rows_null(res, 2, 0);
    snprintf(rv.text_0_1, sizeof rv.text_0_1, "%s", store_rows_text(res, 0, rv.col_second));
    snprintf(rv.text_1_0, sizeof rv.text_1_0, "%s", store_rows_text(res, 1, rv.col_first));
    snprintf(rv.text_1_1, sizeof rv.text_1_1, "%s", store_rows_text(res, 1, rv.col_second));
    snprintf(rv.text_out, sizeof rv.text_out, "%s", store_rows_text(res, 0, 7));
    rv.get_0_second = store_rows_get(res, 0, "second");
    snprintf(rv.get_1_second, sizeof rv.get_1_second, "%s",
             store_rows_get(res, 1, "second") ? store_rows_get(res, 1, "second") : "(null)");
    rv.sqlstate = store_rows_sqlstate(res);
    q_done++;
}

static int notes;
static char last_note[128];
static int null_notes;

static void on_note(void *ctx, const char *payload)
{
    (void)ctx;
    if (!payload) {
        null_notes++;
        return;
    }
    snprintf(last_note, sizeof last_note, "%s", payload);
    notes++;
}

static void test_query_and_listen(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    store_config cfg;
    run r = {.loop = &loop};
    r.s = open_store(&loop, dsn, &cfg);

    /* A parameter is data, never SQL. */
    const char *p[2] = {"x'; DROP TABLE cms.devices; --", "41"};
    q_done = 0;
    assert_int_equal(store_query(r.s, "SELECT $1::text || ':' || ($2::int + 1)", 2, p, on_query,
                                 NULL), CMS_OK);
    while (q_done < 1)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(q_status, CMS_OK);
    assert_string_equal(q_value, "x'; DROP TABLE cms.devices; --:42");

    /* An SQL error reaches the caller with its SQLSTATE. */
    assert_int_equal(store_query(r.s, "SELECT 1/0", 0, NULL, on_query, NULL), CMS_OK);
    while (q_done < 2)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(q_status, CMS_EPROTO);
    assert_string_equal(q_sqlstate, "22012");

    /* Rows by name, SQL NULL told from an empty text, out of range answered safely. */
    memset(&rv, 0, sizeof rv);
    assert_int_equal(store_query(r.s,
                                 "SELECT 'a'::text AS first, NULL::text AS second "
                                 "UNION ALL SELECT '', 'b'",
                                 0, NULL, on_rows, NULL),
                     CMS_OK);
    while (q_done < 3)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(q_status, CMS_OK);
    assert_int_equal(rv.count, 2);
    assert_int_equal(rv.col_first, 0);
    assert_int_equal(rv.col_second, 1);
    assert_int_equal(rv.col_none, -1);
    assert_true(rv.null_0_1);
    assert_string_equal(rv.text_0_1, "");
    assert_false(rv.null_1_0);
    assert_string_equal(rv.text_1_0, "");
    assert_string_equal(rv.text_1_1, "b");
    assert_true(rv.null_out);
    assert_string_equal(rv.text_out, "");
    assert_null(rv.get_0_second);
    assert_string_equal(rv.get_1_second, "b");
    assert_null(rv.sqlstate);

    /* A function's RAISE: its custom SQLSTATE and its message. */
    assert_int_equal(store_query(r.s,
                                 "DO $$BEGIN RAISE EXCEPTION 'token % unknown', 7 "
                                 "USING ERRCODE = 'CE001'; END$$",
                                 0, NULL, on_query, NULL),
                     CMS_OK);
    while (q_done < 4)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(q_status, CMS_EPROTO);
    assert_string_equal(q_sqlstate, "CE001");
    assert_string_equal(q_message, "token 7 unknown");

    assert_int_equal(store_listen(r.s, "BAD-channel", on_note, NULL), CMS_EINVAL);
    assert_int_equal(store_listen(r.s, "cms_test_chan", on_note, NULL), CMS_OK);
    /* Make sure LISTEN ran: a query queued after it completes after it. */
    assert_int_equal(store_query(r.s, "SELECT 1", 0, NULL, on_query, NULL), CMS_OK);
    while (q_done < 5)
        uv_run(&loop, UV_RUN_ONCE);
    notes = 0;
    q_long("SELECT count(pg_notify('cms_test_chan', 'MON-4242'))", 0, NULL);
    double t0 = now_s();
    while (notes < 1 && now_s() - t0 < 5)
        uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(notes, 1);
    assert_string_equal(last_note, "MON-4242");

    /* After the control connection is lost: a NULL notification, and LISTEN again. */
    null_notes = 0;
    terminate_backends();
    t0 = now_s();
    while (null_notes < 1 && now_s() - t0 < 10)
        uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(null_notes, 1);
    assert_int_equal(store_query(r.s, "SELECT 1", 0, NULL, on_query, NULL), CMS_OK);
    while (q_done < 6)
        uv_run(&loop, UV_RUN_ONCE);
    q_long("SELECT count(pg_notify('cms_test_chan', 'MON-4343'))", 0, NULL);
    t0 = now_s();
    while (notes < 2 && now_s() - t0 < 5)
        uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(notes, 2);
    assert_string_equal(last_note, "MON-4343");
    close_store(&r);
    uv_loop_close(&loop);
}

/* ---- device verdicts kept in memory (store_devcache.c) --------------------- */

static void run_for(uv_loop_t *loop, double seconds)
{
    for (double t0 = now_s(); now_s() - t0 < seconds;)
        uv_run(loop, UV_RUN_NOWAIT);
}

/* Runs the loop until store_device_cached(serial, fp) is want, or 5 s. */
static bool cached_becomes(uv_loop_t *loop, store_t *s, const char *serial, const char *fp,
                           bool want)
{
    store_device d;
    for (double t0 = now_s(); now_s() - t0 < 5; uv_run(loop, UV_RUN_NOWAIT))
        if (store_device_cached(s, serial, fp, NULL, &d) == want)
            return true;
    return false;
}

static void lookup_wait(uv_loop_t *loop, store_t *s, const char *serial, const char *fp)
{
    int before = lookups_done;
    assert_int_equal(store_device_lookup_cert(s, serial, fp, "127.0.0.1:7", on_lookup, NULL),
                     CMS_OK);
    while (lookups_done == before)
        uv_run(loop, UV_RUN_ONCE);
}

static void test_device_cache(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    store_config cfg;
    run r = {.loop = &loop};
    r.s = open_store(&loop, dsn, &cfg);
    char serial[80], id[32];
    snprintf(serial, sizeof serial, "%s-DEV", run_tag);
    snprintf(id, sizeof id, "%lld", (long long)dev_id);
    const char *fp = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const char *fp2 = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    const char *v[1] = {serial};
    store_device d;
    /* the readiness check queued at connect has run once a later query did */
    q_done = 0;
    assert_int_equal(store_query(r.s, "SELECT 1", 0, NULL, on_query, NULL), CMS_OK);
    while (q_done < 1)
        uv_run(&loop, UV_RUN_ONCE);

    /* Nothing kept before a database check; an "active" check is kept. */
    assert_false(store_device_cached(r.s, serial, fp, NULL, &d));
    lookups_done = 0;
    lookup_wait(&loop, r.s, serial, fp);
    assert_int_equal(lookup_status, CMS_OK);
    assert_string_equal(lookup_dev.status, "active");
    assert_true(store_device_cached(r.s, serial, fp, "127.0.0.1:8", &d));
    assert_int_equal(d.id, dev_id);
    assert_string_equal(d.serial, serial);
    assert_string_equal(d.status, "active");
    assert_int_equal(d.nidents, lookup_dev.nidents);
    assert_string_equal(d.idents[0], lookup_dev.idents[0]);
    assert_string_equal(d.idents[1], lookup_dev.idents[1]);
    /* per certificate: another fingerprint is not covered */
    assert_false(store_device_cached(r.s, serial, fp2, NULL, &d));
    assert_false(store_device_cached(r.s, serial, NULL, NULL, &d));

    /* "last seen" updates change no verdict and keep it */
    PQclear(q("UPDATE cms.devices SET last_seen_at = now(), firmware_version = 'x' WHERE serial = $1",
              1, v));
    run_for(&loop, 0.3);
    assert_true(store_device_cached(r.s, serial, fp, NULL, &d));

    /* A status change by hand (not through cmsd) drops it at once... */
    PQclear(q("UPDATE cms.devices SET status = 'revoked' WHERE serial = $1", 1, v));
    assert_true(cached_becomes(&loop, r.s, serial, fp, false));
    lookup_wait(&loop, r.s, serial, fp);
    assert_string_equal(lookup_dev.status, "revoked");
    run_for(&loop, 0.2);
    assert_false(store_device_cached(r.s, serial, fp, NULL, &d)); /* refusals are not kept */
    PQclear(q("UPDATE cms.devices SET status = 'active' WHERE serial = $1", 1, v));
    run_for(&loop, 0.3); /* its notification: a check answered before it would be dropped */
    lookup_wait(&loop, r.s, serial, fp);
    assert_true(store_device_cached(r.s, serial, fp, NULL, &d));

    /* ...and so does a change of its identifiers or certificates. */
    char ident[96];
    snprintf(ident, sizeof ident, "%s-EUI2", run_tag);
    const char *vi[2] = {id, ident};
    PQclear(q("INSERT INTO cms.device_identifiers (device_id, identifier) VALUES ($1, $2)", 2, vi));
    assert_true(cached_becomes(&loop, r.s, serial, fp, false));
    lookup_wait(&loop, r.s, serial, fp);
    assert_int_equal(lookup_dev.nidents, 3);
    assert_true(store_device_cached(r.s, serial, fp, NULL, &d));
    assert_int_equal(d.nidents, 3);
    PQclear(q("DELETE FROM cms.device_identifiers WHERE identifier = $2 AND device_id = $1", 2, vi));
    assert_true(cached_becomes(&loop, r.s, serial, fp, false));

    /* A check answered around a change that committed while it waited is
     * not kept past that change's notification. */
    lookup_wait(&loop, r.s, serial, fp);
    assert_true(store_device_cached(r.s, serial, fp, NULL, &d));
    PQclear(q("BEGIN", 0, NULL));
    PQclear(q("LOCK TABLE cms.devices IN ACCESS EXCLUSIVE MODE", 0, NULL));
    PQclear(q("UPDATE cms.devices SET status = 'active' WHERE serial = $1", 1, v)); /* no-op */
    PQclear(q("SELECT pg_notify('cms_registry', $1)", 1, v));
    int before = lookups_done;
    assert_int_equal(store_device_lookup_cert(r.s, serial, fp2, NULL, on_lookup, NULL), CMS_OK);
    run_for(&loop, 0.2); /* sent, blocked on the lock */
    assert_int_equal(lookups_done, before);
    PQclear(q("COMMIT", 0, NULL));
    while (lookups_done == before)
        uv_run(&loop, UV_RUN_ONCE);
    assert_string_equal(lookup_dev.status, "active");
    assert_true(cached_becomes(&loop, r.s, serial, fp2, false));
    assert_false(store_device_cached(r.s, serial, fp, NULL, &d));

    /* Connection lost: everything dropped; kept again once it is back. */
    lookup_wait(&loop, r.s, serial, fp);
    assert_true(store_device_cached(r.s, serial, fp, NULL, &d));
    terminate_backends();
    assert_true(cached_becomes(&loop, r.s, serial, fp, false));
    assert_int_equal(store_device_cache_size(r.s), 0);
    for (double t0 = now_s(); !store_ready(r.s) && now_s() - t0 < 10;)
        uv_run(&loop, UV_RUN_ONCE);
    q_done = 0;
    assert_int_equal(store_query(r.s, "SELECT 1", 0, NULL, on_query, NULL), CMS_OK);
    while (q_done < 1)
        uv_run(&loop, UV_RUN_ONCE);
    lookup_wait(&loop, r.s, serial, fp);
    assert_true(store_device_cached(r.s, serial, fp, NULL, &d));
    close_store(&r);
    uv_loop_close(&loop);

    /* device_cache_ttl_s = 0: never kept. */
    uv_loop_init(&loop);
    run r2 = {.loop = &loop};
    store_config_defaults(&cfg);
    cfg.conninfo = dsn;
    cfg.device_cache_ttl_s = 0;
    r2.s = store_new(&loop, &cfg);
    assert_non_null(r2.s);
    for (double t0 = now_s(); !store_ready(r2.s) && now_s() - t0 < 10;)
        uv_run(&loop, UV_RUN_ONCE);
    lookup_wait(&loop, r2.s, serial, fp);
    assert_string_equal(lookup_dev.status, "active");
    run_for(&loop, 0.2);
    assert_false(store_device_cached(r2.s, serial, fp, NULL, &d));
    close_store(&r2);
    uv_loop_close(&loop);
}

static void on_drain(void *ctx)
{
    ((run *)ctx)->drains++;
}

static void test_unavailable_timeout_backlog_close(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    store_config cfg;
    store_config_defaults(&cfg);
    cfg.conninfo = "host=127.0.0.1 port=1 connect_timeout=2";
    cfg.ingest_timeout_ms = 300;
    cfg.max_queued_msgs = 100;
    cfg.reconnect_min_ms = 50;
    cfg.reconnect_max_ms = 200;
    run r = {.loop = &loop};
    r.s = store_new(&loop, &cfg);
    assert_non_null(r.s);
    store_on_drain(r.s, on_drain, &r);
    static vitals_msg m;
    m = tmpl;
    msg_ctx ctxs[101];
    for (unsigned i = 0; i < 100; i++) {
        set_control_id(&m, "unavail", i);
        ctxs[i] = (msg_ctx){&r, i};
        assert_int_equal(store_ingest(r.s, dev_id, &m, on_ingest, &ctxs[i]), CMS_OK);
    }
    assert_int_equal(store_backlog(r.s), 100);
    assert_int_equal(store_ingest(r.s, dev_id, &m, on_ingest, &ctxs[100]), CMS_ELIMIT);
    r.total = 100;
    double t0 = now_s();
    while (r.done < 100)
        uv_run(&loop, UV_RUN_ONCE);
    double dt = now_s() - t0;
    assert_int_equal(r.eunavail, 100);
    assert_true(dt >= 0.25 && dt < 2.0);
    assert_int_equal(r.drains, 1);
    assert_false(store_ready(r.s));

    /* store_close: queued messages get ECLOSED, then the close callback. */
    assert_int_equal(store_ingest(r.s, dev_id, &m, on_ingest, &ctxs[0]), CMS_OK);
    store_close(r.s, on_closed, &r);
    assert_int_equal(r.eclosed, 1);
    assert_int_equal(store_ingest(r.s, dev_id, &m, on_ingest, &ctxs[0]), CMS_ECLOSED);
    while (!r.closed)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- setup ------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    const char *admin = getenv("CMS_TEST_ADMIN_DSN");
    side = PQconnectdb(admin && *admin ? admin : dsn);
    if (PQstatus(side) != CONNECTION_OK) {
        fprintf(stderr, "test_store_pg: cannot connect: %s", PQerrorMessage(side));
        return -1;
    }
    PGresult *r = PQexec(side, "SET client_min_messages = warning");
    PQclear(r);
    snprintf(run_tag, sizeof run_tag, "T%ld-%d", (long)time(NULL), (int)getpid());
    char serial[80];
    snprintf(serial, sizeof serial, "%s-DEV", run_tag);
    const char *v[1] = {serial};
    dev_id =
        q_long("INSERT INTO cms.devices (serial, status) VALUES ($1, 'active') RETURNING id", 1, v);
    char id[32];
    snprintf(id, sizeof id, "%lld", (long long)dev_id);
    char e1[96], e2[96];
    snprintf(e1, sizeof e1, "\"quoted\" ,{x}");
    snprintf(e2, sizeof e2, "%s-EUI", run_tag);
    /* identifiers are unique: make the first one unique per run by deleting old ones */
    const char *v0[1] = {e1};
    PQclear(q("DELETE FROM cms.device_identifiers WHERE identifier = $1", 1, v0));
    const char *v2[2] = {id, e1};
    PQclear(q("INSERT INTO cms.device_identifiers (device_id, identifier) VALUES ($1, $2)", 2, v2));
    v2[1] = e2;
    PQclear(q("INSERT INTO cms.device_identifiers (device_id, identifier) VALUES ($1, $2)", 2, v2));
    make_template();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    PQfinish(side);
    return 0;
}

int main(void)
{
    dsn = getenv("CMS_TEST_DSN");
    if (!dsn || !*dsn) {
        printf("test_store_pg: skipped (set CMS_TEST_DSN to a migrated database)\n");
        return 0;
    }
    const char *n = getenv("CMS_TEST_STORE_N");
    if (n && atoi(n) > 0)
        n_msgs = (unsigned)atoi(n);
    const char *b = getenv("CMS_TEST_STORE_BATCH");
    if (b && atoi(b) > 0)
        batch_msgs = (unsigned)atoi(b);
    const char *lv = getenv("CMS_TEST_LOG");
    enum log_level level = LOG_WARN;
    if (lv)
        log_level_parse(lv, &level);
    log_set_level(level);
    const char *filter = getenv("CMS_TEST_FILTER"); /* e.g. "test_throughput*" */
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_throughput_and_duplicates),
        cmocka_unit_test(test_kill_backend_exactly_once),
        cmocka_unit_test(test_blocked_batch_retried),
        cmocka_unit_test(test_split_on_data_error),
        cmocka_unit_test(test_lookup_and_audit),
        cmocka_unit_test(test_query_and_listen),
        cmocka_unit_test(test_lookup_batches),
        cmocka_unit_test(test_device_cache),
        cmocka_unit_test(test_unavailable_timeout_backlog_close),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
