/* console_csrf.c - the CSRF secret (a reload may replace it), tokens, and the router's rule
 * (see console.h). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "cms_err.h"
#include "console_int.h"
#include "net.h"
#include "tls.h"

/* cs->secret: set on the main thread (start-up, a reload), read on the workers. */
static pthread_mutex_t secret_mu = PTHREAD_MUTEX_INITIALIZER;

static void secret_get(const console_state *cs, unsigned char out[CONSOLE__SECRET_SIZE])
{
    pthread_mutex_lock(&secret_mu);
    memcpy(out, cs->secret, CONSOLE__SECRET_SIZE);
    pthread_mutex_unlock(&secret_mu);
}

int console_csrf_key_load(const char *tls_key, console_csrf_key *k, char *err, size_t cap)
{
    int rc = CMS_EINVAL;
    unsigned char *buf = NULL;
    FILE *f = fopen(tls_key, "rb");
    if (!f) {
        snprintf(err, cap, "console: cannot read tls_key %s", tls_key);
        return CMS_EINVAL;
    }
    if (fseek(f, 0, SEEK_END) != 0)
        goto cleanup;
    long n = ftell(f);
    if (n <= 0 || n > (1L << 20) || fseek(f, 0, SEEK_SET) != 0)
        goto cleanup;
    buf = malloc((size_t)n);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n)
        goto cleanup;
    /* A key of its own, from the server's private key: every instance that
     * shares the key agrees on the tokens; the key itself is not exposed. */
    static const char label[] = "cms console csrf v1";
    unsigned int len = sizeof(k->b);
    if (!HMAC(EVP_sha256(), label, (int)sizeof(label) - 1, buf, (size_t)n, k->b, &len))
        goto cleanup;
    rc = CMS_OK;
cleanup:
    if (rc != CMS_OK)
        snprintf(err, cap, "console: cannot derive the CSRF secret from tls_key %s", tls_key);
    if (buf) {
        OPENSSL_cleanse(buf, (size_t)n);
        free(buf);
    }
    fclose(f);
    return rc;
}

bool console_csrf_key_set(console_state *cs, const console_csrf_key *k)
{
    pthread_mutex_lock(&secret_mu);
    bool changed = CRYPTO_memcmp(cs->secret, k->b, CONSOLE__SECRET_SIZE) != 0;
    memcpy(cs->secret, k->b, CONSOLE__SECRET_SIZE);
    pthread_mutex_unlock(&secret_mu);
    return changed;
}

int console__csrf_init(console_state *cs, const char *tls_key, char *err, size_t cap)
{
    console_csrf_key k;
    if (console_csrf_key_load(tls_key, &k, err, cap) != CMS_OK)
        return -1;
    console_csrf_key_set(cs, &k);
    OPENSSL_cleanse(&k, sizeof(k));
    return 0;
}

void console_csrf_token(const console_state *cs, const char *fp_hex, long long day, char out[65])
{
    unsigned char secret[CONSOLE__SECRET_SIZE];
    secret_get(cs, secret);
    console__csrf_token(secret, fp_hex, day, out);
    OPENSSL_cleanse(secret, sizeof(secret));
}

void console__csrf_token(const unsigned char secret[CONSOLE__SECRET_SIZE], const char *fp_hex,
                         long long day, char out[65])
{
    char msg[96];
    unsigned char mac[32];
    unsigned int len = sizeof(mac);
    int n = snprintf(msg, sizeof(msg), "%.64s|%lld", fp_hex, day);
    HMAC(EVP_sha256(), secret, CONSOLE__SECRET_SIZE, (const unsigned char *)msg, (size_t)n, mac,
         &len);
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", mac[i]);
    out[64] = '\0';
}

/* Origin must be https://<Host> (the console's own origin). */
static bool same_origin(const char *origin, const char *host)
{
    static const char scheme[] = "https://";
    if (!host || strncasecmp(origin, scheme, sizeof(scheme) - 1) != 0)
        return false;
    return strcasecmp(origin + sizeof(scheme) - 1, host) == 0;
}

bool console__csrf_decide(const unsigned char *secret, const char *origin, const char *site,
                          const char *mode, const char *cookie, const char *host, const char *tok,
                          const char *fp_hex, long long day, char *why, size_t cap)
{
    bool browser = origin || site || mode || cookie;
    if (!browser)
        return true; /* cmsctl, curl: no ambient authority to abuse */
    if (origin && !same_origin(origin, host)) {
        snprintf(why, cap, "cross-site request (Origin %.100s)", origin);
        return false;
    }
    if (site && strcmp(site, "same-origin") != 0) {
        snprintf(why, cap, "cross-site request (Sec-Fetch-Site %.40s)", site);
        return false;
    }
    if (!secret) {
        snprintf(why, cap, "console not configured");
        return false;
    }
    if (!tok || !*tok) {
        snprintf(why, cap, "missing X-CSRF-Token (GET /api/v1/console/session gives it)");
        return false;
    }
    char want[65];
    bool ok = false;
    for (long long d = day; d >= day - 1 && !ok; d--) {
        console__csrf_token(secret, fp_hex, d, want);
        ok = strlen(tok) == 64 && CRYPTO_memcmp(tok, want, 64) == 0;
    }
    OPENSSL_cleanse(want, sizeof(want));
    if (!ok)
        snprintf(why, cap, "invalid X-CSRF-Token");
    return ok;
}

bool console_csrf_ok(const console_state *cs, const https_req *r, char *why, size_t cap)
{
    const http_request *q = r->http;
    char fp[TLS_FINGERPRINT_HEX_SIZE];
    unsigned char secret[CONSOLE__SECRET_SIZE];
    tls_peer_fingerprint_hex(net_conn_peer_record(r->conn), fp);
    if (cs)
        secret_get(cs, secret);
    bool ok = console__csrf_decide(
        cs ? secret : NULL, http_request_header(q, "origin"),
        http_request_header(q, "sec-fetch-site"), http_request_header(q, "sec-fetch-mode"),
        http_request_header(q, "cookie"), http_request_header(q, "host"),
        http_request_header(q, CONSOLE_CSRF_HEADER), fp, (long long)(time(NULL) / 86400), why, cap);
    OPENSSL_cleanse(secret, sizeof(secret));
    return ok;
}
