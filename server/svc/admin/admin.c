/*
 * admin.c - the operator API's registry and group resources (svc layer):
 * who am I, devices, a device's certificates, groups and their membership.
 * The audit log is in admin_audit.c; shared helpers and the error
 * conventions in admin_int.h.
 *
 * Who may call what is decided by the route table (routes.c). The only
 * mutating resource here, POST /api/v1/groups/:name/devices, writes its
 * audit rows in the same transaction as the change (cms.group_update, 003),
 * so a change without its audit row cannot exist; a refused change is
 * audited with https_audit().
 *
 * Thread: the worker loop's thread (like every handler).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "admin_int.h"
#include "cms_err.h"
#include "log.h"
#include "svc.h"

#define DEVICES_DEFAULT 500 /* page sizes: default and cap */
#define DEVICES_MAX 1000
#define GROUPS_MAX 10000
#define GROUP_UPDATE_MAX 1000 /* serials in one POST */

static const char *const role_names[] = {"none", "scraper", "viewer", "operator", "admin"};

/* ---- helpers -------------------------------------------------------------------- */

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

/* A comma-separated column (group names: no commas by their CHECK) as an array. */
static json_t *j_list(const store_rows *res, int row, int c)
{
    json_t *a = json_array();
    if (c < 0 || store_rows_null(res, row, c))
        return a;
    const char *p = store_rows_text(res, row, c);
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n)
            json_array_append_new(a, json_stringn(p, n));
        p += n + (e ? 1 : 0);
    }
    return a;
}

/* ---- GET /api/v1/whoami ------------------------------------------------------- */

int admin_whoami(https_req *r)
{
    static const char *const allowed[] = {NULL};
    if (!svc__query_ok(r, allowed))
        return CMS_OK;
    char actor[96];
    svc__actor(r->peer, r->peer_cn, actor, sizeof(actor));
    unsigned role = (unsigned)r->role <= HTTPS_ROLE_ADMIN ? (unsigned)r->role : 0;
    https_reply_json(r, 200,
                     json_pack("{s:s, s:s, s:s, s:s}", "cn", r->peer_cn, "role", role_names[role],
                               "actor", actor, "peer", r->peer_addr ? r->peer_addr : ""));
    return CMS_OK;
}

/* ---- devices ------------------------------------------------------------------ */

/* Columns of cms.device_overview as the API shows them (see device_json). */
/* clang-format off */
#define DEVICE_COLS                                                                        \
    "d.serial, d.model, d.status, " ISO("d.status_changed_at") " AS status_changed_at, "   \
    "d.status_reason, d.location, array_to_string(d.groups, ',') AS groups, "              \
    ISO("d.created_at") " AS created_at, " ISO("d.last_seen_at") " AS last_seen_at, "     \
    "d.last_peer, d.firmware_version, d.cert_serial_hex, d.cert_sha256, d.cert_key, "     \
    ISO("d.cert_not_before") " AS cert_not_before, " ISO("d.cert_not_after") " AS cert_not_after"
/* clang-format on */

/*
 * A device as the API shows it:
 *   {"serial", "model", "status", "status_changed_at", "status_reason",
 *    "location", "groups": [...], "created_at", "last_seen_at", "last_peer",
 *    "firmware_version", "certificate": {"serial_hex", "sha256", "key",
 *    "not_before", "not_after"} or null (no current recorded certificate)}
 * Times are ISO 8601 UTC strings or null.
 */
static json_t *device_json(const store_rows *res, int row)
{
    json_t *o = json_object();
    svc__set_text(o, "serial", res, row, "serial");
    svc__set_text(o, "model", res, row, "model");
    svc__set_text(o, "status", res, row, "status");
    svc__set_text(o, "status_changed_at", res, row, "status_changed_at");
    svc__set_text(o, "status_reason", res, row, "status_reason");
    svc__set_text(o, "location", res, row, "location");
    json_object_set_new(o, "groups", j_list(res, row, store_rows_col(res, "groups")));
    svc__set_text(o, "created_at", res, row, "created_at");
    svc__set_text(o, "last_seen_at", res, row, "last_seen_at");
    svc__set_text(o, "last_peer", res, row, "last_peer");
    svc__set_text(o, "firmware_version", res, row, "firmware_version");
    int cs = store_rows_col(res, "cert_sha256");
    if (cs >= 0 && !store_rows_null(res, row, cs)) {
        json_t *c = json_object();
        svc__set_text(c, "serial_hex", res, row, "cert_serial_hex");
        svc__set_text(c, "sha256", res, row, "cert_sha256");
        svc__set_text(c, "key", res, row, "cert_key");
        svc__set_text(c, "not_before", res, row, "cert_not_before");
        svc__set_text(c, "not_after", res, row, "cert_not_after");
        json_object_set_new(o, "certificate", c);
    } else {
        json_object_set_new(o, "certificate", json_null());
    }
    return o;
}

static void on_device_list(void *ctx, int status, const store_rows *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        svc__reply_db_error(r, status, res, admin__sqlstates);
        return;
    }
    long long limit = (long long)(intptr_t)r->user;
    int n = store_rows_count(res);
    bool more = n > limit;
    if (more)
        n = (int)limit;
    json_t *list = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(list, device_json(res, i));
    more = admin__fit_output(r, list) > 0 || more;
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
    if (!svc__query_ok(r, allowed) ||
        (has_st = admin__query_param(r, "status", st, sizeof(st))) < 0 ||
        (has_group = admin__query_param(r, "group", group, sizeof(group))) < 0 ||
        (has_after = admin__query_param(r, "after", after, sizeof(after))) < 0 ||
        admin__query_uint(r, "limit", DEVICES_MAX, &limit) < 0)
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
    if (has_after && !admin__plain_text(after, SERIAL_MAX)) {
        https_reply_error(r, 400, "bad_request", "after: not a valid serial");
        return CMS_OK;
    }
    snprintf(lim, sizeof(lim), "%lld", limit + 1); /* one more: is there a next page? */
    r->user = (void *)(intptr_t)limit;
    const char *p[4] = {has_st ? st : NULL, has_group ? group : NULL, has_after ? after : NULL,
                        lim};
    /* clang-format off */
    return svc__submit(r,
                  "SELECT " DEVICE_COLS " FROM cms.device_overview d "
                  "WHERE ($1::text IS NULL OR d.status = $1) "
                  "AND ($2::text IS NULL OR $2 = ANY (d.groups)) "
                  "AND ($3::text IS NULL OR d.serial > $3) "
                  "ORDER BY d.serial LIMIT $4::integer",
                  4, p, on_device_list);
    /* clang-format on */
}

static void on_device_show(void *ctx, int status, const store_rows *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        svc__reply_db_error(r, status, res, admin__sqlstates);
        return;
    }
    if (store_rows_count(res) == 0) {
        https_reply_error(r, 404, "not_found", "no such device");
        return;
    }
    json_t *o = device_json(res, 0);
    json_t *ids = json_array();
    int ci = store_rows_col(res, "identifier"), ck = store_rows_col(res, "ident_kind");
    for (int i = 0; i < store_rows_count(res); i++) {
        if (ci < 0 || store_rows_null(res, i, ci))
            continue;
        json_array_append_new(ids, json_pack("{s:o, s:o}", "identifier", svc__json_text(res, i, ci),
                                             "kind", svc__json_text(res, i, ck)));
    }
    json_object_set_new(o, "identifiers", ids);
    https_reply_json(r, 200, o);
}

int admin_device_show(https_req *r)
{
    static const char *const allowed[] = {NULL};
    if (!svc__query_ok(r, allowed))
        return CMS_OK;
    if (!admin__plain_text(r->params[0], SERIAL_MAX)) {
        https_reply_error(r, 404, "not_found", "no such device");
        return CMS_OK;
    }
    const char *p[1] = {r->params[0]};
    /* One row per identifier (or one row with NULLs). */
    /* clang-format off */
    return svc__submit(r,
                  "SELECT " DEVICE_COLS ", i.identifier, i.kind AS ident_kind "
                  "FROM cms.device_overview d "
                  "LEFT JOIN cms.device_identifiers i ON i.device_id = d.id "
                  "WHERE d.serial = $1 ORDER BY i.identifier",
                  1, p, on_device_show);
    /* clang-format on */
}

/* GET /api/v1/devices/:serial/certs: one row per certificate, or one
 * row with NULL certificate columns when the device has none (404 when the
 * device does not exist). */
static void on_device_certs(void *ctx, int status, const store_rows *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        svc__reply_db_error(r, status, res, admin__sqlstates);
        return;
    }
    if (store_rows_count(res) == 0) {
        https_reply_error(r, 404, "not_found", "no such device");
        return;
    }
    json_t *list = json_array();
    int cf = store_rows_col(res, "sha256");
    for (int i = 0; i < store_rows_count(res); i++) {
        if (cf < 0 || store_rows_null(res, i, cf))
            continue;
        json_t *o = json_object();
        svc__set_text(o, "serial_hex", res, i, "serial_hex");
        svc__set_text(o, "sha256", res, i, "sha256");
        svc__set_text(o, "state", res, i, "state");
        svc__set_text(o, "key", res, i, "key_desc");
        svc__set_text(o, "subject_cn", res, i, "subject_cn");
        svc__set_text(o, "not_before", res, i, "not_before");
        svc__set_text(o, "not_after", res, i, "not_after");
        svc__set_text(o, "issued_at", res, i, "issued_at");
        svc__set_text(o, "issued_via", res, i, "issued_via");
        svc__set_text(o, "superseded_at", res, i, "superseded_at");
        svc__set_text(o, "revoked_at", res, i, "revoked_at");
        svc__set_text(o, "revocation_reason", res, i, "revocation_reason");
        json_array_append_new(list, o);
    }
    admin__fit_output(r, list);
    https_reply_json(r, 200,
                     json_pack("{s:o, s:o, s:o}", "serial",
                               svc__json_text(res, 0, store_rows_col(res, "serial")), "status",
                               svc__json_text(res, 0, store_rows_col(res, "status")), "certs",
                               list));
}

int admin_device_certs(https_req *r)
{
    static const char *const allowed[] = {NULL};
    if (!svc__query_ok(r, allowed))
        return CMS_OK;
    if (!admin__plain_text(r->params[0], SERIAL_MAX)) {
        https_reply_error(r, 404, "not_found", "no such device");
        return CMS_OK;
    }
    const char *p[1] = {r->params[0]};
    /* state: the certificate's standing now (revoked > superseded > expired > current). */
    /* clang-format off */
    return svc__submit(r,
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
    /* clang-format on */
}

/* ---- groups ------------------------------------------------------------------- */

static void on_group_list(void *ctx, int status, const store_rows *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        svc__reply_db_error(r, status, res, admin__sqlstates);
        return;
    }
    json_t *list = json_array();
    for (int i = 0; i < store_rows_count(res); i++) {
        json_t *o = json_object();
        svc__set_text(o, "name", res, i, "name");
        svc__set_text(o, "description", res, i, "description");
        svc__set_int(o, "devices", res, i, "devices");
        svc__set_text(o, "created_at", res, i, "created_at");
        svc__set_text(o, "created_by", res, i, "created_by");
        json_array_append_new(list, o);
    }
    bool truncated = admin__fit_output(r, list) > 0 || store_rows_count(res) > GROUPS_MAX;
    https_reply_json(r, 200, json_pack("{s:o, s:b}", "groups", list, "truncated", truncated));
}

int admin_group_list(https_req *r)
{
    static const char *const allowed[] = {NULL};
    if (!svc__query_ok(r, allowed))
        return CMS_OK;
    char lim[16];
    snprintf(lim, sizeof(lim), "%d", GROUPS_MAX + 1);
    const char *p[1] = {lim};
    /* clang-format off */
    return svc__submit(r,
                  "SELECT g.name, g.description, " ISO("g.created_at") " AS created_at, "
                  "g.created_by, count(m.device_id) AS devices "
                  "FROM cms.device_groups g "
                  "LEFT JOIN cms.device_group_members m ON m.group_id = g.id "
                  "GROUP BY g.id ORDER BY g.name LIMIT $1::integer",
                  1, p, on_group_list);
    /* clang-format on */
}

/* Audits a refused membership change (the change itself audits in SQL). */
static void audit_group_refused(https_req *r, const char *group, int status, const char *why)
{
    https_audit(r, "group_update_refused", NULL,
                json_pack("{s:s, s:i, s:s}", "group", group, "status", status, "reason", why));
}

static void on_group_set(void *ctx, int status, const store_rows *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        int code;
        const char *error;
        char detail[512];
        svc__db_error(r, status, res, admin__sqlstates, &code, &error, detail, sizeof(detail));
        if (code < 500)
            audit_group_refused(r, r->params[0], code,
                                detail[0] ? detail : "refused by the database");
        https_reply_error(r, code, error, detail);
        return;
    }
    static const char *const outcomes[] = {"added", "already_member", "removed", "not_member"};
    json_t *body = json_pack("{s:s}", "group", r->params[0]);
    json_t *lists[4];
    for (size_t k = 0; k < 4; k++) {
        lists[k] = json_array();
        json_object_set_new(body, outcomes[k], lists[k]);
    }
    int cs = store_rows_col(res, "serial"), co = store_rows_col(res, "outcome");
    for (int i = 0; i < store_rows_count(res); i++) {
        const char *o = co >= 0 ? store_rows_text(res, i, co) : "";
        for (size_t k = 0; k < 4; k++)
            if (strcmp(o, outcomes[k]) == 0)
                json_array_append_new(lists[k], svc__json_text(res, i, cs));
    }
    log_info("group_update", NULL, r->peer_addr, "operator:%s group %s: %zu added, %zu removed",
             r->peer_cn, r->params[0], json_array_size(lists[0]), json_array_size(lists[2]));
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
        if (!json_is_string(v) || !admin__plain_text(json_string_value(v), SERIAL_MAX) ||
            strlen(json_string_value(v)) != json_string_length(v))
            return "every serial must be a string of 1 to 64 printable characters";
    }
    *total += json_array_size(a);
    return NULL;
}

int admin_group_set(https_req *r)
{
    static const char *const allowed[] = {NULL};
    if (!svc__query_ok(r, allowed))
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
    if (ct && (strncasecmp(ct, "application/json", 16) != 0 ||
               (ct[16] != '\0' && ct[16] != ';' && ct[16] != ' '))) {
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
    svc__actor(r->peer, r->peer_cn, actor, sizeof(actor));
    const char *p[5] = {group, add, rem, actor, r->peer_addr};
    rc = svc__submit(
        r, "SELECT serial, outcome FROM cms.group_update($1, $2::jsonb, $3::jsonb, $4, $5)", 5, p,
        on_group_set);
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
