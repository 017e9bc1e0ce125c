/*
 * pki_crl.c - the device CA's certificate revocation list (RFC 5280 v2).
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "cms_err.h"
#include "pki_int.h"

#define MAX_NEXT_UPDATE_HOURS (24 * 365)

void pki_crl_free(pki_crl *out)
{
    if (out == NULL)
        return;
    free(out->der);
    free(out->pem);
    memset(out, 0, sizeof(*out));
}

static int reason_code_ok(int r)
{
    /* 7 is unused; 0 (unspecified) is written as no extension */
    return (r >= 1 && r <= 6) || (r >= 8 && r <= 10);
}

/* 1..40 hex digits -> a new positive ASN1_INTEGER, or NULL. */
static ASN1_INTEGER *serial_from_hex(const char *hex)
{
    BIGNUM *bn = NULL;
    ASN1_INTEGER *ai = NULL;
    size_t n;

    if (hex == NULL)
        return NULL;
    n = strlen(hex);
    if (n == 0 || n > 40 || strspn(hex, "0123456789abcdefABCDEF") != n)
        return NULL;
    if (BN_hex2bn(&bn, hex) != (int)n)
        goto cleanup;
    ai = BN_to_ASN1_INTEGER(bn, NULL);
cleanup:
    BN_free(bn);
    return ai;
}

static int add_entry(X509_CRL *crl, const pki_crl_entry *e)
{
    X509_REVOKED *rev = X509_REVOKED_new();
    ASN1_INTEGER *sn = NULL;
    ASN1_TIME *when = NULL;
    ASN1_ENUMERATED *code = NULL;
    int ok = 0;

    if (rev == NULL)
        return 0;
    sn = serial_from_hex(e->serial_hex);
    when = ASN1_TIME_set(NULL, e->revoked_at);
    if (sn == NULL || when == NULL || X509_REVOKED_set_serialNumber(rev, sn) != 1 ||
        X509_REVOKED_set_revocationDate(rev, when) != 1)
        goto cleanup;
    if (e->reason > 0) {
        code = ASN1_ENUMERATED_new();
        if (code == NULL || ASN1_ENUMERATED_set(code, e->reason) != 1 ||
            X509_REVOKED_add1_ext_i2d(rev, NID_crl_reason, code, 0, 0) != 1)
            goto cleanup;
    }
    if (X509_CRL_add0_revoked(crl, rev) != 1)
        goto cleanup;
    rev = NULL; /* now owned by crl */
    ok = 1;
cleanup:
    X509_REVOKED_free(rev);
    ASN1_INTEGER_free(sn);
    ASN1_TIME_free(when);
    ASN1_ENUMERATED_free(code);
    return ok;
}

static int crl_outputs(X509_CRL *crl, pki_crl *out)
{
    unsigned char *der = NULL;
    BIO *mem = NULL;
    int n, rc = CMS_EINTERNAL;

    n = i2d_X509_CRL(crl, &der);
    if (n <= 0)
        goto cleanup;
    out->der = malloc((size_t)n);
    if (out->der == NULL) {
        rc = CMS_ENOMEM;
        goto cleanup;
    }
    memcpy(out->der, der, (size_t)n);
    out->der_len = (size_t)n;
    mem = BIO_new(BIO_s_mem());
    if (mem == NULL) {
        rc = CMS_ENOMEM;
        goto cleanup;
    }
    if (PEM_write_bio_X509_CRL(mem, crl) != 1)
        goto cleanup;
    rc = pki__to_malloc(mem, &out->pem, &out->pem_len);
cleanup:
    OPENSSL_free(der);
    BIO_free(mem);
    return rc;
}

int pki_crl_build(const pki_ca *ca, const pki_crl_entry *entries, size_t n, time_t this_update,
                  unsigned next_update_hours, uint64_t crl_number, pki_crl *out, char *reason,
                  size_t reason_cap)
{
    X509_CRL *crl = NULL;
    X509 *ca_cert;
    ASN1_TIME *t = NULL;
    ASN1_INTEGER *num = NULL;
    X509_EXTENSION *aki = NULL;
    X509V3_CTX v3;
    time_t next;
    int rc = CMS_EINTERNAL;

    memset(out, 0, sizeof(*out));
    if (ca == NULL || (n > 0 && entries == NULL)) {
        pki__reason(reason, reason_cap, "CA is required");
        return CMS_EINVAL;
    }
    if (next_update_hours < 1 || next_update_hours > MAX_NEXT_UPDATE_HOURS) {
        pki__reason(reason, reason_cap, "nextUpdate must be 1 to %d hours ahead",
                    MAX_NEXT_UPDATE_HOURS);
        return CMS_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        ASN1_INTEGER *probe = serial_from_hex(entries[i].serial_hex);
        int valid = probe != NULL;
        ASN1_INTEGER_free(probe);
        if (!valid) {
            ERR_clear_error();
            pki__reason(reason, reason_cap, "entry %zu: serial is not 1 to 40 hex digits", i);
            return CMS_EINVAL;
        }
        if (entries[i].reason > 0 && !reason_code_ok(entries[i].reason)) {
            pki__reason(reason, reason_cap, "entry %zu: bad CRL reason code %d", i,
                        entries[i].reason);
            return CMS_EINVAL;
        }
    }
    if (this_update == 0)
        this_update = time(NULL);
    next = this_update + (time_t)next_update_hours * 3600;
    ca_cert = pki_ca_cert(ca);

    crl = X509_CRL_new();
    if (crl == NULL) {
        rc = CMS_ENOMEM;
        goto cleanup;
    }
    if (X509_CRL_set_version(crl, X509_CRL_VERSION_2) != 1 ||
        X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca_cert)) != 1)
        goto fail;
    t = ASN1_TIME_set(NULL, this_update);
    if (t == NULL || X509_CRL_set1_lastUpdate(crl, t) != 1)
        goto fail;
    if (ASN1_TIME_set(t, next) == NULL || X509_CRL_set1_nextUpdate(crl, t) != 1)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        if (!add_entry(crl, &entries[i]))
            goto fail;
    }
    if (X509_CRL_sort(crl) != 1)
        goto fail;
    num = ASN1_INTEGER_new();
    if (num == NULL || ASN1_INTEGER_set_uint64(num, crl_number) != 1 ||
        X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0) != 1)
        goto fail;
    X509V3_set_ctx(&v3, ca_cert, NULL, NULL, crl, 0);
    aki = X509V3_EXT_nconf_nid(NULL, &v3, NID_authority_key_identifier, "keyid:always");
    if (aki == NULL || X509_CRL_add_ext(crl, aki, -1) != 1)
        goto fail;
    if (X509_CRL_sign(crl, pki__ca_key(ca), pki__sign_md(pki__ca_key(ca))) <= 0)
        goto fail;
    rc = crl_outputs(crl, out);
    if (rc != CMS_OK) {
        pki__reason(reason, reason_cap, "cannot encode the CRL");
        pki_crl_free(out);
    }
    goto cleanup;
fail:
    pki__reason_ssl(reason, reason_cap, "CRL construction failed");
cleanup:
    X509_EXTENSION_free(aki);
    ASN1_INTEGER_free(num);
    ASN1_TIME_free(t);
    X509_CRL_free(crl);
    ERR_clear_error();
    return rc;
}
