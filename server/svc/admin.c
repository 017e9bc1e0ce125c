/*
 * admin.c - the operator API's registry, group and audit resources (svc
 * layer): who am I, devices, a device's certificates, groups and their
 * membership, the audit log and its verification.
 *
 * Every handler validates what the peer sent (query parameters against an
 * allowlist, values against their syntax), then runs ONE parameterized
 * statement with store_query() and answers from the store callback. JSON is
 * built with jansson from the result columns; the SQL only formats times
 * (ISO 8601 UTC) and never builds JSON. Errors are JSON {"error", "detail"}:
 * 400 bad parameters or body, 404 unknown device/group, 415 body not JSON,
 * 503 database unavailable (or the statement timed out), 500 otherwise.
 *
 * Who may call what is decided by the route table (routes.c); the only
 * mutating resource here, POST /api/v1/groups/:name/devices, writes its
 * audit rows in the same transaction as the change (cms.group_update), so a
 * change without its audit row cannot exist; a refused change is audited
 * with https_audit().
 *
 * Thread: the worker loop's thread (like every handler).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "cms_err.h"
#include "https.h"
#include "log.h"
#include "svc.h"

#define SERIAL_MAX 64       /* device serials (002 allows 1..64 characters) */
#define NAME_MAX_LEN 63     /* group names, event names */
#define DEVICES_DEFAULT 500 /* page sizes: default and cap */
#define DEVICES_MAX 1000
#define AUDIT_DEFAULT 100
#define AUDIT_MAX 1000
#define GROUPS_MAX 10000
#define GROUP_UPDATE_MAX 1000 /* serials in one POST */

/* SQL fragment: a timestamptz as "2026-11-28T06:14:54.123456Z" (or NULL). */
#define ISO(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

static const char *const role_names[] = {"none", "viewer", "operator", "admin"};

/* ---- small helpers ----------------------------------------------------------- */

static svc_state *svc_of(https_req *r)
{
    return r->ctx->svc;
}

/* Runs sql with params; the answer comes from cb. Returns what the handler returns. */
static int submit(https_req *r, const char *sql, int n, const char *const *params,
                  store_query_cb cb)
{
    int rc = store_query(svc_of(r)->store, sql, n, params, cb, r);
    if (rc == CMS_OK)
        return CMS_EAGAIN;
    if (rc == CMS_ELIMIT)
        https_reply_error(r, 503, "busy", "too many database statements queued; retry");
    else if (rc == CMS_ECLOSED)
        https_reply_error(r, 503, "shutting_down", "the server is shutting down");
    else
        https_reply_error(r, 500, "internal_error", cms_strerror(rc));
    return CMS_OK;
}

/*
 * Answers a failed statement. status: the store's; res: its error result
 * (CMS_EPROTO only). Our SQL functions raise 22023 for bad arguments and
 * P0002 for unknown names, with a message meant for the operator.
 */
static void reply_db_error(https_req *r, int status, const PGresult *res)
{
    if (status == CMS_EUNAVAIL || status == CMS_ECLOSED) {
        https_reply_error(r, 503, "database_unavailable",
                          status == CMS_ECLOSED ? "the server is shutting down"
                                                : "the database is unavailable or timed out");
        return;
    }
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!state)
        state = "";
    if (!msg)
        msg = "";
    if (strncmp(state, "22", 2) == 0) { /* data exception: a value the peer sent */
        https_reply_error(r, 400, "bad_request", msg);
    } else if (strcmp(state, "P0002") == 0) {
        https_reply_error(r, 404, "not_found", msg);
    } else if (strncmp(state, "23", 2) == 0) {
        https_reply_error(r, 409, "conflict", msg);
    } else {
        log_error("db_error", NULL, r->peer_addr, "%s %s: SQLSTATE %s: %s",
                  r->http->method_name, r->http->path, state, msg);
        https_reply_error(r, 500, "internal_error", "database error (see the server log)");
    }
}

/*
 * Refuses a query string with parameters outside allowed (or repeated, or
 * malformed) with 400. Returns true when the request may go on.
 */
static bool query_ok(https_req *r, const char *const *allowed)
{
    if (http_query_check(r->http->query, r->http->query_len, allowed) == CMS_OK)
        return true;
    char detail[200];
    size_t n = (size_t)snprintf(detail, sizeof(detail), "unknown, repeated or malformed query "
                                                        "parameter; allowed:");
    for (size_t i = 0; allowed[i] && n < sizeof(detail); i++)
        n += (size_t)snprintf(detail + n, sizeof(detail) - n, " %s", allowed[i]);
    https_reply_error(r, 400, "bad_request", detail);
    return false;
}

/*
 * Gets query parameter name into out. Returns 1 (present, non-empty), 0
 * (absent or empty: treated alike), or -1 after answering 400.
 */
static int query_param(https_req *r, const char *name, char *out, size_t cap)
{
    size_t len = 0;
    int rc = http_query_get(r->http->query, r->http->query_len, name, out, cap, &len);
    if (rc == 1)
        return len > 0 ? 1 : 0;
    if (rc == 0)
        return 0;
    char detail[120];
    snprintf(detail, sizeof(detail), "query parameter '%s' is %s", name,
             rc == CMS_ELIMIT ? "too long" : "malformed");
    https_reply_error(r, 400, "bad_request", detail);
    return -1;
}

/* 1..cap-1 printable characters, no control characters (serials, events). */
static bool plain_text(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

/* A group name: [A-Za-z0-9][A-Za-z0-9._:-]{0,62} (as the CHECK in 003). */
static bool group_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != ':' && c != '-')))
            return false;
    }
    return true;
}

static bool status_ok(const char *s)
{
    static const char *const ok[] = {"pending", "active", "revoked", "decommissioned"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (strcmp(s, ok[i]) == 0)
            return true;
    return false;
}

/*
 * Parses a positive decimal integer in [1, max] from a query parameter.
 * Returns 1 (set), 0 (absent: *v unchanged) or -1 after answering 400.
 */
static int query_uint(https_req *r, const char *name, long long max, long long *v)
{
    char buf[32];
    int rc = query_param(r, name, buf, sizeof(buf));
    if (rc <= 0)
        return rc;
    char *end;
    errno = 0;
    long long x = strtoll(buf, &end, 10);
    if (errno || *end || end == buf || buf[0] == '-' || buf[0] == '+' || x < 1 || x > max) {
        char detail[120];
        snprintf(detail, sizeof(detail), "%s must be an integer from 1 to %lld", name, max);
        https_reply_error(r, 400, "bad_request", detail);
        return -1;
    }
    *v = x;
    return 1;
}

/* Column by name, -1 when absent. */
static int col(const PGresult *res, const char *name)
{
    return PQfnumber(res, name);
}

/* A text column as a JSON string, or null. */
static json_t *j_text(const PGresult *res, int row, int c)
{
    if (c < 0 || PQgetisnull(res, row, c))
        return json_null();
    json_t *s = json_string(PQgetvalue(res, row, c));
    return s ? s : json_string("?"); /* not UTF-8: cannot happen with a UTF8 database */
}

/* An integer column as a JSON integer, or null. */
static json_t *j_int(const PGresult *res, int row, int c)
{
    if (c < 0 || PQgetisnull(res, row, c))
        return json_null();
    return json_integer((json_int_t)strtoll(PQgetvalue(res, row, c), NULL, 10));
}

/* Sets key of o from column name of row: text (or null). */
static void set_text(json_t *o, const char *key, const PGresult *res, int row, const char *name)
{
    json_object_set_new(o, key, j_text(res, row, col(res, name)));
}

static void set_int(json_t *o, const char *key, const PGresult *res, int row, const char *name)
{
    json_object_set_new(o, key, j_int(res, row, col(res, name)));
}

/* A comma-separated column (group names: no commas by their CHECK) as an array. */
static json_t *j_list(const PGresult *res, int row, int c)
{
    json_t *a = json_array();
    if (c < 0 || PQgetisnull(res, row, c))
        return a;
    const char *p = PQgetvalue(res, row, c);
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n)
            json_array_append_new(a, json_stringn(p, n));
        p += n + (e ? 1 : 0);
    }
    return a;
}

/*
 * Keeps the first elements of list (a member of body) whose encoding fits
 * the output limit with room to spare, so that a page is never refused as
 * too large. Returns the number of elements dropped.
 */
static size_t fit_output(https_req *r, json_t *list)
{
    size_t budget = r->ctx->cfg.max_output_bytes;
    budget = budget > 16384 ? budget - 8192 : budget / 2; /* head + the rest of the body */
    size_t used = 0, n = json_array_size(list), keep = n;
    for (size_t i = 0; i < n; i++) {
        used += json_dumpb(json_array_get(list, i), NULL, 0, JSON_COMPACT) + 1;
        if (used > budget) {
            keep = i > 0 ? i : 1; /* one element always goes (the limit is far above it) */
            break;
        }
    }
    for (size_t i = n; i > keep; i--)
        json_array_remove(list, i - 1);
    return n - keep;
}

/* ---- GET /api/v1/whoami ------------------------------------------------------- */

int admin_whoami(https_req *r)
{
    static const char *const allowed[] = {NULL};
    if (!query_ok(r, allowed))
        return CMS_OK;
    char actor[96];
    snprintf(actor, sizeof(actor), "operator:%s", r->peer_cn);
    unsigned role = (unsigned)r->role < 4 ? (unsigned)r->role : 0;
    https_reply_json(r, 200,
                     json_pack("{s:s, s:s, s:s, s:s}", "cn", r->peer_cn, "role", role_names[role],
                               "actor", actor, "peer", r->peer_addr ? r->peer_addr : ""));
    return CMS_OK;
}

/* ---- devices ------------------------------------------------------------------ */

/* Columns of cms.device_overview as the API shows them (see device_json). */
#define DEVICE_COLS                                                                        \
    "d.serial, d.model, d.status, " ISO("d.status_changed_at") " AS status_changed_at, "   \
    "d.status_reason, d.location, array_to_string(d.groups, ',') AS groups, "              \
    ISO("d.created_at") " AS created_at, " ISO("d.last_seen_at") " AS last_seen_at, "     \
    "d.last_peer, d.firmware_version, d.cert_serial_hex, d.cert_sha256, d.cert_key, "     \
    ISO("d.cert_not_before") " AS cert_not_before, " ISO("d.cert_not_after") " AS cert_not_after"

/*
 * A device as the API shows it:
 *   {"serial", "model", "status", "status_changed_at", "status_reason",
 *    "location", "groups": [...], "created_at", "last_seen_at", "last_peer",
 *    "firmware_version", "certificate": {"serial_hex", "sha256", "key",
 *    "not_before", "not_after"} or null (no current recorded certificate)}
 * Times are ISO 8601 UTC strings or null.
 */
static json_t *device_json(const PGresult *res, int row)
{
    json_t *o = json_object();
    set_text(o, "serial", res, row, "serial");
    set_text(o, "model", res, row, "model");
    set_text(o, "status", res, row, "status");
    set_text(o, "status_changed_at", res, row, "status_changed_at");
    set_text(o, "status_reason", res, row, "status_reason");
    set_text(o, "location", res, row, "location");
    json_object_set_new(o, "groups", j_list(res, row, col(res, "groups")));
    set_text(o, "created_at", res, row, "created_at");
    set_text(o, "last_seen_at", res, row, "last_seen_at");
    set_text(o, "last_peer", res, row, "last_peer");
    set_text(o, "firmware_version", res, row, "firmware_version");
    int cs = col(res, "cert_sha256");
    if (cs >= 0 && !PQgetisnull(res, row, cs)) {
        json_t *c = json_object();
        set_text(c, "serial_hex", res, row, "cert_serial_hex");
        set_text(c, "sha256", res, row, "cert_sha256");
        set_text(c, "key", res, row, "cert_key");
        set_text(c, "not_before", res, row, "cert_not_before");
        set_text(c, "not_after", res, row, "cert_not_after");
        json_object_set_new(o, "certificate", c);
    } else {
        json_object_set_new(o, "certificate", json_null());
    }
    return o;
}

static void on_device_list(void *ctx, int status, const PGresult *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        reply_db_error(r, status, res);
        return;
    }
    long long limit = (long long)(intptr_t)r->user;
    int n = PQntuples(res);
    bool more = n > limit;
    if (more)
        n = (int)limit;
    json_t *list = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(list, device_json(res, i));
    more = fit_output(r, list) > 0 || more;
    json_t *last = json_array_size(list) ? json_array_get(list, json_array_size(list) - 1) : NULL;
    json_t *next = more && last ? json_incref(json_object_get(last, "serial")) : json_null();
    https_reply_json(r, 200, json_pack("{s:o, s:o}", "devices", list, "next_after", next));
}

int admin_device_list(https_req *r)
{
    static const char *const allowed[] = {"status", "group", "after", "limit", NULL};
    char st[32], group[NAME_MAX_LEN + 2], after[SERIAL_MAX + 2], lim[24];
    long long limit = DEVICES_DEFAULT;
    int has_st, has_group, has_after;
    if (!query_ok(r, allowed) || (has_st = query_param(r, "status", st, sizeof(st))) < 0 ||
        (has_group = query_param(r, "group", group, sizeof(group))) < 0 ||
        (has_after = query_param(r, "after", after, sizeof(after))) < 0 ||
        query_uint(r, "limit", DEVICES_MAX, &limit) < 0)
        return CMS_OK;
    if (has_st && !status_ok(st)) {
        https_reply_error(r, 400, "bad_request",
                          "status must be pending, active, revoked or decommissioned");
        return CMS_OK;
    }
    if (has_group && !group_name_ok(group)) {
        https_reply_error(r, 400, "bad_request", "group: not a valid group name");
        return CMS_OK;
    }
    if (has_after && !plain_text(after, SERIAL_MAX)) {
        https_reply_error(r, 400, "bad_request", "after: not a valid serial");
        return CMS_OK;
    }
    snprintf(lim, sizeof(lim), "%lld", limit + 1); /* one more: is there a next page? */
    r->user = (void *)(intptr_t)limit;
    const char *p[4] = {has_st ? st : NULL, has_group ? group : NULL, has_after ? after : NULL,
                        lim};
    return submit(r,
                  "SELECT " DEVICE_COLS " FROM cms.device_overview d "
                  "WHERE ($1::text IS NULL OR d.status = $1) "
                  "AND ($2::text IS NULL OR $2 = ANY (d.groups)) "
                  "AND ($3::text IS NULL OR d.serial > $3) "
                  "ORDER BY d.serial LIMIT $4::integer",
                  4, p, on_device_list);
}

static void on_device_show(void *ctx, int status, const PGresult *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        reply_db_error(r, status, res);
        return;
    }
    if (PQntuples(res) == 0) {
        https_reply_error(r, 404, "not_found", "no such device");
        return;
    }
    json_t *o = device_json(res, 0);
    json_t *ids = json_array();
    int ci = col(res, "identifier"), ck = col(res, "ident_kind");
    for (int i = 0; i < PQntuples(res); i++) {
        if (ci < 0 || PQgetisnull(res, i, ci))
            continue;
        json_array_append_new(ids, json_pack("{s:o, s:o}", "identifier", j_text(res, i, ci),
                                             "kind", j_text(res, i, ck)));
    }
    json_object_set_new(o, "identifiers", ids);
    https_reply_json(r, 200, o);
}

int admin_device_show(https_req *r)
{
    static const char *const allowed[] = {NULL};
    if (!query_ok(r, allowed))
        return CMS_OK;
    if (!plain_text(r->params[0], SERIAL_MAX)) {
        https_reply_error(r, 404, "not_found", "no such device");
        return CMS_OK;
    }
    const char *p[1] = {r->params[0]};
    /* One row per identifier (or one row with NULLs). */
    return submit(r,
                  "SELECT " DEVICE_COLS ", i.identifier, i.kind AS ident_kind "
                  "FROM cms.device_overview d "
                  "LEFT JOIN cms.device_identifiers i ON i.device_id = d.id "
                  "WHERE d.serial = $1 ORDER BY i.identifier",
                  1, p, on_device_show);
}

/* GET /api/v1/devices/:serial/certs: one row per certificate, or one
 * row with NULL certificate columns when the device has none (404 when the
 * device does not exist). */
static void on_device_certs(void *ctx, int status, const PGresult *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        reply_db_error(r, status, res);
        return;
    }
    if (PQntuples(res) == 0) {
        https_reply_error(r, 404, "not_found", "no such device");
        return;
    }
    json_t *list = json_array();
    int cf = col(res, "sha256");
    for (int i = 0; i < PQntuples(res); i++) {
        if (cf < 0 || PQgetisnull(res, i, cf))
            continue;
        json_t *o = json_object();
        set_text(o, "serial_hex", res, i, "serial_hex");
        set_text(o, "sha256", res, i, "sha256");
        set_text(o, "state", res, i, "state");
        set_text(o, "key", res, i, "key_desc");
        set_text(o, "subject_cn", res, i, "subject_cn");
        set_text(o, "not_before", res, i, "not_before");
        set_text(o, "not_after", res, i, "not_after");
        set_text(o, "issued_at", res, i, "issued_at");
        set_text(o, "issued_via", res, i, "issued_via");
        set_text(o, "superseded_at", res, i, "superseded_at");
        set_text(o, "revoked_at", res, i, "revoked_at");
        set_text(o, "revocation_reason", res, i, "revocation_reason");
        json_array_append_new(list, o);
    }
    fit_output(r, list);
    https_reply_json(r, 200,
                     json_pack("{s:o, s:o, s:o}", "serial", j_text(res, 0, col(res, "serial")),
                               "status", j_text(res, 0, col(res, "status")), "certs", list));
}

int admin_device_certs(https_req *r)
{
    static const char *const allowed[] = {NULL};
    if (!query_ok(r, allowed))
        return CMS_OK;
    if (!plain_text(r->params[0], SERIAL_MAX)) {
        https_reply_error(r, 404, "not_found", "no such device");
        return CMS_OK;
    }
    const char *p[1] = {r->params[0]};
    /* state: the certificate's standing now (revoked > superseded > expired > current). */
    return submit(r,
                  "SELECT d.serial, d.status, c.serial_hex, c.fingerprint_sha256 AS sha256, "
                  "c.subject_cn, c.key_desc, c.issued_via, c.revocation_reason, "
                  ISO("c.not_before") " AS not_before, " ISO("c.not_after") " AS not_after, "
                  ISO("c.issued_at") " AS issued_at, "
                  ISO("c.superseded_at") " AS superseded_at, "
                  ISO("c.revoked_at") " AS revoked_at, "
                  "CASE WHEN c.revoked_at IS NOT NULL THEN 'revoked' "
                  "     WHEN c.superseded_at IS NOT NULL THEN 'superseded' "
                  "     WHEN c.not_after <= now() THEN 'expired' "
                  "     WHEN c.not_before > now() THEN 'not_yet_valid' "
                  "     ELSE 'current' END AS state "
                  "FROM cms.devices d LEFT JOIN cms.device_certs c ON c.device_id = d.id "
                  "WHERE d.serial = $1 ORDER BY c.issued_at DESC, c.id DESC LIMIT 1000",
                  1, p, on_device_certs);
}

/* ---- groups ------------------------------------------------------------------- */

static void on_group_list(void *ctx, int status, const PGresult *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        reply_db_error(r, status, res);
        return;
    }
    json_t *list = json_array();
    for (int i = 0; i < PQntuples(res); i++) {
        json_t *o = json_object();
        set_text(o, "name", res, i, "name");
        set_text(o, "description", res, i, "description");
        set_int(o, "devices", res, i, "devices");
        set_text(o, "created_at", res, i, "created_at");
        set_text(o, "created_by", res, i, "created_by");
        json_array_append_new(list, o);
    }
    bool truncated = fit_output(r, list) > 0 || PQntuples(res) > GROUPS_MAX;
    https_reply_json(r, 200, json_pack("{s:o, s:b}", "groups", list, "truncated", truncated));
}

int admin_group_list(https_req *r)
{
    static const char *const allowed[] = {NULL};
    if (!query_ok(r, allowed))
        return CMS_OK;
    char lim[16];
    snprintf(lim, sizeof(lim), "%d", GROUPS_MAX + 1);
    const char *p[1] = {lim};
    return submit(r,
                  "SELECT g.name, g.description, " ISO("g.created_at") " AS created_at, "
                  "g.created_by, count(m.device_id) AS devices "
                  "FROM cms.device_groups g "
                  "LEFT JOIN cms.device_group_members m ON m.group_id = g.id "
                  "GROUP BY g.id ORDER BY g.name LIMIT $1::integer",
                  1, p, on_group_list);
}

/* Audits a refused membership change (the change itself audits in SQL). */
static void audit_group_refused(https_req *r, const char *group, int status, const char *why)
{
    https_audit(r, "group_update_refused", NULL,
                json_pack("{s:s, s:i, s:s}", "group", group, "status", status, "reason", why));
}

static void on_group_set(void *ctx, int status, const PGresult *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        if (status == CMS_EPROTO) {
            const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
            audit_group_refused(r, r->params[0], 0, msg ? msg : "refused by the database");
        }
        reply_db_error(r, status, res);
        return;
    }
    static const char *const outcomes[] = {"added", "already_member", "removed", "not_member"};
    json_t *body = json_pack("{s:s}", "group", r->params[0]);
    json_t *lists[4];
    for (size_t k = 0; k < 4; k++) {
        lists[k] = json_array();
        json_object_set_new(body, outcomes[k], lists[k]);
    }
    int cs = col(res, "serial"), co = col(res, "outcome");
    for (int i = 0; i < PQntuples(res); i++) {
        const char *o = co >= 0 ? PQgetvalue(res, i, co) : "";
        for (size_t k = 0; k < 4; k++)
            if (strcmp(o, outcomes[k]) == 0)
                json_array_append_new(lists[k], j_text(res, i, cs));
    }
    https_reply_json(r, 200, body);
}

/* Checks one "add"/"remove" member of the body; NULL is fine. Returns a reason or NULL. */
static const char *serial_list_error(const json_t *a, size_t *total)
{
    if (!a)
        return NULL;
    if (!json_is_array(a))
        return "add and remove must be arrays of serials";
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v)
    {
        if (!json_is_string(v) || !plain_text(json_string_value(v), SERIAL_MAX) ||
            strlen(json_string_value(v)) != json_string_length(v))
            return "every serial must be a string of 1 to 64 printable characters";
    }
    *total += json_array_size(a);
    return NULL;
}

int admin_group_set(https_req *r)
{
    static const char *const allowed[] = {NULL};
    if (!query_ok(r, allowed))
        return CMS_OK;
    const char *group = r->params[0];
    const char *why = NULL;
    int code = 400;
    json_t *body = NULL;
    char *add = NULL, *rem = NULL, actor[96];
    int rc = CMS_OK;

    if (!group_name_ok(group)) {
        why = "invalid group name: 1..63 characters of A-Z a-z 0-9 . _ : -, starting with a "
              "letter or digit";
        goto refuse;
    }
    const char *ct = http_request_header(r->http, "Content-Type");
    if (ct && strncasecmp(ct, "application/json", 16) != 0) {
        code = 415;
        why = "the body must be application/json";
        goto refuse;
    }
    json_error_t jerr;
    body = json_loadb(r->http->body, r->http->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(body)) {
        why = body ? "the body must be a JSON object {\"add\": [...], \"remove\": [...]}"
                   : "the body is not valid JSON";
        goto refuse;
    }
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        if (strcmp(key, "add") != 0 && strcmp(key, "remove") != 0) {
            why = "unknown member in the body (only \"add\" and \"remove\")";
            goto refuse;
        }
    }
    size_t total = 0;
    json_t *ja = json_object_get(body, "add"), *jr = json_object_get(body, "remove");
    if ((why = serial_list_error(ja, &total)) || (why = serial_list_error(jr, &total)))
        goto refuse;
    if (total == 0) {
        why = "nothing to add or remove";
        goto refuse;
    }
    if (total > GROUP_UPDATE_MAX) {
        code = 413;
        why = "at most 1000 serials per request";
        goto refuse;
    }
    add = ja ? json_dumps(ja, JSON_COMPACT) : NULL;
    rem = jr ? json_dumps(jr, JSON_COMPACT) : NULL;
    if ((ja && !add) || (jr && !rem)) {
        https_reply_error(r, 500, "internal_error", "out of memory");
        goto cleanup;
    }
    snprintf(actor, sizeof(actor), "operator:%s", r->peer_cn);
    const char *p[5] = {group, add, rem, actor, r->peer_addr};
    rc = submit(r,
                "SELECT serial, outcome FROM cms.group_update($1, $2::jsonb, $3::jsonb, $4, $5)",
                5, p, on_group_set);
    goto cleanup;
refuse:
    audit_group_refused(r, group, code, why);
    https_reply_error(r, code, code == 415 ? "unsupported_media_type" : "bad_request", why);
cleanup:
    json_decref(body);
    free(add);
    free(rem);
    return rc;
}

/* ---- audit -------------------------------------------------------------------- */

static void on_audit_list(void *ctx, int status, const PGresult *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        reply_db_error(r, status, res);
        return;
    }
    long long limit = (long long)(intptr_t)r->user;
    int n = PQntuples(res);
    bool more = n > limit;
    if (more)
        n = (int)limit;
    int cd = col(res, "detail");
    json_t *list = json_array();
    for (int i = 0; i < n; i++) {
        json_t *o = json_object();
        set_int(o, "id", res, i, "id");
        set_text(o, "at", res, i, "at");
        set_text(o, "event", res, i, "event");
        set_text(o, "actor", res, i, "actor");
        set_text(o, "device", res, i, "device");
        set_text(o, "peer", res, i, "peer");
        json_t *d = NULL;
        if (cd >= 0 && !PQgetisnull(res, i, cd))
            d = json_loads(PQgetvalue(res, i, cd), JSON_DECODE_ANY, NULL);
        json_object_set_new(o, "detail", d ? d : json_null());
        set_text(o, "row_hash", res, i, "row_hash");
        json_array_append_new(list, o);
    }
    more = fit_output(r, list) > 0 || more;
    json_t *last = json_array_size(list) ? json_array_get(list, json_array_size(list) - 1) : NULL;
    json_t *next = more && last ? json_incref(json_object_get(last, "id")) : json_null();
    https_reply_json(r, 200, json_pack("{s:o, s:o}", "events", list, "next_before", next));
}

int admin_audit_list(https_req *r)
{
    static const char *const allowed[] = {"since", "device", "event", "limit", "before", NULL};
    char since[64], device[SERIAL_MAX + 2], event[NAME_MAX_LEN + 2], lim[24], before[24];
    long long limit = AUDIT_DEFAULT, before_id = 0;
    int has_since, has_dev, has_ev, has_before;
    if (!query_ok(r, allowed) || (has_since = query_param(r, "since", since, sizeof(since))) < 0 ||
        (has_dev = query_param(r, "device", device, sizeof(device))) < 0 ||
        (has_ev = query_param(r, "event", event, sizeof(event))) < 0 ||
        query_uint(r, "limit", AUDIT_MAX, &limit) < 0 ||
        (has_before = query_uint(r, "before", INT64_MAX, &before_id)) < 0)
        return CMS_OK;
    if ((has_dev && !plain_text(device, SERIAL_MAX)) ||
        (has_ev && !plain_text(event, NAME_MAX_LEN)) ||
        (has_since && !plain_text(since, sizeof(since) - 1))) {
        https_reply_error(r, 400, "bad_request", "device, event or since is not valid text");
        return CMS_OK;
    }
    snprintf(lim, sizeof(lim), "%lld", limit + 1);
    snprintf(before, sizeof(before), "%lld", before_id);
    r->user = (void *)(intptr_t)limit;
    const char *p[5] = {has_since ? since : NULL, has_dev ? device : NULL, has_ev ? event : NULL,
                        has_before ? before : NULL, lim};
    /* Newest first: ids follow the chain, which follows time (001). */
    return submit(r,
                  "SELECT e.id, " ISO("e.at") " AS at, e.event, e.actor, e.device, e.peer, "
                  "e.detail::text AS detail, encode(e.row_hash, 'hex') AS row_hash "
                  "FROM cms.audit_events e "
                  "WHERE ($1::timestamptz IS NULL OR e.at >= $1::timestamptz) "
                  "AND ($2::text IS NULL OR e.device = $2) "
                  "AND ($3::text IS NULL OR e.event = $3) "
                  "AND ($4::bigint IS NULL OR e.id < $4::bigint) "
                  "ORDER BY e.id DESC LIMIT $5::integer",
                  5, p, on_audit_list);
}

static void on_audit_verify(void *ctx, int status, const PGresult *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        reply_db_error(r, status, res);
        return;
    }
    if (PQntuples(res) != 1) {
        https_reply_error(r, 500, "internal_error", "unexpected answer from the database");
        return;
    }
    int cb = col(res, "first_bad_id");
    bool intact = cb >= 0 && PQgetisnull(res, 0, cb);
    json_t *o = json_object();
    json_object_set_new(o, "intact", json_boolean(intact));
    set_int(o, "first_bad_id", res, 0, "first_bad_id");
    set_text(o, "reason", res, 0, "reason");
    set_int(o, "rows_checked", res, 0, "rows_checked");
    set_int(o, "bad_rows", res, 0, "bad_rows");
    set_int(o, "last_id", res, 0, "last_id");
    set_text(o, "last_hash", res, 0, "last_hash");
    if (!intact)
        log_warn("audit_chain_broken", NULL, r->peer_addr, "first bad row %s: %s",
                 PQgetvalue(res, 0, cb), PQgetvalue(res, 0, col(res, "reason")));
    https_reply_json(r, 200, o);
}

int admin_audit_verify(https_req *r)
{
    static const char *const allowed[] = {NULL};
    if (!query_ok(r, allowed))
        return CMS_OK;
    return submit(r,
                  "SELECT first_bad_id, rows_checked, bad_rows, last_id, "
                  "encode(last_hash, 'hex') AS last_hash, reason "
                  "FROM cms.audit_verify_report()",
                  0, NULL, on_audit_verify);
}
