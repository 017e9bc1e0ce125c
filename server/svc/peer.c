/*
 * peer.c - who a connection's peer is, for every listener (see peer.h): the
 * decision (peer_decide, pure), the registry check around it, and the one
 * vocabulary of refusals in the log and the audit log.
 */
#include <string.h>

#include <jansson.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "log.h"
#include "peer.h"
#include "svc.h"

peer_decision peer_decide(const peer_policy *pol, const tls_peer *p, const peer_registry *reg)
{
    peer_decision d = {.verdict = PEER_TLS_REFUSED, .reason = NULL, .audit = true};
    if (!p->has_cert) {
        if (pol->anonymous)
            return (peer_decision){.verdict = PEER_ANONYMOUS};
        d.reason = "no client certificate presented";
        return d;
    }
    if (!p->cn_ok) {
        d.reason = "certificate subject has no usable CN";
        return d;
    }
    if (p->issuer == TLS_ISSUER_OPERATOR_CA && pol->operators)
        return (peer_decision){.verdict = PEER_OPERATOR};
    if (p->issuer != TLS_ISSUER_DEVICE_CA) {
        d.reason = pol->operators ? "certificate not issued by the device CA or an operator CA"
                                  : "certificate not issued by the device CA";
        return d;
    }
    /* A device: only the registry says yes, on every connection (a resumed
     * session included: its certificate was verified once, its device's
     * status may have changed since). */
    if (!reg)
        return (peer_decision){.verdict = PEER_ASK_REGISTRY};
    d.verdict = PEER_DEVICE_REFUSED;
    if (reg->status == CMS_EPERM) {
        d.reason = "device not registered";
    } else if (reg->status != CMS_OK) {
        d.reason = "device registry unavailable";
        d.audit = false; /* the database is away: its audit row would be lost too */
    } else if (!reg->device_status || strcmp(reg->device_status, "active") != 0) {
        /* pending, revoked, decommissioned */
        d.reason =
            reg->device_status && reg->device_status[0] ? reg->device_status : "device not active";
    } else {
        return (peer_decision){.verdict = PEER_DEVICE};
    }
    return d;
}

/* Logs and audits a refusal in the one vocabulary (peer.h). detail: the store's
 * error for an unavailable registry, or NULL. */
static void refused(net_conn *c, const peer_policy *pol, const tls_peer *p, const peer_decision *d,
                    const char *detail)
{
    bool tls = d->verdict == PEER_TLS_REFUSED;
    const char *event = tls ? "tls_refused" : "device_refused";
    enum cm_refusal why = CM_REFUSED_BAD_CERTIFICATE;
    if (tls && !p->has_cert)
        why = CM_REFUSED_NO_CERTIFICATE;
    else if (!tls && strcmp(d->reason, "device not registered") == 0)
        why = CM_REFUSED_UNREGISTERED;
    else if (!tls && !d->audit)
        why = CM_REFUSED_REGISTRY_UNAVAILABLE;
    else if (!tls)
        why = strstr(d->reason, "revoked") ? CM_REFUSED_REVOKED : CM_REFUSED_INACTIVE;
    metrics_add(CM_CONN_REFUSED,
                cm_refused(strcmp(pol->listener, "https") == 0 ? CM_LISTENER_HTTPS
                                                               : CM_LISTENER_MLLP,
                           why),
                1);
    const char *cn = p->cn_ok ? p->cn : NULL;
    log_warn(event, cn, net_conn_peer(c), "%s: %s%s%s%s", pol->listener, d->reason,
             detail ? " (" : "", detail ? detail : "", detail ? ")" : "");
    if (d->audit) /* the serial of a certificate refused for its issuer is not trusted */
        svc_audit(pol->store, event, NULL, tls ? NULL : cn, net_conn_peer(c),
                  json_pack("{s:s, s:s}", "listener", pol->listener, "reason", d->reason));
}

/* The registry's answer (store_device_cb): c is referenced until here. */
static void on_registry(void *ctx, int status, const store_device *dev)
{
    net_conn *c = ctx;
    const peer_policy *pol = net_conn_proto_ctx(c); /* its first member, see peer.h */
    if (net_conn_state(c) != NET_AUTHORIZING)
        goto done;
    const tls_peer *p = net_conn_peer_record(c);
    peer_registry reg = {.status = status, .device_status = status == CMS_OK ? dev->status : NULL};
    peer_decision d = peer_decide(pol, p, &reg);
    if (d.verdict == PEER_DEVICE) {
        pol->on_device(c, dev);
        goto done;
    }
    refused(c, pol, p, &d, status == CMS_OK || status == CMS_EPERM ? NULL : cms_strerror(status));
    net_conn_close(c, NULL);
done:
    net_conn_unref(c);
}

int peer_authorize(net_conn *c, const peer_policy *pol, enum peer_verdict *verdict)
{
    const tls_peer *p = net_conn_peer_record(c);
    peer_decision d = peer_decide(pol, p, NULL);
    *verdict = d.verdict;
    if (d.verdict == PEER_ANONYMOUS || d.verdict == PEER_OPERATOR)
        return CMS_OK;
    if (d.verdict != PEER_ASK_REGISTRY) {
        refused(c, pol, p, &d, NULL);
        return CMS_EPERM;
    }
    net_conn_set_identity(c, p->cn);
    char fp[TLS_FINGERPRINT_HEX_SIZE];
    tls_peer_fingerprint_hex(p, fp);
    store_device dev;
    net_conn_ref(c); /* released by on_registry */
    if (store_device_cached(pol->store, p->cn, fp, net_conn_peer(c), &dev)) {
        on_registry(c, CMS_OK, &dev);
        return CMS_EAGAIN;
    }
    int rc = store_device_lookup_cert(pol->store, p->cn, fp, net_conn_peer(c), on_registry, c);
    if (rc != CMS_OK) {
        net_conn_unref(c);
        peer_registry reg = {.status = rc};
        d = peer_decide(pol, p, &reg);
        refused(c, pol, p, &d, cms_strerror(rc));
        return CMS_EUNAVAIL;
    }
    return CMS_EAGAIN;
}

void peer_on_tls_refused(void *proto_ctx, const char *peer, const char *reason)
{
    const peer_policy *pol = proto_ctx; /* its first member, see peer.h */
    svc_audit(pol->store, "tls_refused", NULL, NULL, peer,
              json_pack("{s:s, s:s}", "listener", pol->listener, "reason", reason));
}
