/*
 * test_pki.c - unit tests of the pki module (cmocka). CAs, keys and CSRs
 * are made here with the OpenSSL API; where the openssl command is
 * available, CSRs made by `openssl req` and the outputs checked by
 * `openssl pkcs7`, `openssl verify -crl_check` and `openssl pkeyutl` too.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "cms_err.h"
#include "pki.h"

/* ------------------------------------------------------------------------
 * fixtures: a root CA, a device (issuing) CA under it, a temp directory
 */

static char tmpdir[64];
static EVP_PKEY *root_key, *ca_key;
static X509 *root_cert, *ca_cert;
static pki_ca *ca;

static EVP_PKEY *keygen(const char *type, const char *param)
{
    EVP_PKEY *k;

    if (strcmp(type, "RSA") == 0)
        k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)atoi(param));
    else if (strcmp(type, "EC") == 0)
        k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", param);
    else
        k = EVP_PKEY_Q_keygen(NULL, NULL, type);
    assert_non_null(k);
    return k;
}

static void add_ext(X509 *c, X509 *issuer, int nid, const char *v)
{
    X509V3_CTX ctx;
    X509_EXTENSION *e;

    X509V3_set_ctx(&ctx, issuer, c, NULL, NULL, 0);
    e = X509V3_EXT_nconf_nid(NULL, &ctx, nid, v);
    assert_non_null(e);
    assert_int_equal(X509_add_ext(c, e, -1), 1);
    X509_EXTENSION_free(e);
}

/* A CA certificate for key, signed by issuer/issuer_key (NULL: self-signed). */
static X509 *make_ca_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
                          long days)
{
    X509 *c = X509_new();
    X509_NAME *n = X509_NAME_new();

    assert_non_null(c);
    X509_set_version(c, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(c), 4242);
    X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC, (const unsigned char *)"CMS Test", -1, -1, 0);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_subject_name(c, n);
    X509_set_issuer_name(c, issuer ? X509_get_subject_name(issuer) : n);
    X509_NAME_free(n);
    X509_gmtime_adj(X509_getm_notBefore(c), -3600);
    X509_gmtime_adj(X509_getm_notAfter(c), days * 86400);
    X509_set_pubkey(c, key);
    add_ext(c, issuer ? issuer : c, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(c, issuer ? issuer : c, NID_key_usage, "critical,keyCertSign,cRLSign");
    add_ext(c, issuer ? issuer : c, NID_subject_key_identifier, "hash");
    if (issuer)
        add_ext(c, issuer, NID_authority_key_identifier, "keyid:always");
    assert_true(
        X509_sign(c, issuer_key ? issuer_key : key,
                  EVP_PKEY_is_a(issuer_key ? issuer_key : key, "ED25519") ? NULL : EVP_sha256()) >
        0);
    return c;
}

static STACK_OF(X509) * chain_of(X509 *a, X509 *b)
{
    STACK_OF(X509) *sk = sk_X509_new_null();
    sk_X509_push(sk, a);
    if (b)
        sk_X509_push(sk, b);
    return sk; /* borrowed references: free with sk_X509_free */
}

static int setup_all(void **state)
{
    STACK_OF(X509) * chain;
    char reason[PKI_REASON_MAX];

    (void)state;
    strcpy(tmpdir, "/tmp/test_pki.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    root_key = keygen("EC", "P-384");
    root_cert = make_ca_cert(root_key, "CMS Test Root", NULL, NULL, 3650);
    ca_key = keygen("EC", "P-256");
    ca_cert = make_ca_cert(ca_key, "CMS Test Device CA", root_cert, root_key, 1825);
    chain = chain_of(root_cert, ca_cert); /* any order: pki puts the issuing CA first */
    assert_int_equal(pki_ca_new(ca_cert, ca_key, chain, &ca, reason, sizeof(reason)), CMS_OK);
    sk_X509_free(chain);
    return 0;
}

static int teardown_all(void **state)
{
    char cmd[128];

    (void)state;
    pki_ca_free(ca);
    X509_free(root_cert);
    X509_free(ca_cert);
    EVP_PKEY_free(root_key);
    EVP_PKEY_free(ca_key);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return 0;
}

static void write_file(const char *name, const void *data, size_t len, mode_t mode, char *path_out)
{
    char path[256];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    assert_int_equal(chmod(path, mode), 0);
    if (path_out)
        strcpy(path_out, path);
}

static char *pem_of_cert(X509 *c)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *p, *copy;
    long n;

    PEM_write_bio_X509(b, c);
    n = BIO_get_mem_data(b, &p);
    copy = calloc(1, (size_t)n + 1);
    memcpy(copy, p, (size_t)n);
    BIO_free(b);
    return copy;
}

static char *pem_of_key(EVP_PKEY *k)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *p, *copy;
    long n;

    PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
    n = BIO_get_mem_data(b, &p);
    copy = calloc(1, (size_t)n + 1);
    memcpy(copy, p, (size_t)n);
    BIO_free(b);
    return copy;
}

static int have_openssl_cli(void)
{
    return system("openssl version >/dev/null 2>&1") == 0;
}

/* ------------------------------------------------------------------------
 * CSR builders
 */

/* DER CSR for key with CN=cn (cn NULL: no CN), optional extra subject and ext. */
static unsigned char *make_csr_der(EVP_PKEY *key, const char *cn, int evil_extras, int *len)
{
    X509_REQ *req = X509_REQ_new();
    X509_NAME *n = X509_NAME_new();
    unsigned char *der = NULL;

    X509_REQ_set_version(req, X509_REQ_VERSION_1);
    if (evil_extras)
        X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC, (const unsigned char *)"Evil Corp", -1, -1,
                                   0);
    if (cn)
        X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_REQ_set_subject_name(req, n);
    X509_NAME_free(n);
    X509_REQ_set_pubkey(req, key);
    if (evil_extras) {
        STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
        X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, NULL, NID_basic_constraints, "CA:TRUE");
        sk_X509_EXTENSION_push(exts, e);
        e = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, "DNS:evil.example");
        sk_X509_EXTENSION_push(exts, e);
        X509_REQ_add_extensions(req, exts);
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    }
    assert_true(X509_REQ_sign(req, key,
                              EVP_PKEY_is_a(key, "ED25519") || EVP_PKEY_is_a(key, "ED448")
                                  ? NULL
                                  : EVP_sha256()) > 0);
    *len = i2d_X509_REQ(req, &der);
    assert_true(*len > 0);
    X509_REQ_free(req);
    return der;
}

/* base64 with 64-column line breaks, as `base64` and RFC 7030 clients send */
static char *b64_lines(const unsigned char *der, int len)
{
    char *out = NULL;
    assert_int_equal(pki_base64_encode(der, (size_t)len, 1, &out, NULL), CMS_OK);
    return out;
}

static pki_csr *csr_ok(EVP_PKEY *key, const char *cn)
{
    int len;
    unsigned char *der = make_csr_der(key, cn, 0, &len);
    char *body = b64_lines(der, len);
    char reason[PKI_REASON_MAX] = "";
    pki_csr *csr = NULL;

    assert_int_equal(pki_csr_from_est_body(body, strlen(body), &csr, reason, sizeof(reason)),
                     CMS_OK);
    free(body);
    OPENSSL_free(der);
    return csr;
}

static int csr_refused(const char *body, size_t len, char *reason)
{
    pki_csr *csr = (pki_csr *)0x1;
    int rc;

    reason[0] = '\0';
    rc = pki_csr_from_est_body(body, len, &csr, reason, PKI_REASON_MAX);
    assert_null(csr);
    assert_true(rc < 0);
    assert_true(strlen(reason) > 0);
    /* the OpenSSL error queue is left clean for the TLS layer */
    assert_int_equal(ERR_peek_error(), 0);
    return rc;
}

/* ------------------------------------------------------------------------
 * CA loading
 */

static void test_ca_load_files_and_key_permissions(void **state)
{
    char cert_path[256], key_path[256], chain_path[256];
    char reason[PKI_REASON_MAX];
    char *cert_pem = pem_of_cert(ca_cert), *root_pem = pem_of_cert(root_cert);
    char *key_pem = pem_of_key(ca_key);
    char chain[8192];
    pki_ca *loaded = NULL;

    (void)state;
    snprintf(chain, sizeof(chain), "%s%s", root_pem, cert_pem);
    write_file("ca.pem", cert_pem, strlen(cert_pem), 0644, cert_path);
    write_file("ca.key", key_pem, strlen(key_pem), 0644, key_path);
    write_file("chain.pem", chain, strlen(chain), 0644, chain_path);

    /* world-readable key: refused with a reason that says why */
    assert_int_equal(pki_ca_load(cert_path, key_path, chain_path, &loaded, reason, sizeof(reason)),
                     CMS_EINVAL);
    assert_null(loaded);
    assert_non_null(strstr(reason, "group or others"));
    /* group-readable only: still refused */
    assert_int_equal(chmod(key_path, 0640), 0);
    assert_int_equal(pki_ca_load(cert_path, key_path, chain_path, &loaded, reason, sizeof(reason)),
                     CMS_EINVAL);

    assert_int_equal(chmod(key_path, 0600), 0);
    assert_int_equal(pki_ca_load(cert_path, key_path, chain_path, &loaded, reason, sizeof(reason)),
                     CMS_OK);
    assert_non_null(loaded);
    assert_int_equal(X509_cmp(pki_ca_cert(loaded), ca_cert), 0);
    assert_int_equal(sk_X509_num(pki_ca_chain(loaded)), 2);
    assert_int_equal(X509_cmp(sk_X509_value(pki_ca_chain(loaded), 0), ca_cert), 0);
    assert_int_equal(X509_cmp(sk_X509_value(pki_ca_chain(loaded), 1), root_cert), 0);
    pki_ca_free(loaded);
    loaded = NULL;

    /* missing file: clear reason naming it */
    assert_int_equal(
        pki_ca_load(cert_path, "/nonexistent/ca.key", chain_path, &loaded, reason, sizeof(reason)),
        CMS_EINVAL);
    assert_non_null(strstr(reason, "/nonexistent/ca.key"));
    /* no chain file: the issuing CA is not self-signed, so there is no root */
    assert_int_equal(pki_ca_load(cert_path, key_path, NULL, &loaded, reason, sizeof(reason)),
                     CMS_EINVAL);
    assert_non_null(strstr(reason, "root"));
    free(cert_pem);
    free(root_pem);
    free(key_pem);
}

static void test_ca_refuses_mismatch_wrong_chain_and_leaf(void **state)
{
    EVP_PKEY *other = keygen("EC", "P-256");
    EVP_PKEY *other_root_key = keygen("EC", "P-256");
    X509 *other_root = make_ca_cert(other_root_key, "Other Root", NULL, NULL, 100);
    STACK_OF(X509) * chain;
    char reason[PKI_REASON_MAX];
    pki_ca *c = NULL;

    (void)state;
    /* key does not match the certificate */
    chain = chain_of(ca_cert, root_cert);
    assert_int_equal(pki_ca_new(ca_cert, other, chain, &c, reason, sizeof(reason)), CMS_EINVAL);
    assert_null(c);
    assert_non_null(strstr(reason, "does not match"));
    sk_X509_free(chain);
    /* chain with the wrong root */
    chain = chain_of(ca_cert, other_root);
    assert_int_equal(pki_ca_new(ca_cert, ca_key, chain, &c, reason, sizeof(reason)), CMS_EINVAL);
    assert_non_null(strstr(reason, "does not verify"));
    sk_X509_free(chain);
    /* a self-signed root alone is a valid CA handle (chain = itself) */
    assert_int_equal(pki_ca_new(other_root, other_root_key, NULL, &c, reason, sizeof(reason)),
                     CMS_OK);
    assert_int_equal(sk_X509_num(pki_ca_chain(c)), 1);
    pki_ca_free(c);
    X509_free(other_root);
    EVP_PKEY_free(other);
    EVP_PKEY_free(other_root_key);
}

/* ------------------------------------------------------------------------
 * CSR intake and issuance
 */

static int verify_with_chain(X509 *leaf, X509_CRL *crl, int *err)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    STACK_OF(X509) *untrusted = chain_of(ca_cert, NULL);
    int ok;

    X509_STORE_add_cert(store, root_cert);
    if (crl) {
        X509_STORE_add_crl(store, crl);
        X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
    }
    X509_STORE_CTX_init(ctx, store, leaf, untrusted);
    X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT);
    ok = X509_verify_cert(ctx);
    *err = X509_STORE_CTX_get_error(ctx);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    sk_X509_free(untrusted);
    ERR_clear_error();
    return ok;
}

static void test_issue_p256_cert(void **state)
{
    EVP_PKEY *key = keygen("EC", "P-256");
    int len, err;
    unsigned char *der = make_csr_der(key, "MON-0001", 1, &len);
    char *body = b64_lines(der, len);
    char reason[PKI_REASON_MAX] = "";
    char cn[PKI_CN_MAX + 1], fp[PKI_SHA256_HEX_SIZE];
    pki_csr *csr = NULL;
    pki_issued iss;
    time_t now = time(NULL);
    const unsigned char *p;
    X509 *back;
    X509_NAME *subj;
    BIO *b;

    (void)state;
    assert_non_null(strchr(body, '\n')); /* line breaks are accepted */
    assert_int_equal(pki_csr_from_est_body(body, strlen(body), &csr, reason, sizeof(reason)),
                     CMS_OK);
    assert_string_equal(csr->cn, "MON-0001");
    assert_string_equal(csr->key_desc, "EC P-256");

    assert_int_equal(
        pki_issue_device_cert(ca, csr, "MON-0001", 365, 0, &iss, reason, sizeof(reason)), CMS_OK);
    /* subject is exactly CN=serial: the CSR's O=Evil Corp is not copied */
    subj = X509_get_subject_name(iss.cert);
    assert_int_equal(X509_NAME_entry_count(subj), 1);
    assert_int_equal(pki_cert_cn(iss.cert, cn, sizeof(cn)), CMS_OK);
    assert_string_equal(cn, "MON-0001");
    /* nor its requested extensions (CA:TRUE, SAN) */
    assert_int_equal(X509_check_ca(iss.cert), 0);
    assert_int_equal(X509_get_ext_by_NID(iss.cert, NID_subject_alt_name, -1), -1);
    assert_true(X509_get_extension_flags(iss.cert) & EXFLAG_BCONS);
    assert_int_equal(X509_EXTENSION_get_critical(X509_get_ext(
                         iss.cert, X509_get_ext_by_NID(iss.cert, NID_basic_constraints, -1))),
                     1);
    /* EKU clientAuth only; keyUsage digitalSignature + keyAgreement (EC) */
    assert_int_equal(X509_get_extended_key_usage(iss.cert), XKU_SSL_CLIENT);
    assert_int_equal(X509_get_key_usage(iss.cert), KU_DIGITAL_SIGNATURE | KU_KEY_AGREEMENT);
    assert_non_null(X509_get0_subject_key_id(iss.cert));
    assert_int_equal(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(iss.cert),
                                           X509_get0_subject_key_id(ca_cert)),
                     0);
    /* issuer, public key, signature algorithm */
    assert_int_equal(X509_NAME_cmp(X509_get_issuer_name(iss.cert), X509_get_subject_name(ca_cert)),
                     0);
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(iss.cert), key), 1);
    assert_int_equal(X509_get_signature_nid(iss.cert), NID_ecdsa_with_SHA256);
    assert_int_equal(X509_get_version(iss.cert), X509_VERSION_3);
    /* validity: now - 5 min .. now + 365 days */
    assert_true(iss.not_before_epoch >= now - 300 - 2 && iss.not_before_epoch <= now - 300 + 2);
    assert_true(iss.not_after_epoch >= now + 365 * 86400 - 2 &&
                iss.not_after_epoch <= now + 365 * 86400 + 2);
    assert_int_equal(strlen(iss.not_before), 20);
    assert_int_equal(iss.not_after[19], 'Z');
    /* serial: 20 octets, positive (159 bits) */
    assert_int_equal(strlen(iss.serial_hex), 40);
    assert_true(strchr("01234567", iss.serial_hex[0]) != NULL);
    {
        BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(iss.cert), NULL);
        assert_false(BN_is_negative(bn));
        assert_true(BN_num_bits(bn) <= 159 && BN_num_bits(bn) > 151);
        BN_free(bn);
    }
    /* fingerprint = SHA-256 of the DER we return */
    {
        unsigned char md[32];
        char hex[65];
        EVP_Digest(iss.der, iss.der_len, md, NULL, EVP_sha256(), NULL);
        for (int i = 0; i < 32; i++)
            sprintf(hex + 2 * i, "%02x", md[i]);
        assert_string_equal(hex, iss.fingerprint);
        assert_int_equal(pki_cert_fingerprint_sha256(iss.cert, fp), CMS_OK);
        assert_string_equal(fp, iss.fingerprint);
    }
    /* DER and PEM decode to the same certificate */
    p = iss.der;
    back = d2i_X509(NULL, &p, (long)iss.der_len);
    assert_non_null(back);
    assert_int_equal(X509_cmp(back, iss.cert), 0);
    X509_free(back);
    b = BIO_new_mem_buf(iss.pem, (int)iss.pem_len);
    back = PEM_read_bio_X509(b, NULL, NULL, NULL);
    assert_non_null(back);
    assert_int_equal(X509_cmp(back, iss.cert), 0);
    X509_free(back);
    BIO_free(b);
    /* verifies against the CA chain for TLS client use */
    assert_int_equal(verify_with_chain(iss.cert, NULL, &err), 1);
    assert_int_equal(err, X509_V_OK);
    /* two issuances never share a serial */
    {
        pki_issued iss2;
        assert_int_equal(
            pki_issue_device_cert(ca, csr, "MON-0001", 1, 0, &iss2, reason, sizeof(reason)),
            CMS_OK);
        assert_string_not_equal(iss.serial_hex, iss2.serial_hex);
        pki_issued_free(&iss2);
    }
    pki_issued_free(&iss);
    pki_csr_free(csr);
    free(body);
    OPENSSL_free(der);
    EVP_PKEY_free(key);
}

static void test_issue_other_key_types_and_ca_types(void **state)
{
    static const char *const types[][3] = {
        {"EC", "P-384", "EC P-384"}, {"ED25519", NULL, "Ed25519"}, {"RSA", "2048", "RSA 2048"}};
    EVP_PKEY *ed_ca_key = keygen("ED25519", NULL);
    X509 *ed_ca = make_ca_cert(ed_ca_key, "Ed25519 Root", NULL, NULL, 100);
    pki_ca *edca = NULL;
    char reason[PKI_REASON_MAX];

    (void)state;
    assert_int_equal(pki_ca_new(ed_ca, ed_ca_key, NULL, &edca, reason, sizeof(reason)), CMS_OK);
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        EVP_PKEY *k = keygen(types[i][0], types[i][1]);
        pki_csr *csr = csr_ok(k, "MON-0002");
        pki_issued iss;
        int err;

        assert_int_equal(
            pki_issue_device_cert(ca, csr, "MON-0002", 30, 0, &iss, reason, sizeof(reason)),
            CMS_OK);
        assert_int_equal(verify_with_chain(iss.cert, NULL, &err), 1);
        /* what the registry records for a certificate made outside EST */
        char desc[32];
        assert_int_equal(pki_cert_key_desc(iss.cert, desc, sizeof(desc), reason, sizeof(reason)),
                         CMS_OK);
        assert_string_equal(desc, types[i][2]);
        assert_int_equal(pki_cert_key_desc(iss.cert, desc, 4, reason, sizeof(reason)), CMS_EINVAL);
        /* keyAgreement only for EC keys */
        assert_int_equal(X509_get_key_usage(iss.cert) & KU_KEY_AGREEMENT,
                         EVP_PKEY_is_a(k, "EC") ? KU_KEY_AGREEMENT : 0);
        pki_issued_free(&iss);
        /* an Ed25519 CA signs with pure EdDSA */
        assert_int_equal(
            pki_issue_device_cert(edca, csr, "MON-0002", 30, 0, &iss, reason, sizeof(reason)),
            CMS_OK);
        assert_int_equal(X509_get_signature_nid(iss.cert), NID_ED25519);
        assert_int_equal(X509_verify(iss.cert, ed_ca_key), 1);
        pki_issued_free(&iss);
        pki_csr_free(csr);
        EVP_PKEY_free(k);
    }
    pki_ca_free(edca);
    X509_free(ed_ca);
    EVP_PKEY_free(ed_ca_key);
}

static void test_issue_arguments_expired_and_clamp(void **state)
{
    EVP_PKEY *k = keygen("EC", "P-256");
    pki_csr *csr = csr_ok(k, "MON-0003");
    EVP_PKEY *short_key = keygen("EC", "P-256");
    X509 *short_root = make_ca_cert(short_key, "Short Root", NULL, NULL, 10);
    pki_ca *short_ca = NULL;
    char reason[PKI_REASON_MAX];
    pki_issued iss;
    time_t ca_end;
    char iso[PKI_ISO_TIME_SIZE];
    int err;

    (void)state;
    assert_int_equal(pki_issue_device_cert(ca, csr, "", 30, 0, &iss, reason, sizeof(reason)),
                     CMS_EINVAL);
    assert_int_equal(
        pki_issue_device_cert(ca, csr, "bad\nserial", 30, 0, &iss, reason, sizeof(reason)),
        CMS_EINVAL);
    assert_int_equal(pki_issue_device_cert(ca, csr, "MON-0003", 0, 0, &iss, reason, sizeof(reason)),
                     CMS_EINVAL);
    assert_int_equal(pki_issue_device_cert(ca, csr, "MON-0003", PKI_MAX_VALIDITY_DAYS + 1, 0, &iss,
                                           reason, sizeof(reason)),
                     CMS_EINVAL);
    assert_null(iss.cert);
    /* issued 40 days ago for 30 days: an expired certificate for test PKIs */
    assert_int_equal(pki_issue_device_cert(ca, csr, "MON-0003", 30, time(NULL) - 40 * 86400, &iss,
                                           reason, sizeof(reason)),
                     CMS_OK);
    assert_int_equal(verify_with_chain(iss.cert, NULL, &err), 0);
    assert_int_equal(err, X509_V_ERR_CERT_HAS_EXPIRED);
    pki_issued_free(&iss);
    /* never outlives the CA */
    assert_int_equal(pki_ca_new(short_root, short_key, NULL, &short_ca, reason, sizeof(reason)),
                     CMS_OK);
    assert_int_equal(
        pki_issue_device_cert(short_ca, csr, "MON-0003", 365, 0, &iss, reason, sizeof(reason)),
        CMS_OK);
    assert_int_equal(pki_asn1_time_iso(X509_get0_notAfter(short_root), iso, &ca_end), CMS_OK);
    assert_true(iss.not_after_epoch == ca_end);
    pki_issued_free(&iss);
    pki_ca_free(short_ca);
    X509_free(short_root);
    EVP_PKEY_free(short_key);
    pki_csr_free(csr);
    EVP_PKEY_free(k);
}

static void test_csr_bad_signature_refused(void **state)
{
    EVP_PKEY *k = keygen("EC", "P-256");
    int len;
    unsigned char *der = make_csr_der(k, "MON-0004", 0, &len);
    char reason[PKI_REASON_MAX];
    char *body;

    (void)state;
    der[len - 1] ^= 0x01; /* last byte of the ECDSA signature value */
    body = b64_lines(der, len);
    assert_int_equal(csr_refused(body, strlen(body), reason), CMS_EPROTO);
    assert_non_null(strstr(reason, "signature"));
    free(body);
    OPENSSL_free(der);
    EVP_PKEY_free(k);
}

static void test_csr_key_policy(void **state)
{
    static const char *const refused[][2] = {
        {"RSA", "1024"}, {"EC", "P-521"}, {"EC", "secp256k1"}, {"ED448", NULL}};
    char reason[PKI_REASON_MAX];

    (void)state;
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        EVP_PKEY *k = keygen(refused[i][0], refused[i][1]);
        int len;
        unsigned char *der = make_csr_der(k, "MON-0005", 0, &len);
        char *body = b64_lines(der, len);
        assert_int_equal(csr_refused(body, strlen(body), reason), CMS_EPERM);
        if (i == 0)
            assert_string_equal(reason, "RSA key of 1024 bits is below 2048");
        else
            assert_non_null(strstr(reason, "refused"));
        free(body);
        OPENSSL_free(der);
        EVP_PKEY_free(k);
    }
}

static void test_csr_rsa_small_exponent_refused(void **state)
{
    EVP_PKEY_CTX *kctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    BIGNUM *three = BN_new();
    EVP_PKEY *k = NULL;
    char reason[PKI_REASON_MAX];
    unsigned char *der;
    char *body;
    int len;

    (void)state;
    BN_set_word(three, 3);
    assert_int_equal(EVP_PKEY_keygen_init(kctx), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_keygen_bits(kctx, 2048), 1);
    assert_int_equal(EVP_PKEY_CTX_set1_rsa_keygen_pubexp(kctx, three), 1);
    assert_int_equal(EVP_PKEY_generate(kctx, &k), 1);
    der = make_csr_der(k, "MON-0013", 0, &len);
    body = b64_lines(der, len);
    assert_int_equal(csr_refused(body, strlen(body), reason), CMS_EPERM);
    assert_non_null(strstr(reason, "exponent"));
    free(body);
    OPENSSL_free(der);
    EVP_PKEY_free(k);
    BN_free(three);
    EVP_PKEY_CTX_free(kctx);
}

static void test_csr_weak_digest_refused(void **state)
{
    EVP_PKEY *k = keygen("RSA", "2048");
    X509_REQ *req = X509_REQ_new();
    X509_NAME *n = X509_NAME_new();
    unsigned char *der = NULL;
    char reason[PKI_REASON_MAX];
    char *body;
    int len;

    (void)state;
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"MON-0006", -1, -1, 0);
    X509_REQ_set_subject_name(req, n);
    X509_REQ_set_pubkey(req, k);
    if (X509_REQ_sign(req, k, EVP_sha1()) <= 0) {
        /* SHA-1 signing disabled by policy on this system: nothing to test */
        ERR_clear_error();
    } else {
        len = i2d_X509_REQ(req, &der);
        body = b64_lines(der, len);
        assert_int_equal(csr_refused(body, strlen(body), reason), CMS_EPERM);
        assert_non_null(strstr(reason, "weak digest"));
        free(body);
        OPENSSL_free(der);
    }
    X509_NAME_free(n);
    X509_REQ_free(req);
    EVP_PKEY_free(k);
}

static void test_csr_encodings(void **state)
{
    EVP_PKEY *k = keygen("EC", "P-256");
    int len;
    unsigned char *der = make_csr_der(k, "MON-0007", 0, &len);
    char reason[PKI_REASON_MAX] = "";
    char *one_line = NULL, *pem, *spaced, *p;
    pki_csr *csr = NULL;
    X509_REQ *req;
    const unsigned char *dp = der;
    BIO *b;
    long n;

    (void)state;
    /* base64 on one line, no padding issues, trailing newline */
    assert_int_equal(pki_base64_encode(der, (size_t)len, 0, &one_line, NULL), CMS_OK);
    assert_int_equal(
        pki_csr_from_est_body(one_line, strlen(one_line), &csr, reason, sizeof(reason)), CMS_OK);
    pki_csr_free(csr);
    /* base64 with CRLF and spaces everywhere */
    spaced = calloc(1, strlen(one_line) * 3 + 8);
    p = spaced;
    *p++ = '\r';
    *p++ = '\n';
    for (size_t i = 0; one_line[i]; i++) {
        *p++ = one_line[i];
        if (i % 10 == 9) {
            *p++ = '\r';
            *p++ = '\n';
        } else if (i % 7 == 0) {
            *p++ = ' ';
        }
    }
    assert_int_equal(pki_csr_from_est_body(spaced, strlen(spaced), &csr, reason, sizeof(reason)),
                     CMS_OK);
    assert_string_equal(csr->cn, "MON-0007");
    pki_csr_free(csr);
    /* PEM */
    req = d2i_X509_REQ(NULL, &dp, len);
    b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509_REQ(b, req);
    n = BIO_get_mem_data(b, &pem);
    assert_int_equal(pki_csr_from_est_body(pem, (size_t)n, &csr, reason, sizeof(reason)), CMS_OK);
    assert_string_equal(csr->cn, "MON-0007");
    pki_csr_free(csr);
    BIO_free(b);
    /* PEM with the old "NEW CERTIFICATE REQUEST" label */
    b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509_REQ_NEW(b, req);
    n = BIO_get_mem_data(b, &pem);
    assert_non_null(memmem(pem, (size_t)n, "NEW CERTIFICATE REQUEST", 23)); /* not NUL-terminated */
    assert_int_equal(pki_csr_from_est_body(pem, (size_t)n, &csr, reason, sizeof(reason)), CMS_OK);
    pki_csr_free(csr);
    BIO_free(b);
    X509_REQ_free(req);
    /* raw DER */
    assert_int_equal(
        pki_csr_from_est_body((const char *)der, (size_t)len, &csr, reason, sizeof(reason)),
        CMS_OK);
    pki_csr_free(csr);
    free(spaced);
    free(one_line);
    OPENSSL_free(der);
    EVP_PKEY_free(k);
}

static void test_csr_garbage_refused(void **state)
{
    EVP_PKEY *k = keygen("EC", "P-256");
    int len;
    unsigned char *der = make_csr_der(k, "MON-0008", 0, &len);
    unsigned char *longer = malloc((size_t)len + 2);
    char reason[PKI_REASON_MAX];
    char *body, *big;
    static const char pem_junk[] =
        "-----BEGIN CERTIFICATE REQUEST-----\nnot base64 at all\n-----END CERTIFICATE "
        "REQUEST-----\n";
    static const char pem_enc[] = "-----BEGIN CERTIFICATE REQUEST-----\n"
                                  "Proc-Type: 4,ENCRYPTED\n"
                                  "DEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\n"
                                  "QUJDRA==\n-----END CERTIFICATE REQUEST-----\n";

    (void)state;
    assert_int_equal(csr_refused("this is not base64 !!", 21, reason), CMS_EPROTO);
    assert_non_null(strstr(reason, "base64"));
    assert_int_equal(csr_refused("QUJD", 4, reason), CMS_EPROTO); /* "ABC" */
    assert_non_null(strstr(reason, "PKCS#10"));
    assert_int_equal(csr_refused("QUJ", 3, reason), CMS_EPROTO);       /* truncated */
    assert_int_equal(csr_refused("QU=D", 4, reason), CMS_EPROTO);      /* data after pad */
    assert_int_equal(csr_refused("MIIB-QUJD", 9, reason), CMS_EPROTO); /* '-' is not base64 */
    assert_int_equal(csr_refused("QUJD\0QUJD", 9, reason), CMS_EPROTO);
    assert_int_equal(csr_refused(" \r\n\t", 4, reason), CMS_EPROTO);
    assert_int_equal(csr_refused("", 0, reason), CMS_EPROTO);
    assert_int_equal(csr_refused(pem_junk, sizeof(pem_junk) - 1, reason), CMS_EPROTO);
    /* an "encrypted" PEM fails at once instead of prompting for a password */
    assert_int_equal(csr_refused(pem_enc, sizeof(pem_enc) - 1, reason), CMS_EPROTO);
    /* trailing bytes after the DER */
    memcpy(longer, der, (size_t)len);
    longer[len] = 0;
    longer[len + 1] = 0;
    body = b64_lines(longer, len + 2);
    assert_int_equal(csr_refused(body, strlen(body), reason), CMS_EPROTO);
    assert_non_null(strstr(reason, "trailing"));
    free(body);
    /* truncated DER */
    body = b64_lines(der, len - 10);
    assert_int_equal(csr_refused(body, strlen(body), reason), CMS_EPROTO);
    free(body);
    /* oversized body */
    big = malloc(PKI_CSR_MAX_BODY + 1);
    memset(big, 'A', PKI_CSR_MAX_BODY + 1);
    assert_int_equal(csr_refused(big, PKI_CSR_MAX_BODY + 1, reason), CMS_ELIMIT);
    free(big);
    free(longer);
    OPENSSL_free(der);
    EVP_PKEY_free(k);
}

static void test_csr_subject_rules(void **state)
{
    EVP_PKEY *k = keygen("ED25519", NULL);
    char reason[PKI_REASON_MAX];
    char long_cn[PKI_CN_MAX + 2];
    const char *bad[] = {NULL, long_cn, "tab\there", " lead", "caf\xc3\xa9"};
    X509_REQ *req;
    X509_NAME *n;
    unsigned char *der = NULL;
    char *body;
    int len;

    (void)state;
    memset(long_cn, 'A', PKI_CN_MAX + 1);
    long_cn[PKI_CN_MAX + 1] = '\0';
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        unsigned char *d = make_csr_der(k, bad[i], 0, &len);
        body = b64_lines(d, len);
        assert_int_equal(csr_refused(body, strlen(body), reason), CMS_EPROTO);
        assert_non_null(strstr(reason, "CN"));
        free(body);
        OPENSSL_free(d);
    }
    /* exactly 64 bytes is fine */
    long_cn[PKI_CN_MAX] = '\0';
    {
        pki_csr *c = csr_ok(k, long_cn);
        assert_string_equal(c->cn, long_cn);
        pki_csr_free(c);
    }
    /* two CNs */
    req = X509_REQ_new();
    n = X509_NAME_new();
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"MON-0009", -1, -1, 0);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"MON-0010", -1, -1, 0);
    X509_REQ_set_subject_name(req, n);
    X509_REQ_set_pubkey(req, k);
    X509_REQ_sign(req, k, NULL);
    len = i2d_X509_REQ(req, &der);
    body = b64_lines(der, len);
    assert_int_equal(csr_refused(body, strlen(body), reason), CMS_EPROTO);
    assert_non_null(strstr(reason, "more than one CN"));
    free(body);
    OPENSSL_free(der);
    X509_NAME_free(n);
    X509_REQ_free(req);
    EVP_PKEY_free(k);
}

static void test_csr_from_openssl_req(void **state)
{
    char cmd[1024], path[300];
    char reason[PKI_REASON_MAX] = "";
    char body[8192];
    pki_csr *csr = NULL;
    pki_issued iss;
    size_t n;
    FILE *f;

    (void)state;
    if (!have_openssl_cli())
        skip();
    snprintf(cmd, sizeof(cmd),
             "cd %s && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
             "-subj /CN=MON-0042/O=Hospital -keyout req.key -outform DER -out req.der "
             "2>/dev/null && base64 req.der > req.b64",
             tmpdir);
    assert_int_equal(system(cmd), 0);
    snprintf(path, sizeof(path), "%s/req.b64", tmpdir);
    f = fopen(path, "rb");
    assert_non_null(f);
    n = fread(body, 1, sizeof(body), f);
    fclose(f);
    assert_int_equal(pki_csr_from_est_body(body, n, &csr, reason, sizeof(reason)), CMS_OK);
    assert_string_equal(csr->cn, "MON-0042");
    assert_int_equal(pki_issue_device_cert(ca, csr, csr->cn, 30, 0, &iss, reason, sizeof(reason)),
                     CMS_OK);
    pki_issued_free(&iss);
    pki_csr_free(csr);
    /* and `openssl req` PEM output as is */
    snprintf(cmd, sizeof(cmd),
             "cd %s && openssl req -new -newkey ed25519 -nodes -subj /CN=MON-0043 "
             "-keyout req2.key -out req2.pem 2>/dev/null",
             tmpdir);
    assert_int_equal(system(cmd), 0);
    snprintf(path, sizeof(path), "%s/req2.pem", tmpdir);
    f = fopen(path, "rb");
    n = fread(body, 1, sizeof(body), f);
    fclose(f);
    assert_int_equal(pki_csr_from_est_body(body, n, &csr, reason, sizeof(reason)), CMS_OK);
    assert_string_equal(csr->key_desc, "Ed25519");
    pki_csr_free(csr);
}

/* ------------------------------------------------------------------------
 * PKCS#7 certs-only
 */

static void test_pkcs7_round_trip(void **state)
{
    EVP_PKEY *k = keygen("EC", "P-256");
    pki_csr *csr = csr_ok(k, "MON-0011");
    char reason[PKI_REASON_MAX];
    pki_issued iss;
    char *body = NULL, *chain_body = NULL;
    size_t blen = 0;
    STACK_OF(X509) *certs = NULL;
    unsigned char *der = NULL;
    size_t der_len;
    const unsigned char *p;
    PKCS7 *p7;

    (void)state;
    assert_int_equal(
        pki_issue_device_cert(ca, csr, "MON-0011", 30, 0, &iss, reason, sizeof(reason)), CMS_OK);
    /* simpleenroll answer: the issued certificate alone */
    assert_int_equal(pki_pkcs7_certs_only_base64(&iss.cert, 1, &body, &blen), CMS_OK);
    assert_int_equal(strlen(body), blen);
    assert_int_equal(pki_pkcs7_certs_parse(body, blen, 65536, &certs, reason, sizeof(reason)),
                     CMS_OK);
    assert_int_equal(sk_X509_num(certs), 1);
    assert_int_equal(X509_cmp(sk_X509_value(certs, 0), iss.cert), 0);
    sk_X509_pop_free(certs, X509_free);
    /* independently: a degenerate SignedData, no signers */
    assert_int_equal(pki_base64_decode(body, blen, &der, &der_len), CMS_OK);
    p = der;
    p7 = d2i_PKCS7(NULL, &p, (long)der_len);
    assert_non_null(p7);
    assert_true(PKCS7_type_is_signed(p7));
    assert_int_equal(sk_PKCS7_SIGNER_INFO_num(p7->d.sign->signer_info), 0);
    assert_int_equal(sk_X509_num(p7->d.sign->cert), 1);
    PKCS7_free(p7);
    free(der);
    /* /cacerts: the chain, issuing CA first */
    assert_int_equal(pki_pkcs7_stack_base64(pki_ca_chain(ca), &chain_body, NULL), CMS_OK);
    assert_int_equal(pki_pkcs7_certs_parse(chain_body, strlen(chain_body), 65536, &certs, reason,
                                           sizeof(reason)),
                     CMS_OK);
    assert_int_equal(sk_X509_num(certs), 2);
    assert_int_equal(X509_cmp(sk_X509_value(certs, 0), ca_cert), 0);
    assert_int_equal(X509_cmp(sk_X509_value(certs, 1), root_cert), 0);
    sk_X509_pop_free(certs, X509_free);
    /* the parser refuses garbage and oversize */
    assert_int_equal(pki_pkcs7_certs_parse("QUJD", 4, 65536, &certs, reason, sizeof(reason)),
                     CMS_EPROTO);
    assert_int_equal(pki_pkcs7_certs_parse(body, blen, 10, &certs, reason, sizeof(reason)),
                     CMS_ELIMIT);
    {
        char *none = NULL;
        assert_int_equal(pki_pkcs7_certs_only_base64(NULL, 0, &none, NULL), CMS_EINVAL);
        assert_null(none);
    }
    /* a client we did not write: openssl pkcs7 -print_certs */
    if (have_openssl_cli()) {
        char path[300], cmd[1024];
        char *b = NULL;
        assert_int_equal(pki_pkcs7_stack_base64(pki_ca_chain(ca), &b, NULL), CMS_OK);
        write_file("cacerts.b64", b, strlen(b), 0644, path);
        free(b);
        snprintf(cmd, sizeof(cmd),
                 "base64 -d %s | openssl pkcs7 -inform DER -print_certs | "
                 "grep -c '^subject=.*CMS Test' | grep -qx 2",
                 path);
        assert_int_equal(system(cmd), 0);
    }
    free(chain_body);
    free(body);
    pki_issued_free(&iss);
    pki_csr_free(csr);
    EVP_PKEY_free(k);
}

/* ------------------------------------------------------------------------
 * CRL
 */

static void test_crl_lists_serial_and_verifies(void **state)
{
    EVP_PKEY *k = keygen("EC", "P-256");
    pki_csr *csr = csr_ok(k, "MON-0012");
    char reason[PKI_REASON_MAX];
    pki_issued revoked, good;
    pki_crl crl;
    pki_crl_entry e[2];
    X509_CRL *parsed;
    X509_REVOKED *rev = NULL;
    ASN1_INTEGER *num;
    ASN1_ENUMERATED *code;
    const unsigned char *p;
    time_t now = time(NULL);
    int err, crit;

    (void)state;
    assert_int_equal(
        pki_issue_device_cert(ca, csr, "MON-0012", 30, 0, &revoked, reason, sizeof(reason)),
        CMS_OK);
    assert_int_equal(
        pki_issue_device_cert(ca, csr, "MON-0012", 30, 0, &good, reason, sizeof(reason)), CMS_OK);
    e[0].serial_hex = revoked.serial_hex;
    e[0].revoked_at = now - 60;
    e[0].reason = 1; /* keyCompromise */
    e[1].serial_hex = "0A1B2C";
    e[1].revoked_at = now - 3600;
    e[1].reason = 0;
    assert_int_equal(pki_crl_build(ca, e, 2, 0, 24, 7, &crl, reason, sizeof(reason)), CMS_OK);
    assert_non_null(strstr(crl.pem, "-----BEGIN X509 CRL-----"));
    p = crl.der;
    parsed = d2i_X509_CRL(NULL, &p, (long)crl.der_len);
    assert_non_null(parsed);
    /* signed by the CA key, issued by the CA name, v2 */
    assert_int_equal(X509_CRL_verify(parsed, X509_get0_pubkey(ca_cert)), 1);
    assert_int_equal(X509_NAME_cmp(X509_CRL_get_issuer(parsed), X509_get_subject_name(ca_cert)), 0);
    assert_int_equal(X509_CRL_get_version(parsed), X509_CRL_VERSION_2);
    /* lists the revoked serial with its reason, not the good one */
    assert_int_equal(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(parsed)), 2);
    assert_int_equal(
        X509_CRL_get0_by_serial(parsed, &rev, (ASN1_INTEGER *)X509_get0_serialNumber(revoked.cert)),
        1);
    code = X509_REVOKED_get_ext_d2i(rev, NID_crl_reason, &crit, NULL);
    assert_non_null(code);
    assert_int_equal(ASN1_ENUMERATED_get(code), 1);
    ASN1_ENUMERATED_free(code);
    assert_int_equal(
        X509_CRL_get0_by_serial(parsed, &rev, (ASN1_INTEGER *)X509_get0_serialNumber(good.cert)),
        0);
    /* cRLNumber and AKI */
    num = X509_CRL_get_ext_d2i(parsed, NID_crl_number, &crit, NULL);
    assert_non_null(num);
    assert_int_equal(ASN1_INTEGER_get(num), 7);
    ASN1_INTEGER_free(num);
    assert_true(X509_CRL_get_ext_by_NID(parsed, NID_authority_key_identifier, -1) >= 0);
    /* thisUpdate / nextUpdate */
    assert_true(X509_cmp_time(X509_CRL_get0_nextUpdate(parsed), NULL) > 0);
    /* chain verification with CRL check: revoked vs good */
    assert_int_equal(verify_with_chain(revoked.cert, parsed, &err), 0);
    assert_int_equal(err, X509_V_ERR_CERT_REVOKED);
    assert_int_equal(verify_with_chain(good.cert, parsed, &err), 1);
    X509_CRL_free(parsed);

    /* a verifier we did not write: openssl verify -crl_check */
    if (have_openssl_cli()) {
        char crl_path[300], chain_path[300], rev_path[300], good_path[300], cmd[2048];
        char *root_pem = pem_of_cert(root_cert), *ca_pem = pem_of_cert(ca_cert);
        char chain[8192];
        snprintf(chain, sizeof(chain), "%s%s", ca_pem, root_pem);
        write_file("crl.pem", crl.pem, crl.pem_len, 0644, crl_path);
        write_file("chain.pem", chain, strlen(chain), 0644, chain_path);
        write_file("revoked.pem", revoked.pem, revoked.pem_len, 0644, rev_path);
        write_file("good.pem", good.pem, good.pem_len, 0644, good_path);
        snprintf(cmd, sizeof(cmd),
                 "openssl verify -crl_check -CRLfile %s -CAfile %s %s 2>&1 | grep -q revoked",
                 crl_path, chain_path, rev_path);
        assert_int_equal(system(cmd), 0);
        snprintf(cmd, sizeof(cmd),
                 "openssl verify -crl_check -CRLfile %s -CAfile %s %s >/dev/null 2>&1", crl_path,
                 chain_path, good_path);
        assert_int_equal(system(cmd), 0);
        free(root_pem);
        free(ca_pem);
    }
    pki_crl_free(&crl);

    /* an empty CRL is valid too */
    assert_int_equal(pki_crl_build(ca, NULL, 0, now, 1, 8, &crl, reason, sizeof(reason)), CMS_OK);
    pki_crl_free(&crl);
    /* refused inputs */
    e[1].serial_hex = "not-hex";
    assert_int_equal(pki_crl_build(ca, e, 2, 0, 24, 9, &crl, reason, sizeof(reason)), CMS_EINVAL);
    assert_non_null(strstr(reason, "entry 1"));
    e[1].serial_hex = "0A";
    e[1].reason = 7;
    assert_int_equal(pki_crl_build(ca, e, 2, 0, 24, 9, &crl, reason, sizeof(reason)), CMS_EINVAL);
    e[1].reason = 0;
    assert_int_equal(pki_crl_build(ca, e, 2, 0, 0, 9, &crl, reason, sizeof(reason)), CMS_EINVAL);
    assert_null(crl.der);
    pki_issued_free(&revoked);
    pki_issued_free(&good);
    pki_csr_free(csr);
    EVP_PKEY_free(k);
}

/* ------------------------------------------------------------------------
 * helpers
 */

static void test_cert_helpers(void **state)
{
    X509 *c = X509_new();
    X509_NAME *n = X509_NAME_new();
    char cn[PKI_CN_MAX + 1], sn[PKI_SERIAL_HEX_SIZE];

    (void)state;
    ASN1_INTEGER_set(X509_get_serialNumber(c), 0x0a1b);
    assert_int_equal(pki_cert_serial_hex(c, sn), CMS_OK);
    assert_string_equal(sn, "0a1b");
    /* no CN */
    assert_int_equal(pki_cert_cn(c, cn, sizeof(cn)), CMS_EPROTO);
    /* no public key: refused with a reason */
    char desc[32], why[PKI_REASON_MAX] = "";
    assert_int_equal(pki_cert_key_desc(c, desc, sizeof(desc), why, sizeof(why)), CMS_EPERM);
    assert_string_equal(desc, "");
    assert_string_equal(why, "no public key");
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"A", -1, -1, 0);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"B", -1, -1, 0);
    X509_set_subject_name(c, n);
    assert_int_equal(pki_cert_cn(c, cn, sizeof(cn)), CMS_EPROTO);
    assert_int_equal(pki_cert_cn(c, cn, 10), CMS_EINVAL);
    assert_true(pki_cn_is_valid("MON-0001"));
    assert_false(pki_cn_is_valid("MON-0001 "));
    assert_false(pki_cn_is_valid(NULL));
    X509_NAME_free(n);
    X509_free(c);
}

static void test_base64(void **state)
{
    unsigned char *out = NULL;
    size_t n = 0;
    char *enc = NULL;
    unsigned char big[100];

    (void)state;
    assert_int_equal(pki_base64_decode("aGVs\r\nbG8=\n", 11, &out, &n), CMS_OK);
    assert_int_equal(n, 5);
    assert_memory_equal(out, "hello", 5);
    free(out);
    assert_int_equal(pki_base64_decode("", 0, &out, &n), CMS_OK);
    assert_int_equal(n, 0);
    free(out);
    assert_int_equal(pki_base64_decode("aGVsbG8", 7, &out, &n), CMS_EPROTO);
    assert_null(out);
    assert_int_equal(pki_base64_decode("aGVs*G8=", 8, &out, &n), CMS_EPROTO);
    assert_int_equal(pki_base64_decode("aGVsbG8=aGVs", 12, &out, &n), CMS_EPROTO);
    assert_int_equal(pki_base64_encode((const unsigned char *)"hello", 5, 0, &enc, &n), CMS_OK);
    assert_string_equal(enc, "aGVsbG8=");
    free(enc);
    memset(big, 0xA5, sizeof(big));
    assert_int_equal(pki_base64_encode(big, sizeof(big), 1, &enc, &n), CMS_OK);
    assert_int_equal(strlen(enc), n);
    assert_int_equal(enc[64], '\n');
    assert_int_equal(enc[n - 1], '\n');
    assert_int_equal(pki_base64_decode(enc, n, &out, &n), CMS_OK);
    assert_int_equal(n, sizeof(big));
    assert_memory_equal(out, big, sizeof(big));
    free(out);
    free(enc);
}

/* ------------------------------------------------------------------------
 * firmware signing primitives
 */

static void sign_verify_round_trip(const char *type, const char *param, const char *name)
{
    EVP_PKEY *key = keygen(type, param);
    EVP_PKEY *other = keygen(type, param);
    EVP_PKEY *loaded = NULL, *pub = NULL, *pub2 = NULL;
    static const unsigned char msg[] = "{\"model\":\"CMS8000\",\"version\":\"2.1.0\"}";
    unsigned char tampered[sizeof(msg)];
    unsigned char *sig = NULL, *sig2 = NULL;
    size_t sig_len = 0, sig2_len = 0;
    char reason[PKI_REASON_MAX];
    char key_path[300], pub_path[300], fname[64];
    char *key_pem = pem_of_key(key), *pub_pem = NULL;
    char id1[PKI_SHA256_HEX_SIZE], id2[PKI_SHA256_HEX_SIZE];

    /* private key from a 0600 PEM file; 0644 refused */
    snprintf(fname, sizeof(fname), "%s.key", name);
    write_file(fname, key_pem, strlen(key_pem), 0644, key_path);
    assert_int_equal(pki_key_load_private(key_path, &loaded, reason, sizeof(reason)), CMS_EINVAL);
    assert_int_equal(chmod(key_path, 0600), 0);
    assert_int_equal(pki_key_load_private(key_path, &loaded, reason, sizeof(reason)), CMS_OK);
    /* public key PEM out and back in (pinned keys) */
    assert_int_equal(pki_pubkey_to_pem(loaded, &pub_pem, NULL), CMS_OK);
    snprintf(fname, sizeof(fname), "%s.pub", name);
    write_file(fname, pub_pem, strlen(pub_pem), 0644, pub_path);
    assert_int_equal(pki_pubkey_load(pub_path, &pub, reason, sizeof(reason)), CMS_OK);
    assert_int_equal(pki_pubkey_from_pem(pub_pem, strlen(pub_pem), &pub2, reason, sizeof(reason)),
                     CMS_OK);
    assert_int_equal(pki_pubkey_id_sha256(pub, id1), CMS_OK);
    assert_int_equal(pki_pubkey_id_sha256(loaded, id2), CMS_OK);
    assert_string_equal(id1, id2);

    /* round trip */
    assert_int_equal(pki_sign(loaded, msg, sizeof(msg) - 1, &sig, &sig_len), CMS_OK);
    if (strcmp(type, "ED25519") == 0)
        assert_int_equal(sig_len, 64);
    assert_int_equal(pki_verify(pub, msg, sizeof(msg) - 1, sig, sig_len), CMS_OK);
    assert_int_equal(pki_verify(pub2, msg, sizeof(msg) - 1, sig, sig_len), CMS_OK);
    /* tampered message, tampered signature, wrong key, empty signature */
    memcpy(tampered, msg, sizeof(msg));
    tampered[5] ^= 0x20;
    assert_int_equal(pki_verify(pub, tampered, sizeof(msg) - 1, sig, sig_len), CMS_EPERM);
    assert_int_equal(pki_verify(pub, msg, sizeof(msg) - 2, sig, sig_len), CMS_EPERM);
    sig[sig_len / 2] ^= 0x01;
    assert_int_equal(pki_verify(pub, msg, sizeof(msg) - 1, sig, sig_len), CMS_EPERM);
    sig[sig_len / 2] ^= 0x01;
    assert_int_equal(pki_verify(other, msg, sizeof(msg) - 1, sig, sig_len), CMS_EPERM);
    assert_int_equal(pki_verify(pub, msg, sizeof(msg) - 1, sig, 0), CMS_EPERM);
    assert_int_equal(pki_verify(pub, msg, sizeof(msg) - 1, sig, sig_len - 1), CMS_EPERM);
    assert_int_equal(ERR_peek_error(), 0);
    /* a second signature (ECDSA is randomized) also verifies */
    assert_int_equal(pki_sign(key, msg, sizeof(msg) - 1, &sig2, &sig2_len), CMS_OK);
    assert_int_equal(pki_verify(pub, msg, sizeof(msg) - 1, sig2, sig2_len), CMS_OK);

    /* interoperability with the openssl command line */
    if (have_openssl_cli()) {
        char sig_path[300], msg_path[300], cmd[2048];
        snprintf(fname, sizeof(fname), "%s.sig", name);
        write_file(fname, sig, sig_len, 0644, sig_path);
        snprintf(fname, sizeof(fname), "%s.msg", name);
        write_file(fname, msg, sizeof(msg) - 1, 0644, msg_path);
        if (strcmp(type, "ED25519") == 0)
            snprintf(cmd, sizeof(cmd),
                     "openssl pkeyutl -verify -rawin -pubin -inkey %s -in %s -sigfile %s "
                     ">/dev/null 2>&1",
                     pub_path, msg_path, sig_path);
        else
            snprintf(cmd, sizeof(cmd),
                     "openssl dgst -sha256 -verify %s -signature %s %s >/dev/null 2>&1", pub_path,
                     sig_path, msg_path);
        assert_int_equal(system(cmd), 0);
        /* and the reverse: openssl signs, we verify */
        if (strcmp(type, "ED25519") == 0)
            snprintf(cmd, sizeof(cmd),
                     "openssl pkeyutl -sign -rawin -inkey %s -in %s -out %s 2>/dev/null", key_path,
                     msg_path, sig_path);
        else
            snprintf(cmd, sizeof(cmd), "openssl dgst -sha256 -sign %s -out %s %s 2>/dev/null",
                     key_path, sig_path, msg_path);
        assert_int_equal(system(cmd), 0);
        {
            unsigned char ext_sig[256];
            size_t ext_len;
            FILE *f = fopen(sig_path, "rb");
            assert_non_null(f);
            ext_len = fread(ext_sig, 1, sizeof(ext_sig), f);
            fclose(f);
            assert_int_equal(pki_verify(pub, msg, sizeof(msg) - 1, ext_sig, ext_len), CMS_OK);
        }
    }
    free(sig);
    free(sig2);
    free(key_pem);
    free(pub_pem);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
    EVP_PKEY_free(loaded);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(pub2);
}

static void test_sign_verify_ed25519(void **state)
{
    (void)state;
    sign_verify_round_trip("ED25519", NULL, "ed25519");
}

static void test_sign_verify_p256(void **state)
{
    (void)state;
    sign_verify_round_trip("EC", "P-256", "p256");
}

static void test_sign_refuses_other_key_types(void **state)
{
    EVP_PKEY *rsa = keygen("RSA", "2048");
    EVP_PKEY *p384 = keygen("EC", "P-384");
    unsigned char *sig = NULL;
    size_t sig_len = 0;
    char *pem = NULL;
    EVP_PKEY *back = NULL;
    char reason[PKI_REASON_MAX];

    (void)state;
    assert_int_equal(pki_sign(rsa, (const unsigned char *)"x", 1, &sig, &sig_len), CMS_EINVAL);
    assert_int_equal(pki_sign(p384, (const unsigned char *)"x", 1, &sig, &sig_len), CMS_EINVAL);
    assert_int_equal(pki_verify(rsa, (const unsigned char *)"x", 1, (const unsigned char *)"s", 1),
                     CMS_EINVAL);
    assert_int_equal(pki_pubkey_to_pem(rsa, &pem, NULL), CMS_OK);
    assert_int_equal(pki_pubkey_from_pem(pem, strlen(pem), &back, reason, sizeof(reason)),
                     CMS_EPERM);
    assert_null(back);
    assert_int_equal(pki_pubkey_from_pem("garbage", 7, &back, reason, sizeof(reason)), CMS_EPROTO);
    free(pem);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(p384);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ca_load_files_and_key_permissions),
        cmocka_unit_test(test_ca_refuses_mismatch_wrong_chain_and_leaf),
        cmocka_unit_test(test_issue_p256_cert),
        cmocka_unit_test(test_issue_other_key_types_and_ca_types),
        cmocka_unit_test(test_issue_arguments_expired_and_clamp),
        cmocka_unit_test(test_csr_bad_signature_refused),
        cmocka_unit_test(test_csr_key_policy),
        cmocka_unit_test(test_csr_rsa_small_exponent_refused),
        cmocka_unit_test(test_csr_weak_digest_refused),
        cmocka_unit_test(test_csr_encodings),
        cmocka_unit_test(test_csr_garbage_refused),
        cmocka_unit_test(test_csr_subject_rules),
        cmocka_unit_test(test_csr_from_openssl_req),
        cmocka_unit_test(test_pkcs7_round_trip),
        cmocka_unit_test(test_crl_lists_serial_and_verifies),
        cmocka_unit_test(test_cert_helpers),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_sign_verify_ed25519),
        cmocka_unit_test(test_sign_verify_p256),
        cmocka_unit_test(test_sign_refuses_other_key_types),
    };
    return cmocka_run_group_tests_name("pki", tests, setup_all, teardown_all);
}
