/*
 * cms_metrics.h - every metric cmsd exports: one table (server/base/cms_metrics.c),
 * ids and label values as enums, so that instrumented code says
 *   metrics_add(CM_HL7_MESSAGES, cm_hl7(CM_HL7_ORU_R01, CM_RESULT_AA), 1);
 * and nothing else can name a series. The names, types, labels and meaning of
 * each are documented in docs/operations.md ("Metrics"); a black-box test
 * compares that list with what GET /metrics serves.
 *
 * Label values are fixed here: no device serial, patient id, address or other
 * identifier is ever a label.
 *
 * Thread: the table is constant; see metrics.h for the update functions.
 */
#ifndef CMS_CMS_METRICS_H
#define CMS_CMS_METRICS_H

#include "metrics.h"

/* Metric ids: indexes into cms_metric_defs (same order). */
enum cm_id {
    CM_BUILD_INFO = 0,
    CM_START_TIME,
    CM_RESIDENT_MEMORY,
    CM_OPEN_FDS,
    CM_READY,
    CM_DRAINING,
    CM_CONN_ACCEPTED,
    CM_CONN_OPEN,
    CM_CONN_REFUSED,
    CM_HANDSHAKES,
    CM_HL7_MESSAGES,
    CM_OBSERVATIONS,
    CM_COMMIT_LATENCY,
    CM_ACK_LATENCY,
    CM_BATCH_MESSAGES,
    CM_DB_ROUNDTRIP,
    CM_INGEST_QUEUED,
    CM_DB_UP,
    CM_HTTP_RESPONSES,
    CM_EST_ENROLLMENTS,
    CM_FW_DOWNLOADS,
    CM_FW_BYTES,
    CM_FW_ROLLOUT_TRANSITIONS,
    CM_AUDIT_ROWS,
    CM_RELOADS,
    CM_RELOAD_SUCCESS,
    CM_RELOAD_TIME,
    CM_CERT_EXPIRY,
    CM_CRL_NEXT_UPDATE,
    CM_SSE_CLIENTS,
    CM_SSE_EVENTS,
    CM_SSE_DROPPED,
    CM_SSE_RELAYED,
    CM_SSE_RELAY_RECEIVED,
    CM_SSE_RELAY_DROPPED,
    CM__COUNT
};

/* label listener */
enum cm_listener { CM_LISTENER_MLLP = 0, CM_LISTENER_HTTPS, CM_LISTENER_METRICS,
                   CM_LISTENER__COUNT };

/* label reason of cmsd_connections_refused_total */
enum cm_refusal {
    CM_REFUSED_MAX_CONNECTIONS = 0, /* max_connections reached at accept */
    CM_REFUSED_HANDSHAKE_TIMEOUT,   /* no authenticated session in handshake_timeout_ms */
    CM_REFUSED_TLS_ALERT,           /* the TLS handshake failed (protocol, version, cipher, ...) */
    CM_REFUSED_NO_CERTIFICATE,      /* a listener that needs one got none */
    CM_REFUSED_UNKNOWN_CA,          /* certificate from a CA we do not trust */
    CM_REFUSED_EXPIRED,             /* certificate expired or not yet valid */
    CM_REFUSED_REVOKED,             /* certificate on the CRL */
    CM_REFUSED_BAD_CERTIFICATE,     /* any other certificate problem (no usable CN, wrong CA) */
    CM_REFUSED_UNREGISTERED,        /* device not in the registry */
    CM_REFUSED_INACTIVE,            /* device registered, not active (pending, revoked, ...) */
    CM_REFUSED_REGISTRY_UNAVAILABLE,/* the registry could not answer */
    CM_REFUSED_RATE_LIMITED,        /* an EST request answered 429 (est_anon_per_min) */
    CM_REFUSED_PROXY_NOT_ALLOWED,   /* proxy_protocol = v2: TCP peer not in proxy_allow */
    CM_REFUSED_PROXY_HEADER,        /* no, v1, malformed, truncated or late PROXY v2 header */
    CM_REFUSED__COUNT
};

/* label kind of cmsd_tls_handshakes_total */
enum cm_handshake { CM_HANDSHAKE_FULL = 0, CM_HANDSHAKE_RESUMED, CM_HANDSHAKE__COUNT };

/* labels type and result of cmsd_hl7_messages_total */
enum cm_hl7_type { CM_HL7_ORU_R01 = 0, CM_HL7_ORU_R40, CM_HL7_OTHER, CM_HL7__COUNT };
enum cm_result { CM_RESULT_AA = 0, CM_RESULT_AE, CM_RESULT_AR, CM_RESULT__COUNT };

/* label query of cmsd_db_roundtrip_seconds */
enum cm_query { CM_QUERY_INGEST = 0, CM_QUERY_CONTROL, CM_QUERY_INGEST_ALARM, CM_QUERY__COUNT };

/* label code of cmsd_http_responses_total */
enum cm_http_class { CM_HTTP_2XX = 0, CM_HTTP_3XX, CM_HTTP_4XX, CM_HTTP_5XX, CM_HTTP__COUNT };

/* labels of cmsd_est_enrollments_total */
enum cm_est_op { CM_EST_ENROLL = 0, CM_EST_REENROLL, CM_EST_OP__COUNT };
enum cm_est_result { CM_EST_ISSUED = 0, CM_EST_REFUSED, CM_EST_RESULT__COUNT };

/* label result of cmsd_firmware_downloads_total */
enum cm_fw_result { CM_FW_COMPLETE = 0, CM_FW_FAILED, CM_FW__COUNT };

/* label event of cmsd_fw_rollout_transitions_total (the audit events of sql/016) */
enum cm_rollout_event {
    CM_ROLLOUT_CREATED = 0,
    CM_ROLLOUT_STARTED,
    CM_ROLLOUT_STAGE_ADVANCED,
    CM_ROLLOUT_PAUSED,
    CM_ROLLOUT_RESUMED,
    CM_ROLLOUT_ABORTED,
    CM_ROLLOUT_COMPLETED,
    CM_ROLLOUT_DEVICE_RETARGETED,
    CM_ROLLOUT_DEVICE_EXCLUDED,
    CM_ROLLOUT__COUNT
};

/* label result of cmsd_audit_rows_total */
enum cm_audit_result { CM_AUDIT_WRITTEN = 0, CM_AUDIT_DROPPED, CM_AUDIT__COUNT };

/* label result of cmsd_config_reloads_total */
enum cm_reload_result { CM_RELOAD_APPLIED = 0, CM_RELOAD_REFUSED, CM_RELOAD__COUNT };

/* label certificate of cmsd_certificate_expiry_timestamp_seconds */
enum cm_cert { CM_CERT_SERVER = 0, CM_CERT_DEVICE_CA, CM_CERT_OPERATOR_CA, CM_CERT__COUNT };

/* The table, CM__COUNT entries. */
extern const metric_def cms_metric_defs[CM__COUNT];

/* Series of the two-label families. */
static inline unsigned cm_refused(enum cm_listener l, enum cm_refusal r)
{
    return (unsigned)l * CM_REFUSED__COUNT + (unsigned)r;
}
static inline unsigned cm_handshake(enum cm_listener l, enum cm_handshake k)
{
    return (unsigned)l * CM_HANDSHAKE__COUNT + (unsigned)k;
}
static inline unsigned cm_hl7(enum cm_hl7_type t, enum cm_result r)
{
    return (unsigned)t * CM_RESULT__COUNT + (unsigned)r;
}
static inline unsigned cm_est(enum cm_est_op o, enum cm_est_result r)
{
    return (unsigned)o * CM_EST_RESULT__COUNT + (unsigned)r;
}

/*
 * A registry of cms_metric_defs with nshards bound shards (one per worker),
 * installed (metrics_install), with version (static string) in cmsd_build_info,
 * process_start_time_seconds set to now and cmsd_config_last_reload_successful
 * to 1. NULL with a reason in err when out of memory. The caller frees it
 * (metrics_free). Thread: start-up, before the workers.
 */
metrics_registry *cms_metrics_new(unsigned nshards, const char *version, char *err, size_t cap);

/*
 * Sets the gauges read from the process at a scrape: resident memory
 * (/proc/self/statm) and open descriptors (/proc/self/fd). Thread: any.
 */
void cms_metrics_sample_process(void);

#endif
