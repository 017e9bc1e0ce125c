/*
 * cmsd.c - the CMS server: configuration, workers (one libuv loop per
 * thread, sharing the listeners with SO_REUSEPORT), start-up and shutdown.
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
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <uv.h>

#include "cms_err.h"
#include "config.h"
#include "firmware.h"
#include "ingest.h"
#include "log.h"
#include "https.h"
#include "net.h"
#include "ratelimit.h"
#include "svc.h"
#include "store.h"
#include "tls.h"

#define CMSD_VERSION "0.1.0"

enum worker_status { W_STARTING = 0, W_RUNNING, W_FAILED, W_STOPPED };

typedef struct worker {
    unsigned id;
    pthread_t thread;
    const cms_config *cfg;
    tls_ctx *mllp_tls;
    X509 *device_issuer; /* borrowed: first certificate of tls_device_ca */
    tls_ctx *https_tls; /* NULL when https_listen is "" */
    https_ctx https;
    svc_state svc;
    const fw_keys *fw_keys; /* shared, read-only */
    rl_table *est_limit;    /* shared (locked inside), or NULL */
    uv_loop_t loop;
    uv_async_t stop_async;
    uv_timer_t ready_timer;
    uv_timer_t anchor_timer; /* worker 0, audit_anchor_interval_s > 0 */
    bool anchor_on;
    uint64_t started_at;
    store_t *store;
    net_server *net;
    ingest_ctx ingest;
    _Atomic int status;
    uv_async_t *notify_main; /* borrowed: wakes the main loop on status changes */
    unsigned pending_closes;
} worker;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: cmsd --config FILE\n"
            "       cmsd --check-config FILE\n"
            "       cmsd --help | --version\n\n"
            "The CMS server: accepts HL7 v2 (IHE PCD-01) over MLLP over mutual TLS from\n"
            "certificate-authenticated patient monitors and stores the vitals in PostgreSQL,\n"
            "acknowledging each message only after it is committed.\n\n"
            "  -c, --config FILE        run with this configuration (see README: every key)\n"
            "      --check-config FILE  validate the configuration and exit\n"
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

static void worker_shutdown(worker *w)
{
    if (uv_is_closing((uv_handle_t *)&w->ready_timer) == 0)
        uv_close((uv_handle_t *)&w->ready_timer, NULL);
    if (w->anchor_on) {
        uv_close((uv_handle_t *)&w->anchor_timer, NULL);
        w->anchor_on = false;
    }
    w->pending_closes = 1;
    if (w->net) {
        w->pending_closes++;
        net_server_close(w->net, on_closed_part, w);
        w->net = NULL;
        w->svc.server = NULL; /* late notifications find no connections */
    }
    if (w->store) {
        w->pending_closes++;
        store_close(w->store, on_closed_part, w);
        w->store = NULL;
    }
    on_closed_part(w);
}

static void on_stop(uv_async_t *a)
{
    worker *w = a->data;
    if (!uv_is_closing((uv_handle_t *)&w->stop_async))
        worker_shutdown(w);
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
    if (!w->net)
        return CMS_ENOMEM;
    ingest_config ic = {
        .max_frame_bytes = cfg->max_frame_bytes,
        .max_pending_per_conn = cfg->max_pending_per_conn,
        .max_queued_msgs = cfg->max_queued_msgs,
        .hl7_app = cfg->hl7_app,
        .hl7_facility = cfg->hl7_facility,
        .device_issuer = w->device_issuer,
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
    w->svc.fw = fw_worker_new(w->fw_keys, cfg, &w->loop, w->id);
    if (!w->svc.fw)
        return CMS_ENOMEM;
    https_config hc = {
        .max_header_bytes = cfg->http_max_header_bytes,
        .max_body_bytes = cfg->http_max_body_bytes,
        .request_timeout_ms = cfg->http_request_timeout_ms,
        .max_output_bytes = cfg->max_output_bytes,
        .max_upload_bytes = cfg->fw_max_image_bytes,
    };
    if (https_ctx_init(&w->https, w->store, w->net, &hc, cfg->tls_device_ca, cfg->tls_operator_ca,
                       svc_routes, &w->svc, err, sizeof(err)) != CMS_OK ||
        net_listen(w->net, cfg->https_listen, w->https_tls, &https_proto, &w->https, err,
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
            worker_shutdown(w);
            return;
        }
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
        worker_shutdown(w);
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
    sc.max_queued_msgs = cfg->max_queued_msgs;
    sc.query_timeout_ms = cfg->db_query_timeout_ms;
    sc.ingest_timeout_ms = cfg->ingest_timeout_ms;
    sc.reconnect_min_ms = cfg->db_reconnect_min_ms;
    sc.reconnect_max_ms = cfg->db_reconnect_max_ms;
    sc.retention_days = w->id == 0 ? cfg->retention_days : 0; /* one worker maintains */
    sc.partitions_ahead_days = cfg->partitions_ahead_days;
    sc.device_cache_ttl_s = cfg->device_cache_ttl_s;

    w->started_at = uv_now(&w->loop);
    w->store = store_new(&w->loop, &sc);
    if (!w->store) {
        log_error("startup_failed", NULL, NULL, "store: out of memory");
        worker_set_status(w, W_FAILED);
        uv_close((uv_handle_t *)&w->ready_timer, NULL);
        uv_close((uv_handle_t *)&w->stop_async, NULL);
    } else {
        uv_timer_start(&w->ready_timer, on_ready_check, 50, 100);
    }
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (atomic_load(&w->status) != W_FAILED)
        worker_set_status(w, W_STOPPED);
    return NULL;
}

/* ---- main ---------------------------------------------------------------- */

typedef struct cmsd {
    uv_loop_t *loop;
    uv_signal_t sigint, sigterm;
    uv_async_t notify;
    worker *workers;
    unsigned nworkers;
    bool stopping, announced;
    int exit_code;
} cmsd;

static void stop_workers(cmsd *d)
{
    if (d->stopping)
        return;
    d->stopping = true;
    for (unsigned i = 0; i < d->nworkers; i++)
        uv_async_send(&d->workers[i].stop_async);
}

static void on_signal(uv_signal_t *s, int signum)
{
    cmsd *d = s->data;
    log_info("shutdown", NULL, NULL, "signal %d: stopping (connections drained, batches committed)",
             signum);
    stop_workers(d);
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
    }
    if (done == d->nworkers) {
        uv_close((uv_handle_t *)&d->sigint, NULL);
        uv_close((uv_handle_t *)&d->sigterm, NULL);
        uv_close((uv_handle_t *)&d->notify, NULL);
    }
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

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", required_argument, NULL, 'C'},
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

    static cms_config cfg;
    char err[1024];
    config_defaults(&cfg);
    if (config_load(&cfg, config_path, err, sizeof(err)) != CMS_OK) {
        fprintf(stderr, "cmsd: bad configuration: %s\n", err);
        return 1;
    }
    if (cfg.https_listen[0]) {
        int o = net_listen_overlap(cfg.mllp_listen, cfg.https_listen, err, sizeof(err));
        if (o != 0) {
            fprintf(stderr, "cmsd: bad configuration: %s: %s\n", config_path,
                    o > 0 ? "mllp_listen and https_listen must not share a port (both would "
                            "accept there, and connections would go to either: monitors "
                            "to the operator API, operators to MLLP)"
                          : err);
            return 1;
        }
    }
    enum log_level lvl = LOG_INFO;
    log_level_parse(cfg.log_level, &lvl);
    log_set_level(lvl);
    if (cfg.workers == 0) { /* one loop per core: ingest runs one batch per worker at a time */
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        cfg.workers = n < 1 ? 1 : n > 64 ? 64 : (unsigned)n;
    }

    tls_server_config tc = {
        .cert_file = cfg.tls_cert,
        .key_file = cfg.tls_key,
        .client_ca_file = cfg.tls_device_ca,
        .crl_file = cfg.tls_crl,
        .client_auth = TLS_CLIENT_CERT_REQUIRE,
        .session_timeout_s = cfg.tls_session_timeout_s,
        .session_cache_size = cfg.tls_session_cache_size,
        .session_id_context = "cms-mllp",
    };
    tls_ctx *mllp_tls = tls_ctx_new_server(&tc, err, sizeof(err));
    if (!mllp_tls) {
        fprintf(stderr, "cmsd: TLS configuration: %s\n", err);
        return 1;
    }
    tls_ctx *https_tls = NULL;
    if (cfg.https_listen[0]) {
        tls_server_config hc = tc;
        hc.extra_ca_file = cfg.tls_operator_ca;
        hc.client_auth = TLS_CLIENT_CERT_OPTIONAL;
        hc.session_id_context = "cms-https";
        https_tls = tls_ctx_new_server(&hc, err, sizeof(err));
        if (!https_tls) {
            fprintf(stderr, "cmsd: TLS configuration (https): %s\n", err);
            tls_ctx_free(mllp_tls);
            return 1;
        }
    }
    /* Firmware keys: loaded once, shared read-only by the workers. */
    fw_keys *fwk = NULL;
    if (fw_keys_load(&cfg, &fwk, err, sizeof(err)) != CMS_OK) {
        fprintf(stderr, "cmsd: firmware configuration: %s\n", err);
        tls_ctx_free(mllp_tls);
        tls_ctx_free(https_tls);
        return 1;
    }
    if (check_only) {
        printf("cmsd: configuration %s is valid\n", config_path);
        fw_keys_free(fwk);
        tls_ctx_free(mllp_tls);
        tls_ctx_free(https_tls);
        return 0;
    }
    /* Device certificates must be issued by the device CA itself (the first
     * certificate of tls_device_ca), not by another CA of that bundle. */
    X509 *device_issuer = NULL;
    BIO *dbio = BIO_new_file(cfg.tls_device_ca, "r");
    if (dbio)
        device_issuer = PEM_read_bio_X509(dbio, NULL, NULL, NULL);
    BIO_free(dbio);
    if (!device_issuer) {
        fprintf(stderr, "cmsd: tls_device_ca %s: no certificate\n", cfg.tls_device_ca);
        fw_keys_free(fwk);
        tls_ctx_free(mllp_tls);
        tls_ctx_free(https_tls);
        return 1;
    }
    /* One table for all workers: a peer's connections land on any of them. A
     * bucket holds a minute's worth, so a ward enrolling its monitors at once
     * is not refused; refusals are logged at most once a minute per address.
     * 1 024 addresses (96 KiB): beyond, the least recently seen are forgotten,
     * and the registry-queue limit (est.c) still holds a flood from many. */
    rl_table *est_limit = NULL;
    if (cfg.est_anon_per_min &&
        !(est_limit = rl_new(1024, cfg.est_anon_per_min, cfg.est_anon_per_min, 60000))) {
        fprintf(stderr, "cmsd: out of memory\n");
        X509_free(device_issuer);
        fw_keys_free(fwk);
        tls_ctx_free(mllp_tls);
        tls_ctx_free(https_tls);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();

    cmsd d = {.loop = uv_default_loop(), .nworkers = cfg.workers};
    d.workers = calloc(cfg.workers, sizeof(*d.workers));
    if (!d.workers) {
        fprintf(stderr, "cmsd: out of memory\n");
        return 1;
    }
    uv_async_init(d.loop, &d.notify, on_worker_notify);
    d.notify.data = &d;
    uv_signal_init(d.loop, &d.sigint);
    uv_signal_init(d.loop, &d.sigterm);
    d.sigint.data = d.sigterm.data = &d;
    uv_signal_start(&d.sigint, on_signal, SIGINT);
    uv_signal_start(&d.sigterm, on_signal, SIGTERM);

    log_info("starting", NULL, NULL, "cmsd %s, %u worker(s), mllp %s, https %s", CMSD_VERSION,
             cfg.workers, cfg.mllp_listen, cfg.https_listen[0] ? cfg.https_listen : "off");
    unsigned started = 0;
    for (unsigned i = 0; i < cfg.workers; i++) {
        worker *w = &d.workers[i];
        w->id = i;
        w->cfg = &cfg;
        w->mllp_tls = mllp_tls;
        w->device_issuer = device_issuer;
        w->https_tls = https_tls;
        w->fw_keys = fwk;
        w->est_limit = est_limit;
        w->notify_main = &d.notify;
        /* Handles other threads touch are set up before the thread runs. */
        if (uv_loop_init(&w->loop) != 0 ||
            uv_async_init(&w->loop, &w->stop_async, on_stop) != 0 ||
            uv_timer_init(&w->loop, &w->ready_timer) != 0 ||
            (w->stop_async.data = w->ready_timer.data = w, 0) ||
            pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            log_error("startup_failed", NULL, NULL, "cannot start worker %u", i);
            d.exit_code = 1;
            break;
        }
        started++;
    }
    d.nworkers = started;
    if (started < cfg.workers)
        stop_workers(&d);
    if (started > 0)
        uv_run(d.loop, UV_RUN_DEFAULT);
    for (unsigned i = 0; i < started; i++) {
        pthread_join(d.workers[i].thread, NULL);
        uv_loop_close(&d.workers[i].loop);
    }
    uv_loop_close(d.loop);
    for (unsigned i = 0; i < started; i++) {
        https_ctx_free(&d.workers[i].https);
        ingest_ctx_free(&d.workers[i].ingest);
        svc_est_free(&d.workers[i].svc);
        fw_worker_free(d.workers[i].svc.fw);
    }
    fw_keys_free(fwk);
    rl_free(est_limit);
    tls_ctx_free(mllp_tls);
    tls_ctx_free(https_tls);
    X509_free(device_issuer);
    free(d.workers);
    log_info("stopped", NULL, NULL, "exit code %d", d.exit_code);
    return d.exit_code;
}
