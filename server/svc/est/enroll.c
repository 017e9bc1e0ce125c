/*
 * enroll.c - enrollment tokens (operator API) and the helpers shared by the
 * enrollment and revocation handlers (errors from SQL, parameters).
 *
 * API (JSON; every answer Cache-Control: no-store; errors {"error","detail"}):
 *
 *   POST /api/v1/enroll/tokens                         role operator
 *     body {"serial": "MON-0100", "model": "X1", "ttl_s": 3600}
 *       serial  required, 1..64 of [A-Za-z0-9._-] (the CN the CSR must carry)
 *       model   optional, copied to the device on enrollment
 *       ttl_s   optional, 1..enroll_token_ttl_s (the default)
 *     201 {"id", "serial", "model", "token", "expires_at", "device_status",
 *          "created_by"}. "token" (64 hex digits, 32 random bytes) is shown
 *     ONLY here: the database keeps its SHA-256. The device is registered as
 *     pending if it was unknown. 400 bad body, 403 device revoked or
 *     decommissioned.
 *
 *   GET /api/v1/enroll/tokens[?serial=S][&state=active|used|expired|revoked][&limit=N]
 *                                                      role viewer
 *     200 {"tokens": [{"id", "serial", "model", "created_by", "created_at",
 *          "expires_at", "used_at", "used_fingerprint", "revoked_at",
 *          "revoked_by", "state"}, ...]} newest first, limit 1..1000
 *          (default 100). Never any secret.
 *
 *   POST /api/v1/enroll/tokens/:id/revoke              role operator
 *     200 {"id", "serial", "revoked_at"}; 404 unknown; 409 used or revoked.
 *
 * Times are UTC, "2026-11-28T06:14:54.123456Z" (as in the operator API,
 * admin/admin_int.h); absent = null.
 *
 * Every mutation is audited in the same transaction by the SQL function
 * (enroll_token_created / enroll_token_revoked, actor "operator:<CN>");
 * a refused one gets an "<action>_refused" audit row from here.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "cms_err.h"
#include "est_int.h"
#include "log.h"

#define TOKEN_BYTES 32
#define LIST_DEFAULT 100
#define LIST_MAX 1000

/* Times in answers: UTC, "2026-11-28T06:14:54.123456Z" (as admin/admin_int.h's ISO). */
#define ISO(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

static const char create_sql[] =
    "SELECT id, serial, model, " ISO("expires_at") ", device_status"
    " FROM cms.enroll_token_create($1, $2, $3::integer, $4::bytea, $5, $6)";
static const char list_sql[] =
    "SELECT coalesce(jsonb_agg(jsonb_build_object("
    "  'id', t.id, 'serial', t.serial, 'model', t.model, 'created_by', t.created_by,"
    "  'created_at', " ISO("t.created_at") ", 'expires_at', " ISO("t.expires_at") ","
    "  'used_at', " ISO("t.used_at") ", 'used_fingerprint', t.used_fingerprint,"
    "  'revoked_at', " ISO("t.revoked_at") ", 'revoked_by', t.revoked_by, 'state', t.state)"
    "  ORDER BY t.id DESC), '[]'::jsonb)::text FROM ("
    " SELECT * FROM cms.enrollment_token_list"
    " WHERE ($1::text IS NULL OR serial = $1) AND ($2::text IS NULL OR state = $2)"
    " ORDER BY id DESC LIMIT $3::integer) t";
static const char revoke_sql[] =
    "SELECT id, serial, " ISO("revoked_at") " FROM cms.enroll_token_revoke($1::bigint, $2, $3)";

/* ---- shared helpers ------------------------------------------------------------- */

void svc__reply_error(https_req *r, int status, const char *error, const char *detail,
                      const http_field *extra, size_t n_extra)
{
    char *body = http_json_error_body(error, detail);
    if (!body) {
        https_reply(r, 500, NULL, NULL, 0, NULL, 0);
        return;
    }
    https_reply(r, status, "application/json", body, strlen(body), extra, n_extra);
    free(body);
}

char *svc__bytea_param(const unsigned char *data, size_t len)
{
    size_t cap = 2 + 2 * len + 1, n = 0;
    char *p = malloc(cap);
    if (!p)
        return NULL;
    p[0] = '\\';
    p[1] = 'x';
    p[2] = '\0';
    if (len && OPENSSL_buf2hexstr_ex(p + 2, cap - 2, &n, data, len, '\0') != 1) {
        free(p);
        return NULL;
    }
    return p;
}

int svc__sha256_param(const char *text, char out[SVC_SHA256_PARAM_SIZE])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    size_t n = 0;
    if (EVP_Digest(text, strlen(text), md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        return CMS_EINTERNAL;
    out[0] = '\\';
    out[1] = 'x';
    if (OPENSSL_buf2hexstr_ex(out + 2, SVC_SHA256_PARAM_SIZE - 2, &n, md, 32, '\0') != 1)
        return CMS_EINTERNAL;
    return CMS_OK;
}

/* The custom SQLSTATEs of sql/002_enrollment.sql. */
const svc__sqlstate svc__est_sqlstates[] = {
    {"CE001", 401, "token_unknown"},
    {"CE002", 409, "token_used"},
    {"CE003", 403, "token_expired"},
    {"CE004", 403, "token_revoked"},
    {"CE005", 403, "serial_mismatch"},
    {"CE006", 403, "device_revoked"},
    {"CE007", 403, "device_decommissioned"},
    {"CE008", 403, "certificate_not_current"},
    {"CE009", 403, "device_not_active"},
    {"CN001", 404, "not_found"},
    {"CN002", 409, "conflict"},
    {"CV001", 400, "bad_request"},
    {NULL, 0, NULL},
};

/* ---- jobs --------------------------------------------------------------------- */

typedef struct tok_job {
    https_req *r;
    char action[40]; /* for the refusal audit event */
    char subject[80];
    char token[2 * TOKEN_BYTES + 1];
} tok_job;

static void tok_job_free(tok_job *j)
{
    if (j) {
        OPENSSL_cleanse(j->token, sizeof(j->token));
        free(j);
    }
}

/* Answers a failed statement; 4xx are audited as "<action>_refused". */
static void tok_db_refuse(tok_job *j, int status, const store_rows *res)
{
    int http;
    const char *error;
    char detail[256];
    svc__db_error(j->r, status, res, svc__est_sqlstates, &http, &error, detail, sizeof(detail));
    if (http < 500) {
        char ev[64];
        snprintf(ev, sizeof(ev), "%s_refused", j->action);
        https_audit(j->r, ev, j->subject[0] ? j->subject : NULL,
                    json_pack("{s:i, s:s, s:s}", "status", http, "error", error, "reason",
                              detail));
    }
    svc__reply_error(j->r, http, error, detail, NULL, 0);
}

json_t *svc__json_body(https_req *r)
{
    json_error_t e;
    if (r->http->body_len == 0)
        return json_object();
    json_t *b = json_loadb(r->http->body, r->http->body_len, JSON_REJECT_DUPLICATES, &e);
    if (!b || !json_is_object(b)) {
        char why[200];
        snprintf(why, sizeof(why), "the body must be a JSON object%s%s", b ? "" : ": ",
                 b ? "" : e.text);
        json_decref(b);
        svc__reply_error(r, 400, "bad_request", why, NULL, 0);
        return NULL;
    }
    return b;
}

/* ---- POST /api/v1/enroll/tokens -------------------------------------------------- */

static void on_token_created(void *ctx, int status, const store_rows *res)
{
    tok_job *j = ctx;
    https_req *r = j->r;
    if (status == CMS_OK && store_rows_count(res) != 1)
        status = CMS_EINTERNAL;
    if (status != CMS_OK) {
        tok_db_refuse(j, status, res);
        goto done;
    }
    char actor[96];
    svc__actor(r->peer, r->peer_cn, actor, sizeof(actor));
    log_info("enroll_token_created", store_rows_text(res, 0, 1), r->peer_addr,
             "token %s by %s, expires %s", store_rows_text(res, 0, 0), actor,
             store_rows_text(res, 0, 3));
    json_t *body = json_pack("{s:I, s:s, s:o, s:s, s:s, s:s, s:s}", "id",
                             (json_int_t)strtoll(store_rows_text(res, 0, 0), NULL, 10), "serial",
                             store_rows_text(res, 0, 1), "model",
                             store_rows_null(res, 0, 2) ? json_null()
                                                        : json_string(store_rows_text(res, 0, 2)),
                             "token", j->token, "expires_at", store_rows_text(res, 0, 3),
                             "device_status", store_rows_text(res, 0, 4), "created_by", actor);
    https_reply_json(r, 201, body);
done:
    tok_job_free(j);
}

int enroll_token_create(https_req *r)
{
    svc_state *st = r->ctx->svc;
    unsigned char raw[TOKEN_BYTES];
    char hash[SVC_SHA256_PARAM_SIZE], ttl[16], actor[96];
    tok_job *j = NULL;
    json_t *b = svc__json_body(r);
    if (!b)
        return CMS_OK;
    json_t *serial = json_object_get(b, "serial"), *model = json_object_get(b, "model"),
           *jttl = json_object_get(b, "ttl_s");
    unsigned max = st->cfg->enroll_token_ttl_s;
    json_int_t t = max;
    const char *why = NULL;
    if (!json_is_string(serial))
        why = "\"serial\" (string) is required";
    else if (model && !json_is_null(model) && !json_is_string(model))
        why = "\"model\" must be a string";
    else if (jttl && !json_is_null(jttl) && !json_is_integer(jttl))
        why = "\"ttl_s\" must be an integer number of seconds";
    else if (jttl && json_is_integer(jttl))
        t = json_integer_value(jttl);
    char reason[160];
    if (!why && (t < 1 || t > (json_int_t)max)) {
        snprintf(reason, sizeof(reason), "\"ttl_s\" must be between 1 and %u seconds", max);
        why = reason;
    }
    if (why) {
        https_audit(r, "enroll_token_create_refused",
                    json_is_string(serial) ? json_string_value(serial) : NULL,
                    json_pack("{s:i, s:s}", "status", 400, "reason", why));
        svc__reply_error(r, 400, "bad_request", why, NULL, 0);
        goto done;
    }
    if (!(j = calloc(1, sizeof(*j)))) {
        svc__reply_error(r, 500, "internal_error", "out of memory", NULL, 0);
        goto done;
    }
    j->r = r;
    snprintf(j->action, sizeof(j->action), "enroll_token_create");
    snprintf(j->subject, sizeof(j->subject), "%s", json_string_value(serial));
    size_t n = 0;
    if (RAND_bytes(raw, sizeof(raw)) != 1 ||
        OPENSSL_buf2hexstr_ex(j->token, sizeof(j->token), &n, raw, sizeof(raw), '\0') != 1) {
        svc__reply_error(r, 500, "internal_error", "no random bytes", NULL, 0);
        goto done;
    }
    for (char *p = j->token; *p; p++) /* lowercase hex */
        if (*p >= 'A' && *p <= 'F')
            *p = (char)(*p - 'A' + 'a');
    if (svc__sha256_param(j->token, hash) != CMS_OK) {
        svc__reply_error(r, 500, "internal_error", "cannot hash the token", NULL, 0);
        goto done;
    }
    snprintf(ttl, sizeof(ttl), "%lld", (long long)t);
    svc__actor(r->peer, r->peer_cn, actor, sizeof(actor));
    const char *params[6] = {json_string_value(serial),
                             json_is_string(model) ? json_string_value(model) : NULL,
                             ttl,
                             hash,
                             actor,
                             r->peer_addr};
    if (store_query(st->store, create_sql, 6, params, on_token_created, j) != CMS_OK) {
        svc__reply_error(r, 503, "busy", "the registry is busy: retry later", NULL, 0);
        goto done;
    }
    OPENSSL_cleanse(raw, sizeof(raw));
    json_decref(b);
    return CMS_EAGAIN;
done:
    OPENSSL_cleanse(raw, sizeof(raw));
    tok_job_free(j);
    json_decref(b);
    return CMS_OK;
}

/* ---- GET /api/v1/enroll/tokens ---------------------------------------------------- */

static void on_token_list(void *ctx, int status, const store_rows *res)
{
    tok_job *j = ctx;
    if (status == CMS_OK && store_rows_count(res) != 1)
        status = CMS_EINTERNAL;
    if (status != CMS_OK) {
        tok_db_refuse(j, status, res);
        goto done;
    }
    json_error_t e;
    json_t *list = json_loads(store_rows_text(res, 0, 0), 0, &e);
    if (!list) {
        svc__reply_error(j->r, 500, "internal_error", "cannot read the token list", NULL, 0);
        goto done;
    }
    https_reply_json(j->r, 200, json_pack("{s:o}", "tokens", list));
done:
    tok_job_free(j);
}

int enroll_token_list(https_req *r)
{
    static const char *const allowed[] = {"serial", "state", "limit", NULL};
    svc_state *st = r->ctx->svc;
    const http_request *h = r->http;
    char serial[PKI_CN_MAX + 1], state[16], limit[16];
    int has_serial, has_state, has_limit;
    if (http_query_check(h->query, h->query_len, allowed) != CMS_OK ||
        (has_serial = http_query_get(h->query, h->query_len, "serial", serial, sizeof(serial),
                                     NULL)) < 0 ||
        (has_state = http_query_get(h->query, h->query_len, "state", state, sizeof(state),
                                    NULL)) < 0 ||
        (has_limit = http_query_get(h->query, h->query_len, "limit", limit, sizeof(limit),
                                    NULL)) < 0) {
        svc__reply_error(r, 400, "bad_request",
                         "query parameters: serial, state (active|used|expired|revoked), limit",
                         NULL, 0);
        return CMS_OK;
    }
    if (has_state && strcmp(state, "active") != 0 && strcmp(state, "used") != 0 &&
        strcmp(state, "expired") != 0 && strcmp(state, "revoked") != 0) {
        svc__reply_error(r, 400, "bad_request", "state must be active, used, expired or revoked",
                         NULL, 0);
        return CMS_OK;
    }
    long lim = LIST_DEFAULT;
    if (has_limit) {
        char *end = NULL;
        lim = strtol(limit, &end, 10);
        if (!*limit || *end || lim < 1 || lim > LIST_MAX) {
            svc__reply_error(r, 400, "bad_request", "limit must be 1 to 1000", NULL, 0);
            return CMS_OK;
        }
    }
    snprintf(limit, sizeof(limit), "%ld", lim);
    tok_job *j = calloc(1, sizeof(*j));
    if (!j) {
        svc__reply_error(r, 500, "internal_error", "out of memory", NULL, 0);
        return CMS_OK;
    }
    j->r = r;
    snprintf(j->action, sizeof(j->action), "enroll_token_list");
    const char *params[3] = {has_serial ? serial : NULL, has_state ? state : NULL, limit};
    if (store_query(st->store, list_sql, 3, params, on_token_list, j) != CMS_OK) {
        svc__reply_error(r, 503, "busy", "the registry is busy: retry later", NULL, 0);
        tok_job_free(j);
        return CMS_OK;
    }
    return CMS_EAGAIN;
}

/* ---- POST /api/v1/enroll/tokens/:id/revoke --------------------------------------------- */

static void on_token_revoked(void *ctx, int status, const store_rows *res)
{
    tok_job *j = ctx;
    if (status == CMS_OK && store_rows_count(res) != 1)
        status = CMS_EINTERNAL;
    if (status != CMS_OK) {
        tok_db_refuse(j, status, res);
        goto done;
    }
    log_info("enroll_token_revoked", store_rows_text(res, 0, 1), j->r->peer_addr, "token %s",
             store_rows_text(res, 0, 0));
    https_reply_json(j->r, 200,
                     json_pack("{s:I, s:s, s:s}", "id",
                               (json_int_t)strtoll(store_rows_text(res, 0, 0), NULL, 10), "serial",
                               store_rows_text(res, 0, 1), "revoked_at",
                               store_rows_text(res, 0, 2)));
done:
    tok_job_free(j);
}

int enroll_token_revoke(https_req *r)
{
    svc_state *st = r->ctx->svc;
    const char *id = r->params[0];
    char actor[96];
    if (!*id || strspn(id, "0123456789") != strlen(id) || strlen(id) > 18) {
        svc__reply_error(r, 400, "bad_request", "a token id is a positive integer", NULL, 0);
        return CMS_OK;
    }
    tok_job *j = calloc(1, sizeof(*j));
    if (!j) {
        svc__reply_error(r, 500, "internal_error", "out of memory", NULL, 0);
        return CMS_OK;
    }
    j->r = r;
    snprintf(j->action, sizeof(j->action), "enroll_token_revoke");
    svc__actor(r->peer, r->peer_cn, actor, sizeof(actor));
    const char *params[3] = {id, actor, r->peer_addr};
    if (store_query(st->store, revoke_sql, 3, params, on_token_revoked, j) != CMS_OK) {
        svc__reply_error(r, 503, "busy", "the registry is busy: retry later", NULL, 0);
        tok_job_free(j);
        return CMS_OK;
    }
    return CMS_EAGAIN;
}
