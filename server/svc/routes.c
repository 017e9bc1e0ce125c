/*
 * routes.c - the HTTPS route table and the health endpoint. Who may call
 * what is decided here, in one place, and enforced by the router (https.c).
 */
#include "cms_err.h"
#include "console.h"
#include "events.h"
#include "firmware.h"
#include "fw_rollout.h"
#include "https.h"
#include "ops.h"
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

/* The last column names the audit event of a refusal made before the handler runs
 * (https.h "refused"; docs/operator-api.md lists them, test_https_refusal_audit.py
 * walks this table and checks each). */

const https_route svc_routes[] = {
    {"GET", "/healthz", svc_health, ANY, "http_refused"},
    /* ops.c: readiness for orchestrators, metrics for Prometheus (docs/operations.md) */
    {"GET", "/readyz", ops_readyz, ANY, "http_refused"},
    {"GET", "/metrics", ops_metrics, OP(SCRAPER), "http_refused"},
    /* Each service adds its lines here when its handlers land (see svc.h). */
    /* admin/admin.c: registry read side, groups; admin/admin_audit.c: audit log */
    {"GET", "/api/v1/whoami", admin_whoami, OP(VIEWER), "http_refused"},
    {"GET", "/api/v1/devices", admin_device_list, OP(VIEWER), "http_refused"},
    {"GET", "/api/v1/devices/:serial", admin_device_show, OP(VIEWER), "http_refused"},
    {"GET", "/api/v1/devices/:serial/certs", admin_device_certs, OP(VIEWER), "http_refused"},
    {"GET", "/api/v1/groups", admin_group_list, OP(VIEWER), "http_refused"},
    {"POST", "/api/v1/groups/:name/devices", admin_group_set, OP(OPERATOR), "group_update_refused"},
    {"GET", "/api/v1/audit", admin_audit_list, OP(VIEWER), "http_refused"},
    {"GET", "/api/v1/audit/verify", admin_audit_verify, OP(VIEWER), "http_refused"},
    /* console/: the web console's files and session; events/: its live event stream */
    {"GET", "/console/", console_static, ANY, "http_refused"},
    {"GET", "/console/:name", console_static, ANY, "http_refused"},
    {"GET", "/api/v1/console/session", console_session, OP(VIEWER), "http_refused"},
    {"GET", "/api/v1/events", events_get, OP(VIEWER), "http_refused"},
    /* admin_clinical.c: latest vitals, alarms, trends, waveforms */
    {"GET", "/api/v1/vitals/latest", admin_vitals_latest, OP(VIEWER), "http_refused"},
    {"GET", "/api/v1/alarms", admin_alarm_list, OP(VIEWER), "http_refused"},
    {"GET", "/api/v1/alarms/:id", admin_alarm_show, OP(VIEWER), "http_refused"},
    {"GET", "/api/v1/devices/:serial/trend", admin_device_trend, OP(VIEWER), "http_refused"},
    {"GET", "/api/v1/devices/:serial/waveforms", admin_device_waveforms, OP(VIEWER),
     "http_refused"},
    /* est/est.c, est/enroll.c, est/revocation.c: EST, enrollment tokens, revocation, CRL */
    {"GET", "/.well-known/est/cacerts", est_cacerts, ANY, "est_refused"},
    {"GET", "/.well-known/est/csrattrs", est_csrattrs, ANY, "est_refused"},
    {"POST", "/.well-known/est/simpleenroll", est_simpleenroll, ANY, "est_refused"},
    {"POST", "/.well-known/est/simplereenroll", est_simplereenroll, DEVICE, "est_refused"},
    {"GET", "/crl", crl_get, ANY, "http_refused"},
    {"GET", "/crl.pem", crl_get, ANY, "http_refused"},
    {"POST", "/api/v1/enroll/tokens", enroll_token_create, OP(OPERATOR),
     "enroll_token_create_refused"},
    {"GET", "/api/v1/enroll/tokens", enroll_token_list, OP(VIEWER), "enroll_token_list_refused"},
    {"POST", "/api/v1/enroll/tokens/:id/revoke", enroll_token_revoke, OP(OPERATOR),
     "enroll_token_revoke_refused"},
    {"POST", "/api/v1/devices/:serial/revoke", device_revoke, OP(ADMIN), "device_revoke_refused"},
    {"POST", "/api/v1/devices/:serial/decommission", device_decommission, OP(ADMIN),
     "device_decommission_refused"},
    {"POST", "/api/v1/certs/:fingerprint/revoke", cert_revoke, OP(ADMIN), "cert_revoke_refused"},
    /* firmware_*.c: signed firmware (docs/firmware.md) */
    {"POST", "/api/v1/firmware/releases", fw_import, OP_UPLOAD(OPERATOR), "fw_import_refused"},
    {"GET", "/api/v1/firmware/releases", fw_list, OP(VIEWER), "http_refused"},
    {"GET", "/api/v1/firmware/releases/:id", fw_status, OP(VIEWER), "http_refused"},
    {"POST", "/api/v1/firmware/releases/:id/approve", fw_approve, OP(OPERATOR),
     "fw_approve_refused"},
    {"POST", "/api/v1/firmware/releases/:id/withdraw", fw_withdraw, OP(OPERATOR),
     "fw_withdraw_refused"},
    /* rollout_*.c: staged rollouts (docs/firmware.md, "Staged rollouts") */
    {"POST", "/api/v1/firmware/rollouts", fw_rollout_create, OP(OPERATOR), "fw_rollout_refused"},
    {"GET", "/api/v1/firmware/rollouts", fw_rollout_list, OP(VIEWER), "http_refused"},
    {"GET", "/api/v1/firmware/rollouts/:id", fw_rollout_show, OP(VIEWER), "http_refused"},
    {"POST", "/api/v1/firmware/rollouts/:id/pause", fw_rollout_pause, OP(OPERATOR),
     "fw_rollout_refused"},
    {"POST", "/api/v1/firmware/rollouts/:id/resume", fw_rollout_resume, OP(OPERATOR),
     "fw_rollout_refused"},
    {"POST", "/api/v1/firmware/rollouts/:id/abort", fw_rollout_abort, OP(OPERATOR),
     "fw_rollout_refused"},
    {"GET", "/fw/v1/keys", fw_keys_get, ANY, "http_refused"},
    {"GET", "/fw/v1/manifest", fw_manifest_get, DEVICE, "http_refused"},
    {"GET", "/fw/v1/images/:sha256", fw_image_get, DEVICE, "fw_image_refused"},
    {"POST", "/fw/v1/report", fw_report, DEVICE, "http_refused"},
    {NULL, NULL, NULL, HTTPS_PEER_NONE, HTTPS_ROLE_NONE, false, NULL},
};
