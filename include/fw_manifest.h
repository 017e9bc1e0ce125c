/*
 * fw_manifest.h - the firmware distribution format (proto layer): a
 * publisher's release descriptor, the per-device manifest (its signed body
 * and the document around it), and what a monitor checks before it
 * downloads. docs/firmware.md is the trust model and the JSON this encodes.
 *
 * Pure functions over bytes (server/proto/fw_manifest.c): no I/O, no global
 * state, no configuration. Shared by cmsd's firmware service (firmware.h),
 * the reference verifier tools/cms-fwverify, the unit tests and the fuzz
 * target. Signatures go through pki.h (pki_sign, pki_verify).
 *
 * Canonical bytes: nothing is ever re-serialized before a signature check.
 * The publisher signs the descriptor file's exact bytes; the distribution
 * key signs the exact bytes carried base64-encoded in the manifest's
 * "signed" member. A verifier checks the signature over the decoded bytes
 * first, and only then parses them.
 *
 * Conventions for every function below unless stated otherwise:
 *  - Returns CMS_OK (0) or a negative cms_err (cms_err.h): CMS_EPROTO
 *    (malformed input), CMS_ELIMIT (input over its documented limit),
 *    CMS_EPERM (well formed but refused: a signature or a check failed),
 *    CMS_EINVAL (a caller argument is wrong), CMS_ENOMEM, CMS_EINTERNAL.
 *  - why, cap: a caller buffer (cap > 0) that receives a short
 *    NUL-terminated English reason on every failure (truncated to cap); it
 *    never holds key material and may be logged or sent to a peer.
 *  - Input buffers need not be NUL-terminated; every pointer argument is
 *    borrowed (read during the call only) unless the comment says otherwise.
 *  - Thread: any, concurrently; EVP_PKEY arguments are only read (OpenSSL 3
 *    keys may be shared between threads). Signing and verification are
 *    CPU-bound (one Ed25519 signature or verification per key).
 */
#ifndef CMS_FW_MANIFEST_H
#define CMS_FW_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

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
#define FW_MAX_KEYS 8u          /* pinned keys of one kind (service and verifiers) */
#define FW_MAX_SIGNATURES 4u    /* signatures in one manifest */
#define FW_MAX_VALIDITY_S 86400 /* a manifest valid longer than this is refused */
#define FW_CLOCK_SKEW_S 300     /* issued_at may be this far in the future */

/* ---- versions ------------------------------------------------------------------ */

/*
 * Parses a version "MAJOR.MINOR.PATCH" (s NUL-terminated, may be NULL):
 * three decimal components 0..999999 without leading zeros (except "0"),
 * nothing else. *num (num may be NULL) gets MAJOR*10^12 + MINOR*10^6 +
 * PATCH, so that versions compare as numbers; untouched on failure.
 * Returns CMS_OK or CMS_EPROTO (no reason).
 */
int fw_version_parse(const char *s, uint64_t *num);

/* ---- descriptors ---------------------------------------------------------------- */

/*
 * A publisher's release descriptor, a JSON object with exactly these members
 * (any other member, a duplicate, a wrong type or a trailing byte refuses it):
 *   "format": "cms-fw-descriptor/1", "model": string, "version": string,
 *   "security_counter": 0..4294967295, "sha256": 64 lowercase hex digits,
 *   "length": 1..2^53, and optionally "notes": string (<= 1024 bytes; checked,
 *   not kept). Plain values: nothing to free.
 */
typedef struct fw_descriptor {
    char model[FW_MODEL_MAX + 1];
    char version[FW_VERSION_MAX + 1];
    uint64_t version_num; /* as fw_version_parse() */
    uint32_t security_counter;
    uint8_t sha256[32];
    char sha256_hex[65];
    uint64_t length;
} fw_descriptor;

/*
 * Parses descriptor bytes (at most FW_DESCRIPTOR_MAX) into *out (zeroed
 * first; complete only on CMS_OK). Call it only on bytes whose publisher
 * signature was verified. Returns CMS_OK, CMS_ELIMIT (too large) or
 * CMS_EPROTO, with a reason in why.
 */
int fw_descriptor_parse(const unsigned char *buf, size_t len, fw_descriptor *out, char *why,
                        size_t cap);

/*
 * 1 if s (NUL-terminated, may be NULL) is acceptable as a model name:
 * 1..FW_MODEL_MAX printable ASCII bytes (0x20..0x7e), no leading or trailing
 * space. Else 0.
 */
int fw_model_is_valid(const char *s);

/* ---- manifests ------------------------------------------------------------------- */

/*
 * The content of a manifest's signed body (see docs/firmware.md for the
 * JSON). Filled by fw_manifest_signed_parse() and fw_manifest_verify();
 * read by fw_manifest_build(). descriptor and publisher_sig are owned by
 * the struct when it was filled by this module (release with
 * fw_manifest_clear()); a caller that fills it for fw_manifest_build() owns
 * what it puts there.
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
    char download[128]; /* "/fw/v1/images/<sha256_hex>" */
    int64_t release_id;
    unsigned char *descriptor; /* the publisher's exact descriptor bytes (malloc) */
    size_t descriptor_len;
    unsigned char *publisher_sig; /* the publisher's signature over them (malloc) */
    size_t publisher_sig_len;
    char publisher_keyid[65];      /* pki_pubkey_id_sha256() of the publisher key */
    int64_t issued_at, expires_at; /* seconds since the epoch */
    uint64_t manifest_counter;
} fw_manifest;

/* free()s m->descriptor and m->publisher_sig and zeroes *m. A zeroed struct is a no-op. */
void fw_manifest_clear(fw_manifest *m);

/*
 * Builds a manifest document: the signed body from m (every field used,
 * download included; m and its buffers borrowed), serialized once (compact,
 * sorted keys), and signed by each of keys[0..nkeys) (1..FW_MAX_SIGNATURES
 * Ed25519 private keys, borrowed).
 *   out      receives the NUL-terminated JSON document (caller frees with
 *            free()); NULL on failure.
 *   out_len  its strlen (may be NULL).
 * m is not checked: the caller builds it from values it already checked.
 * Returns CMS_OK, CMS_EINVAL (nkeys out of range, a key not Ed25519),
 * CMS_ENOMEM, CMS_EINTERNAL (a signature failed). No reason.
 */
int fw_manifest_build(const fw_manifest *m, EVP_PKEY *const *keys, size_t nkeys, char **out,
                      size_t *out_len);

/* One signature of a manifest document (plain values: nothing to free). */
typedef struct fw_signature {
    char keyid[65]; /* as sent: a verifier compares it with pinned key ids */
    unsigned char sig[FW_SIG_MAX];
    size_t sig_len;
} fw_signature;

/*
 * Splits a manifest document (at most FW_MANIFEST_MAX bytes) into the
 * signed bytes and its signatures. Nothing inside the signed bytes is
 * looked at.
 *   signed_buf, signed_len  receive the decoded signed bytes (caller frees
 *                           with free()); *signed_buf is NULL on failure.
 *   sigs                    caller array of FW_MAX_SIGNATURES entries.
 *   nsigs                   receives how many were filled (1.. on CMS_OK).
 * Returns CMS_OK, CMS_ELIMIT, CMS_EPROTO, CMS_ENOMEM, with a reason.
 */
int fw_manifest_split(const char *doc, size_t len, unsigned char **signed_buf, size_t *signed_len,
                      fw_signature *sigs, size_t *nsigs, char *why, size_t cap);

/*
 * Parses signed bytes (call only after their signature was verified) into
 * *out (zeroed first; fw_manifest_clear() it afterwards, also on error:
 * it may own buffers then). Checks syntax and internal consistency only
 * (download names the target hash), not the device's facts.
 * Returns CMS_OK, CMS_EPROTO, CMS_ENOMEM, with a reason.
 */
int fw_manifest_signed_parse(const unsigned char *buf, size_t len, fw_manifest *out, char *why,
                             size_t cap);

/* What a monitor knows about itself, and pins, when it verifies a manifest. */
typedef struct fw_device_facts {
    const char *serial;             /* borrowed */
    const char *model;              /* borrowed */
    const char *installed_version;  /* borrowed; MAJOR.MINOR.PATCH */
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
 * below), and the length within the device's storage.
 *   dev  borrowed, read only.
 *   out  zeroed first; on CMS_OK it holds the manifest. fw_manifest_clear()
 *        it in every case (it may own buffers after a failure too).
 * Returns CMS_OK, or with the reason in why: CMS_EPERM (refused: no valid
 * pinned signature, another device, expired, replayed, rollback, too
 * large ...), CMS_EPROTO (malformed), CMS_ELIMIT (document too large),
 * CMS_EINVAL (dev->installed_version is not a version), CMS_ENOMEM.
 */
int fw_manifest_verify(const char *doc, size_t len, const fw_device_facts *dev, fw_manifest *out,
                       char *why, size_t cap);

/* ---- encodings shared with the service ------------------------------------------- */

/*
 * Formats t (seconds since the epoch, UTC) as "YYYY-MM-DDTHH:MM:SSZ" into
 * out (21 bytes with the NUL); a time outside years 0..9999 gives
 * "invalid-time".
 */
void fw_time_format(int64_t t, char out[21]);

/*
 * Parses exactly that format (s NUL-terminated, may be NULL; a date that
 * does not exist, e.g. February 30, is refused) into *out.
 * Returns CMS_OK or CMS_EPROTO (*out untouched).
 */
int fw_time_parse(const char *s, int64_t *out);

/* Lowercase hex of in[0..n) into out (2n+1 bytes, NUL-terminated). */
void fw_hex(const uint8_t *in, size_t n, char *out);

/*
 * Decodes exactly 2n hex digits (either case) from in[0..in_len) into
 * out[0..n) (in_len must be 2n). Branch-free table lookup: it is on the
 * image download path (docs/benchmarks.md P5).
 * Returns CMS_OK or CMS_EPROTO (wrong length or a non-hex byte; out may
 * then hold garbage).
 */
int fw_unhex(const char *in, size_t in_len, uint8_t *out, size_t n);

#endif
