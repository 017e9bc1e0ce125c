/*
 * peer.h - who a connection's peer is, and whether it may talk: one decision
 * for every listener (svc layer; TLS only through the peer record, net.h).
 *
 * The TLS layer describes the peer once per handshake (tls_peer: CN,
 * fingerprint, issuing CA, role, resumed or not). This module decides, under
 * the listener's policy:
 *   - no certificate: anonymous where the policy allows it (HTTPS: public
 *     routes, EST bootstrap), refused elsewhere;
 *   - a certificate without a usable CN, or not issued directly by an issuing
 *     CA the policy accepts (the device CA; an operator CA where operators
 *     are accepted): refused;
 *   - an operator CA certificate: an operator (its role is in the record);
 *   - a device CA certificate: the registry decides, on every connection,
 *     resumed TLS sessions included (they skip certificate verification):
 *     a registered, active device (its certificate's fingerprint must be one
 *     the registry knows for it), or refused.
 *
 * One vocabulary for every listener. A refusal for the certificate is one
 * log line event=tls_refused and one audit row "tls_refused"; a refusal by
 * the registry is one log line event=device_refused and one audit row
 * "device_refused" (none when the registry could not answer: the database
 * is away, the row could not be written either). Log lines say
 * "<listener>: <reason>"; audit rows have the detail {"listener", "reason"}
 * and, for device_refused, the serial as device. A handshake that failed in
 * TLS itself (no, bad, expired, revoked certificate) is audited the same way
 * by peer_on_tls_refused.
 *
 * Thread: the connection's loop thread.
 */
#ifndef CMS_PEER_H
#define CMS_PEER_H

#include <stdbool.h>

#include "net.h"
#include "store.h"
#include "tls.h"

/*
 * What a listener accepts, and where its refusals go. A listener using this
 * module passes, as net_listen's proto_ctx, a struct whose FIRST member is
 * its peer_policy (C guarantees a pointer to a struct points to its first
 * member): peer_authorize's registry answer and peer_on_tls_refused find
 * the policy there.
 */
typedef struct peer_policy {
    store_t *store;       /* borrowed: registry checks and audit rows */
    const char *listener; /* "mllp", "https" (static): log lines and audit details */
    bool anonymous;       /* a peer without a certificate is accepted */
    bool operators;       /* operator CA certificates are accepted */
    /*
     * A device's connection is allowed (registered, active): dev is borrowed
     * for the call. Must activate c (net_conn_activate) or close it. May run
     * inside peer_authorize (a verdict the store kept) or later.
     */
    void (*on_device)(net_conn *c, const store_device *dev);
} peer_policy;

enum peer_verdict {
    PEER_ANONYMOUS = 0, /* accepted: no certificate */
    PEER_OPERATOR,      /* accepted: an operator CA certificate (role in the record) */
    PEER_ASK_REGISTRY,  /* a device CA certificate: decide again with the registry's answer */
    PEER_DEVICE,        /* accepted: a registered, active device */
    PEER_TLS_REFUSED,   /* refused for its certificate */
    PEER_DEVICE_REFUSED /* refused by the registry, or the registry could not answer */
};

/* The registry's answer for a device (store_device_cb's status and device). */
typedef struct peer_registry {
    int status;                /* CMS_OK, CMS_EPERM (not registered), other: unavailable */
    const char *device_status; /* with CMS_OK: "active", "pending", "revoked", ... */
} peer_registry;

typedef struct peer_decision {
    enum peer_verdict verdict;
    /* Why, for the refusals: static, or reg->device_status (borrowed like reg);
     * NULL when accepted or PEER_ASK_REGISTRY. */
    const char *reason;
    bool audit; /* a refusal to record as an audit row (tls_refused / device_refused) */
} peer_decision;

/*
 * The decision itself, pure: no I/O, no log. pol and p are borrowed; reg is
 * NULL until the registry answered (a device then gets PEER_ASK_REGISTRY,
 * whatever the record says, resumed sessions included). Refusal reasons:
 *   "no client certificate presented"                   (policy without anonymous)
 *   "certificate subject has no usable CN"
 *   "certificate not issued by the device CA"           (policy without operators)
 *   "certificate not issued by the device CA or an operator CA"
 *   "device not registered"                             (registry CMS_EPERM)
 *   the device's status, e.g. "revoked", "pending"     (registered, not active)
 *   "device registry unavailable"                       (any other registry status;
 *                                                        the only one not audited)
 */
peer_decision peer_decide(const peer_policy *pol, const tls_peer *p, const peer_registry *reg);

/*
 * Decides c's peer once its handshake is complete (from net_proto.on_handshake),
 * under pol (borrowed; the first member of c's proto_ctx, see peer_policy).
 * For a device CA certificate it sets c's identity to the CN (borrowed from
 * the peer record) and asks the registry (store_device_cached, else
 * store_device_lookup_cert with the certificate's fingerprint).
 * Returns:
 *   CMS_OK     accepted now: *verdict is PEER_ANONYMOUS or PEER_OPERATOR
 *              (the caller finishes its setup and returns CMS_OK);
 *   CMS_EAGAIN a device: pol->on_device(c, dev) runs exactly once if the
 *              registry allows it (possibly before this returns); otherwise
 *              c is refused (logged, audited as above) and closed here. The
 *              caller returns CMS_EAGAIN. *verdict is PEER_ASK_REGISTRY;
 *   CMS_EPERM  refused for its certificate (logged, audited);
 *   CMS_EUNAVAIL the registry could not be asked (logged as device_refused,
 *              not audited).
 * On the last two the caller returns the code: net closes c.
 */
int peer_authorize(net_conn *c, const peer_policy *pol, enum peer_verdict *verdict);

/*
 * net_proto.on_tls_refused for every listener using this module: proto_ctx
 * starts with its peer_policy. Audits "tls_refused" with {"listener",
 * "reason"} for the peer address peer (net already logged the line).
 */
void peer_on_tls_refused(void *proto_ctx, const char *peer, const char *reason);

#endif
