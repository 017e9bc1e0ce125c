/*
 * ident.c - device identities (certificate, chain, key, serial) and the
 * client SSL_CTX. Runs before the loop starts: blocking file reads are fine.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "monitor.h"

/* ---- identities ---- */

/* snprintf into a path buffer; -1 (with a message) when it does not fit. */
static int path_fmt(char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int path_fmt(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap) {
        fprintf(stderr, "cms-monitor: path too long\n");
        return -1;
    }
    return 0;
}

static int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static void ssl_err(const char *what, const char *file)
{
    char es[256] = "";
    unsigned long e = ERR_peek_last_error();
    if (e)
        ERR_error_string_n(e, es, sizeof es);
    fprintf(stderr, "cms-monitor: %s %s: %s\n", what, file, e ? es : strerror(errno));
    ERR_clear_error();
}

/* Loads the leaf (first PEM certificate) and any following chain certificates. */
static int load_cert(const char *file, X509 **leaf, STACK_OF(X509) * *chain)
{
    FILE *f = fopen(file, "r");
    X509 *x;
    if (f == NULL) {
        ssl_err("cannot open certificate", file);
        return -1;
    }
    *leaf = PEM_read_X509(f, NULL, NULL, NULL);
    *chain = NULL;
    if (*leaf == NULL) {
        fclose(f);
        ssl_err("no PEM certificate in", file);
        return -1;
    }
    while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
        if (*chain == NULL)
            *chain = sk_X509_new_null();
        if (*chain == NULL || !sk_X509_push(*chain, x)) {
            X509_free(x);
            fclose(f);
            return -1;
        }
    }
    ERR_clear_error(); /* the end-of-file "no start line" */
    fclose(f);
    return 0;
}

static EVP_PKEY *load_key(const char *file)
{
    FILE *f = fopen(file, "r");
    EVP_PKEY *k;
    if (f == NULL) {
        ssl_err("cannot open key", file);
        return NULL;
    }
    k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (k == NULL)
        ssl_err("no usable private key in", file);
    return k;
}

/*
 * Key cache: mkpki.sh mint shares one key among all devices (devices/SERIAL.key
 * are links to it); OpenSSL 3's decoder takes about a millisecond per key, so
 * the last key file is remembered by device and inode.
 */
static dev_t cached_dev;
static ino_t cached_ino;
static EVP_PKEY *cached_key;

static EVP_PKEY *load_key_cached(const char *file)
{
    struct stat st;
    int have_st = stat(file, &st) == 0;
    if (cached_key && have_st && st.st_dev == cached_dev && st.st_ino == cached_ino) {
        EVP_PKEY_up_ref(cached_key);
        return cached_key;
    }
    EVP_PKEY *k = load_key(file);
    if (k == NULL)
        return NULL;
    EVP_PKEY_free(cached_key);
    cached_key = NULL;
    if (have_st) {
        cached_key = k;
        cached_dev = st.st_dev;
        cached_ino = st.st_ino;
        EVP_PKEY_up_ref(k);
    }
    return k;
}

static int load_identity(struct device *dev, const char *certf, const char *keyf)
{
    char cn[MON_SERIAL_LEN];
    if (load_cert(certf, &dev->cert, &dev->chain) < 0)
        return -1;
    dev->key = load_key_cached(keyf);
    if (dev->key == NULL)
        return -1;
    if (X509_check_private_key(dev->cert, dev->key) != 1) {
        ssl_err("key does not match certificate", certf);
        return -1;
    }
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(dev->cert), NID_commonName, cn,
                                  sizeof cn) <= 0) {
        fprintf(stderr, "cms-monitor: %s: certificate has no subject CN\n", certf);
        return -1;
    }
    snprintf(dev->serial, sizeof dev->serial, "%s",
             dev->mon->opts.serial ? dev->mon->opts.serial : cn);
    return 0;
}

/* Finds DIR's files for serial: see usage(). */
static int load_dir_identity(struct device *dev, const char *serial)
{
    const struct mon_opts *o = &dev->mon->opts;
    char certf[4096], keyf[4096], base[4096];

    if (path_fmt(base, sizeof base, "%s/devices", o->cert_dir) < 0 ||
        path_fmt(certf, sizeof certf, "%s/%s.crt", base, serial) < 0)
        return -1;
    if (!file_exists(certf)) {
        if (path_fmt(base, sizeof base, "%s", o->cert_dir) < 0 ||
            path_fmt(certf, sizeof certf, "%s/%s.crt", base, serial) < 0)
            return -1;
    }
    if (!file_exists(certf)) {
        fprintf(stderr, "cms-monitor: no certificate for %s: tried %s/devices/%s.crt and %s\n",
                serial, o->cert_dir, serial, certf);
        return -1;
    }
    if (o->key) {
        if (path_fmt(keyf, sizeof keyf, "%s", o->key) < 0)
            return -1;
    } else {
        if (path_fmt(keyf, sizeof keyf, "%s/%s.key", base, serial) < 0)
            return -1;
        if (!file_exists(keyf) &&
            path_fmt(keyf, sizeof keyf, "%s/../mint/%s.key", base, o->serial_prefix) < 0)
            return -1;
        if (!file_exists(keyf)) {
            fprintf(stderr, "cms-monitor: no key for %s (%s/%s.key, mint/%s.key; or --key)\n",
                    serial, base, serial, o->serial_prefix);
            return -1;
        }
    }
    return load_identity(dev, certf, keyf);
}

SSL_CTX *ident_make_ctx(const struct mon_opts *o)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_load_verify_locations(ctx, o->ca, NULL) != 1) {
        ssl_err("cannot load CA", o->ca);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    if (o->resume) {
        SSL_CTX_set_session_cache_mode(ctx,
                                       SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx, conn_new_session_cb);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    }
    return ctx;
}

int ident_load(struct device *dev, unsigned n)
{
    const struct mon_opts *o = &dev->mon->opts;
    char serial[MON_SERIAL_LEN];

    if (o->cert)
        return load_identity(dev, o->cert, o->key);
    snprintf(serial, sizeof serial, "%s%0*u", o->serial_prefix, (int)o->serial_width, n);
    return load_dir_identity(dev, serial);
}

void ident_cleanup(void)
{
    EVP_PKEY_free(cached_key);
    cached_key = NULL;
}
