/* test_metrics.c - the metrics registry (server/base/metrics.c): definitions it
 * refuses; counters updated by bound and unbound threads at once add up exactly,
 * also while being scraped; gauges combine by sum, minimum or one process value;
 * histogram observations land in the right bucket and are written cumulatively
 * with +Inf, _sum and _count; the text format's escapes; updates without a
 * registry, or to the wrong type, do nothing. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cms_metrics.h"
#include "metrics.h"

static const char *const listeners[] = {"mllp", "https", NULL};
static const char *const results[] = {"AA", "AE", "AR", NULL};
static const double secs[] = {0.001, 0.01, 0.1, 1};

enum { M_CONN, M_MSGS, M_OPEN, M_DBUP, M_EXPIRY, M_LAT };

static const metric_def defs[] = {
    [M_CONN] = {.name = "t_connections_total", .help = "connections", .type = METRIC_COUNTER,
                .label_names = {"listener"}, .label_values = {listeners}},
    [M_MSGS] = {.name = "t_messages_total", .help = "messages", .type = METRIC_COUNTER,
                .label_names = {"listener", "result"}, .label_values = {listeners, results}},
    [M_OPEN] = {.name = "t_open", .help = "open now", .type = METRIC_GAUGE},
    [M_DBUP] = {.name = "t_db_up", .help = "db", .type = METRIC_GAUGE, .agg = METRIC_AGG_MIN},
    [M_EXPIRY] = {.name = "t_expiry_timestamp_seconds", .help = "expiry", .type = METRIC_GAUGE,
                  .agg = METRIC_AGG_GLOBAL},
    [M_LAT] = {.name = "t_latency_seconds", .help = "latency", .type = METRIC_HISTOGRAM,
               .buckets = secs, .nbuckets = 4},
};
#define NDEFS (sizeof(defs) / sizeof(defs[0]))

static metrics_registry *make(unsigned shards)
{
    char err[256] = "";
    metrics_registry *r = metrics_new(defs, NDEFS, shards, err, sizeof(err));
    assert_non_null(r);
    metrics_install(r);
    return r;
}

static void refused(const metric_def *d, const char *why)
{
    char err[256] = "";
    metrics_registry *r = metrics_new(d, 1, 1, err, sizeof(err));
    if (r)
        fail_msg("accepted: %s", d->name);
    if (!strstr(err, why))
        fail_msg("%s: error \"%s\" does not say \"%s\"", d->name, err, why);
}

static void test_bad_definitions(void **state)
{
    (void)state;
    static const double down[] = {1, 0.5};
    static const char *const none[] = {NULL};
    refused(&(metric_def){.name = "t_requests", .help = "h", .type = METRIC_COUNTER}, "_total");
    refused(&(metric_def){.name = "t_open_total", .help = "h", .type = METRIC_GAUGE}, "_total");
    refused(&(metric_def){.name = "9t_total", .help = "h", .type = METRIC_COUNTER}, "not valid");
    refused(&(metric_def){.name = "t-x_total", .help = "h", .type = METRIC_COUNTER}, "not valid");
    refused(&(metric_def){.name = "t_x_total", .help = "two\nlines", .type = METRIC_COUNTER},
            "one line");
    refused(&(metric_def){.name = "t_s", .help = "h", .type = METRIC_HISTOGRAM,
                          .label_names = {"le"}, .label_values = {listeners},
                          .buckets = secs, .nbuckets = 4},
            "label name");
    refused(&(metric_def){.name = "t_s", .help = "h", .type = METRIC_HISTOGRAM, .buckets = down,
                          .nbuckets = 2},
            "increasing");
    refused(&(metric_def){.name = "t_s", .help = "h", .type = METRIC_HISTOGRAM}, "buckets");
    refused(&(metric_def){.name = "t_x_total", .help = "h", .type = METRIC_COUNTER,
                          .label_names = {"__x"}, .label_values = {listeners}},
            "label name");
    refused(&(metric_def){.name = "t_x_total", .help = "h", .type = METRIC_COUNTER,
                          .label_names = {"x"}, .label_values = {none}},
            "no values");
    metric_def twice[2] = {defs[M_CONN], defs[M_CONN]};
    char err[256];
    assert_null(metrics_new(twice, 2, 1, err, sizeof(err)));
    assert_non_null(strstr(err, "twice"));
    assert_null(metrics_new(defs, NDEFS, 0, err, sizeof(err)));
}

/* ---- threads ------------------------------------------------------------------- */

#define PER_THREAD 200000u

typedef struct worker_arg {
    int shard; /* -1: unbound (the shared shard, atomic) */
    unsigned listener;
} worker_arg;

static void *adder(void *p)
{
    worker_arg *a = p;
    metrics_bind_thread(a->shard);
    metrics_registry *r = metrics_installed();
    unsigned s = metrics_series2(r, M_MSGS, a->listener, 2);
    for (unsigned i = 0; i < PER_THREAD; i++) {
        metrics_add(M_CONN, a->listener, 1);
        metrics_add(M_MSGS, s, 1);
        metrics_gauge_add(M_OPEN, 0, 1);
        metrics_observe(M_LAT, 0, 0.005);
    }
    metrics_bind_thread(-1);
    return NULL;
}

static void test_threads_add_up(void **state)
{
    (void)state;
    metrics_registry *r = make(3);
    /* Three bound workers and two unbound threads (they share, atomically). */
    worker_arg args[5] = {{0, 0}, {1, 0}, {2, 1}, {-1, 1}, {-1, 0}};
    pthread_t th[5];
    for (int i = 0; i < 5; i++)
        assert_int_equal(pthread_create(&th[i], NULL, adder, &args[i]), 0);
    /* Scrapes meanwhile never see more than was added, nor a count going back. */
    double last = 0;
    for (int k = 0; k < 50; k++) {
        size_t len;
        char *text = metrics_render(r, &len);
        assert_non_null(text);
        free(text);
        double now = metrics_value(r, M_CONN, 0);
        assert_true(now >= last && now <= 3.0 * PER_THREAD);
        last = now;
    }
    for (int i = 0; i < 5; i++)
        pthread_join(th[i], NULL);
    assert_int_equal((uint64_t)metrics_value(r, M_CONN, 0), 3ull * PER_THREAD);
    assert_int_equal((uint64_t)metrics_value(r, M_CONN, 1), 2ull * PER_THREAD);
    assert_int_equal((uint64_t)metrics_value(r, M_MSGS, metrics_series2(r, M_MSGS, 0, 2)),
                     3ull * PER_THREAD);
    assert_int_equal((uint64_t)metrics_value(r, M_MSGS, metrics_series2(r, M_MSGS, 1, 2)),
                     2ull * PER_THREAD);
    assert_int_equal((uint64_t)metrics_value(r, M_MSGS, metrics_series2(r, M_MSGS, 1, 0)), 0);
    assert_int_equal((uint64_t)metrics_value(r, M_OPEN, 0), 5ull * PER_THREAD);
    assert_int_equal((uint64_t)metrics_value(r, M_LAT, 0), 5ull * PER_THREAD);
    metrics_free(r);
    assert_null(metrics_installed());
}

/* ---- gauges -------------------------------------------------------------------- */

typedef struct gauge_arg {
    int shard;
    double open, up;
} gauge_arg;

static void *setter(void *p)
{
    gauge_arg *a = p;
    metrics_bind_thread(a->shard);
    metrics_gauge_set(M_OPEN, 0, a->open);
    metrics_gauge_set(M_DBUP, 0, a->up);
    metrics_gauge_set(M_EXPIRY, 0, 1767225600 + a->shard); /* process-wide: the last wins */
    metrics_bind_thread(-1);
    return NULL;
}

static void run_setter(gauge_arg a)
{
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, setter, &a), 0);
    pthread_join(th, NULL);
}

static void test_gauges_combine(void **state)
{
    (void)state;
    metrics_registry *r = make(2);
    run_setter((gauge_arg){0, 10, 1});
    run_setter((gauge_arg){1, 5, 1});
    assert_true(metrics_value(r, M_OPEN, 0) == 15);
    assert_true(metrics_value(r, M_DBUP, 0) == 1);
    assert_true(metrics_value(r, M_EXPIRY, 0) == 1767225601);
    run_setter((gauge_arg){1, 7, 0}); /* worker 1 lost its database */
    assert_true(metrics_value(r, M_OPEN, 0) == 17);
    assert_true(metrics_value(r, M_DBUP, 0) == 0);
    /* An unbound thread does not take part in a minimum, and sets the process value. */
    metrics_gauge_set(M_DBUP, 0, 5);
    metrics_gauge_set(M_EXPIRY, 0, 42);
    assert_true(metrics_value(r, M_DBUP, 0) == 0);
    assert_true(metrics_value(r, M_EXPIRY, 0) == 42);
    metrics_free(r);
}

/* ---- exposition ---------------------------------------------------------------- */

static void test_histogram_and_text(void **state)
{
    (void)state;
    metrics_registry *r = make(1);
    metrics_bind_thread(0);
    metrics_observe(M_LAT, 0, 0.0005); /* <= 0.001 */
    metrics_observe(M_LAT, 0, 0.001);  /* a bound is inclusive */
    metrics_observe(M_LAT, 0, 0.05);   /* <= 0.1 */
    metrics_observe(M_LAT, 0, 3);      /* +Inf */
    metrics_observe(M_LAT, 0, NAN);    /* ignored */
    metrics_add(M_CONN, 1, 7);
    metrics_add(M_MSGS, metrics_series2(r, M_MSGS, 0, 1), 2);
    metrics_gauge_add(M_OPEN, 0, 3);
    metrics_gauge_add(M_OPEN, 0, -1);
    metrics_gauge_set(M_DBUP, 0, 1);
    metrics_gauge_set(M_EXPIRY, 0, 1767225600);
    metrics_bind_thread(-1);
    size_t len = 0;
    char *text = metrics_render(r, &len);
    assert_non_null(text);
    assert_int_equal(len, strlen(text));
    const char *want =
        "# HELP t_connections_total connections\n"
        "# TYPE t_connections_total counter\n"
        "t_connections_total{listener=\"mllp\"} 0\n"
        "t_connections_total{listener=\"https\"} 7\n"
        "# HELP t_messages_total messages\n"
        "# TYPE t_messages_total counter\n"
        "t_messages_total{listener=\"mllp\",result=\"AA\"} 0\n"
        "t_messages_total{listener=\"mllp\",result=\"AE\"} 2\n"
        "t_messages_total{listener=\"mllp\",result=\"AR\"} 0\n"
        "t_messages_total{listener=\"https\",result=\"AA\"} 0\n"
        "t_messages_total{listener=\"https\",result=\"AE\"} 0\n"
        "t_messages_total{listener=\"https\",result=\"AR\"} 0\n"
        "# HELP t_open open now\n"
        "# TYPE t_open gauge\n"
        "t_open 2\n"
        "# HELP t_db_up db\n"
        "# TYPE t_db_up gauge\n"
        "t_db_up 1\n"
        "# HELP t_expiry_timestamp_seconds expiry\n"
        "# TYPE t_expiry_timestamp_seconds gauge\n"
        "t_expiry_timestamp_seconds 1767225600\n"
        "# HELP t_latency_seconds latency\n"
        "# TYPE t_latency_seconds histogram\n"
        "t_latency_seconds_bucket{le=\"0.001\"} 2\n"
        "t_latency_seconds_bucket{le=\"0.01\"} 2\n"
        "t_latency_seconds_bucket{le=\"0.1\"} 3\n"
        "t_latency_seconds_bucket{le=\"1\"} 3\n"
        "t_latency_seconds_bucket{le=\"+Inf\"} 4\n"
        "t_latency_seconds_sum 3.0515\n"
        "t_latency_seconds_count 4\n";
    assert_string_equal(text, want);
    free(text);
    metrics_free(r);
}

static void test_escapes(void **state)
{
    (void)state;
    static const char *const odd[] = {"a\"b\\c\nd", NULL};
    static const metric_def d[] = {{.name = "t_odd_total",
                                    .help = "back\\slash and \"quotes\"",
                                    .type = METRIC_COUNTER,
                                    .label_names = {"v"},
                                    .label_values = {odd}}};
    char err[128];
    metrics_registry *r = metrics_new(d, 1, 1, err, sizeof(err));
    assert_non_null(r);
    char *text = metrics_render(r, NULL);
    assert_string_equal(text, "# HELP t_odd_total back\\\\slash and \"quotes\"\n"
                              "# TYPE t_odd_total counter\n"
                              "t_odd_total{v=\"a\\\"b\\\\c\\nd\"} 0\n");
    free(text);
    metrics_free(r);
}

static void test_noops(void **state)
{
    (void)state;
    metrics_install(NULL);
    metrics_add(M_CONN, 0, 1); /* nothing installed: nothing happens */
    metrics_registry *r = make(1);
    metrics_add(M_OPEN, 0, 1);            /* a gauge, not a counter */
    metrics_gauge_set(M_CONN, 0, 5);      /* a counter, not a gauge */
    metrics_add(M_CONN, 2, 1);            /* no such series */
    metrics_add(NDEFS + 3, 0, 1);         /* no such metric */
    metrics_observe(M_CONN, 0, 1);        /* not a histogram */
    assert_true(metrics_value(r, M_CONN, 0) == 0);
    assert_true(metrics_value(r, M_CONN, 1) == 0);
    assert_true(metrics_value(r, M_OPEN, 0) == 0);
    assert_true(metrics_value(r, NDEFS + 3, 0) == 0);
    /* A thread bound to a registry that was replaced writes to the new one's shared shard. */
    metrics_bind_thread(0);
    metrics_free(r);
    r = make(1);
    metrics_add(M_CONN, 0, 4);
    assert_true(metrics_value(r, M_CONN, 0) == 4);
    metrics_bind_thread(-1);
    metrics_free(r);
}

/* cmsd's own table is a valid registry; its enums agree with its label lists; no
 * label can carry an identifier (the values are the table's); every name has
 * the cmsd_ or process_ prefix. */
static void test_cms_table(void **state)
{
    (void)state;
    char err[256] = "";
    metrics_registry *r = cms_metrics_new(2, "9.9.9", err, sizeof(err));
    if (!r)
        fail_msg("%s", err);
    assert_ptr_equal(metrics_installed(), r);
    static const struct {
        unsigned id;
        unsigned n0, n1;
    } dims[] = {
        {CM_CONN_REFUSED, CM_LISTENER__COUNT, CM_REFUSED__COUNT},
        {CM_HANDSHAKES, CM_LISTENER__COUNT, CM_HANDSHAKE__COUNT},
        {CM_HL7_MESSAGES, CM_HL7__COUNT, CM_RESULT__COUNT},
        {CM_EST_ENROLLMENTS, CM_EST_OP__COUNT, CM_EST_RESULT__COUNT},
        {CM_CONN_ACCEPTED, CM_LISTENER__COUNT, 1},
        {CM_DB_ROUNDTRIP, CM_QUERY__COUNT, 1},
        {CM_HTTP_RESPONSES, CM_HTTP__COUNT, 1},
        {CM_FW_DOWNLOADS, CM_FW__COUNT, 1},
        {CM_AUDIT_ROWS, CM_AUDIT__COUNT, 1},
        {CM_RELOADS, CM_RELOAD__COUNT, 1},
        {CM_CERT_EXPIRY, CM_CERT__COUNT, 1},
    };
    for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++) {
        const metric_def *d = &cms_metric_defs[dims[i].id];
        unsigned n0 = 0, n1 = 0;
        while (d->label_values[0][n0])
            n0++;
        while (d->label_values[1] && d->label_values[1][n1])
            n1++;
        if (n0 != dims[i].n0 || (n1 ? n1 : 1) != dims[i].n1)
            fail_msg("%s: %u x %u label values, enums say %u x %u", d->name, n0, n1,
                     dims[i].n0, dims[i].n1);
    }
    for (unsigned id = 0; id < CM__COUNT; id++)
        assert_true(strncmp(cms_metric_defs[id].name, "cmsd_", 5) == 0 ||
                    strncmp(cms_metric_defs[id].name, "process_", 8) == 0);
    /* The enum helpers and the registry agree on series numbers. */
    metrics_add(CM_CONN_REFUSED, cm_refused(CM_LISTENER_HTTPS, CM_REFUSED_REVOKED), 1);
    metrics_add(CM_HL7_MESSAGES, cm_hl7(CM_HL7_ORU_R40, CM_RESULT_AR), 2);
    char *text = metrics_render(r, NULL);
    assert_non_null(strstr(text, "\ncmsd_connections_refused_total{listener=\"https\","
                                 "reason=\"revoked\"} 1\n"));
    assert_non_null(strstr(text, "\ncmsd_hl7_messages_total{type=\"ORU^R40\",result=\"AR\"} 2\n"));
    assert_non_null(strstr(text, "\ncmsd_build_info{version=\"9.9.9\"} 1\n"));
    assert_non_null(strstr(text, "\ncmsd_config_last_reload_successful 1\n"));
    cms_metrics_sample_process();
    assert_true(metrics_value(r, CM_RESIDENT_MEMORY, 0) > 1e5);
    assert_true(metrics_value(r, CM_OPEN_FDS, 0) >= 3);
    free(text);
    metrics_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_definitions),   cmocka_unit_test(test_threads_add_up),
        cmocka_unit_test(test_gauges_combine),    cmocka_unit_test(test_histogram_and_text),
        cmocka_unit_test(test_escapes),           cmocka_unit_test(test_noops),
        cmocka_unit_test(test_cms_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
