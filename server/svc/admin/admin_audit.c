/*
 * admin_audit.c - the operator API's audit resources (svc layer): the audit
 * log, newest first, with filters and pages, and the verification of its
 * hash chain (see 001 and 003). Helpers and error conventions: admin_int.h.
 *
 * Thread: the worker loop's thread (like every handler).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_int.h"
#include "cms_err.h"
#include "log.h"
#include "svc.h"

#define AUDIT_DEFAULT 100 /* page size: default and cap */
#define AUDIT_MAX 1000

static void on_audit_list(void *ctx, int status, const store_rows *res)
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
    int cd = store_rows_col(res, "detail");
    json_t *list = json_array();
    for (int i = 0; i < n; i++) {
        json_t *o = json_object();
        svc__set_int(o, "id", res, i, "id");
        svc__set_text(o, "at", res, i, "at");
        svc__set_text(o, "event", res, i, "event");
        svc__set_text(o, "actor", res, i, "actor");
        svc__set_text(o, "device", res, i, "device");
        svc__set_text(o, "peer", res, i, "peer");
        json_t *d = NULL;
        if (cd >= 0 && !store_rows_null(res, i, cd))
            d = json_loads(store_rows_text(res, i, cd), JSON_DECODE_ANY, NULL);
        json_object_set_new(o, "detail", d ? d : json_null());
        svc__set_text(o, "row_hash", res, i, "row_hash");
        json_array_append_new(list, o);
    }
    more = admin__fit_output(r, list) > 0 || more;
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
    if (!svc__query_ok(r, allowed) ||
        (has_since = admin__query_param(r, "since", since, sizeof(since))) < 0 ||
        (has_dev = admin__query_param(r, "device", device, sizeof(device))) < 0 ||
        (has_ev = admin__query_param(r, "event", event, sizeof(event))) < 0 ||
        admin__query_uint(r, "limit", AUDIT_MAX, &limit) < 0 ||
        (has_before = admin__query_uint(r, "before", INT64_MAX, &before_id)) < 0)
        return CMS_OK;
    if ((has_dev && !admin__plain_text(device, SERIAL_MAX)) ||
        (has_ev && !admin__plain_text(event, NAME_MAX_LEN)) ||
        (has_since && !admin__plain_text(since, sizeof(since) - 1))) {
        https_reply_error(r, 400, "bad_request", "device, event or since is not valid text");
        return CMS_OK;
    }
    snprintf(lim, sizeof(lim), "%lld", limit + 1);
    snprintf(before, sizeof(before), "%lld", before_id);
    r->user = (void *)(intptr_t)limit;
    const char *p[5] = {has_since ? since : NULL, has_dev ? device : NULL, has_ev ? event : NULL,
                        has_before ? before : NULL, lim};
    /* Newest first: ids follow the chain, which follows time (001). */
    /* clang-format off */
    return svc__submit(r,
                  "SELECT e.id, " ISO("e.at") " AS at, e.event, e.actor, e.device, e.peer, "
                  "e.detail::text AS detail, encode(e.row_hash, 'hex') AS row_hash "
                  "FROM cms.audit_events e "
                  "WHERE ($1::timestamptz IS NULL OR e.at >= $1::timestamptz) "
                  "AND ($2::text IS NULL OR e.device = $2) "
                  "AND ($3::text IS NULL OR e.event = $3) "
                  "AND ($4::bigint IS NULL OR e.id < $4::bigint) "
                  "ORDER BY e.id DESC LIMIT $5::integer",
                  5, p, on_audit_list);
    /* clang-format on */
}

/*
 * GET /api/v1/audit/verify walks the chain in chunks of VERIFY_CHUNK rows,
 * one statement each, so that no statement runs into the query timeout
 * however long the log is, and the other work of the control connection
 * (device lookups at handshakes) waits at most one chunk. Each chunk
 * recomputes, with the 001 function cms.audit_row_hash (the one the trigger
 * uses), every row's hash and its link to the row before (the previous
 * chunk's last row, or 32 zero bytes before the first row); the last chunk
 * also compares the chain head with the last row, in the same snapshot, so
 * that rows removed from the end are noticed. Same answers as
 * cms.audit_verify_report() (003), which does it in one statement.
 */
#define VERIFY_CHUNK 50000

typedef struct verify_run {
    long long after; /* last id checked so far (0 = none) */
    long long rows, bad;
    long long first_bad; /* 0 = none yet */
    const char *reason;  /* static text, NULL while intact */
    long long last_id;
    char last_hash[65];
    /* ?anchor=ID:SHA256 (an audit_anchor log line): that row must still have that hash */
    long long anchor_id; /* 0 = no anchor given */
    char anchor_hash[65];
    int anchor; /* 0 not checked yet, 1 matches, -1 differs, -2 no such row */
} verify_run;

/* clang-format off */
static const char verify_sql[] =
    "WITH prev AS ("
    "  SELECT e.row_hash FROM cms.audit_events e WHERE e.id <= $1::bigint "
    "  ORDER BY e.id DESC LIMIT 1"
    "), r AS ("
    "  SELECT e.* FROM cms.audit_events e WHERE e.id > $1::bigint ORDER BY e.id "
    "  LIMIT $2::integer"
    "), chk AS ("
    "  SELECT r.id, r.row_hash,"
    "    r.prev_hash IS DISTINCT FROM coalesce(lag(r.row_hash) OVER (ORDER BY r.id),"
    "      (SELECT row_hash FROM prev), '\\x" /* 32 zero bytes */
    "0000000000000000000000000000000000000000000000000000000000000000'::bytea) AS bad_link,"
    "    r.row_hash IS DISTINCT FROM cms.audit_row_hash(r.prev_hash, r.id, r.at, r.event,"
    "      r.actor, r.device, r.peer, r.detail) AS bad_hash "
    "  FROM r"
    "), agg AS ("
    "  SELECT count(*) AS n, count(*) FILTER (WHERE bad_link OR bad_hash) AS nbad,"
    "    min(id) FILTER (WHERE bad_link OR bad_hash) AS first_bad, max(id) AS last FROM chk"
    "), tail AS ("
    "  SELECT e.id, e.row_hash FROM cms.audit_events e ORDER BY e.id DESC LIMIT 1"
    "), head AS ("
    "  SELECT h.last_id, h.last_hash FROM cms.audit_chain_head h WHERE h.singleton"
    ") "
    "SELECT agg.n, agg.nbad, agg.first_bad, fb.bad_hash AS first_bad_hash, agg.last,"
    "  encode(lr.row_hash, 'hex') AS last_hash, head.last_id AS head_id, tail.id AS tail_id,"
    "  (head.last_id IS NOT DISTINCT FROM tail.id AND (tail.id IS NULL"
    "   OR head.last_hash IS NOT DISTINCT FROM tail.row_hash)) AS head_ok "
    "FROM agg CROSS JOIN head LEFT JOIN tail ON true "
    "LEFT JOIN chk fb ON fb.id = agg.first_bad LEFT JOIN chk lr ON lr.id = agg.last";
/* clang-format on */

static int verify_next(https_req *r);

static long long col_ll(const store_rows *res, const char *name)
{
    int c = store_rows_col(res, name);
    return c >= 0 && !store_rows_null(res, 0, c) ? strtoll(store_rows_text(res, 0, c), NULL, 10)
                                                 : 0;
}

static bool col_true(const store_rows *res, const char *name)
{
    int c = store_rows_col(res, name);
    return c >= 0 && !store_rows_null(res, 0, c) && store_rows_text(res, 0, c)[0] == 't';
}

static void verify_reply(https_req *r, verify_run *v)
{
    if (v->anchor_id && v->anchor != 1 && (!v->first_bad || v->first_bad > v->anchor_id)) {
        /* The chain links, but not to what was logged: rewritten and re-hashed. */
        v->first_bad = v->anchor_id;
        v->bad++;
        v->reason = v->anchor == -2 ? "the anchored row is not in the log any more"
                                    : "the anchored row's hash differs from the anchor: the "
                                      "chain was rewritten at or before it and re-hashed";
    }
    json_t *o = json_object();
    json_object_set_new(o, "intact", json_boolean(v->first_bad == 0));
    json_object_set_new(o, "first_bad_id", v->first_bad ? json_integer(v->first_bad) : json_null());
    json_object_set_new(o, "reason", v->reason ? json_string(v->reason) : json_null());
    json_object_set_new(o, "rows_checked", json_integer(v->rows));
    json_object_set_new(o, "bad_rows", json_integer(v->bad));
    json_object_set_new(o, "last_id", v->last_id ? json_integer(v->last_id) : json_null());
    json_object_set_new(o, "last_hash", v->last_hash[0] ? json_string(v->last_hash) : json_null());
    if (v->anchor_id)
        json_object_set_new(o, "anchor",
                            json_pack("{s:I, s:s, s:b}", "id", (json_int_t)v->anchor_id, "sha256",
                                      v->anchor_hash, "matches", v->anchor == 1));
    if (v->first_bad)
        log_warn("audit_chain_broken", NULL, r->peer_addr,
                 "first bad row %lld: %s (%lld rows checked, %lld bad)", v->first_bad, v->reason,
                 v->rows, v->bad);
    free(v);
    r->user = NULL;
    https_reply_json(r, 200, o);
}

static void on_audit_verify(void *ctx, int status, const store_rows *res)
{
    https_req *r = ctx;
    verify_run *v = r->user;
    if (status != CMS_OK || store_rows_count(res) != 1) {
        free(v);
        r->user = NULL;
        if (status == CMS_OK)
            https_reply_error(r, 500, "internal_error", "unexpected answer from the database");
        else
            svc__reply_db_error(r, status, res, admin__sqlstates);
        return;
    }
    long long n = col_ll(res, "n");
    v->rows += n;
    v->bad += col_ll(res, "nbad");
    if (!v->first_bad && col_ll(res, "first_bad")) {
        v->first_bad = col_ll(res, "first_bad");
        v->reason = col_true(res, "first_bad_hash")
                        ? "row_hash does not match the row's content (row altered)"
                        : "prev_hash does not match the previous row's row_hash (a row before "
                          "it was altered, removed or inserted)";
    }
    if (n > 0) {
        v->after = v->last_id = col_ll(res, "last");
        int ch = store_rows_col(res, "last_hash");
        snprintf(v->last_hash, sizeof(v->last_hash), "%s",
                 ch >= 0 && !store_rows_null(res, 0, ch) ? store_rows_text(res, 0, ch) : "");
    }
    if (n >= VERIFY_CHUNK) { /* more to read, unless the client went away */
        if (net_conn_state(r->conn) != NET_ACTIVE) {
            free(v);
            r->user = NULL;
            https_reply_error(r, 503, "gone", "the client closed the connection");
            return;
        }
        verify_next(r); /* answers itself when it cannot queue */
        return;
    }
    /* The last chunk: the chain head must name the last row (same snapshot). */
    if (!col_true(res, "head_ok") && !v->first_bad) {
        long long head = col_ll(res, "head_id"), tail = col_ll(res, "tail_id");
        v->bad++;
        v->first_bad = head ? head : tail;
        v->reason = head != tail ? "the chain head does not name the last row (rows removed "
                                   "from the end)"
                                 : "the chain head hash does not match the last row (last row "
                                   "or head altered)";
    }
    verify_reply(r, v);
}

/* Queues the next chunk. Returns CMS_EAGAIN, or CMS_OK after answering. */
static int verify_next(https_req *r)
{
    verify_run *v = r->user;
    char after[24], chunk[16];
    snprintf(after, sizeof(after), "%lld", v->after);
    snprintf(chunk, sizeof(chunk), "%d", VERIFY_CHUNK);
    const char *p[2] = {after, chunk};
    int rc = svc__submit(r, verify_sql, 2, p, on_audit_verify);
    if (rc != CMS_EAGAIN) {
        free(v);
        r->user = NULL;
    }
    return rc;
}

static void on_anchor_row(void *ctx, int status, const store_rows *res)
{
    https_req *r = ctx;
    verify_run *v = r->user;
    if (status != CMS_OK) {
        free(v);
        r->user = NULL;
        svc__reply_db_error(r, status, res, admin__sqlstates);
        return;
    }
    if (store_rows_count(res) != 1)
        v->anchor = -2;
    else
        v->anchor = strcmp(store_rows_text(res, 0, 0), v->anchor_hash) == 0 ? 1 : -1;
    verify_next(r); /* answers itself when it cannot queue */
}

int admin_audit_verify(https_req *r)
{
    static const char *const allowed[] = {"anchor", NULL};
    char anchor[96];
    int has_anchor;
    if (!svc__query_ok(r, allowed) ||
        (has_anchor = admin__query_param(r, "anchor", anchor, sizeof(anchor))) < 0)
        return CMS_OK;
    verify_run *v = calloc(1, sizeof(*v));
    if (!v) {
        https_reply_error(r, 500, "internal_error", "out of memory");
        return CMS_OK;
    }
    if (has_anchor && !svc_audit_anchor_parse(anchor, &v->anchor_id, v->anchor_hash)) {
        free(v);
        https_reply_error(r, 400, "bad_request",
                          "anchor must be ID:SHA256 (an audit_anchor log line's id and sha256)");
        return CMS_OK;
    }
    r->user = v;
    if (!v->anchor_id)
        return verify_next(r);
    char id[24];
    snprintf(id, sizeof(id), "%lld", v->anchor_id);
    const char *p[1] = {id};
    int rc = svc__submit(r,
                         "SELECT encode(row_hash, 'hex') FROM cms.audit_events "
                         "WHERE id = $1::bigint",
                         1, p, on_anchor_row);
    if (rc != CMS_EAGAIN) {
        free(v);
        r->user = NULL;
    }
    return rc;
}
