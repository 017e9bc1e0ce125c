/*
 * cmsd_ops.c - what cmsd does for the people who run it: SIGHUP reload,
 * SIGTERM drain, the systemd notify protocol and watchdog, the loopback
 * metrics listener, the certificate expiry gauges. Start-up and the workers
 * are in cmsd.c.
 *
 * Reload (SIGHUP, also `systemctl reload`): RELOADING=1, then the
 * configuration file is read again and checked whole; a key that needs a
 * restart changed -> refused; the TLS contexts are built afresh from the
 * files (server certificate and key, CA bundles, CRL) -> refused if any
 * fails, and the console's CSRF key derived from tls_key; only then is
 * everything applied at once: the new contexts swapped in for new handshakes
 * (live sessions keep theirs), the CSRF key (a new server key: new tokens),
 * log level and format, the drain bound. Refused or applied, one log line,
 * one audit row (config_reload), cmsd_config_reloads_total, and READY=1
 * again: a refused reload leaves cmsd serving exactly as before. SIGHUPs
 * that arrive while one is pending, or within RELOAD_GAP_MS of the last, are
 * folded into the next.
 *
 * Drain (the first SIGTERM or SIGINT): STOPPING=1, /readyz says not ready,
 * every worker stops accepting, closes its HTTPS connections, stops reading
 * from monitors, commits and acknowledges what it already took, closes each
 * monitor's connection once it is owed no ACK, then stops; after
 * shutdown_timeout_s whatever is left is closed (unacknowledged: the monitors
 * resend it). Exit code 0 either way. A second signal stops at once.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "cmsd_int.h"
#include "console.h"
#include "log.h"
#include "metrics.h"
#include "ops.h"
#include "sdnotify.h"

#define RELOAD_GAP_MS 200

/* ---- audit rows from the main thread (worker 0 appends them) -------------- */

static void audit_push(cmsd *d, const char *event, json_t *detail /* stolen */)
{
    char *text = detail ? json_dumps(detail, JSON_COMPACT) : NULL;
    json_decref(detail);
    bool queued = false;
    pthread_mutex_lock(&d->audit_mu);
    if (text && d->naudit < CMSD_AUDIT_QUEUE) {
        cmsd_audit_row *row = &d->audit[d->naudit++];
        snprintf(row->event, sizeof(row->event), "%s", event);
        row->detail = text;
        queued = true;
    }
    pthread_mutex_unlock(&d->audit_mu);
    if (!queued) {
        log_error("audit_dropped", NULL, NULL, "event=%s actor=cmsd reason=%s detail=%s", event,
                  text ? "queue full" : "out of memory", text ? text : "");
        metrics_add(CM_AUDIT_ROWS, CM_AUDIT_DROPPED, 1);
        free(text);
        return;
    }
    if (d->nworkers > 0 && atomic_load(&d->workers[0].status) < W_FAILED)
        uv_async_send(&d->workers[0].audit_async);
}

void cmsd__audit_flush(worker *w)
{
    cmsd *d = w->d;
    cmsd_audit_row rows[CMSD_AUDIT_QUEUE];
    unsigned n;
    pthread_mutex_lock(&d->audit_mu);
    n = d->naudit;
    memcpy(rows, d->audit, n * sizeof(rows[0]));
    d->naudit = 0;
    pthread_mutex_unlock(&d->audit_mu);
    for (unsigned i = 0; i < n; i++) {
        if (w->store)
            store_audit(w->store, rows[i].event, "cmsd", NULL, NULL, rows[i].detail);
        else
            log_error("audit_dropped", NULL, NULL, "event=%s actor=cmsd reason=stopping detail=%s",
                      rows[i].event, rows[i].detail);
        free(rows[i].detail);
    }
}

/* ---- expiry gauges ------------------------------------------------------------ */

void cmsd__tls_gauges(const shared *sh)
{
    tls_ctx_info mi = {0}, hi = {0};
    if (sh->mllp_tls)
        tls_ctx_get_info(sh->mllp_tls, &mi);
    if (sh->https_tls)
        tls_ctx_get_info(sh->https_tls, &hi);
    metrics_gauge_set(CM_CERT_EXPIRY, CM_CERT_SERVER, (double)mi.cert_not_after);
    metrics_gauge_set(CM_CERT_EXPIRY, CM_CERT_DEVICE_CA, (double)mi.device_ca_not_after);
    metrics_gauge_set(CM_CERT_EXPIRY, CM_CERT_OPERATOR_CA, (double)hi.operator_ca_not_after);
    metrics_gauge_set(CM_CRL_NEXT_UPDATE, 0, (double)mi.crl_next_update);
}

/* ---- reload ----------------------------------------------------------------------- */

static void reload_refused(cmsd *d, const char *why)
{
    log_warn("reload_refused", NULL, NULL,
             "%s: nothing applied, the running configuration and certificates stay in force", why);
    metrics_add(CM_RELOADS, CM_RELOAD_REFUSED, 1);
    metrics_gauge_set(CM_RELOAD_SUCCESS, 0, 0);
    audit_push(d, "config_reload", json_pack("{s:s, s:s}", "result", "refused", "reason", why));
}

static void reload(cmsd *d)
{
    char err[1024], why[1200], changed[512];
    tls_ctx *mllp = NULL, *https = NULL;
    console_csrf_key csrf = {{0}};
    bool csrf_rotated = false;
    cms_config *nc = malloc(sizeof(*nc));
    d->last_reload_ms = uv_now(&d->loop);
    sdnotify_reloading();
    log_info("reload", NULL, NULL, "SIGHUP: reading %s%s", d->config_path,
             d->folded ? " (several signals, one reload)" : "");
    d->folded = 0;
    if (!nc) {
        reload_refused(d, "out of memory");
        goto out;
    }
    config_defaults(nc);
    if (config_load(nc, d->config_path, err, sizeof(err)) != CMS_OK) {
        snprintf(why, sizeof(why), "configuration: %s", err);
        reload_refused(d, why);
        goto out;
    }
    cmsd__resolve_workers(nc);
    if (config_diff(d->live, nc, false, changed, sizeof(changed)) > 0) {
        snprintf(why, sizeof(why), "these keys need a restart: %s", changed);
        reload_refused(d, why);
        goto out;
    }
    tls_server_config mc, hc;
    cmsd__tls_configs(nc, &mc, &hc);
    if (!(mllp = tls_ctx_new_server(&mc, err, sizeof(err)))) {
        snprintf(why, sizeof(why), "TLS: %s", err);
        reload_refused(d, why);
        goto out;
    }
    if (d->sh->https_tls && !(https = tls_ctx_new_server(&hc, err, sizeof(err)))) {
        snprintf(why, sizeof(why), "TLS (https): %s", err);
        reload_refused(d, why);
        goto out;
    }
    /* The console's CSRF key follows tls_key's content (console.h). */
    if (d->sh->console && console_csrf_key_load(nc->tls_key, &csrf, err, sizeof(err)) != CMS_OK) {
        snprintf(why, sizeof(why), "%s", err);
        reload_refused(d, why);
        goto out;
    }
    /* Everything is ready: apply it all, nothing can fail from here. */
    config_diff(d->live, nc, true, changed, sizeof(changed));
    tls_ctx_replace(d->sh->mllp_tls, mllp);
    mllp = NULL;
    if (https) {
        tls_ctx_replace(d->sh->https_tls, https);
        https = NULL;
    }
    if (d->sh->console)
        csrf_rotated = console_csrf_key_set(d->sh->console, &csrf);
    enum log_level lvl = LOG_INFO;
    enum log_format fmt = LOG_FORMAT_TEXT;
    log_level_parse(nc->log_level, &lvl);
    log_format_parse(nc->log_format, &fmt);
    log_set_level(lvl);
    log_set_format(fmt);
    *d->live = *nc;
    cmsd__tls_gauges(d->sh);
    metrics_add(CM_RELOADS, CM_RELOAD_APPLIED, 1);
    metrics_gauge_set(CM_RELOAD_SUCCESS, 0, 1);
    metrics_gauge_set(CM_RELOAD_TIME, 0, (double)time(NULL));
    log_info("reload_applied", NULL, NULL,
             "TLS contexts rebuilt from the files (new handshakes use them, live sessions keep "
             "theirs); keys changed: %s",
             changed[0] ? changed : "none");
    if (csrf_rotated)
        log_info("console_csrf_rotated", NULL, NULL,
                 "tls_key's content changed: the console's CSRF tokens changed with it (a "
                 "console page open before needs a reload)");
    audit_push(d, "config_reload",
               json_pack("{s:s, s:s}", "result", "applied", "changed", changed));
out:
    OPENSSL_cleanse(&csrf, sizeof(csrf));
    tls_ctx_free(mllp);
    tls_ctx_free(https);
    free(nc);
    sdnotify_ready(d->draining ? NULL : "serving");
}

static void on_reload_timer(uv_timer_t *t)
{
    cmsd *d = t->data;
    if (!d->draining && !d->stopping)
        reload(d);
}

static void on_sighup(uv_signal_t *s, int signum)
{
    (void)signum;
    cmsd *d = s->data;
    if (d->draining || d->stopping) {
        log_info("reload_ignored", NULL, NULL, "SIGHUP while stopping: no reload");
        return;
    }
    if (uv_is_active((uv_handle_t *)&d->reload_timer)) {
        d->folded++;
        return;
    }
    uv_update_time(&d->loop);
    uint64_t now = uv_now(&d->loop), wait = 0;
    if (d->last_reload_ms && now - d->last_reload_ms < RELOAD_GAP_MS)
        wait = d->last_reload_ms + RELOAD_GAP_MS - now;
    uv_timer_start(&d->reload_timer, on_reload_timer, wait, 0);
}

/* ---- drain ---------------------------------------------------------------------- */

static void on_drain_timeout(uv_timer_t *t)
{
    cmsd *d = t->data;
    log_warn("drain_timeout", NULL, NULL,
             "shutdown_timeout_s=%u passed: closing what is left (messages not yet "
             "acknowledged are resent by the monitors)",
             d->live ? d->live->shutdown_timeout_s : 0);
    cmsd__stop_workers(d);
}

void cmsd__on_stop_signal(cmsd *d, int signum)
{
    if (d->draining || d->stopping || !d->announced) {
        log_info("shutdown", NULL, NULL, "signal %d: stopping now", signum);
        sdnotify_stopping();
        ops_set_draining();
        cmsd__stop_workers(d);
        return;
    }
    d->draining = true;
    unsigned timeout = d->live ? d->live->shutdown_timeout_s : 30;
    log_info("drain", NULL, NULL,
             "signal %d: draining (no new connections; messages received are committed and "
             "acknowledged, then each monitor's connection closes), at most %u s",
             signum, timeout);
    sdnotify_stopping();
    ops_set_draining();
    metrics_gauge_set(CM_DRAINING, 0, 1);
    for (unsigned i = 0; i < d->nworkers; i++)
        if (atomic_load(&d->workers[i].status) < W_FAILED)
            uv_async_send(&d->workers[i].drain_async);
    uv_timer_start(&d->drain_timer, on_drain_timeout, (uint64_t)timeout * 1000, 0);
}

static void close_https(net_conn *c, void *arg)
{
    if (net_conn_proto_ctx(c) == arg)
        net_conn_close(c, NULL);
}

static void on_ingest_drained(void *arg)
{
    worker *w = arg;
    log_info("drained", NULL, NULL, "worker %u: every monitor connection closed, nothing in flight",
             w->id);
    cmsd__worker_drained(w);
}

void cmsd__worker_drain(worker *w)
{
    net_server_stop_accepting(w->net);
    if (w->https_tls)
        net_server_foreach(w->net, close_https, &w->https);
    ingest_drain(&w->ingest, on_ingest_drained, w);
}

/* ---- systemd -------------------------------------------------------------------- */

void cmsd__announce_ready(cmsd *d)
{
    char status[96];
    snprintf(status, sizeof(status), "serving with %u worker(s)", d->nworkers);
    sdnotify_ready(status);
}

/* WATCHDOG=1 while every running worker's loop turned within the interval. */
static void on_watchdog(uv_timer_t *t)
{
    cmsd *d = t->data;
    uint64_t now = uv_hrtime() / 1000000u, limit = d->watchdog_usec / 1000u;
    for (unsigned i = 0; i < d->nworkers; i++) {
        worker *w = &d->workers[i];
        int st = atomic_load(&w->status);
        if (st >= W_FAILED)
            continue;
        uint64_t beat = atomic_load(&w->heartbeat_ms);
        if (now > beat && now - beat > limit) {
            log_error("watchdog", NULL, NULL,
                      "worker %u has not turned its loop for %llu ms: no WATCHDOG=1", w->id,
                      (unsigned long long)(now - beat));
            return;
        }
    }
    sdnotify_watchdog();
}

/* ---- set-up -------------------------------------------------------------------- */

int cmsd__ops_init(cmsd *d)
{
    int rc;
    if ((rc = uv_signal_init(&d->loop, &d->sighup)) != 0)
        goto fail;
    d->sighup_ok = true;
    d->sighup.data = d;
    if ((rc = uv_signal_start(&d->sighup, on_sighup, SIGHUP)) != 0)
        goto fail;
    if ((rc = uv_timer_init(&d->loop, &d->reload_timer)) != 0)
        goto fail;
    d->reload_timer_ok = true;
    d->reload_timer.data = d;
    if ((rc = uv_timer_init(&d->loop, &d->drain_timer)) != 0)
        goto fail;
    d->drain_timer_ok = true;
    d->drain_timer.data = d;
    d->watchdog_usec = sdnotify_watchdog_usec();
    if (d->watchdog_usec) {
        if ((rc = uv_timer_init(&d->loop, &d->watchdog_timer)) != 0)
            goto fail;
        d->watchdog_ok = true;
        d->watchdog_timer.data = d;
        uint64_t every = d->watchdog_usec / 2000u;
        uv_timer_start(&d->watchdog_timer, on_watchdog, every ? every : 1, every ? every : 1);
        log_info("watchdog", NULL, NULL, "WATCHDOG=1 every %llu ms",
                 (unsigned long long)(every ? every : 1));
    }
    if (d->cfg->metrics_listen[0]) {
        char err[512];
        d->plain = net_plain_listen(&d->loop, d->cfg->metrics_listen, ops_plain_handler, NULL, err,
                                    sizeof(err));
        if (!d->plain) {
            log_error("listen_failed", NULL, NULL, "metrics_listen: %s", err);
            return UV_EINVAL;
        }
    }
    return 0;
fail:
    log_error("startup_failed", NULL, NULL, "main loop: %s", uv_strerror(rc));
    return rc;
}

static void close_if(uv_handle_t *h, bool inited)
{
    if (inited && !uv_is_closing(h))
        uv_close(h, NULL);
}

void cmsd__ops_close(cmsd *d)
{
    close_if((uv_handle_t *)&d->sighup, d->sighup_ok);
    close_if((uv_handle_t *)&d->reload_timer, d->reload_timer_ok);
    close_if((uv_handle_t *)&d->drain_timer, d->drain_timer_ok);
    close_if((uv_handle_t *)&d->watchdog_timer, d->watchdog_ok);
    if (d->plain) {
        net_plain_close(d->plain, NULL, NULL);
        d->plain = NULL;
    }
}
