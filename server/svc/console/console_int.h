/*
 * console_int.h - the console's state, shared by console.c (files, session)
 * and console_csrf.c (the secret, tokens, the router's rule). Internal to
 * server/svc/console.
 *
 * Thread: made and freed on the main thread; read-only on the workers.
 */
#ifndef CMS_CONSOLE_INT_H
#define CMS_CONSOLE_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "console.h"

#define CONSOLE__SECRET_SIZE CONSOLE_CSRF_KEY_SIZE /* the CSRF key (console_csrf_key) */

typedef struct console__file {
    char name[128];
    const char *content_type; /* static */
    char *data;               /* owned */
    size_t len;
} console__file;

struct console_state {
    console__file files[CONSOLE_MAX_FILES];
    size_t nfiles;
    /* The CSRF key (console_csrf.c): under its lock, a reload replaces it. */
    unsigned char secret[CONSOLE__SECRET_SIZE];
};

/*
 * console_csrf_key_load and console_csrf_key_set: cs->secret from the file
 * tls_key (borrowed path; its bytes, at most 1 MiB, whatever their format):
 * the same bytes give the same secret. Returns 0, or -1 with a reason in err
 * (cap bytes): unreadable, empty, too large. Blocking file read. Thread: main.
 */
int console__csrf_init(console_state *cs, const char *tls_key, char *err, size_t cap);

/*
 * console_csrf_token with the secret itself (CONSOLE__SECRET_SIZE bytes,
 * borrowed; a copy, not cs's: no lock): 64 lowercase hex digits and NUL
 * into out. Thread: any.
 */
void console__csrf_token(const unsigned char secret[CONSOLE__SECRET_SIZE], const char *fp_hex,
                         long long day, char out[65]);

/*
 * The CSRF rule of console_csrf_ok without the request: secret
 * (CONSOLE__SECRET_SIZE bytes, borrowed; NULL: console not configured);
 * origin, site (Sec-Fetch-Site), mode (Sec-Fetch-Mode), cookie, host and tok
 * (X-CSRF-Token) the request's headers (borrowed; NULL: absent); fp_hex the
 * client certificate's fingerprint (64 hex digits); day the current UTC day
 * (seconds since the epoch / 86400), whose token and the previous day's are
 * accepted. A request with none of Origin, Sec-Fetch-Site, Sec-Fetch-Mode,
 * Cookie is not a browser's and passes. Returns true when the request may go
 * on; otherwise false with the reason in why (cap bytes), as
 * console_csrf_ok. Thread: any.
 */
bool console__csrf_decide(const unsigned char *secret, const char *origin, const char *site,
                          const char *mode, const char *cookie, const char *host, const char *tok,
                          const char *fp_hex, long long day, char *why, size_t cap);

#endif
