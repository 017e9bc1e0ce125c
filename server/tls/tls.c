/*
 * tls.c - OpenSSL 3 over an in-memory transport BIO. See tls.h for the data
 * flow and the WANT_READ/WANT_WRITE rule.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "cms_err.h"
#include "tls.h"

/*
 * One generation of a context: what its files said when it was built. A
 * reload (tls_ctx_replace) makes a new generation current; connections keep a
 * reference to the one they started with (their SSL and the issuers that
 * classify their peer), so the old one is freed with its last connection.
 */
typedef struct tls_gen {
    SSL_CTX *ssl_ctx;
    STACK_OF(X509_NAME) *crl_issuers; /* CAs whose CRL is loaded (owned) */
    X509 *device_issuer;              /* owned: first certificate of device_ca_file */
    STACK_OF(X509) *operator_issuers; /* owned: operator_ca_file's certificates, or NULL */
    tls_ctx_info info;
    _Atomic unsigned refs; /* the tls_ctx while current, + one per connection */
} tls_gen;

struct tls_ctx {
    pthread_mutex_t mu; /* guards cur: taking a reference and swapping */
    tls_gen *cur;
};

struct tls_conn {
    SSL *ssl;                /* owned; owns the transport BIO */
    tls_gen *gen;            /* referenced: the generation ssl was made from */
    const unsigned char *in; /* fed, borrowed until tls_conn_keep_input */
    size_t in_len;
    unsigned char *kept; /* owned: input kept from earlier feeds, read first */
    size_t kept_off, kept_len, kept_cap;
    char *out; /* owned: ciphertext not yet taken */
    size_t out_len, out_cap;
    bool handshake_done;
    enum tls_failure failure; /* of a refused handshake */
    tls_peer peer; /* filled when the handshake completes */
};

/* SSL_CTX ex_data slot pointing back at its tls_gen, for the verify callback. */
static int tls_ctx_index = -1;

/*
 * With a CRL configured, OpenSSL wants a CRL for every certificate it checks.
 * The CRL covers the device CA; other client CAs (the operator CA) publish
 * none here, so "unable to get CRL" is forgiven exactly for certificates
 * whose issuer has no CRL loaded. A device certificate without a matching
 * CRL entry, or listed in it, is still judged by the CRL.
 */
static int verify_cb(int ok, X509_STORE_CTX *xs)
{
    if (ok || X509_STORE_CTX_get_error(xs) != X509_V_ERR_UNABLE_TO_GET_CRL)
        return ok;
    SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
    tls_gen *ctx = ssl ? SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), tls_ctx_index) : NULL;
    X509 *cur = X509_STORE_CTX_get_current_cert(xs);
    if (!ctx || !cur || !ctx->crl_issuers)
        return ok;
    X509_NAME *issuer = X509_get_issuer_name(cur);
    for (int i = 0; i < sk_X509_NAME_num(ctx->crl_issuers); i++)
        if (X509_NAME_cmp(issuer, sk_X509_NAME_value(ctx->crl_issuers, i)) == 0)
            return ok; /* we do have this CA's CRL: no forgiveness */
    X509_STORE_CTX_set_error(xs, X509_V_OK);
    return 1;
}

/* Copies the oldest queued OpenSSL error into err and clears the queue. */
static void ssl_error_string(char *err, size_t cap, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "unknown error";
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    if (err && cap)
        snprintf(err, cap, "%s: %s", what, buf);
    ERR_clear_error();
}

static int64_t asn1_time_epoch(const ASN1_TIME *t)
{
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return (int64_t)timegm(&tm);
}

/*
 * Checks every CRL of crl_file before any is used: each whose issuer is a
 * certificate of the device CA bundle (cas) or of the operator CA bundle
 * (g->operator_issuers: operators' certificates are revocable too) must be
 * signed by that certificate's key and not be past its nextUpdate (OpenSSL
 * would then refuse every certificate it covers); CRLs of other CAs match no
 * chain this context accepts and are passed over. One of them must be the
 * device issuing CA's own (else device certificates would be checked against
 * none). Records the issuers and the earliest nextUpdate.
 */
static int check_crls(tls_gen *g, const char *crl_file, STACK_OF(X509) *cas, char *err,
                      size_t cap)
{
    BIO *b = BIO_new_file(crl_file, "r");
    X509_CRL *crl = NULL;
    int rc = CMS_EINVAL, n = 0;
    bool device_ca_crl = false;
    time_t now = time(NULL);
    char name[256];
    if (!b) {
        snprintf(err, cap, "tls_crl: cannot read %s", crl_file);
        goto out;
    }
    if (!g->crl_issuers && !(g->crl_issuers = sk_X509_NAME_new_null())) {
        snprintf(err, cap, "out of memory");
        goto out;
    }
    while ((crl = PEM_read_bio_X509_CRL(b, NULL, NULL, NULL)) != NULL) {
        n++;
        X509_NAME *issuer = X509_CRL_get_issuer(crl);
        X509_NAME_oneline(issuer, name, sizeof(name));
        X509 *ca = NULL;
        for (int i = 0; i < sk_X509_num(cas) && !ca; i++)
            if (X509_NAME_cmp(issuer, X509_get_subject_name(sk_X509_value(cas, i))) == 0)
                ca = sk_X509_value(cas, i);
        for (int i = 0; g->operator_issuers && i < sk_X509_num(g->operator_issuers) && !ca; i++)
            if (X509_NAME_cmp(issuer, X509_get_subject_name(
                                          sk_X509_value(g->operator_issuers, i))) == 0)
                ca = sk_X509_value(g->operator_issuers, i);
        if (!ca) { /* a CA this context does not trust: its CRL can match no chain here
                    * (the MLLP context has no operator CAs) */
            X509_CRL_free(crl);
            crl = NULL;
            continue;
        }
        EVP_PKEY *key = X509_get0_pubkey(ca);
        if (!key || X509_CRL_verify(crl, key) != 1) {
            snprintf(err, cap, "tls_crl: the CRL of %s is not signed by that CA's key", name);
            goto out;
        }
        int64_t next = asn1_time_epoch(X509_CRL_get0_nextUpdate(crl));
        if (next && next < (int64_t)now) {
            snprintf(err, cap, "tls_crl: the CRL of %s expired (nextUpdate passed): every "
                               "certificate it covers would be refused", name);
            goto out;
        }
        if (next && (!g->info.crl_next_update || next < g->info.crl_next_update))
            g->info.crl_next_update = next;
        if (X509_cmp(ca, sk_X509_value(cas, 0)) == 0)
            device_ca_crl = true;
        X509_NAME *dup = X509_NAME_dup(issuer);
        if (!dup || !sk_X509_NAME_push(g->crl_issuers, dup)) {
            X509_NAME_free(dup);
            snprintf(err, cap, "out of memory");
            goto out;
        }
        X509_CRL_free(crl);
        crl = NULL;
    }
    if (n == 0) {
        snprintf(err, cap, "tls_crl: %s holds no CRL", crl_file);
        goto out;
    }
    if (!device_ca_crl) {
        snprintf(err, cap, "tls_crl: no CRL of the device CA (the first certificate of "
                           "tls_device_ca)");
        goto out;
    }
    rc = CMS_OK;
out:
    X509_CRL_free(crl);
    BIO_free(b);
    ERR_clear_error();
    return rc;
}

static int load_crl(tls_gen *ctx, const char *crl_file, STACK_OF(X509) *cas, char *err,
                    size_t cap)
{
    if (check_crls(ctx, crl_file, cas, err, cap) != CMS_OK)
        return CMS_EINVAL;
    X509_STORE *store = SSL_CTX_get_cert_store(ctx->ssl_ctx);
    X509_LOOKUP *lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
    if (!lookup || X509_load_crl_file(lookup, crl_file, X509_FILETYPE_PEM) <= 0) {
        ssl_error_string(err, cap, "cannot load CRL");
        return CMS_EINVAL;
    }
    ERR_clear_error();
    X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
    return CMS_OK;
}

/* Every certificate of a PEM file, in order; NULL with a reason in err when
 * the file cannot be read or holds none. */
static STACK_OF(X509) *load_certs(const char *path, char *err, size_t cap)
{
    STACK_OF(X509) *sk = sk_X509_new_null();
    BIO *b = BIO_new_file(path, "r");
    X509 *x;
    if (!sk || !b) {
        snprintf(err, cap, "cannot read %s", path);
        goto fail;
    }
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
        if (!sk_X509_push(sk, x)) {
            X509_free(x);
            snprintf(err, cap, "out of memory");
            goto fail;
        }
    }
    ERR_clear_error();
    if (sk_X509_num(sk) == 0) {
        snprintf(err, cap, "%s holds no certificate", path);
        goto fail;
    }
    BIO_free(b);
    return sk;
fail:
    ERR_clear_error();
    BIO_free(b);
    sk_X509_pop_free(sk, X509_free);
    return NULL;
}

/* The earliest notAfter of a bundle's certificates. */
static int64_t earliest_not_after(STACK_OF(X509) *sk)
{
    int64_t min = 0;
    for (int i = 0; sk && i < sk_X509_num(sk); i++) {
        int64_t t = asn1_time_epoch(X509_get0_notAfter(sk_X509_value(sk, i)));
        if (t && (!min || t < min))
            min = t;
    }
    return min;
}

/* The issuing CAs peers are classified by (tls_peer.issuer); the device CA
 * bundle itself (every certificate, for the CRL checks) goes to *dev_out. */
static int load_issuers(tls_gen *ctx, const tls_server_config *cfg, STACK_OF(X509) **dev_out,
                        char *err, size_t cap)
{
    STACK_OF(X509) *dev = load_certs(cfg->device_ca_file, err, cap);
    if (!dev)
        return CMS_EINVAL;
    ctx->info.device_ca_not_after = earliest_not_after(dev);
    ctx->device_issuer = sk_X509_value(dev, 0);
    X509_up_ref(ctx->device_issuer); /* the first: the issuing CA */
    *dev_out = dev;
    if (cfg->operator_ca_file && cfg->operator_ca_file[0]) {
        ctx->operator_issuers = load_certs(cfg->operator_ca_file, err, cap);
        if (!ctx->operator_issuers)
            return CMS_EINVAL;
        ctx->info.operator_ca_not_after = earliest_not_after(ctx->operator_issuers);
    }
    return CMS_OK;
}

static void gen_free(tls_gen *g)
{
    if (!g)
        return;
    SSL_CTX_free(g->ssl_ctx);
    sk_X509_NAME_pop_free(g->crl_issuers, X509_NAME_free);
    X509_free(g->device_issuer);
    sk_X509_pop_free(g->operator_issuers, X509_free);
    free(g);
}

static void gen_unref(tls_gen *g)
{
    if (g && atomic_fetch_sub(&g->refs, 1) == 1)
        gen_free(g);
}

/* A generation built from cfg's files, one reference held; NULL with a reason. */
static tls_gen *gen_new(const tls_server_config *cfg, char *err, size_t cap)
{
    tls_gen *ctx = calloc(1, sizeof(*ctx));
    SSL_CTX *c = NULL;
    STACK_OF(X509_NAME) *names = NULL;
    STACK_OF(X509) *dev_cas = NULL;
    if (!ctx) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    atomic_init(&ctx->refs, 1);
    ERR_clear_error();
    c = SSL_CTX_new(TLS_server_method());
    if (!c) {
        ssl_error_string(err, cap, "SSL_CTX_new");
        goto fail;
    }
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                               SSL_OP_NO_COMPRESSION);
    /* Idle connections give their read/write buffers back (many mostly idle monitors),
     * but once per processing step (tls_conn_trim) rather than after every record as
     * SSL_MODE_RELEASE_BUFFERS would: a handshake writes and reads several records.
     * The chain sent is tls_cert's file as it is (leaf, then intermediates), never one
     * OpenSSL builds from the client-CA store: that added our root to every handshake
     * (a certificate the monitor already has and must parse: ~15 % of its full
     * handshake) and could send a chain the operator never configured (nginx too). */
    SSL_CTX_set_mode(c, SSL_MODE_NO_AUTO_CHAIN);
    if (SSL_CTX_set_cipher_list(c, "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1") != 1 ||
        /* TLS 1.3: AES-128-GCM first. P-256/X25519 give 128-bit security, so AES-256
         * adds nothing but cost, and its SHA-384 key schedule has no CPU instructions
         * here while SHA-256 has (resumption +3 %, measured). */
        SSL_CTX_set_ciphersuites(c, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                    "TLS_CHACHA20_POLY1305_SHA256") != 1 ||
        SSL_CTX_set1_groups_list(c, "X25519:P-256:P-384") != 1) {
        ssl_error_string(err, cap, "cipher/group configuration");
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(c, cfg->cert_file) != 1) {
        ssl_error_string(err, cap, "cannot load tls_cert");
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(c, cfg->key_file, SSL_FILETYPE_PEM) != 1) {
        /* Never print key material: OpenSSL's error string names only the failure. */
        ssl_error_string(err, cap, "cannot load tls_key");
        goto fail;
    }
    if (SSL_CTX_check_private_key(c) != 1) {
        ssl_error_string(err, cap, "tls_key does not match tls_cert");
        goto fail;
    }
    ctx->info.cert_not_after = asn1_time_epoch(X509_get0_notAfter(SSL_CTX_get0_certificate(c)));
    if (SSL_CTX_load_verify_locations(c, cfg->device_ca_file, NULL) != 1) {
        ssl_error_string(err, cap, "cannot load client CA file");
        goto fail;
    }
    names = SSL_load_client_CA_file(cfg->device_ca_file);
    if (!names) {
        ssl_error_string(err, cap, "client CA file has no certificates");
        goto fail;
    }
    if (cfg->operator_ca_file && cfg->operator_ca_file[0]) {
        if (SSL_CTX_load_verify_locations(c, cfg->operator_ca_file, NULL) != 1 ||
            SSL_add_file_cert_subjects_to_stack(names, cfg->operator_ca_file) != 1) {
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            ssl_error_string(err, cap, "cannot load the second client CA file");
            goto fail;
        }
    }
    SSL_CTX_set_client_CA_list(c, names); /* takes ownership */
    if (load_issuers(ctx, cfg, &dev_cas, err, cap) != CMS_OK)
        goto fail;
    /* Every certificate in the client CA files is a trust anchor as it is: a chain
     * ends at the first of them it reaches (the device CA for a monitor), instead
     * of also re-verifying the device CA's signature by the root on every full
     * handshake (one ECDSA verify of four: +8 % full handshakes/s, measured in
     * docs/benchmarks.md). The files are configuration we trust already; to stop
     * trusting an issuing CA, take it out of them (its root going alone does not). */
    X509_STORE_set_flags(SSL_CTX_get_cert_store(c), X509_V_FLAG_PARTIAL_CHAIN);
    int mode = SSL_VERIFY_PEER;
    if (cfg->client_auth == TLS_CLIENT_CERT_REQUIRE)
        mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    SSL_CTX_set_verify_depth(c, 4);
    ctx->ssl_ctx = c;
    if (tls_ctx_index < 0)
        tls_ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    SSL_CTX_set_ex_data(c, tls_ctx_index, ctx);
    SSL_CTX_set_verify(c, mode, verify_cb);
    if (cfg->crl_file && cfg->crl_file[0] &&
        load_crl(ctx, cfg->crl_file, dev_cas, err, cap) != CMS_OK)
        goto fail;

    const char *sid = cfg->session_id_context ? cfg->session_id_context : "cms";
    SSL_CTX_set_session_id_context(c, (const unsigned char *)sid, (unsigned)strlen(sid));
    if (cfg->session_timeout_s == 0) {
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(c, 0);
    } else {
        /* Stateful TLS 1.3 tickets (SSL_OP_NO_TICKET with a server cache): the
         * ticket is only a session id; the session, with the already parsed peer
         * certificate, stays in this process. A stateless ticket carries the
         * certificate and OpenSSL 3.0 decodes it again on every resumption, which
         * made resumption cost half a full handshake (measured, docs/benchmarks.md).
         * It also means sessions can be dropped here (tls_ctx_set_crl), which a
         * ticket held by the client cannot. The cache is shared by the worker
         * threads (one SSL_CTX), bounded (least recently added go first) and lost
         * on restart (monitors then do one full handshake). A resumed session
         * still goes through the device status check above this layer, so
         * resumption never skips authorisation. */
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_SERVER);
        SSL_CTX_sess_set_cache_size(c, cfg->session_cache_size ? (long)cfg->session_cache_size
                                                               : TLS_SESSION_CACHE_SIZE);
        SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
        SSL_CTX_set_timeout(c, (long)cfg->session_timeout_s);
        SSL_CTX_set_num_tickets(c, 1);
    }
    ctx->ssl_ctx = c;
    sk_X509_pop_free(dev_cas, X509_free);
    return ctx;
fail:
    sk_X509_pop_free(dev_cas, X509_free);
    if (!ctx->ssl_ctx)
        SSL_CTX_free(c);
    gen_free(ctx);
    return NULL;
}

tls_ctx *tls_ctx_new_server(const tls_server_config *cfg, char *err, size_t cap)
{
    tls_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    if (pthread_mutex_init(&ctx->mu, NULL) != 0) {
        snprintf(err, cap, "out of memory");
        free(ctx);
        return NULL;
    }
    if (!(ctx->cur = gen_new(cfg, err, cap))) {
        pthread_mutex_destroy(&ctx->mu);
        free(ctx);
        return NULL;
    }
    return ctx;
}

void tls_ctx_free(tls_ctx *ctx)
{
    if (!ctx)
        return;
    gen_unref(ctx->cur); /* connections keep theirs */
    pthread_mutex_destroy(&ctx->mu);
    free(ctx);
}

void tls_ctx_replace(tls_ctx *ctx, tls_ctx *fresh)
{
    pthread_mutex_lock(&fresh->mu);
    tls_gen *g = fresh->cur;
    fresh->cur = NULL;
    pthread_mutex_unlock(&fresh->mu);
    pthread_mutex_lock(&ctx->mu);
    tls_gen *old = ctx->cur;
    ctx->cur = g;
    pthread_mutex_unlock(&ctx->mu);
    gen_unref(old);
    pthread_mutex_destroy(&fresh->mu);
    free(fresh);
}

void tls_ctx_get_info(tls_ctx *ctx, tls_ctx_info *out)
{
    pthread_mutex_lock(&ctx->mu);
    *out = ctx->cur->info;
    pthread_mutex_unlock(&ctx->mu);
}

/* ---- the transport BIO ---------------------------------------------------------------
 *
 * One per connection, both directions (SSL_set_bio(ssl, b, b)); its data is
 * the tls_conn. Compared with a pair of memory BIOs (measured in
 * docs/benchmarks.md, P3 and P5): no copy of the input (read where it was
 * received), no copy of the output (the buffer OpenSSL's records were
 * appended to is handed to the socket as it is), and an idle session keeps
 * one small BIO and no buffer at all.
 */

static BIO_METHOD *transport_method;
static pthread_once_t transport_once = PTHREAD_ONCE_INIT;

/* Room for more bytes of output. CMS_OK or CMS_ENOMEM. */
static int out_reserve(tls_conn *tc, size_t more)
{
    if (tc->out_len + more <= tc->out_cap)
        return CMS_OK;
    size_t cap = tc->out_cap ? tc->out_cap : 4096;
    while (cap < tc->out_len + more)
        cap *= 2;
    char *n = realloc(tc->out, cap);
    if (!n)
        return CMS_ENOMEM;
    tc->out = n;
    tc->out_cap = cap;
    return CMS_OK;
}

static int transport_write(BIO *b, const char *data, int len)
{
    tls_conn *tc = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    if (out_reserve(tc, (size_t)len) != CMS_OK)
        return -1;
    memcpy(tc->out + tc->out_len, data, (size_t)len);
    tc->out_len += (size_t)len;
    return len;
}

static int transport_read(BIO *b, char *buf, int cap)
{
    tls_conn *tc = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (cap <= 0)
        return 0;
    size_t n = 0;
    if (tc->kept_off < tc->kept_len) { /* older bytes first */
        n = tc->kept_len - tc->kept_off;
        n = n < (size_t)cap ? n : (size_t)cap;
        memcpy(buf, tc->kept + tc->kept_off, n);
        tc->kept_off += n;
    } else if (tc->in_len > 0) {
        n = tc->in_len < (size_t)cap ? tc->in_len : (size_t)cap;
        memcpy(buf, tc->in, n);
        tc->in += n;
        tc->in_len -= n;
    }
    if (n == 0) { /* "no data yet", not EOF */
        BIO_set_retry_read(b);
        return -1;
    }
    return (int)n;
}

static long transport_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    tls_conn *tc = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return tc ? (long)tls_conn_pending_input(tc) : 0;
    case BIO_CTRL_WPENDING:
        return tc ? (long)tc->out_len : 0;
    default:
        return 0; /* no kTLS, no EOF, no push/pop */
    }
}

static int transport_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static int transport_destroy(BIO *b)
{
    BIO_set_data(b, NULL);
    return 1;
}

static void transport_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "cms transport");
    if (m && (BIO_meth_set_write(m, transport_write) != 1 ||
              BIO_meth_set_read(m, transport_read) != 1 ||
              BIO_meth_set_ctrl(m, transport_ctrl) != 1 ||
              BIO_meth_set_create(m, transport_create) != 1 ||
              BIO_meth_set_destroy(m, transport_destroy) != 1)) {
        BIO_meth_free(m);
        m = NULL;
    }
    transport_method = m;
}

tls_conn *tls_conn_new_server(tls_ctx *ctx)
{
    pthread_once(&transport_once, transport_method_init);
    tls_conn *tc = calloc(1, sizeof(*tc));
    BIO *b = NULL;
    if (!tc || !transport_method || !(b = BIO_new(transport_method)))
        goto fail;
    /* The current generation, referenced before the lock is let go: a reload
     * swapping it meanwhile cannot free it under us. */
    pthread_mutex_lock(&ctx->mu);
    tc->gen = ctx->cur;
    atomic_fetch_add(&tc->gen->refs, 1);
    pthread_mutex_unlock(&ctx->mu);
    if (!(tc->ssl = SSL_new(tc->gen->ssl_ctx)))
        goto fail;
    tc->peer.version = "";
    BIO_set_data(b, tc);        /* tc does not move: it is on the heap */
    SSL_set_bio(tc->ssl, b, b); /* one reference, taken by ssl */
    SSL_set_accept_state(tc->ssl);
    return tc;
fail:
    BIO_free(b);
    if (tc)
        gen_unref(tc->gen);
    free(tc);
    return NULL;
}

void tls_conn_free(tls_conn *tc)
{
    if (!tc)
        return;
    SSL_free(tc->ssl); /* frees the transport BIO */
    gen_unref(tc->gen);
    free(tc->kept);
    free(tc->out);
    free(tc);
}

/* Appends len bytes to the kept input. */
static int keep_bytes(tls_conn *tc, const unsigned char *data, size_t len)
{
    if (tc->kept_off > 0 && tc->kept_off == tc->kept_len)
        tc->kept_off = tc->kept_len = 0;
    if (tc->kept_len + len > tc->kept_cap) {
        if (tc->kept_off > 0) { /* slide the unread part down first */
            memmove(tc->kept, tc->kept + tc->kept_off, tc->kept_len - tc->kept_off);
            tc->kept_len -= tc->kept_off;
            tc->kept_off = 0;
        }
        if (tc->kept_len + len > tc->kept_cap) {
            size_t cap = tc->kept_cap ? tc->kept_cap : 1024;
            while (cap < tc->kept_len + len)
                cap *= 2;
            unsigned char *n = realloc(tc->kept, cap);
            if (!n)
                return CMS_ENOMEM;
            tc->kept = n;
            tc->kept_cap = cap;
        }
    }
    memcpy(tc->kept + tc->kept_len, data, len);
    tc->kept_len += len;
    return CMS_OK;
}

int tls_conn_keep_input(tls_conn *tc)
{
    int rc = CMS_OK;
    if (tc->in_len > 0 && tc->ssl)
        rc = keep_bytes(tc, tc->in, tc->in_len);
    tc->in = NULL;
    tc->in_len = 0;
    return rc;
}

int tls_conn_feed(tls_conn *tc, const void *data, size_t len)
{
    if (len == 0)
        return CMS_OK;
    if (len > INT32_MAX || tls_conn_keep_input(tc) != CMS_OK)
        return CMS_ENOMEM;
    if (tc->kept_off < tc->kept_len) /* behind older bytes: kept in order */
        return keep_bytes(tc, data, len);
    tc->in = data;
    tc->in_len = len;
    return CMS_OK;
}

size_t tls_conn_pending_input(const tls_conn *tc)
{
    return tc->kept_len - tc->kept_off + tc->in_len;
}

/* ---- the peer record ---------------------------------------------------------------- */

/* The subject's one CN into out (TLS_PEER_CN_SIZE bytes): true when there is
 * exactly one, of 1..63 bytes, each printable ASCII without space. */
static bool peer_cn(X509 *cert, char out[TLS_PEER_CN_SIZE])
{
    X509_NAME *name = X509_get_subject_name(cert);
    int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
    if (idx < 0 || X509_NAME_get_index_by_NID(name, NID_commonName, idx) >= 0)
        return false;
    const ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
    const unsigned char *p = ASN1_STRING_get0_data(s);
    int len = ASN1_STRING_length(s);
    if (len <= 0 || len >= TLS_PEER_CN_SIZE)
        return false;
    for (int i = 0; i < len; i++)
        if (p[i] < 0x21 || p[i] > 0x7e)
            return false;
    memcpy(out, p, (size_t)len);
    out[len] = '\0';
    return true;
}

/* The highest role among the subject's OU values. */
static enum tls_role peer_role(X509 *cert)
{
    X509_NAME *name = X509_get_subject_name(cert);
    int idx = -1;
    enum tls_role best = TLS_ROLE_NONE;
    while ((idx = X509_NAME_get_index_by_NID(name, NID_organizationalUnitName, idx)) >= 0) {
        const ASN1_STRING *v = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
        const char *p = (const char *)ASN1_STRING_get0_data(v);
        int n = ASN1_STRING_length(v);
        enum tls_role r = TLS_ROLE_NONE;
        if (n == 7 && memcmp(p, "scraper", 7) == 0)
            r = TLS_ROLE_SCRAPER;
        else if (n == 5 && memcmp(p, "admin", 5) == 0)
            r = TLS_ROLE_ADMIN;
        else if (n == 8 && memcmp(p, "operator", 8) == 0)
            r = TLS_ROLE_OPERATOR;
        else if (n == 6 && memcmp(p, "viewer", 6) == 0)
            r = TLS_ROLE_VIEWER;
        if (r > best)
            best = r;
    }
    return best;
}

/* Which issuing CA of ctx signed cert directly (name, key identifier and key
 * usage match: X509_check_issued; the signature itself was verified by the
 * handshake's chain check). The device CA is asked first. */
static enum tls_issuer peer_issuer(const tls_gen *ctx, X509 *cert)
{
    if (ctx->device_issuer && X509_check_issued(ctx->device_issuer, cert) == X509_V_OK)
        return TLS_ISSUER_DEVICE_CA;
    for (int i = 0; ctx->operator_issuers && i < sk_X509_num(ctx->operator_issuers); i++)
        if (X509_check_issued(sk_X509_value(ctx->operator_issuers, i), cert) == X509_V_OK)
            return TLS_ISSUER_OPERATOR_CA;
    return TLS_ISSUER_NONE;
}

/*
 * Fills tc->peer once the handshake completed, full or resumed (a resumed
 * session keeps the certificate and the verify result of its full
 * handshake). CMS_OK, or CMS_ENOMEM when the certificate cannot be hashed.
 */
static int peer_record(tls_conn *tc)
{
    tls_peer *p = &tc->peer;
    memset(p, 0, sizeof(*p));
    p->version = SSL_get_version(tc->ssl);
    p->resumed = SSL_session_reused(tc->ssl) == 1;
    X509 *cert = SSL_get0_peer_certificate(tc->ssl);
    if (!cert)
        return CMS_OK;
    p->has_cert = true;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (X509_digest(cert, EVP_sha256(), md, &n) != 1 || n != TLS_FINGERPRINT_SIZE)
        return CMS_ENOMEM;
    memcpy(p->fingerprint, md, TLS_FINGERPRINT_SIZE);
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) == 1)
        p->not_after = (int64_t)timegm(&tm);
    if (SSL_get_verify_result(tc->ssl) != X509_V_OK)
        return CMS_OK; /* not verified: no usable CN, no issuer */
    p->cn_ok = peer_cn(cert, p->cn);
    p->role = peer_role(cert);
    p->issuer = peer_issuer(tc->gen, cert);
    return CMS_OK;
}

int tls_conn_handshake(tls_conn *tc, char *reason, size_t cap)
{
    if (tc->handshake_done)
        return CMS_OK;
    ERR_clear_error();
    int r = SSL_do_handshake(tc->ssl);
    if (r == 1) {
        if (peer_record(tc) != CMS_OK) {
            if (reason && cap)
                snprintf(reason, cap, "out of memory");
            ERR_clear_error();
            return CMS_ENOMEM;
        }
        tc->handshake_done = true;
        return CMS_OK;
    }
    int e = SSL_get_error(tc->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return CMS_EAGAIN;
    long vr = SSL_get_verify_result(tc->ssl);
    if (vr != X509_V_OK) {
        switch (vr) {
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
        case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
        case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
        case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
            tc->failure = TLS_FAIL_UNKNOWN_CA;
            break;
        case X509_V_ERR_CERT_HAS_EXPIRED:
        case X509_V_ERR_CERT_NOT_YET_VALID:
            tc->failure = TLS_FAIL_EXPIRED;
            break;
        case X509_V_ERR_CERT_REVOKED:
            tc->failure = TLS_FAIL_REVOKED;
            break;
        default:
            tc->failure = TLS_FAIL_BAD_CERT;
        }
        if (reason && cap)
            snprintf(reason, cap, "client certificate refused: %s",
                     X509_verify_cert_error_string(vr));
        ERR_clear_error();
        return CMS_EPERM;
    }
    unsigned long err = ERR_peek_error();
    if (err && ERR_GET_REASON(err) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
        tc->failure = TLS_FAIL_NO_CERT;
        if (reason && cap)
            snprintf(reason, cap, "no client certificate presented");
        ERR_clear_error();
        return CMS_EPERM;
    }
    tc->failure = TLS_FAIL_PROTOCOL;
    ssl_error_string(reason, cap, "handshake failed");
    return CMS_EPROTO;
}

enum tls_failure tls_conn_failure(const tls_conn *tc)
{
    return tc->failure;
}

int tls_conn_read(tls_conn *tc, void *buf, size_t cap)
{
    ERR_clear_error();
    int n = SSL_read(tc->ssl, buf, cap > INT32_MAX ? INT32_MAX : (int)cap);
    if (n > 0)
        return n;
    int e = SSL_get_error(tc->ssl, n);
    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        return CMS_EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return CMS_ECLOSED;
    default:
        ERR_clear_error();
        return CMS_EPROTO;
    }
}

int tls_conn_write(tls_conn *tc, const void *data, size_t len)
{
    if (len == 0)
        return CMS_OK;
    /* The records' room at once (header, type, tag: < 64 bytes per 16 KiB
     * record), not by doubling while OpenSSL appends them one by one. */
    if (out_reserve(tc, len + (len / 16384 + 1) * 64) != CMS_OK)
        return CMS_ENOMEM;
    ERR_clear_error();
    size_t written = 0;
    int r = SSL_write_ex(tc->ssl, data, len, &written);
    if (r == 1 && written == len)
        return CMS_OK;
    ERR_clear_error();
    return CMS_EPROTO;
}

void tls_conn_shutdown(tls_conn *tc)
{
    if (!tc->ssl)
        return;
    ERR_clear_error();
    if (tc->handshake_done)
        (void)SSL_shutdown(tc->ssl);
    ERR_clear_error();
}

size_t tls_conn_pending_output(const tls_conn *tc)
{
    return tc->out_len;
}

void tls_conn_trim(tls_conn *tc)
{
    /* Keeps them only while OpenSSL holds part of a record (returns 0 then). */
    if (tc->ssl)
        (void)SSL_free_buffers(tc->ssl);
    if (tc->kept && tc->kept_off == tc->kept_len) {
        free(tc->kept);
        tc->kept = NULL;
        tc->kept_off = tc->kept_len = tc->kept_cap = 0;
    }
}

long tls_conn_take_output(tls_conn *tc, char **out)
{
    *out = NULL;
    if (tc->out_len == 0)
        return 0;
    long n = (long)tc->out_len;
    *out = tc->out;
    tc->out = NULL;
    tc->out_len = tc->out_cap = 0;
    return n;
}

const tls_peer *tls_conn_peer(const tls_conn *tc)
{
    return &tc->peer;
}

void tls_peer_fingerprint_hex(const tls_peer *p, char out[TLS_FINGERPRINT_HEX_SIZE])
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < TLS_FINGERPRINT_SIZE; i++) {
        out[2 * i] = hex[p->fingerprint[i] >> 4];
        out[2 * i + 1] = hex[p->fingerprint[i] & 0xf];
    }
    out[2 * TLS_FINGERPRINT_SIZE] = '\0';
}
