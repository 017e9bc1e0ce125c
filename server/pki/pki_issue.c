/*
 * pki_issue.c - issuance of device (TLS client) certificates. The subject
 * and every extension are ours: only the CSR's public key is used.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "cms_err.h"
#include "pki_int.h"

#define BACKDATE_SECONDS (5 * 60)

void pki_issued_free(pki_issued *out)
{
    if (out == NULL)
        return;
    X509_free(out->cert);
    free(out->der);
    free(out->pem);
    memset(out, 0, sizeof(*out));
}

/* A random positive serial of at most 159 bits (20 octets, top bit clear). */
static int random_serial(X509 *cert)
{
    unsigned char buf[20];
    BIGNUM *bn = NULL;
    ASN1_INTEGER *ai = NULL;
    int ok = 0;

    do {
        if (RAND_bytes(buf, sizeof(buf)) != 1)
            return 0;
        buf[0] &= 0x7f;
    } while (buf[0] == 0); /* keep it 20 octets long; never zero */
    bn = BN_bin2bn(buf, sizeof(buf), NULL);
    if (bn == NULL)
        goto cleanup;
    ai = BN_to_ASN1_INTEGER(bn, NULL);
    if (ai == NULL)
        goto cleanup;
    ok = X509_set_serialNumber(cert, ai);
cleanup:
    ASN1_INTEGER_free(ai);
    BN_free(bn);
    return ok;
}

static int add_ext(X509 *cert, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, ctx, nid, value);
    int ok;

    if (ext == NULL)
        return 0;
    ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok;
}

static int set_subject(X509 *cert, const char *cn)
{
    X509_NAME *name = X509_NAME_new();
    int ok = 0;

    if (name == NULL)
        return 0;
    /* MBSTRING_ASC picks PrintableString when possible, else UTF8String */
    if (X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_ASC, (const unsigned char *)cn,
                                   -1, -1, 0) == 1)
        ok = X509_set_subject_name(cert, name);
    X509_NAME_free(name);
    return ok;
}

/* Encodes cert into out: DER, PEM, fingerprint, serial, times. */
static int fill_outputs(pki_issued *out)
{
    BIO *mem = NULL;
    unsigned char *der = NULL;
    int n, rc = CMS_EINTERNAL;

    n = i2d_X509(out->cert, &der);
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
    if (PEM_write_bio_X509(mem, out->cert) != 1)
        goto cleanup;
    rc = pki__to_malloc(mem, &out->pem, &out->pem_len);
    if (rc != CMS_OK)
        goto cleanup;
    if ((rc = pki_cert_fingerprint_sha256(out->cert, out->fingerprint)) != CMS_OK ||
        (rc = pki_cert_serial_hex(out->cert, out->serial_hex)) != CMS_OK ||
        (rc = pki_asn1_time_iso(X509_get0_notBefore(out->cert), out->not_before,
                                &out->not_before_epoch)) != CMS_OK ||
        (rc = pki_asn1_time_iso(X509_get0_notAfter(out->cert), out->not_after,
                                &out->not_after_epoch)) != CMS_OK)
        goto cleanup;
    rc = CMS_OK;
cleanup:
    OPENSSL_free(der);
    BIO_free(mem);
    return rc;
}

int pki_issue_device_cert(const pki_ca *ca, const pki_csr *csr, const char *serial_cn,
                          unsigned validity_days, time_t now, pki_issued *out, char *reason,
                          size_t reason_cap)
{
    X509 *ca_cert;
    X509 *cert = NULL;
    EVP_PKEY *pub;
    X509V3_CTX v3;
    time_t not_after;
    int rc = CMS_EINTERNAL;

    memset(out, 0, sizeof(*out));
    if (ca == NULL || csr == NULL || csr->req == NULL) {
        pki__reason(reason, reason_cap, "CA and CSR are required");
        return CMS_EINVAL;
    }
    if (!pki_cn_is_valid(serial_cn)) {
        pki__reason(reason, reason_cap, "device serial is not a valid CN");
        return CMS_EINVAL;
    }
    if (validity_days < 1 || validity_days > PKI_MAX_VALIDITY_DAYS) {
        pki__reason(reason, reason_cap, "validity must be 1 to %d days", PKI_MAX_VALIDITY_DAYS);
        return CMS_EINVAL;
    }
    pub = X509_REQ_get0_pubkey(csr->req);
    if (!pki__key_allowed(pub, NULL, 0, reason, reason_cap))
        return CMS_EINVAL; /* a pki_csr always passed it: a caller bug */
    if (now == 0)
        now = time(NULL);
    ca_cert = pki_ca_cert(ca);
    not_after = now + (time_t)validity_days * 86400;
    /* Never outlive the issuer: clamp to the CA's notAfter. */
    if (X509_cmp_time(X509_get0_notAfter(ca_cert), &not_after) < 0) {
        time_t ca_end;
        char iso[PKI_ISO_TIME_SIZE];
        if (pki_asn1_time_iso(X509_get0_notAfter(ca_cert), iso, &ca_end) == CMS_OK)
            not_after = ca_end;
    }

    cert = X509_new();
    if (cert == NULL) {
        rc = CMS_ENOMEM;
        goto cleanup;
    }
    if (X509_set_version(cert, X509_VERSION_3) != 1 || !random_serial(cert) ||
        X509_set_issuer_name(cert, X509_get_subject_name(ca_cert)) != 1 ||
        !set_subject(cert, serial_cn) || X509_set_pubkey(cert, pub) != 1 ||
        X509_time_adj_ex(X509_getm_notBefore(cert), 0, -BACKDATE_SECONDS, &now) == NULL ||
        ASN1_TIME_set(X509_getm_notAfter(cert), not_after) == NULL)
        goto fail;

    X509V3_set_ctx(&v3, ca_cert, cert, NULL, NULL, 0);
    if (!add_ext(cert, &v3, NID_basic_constraints, "critical,CA:FALSE") ||
        !add_ext(cert, &v3, NID_key_usage,
                 EVP_PKEY_is_a(pub, "EC") ? "critical,digitalSignature,keyAgreement"
                                          : "critical,digitalSignature") ||
        !add_ext(cert, &v3, NID_ext_key_usage, "clientAuth") ||
        !add_ext(cert, &v3, NID_subject_key_identifier, "hash") ||
        !add_ext(cert, &v3, NID_authority_key_identifier, "keyid:always"))
        goto fail;

    if (X509_sign(cert, pki__ca_key(ca), pki__sign_md(pki__ca_key(ca))) <= 0)
        goto fail;

    out->cert = cert;
    cert = NULL;
    rc = fill_outputs(out);
    if (rc != CMS_OK) {
        pki__reason(reason, reason_cap, "cannot encode the issued certificate");
        pki_issued_free(out);
    }
    goto cleanup;
fail:
    pki__reason_ssl(reason, reason_cap, "certificate issuance failed");
cleanup:
    X509_free(cert);
    ERR_clear_error();
    return rc;
}
