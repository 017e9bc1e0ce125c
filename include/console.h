/*
 * console.h - the operator web console: its static files, its session
 * endpoint, and the CSRF rule the HTTPS router applies to every state change
 * (svc layer; HTTPS through https.h only).
 *
 * People authenticate as operators do: a client certificate of an operator
 * CA, imported into the browser (peer.h decides who it is; the OU is the
 * role). The browser then sends that certificate on every request, so a
 * page of another site could make it act: every state-changing operator
 * request that carries a browser's markers (an Origin, Sec-Fetch-Site,
 * Sec-Fetch-Mode or Cookie header) must come from the console's own origin
 * and carry X-CSRF-Token, the token GET /api/v1/console/session gave to that
 * certificate (HMAC-SHA256 under a secret derived from the server's TLS key,
 * over the certificate's SHA-256 fingerprint and the UTC day; today's and
 * yesterday's are accepted; every instance sharing the key agrees). Clients
 * that send none of those markers (cmsctl, curl, scripts) are not browsers
 * and are not asked for a token. docs/operator-api.md has the rule.
 *
 * Static files: every regular file directly in console_dir whose name is
 * made of [A-Za-z0-9._-] (not starting with '.') and has a known extension
 * (html, js, css, svg, png, ico, json, txt) is read once at start-up (at most
 * CONSOLE_MAX_FILES files of CONSOLE_MAX_FILE_BYTES) and served from memory
 * under /console/<name> (/console/ is index.html), to anyone (the files hold
 * no data), with a strict Content-Security-Policy (scripts and styles from
 * the console's origin only, no inline script, no framing). A name not in
 * that table is 404: there is no path to walk.
 *
 * Thread: console_new/console_free on the main thread before the workers
 * start / after they stopped; the rest on any worker's loop (the state is
 * read-only once made, but for the CSRF key, which a reload may replace:
 * console_csrf_key_set, under a lock).
 */
#ifndef CMS_CONSOLE_H
#define CMS_CONSOLE_H

#include <stdbool.h>
#include <stddef.h>

#include "https.h"

#define CONSOLE_MAX_FILES 64
#define CONSOLE_MAX_FILE_BYTES (1u << 20)
#define CONSOLE_CSRF_HEADER "x-csrf-token"
#define CONSOLE_CSRF_KEY_SIZE 32

typedef struct console_state console_state;

/*
 * Loads the files of dir (borrowed; "" or a missing directory: no files, the
 * console is off and logged once, the API and its CSRF rule still work) and
 * derives the CSRF secret from the PEM file tls_key (borrowed path).
 * Returns the state (free with console_free) or NULL with a reason in err
 * (cap bytes): tls_key unreadable, a file in dir unreadable or too large,
 * out of memory. Blocking file reads: start-up only.
 */
console_state *console_new(const char *dir, const char *tls_key, char *err, size_t cap);
void console_free(console_state *cs); /* NULL is a no-op */

/* Number of files served (0: the console is off). */
size_t console_file_count(const console_state *cs);

/*
 * The CSRF token of the certificate with SHA-256 fingerprint fp_hex (64 hex
 * digits) on UTC day day (seconds since the epoch / 86400) into out (65
 * bytes: 64 lowercase hex digits and NUL).
 */
void console_csrf_token(const console_state *cs, const char *fp_hex, long long day, char out[65]);

/*
 * The router's CSRF decision for r (an operator route's request whose method
 * changes state; see the rule above). Returns true when r may go on;
 * otherwise false with the reason in why (cap bytes): "cross-site request
 * (Origin ...)", "cross-site request (Sec-Fetch-Site ...)", "missing
 * X-CSRF-Token", "invalid X-CSRF-Token". cs NULL: every browser request is
 * refused ("console not configured"). Thread: r's loop.
 */
bool console_csrf_ok(const console_state *cs, const https_req *r, char *why, size_t cap);

/* The CSRF key a server key file gives (secret: cleanse it after use). */
typedef struct console_csrf_key {
    unsigned char b[CONSOLE_CSRF_KEY_SIZE];
} console_csrf_key;

/*
 * Reads the file tls_key (borrowed path) and derives the CSRF key from its
 * bytes (HMAC-SHA256, the key file itself is never exposed) into *k: the
 * same bytes give the same key. Returns CMS_OK, or CMS_EINVAL with a reason
 * in err (cap bytes): unreadable, empty or over 1 MiB. Blocking file read:
 * main thread (start-up, a reload).
 */
int console_csrf_key_load(const char *tls_key, console_csrf_key *k, char *err, size_t cap);

/*
 * Makes k (copied) cs's CSRF key: from the next request on, tokens are the
 * new key's and those given under the old one are refused (a console page
 * open before fetches a new one when reloaded). Returns true when k differs
 * from the key in force. Thread: main (a reload); workers may be using cs.
 */
bool console_csrf_key_set(console_state *cs, const console_csrf_key *k);

/*
 * Handlers (r->ctx->svc is a svc_state whose console member is the state).
 *   GET /console/ and /console/:name   anyone: the static files
 *   GET /api/v1/console/session        viewer: {"name", "role", "fingerprint",
 *       "csrf_token", "csrf_header"}, audited as console_login
 * Return CMS_OK (answered).
 */
int console_static(https_req *r);
int console_session(https_req *r);

#endif
