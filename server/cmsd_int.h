/*
 * cmsd_int.h - what cmsd.c (start-up, workers, shutdown) and cmsd_ops.c
 * (SIGHUP reload, SIGTERM drain, systemd notify and watchdog, the loopback
 * metrics listener) share. Not a public API.
 */
#ifndef CMSD_INT_H
#define CMSD_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "console.h"
#include "firmware.h"
#include "https.h"
#include "ingest.h"
#include "net.h"
#include "net_plain.h"
#include "ratelimit.h"
#include "store.h"
#include "svc.h"
#include "tls.h"

#define CMSD_VERSION "0.1.0"

enum worker_status { W_STARTING = 0, W_RUNNING, W_FAILED, W_STOPPED };

/* What every worker borrows, loaded once before the workers start and
 * read-only while they run; owned by main (shared_free). The TLS contexts
 * keep their pointers across a reload (tls_ctx_replace swaps what is inside). */
typedef struct shared {
    tls_ctx *mllp_tls;
    tls_ctx *https_tls;  /* NULL when https_listen is "" */
    fw_keys *fw_keys;    /* read-only once loaded */
    rl_table *est_limit; /* locked inside, or NULL (est_anon_per_min = 0) */
    console_state *console; /* the web console's files and CSRF secret; NULL without HTTPS */
    bool events_on;         /* the live event hub runs (events_hub_init) */
} shared;

typedef struct worker {
    unsigned id;
    pthread_t thread;
    const cms_config *cfg;
    tls_ctx *mllp_tls;
    tls_ctx *https_tls; /* NULL when https_listen is "" */
    https_ctx https;
    svc_state svc;
    const fw_keys *fw_keys; /* shared, read-only */
    rl_table *est_limit;    /* shared (locked inside), or NULL */
    const console_state *console; /* shared, read-only, or NULL */
    uv_loop_t loop;
    uv_async_t stop_async;  /* main -> worker: stop now */
    uv_async_t drain_async; /* main -> worker: drain (SIGTERM) */
    uv_async_t audit_async; /* main -> worker 0: audit rows in cmsd.audit */
    uv_timer_t ready_timer;
    uv_timer_t tick_timer;   /* every second: heartbeat, health, gauges */
    uv_timer_t anchor_timer; /* worker 0, audit_anchor_interval_s > 0 */
    bool anchor_on, tick_on, draining, shut;
    net_server *closing_net; /* while net_server_close runs (worker_shutdown) */
    store_t *closing_store;  /* while store_close runs */
    /* What worker_start set up, so that worker_free undoes exactly that. */
    bool loop_ok, stop_async_ok, drain_async_ok, audit_async_ok, ready_timer_ok, tick_timer_ok,
        thread_ok;
    uint64_t started_at;
    unsigned ticks;
    unsigned rollout_ticks; /* on_tick: staged rollouts every CMSD_ROLLOUT_TICK_S */
    store_t *store;
    net_server *net;
    ingest_ctx ingest;
    _Atomic int status;
    _Atomic uint64_t heartbeat_ms; /* uv_hrtime() / 1e6 at the last tick (watchdog) */
    struct cmsd *d;                /* borrowed: the audit queue */
    uv_async_t *notify_main;       /* borrowed: wakes the main loop on status changes */
    unsigned pending_closes;
} worker;

/* An audit row the main thread asks worker 0 to append. */
typedef struct cmsd_audit_row {
    char event[32];
    char *detail; /* JSON object text, owned */
} cmsd_audit_row;

#define CMSD_AUDIT_QUEUE 16
/* Seconds between two evaluations of every staged rollout by worker 0 (sql/016). */
#define CMSD_ROLLOUT_TICK_S 5

/*
 * Start-up and shutdown have one cleanup path: main owns what the workers
 * share (shared) and the main loop's handles and the workers (cmsd), each
 * recorded as it is made; at main's cleanup label cmsd_free and shared_free
 * undo what was made, once, whichever step failed.
 */
typedef struct cmsd {
    uv_loop_t loop;
    bool loop_ok, notify_ok, sigint_ok, sigterm_ok, sighup_ok, reload_timer_ok, drain_timer_ok,
        watchdog_ok;
    uv_signal_t sigint, sigterm, sighup;
    uv_async_t notify;
    uv_timer_t reload_timer;   /* coalesces SIGHUPs */
    uv_timer_t drain_timer;    /* shutdown_timeout_s after SIGTERM */
    uv_timer_t watchdog_timer; /* WATCHDOG=1 every $WATCHDOG_USEC / 2 */
    net_plain *plain;          /* metrics_listen, or NULL */
    worker *workers;           /* cap entries, calloc'd */
    unsigned cap;
    unsigned nworkers; /* started: the threads that run */
    bool stopping, announced, draining;
    int exit_code;
    /* reload */
    const char *config_path;
    const cms_config *cfg; /* what the workers read (never changed once they run) */
    cms_config *live;      /* the configuration in force: cfg + the reloads applied */
    shared *sh;
    uint64_t last_reload_ms; /* uv_now of the last reload, 0 = none */
    unsigned folded;         /* SIGHUPs folded into the pending reload */
    uint64_t watchdog_usec;
    /* audit rows for worker 0 */
    pthread_mutex_t audit_mu;
    bool audit_mu_ok;
    cmsd_audit_row audit[CMSD_AUDIT_QUEUE];
    unsigned naudit;
} cmsd;

/* cmsd.c */
void cmsd__stop_workers(cmsd *d);
/* A worker's drain is over: it shuts down (its loop). */
void cmsd__worker_drained(worker *w);
/* The tls_server_config of each listener for cfg (hc: https_listen set). */
void cmsd__tls_configs(const cms_config *cfg, tls_server_config *mc, tls_server_config *hc);
/* workers = 0 resolved to the number of online CPUs (1..64). */
void cmsd__resolve_workers(cms_config *cfg);

/* cmsd_ops.c */
/* Sets up the main loop's SIGHUP, timers and the metrics listener; 0 or a
 * libuv error (logged). */
int cmsd__ops_init(cmsd *d);
/* Closes what cmsd__ops_init made (idempotent). */
void cmsd__ops_close(cmsd *d);
/* SIGTERM/SIGINT: the first drains, the next stops at once. */
void cmsd__on_stop_signal(cmsd *d, int signum);
/* Every worker serves: READY=1 (once). */
void cmsd__announce_ready(cmsd *d);
/* The expiry gauges from the TLS contexts in force. */
void cmsd__tls_gauges(const shared *sh);
/* Worker 0's loop: appends the queued audit rows. */
void cmsd__audit_flush(worker *w);
/* Worker side of the drain (on drain_async). */
void cmsd__worker_drain(worker *w);

#endif
