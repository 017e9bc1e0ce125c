/*
 * pki_int.h - internals shared by the files of server/pki (not a public API;
 * nothing outside server/pki includes it). The public contract is pki.h;
 * its conventions (reason buffers, malloc'd results, empty OpenSSL error
 * queue on return, any thread) hold here too unless stated otherwise.
 */
#ifndef CMS_PKI_INT_H
#define CMS_PKI_INT_H

#include <stddef.h>

#include <openssl/bio.h>
#include <openssl/evp.h>

#include "pki.h"

/*
 * printf-formats into reason (cap bytes, always NUL-terminated, truncated
 * if longer). reason NULL or cap 0: does nothing. Also used to fill the
 * key description buffers of pki__key_allowed().
 */
void pki__reason(char *reason, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Like pki__reason(reason, cap, "%s", what) with the first error of the
 * calling thread's OpenSSL queue appended in parentheses; then clears the
 * queue (always, even when reason is NULL).
 */
void pki__reason_ssl(char *reason, size_t cap, const char *what);

/*
 * The key policy for CSR and CA keys: 1 if key (borrowed) is EC P-256 or
 * P-384 on a named curve, Ed25519, or RSA 2048..8192 with an odd exponent
 * >= 65537; desc (desc_cap >= 32 bytes, may be NULL) then receives
 * "EC P-256", "Ed25519", "RSA 3072" ... Otherwise 0 with a reason (key
 * NULL gives 0 too).
 */
int pki__key_allowed(const EVP_PKEY *key, char *desc, size_t desc_cap, char *reason,
                     size_t reason_cap);

/* The CA's private key (pki_ca.c). Borrowed: valid as long as ca; never NULL. */
EVP_PKEY *pki__ca_key(const pki_ca *ca);

/*
 * The digest for X509_sign / X509_CRL_sign with key: NULL for EdDSA keys
 * (Ed25519, Ed448: the signature covers the message itself), SHA-256 for
 * every other key. Static OpenSSL object: do not free.
 */
const EVP_MD *pki__sign_md(const EVP_PKEY *key);

/*
 * Reads a whole regular file of at most 1 MiB into a new memory BIO (open
 * and fstat on the same descriptor: no window between check and use).
 * is_private: refuses a file with any group/world permission and reads into
 * secure memory (cleansed when freed).
 *   out  receives the BIO (caller owns; BIO_free()); NULL on failure.
 * Returns CMS_OK, CMS_EINVAL (no path, unreadable, not a regular file,
 * permissions, too large; with a reason), CMS_ENOMEM.
 * Thread: any; blocking file read.
 */
int pki__read_file(const char *path, int is_private, BIO **out, char *reason, size_t reason_cap);

/*
 * pem_password_cb that always fails (returns -1), so that reading an
 * encrypted PEM key fails instead of prompting on a terminal.
 */
int pki__no_password(char *buf, int size, int rwflag, void *u);

/*
 * Copies the contents of a memory BIO (borrowed, not drained) into a
 * malloc'd NUL-terminated buffer.
 *   out      receives the buffer (caller frees with free()).
 *   out_len  its length without the NUL (may be NULL).
 * Returns CMS_OK, CMS_ENOMEM, CMS_EINTERNAL (the BIO reports no data length).
 */
int pki__to_malloc(BIO *mem, char **out, size_t *out_len);

#endif
