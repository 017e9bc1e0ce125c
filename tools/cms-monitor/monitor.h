/*
 * monitor.h - internal header of cms-monitor, the patient monitor simulator
 * and load generator (one process, one libuv loop, many TLS sessions).
 *
 * Objects:
 *   struct mon     the process: options, SSL_CTX, devices, stats, phase.
 *   struct device  one simulated monitor (identity, vital-sign generator,
 *                  unacknowledged messages, pacing). Lives for the whole run.
 *   struct conn    one TCP+TLS connection of a device. Allocated per attempt,
 *                  freed only in the last uv_close callback; the device points
 *                  at its current conn (or NULL) and a closing conn no longer
 *                  touches its device.
 *
 * Files: main.c (options, setup, run phases, exit status), conn.c (TCP, TLS,
 * MLLP, ACKs, reconnect), msg.c (PCD-01 message generator, with waveform
 * blocks), alarm.c (PCD-04 ORU^R40 alarm and heartbeat generator and their
 * schedule), stats.c (latency histogram, progress and final report).
 *
 * Thread: everything runs on the one loop thread.
 */
#ifndef CMS_MONITOR_H
#define CMS_MONITOR_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "mllp.h"

#define MON_SERIAL_LEN 64
#define MON_CTRL_LEN 128
#define MON_MAX_WINDOW 4096
#define MON_MAX_OBS 1000
#define MON_ACK_MAX_FRAME 65536
#define MON_MAX_WAVES 8

/* ---- options (main.c) ---- */

struct mon_opts {
    const char *host;
    unsigned port;
    const char *source; /* local address to connect from (--source), NULL = the kernel's */
    const char *ca;
    const char *cert, *key; /* one identity */
    const char *cert_dir;   /* many identities */
    const char *serial_prefix;
    unsigned first, devices, serial_width;
    const char *serial; /* MSH-3 override (one identity only) */
    uint64_t count;     /* messages per device, 0 = unlimited */
    double rate;        /* messages/s per device, 0 = window-bound */
    double duration;    /* seconds, 0 = unlimited */
    unsigned window;
    double connect_rate; /* handshakes/s */
    unsigned obs;
    const char *patient, *location, *control_prefix, *facility;
    unsigned wards; /* --wards: spread devices over WARD-1..WARD-n (0: all in ICU) */
    int resend;
    int json, quiet, verbose;
    int resume; /* reuse TLS sessions on reconnect */
    unsigned ack_timeout_ms, handshake_timeout_ms, drain_timeout_ms;
    unsigned retries; /* failed attempts per device before giving up at start */
    unsigned backoff_min_ms, backoff_max_ms;
    unsigned report_ms;
    uint64_t seed;
    const char *waveforms; /* --waveforms: comma-separated channel names, or NULL */
    double alarm_every;    /* --alarms: mean seconds between alarm starts, 0 = none */
    double heartbeat;      /* --heartbeat: seconds between watchdog messages, 0 = none */
    double steady_after;   /* --steady-after: the steady alarm histogram starts this many
                              seconds after every device got its first ACK */
};

/* ---- message generator (msg.c) ---- */

struct vital {
    double value, base;   /* current value, the device's resting value */
    uint64_t measured_ms; /* for intermittent (NIBP) parameters */
};

/* A waveform channel the generator can send (msg.c). */
struct wave_def {
    const char *name; /* --waveforms name, e.g. "ecg2" */
    const char *code, *label, *sub_id, *unit_code, *unit_label;
    double hz, resolution;
    int shape; /* 0 ECG, 1 pleth */
    double amplitude;
};

struct gen {
    const struct mon_opts *opts;
    unsigned nwaves;
    const struct wave_def *waves[MON_MAX_WAVES];
    uint64_t wave_epoch_ms;          /* time of sample 0 */
    uint64_t wave_next[MON_MAX_WAVES]; /* index of the next sample of each channel */
    uint64_t rng;
    unsigned nobs;
    char msh3[3 * MON_SERIAL_LEN + 8]; /* escaped "serial^serial^L" */
    char serial_esc[2 * MON_SERIAL_LEN];
    char sending_fac[128];
    char facility_esc[256]; /* escaped --facility */
    char pid[512];          /* complete PID segment */
    char pv1[256];          /* complete PV1 segment */
    struct vital *v;        /* nobs entries, owned */
};

/* Initialises g for a device. serial and patient are plain text (escaped
 * here). Returns CMS_OK, CMS_ENOMEM or CMS_EINVAL (bad --location). */
int gen_init(struct gen *g, const struct mon_opts *o, const char *serial, uint64_t seed);
void gen_free(struct gen *g);
/*
 * Builds the next ORU^R01 with control id ctrl as a complete MLLP frame.
 * *out receives a malloc'd buffer (caller owns it), *len its length,
 * *nobs the number of NM observations, *nsamples the waveform samples it
 * carries (one block per --waveforms channel covering 1/--rate seconds, or
 * one second unpaced, continuing where the previous block ended). Advances
 * the random walk. Returns CMS_OK, CMS_ENOMEM or CMS_ELIMIT.
 */
int gen_message(struct gen *g, const char *ctrl, char **out, size_t *len, unsigned *nobs,
                unsigned *nsamples);
/*
 * Parses a --waveforms list ("ecg2,pleth") into defs (at most MON_MAX_WAVES).
 * Returns the count, or -1 after a message on stderr.
 */
int gen_wave_list(const char *list, const struct wave_def **defs);
/* The value (in the channel's counts) of sample i of channel d. */
int gen_wave_sample(const struct wave_def *d, uint64_t i, double hr_bpm);

/* ---- alarms (alarm.c) ---- */

enum msg_kind { MSG_VITALS = 0, MSG_ALARM, MSG_HEARTBEAT };

struct device;

/* One device's alarm simulation: at most one alarm at a time. */
struct alarm_sim {
    int active;
    unsigned type;        /* index in alarm.c's table */
    unsigned n;           /* alarms started so far (for the id) */
    char id[48];          /* OBR-3.1 of the current alarm */
    uint64_t ends_ms;     /* when the current alarm ends */
    uint64_t next_ms;     /* next alarm event (start, continue or end); 0 = off */
    uint64_t next_hb_ms;  /* next heartbeat; 0 = off */
    int due_alarm, due_hb; /* an event is due but the window was full */
};

/* Schedules the first events of dev's simulation from now (loop ms). */
void alarm_sim_start(struct device *dev, uint64_t now_ms);
/*
 * Sends what is due (alarm event and/or heartbeat) while the window has
 * room; arms the device's alarm timer for the next event. Returns 0, or -1
 * when the connection closed.
 */
int alarm_pump(struct device *dev);
/* Small fast PRNG (xorshift64*) shared by the modules. */
uint64_t gen_rand(uint64_t *state);
double gen_uniform(uint64_t *state); /* [0,1) */

/* ---- latency histogram and stats (stats.c) ---- */

/* Log-linear buckets over microseconds: exact below 64 us, then 32
 * sub-buckets per power of two (relative error <= 1/32). */
#define HIST_SUB_BITS 5
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS (2 * HIST_SUB + 40 * HIST_SUB)

struct hist {
    uint64_t n, max_us, sum_us;
    uint64_t b[HIST_BUCKETS];
};

void hist_add(struct hist *h, uint64_t us);
/* Value (us) at quantile q in [0,1]; 0 when empty. */
uint64_t hist_quantile(const struct hist *h, double q);
void hist_merge(struct hist *into, const struct hist *from);

struct mon_stats {
    uint64_t sent;                /* first transmissions */
    uint64_t resent;              /* retransmissions after reconnect (same MSH-10) */
    uint64_t aa, ae, ar;          /* ACK codes received */
    uint64_t obs_acked;           /* NM observations in AA-acknowledged messages */
    uint64_t samples_acked;       /* waveform samples in AA-acknowledged messages */
    uint64_t alarms_sent, alarms_aa;         /* ORU^R40 alarm events (first sends, AA) */
    uint64_t heartbeats_sent, heartbeats_aa; /* ORU^R40 watchdog messages */
    uint64_t unmatched;           /* ACKs whose MSA-2 matched nothing pending */
    uint64_t bad_acks;            /* frames that were not a parseable ACK */
    uint64_t ack_timeouts;        /* connections closed because an ACK was late */
    uint64_t handshakes;          /* successful TLS handshakes */
    uint64_t resumed;             /* ... of which resumed a session (--resume) */
    uint64_t reconnects;          /* successful handshakes after a device's first */
    uint64_t drops;               /* established connections lost */
    uint64_t conn_failures;       /* failed TCP connects or TLS handshakes */
    uint64_t lost;                /* unacked messages dropped (no resend / at exit) */
    uint64_t bytes_out, bytes_in; /* TLS ciphertext */
};

/* ---- device and connection (conn.c) ---- */

enum conn_state {
    CONN_CONNECTING = 0, /* TCP connect in progress */
    CONN_HANDSHAKING,    /* TLS handshake in progress */
    CONN_ACTIVE,         /* sending messages, reading ACKs */
    CONN_CLOSING,        /* close started; waiting for uv_close callbacks */
};

enum dev_state {
    DEV_IDLE = 0,  /* waiting: in the connect queue or in backoff */
    DEV_CONNECTED, /* has a conn (any conn state) */
    DEV_DONE,      /* finished: no more connections */
};

struct pmsg {    /* a sent, unacknowledged message */
    char *frame; /* owned MLLP frame, kept for resend */
    size_t len;
    uint64_t sent_ns; /* uv_hrtime of the last transmission */
    unsigned nobs;
    unsigned nsamples;  /* waveform samples it carries */
    enum msg_kind kind; /* ORU^R01 vitals, or an ORU^R40 alarm / heartbeat */
    unsigned tx; /* transmissions so far */
    char ctrl[MON_CTRL_LEN];
};

struct mon;
struct conn;

struct device {
    struct mon *mon;
    unsigned idx;
    enum dev_state state;
    char serial[MON_SERIAL_LEN]; /* MSH-3 identity */
    char ctrl_prefix[MON_CTRL_LEN - 16];
    X509 *cert;             /* owned client certificate */
    EVP_PKEY *key;          /* owned */
    STACK_OF(X509) * chain; /* owned intermediates (may be NULL) */
    SSL_SESSION *session;   /* owned; for --resume */
    struct gen gen;
    uint64_t seq;       /* last control-id number used */
    uint64_t generated; /* messages generated (first sends) */
    struct pmsg *pend;  /* window entries, oldest first */
    unsigned npend;
    double next_due_ms;       /* pacing (loop time, ms) */
    uv_timer_t send_timer;    /* pacing timer */
    uv_timer_t backoff_timer; /* reconnect delay */
    uv_timer_t alarm_timer;   /* next alarm event or heartbeat (--alarms, --heartbeat) */
    struct alarm_sim alarm;
    unsigned backoff_ms;
    unsigned fail_streak; /* consecutive failed attempts */
    int ever_up;          /* has had an ACK on some connection */
    int queued;           /* in the connect queue */
    struct device *qnext; /* connect queue link */
    struct conn *conn;    /* current connection or NULL */
};

struct conn {
    enum conn_state state;
    struct device *dev; /* NULL once closing */
    struct mon *mon;
    uv_tcp_t tcp;
    uv_timer_t timer; /* handshake deadline / ACK deadline / close grace */
    uv_connect_t creq;
    uv_shutdown_t sreq;
    SSL *ssl;
    BIO *rbio, *wbio; /* memory BIOs, owned by ssl */
    mllp_decoder dec;
    uint64_t acks;       /* ACKs received on this connection */
    int handles_open;    /* uv handles still to be closed */
    int handles_closing; /* uv_close has been called */
    uint64_t started_ns;
};

/* ---- the process (main.c) ---- */

enum mon_phase {
    PHASE_RUN = 0, /* connecting and sending */
    PHASE_DRAIN,   /* no new messages; waiting for outstanding ACKs */
    PHASE_STOP,    /* closing everything */
};

struct mon {
    uv_loop_t *loop;
    struct mon_opts opts;
    SSL_CTX *ctx;
    struct sockaddr_storage addr;
    struct sockaddr_storage src; /* --source, port 0 (valid when opts.source is set) */
    struct device *devs;
    unsigned ndev;
    enum mon_phase phase;
    int fatal;          /* setup error seen: exit 1 */
    int ever_connected; /* any handshake ever succeeded */
    unsigned active;    /* conns in CONN_ACTIVE */
    unsigned nconns;    /* conn structs alive */
    unsigned done_devs;
    unsigned devs_up; /* devices that got at least one ACK */
    uint64_t pending; /* unacked messages over all devices */
    int host_is_ip;
    int handles_closed;
    /* connect ramp */
    struct device *qhead, *qtail;
    uv_timer_t ramp_timer;
    double tokens;
    uint64_t ramp_last_ms;
    /* stats */
    struct mon_stats st;
    struct hist hist, ihist; /* whole run, current report interval */
    struct hist ahist;       /* ORU^R40 alarm events only (not heartbeats), whole run */
    struct hist ahist_steady; /* ... sent from all_up_ns + steady_after on */
    uint64_t all_up_ns;       /* when the last device got its first ACK (0: not yet) */
    struct mon_stats prev;   /* at the previous report */
    uint64_t start_ns, prev_ns, end_ns;
    uint64_t last_ack_ns; /* when the last ACK arrived */
    double cpu_start;     /* process CPU seconds when the run started */
    uv_timer_t report_timer, duration_timer, drain_timer;
    uv_signal_t sigint, sigterm;
};

/* conn.c: TCP + TLS + the connection's close path */
/* Starts a connection attempt for dev now (dev->conn is set at once). */
void conn_start(struct device *dev);
/*
 * The one close path of c; idempotent. graceful: we are done with the
 * connection (send close_notify, no reconnect); otherwise it failed and the
 * device is told through dev_conn_lost(). why: borrowed, for the log.
 */
void conn_close(struct conn *c, const char *why, int graceful);
/* Encrypts one frame into the session (ciphertext waits in wbio). Returns
 * 0, or -1 after closing the connection. */
int conn_write_frame(struct conn *c, const char *frame, size_t len);
/* Moves pending ciphertext to the socket. Returns 0, or -1 after closing. */
int conn_flush(struct conn *c);
/* (Re)arms the ACK deadline for the device's oldest unacked message. */
void conn_arm_ack_timer(struct conn *c);
/* OpenSSL new-session callback (--resume): keeps the device's latest session. */
int conn_new_session_cb(SSL *ssl, SSL_SESSION *sess);

/* dev.c: pacing, ACKs, reconnects, connect ramp */
/* Puts dev in the connect queue (paced by --connect-rate). */
void dev_enqueue(struct device *dev);
/* Sends as many new messages as pacing and the window allow. */
void dev_pump(struct device *dev);
/*
 * Puts one generated frame (owned, taken) of the given kind into dev's
 * window and sends it on c. Returns 0, or -1 when the connection closed.
 */
int dev_send_new(struct device *dev, struct conn *c, char *frame, size_t len, const char *ctrl,
                 enum msg_kind kind, unsigned nobs, unsigned nsamples);
/* The next control id of dev into out (MON_CTRL_LEN). */
void dev_next_ctrl(struct device *dev, char *out);
/* Finishes dev: closes its connection, counts what was never acked. */
void dev_finish(struct device *dev);
/* Called by conn.c once the TLS handshake of dev's conn c completed. */
void dev_on_connected(struct conn *c);
/* MLLP frame callback (ctx = struct conn *): parses and matches one ACK. */
int dev_on_frame(void *ctx, const char *payload, size_t len);
/* Called by conn_close() with the device the conn belonged to. proven: the
 * connection had received an ACK (a drop rather than a failed attempt). */
void dev_conn_lost(struct device *dev, const char *why, int graceful, int proven);
void dev_schedule_reconnect(struct device *dev);
/* Frees the unacked messages, counting them as lost. */
void dev_free_pending(struct device *dev);
/* One-time per-device init of timers (before the first dev_enqueue). */
int dev_init_handles(struct device *dev);
void dev_close_handles(struct device *dev);
/* Rate-limits repeated warnings: true while count is small or --verbose. */
int mon_should_log(struct mon *m, const char *event, uint64_t count);

/* ident.c (before the loop runs) */
/* The client SSL_CTX: verifies the server with --ca; NULL after a message. */
SSL_CTX *ident_make_ctx(const struct mon_opts *o);
/* Loads dev's certificate, chain and key (--cert/--key, or the n-th serial
 * of --cert-dir) and sets dev->serial. Returns 0, or -1 after a message. */
int ident_load(struct device *dev, unsigned n);
void ident_cleanup(void);

/* main.c */
/* Called whenever something that may end the run happened. */
void mon_check_done(struct mon *m);
/* Stops sending, waits up to --drain-timeout for outstanding ACKs. */
void mon_drain(struct mon *m);
/* Closes everything now; uv_run returns once all handles are closed. */
void mon_stop(struct mon *m);

/* stats.c */
void stats_report_progress(struct mon *m);
/* Final report on stdout (text or --json); status: the exit status. */
void stats_report_final(struct mon *m, int status);
double stats_cpu_seconds(void);

#endif
