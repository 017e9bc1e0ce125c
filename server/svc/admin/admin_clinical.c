/*
 * admin_clinical.c - the clinical read side over the operator API (viewer
 * role): the same data as the SQL views of docs/clinical-data.md, as JSON
 * pages. Each row is built by the database (row_to_json over the view), so
 * the API's members are the views' columns, with their types (numbers,
 * booleans, arrays, ISO 8601 times).
 *
 *   GET /api/v1/vitals/latest        cms.latest_vitals, grouped per device,
 *                                    a page of devices (after=<serial>)
 *   GET /api/v1/alarms               cms.alarms, newest first
 *                                    (before=<alarm_ref>)
 *   GET /api/v1/alarms/:id          one alarm and its events (cms.alarm_history)
 *   GET /api/v1/devices/:serial/trend     cms.vitals_trend, a page of minutes
 *                                         (from=<next_from>)
 *   GET /api/v1/devices/:serial/waveforms cms.waveforms, oldest first
 *                                         (from=<next_from>)
 *
 * Every page answers its cursor (null on the last page); a page is trimmed
 * to the output limit (admin__fit_output) and then says so with its cursor.
 *
 * Thread: the worker loop's thread (like every handler).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_int.h"
#include "cms_err.h"
#include "svc.h"

#define PAGE_DEFAULT 100
#define PAGE_MAX 1000
#define TREND_DEFAULT 1440 /* minutes: one day */
#define TREND_MAX 10080    /* one week */
#define WAVES_DEFAULT 60   /* block starts: a minute of 1 s blocks */
#define WAVES_MAX 600
#define CODE_MAX 64

/* The rows' "j" column (row_to_json text) as a JSON array, at most limit. */
static json_t *rows_json(const store_rows *res, int limit, bool *more)
{
    int n = store_rows_count(res), cj = store_rows_col(res, "j");
    json_t *list = json_array();
    *more = n > limit;
    if (n > limit)
        n = limit;
    for (int i = 0; i < n; i++) {
        json_t *o = cj >= 0 ? json_loads(store_rows_text(res, i, cj), 0, NULL) : NULL;
        json_array_append_new(list, o ? o : json_null());
    }
    return list;
}

/* The value of key in the last element of list, as the next page's cursor
 * (a new reference), or null when there is no next page. */
static json_t *cursor(json_t *list, bool more, const char *key)
{
    size_t n = json_array_size(list);
    json_t *v = more && n ? json_object_get(json_array_get(list, n - 1), key) : NULL;
    return v ? json_incref(v) : json_null();
}

/* An ISO 8601 time given by the caller: plain text, checked by the database. */
static int time_param(https_req *r, const char *name, char *out, size_t cap)
{
    int rc = admin__query_param(r, name, out, cap);
    if (rc == 1 && !admin__plain_text(out, cap - 1)) {
        https_reply_error(r, 400, "bad_request", "not a valid time");
        return -1;
    }
    return rc;
}

/* ---- GET /api/v1/vitals/latest -------------------------------------------- */

static void on_latest(void *ctx, int status, const store_rows *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        svc__reply_db_error(r, status, res, admin__sqlstates);
        return;
    }
    bool more;
    json_t *list = rows_json(res, (int)(intptr_t)r->user, &more);
    more = admin__fit_output(r, list) > 0 || more;
    https_reply_json(r, 200,
                     json_pack("{s:o, s:o}", "devices", list, "next_after",
                               cursor(list, more, "device_serial")));
}

int admin_vitals_latest(https_req *r)
{
    static const char *const allowed[] = {"device", "after", "limit", NULL};
    char device[SERIAL_MAX + 2], after[SERIAL_MAX + 2], lim[24];
    long long limit = PAGE_DEFAULT;
    int has_dev, has_after;
    if (!svc__query_ok(r, allowed) ||
        (has_dev = admin__query_param(r, "device", device, sizeof(device))) < 0 ||
        (has_after = admin__query_param(r, "after", after, sizeof(after))) < 0 ||
        admin__query_uint(r, "limit", PAGE_MAX, &limit) < 0)
        return CMS_OK;
    if ((has_dev && !admin__plain_text(device, SERIAL_MAX)) ||
        (has_after && !admin__plain_text(after, SERIAL_MAX))) {
        https_reply_error(r, 400, "bad_request", "device or after: not a valid serial");
        return CMS_OK;
    }
    snprintf(lim, sizeof(lim), "%lld", limit + 1);
    r->user = (void *)(intptr_t)limit;
    const char *p[3] = {has_dev ? device : NULL, has_after ? after : NULL, lim};
    /* One row per device (a page of devices), its values as an array. */
    /* clang-format off */
    return svc__submit(r,
                  "SELECT json_build_object('device_serial', v.device_serial, 'vitals', "
                  "  json_agg((to_jsonb(v) - 'device_serial') ORDER BY v.mdc_code, v.sub_id))::text"
                  "  AS j "
                  "FROM cms.latest_vitals v "
                  "WHERE ($1::text IS NULL OR v.device_serial = $1) "
                  "AND ($2::text IS NULL OR v.device_serial > $2) "
                  "GROUP BY v.device_serial ORDER BY v.device_serial LIMIT $3::integer",
                  3, p, on_latest);
    /* clang-format on */
}

/* ---- GET /api/v1/alarms ------------------------------------------------------ */

static void on_alarm_list(void *ctx, int status, const store_rows *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        svc__reply_db_error(r, status, res, admin__sqlstates);
        return;
    }
    bool more;
    json_t *list = rows_json(res, (int)(intptr_t)r->user, &more);
    more = admin__fit_output(r, list) > 0 || more;
    https_reply_json(
        r, 200,
        json_pack("{s:o, s:o}", "alarms", list, "next_before", cursor(list, more, "alarm_ref")));
}

int admin_alarm_list(https_req *r)
{
    static const char *const allowed[] = {"device", "current", "since", "before", "limit", NULL};
    char device[SERIAL_MAX + 2], current[8], since[64], before[24], lim[24];
    long long limit = PAGE_DEFAULT, before_ref = 0;
    int has_dev, has_cur, has_since, has_before;
    if (!svc__query_ok(r, allowed) ||
        (has_dev = admin__query_param(r, "device", device, sizeof(device))) < 0 ||
        (has_cur = admin__query_param(r, "current", current, sizeof(current))) < 0 ||
        (has_since = time_param(r, "since", since, sizeof(since))) < 0 ||
        (has_before = admin__query_uint(r, "before", INT64_MAX, &before_ref)) < 0 ||
        admin__query_uint(r, "limit", PAGE_MAX, &limit) < 0)
        return CMS_OK;
    if (has_dev && !admin__plain_text(device, SERIAL_MAX)) {
        https_reply_error(r, 400, "bad_request", "device: not a valid serial");
        return CMS_OK;
    }
    if (has_cur && strcmp(current, "true") != 0 && strcmp(current, "false") != 0) {
        https_reply_error(r, 400, "bad_request", "current must be true or false");
        return CMS_OK;
    }
    snprintf(before, sizeof(before), "%lld", before_ref);
    snprintf(lim, sizeof(lim), "%lld", limit + 1);
    r->user = (void *)(intptr_t)limit;
    const char *p[5] = {has_dev ? device : NULL, has_cur ? current : NULL, has_since ? since : NULL,
                        has_before ? before : NULL, lim};
    /* clang-format off */
    return svc__submit(r,
                  "SELECT row_to_json(a)::text AS j FROM cms.alarms a "
                  "WHERE ($1::text IS NULL OR a.device_serial = $1) "
                  "AND ($2::boolean IS NULL OR a.current = $2::boolean) "
                  "AND ($3::timestamptz IS NULL OR a.last_event_at >= $3::timestamptz) "
                  "AND ($4::bigint IS NULL OR a.alarm_ref < $4::bigint) "
                  "ORDER BY a.alarm_ref DESC LIMIT $5::integer",
                  5, p, on_alarm_list);
    /* clang-format on */
}

/* ---- GET /api/v1/alarms/:id -------------------------------------------------- */

static void on_alarm_show(void *ctx, int status, const store_rows *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        svc__reply_db_error(r, status, res, admin__sqlstates);
        return;
    }
    int ca = store_rows_col(res, "a");
    if (store_rows_count(res) == 0 || ca < 0) {
        https_reply_error(r, 404, "not_found", "no such alarm");
        return;
    }
    json_t *o = json_loads(store_rows_text(res, 0, ca), 0, NULL);
    bool more;
    json_t *events = rows_json(res, PAGE_MAX, &more);
    if (json_array_size(events) == 1 && json_is_null(json_array_get(events, 0)))
        json_array_clear(events); /* no event row (the LEFT JOIN's NULL) */
    admin__fit_output(r, events);
    if (!o) {
        json_decref(events);
        https_reply_error(r, 500, "internal_error", "unreadable row");
        return;
    }
    json_object_set_new(o, "events", events);
    https_reply_json(r, 200, o);
}

int admin_alarm_show(https_req *r)
{
    static const char *const allowed[] = {NULL};
    char *end;
    if (!svc__query_ok(r, allowed))
        return CMS_OK;
    long long ref = strtoll(r->params[0], &end, 10);
    if (*end || end == r->params[0] || ref < 1 || r->params[0][0] == '+') {
        https_reply_error(r, 404, "not_found", "no such alarm");
        return CMS_OK;
    }
    const char *p[2] = {r->params[0], "1001"};
    /* The alarm in every row, then its events oldest first (at most 1000). */
    /* clang-format off */
    return svc__submit(r,
                  "SELECT row_to_json(a)::text AS a, "
                  "  (to_jsonb(h) - 'alarm_ref' - 'device_serial')::text AS j "
                  "FROM cms.alarms a "
                  "LEFT JOIN LATERAL (SELECT * FROM cms.alarm_history h "
                  "  WHERE h.alarm_ref = a.alarm_ref ORDER BY h.event_at, h.received_at "
                  "  LIMIT $2::integer) h ON true "
                  "WHERE a.alarm_ref = $1::bigint",
                  2, p, on_alarm_show);
    /* clang-format on */
}

/* ---- GET /api/v1/devices/:serial/trend ----------------------------------------- */

static void on_trend(void *ctx, int status, const store_rows *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        svc__reply_db_error(r, status, res, admin__sqlstates);
        return;
    }
    bool more;
    json_t *list = rows_json(res, (int)(intptr_t)r->user, &more);
    more = admin__fit_output(r, list) > 0 || more;
    /* minutes are unique: the next page starts a minute after the last one given */
    json_t *next = json_null();
    int cn = store_rows_col(res, "next_from");
    size_t n = json_array_size(list);
    if (more && n && cn >= 0)
        next = json_string(store_rows_text(res, (int)n - 1, cn));
    https_reply_json(r, 200,
                     json_pack("{s:s, s:o, s:o}", "device_serial", r->params[0], "minutes", list,
                               "next_from", next));
}

int admin_device_trend(https_req *r)
{
    static const char *const allowed[] = {"code", "from", "to", "limit", NULL};
    char code[CODE_MAX + 2], from[64], to[64], lim[24];
    long long limit = TREND_DEFAULT;
    int has_code, has_from, has_to;
    if (!svc__query_ok(r, allowed) ||
        (has_code = admin__query_param(r, "code", code, sizeof(code))) < 0 ||
        (has_from = time_param(r, "from", from, sizeof(from))) < 0 ||
        (has_to = time_param(r, "to", to, sizeof(to))) < 0 ||
        admin__query_uint(r, "limit", TREND_MAX, &limit) < 0)
        return CMS_OK;
    if (!has_code || !admin__plain_text(code, CODE_MAX) || !has_from || !has_to) {
        https_reply_error(r, 400, "bad_request", "code, from and to are required");
        return CMS_OK;
    }
    if (!admin__plain_text(r->params[0], SERIAL_MAX)) {
        https_reply_error(r, 404, "not_found", "no such device");
        return CMS_OK;
    }
    snprintf(lim, sizeof(lim), "%lld", limit + 1);
    r->user = (void *)(intptr_t)limit;
    const char *p[5] = {r->params[0], code, from, to, lim};
    /* clang-format off */
    return svc__submit(r,
                  "SELECT row_to_json(t)::text AS j, "
                  "  " ISO("(t.minute + interval '1 minute')") " AS next_from "
                  "FROM cms.vitals_trend($1, $2, $3::timestamptz, $4::timestamptz) t "
                  "ORDER BY t.minute LIMIT $5::integer",
                  5, p, on_trend);
    /* clang-format on */
}

/* ---- GET /api/v1/devices/:serial/waveforms -------------------------------------- */

static void on_waveforms(void *ctx, int status, const store_rows *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        svc__reply_db_error(r, status, res, admin__sqlstates);
        return;
    }
    /*
     * The rows are the blocks of up to limit + 1 starts (several blocks share
     * a start: one per channel). A page is whole starts: the blocks of the
     * extra start, or of the start the output limit cut into, go on the next
     * page, which begins at that start. (A single start whose blocks exceed
     * the output limit is answered cut, and begins the next page again.)
     */
    long long limit = (long long)(intptr_t)r->user;
    int n = store_rows_count(res), ca = store_rows_col(res, "at");
    int keep = n, starts = 0;
    const char *next_at = NULL;
    for (int i = 0; i < n && ca >= 0; i++) {
        if (i == 0 || strcmp(store_rows_text(res, i, ca), store_rows_text(res, i - 1, ca)) != 0)
            starts++;
        if (starts > limit) {
            keep = i;
            next_at = store_rows_text(res, i, ca);
            break;
        }
    }
    bool more;
    json_t *list = rows_json(res, keep, &more);
    size_t dropped = admin__fit_output(r, list);
    if (dropped > 0) {
        int first_dropped = (int)json_array_size(list);
        next_at = store_rows_text(res, first_dropped, ca);
        int k = first_dropped;
        while (k > 0 && strcmp(store_rows_text(res, k - 1, ca), next_at) == 0)
            k--;
        while (k > 0 && json_array_size(list) > (size_t)k)
            json_array_remove(list, json_array_size(list) - 1);
    }
    https_reply_json(r, 200,
                     json_pack("{s:s, s:o, s:o}", "device_serial", r->params[0], "blocks", list,
                               "next_from", next_at ? json_string(next_at) : json_null()));
}

int admin_device_waveforms(https_req *r)
{
    static const char *const allowed[] = {"code", "from", "to", "limit", NULL};
    char code[CODE_MAX + 2], from[64], to[64], lim[24];
    long long limit = WAVES_DEFAULT;
    int has_code, has_from, has_to;
    if (!svc__query_ok(r, allowed) ||
        (has_code = admin__query_param(r, "code", code, sizeof(code))) < 0 ||
        (has_from = time_param(r, "from", from, sizeof(from))) < 0 ||
        (has_to = time_param(r, "to", to, sizeof(to))) < 0 ||
        admin__query_uint(r, "limit", WAVES_MAX, &limit) < 0)
        return CMS_OK;
    if ((has_code && !admin__plain_text(code, CODE_MAX)) || !has_from || !has_to) {
        https_reply_error(r, 400, "bad_request", "from and to are required");
        return CMS_OK;
    }
    if (!admin__plain_text(r->params[0], SERIAL_MAX)) {
        https_reply_error(r, 404, "not_found", "no such device");
        return CMS_OK;
    }
    snprintf(lim, sizeof(lim), "%lld", limit + 1);
    r->user = (void *)(intptr_t)limit;
    const char *p[5] = {r->params[0], has_code ? code : NULL, from, to, lim};
    /* clang-format off */
    return svc__submit(r,
                  "WITH starts AS (SELECT DISTINCT w.start_at FROM cms.waveforms w "
                  "  WHERE w.device_serial = $1 AND ($2::text IS NULL OR w.mdc_code = $2) "
                  "  AND w.start_at >= $3::timestamptz AND w.start_at < $4::timestamptz "
                  "  ORDER BY 1 LIMIT $5::integer) "
                  "SELECT (to_jsonb(w) - 'device_serial' - 'raw_samples')::text AS j, "
                  "  " ISO("w.start_at") " AS at "
                  "FROM cms.waveforms w JOIN starts s ON s.start_at = w.start_at "
                  "WHERE w.device_serial = $1 AND ($2::text IS NULL OR w.mdc_code = $2) "
                  "ORDER BY w.start_at, w.mdc_code, w.channel",
                  5, p, on_waveforms);
    /* clang-format on */
}
