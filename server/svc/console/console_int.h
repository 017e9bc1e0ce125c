/*
 * console_int.h - the console's state, shared by console.c (files, session)
 * and console_csrf.c (the secret, tokens, the router's rule). Internal to
 * server/svc/console.
 *
 * Thread: made and freed on the main thread; read-only on the workers.
 */
#ifndef CMS_CONSOLE_INT_H
#define CMS_CONSOLE_INT_H

#include <stddef.h>

#include "console.h"

typedef struct console__file {
    char name[128];
    const char *content_type; /* static */
    char *data;               /* owned */
    size_t len;
} console__file;

struct console_state {
    console__file files[CONSOLE_MAX_FILES];
    size_t nfiles;
    unsigned char secret[32]; /* the CSRF key (console_csrf.c) */
};

/* Derives cs->secret from the PEM file tls_key. Returns 0, or -1 with a reason in err. */
int console__csrf_init(console_state *cs, const char *tls_key, char *err, size_t cap);

#endif
