/*
 * firmware_admin.c - the operator side of firmware releases once imported
 * (firmware_import.c): list, status (devices, approvals), approve (two-person
 * rule, in SQL) and withdraw; and the helpers the firmware handlers share
 * (firmware_int.h).
 *
 * Thread: the worker loop's thread (like every handler).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cms_err.h"
#include "firmware_int.h"
#include "log.h"

#define ISO(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
#define NAMES_MAX 1000

/* ---- helpers shared by the firmware handlers ------------------------------------------ */

/* 400 for a value the operator sent (class 22), 404 for an unknown release
 * (P0002), 403 for the two-person rule (CF001) and a missing privilege
 * (42501), 409 for a state conflict (CF002, class 23). */
const svc__sqlstate fw__sqlstates[] = {
    {"22", 400, "bad_request"},
    {"P0002", 404, "not_found"},
    {"CF001", 403, "two_person_rule"},
    {"CF002", 409, "conflict"},
    {"23", 409, "conflict"},
    {"42501", 403, "forbidden"},
    {NULL, 0, NULL},
};

bool fw__parse_id(const char *s, int64_t *out)
{
    char *end;
    if (!s || *s < '1' || *s > '9' || strlen(s) > 18)
        return false;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return false;
    *out = (int64_t)v;
    return true;
}

int fw__unhex_alloc(const char *hex, unsigned char **out, size_t *out_len)
{
    size_t n = strlen(hex);
    *out = NULL;
    if (n % 2)
        return CMS_EPROTO;
    *out = malloc(n / 2 + 1);
    if (!*out)
        return CMS_ENOMEM;
    if (fw_unhex(hex, n, *out, n / 2) != CMS_OK) {
        free(*out);
        *out = NULL;
        return CMS_EPROTO;
    }
    *out_len = n / 2;
    return CMS_OK;
}

/* ---- list ------------------------------------------------------------------------------- */

static json_t *release_json(const store_rows *res, int i)
{
    json_t *o = json_object();
    svc__set_int(o, "id", res, i, "id");
    svc__set_text(o, "model", res, i, "model");
    svc__set_text(o, "version", res, i, "version");
    svc__set_int(o, "security_counter", res, i, "security_counter");
    svc__set_text(o, "sha256", res, i, "sha256");
    svc__set_int(o, "length", res, i, "length");
    svc__set_text(o, "publisher_keyid", res, i, "publisher_keyid");
    svc__set_text(o, "imported_by", res, i, "imported_by");
    svc__set_text(o, "imported_at", res, i, "imported_at");
    svc__set_int(o, "active_approvals", res, i, "active_approvals");
    svc__set_int(o, "installed_devices", res, i, "installed_devices");
    return o;
}

#define RELEASE_COLS                                                                               \
    "id, model, version, security_counter, sha256, length, publisher_keyid, imported_by, " ISO(    \
        "imported_at") " AS imported_at, active_approvals, installed_devices"

static void list_done(void *ctx, int status, const store_rows *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        svc__reply_db_error(r, status, res, fw__sqlstates);
        return;
    }
    json_t *a = json_array();
    for (int i = 0; i < store_rows_count(res); i++)
        json_array_append_new(a, release_json(res, i));
    https_reply_json(r, 200, json_pack("{s:o}", "releases", a));
}

int fw_list(https_req *r)
{
    static const char *const allowed[] = {"model", NULL};
    char model[FW_MODEL_MAX + 1];
    if (!svc__query_ok(r, allowed))
        return CMS_OK;
    int has =
        http_query_get(r->http->query, r->http->query_len, "model", model, sizeof(model), NULL);
    if (has < 0) {
        https_reply_error(r, 400, "bad_request", "bad model parameter");
        return CMS_OK;
    }
    const char *p[] = {has == 1 ? model : NULL};
    return svc__submit(r,
                       "SELECT " RELEASE_COLS " FROM cms.fw_release_list "
                       "WHERE $1::text IS NULL OR model = $1 ORDER BY id DESC LIMIT 1000",
                       1, p, list_done);
}

/* ---- status ----------------------------------------------------------------------------- */

typedef struct status_job {
    https_req *r;
    char id[24];
    json_t *out;
} status_job;

static void status_fail(status_job *j, int status, const store_rows *res)
{
    svc__reply_db_error(j->r, status, res, fw__sqlstates);
    json_decref(j->out);
    free(j);
}

static void status_devices(void *ctx, int status, const store_rows *res)
{
    status_job *j = ctx;
    if (status != CMS_OK) {
        status_fail(j, status, res);
        return;
    }
    json_t *a = json_array();
    json_t *counts = json_object();
    for (int i = 0; i < store_rows_count(res); i++) {
        json_t *o = json_object();
        svc__set_text(o, "serial", res, i, "serial");
        svc__set_text(o, "model", res, i, "model");
        svc__set_text(o, "device_status", res, i, "device_status");
        svc__set_text(o, "firmware_version", res, i, "firmware_version");
        svc__set_text(o, "via", res, i, "via");
        svc__set_text(o, "state", res, i, "state");
        svc__set_text(o, "reason", res, i, "reason");
        svc__set_int(o, "manifest_counter", res, i, "manifest_counter");
        svc__set_text(o, "updated_at", res, i, "updated_at");
        json_array_append_new(a, o);
        const char *st = store_rows_get(res, i, "state");
        if (st) {
            json_t *c = json_object_get(counts, st);
            json_object_set_new(counts, st, json_integer(c ? json_integer_value(c) + 1 : 1));
        }
    }
    json_object_set_new(j->out, "devices", a);
    json_object_set_new(j->out, "states", counts);
    https_reply_json(j->r, 200, j->out);
    free(j);
}

static void status_approvals(void *ctx, int status, const store_rows *res)
{
    status_job *j = ctx;
    if (status != CMS_OK) {
        status_fail(j, status, res);
        return;
    }
    json_t *a = json_array();
    for (int i = 0; i < store_rows_count(res); i++) {
        json_t *o = json_object();
        svc__set_int(o, "id", res, i, "id");
        svc__set_text(o, "device", res, i, "device");
        svc__set_text(o, "group", res, i, "group");
        svc__set_text(o, "approved_by", res, i, "approved_by");
        svc__set_text(o, "approved_at", res, i, "approved_at");
        svc__set_text(o, "withdrawn_by", res, i, "withdrawn_by");
        svc__set_text(o, "withdrawn_at", res, i, "withdrawn_at");
        json_array_append_new(a, o);
    }
    json_object_set_new(j->out, "approvals", a);
    const char *p[] = {j->id};
    if (store_query(
            fw__store(j->r),
            "SELECT serial, model, device_status, firmware_version, via, state, reason, "
            "manifest_counter, " ISO("updated_at") " AS updated_at "
                                                   "FROM cms.fw_release_devices WHERE release_id = "
                                                   "$1::bigint ORDER BY serial",
            1, p, status_devices, j) != CMS_OK)
        status_fail(j, CMS_EUNAVAIL, NULL);
}

static void status_release(void *ctx, int status, const store_rows *res)
{
    status_job *j = ctx;
    if (status != CMS_OK) {
        status_fail(j, status, res);
        return;
    }
    if (store_rows_count(res) != 1) {
        https_reply_error(j->r, 404, "not_found", "no such firmware release");
        free(j);
        return;
    }
    j->out = json_pack("{s:o}", "release", release_json(res, 0));
    const char *p[] = {j->id};
    if (store_query(
            fw__store(j->r),
            "SELECT a.id, d.serial AS device, g.name AS \"group\", a.approved_by, " ISO(
                "a.approved_at") " AS approved_at, a.withdrawn_by, " ISO("a.withdrawn_at") " AS "
                                                                                           "withdra"
                                                                                           "wn_at "
                                                                                           "FROM "
                                                                                           "cms.fw_"
                                                                                           "approva"
                                                                                           "ls a "
                                                                                           "LEFT "
                                                                                           "JOIN "
                                                                                           "cms."
                                                                                           "devices"
                                                                                           " d ON "
                                                                                           "d.id = "
                                                                                           "a."
                                                                                           "device_"
                                                                                           "id "
                                                                                           "LEFT "
                                                                                           "JOIN "
                                                                                           "cms."
                                                                                           "device_"
                                                                                           "groups "
                                                                                           "g ON "
                                                                                           "g.id = "
                                                                                           "a."
                                                                                           "group_"
                                                                                           "id "
                                                                                           "WHERE "
                                                                                           "a."
                                                                                           "release"
                                                                                           "_id = "
                                                                                           "$1::"
                                                                                           "bigint "
                                                                                           "ORDER "
                                                                                           "BY "
                                                                                           "a.id",
            1, p, status_approvals, j) != CMS_OK)
        status_fail(j, CMS_EUNAVAIL, NULL);
}

int fw_status(https_req *r)
{
    static const char *const allowed[] = {NULL};
    int64_t id;
    if (!svc__query_ok(r, allowed))
        return CMS_OK;
    if (!fw__parse_id(r->params[0], &id)) {
        https_reply_error(r, 404, "not_found", "release ids are positive integers");
        return CMS_OK;
    }
    status_job *j = calloc(1, sizeof(*j));
    if (!j) {
        https_reply_error(r, 500, "internal_error", "out of memory");
        return CMS_OK;
    }
    j->r = r;
    snprintf(j->id, sizeof(j->id), "%lld", (long long)id);
    const char *p[] = {j->id};
    int rc = store_query(fw__store(r),
                         "SELECT " RELEASE_COLS " FROM cms.fw_release_list WHERE id = $1::bigint",
                         1, p, status_release, j);
    if (rc == CMS_OK)
        return CMS_EAGAIN;
    free(j);
    https_reply_error(r, 503, "busy", "database queue full; retry");
    return CMS_OK;
}

/* ---- approve / withdraw ------------------------------------------------------------------- */

typedef struct change_job {
    https_req *r;
    bool approve;
    char id[24];
    char *devices, *groups; /* JSON arrays (owned) */
} change_job;

static void change_free(change_job *j)
{
    free(j->devices);
    free(j->groups);
    free(j);
}

static void change_done(void *ctx, int status, const store_rows *res)
{
    change_job *j = ctx;
    https_req *r = j->r;
    if (status != CMS_OK) {
        const char *state = store_rows_sqlstate(res);
        const char *msg = store_rows_error(res);
        if (status == CMS_EPROTO) { /* a refusal: audited (the transaction rolled back) */
            json_t *d = json_pack("{s:s, s:s, s:s, s:s}", "release_id", j->id, "sqlstate",
                                  state ? state : "", "reason", msg ? msg : "", "action",
                                  j->approve ? "approve" : "withdraw");
            if (d && j->devices)
                json_object_set_new(d, "devices", json_loads(j->devices, 0, NULL));
            if (d && j->groups)
                json_object_set_new(d, "groups", json_loads(j->groups, 0, NULL));
            log_warn(j->approve ? "fw_approve_refused" : "fw_withdraw_refused", NULL, r->peer_addr,
                     "release %s: %s", j->id, msg ? msg : "");
            https_audit(r, j->approve ? "fw_approve_refused" : "fw_withdraw_refused", NULL, d);
        }
        svc__reply_db_error(r, status, res, fw__sqlstates);
        change_free(j);
        return;
    }
    json_t *a = json_array();
    for (int i = 0; i < store_rows_count(res); i++)
        json_array_append_new(a, json_pack("{s:s, s:s, s:s}", "kind", store_rows_text(res, i, 0),
                                           "name", store_rows_text(res, i, 1), "outcome",
                                           store_rows_text(res, i, 2)));
    https_reply_json(
        r, 200,
        json_pack("{s:I, s:o}", "release_id", (json_int_t)strtoll(j->id, NULL, 10), "results", a));
    change_free(j);
}

/* A JSON array of 0..NAMES_MAX strings of 1..63 printable characters, or absent. */
static int names_member(json_t *body, const char *name, char **out, char *why, size_t cap)
{
    json_t *a = json_object_get(body, name);
    size_t i;
    json_t *v;
    *out = NULL;
    if (!a)
        return CMS_OK;
    if (!json_is_array(a) || json_array_size(a) > NAMES_MAX) {
        snprintf(why, cap, "\"%s\" must be an array of at most %d names", name, NAMES_MAX);
        return CMS_EPROTO;
    }
    json_array_foreach(a, i, v)
    {
        if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 64 ||
            !fw_model_is_valid(json_string_value(v))) {
            snprintf(why, cap, "\"%s\" must hold names of 1..64 printable characters", name);
            return CMS_EPROTO;
        }
    }
    *out = json_dumps(a, JSON_COMPACT);
    return *out ? CMS_OK : CMS_ENOMEM;
}

static int change(https_req *r, bool approve)
{
    static const char *const allowed[] = {NULL};
    int64_t id;
    char why[200], actor[96];
    json_error_t jerr;
    if (!svc__query_ok(r, allowed))
        return CMS_OK;
    if (!fw__parse_id(r->params[0], &id)) {
        https_reply_error(r, 404, "not_found", "release ids are positive integers");
        return CMS_OK;
    }
    json_t *body = r->http->body_len
                       ? json_loadb(r->http->body, r->http->body_len, JSON_REJECT_DUPLICATES, &jerr)
                       : json_object();
    if (!json_is_object(body)) {
        json_decref(body);
        https_reply_error(r, 400, "bad_request",
                          "the body must be a JSON object {\"devices\": [...], \"groups\": [...]}");
        return CMS_OK;
    }
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        if (strcmp(key, "devices") != 0 && strcmp(key, "groups") != 0) {
            json_decref(body);
            https_reply_error(r, 400, "bad_request", "only \"devices\" and \"groups\" are allowed");
            return CMS_OK;
        }
    }
    change_job *j = calloc(1, sizeof(*j));
    if (!j) {
        json_decref(body);
        https_reply_error(r, 500, "internal_error", "out of memory");
        return CMS_OK;
    }
    j->r = r;
    j->approve = approve;
    snprintf(j->id, sizeof(j->id), "%lld", (long long)id);
    if (names_member(body, "devices", &j->devices, why, sizeof(why)) != CMS_OK ||
        names_member(body, "groups", &j->groups, why, sizeof(why)) != CMS_OK) {
        json_decref(body);
        change_free(j);
        https_reply_error(r, 400, "bad_request", why);
        return CMS_OK;
    }
    json_decref(body);
    svc__actor(r->peer, r->peer_cn, actor, sizeof(actor));
    const char *p[] = {j->id, j->devices, j->groups, actor, r->peer_addr};
    int rc = store_query(fw__store(r),
                         approve ? "SELECT kind, name, outcome FROM cms.fw_approve($1::bigint, "
                                   "$2::jsonb, $3::jsonb, $4, $5)"
                                 : "SELECT kind, name, outcome FROM cms.fw_withdraw($1::bigint, "
                                   "$2::jsonb, $3::jsonb, $4, $5)",
                         5, p, change_done, j);
    if (rc == CMS_OK)
        return CMS_EAGAIN;
    change_free(j);
    https_reply_error(r, 503, "busy", "database queue full; retry");
    return CMS_OK;
}

int fw_approve(https_req *r)
{
    return change(r, true);
}

int fw_withdraw(https_req *r)
{
    return change(r, false);
}
