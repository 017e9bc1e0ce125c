/*
 * admin_int.h - what the operator API's files share (admin.c: whoami,
 * devices, groups; admin_audit.c: audit log and its verification;
 * admin_util.c: these helpers; statements and database errors go through
 * svc_int.h). Internal to server/svc.
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
#include "../svc_int.h"

#define SERIAL_MAX 64   /* device serials (002 allows 1..64 characters) */
#define NAME_MAX_LEN 63 /* group names, event names */

/* SQL fragment: a timestamptz as "2026-11-28T06:14:54.123456Z" (or NULL). */
#define ISO(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* The room's answers to SQLSTATEs (svc__db_error): 400 for class 22 (a
 * value the peer sent; our functions raise 22023), 404 for P0002, 409 for
 * class 23; anything else 500. */
extern const svc__sqlstate admin__sqlstates[];

/* Query parameter name into out: 1 present and non-empty, 0 absent or
 * empty, -1 after answering 400. */
int admin__query_param(https_req *r, const char *name, char *out, size_t cap);
/* Decimal integer parameter in [1, max]: 1 set, 0 absent (*v unchanged),
 * -1 after answering 400. */
int admin__query_uint(https_req *r, const char *name, long long max, long long *v);
/* 1..max bytes without control characters. */
bool admin__plain_text(const char *s, size_t max);

/* Drops trailing elements of list until the answer fits the configured
 * output limit (a page is never refused as too large). Returns how many. */
size_t admin__fit_output(https_req *r, json_t *list);

#endif
