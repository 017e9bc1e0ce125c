/*
 * ingest.h - the monitor-facing service: HL7 v2 over MLLP on an
 * authenticated TLS connection (svc layer; uses net only through net.h).
 *
 * Per connection: the TLS peer certificate must be issued directly by the
 * device CA (tls_server_config.device_ca_file's first certificate, not merely
 * chain to a root the bundle also holds); its CN is the device serial; the
 * device must be registered and active (peer.h: checked against the database
 * on every connection, resumed TLS sessions included) before any input is read.
 * Then each MLLP frame is parsed (hl7, then pcd01 for an ORU^R01 with its
 * text and waveform content, or pcd04 for an ORU^R40's alarms), checked
 * against the device's identity (MSH-3's universal ID, or its namespace ID
 * when there is no universal ID, every OBX-18, and for an alarm OBR-3's
 * universal ID, or its namespace ID, must name this device: its serial or
 * one of its registered identifiers, compared case-insensitively; otherwise
 * AR and an "impersonation" audit row), and queued for group commit with
 * all its content (store_ingest_full). ACKs go back strictly in the order
 * the frames arrived, as ACK^<the message's trigger> (ACK^R01, ACK^R40): AR
 * at once (after the ones before it) for a malformed or foreign message or
 * a waveform block over waveform_max_samples, AE at once for bad waveform
 * content (no sample rate, a non-numeric sample), AA only after COMMIT, AE
 * when the database refused the data or stayed unavailable for
 * ingest_timeout_ms. docs/clinical-data.md has the table.
 *
 * Backpressure: at max_pending_per_conn frames awaiting their ACK the
 * connection stops reading; when the store's backlog reaches 90 % of its
 * limit every connection stops reading until it drains.
 *
 * Thread: one ingest_ctx per loop, used on that loop's thread only.
 */
#ifndef CMS_INGEST_H
#define CMS_INGEST_H

#include <stdint.h>

#include "hl7.h"
#include "net.h"
#include "pcd01.h"
#include "pcd04.h"
#include "peer.h"
#include "store.h"

typedef struct ingest_config {
    unsigned max_frame_bytes;
    unsigned max_pending_per_conn;
    unsigned max_queued_msgs; /* the store's backlog limit (for the 90 % rule) */
    const char *hl7_app;      /* our MSH-3 (borrowed) */
    const char *hl7_facility; /* our MSH-4 (borrowed) */
    unsigned waveform_max_samples; /* a waveform block with more samples gets AR (0 = no limit) */
} ingest_config;

typedef struct ingest_ctx {
    peer_policy peer;   /* first (peer.h): who may connect, refusals */
    store_t *store;     /* borrowed */
    net_server *server; /* borrowed: to resume connections when the store drains */
    ingest_config cfg;
    uint64_t ack_seq;   /* for unique ACK control ids */
    unsigned worker_id;
    bool global_paused;
    bool draining;      /* ingest_drain: no new session, no more reading */
    size_t nsessions;   /* sessions past their handshake and not closed */
    void (*drained)(void *arg);
    void *drained_arg;
    net_conn **due; /* connections with ACKs to send at the end of the store's round */
    size_t ndue, due_cap;
    /* Scratch space (one loop thread): too big for each connection. */
    hl7_msg hl7;
    pcd01_msg msg;
    pcd01_waves waves; /* ORU^R01 waveform blocks (owns its sample arena) */
    pcd04_msg r40;     /* ORU^R40 alarms */
} ingest_ctx;

/* The protocol to pass to net_listen with an ingest_ctx as proto_ctx. */
extern const net_proto ingest_mllp_proto;

/*
 * Initialises ctx (store and server borrowed, must outlive it) and registers
 * the store drain callback. Returns CMS_OK.
 */
int ingest_ctx_init(ingest_ctx *ctx, store_t *store, net_server *server,
                    const ingest_config *cfg, unsigned worker_id);
/*
 * The drain (SIGTERM): no new session starts; every monitor's connection
 * stops being read (what it sent after that is not taken: unacknowledged, the
 * monitor resends it later); messages already taken are committed and
 * acknowledged as usual; a connection is closed (TLS close_notify) as soon as
 * it has nothing awaiting an ACK. When no session is left and the store has
 * nothing in flight, drained(arg) runs once (possibly before this returns).
 * Thread: the loop's.
 */
void ingest_drain(ingest_ctx *ctx, void (*drained)(void *arg), void *arg);

/* Frees what ctx holds (after the loop ended). */
void ingest_ctx_free(ingest_ctx *ctx);

#endif
