/*
 * est.c - EST (RFC 7030) for monitors, and the EST service state.
 *
 *   GET  /.well-known/est/cacerts         the device CA chain (PKCS#7 certs-only, base64)
 *   GET  /.well-known/est/csrattrs        what we want in a CSR (EC P-256, ECDSA-SHA256)
 *   POST /.well-known/est/simpleenroll    one-time enrollment token, see below
 *   POST /.well-known/est/simplereenroll  device mTLS with its current certificate
 *
 * simpleenroll: the body is an application/pkcs10 CSR (base64 of the DER,
 * with or without Content-Transfer-Encoding: base64; PEM and raw DER are
 * accepted too). The token comes as "Authorization: Bearer <token>" or as
 * HTTP Basic with the serial as user name and the token as password. Steps:
 *   1. token present (else 401 + WWW-Authenticate), CSR parsed and its
 *      signature and key policy checked (pki_csr_from_est_body; 400/413);
 *   2. cms.est_token_check: the token (by SHA-256) exists, is not used,
 *      expired or revoked, its serial is the CSR's CN (and the Basic user
 *      name), the device is not revoked/decommissioned - nothing is signed
 *      before this passes;
 *   3. the certificate is issued (CN = serial, est_cert_days);
 *   4. cms.est_enroll re-checks all of it under row locks and records the
 *      certificate, marks the token used and the device active, in one
 *      transaction (audited there). Only then is the certificate sent.
 * Every refusal is a JSON 4xx {"error", "detail"} and an "est_refused" audit
 * row naming the endpoint, status and reason.
 *
 * simplereenroll: the router lets only registered, active devices in (the
 * device check runs on every connection). The CSR's CN must be the serial of
 * the presented certificate (RFC 7030 4.2.2); a new key is allowed. The
 * presented certificate is superseded by cms.est_reenroll (see the policy in
 * sql/002_enrollment.sql): refused at every later handshake and listed on
 * the CRL with reason superseded, so the CRL is regenerated.
 *
 * The token is never logged or stored: only its SHA-256 goes to the
 * database. Keys never leave pki_*.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/conf.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "est_int.h"
#include "log.h"

#define EST_CT_CERTS "application/pkcs7-mime; smime-type=certs-only"
#define EST_TOKEN_MAX 128

static const http_field cte_base64[] = {{"Content-Transfer-Encoding", "base64"}};
static const http_field www_auth[] = {
    {"WWW-Authenticate", "Basic realm=\"cms-est\", Bearer realm=\"cms-est\""}};

static const char check_sql[] =
    "SELECT token_id, device_id, serial FROM cms.est_token_check($1::bytea, $2, $3)";
static const char enroll_sql[] =
    "SELECT device_id, serial, superseded FROM cms.est_enroll($1::bytea, $2, $3, $4, $5,"
    " $6::timestamptz, $7::timestamptz, $8::bytea, $9, $10)";
static const char reenroll_sql[] =
    "SELECT device_id, superseded FROM cms.est_reenroll($1, $2, $3, $4, $5::timestamptz,"
    " $6::timestamptz, $7::bytea, $8, $9)";

/* One enrollment in flight (the request is answered from store callbacks). */
typedef struct est_job {
    https_req *r;
    svc_state *st;
    const char *endpoint; /* "simpleenroll" / "simplereenroll" (audit) */
    pki_csr *csr;
    pki_issued issued;
    char token_hash[SVC_SHA256_PARAM_SIZE];
    char username[PKI_CN_MAX + 1];
    bool has_username;
    char old_fp[TLS_FINGERPRINT_HEX_SIZE];
    char *der_param;
} est_job;

static void job_free(est_job *j)
{
    if (!j)
        return;
    pki_csr_free(j->csr);
    pki_issued_free(&j->issued);
    free(j->der_param);
    free(j);
}

/* ---- answers ------------------------------------------------------------------ */

/* cmsd_est_enrollments_total: endpoint "simpleenroll" or "simplereenroll". */
static void count_enrollment(const char *endpoint, enum cm_est_result result)
{
    if (strcmp(endpoint, "simpleenroll") == 0)
        metrics_add(CM_EST_ENROLLMENTS, cm_est(CM_EST_ENROLL, result), 1);
    else if (strcmp(endpoint, "simplereenroll") == 0)
        metrics_add(CM_EST_ENROLLMENTS, cm_est(CM_EST_REENROLL, result), 1);
}

/* Audit + log + JSON error for a refusal that the peer caused. */
static void refuse(https_req *r, const char *endpoint, const char *device, int status,
                   const char *error, const char *detail)
{
    count_enrollment(endpoint, CM_EST_REFUSED);
    if (device && !*device)
        device = NULL;
    log_warn("est_refused", device, r->peer_addr, "%s: %d %s: %s", endpoint, status, error,
             detail ? detail : "");
    https_audit(r, "est_refused", device,
                json_pack("{s:s, s:i, s:s, s:s}", "endpoint", endpoint, "status", status, "error",
                          error, "reason", detail ? detail : ""));
    svc__reply_error(r, status, error, detail, status == 401 ? www_auth : NULL,
                     status == 401 ? 1 : 0);
}

static void reply_certs(https_req *r, X509 *cert)
{
    char *b64 = NULL;
    size_t n = 0;
    X509 *certs[1] = {cert};
    if (pki_pkcs7_certs_only_base64(certs, 1, &b64, &n) != CMS_OK) {
        svc__reply_error(r, 500, "internal_error", "cannot encode the certificate", NULL, 0);
        return;
    }
    https_reply(r, 200, EST_CT_CERTS, b64, n, cte_base64, 1);
    free(b64);
}

static bool conn_open(const https_req *r)
{
    return net_conn_state(r->conn) == NET_ACTIVE;
}

/* A store_query failure: 4xx refusals are audited, 5xx only answered. */
static void db_refuse(est_job *j, int status, const store_rows *res)
{
    int http;
    const char *error;
    char detail[256];
    svc__db_error(j->r, status, res, svc__est_sqlstates, &http, &error, detail, sizeof(detail));
    if (http >= 500) {
        count_enrollment(j->endpoint, CM_EST_REFUSED);
        svc__reply_error(j->r, http, error, detail, NULL, 0);
    }
    else
        refuse(j->r, j->endpoint, j->csr ? j->csr->cn : NULL, http, error, detail);
}

/* ---- request checks ------------------------------------------------------------- */

/* Content-Type absent or application/pkcs10 (RFC 7030 4.2.1). */
static bool content_type_ok(const http_request *h)
{
    const char *v = http_request_header(h, "Content-Type");
    if (!v)
        return true;
    size_t n = strcspn(v, ";");
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    return (n == 18 && strncasecmp(v, "application/pkcs10", n) == 0) ||
           (n == 20 && strncasecmp(v, "application/x-pkcs10", n) == 0);
}

static bool printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

/*
 * The enrollment token from Authorization (Bearer, or Basic with user =
 * serial, password = token). Returns 1 (tok filled, user filled if Basic gave
 * one), 0 when there is no Authorization header, CMS_EPROTO with *why.
 */
static int get_token(const http_request *h, char *tok, size_t tcap, char *user, size_t ucap,
                     bool *has_user, const char **why)
{
    const char *v = http_request_header(h, "Authorization");
    *has_user = false;
    if (!v)
        return 0;
    if (http_request_header_count(h, "Authorization") > 1) {
        *why = "several Authorization headers";
        return CMS_EPROTO;
    }
    while (*v == ' ' || *v == '\t')
        v++;
    size_t sl = strcspn(v, " \t");
    const char *arg = v + sl;
    while (*arg == ' ' || *arg == '\t')
        arg++;
    size_t al = strlen(arg);
    while (al && (arg[al - 1] == ' ' || arg[al - 1] == '\t'))
        al--;
    *why = "the token must be 1 to 128 printable characters";
    if (sl == 6 && strncasecmp(v, "Bearer", 6) == 0) {
        if (al == 0 || al >= tcap || !printable(arg, al))
            return CMS_EPROTO;
        memcpy(tok, arg, al);
        tok[al] = '\0';
    } else if (sl == 5 && strncasecmp(v, "Basic", 5) == 0) {
        unsigned char *dec = NULL;
        size_t dl = 0;
        if (al == 0 || pki_base64_decode(arg, al, &dec, &dl) != CMS_OK) {
            *why = "the Basic credentials are not valid base64";
            return CMS_EPROTO;
        }
        unsigned char *colon = memchr(dec, ':', dl);
        size_t ul = colon ? (size_t)(colon - dec) : 0, pl = colon ? dl - ul - 1 : 0;
        int rc = CMS_EPROTO;
        if (!colon)
            *why = "the Basic credentials must be serial:token";
        else if (ul >= ucap || !printable((const char *)dec, ul))
            *why = "the Basic user name must be the device serial";
        else if (pl == 0 || pl >= tcap || !printable((const char *)colon + 1, pl))
            ; /* *why as set above */
        else {
            memcpy(user, dec, ul);
            user[ul] = '\0';
            memcpy(tok, colon + 1, pl);
            tok[pl] = '\0';
            *has_user = ul > 0;
            rc = 1;
        }
        OPENSSL_cleanse(dec, dl);
        free(dec);
        if (rc != 1)
            return rc;
    } else {
        *why = "use Authorization: Bearer <token>, or Basic with the serial as user name and the "
               "token as password";
        return CMS_EPROTO;
    }
    /* Our tokens are 64 hex digits: accept them in either case. */
    if (strlen(tok) == 64 && strspn(tok, "0123456789abcdefABCDEF") == 64)
        for (char *p = tok; *p; p++)
            if (*p >= 'A' && *p <= 'F')
                *p = (char)(*p - 'A' + 'a');
    return 1;
}

/* pki_csr_from_est_body failures -> HTTP. */
static void csr_status(int rc, int *status, const char **error)
{
    switch (rc) {
    case CMS_ELIMIT:
        *status = 413, *error = "payload_too_large";
        break;
    case CMS_EPROTO:
        *status = 400, *error = "bad_csr";
        break;
    case CMS_EPERM:
        *status = 400, *error = "csr_policy";
        break;
    default:
        *status = 500, *error = "internal_error";
        break;
    }
}

/* Parses the CSR of r into j->csr; on failure answers r. Returns true if parsed. */
static bool parse_csr(est_job *j, const char *device)
{
    char reason[PKI_REASON_MAX] = "";
    https_req *r = j->r;
    int rc = pki_csr_from_est_body(r->http->body, r->http->body_len, &j->csr, reason,
                                   sizeof(reason));
    if (rc == CMS_OK)
        return true;
    int status;
    const char *error;
    csr_status(rc, &status, &error);
    if (status >= 500)
        svc__reply_error(r, status, error, reason, NULL, 0);
    else
        refuse(r, j->endpoint, device, status, error, reason);
    return false;
}

/* Issues the certificate for j->csr with CN serial; answers r on failure. */
static bool issue(est_job *j, const char *serial)
{
    char reason[PKI_REASON_MAX] = "";
    int rc = pki_issue_device_cert(svc__est_ca(j->st), j->csr, serial, j->st->cfg->est_cert_days,
                                   0, &j->issued, reason, sizeof(reason));
    if (rc == CMS_OK)
        j->der_param = svc__bytea_param(j->issued.der, j->issued.der_len);
    if (rc != CMS_OK || !j->der_param) {
        log_error("est_issue_failed", serial, j->r->peer_addr, "%s", reason);
        svc__reply_error(j->r, 500, "internal_error", "cannot issue the certificate", NULL, 0);
        return false;
    }
    return true;
}

/* ---- simpleenroll ----------------------------------------------------------------- */

static void on_enrolled(void *ctx, int status, const store_rows *res)
{
    est_job *j = ctx;
    https_req *r = j->r;
    if (status != CMS_OK || store_rows_count(res) != 1) {
        if (status == CMS_OK)
            status = CMS_EINTERNAL;
        db_refuse(j, status, res);
        goto done;
    }
    int superseded = atoi(store_rows_text(res, 0, 2));
    log_info("est_enrolled", j->csr->cn, r->peer_addr,
             "certificate %s (%s) fingerprint %s valid until %s%s", j->issued.serial_hex,
             j->csr->key_desc, j->issued.fingerprint, j->issued.not_after,
             superseded ? ", earlier certificates superseded" : "");
    if (superseded > 0)
        svc__crl_regenerate(j->st, NULL, NULL);
    count_enrollment(j->endpoint, CM_EST_ISSUED);
    reply_certs(r, j->issued.cert);
done:
    job_free(j);
}

static void on_checked(void *ctx, int status, const store_rows *res)
{
    est_job *j = ctx;
    https_req *r = j->r;
    if (status == CMS_OK && store_rows_count(res) != 1)
        status = CMS_EINTERNAL;
    if (status != CMS_OK) {
        db_refuse(j, status, res);
        goto fail;
    }
    if (!conn_open(r)) { /* the client left: do not consume the token */
        svc__reply_error(r, 499, "client_closed", NULL, NULL, 0);
        goto fail;
    }
    if (!issue(j, store_rows_text(res, 0, 2)))
        goto fail;
    const char *params[10] = {
        j->token_hash,
        j->csr->cn,
        j->has_username ? j->username : NULL,
        j->issued.serial_hex,
        j->issued.fingerprint,
        j->issued.not_before,
        j->issued.not_after,
        j->der_param,
        j->csr->key_desc,
        r->peer_addr,
    };
    if (store_query(j->st->store, enroll_sql, 10, params, on_enrolled, j) != CMS_OK) {
        svc__reply_error(r, 503, "busy", "the registry is busy: retry later", NULL, 0);
        goto fail;
    }
    return;
fail:
    job_free(j);
}

/*
 * simpleenroll is the one resource anyone may call that costs the database
 * work (the token check; an audit row per refusal). Two limits come first:
 * a token bucket per source address shared by the workers (est_anon_per_min;
 * 429 + Retry-After), and nothing from anyone while this worker's control
 * queue is half full (503 + Retry-After), so that a flood from many addresses
 * cannot crowd out the monitors' device checks, which use the other half.
 * Neither writes an audit row (a flood must not write to the database): they
 * log, at most once a minute per address and once a second per worker.
 */
static bool admit(https_req *r, svc_state *st)
{
    est_state *es = st->est;
    uint64_t now = uv_now(net_conn_loop(r->conn)); /* monotonic ms, one clock for all loops */
    const char *peer = r->peer_addr ? r->peer_addr : "";
    rl_verdict v;
    /* The bucket is the address's, whatever the port: "10.1.2.3:5000", "[::1]:5000". */
    const char *colon = strrchr(peer, ':');
    size_t klen = colon ? (size_t)(colon - peer) : strlen(peer);
    if (st->est_limit && !rl_take(st->est_limit, peer, klen, now, &v)) {
        unsigned secs = (unsigned)((v.retry_ms + 999) / 1000);
        char ra[16], detail[128];
        snprintf(ra, sizeof(ra), "%u", secs ? secs : 1);
        snprintf(detail, sizeof(detail),
                 "too many enrollment requests from this address: retry in %s s", ra);
        if (v.report)
            log_warn("est_rate_limited", NULL, r->peer_addr,
                     "simpleenroll: 429 (est_anon_per_min=%u); %llu more refused since the "
                     "last report",
                     st->cfg->est_anon_per_min, (unsigned long long)v.suppressed);
        const http_field retry[] = {{"Retry-After", ra}};
        metrics_add(CM_CONN_REFUSED, cm_refused(CM_LISTENER_HTTPS, CM_REFUSED_RATE_LIMITED), 1);
        count_enrollment("simpleenroll", CM_EST_REFUSED);
        svc__reply_error(r, 429, "rate_limited", detail, retry, 1);
        return false;
    }
    if (store_ctl_crowded(st->store)) {
        es->busy_refused++;
        if (now - es->busy_logged_ms >= 1000) {
            log_warn("est_busy", NULL, r->peer_addr,
                     "simpleenroll: 503 while the registry queue is half full (%llu refused "
                     "in the last second or more)",
                     (unsigned long long)es->busy_refused);
            es->busy_logged_ms = now;
            es->busy_refused = 0;
        }
        static const http_field retry[] = {{"Retry-After", "5"}};
        count_enrollment("simpleenroll", CM_EST_REFUSED);
        svc__reply_error(r, 503, "busy", "the registry is busy: retry later", retry, 1);
        return false;
    }
    return true;
}

int est_simpleenroll(https_req *r)
{
    svc_state *st = r->ctx->svc;
    char tok[EST_TOKEN_MAX + 1] = "";
    const char *why = NULL;
    est_job *j = NULL;
    int ret = CMS_OK;

    if (!svc__est_ca(st)) {
        svc__reply_error(r, 503, "est_disabled", "EST is not configured on this server", NULL, 0);
        return CMS_OK;
    }
    if (!admit(r, st))
        return CMS_OK;
    if (!(j = calloc(1, sizeof(*j)))) {
        svc__reply_error(r, 500, "internal_error", "out of memory", NULL, 0);
        return CMS_OK;
    }
    j->r = r;
    j->st = st;
    j->endpoint = "simpleenroll";
    if (!content_type_ok(r->http)) {
        refuse(r, j->endpoint, NULL, 415, "unsupported_media_type",
               "Content-Type must be application/pkcs10 (the base64 of a DER CSR)");
        goto done;
    }
    int rc = get_token(r->http, tok, sizeof(tok), j->username, sizeof(j->username),
                       &j->has_username, &why);
    if (rc == 0) {
        refuse(r, j->endpoint, NULL, 401, "no_token",
               "an enrollment token is required: Authorization: Bearer <token>, or HTTP Basic "
               "with the device serial as user name and the token as password");
        goto done;
    }
    if (rc < 0) {
        refuse(r, j->endpoint, NULL, 401, "bad_credentials", why);
        goto done;
    }
    if (!parse_csr(j, j->has_username ? j->username : NULL))
        goto done;
    if (svc__sha256_param(tok, j->token_hash) != CMS_OK) {
        svc__reply_error(r, 500, "internal_error", "cannot hash the token", NULL, 0);
        goto done;
    }
    const char *params[3] = {j->token_hash, j->csr->cn, j->has_username ? j->username : NULL};
    if (store_query(st->store, check_sql, 3, params, on_checked, j) != CMS_OK) {
        svc__reply_error(r, 503, "busy", "the registry is busy: retry later", NULL, 0);
        goto done;
    }
    j = NULL; /* owned by the callback now */
    ret = CMS_EAGAIN;
done:
    OPENSSL_cleanse(tok, sizeof(tok));
    job_free(j);
    return ret;
}

/* ---- simplereenroll ----------------------------------------------------------------- */

static void on_reenrolled(void *ctx, int status, const store_rows *res)
{
    est_job *j = ctx;
    if (status == CMS_OK && store_rows_count(res) != 1)
        status = CMS_EINTERNAL;
    if (status != CMS_OK) {
        db_refuse(j, status, res);
        goto done;
    }
    log_info("est_reenrolled", j->csr->cn, j->r->peer_addr,
             "certificate %s (%s) fingerprint %s valid until %s supersedes %s",
             j->issued.serial_hex, j->csr->key_desc, j->issued.fingerprint, j->issued.not_after,
             j->old_fp);
    svc__crl_regenerate(j->st, NULL, NULL); /* the old certificate is listed as superseded */
    count_enrollment(j->endpoint, CM_EST_ISSUED);
    reply_certs(j->r, j->issued.cert);
done:
    job_free(j);
}

int est_simplereenroll(https_req *r)
{
    svc_state *st = r->ctx->svc;
    est_job *j = NULL;
    const tls_peer *peer = net_conn_peer_record(r->conn);

    if (!svc__est_ca(st)) {
        svc__reply_error(r, 503, "est_disabled", "EST is not configured on this server", NULL, 0);
        return CMS_OK;
    }
    if (r->peer != HTTPS_PEER_DEVICE || !peer->has_cert) {
        svc__reply_error(r, 401, "unauthenticated", "a device certificate is required", NULL, 0);
        return CMS_OK;
    }
    if (!(j = calloc(1, sizeof(*j)))) {
        svc__reply_error(r, 500, "internal_error", "out of memory", NULL, 0);
        return CMS_OK;
    }
    j->r = r;
    j->st = st;
    j->endpoint = "simplereenroll";
    if (!content_type_ok(r->http)) {
        refuse(r, j->endpoint, r->peer_cn, 415, "unsupported_media_type",
               "Content-Type must be application/pkcs10 (the base64 of a DER CSR)");
        goto fail;
    }
    tls_peer_fingerprint_hex(peer, j->old_fp); /* the certificate being replaced */
    if (!parse_csr(j, r->peer_cn))
        goto fail;
    if (strcmp(j->csr->cn, r->peer_cn) != 0) {
        char why[256];
        snprintf(why, sizeof(why),
                 "the CSR subject CN \"%s\" is not the serial \"%s\" of the certificate presented",
                 j->csr->cn, r->peer_cn);
        refuse(r, j->endpoint, r->peer_cn, 403, "serial_mismatch", why);
        goto fail;
    }
    if (!issue(j, r->peer_cn))
        goto fail;
    const char *params[9] = {
        r->peer_cn,           j->old_fp,           j->issued.serial_hex,
        j->issued.fingerprint, j->issued.not_before, j->issued.not_after,
        j->der_param,         j->csr->key_desc,    r->peer_addr,
    };
    if (store_query(st->store, reenroll_sql, 9, params, on_reenrolled, j) != CMS_OK) {
        svc__reply_error(r, 503, "busy", "the registry is busy: retry later", NULL, 0);
        goto fail;
    }
    return CMS_EAGAIN;
fail:
    job_free(j);
    return CMS_OK;
}

/* ---- cacerts, csrattrs -------------------------------------------------------------- */

int est_cacerts(https_req *r)
{
    svc_state *st = r->ctx->svc;
    const est_state *es = st->est;
    if (!es) {
        svc__reply_error(r, 503, "est_disabled", "EST is not configured on this server", NULL, 0);
        return CMS_OK;
    }
    https_reply(r, 200, EST_CT_CERTS, es->cacerts, es->cacerts_len, cte_base64, 1);
    return CMS_OK;
}

int est_csrattrs(https_req *r)
{
    svc_state *st = r->ctx->svc;
    const est_state *es = st->est;
    if (!es) {
        svc__reply_error(r, 503, "est_disabled", "EST is not configured on this server", NULL, 0);
        return CMS_OK;
    }
    if (!es->csrattrs) {
        https_reply(r, 204, NULL, NULL, 0, NULL, 0);
        return CMS_OK;
    }
    https_reply(r, 200, "application/csrattrs", es->csrattrs, es->csrattrs_len, cte_base64, 1);
    return CMS_OK;
}

/*
 * CsrAttrs (RFC 7030 4.5.2) saying "an EC P-256 key, signed with
 * ECDSA-SHA256" (other keys of the policy are accepted all the same), built
 * with OpenSSL's ASN.1 generator from this description:
 *   SEQUENCE { SEQUENCE { id-ecPublicKey, SET { prime256v1 } }, ecdsa-with-SHA256 }
 */
static int make_csrattrs(char **out, size_t *out_len)
{
    static const char text[] = "[attrs]\n"
                               "key = SEQUENCE:ec_key\n"
                               "sig = OID:ecdsa-with-SHA256\n"
                               "[ec_key]\n"
                               "type = OID:id-ecPublicKey\n"
                               "curves = SET:ec_curves\n"
                               "[ec_curves]\n"
                               "curve = OID:prime256v1\n";
    int rc = CMS_EINTERNAL;
    long eline = 0;
    unsigned char *der = NULL;
    ASN1_TYPE *t = NULL;
    CONF *cnf = NCONF_new(NULL);
    BIO *b = BIO_new_mem_buf(text, (int)sizeof(text) - 1);
    if (!cnf || !b || NCONF_load_bio(cnf, b, &eline) <= 0)
        goto done;
    if (!(t = ASN1_generate_nconf("SEQUENCE:attrs", cnf)))
        goto done;
    int n = i2d_ASN1_TYPE(t, &der);
    if (n <= 0)
        goto done;
    rc = pki_base64_encode(der, (size_t)n, 1, out, out_len);
done:
    OPENSSL_free(der);
    ASN1_TYPE_free(t);
    BIO_free(b);
    NCONF_free(cnf);
    ERR_clear_error();
    return rc;
}

/* ---- service state -------------------------------------------------------------------- */

pki_ca *svc__est_ca(const svc_state *st)
{
    const est_state *es = st ? st->est : NULL;
    return es ? es->ca : NULL;
}

int svc_est_init(svc_state *st, char *err, size_t cap)
{
    const cms_config *cfg = st->cfg;
    char reason[PKI_REASON_MAX] = "";
    st->est = NULL;
    if (!cfg->est_ca_cert[0])
        return CMS_OK;
    est_state *es = calloc(1, sizeof(*es));
    if (!es) {
        snprintf(err, cap, "EST: out of memory");
        return CMS_EINVAL;
    }
    const char *chain = cfg->est_ca_chain[0] ? cfg->est_ca_chain : cfg->tls_device_ca;
    int rc = pki_ca_load(cfg->est_ca_cert, cfg->est_ca_key, chain, &es->ca, reason,
                         sizeof(reason));
    if (rc != CMS_OK) {
        snprintf(err, cap, "EST CA (est_ca_cert/est_ca_key/est_ca_chain): %s", reason);
        goto fail;
    }
    rc = pki_pkcs7_stack_base64(pki_ca_chain(es->ca), &es->cacerts, &es->cacerts_len);
    if (rc != CMS_OK) {
        snprintf(err, cap, "EST: cannot encode the CA chain: %s", cms_strerror(rc));
        goto fail;
    }
    if (make_csrattrs(&es->csrattrs, &es->csrattrs_len) != CMS_OK) {
        es->csrattrs = NULL; /* /csrattrs answers 204 */
        log_warn("est_csrattrs", NULL, NULL, "cannot build CsrAttrs: /csrattrs answers 204");
    }
    st->est = es;
    if (st->worker_id == 0)
        log_info("est_ready", NULL, NULL, "EST on: issuing CA %s, certificates valid %u days",
                 cfg->est_ca_cert, cfg->est_cert_days);
    return CMS_OK;
fail:
    pki_ca_free(es->ca);
    free(es->cacerts);
    free(es);
    return CMS_EINVAL;
}

void svc_est_free(svc_state *st)
{
    est_state *es = st->est;
    if (!es)
        return;
    pki_ca_free(es->ca);
    free(es->cacerts);
    free(es->csrattrs);
    free(es);
    st->est = NULL;
}
