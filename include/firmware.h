/*
 * firmware.h - the firmware distribution service (svc layer,
 * server/svc/fw/): the keys that sign manifests, per-worker state, and the
 * HTTPS handlers for operators (import, approve, withdraw, list) and
 * devices (keys, manifest, image, report). docs/firmware.md is the trust
 * model this implements.
 *
 * The format itself (descriptors, manifests, signing and the monitor-side
 * verification) is fw_manifest.h, which this header includes; tools that
 * only read or check manifests (tools/cms-fwverify) include fw_manifest.h
 * alone.
 *
 * Keys are loaded once at start-up and then shared read-only by every
 * worker; everything else runs on a worker's loop thread.
 */
#ifndef CMS_FIRMWARE_H
#define CMS_FIRMWARE_H

#include <stddef.h>

#include <openssl/evp.h>
#include <uv.h>

#include "config.h"
#include "fw_manifest.h"
#include "https.h"

struct fw_cache;

/*
 * Keys loaded once at start-up by fw_keys_load(), then shared read-only by
 * every worker; cache (the record of verified image cache files) is shared
 * too, under its own lock. Owns every key and the cache (fw_keys_free()).
 */
typedef struct fw_keys {
    EVP_PKEY *publishers[FW_MAX_KEYS];
    char publisher_ids[FW_MAX_KEYS][65];
    size_t npub;
    EVP_PKEY *dist[2]; /* [0] fw_distribution_key, [1] fw_distribution_key_next */
    char dist_ids[2][65];
    size_t ndist;
    struct fw_cache *cache; /* owned */
} fw_keys;

/*
 * Loads fw_publisher_keys (at most FW_MAX_KEYS public keys), fw_distribution_key
 * and fw_distribution_key_next (Ed25519 private keys; a file open to group or
 * others is refused) from
 * cfg (borrowed, read during the call only) and creates fw_cache_dir
 * (mode 0700) when a distribution key is set. Logs each key's id, never
 * key material.
 *   out  receives the keys (caller owns; fw_keys_free()); never NULL on
 *        CMS_OK, even when firmware is not configured (then import or the
 *        device endpoints answer 503); NULL on failure.
 *   err  receives a reason (cap bytes) on failure.
 * Returns CMS_OK, CMS_EINVAL (unreadable or refused key, duplicate key,
 * too many keys, bad cache directory) or CMS_ENOMEM.
 * Thread: main thread at start-up (blocking file reads).
 */
int fw_keys_load(const cms_config *cfg, fw_keys **out, char *err, size_t cap);

/* Frees k, its keys and its cache record. NULL is a no-op. Thread: main, after
 * every worker that borrowed k was freed. */
void fw_keys_free(fw_keys *k);

/*
 * Per-worker firmware state (for svc_state.fw). keys and cfg are borrowed
 * and must outlive the worker; loop is the worker's loop.
 * Returns NULL on allocation failure.
 * Thread: any, before the loop runs; fw_worker_free() (NULL is a no-op)
 * after the loop ended.
 */
typedef struct fw_worker fw_worker;
fw_worker *fw_worker_new(const fw_keys *keys, const cms_config *cfg, uv_loop_t *loop,
                         unsigned worker_id);
void fw_worker_free(fw_worker *w);

/*
 * Route handlers (server/svc/routes.c lists them with their peer kind and
 * role; server/svc/fw/ holds them). Each follows https_handler (https.h):
 * returns CMS_OK when it already answered, CMS_EAGAIN when it answers later
 * (from a store callback, or by streaming), exactly once. r is borrowed. Thread: the loop of
 * the worker that owns r's connection.
 */
/* Operator API. */
int fw_import(https_req *r);   /* POST /api/v1/firmware/releases              operator */
int fw_list(https_req *r);     /* GET  /api/v1/firmware/releases              viewer */
int fw_status(https_req *r);   /* GET  /api/v1/firmware/releases/:id          viewer */
int fw_approve(https_req *r);  /* POST /api/v1/firmware/releases/:id/approve  operator */
int fw_withdraw(https_req *r); /* POST /api/v1/firmware/releases/:id/withdraw operator */
/* Public key listing. */
int fw_keys_get(https_req *r); /* GET  /fw/v1/keys                            anyone */
/* Device endpoints. */
int fw_manifest_get(https_req *r); /* GET  /fw/v1/manifest?installed=V[&counter=N] device */
int fw_image_get(https_req *r);    /* GET  /fw/v1/images/:sha256                  device */
int fw_report(https_req *r);       /* POST /fw/v1/report                          device */

#endif
