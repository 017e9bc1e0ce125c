/*
 * proxy.c - PROXY protocol v2 header parser and the proxy source allowlist
 * (see proxy.h). The specification is HAProxy's proxy-protocol.txt, section 2.2.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "cms_err.h"
#include "proxy.h"

static const uint8_t sig[PROXY_V2_SIG_LEN] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                              0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static int refuse(const char **why, const char *text)
{
    if (why)
        *why = text;
    return CMS_EPROTO;
}

int proxy_v2_parse(const void *buf, size_t len, proxy_info *out, const char **why)
{
    const uint8_t *p = buf;
    /* A v1 header ("PROXY TCP4 ...") is told apart at once: it is the mistake
     * an operator makes with "send-proxy" instead of "send-proxy-v2". */
    static const char v1[] = "PROXY ";
    size_t n = len < sizeof(v1) - 1 ? len : sizeof(v1) - 1;
    if (n > 0 && memcmp(p, v1, n) == 0)
        return n == sizeof(v1) - 1 ? refuse(why, "PROXY protocol v1 header (v2 required)")
                                   : CMS_EAGAIN;
    n = len < PROXY_V2_SIG_LEN ? len : PROXY_V2_SIG_LEN;
    if (memcmp(p, sig, n) != 0)
        return refuse(why, "no PROXY protocol v2 signature");
    if (len < PROXY_V2_FIXED_LEN)
        return CMS_EAGAIN;
    uint8_t ver = p[12] >> 4, cmd = p[12] & 0x0F, fam = p[13] >> 4, proto = p[13] & 0x0F;
    size_t body = (size_t)p[14] << 8 | p[15];
    if (ver != 2)
        return refuse(why, "PROXY protocol version is not 2");
    if (cmd > 1)
        return refuse(why, "unknown PROXY protocol command");
    if (PROXY_V2_FIXED_LEN + body > PROXY_V2_MAX_HEADER) {
        if (why)
            *why = "PROXY protocol header too long";
        return CMS_ELIMIT;
    }
    size_t need = 0; /* address bytes the family requires */
    if (cmd == 1) {
        if (proto != 1 || (fam != 1 && fam != 2))
            return refuse(why, "PROXY command for a transport other than TCP over IPv4/IPv6");
        need = fam == 1 ? 12 : 36;
    } else if (fam == 1 || fam == 2 || fam == 3) {
        need = fam == 1 ? 12 : fam == 2 ? 36 : 216; /* LOCAL may carry addresses: skipped */
    }
    if (body < need)
        return refuse(why, "PROXY protocol header shorter than its addresses");
    if (len < PROXY_V2_FIXED_LEN + body)
        return CMS_EAGAIN;
    if (out) {
        memset(out, 0, sizeof(*out));
        if (cmd == 0) {
            out->local = true;
        } else {
            const uint8_t *a = p + PROXY_V2_FIXED_LEN;
            size_t alen = fam == 1 ? 4 : 16;
            out->family = fam == 1 ? AF_INET : AF_INET6;
            memcpy(out->src_addr, a, alen);
            memcpy(out->dst_addr, a + alen, alen);
            out->src_port = (uint16_t)(a[2 * alen] << 8 | a[2 * alen + 1]);
            out->dst_port = (uint16_t)(a[2 * alen + 2] << 8 | a[2 * alen + 3]);
        }
    }
    return (int)(PROXY_V2_FIXED_LEN + body);
}

char *proxy_src_text(const proxy_info *info, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (info->local) {
        snprintf(out, cap, "local");
        return out;
    }
    inet_ntop(info->family, info->src_addr, ip, sizeof(ip));
    snprintf(out, cap, info->family == AF_INET6 ? "[%s]:%u" : "%s:%u", ip,
             (unsigned)info->src_port);
    return out;
}

/* ---- allowlist ------------------------------------------------------------------------ */

typedef struct cidr {
    int family;
    uint8_t addr[16];
    unsigned bits;
} cidr;

/* Parses one entry ("10.0.0.0/8", "::1", "127.0.0.1"). CMS_OK or CMS_EINVAL. */
static int cidr_parse(const char *s, size_t n, cidr *c)
{
    char text[INET6_ADDRSTRLEN + 4];
    if (n == 0 || n >= sizeof(text))
        return CMS_EINVAL;
    memcpy(text, s, n);
    text[n] = '\0';
    char *slash = strchr(text, '/');
    long bits = -1;
    if (slash) {
        char *end;
        *slash = '\0';
        if (!slash[1] || slash[1] == '-' || slash[1] == '+')
            return CMS_EINVAL;
        bits = strtol(slash + 1, &end, 10);
        if (*end)
            return CMS_EINVAL;
    }
    memset(c, 0, sizeof(*c));
    if (inet_pton(AF_INET, text, c->addr) == 1)
        c->family = AF_INET;
    else if (inet_pton(AF_INET6, text, c->addr) == 1)
        c->family = AF_INET6;
    else
        return CMS_EINVAL;
    long max = c->family == AF_INET ? 32 : 128;
    if (bits > max)
        return CMS_EINVAL;
    c->bits = (unsigned)(bits < 0 ? max : bits);
    return CMS_OK;
}

static bool cidr_contains(const cidr *c, int family, const uint8_t *addr)
{
    if (c->family != family)
        return false;
    unsigned full = c->bits / 8, rest = c->bits % 8;
    if (memcmp(c->addr, addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xFF << (8 - rest));
    return (c->addr[full] & mask) == (addr[full] & mask);
}

/* Walks the list; calls back per entry. Returns the first non-zero of fn, or CMS_EINVAL. */
static int walk(const char *list, int (*fn)(const cidr *c, void *arg), void *arg,
                const char **why)
{
    const char *p = list ? list : "";
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        if (!*p)
            return 0;
        size_t n = strcspn(p, ", \t");
        cidr c;
        if (cidr_parse(p, n, &c) != CMS_OK) {
            if (why)
                *why = "proxy allowlist: an entry is not an IPv4/IPv6 address or CIDR block";
            return CMS_EINVAL;
        }
        int r = fn ? fn(&c, arg) : 0;
        if (r)
            return r;
        p += n;
    }
}

typedef struct probe {
    int family;
    uint8_t addr[16];
} probe;

static int probe_match(const cidr *c, void *arg)
{
    const probe *pr = arg;
    return cidr_contains(c, pr->family, pr->addr) ? 1 : 0;
}

int proxy_allowlist_match(const char *list, const struct sockaddr *addr, const char **why)
{
    probe pr = {0};
    if (addr->sa_family == AF_INET) {
        pr.family = AF_INET;
        memcpy(pr.addr, &((const struct sockaddr_in *)(const void *)addr)->sin_addr, 4);
    } else if (addr->sa_family == AF_INET6) {
        const uint8_t *a = ((const struct sockaddr_in6 *)(const void *)addr)->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
        if (memcmp(a, mapped, 12) == 0) {
            pr.family = AF_INET;
            memcpy(pr.addr, a + 12, 4);
        } else {
            pr.family = AF_INET6;
            memcpy(pr.addr, a, 16);
        }
    } else {
        return 0;
    }
    return walk(list, probe_match, &pr, why);
}

int proxy_allowlist_check(const char *list, const char **why)
{
    return walk(list, NULL, NULL, why) == CMS_EINVAL ? CMS_EINVAL : CMS_OK;
}
