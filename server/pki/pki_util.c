/*
 * pki_util.c - shared helpers of the pki module: reason strings, base64
 * through OpenSSL's EVP_Encode and EVP_Decode, file reading with a
 * permission check, key policy, certificate field helpers.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "cms_err.h"
#include "pki_int.h"

/* Largest file read by pki__read_file: certificates, chains, keys. */
#define PKI_MAX_FILE (1024 * 1024)

void pki__reason(char *reason, size_t cap, const char *fmt, ...)
{
    va_list ap;

    if (reason == NULL || cap == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(reason, cap, fmt, ap);
    va_end(ap);
}

void pki__reason_ssl(char *reason, size_t cap, const char *what)
{
    unsigned long e = ERR_peek_error();
    char buf[128];

    if (e != 0) {
        ERR_error_string_n(e, buf, sizeof(buf));
        pki__reason(reason, cap, "%s (%s)", what, buf);
    } else {
        pki__reason(reason, cap, "%s", what);
    }
    ERR_clear_error();
}

int pki__no_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

int pki__to_malloc(BIO *mem, char **out, size_t *out_len)
{
    char *data = NULL;
    long n = BIO_get_mem_data(mem, &data);
    char *copy;

    if (n < 0)
        return CMS_EINTERNAL;
    copy = malloc((size_t)n + 1);
    if (copy == NULL)
        return CMS_ENOMEM;
    if (n > 0)
        memcpy(copy, data, (size_t)n);
    copy[n] = '\0';
    *out = copy;
    if (out_len != NULL)
        *out_len = (size_t)n;
    return CMS_OK;
}

int pki__read_file(const char *path, int is_private, BIO **out, char *reason, size_t reason_cap)
{
    struct stat st;
    BIO *mem = NULL;
    char buf[4096];
    size_t total = 0;
    int fd = -1;
    int rc = CMS_EINVAL;

    *out = NULL;
    if (path == NULL || path[0] == '\0') {
        pki__reason(reason, reason_cap, "no file name given");
        return CMS_EINVAL;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        pki__reason(reason, reason_cap, "%s: %s", path, strerror(errno));
        goto cleanup;
    }
    /* fstat on the descriptor we read: no window between check and use. */
    if (fstat(fd, &st) != 0) {
        pki__reason(reason, reason_cap, "%s: %s", path, strerror(errno));
        goto cleanup;
    }
    if (!S_ISREG(st.st_mode)) {
        pki__reason(reason, reason_cap, "%s: not a regular file", path);
        goto cleanup;
    }
    if (is_private && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
        pki__reason(reason, reason_cap,
                    "%s: private key file is accessible by group or others (mode %04o); "
                    "chmod 600 it",
                    path, (unsigned)(st.st_mode & 07777));
        goto cleanup;
    }
    /* secmem: the buffer holding a private key is cleansed when freed */
    mem = BIO_new(is_private ? BIO_s_secmem() : BIO_s_mem());
    if (mem == NULL) {
        rc = CMS_ENOMEM;
        goto cleanup;
    }
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            pki__reason(reason, reason_cap, "%s: %s", path, strerror(errno));
            goto cleanup;
        }
        if (n == 0)
            break;
        total += (size_t)n;
        if (total > PKI_MAX_FILE) {
            pki__reason(reason, reason_cap, "%s: larger than %d bytes", path, PKI_MAX_FILE);
            goto cleanup;
        }
        if (BIO_write(mem, buf, (int)n) != (int)n) {
            rc = CMS_ENOMEM;
            goto cleanup;
        }
    }
    *out = mem;
    mem = NULL;
    rc = CMS_OK;
cleanup:
    OPENSSL_cleanse(buf, sizeof(buf));
    BIO_free(mem);
    if (fd >= 0)
        close(fd);
    return rc;
}

/* ------------------------------------------------------------------------
 * base64
 */

static int b64_char_ok(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/' || c == '=' || c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int pki_base64_decode(const char *in, size_t len, unsigned char **out, size_t *out_len)
{
    EVP_ENCODE_CTX *ctx = NULL;
    unsigned char *buf = NULL;
    int n1 = 0, n2 = 0;
    int rc = CMS_EPROTO;

    *out = NULL;
    *out_len = 0;
    if (len > INT_MAX / 2)
        return CMS_ELIMIT;
    /*
     * EVP_DecodeUpdate skips whitespace and refuses characters outside the
     * alphabet, except '-', which it takes as the end of the data (PEM
     * armour) and would silently stop at: refuse it (and NUL) up front.
     */
    for (size_t i = 0; i < len; i++) {
        if (!b64_char_ok((unsigned char)in[i]))
            return CMS_EPROTO;
    }
    buf = malloc(len / 4 * 3 + 4);
    if (buf == NULL)
        return CMS_ENOMEM;
    ctx = EVP_ENCODE_CTX_new();
    if (ctx == NULL) {
        rc = CMS_ENOMEM;
        goto cleanup;
    }
    EVP_DecodeInit(ctx);
    if (EVP_DecodeUpdate(ctx, buf, &n1, (const unsigned char *)in, (int)len) < 0)
        goto cleanup;
    if (EVP_DecodeFinal(ctx, buf + n1, &n2) != 1)
        goto cleanup;
    *out = buf;
    *out_len = (size_t)n1 + (size_t)n2;
    buf = NULL;
    rc = CMS_OK;
cleanup:
    free(buf);
    EVP_ENCODE_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}

int pki_base64_encode(const unsigned char *in, size_t len, int lines, char **out, size_t *out_len)
{
    EVP_ENCODE_CTX *ctx = NULL;
    char *buf = NULL;
    size_t cap;
    int n1 = 0, n2 = 0;
    int rc = CMS_ENOMEM;

    *out = NULL;
    if (out_len != NULL)
        *out_len = 0;
    if (len > INT_MAX / 2)
        return CMS_ELIMIT;
    /* 4 chars per 3 bytes, one '\n' per 48 input bytes, the final '\n', NUL */
    cap = (len + 2) / 3 * 4 + len / 48 + 3;
    buf = malloc(cap);
    if (buf == NULL)
        goto cleanup;
    if (!lines) {
        int n = EVP_EncodeBlock((unsigned char *)buf, in, (int)len);
        if (n < 0) {
            rc = CMS_EINTERNAL;
            goto cleanup;
        }
        buf[n] = '\0';
        n1 = n;
    } else {
        ctx = EVP_ENCODE_CTX_new();
        if (ctx == NULL)
            goto cleanup;
        EVP_EncodeInit(ctx);
        if (EVP_EncodeUpdate(ctx, (unsigned char *)buf, &n1, in, (int)len) != 1 && len > 0) {
            rc = CMS_EINTERNAL;
            goto cleanup;
        }
        EVP_EncodeFinal(ctx, (unsigned char *)buf + n1, &n2);
        buf[n1 + n2] = '\0';
    }
    *out = buf;
    if (out_len != NULL)
        *out_len = (size_t)n1 + (size_t)n2;
    buf = NULL;
    rc = CMS_OK;
cleanup:
    free(buf);
    EVP_ENCODE_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}

/* ------------------------------------------------------------------------
 * key policy and signing digest
 */

static int ec_group_name(const EVP_PKEY *key, char *name, size_t cap)
{
    size_t got = 0;

    if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, name, cap, &got) != 1)
        return 0;
    return 1;
}

/* RSA public exponent: odd and 2^16+1 <= e < 2^256 (CA/Browser Forum rule). */
static int rsa_exponent_ok(const EVP_PKEY *key)
{
    BIGNUM *e = NULL;
    int ok;

    if (EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_E, &e) != 1) {
        ERR_clear_error();
        return 0;
    }
    ok = BN_is_odd(e) && BN_num_bits(e) >= 17 && BN_num_bits(e) <= 256;
    BN_free(e);
    return ok;
}

int pki__key_allowed(const EVP_PKEY *key, char *desc, size_t desc_cap, char *reason,
                     size_t reason_cap)
{
    char group[64];
    int bits;

    if (key == NULL) {
        pki__reason(reason, reason_cap, "no public key");
        return 0;
    }
    if (EVP_PKEY_is_a(key, "ED25519")) {
        pki__reason(desc, desc_cap, "Ed25519");
        return 1;
    }
    if (EVP_PKEY_is_a(key, "EC")) {
        if (!ec_group_name(key, group, sizeof(group))) {
            ERR_clear_error();
            pki__reason(reason, reason_cap,
                        "EC key without a named curve (explicit parameters) refused");
            return 0;
        }
        if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0) {
            pki__reason(desc, desc_cap, "EC P-256");
            return 1;
        }
        if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0) {
            pki__reason(desc, desc_cap, "EC P-384");
            return 1;
        }
        pki__reason(reason, reason_cap, "EC curve %.40s refused (P-256 or P-384 required)", group);
        return 0;
    }
    if (EVP_PKEY_is_a(key, "RSA")) {
        bits = EVP_PKEY_get_bits(key);
        if (bits < 2048) {
            pki__reason(reason, reason_cap, "RSA key of %d bits is below 2048", bits);
            return 0;
        }
        if (bits > 8192) {
            pki__reason(reason, reason_cap, "RSA key of %d bits is above 8192", bits);
            return 0;
        }
        if (!rsa_exponent_ok(key)) {
            pki__reason(reason, reason_cap,
                        "RSA public exponent refused (odd, 65537 or larger required)");
            return 0;
        }
        pki__reason(desc, desc_cap, "RSA %d", bits);
        return 1;
    }
    pki__reason(reason, reason_cap,
                "key type %.40s refused (EC P-256/P-384, Ed25519 or RSA >= 2048 required)",
                EVP_PKEY_get0_type_name(key) ? EVP_PKEY_get0_type_name(key) : "unknown");
    return 0;
}

const EVP_MD *pki__sign_md(const EVP_PKEY *key)
{
    if (EVP_PKEY_is_a(key, "ED25519") || EVP_PKEY_is_a(key, "ED448"))
        return NULL;
    return EVP_sha256();
}

/* ------------------------------------------------------------------------
 * certificate helpers
 */

int pki_cn_is_valid(const char *s)
{
    size_t n;

    if (s == NULL)
        return 0;
    n = strlen(s);
    if (n == 0 || n > PKI_CN_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c > 0x7e)
            return 0;
    }
    if (s[0] == ' ' || s[n - 1] == ' ')
        return 0;
    return 1;
}

static void hex_lower(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0x0f];
    }
    out[2 * n] = '\0';
}

int pki_cert_fingerprint_sha256(const X509 *cert, char out[PKI_SHA256_HEX_SIZE])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;

    out[0] = '\0';
    if (cert == NULL)
        return CMS_EINVAL;
    if (X509_digest(cert, EVP_sha256(), md, &n) != 1 || n != 32) {
        ERR_clear_error();
        return CMS_EINTERNAL;
    }
    hex_lower(md, n, out);
    return CMS_OK;
}

int pki_cert_serial_hex(const X509 *cert, char out[PKI_SERIAL_HEX_SIZE])
{
    const ASN1_INTEGER *sn;
    BIGNUM *bn = NULL;
    unsigned char bytes[20];
    int n, neg;
    size_t off = 0;

    out[0] = '\0';
    if (cert == NULL)
        return CMS_EINVAL;
    sn = X509_get0_serialNumber(cert);
    bn = ASN1_INTEGER_to_BN(sn, NULL);
    if (bn == NULL) {
        ERR_clear_error();
        return CMS_ENOMEM;
    }
    neg = BN_is_negative(bn);
    n = BN_num_bytes(bn);
    if (n > (int)sizeof(bytes)) {
        BN_free(bn);
        return CMS_ELIMIT;
    }
    BN_bn2bin(bn, bytes); /* magnitude, big-endian */
    BN_free(bn);
    if (neg)
        out[off++] = '-';
    if (n == 0) {
        memcpy(out + off, "00", 3);
        return CMS_OK;
    }
    hex_lower(bytes, (size_t)n, out + off);
    return CMS_OK;
}

int pki_cert_cn(const X509 *cert, char *out, size_t cap)
{
    const X509_NAME *name;
    const X509_NAME_ENTRY *e;
    unsigned char *utf8 = NULL;
    int idx, n;
    int rc = CMS_EPROTO;

    if (out == NULL || cap < PKI_CN_MAX + 1)
        return CMS_EINVAL;
    out[0] = '\0';
    if (cert == NULL)
        return CMS_EINVAL;
    name = X509_get_subject_name(cert);
    idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
    if (idx < 0 || X509_NAME_get_index_by_NID(name, NID_commonName, idx) >= 0)
        goto cleanup;
    e = X509_NAME_get_entry(name, idx);
    n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(e));
    if (n < 0) {
        rc = CMS_EPROTO;
        goto cleanup;
    }
    /* memchr: an embedded NUL would otherwise shorten the name silently */
    if (n == 0 || n > PKI_CN_MAX || memchr(utf8, '\0', (size_t)n) != NULL)
        goto cleanup;
    memcpy(out, utf8, (size_t)n);
    out[n] = '\0';
    if (!pki_cn_is_valid(out)) {
        out[0] = '\0';
        goto cleanup;
    }
    rc = CMS_OK;
cleanup:
    OPENSSL_free(utf8);
    ERR_clear_error();
    return rc;
}

int pki_asn1_time_iso(const ASN1_TIME *t, char out[PKI_ISO_TIME_SIZE], time_t *epoch)
{
    struct tm tm;

    out[0] = '\0';
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) {
        ERR_clear_error();
        return CMS_EINVAL;
    }
    if (strftime(out, PKI_ISO_TIME_SIZE, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
        out[0] = '\0';
        return CMS_EINVAL;
    }
    if (epoch != NULL)
        *epoch = timegm(&tm);
    return CMS_OK;
}

int pki_cert_key_desc(const X509 *cert, char *out, size_t cap, char *reason, size_t reason_cap)
{
    char desc[32] = "";

    if (out == NULL || cap == 0)
        return CMS_EINVAL;
    out[0] = '\0';
    if (cert == NULL)
        return CMS_EINVAL;
    /* X509_get0_pubkey: borrowed, NULL when the key cannot be decoded */
    if (!pki__key_allowed(X509_get0_pubkey(cert), desc, sizeof(desc), reason, reason_cap)) {
        ERR_clear_error();
        return CMS_EPERM;
    }
    if (strlen(desc) >= cap)
        return CMS_EINVAL;
    memcpy(out, desc, strlen(desc) + 1);
    return CMS_OK;
}
