/*
 * cmsd.c - the CMS server: configuration, workers (one libuv loop per
 * thread, sharing the listeners with SO_REUSEPORT), start-up and shutdown.
 * Reload, drain, systemd notify and the metrics listener: cmsd_ops.c.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <uv.h>

#include "cmsd_int.h"
#include "cms_err.h"
#include "cms_metrics.h"
#include "events.h"
#include "fw_rollout.h"
#include "log.h"
#include "metrics.h"
#include "ops.h"
#include "proxy.h"

#ifdef CMSD_FAULT_INJECTION
/*
 * The sanitizer build only (make asan): CMSD_FAIL_AT=STEP makes that start-up
 * step fail as if memory ran out, so that a test can show that every step
 * frees what the steps before it made (tests/blackbox/test_startup_failures.py).
 * STEP is the step's name (every worker) or "name:N" (worker N): est_limit,
 * workers, main_loop, worker_thread, store, fw_worker.
 */
static bool fail_at(const char *step, unsigned n)
{
    const char *want = getenv("CMSD_FAIL_AT");
    char one[64];
    snprintf(one, sizeof(one), "%s:%u", step, n);
    if (!want || (strcmp(want, step) != 0 && strcmp(want, one) != 0))
        return false;
    log_warn("fault_injected", NULL, NULL, "CMSD_FAIL_AT=%s", want);
    return true;
}
#else
static inline bool fail_at(const char *step, unsigned n)
{
    (void)step, (void)n;
    return false;
}
#endif

static void usage(FILE *out)
{
    fprintf(out,
            "usage: cmsd --config FILE\n"
            "       cmsd --check-config FILE\n"
            "       cmsd --config-keys\n"
            "       cmsd --help | --version\n\n"
            "The CMS server: accepts HL7 v2 (IHE PCD-01) over MLLP over mutual TLS from\n"
            "certificate-authenticated patient monitors and stores the vitals in PostgreSQL,\n"
            "acknowledging each message only after it is committed.\n\n"
            "  -c, --config FILE        run with this configuration (see README: every key)\n"
            "      --check-config FILE  validate the configuration and exit\n"
            "      --config-keys        print every configuration key: type, default,\n"
            "                           accepted values, meaning\n"
            "  -h, --help               this text\n"
            "  -V, --version            print the version\n");
}

/* ---- worker -------------------------------------------------------------- */

static void worker_set_status(worker *w, enum worker_status st)
{
    atomic_store(&w->status, (int)st);
    uv_async_send(w->notify_main);
}

static void on_closed_part(void *ctx)
{
    worker *w = ctx;
    if (--w->pending_closes == 0)
        uv_close((uv_handle_t *)&w->stop_async, NULL);
}

static void close_if_open(uv_handle_t *h, bool inited)
{
    if (inited && !uv_is_closing(h))
        uv_close(h, NULL);
}

static void on_net_closed(void *ctx)
{
    worker *w = ctx;
    w->closing_net = NULL;
    on_closed_part(w);
}

static void on_store_closed(void *ctx)
{
    worker *w = ctx;
    w->closing_store = NULL;
    on_closed_part(w);
}

/*
 * Closes the worker's listeners, connections and store, then its loop ends.
 * now: the bound of a drain passed (or a second signal): sockets close without
 * flushing or lingering, and the store abandons what is in flight (nothing of it
 * was acknowledged). Called again while closing, with now, it hurries that close.
 */
static void worker_shutdown(worker *w, bool now)
{
    if (w->shut) {
        if (now && w->closing_net)
            net_server_close_now(w->closing_net, NULL, NULL);
        if (now && w->closing_store)
            store_close_within(w->closing_store, 0, NULL, NULL);
        return;
    }
    w->shut = true;
    close_if_open((uv_handle_t *)&w->ready_timer, true);
    close_if_open((uv_handle_t *)&w->tick_timer, w->tick_on);
    close_if_open((uv_handle_t *)&w->drain_async, true);
    close_if_open((uv_handle_t *)&w->audit_async, true);
    ops_worker_listening(w->id, false);
    events_relay_stop(&w->loop);        /* worker 0's */
    events_worker_close(w->svc.events); /* its streams end, their connections close */
    w->svc.events = NULL;
    if (w->anchor_on) {
        uv_close((uv_handle_t *)&w->anchor_timer, NULL);
        w->anchor_on = false;
    }
    w->pending_closes = 1;
    if (w->net) {
        w->pending_closes++;
        w->closing_net = w->net;
        w->net = NULL;
        w->svc.server = NULL; /* late notifications find no connections */
        if (now)
            net_server_close_now(w->closing_net, on_net_closed, w);
        else
            net_server_close(w->closing_net, on_net_closed, w);
    }
    if (w->store) {
        w->pending_closes++;
        w->closing_store = w->store;
        w->store = NULL;
        store_close_within(w->closing_store, now ? 0 : w->cfg->db_query_timeout_ms,
                           on_store_closed, w);
    }
    on_closed_part(w);
}

static void on_stop(uv_async_t *a)
{
    worker *w = a->data;
    if (!uv_is_closing((uv_handle_t *)&w->stop_async))
        worker_shutdown(w, w->draining); /* while draining: its bound passed */
}

static void on_drain(uv_async_t *a)
{
    worker *w = a->data;
    if (w->draining || uv_is_closing((uv_handle_t *)&w->stop_async))
        return;
    w->draining = true;
    if (!w->net) { /* not listening yet (waiting for the database): nothing to drain */
        worker_shutdown(w, false);
        return;
    }
    cmsd__worker_drain(w);
}

static void on_audit(uv_async_t *a)
{
    cmsd__audit_flush(a->data);
}

void cmsd__worker_drained(worker *w)
{
    if (!uv_is_closing((uv_handle_t *)&w->stop_async))
        worker_shutdown(w, false);
}

/* Every second: the watchdog's heartbeat, readiness and the worker's gauges;
 * worker 0 asks the schema now and then (at once, then every 30 s; every 5 s
 * while migrations are missing) and evaluates staged rollouts every
 * CMSD_ROLLOUT_TICK_S seconds. */
static void on_tick(uv_timer_t *t)
{
    worker *w = t->data;
    atomic_store(&w->heartbeat_ms, uv_hrtime() / 1000000u);
    bool up = w->store && store_ready(w->store);
    ops_worker_db(w->id, up);
    metrics_gauge_set(CM_DB_UP, 0, up ? 1 : 0);
    metrics_gauge_set(CM_INGEST_QUEUED, 0, w->store ? (double)store_backlog(w->store) : 0);
    if (w->id == 0 && w->net && w->store && up && w->ticks++ % (ops_schema_ok() ? 30 : 5) == 0)
        ops_schema_check(w->store);
    /* Staged rollouts are evaluated on reports; the tick catches what those missed (sql/016). */
    if (w->id == 0 && w->net && w->store && up && ops_schema_ok() &&
        ++w->rollout_ticks % CMSD_ROLLOUT_TICK_S == 0)
        fw_rollout_tick(w->store);
}

static int worker_listen(worker *w)
{
    char err[512];
    const cms_config *cfg = w->cfg;
    net_limits lim = {
        .max_connections = cfg->max_connections,
        .handshake_timeout_ms = cfg->handshake_timeout_ms,
        .idle_timeout_ms = cfg->idle_timeout_ms,
        .write_timeout_ms = cfg->write_timeout_ms,
        .max_output_bytes = cfg->max_output_bytes,
        .preauth_buffer_bytes = cfg->preauth_buffer_bytes,
    };
    w->net = net_server_new(&w->loop, &lim);
    if (!w->net) {
        log_error("startup_failed", NULL, NULL, "worker %u: connections: out of memory", w->id);
        return CMS_ENOMEM;
    }
    if (strcmp(cfg->proxy_protocol, "v2") == 0 &&
        net_server_set_proxy(w->net, cfg->proxy_allow) != CMS_OK)
        return CMS_EINVAL; /* validated with the config: not reached */
    ingest_config ic = {
        .max_frame_bytes = cfg->max_frame_bytes,
        .max_pending_per_conn = cfg->max_pending_per_conn,
        .max_queued_msgs = cfg->max_queued_msgs,
        .hl7_app = cfg->hl7_app,
        .hl7_facility = cfg->hl7_facility,
        .waveform_max_samples = cfg->waveform_max_samples,
    };
    ingest_ctx_init(&w->ingest, w->store, w->net, &ic, w->id);
    if (net_listen(w->net, cfg->mllp_listen, w->mllp_tls, &ingest_mllp_proto, &w->ingest, err,
                   sizeof(err)) != CMS_OK) {
        log_error("listen_failed", NULL, NULL, "%s", err);
        return CMS_EINVAL;
    }
    /* Revocation closes MLLP sessions too, with or without HTTPS. */
    w->svc = (svc_state){.cfg = cfg,
                         .store = w->store,
                         .server = w->net,
                         .worker_id = w->id,
                         .est_limit = w->est_limit};
    if (svc_est_init(&w->svc, err, sizeof(err)) != CMS_OK) {
        log_error("startup_failed", NULL, NULL, "%s", err);
        return CMS_EINVAL;
    }
    if (svc_revocation_init(&w->svc) != CMS_OK)
        return CMS_EINVAL;
    if (!w->https_tls)
        return CMS_OK;
    w->svc.fw =
        fail_at("fw_worker", w->id) ? NULL : fw_worker_new(w->fw_keys, cfg, &w->loop, w->id);
    if (!w->svc.fw) {
        log_error("startup_failed", NULL, NULL, "worker %u: firmware: out of memory", w->id);
        return CMS_ENOMEM;
    }
    https_config hc = {
        .max_header_bytes = cfg->http_max_header_bytes,
        .max_body_bytes = cfg->http_max_body_bytes,
        .request_timeout_ms = cfg->http_request_timeout_ms,
        .max_output_bytes = cfg->max_output_bytes,
        .max_upload_bytes = cfg->fw_max_image_bytes,
    };
    w->svc.console = w->console;
    w->svc.events = events_worker_new(&w->loop, w->id); /* NULL: GET /api/v1/events is 503 */
    if (w->svc.events && w->id == 0 && events_relay_start(&w->loop, w->store) != CMS_OK)
        log_warn("sse_relay_off", NULL, NULL,
                 "live events are not relayed between instances (LISTEN failed)");
    https_ctx_init(&w->https, w->store, w->net, &hc, svc_routes, &w->svc);
    if (net_listen(w->net, cfg->https_listen, w->https_tls, &https_proto, &w->https, err,
                   sizeof(err)) != CMS_OK) {
        log_error("listen_failed", NULL, NULL, "%s", err);
        return CMS_EINVAL;
    }
    return CMS_OK;
}

static void on_anchor_tick(uv_timer_t *t)
{
    worker *w = t->data;
    svc_audit_anchor(&w->svc);
}

/* Waits for the database before listening: a monitor must never get a
 * session that cannot store anything. Gives up after db_connect_timeout_s. */
static void on_ready_check(uv_timer_t *t)
{
    worker *w = t->data;
    if (store_ready(w->store)) {
        uv_timer_stop(t);
        if (worker_listen(w) != CMS_OK) {
            worker_set_status(w, W_FAILED);
            worker_shutdown(w, false);
            return;
        }
        ops_worker_listening(w->id, true);
        ops_worker_db(w->id, true); /* store_ready said so; the tick follows it from here */
        metrics_gauge_set(CM_DB_UP, 0, 1); /* and cmsd_db_up with it, not a tick later */
        if (w->id == 0)
            ops_schema_check(w->store); /* ready as soon as it answers, not a tick later */
        worker_set_status(w, W_RUNNING);
        /* One worker logs the audit chain's head: soon after the start, then
         * every audit_anchor_interval_s while it moves. */
        if (w->id == 0 && w->cfg->audit_anchor_interval_s &&
            uv_timer_init(&w->loop, &w->anchor_timer) == 0) {
            w->anchor_on = true;
            w->anchor_timer.data = w;
            uint64_t every = (uint64_t)w->cfg->audit_anchor_interval_s * 1000;
            uv_timer_start(&w->anchor_timer, on_anchor_tick, every < 5000 ? every : 5000, every);
        }
        return;
    }
    if (uv_now(&w->loop) - w->started_at >= (uint64_t)w->cfg->db_connect_timeout_s * 1000) {
        uv_timer_stop(t);
        log_error("db_unreachable", NULL, NULL,
                  "database not reachable within db_connect_timeout_s=%u: giving up",
                  w->cfg->db_connect_timeout_s);
        worker_set_status(w, W_FAILED);
        worker_shutdown(w, false);
    }
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    const cms_config *cfg = w->cfg;
    store_config sc;
    store_config_defaults(&sc);
    sc.conninfo = cfg->db_conninfo;
    sc.timezone = cfg->db_timezone;
    sc.batch_max_msgs = cfg->batch_max_msgs;
    sc.batch_max_delay_ms = cfg->batch_max_delay_ms;
    sc.alarm_lane = strcmp(cfg->alarm_lane, "on") == 0;
    sc.max_queued_msgs = cfg->max_queued_msgs;
    sc.query_timeout_ms = cfg->db_query_timeout_ms;
    sc.ingest_timeout_ms = cfg->ingest_timeout_ms;
    sc.reconnect_min_ms = cfg->db_reconnect_min_ms;
    sc.reconnect_max_ms = cfg->db_reconnect_max_ms;
    sc.retention_days = w->id == 0 ? cfg->retention_days : 0; /* one worker maintains */
    sc.waveform_retention_hours = w->id == 0 ? cfg->waveform_retention_hours : 0;
    sc.partitions_ahead_days = cfg->partitions_ahead_days;
    sc.device_cache_ttl_s = cfg->device_cache_ttl_s;

    metrics_bind_thread((int)w->id); /* this thread writes its own shard */
    atomic_store(&w->heartbeat_ms, uv_hrtime() / 1000000u);
    w->started_at = uv_now(&w->loop);
    w->store = fail_at("store", w->id) ? NULL : store_new(&w->loop, &sc);
    if (!w->store) {
        log_error("startup_failed", NULL, NULL, "store: out of memory");
        worker_set_status(w, W_FAILED);
        uv_close((uv_handle_t *)&w->ready_timer, NULL);
        uv_close((uv_handle_t *)&w->tick_timer, NULL);
        uv_close((uv_handle_t *)&w->drain_async, NULL);
        uv_close((uv_handle_t *)&w->audit_async, NULL);
        uv_close((uv_handle_t *)&w->stop_async, NULL);
    } else {
        uv_timer_start(&w->ready_timer, on_ready_check, 50, 100);
        w->tick_on = true;
        uv_timer_start(&w->tick_timer, on_tick, 0, 1000);
    }
    uv_run(&w->loop, UV_RUN_DEFAULT);
    metrics_bind_thread(-1);
    if (atomic_load(&w->status) != W_FAILED)
        worker_set_status(w, W_STOPPED);
    return NULL;
}

/* ---- main ---------------------------------------------------------------- */

void cmsd__stop_workers(cmsd *d)
{
    if (d->stopping)
        return;
    d->stopping = true;
    for (unsigned i = 0; i < d->nworkers; i++)
        if (atomic_load(&d->workers[i].status) < W_FAILED) /* its loop still turns */
            uv_async_send(&d->workers[i].stop_async);
}

static void stop_workers(cmsd *d)
{
    cmsd__stop_workers(d);
}

static void on_signal(uv_signal_t *s, int signum)
{
    cmsd__on_stop_signal(s->data, signum);
}

static void close_main_handles(cmsd *d)
{
    close_if_open((uv_handle_t *)&d->sigint, d->sigint_ok);
    close_if_open((uv_handle_t *)&d->sigterm, d->sigterm_ok);
    close_if_open((uv_handle_t *)&d->notify, d->notify_ok);
    cmsd__ops_close(d);
}

static void on_worker_notify(uv_async_t *a)
{
    cmsd *d = a->data;
    unsigned running = 0, done = 0;
    for (unsigned i = 0; i < d->nworkers; i++) {
        int st = atomic_load(&d->workers[i].status);
        if (st == W_RUNNING)
            running++;
        if (st == W_FAILED) {
            d->exit_code = 1;
            stop_workers(d);
        }
        if (st == W_FAILED || st == W_STOPPED)
            done++;
    }
    if (running == d->nworkers && !d->announced) {
        d->announced = true;
        log_info("ready", NULL, NULL, "cmsd %s serving with %u worker(s)", CMSD_VERSION,
                 d->nworkers);
        cmsd__announce_ready(d);
    }
    if (done == d->nworkers)
        close_main_handles(d);
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            log_warn("rlimit", NULL, NULL, "cannot raise RLIMIT_NOFILE: %s", strerror(errno));
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        log_info("rlimit", NULL, NULL, "open files limit %llu", (unsigned long long)rl.rlim_cur);
}

/*
 * Loads, in start-up order, what the workers share. --check-config stops
 * after the firmware keys. On failure prints the reason on stderr and
 * returns CMS_EINVAL or CMS_ENOMEM; what was loaded stays in s either way
 * (shared_free).
 */
void cmsd__tls_configs(const cms_config *cfg, tls_server_config *mc, tls_server_config *hc)
{
    *mc = (tls_server_config){
        .cert_file = cfg->tls_cert,
        .key_file = cfg->tls_key,
        .device_ca_file = cfg->tls_device_ca, /* its first certificate issues devices' */
        .crl_file = cfg->tls_crl,
        .client_auth = TLS_CLIENT_CERT_REQUIRE,
        .session_timeout_s = cfg->tls_session_timeout_s,
        .session_cache_size = cfg->tls_session_cache_size,
        .session_id_context = "cms-mllp",
    };
    *hc = *mc;
    hc->operator_ca_file = cfg->tls_operator_ca;
    hc->client_auth = TLS_CLIENT_CERT_OPTIONAL;
    hc->session_id_context = "cms-https";
}

void cmsd__resolve_workers(cms_config *cfg)
{
    if (cfg->workers == 0) { /* one loop per core: ingest runs one batch per worker at a time */
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->workers = n < 1 ? 1 : n > 64 ? 64 : (unsigned)n;
    }
}

static int shared_load(shared *s, const cms_config *cfg, bool check_only)
{
    char err[1024];
    tls_server_config tc, hc;
    cmsd__tls_configs(cfg, &tc, &hc);
    s->mllp_tls = tls_ctx_new_server(&tc, err, sizeof(err));
    if (!s->mllp_tls) {
        fprintf(stderr, "cmsd: TLS configuration: %s\n", err);
        return CMS_EINVAL;
    }
    if (cfg->https_listen[0]) {
        s->https_tls = tls_ctx_new_server(&hc, err, sizeof(err));
        if (!s->https_tls) {
            fprintf(stderr, "cmsd: TLS configuration (https): %s\n", err);
            return CMS_EINVAL;
        }
    }
    /* Firmware keys: loaded once, shared read-only by the workers. */
    int rc = fw_keys_load(cfg, &s->fw_keys, err, sizeof(err));
    if (rc != CMS_OK) {
        fprintf(stderr, "cmsd: firmware configuration: %s\n", err);
        return rc;
    }
    if (check_only)
        return CMS_OK;
    /* One table for all workers: a peer's connections land on any of them. A
     * bucket holds a minute's worth, so a ward enrolling its monitors at once
     * is not refused; refusals are logged at most once a minute per address.
     * 1 024 addresses (96 KiB): beyond, the least recently seen are forgotten,
     * and the registry-queue limit (est/est.c) still holds a flood from many. */
    if (cfg->est_anon_per_min &&
        (fail_at("est_limit", 0) ||
         !(s->est_limit = rl_new(1024, cfg->est_anon_per_min, cfg->est_anon_per_min, 60000)))) {
        fprintf(stderr, "cmsd: out of memory\n");
        return CMS_ENOMEM;
    }
    if (cfg->https_listen[0]) {
        /* The web console: its files (read once, here) and its CSRF secret. */
        if (!(s->console = console_new(cfg->console_dir, cfg->tls_key, err, sizeof(err)))) {
            fprintf(stderr, "cmsd: %s\n", err);
            return CMS_EINVAL;
        }
        s->events_on = events_hub_init(cfg->events_batch_ms) == CMS_OK;
    }
    return CMS_OK;
}

static void shared_free(shared *s)
{
    if (s->events_on)
        events_hub_free();
    console_free(s->console);
    rl_free(s->est_limit);
    fw_keys_free(s->fw_keys);
    tls_ctx_free(s->https_tls);
    tls_ctx_free(s->mllp_tls);
    *s = (shared){0};
}

/*
 * Sets up worker i's loop and the handles other threads touch, then starts
 * its thread. Returns 0 or a libuv/errno code (negative); what was set up is
 * recorded in w for worker_free.
 */
static int worker_start(cmsd *d, unsigned i, const cms_config *cfg, const shared *sh)
{
    worker *w = &d->workers[i];
    w->id = i;
    w->cfg = cfg;
    w->mllp_tls = sh->mllp_tls;
    w->https_tls = sh->https_tls;
    w->fw_keys = sh->fw_keys;
    w->est_limit = sh->est_limit;
    w->console = sh->console;
    w->notify_main = &d->notify;
    w->d = d;
    int rc = uv_loop_init(&w->loop);
    if (rc != 0)
        return rc;
    w->loop_ok = true;
    if ((rc = uv_async_init(&w->loop, &w->stop_async, on_stop)) != 0)
        return rc;
    w->stop_async_ok = true;
    w->stop_async.data = w;
    if ((rc = uv_async_init(&w->loop, &w->drain_async, on_drain)) != 0)
        return rc;
    w->drain_async_ok = true;
    w->drain_async.data = w;
    if ((rc = uv_async_init(&w->loop, &w->audit_async, on_audit)) != 0)
        return rc;
    w->audit_async_ok = true;
    w->audit_async.data = w;
    if ((rc = uv_timer_init(&w->loop, &w->ready_timer)) != 0)
        return rc;
    w->ready_timer_ok = true;
    w->ready_timer.data = w;
    if ((rc = uv_timer_init(&w->loop, &w->tick_timer)) != 0)
        return rc;
    w->tick_timer_ok = true;
    w->tick_timer.data = w;
    if (fail_at("worker_thread", i))
        return UV_EAGAIN;
    if ((rc = pthread_create(&w->thread, NULL, worker_main, w)) != 0)
        return -rc;
    w->thread_ok = true;
    return 0;
}

/*
 * Frees what worker_start and the worker's thread made, once its thread was
 * joined (or never ran). A thread that ran closed its handles; those of one
 * that never ran are closed here.
 */
static void worker_free(worker *w)
{
    if (w->loop_ok) {
        close_if_open((uv_handle_t *)&w->stop_async, w->stop_async_ok);
        close_if_open((uv_handle_t *)&w->drain_async, w->drain_async_ok);
        close_if_open((uv_handle_t *)&w->audit_async, w->audit_async_ok);
        close_if_open((uv_handle_t *)&w->ready_timer, w->ready_timer_ok);
        close_if_open((uv_handle_t *)&w->tick_timer, w->tick_timer_ok);
        uv_run(&w->loop, UV_RUN_DEFAULT);
        int rc = uv_loop_close(&w->loop);
        if (rc != 0)
            log_warn("shutdown", NULL, NULL, "worker %u: loop not closed: %s", w->id,
                     uv_strerror(rc));
        w->loop_ok = false;
    }
    ingest_ctx_free(&w->ingest);
    svc_est_free(&w->svc);
    fw_worker_free(w->svc.fw);
    w->svc.fw = NULL;
}

/* Sets up the main loop's handles; returns 0 or a libuv error code. */
static int main_loop_init(cmsd *d)
{
    int rc = uv_loop_init(&d->loop);
    if (rc != 0)
        return rc;
    d->loop_ok = true;
    if ((rc = uv_async_init(&d->loop, &d->notify, on_worker_notify)) != 0)
        return rc;
    d->notify_ok = true;
    d->notify.data = d;
    if ((rc = uv_signal_init(&d->loop, &d->sigint)) != 0)
        return rc;
    d->sigint_ok = true;
    d->sigint.data = d;
    if (fail_at("main_loop", 0))
        return UV_ENOMEM;
    if ((rc = uv_signal_init(&d->loop, &d->sigterm)) != 0)
        return rc;
    d->sigterm_ok = true;
    d->sigterm.data = d;
    if ((rc = uv_signal_start(&d->sigint, on_signal, SIGINT)) != 0 ||
        (rc = uv_signal_start(&d->sigterm, on_signal, SIGTERM)) != 0)
        return rc;
    return 0;
}

/*
 * Starts the workers and runs the main loop until they all stopped (a
 * signal, or a worker that failed). Returns the exit code. Everything made
 * here is in d, for cmsd_free.
 */
static int cmsd_run(cmsd *d, const cms_config *cfg, const shared *sh)
{
    int rc;
    if (fail_at("workers", 0) || !(d->workers = calloc(cfg->workers, sizeof(*d->workers)))) {
        fprintf(stderr, "cmsd: out of memory\n");
        return 1;
    }
    d->cap = cfg->workers;
    if ((rc = main_loop_init(d)) != 0) {
        log_error("startup_failed", NULL, NULL, "main loop: %s", uv_strerror(rc));
        return 1;
    }
    if (cmsd__ops_init(d) != 0) /* logged */
        return 1;
    log_info("starting", NULL, NULL, "cmsd %s, %u worker(s), mllp %s, https %s", CMSD_VERSION,
             cfg->workers, cfg->mllp_listen, cfg->https_listen[0] ? cfg->https_listen : "off");
    for (unsigned i = 0; i < cfg->workers; i++) {
        if ((rc = worker_start(d, i, cfg, sh)) != 0) {
            log_error("startup_failed", NULL, NULL, "cannot start worker %u: %s", i,
                      uv_strerror(rc));
            d->exit_code = 1;
            break;
        }
        d->nworkers++;
    }
    if (d->nworkers < cfg->workers)
        stop_workers(d);
    if (d->nworkers > 0)
        uv_run(&d->loop, UV_RUN_DEFAULT);
    for (unsigned i = 0; i < d->nworkers; i++) {
        pthread_join(d->workers[i].thread, NULL);
        d->workers[i].thread_ok = false;
    }
    return d->exit_code;
}

/* Undoes cmsd_run, whatever step it reached. */
static void cmsd_free(cmsd *d)
{
    for (unsigned i = 0; i < d->cap; i++)
        worker_free(&d->workers[i]);
    for (unsigned i = 0; i < d->naudit; i++)
        free(d->audit[i].detail); /* rows worker 0 did not take: logged when queued */
    if (d->audit_mu_ok)
        pthread_mutex_destroy(&d->audit_mu);
    free(d->live);
    if (d->loop_ok) {
        close_main_handles(d);
        uv_run(&d->loop, UV_RUN_DEFAULT);
        int rc = uv_loop_close(&d->loop);
        if (rc != 0)
            log_warn("shutdown", NULL, NULL, "main loop not closed: %s", uv_strerror(rc));
    }
    free(d->workers);
    *d = (cmsd){0};
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", required_argument, NULL, 'C'},
        {"config-keys", no_argument, NULL, 'K'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL;
    bool check_only = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:hV", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 'C':
            config_path = optarg;
            check_only = true;
            break;
        case 'K':
            config_keys_print(stdout);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("cmsd %s (%s, libuv %s)\n", CMSD_VERSION, OpenSSL_version(OPENSSL_VERSION),
                   uv_version_string());
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!config_path || optind != argc) {
        usage(stderr);
        return 2;
    }

    /* Nothing is owned above this line; below, every exit goes through cleanup. */
    static cms_config cfg;
    cmsd d = {0};
    shared sh = {0};
    metrics_registry *mreg = NULL;
    bool ran = false;
    int rc = 1;
    char err[1024];
    if (config_defaults(&cfg) != CMS_OK)
        goto cleanup;
    if (config_load(&cfg, config_path, err, sizeof(err)) != CMS_OK) {
        fprintf(stderr, "cmsd: bad configuration: %s\n", err);
        goto cleanup;
    }
    if (cfg.metrics_listen[0]) {
        int lo = net_plain_is_loopback(cfg.metrics_listen, err, sizeof(err));
        int o1 = lo == 1 ? net_listen_overlap(cfg.metrics_listen, cfg.mllp_listen, err,
                                              sizeof(err))
                         : 0;
        int o2 = lo == 1 && o1 == 0 && cfg.https_listen[0]
                     ? net_listen_overlap(cfg.metrics_listen, cfg.https_listen, err, sizeof(err))
                     : 0;
        if (lo != 1 || o1 != 0 || o2 != 0) {
            fprintf(stderr, "cmsd: bad configuration: %s: metrics_listen: %s\n", config_path,
                    lo == 0 ? "a plaintext listener binds only a loopback address (127.0.0.0/8, "
                              "[::1]); scrape /metrics on https_listen from elsewhere"
                    : lo < 0 || o1 < 0 || o2 < 0 ? err
                                                 : "must not share a port with mllp_listen or "
                                                   "https_listen");
            goto cleanup;
        }
    }
    if (cfg.https_listen[0]) {
        int o = net_listen_overlap(cfg.mllp_listen, cfg.https_listen, err, sizeof(err));
        if (o != 0) {
            fprintf(stderr, "cmsd: bad configuration: %s: %s\n", config_path,
                    o > 0 ? "mllp_listen and https_listen must not share a port (both would "
                            "accept there, and connections would go to either: monitors "
                            "to the operator API, operators to MLLP)"
                          : err);
            goto cleanup;
        }
    }
    const char *why = NULL;
    if (proxy_allowlist_check(cfg.proxy_allow, &why) != CMS_OK) {
        fprintf(stderr, "cmsd: bad configuration: %s: proxy_allow \"%s\": %s\n", config_path,
                cfg.proxy_allow, why);
        goto cleanup;
    }
    enum log_level lvl = LOG_INFO;
    log_level_parse(cfg.log_level, &lvl);
    log_set_level(lvl);
    enum log_format lf = LOG_FORMAT_TEXT;
    log_format_parse(cfg.log_format, &lf);
    log_set_format(lf);
    cmsd__resolve_workers(&cfg);
    if (shared_load(&sh, &cfg, check_only) != CMS_OK)
        goto cleanup;
    if (check_only) {
        printf("cmsd: configuration %s is valid\n", config_path);
        rc = 0;
        goto cleanup;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    if (strcmp(cfg.metrics, "on") == 0 &&
        !(mreg = cms_metrics_new(cfg.workers, CMSD_VERSION, err, sizeof(err)))) {
        fprintf(stderr, "cmsd: metrics: %s\n", err);
        goto cleanup;
    }
    ops_init(cfg.workers, mreg != NULL);
    metrics_gauge_set(CM_RELOAD_TIME, 0, (double)time(NULL));
    cmsd__tls_gauges(&sh);
    if (!(d.live = malloc(sizeof(*d.live))) || pthread_mutex_init(&d.audit_mu, NULL) != 0) {
        fprintf(stderr, "cmsd: out of memory\n");
        goto cleanup;
    }
    d.audit_mu_ok = true;
    *d.live = cfg;
    d.cfg = &cfg;
    d.sh = &sh;
    d.config_path = config_path;
    ran = true;
    rc = cmsd_run(&d, &cfg, &sh);

cleanup:
    cmsd_free(&d);
    shared_free(&sh);
    metrics_free(mreg); /* the workers are joined: nothing updates it any more */
    if (ran)
        log_info("stopped", NULL, NULL, "exit code %d", rc);
    return rc;
}
