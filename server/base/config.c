/*
 * config.c - "key = value" configuration file (see config.h for the keys).
 *
 * Table-driven: each key names its type, offset in cms_config and range, so
 * that adding a key is one line here and one in config.h's comment.
 */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cms_err.h"
#include "config.h"
#include "log.h"

enum opt_type { OPT_STR, OPT_UINT };

struct opt {
    const char *key;
    enum opt_type type;
    size_t off;
    size_t size;       /* OPT_STR: buffer size */
    unsigned min, max; /* OPT_UINT: accepted range */
};

#define S(k) {#k, OPT_STR, offsetof(cms_config, k), sizeof(((cms_config *)0)->k), 0, 0}
#define U(k, lo, hi) {#k, OPT_UINT, offsetof(cms_config, k), 0, lo, hi}

static const struct opt opts[] = {
    S(mllp_listen),
    S(https_listen),
    U(workers, 0, 64),
    S(tls_cert),
    S(tls_key),
    S(tls_device_ca),
    S(tls_operator_ca),
    S(tls_crl),
    U(tls_session_timeout_s, 0, 86400),
    U(tls_session_cache_size, 16, 10000000),
    S(db_conninfo),
    S(db_timezone),
    U(db_connect_timeout_s, 1, 3600),
    U(max_connections, 1, 1000000),
    U(max_frame_bytes, 1024, 64u << 20),
    U(preauth_buffer_bytes, 1024, 1u << 20),
    U(handshake_timeout_ms, 100, 600000),
    U(idle_timeout_ms, 100, 86400000),
    U(write_timeout_ms, 100, 600000),
    U(max_pending_per_conn, 1, 100000),
    U(max_output_bytes, 4096, 256u << 20),
    U(batch_max_msgs, 1, 100000),
    U(batch_max_delay_ms, 0, 10000),
    U(max_queued_msgs, 1, 10000000),
    U(db_query_timeout_ms, 100, 600000),
    U(ingest_timeout_ms, 100, 3600000),
    U(db_reconnect_min_ms, 10, 600000),
    U(db_reconnect_max_ms, 10, 600000),
    U(retention_days, 0, 36500),
    U(partitions_ahead_days, 1, 365),
    U(device_cache_ttl_s, 0, 3600),
    S(est_ca_cert),
    S(est_ca_key),
    S(est_ca_chain),
    U(est_cert_days, 1, 3650),
    U(est_anon_per_min, 0, 1000000),
    U(audit_anchor_interval_s, 0, 86400),
    U(enroll_token_ttl_s, 60, 30 * 86400),
    U(crl_next_update_hours, 1, 24 * 30),
    U(http_max_header_bytes, 1024, 1u << 20),
    U(http_max_body_bytes, 1024, 64u << 20),
    U(http_request_timeout_ms, 100, 3600000),
    S(fw_publisher_keys),
    S(fw_distribution_key),
    S(fw_distribution_key_next),
    U(fw_manifest_ttl_s, 60, 86400),
    S(fw_cache_dir),
    U(fw_max_image_bytes, 1024, 1u << 30),
    U(fw_download_timeout_s, 1, 86400),
    S(hl7_app),
    S(hl7_facility),
    S(log_level),
    S(proxy_protocol),
    S(proxy_allow),
};

void config_defaults(cms_config *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->mllp_listen, sizeof(c->mllp_listen), "127.0.0.1:2575");
    snprintf(c->https_listen, sizeof(c->https_listen), "127.0.0.1:8443");
    c->workers = 0; /* one per core */
    c->tls_session_timeout_s = 300;
    c->tls_session_cache_size = 20480;
    snprintf(c->db_timezone, sizeof(c->db_timezone), "UTC");
    c->db_connect_timeout_s = 60;
    c->max_connections = 20000;
    c->max_frame_bytes = 1u << 20;
    c->preauth_buffer_bytes = 16384;
    c->handshake_timeout_ms = 10000;
    c->idle_timeout_ms = 120000;
    c->write_timeout_ms = 30000;
    c->max_pending_per_conn = 64;
    c->max_output_bytes = 1u << 20;
    c->batch_max_msgs = 256;
    c->batch_max_delay_ms = 5;
    c->max_queued_msgs = 20000;
    c->db_query_timeout_ms = 10000;
    c->ingest_timeout_ms = 30000;
    c->db_reconnect_min_ms = 100;
    c->db_reconnect_max_ms = 5000;
    c->retention_days = 0;
    c->partitions_ahead_days = 7;
    c->device_cache_ttl_s = 60;
    c->est_cert_days = 365;
    c->est_anon_per_min = 60;
    c->audit_anchor_interval_s = 300;
    c->enroll_token_ttl_s = 86400;
    c->crl_next_update_hours = 24;
    c->http_max_header_bytes = 16384;
    c->http_max_body_bytes = 65536;
    c->http_request_timeout_ms = 30000;
    c->fw_manifest_ttl_s = 3600;
    snprintf(c->fw_cache_dir, sizeof(c->fw_cache_dir), "var/fw-cache");
    c->fw_max_image_bytes = 256u << 20;
    c->fw_download_timeout_s = 900;
    snprintf(c->hl7_app, sizeof(c->hl7_app), "CMS");
    snprintf(c->hl7_facility, sizeof(c->hl7_facility), "CMS");
    snprintf(c->log_level, sizeof(c->log_level), "info");
    snprintf(c->proxy_protocol, sizeof(c->proxy_protocol), "off");
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

/* Unquotes a "..." value in place; returns NULL when malformed. */
static char *unquote(char *v)
{
    if (*v != '"')
        return v;
    char *out = v, *in = v + 1;
    for (; *in && *in != '"'; in++) {
        if (*in == '\\' && (in[1] == '"' || in[1] == '\\'))
            in++;
        *out++ = *in;
    }
    if (*in != '"' || *trim(in + 1) != '\0')
        return NULL;
    *out = '\0';
    return v;
}

static int set_opt(cms_config *c, const struct opt *o, const char *v, char *err, size_t cap)
{
    char *field = (char *)c + o->off;
    if (o->type == OPT_STR) {
        if (strlen(v) >= o->size) {
            snprintf(err, cap, "value of %s is too long (max %zu bytes)", o->key, o->size - 1);
            return CMS_EINVAL;
        }
        memcpy(field, v, strlen(v) + 1);
        return CMS_OK;
    }
    char *end;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (errno || end == v || *end != '\0' || *v == '-' || n < o->min || n > o->max) {
        snprintf(err, cap, "%s must be an integer in [%u, %u], got \"%s\"", o->key, o->min,
                 o->max, v);
        return CMS_EINVAL;
    }
    *(unsigned *)(void *)field = (unsigned)n;
    return CMS_OK;
}

/* The private key must exist, be a regular file and not be readable by others. */
static int check_key_file(const char *key, const char *path, char *err, size_t cap)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, cap, "%s %s: %s", key, path, strerror(errno));
        return CMS_EINVAL;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, cap, "%s %s: not a regular file", key, path);
        return CMS_EINVAL;
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        snprintf(err, cap, "%s %s: mode %03o is accessible by group/others; chmod 600 it",
                 key, path, (unsigned)(st.st_mode & 0777));
        return CMS_EINVAL;
    }
    return CMS_OK;
}

static int check_readable(const char *key, const char *path, char *err, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, cap, "%s %s: %s", key, path, strerror(errno));
        return CMS_EINVAL;
    }
    fclose(f);
    return CMS_OK;
}

static int validate(const cms_config *c, char *err, size_t cap)
{
    static const char *const required[] = {"tls_cert", "tls_key", "tls_device_ca", "db_conninfo"};
    const char *vals[] = {c->tls_cert, c->tls_key, c->tls_device_ca, c->db_conninfo};
    for (size_t i = 0; i < 4; i++) {
        if (vals[i][0] == '\0') {
            snprintf(err, cap, "%s is required", required[i]);
            return CMS_EINVAL;
        }
    }
    if (c->mllp_listen[0] == '\0') {
        snprintf(err, cap, "mllp_listen must not be empty");
        return CMS_EINVAL;
    }
    enum log_level lvl;
    if (log_level_parse(c->log_level, &lvl) != CMS_OK) {
        snprintf(err, cap, "log_level must be debug, info, warn or error");
        return CMS_EINVAL;
    }
    if (strcmp(c->proxy_protocol, "off") != 0 && strcmp(c->proxy_protocol, "v2") != 0) {
        snprintf(err, cap, "proxy_protocol must be off or v2");
        return CMS_EINVAL;
    }
    /* The allowlist's syntax is checked by cmsd.c with proxy_allowlist_check (proto). */
    if (strcmp(c->proxy_protocol, "v2") == 0 && !c->proxy_allow[0]) {
        snprintf(err, cap, "proxy_allow is required with proxy_protocol = v2 (the addresses "
                           "of the load balancers)");
        return CMS_EINVAL;
    }
    if (c->db_reconnect_min_ms > c->db_reconnect_max_ms) {
        snprintf(err, cap, "db_reconnect_min_ms must not exceed db_reconnect_max_ms");
        return CMS_EINVAL;
    }
    int rc;
    if ((rc = check_readable("tls_cert", c->tls_cert, err, cap)) != CMS_OK ||
        (rc = check_key_file("tls_key", c->tls_key, err, cap)) != CMS_OK ||
        (rc = check_readable("tls_device_ca", c->tls_device_ca, err, cap)) != CMS_OK)
        return rc;
    if (c->tls_operator_ca[0] &&
        (rc = check_readable("tls_operator_ca", c->tls_operator_ca, err, cap)) != CMS_OK)
        return rc;
    if (c->tls_crl[0] && (rc = check_readable("tls_crl", c->tls_crl, err, cap)) != CMS_OK)
        return rc;
    if (c->est_ca_cert[0]) {
        if (!c->est_ca_key[0]) {
            snprintf(err, cap, "est_ca_key is required when est_ca_cert is set");
            return CMS_EINVAL;
        }
        if ((rc = check_readable("est_ca_cert", c->est_ca_cert, err, cap)) != CMS_OK ||
            (rc = check_key_file("est_ca_key", c->est_ca_key, err, cap)) != CMS_OK)
            return rc;
        if (c->est_ca_chain[0] &&
            (rc = check_readable("est_ca_chain", c->est_ca_chain, err, cap)) != CMS_OK)
            return rc;
    }
    if (c->fw_distribution_key[0] &&
        (rc = check_key_file("fw_distribution_key", c->fw_distribution_key, err, cap)) != CMS_OK)
        return rc;
    if (c->fw_distribution_key_next[0] &&
        (rc = check_key_file("fw_distribution_key_next", c->fw_distribution_key_next, err,
                             cap)) != CMS_OK)
        return rc;
    if (c->fw_distribution_key_next[0] && !c->fw_distribution_key[0]) {
        snprintf(err, cap, "fw_distribution_key_next needs fw_distribution_key");
        return CMS_EINVAL;
    }
    return CMS_OK;
}

int config_load(cms_config *c, const char *path, char *err, size_t cap)
{
    char line[4096], where[600];
    unsigned seen[sizeof(opts) / sizeof(opts[0])] = {0};
    int rc = CMS_OK;
    unsigned lineno = 0;
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, cap, "%s: %s", path, strerror(errno));
        return CMS_EINVAL;
    }
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        snprintf(where, sizeof(where), "%s:%u", path, lineno);
        if (!strchr(line, '\n') && !feof(f)) {
            snprintf(err, cap, "%s: line too long", where);
            rc = CMS_EINVAL;
            goto cleanup;
        }
        char *s = trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, cap, "%s: expected \"key = value\"", where);
            rc = CMS_EINVAL;
            goto cleanup;
        }
        *eq = '\0';
        char *key = trim(s);
        char *val = trim(eq + 1);
        if (*val != '"') {
            char *hash = strstr(val, " #");
            if (hash)
                *hash = '\0', val = trim(val);
        }
        if (!(val = unquote(val))) {
            snprintf(err, cap, "%s: unterminated quoted value for %s", where, key);
            rc = CMS_EINVAL;
            goto cleanup;
        }
        size_t i;
        for (i = 0; i < sizeof(opts) / sizeof(opts[0]); i++)
            if (strcmp(opts[i].key, key) == 0)
                break;
        if (i == sizeof(opts) / sizeof(opts[0])) {
            snprintf(err, cap, "%s: unknown key \"%s\"", where, key);
            rc = CMS_EINVAL;
            goto cleanup;
        }
        if (seen[i]++) {
            snprintf(err, cap, "%s: duplicate key \"%s\"", where, key);
            rc = CMS_EINVAL;
            goto cleanup;
        }
        char why[512];
        if (set_opt(c, &opts[i], val, why, sizeof(why)) != CMS_OK) {
            snprintf(err, cap, "%s: %s", where, why);
            rc = CMS_EINVAL;
            goto cleanup;
        }
    }
    if (ferror(f)) {
        snprintf(err, cap, "%s: read error", path);
        rc = CMS_EINVAL;
        goto cleanup;
    }
    char why[1024];
    if (validate(c, why, sizeof(why)) != CMS_OK) {
        snprintf(err, cap, "%s: %s", path, why);
        rc = CMS_EINVAL;
    }
cleanup:
    fclose(f);
    return rc;
}
