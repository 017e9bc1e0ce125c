/*
 * admin_util.c - helpers of the operator API handlers (admin_int.h):
 * statements through the store, database errors as HTTP answers, query
 * parameters, result columns as JSON, output size.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_int.h"
#include "cms_err.h"
#include "log.h"
#include "svc.h"

static svc_state *svc_of(https_req *r)
{
    return r->ctx->svc;
}

/* Runs sql with params; the answer comes from cb. Returns what the handler returns. */
int admin__submit(https_req *r, const char *sql, int n, const char *const *params,
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
int admin__db_error_status(int status, const store_rows *res)
{
    if (status == CMS_EUNAVAIL || status == CMS_ECLOSED)
        return 503;
    const char *state = res ? store_rows_sqlstate(res) : NULL;
    if (!state)
        return 500;
    if (strncmp(state, "22", 2) == 0) /* data exception: a value the peer sent */
        return 400;
    if (strcmp(state, "P0002") == 0)
        return 404;
    if (strncmp(state, "23", 2) == 0)
        return 409;
    return 500;
}

void admin__reply_db_error(https_req *r, int status, const store_rows *res)
{
    int code = admin__db_error_status(status, res);
    const char *state = res ? store_rows_sqlstate(res) : NULL;
    const char *msg = res ? store_rows_error(res) : NULL;
    switch (code) {
    case 503:
        https_reply_error(r, 503, "database_unavailable",
                          status == CMS_ECLOSED ? "the server is shutting down"
                                                : "the database is unavailable or timed out");
        break;
    case 400:
        https_reply_error(r, 400, "bad_request", msg);
        break;
    case 404:
        https_reply_error(r, 404, "not_found", msg);
        break;
    case 409:
        https_reply_error(r, 409, "conflict", msg);
        break;
    default:
        log_error("db_error", NULL, r->peer_addr, "%s %s: SQLSTATE %s: %s", r->http->method_name,
                  r->http->path, state ? state : "-", msg ? msg : "-");
        https_reply_error(r, 500, "internal_error", "database error (see the server log)");
    }
}

/*
 * Refuses a query string with parameters outside allowed (or repeated, or
 * malformed) with 400. Returns true when the request may go on.
 */
bool admin__query_ok(https_req *r, const char *const *allowed)
{
    if (http_query_check(r->http->query, r->http->query_len, allowed) == CMS_OK)
        return true;
    char detail[200];
    size_t n = (size_t)snprintf(detail, sizeof(detail),
                                "unknown, repeated or malformed query parameter; allowed:");
    for (size_t i = 0; allowed[i] && n < sizeof(detail); i++)
        n += (size_t)snprintf(detail + n, sizeof(detail) - n, " %s", allowed[i]);
    https_reply_error(r, 400, "bad_request", detail);
    return false;
}

/*
 * Gets query parameter name into out. Returns 1 (present, non-empty), 0
 * (absent or empty: treated alike), or -1 after answering 400.
 */
int admin__query_param(https_req *r, const char *name, char *out, size_t cap)
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
bool admin__plain_text(const char *s, size_t max)
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

/*
 * Parses a positive decimal integer in [1, max] from a query parameter.
 * Returns 1 (set), 0 (absent: *v unchanged) or -1 after answering 400.
 */
int admin__query_uint(https_req *r, const char *name, long long max, long long *v)
{
    char buf[32];
    int rc = admin__query_param(r, name, buf, sizeof(buf));
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
int admin__col(const store_rows *res, const char *name)
{
    return store_rows_col(res, name);
}

/* A text column as a JSON string, or null. */
json_t *admin__j_text(const store_rows *res, int row, int c)
{
    if (c < 0 || store_rows_null(res, row, c))
        return json_null();
    json_t *s = json_string(store_rows_text(res, row, c));
    return s ? s : json_string("?"); /* not UTF-8: cannot happen with a UTF8 database */
}

/* An integer column as a JSON integer, or null. */
json_t *admin__j_int(const store_rows *res, int row, int c)
{
    if (c < 0 || store_rows_null(res, row, c))
        return json_null();
    return json_integer((json_int_t)strtoll(store_rows_text(res, row, c), NULL, 10));
}

/* Sets key of o from column name of row: text (or null). */
void admin__set_text(json_t *o, const char *key, const store_rows *res, int row, const char *name)
{
    json_object_set_new(o, key, admin__j_text(res, row, admin__col(res, name)));
}

void admin__set_int(json_t *o, const char *key, const store_rows *res, int row, const char *name)
{
    json_object_set_new(o, key, admin__j_int(res, row, admin__col(res, name)));
}

/*
 * Keeps the first elements of list (a member of body) whose encoding fits
 * the output limit with room to spare, so that a page is never refused as
 * too large. Returns the number of elements dropped.
 */
size_t admin__fit_output(https_req *r, json_t *list)
{
    size_t budget = r->ctx->cfg.max_output_bytes ? r->ctx->cfg.max_output_bytes : 1u << 20;
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
