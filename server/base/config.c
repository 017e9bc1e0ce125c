/*
 * config.c - "key = value" configuration file.
 *
 * One table (keys[] below) is the source of truth for every key: its type,
 * field in cms_config, accepted values, default and a one-line doc. Parsing,
 * config_defaults, the checks after parsing, the error messages and `cmsd
 * --config-keys` read it; README's settings table is checked against it by
 * tests/blackbox/test_config_keys.py. Adding a key is a field in cms_config,
 * one row here and one in README's table.
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "cms_err.h"
#include "config.h"
#include "log.h"

/* ---- the table ------------------------------------------------------------ */

enum key_type {
    T_STRING,  /* free text */
    T_ADDR,    /* host:port, [v6]:port (parsed when cmsd listens) */
    T_FILE,    /* a file cmsd opens for reading: checked when set */
    T_KEYFILE, /* a private key file: checked when set (regular file, no group/other access) */
    T_FILES,   /* comma-separated files (read and checked where they are loaded) */
    T_DIR,     /* a directory (created where it is used) */
    T_UINT,    /* an unsigned integer in [min, max] */
    T_ENUM,    /* one of allowed (K_ICASE: in any case) */
};

static const char *const type_names[] = {
    [T_STRING] = "string", [T_ADDR] = "host:port", [T_FILE] = "file", [T_KEYFILE] = "key-file",
    [T_FILES] = "files",   [T_DIR] = "dir",        [T_UINT] = "uint", [T_ENUM] = "enum",
};

struct config_key {
    const char *name;
    enum key_type type;
    size_t off;
    size_t size;         /* string types: the field's size (longest value: size - 1) */
    unsigned min, max;   /* T_UINT: accepted range */
    const char *allowed; /* T_ENUM: the values, '|'-separated */
    const char *def;     /* default, as it would be written in the file; NULL = required */
    const char *with;    /* used (and checked) only when this other key is set */
    const char *needs;   /* setting this key without that one is an error */
    unsigned flags;      /* K_* */
    const char *doc;     /* one line */
};

enum {
    K_NONEMPTY = 1 << 0,      /* has a default, and must not be set to "" */
    K_REQUIRED_WITH = 1 << 1, /* must be set when .with is */
    K_ICASE = 1 << 2,         /* T_ENUM: in any case */
    K_RELOAD = 1 << 3,        /* applied by SIGHUP (config_diff); every other key needs a restart */
};

#define FIELD(k) (((cms_config *)0)->k)
/* Compile-time check inside an initializer: 0, or an error when cond is false. */
#define CHECK0(cond) (0 * sizeof(char[(cond) ? 1 : -1]))
/* A string-typed key: its field is a char array. Then optional designated
 * initializers (.with, .needs). */
#define KS(k, t, d, docline, ...)                                                                  \
    {                                                                                              \
        .name = #k, .type = t,                                                                     \
        .off = offsetof(cms_config, k) +                                                           \
               CHECK0(__builtin_types_compatible_p(__typeof__(FIELD(k)), char[sizeof(FIELD(k))])), \
        .size = sizeof(FIELD(k)), .def = d, .doc = docline, __VA_ARGS__                            \
    }
/* An unsigned key in [lo, hi]: its field is an unsigned. Then optional designated
 * initializers (.flags). */
#define KU(k, lo, hi, d, docline, ...)                                                             \
    {                                                                                              \
        .name = #k, .type = T_UINT,                                                                \
        .off = offsetof(cms_config, k) +                                                           \
               CHECK0(__builtin_types_compatible_p(__typeof__(FIELD(k)), unsigned)),               \
        .min = lo, .max = hi, .def = d, .doc = docline, __VA_ARGS__                                \
    }

/* In the order of README's table (and of the checks after parsing). */
static const struct config_key keys[] = {
    /* listeners */
    KS(mllp_listen, T_ADDR, "127.0.0.1:2575", "HL7 MLLP over TLS listener, host:port ([v6]:port)",
       .flags = K_NONEMPTY),
    KS(https_listen, T_ADDR, "127.0.0.1:8443",
       "HTTPS listener (EST, firmware, admin, health); \"\" = off; not on mllp_listen's port"),
    KU(workers, 0, 64, "0", "event loops (threads) sharing the listeners; 0 = one per online CPU"),
    /* TLS */
    KS(tls_cert, T_FILE, NULL, "server certificate, then its intermediate CAs (not the root), PEM",
       .flags = K_RELOAD),
    KS(tls_key, T_KEYFILE, NULL, "server private key, PEM", .flags = K_RELOAD),
    KS(tls_device_ca, T_FILE, NULL,
       "CA bundle that issues device certificates, PEM; each one a trust anchor",
       .flags = K_RELOAD),
    KS(tls_operator_ca, T_FILE, "", "CA bundle for operator certificates (admin API), PEM",
       .flags = K_RELOAD),
    KS(tls_crl, T_FILE, "",
       "CRL file (PEM): the device CA's CRL, signed by it, not past nextUpdate", .flags = K_RELOAD),
    KU(tls_session_timeout_s, 0, 86400, "300",
       "TLS session lifetime for resumption; 0 = always a full handshake"),
    KU(tls_session_cache_size, 16, 10000000, "20480",
       "sessions kept for resumption per listener (the oldest go first)"),
    /* database */
    KS(db_conninfo, T_STRING, NULL, "libpq connection string"),
    KS(db_timezone, T_STRING, "UTC", "zone for HL7 times that carry no UTC offset"),
    KU(db_connect_timeout_s, 1, 3600, "60",
       "at start, give up (exit 1) if the database stays unreachable this long"),
    /* connections */
    KU(max_connections, 1, 1000000, "20000",
       "connections per worker; beyond, new ones are closed at accept"),
    KU(max_frame_bytes, 1024, 64u << 20, "1048576",
       "largest MLLP frame accepted; larger closes the connection"),
    KU(preauth_buffer_bytes, 1024, 1u << 20, "16384",
       "input buffered before a peer is authenticated"),
    KU(handshake_timeout_ms, 100, 600000, "10000",
       "TLS handshake + device check must finish within this"),
    KU(idle_timeout_ms, 100, 86400000, "120000", "close a connection silent for this long"),
    KU(write_timeout_ms, 100, 600000, "30000",
       "close a connection whose output does not drain in this time"),
    KU(max_pending_per_conn, 1, 100000, "64",
       "frames awaiting commit/ACK per connection; then stop reading"),
    KU(max_output_bytes, 4096, 256u << 20, "1048576",
       "unsent output per connection; beyond, the connection closes"),
    /* ingest */
    KU(batch_max_msgs, 1, 100000, "256", "group commit: flush at this many messages"),
    KU(batch_max_delay_ms, 0, 10000, "5",
       "group commit: or this long after the first queued message"),
    KS(alarm_lane, T_ENUM, "on",
       "messages with an alarm go at once on a second database connection per worker; off: "
       "in the numerics' batches",
       .allowed = "on|off"),
    KU(max_queued_msgs, 1, 10000000, "20000",
       "global ingest backlog; above it every connection stops reading"),
    KU(db_query_timeout_ms, 100, 600000, "10000", "per SQL statement"),
    KU(ingest_timeout_ms, 100, 3600000, "30000",
       "a message waiting for the database this long gets AE"),
    KU(db_reconnect_min_ms, 10, 600000, "100",
       "reconnect backoff start (at most db_reconnect_max_ms)"),
    KU(db_reconnect_max_ms, 10, 600000, "5000", "reconnect backoff cap"),
    /* retention, registry cache, audit */
    KU(retention_days, 0, 36500, "0", "drop observation partitions older than this; 0 = keep all"),
    KU(partitions_ahead_days, 1, 365, "7", "daily observation partitions created ahead"),
    KU(waveform_retention_hours, 0, 24 * 3650, "72",
       "drop waveform blocks (hourly partitions) older than this; 0 = keep all"),
    KU(waveform_max_samples, 1, 1000000, "5000",
       "a waveform block (one NA row, one MA channel) with more samples gets AR"),
    KU(device_cache_ttl_s, 0, 3600, "60",
       "keep a device's \"active\" check this long; 0 = query every connection"),
    KU(audit_anchor_interval_s, 0, 86400, "300",
       "log the audit chain's head (event=audit_anchor) this often while it moves; 0 = off"),
    /* enrollment */
    KS(est_ca_cert, T_FILE, "",
       "device-issuing CA certificate (PEM) for EST and the CRL; \"\" = EST off"),
    KS(est_ca_key, T_KEYFILE, "", "its private key, PEM", .with = "est_ca_cert",
       .flags = K_REQUIRED_WITH),
    KS(est_ca_chain, T_FILE, "",
       "chain returned by /cacerts (device CA + root); \"\" = tls_device_ca",
       .with = "est_ca_cert"),
    KU(est_cert_days, 1, 3650, "365", "validity of device certificates issued by EST"),
    KU(est_anon_per_min, 0, 1000000, "60",
       "simpleenroll requests per source address per minute (429 beyond); 0 = no limit"),
    KU(enroll_token_ttl_s, 60, 30 * 86400, "86400",
       "default lifetime of an enrollment token (cmsctl may ask less)"),
    KU(crl_next_update_hours, 1, 24 * 30, "24",
       "nextUpdate of the published CRL (re-issued on revocation and at half of this)"),
    /* HTTP */
    KU(http_max_header_bytes, 1024, 1u << 20, "16384",
       "HTTP request header section limit (431 beyond)"),
    KU(http_max_body_bytes, 1024, 64u << 20, "65536", "HTTP request body limit (413 beyond)"),
    KU(http_request_timeout_ms, 100, 3600000, "30000",
       "a request must be complete this long after its first byte"),
    /* firmware */
    KS(fw_publisher_keys, T_FILES, "",
       "publisher public keys (Ed25519, P-256; PEM), comma-separated, at most 8; \"\" = no import"),
    KS(fw_distribution_key, T_KEYFILE, "",
       "Ed25519 private key (PEM) that signs device manifests; \"\" = device firmware off"),
    KS(fw_distribution_key_next, T_KEYFILE, "",
       "second Ed25519 key for a rotation: manifests signed by both",
       .needs = "fw_distribution_key"),
    KU(fw_manifest_ttl_s, 60, 86400, "3600", "manifest validity (expires_at - issued_at)"),
    KS(fw_cache_dir, T_DIR, "var/fw-cache",
       "local cache of images (created mode 0700; re-verified before served)"),
    KU(fw_max_image_bytes, 1024, 1u << 30, "268435456",
       "largest firmware image accepted by import"),
    KU(fw_download_timeout_s, 1, 86400, "900", "longest time one image request may take"),
    /* web console */
    KS(console_dir, T_STRING, "/usr/share/cms/console",
       "the web console's static files, read at start (missing: no console, the API stays)"),
    KU(events_batch_ms, 0, 1000, "50",
       "live event streams: new events wait this long for more, then one write per stream; "
       "0 = written at once"),
    /* HL7, logging */
    KS(hl7_app, T_STRING, "CMS", "our MSH-3 in ACKs"),
    KS(hl7_facility, T_STRING, "CMS", "our MSH-4 in ACKs"),
    KS(log_level, T_ENUM, "info", "log lines of this level and above",
       .allowed = "debug|info|warn|error", .flags = K_ICASE | K_RELOAD),
    KS(log_format, T_ENUM, "text", "one line per event: text (logfmt) or json (same fields)",
       .allowed = "text|json", .flags = K_RELOAD),
    /* operations (docs/operations.md) */
    KU(shutdown_timeout_s, 1, 3600, "30",
       "SIGTERM drain bound: what is still open then is closed unacknowledged", .flags = K_RELOAD),
    KS(metrics, T_ENUM, "on", "the metrics registry and GET /metrics (Prometheus); off: 404",
       .allowed = "on|off"),
    KS(metrics_listen, T_ADDR, "",
       "loopback-only plaintext /metrics, /readyz, /healthz for a local scraper; \"\" = off"),
    /* behind a load balancer */
    KS(proxy_protocol, T_ENUM, "off",
       "v2: every connection starts with a PROXY v2 header naming the peer", .allowed = "off|v2"),
    KS(proxy_allow, T_STRING, "",
       "the load balancers' addresses or CIDR blocks, comma-separated; required with v2"),
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

static const struct config_key *key_find(const char *name)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

static const char *str_value(const cms_config *c, const struct config_key *k)
{
    return (const char *)c + k->off;
}

/* ---- parsing ----------------------------------------------------------- */

/* "a, b, c or d" from "a|b|c|d" into out. */
static void allowed_text(const char *allowed, char *out, size_t cap)
{
    size_t n = 0, total = strlen(allowed);
    out[0] = '\0';
    for (const char *p = allowed; *p;) {
        size_t len = strcspn(p, "|");
        const char *sep = p == allowed ? "" : p + len == allowed + total ? " or " : ", ";
        int w = snprintf(out + n, cap - n, "%s%.*s", sep, (int)len, p);
        if (w < 0 || (size_t)w >= cap - n)
            return;
        n += (size_t)w;
        p += len + (p[len] == '|');
    }
}

/* v is one of "a|b|c" (icase: in any case). */
static bool allowed_has(const char *allowed, const char *v, bool icase)
{
    size_t vlen = strlen(v);
    for (const char *p = allowed; *p;) {
        size_t len = strcspn(p, "|");
        if (len == vlen && (icase ? strncasecmp(p, v, len) : strncmp(p, v, len)) == 0)
            return true;
        p += len + (p[len] == '|');
    }
    return false;
}

static int set_value(cms_config *c, const struct config_key *k, const char *v, char *err,
                     size_t cap)
{
    char *field = (char *)c + k->off;
    if (k->type == T_UINT) {
        char *end;
        errno = 0;
        unsigned long n = strtoul(v, &end, 10);
        if (errno || end == v || *end != '\0' || *v == '-' || n < k->min || n > k->max) {
            snprintf(err, cap, "%s must be an integer in [%u, %u], got \"%s\"", k->name, k->min,
                     k->max, v);
            return CMS_EINVAL;
        }
        *(unsigned *)(void *)field = (unsigned)n;
        return CMS_OK;
    }
    if (k->type == T_ENUM && !allowed_has(k->allowed, v, k->flags & K_ICASE)) {
        char list[256];
        allowed_text(k->allowed, list, sizeof(list));
        snprintf(err, cap, "%s must be %s", k->name, list);
        return CMS_EINVAL;
    }
    size_t len = strlen(v);
    if (len >= k->size) {
        snprintf(err, cap, "value of %s is too long (max %zu bytes)", k->name, k->size - 1);
        return CMS_EINVAL;
    }
    memcpy(field, v, len + 1);
    return CMS_OK;
}

int config_defaults(cms_config *c)
{
    memset(c, 0, sizeof(*c));
    for (size_t i = 0; i < NKEYS; i++) {
        const struct config_key *k = &keys[i];
        char why[256];
        if (k->def && set_value(c, k, k->def, why, sizeof(why)) != CMS_OK) {
            log_error("config_table", NULL, NULL, "default of %s: %s", k->name, why);
            return CMS_EINTERNAL;
        }
        if ((k->with && !key_find(k->with)) || (k->needs && !key_find(k->needs))) {
            log_error("config_table", NULL, NULL, "%s refers to a key that does not exist",
                      k->name);
            return CMS_EINTERNAL;
        }
    }
    return CMS_OK;
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
        snprintf(err, cap, "%s %s: mode %03o is accessible by group/others; chmod 600 it", key,
                 path, (unsigned)(st.st_mode & 0777));
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

/* The checks that need the whole file: required keys, relations, files. */
static int validate(const cms_config *c, char *err, size_t cap)
{
    for (size_t i = 0; i < NKEYS; i++) {
        const struct config_key *k = &keys[i];
        if (k->type == T_UINT || str_value(c, k)[0])
            continue;
        if (!k->def) {
            snprintf(err, cap, "%s is required", k->name);
            return CMS_EINVAL;
        }
        if (k->flags & K_NONEMPTY) {
            snprintf(err, cap, "%s must not be empty", k->name);
            return CMS_EINVAL;
        }
    }
    /* Rules the table's columns do not say. */
    if (c->db_reconnect_min_ms > c->db_reconnect_max_ms) {
        snprintf(err, cap, "db_reconnect_min_ms must not exceed db_reconnect_max_ms");
        return CMS_EINVAL;
    }
    /* The allowlist's syntax is checked by cmsd.c with proxy_allowlist_check (proto). */
    if (strcmp(c->proxy_protocol, "v2") == 0 && !c->proxy_allow[0]) {
        snprintf(err, cap, "proxy_allow is required with proxy_protocol = v2 (the addresses "
                           "of the load balancers)");
        return CMS_EINVAL;
    }
    for (size_t i = 0; i < NKEYS; i++) {
        const struct config_key *k = &keys[i];
        if (k->type == T_UINT)
            continue;
        const char *v = str_value(c, k);
        if (k->with && !str_value(c, key_find(k->with))[0])
            continue; /* not used */
        if (!v[0]) {
            if (k->flags & K_REQUIRED_WITH) {
                snprintf(err, cap, "%s is required when %s is set", k->name, k->with);
                return CMS_EINVAL;
            }
            continue;
        }
        int rc = CMS_OK;
        if (k->type == T_FILE)
            rc = check_readable(k->name, v, err, cap);
        else if (k->type == T_KEYFILE)
            rc = check_key_file(k->name, v, err, cap);
        if (rc != CMS_OK)
            return rc;
        if (k->needs && !str_value(c, key_find(k->needs))[0]) {
            snprintf(err, cap, "%s needs %s", k->name, k->needs);
            return CMS_EINVAL;
        }
    }
    return CMS_OK;
}

int config_load(cms_config *c, const char *path, char *err, size_t cap)
{
    char line[4096], where[600];
    unsigned seen[NKEYS] = {0};
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
        const struct config_key *k = key_find(key);
        if (!k) {
            snprintf(err, cap, "%s: unknown key \"%s\"", where, key);
            rc = CMS_EINVAL;
            goto cleanup;
        }
        if (seen[k - keys]++) {
            snprintf(err, cap, "%s: duplicate key \"%s\"", where, key);
            rc = CMS_EINVAL;
            goto cleanup;
        }
        char why[512];
        if (set_value(c, k, val, why, sizeof(why)) != CMS_OK) {
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

/* ---- the table, printed ------------------------------------------------------ */

static void default_text(const struct config_key *k, char *out, size_t cap)
{
    if (!k->def)
        snprintf(out, cap, "(required)");
    else if (!k->def[0])
        snprintf(out, cap, "\"\"");
    else
        snprintf(out, cap, "%s", k->def);
}

static void accepted_text(const struct config_key *k, char *out, size_t cap)
{
    if (k->type == T_UINT)
        snprintf(out, cap, "%u..%u", k->min, k->max);
    else if (k->type == T_ENUM)
        snprintf(out, cap, "%s", k->allowed);
    else
        snprintf(out, cap, "-");
}

void config_keys_print(FILE *out)
{
    static const char *const head[] = {"key", "type", "default", "accepted"};
    int w[4] = {0};
    for (int j = 0; j < 4; j++)
        w[j] = (int)strlen(head[j]);
    for (size_t i = 0; i < NKEYS; i++) {
        char d[CONFIG_STR], a[64];
        default_text(&keys[i], d, sizeof(d));
        accepted_text(&keys[i], a, sizeof(a));
        const char *col[4] = {keys[i].name, type_names[keys[i].type], d, a};
        for (int j = 0; j < 4; j++)
            if ((int)strlen(col[j]) > w[j])
                w[j] = (int)strlen(col[j]);
    }
    fprintf(out, "%-*s  %-*s  %-*s  %-*s  %s\n", w[0], head[0], w[1], head[1], w[2], head[2], w[3],
            head[3], "meaning");
    for (size_t i = 0; i < NKEYS; i++) {
        const struct config_key *k = &keys[i];
        char d[CONFIG_STR], a[64];
        default_text(k, d, sizeof(d));
        accepted_text(k, a, sizeof(a));
        fprintf(out, "%-*s  %-*s  %-*s  %-*s  %s", w[0], k->name, w[1], type_names[k->type], w[2],
                d, w[3], a, k->doc);
        if (k->flags & K_NONEMPTY)
            fprintf(out, "; not \"\"");
        if (k->with)
            fprintf(out, "; used when %s is set%s", k->with,
                    k->flags & K_REQUIRED_WITH ? ", then required" : "");
        if (k->needs)
            fprintf(out, "; needs %s", k->needs);
        if (k->type == T_KEYFILE)
            fprintf(out, "; no group/other access");
        if (k->flags & K_RELOAD)
            fprintf(out, "; reloadable (SIGHUP)");
        fputc('\n', out);
    }
}

/* ---- reload --------------------------------------------------------------- */

bool config_key_reloadable(const char *key)
{
    const struct config_key *k = key_find(key);
    return k && (k->flags & K_RELOAD);
}

size_t config_diff(const cms_config *a, const cms_config *b, bool reloadable_keys, char *out,
                   size_t cap)
{
    size_t n = 0, pos = 0;
    if (cap)
        out[0] = '\0';
    for (size_t i = 0; i < NKEYS; i++) {
        const struct config_key *k = &keys[i];
        bool same = k->type == T_UINT
                        ? *(const unsigned *)((const char *)a + k->off) ==
                              *(const unsigned *)((const char *)b + k->off)
                        : strcmp(str_value(a, k), str_value(b, k)) == 0;
        if (same || ((k->flags & K_RELOAD) != 0) != reloadable_keys)
            continue;
        n++;
        int w = snprintf(out + pos, cap > pos ? cap - pos : 0, "%s%s", n > 1 ? ", " : "", k->name);
        if (w > 0 && pos + (size_t)w < cap)
            pos += (size_t)w;
    }
    return n;
}
