/*
 * fuzz_csr.c - libFuzzer target for EST request bodies: the bytes a peer
 * posts to /.well-known/est/simpleenroll go through pki_csr_from_est_body;
 * an accepted CSR is then issued a certificate by a CA made at start-up
 * (so issuance sees every key the intake lets through). The same bytes are
 * also fed to pki_pkcs7_certs_parse (what an EST client reads back).
 *
 * Invariants checked (abort on violation):
 *  - success <=> *out set; failure => a non-empty reason, *out NULL;
 *  - the OpenSSL error queue is empty after every call;
 *  - an accepted CSR has a CN that passes pki_cn_is_valid() and issuance
 *    from it succeeds with subject CN = that CN.
 *
 *   make build/fuzz/fuzz_csr && build/fuzz/fuzz_csr tests/fuzz/corpus/csr
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "cms_err.h"
#include "pki.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static pki_ca *ca;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_csr: invariant failed: %s (line %d)\n", #cond, __LINE__);        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void add_ext(X509 *c, int nid, const char *v)
{
    X509V3_CTX ctx;
    X509_EXTENSION *e;

    X509V3_set_ctx(&ctx, c, c, NULL, NULL, 0);
    e = X509V3_EXT_nconf_nid(NULL, &ctx, nid, v);
    CHECK(e != NULL);
    CHECK(X509_add_ext(c, e, -1) == 1);
    X509_EXTENSION_free(e);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *c = X509_new();
    X509_NAME *n = X509_NAME_new();
    char reason[PKI_REASON_MAX];

    (void)argc;
    (void)argv;
    CHECK(key != NULL && c != NULL && n != NULL);
    X509_set_version(c, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(c), 1);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"Fuzz CA", -1, -1, 0);
    X509_set_subject_name(c, n);
    X509_set_issuer_name(c, n);
    X509_gmtime_adj(X509_getm_notBefore(c), -3600);
    X509_gmtime_adj(X509_getm_notAfter(c), 3650L * 86400);
    X509_set_pubkey(c, key);
    add_ext(c, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(c, NID_key_usage, "critical,keyCertSign,cRLSign");
    add_ext(c, NID_subject_key_identifier, "hash");
    CHECK(X509_sign(c, key, EVP_sha256()) > 0);
    CHECK(pki_ca_new(c, key, NULL, &ca, reason, sizeof(reason)) == CMS_OK);
    X509_NAME_free(n);
    X509_free(c);
    EVP_PKEY_free(key);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char reason[PKI_REASON_MAX];
    pki_csr *csr = NULL;
    STACK_OF(X509) *certs = NULL;
    int rc;

    reason[0] = '\0';
    rc = pki_csr_from_est_body((const char *)data, size, &csr, reason, sizeof(reason));
    CHECK(ERR_peek_error() == 0);
    if (rc == CMS_OK) {
        pki_issued iss;
        char cn[PKI_CN_MAX + 1];

        CHECK(csr != NULL && csr->req != NULL);
        CHECK(pki_cn_is_valid(csr->cn));
        rc = pki_issue_device_cert(ca, csr, csr->cn, 30, 0, &iss, reason, sizeof(reason));
        CHECK(rc == CMS_OK);
        CHECK(pki_cert_cn(iss.cert, cn, sizeof(cn)) == CMS_OK);
        CHECK(strcmp(cn, csr->cn) == 0);
        CHECK(X509_verify(iss.cert, X509_get0_pubkey(pki_ca_cert(ca))) == 1);
        CHECK(ERR_peek_error() == 0);
        pki_issued_free(&iss);
        pki_csr_free(csr);
    } else {
        CHECK(rc < 0 && csr == NULL && reason[0] != '\0');
    }

    reason[0] = '\0';
    rc = pki_pkcs7_certs_parse((const char *)data, size, 65536, &certs, reason, sizeof(reason));
    CHECK(ERR_peek_error() == 0);
    if (rc == CMS_OK)
        CHECK(certs != NULL && sk_X509_num(certs) > 0);
    else
        CHECK(certs == NULL && reason[0] != '\0');
    sk_X509_pop_free(certs, X509_free);
    return 0;
}
