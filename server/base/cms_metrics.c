/*
 * cms_metrics.c - the table of every metric cmsd exports (cms_metrics.h).
 * docs/operations.md ("Metrics") documents each; keep both in step (the
 * black-box test test_metrics.py compares them).
 */
#include <dirent.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "cms_metrics.h"

static const char *build_version[2] = {"unknown", NULL}; /* set by cms_metrics_new */
static const char *const listeners[] = {"mllp", "https", "metrics", NULL};
static const char *const refusals[] = {
    "max_connections", "handshake_timeout", "tls_alert",    "no_certificate",
    "unknown_ca",      "expired",           "revoked",      "bad_certificate",
    "unregistered",    "inactive",          "registry_unavailable", "rate_limited",
    "proxy_not_allowed", "proxy_header", NULL};
static const char *const handshakes[] = {"full", "resumed", NULL};
static const char *const hl7_types[] = {"ORU^R01", "ORU^R40", "other", NULL};
static const char *const hl7_results[] = {"AA", "AE", "AR", NULL};
static const char *const queries[] = {"ingest", "control", "ingest_alarm", NULL};
static const char *const http_classes[] = {"2xx", "3xx", "4xx", "5xx", NULL};
static const char *const est_ops[] = {"enroll", "reenroll", NULL};
static const char *const est_results[] = {"issued", "refused", NULL};
static const char *const fw_results[] = {"complete", "failed", NULL};
static const char *const rollout_events[] = {
    "rollout_created",   "rollout_started",   "rollout_stage_advanced",
    "rollout_paused",    "rollout_resumed",   "rollout_aborted",
    "rollout_completed", "rollout_device_retargeted", "rollout_device_excluded", NULL};
static const char *const audit_results[] = {"written", "dropped", NULL};
static const char *const reload_results[] = {"applied", "refused", NULL};
static const char *const certs[] = {"server", "device_ca", "operator_ca", NULL};

/* Seconds: from a millisecond (a commit on a quiet machine) to a minute
 * (ingest_timeout_ms is 30 s by default). */
static const double latency_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25,  0.5,    1,     2.5,  5,     10,   30, 60};
/* Messages per committed batch: powers of two up to beyond batch_max_msgs' default. */
static const double batch_buckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};

#define N(a) (unsigned)(sizeof(a) / sizeof((a)[0]))

const metric_def cms_metric_defs[CM__COUNT] = {
    [CM_BUILD_INFO] = {.name = "cmsd_build_info",
                       .help = "Always 1; the version label says which cmsd runs.",
                       .type = METRIC_GAUGE, .agg = METRIC_AGG_GLOBAL,
                       .label_names = {"version"}, .label_values = {build_version}},
    [CM_START_TIME] = {.name = "process_start_time_seconds",
                       .help = "Start time of the process since the Unix epoch, in seconds.",
                       .type = METRIC_GAUGE, .agg = METRIC_AGG_GLOBAL},
    [CM_RESIDENT_MEMORY] = {.name = "process_resident_memory_bytes",
                            .help = "Resident memory size in bytes.",
                            .type = METRIC_GAUGE, .agg = METRIC_AGG_GLOBAL},
    [CM_OPEN_FDS] = {.name = "process_open_fds",
                     .help = "Number of open file descriptors.",
                     .type = METRIC_GAUGE, .agg = METRIC_AGG_GLOBAL},
    [CM_READY] = {.name = "cmsd_ready",
                  .help = "1 when /readyz answers ready: listening, database up, schema "
                          "migrations as expected, not draining.",
                  .type = METRIC_GAUGE, .agg = METRIC_AGG_GLOBAL},
    [CM_DRAINING] = {.name = "cmsd_draining",
                     .help = "1 from SIGTERM until exit: no new connections, in-flight "
                             "messages committed and acknowledged.",
                     .type = METRIC_GAUGE, .agg = METRIC_AGG_GLOBAL},
    [CM_CONN_ACCEPTED] = {.name = "cmsd_connections_accepted_total",
                          .help = "TCP connections accepted, by listener.",
                          .type = METRIC_COUNTER,
                          .label_names = {"listener"}, .label_values = {listeners}},
    [CM_CONN_OPEN] = {.name = "cmsd_connections_open",
                      .help = "Connections open now, by listener.",
                      .type = METRIC_GAUGE, .agg = METRIC_AGG_SUM,
                      .label_names = {"listener"}, .label_values = {listeners}},
    [CM_CONN_REFUSED] = {.name = "cmsd_connections_refused_total",
                         .help = "Connections (or EST requests: rate_limited) refused, by "
                                 "listener and reason.",
                         .type = METRIC_COUNTER,
                         .label_names = {"listener", "reason"},
                         .label_values = {listeners, refusals}},
    [CM_HANDSHAKES] = {.name = "cmsd_tls_handshakes_total",
                       .help = "TLS handshakes completed, full or resumed, by listener.",
                       .type = METRIC_COUNTER,
                       .label_names = {"listener", "kind"},
                       .label_values = {listeners, handshakes}},
    [CM_HL7_MESSAGES] = {.name = "cmsd_hl7_messages_total",
                         .help = "HL7 messages answered, by message type and ACK code.",
                         .type = METRIC_COUNTER,
                         .label_names = {"type", "result"},
                         .label_values = {hl7_types, hl7_results}},
    [CM_OBSERVATIONS] = {.name = "cmsd_observations_stored_total",
                         .help = "Observations committed to the database (resends of a "
                                 "stored message not counted again).",
                         .type = METRIC_COUNTER},
    [CM_COMMIT_LATENCY] = {.name = "cmsd_commit_latency_seconds",
                           .help = "From a message's last byte received to its COMMIT.",
                           .type = METRIC_HISTOGRAM, .buckets = latency_buckets,
                           .nbuckets = N(latency_buckets)},
    [CM_ACK_LATENCY] = {.name = "cmsd_ack_latency_seconds",
                        .help = "From a message's last byte received to its ACK handed to "
                                "TLS (receive, commit, ACK).",
                        .type = METRIC_HISTOGRAM, .buckets = latency_buckets,
                        .nbuckets = N(latency_buckets)},
    [CM_BATCH_MESSAGES] = {.name = "cmsd_batch_messages",
                           .help = "Messages per group commit.",
                           .type = METRIC_HISTOGRAM, .buckets = batch_buckets,
                           .nbuckets = N(batch_buckets)},
    [CM_DB_ROUNDTRIP] = {.name = "cmsd_db_roundtrip_seconds",
                         .help = "From a statement sent to its result, by connection.",
                         .type = METRIC_HISTOGRAM, .buckets = latency_buckets,
                         .nbuckets = N(latency_buckets),
                         .label_names = {"query"}, .label_values = {queries}},
    [CM_INGEST_QUEUED] = {.name = "cmsd_ingest_queued_messages",
                          .help = "Messages received and not yet committed.",
                          .type = METRIC_GAUGE, .agg = METRIC_AGG_SUM},
    [CM_DB_UP] = {.name = "cmsd_db_up",
                  .help = "1 when every worker's database connections are up.",
                  .type = METRIC_GAUGE, .agg = METRIC_AGG_MIN},
    [CM_HTTP_RESPONSES] = {.name = "cmsd_http_responses_total",
                           .help = "HTTPS responses, by status class.",
                           .type = METRIC_COUNTER,
                           .label_names = {"code"}, .label_values = {http_classes}},
    [CM_EST_ENROLLMENTS] = {.name = "cmsd_est_enrollments_total",
                            .help = "EST enrollment requests, by operation and result.",
                            .type = METRIC_COUNTER,
                            .label_names = {"operation", "result"},
                            .label_values = {est_ops, est_results}},
    [CM_FW_DOWNLOADS] = {.name = "cmsd_firmware_downloads_total",
                         .help = "Firmware image responses finished, whole or cut.",
                         .type = METRIC_COUNTER,
                         .label_names = {"result"}, .label_values = {fw_results}},
    [CM_FW_BYTES] = {.name = "cmsd_firmware_bytes_sent_total",
                     .help = "Firmware image bytes handed to TLS.",
                     .type = METRIC_COUNTER},
    [CM_FW_ROLLOUT_TRANSITIONS] = {.name = "cmsd_fw_rollout_transitions_total",
                                   .help = "Staged rollout transitions this process made "
                                           "(each is an audit row of the same name).",
                                   .type = METRIC_COUNTER,
                                   .label_names = {"event"},
                                   .label_values = {rollout_events}},
    [CM_AUDIT_ROWS] = {.name = "cmsd_audit_rows_total",
                       .help = "Audit rows written, or dropped (the log line holds them).",
                       .type = METRIC_COUNTER,
                       .label_names = {"result"}, .label_values = {audit_results}},
    [CM_RELOADS] = {.name = "cmsd_config_reloads_total",
                    .help = "SIGHUP reloads, applied or refused (the old state kept).",
                    .type = METRIC_COUNTER,
                    .label_names = {"result"}, .label_values = {reload_results}},
    [CM_RELOAD_SUCCESS] = {.name = "cmsd_config_last_reload_successful",
                           .help = "1 when the last reload was applied (or none was tried).",
                           .type = METRIC_GAUGE, .agg = METRIC_AGG_GLOBAL},
    [CM_RELOAD_TIME] = {.name = "cmsd_config_last_reload_success_timestamp_seconds",
                        .help = "When the configuration in force was loaded (start or "
                                "reload), seconds since the Unix epoch.",
                        .type = METRIC_GAUGE, .agg = METRIC_AGG_GLOBAL},
    [CM_CERT_EXPIRY] = {.name = "cmsd_certificate_expiry_timestamp_seconds",
                        .help = "notAfter of the server certificate and of the CA certificates "
                                "in force (the earliest of a bundle), seconds since the epoch.",
                        .type = METRIC_GAUGE, .agg = METRIC_AGG_GLOBAL,
                        .label_names = {"certificate"}, .label_values = {certs}},
    [CM_CRL_NEXT_UPDATE] = {.name = "cmsd_crl_next_update_timestamp_seconds",
                            .help = "nextUpdate of the CRL in force (tls_crl); 0 without one.",
                            .type = METRIC_GAUGE, .agg = METRIC_AGG_GLOBAL},
    [CM_SSE_CLIENTS] = {.name = "cmsd_sse_clients",
                        .help = "Live event streams (GET /api/v1/events) open now.",
                        .type = METRIC_GAUGE, .agg = METRIC_AGG_SUM},
    [CM_SSE_EVENTS] = {.name = "cmsd_sse_events_total",
                       .help = "Live events published (one per stored message).",
                       .type = METRIC_COUNTER},
    [CM_SSE_DROPPED] = {.name = "cmsd_sse_dropped_total",
                        .help = "Event stream clients dropped for not reading.",
                        .type = METRIC_COUNTER},
    [CM_SSE_RELAYED] = {.name = "cmsd_sse_relayed_total",
                        .help = "Live events sent to the other instances (NOTIFY cms_events).",
                        .type = METRIC_COUNTER},
    [CM_SSE_RELAY_RECEIVED] = {.name = "cmsd_sse_relay_received_total",
                               .help = "Live events of other instances put into this one's "
                                       "streams.",
                               .type = METRIC_COUNTER},
    [CM_SSE_RELAY_DROPPED] = {.name = "cmsd_sse_relay_dropped_total",
                              .help = "Live events that could not be relayed to the other "
                                      "instances.",
                              .type = METRIC_COUNTER},
};

metrics_registry *cms_metrics_new(unsigned nshards, const char *version, char *err, size_t cap)
{
    build_version[0] = version;
    metrics_registry *r = metrics_new(cms_metric_defs, CM__COUNT, nshards, err, cap);
    if (!r)
        return NULL;
    metrics_install(r);
    metrics_gauge_set(CM_BUILD_INFO, 0, 1);
    metrics_gauge_set(CM_START_TIME, 0, (double)time(NULL));
    metrics_gauge_set(CM_RELOAD_SUCCESS, 0, 1);
    return r;
}

void cms_metrics_sample_process(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) == 2)
            metrics_gauge_set(CM_RESIDENT_MEMORY, 0,
                              (double)resident * (double)sysconf(_SC_PAGESIZE));
        fclose(f);
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        unsigned n = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            if (e->d_name[0] != '.')
                n++;
        closedir(d);
        metrics_gauge_set(CM_OPEN_FDS, 0, (double)(n > 0 ? n - 1 : 0)); /* not opendir's own */
    }
}
