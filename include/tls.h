/*
 * tls.h - TLS over an in-memory transport BIO (OpenSSL 3), independent of
 * sockets and of the protocols above it.
 *
 * The connection owner moves bytes; this module only transforms them:
 *
 *   socket bytes --tls_conn_feed()--> SSL --> tls_conn_read() plaintext
 *   plaintext --tls_conn_write()--> SSL --> [out] --tls_conn_take_output()--> socket
 *
 * The transport BIO (one per connection, both directions) reads the fed
 * bytes where they are (the loop's read buffer: no copy) and appends the
 * records OpenSSL writes to one heap buffer that tls_conn_take_output hands
 * over as it is (no copy either). Fed bytes OpenSSL has not consumed when the
 * caller is done with its buffer (a partial record, or input held back while
 * the peer is not yet authorized) are copied aside by tls_conn_keep_input().
 *
 * WANT_READ / WANT_WRITE: SSL_write never wants to write (the output
 * grows), and WANT_READ means "feed me more ciphertext". So every
 * call returns CMS_EAGAIN for WANT_READ/WANT_WRITE alike; the caller feeds
 * what arrives from the socket and calls again. After EVERY call into this
 * module the caller must drain tls_conn_take_output(): the handshake,
 * alerts, TLS 1.3 session tickets and KeyUpdate messages all appear there at
 * any time, not only after tls_conn_write.
 *
 * Thread: a tls_ctx is immutable after creation except for tls_ctx_set_crl
 * (OpenSSL's X509_STORE is locked internally) and may be shared by worker
 * threads; a tls_conn belongs to one thread.
 */
#ifndef CMS_TLS_H
#define CMS_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <openssl/ssl.h>

typedef struct tls_ctx tls_ctx;

#define TLS_SESSION_CACHE_SIZE 20480    /* default sessions kept for resumption, per listener */

enum tls_client_auth {
    TLS_CLIENT_CERT_REQUIRE = 0, /* handshake fails without a valid client certificate */
    TLS_CLIENT_CERT_OPTIONAL = 1 /* requested and verified if sent (EST bootstrap) */
};

typedef struct tls_server_config {
    const char *cert_file;     /* server certificate chain, PEM */
    const char *key_file;      /* server private key, PEM */
    const char *client_ca_file;/* CAs that issue acceptable client certs (may be a bundle) */
    const char *extra_ca_file; /* a second such bundle (operator CA), or NULL/"" */
    const char *crl_file;      /* CRL (PEM) to check client certs against, or NULL/"" */
    enum tls_client_auth client_auth;
    unsigned session_timeout_s;/* session resumption lifetime; 0 disables resumption */
    unsigned session_cache_size; /* sessions kept for resumption; 0 = TLS_SESSION_CACHE_SIZE */
    const char *session_id_context; /* distinct per listener, e.g. "cms-mllp" */
} tls_server_config;

/*
 * Creates a server context: TLS 1.2 minimum (1.3 preferred), no
 * renegotiation, server cipher preference, verified client certificates
 * (depth 4), TLS_AES_128_GCM_SHA256 first (the key exchange and signatures
 * give 128-bit security; SHA-256 has CPU instructions, SHA-384 not), resumption
 * by stateful session tickets (a session id; the session stays in a bounded
 * cache in this process) with the given lifetime. Returns NULL and a
 * reason in err (cap bytes) on any error (unreadable file, key/cert mismatch).
 * Never logs key material.
 */
tls_ctx *tls_ctx_new_server(const tls_server_config *cfg, char *err, size_t cap);

/* Frees ctx (connections hold their own references to the SSL_CTX). */
void tls_ctx_free(tls_ctx *ctx);

/* The underlying SSL_CTX (borrowed), for callers needing OpenSSL directly. */
SSL_CTX *tls_ctx_ssl_ctx(tls_ctx *ctx);

/*
 * Replaces the CRL checked for new handshakes with the one in crl_file (PEM),
 * and drops every session kept for resumption (the next handshake is full).
 * Returns CMS_OK or CMS_EINVAL with a reason in err.
 */
int tls_ctx_set_crl(tls_ctx *ctx, const char *crl_file, char *err, size_t cap);

typedef struct tls_conn {
    SSL *ssl;                /* owned; owns the transport BIO */
    const unsigned char *in; /* fed, borrowed until tls_conn_keep_input */
    size_t in_len;
    unsigned char *kept; /* owned: input kept from earlier feeds, read first */
    size_t kept_off, kept_len, kept_cap;
    char *out; /* owned: ciphertext not yet taken */
    size_t out_len, out_cap;
    bool handshake_done;
} tls_conn;

/* Prepares a server-side connection. Returns CMS_OK or CMS_ENOMEM. */
int tls_conn_init_server(tls_conn *tc, tls_ctx *ctx);
/* Prepares a client-side connection on an SSL_CTX (borrowed; SSL keeps a
 * reference). sni may be NULL. Returns CMS_OK or CMS_ENOMEM. */
int tls_conn_init_client(tls_conn *tc, SSL_CTX *ctx, const char *sni);
/* Frees everything; safe on a zeroed or already freed tls_conn. */
void tls_conn_free(tls_conn *tc);

/*
 * Hands ciphertext that arrived from the network to OpenSSL. data is
 * borrowed, not copied: it must stay valid until tls_conn_keep_input().
 * CMS_OK or CMS_ENOMEM.
 */
int tls_conn_feed(tls_conn *tc, const void *data, size_t len);

/* Copies what OpenSSL did not consume of the fed data aside (the caller
 * reuses its buffer next). CMS_OK or CMS_ENOMEM. Safe on a freed tls_conn. */
int tls_conn_keep_input(tls_conn *tc);

/* Ciphertext fed but not consumed yet. */
size_t tls_conn_pending_input(const tls_conn *tc);

/*
 * Advances the handshake. Returns CMS_OK when complete (handshake_done set),
 * CMS_EAGAIN when more input is needed, CMS_EPERM when the peer's certificate
 * was refused (reason: the X509 verify error), CMS_EPROTO for any other
 * failure (reason: OpenSSL's error string). On failure an alert is queued
 * in the output: drain it before closing. reason may be NULL.
 */
int tls_conn_handshake(tls_conn *tc, char *reason, size_t cap);

/*
 * Reads decrypted bytes. Returns the number of bytes (> 0), CMS_EAGAIN
 * (nothing buffered), CMS_ECLOSED (close_notify received) or CMS_EPROTO.
 */
int tls_conn_read(tls_conn *tc, void *buf, size_t cap);

/* Encrypts len bytes into the output. CMS_OK, CMS_EPROTO or CMS_ENOMEM. */
int tls_conn_write(tls_conn *tc, const void *data, size_t len);

/*
 * Gives back the kept input once it is consumed and OpenSSL's record buffers
 * unless they hold part of a record (an idle session keeps neither). Call when
 * a processing step or a write is over. Never fails.
 */
void tls_conn_trim(tls_conn *tc);

/* Queues a close_notify alert. */
void tls_conn_shutdown(tls_conn *tc);

/* Bytes of ciphertext waiting to be sent. */
size_t tls_conn_pending_output(const tls_conn *tc);

/*
 * Hands all pending ciphertext over: *out (malloc()ed, the caller owns and
 * frees it) and its length; 0 and *out = NULL when there is nothing to send.
 */
long tls_conn_take_output(tls_conn *tc, char **out);

/*
 * Subject CN of the verified peer certificate into out (cap bytes). Returns
 * CMS_OK, CMS_EPERM when there is no verified peer certificate, or CMS_EPROTO
 * when the subject has no CN, several CNs, or a CN with bytes outside
 * printable ASCII.
 */
int tls_conn_peer_cn(const tls_conn *tc, char *out, size_t cap);

/* True when this handshake resumed an earlier session. */
bool tls_conn_resumed(const tls_conn *tc);

/* "TLSv1.3" etc. (static string). */
const char *tls_conn_version(const tls_conn *tc);

#endif
