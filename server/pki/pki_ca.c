/*
 * pki_ca.c - the issuing CA handle: certificate, private key and chain,
 * checked once at load and read-only afterwards.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "cms_err.h"
#include "pki_int.h"

struct pki_ca {
    X509 *cert;             /* owned */
    EVP_PKEY *key;          /* owned */
    STACK_OF(X509) * chain; /* owned, issuing CA first */
};

void pki_ca_free(pki_ca *ca)
{
    if (ca == NULL)
        return;
    X509_free(ca->cert);
    EVP_PKEY_free(ca->key);
    sk_X509_pop_free(ca->chain, X509_free);
    free(ca);
}

X509 *pki_ca_cert(const pki_ca *ca)
{
    return ca->cert;
}

STACK_OF(X509) * pki_ca_chain(const pki_ca *ca)
{
    return ca->chain;
}

EVP_PKEY *pki__ca_key(const pki_ca *ca)
{
    return ca->key;
}

static int is_self_signed(X509 *c)
{
    /* verify_signature = 1: a self-issued intermediate is not a root */
    return X509_self_signed(c, 1) == 1;
}

/*
 * Orders the chain issuing CA first and checks that the issuing
 * certificate verifies up to a self-signed certificate of the chain now.
 */
static int check_chain(pki_ca *ca, char *reason, size_t reason_cap)
{
    X509_STORE *store = NULL;
    X509_STORE_CTX *vctx = NULL;
    STACK_OF(X509) *untrusted = NULL;
    int idx = -1, roots = 0;
    int rc = CMS_ENOMEM;

    for (int i = 0; i < sk_X509_num(ca->chain); i++) {
        if (X509_cmp(sk_X509_value(ca->chain, i), ca->cert) == 0) {
            idx = i;
            break;
        }
    }
    if (idx < 0) {
        if (!X509_up_ref(ca->cert))
            goto cleanup;
        if (!sk_X509_unshift(ca->chain, ca->cert)) {
            X509_free(ca->cert);
            goto cleanup;
        }
    } else if (idx > 0) {
        X509 *c = sk_X509_delete(ca->chain, idx);
        if (!sk_X509_unshift(ca->chain, c)) {
            X509_free(c);
            goto cleanup;
        }
    }
    store = X509_STORE_new();
    untrusted = sk_X509_new_null();
    vctx = X509_STORE_CTX_new();
    if (store == NULL || untrusted == NULL || vctx == NULL)
        goto cleanup;
    for (int i = 0; i < sk_X509_num(ca->chain); i++) {
        X509 *c = sk_X509_value(ca->chain, i);
        if (is_self_signed(c)) {
            if (!X509_STORE_add_cert(store, c))
                goto cleanup;
            roots++;
        } else if (!sk_X509_push(untrusted, c)) {
            goto cleanup;
        }
    }
    ERR_clear_error();
    if (roots == 0) {
        pki__reason(reason, reason_cap,
                    "CA chain has no self-signed root certificate (chain file must hold "
                    "the issuing CA and its root)");
        rc = CMS_EINVAL;
        goto cleanup;
    }
    if (!X509_STORE_CTX_init(vctx, store, ca->cert, untrusted))
        goto cleanup;
    if (X509_verify_cert(vctx) != 1) {
        pki__reason(reason, reason_cap, "CA certificate does not verify against its chain: %s",
                    X509_verify_cert_error_string(X509_STORE_CTX_get_error(vctx)));
        rc = CMS_EINVAL;
        goto cleanup;
    }
    rc = CMS_OK;
cleanup:
    if (rc == CMS_ENOMEM)
        pki__reason(reason, reason_cap, "out of memory");
    X509_STORE_CTX_free(vctx);
    X509_STORE_free(store);
    sk_X509_free(untrusted); /* borrowed references only */
    ERR_clear_error();
    return rc;
}

/* Takes ownership of cert, key and chain (any may be NULL on error paths). */
static int ca_build(X509 *cert, EVP_PKEY *key, STACK_OF(X509) * chain, pki_ca **out, char *reason,
                    size_t reason_cap)
{
    pki_ca *ca;
    uint32_t ku;
    int rc;

    ca = calloc(1, sizeof(*ca));
    if (ca == NULL) {
        X509_free(cert);
        EVP_PKEY_free(key);
        sk_X509_pop_free(chain, X509_free);
        pki__reason(reason, reason_cap, "out of memory");
        return CMS_ENOMEM;
    }
    ca->cert = cert;
    ca->key = key;
    ca->chain = chain;
    if (ca->chain == NULL && (ca->chain = sk_X509_new_null()) == NULL) {
        rc = CMS_ENOMEM;
        pki__reason(reason, reason_cap, "out of memory");
        goto fail;
    }
    rc = CMS_EINVAL;
    if (X509_check_ca(cert) < 1) {
        pki__reason(reason, reason_cap, "certificate is not a CA certificate");
        goto fail;
    }
    ku = X509_get_key_usage(cert);
    if (ku != UINT32_MAX && (ku & KU_KEY_CERT_SIGN) == 0) {
        pki__reason(reason, reason_cap, "CA certificate keyUsage lacks keyCertSign");
        goto fail;
    }
    if (!pki__key_allowed(key, NULL, 0, reason, reason_cap))
        goto fail;
    if (X509_check_private_key(cert, key) != 1) {
        pki__reason(reason, reason_cap, "CA private key does not match the CA certificate");
        goto fail;
    }
    rc = check_chain(ca, reason, reason_cap);
    if (rc != CMS_OK)
        goto fail;
    *out = ca;
    ERR_clear_error();
    return CMS_OK;
fail:
    pki_ca_free(ca);
    ERR_clear_error();
    return rc;
}

int pki_ca_new(X509 *cert, EVP_PKEY *key, STACK_OF(X509) * chain, pki_ca **out, char *reason,
               size_t reason_cap)
{
    STACK_OF(X509) *copy = NULL;

    *out = NULL;
    if (cert == NULL || key == NULL) {
        pki__reason(reason, reason_cap, "CA certificate and key are required");
        return CMS_EINVAL;
    }
    if (chain != NULL && (copy = X509_chain_up_ref(chain)) == NULL) {
        ERR_clear_error();
        pki__reason(reason, reason_cap, "out of memory");
        return CMS_ENOMEM;
    }
    if (!X509_up_ref(cert)) {
        sk_X509_pop_free(copy, X509_free);
        return CMS_EINTERNAL;
    }
    if (!EVP_PKEY_up_ref(key)) {
        X509_free(cert);
        sk_X509_pop_free(copy, X509_free);
        return CMS_EINTERNAL;
    }
    return ca_build(cert, key, copy, out, reason, reason_cap);
}

/* Reads every certificate of a PEM file; at least one. */
static int read_certs(const char *path, STACK_OF(X509) * *out, char *reason, size_t reason_cap)
{
    STACK_OF(X509) *sk = NULL;
    BIO *bio = NULL;
    X509 *c;
    int rc;

    *out = NULL;
    rc = pki__read_file(path, 0, &bio, reason, reason_cap);
    if (rc != CMS_OK)
        return rc;
    sk = sk_X509_new_null();
    if (sk == NULL) {
        rc = CMS_ENOMEM;
        goto cleanup;
    }
    while ((c = PEM_read_bio_X509(bio, NULL, pki__no_password, NULL)) != NULL) {
        if (!sk_X509_push(sk, c)) {
            X509_free(c);
            rc = CMS_ENOMEM;
            goto cleanup;
        }
    }
    /* The loop ends with PEM_R_NO_START_LINE at end of file; anything else is a bad file. */
    if (ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE || sk_X509_num(sk) == 0) {
        pki__reason_ssl(reason, reason_cap,
                        sk_X509_num(sk) == 0 ? "no PEM certificate in file"
                                             : "bad PEM certificate");
        rc = CMS_EINVAL;
        goto cleanup;
    }
    *out = sk;
    sk = NULL;
    rc = CMS_OK;
cleanup:
    if (rc == CMS_ENOMEM)
        pki__reason(reason, reason_cap, "out of memory");
    sk_X509_pop_free(sk, X509_free);
    BIO_free(bio);
    ERR_clear_error();
    return rc;
}

int pki_ca_load(const char *cert_pem_path, const char *key_pem_path, const char *chain_pem_path,
                pki_ca **out, char *reason, size_t reason_cap)
{
    STACK_OF(X509) *certs = NULL, *chain = NULL;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    BIO *bio = NULL;
    char sub[PKI_REASON_MAX];
    int rc;

    *out = NULL;
    rc = read_certs(cert_pem_path, &certs, sub, sizeof(sub));
    if (rc != CMS_OK) {
        pki__reason(reason, reason_cap, "CA certificate: %s", sub);
        goto cleanup;
    }
    cert = sk_X509_shift(certs);
    rc = pki__read_file(key_pem_path, 1, &bio, sub, sizeof(sub));
    if (rc != CMS_OK) {
        pki__reason(reason, reason_cap, "CA key: %s", sub);
        goto cleanup;
    }
    /* pki__no_password: an encrypted key fails instead of prompting. */
    key = PEM_read_bio_PrivateKey(bio, NULL, pki__no_password, NULL);
    if (key == NULL) {
        pki__reason_ssl(sub, sizeof(sub), "not an unencrypted PEM private key");
        pki__reason(reason, reason_cap, "CA key %s: %s", key_pem_path, sub);
        rc = CMS_EINVAL;
        goto cleanup;
    }
    if (chain_pem_path != NULL && chain_pem_path[0] != '\0') {
        rc = read_certs(chain_pem_path, &chain, sub, sizeof(sub));
        if (rc != CMS_OK) {
            pki__reason(reason, reason_cap, "CA chain: %s", sub);
            goto cleanup;
        }
    }
    rc = ca_build(cert, key, chain, out, reason, reason_cap);
    cert = NULL;
    key = NULL;
    chain = NULL;
cleanup:
    sk_X509_pop_free(certs, X509_free);
    sk_X509_pop_free(chain, X509_free);
    X509_free(cert);
    EVP_PKEY_free(key);
    BIO_free_all(bio);
    ERR_clear_error();
    return rc;
}
