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
#include "store.h"

typedef struct svc_state {
    const cms_config *cfg; /* borrowed, read-only */
    store_t *store;        /* borrowed: this worker's store */
    net_server *server;    /* borrowed: this worker's connections */
    unsigned worker_id;
    void *est;             /* enrollment service state (est.c), or NULL */
    void *fw;              /* firmware service state (firmware.c), or NULL */
} svc_state;

/* The route table: every HTTPS resource, its handler, who may call it. */
extern const https_route svc_routes[];

/* GET /healthz: 200 {"status":"ok"} when the database is reachable, else 503. */
int svc_health(https_req *r);

#endif
