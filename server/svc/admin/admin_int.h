/*
 * admin_int.h - what the operator API's files share (admin.c: whoami,
 * devices, groups; admin_audit.c: audit log and its verification;
 * admin_util.c: these helpers). Internal to server/svc.
 *
 * Every handler validates what the peer sent (query parameters against an
 * allowlist, values against their syntax), then runs parameterized
 * statements with store_query() and answers from the store callback. JSON is
 * built with jansson from the result columns; the SQL only formats times
 * (ISO 8601 UTC) and never builds JSON. Errors are JSON {"error", "detail"}:
 * 400 bad parameters or body, 404 unknown device/group, 413 too many
 * serials, 415 body not JSON, 503 database unavailable (or the statement
 * timed out), 500 otherwise.
 *
 * Thread: the worker loop's thread (like every handler).
 */
#ifndef CMS_SVC_ADMIN_INT_H
#define CMS_SVC_ADMIN_INT_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "https.h"

#define SERIAL_MAX 64   /* device serials (002 allows 1..64 characters) */
#define NAME_MAX_LEN 63 /* group names, event names */

/* SQL fragment: a timestamptz as "2026-11-28T06:14:54.123456Z" (or NULL). */
#define ISO(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/*
 * Runs sql with params (copied) on the store's control connection; cb gets
 * r as ctx. Returns what the handler returns: CMS_EAGAIN (cb will answer),
 * or CMS_OK after answering 503/500 itself (queue full, closing).
 */
int admin__submit(https_req *r, const char *sql, int n, const char *const *params,
                  store_query_cb cb);

/* HTTP status for a failed statement: 503 (unavailable, timed out,
 * closing), 400 (SQLSTATE class 22: a value the peer sent; our functions
 * raise 22023), 404 (P0002), 409 (class 23), 500 otherwise. */
int admin__db_error_status(int status, const store_rows *res);
/* Answers a failed statement with that status and the database's message
 * (500: a generic text; the details go to the log). res: borrowed. */
void admin__reply_db_error(https_req *r, int status, const store_rows *res);

/* Refuses (400) a query string with a parameter outside allowed (NULL
 * terminated), repeated or malformed. Returns true when r may go on. */
bool admin__query_ok(https_req *r, const char *const *allowed);
/* Query parameter name into out: 1 present and non-empty, 0 absent or
 * empty, -1 after answering 400. */
int admin__query_param(https_req *r, const char *name, char *out, size_t cap);
/* Decimal integer parameter in [1, max]: 1 set, 0 absent (*v unchanged),
 * -1 after answering 400. */
int admin__query_uint(https_req *r, const char *name, long long max, long long *v);
/* 1..max bytes without control characters. */
bool admin__plain_text(const char *s, size_t max);

/* Result columns by name (-1 when absent) and as JSON (null for SQL NULL). */
int admin__col(const store_rows *res, const char *name);
json_t *admin__j_text(const store_rows *res, int row, int c);
json_t *admin__j_int(const store_rows *res, int row, int c);
/* o[key] = column name of row, as text / integer (or null). */
void admin__set_text(json_t *o, const char *key, const store_rows *res, int row, const char *name);
void admin__set_int(json_t *o, const char *key, const store_rows *res, int row, const char *name);

/* Drops trailing elements of list until the answer fits the configured
 * output limit (a page is never refused as too large). Returns how many. */
size_t admin__fit_output(https_req *r, json_t *list);

#endif
