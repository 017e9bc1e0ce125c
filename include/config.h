/*
 * config.h - cmsd configuration file.
 *
 * Format: one "key = value" per line; '#' starts a comment; blank lines are
 * ignored; values may be double-quoted (then \" and \\ are escapes). Unknown
 * keys, duplicate keys and malformed values are errors (a typo must not
 * silently fall back to a default). Paths are taken as given (relative to the
 * working directory).
 *
 * Keys (default in brackets):
 *   mllp_listen            [127.0.0.1:2575]  HL7 MLLP over TLS listener, host:port ([v6]:port)
 *   https_listen           [127.0.0.1:8443]  HTTPS listener (EST, firmware, admin, health); "" = off;
 *                                            not on mllp_listen's port (same or wildcard host)
 *   workers                [0]     event loops (threads) sharing the listeners via SO_REUSEPORT;
 *                                  0 = one per online CPU (each has its own database connections)
 *   tls_cert               (required) server certificate + intermediates (no root), PEM
 *   tls_key                (required) server private key, PEM; must not be group/world-accessible
 *   tls_device_ca          (required) CA bundle that issues device certificates, PEM;
 *                          each certificate in it is a trust anchor as it is
 *   tls_operator_ca        [""]    CA bundle for operator certificates (admin API)
 *   tls_crl                [""]    CRL file (PEM) checked for device certificates
 *   tls_session_timeout_s  [300]   TLS session ticket/cache lifetime (resumption)
 *   tls_session_cache_size [20480] sessions kept for resumption per listener (above the
 *                                  number of monitors; the oldest go first)
 *   db_conninfo            (required) libpq connection string
 *   db_timezone            [UTC]   zone for HL7 times that carry no UTC offset
 *   db_connect_timeout_s   [60]    at start, give up (exit 1) if the database stays unreachable this long
 *   max_connections        [20000] connections per worker; beyond, new ones are closed at accept
 *   max_frame_bytes        [1048576] largest MLLP frame accepted; larger closes the connection
 *   preauth_buffer_bytes   [16384] input buffered before a peer is authenticated
 *   handshake_timeout_ms   [10000] TLS handshake + device check must finish within this
 *   idle_timeout_ms        [120000] close a connection silent for this long
 *   write_timeout_ms       [30000] close a connection whose output does not drain in this time
 *   max_pending_per_conn   [64]    frames awaiting commit/ACK per connection; then stop reading
 *   max_output_bytes       [1048576] unsent output per connection; beyond, the connection closes
 *   batch_max_msgs         [256]   group commit: flush at this many messages
 *   batch_max_delay_ms     [5]     group commit: or this long after the first queued message
 *   max_queued_msgs        [20000] global ingest backlog; above it every connection stops reading
 *   db_query_timeout_ms    [10000] per SQL statement
 *   ingest_timeout_ms      [30000] a message waiting for the database this long gets AE
 *   db_reconnect_min_ms    [100]   reconnect backoff start
 *   db_reconnect_max_ms    [5000]  reconnect backoff cap
 *   retention_days         [0]     drop observation partitions older than this (0 = keep all)
 *   partitions_ahead_days  [7]     daily observation partitions created ahead
 *   device_cache_ttl_s     [60]    keep a device's "active" check this long (0 = query every connection)
 *   est_ca_cert            [""]    device-issuing CA certificate (PEM) used by EST and the CRL; "" = EST off
 *   est_ca_key             [""]    its private key (mode 0600); required when est_ca_cert is set
 *   est_ca_chain           [""]    chain returned by /cacerts (device CA + root), default tls_device_ca
 *   est_cert_days          [365]   validity of device certificates issued by EST
 *   audit_anchor_interval_s [300]  log the audit chain's head (event audit_anchor) this often
 *                                  when it moved, for `cmsctl audit verify --anchor`; 0 = off
 *   est_anon_per_min       [60]    simpleenroll requests per source address per minute (a bucket of
 *                                  that many, refilled evenly); beyond: 429. 0 = no limit
 *   enroll_token_ttl_s     [86400] default lifetime of an enrollment token (cmsctl may ask less)
 *   crl_next_update_hours  [24]    nextUpdate of the published CRL (re-issued on every revocation
 *                                  and when half of this has passed)
 *   http_max_header_bytes  [16384] HTTP request header section limit (431 beyond)
 *   http_max_body_bytes    [65536] HTTP request body limit (413 beyond)
 *   http_request_timeout_ms [30000] a request must be complete this long after its first byte
 *                                  (uploads included; slow senders are cut)
 *   fw_publisher_keys      [""]    firmware publisher public keys: comma-separated PEM files
 *                                  (Ed25519 or P-256), at most 8; "" = firmware import off
 *   fw_distribution_key    [""]    Ed25519 private key (PEM, mode 0600) that signs device
 *                                  manifests; "" = device firmware endpoints answer 503
 *   fw_distribution_key_next [""]  optional second Ed25519 key for rotation: manifests are
 *                                  signed by both, its public key is published (/fw/v1/keys)
 *   fw_manifest_ttl_s      [3600]  manifest validity (expires_at - issued_at), 60..86400
 *   fw_cache_dir           [var/fw-cache] local cache of images (created mode 0700; every
 *                                  file is re-verified by SHA-256 before it is served)
 *   fw_max_image_bytes     [268435456] largest firmware image accepted by import (the upload
 *                                  body limit of that one operator route)
 *   fw_download_timeout_s  [900]   longest time one image request may take (a peer that stops
 *                                  reading is cut earlier, after write_timeout_ms)
 *   hl7_app                [CMS]   our MSH-3 in ACKs
 *   hl7_facility           [CMS]   our MSH-4 in ACKs
 *   log_level              [info]  debug | info | warn | error
 *   proxy_protocol         [off]   off | v2: every connection starts with a PROXY protocol v2
 *                                  header (HAProxy send-proxy-v2) naming the monitor's address
 *   proxy_allow            [""]    with proxy_protocol = v2 (then required): the proxies'
 *                                  addresses/CIDR blocks; others are closed at accept
 *
 * Thread: load once at start-up; the struct is read-only afterwards.
 */
#ifndef CMS_CONFIG_H
#define CMS_CONFIG_H

#include <stddef.h>

#define CONFIG_STR 512

typedef struct cms_config {
    char mllp_listen[CONFIG_STR];
    char https_listen[CONFIG_STR];
    unsigned workers;
    char tls_cert[CONFIG_STR];
    char tls_key[CONFIG_STR];
    char tls_device_ca[CONFIG_STR];
    char tls_operator_ca[CONFIG_STR];
    char tls_crl[CONFIG_STR];
    unsigned tls_session_timeout_s;
    unsigned tls_session_cache_size;
    char db_conninfo[CONFIG_STR * 2];
    char db_timezone[64];
    unsigned db_connect_timeout_s;
    unsigned max_connections;
    unsigned max_frame_bytes;
    unsigned preauth_buffer_bytes;
    unsigned handshake_timeout_ms;
    unsigned idle_timeout_ms;
    unsigned write_timeout_ms;
    unsigned max_pending_per_conn;
    unsigned max_output_bytes;
    unsigned batch_max_msgs;
    unsigned batch_max_delay_ms;
    unsigned max_queued_msgs;
    unsigned db_query_timeout_ms;
    unsigned ingest_timeout_ms;
    unsigned db_reconnect_min_ms;
    unsigned db_reconnect_max_ms;
    unsigned retention_days;
    unsigned partitions_ahead_days;
    unsigned device_cache_ttl_s;
    char est_ca_cert[CONFIG_STR];
    char est_ca_key[CONFIG_STR];
    char est_ca_chain[CONFIG_STR];
    unsigned est_cert_days;
    unsigned est_anon_per_min;
    unsigned audit_anchor_interval_s;
    unsigned enroll_token_ttl_s;
    unsigned crl_next_update_hours;
    unsigned http_max_header_bytes;
    unsigned http_max_body_bytes;
    unsigned http_request_timeout_ms;
    char fw_publisher_keys[CONFIG_STR * 4];
    char fw_distribution_key[CONFIG_STR];
    char fw_distribution_key_next[CONFIG_STR];
    unsigned fw_manifest_ttl_s;
    char fw_cache_dir[CONFIG_STR];
    unsigned fw_max_image_bytes;
    unsigned fw_download_timeout_s;
    char hl7_app[64];
    char hl7_facility[64];
    char log_level[16];
    char proxy_protocol[8];
    char proxy_allow[CONFIG_STR];
} cms_config;

/* Fills c with the defaults listed above (required paths empty). */
void config_defaults(cms_config *c);

/*
 * Loads path over the defaults and validates (required keys present, ranges,
 * key file permissions). Returns CMS_OK, or CMS_EINVAL with a message
 * "file:line: reason" in err (cap bytes).
 */
int config_load(cms_config *c, const char *path, char *err, size_t cap);

#endif
