/*
 * svc.h - state shared by the HTTPS services of one worker (enrollment,
 * registry, operator API, firmware), and the route table.
 *
 * Thread: one svc_state per worker loop; the pointed-to configuration and
 * keys are read-only and shared by all workers.
 */
#ifndef CMS_SVC_H
#define CMS_SVC_H

#include "config.h"
#include "https.h"
#include "ratelimit.h"
#include "store.h"

struct console_state;
struct events_worker;

typedef struct svc_state {
    const cms_config *cfg; /* borrowed, read-only */
    store_t *store;        /* borrowed: this worker's store */
    net_server *server;    /* borrowed: this worker's connections */
    unsigned worker_id;
    void *est;             /* enrollment service state (svc_est_init), or NULL */
    void *fw;              /* firmware service state (fw_worker, firmware.h), or NULL */
    rl_table *est_limit;   /* borrowed, shared by the workers: simpleenroll requests
                            * per source address; NULL = no limit */
    long long anchor_id;   /* svc_audit_anchor: the chain head last logged (0 = none) */
    const struct console_state *console; /* borrowed, shared read-only: the web console's
                                          * files and CSRF secret (console.h), or NULL */
    struct events_worker *events; /* owned by the worker: its live event streams (events.h),
                                   * or NULL */
} svc_state;

/*
 * Appends an audit row (store_audit) whose detail is the JSON object detail
 * (stolen; NULL allowed, e.g. when json_pack failed). Strings are copied.
 * (server/svc/audit.c, like the two below.) Thread: the store's loop.
 */
void svc_audit(store_t *store, const char *event, const char *actor, const char *device,
               const char *peer, json_t *detail);

/*
 * Reads the audit chain's head and, when it moved since the last call, logs
 * it: event=audit_anchor msg="id=N sha256=HEX". The log leaves the database
 * (journald, syslog, a SIEM): a row whose hash the chain no longer has at that
 * id shows a rewrite that re-hashed the chain, which the chain alone cannot
 * (GET /api/v1/audit/verify?anchor=N:HEX, `cmsctl audit verify --anchor`).
 * Thread: the worker's loop.
 */
void svc_audit_anchor(svc_state *st);

/*
 * Parses an anchor as an operator copies it from that log line: "ID:SHA256",
 * ID in decimal digits (1..LLONG_MAX, no sign, space or leading zero), SHA256
 * as 64 hex digits in either case. On success *id and hex (lower case,
 * NUL-terminated) are set and true returned; otherwise nothing is written.
 */
bool svc_audit_anchor_parse(const char *s, long long *id, char hex[65]);

/* The route table: every HTTPS resource, its handler, who may call it. */
extern const https_route svc_routes[];

/* GET /healthz: 200 {"status":"ok"} when the database is reachable, else 503
 * (server/svc/routes.c). */
int svc_health(https_req *r);

/*
 * Handlers (each returns CMS_OK after answering or CMS_EAGAIN, see https.h;
 * r borrowed; thread: the loop of the worker that owns r's connection).
 * server/svc/est/: EST (RFC 7030) in est.c, enrollment tokens in enroll.c,
 * revocation and the CRL in revocation.c.
 */
int est_cacerts(https_req *r);        /* GET  /.well-known/est/cacerts        anyone */
int est_csrattrs(https_req *r);       /* GET  /.well-known/est/csrattrs       anyone */
int est_simpleenroll(https_req *r);   /* POST /.well-known/est/simpleenroll   token */
int est_simplereenroll(https_req *r); /* POST /.well-known/est/simplereenroll device */
int crl_get(https_req *r);            /* GET  /crl (DER), /crl.pem            anyone */
int enroll_token_create(https_req *r);/* POST /api/v1/enroll/tokens            operator */
int enroll_token_list(https_req *r);  /* GET  /api/v1/enroll/tokens            viewer */
int enroll_token_revoke(https_req *r);/* POST /api/v1/enroll/tokens/:id/revoke operator */
int device_revoke(https_req *r);      /* POST /api/v1/devices/:serial/revoke   admin */
int device_decommission(https_req *r);/* POST /api/v1/devices/:serial/decommission admin */
int cert_revoke(https_req *r);        /* POST /api/v1/certs/:fingerprint/revoke admin */
/* server/svc/admin/: read side of the registry and groups (admin.c), audit (admin_audit.c). */
int admin_device_list(https_req *r);  /* GET  /api/v1/devices                  viewer */
int admin_device_show(https_req *r);  /* GET  /api/v1/devices/:serial          viewer */
int admin_device_certs(https_req *r); /* GET  /api/v1/devices/:serial/certs    viewer */
int admin_group_list(https_req *r);   /* GET  /api/v1/groups                   viewer */
int admin_group_set(https_req *r);    /* POST /api/v1/groups/:name/devices     operator */
int admin_audit_list(https_req *r);   /* GET  /api/v1/audit                    viewer */
int admin_audit_verify(https_req *r); /* GET  /api/v1/audit/verify             viewer */
int admin_whoami(https_req *r);       /* GET  /api/v1/whoami                   viewer */
/* admin_clinical.c: the clinical read side (docs/clinical-data.md, docs/operator-api.md) */
int admin_vitals_latest(https_req *r);   /* GET /api/v1/vitals/latest              viewer */
int admin_alarm_list(https_req *r);      /* GET /api/v1/alarms                     viewer */
int admin_alarm_show(https_req *r);      /* GET /api/v1/alarms/:id                viewer */
int admin_device_trend(https_req *r);    /* GET /api/v1/devices/:serial/trend      viewer */
int admin_device_waveforms(https_req *r);/* GET /api/v1/devices/:serial/waveforms  viewer */

/*
 * Revocation fan-out (server/svc/est/revocation.c): subscribes this worker to the
 * "cms_revocation" NOTIFY channel; on a notification naming a serial, every
 * connection of that device on this worker (MLLP and HTTPS) is closed at
 * once. Returns CMS_OK.
 */
int svc_revocation_init(svc_state *st);

/*
 * Enrollment state (server/svc/est/est.c): loads est_ca_cert/key/chain when
 * configured. Returns CMS_OK (st->est set, or NULL when EST is off) or
 * CMS_EINVAL with a reason in err. Thread: start-up, before the worker's
 * loop runs (blocking file reads).
 */
int svc_est_init(svc_state *st, char *err, size_t cap);
/* Frees st->est (NULL is a no-op) and sets it to NULL. Thread: after the loop ended. */
void svc_est_free(svc_state *st);

#endif
