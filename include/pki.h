/*
 * pki.h - the device PKI: CA handle, CSR intake (EST bodies), device
 * certificate issuance, EST encodings (PKCS#7 certs-only), CRL, and the
 * sign/verify primitives used by firmware distribution.
 *
 * Knows nothing of the network, HTTP or SQL: bytes and OpenSSL objects in,
 * bytes and OpenSSL objects out. Every encoding goes through OpenSSL
 * (PEM/DER, base64 via EVP_EncodeUpdate and EVP_DecodeUpdate, PKCS#7, X509_CRL); nothing
 * here parses ASN.1 or base64 by hand.
 *
 * Conventions that hold for every function below unless stated otherwise:
 *  - Returns CMS_OK (0) or a negative cms_err (cms_err.h):
 *      CMS_EPROTO    the input is malformed (bad base64, not a CSR, bad
 *                    signature, bad CN ...);
 *      CMS_EPERM     the input is well formed but refused by policy (weak or
 *                    unsupported key, weak signature digest), or a signature
 *                    does not verify (pki_verify);
 *      CMS_ELIMIT    the input is larger than the documented limit;
 *      CMS_EINVAL    a caller (not peer) argument or a configuration file is
 *                    wrong (bad path, key file readable by others ...);
 *      CMS_ENOMEM    allocation failed;
 *      CMS_EINTERNAL an unexpected OpenSSL failure.
 *    On failure, out-parameters are left NULL / zeroed; nothing to free.
 *  - reason, reason_cap: an optional caller buffer (reason may be NULL)
 *    that receives, on every failure, a short NUL-terminated explanation in
 *    English ("RSA key of 1024 bits is below 2048"). It never contains key
 *    material, so it may be logged, audited and sent to the peer as the
 *    "detail" of an error. PKI_REASON_MAX bytes are always enough.
 *  - Buffers returned through char ** / unsigned char ** are allocated with
 *    malloc() and owned by the caller, who frees them with free().
 *    OpenSSL objects returned are owned by the caller (free with their
 *    OpenSSL *_free function). Pointer arguments are borrowed (read during
 *    the call only, never stored) unless the comment says otherwise.
 *  - The calling thread's OpenSSL error queue is empty on return, so that a
 *    later SSL_get_error() on the same thread is not misled by our errors.
 *  - Thread: any thread. There is no global state; objects passed as const
 *    are only read, so a loaded pki_ca and loaded keys may be shared by all
 *    worker threads at once (OpenSSL 3 EVP_PKEY / X509 are safe for
 *    concurrent read-only use). The functions are CPU-bound (signatures,
 *    RSA verification): do not call them on an event loop for every
 *    message; enrollment-rate use is fine.
 */
#ifndef CMS_PKI_H
#define CMS_PKI_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

/** Enough for every reason string written by this module. */
#define PKI_REASON_MAX 192
/** Longest accepted subject CN (RFC 5280 ub-common-name), in bytes. */
#define PKI_CN_MAX 64
/** Largest EST request body accepted by pki_csr_from_est_body(), in bytes. */
#define PKI_CSR_MAX_BODY 16384
/** Size of a SHA-256 hex string buffer: 64 lowercase hex digits + NUL. */
#define PKI_SHA256_HEX_SIZE 65
/**
 * Size of a serial hex buffer: up to 20 octets (RFC 5280) as lowercase hex,
 * a possible '-' for (non-conforming) negative serials of foreign
 * certificates, NUL.
 */
#define PKI_SERIAL_HEX_SIZE 48
/** Size of an ISO 8601 UTC time buffer: "2026-11-28T06:14:54Z" + NUL. */
#define PKI_ISO_TIME_SIZE 21
/** Longest validity accepted by pki_issue_device_cert(), in days. */
#define PKI_MAX_VALIDITY_DAYS 3650

/* ------------------------------------------------------------------------
 * CA handle
 */

/**
 * An issuing CA: its certificate, private key and chain (issuing CA first,
 * up to and including the self-signed root). Opaque; read-only once built,
 * so one handle may be used by every thread concurrently.
 */
typedef struct pki_ca pki_ca;

/**
 * Loads a CA from PEM files.
 *   cert_pem_path  the issuing CA certificate (the first certificate in the
 *                  file is used). It must be a CA certificate
 *                  (basicConstraints CA:TRUE, keyCertSign if keyUsage is
 *                  present).
 *   key_pem_path   its private key, unencrypted PEM. Refused (CMS_EINVAL)
 *                  if it is not a regular file or if its mode grants any
 *                  permission to group or others (must be 0600 or 0400);
 *                  refused if it does not match the certificate or is not an
 *                  EC P-256/P-384, Ed25519 or RSA >= 2048 key.
 *   chain_pem_path the chain sent to devices (/cacerts): the issuing CA and
 *                  the root, PEM, any order. NULL or "" means the issuing
 *                  certificate alone (then it must be self-signed). If the
 *                  file does not contain the issuing certificate it is
 *                  prepended. The issuing certificate must verify up to a
 *                  self-signed certificate of the chain, at the current time
 *                  (an expired or wrong chain is refused at load).
 *   out            receives the new handle (caller owns; pki_ca_free()).
 * Returns CMS_OK, CMS_EINVAL (unreadable or wrong file, permissions, key
 * mismatch, chain does not verify), CMS_ENOMEM, CMS_EINTERNAL.
 * Thread: any; blocking file reads (start-up or reload, not on a loop).
 */
int pki_ca_load(const char *cert_pem_path, const char *key_pem_path, const char *chain_pem_path,
                pki_ca **out, char *reason, size_t reason_cap);

/**
 * Builds a CA handle from objects already in memory (tests, tools).
 * Takes a new reference to cert and key and copies the chain (the caller
 * keeps its own references). chain may be NULL (then cert alone, which must
 * be self-signed). Same checks as pki_ca_load() except file permissions.
 * Returns CMS_OK, CMS_EINVAL, CMS_ENOMEM, CMS_EINTERNAL.
 */
int pki_ca_new(X509 *cert, EVP_PKEY *key, STACK_OF(X509) * chain, pki_ca **out, char *reason,
               size_t reason_cap);

/** Frees the handle and everything it holds. NULL is a no-op. */
void pki_ca_free(pki_ca *ca);

/**
 * The issuing CA certificate. Borrowed: valid as long as ca; do not free or
 * modify (take X509_up_ref() to keep it longer).
 */
X509 *pki_ca_cert(const pki_ca *ca);

/**
 * The chain, issuing CA first, root last (the /cacerts content). Borrowed:
 * valid as long as ca; do not free or modify.
 */
STACK_OF(X509) * pki_ca_chain(const pki_ca *ca);

/* ------------------------------------------------------------------------
 * CSR intake
 */

/** A certification request that passed every check of pki_csr_from_est_body(). */
typedef struct pki_csr {
    X509_REQ *req;           /**< owned; signature verified */
    char cn[PKI_CN_MAX + 1]; /**< the subject's single CN, printable ASCII */
    char key_desc[32];       /**< "EC P-256", "EC P-384", "Ed25519", "RSA 3072" */
} pki_csr;

/**
 * Parses and checks the body of an EST simpleenroll/simplereenroll request
 * (RFC 7030 application/pkcs10). body need not be NUL-terminated. Accepted:
 *  - base64 of the DER CSR, with or without line breaks or other
 *    whitespace (what RFC 7030 clients and `openssl req -outform DER |
 *    base64` send);
 *  - PEM ("CERTIFICATE REQUEST" or "NEW CERTIFICATE REQUEST");
 *  - raw DER (body starts with a DER SEQUENCE with a long-form length, which
 *    base64 can never start with), for clients that post binary.
 * The DER must be exactly one CSR with no trailing bytes. Checks, in order:
 * size (<= PKI_CSR_MAX_BODY), encoding, structure, version 1, key policy
 * (EC P-256 or P-384 on a named curve, Ed25519, RSA 2048..8192 bits; others
 * refused), signature digest (MD5/SHA-1 refused), the self-signature
 * (X509_REQ_verify), the subject (exactly one CN, 1..PKI_CN_MAX bytes of
 * printable ASCII without leading/trailing space).
 * Only the public key and CN are meant to be used: the CSR's other subject
 * attributes and requested extensions are ignored by issuance.
 *   out  receives a new pki_csr (caller owns; pki_csr_free()).
 * Returns CMS_OK, CMS_ELIMIT (too large), CMS_EPROTO (bad base64, not a
 * CSR, trailing data, bad signature, missing/multiple/bad CN), CMS_EPERM
 * (weak or unsupported key, weak digest), CMS_ENOMEM, CMS_EINTERNAL; with a
 * reason in every case.
 */
int pki_csr_from_est_body(const char *body, size_t len, pki_csr **out, char *reason,
                          size_t reason_cap);

/** Frees a pki_csr. NULL is a no-op. */
void pki_csr_free(pki_csr *csr);

/**
 * Whether s is acceptable as a certificate CN / device serial here:
 * 1..PKI_CN_MAX bytes, printable ASCII (0x20..0x7e), no leading or trailing
 * space. Returns 1 or 0. s may be NULL (0).
 */
int pki_cn_is_valid(const char *s);

/* ------------------------------------------------------------------------
 * Issuance
 */

/** Certificate issued by pki_issue_device_cert(). Free with pki_issued_free(). */
typedef struct pki_issued {
    X509 *cert;         /**< owned */
    unsigned char *der; /**< owned (free()); DER encoding */
    size_t der_len;
    char *pem;                             /**< owned (free()); PEM, NUL-terminated */
    size_t pem_len;                        /**< strlen(pem) */
    char fingerprint[PKI_SHA256_HEX_SIZE]; /**< SHA-256 of the DER, lowercase hex */
    char serial_hex[PKI_SERIAL_HEX_SIZE];  /**< as pki_cert_serial_hex() */
    char not_before[PKI_ISO_TIME_SIZE];    /**< "YYYY-MM-DDTHH:MM:SSZ" */
    char not_after[PKI_ISO_TIME_SIZE];
    time_t not_before_epoch;
    time_t not_after_epoch;
} pki_issued;

/**
 * Issues a device (TLS client) certificate for the CSR's public key.
 *   ca            borrowed, read only.
 *   csr           borrowed; a pki_csr from pki_csr_from_est_body(). Only its
 *                 public key is used: no subject or extension content of the
 *                 CSR is copied.
 *   serial_cn     the device serial; the subject is exactly CN=serial_cn.
 *                 Must satisfy pki_cn_is_valid() (else CMS_EINVAL). Whether
 *                 it must equal csr->cn is the caller's policy.
 *   validity_days 1..PKI_MAX_VALIDITY_DAYS (else CMS_EINVAL).
 *   now           the issuance time; 0 means time(NULL) (a past value makes
 *                 expired certificates for test PKIs).
 *   out           filled in; release with pki_issued_free() on success.
 * The certificate: X.509 v3, a random positive 159-bit serial, issuer = the
 * CA's subject, notBefore = now - 5 min, notAfter = now + validity_days
 * (clamped to the CA's own notAfter), basicConstraints CA:FALSE (critical),
 * keyUsage digitalSignature (+ keyAgreement for EC keys) (critical),
 * extendedKeyUsage clientAuth, subjectKeyIdentifier, authorityKeyIdentifier
 * (keyid). Signed with the CA key: SHA-256 for EC and RSA CA keys, pure
 * EdDSA for an Ed25519 CA key.
 * Returns CMS_OK, CMS_EINVAL, CMS_ENOMEM, CMS_EINTERNAL.
 */
int pki_issue_device_cert(const pki_ca *ca, const pki_csr *csr, const char *serial_cn,
                          unsigned validity_days, time_t now, pki_issued *out, char *reason,
                          size_t reason_cap);

/** Frees what out holds and zeroes it. NULL or a zeroed struct is a no-op. */
void pki_issued_free(pki_issued *out);

/* ------------------------------------------------------------------------
 * EST encodings
 */

/**
 * Builds the body of an EST certs-only response (RFC 7030 4.1.3 and 4.2.3,
 * Content-Type "application/pkcs7-mime; smime-type=certs-only"): the
 * base64 (64-column lines, '\n'-terminated) of a DER degenerate PKCS#7
 * SignedData holding certs[0..n-1] in order, no signers, no CRLs.
 *   certs  n >= 1 borrowed certificates (e.g. pki_ca_chain() for /cacerts,
 *          the issued certificate for simpleenroll).
 *   out    receives the NUL-terminated body (free()); out_len its strlen
 *          (out_len may be NULL).
 * Returns CMS_OK, CMS_EINVAL (n == 0, NULL cert), CMS_ENOMEM, CMS_EINTERNAL.
 */
int pki_pkcs7_certs_only_base64(X509 *const *certs, size_t n, char **out, size_t *out_len);

/** Same as pki_pkcs7_certs_only_base64() with the certificates of a stack. */
int pki_pkcs7_stack_base64(STACK_OF(X509) * certs, char **out, size_t *out_len);

/**
 * The reverse, for EST clients (cms-monitor) and tests: parses a certs-only
 * body (base64 with any whitespace, or PEM "PKCS7") of at most max_len
 * bytes and returns its certificates in order.
 *   out  receives a new stack (caller owns; sk_X509_pop_free(s, X509_free)).
 * Returns CMS_OK, CMS_ELIMIT, CMS_EPROTO (bad base64, not PKCS#7
 * SignedData, no certificates), CMS_ENOMEM, CMS_EINTERNAL.
 */
int pki_pkcs7_certs_parse(const char *body, size_t len, size_t max_len, STACK_OF(X509) * *out,
                          char *reason, size_t reason_cap);

/* ------------------------------------------------------------------------
 * CRL
 */

/** One revoked certificate for pki_crl_build(). */
typedef struct pki_crl_entry {
    const char *serial_hex; /**< borrowed; 1..40 hex digits, any case */
    time_t revoked_at;      /**< revocation time, seconds since the epoch */
    int reason;             /**< RFC 5280 CRLReason: 1..6, 8, 9, 10; 0 or
                                 negative = no reasonCode extension
                                 ("unspecified" SHOULD be absent) */
} pki_crl_entry;

/** A CRL built by pki_crl_build(). Free with pki_crl_free(). */
typedef struct pki_crl {
    unsigned char *der; /**< owned (free()) */
    size_t der_len;
    char *pem; /**< owned (free()); NUL-terminated "X509 CRL" PEM */
    size_t pem_len;
} pki_crl;

/**
 * Builds and signs a v2 CRL for the CA.
 *   entries, n        borrowed revoked certificates (n may be 0); sorted by
 *                     serial in the output.
 *   this_update       thisUpdate (0 = now).
 *   next_update_hours nextUpdate = this_update + hours (1..8760).
 *   crl_number        the cRLNumber extension; the caller keeps it
 *                     monotonic (e.g. a database sequence).
 *   out               filled in; release with pki_crl_free() on success.
 * Extensions: cRLNumber, authorityKeyIdentifier (keyid); per entry
 * reasonCode when reason > 0. Signed like certificates (SHA-256, or EdDSA).
 * Returns CMS_OK, CMS_EINVAL (bad serial, reason or hours), CMS_ENOMEM,
 * CMS_EINTERNAL.
 */
int pki_crl_build(const pki_ca *ca, const pki_crl_entry *entries, size_t n, time_t this_update,
                  unsigned next_update_hours, uint64_t crl_number, pki_crl *out, char *reason,
                  size_t reason_cap);

/** Frees what out holds and zeroes it. NULL or a zeroed struct is a no-op. */
void pki_crl_free(pki_crl *out);

/* ------------------------------------------------------------------------
 * Certificate helpers (work on any certificate, e.g. a TLS peer's)
 */

/**
 * SHA-256 of the certificate's DER as 64 lowercase hex digits into out
 * (PKI_SHA256_HEX_SIZE bytes). cert borrowed.
 * Returns CMS_OK, CMS_EINVAL (NULL), CMS_EINTERNAL.
 */
int pki_cert_fingerprint_sha256(const X509 *cert, char out[PKI_SHA256_HEX_SIZE]);

/**
 * The subject's CN into out (cap bytes, at least PKI_CN_MAX + 1). Requires
 * exactly one CN satisfying pki_cn_is_valid().
 * Returns CMS_OK, CMS_EPROTO (no CN, several CNs, or an invalid one),
 * CMS_EINVAL (NULL or cap too small), CMS_ENOMEM.
 */
int pki_cert_cn(const X509 *cert, char *out, size_t cap);

/**
 * The serial number as lowercase hex, two digits per octet, no leading
 * "0x" or colons ("3f0a..."); a negative serial is prefixed with '-'.
 * This is the canonical form stored and passed back to pki_crl_build().
 * Returns CMS_OK, CMS_EINVAL (NULL), CMS_ELIMIT (serial > 20 octets),
 * CMS_ENOMEM.
 */
int pki_cert_serial_hex(const X509 *cert, char out[PKI_SERIAL_HEX_SIZE]);

/**
 * Formats an ASN1_TIME as "YYYY-MM-DDTHH:MM:SSZ" into out and, if epoch is
 * not NULL, as seconds since the epoch. Returns CMS_OK or CMS_EINVAL.
 */
int pki_asn1_time_iso(const ASN1_TIME *t, char out[PKI_ISO_TIME_SIZE], time_t *epoch);

/**
 * The certificate's public key as the registry records it, the same text as
 * pki_csr.key_desc ("EC P-256", "EC P-384", "Ed25519", "RSA 3072"), into out
 * (cap bytes; 32 are enough). cert borrowed. Used where a certificate made
 * outside EST is recorded (cmsctl db device-add --cert).
 * Returns CMS_OK; CMS_EINVAL (NULL, or out too small); CMS_EPERM (no key, or
 * a key the device policy of pki_csr_from_est_body() refuses: weak RSA,
 * another curve; reason says which).
 */
int pki_cert_key_desc(const X509 *cert, char *out, size_t cap, char *reason, size_t reason_cap);

/* ------------------------------------------------------------------------
 * Signing keys (firmware descriptors and manifests)
 *
 * Supported key types: Ed25519 (pure EdDSA over the message, 64-byte
 * signature) and ECDSA P-256 (SHA-256, DER-encoded ECDSA-Sig-Value).
 * Interoperable with:
 *   openssl pkeyutl -sign -rawin -inkey k.pem -in msg -out sig    (Ed25519)
 *   openssl dgst -sha256 -sign k.pem -out sig msg                 (P-256)
 * and the matching -verify commands.
 */

/**
 * Loads an unencrypted PEM private key from a file. Refused (CMS_EINVAL)
 * if the file is not regular, is group/world-accessible, or the key is not
 * Ed25519 or EC P-256. out: caller owns (EVP_PKEY_free).
 * Returns CMS_OK, CMS_EINVAL, CMS_ENOMEM, CMS_EINTERNAL.
 * Thread: any; blocking file read.
 */
int pki_key_load_private(const char *pem_path, EVP_PKEY **out, char *reason, size_t reason_cap);

/**
 * Loads a PEM public key (SubjectPublicKeyInfo, "PUBLIC KEY") from a file
 * (pinned publisher/distribution keys). Only Ed25519 and EC P-256.
 * out: caller owns (EVP_PKEY_free).
 * Returns CMS_OK, CMS_EINVAL (unreadable, not a public key, wrong type),
 * CMS_ENOMEM, CMS_EINTERNAL. Thread: any; blocking file read.
 */
int pki_pubkey_load(const char *pem_path, EVP_PKEY **out, char *reason, size_t reason_cap);

/**
 * Same as pki_pubkey_load() from memory (pem need not be NUL-terminated).
 * Returns CMS_OK, CMS_EPROTO (not a PEM public key), CMS_EPERM (key type
 * not allowed), CMS_ENOMEM, CMS_EINTERNAL.
 */
int pki_pubkey_from_pem(const char *pem, size_t len, EVP_PKEY **out, char *reason,
                        size_t reason_cap);

/**
 * The public key as PEM "PUBLIC KEY" (NUL-terminated, free()). key may be a
 * private key (its public half is written). Returns CMS_OK, CMS_EINVAL,
 * CMS_ENOMEM, CMS_EINTERNAL.
 */
int pki_pubkey_to_pem(EVP_PKEY *key, char **out, size_t *out_len);

/**
 * Key identifier: SHA-256 of the DER SubjectPublicKeyInfo, lowercase hex
 * (same as `openssl pkey -pubin -outform DER | sha256sum`). Stable across
 * PEM re-encodings; used to name pinned keys.
 * Returns CMS_OK, CMS_EINVAL, CMS_EINTERNAL.
 */
int pki_pubkey_id_sha256(EVP_PKEY *key, char out[PKI_SHA256_HEX_SIZE]);

/**
 * Signs data[0..len) with key (Ed25519 or EC P-256, borrowed).
 *   sig  receives the signature (free()), sig_len its length.
 * Returns CMS_OK, CMS_EINVAL (key type not supported), CMS_ENOMEM,
 * CMS_EINTERNAL.
 * Thread: any; one key may sign from several threads at once.
 */
int pki_sign(EVP_PKEY *key, const unsigned char *data, size_t len, unsigned char **sig,
             size_t *sig_len);

/**
 * Verifies sig over data[0..len) with pub (Ed25519 or EC P-256, borrowed;
 * a private key works too).
 * Returns CMS_OK when the signature is valid, CMS_EPERM when it is not (or
 * is malformed), CMS_EINVAL (key type not supported), CMS_EINTERNAL.
 */
int pki_verify(EVP_PKEY *pub, const unsigned char *data, size_t len, const unsigned char *sig,
               size_t sig_len);

/* ------------------------------------------------------------------------
 * Base64 (OpenSSL EVP_Encode / EVP_Decode; shared with firmware JSON)
 */

/**
 * Decodes standard base64 (RFC 4648 alphabet, '=' padding required),
 * ignoring spaces, tabs, CR and LF anywhere. Any other character, bad
 * padding or a truncated quantum is refused.
 *   out receives the bytes (free(); never NULL on success, even for an
 *   empty result), out_len their count.
 * Returns CMS_OK, CMS_EPROTO, CMS_ELIMIT (len > INT_MAX), CMS_ENOMEM.
 */
int pki_base64_decode(const char *in, size_t len, unsigned char **out, size_t *out_len);

/**
 * Encodes as standard base64. lines != 0: 64-column lines each ending in
 * '\n' (PEM/EST style); lines == 0: one line, no '\n' (JSON).
 *   out receives the NUL-terminated text (free()), out_len its strlen
 *   (out_len may be NULL).
 * Returns CMS_OK, CMS_ELIMIT (len too large), CMS_ENOMEM.
 */
int pki_base64_encode(const unsigned char *in, size_t len, int lines, char **out, size_t *out_len);

#endif
