/*
 * rollout_api.c - the operator API of staged firmware rollouts (fw_rollout.h,
 * docs/firmware.md "Staged rollouts", docs/operator-api.md):
 *
 *   POST /api/v1/firmware/rollouts               create (and start)   operator
 *   GET  /api/v1/firmware/rollouts[?release_id=&state=]  list         viewer
 *   GET  /api/v1/firmware/rollouts/:id           show, per-stage counts, devices  viewer
 *   POST /api/v1/firmware/rollouts/:id/pause     {"note"}             operator
 *   POST /api/v1/firmware/rollouts/:id/resume    (starts a created one) operator
 *   POST /api/v1/firmware/rollouts/:id/abort     {"note"}             operator
 *
 * The body is checked here (members, types, ranges, stage and window
 * syntax: rollout_spec.c) and again by the SQL functions of sql/016, which
 * make every change in one transaction with its audit rows. A refusal, from
 * here or from SQL, is a 4xx JSON answer, one fw_rollout_refused audit row
 * and a warn log line.
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
#include "fw_rollout.h"
#include "log.h"
#include "rollout_int.h"

#define NOTE_MAX 256
#define TZ_MAX 64
#define SUCCESS_DEFAULT 90
#define FAILURE_DEFAULT 10

/* 400 a value (class 22), 404 unknown release, group or rollout, 409 not
 * approved (CF010), overlapping (CF011), a state that does not allow it (CF012). */
static const svc__sqlstate rollout_sqlstates[] = {
    {"22", 400, "bad_request"},     {"P0002", 404, "not_found"},
    {"CF010", 409, "not_approved"}, {"CF011", 409, "overlap"},
    {"CF012", 409, "conflict"},     {"23", 409, "conflict"},
    {"42501", 403, "forbidden"},    {NULL, 0, NULL},
};

typedef struct rollout_job {
    https_req *r;
    const char *action; /* "create", "pause", "resume", "abort" (static) */
    char id[24];        /* the rollout's id, "" for create */
    int http_ok;        /* 201 create, 200 otherwise */
} rollout_job;

/* A refusal: one audit row (fw_rollout_refused), a warn line, the 4xx answer. */
static void refuse(https_req *r, const char *action, const char *id, int http, const char *error,
                   const char *reason)
{
    json_t *d = json_pack("{s:s, s:i, s:s, s:s}", "action", action, "status", http, "error", error,
                          "reason", reason);
    if (d && id && *id)
        json_object_set_new(d, "rollout_id", json_integer(strtoll(id, NULL, 10)));
    log_warn("fw_rollout_refused", NULL, r->peer_addr, "operator:%s %s%s%s: %d %s: %s", r->peer_cn,
             action, id && *id ? " rollout " : "", id ? id : "", http, error, reason);
    https_audit(r, "fw_rollout_refused", NULL, d);
    https_reply_error(r, http, error, reason);
}

/* The answer of a change: {"rollout": {...}} from column 1 (cms.fw_rollout_json). */
static void change_done(void *ctx, int status, const store_rows *res)
{
    rollout_job *j = ctx;
    https_req *r = j->r;
    if (status != CMS_OK) {
        int http;
        const char *error;
        char detail[512];
        svc__db_error(r, status, res, rollout_sqlstates, &http, &error, detail, sizeof(detail));
        if (http >= 400 && http < 500)
            refuse(r, j->action, j->id, http, error, detail);
        else
            https_reply_error(r, http, error, detail);
        free(j);
        return;
    }
    json_error_t jerr;
    json_t *o = store_rows_count(res) == 1 && !store_rows_null(res, 0, 1)
                    ? json_loads(store_rows_text(res, 0, 1), 0, &jerr)
                    : NULL;
    if (!o) {
        log_error("fw_rollout", NULL, r->peer_addr, "%s: no rollout in the answer", j->action);
        https_reply_error(r, 500, "internal_error", "no rollout in the answer");
        free(j);
        return;
    }
    char id[24];
    snprintf(id, sizeof(id), "%lld", (long long)json_integer_value(json_object_get(o, "id")));
    rollout__transitions(id, store_rows_text(res, 0, 0), "api");
    log_info("fw_rollout", NULL, r->peer_addr, "operator:%s: %s rollout %s: now %s", r->peer_cn,
             j->action, id, json_string_value(json_object_get(o, "state")));
    https_reply_json(r, j->http_ok, json_pack("{s:o}", "rollout", o));
    free(j);
}

static rollout_job *job_new(https_req *r, const char *action, const char *id)
{
    rollout_job *j = calloc(1, sizeof(*j));
    if (!j)
        return NULL;
    j->r = r;
    j->action = action;
    j->http_ok = 200;
    if (id)
        snprintf(j->id, sizeof(j->id), "%s", id);
    return j;
}

static int submit(rollout_job *j, const char *sql, int n, const char *const *p)
{
    https_req *r = j->r;
    if (store_query(fw__store(r), sql, n, p, change_done, j) == CMS_OK)
        return CMS_EAGAIN;
    free(j);
    https_reply_error(r, 503, "busy", "database queue full; retry");
    return CMS_OK;
}

/* The body as a JSON object ({} when empty), or NULL after answering 400 (audited). */
static json_t *body_object(https_req *r, const char *action, const char *id)
{
    json_error_t jerr;
    json_t *b = r->http->body_len
                    ? json_loadb(r->http->body, r->http->body_len, JSON_REJECT_DUPLICATES, &jerr)
                    : json_object();
    if (!json_is_object(b)) {
        json_decref(b);
        refuse(r, action, id, 400, "bad_request", "the body must be a JSON object");
        return NULL;
    }
    return b;
}

/* An integer member in [lo, hi], or def when absent. false after answering 400. */
static bool int_member(https_req *r, json_t *b, const char *name, long long lo, long long hi,
                       long long def, long long *out)
{
    char why[160];
    json_t *v = json_object_get(b, name);
    if (!v) {
        *out = def;
        return true;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        snprintf(why, sizeof(why), "%s must be an integer %lld..%lld", name, lo, hi);
        refuse(r, "create", NULL, 400, "bad_request", why);
        return false;
    }
    *out = json_integer_value(v);
    return true;
}

static bool tz_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > TZ_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '/' || c == '_' || c == '-' || c == '+'))
            return false;
    }
    return true;
}

/* ---- create --------------------------------------------------------------------------- */

int fw_rollout_create(https_req *r)
{
    static const char *const allowed[] = {NULL};
    static const char *const members[] = {"release_id",        "stages", "success_threshold",
                                          "failure_threshold", "window", "time_zone",
                                          "max_retargets",     "start",  NULL};
    char why[256], actor[96], ws[24], we[24], rel[24], succ[8], fail[8], maxr[8];
    fw_rollout_stage st[FW_ROLLOUT_MAX_STAGES];
    long long release_id, success, failure, retargets;
    const char *key;
    json_t *v, *b;
    size_t i, n;
    if (!svc__query_ok(r, allowed))
        return CMS_OK;
    if (!(b = body_object(r, "create", NULL)))
        return CMS_OK;
    json_object_foreach(b, key, v)
    {
        for (i = 0; members[i] && strcmp(members[i], key) != 0; i++)
            ;
        if (!members[i]) {
            snprintf(why, sizeof(why),
                     "unknown member \"%.64s\" (release_id, stages, success_threshold, "
                     "failure_threshold, window, time_zone, max_retargets, start)",
                     key);
            refuse(r, "create", NULL, 400, "bad_request", why);
            goto done;
        }
    }
    if (!json_is_integer(json_object_get(b, "release_id")) ||
        json_integer_value(json_object_get(b, "release_id")) < 1) {
        refuse(r, "create", NULL, 400, "bad_request", "release_id (a release id) is required");
        goto done;
    }
    release_id = json_integer_value(json_object_get(b, "release_id"));
    if (!int_member(r, b, "success_threshold", 1, 100, SUCCESS_DEFAULT, &success) ||
        !int_member(r, b, "failure_threshold", 0, 100, FAILURE_DEFAULT, &failure) ||
        !int_member(r, b, "max_retargets", 0, 10, 1, &retargets))
        goto done;
    json_t *stages = json_object_get(b, "stages");
    n = json_array_size(stages);
    if (!json_is_array(stages) || n < 1 || n > FW_ROLLOUT_MAX_STAGES) {
        refuse(r, "create", NULL, 400, "bad_request",
               "stages must be an array of 1..16 stages: \"N%\" (cumulative percentage of the "
               "target devices) or \"group:NAME\"");
        goto done;
    }
    json_array_foreach(stages, i, v)
    {
        if (!json_is_string(v) || fw_rollout_parse_stage(json_string_value(v), &st[i]) != CMS_OK) {
            snprintf(why, sizeof(why),
                     "stage %zu: \"N%%\" with N 1..100, or \"group:NAME\" (a group name)", i + 1);
            refuse(r, "create", NULL, 400, "bad_request", why);
            goto done;
        }
    }
    if (fw_rollout_check_stages(st, n, why, sizeof(why)) != CMS_OK) {
        refuse(r, "create", NULL, 400, "bad_request", why);
        goto done;
    }
    json_t *win = json_object_get(b, "window");
    int wa = -1, wb = -1;
    if (win && !json_is_null(win) &&
        (!json_is_string(win) ||
         fw_rollout_parse_window(json_string_value(win), &wa, &wb) != CMS_OK)) {
        refuse(r, "create", NULL, 400, "bad_request",
               "window must be \"HH:MM-HH:MM\" (24-hour, start and end differ; an end before "
               "the start spans midnight) or null");
        goto done;
    }
    json_t *tz = json_object_get(b, "time_zone");
    if (tz && (!json_is_string(tz) || !tz_ok(json_string_value(tz)))) {
        refuse(r, "create", NULL, 400, "bad_request",
               "time_zone must be a tz database name such as UTC or Europe/Berlin");
        goto done;
    }
    json_t *start = json_object_get(b, "start");
    if (start && !json_is_boolean(start)) {
        refuse(r, "create", NULL, 400, "bad_request", "start must be true or false");
        goto done;
    }
    json_t *sj = json_array();
    for (i = 0; i < n; i++)
        json_array_append_new(sj, st[i].percent ? json_pack("{s:i}", "percent", st[i].percent)
                                                : json_pack("{s:s}", "group", st[i].group));
    char *stages_json = json_dumps(sj, JSON_COMPACT);
    json_decref(sj);
    rollout_job *j = stages_json ? job_new(r, "create", NULL) : NULL;
    if (!j) {
        free(stages_json);
        https_reply_error(r, 500, "internal_error", "out of memory");
        goto done;
    }
    j->http_ok = 201;
    if (wa >= 0) {
        snprintf(ws, sizeof(ws), "%02d:%02d", wa / 60, wa % 60);
        snprintf(we, sizeof(we), "%02d:%02d", wb / 60, wb % 60);
    }
    snprintf(rel, sizeof(rel), "%lld", release_id);
    snprintf(succ, sizeof(succ), "%lld", success);
    snprintf(fail, sizeof(fail), "%lld", failure);
    snprintf(maxr, sizeof(maxr), "%lld", retargets);
    svc__actor(r->peer, r->peer_cn, actor, sizeof(actor));
    const char *p[] = {rel,
                       stages_json,
                       succ,
                       fail,
                       wa >= 0 ? ws : NULL,
                       wa >= 0 ? we : NULL,
                       tz ? json_string_value(tz) : NULL,
                       maxr,
                       start && json_is_false(start) ? "false" : "true",
                       actor,
                       r->peer_addr};
    int rc = submit(j,
                    "SELECT c.events, cms.fw_rollout_json(c.id, false)::text "
                    "FROM cms.fw_rollout_create($1::bigint, $2::jsonb, $3::integer, $4::integer, "
                    "$5, $6, $7, $8::integer, $9::boolean, $10, $11) c",
                    11, p);
    free(stages_json);
    json_decref(b); /* params were copied by store_query */
    return rc;
done:
    json_decref(b);
    return CMS_OK;
}

/* ---- pause / resume / abort ----------------------------------------------------------- */

static int change(https_req *r, const char *action)
{
    static const char *const allowed[] = {NULL};
    char actor[96], id[24];
    int64_t rid;
    if (!svc__query_ok(r, allowed))
        return CMS_OK;
    if (!fw__parse_id(r->params[0], &rid)) {
        refuse(r, action, NULL, 404, "not_found", "rollout ids are positive integers");
        return CMS_OK;
    }
    snprintf(id, sizeof(id), "%lld", (long long)rid);
    json_t *b = body_object(r, action, id);
    if (!b)
        return CMS_OK;
    bool resume = strcmp(action, "resume") == 0;
    const char *key;
    json_t *v, *note = json_object_get(b, "note");
    json_object_foreach(b, key, v)
    {
        if (resume || strcmp(key, "note") != 0) {
            refuse(r, action, id, 400, "bad_request",
                   resume ? "resume takes no body members" : "the only member is \"note\"");
            json_decref(b);
            return CMS_OK;
        }
    }
    if (note && (!json_is_string(note) || json_string_length(note) > NOTE_MAX ||
                 strlen(json_string_value(note)) != json_string_length(note))) {
        refuse(r, action, id, 400, "bad_request", "note must be a string of at most 256 bytes");
        json_decref(b);
        return CMS_OK;
    }
    rollout_job *j = job_new(r, action, id);
    if (!j) {
        json_decref(b);
        https_reply_error(r, 500, "internal_error", "out of memory");
        return CMS_OK;
    }
    svc__actor(r->peer, r->peer_cn, actor, sizeof(actor));
    int rc;
    if (resume) {
        const char *p[] = {id, actor, r->peer_addr};
        rc = submit(j,
                    "SELECT c.events, cms.fw_rollout_json(c.id, false)::text "
                    "FROM cms.fw_rollout_resume($1::bigint, $2, $3) c",
                    3, p);
    } else {
        const char *p[] = {id, note ? json_string_value(note) : NULL, actor, r->peer_addr};
        rc = submit(j,
                    strcmp(action, "pause") == 0
                        ? "SELECT c.events, cms.fw_rollout_json(c.id, false)::text "
                          "FROM cms.fw_rollout_pause($1::bigint, $2, $3, $4) c"
                        : "SELECT c.events, cms.fw_rollout_json(c.id, false)::text "
                          "FROM cms.fw_rollout_abort($1::bigint, $2, $3, $4) c",
                    4, p);
    }
    json_decref(b);
    return rc;
}

int fw_rollout_pause(https_req *r)
{
    return change(r, "pause");
}

int fw_rollout_resume(https_req *r)
{
    return change(r, "resume");
}

int fw_rollout_abort(https_req *r)
{
    return change(r, "abort");
}

/* ---- list / show ---------------------------------------------------------------------- */

static void list_done(void *ctx, int status, const store_rows *res)
{
    https_req *r = ctx;
    json_error_t jerr;
    if (status != CMS_OK) {
        svc__reply_db_error(r, status, res, rollout_sqlstates);
        return;
    }
    json_t *a = json_array();
    for (int i = 0; i < store_rows_count(res); i++) {
        json_t *o = json_loads(store_rows_text(res, i, 0), 0, &jerr);
        if (o)
            json_array_append_new(a, o);
    }
    https_reply_json(r, 200, json_pack("{s:o}", "rollouts", a));
}

int fw_rollout_list(https_req *r)
{
    static const char *const allowed[] = {"release_id", "state", NULL};
    static const char *const states[] = {"created",   "running", "paused",
                                         "completed", "aborted", NULL};
    char rel[24], state[16];
    int64_t rid;
    if (!svc__query_ok(r, allowed))
        return CMS_OK;
    int has_rel =
        http_query_get(r->http->query, r->http->query_len, "release_id", rel, sizeof(rel), NULL);
    int has_state =
        http_query_get(r->http->query, r->http->query_len, "state", state, sizeof(state), NULL);
    if (has_rel < 0 || (has_rel == 1 && !fw__parse_id(rel, &rid))) {
        https_reply_error(r, 400, "bad_request", "release_id must be a release id");
        return CMS_OK;
    }
    size_t i = 0;
    if (has_state == 1)
        for (; states[i] && strcmp(states[i], state) != 0; i++)
            ;
    if (has_state < 0 || (has_state == 1 && !states[i])) {
        https_reply_error(r, 400, "bad_request",
                          "state must be created, running, paused, completed or aborted");
        return CMS_OK;
    }
    const char *p[] = {has_rel == 1 ? rel : NULL, has_state == 1 ? state : NULL};
    return svc__submit(r,
                       "SELECT cms.fw_rollout_json(x.id, false)::text FROM cms.fw_rollouts x "
                       "WHERE ($1::bigint IS NULL OR x.release_id = $1::bigint) "
                       "AND ($2::text IS NULL OR x.state = $2) ORDER BY x.id DESC LIMIT 1000",
                       2, p, list_done);
}

/* At most this many devices in a show answer (each ~170 bytes: far below max_output_bytes). */
#define SHOW_DEVICES_MAX 1000

typedef struct show_job {
    https_req *r;
    long stage; /* only this stage's devices, 0 = all */
} show_job;

static void show_done(void *ctx, int status, const store_rows *res)
{
    show_job *j = ctx;
    https_req *r = j->r;
    long stage = j->stage;
    json_error_t jerr;
    free(j);
    if (status != CMS_OK) {
        svc__reply_db_error(r, status, res, rollout_sqlstates);
        return;
    }
    if (store_rows_count(res) != 1 || store_rows_null(res, 0, 0)) {
        https_reply_error(r, 404, "not_found", "no such rollout");
        return;
    }
    json_t *o = json_loads(store_rows_text(res, 0, 0), 0, &jerr);
    json_t *all = json_object_get(o, "device_list");
    if (!o || !json_is_array(all)) {
        json_decref(o);
        https_reply_error(r, 500, "internal_error", "cannot read the rollout");
        return;
    }
    /* The devices of one stage when asked, at most SHOW_DEVICES_MAX of them. */
    json_t *keep = json_array(), *d;
    size_t i, total = 0;
    json_array_foreach(all, i, d)
    {
        if (stage && json_integer_value(json_object_get(d, "stage")) != stage)
            continue;
        if (total++ < SHOW_DEVICES_MAX)
            json_array_append(keep, d);
    }
    json_object_set_new(o, "device_list", keep);
    json_object_set_new(o, "device_list_truncated", json_boolean(total > SHOW_DEVICES_MAX));
    https_reply_json(r, 200, json_pack("{s:o}", "rollout", o));
}

int fw_rollout_show(https_req *r)
{
    static const char *const allowed[] = {"stage", NULL};
    char id[24], stage[8];
    int64_t rid, st = 0;
    if (!svc__query_ok(r, allowed))
        return CMS_OK;
    if (!fw__parse_id(r->params[0], &rid)) {
        https_reply_error(r, 404, "not_found", "rollout ids are positive integers");
        return CMS_OK;
    }
    int has =
        http_query_get(r->http->query, r->http->query_len, "stage", stage, sizeof(stage), NULL);
    if (has < 0 || (has == 1 && (!fw__parse_id(stage, &st) || st > FW_ROLLOUT_MAX_STAGES))) {
        https_reply_error(r, 400, "bad_request", "stage must be a stage number 1..16");
        return CMS_OK;
    }
    show_job *j = calloc(1, sizeof(*j));
    if (!j) {
        https_reply_error(r, 500, "internal_error", "out of memory");
        return CMS_OK;
    }
    j->r = r;
    j->stage = (long)st;
    snprintf(id, sizeof(id), "%lld", (long long)rid);
    const char *p[] = {id};
    if (store_query(fw__store(r), "SELECT cms.fw_rollout_json($1::bigint, true)::text", 1, p,
                    show_done, j) == CMS_OK)
        return CMS_EAGAIN;
    free(j);
    https_reply_error(r, 503, "busy", "database queue full; retry");
    return CMS_OK;
}
