/*
 * est_int.h - shared by the enrollment service's files, private to
 * server/svc/est: est.c (EST endpoints and the service state: svc_est_init,
 * svc__est_ca), enroll.c (enrollment tokens, and the helpers below for
 * answers, JSON bodies, SQLSTATEs and bytea parameters) and revocation.c
 * (revocation, its fan-out to the connections, the CRL). The helpers every
 * room shares are in ../svc_int.h.
 *
 * Thread: everything runs on the worker's loop thread; est_state is built by
 * svc_est_init on that thread and read-only afterwards.
 */
#ifndef CMS_SVC_EST_INT_H
#define CMS_SVC_EST_INT_H

#include <stddef.h>
#include <stdint.h>

#include "https.h"
#include "pki.h"
#include "svc.h"
#include "../svc_int.h"

/* svc_state.est when EST is configured (est_ca_cert set). */
typedef struct est_state {
    pki_ca *ca;       /* owned: the device-issuing CA (also signs the CRL) */
    char *cacerts;    /* owned: /cacerts body (base64 PKCS#7 certs-only of the chain) */
    size_t cacerts_len;
    char *csrattrs;   /* owned: /csrattrs body (base64 DER CsrAttrs), or NULL */
    size_t csrattrs_len;
    uint64_t busy_logged_ms; /* last est_busy log line (est.c admit) */
    uint64_t busy_refused;   /* 503s since then */
} est_state;

/* The CA when EST is on, else NULL (est.c). */
pki_ca *svc__est_ca(const svc_state *st);

/*
 * enroll.c: answers r with a JSON error {"error", "detail"}; extra headers may be
 * NULL/0. Safe after the connection closed (then only releases r).
 */
void svc__reply_error(https_req *r, int status, const char *error, const char *detail,
                      const http_field *extra, size_t n_extra);

/*
 * enroll.c: the custom SQLSTATEs of sql/002_enrollment.sql (CE0xx, CN0xx, CV001) as
 * 4xx answers, for svc__db_error (svc_int.h): the function's message is the
 * detail; anything else is a logged 500 or a 503.
 */
extern const svc__sqlstate svc__est_sqlstates[];

/*
 * enroll.c: the request body as a JSON object (an empty body is {}). On error answers
 * r with 400 and returns NULL. The caller owns the result (json_decref).
 */
json_t *svc__json_body(https_req *r);

/*
 * enroll.c: hex for a bytea parameter: "\\x" followed by 2*len hex digits, malloc'd
 * (free()). Returns NULL on allocation failure.
 */
char *svc__bytea_param(const unsigned char *data, size_t len);

/* "\\x" + 64 hex digits + NUL: a SHA-256 as a bytea parameter. */
#define SVC_SHA256_PARAM_SIZE 67

/*
 * enroll.c: SHA-256 of the NUL-terminated text (an enrollment token) as a bytea
 * parameter into out. Returns CMS_OK or CMS_EINTERNAL.
 */
int svc__sha256_param(const char *text, char out[SVC_SHA256_PARAM_SIZE]);

/*
 * revocation.c: regenerates the CRL: new number and revoked list from the database
 * (cms.crl_prepare), signed with the CA, stored (cms.crl_publish). Then
 * cb(ctx, CMS_OK, crl, number), crl borrowed for the call; or cb(ctx, err,
 * NULL, 0) when a step failed (logged). Returns CMS_OK (cb will run once),
 * CMS_EINVAL when this instance has no CA, or a store_query error (cb is
 * not called). cb may be NULL (fire and forget).
 */
typedef void (*svc__crl_cb)(void *ctx, int status, const pki_crl *crl, uint64_t number);
int svc__crl_regenerate(svc_state *st, svc__crl_cb cb, void *ctx);

#endif
