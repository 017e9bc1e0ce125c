/*
 * config.h - cmsd configuration file.
 *
 * Format: one "key = value" per line; '#' starts a comment; blank lines are
 * ignored; values may be double-quoted (then \" and \\ are escapes). Unknown
 * keys, duplicate keys and malformed values are errors (a typo must not
 * silently fall back to a default). Paths are taken as given (relative to the
 * working directory).
 *
 * The keys (type, default, accepted values, meaning) are one table in
 * server/base/config.c; `cmsd --config-keys` prints it and README's settings
 * table says the same (tests/blackbox/test_config_keys.py checks both ways).
 * Each key is the cms_config field of the same name.
 *
 * Thread: load once at start-up; the struct is read-only afterwards.
 */
#ifndef CMS_CONFIG_H
#define CMS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

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
    char alarm_lane[8]; /* on | off */
    unsigned max_queued_msgs;
    unsigned db_query_timeout_ms;
    unsigned ingest_timeout_ms;
    unsigned db_reconnect_min_ms;
    unsigned db_reconnect_max_ms;
    unsigned retention_days;
    unsigned partitions_ahead_days;
    unsigned device_cache_ttl_s;
    unsigned waveform_retention_hours;
    unsigned waveform_max_samples;
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
    char console_dir[CONFIG_STR]; /* the web console's files (console.h) */
    unsigned events_batch_ms;     /* live events wait this long for more (events.h) */
    unsigned fw_max_image_bytes;
    unsigned fw_download_timeout_s;
    char hl7_app[64];
    char hl7_facility[64];
    char log_level[16];
    char log_format[8];           /* text | json (reloadable) */
    unsigned shutdown_timeout_s;  /* SIGTERM drain bound (reloadable) */
    char metrics[8];              /* on | off */
    char metrics_listen[CONFIG_STR]; /* loopback plaintext /metrics, "" = off */
    char proxy_protocol[8];
    char proxy_allow[CONFIG_STR];
} cms_config;

/*
 * Fills c with every key's default from the table (required keys empty).
 * Returns CMS_OK, or CMS_EINTERNAL (logged) when the table is wrong: a
 * default that does not pass its own key's checks, or a rule naming a key
 * that does not exist (tests/unit/test_config.c).
 */
int config_defaults(cms_config *c);

/*
 * Loads path over the defaults and validates (required keys present, ranges,
 * key file permissions). Returns CMS_OK, or CMS_EINVAL with a message
 * "file:line: reason" in err (cap bytes).
 */
int config_load(cms_config *c, const char *path, char *err, size_t cap);

/*
 * Prints the table of keys to out: a header line, then one line per key in
 * the table's order with its name, type, default ("(required)" when it has
 * none, "\"\"" when it is empty), accepted values ("MIN..MAX", "a|b|c" or
 * "-") and meaning, the first four columns space-aligned and without spaces
 * in them, the meaning to the end of the line.
 */
void config_keys_print(FILE *out);

/*
 * Reload (SIGHUP): the keys whose new value cmsd applies without a restart
 * are tls_cert, tls_key, tls_device_ca, tls_operator_ca, tls_crl (and the
 * files they name, re-read), log_level, log_format and shutdown_timeout_s.
 * config_key_reloadable says whether key is one of them.
 */
bool config_key_reloadable(const char *key);

/*
 * The keys that differ between a and b, comma-separated into out (cap bytes,
 * cut when it does not fit); returns how many. reloadable_keys: the ones a
 * reload applies, else the ones that need a restart (a reload with any of
 * those is refused whole: nothing applied).
 */
size_t config_diff(const cms_config *a, const cms_config *b, bool reloadable_keys, char *out,
                   size_t cap);

#endif
