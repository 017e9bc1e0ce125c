/*
 * store_hosts.c - the host list of a multi-host conninfo (host=a,b,c
 * port=1,2,3 target_session_attrs=read-write), for connecting without
 * blocking.
 *
 * libpq ignores connect_timeout when driven by PQconnectPoll: it moves to the
 * next host only when one fails. A host that accepts the TCP connection and
 * then never answers (a frozen or partitioned primary: the kernel completes
 * the handshake, the server says nothing) would hold every attempt on it, and
 * the promoted standby after it would never be tried. So an attempt that times
 * out notes the host it hung on (store__hosts_index) and the next one starts
 * with the host after it (store__hosts_connect): the list rotated, so every
 * host is still tried, the hung one last.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"

/* Number of comma-separated items in v (1 for "" or no comma). */
static unsigned count_items(const char *v)
{
    unsigned n = 1;
    for (const char *p = v; *p; p++)
        if (*p == ',')
            n++;
    return n;
}

/* Item i of the comma-separated list v into out (cap bytes); false when too long. */
static bool item(const char *v, unsigned i, char *out, size_t cap)
{
    const char *p = v;
    for (unsigned k = 0; k < i && p; k++) {
        p = strchr(p, ',');
        if (p)
            p++;
    }
    if (!p)
        return false;
    size_t len = strcspn(p, ",");
    if (len >= cap)
        return false;
    memcpy(out, p, len);
    out[len] = '\0';
    return true;
}

/* v rotated to start at item first (n items); malloc'd, NULL when out of memory. */
static char *rotate(const char *v, unsigned n, unsigned first)
{
    size_t len = strlen(v);
    char *out = malloc(len + 2);
    if (!out)
        return NULL;
    out[0] = '\0';
    char one[1024];
    for (unsigned k = 0; k < n; k++) {
        if (!item(v, (first + k) % n, one, sizeof one)) {
            free(out);
            return NULL;
        }
        if (k > 0)
            strcat(out, ",");
        strcat(out, one);
    }
    return out;
}

static const char *opt(const PQconninfoOption *o, const char *kw)
{
    for (; o && o->keyword; o++)
        if (strcmp(o->keyword, kw) == 0)
            return o->val;
    return NULL;
}

/* The number of hosts (host, else hostaddr), 1 when not a list. */
static unsigned nhosts(const PQconninfoOption *o)
{
    const char *h = opt(o, "host");
    const char *a = opt(o, "hostaddr");
    if (h && *h)
        return count_items(h);
    if (a && *a)
        return count_items(a);
    return 1;
}

unsigned store__hosts_connect_timeout_ms(const char *conninfo, unsigned fallback_ms)
{
    PQconninfoOption *o = PQconninfoParse(conninfo, NULL);
    unsigned ms = fallback_ms;
    const char *t = o ? opt(o, "connect_timeout") : NULL;
    if (t && *t) {
        long s = strtol(t, NULL, 10);
        if (s > 0 && s < 2) /* libpq's own minimum */
            s = 2;
        if (s > 0 && (unsigned long)s * 1000u < ms)
            ms = (unsigned)s * 1000u;
    }
    PQconninfoFree(o);
    return ms;
}

unsigned store__hosts_index(const char *conninfo, const PGconn *pg)
{
    unsigned found = UINT_MAX;
    PQconninfoOption *o = PQconninfoParse(conninfo, NULL);
    const char *host = PQhost(pg), *port = PQport(pg);
    if (!o || !host)
        goto cleanup;
    unsigned n = nhosts(o);
    if (n < 2)
        goto cleanup;
    const char *hl = opt(o, "host"), *al = opt(o, "hostaddr"), *pl = opt(o, "port");
    const char *list = hl && *hl ? hl : al;
    unsigned np = pl && *pl ? count_items(pl) : 0;
    for (unsigned i = 0; i < n && found == UINT_MAX; i++) {
        char h[1024], p[32] = "";
        if (!item(list, i, h, sizeof h))
            break;
        if (np == n && !item(pl, i, p, sizeof p))
            break;
        if (strcmp(h, host) == 0 && (np != n || (port && strcmp(p, port) == 0)))
            found = i;
    }
cleanup:
    PQconninfoFree(o);
    return found;
}

PGconn *store__hosts_connect(const char *conninfo, unsigned first)
{
    PGconn *pg = NULL;
    const char **kw = NULL, **val = NULL;
    char *rot[3] = {NULL, NULL, NULL};
    PQconninfoOption *o = first > 0 ? PQconninfoParse(conninfo, NULL) : NULL;
    if (!o) /* the first host first, or not parsable: libpq says why */
        return PQconnectStart(conninfo);
    unsigned n = nhosts(o);
    size_t count = 0;
    for (const PQconninfoOption *p = o; p->keyword; p++)
        count++;
    kw = calloc(count + 1, sizeof *kw);
    val = calloc(count + 1, sizeof *val);
    if (!kw || !val)
        goto cleanup;
    size_t k = 0;
    static const char *const lists[3] = {"host", "hostaddr", "port"};
    for (const PQconninfoOption *p = o; p->keyword; p++) {
        if (!p->val)
            continue;
        const char *v = p->val;
        for (int l = 0; l < 3; l++) {
            if (n > 1 && strcmp(p->keyword, lists[l]) == 0 && count_items(v) == n) {
                if (!(rot[l] = rotate(v, n, first % n)))
                    goto cleanup;
                v = rot[l];
            }
        }
        kw[k] = p->keyword;
        val[k] = v;
        k++;
    }
    pg = PQconnectStartParams(kw, val, 0);
cleanup:
    if (!pg && (!kw || !val))
        pg = PQconnectStart(conninfo);
    for (int l = 0; l < 3; l++)
        free(rot[l]);
    free(kw);
    free(val);
    PQconninfoFree(o);
    return pg;
}
