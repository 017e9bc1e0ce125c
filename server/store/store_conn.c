/*
 * store_conn.c - one libpq connection driven by the libuv loop.
 *
 * States: DOWN -> CONNECTING -> SETUP -> READY <-> BUSY, and on any failure
 * -> BACKOFF -> CONNECTING ...; CLOSED is final.
 *
 * Connecting: PQconnectStart, then PQconnectPoll each time the socket is
 * ready in the direction PQconnectPoll asked for. libpq may close the socket
 * and open another one between calls (next host/address, SSL or GSS
 * fallback), and the new socket may even reuse the old number, so the poll
 * handle is re-created after every PQconnectPoll step: closing a uv_poll_t
 * removes its fd from epoll immediately, the new one re-adds it.
 *
 * Querying: PQsendQueryParams, then PQflush; while PQflush returns 1 we also
 * want UV_WRITABLE. On readable: PQconsumeInput, PQflush again if needed,
 * then PQgetResult while !PQisBusy until it returns NULL. A timer per query
 * (query_timeout_ms) resets the connection when it expires (PQcancel blocks,
 * so we do not use it; the server also has statement_timeout).
 *
 * Idle connections keep readable interest, so a terminated backend is
 * noticed at once (error/EOF) instead of at the next query.
 *
 * The only close path is conn_drop(): it stops the poll handle before
 * PQfinish closes the socket; the handle memory is freed in its close
 * callback.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "log.h"
#include "store_int.h"

static void conn_poll_cb(uv_poll_t *h, int status, int events);
static void conn_timer_cb(uv_timer_t *t);
static void conn_lost(store__conn *c, const char *why);

void store__conn_init(store_t *s, store__conn *c, const char *name)
{
    memset(c, 0, sizeof *c);
    c->s = s;
    c->name = name;
    c->state = SC_DOWN;
    c->poll_fd = -1;
    c->backoff_ms = s->cfg.reconnect_min_ms;
    uv_timer_init(s->loop, &c->timer);
    c->timer.data = c;
}

/* ---- poll handle ------------------------------------------------------- */

static void poll_closed(uv_handle_t *h)
{
    store__conn *c = h->data;
    free(h);
    store__release(c->s);
}

static void timer_closed(uv_handle_t *h)
{
    store__conn *c = h->data;
    store__release(c->s);
}

static void poll_release(store__conn *c)
{
    if (!c->poll)
        return;
    uv_poll_stop(c->poll);
    c->s->pending_closes++;
    uv_close((uv_handle_t *)c->poll, poll_closed);
    c->poll = NULL;
    c->poll_fd = -1;
    c->poll_events = 0;
}

/* Re-creates the poll handle on PQsocket() with the given interest. */
static int poll_renew(store__conn *c, int events)
{
    poll_release(c);
    int fd = PQsocket(c->pg);
    if (fd < 0)
        return CMS_EUNAVAIL;
    uv_poll_t *p = malloc(sizeof *p);
    if (!p)
        return CMS_ENOMEM;
    if (uv_poll_init(c->s->loop, p, fd) != 0) {
        free(p);
        return CMS_EINTERNAL;
    }
    p->data = c;
    c->poll = p;
    c->poll_fd = fd;
    c->poll_events = events;
    uv_poll_start(p, events, conn_poll_cb);
    return CMS_OK;
}

static void poll_want(store__conn *c, int events)
{
    if (!c->poll || c->poll_events == events)
        return;
    c->poll_events = events;
    uv_poll_start(c->poll, events, conn_poll_cb);
}

static void timer_start(store__conn *c, unsigned ms)
{
    uv_timer_start(&c->timer, conn_timer_cb, ms, 0);
}

/* ---- close path -------------------------------------------------------- */

/* Releases poll, timer activity, result and PGconn. Idempotent. */
static void conn_drop(store__conn *c)
{
    uv_timer_stop(&c->timer);
    poll_release(c);
    if (c->result) {
        PQclear(c->result);
        c->result = NULL;
    }
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
}

static void schedule_reconnect(store__conn *c)
{
    c->state = SC_BACKOFF;
    timer_start(c, c->backoff_ms);
    unsigned next = c->backoff_ms * 2;
    c->backoff_ms = next > c->s->cfg.reconnect_max_ms ? c->s->cfg.reconnect_max_ms : next;
}

static void connect_failed(store__conn *c, const char *why)
{
    c->failures++;
    log_warn("db_connect_failed", NULL, NULL, "conn=%s attempt=%u retry_in_ms=%u error=%s", c->name,
             c->failures, c->backoff_ms, why);
    conn_drop(c);
    schedule_reconnect(c);
}

/* A connection that was up is gone. Tells the owner, then reconnects. */
static void conn_lost(store__conn *c, const char *why)
{
    if (c->state == SC_CLOSED || c->state == SC_DOWN || c->state == SC_BACKOFF)
        return;
    bool query_lost = c->state == SC_BUSY;
    if (c->state == SC_CONNECTING || c->state == SC_SETUP) {
        connect_failed(c, why);
        return;
    }
    log_warn("db_disconnected", NULL, NULL, "conn=%s in_flight=%s retry_in_ms=%u error=%s", c->name,
             query_lost ? c->what : "none", c->backoff_ms, why);
    conn_drop(c);
    schedule_reconnect(c);
    if (c->on_down)
        c->on_down(c, query_lost);
}

void store__conn_reset(store__conn *c, const char *why)
{
    conn_lost(c, why);
}

void store__conn_close(store__conn *c)
{
    if (c->state == SC_CLOSED)
        return;
    conn_drop(c);
    c->state = SC_CLOSED;
    c->s->pending_closes++;
    uv_close((uv_handle_t *)&c->timer, timer_closed);
}

/* Trimmed libpq error text for one-line logs. */
static const char *pq_err(store__conn *c, char *buf, size_t cap)
{
    const char *m = c->pg ? PQerrorMessage(c->pg) : "out of memory";
    snprintf(buf, cap, "%s", m && *m ? m : "unknown error");
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = ' ';
    return buf;
}

/* ---- connecting -------------------------------------------------------- */

static void setup_send(store__conn *c);

/* Server notices and async errors go to our log, not to libpq's stderr. */
static void notice_cb(void *arg, const PGresult *res)
{
    store__conn *c = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    bool serious = sev && (strcmp(sev, "WARNING") == 0 || strcmp(sev, "FATAL") == 0 ||
                           strcmp(sev, "PANIC") == 0 || strcmp(sev, "ERROR") == 0);
    log_event(serious ? LOG_WARN : LOG_DEBUG, "db_notice", NULL, NULL,
              "conn=%s severity=%s sqlstate=%s text=\"%s\"", c->name, sev ? sev : "-",
              st ? st : "-", msg ? msg : "");
}

void store__conn_start(store__conn *c)
{
    char err[256];
    if (c->state == SC_CLOSED)
        return;
    conn_drop(c);
    c->state = SC_CONNECTING;
    c->pg = store__hosts_connect(c->s->conninfo, c->first_host);
    if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD) {
        connect_failed(c, pq_err(c, err, sizeof err));
        return;
    }
    PQsetNoticeReceiver(c->pg, notice_cb, c);
    if (poll_renew(c, UV_WRITABLE) != CMS_OK) {
        connect_failed(c, "cannot poll the database socket");
        return;
    }
    timer_start(c, store__hosts_connect_timeout_ms(c->s->conninfo, c->s->cfg.query_timeout_ms));
}

static void connect_step(store__conn *c)
{
    char err[256];
    PostgresPollingStatusType st = PQconnectPoll(c->pg);
    switch (st) {
    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:
        if (poll_renew(c, st == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE) != CMS_OK)
            connect_failed(c, "cannot poll the database socket");
        return;
    case PGRES_POLLING_OK:
        break;
    default:
        connect_failed(c, pq_err(c, err, sizeof err));
        return;
    }
    if (PQsetnonblocking(c->pg, 1) != 0) {
        connect_failed(c, pq_err(c, err, sizeof err));
        return;
    }
    if (poll_renew(c, UV_READABLE) != CMS_OK) {
        connect_failed(c, "cannot poll the database socket");
        return;
    }
    uv_timer_stop(&c->timer);
    setup_send(c);
}

/* Session settings: all values are parameters. */
static void setup_send(store__conn *c)
{
    char tmo[32], app[64];
    /* The server cancels a statement first (clean error, connection kept);
     * our timer at query_timeout_ms is the backstop for a dead link. */
    unsigned stmt_ms = c->s->cfg.query_timeout_ms / 10 * 9;
    snprintf(tmo, sizeof tmo, "%u", stmt_ms ? stmt_ms : 1);
    snprintf(app, sizeof app, "cmsd-%s", c->name);
    const char *vals[3] = {c->s->timezone, tmo, app};
    c->state = SC_READY; /* store__conn_send requires it */
    if (store__conn_send(c, "setup",
                         "SELECT pg_catalog.set_config('TimeZone', $1, false),"
                         " pg_catalog.set_config('statement_timeout', $2, false),"
                         " pg_catalog.set_config('application_name', $3, false)",
                         3, vals) != CMS_OK)
        return; /* reset already scheduled */
    c->state = SC_SETUP;
}

static void setup_done(store__conn *c, PGresult *res)
{
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char err[256];
        snprintf(err, sizeof err, "session setup: %s", PQresultErrorMessage(res));
        for (char *p = err; *p; p++)
            if (*p == '\n')
                *p = ' ';
        connect_failed(c, err);
        return;
    }
    c->state = SC_READY;
    log_info("db_connected", NULL, NULL, "conn=%s server_version=%d after_attempts=%u", c->name,
             PQserverVersion(c->pg), c->failures + 1);
    c->failures = 0;
    c->backoff_ms = c->s->cfg.reconnect_min_ms;
    if (c->on_up)
        c->on_up(c);
}

/* ---- querying ---------------------------------------------------------- */

int store__conn_send(store__conn *c, const char *what, const char *sql, int nparams,
                     const char *const *values)
{
    char err[256];
    if (c->state != SC_READY)
        return CMS_EUNAVAIL;
    snprintf(c->what, sizeof c->what, "%s", what);
    if (!PQsendQueryParams(c->pg, sql, nparams, NULL, values, NULL, NULL, 0)) {
        conn_lost(c, pq_err(c, err, sizeof err));
        return CMS_EUNAVAIL;
    }
    c->state = SC_BUSY;
    c->sent_ns = uv_hrtime();
    timer_start(c, c->s->cfg.query_timeout_ms);
    int f = PQflush(c->pg);
    if (f < 0) {
        conn_lost(c, pq_err(c, err, sizeof err));
        return CMS_OK; /* on_down(query_lost) has run */
    }
    poll_want(c, f == 1 ? (UV_READABLE | UV_WRITABLE) : UV_READABLE);
    return CMS_OK;
}

static void query_complete(store__conn *c)
{
    PGresult *res = c->result;
    c->result = NULL;
    uv_timer_stop(&c->timer);
    if (!res) /* cannot happen for a statement, but never report "nothing" */
        res = PQmakeEmptyPGresult(c->pg, PGRES_FATAL_ERROR);
    if (c->state == SC_SETUP) {
        setup_done(c, res);
    } else {
        c->state = SC_READY;
        metrics_observe(CM_DB_ROUNDTRIP,
                        c == &c->s->control                        ? CM_QUERY_CONTROL
                        : c == &c->s->lanes[STORE_LANE_ALARM].conn ? CM_QUERY_INGEST_ALARM
                                                                   : CM_QUERY_INGEST,
                        (double)(uv_hrtime() - c->sent_ns) / 1e9);
        if (c->on_result)
            c->on_result(c, res);
    }
    PQclear(res);
}

/* Hands every NOTIFY libpq has parsed to the owner. */
static void store__conn_notifies(store__conn *c)
{
    PGnotify *n;
    while (c->pg && (n = PQnotifies(c->pg)) != NULL) {
        if (c->on_notify)
            c->on_notify(c, n->relname, n->extra);
        PQfreemem(n);
    }
}

/* Reads what arrived; completes the query when its last result is in. */
static void conn_read(store__conn *c)
{
    char err[256];
    if (!PQconsumeInput(c->pg)) {
        conn_lost(c, pq_err(c, err, sizeof err));
        return;
    }
    store__conn_notifies(c);
    if (c->state != SC_BUSY && c->state != SC_SETUP) {
        /* Idle: only an error or EOF can arrive (e.g. backend terminated). */
        if (PQstatus(c->pg) == CONNECTION_BAD) {
            conn_lost(c, pq_err(c, err, sizeof err));
            return;
        }
        PGresult *r;
        while (!PQisBusy(c->pg) && (r = PQgetResult(c->pg)) != NULL)
            PQclear(r);
        if (PQstatus(c->pg) == CONNECTION_BAD)
            conn_lost(c, pq_err(c, err, sizeof err));
        return;
    }
    while (!PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        if (!r) {
            bool bad = PQstatus(c->pg) == CONNECTION_BAD;
            if (bad && (!c->result || PQresultStatus(c->result) == PGRES_FATAL_ERROR)) {
                /* e.g. backend terminated mid-query: outcome unknown */
                conn_lost(c, pq_err(c, err, sizeof err));
                return;
            }
            /* A complete success stays a success even if the link died after. */
            store__conn_notifies(c); /* ones that came with the result */
            query_complete(c);
            if (bad && c->pg && (c->state == SC_READY || c->state == SC_BUSY))
                conn_lost(c, pq_err(c, err, sizeof err));
            return;
        }
        /* Keep the first error, else the last result. */
        if (c->result && PQresultStatus(c->result) == PGRES_FATAL_ERROR) {
            PQclear(r);
        } else {
            PQclear(c->result);
            c->result = r;
        }
    }
    if (PQstatus(c->pg) == CONNECTION_BAD)
        conn_lost(c, pq_err(c, err, sizeof err));
}

static void conn_poll_cb(uv_poll_t *h, int status, int events)
{
    store__conn *c = h->data;
    char err[256];
    if (!c || h != c->poll || c->state == SC_CLOSED)
        return; /* a stale handle being closed */
    if (c->state == SC_CONNECTING) {
        connect_step(c); /* also reports socket errors */
        return;
    }
    if (status < 0) {
        /* EPOLLERR (libuv reports UV_EBADF), e.g. the backend reset the
         * socket: let libpq read what is left for a precise error (and a
         * result that may have completed), then drop the connection: libuv
         * has stopped this watcher. */
        if (c->state == SC_BUSY || c->state == SC_SETUP || c->state == SC_READY)
            conn_read(c);
        if (c->state == SC_BUSY || c->state == SC_SETUP || c->state == SC_READY) {
            snprintf(err, sizeof err, "socket error (%s)", uv_strerror(status));
            conn_lost(c, err);
        }
        return;
    }
    if (events & UV_WRITABLE) {
        int f = PQflush(c->pg);
        if (f < 0) {
            conn_lost(c, pq_err(c, err, sizeof err));
            return;
        }
        if (f == 0)
            poll_want(c, UV_READABLE);
    }
    if (events & UV_READABLE) {
        conn_read(c);
        /* libpq: after consuming input, flush again if output is pending. */
        if (c->pg && (c->state == SC_BUSY || c->state == SC_SETUP) && c->poll &&
            (c->poll_events & UV_WRITABLE)) {
            int f = PQflush(c->pg);
            if (f < 0)
                conn_lost(c, pq_err(c, err, sizeof err));
            else if (f == 0)
                poll_want(c, UV_READABLE);
        }
    }
}

static void conn_timer_cb(uv_timer_t *t)
{
    store__conn *c = t->data;
    switch (c->state) {
    case SC_BACKOFF:
        store__conn_start(c);
        break;
    case SC_CONNECTING: {
        /* Several hosts: the next attempt starts after the one that hung (store_hosts.c). */
        char why[160];
        unsigned i = c->pg ? store__hosts_index(c->s->conninfo, c->pg) : UINT_MAX;
        if (i != UINT_MAX) {
            snprintf(why, sizeof why, "connect timeout on %s:%s, next attempt starts after it",
                     PQhost(c->pg), PQport(c->pg));
            c->first_host = i + 1; /* rotated modulo the number of hosts */
        } else {
            snprintf(why, sizeof why, "connect timeout");
        }
        connect_failed(c, why);
        break;
    }
    case SC_SETUP:
    case SC_BUSY:
        log_warn("db_query_timeout", NULL, NULL, "conn=%s query=%s timeout_ms=%u", c->name, c->what,
                 c->s->cfg.query_timeout_ms);
        conn_lost(c, "query timeout");
        break;
    default:
        break;
    }
}
