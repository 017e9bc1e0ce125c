/*
 * events_wire.c - the relay line of an event (events_int.h): how one cmsd
 * instance hands its live events to the others through PostgreSQL NOTIFY
 * (events_relay.c). Pure: no locks, loops or sockets.
 */
#include <stdio.h>
#include <string.h>

#include "events_int.h"

static bool is_origin(const char *s, size_t n)
{
    if (n != EVENTS__ORIGIN_LEN - 1)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static bool is_type(const char *s, size_t n)
{
    return n > 0 && n < EVENTS__TYPE_LEN && strspn(s, "abcdefghijklmnopqrstuvwxyz_") >= n;
}

size_t events__wire_put(char *out, size_t cap, const char *origin, uint64_t published_us,
                        const char *type, const char *ward, const char *json)
{
    if (!ward)
        ward = "";
    size_t wl = strlen(ward), tl = strlen(type), jl = strlen(json);
    if (!is_origin(origin, strlen(origin)) || !is_type(type, tl) || wl >= EVENTS_WARD_LEN ||
        jl == 0 || json[0] != '{' || memchr(json, '\n', jl))
        return 0;
    char head[EVENTS__ORIGIN_LEN + 64];
    int hl = snprintf(head, sizeof(head), "%s %llu %s %zu ", origin,
                      (unsigned long long)published_us, type, wl);
    if (hl < 0 || (size_t)hl >= sizeof(head))
        return 0;
    size_t n = (size_t)hl + wl + jl + 1;
    if (n > cap)
        return 0;
    memcpy(out, head, (size_t)hl);
    memcpy(out + hl, ward, wl);
    memcpy(out + hl + wl, json, jl);
    out[n - 1] = '\n';
    return n;
}

/* The token at *p up to the next space (at most max bytes): its start and length; *p past the
 * space. false when there is no space within max bytes. */
static bool token(const char **p, const char *end, size_t max, const char **tok, size_t *len)
{
    size_t avail = (size_t)(end - *p);
    const char *sp = memchr(*p, ' ', avail < max + 1 ? avail : max + 1);
    if (!sp)
        return false;
    *tok = *p;
    *len = (size_t)(sp - *p);
    *p = sp + 1;
    return true;
}

static bool decimal(const char *s, size_t n, uint64_t max, uint64_t *v)
{
    uint64_t x = 0;
    if (n == 0 || n > 20)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (x > (max - d) / 10)
            return false;
        x = x * 10 + d;
    }
    *v = x;
    return true;
}

int events__wire_next(const char **p, const char *end, events__wire_event *ev)
{
    const char *q = *p, *tok;
    size_t len;
    uint64_t wl;
    if (q >= end)
        return 0;
    const char *lf = memchr(q, '\n', (size_t)(end - q));
    const char *next = lf ? lf + 1 : end;
    if (!token(&q, end, EVENTS__ORIGIN_LEN - 1, &tok, &len) || !is_origin(tok, len))
        goto bad;
    memcpy(ev->origin, tok, len);
    ev->origin[len] = '\0';
    if (!token(&q, end, 20, &tok, &len) || !decimal(tok, len, UINT64_MAX, &ev->published_us))
        goto bad;
    if (!token(&q, end, EVENTS__TYPE_LEN - 1, &tok, &len) || !is_type(tok, len))
        goto bad;
    memcpy(ev->type, tok, len);
    ev->type[len] = '\0';
    if (!token(&q, end, 2, &tok, &len) || !decimal(tok, len, EVENTS_WARD_LEN - 1, &wl))
        goto bad;
    /* The ward may hold any byte but NUL, an LF included: counted, not searched for. */
    if ((size_t)(end - q) < wl || memchr(q, '\0', wl))
        goto bad;
    memcpy(ev->ward, q, wl);
    ev->ward[wl] = '\0';
    q += wl;
    lf = q < end ? memchr(q, '\n', (size_t)(end - q)) : NULL;
    if (!lf || lf == q || *q != '{' || memchr(q, '\0', (size_t)(lf - q)))
        goto bad;
    ev->json = q;
    ev->json_len = (size_t)(lf - q);
    *p = lf + 1;
    return 1;
bad:
    *p = next;
    return -1;
}
