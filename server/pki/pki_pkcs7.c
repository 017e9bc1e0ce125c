/*
 * pki_pkcs7.c - EST certs-only bodies (RFC 7030 4.1.3, 4.2.3): base64 of a
 * degenerate PKCS#7 SignedData (certificates, no signers), both ways.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>

#include "cms_err.h"
#include "pki_int.h"

int pki_pkcs7_certs_only_base64(X509 *const *certs, size_t n, char **out, size_t *out_len)
{
    PKCS7 *p7 = NULL;
    unsigned char *der = NULL;
    int der_len;
    int rc = CMS_EINTERNAL;

    *out = NULL;
    if (out_len != NULL)
        *out_len = 0;
    if (certs == NULL || n == 0)
        return CMS_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (certs[i] == NULL)
            return CMS_EINVAL;
    }
    p7 = PKCS7_new();
    if (p7 == NULL) {
        rc = CMS_ENOMEM;
        goto cleanup;
    }
    /* SignedData, version 1, empty digestAlgorithms and signerInfos,
     * encapsulated content type id-data with no content. */
    if (PKCS7_set_type(p7, NID_pkcs7_signed) != 1 || PKCS7_content_new(p7, NID_pkcs7_data) != 1)
        goto cleanup;
    for (size_t i = 0; i < n; i++) {
        /* PKCS7_add_certificate takes its own reference */
        if (PKCS7_add_certificate(p7, certs[i]) != 1)
            goto cleanup;
    }
    der_len = i2d_PKCS7(p7, &der);
    if (der_len <= 0)
        goto cleanup;
    rc = pki_base64_encode(der, (size_t)der_len, 1, out, out_len);
cleanup:
    OPENSSL_free(der);
    PKCS7_free(p7);
    ERR_clear_error();
    return rc;
}

int pki_pkcs7_stack_base64(STACK_OF(X509) * certs, char **out, size_t *out_len)
{
    X509 **arr;
    int n;
    int rc;

    *out = NULL;
    if (out_len != NULL)
        *out_len = 0;
    n = certs != NULL ? sk_X509_num(certs) : 0;
    if (n <= 0)
        return CMS_EINVAL;
    arr = calloc((size_t)n, sizeof(*arr));
    if (arr == NULL)
        return CMS_ENOMEM;
    for (int i = 0; i < n; i++)
        arr[i] = sk_X509_value(certs, i);
    rc = pki_pkcs7_certs_only_base64(arr, (size_t)n, out, out_len);
    free(arr);
    return rc;
}

int pki_pkcs7_certs_parse(const char *body, size_t len, size_t max_len, STACK_OF(X509) * *out,
                          char *reason, size_t reason_cap)
{
    unsigned char *der = NULL;
    size_t der_len = 0;
    const unsigned char *p;
    PKCS7 *p7 = NULL;
    STACK_OF(X509) * certs, *copy = NULL;
    BIO *bio = NULL;
    size_t i = 0;
    int rc = CMS_EPROTO;

    *out = NULL;
    if (body == NULL || len == 0) {
        pki__reason(reason, reason_cap, "empty body");
        return CMS_EPROTO;
    }
    if (len > max_len || len > INT32_MAX) {
        pki__reason(reason, reason_cap, "PKCS#7 body of %zu bytes exceeds the limit", len);
        return CMS_ELIMIT;
    }
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n'))
        i++;
    if (len - i >= 11 && memcmp(body + i, "-----BEGIN ", 11) == 0) {
        bio = BIO_new_mem_buf(body + i, (int)(len - i));
        if (bio == NULL) {
            rc = CMS_ENOMEM;
            goto cleanup;
        }
        p7 = PEM_read_bio_PKCS7(bio, NULL, pki__no_password, NULL);
        if (p7 == NULL) {
            pki__reason(reason, reason_cap, "PEM body is not PKCS7");
            goto cleanup;
        }
    } else {
        rc = pki_base64_decode(body, len, &der, &der_len);
        if (rc != CMS_OK) {
            if (rc != CMS_ENOMEM)
                pki__reason(reason, reason_cap, "body is not valid base64");
            goto cleanup;
        }
        rc = CMS_EPROTO;
        p = der;
        p7 = d2i_PKCS7(NULL, &p, (long)der_len);
        if (p7 == NULL || p != der + der_len) {
            pki__reason(reason, reason_cap, "body is not a DER PKCS#7 structure");
            goto cleanup;
        }
    }
    if (!PKCS7_type_is_signed(p7) || p7->d.sign == NULL) {
        pki__reason(reason, reason_cap, "PKCS#7 is not SignedData");
        goto cleanup;
    }
    certs = p7->d.sign->cert;
    if (certs == NULL || sk_X509_num(certs) == 0) {
        pki__reason(reason, reason_cap, "PKCS#7 holds no certificate");
        goto cleanup;
    }
    copy = X509_chain_up_ref(certs);
    if (copy == NULL) {
        rc = CMS_ENOMEM;
        goto cleanup;
    }
    *out = copy;
    rc = CMS_OK;
cleanup:
    if (rc == CMS_ENOMEM)
        pki__reason(reason, reason_cap, "out of memory");
    PKCS7_free(p7);
    BIO_free(bio);
    free(der);
    ERR_clear_error();
    return rc;
}
