/*
 * firmware.h - signed firmware distribution (svc layer): release
 * descriptors, per-device manifests, the keys that sign them, and the
 * HTTPS handlers. docs/firmware.md is the trust model this implements.
 *
 * Two halves:
 *  - pure functions over bytes (firmware_meta.c): parse a publisher's
 *    release descriptor, build the signed body of a manifest, parse and
 *    verify a manifest as a monitor must. Shared by cmsd, the reference
 *    verifier (tools/cms-fwverify), the unit tests and the fuzz target.
 *    No I/O, no global state; any thread.
 *  - the service (firmware_keys.c, firmware_admin.c, firmware_device.c,
 *    firmware_image.c): keys loaded once at start-up and shared read-only
 *    by every worker, per-worker state, route handlers.
 *
 * Canonical bytes: nothing is ever re-serialized before a signature check.
 * The publisher signs the descriptor file's exact bytes; the distribution
 * key signs the exact bytes carried base64-encoded in the manifest's
 * "signed" member. A verifier checks the signature over the decoded bytes
 * first, and only then parses them.
 */
#ifndef CMS_FIRMWARE_H
#define CMS_FIRMWARE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/evp.h>
#include <uv.h>

#include "config.h"
#include "https.h"

#define FW_DESCRIPTOR_FORMAT "cms-fw-descriptor/1"
#define FW_MANIFEST_FORMAT "cms-fw-manifest/1"
#define FW_SIGNED_TYPE "cms-fw-manifest-signed/1"

#define FW_DESCRIPTOR_MAX 4096u /* descriptor bytes */
#define FW_SIG_MAX 256u         /* signature bytes (Ed25519 64, P-256 DER <= 72) */
#define FW_MANIFEST_MAX 65536u  /* manifest document bytes */
#define FW_MODEL_MAX 64u        /* model: 1..64 printable ASCII, no leading/trailing space */
#define FW_VERSION_MAX 20u      /* "MAJOR.MINOR.PATCH" */
#define FW_SERIAL_MAX 64u
#define FW_NOTES_MAX 1024u
#define FW_MAX_KEYS 8u              /* pinned keys of one kind */
#define FW_MAX_SIGNATURES 4u        /* signatures in one manifest */
#define FW_MAX_VALIDITY_S 86400     /* a manifest valid longer than this is refused */
#define FW_CLOCK_SKEW_S 300         /* issued_at may be this far in the future */
#define FW_CHUNK_BYTES (1u << 20)   /* image bytes per database row */
#define FW_BLOCK_BYTES (256u << 10) /* verification/serving block of the local cache */

/* ---- versions ------------------------------------------------------------------ */

/*
 * Parses a version "MAJOR.MINOR.PATCH": three decimal components 0..999999
 * without leading zeros (except "0"), nothing else. *num (may be NULL) gets
 * MAJOR*10^12 + MINOR*10^6 + PATCH, so that versions compare as numbers.
 * Returns CMS_OK or CMS_EPROTO.
 */
int fw_version_parse(const char *s, uint64_t *num);

/* ---- descriptors ---------------------------------------------------------------- */

/*
 * A publisher's release descriptor, a JSON object with exactly these members
 * (any other member, a duplicate, a wrong type or a trailing byte refuses it):
 *   "format": "cms-fw-descriptor/1", "model": string, "version": string,
 *   "security_counter": 0..4294967295, "sha256": 64 lowercase hex digits,
 *   "length": 1..2^53, and optionally "notes": string (<= 1024 bytes).
 */
typedef struct fw_descriptor {
    char model[FW_MODEL_MAX + 1];
    char version[FW_VERSION_MAX + 1];
    uint64_t version_num;
    uint32_t security_counter;
    uint8_t sha256[32];
    char sha256_hex[65];
    uint64_t length;
} fw_descriptor;

/*
 * Parses descriptor bytes (not NUL-terminated; at most FW_DESCRIPTOR_MAX).
 * Call it only on bytes whose signature was verified. Returns CMS_OK,
 * CMS_ELIMIT (too large) or CMS_EPROTO, with a reason in why.
 */
int fw_descriptor_parse(const unsigned char *buf, size_t len, fw_descriptor *out, char *why,
                        size_t cap);

/* 1 if s is acceptable as a model name (see FW_MODEL_MAX), else 0. */
int fw_model_is_valid(const char *s);

/* ---- manifests ------------------------------------------------------------------- */

/*
 * The content of a manifest's signed body (see docs/firmware.md for the
 * JSON). Parsed by fw_manifest_signed_parse(); built by fw_manifest_build().
 */
typedef struct fw_manifest {
    char serial[FW_SERIAL_MAX + 1];
    char model[FW_MODEL_MAX + 1];
    char installed_version[FW_VERSION_MAX + 1];
    uint64_t installed_num;
    char target_version[FW_VERSION_MAX + 1];
    uint64_t target_num;
    uint32_t security_counter;
    uint8_t sha256[32];
    char sha256_hex[65];
    uint64_t length;
    char download[128];
    int64_t release_id;
    unsigned char *descriptor; /* owned (fw_manifest_clear) */
    size_t descriptor_len;
    unsigned char *publisher_sig; /* owned */
    size_t publisher_sig_len;
    char publisher_keyid[65];
    int64_t issued_at, expires_at; /* seconds since the epoch */
    uint64_t manifest_counter;
} fw_manifest;

/* Frees what m owns and zeroes it. */
void fw_manifest_clear(fw_manifest *m);

/*
 * Builds a manifest document: the signed body from m (every field used,
 * descriptor/publisher_sig borrowed), signed by each of keys[0..nkeys)
 * (Ed25519, borrowed). *out: NUL-terminated JSON (free()), *out_len its
 * length. Returns CMS_OK, CMS_EINVAL, CMS_ENOMEM, CMS_EINTERNAL.
 */
int fw_manifest_build(const fw_manifest *m, EVP_PKEY *const *keys, size_t nkeys, char **out,
                      size_t *out_len);

/* One signature of a manifest document. */
typedef struct fw_signature {
    char keyid[65];
    unsigned char sig[FW_SIG_MAX];
    size_t sig_len;
} fw_signature;

/*
 * Splits a manifest document (at most FW_MANIFEST_MAX bytes) into the
 * signed bytes (*signed_buf, free()) and its signatures (at most
 * FW_MAX_SIGNATURES). Nothing inside the signed bytes is looked at.
 * Returns CMS_OK, CMS_ELIMIT, CMS_EPROTO, CMS_ENOMEM, with a reason.
 */
int fw_manifest_split(const char *doc, size_t len, unsigned char **signed_buf, size_t *signed_len,
                      fw_signature *sigs, size_t *nsigs, char *why, size_t cap);

/*
 * Parses signed bytes (call only after their signature was verified) into
 * out (fw_manifest_clear() it afterwards, also on error). Checks syntax
 * and internal consistency only, not the device's facts.
 * Returns CMS_OK, CMS_EPROTO, CMS_ENOMEM, with a reason.
 */
int fw_manifest_signed_parse(const unsigned char *buf, size_t len, fw_manifest *out, char *why,
                             size_t cap);

/* What a monitor knows about itself, and pins, when it verifies a manifest. */
typedef struct fw_device_facts {
    const char *serial;
    const char *model;
    const char *installed_version;
    uint32_t security_counter;      /* of the firmware it runs */
    uint64_t last_manifest_counter; /* highest counter of a manifest it accepted */
    int64_t now;                    /* its clock, seconds since the epoch */
    uint64_t max_image_bytes;       /* what it can store; 0 = no limit */
    EVP_PKEY *const *dist_keys;     /* pinned distribution public keys (borrowed) */
    size_t ndist;
    EVP_PKEY *const *publisher_keys; /* pinned publisher public keys (borrowed) */
    size_t npub;
} fw_device_facts;

/*
 * Everything a monitor must check about a manifest before it downloads,
 * in the order of docs/firmware.md: a valid signature by a pinned
 * distribution key over the signed bytes, then (parsed) the binding to this
 * device (serial, model, installed version), the validity window against
 * dev->now, the manifest counter (strictly above the last accepted), the
 * publisher's signature over the embedded descriptor by a pinned publisher
 * key, the descriptor matching the target (model, version, counter, hash,
 * length), no rollback (target version above installed, counter not
 * below), and the length within the device's storage. On CMS_OK out holds
 * the manifest (fw_manifest_clear() it in every case).
 * Returns CMS_OK, or CMS_EPERM (refused) / CMS_EPROTO (malformed) /
 * CMS_ELIMIT / CMS_ENOMEM with the reason in why.
 */
int fw_manifest_verify(const char *doc, size_t len, const fw_device_facts *dev, fw_manifest *out,
                       char *why, size_t cap);

/* Formats t as "YYYY-MM-DDTHH:MM:SSZ" (21 bytes with NUL). */
void fw_time_format(int64_t t, char out[21]);
/* Parses exactly that format. Returns CMS_OK or CMS_EPROTO. */
int fw_time_parse(const char *s, int64_t *out);

/* Lowercase hex of n bytes into out (2n+1 bytes). */
void fw_hex(const uint8_t *in, size_t n, char *out);
/* Decodes exactly 2n hex digits (either case) into out. Returns CMS_OK or CMS_EPROTO. */
int fw_unhex(const char *in, size_t in_len, uint8_t *out, size_t n);

/* ---- service ---------------------------------------------------------------------- */

struct fw_cache;

/* Keys and settings loaded once at start-up, then shared read-only by workers;
 * cache (the record of verified cache files) is shared too, under its own lock. */
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
 * Loads fw_publisher_keys, fw_distribution_key and fw_distribution_key_next
 * and creates fw_cache_dir (mode 0700) when the distribution key is set.
 * Keys are never logged. *out (fw_keys_free) is never NULL on CMS_OK, even
 * when firmware is not configured (then import or the device endpoints
 * answer 503). Returns CMS_OK or CMS_EINVAL with a reason.
 * Thread: main thread at start-up (blocking file reads).
 */
int fw_keys_load(const cms_config *cfg, fw_keys **out, char *err, size_t cap);
void fw_keys_free(fw_keys *k);

/*
 * Per-worker firmware state (for svc_state.fw): the shared keys, cache record
 * and config (borrowed), and the loop.
 * Returns NULL on allocation failure. fw_worker_free after the loop ended.
 */
typedef struct fw_worker fw_worker;
fw_worker *fw_worker_new(const fw_keys *keys, const cms_config *cfg, uv_loop_t *loop,
                         unsigned worker_id);
void fw_worker_free(fw_worker *w);

/* Operator API (firmware_admin.c). */
int fw_import(https_req *r);   /* POST /api/v1/firmware/releases              operator */
int fw_list(https_req *r);     /* GET  /api/v1/firmware/releases              viewer */
int fw_status(https_req *r);   /* GET  /api/v1/firmware/releases/:id          viewer */
int fw_approve(https_req *r);  /* POST /api/v1/firmware/releases/:id/approve  operator */
int fw_withdraw(https_req *r); /* POST /api/v1/firmware/releases/:id/withdraw operator */
int fw_keys_get(https_req *r); /* GET  /fw/v1/keys                            anyone */
/* Device endpoints (firmware_device.c, firmware_image.c). */
int fw_manifest_get(https_req *r); /* GET  /fw/v1/manifest?installed=V[&counter=N] device */
int fw_image_get(https_req *r);    /* GET  /fw/v1/images/:sha256                  device */
int fw_report(https_req *r);       /* POST /fw/v1/report                          device */

#endif
