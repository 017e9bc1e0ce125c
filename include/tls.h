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
 * Reload: tls_ctx_replace() swaps in a context built afresh from the files
 * (tls_ctx_new_server), atomically for new connections; a connection keeps
 * the generation it started with (certificate, CAs, CRL) until it is freed,
 * and the old generation goes with the last of them. Sessions kept for
 * resumption belong to a generation: after a swap, the next handshake of
 * each peer is a full one (checked against the new CAs and CRL).
 *
 * Thread: a tls_ctx may be shared by worker threads (its current generation
 * is taken and swapped under a mutex; a generation is immutable); a tls_conn
 * belongs to one thread.
 */
#ifndef CMS_TLS_H
#define CMS_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tls_ctx tls_ctx;
typedef struct tls_conn tls_conn; /* one connection's TLS state (opaque) */

#define TLS_SESSION_CACHE_SIZE 20480    /* default sessions kept for resumption, per listener */

enum tls_client_auth {
    TLS_CLIENT_CERT_REQUIRE = 0, /* handshake fails without a valid client certificate */
    TLS_CLIENT_CERT_OPTIONAL = 1 /* requested and verified if sent (EST bootstrap) */
};

typedef struct tls_server_config {
    const char *cert_file;     /* server certificate chain, PEM */
    const char *key_file;      /* server private key, PEM */
    /* The device CA bundle, PEM: every certificate in it is trusted for client
     * certificates; its FIRST certificate is the device issuing CA (a peer
     * certificate issued directly by it is TLS_ISSUER_DEVICE_CA). */
    const char *device_ca_file;
    /* The operator CA bundle, PEM, or NULL/"": every certificate in it is trusted
     * and is an operator issuing CA (TLS_ISSUER_OPERATOR_CA). */
    const char *operator_ca_file;
    const char *crl_file;      /* CRL (PEM) to check client certs against, or NULL/"" */
    enum tls_client_auth client_auth;
    unsigned session_timeout_s;/* session resumption lifetime; 0 disables resumption */
    unsigned session_cache_size; /* sessions kept for resumption; 0 = TLS_SESSION_CACHE_SIZE */
    const char *session_id_context; /* distinct per listener, e.g. "cms-mllp" */
} tls_server_config;

/* What a context's files say about their own lifetime, seconds since the
 * epoch (0: not present). For the expiry metrics. */
typedef struct tls_ctx_info {
    int64_t cert_not_after;        /* the server certificate (the first of cert_file) */
    int64_t device_ca_not_after;   /* the earliest notAfter in device_ca_file */
    int64_t operator_ca_not_after; /* the earliest in operator_ca_file; 0 without one */
    int64_t crl_next_update;       /* the earliest nextUpdate in crl_file; 0 without one */
} tls_ctx_info;

/*
 * Creates a server context: TLS 1.2 minimum (1.3 preferred), no
 * renegotiation, server cipher preference, verified client certificates
 * (depth 4), TLS_AES_128_GCM_SHA256 first (the key exchange and signatures
 * give 128-bit security; SHA-256 has CPU instructions, SHA-384 not), resumption
 * by stateful session tickets (a session id; the session stays in a bounded
 * cache in this process) with the given lifetime. Keeps the device issuing
 * CA and the operator issuing CAs (tls_server_config) to classify peers
 * (tls_peer.issuer). Every CRL in crl_file from a CA of device_ca_file or
 * operator_ca_file must be signed by that CA and not be past its
 * nextUpdate, and one must
 * be the device issuing CA's (a CRL from another CA would otherwise leave
 * device certificates unchecked). Returns NULL and a reason in err (cap
 * bytes) on any error (unreadable file, a CA file without certificates,
 * key/cert mismatch, such a CRL). Never logs key material. Thread: any.
 */
tls_ctx *tls_ctx_new_server(const tls_server_config *cfg, char *err, size_t cap);

/* Frees ctx (NULL allowed); connections keep the generation they use. */
void tls_ctx_free(tls_ctx *ctx);

/*
 * Makes fresh's generation ctx's current one (for connections made from now
 * on) and frees fresh (taken: the caller must not use it again). ctx's
 * previous generation lives on while connections use it. Never fails, so a
 * reload that built every new context first applies them all or none.
 * Thread: any.
 */
void tls_ctx_replace(tls_ctx *ctx, tls_ctx *fresh);

/* The current generation's lifetimes into *out. Thread: any. */
void tls_ctx_get_info(tls_ctx *ctx, tls_ctx_info *out);

/*
 * A new server-side connection on ctx's current generation (ctx borrowed for
 * the call; the connection references the generation). Returns NULL when out
 * of memory. The tls_conn must not be
 * shared with another thread.
 */
tls_conn *tls_conn_new_server(tls_ctx *ctx);
/* Frees tc and everything it holds; NULL is allowed. */
void tls_conn_free(tls_conn *tc);

/*
 * Hands ciphertext that arrived from the network to OpenSSL. data is
 * borrowed, not copied: it must stay valid until tls_conn_keep_input().
 * CMS_OK or CMS_ENOMEM.
 */
int tls_conn_feed(tls_conn *tc, const void *data, size_t len);

/* Copies what OpenSSL did not consume of the fed data aside (the caller
 * reuses its buffer next). CMS_OK or CMS_ENOMEM. */
int tls_conn_keep_input(tls_conn *tc);

/* Ciphertext fed but not consumed yet. */
size_t tls_conn_pending_input(const tls_conn *tc);

/*
 * Advances the handshake. Returns CMS_OK when complete (the peer record,
 * tls_conn_peer, is then filled), CMS_EAGAIN when more input is needed,
 * CMS_EPERM when the peer's certificate was refused (reason: the X509 verify
 * error), CMS_ENOMEM when the peer record could not be made (reason: "out of
 * memory"), CMS_EPROTO for any other failure (reason: OpenSSL's error
 * string). On failure an alert may be queued in the output: drain it before
 * closing. reason may be NULL. Once complete, further calls return CMS_OK.
 */
int tls_conn_handshake(tls_conn *tc, char *reason, size_t cap);

/* What a refused handshake (tls_conn_handshake: CMS_EPERM or CMS_EPROTO)
 * failed on, for counting refusals by reason. */
enum tls_failure {
    TLS_FAIL_PROTOCOL = 0, /* no certificate question reached: version, cipher, alert, garbage */
    TLS_FAIL_NO_CERT,      /* the listener requires a client certificate; none came */
    TLS_FAIL_UNKNOWN_CA,   /* the chain ends at no CA we trust */
    TLS_FAIL_EXPIRED,      /* a certificate of the chain is expired or not yet valid */
    TLS_FAIL_REVOKED,      /* on the CRL */
    TLS_FAIL_BAD_CERT      /* any other certificate problem (signature, purpose, CRL missing) */
};

/* The class of the last failed tls_conn_handshake (TLS_FAIL_PROTOCOL before one). */
enum tls_failure tls_conn_failure(const tls_conn *tc);

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

/* ---- the peer record ------------------------------------------------------------
 *
 * Who the peer is, as far as TLS can tell, made once when the handshake
 * completes (full or resumed: a resumed session carries the certificate that
 * was verified by its full handshake). It says nothing of the registry: the
 * service above decides whether such a peer may talk (svc/peer.c).
 */

#define TLS_PEER_CN_SIZE 64        /* a CN of up to 63 bytes, NUL-terminated */
#define TLS_FINGERPRINT_SIZE 32    /* SHA-256 */
#define TLS_FINGERPRINT_HEX_SIZE 65 /* 64 lowercase hex digits + NUL */

/* Which of the context's issuing CAs issued the peer certificate directly. */
enum tls_issuer {
    TLS_ISSUER_NONE = 0,    /* no verified certificate, or issued by another CA */
    TLS_ISSUER_DEVICE_CA,   /* the first certificate of device_ca_file */
    TLS_ISSUER_OPERATOR_CA  /* one of the certificates of operator_ca_file */
};

/* The highest role named by the certificate subject's OU values ("admin",
 * "operator", "viewer", "scraper", exact and case-sensitive; others are
 * ignored). A scraper may read /metrics and nothing else. */
enum tls_role {
    TLS_ROLE_NONE = 0,
    TLS_ROLE_SCRAPER,
    TLS_ROLE_VIEWER,
    TLS_ROLE_OPERATOR,
    TLS_ROLE_ADMIN
};

typedef struct tls_peer {
    /* The subject CN when cn_ok, else "". cn_ok: the certificate verified and
     * its subject has exactly one CN, of 1..63 bytes, all printable ASCII
     * without space (0x21..0x7e). */
    char cn[TLS_PEER_CN_SIZE];
    unsigned char fingerprint[TLS_FINGERPRINT_SIZE]; /* SHA-256 of the DER; zeros without one */
    int64_t not_after;          /* the certificate's notAfter, seconds since the epoch; 0 without */
    const char *version;        /* "TLSv1.3", "TLSv1.2" (static); "" before the handshake */
    enum tls_issuer issuer;     /* TLS_ISSUER_NONE unless the certificate verified */
    enum tls_role role;         /* from the OU, whatever the issuer (the caller decides) */
    bool has_cert;              /* the peer presented a certificate */
    bool cn_ok;
    bool resumed;               /* this handshake resumed an earlier session */
} tls_peer;

/*
 * The peer record of tc (borrowed: lives as long as tc, read-only). All zero
 * (and version "") until tls_conn_handshake returned CMS_OK.
 */
const tls_peer *tls_conn_peer(const tls_conn *tc);

/* The record's fingerprint as 64 lowercase hex digits (what the registry stores). */
void tls_peer_fingerprint_hex(const tls_peer *p, char out[TLS_FINGERPRINT_HEX_SIZE]);

#endif
