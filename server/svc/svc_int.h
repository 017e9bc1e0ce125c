/*
 * svc_int.h - what the service rooms (svc/admin, svc/est, svc/fw) and the
 * HTTPS router share: statements through the worker's store, a failed
 * statement as an HTTP answer, result columns as JSON, the audit actor of
 * a request (svc/util.c).
 * Internal to server/svc.
 *
 * Thread: the worker loop's thread (like every handler).
 */
#ifndef CMS_SVC_INT_H
#define CMS_SVC_INT_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "https.h"
#include "store.h"

/*
 * Runs sql with params (copied) on the control connection of the worker's
 * store; cb gets r as ctx. Returns what a handler returns: CMS_EAGAIN (cb
 * will answer), or CMS_OK after answering 503 (queue full, shutting down)
 * or 500 itself (cb is then not called).
 */
int svc__submit(https_req *r, const char *sql, int n, const char *const *params, store_query_cb cb);

/*
 * Refuses (400 bad_request, naming the allowed ones) a query string with a
 * parameter outside allowed (NULL-terminated), a repeated or a malformed
 * one. Returns true when r may go on.
 */
bool svc__query_ok(https_req *r, const char *const *allowed);

/*
 * How a room answers the SQLSTATEs its statements raise: state is a full
 * SQLSTATE ("P0002", a custom "CE001") or a class, two characters ("22",
 * "23"). A table ends with {NULL, 0, NULL}; the first match wins.
 */
typedef struct svc__sqlstate {
    const char *state;
    int http;          /* the HTTP status (4xx) */
    const char *error; /* the JSON "error" member (static) */
} svc__sqlstate;

/*
 * A failed statement as an HTTP answer. status: the store_query_cb status
 * (not CMS_OK; rows borrowed, may be NULL); map: the room's table.
 *   CMS_EPROTO with a SQLSTATE in map  map's status and error, the
 *                                      database's message as detail;
 *   CMS_EPROTO otherwise               500 internal_error, the SQLSTATE and
 *                                      message logged (db_error), not sent;
 *   CMS_EUNAVAIL, CMS_ELIMIT           503 database_unavailable;
 *   CMS_ECLOSED                        503 shutting_down;
 *   anything else                      500 internal_error (logged).
 * Fills *http, *error (static) and detail (cap bytes, NUL-terminated).
 */
void svc__db_error(const https_req *r, int status, const store_rows *rows, const svc__sqlstate *map,
                   int *http, const char **error, char *detail, size_t cap);

/* The same, answered at once (https_reply_error). */
void svc__reply_db_error(https_req *r, int status, const store_rows *rows,
                         const svc__sqlstate *map);

/* A column of a result row as JSON: a string / an integer, or null for SQL
 * NULL (and for a column that is not there, col -1). New reference. */
json_t *svc__json_text(const store_rows *rows, int row, int col);
json_t *svc__json_int(const store_rows *rows, int row, int col);
/* o[key] = the column called name of row, as svc__json_text / svc__json_int. */
void svc__set_text(json_t *o, const char *key, const store_rows *rows, int row, const char *name);
void svc__set_int(json_t *o, const char *key, const store_rows *rows, int row, const char *name);

/* The audit actor of a peer: "operator:<cn>", "device:<cn>" or "anonymous",
 * into buf (cap bytes). Returns buf. */
const char *svc__actor(enum https_peer_kind peer, const char *cn, char *buf, size_t cap);

#endif
