/*
 * revocation.c - revocation that bites: device revoke/decommission and
 * certificate revoke (operator API), the cms_revocation fan-out that closes
 * live connections on every instance, and the CRL.
 *
 * API (JSON; errors {"error","detail"}):
 *   POST /api/v1/devices/:serial/revoke         role admin
 *     body {"reason": "keyCompromise"} (optional: unspecified, keyCompromise,
 *     affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn;
 *     the words stolen, lost, compromised (= keyCompromise) and retired
 *     (= cessationOfOperation); any case. The RFC 5280 name is what is stored,
 *     audited, put on the CRL and answered)
 *     200 {"serial", "status": "revoked", "previous_status", "reason",
 *          "certs_revoked", "tokens_revoked", "crl_number"}
 *     404 unknown device; 409 already revoked or decommissioned; 400 bad reason
 *     (the detail lists the accepted names; audited as <action>_refused).
 *   POST /api/v1/devices/:serial/decommission   role admin, no body
 *     200 as above with "status": "decommissioned" (also from revoked).
 *   POST /api/v1/certs/:fingerprint/revoke      role admin, body as revoke
 *     fingerprint: SHA-256 of the DER, 64 hex digits (colons allowed).
 *     200 {"fingerprint", "serial", "cert_serial", "reason", "revoked_at", "crl_number"}
 *     404 unknown certificate; 409 already revoked.
 *   GET /crl      the CRL of the device CA, DER (application/pkix-crl)
 *   GET /crl.pem  the same, PEM (application/x-pem-file)
 *
 * Sequence of a revocation: the SQL function (one transaction: status,
 * certificates, unused tokens, audit row, pg_notify('cms_revocation',
 * serial)); then the CRL is regenerated (cms.crl_prepare -> pki_crl_build
 * with the CA key -> cms.crl_publish) and only then the operator gets 200,
 * so a CRL fetched after the answer lists the certificate ("crl_number"
 * null if this instance has no CA key or the CRL step failed; the next GET
 * /crl regenerates it, since it is stale).
 *
 * Fan-out: every worker of every cmsd LISTENs on cms_revocation. A
 * notification carries a serial: every connection (MLLP and HTTPS) whose
 * identity is that serial is closed at once. After a reconnect of the store
 * (payload NULL, notifications may be lost) every live device connection is
 * re-checked with cms.connections_recheck (device status + certificate
 * fingerprint) and those no longer allowed are closed.
 *
 * CRL: stored in cms.crl so that every instance serves the same one;
 * regenerated on every revocation, supersession (re-enrollment) and, on
 * demand, when GET finds it older than half of crl_next_update_hours or
 * older than the newest revocation (sql/005_crl_freshness.sql). cRLNumber
 * comes from a sequence; the highest number wins when instances race.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "cms_err.h"
#include "est_int.h"
#include "log.h"

static const char revoke_sql[] =
    "SELECT previous_status, certs_revoked, tokens_revoked FROM cms.device_revoke($1, $2, $3, $4)";
static const char decommission_sql[] =
    "SELECT previous_status, certs_revoked, tokens_revoked"
    " FROM cms.device_decommission($1, $2, $3)";
static const char cert_revoke_sql[] =
    "SELECT serial, cert_serial,"
    " to_char(revoked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    " FROM cms.cert_revoke($1, $2, $3, $4)";
static const char prepare_sql[] =
    "SELECT crl_number, this_update_epoch, serial_hex, revoked_epoch, reason_code, prepared_at"
    " FROM cms.crl_prepare()";
static const char publish_sql[] =
    "SELECT cms.crl_publish($1::bigint, $2::bigint, $3::bigint, $4::bytea, $5, $6::integer,"
    " $7::timestamptz)";
static const char current_sql[] =
    "SELECT crl_number, der_hex, pem, stale FROM cms.crl_current($1::integer)";
static const char recheck_sql[] =
    "SELECT serial, fingerprint, reason FROM cms.connections_recheck($1, $2)";

/* ---- CRL generation -------------------------------------------------------------------- */

typedef struct crl_job {
    svc_state *st;
    svc__crl_cb cb;
    void *ctx;
    pki_crl crl;
    uint64_t number;
    int entries;
    char *der_param;
    char prepared_at[64]; /* database time at which the list was read */
} crl_job;

static void crl_job_end(crl_job *j, int status)
{
    if (j->cb)
        j->cb(j->ctx, status, status == CMS_OK ? &j->crl : NULL, status == CMS_OK ? j->number : 0);
    pki_crl_free(&j->crl);
    free(j->der_param);
    free(j);
}

static void on_crl_published(void *ctx, int status, const store_rows *res)
{
    crl_job *j = ctx;
    if (status != CMS_OK || store_rows_count(res) != 1) {
        log_error("crl_failed", NULL, NULL, "storing CRL %" PRIu64 ": %s", j->number,
                  res ? store_rows_error(res) : cms_strerror(status));
        crl_job_end(j, status == CMS_OK ? CMS_EINTERNAL : status);
        return;
    }
    bool stored = store_rows_text(res, 0, 0)[0] == 't';
    log_info("crl_published", NULL, NULL, "CRL %" PRIu64 " with %d entr%s%s", j->number,
             j->entries, j->entries == 1 ? "y" : "ies",
             stored ? "" : " (a newer one was already stored)");
    crl_job_end(j, CMS_OK);
}

static void on_crl_prepared(void *ctx, int status, const store_rows *res)
{
    crl_job *j = ctx;
    char reason[PKI_REASON_MAX] = "";
    pki_crl_entry *entries = NULL;
    pki_ca *ca = svc__est_ca(j->st);
    int n = status == CMS_OK ? store_rows_count(res) : 0;
    if (status != CMS_OK || n < 1 || !ca) {
        log_error("crl_failed", NULL, NULL, "preparing the CRL: %s",
                  res ? store_rows_error(res) : cms_strerror(status));
        crl_job_end(j, status == CMS_OK ? CMS_EINTERNAL : status);
        return;
    }
    j->number = strtoull(store_rows_text(res, 0, 0), NULL, 10);
    snprintf(j->prepared_at, sizeof(j->prepared_at), "%s", store_rows_text(res, 0, 5));
    time_t this_update = (time_t)strtoll(store_rows_text(res, 0, 1), NULL, 10);
    entries = calloc((size_t)n, sizeof(*entries));
    if (!entries) {
        crl_job_end(j, CMS_ENOMEM);
        return;
    }
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        if (store_rows_null(res, i, 2))
            continue;
        entries[k].serial_hex = store_rows_text(res, i, 2);
        entries[k].revoked_at = (time_t)strtoll(store_rows_text(res, i, 3), NULL, 10);
        entries[k].reason = atoi(store_rows_text(res, i, 4));
        k++;
    }
    j->entries = (int)k;
    unsigned hours = j->st->cfg->crl_next_update_hours;
    int rc = pki_crl_build(ca, entries, k, this_update, hours, j->number, &j->crl, reason,
                           sizeof(reason));
    free(entries);
    if (rc == CMS_OK && !(j->der_param = svc__bytea_param(j->crl.der, j->crl.der_len)))
        rc = CMS_ENOMEM;
    if (rc != CMS_OK) {
        log_error("crl_failed", NULL, NULL, "signing CRL %" PRIu64 ": %s", j->number, reason);
        crl_job_end(j, rc);
        return;
    }
    char num[24], tu[24], nu[24], cnt[16];
    snprintf(num, sizeof(num), "%" PRIu64, j->number);
    snprintf(tu, sizeof(tu), "%lld", (long long)this_update);
    snprintf(nu, sizeof(nu), "%lld", (long long)this_update + (long long)hours * 3600);
    snprintf(cnt, sizeof(cnt), "%d", j->entries);
    const char *params[7] = {num, tu, nu, j->der_param, j->crl.pem, cnt, j->prepared_at};
    rc = store_query(j->st->store, publish_sql, 7, params, on_crl_published, j);
    if (rc != CMS_OK) {
        log_error("crl_failed", NULL, NULL, "storing CRL %" PRIu64 ": %s", j->number,
                  cms_strerror(rc));
        crl_job_end(j, rc);
    }
}

int svc__crl_regenerate(svc_state *st, svc__crl_cb cb, void *ctx)
{
    if (!svc__est_ca(st))
        return CMS_EINVAL;
    crl_job *j = calloc(1, sizeof(*j));
    if (!j)
        return CMS_ENOMEM;
    j->st = st;
    j->cb = cb;
    j->ctx = ctx;
    int rc = store_query(st->store, prepare_sql, 0, NULL, on_crl_prepared, j);
    if (rc != CMS_OK) {
        log_error("crl_failed", NULL, NULL, "cannot queue the CRL: %s", cms_strerror(rc));
        free(j);
    }
    return rc;
}

/* ---- GET /crl, /crl.pem ---------------------------------------------------------------- */

typedef struct crl_get_job {
    https_req *r;
    svc_state *st;
    bool pem;
    char *stale_der_hex; /* the stored CRL, served if regeneration fails */
    char *stale_pem;
} crl_get_job;

static void crl_get_free(crl_get_job *j)
{
    free(j->stale_der_hex);
    free(j->stale_pem);
    free(j);
}

static void serve(crl_get_job *j, const unsigned char *der, size_t der_len, const char *pem)
{
    if (j->pem)
        https_reply(j->r, 200, "application/x-pem-file", pem, strlen(pem), NULL, 0);
    else
        https_reply(j->r, 200, "application/pkix-crl", der, der_len, NULL, 0);
}

/* Serves a CRL stored as hex DER + PEM; false if there is none or it is unreadable. */
static bool serve_stored(crl_get_job *j, const char *der_hex, const char *pem)
{
    size_t hl = der_hex ? strlen(der_hex) : 0, len = 0;
    if (!hl || !pem)
        return false;
    unsigned char *der = malloc(hl / 2 + 1);
    if (!der || OPENSSL_hexstr2buf_ex(der, hl / 2 + 1, &len, der_hex, '\0') != 1) {
        free(der);
        return false;
    }
    serve(j, der, len, pem);
    free(der);
    return true;
}

static void on_crl_fresh(void *ctx, int status, const pki_crl *crl, uint64_t number)
{
    crl_get_job *j = ctx;
    (void)number;
    if (status == CMS_OK)
        serve(j, crl->der, crl->der_len, crl->pem);
    else if (!serve_stored(j, j->stale_der_hex, j->stale_pem))
        svc__reply_error(j->r, 503, "crl_unavailable", "the CRL cannot be generated right now",
                         NULL, 0);
    crl_get_free(j);
}

static void on_crl_current(void *ctx, int status, const store_rows *res)
{
    crl_get_job *j = ctx;
    if (status != CMS_OK || store_rows_count(res) != 1) {
        int http;
        const char *error;
        char detail[256];
        svc__db_error(j->r, status == CMS_OK ? CMS_EINTERNAL : status, res, svc__est_sqlstates,
                      &http, &error, detail, sizeof(detail));
        svc__reply_error(j->r, http, error, detail, NULL, 0);
        crl_get_free(j);
        return;
    }
    bool have = !store_rows_null(res, 0, 0), stale = store_rows_text(res, 0, 3)[0] == 't';
    if (have && !stale) {
        if (!serve_stored(j, store_rows_text(res, 0, 1), store_rows_text(res, 0, 2)))
            svc__reply_error(j->r, 500, "internal_error", "the stored CRL is unreadable", NULL,
                             0);
        crl_get_free(j);
        return;
    }
    if (have) {
        j->stale_der_hex = strdup(store_rows_text(res, 0, 1));
        j->stale_pem = strdup(store_rows_text(res, 0, 2));
    }
    if (svc__crl_regenerate(j->st, on_crl_fresh, j) == CMS_OK)
        return;
    if (!serve_stored(j, j->stale_der_hex, j->stale_pem))
        svc__reply_error(j->r, 503, "crl_unavailable",
                         "no CRL has been published yet and this server holds no CA key", NULL,
                         0);
    crl_get_free(j);
}

int crl_get(https_req *r)
{
    svc_state *st = r->ctx->svc;
    const http_request *h = r->http;
    char age[16];
    crl_get_job *j = calloc(1, sizeof(*j));
    if (!j) {
        svc__reply_error(r, 500, "internal_error", "out of memory", NULL, 0);
        return CMS_OK;
    }
    j->r = r;
    j->st = st;
    j->pem = h->path_len >= 4 && memcmp(h->path + h->path_len - 4, ".pem", 4) == 0;
    snprintf(age, sizeof(age), "%u", st->cfg->crl_next_update_hours * 1800u);
    const char *params[1] = {age};
    if (store_query(st->store, current_sql, 1, params, on_crl_current, j) != CMS_OK) {
        svc__reply_error(r, 503, "busy", "the registry is busy: retry later", NULL, 0);
        crl_get_free(j);
        return CMS_OK;
    }
    return CMS_EAGAIN;
}

/* ---- fan-out ------------------------------------------------------------------------- */

static void close_serial(net_conn *c, void *arg)
{
    const char *serial = arg;
    if (strcmp(net_conn_identity(c), serial) == 0) {
        log_warn("revocation_close", serial, net_conn_peer(c),
                 "device or certificate revoked: closing the connection");
        net_conn_close(c, "revoked");
    }
}

/* Whether c is a device's connection (a device CA certificate that reached the
 * registry check: its identity is the serial); fp gets its certificate's fingerprint. */
static bool device_conn(net_conn *c, char fp[TLS_FINGERPRINT_HEX_SIZE])
{
    const tls_peer *p = net_conn_peer_record(c);
    fp[0] = '\0';
    if (!net_conn_identity(c)[0] || p->issuer != TLS_ISSUER_DEVICE_CA)
        return false;
    tls_peer_fingerprint_hex(p, fp);
    return true;
}

typedef struct recheck {
    http_buf serials, fps;
    size_t n;
    int err;
} recheck;

static void collect(net_conn *c, void *arg)
{
    recheck *rc = arg;
    char fp[TLS_FINGERPRINT_HEX_SIZE];
    if (!device_conn(c, fp) || rc->err)
        return;
    const char *sep = rc->n ? "\n" : "";
    if (http_buf_appendf(&rc->serials, "%s%s", sep, net_conn_identity(c)) != CMS_OK ||
        http_buf_appendf(&rc->fps, "%s%s", sep, fp) != CMS_OK)
        rc->err = CMS_ELIMIT;
    rc->n++;
}

typedef struct refused {
    const char *serial, *fp, *reason;
} refused;

static void close_refused(net_conn *c, void *arg)
{
    const refused *x = arg;
    char fp[TLS_FINGERPRINT_HEX_SIZE];
    if (!device_conn(c, fp) || strcmp(net_conn_identity(c), x->serial) != 0 ||
        strcmp(fp, x->fp) != 0)
        return;
    log_warn("revocation_close", x->serial, net_conn_peer(c),
             "re-check after a database reconnect: %s: closing the connection", x->reason);
    net_conn_close(c, x->reason);
}

static void on_rechecked(void *ctx, int status, const store_rows *res)
{
    svc_state *st = ctx;
    if (status != CMS_OK) {
        if (status != CMS_ECLOSED)
            log_error("revocation_recheck", NULL, NULL, "re-check of live connections failed: %s",
                      cms_strerror(status));
        return;
    }
    if (!st->server)
        return;
    for (int i = 0; i < store_rows_count(res); i++) {
        refused x = {store_rows_text(res, i, 0), store_rows_text(res, i, 1),
                     store_rows_text(res, i, 2)};
        net_server_foreach(st->server, close_refused, &x);
    }
}

static void recheck_all(svc_state *st)
{
    recheck rc = {.n = 0, .err = 0};
    http_buf_init(&rc.serials, 64u << 20);
    http_buf_init(&rc.fps, 64u << 20);
    net_server_foreach(st->server, collect, &rc);
    if (rc.err)
        log_error("revocation_recheck", NULL, NULL, "too many connections to re-check");
    else if (rc.n) {
        const char *params[2] = {rc.serials.data, rc.fps.data};
        int e = store_query(st->store, recheck_sql, 2, params, on_rechecked, st);
        if (e != CMS_OK)
            log_error("revocation_recheck", NULL, NULL, "cannot queue the re-check: %s",
                      cms_strerror(e));
        else
            log_info("revocation_recheck", NULL, NULL,
                     "database reconnected: re-checking %zu live device connection(s)", rc.n);
    }
    http_buf_free(&rc.serials);
    http_buf_free(&rc.fps);
}

static void on_revocation(void *ctx, const char *payload)
{
    svc_state *st = ctx;
    if (!st->server)
        return;
    if (!payload) {
        recheck_all(st);
        return;
    }
    if (*payload)
        net_server_foreach(st->server, close_serial, (void *)payload);
}

int svc_revocation_init(svc_state *st)
{
    int rc = store_listen(st->store, "cms_revocation", on_revocation, st);
    if (rc != CMS_OK)
        log_error("revocation_listen", NULL, NULL, "cannot LISTEN cms_revocation: %s",
                  cms_strerror(rc));
    return rc;
}

/* ---- revoke / decommission / cert revoke ---------------------------------------------- */

enum rev_kind { REV_DEVICE, REV_DECOMMISSION, REV_CERT };

typedef struct rev_job {
    https_req *r;
    svc_state *st;
    enum rev_kind kind;
    char subject[PKI_SHA256_HEX_SIZE + 64]; /* serial, or fingerprint */
    const char *reason;                     /* RFC 5280 name (static), or NULL */
    json_t *answer;                         /* sent after the CRL step */
} rev_job;

static const char *const rev_action[] = {"device_revoke", "device_decommission", "cert_revoke"};

/* Revocation reasons accepted by the API, any case: the RFC 5280 CRLReason names that the
 * registry stores (cms.check_reason, sql/002_enrollment.sql), then the words operators type
 * for them. A lost monitor's key is in unknown hands, as a stolen one's: keyCompromise. */
static const struct {
    const char *word, *rfc;
} rev_reasons[] = {
    {"unspecified", "unspecified"},
    {"keyCompromise", "keyCompromise"},
    {"affiliationChanged", "affiliationChanged"},
    {"superseded", "superseded"},
    {"cessationOfOperation", "cessationOfOperation"},
    {"privilegeWithdrawn", "privilegeWithdrawn"},
    {"stolen", "keyCompromise"},
    {"lost", "keyCompromise"},
    {"compromised", "keyCompromise"},
    {"retired", "cessationOfOperation"},
};
#define REV_REASONS_ACCEPTED                                                                       \
    "unspecified, keyCompromise, affiliationChanged, superseded, cessationOfOperation, "           \
    "privilegeWithdrawn (RFC 5280), or stolen, lost, compromised (= keyCompromise), "              \
    "retired (= cessationOfOperation)"

/* The RFC 5280 name for what the operator wrote (NULL: none given -> unspecified), or NULL
 * when it is not one of rev_reasons. */
static const char *rev_reason_rfc(const char *given, bool *known)
{
    *known = true;
    if (!given)
        return "unspecified";
    for (size_t i = 0; i < sizeof(rev_reasons) / sizeof(rev_reasons[0]); i++)
        if (strcasecmp(given, rev_reasons[i].word) == 0)
            return rev_reasons[i].rfc;
    *known = false;
    return NULL;
}

static void rev_job_free(rev_job *j)
{
    json_decref(j->answer);
    free(j);
}

static void on_rev_crl(void *ctx, int status, const pki_crl *crl, uint64_t number)
{
    rev_job *j = ctx;
    (void)crl;
    json_object_set_new(j->answer, "crl_number",
                        status == CMS_OK ? json_integer((json_int_t)number) : json_null());
    https_reply_json(j->r, 200, j->answer);
    j->answer = NULL;
    rev_job_free(j);
}

static void on_revoked(void *ctx, int status, const store_rows *res)
{
    rev_job *j = ctx;
    https_req *r = j->r;
    if (status == CMS_OK && store_rows_count(res) != 1)
        status = CMS_EINTERNAL;
    if (status != CMS_OK) {
        int http;
        const char *error;
        char detail[256], ev[64];
        svc__db_error(r, status, res, svc__est_sqlstates, &http, &error, detail, sizeof(detail));
        if (http < 500) {
            snprintf(ev, sizeof(ev), "%s_refused", rev_action[j->kind]);
            https_audit(r, ev, j->kind == REV_CERT ? NULL : j->subject,
                        json_pack("{s:s, s:i, s:s, s:s}", "subject", j->subject, "status", http,
                                  "error", error, "reason", detail));
        }
        svc__reply_error(r, http, error, detail, NULL, 0);
        rev_job_free(j);
        return;
    }
    const char *serial = j->kind == REV_CERT ? store_rows_text(res, 0, 0) : j->subject;
    if (j->kind == REV_CERT) {
        log_warn("cert_revoked", serial, r->peer_addr, "certificate %s (serial %s) revoked by %s",
                 j->subject, store_rows_text(res, 0, 1), r->peer_cn);
        j->answer = json_pack("{s:s, s:s, s:s, s:s}", "fingerprint", j->subject, "serial", serial,
                              "cert_serial", store_rows_text(res, 0, 1), "revoked_at",
                              store_rows_text(res, 0, 2));
    } else {
        const char *to = j->kind == REV_DEVICE ? "revoked" : "decommissioned";
        log_warn(j->kind == REV_DEVICE ? "device_revoked" : "device_decommissioned", serial,
                 r->peer_addr, "%s by %s (was %s; %s certificate(s), %s token(s) revoked)", to,
                 r->peer_cn, store_rows_text(res, 0, 0), store_rows_text(res, 0, 1),
                 store_rows_text(res, 0, 2));
        j->answer = json_pack("{s:s, s:s, s:s, s:i, s:i}", "serial", serial, "status", to,
                              "previous_status", store_rows_text(res, 0, 0), "certs_revoked",
                              atoi(store_rows_text(res, 0, 1)), "tokens_revoked",
                              atoi(store_rows_text(res, 0, 2)));
    }
    if (j->answer && j->reason)
        json_object_set_new(j->answer, "reason", json_string(j->reason));
    /* This worker need not wait for its own NOTIFY. */
    if (j->st->server)
        net_server_foreach(j->st->server, close_serial, (void *)serial);
    if (!j->answer) {
        svc__reply_error(r, 500, "internal_error", "cannot encode the answer", NULL, 0);
        rev_job_free(j);
        return;
    }
    if (svc__crl_regenerate(j->st, on_rev_crl, j) != CMS_OK)
        on_rev_crl(j, CMS_EINVAL, NULL, 0);
}

/* Common part of the three handlers. */
static int revoke_start(https_req *r, enum rev_kind kind, const char *subject, bool takes_reason)
{
    svc_state *st = r->ctx->svc;
    char actor[96];
    const char *reason = NULL;
    json_t *b = svc__json_body(r);
    if (!b)
        return CMS_OK;
    if (takes_reason) {
        json_t *jr = json_object_get(b, "reason");
        if (jr && !json_is_null(jr) && !json_is_string(jr)) {
            svc__reply_error(r, 400, "bad_request", "\"reason\" must be a string", NULL, 0);
            json_decref(b);
            return CMS_OK;
        }
        bool known;
        const char *given = json_is_string(jr) ? json_string_value(jr) : NULL;
        reason = rev_reason_rfc(given, &known);
        if (!known) {
            char detail[400];
            snprintf(detail, sizeof(detail),
                     "unknown revocation reason \"%.40s\": use " REV_REASONS_ACCEPTED, given);
            char ev[64];
            snprintf(ev, sizeof(ev), "%s_refused", rev_action[kind]);
            https_audit(r, ev, kind == REV_CERT ? NULL : subject,
                        json_pack("{s:s, s:i, s:s, s:s}", "subject", subject, "status", 400,
                                  "error", "bad_request", "reason", detail));
            svc__reply_error(r, 400, "bad_request", detail, NULL, 0);
            json_decref(b);
            return CMS_OK;
        }
    }
    rev_job *j = calloc(1, sizeof(*j));
    if (!j) {
        svc__reply_error(r, 500, "internal_error", "out of memory", NULL, 0);
        json_decref(b);
        return CMS_OK;
    }
    j->r = r;
    j->st = st;
    j->kind = kind;
    j->reason = reason;
    snprintf(j->subject, sizeof(j->subject), "%s", subject);
    svc__actor(r->peer, r->peer_cn, actor, sizeof(actor));
    int rc;
    if (kind == REV_DECOMMISSION) {
        const char *params[3] = {subject, actor, r->peer_addr};
        rc = store_query(st->store, decommission_sql, 3, params, on_revoked, j);
    } else {
        const char *params[4] = {subject, reason, actor, r->peer_addr};
        rc = store_query(st->store, kind == REV_DEVICE ? revoke_sql : cert_revoke_sql, 4, params,
                         on_revoked, j);
    }
    json_decref(b);
    if (rc != CMS_OK) {
        svc__reply_error(r, 503, "busy", "the registry is busy: retry later", NULL, 0);
        rev_job_free(j);
        return CMS_OK;
    }
    return CMS_EAGAIN;
}

int device_revoke(https_req *r)
{
    return revoke_start(r, REV_DEVICE, r->params[0], true);
}

int device_decommission(https_req *r)
{
    return revoke_start(r, REV_DECOMMISSION, r->params[0], false);
}

int cert_revoke(https_req *r)
{
    char fp[PKI_SHA256_HEX_SIZE + 32];
    size_t k = 0;
    for (const char *p = r->params[0]; *p && k < sizeof(fp) - 1; p++) {
        if (*p == ':')
            continue;
        fp[k++] = (*p >= 'A' && *p <= 'Z') ? (char)(*p - 'A' + 'a') : *p;
    }
    fp[k] = '\0';
    return revoke_start(r, REV_CERT, fp, true);
}
