/*
 * routes.c - the HTTPS route table and the health endpoint. Who may call
 * what is decided here, in one place, and enforced by the router (https.c).
 */
#include "cms_err.h"
#include "firmware.h"
#include "https.h"
#include "svc.h"

int svc_health(https_req *r)
{
    svc_state *st = r->ctx->svc;
    bool up = store_ready(st->store);
    https_reply_json(r, up ? 200 : 503,
                     json_pack("{s:s, s:s, s:I, s:I}", "status", up ? "ok" : "degraded",
                               "database", up ? "up" : "down", "connections",
                               (json_int_t)net_server_conn_count(st->server), "ingest_backlog",
                               (json_int_t)store_backlog(st->store)));
    return CMS_OK;
}

#define ANY HTTPS_PEER_NONE, HTTPS_ROLE_NONE, false
#define DEVICE HTTPS_PEER_DEVICE, HTTPS_ROLE_NONE, false
#define OP(role) HTTPS_PEER_OPERATOR, HTTPS_ROLE_##role, false
/* An operator route whose body may be up to fw_max_image_bytes (https.h "upload"). */
#define OP_UPLOAD(role) HTTPS_PEER_OPERATOR, HTTPS_ROLE_##role, true

const https_route svc_routes[] = {
    {"GET", "/healthz", svc_health, ANY},
    /* Each service adds its lines here when its handlers land (see svc.h):
     * EST + tokens + revocation + CRL (est.c, enroll.c), registry/audit (admin.c). */
    /* admin.c: registry read side, groups, audit log */
    {"GET", "/api/v1/whoami", admin_whoami, OP(VIEWER)},
    {"GET", "/api/v1/devices", admin_device_list, OP(VIEWER)},
    {"GET", "/api/v1/devices/:serial", admin_device_show, OP(VIEWER)},
    {"GET", "/api/v1/devices/:serial/certs", admin_device_certs, OP(VIEWER)},
    {"GET", "/api/v1/groups", admin_group_list, OP(VIEWER)},
    {"POST", "/api/v1/groups/:name/devices", admin_group_set, OP(OPERATOR)},
    {"GET", "/api/v1/audit", admin_audit_list, OP(VIEWER)},
    {"GET", "/api/v1/audit/verify", admin_audit_verify, OP(VIEWER)},
    /* est.c, enroll.c, revocation.c: EST, enrollment tokens, revocation, CRL */
    {"GET", "/.well-known/est/cacerts", est_cacerts, ANY},
    {"GET", "/.well-known/est/csrattrs", est_csrattrs, ANY},
    {"POST", "/.well-known/est/simpleenroll", est_simpleenroll, ANY},
    {"POST", "/.well-known/est/simplereenroll", est_simplereenroll, DEVICE},
    {"GET", "/crl", crl_get, ANY},
    {"GET", "/crl.pem", crl_get, ANY},
    {"POST", "/api/v1/enroll/tokens", enroll_token_create, OP(OPERATOR)},
    {"GET", "/api/v1/enroll/tokens", enroll_token_list, OP(VIEWER)},
    {"POST", "/api/v1/enroll/tokens/:id/revoke", enroll_token_revoke, OP(OPERATOR)},
    {"POST", "/api/v1/devices/:serial/revoke", device_revoke, OP(ADMIN)},
    {"POST", "/api/v1/devices/:serial/decommission", device_decommission, OP(ADMIN)},
    {"POST", "/api/v1/certs/:fingerprint/revoke", cert_revoke, OP(ADMIN)},
    /* firmware_*.c: signed firmware (docs/firmware.md) */
    {"POST", "/api/v1/firmware/releases", fw_import, OP_UPLOAD(OPERATOR)},
    {"GET", "/api/v1/firmware/releases", fw_list, OP(VIEWER)},
    {"GET", "/api/v1/firmware/releases/:id", fw_status, OP(VIEWER)},
    {"POST", "/api/v1/firmware/releases/:id/approve", fw_approve, OP(OPERATOR)},
    {"POST", "/api/v1/firmware/releases/:id/withdraw", fw_withdraw, OP(OPERATOR)},
    {"GET", "/fw/v1/keys", fw_keys_get, ANY},
    {"GET", "/fw/v1/manifest", fw_manifest_get, DEVICE},
    {"GET", "/fw/v1/images/:sha256", fw_image_get, DEVICE},
    {"POST", "/fw/v1/report", fw_report, DEVICE},
    {NULL, NULL, NULL, HTTPS_PEER_NONE, HTTPS_ROLE_NONE, false},
};
