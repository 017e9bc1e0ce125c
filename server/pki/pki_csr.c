/*
 * pki_csr.c - intake of an EST (RFC 7030) certification request: decode
 * the body (base64 DER, PEM or raw DER), parse, apply the key policy,
 * verify the self-signature, extract the CN. Reads peer bytes: every
 * refusal carries a reason, nothing is trusted before it is checked.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "cms_err.h"
#include "pki_int.h"

void pki_csr_free(pki_csr *csr)
{
    if (csr == NULL)
        return;
    X509_REQ_free(csr->req);
    free(csr);
}

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* PEM armour: returns the DER of the first CERTIFICATE REQUEST block. */
static int decode_pem(const char *body, size_t len, unsigned char **der, size_t *der_len,
                      char *reason, size_t reason_cap)
{
    BIO *bio = BIO_new_mem_buf(body, (int)len);
    unsigned char *data = NULL;
    char *name = NULL;
    long n = 0;
    int rc = CMS_EPROTO;

    *der = NULL;
    if (bio == NULL) {
        pki__reason(reason, reason_cap, "out of memory");
        return CMS_ENOMEM;
    }
    /* PEM_bytes_read_bio also takes "NEW CERTIFICATE REQUEST" for this name */
    /*
     * pki__no_password: an "encrypted" PEM from a peer must fail, not make
     * OpenSSL's default callback prompt on the server's terminal.
     */
    if (PEM_bytes_read_bio(&data, &n, &name, PEM_STRING_X509_REQ, bio, pki__no_password, NULL) !=
            1 ||
        n <= 0) {
        pki__reason_ssl(reason, reason_cap, "PEM body is not a CERTIFICATE REQUEST");
        goto cleanup;
    }
    *der = malloc((size_t)n);
    if (*der == NULL) {
        pki__reason(reason, reason_cap, "out of memory");
        rc = CMS_ENOMEM;
        goto cleanup;
    }
    memcpy(*der, data, (size_t)n);
    *der_len = (size_t)n;
    rc = CMS_OK;
cleanup:
    OPENSSL_free(data);
    OPENSSL_free(name);
    BIO_free(bio);
    ERR_clear_error();
    return rc;
}

/* Turns the body into DER bytes (malloc'd). */
static int body_to_der(const char *body, size_t len, unsigned char **der, size_t *der_len,
                       char *reason, size_t reason_cap)
{
    size_t i = 0;
    int rc;

    while (i < len && is_ws(body[i]))
        i++;
    if (i == len) {
        pki__reason(reason, reason_cap, "empty body");
        return CMS_EPROTO;
    }
    if (len - i >= 11 && memcmp(body + i, "-----BEGIN ", 11) == 0)
        return decode_pem(body + i, len - i, der, der_len, reason, reason_cap);
    /*
     * Raw DER: a SEQUENCE (0x30) with a long-form length (0x81..0x84).
     * The second byte is not ASCII, so this never matches base64 text.
     */
    if (len >= 2 && (unsigned char)body[0] == 0x30 && (unsigned char)body[1] >= 0x81 &&
        (unsigned char)body[1] <= 0x84) {
        *der = malloc(len);
        if (*der == NULL) {
            pki__reason(reason, reason_cap, "out of memory");
            return CMS_ENOMEM;
        }
        memcpy(*der, body, len);
        *der_len = len;
        return CMS_OK;
    }
    rc = pki_base64_decode(body, len, der, der_len);
    if (rc == CMS_ENOMEM) {
        pki__reason(reason, reason_cap, "out of memory");
        return rc;
    }
    if (rc != CMS_OK) {
        pki__reason(reason, reason_cap, "body is not valid base64 (nor PEM)");
        return CMS_EPROTO;
    }
    if (*der_len == 0) {
        free(*der);
        *der = NULL;
        pki__reason(reason, reason_cap, "empty body");
        return CMS_EPROTO;
    }
    return CMS_OK;
}

/* MD5, SHA-1 and older digests are refused for the CSR signature. */
static int sig_digest_ok(const X509_REQ *req, char *reason, size_t reason_cap)
{
    int sig_nid = X509_REQ_get_signature_nid(req);
    int md_nid = NID_undef, pk_nid = NID_undef;

    if (!OBJ_find_sigid_algs(sig_nid, &md_nid, &pk_nid)) {
        pki__reason(reason, reason_cap, "unknown CSR signature algorithm");
        return 0;
    }
    switch (md_nid) {
    case NID_md2:
    case NID_md4:
    case NID_md5:
    case NID_sha1:
    case NID_md5_sha1:
    case NID_mdc2:
    case NID_ripemd160:
        pki__reason(reason, reason_cap, "CSR signed with a weak digest (%s)", OBJ_nid2sn(md_nid));
        return 0;
    default:
        return 1;
    }
}

/* Exactly one CN, valid per pki_cn_is_valid(). */
static int subject_cn(const X509_REQ *req, char *out, char *reason, size_t reason_cap)
{
    const X509_NAME *name = X509_REQ_get_subject_name(req);
    unsigned char *utf8 = NULL;
    int idx, n, rc = CMS_EPROTO;

    idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
    if (idx < 0) {
        pki__reason(reason, reason_cap, "CSR subject has no CN");
        goto cleanup;
    }
    if (X509_NAME_get_index_by_NID(name, NID_commonName, idx) >= 0) {
        pki__reason(reason, reason_cap, "CSR subject has more than one CN");
        goto cleanup;
    }
    n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx)));
    if (n < 0) {
        pki__reason(reason, reason_cap, "CSR subject CN is not a valid string");
        goto cleanup;
    }
    if (n == 0 || n > PKI_CN_MAX) {
        pki__reason(reason, reason_cap, "CSR subject CN must be 1 to %d bytes (got %d)", PKI_CN_MAX,
                    n);
        goto cleanup;
    }
    if (memchr(utf8, '\0', (size_t)n) != NULL) {
        pki__reason(reason, reason_cap, "CSR subject CN contains a NUL byte");
        goto cleanup;
    }
    memcpy(out, utf8, (size_t)n);
    out[n] = '\0';
    if (!pki_cn_is_valid(out)) {
        out[0] = '\0';
        pki__reason(reason, reason_cap,
                    "CSR subject CN must be printable ASCII without leading/trailing spaces");
        goto cleanup;
    }
    rc = CMS_OK;
cleanup:
    OPENSSL_free(utf8);
    return rc;
}

int pki_csr_from_est_body(const char *body, size_t len, pki_csr **out, char *reason,
                          size_t reason_cap)
{
    unsigned char *der = NULL;
    const unsigned char *p;
    size_t der_len = 0;
    X509_REQ *req = NULL;
    EVP_PKEY *pub;
    pki_csr *csr = NULL;
    int rc;

    *out = NULL;
    if (body == NULL || len == 0) {
        pki__reason(reason, reason_cap, "empty body");
        return CMS_EPROTO;
    }
    if (len > PKI_CSR_MAX_BODY) {
        pki__reason(reason, reason_cap, "CSR body of %zu bytes exceeds the %d-byte limit", len,
                    PKI_CSR_MAX_BODY);
        return CMS_ELIMIT;
    }
    rc = body_to_der(body, len, &der, &der_len, reason, reason_cap);
    if (rc != CMS_OK)
        goto cleanup;

    rc = CMS_EPROTO;
    p = der;
    req = d2i_X509_REQ(NULL, &p, (long)der_len);
    if (req == NULL) {
        pki__reason(reason, reason_cap, "body is not a PKCS#10 certification request");
        goto cleanup;
    }
    if (p != der + der_len) {
        pki__reason(reason, reason_cap, "trailing bytes after the certification request");
        goto cleanup;
    }
    if (X509_REQ_get_version(req) != X509_REQ_VERSION_1) {
        pki__reason(reason, reason_cap, "unsupported CSR version %ld", X509_REQ_get_version(req));
        goto cleanup;
    }
    pub = X509_REQ_get0_pubkey(req);
    if (pub == NULL) {
        pki__reason(reason, reason_cap, "CSR public key cannot be decoded");
        goto cleanup;
    }
    csr = calloc(1, sizeof(*csr));
    if (csr == NULL) {
        pki__reason(reason, reason_cap, "out of memory");
        rc = CMS_ENOMEM;
        goto cleanup;
    }
    /* Policy before the signature check: cheaper, and a clearer reason. */
    if (!pki__key_allowed(pub, csr->key_desc, sizeof(csr->key_desc), reason, reason_cap)) {
        rc = CMS_EPERM;
        goto cleanup;
    }
    if (!sig_digest_ok(req, reason, reason_cap)) {
        rc = CMS_EPERM;
        goto cleanup;
    }
    if (X509_REQ_verify(req, pub) != 1) {
        pki__reason(reason, reason_cap, "CSR signature does not verify");
        goto cleanup;
    }
    rc = subject_cn(req, csr->cn, reason, reason_cap);
    if (rc != CMS_OK)
        goto cleanup;
    csr->req = req;
    req = NULL;
    *out = csr;
    csr = NULL;
    rc = CMS_OK;
cleanup:
    pki_csr_free(csr);
    X509_REQ_free(req);
    free(der);
    ERR_clear_error();
    return rc;
}
