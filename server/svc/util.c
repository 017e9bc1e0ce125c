/*
 * util.c - helpers every service room uses (svc_int.h): statements through
 * the worker's store, a failed statement as an HTTP answer, result columns
 * as JSON, the audit actor.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cms_err.h"
#include "log.h"
#include "svc.h"
#include "svc_int.h"

int svc__submit(https_req *r, const char *sql, int n, const char *const *params, store_query_cb cb)
{
    svc_state *st = r->ctx->svc;
    int rc = store_query(st->store, sql, n, params, cb, r);
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
 * Refuses a query string with parameters outside allowed (or repeated, or
 * malformed) with 400. Returns true when the request may go on.
 */
bool svc__query_ok(https_req *r, const char *const *allowed)
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

static const svc__sqlstate *sqlstate_find(const svc__sqlstate *map, const char *state)
{
    for (; state && map && map->state; map++) {
        size_t n = strlen(map->state);
        if (n == 2 ? strncmp(state, map->state, 2) == 0 : strcmp(state, map->state) == 0)
            return map;
    }
    return NULL;
}

void svc__db_error(const https_req *r, int status, const store_rows *rows, const svc__sqlstate *map,
                   int *http, const char **error, char *detail, size_t cap)
{
    const char *state = store_rows_sqlstate(rows), *msg = store_rows_error(rows);
    const svc__sqlstate *m = status == CMS_EPROTO ? sqlstate_find(map, state) : NULL;
    if (m) {
        *http = m->http;
        *error = m->error;
        snprintf(detail, cap, "%s", msg ? msg : "");
        return;
    }
    if (status == CMS_EUNAVAIL || status == CMS_ELIMIT || status == CMS_ECLOSED) {
        *http = 503;
        *error = status == CMS_ECLOSED ? "shutting_down" : "database_unavailable";
        snprintf(detail, cap, "%s",
                 status == CMS_ECLOSED ? "the server is shutting down"
                                       : "the database is unavailable or timed out");
        return;
    }
    if (status == CMS_EPROTO)
        log_error("db_error", NULL, r->peer_addr, "%s %s: SQLSTATE %s: %s", r->http->method_name,
                  r->http->path, state ? state : "-", msg ? msg : "-");
    else
        log_error("db_error", NULL, r->peer_addr, "%s %s: unexpected answer: %s",
                  r->http->method_name, r->http->path, cms_strerror(status));
    *http = 500;
    *error = "internal_error";
    snprintf(detail, cap, "database error (see the server log)");
}

void svc__reply_db_error(https_req *r, int status, const store_rows *rows, const svc__sqlstate *map)
{
    int http;
    const char *error;
    char detail[512];
    svc__db_error(r, status, rows, map, &http, &error, detail, sizeof(detail));
    https_reply_error(r, http, error, detail);
}

const char *svc__actor(enum https_peer_kind peer, const char *cn, char *buf, size_t cap)
{
    if (peer == HTTPS_PEER_OPERATOR)
        snprintf(buf, cap, "operator:%s", cn);
    else if (peer == HTTPS_PEER_DEVICE)
        snprintf(buf, cap, "device:%s", cn);
    else
        snprintf(buf, cap, "anonymous");
    return buf;
}

json_t *svc__json_text(const store_rows *rows, int row, int col)
{
    if (store_rows_null(rows, row, col))
        return json_null();
    json_t *s = json_string(store_rows_text(rows, row, col));
    return s ? s : json_string("?"); /* not UTF-8: cannot happen with a UTF8 database */
}

json_t *svc__json_int(const store_rows *rows, int row, int col)
{
    if (store_rows_null(rows, row, col))
        return json_null();
    return json_integer((json_int_t)strtoll(store_rows_text(rows, row, col), NULL, 10));
}

void svc__set_text(json_t *o, const char *key, const store_rows *rows, int row, const char *name)
{
    json_object_set_new(o, key, svc__json_text(rows, row, store_rows_col(rows, name)));
}

void svc__set_int(json_t *o, const char *key, const store_rows *rows, int row, const char *name)
{
    json_object_set_new(o, key, svc__json_int(rows, row, store_rows_col(rows, name)));
}
