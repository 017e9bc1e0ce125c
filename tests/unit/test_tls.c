/*
 * test_tls.c - the peer record the TLS layer makes once per handshake
 * (server/tls/tls.c, tls_conn_peer): a real handshake between an OpenSSL
 * client and a tls_conn, over the bytes tls_conn_take_output / tls_conn_feed
 * move. Checks, for what the services decide on: the CN (validated: one CN,
 * 1..63 printable bytes), the SHA-256 fingerprint of the DER, the issuing CA
 * (the device CA directly, an operator CA, or neither: a certificate the
 * root of the device bundle issued), the role from the OU, notAfter, and a
 * resumed session carrying the same record with resumed set. The PKI is made
 * here with the OpenSSL API.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "cms_err.h"
#include "tls.h"

#define LEAF_NOT_AFTER 2000000000L /* 2033-05-18 */

static char tmpdir[64];
static EVP_PKEY *root_key, *dev_ca_key, *op_ca_key, *leaf_key;
static X509 *root, *dev_ca, *op_ca;
static char dev_bundle[128], op_bundle[128], srv_cert[128], srv_key[128];

static EVP_PKEY *keygen(void)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(k);
    return k;
}

static void add_ext(X509 *c, X509 *issuer, int nid, const char *v)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, c, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_nconf_nid(NULL, &ctx, nid, v);
    assert_non_null(e);
    assert_int_equal(X509_add_ext(c, e, -1), 1);
    X509_EXTENSION_free(e);
}

/*
 * A certificate for key with the subject entries names ("CN=x", "OU=y", NULL
 * ended), signed by issuer/issuer_key (NULL: self-signed). ca: a CA.
 */
static X509 *make_cert(EVP_PKEY *key, const char *const *names, X509 *issuer, EVP_PKEY *issuer_key,
                       int ca)
{
    static long serial = 1;
    X509 *c = X509_new();
    X509_NAME *n = X509_NAME_new();
    assert_non_null(c);
    X509_set_version(c, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(c), serial++);
    for (size_t i = 0; names[i]; i++) {
        char field[8];
        const char *eq = strchr(names[i], '=');
        assert_non_null(eq);
        snprintf(field, sizeof(field), "%.*s", (int)(eq - names[i]), names[i]);
        assert_int_equal(X509_NAME_add_entry_by_txt(n, field, MBSTRING_ASC,
                                                    (const unsigned char *)eq + 1, -1, -1, 0),
                         1);
    }
    X509_set_subject_name(c, n);
    X509_set_issuer_name(c, issuer ? X509_get_subject_name(issuer) : n);
    X509_NAME_free(n);
    X509_gmtime_adj(X509_getm_notBefore(c), -3600);
    if (ca)
        X509_gmtime_adj(X509_getm_notAfter(c), 3650L * 86400);
    else
        ASN1_TIME_set(X509_getm_notAfter(c), (time_t)LEAF_NOT_AFTER);
    X509_set_pubkey(c, key);
    X509 *signer = issuer ? issuer : c;
    if (ca) {
        add_ext(c, signer, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(c, signer, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_ext(c, signer, NID_basic_constraints, "critical,CA:FALSE");
        add_ext(c, signer, NID_key_usage, "critical,digitalSignature");
        add_ext(c, signer, NID_ext_key_usage, "clientAuth,serverAuth");
    }
    add_ext(c, signer, NID_subject_key_identifier, "hash");
    if (issuer)
        add_ext(c, issuer, NID_authority_key_identifier, "keyid:always");
    assert_true(X509_sign(c, issuer_key ? issuer_key : key, EVP_sha256()) > 0);
    return c;
}

static void write_pem(const char *path, X509 *const *certs, size_t n, EVP_PKEY *key)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(PEM_write_X509(f, certs[i]), 1);
    if (key)
        assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
}

static int setup_all(void **state)
{
    (void)state;
    strcpy(tmpdir, "/tmp/test_tls.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    root_key = keygen();
    dev_ca_key = keygen();
    op_ca_key = keygen();
    leaf_key = keygen();
    root = make_cert(root_key, (const char *[]){"CN=Test Root", NULL}, NULL, NULL, 1);
    dev_ca = make_cert(dev_ca_key, (const char *[]){"CN=Test Device CA", NULL}, root, root_key, 1);
    op_ca = make_cert(op_ca_key, (const char *[]){"CN=Test Operator CA", NULL}, NULL, NULL, 1);
    X509 *srv = make_cert(leaf_key, (const char *[]){"CN=localhost", NULL}, root, root_key, 0);
    snprintf(dev_bundle, sizeof(dev_bundle), "%s/device-ca.pem", tmpdir);
    snprintf(op_bundle, sizeof(op_bundle), "%s/operator-ca.pem", tmpdir);
    snprintf(srv_cert, sizeof(srv_cert), "%s/server.crt", tmpdir);
    snprintf(srv_key, sizeof(srv_key), "%s/server.key", tmpdir);
    write_pem(dev_bundle, (X509 *[]){dev_ca, root}, 2, NULL); /* the issuing CA first */
    write_pem(op_bundle, (X509 *[]){op_ca}, 1, NULL);
    write_pem(srv_cert, (X509 *[]){srv}, 1, NULL);
    write_pem(srv_key, NULL, 0, leaf_key);
    X509_free(srv);
    return 0;
}

static int teardown_all(void **state)
{
    (void)state;
    X509_free(root);
    X509_free(dev_ca);
    X509_free(op_ca);
    EVP_PKEY_free(root_key);
    EVP_PKEY_free(dev_ca_key);
    EVP_PKEY_free(op_ca_key);
    EVP_PKEY_free(leaf_key);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return 0;
}

/* The HTTPS listener's context: device and operator CAs, a certificate optional. */
static tls_ctx *server_ctx(enum tls_client_auth auth, bool operators)
{
    char err[256] = "";
    tls_server_config cfg = {
        .cert_file = srv_cert,
        .key_file = srv_key,
        .device_ca_file = dev_bundle,
        .operator_ca_file = operators ? op_bundle : NULL,
        .client_auth = auth,
        .session_timeout_s = 300,
        .session_id_context = "test",
    };
    tls_ctx *ctx = tls_ctx_new_server(&cfg, err, sizeof(err));
    if (!ctx)
        fail_msg("tls_ctx_new_server: %s", err);
    return ctx;
}

typedef struct client {
    SSL_CTX *ctx;
    SSL *ssl;
    BIO *in, *out; /* memory BIOs: in = from the server, out = to the server */
} client;

/* A TLS 1.3 client presenting cert (NULL: none), resuming sess if given. */
static void client_new(client *cl, X509 *cert, EVP_PKEY *key, SSL_SESSION *sess)
{
    cl->ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(cl->ctx);
    SSL_CTX_set_verify(cl->ctx, SSL_VERIFY_NONE, NULL); /* the server's identity is not tested */
    if (cert) {
        assert_int_equal(SSL_CTX_use_certificate(cl->ctx, cert), 1);
        assert_int_equal(SSL_CTX_use_PrivateKey(cl->ctx, key), 1);
    }
    cl->ssl = SSL_new(cl->ctx);
    cl->in = BIO_new(BIO_s_mem());
    cl->out = BIO_new(BIO_s_mem());
    SSL_set_bio(cl->ssl, cl->in, cl->out);
    SSL_set_connect_state(cl->ssl);
    if (sess)
        assert_int_equal(SSL_set_session(cl->ssl, sess), 1);
}

static void client_free(client *cl)
{
    /* A close_notify first: OpenSSL forgets (makes unresumable) the session of
     * a connection freed without one. */
    (void)SSL_shutdown(cl->ssl);
    SSL_free(cl->ssl); /* frees the BIOs */
    SSL_CTX_free(cl->ctx);
}

/* Moves the server's pending output to the client. */
static void to_client(tls_conn *srv, client *cl)
{
    char *out;
    long n = tls_conn_take_output(srv, &out);
    if (n > 0)
        assert_int_equal(BIO_write(cl->in, out, (int)n), (int)n);
    free(out);
}

/* Moves the client's pending output to the server. */
static void to_server(client *cl, tls_conn *srv)
{
    char buf[16384];
    int n;
    while ((n = BIO_read(cl->out, buf, sizeof(buf))) > 0) {
        assert_int_equal(tls_conn_feed(srv, buf, (size_t)n), CMS_OK);
        assert_int_equal(tls_conn_keep_input(srv), CMS_OK); /* buf is reused */
    }
}

/*
 * Runs the handshake to its end on the server side. Returns what
 * tls_conn_handshake returned last (reason filled on failure). The client
 * then reads what the server sent after it (the session ticket).
 */
static int handshake(client *cl, tls_conn *srv, char *reason, size_t cap)
{
    int rc = CMS_EAGAIN;
    for (int round = 0; round < 10 && rc == CMS_EAGAIN; round++) {
        (void)SSL_do_handshake(cl->ssl);
        to_server(cl, srv);
        rc = tls_conn_handshake(srv, reason, cap);
        to_client(srv, cl);
    }
    if (rc == CMS_OK) {
        char b[64];
        (void)SSL_read(cl->ssl, b, sizeof(b)); /* takes the ticket; no data: WANT_READ */
    }
    return rc;
}

/* Handshake of a client with cert on ctx; returns the server connection
 * (handshake complete) and, if sess is not NULL, the session to resume. */
static tls_conn *connect_with(tls_ctx *ctx, X509 *cert, SSL_SESSION *resume, SSL_SESSION **sess)
{
    client cl;
    char reason[256] = "";
    client_new(&cl, cert, cert ? leaf_key : NULL, resume);
    tls_conn *srv = tls_conn_new_server(ctx);
    assert_non_null(srv);
    int rc = handshake(&cl, srv, reason, sizeof(reason));
    if (rc != CMS_OK)
        fail_msg("handshake: %d %s", rc, reason);
    if (sess)
        *sess = SSL_get1_session(cl.ssl);
    client_free(&cl);
    return srv;
}

static void assert_fingerprint_of(const tls_peer *p, X509 *cert)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    assert_int_equal(X509_digest(cert, EVP_sha256(), md, &n), 1);
    assert_int_equal(n, TLS_FINGERPRINT_SIZE);
    assert_memory_equal(p->fingerprint, md, TLS_FINGERPRINT_SIZE);
    char hex[TLS_FINGERPRINT_HEX_SIZE], want[TLS_FINGERPRINT_HEX_SIZE];
    tls_peer_fingerprint_hex(p, hex);
    for (unsigned i = 0; i < n; i++)
        snprintf(want + 2 * i, 3, "%02x", md[i]);
    assert_string_equal(hex, want);
}

static void test_device_certificate(void **state)
{
    (void)state;
    tls_ctx *ctx = server_ctx(TLS_CLIENT_CERT_OPTIONAL, true);
    X509 *dev = make_cert(leaf_key, (const char *[]){"CN=MON-0001", NULL}, dev_ca, dev_ca_key, 0);
    tls_conn *srv = connect_with(ctx, dev, NULL, NULL);
    const tls_peer *p = tls_conn_peer(srv);
    assert_true(p->has_cert);
    assert_true(p->cn_ok);
    assert_string_equal(p->cn, "MON-0001");
    assert_int_equal(p->issuer, TLS_ISSUER_DEVICE_CA);
    assert_int_equal(p->role, TLS_ROLE_NONE);
    assert_false(p->resumed);
    assert_int_equal(p->not_after, LEAF_NOT_AFTER);
    assert_string_equal(p->version, "TLSv1.3");
    assert_fingerprint_of(p, dev);
    tls_conn_free(srv);
    X509_free(dev);
    tls_ctx_free(ctx);
}

static void test_resumed_session_keeps_the_record(void **state)
{
    (void)state;
    tls_ctx *ctx = server_ctx(TLS_CLIENT_CERT_REQUIRE, false);
    X509 *dev = make_cert(leaf_key, (const char *[]){"CN=MON-0002", NULL}, dev_ca, dev_ca_key, 0);
    SSL_SESSION *sess = NULL;
    tls_conn *full = connect_with(ctx, dev, NULL, &sess);
    assert_non_null(sess);
    assert_true(SSL_SESSION_is_resumable(sess));
    assert_false(tls_conn_peer(full)->resumed);
    tls_conn *res = connect_with(ctx, dev, sess, NULL);
    const tls_peer *p = tls_conn_peer(res);
    assert_true(p->resumed); /* the services still ask the registry (test_peer.c) */
    assert_true(p->has_cert);
    assert_string_equal(p->cn, "MON-0002");
    assert_int_equal(p->issuer, TLS_ISSUER_DEVICE_CA);
    assert_int_equal(p->not_after, LEAF_NOT_AFTER);
    assert_fingerprint_of(p, dev);
    SSL_SESSION_free(sess);
    tls_conn_free(full);
    tls_conn_free(res);
    X509_free(dev);
    tls_ctx_free(ctx);
}

static void test_operator_certificate_and_role(void **state)
{
    (void)state;
    tls_ctx *ctx = server_ctx(TLS_CLIENT_CERT_OPTIONAL, true);
    /* The highest of the roles named, exact spelling only. */
    X509 *op = make_cert(leaf_key,
                         (const char *[]){"OU=viewer", "OU=Admin", "OU=operator", "CN=alice", NULL},
                         op_ca, op_ca_key, 0);
    tls_conn *srv = connect_with(ctx, op, NULL, NULL);
    const tls_peer *p = tls_conn_peer(srv);
    assert_string_equal(p->cn, "alice");
    assert_int_equal(p->issuer, TLS_ISSUER_OPERATOR_CA);
    assert_int_equal(p->role, TLS_ROLE_OPERATOR);
    tls_conn_free(srv);
    X509_free(op);
    op = make_cert(leaf_key, (const char *[]){"OU=admin", "OU=viewer", "CN=bob", NULL}, op_ca,
                   op_ca_key, 0);
    srv = connect_with(ctx, op, NULL, NULL);
    assert_int_equal(tls_conn_peer(srv)->role, TLS_ROLE_ADMIN);
    tls_conn_free(srv);
    X509_free(op);
    tls_ctx_free(ctx);
}

static void test_not_issued_by_the_device_ca(void **state)
{
    (void)state;
    tls_ctx *ctx = server_ctx(TLS_CLIENT_CERT_OPTIONAL, true);
    /* Verifies (the root is in the device bundle) but the root issued it. */
    X509 *rogue = make_cert(leaf_key, (const char *[]){"CN=MON-0001", NULL}, root, root_key, 0);
    tls_conn *srv = connect_with(ctx, rogue, NULL, NULL);
    const tls_peer *p = tls_conn_peer(srv);
    assert_true(p->has_cert);
    assert_true(p->cn_ok);
    assert_int_equal(p->issuer, TLS_ISSUER_NONE);
    assert_fingerprint_of(p, rogue);
    tls_conn_free(srv);
    X509_free(rogue);
    tls_ctx_free(ctx);
}

static void test_cn_validation(void **state)
{
    (void)state;
    tls_ctx *ctx = server_ctx(TLS_CLIENT_CERT_OPTIONAL, true);
    char cn63[3 + 64], cn64[3 + 65];
    snprintf(cn63, sizeof(cn63), "CN=%063d", 7);
    snprintf(cn64, sizeof(cn64), "CN=%064d", 7);
    struct {
        const char *names[3];
        bool ok;
    } cases[] = {
        {{cn63, NULL}, true},                    /* 63 bytes fit */
        {{cn64, NULL}, false},                   /* 64 do not */
        {{"CN=MON 0001", NULL}, false},          /* a space */
        {{"CN=MON-0001", "CN=MON-0002"}, false}, /* two CNs */
        {{"O=no CN", NULL}, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        X509 *c = make_cert(leaf_key, cases[i].names, dev_ca, dev_ca_key, 0);
        tls_conn *srv = connect_with(ctx, c, NULL, NULL);
        const tls_peer *p = tls_conn_peer(srv);
        assert_true(p->has_cert);
        assert_int_equal(p->cn_ok, cases[i].ok);
        if (cases[i].ok)
            assert_string_equal(p->cn, cases[i].names[0] + 3);
        else
            assert_string_equal(p->cn, "");
        assert_int_equal(p->issuer, TLS_ISSUER_DEVICE_CA); /* the decision refuses it */
        tls_conn_free(srv);
        X509_free(c);
    }
    tls_ctx_free(ctx);
}

static void test_no_certificate(void **state)
{
    (void)state;
    /* Optional: the record says so. */
    tls_ctx *ctx = server_ctx(TLS_CLIENT_CERT_OPTIONAL, true);
    tls_conn *srv = connect_with(ctx, NULL, NULL, NULL);
    const tls_peer *p = tls_conn_peer(srv);
    assert_false(p->has_cert);
    assert_false(p->cn_ok);
    assert_int_equal(p->issuer, TLS_ISSUER_NONE);
    assert_int_equal(p->not_after, 0);
    static const unsigned char zero[TLS_FINGERPRINT_SIZE];
    assert_memory_equal(p->fingerprint, zero, sizeof(zero));
    tls_conn_free(srv);
    tls_ctx_free(ctx);
    /* Required: the handshake fails, no record. */
    ctx = server_ctx(TLS_CLIENT_CERT_REQUIRE, false);
    client cl;
    char reason[256] = "";
    client_new(&cl, NULL, NULL, NULL);
    srv = tls_conn_new_server(ctx);
    assert_int_equal(handshake(&cl, srv, reason, sizeof(reason)), CMS_EPERM);
    assert_string_equal(reason, "no client certificate presented");
    assert_false(tls_conn_peer(srv)->has_cert);
    client_free(&cl);
    tls_conn_free(srv);
    tls_ctx_free(ctx);
}

static void test_operator_ca_unknown_to_mllp(void **state)
{
    (void)state;
    /* The MLLP context knows no operator CA: an operator certificate does not verify. */
    tls_ctx *ctx = server_ctx(TLS_CLIENT_CERT_REQUIRE, false);
    X509 *op =
        make_cert(leaf_key, (const char *[]){"OU=admin", "CN=alice", NULL}, op_ca, op_ca_key, 0);
    client cl;
    char reason[256] = "";
    client_new(&cl, op, leaf_key, NULL);
    tls_conn *srv = tls_conn_new_server(ctx);
    assert_int_equal(handshake(&cl, srv, reason, sizeof(reason)), CMS_EPERM);
    assert_non_null(strstr(reason, "client certificate refused"));
    client_free(&cl);
    tls_conn_free(srv);
    X509_free(op);
    tls_ctx_free(ctx);
}

static void test_ca_file_without_certificates(void **state)
{
    (void)state;
    char empty[128], err[256] = "";
    snprintf(empty, sizeof(empty), "%s/empty.pem", tmpdir);
    FILE *f = fopen(empty, "w");
    assert_non_null(f);
    fputs("no certificate here\n", f);
    fclose(f);
    tls_server_config cfg = {.cert_file = srv_cert,
                             .key_file = srv_key,
                             .device_ca_file = dev_bundle,
                             .operator_ca_file = empty,
                             .client_auth = TLS_CLIENT_CERT_OPTIONAL};
    assert_null(tls_ctx_new_server(&cfg, err, sizeof(err)));
    assert_true(err[0] != '\0');
}


/* ---- reload: tls_ctx_replace, the CRL checks, the failure classes ------------------ */

/* A CRL of issuer (signed by sign_key), nextUpdate next_days from now (negative: past). */
static void write_crl(const char *path, X509 *issuer, EVP_PKEY *sign_key, int next_days)
{
    X509_CRL *crl = X509_CRL_new();
    assert_non_null(crl);
    X509_CRL_set_version(crl, 1);
    X509_CRL_set_issuer_name(crl, X509_get_subject_name(issuer));
    ASN1_TIME *t = ASN1_TIME_adj(NULL, time(NULL), next_days < 0 ? next_days - 1 : -1, 0);
    X509_CRL_set1_lastUpdate(crl, t);
    ASN1_TIME_adj(t, time(NULL), next_days, 0);
    X509_CRL_set1_nextUpdate(crl, t);
    ASN1_TIME_free(t);
    assert_true(X509_CRL_sign(crl, sign_key, EVP_sha256()) > 0);
    FILE *f = fopen(path, "a");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509_CRL(f, crl), 1);
    fclose(f);
    X509_CRL_free(crl);
}

static tls_ctx *ctx_with(const char *device_bundle, const char *crl, char *err, size_t cap)
{
    tls_server_config cfg = {
        .cert_file = srv_cert,
        .key_file = srv_key,
        .device_ca_file = device_bundle,
        .operator_ca_file = op_bundle,
        .crl_file = crl,
        .client_auth = TLS_CLIENT_CERT_REQUIRE,
        .session_timeout_s = 300,
        .session_id_context = "test",
    };
    return tls_ctx_new_server(&cfg, err, cap);
}

static void test_replace_is_for_new_connections(void **state)
{
    (void)state;
    char bundle2[128], err[256] = "", reason[256] = "";
    EVP_PKEY *ca2_key = keygen();
    X509 *ca2 = make_cert(ca2_key, (const char *[]){"CN=Test Device CA 2", NULL}, root, root_key, 1);
    snprintf(bundle2, sizeof(bundle2), "%s/device-ca-2.pem", tmpdir);
    write_pem(bundle2, (X509 *[]){ca2, root}, 2, NULL);
    X509 *dev1 = make_cert(leaf_key, (const char *[]){"CN=MON-0001", NULL}, dev_ca, dev_ca_key, 0);
    X509 *dev2 = make_cert(leaf_key, (const char *[]){"CN=MON-0002", NULL}, ca2, ca2_key, 0);

    tls_ctx *ctx = ctx_with(dev_bundle, NULL, err, sizeof(err));
    assert_non_null(ctx);
    SSL_SESSION *sess = NULL;
    tls_conn *before = connect_with(ctx, dev1, NULL, &sess);
    /* A handshake under way when the swap happens finishes on the old generation. */
    client mid;
    client_new(&mid, dev1, leaf_key, NULL);
    tls_conn *during = tls_conn_new_server(ctx);
    (void)SSL_do_handshake(mid.ssl);
    to_server(&mid, during);

    tls_ctx *fresh = ctx_with(bundle2, NULL, err, sizeof(err));
    assert_non_null(fresh);
    tls_ctx_replace(ctx, fresh); /* fresh is taken */

    assert_int_equal(handshake(&mid, during, reason, sizeof(reason)), CMS_OK);
    assert_int_equal(tls_conn_peer(during)->issuer, TLS_ISSUER_DEVICE_CA);
    client_free(&mid);
    /* New connections: the new CA only; the old session does not resume. */
    tls_conn *after = connect_with(ctx, dev2, NULL, NULL);
    assert_int_equal(tls_conn_peer(after)->issuer, TLS_ISSUER_DEVICE_CA);
    tls_conn *again = connect_with(ctx, dev2, sess, NULL);
    assert_false(tls_conn_peer(again)->resumed);
    client cl;
    client_new(&cl, dev1, leaf_key, NULL);
    tls_conn *old_ca = tls_conn_new_server(ctx);
    assert_int_equal(handshake(&cl, old_ca, reason, sizeof(reason)), CMS_EPERM);
    assert_int_equal(tls_conn_failure(old_ca), TLS_FAIL_UNKNOWN_CA);
    client_free(&cl);
    /* The context may go before its connections: they hold their generation. */
    tls_ctx_free(ctx);
    assert_int_equal(tls_conn_peer(before)->issuer, TLS_ISSUER_DEVICE_CA);
    assert_int_equal(tls_conn_write(before, "x", 1), CMS_OK);
    tls_conn_free(before);
    tls_conn_free(during);
    tls_conn_free(after);
    tls_conn_free(again);
    tls_conn_free(old_ca);
    SSL_SESSION_free(sess);
    X509_free(dev1);
    X509_free(dev2);
    X509_free(ca2);
    EVP_PKEY_free(ca2_key);
}

static void test_scraper_role(void **state)
{
    (void)state;
    tls_ctx *ctx = server_ctx(TLS_CLIENT_CERT_OPTIONAL, true);
    X509 *s1 = make_cert(leaf_key, (const char *[]){"OU=scraper", "CN=prom", NULL}, op_ca,
                         op_ca_key, 0);
    X509 *s2 = make_cert(leaf_key, (const char *[]){"OU=scraper", "OU=viewer", "CN=prom2", NULL},
                         op_ca, op_ca_key, 0);
    tls_conn *a = connect_with(ctx, s1, NULL, NULL);
    tls_conn *b = connect_with(ctx, s2, NULL, NULL);
    assert_int_equal(tls_conn_peer(a)->role, TLS_ROLE_SCRAPER);
    assert_int_equal(tls_conn_peer(b)->role, TLS_ROLE_VIEWER); /* the highest */
    tls_conn_free(a);
    tls_conn_free(b);
    X509_free(s1);
    X509_free(s2);
    tls_ctx_free(ctx);
}

static void test_crl_checks_and_info(void **state)
{
    (void)state;
    char crl[128], err[256];
    tls_ctx *ctx;
    tls_ctx_info info;
    EVP_PKEY *other = keygen();
    snprintf(crl, sizeof(crl), "%s/crl.pem", tmpdir);

    unlink(crl); /* the device CA's own CRL, and the operator CA's: accepted */
    write_crl(crl, dev_ca, dev_ca_key, 7);
    write_crl(crl, op_ca, op_ca_key, 3);
    ctx = ctx_with(dev_bundle, crl, err, sizeof(err));
    if (!ctx)
        fail_msg("%s", err);
    tls_ctx_get_info(ctx, &info);
    assert_int_equal(info.cert_not_after, LEAF_NOT_AFTER);
    assert_true(info.device_ca_not_after > time(NULL) + 3000L * 86400); /* the earliest CA */
    assert_true(info.operator_ca_not_after > time(NULL));
    assert_true(labs((long)(info.crl_next_update - (time(NULL) + 3 * 86400))) < 60);
    tls_ctx_free(ctx);

    unlink(crl); /* only another CA's: device certificates would go unchecked */
    write_crl(crl, op_ca, op_ca_key, 7);
    err[0] = '\0';
    assert_null(ctx_with(dev_bundle, crl, err, sizeof(err)));
    assert_non_null(strstr(err, "no CRL of the device CA"));

    unlink(crl); /* our device CA's name, another key */
    write_crl(crl, dev_ca, other, 7);
    err[0] = '\0';
    assert_null(ctx_with(dev_bundle, crl, err, sizeof(err)));
    assert_non_null(strstr(err, "not signed by that CA's key"));

    unlink(crl); /* past its nextUpdate */
    write_crl(crl, dev_ca, dev_ca_key, -1);
    err[0] = '\0';
    assert_null(ctx_with(dev_bundle, crl, err, sizeof(err)));
    assert_non_null(strstr(err, "expired"));

    unlink(crl); /* no CRL in the file at all */
    FILE *f = fopen(crl, "w");
    fputs("nothing\n", f);
    fclose(f);
    err[0] = '\0';
    assert_null(ctx_with(dev_bundle, crl, err, sizeof(err)));
    assert_non_null(strstr(err, "holds no CRL"));
    EVP_PKEY_free(other);
}

static void test_failure_classes(void **state)
{
    (void)state;
    char reason[256];
    tls_ctx *ctx = server_ctx(TLS_CLIENT_CERT_REQUIRE, false);
    client cl;
    /* No certificate. */
    client_new(&cl, NULL, NULL, NULL);
    tls_conn *srv = tls_conn_new_server(ctx);
    assert_int_equal(handshake(&cl, srv, reason, sizeof(reason)), CMS_EPERM);
    assert_int_equal(tls_conn_failure(srv), TLS_FAIL_NO_CERT);
    client_free(&cl);
    tls_conn_free(srv);
    /* Garbage instead of a ClientHello. */
    srv = tls_conn_new_server(ctx);
    static const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(tls_conn_feed(srv, junk, sizeof(junk) - 1), CMS_OK);
    assert_int_equal(tls_conn_handshake(srv, reason, sizeof(reason)), CMS_EPROTO);
    assert_int_equal(tls_conn_failure(srv), TLS_FAIL_PROTOCOL);
    tls_conn_free(srv);
    tls_ctx_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_certificate),
        cmocka_unit_test(test_resumed_session_keeps_the_record),
        cmocka_unit_test(test_operator_certificate_and_role),
        cmocka_unit_test(test_not_issued_by_the_device_ca),
        cmocka_unit_test(test_cn_validation),
        cmocka_unit_test(test_no_certificate),
        cmocka_unit_test(test_operator_ca_unknown_to_mllp),
        cmocka_unit_test(test_ca_file_without_certificates),
        cmocka_unit_test(test_replace_is_for_new_connections),
        cmocka_unit_test(test_scraper_role),
        cmocka_unit_test(test_crl_checks_and_info),
        cmocka_unit_test(test_failure_classes),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
