/*
 * pki_sign.c - detached signatures over byte buffers for firmware release
 * descriptors and device manifests: Ed25519 (pure EdDSA) and ECDSA P-256
 * with SHA-256. Keys from PEM; public keys pinned by file or by value.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "cms_err.h"
#include "pki_int.h"

/* 1 if key is Ed25519 or EC P-256 (the only signing keys we accept). */
static int sign_key_ok(const EVP_PKEY *key)
{
    char group[64];
    size_t got = 0;

    if (key == NULL)
        return 0;
    if (EVP_PKEY_is_a(key, "ED25519"))
        return 1;
    if (!EVP_PKEY_is_a(key, "EC"))
        return 0;
    if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                       &got) != 1) {
        ERR_clear_error();
        return 0;
    }
    return strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0;
}

/* NULL digest for EdDSA (one-shot, the message itself is signed). */
static const EVP_MD *sign_md(const EVP_PKEY *key)
{
    return EVP_PKEY_is_a(key, "ED25519") ? NULL : EVP_sha256();
}

int pki_key_load_private(const char *pem_path, EVP_PKEY **out, char *reason, size_t reason_cap)
{
    BIO *bio = NULL;
    EVP_PKEY *key = NULL;
    int rc;

    *out = NULL;
    rc = pki__read_file(pem_path, 1, &bio, reason, reason_cap);
    if (rc != CMS_OK)
        return rc;
    key = PEM_read_bio_PrivateKey(bio, NULL, pki__no_password, NULL);
    if (key == NULL) {
        pki__reason_ssl(reason, reason_cap, "not an unencrypted PEM private key");
        rc = CMS_EINVAL;
        goto cleanup;
    }
    if (!sign_key_ok(key)) {
        pki__reason(reason, reason_cap, "%s: signing key must be Ed25519 or EC P-256", pem_path);
        rc = CMS_EINVAL;
        goto cleanup;
    }
    *out = key;
    key = NULL;
    rc = CMS_OK;
cleanup:
    EVP_PKEY_free(key);
    BIO_free(bio);
    ERR_clear_error();
    return rc;
}

int pki_pubkey_from_pem(const char *pem, size_t len, EVP_PKEY **out, char *reason,
                        size_t reason_cap)
{
    BIO *bio = NULL;
    EVP_PKEY *key = NULL;
    int rc = CMS_EPROTO;

    *out = NULL;
    if (pem == NULL || len == 0 || len > 64 * 1024) {
        pki__reason(reason, reason_cap, "empty or oversized public key PEM");
        return CMS_EPROTO;
    }
    bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL) {
        pki__reason(reason, reason_cap, "out of memory");
        return CMS_ENOMEM;
    }
    key = PEM_read_bio_PUBKEY(bio, NULL, pki__no_password, NULL);
    if (key == NULL) {
        pki__reason_ssl(reason, reason_cap, "not a PEM PUBLIC KEY");
        goto cleanup;
    }
    if (!sign_key_ok(key)) {
        pki__reason(reason, reason_cap, "public key must be Ed25519 or EC P-256");
        rc = CMS_EPERM;
        goto cleanup;
    }
    *out = key;
    key = NULL;
    rc = CMS_OK;
cleanup:
    EVP_PKEY_free(key);
    BIO_free(bio);
    ERR_clear_error();
    return rc;
}

int pki_pubkey_load(const char *pem_path, EVP_PKEY **out, char *reason, size_t reason_cap)
{
    BIO *bio = NULL;
    char *data = NULL;
    char sub[PKI_REASON_MAX];
    long n;
    int rc;

    *out = NULL;
    rc = pki__read_file(pem_path, 0, &bio, reason, reason_cap);
    if (rc != CMS_OK)
        return rc;
    n = BIO_get_mem_data(bio, &data);
    rc = pki_pubkey_from_pem(data, n > 0 ? (size_t)n : 0, out, sub, sizeof(sub));
    if (rc == CMS_EPROTO || rc == CMS_EPERM) {
        pki__reason(reason, reason_cap, "%s: %s", pem_path, sub);
        rc = CMS_EINVAL;
    } else if (rc != CMS_OK) {
        pki__reason(reason, reason_cap, "%s: %s", pem_path, sub);
    }
    BIO_free(bio);
    return rc;
}

int pki_pubkey_to_pem(EVP_PKEY *key, char **out, size_t *out_len)
{
    BIO *mem;
    int rc;

    *out = NULL;
    if (out_len != NULL)
        *out_len = 0;
    if (key == NULL)
        return CMS_EINVAL;
    mem = BIO_new(BIO_s_mem());
    if (mem == NULL)
        return CMS_ENOMEM;
    if (PEM_write_bio_PUBKEY(mem, key) != 1)
        rc = CMS_EINTERNAL;
    else
        rc = pki__to_malloc(mem, out, out_len);
    BIO_free(mem);
    ERR_clear_error();
    return rc;
}

int pki_pubkey_id_sha256(EVP_PKEY *key, char out[PKI_SHA256_HEX_SIZE])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char *der = NULL;
    unsigned char md[32];
    int n;

    out[0] = '\0';
    if (key == NULL)
        return CMS_EINVAL;
    n = i2d_PUBKEY(key, &der);
    if (n <= 0) {
        ERR_clear_error();
        return CMS_EINTERNAL;
    }
    if (EVP_Digest(der, (size_t)n, md, NULL, EVP_sha256(), NULL) != 1) {
        OPENSSL_free(der);
        ERR_clear_error();
        return CMS_EINTERNAL;
    }
    OPENSSL_free(der);
    for (size_t i = 0; i < sizeof(md); i++) {
        out[2 * i] = digits[md[i] >> 4];
        out[2 * i + 1] = digits[md[i] & 0x0f];
    }
    out[64] = '\0';
    return CMS_OK;
}

int pki_sign(EVP_PKEY *key, const unsigned char *data, size_t len, unsigned char **sig,
             size_t *sig_len)
{
    EVP_MD_CTX *ctx = NULL;
    unsigned char *buf = NULL;
    size_t n = 0;
    int rc = CMS_EINTERNAL;

    *sig = NULL;
    *sig_len = 0;
    if (!sign_key_ok(key) || (data == NULL && len > 0))
        return CMS_EINVAL;
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        rc = CMS_ENOMEM;
        goto cleanup;
    }
    /* One-shot EVP_DigestSign: required for Ed25519, fine for ECDSA. */
    if (EVP_DigestSignInit_ex(ctx, NULL, sign_md(key) ? "SHA256" : NULL, NULL, NULL, key, NULL) !=
        1)
        goto cleanup;
    if (EVP_DigestSign(ctx, NULL, &n, data, len) != 1 || n == 0)
        goto cleanup;
    buf = malloc(n);
    if (buf == NULL) {
        rc = CMS_ENOMEM;
        goto cleanup;
    }
    if (EVP_DigestSign(ctx, buf, &n, data, len) != 1)
        goto cleanup;
    *sig = buf;
    *sig_len = n;
    buf = NULL;
    rc = CMS_OK;
cleanup:
    free(buf);
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}

int pki_verify(EVP_PKEY *pub, const unsigned char *data, size_t len, const unsigned char *sig,
               size_t sig_len)
{
    EVP_MD_CTX *ctx = NULL;
    int rc = CMS_EINTERNAL;
    int v;

    if (!sign_key_ok(pub) || (data == NULL && len > 0))
        return CMS_EINVAL;
    if (sig == NULL || sig_len == 0 || sig_len > 1024)
        return CMS_EPERM;
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        rc = CMS_ENOMEM;
        goto cleanup;
    }
    if (EVP_DigestVerifyInit_ex(ctx, NULL, sign_md(pub) ? "SHA256" : NULL, NULL, NULL, pub, NULL) !=
        1)
        goto cleanup;
    v = EVP_DigestVerify(ctx, sig, sig_len, data, len);
    /* 0 = mismatch, negative = malformed signature: both "does not verify" */
    rc = v == 1 ? CMS_OK : CMS_EPERM;
cleanup:
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}
