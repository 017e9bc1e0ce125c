/*
 * proxy.c - the PROXY protocol v2 header in front of TLS (net.h,
 * net_server_set_proxy): the allowlist at accept, then the header's bytes
 * until it is complete; the parser is proto/proxy.c.
 */
#include <stdlib.h>
#include <string.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "log.h"
#include "net_int.h"
#include "proxy.h"

int net_server_set_proxy(net_server *s, const char *allow)
{
    const char *why = NULL;
    if (allow && proxy_allowlist_check(allow, &why) != CMS_OK) {
        log_error("config_invalid", NULL, NULL, "%s", why);
        return CMS_EINVAL;
    }
    s->proxy_allow = allow;
    return CMS_OK;
}

/* Refuses c: one log line, counted under reason, the protocol's refusal hook
 * (audit); closed by the caller. */
static void refuse(net_conn *c, enum cm_refusal counted, const char *why)
{
    char reason[160];
    snprintf(reason, sizeof(reason), "PROXY protocol: %s", why);
    log_warn("proxy_refused", NULL, c->peer, "%s: %s", c->proto->name, reason);
    metrics_add(CM_CONN_REFUSED, cm_refused(c->proto->metrics_listener, counted), 1);
    if (c->proto->on_tls_refused)
        c->proto->on_tls_refused(c->proto_ctx, c->peer, reason);
}

bool net__proxy_admit(net_conn *c, const struct sockaddr_storage *ss)
{
    if (proxy_allowlist_match(c->srv->proxy_allow, (const struct sockaddr *)ss, NULL) == 1)
        return true;
    refuse(c, CM_REFUSED_PROXY_NOT_ALLOWED, "source address not in proxy_allow");
    return false;
}

ssize_t net__proxy_input(net_conn *c, const char *data, size_t len)
{
    /* The header is parsed where it arrived when it came in one read (the usual
     * case: HAProxy writes it with or before the ClientHello); otherwise its
     * bytes are gathered, up to the longest header accepted. */
    const char *why = NULL;
    proxy_info pi;
    size_t had = c->proxy_len;
    const unsigned char *p = (const unsigned char *)data;
    size_t n = len;
    if (had > 0) {
        size_t take = len < PROXY_V2_MAX_HEADER - had ? len : PROXY_V2_MAX_HEADER - had;
        memcpy(c->proxy_buf + had, data, take);
        c->proxy_len += take;
        p = c->proxy_buf;
        n = c->proxy_len;
    }
    int r = proxy_v2_parse(p, n, &pi, &why);
    if (r == CMS_EAGAIN && n < PROXY_V2_MAX_HEADER) {
        if (had == 0) {
            if (!(c->proxy_buf = malloc(PROXY_V2_MAX_HEADER))) {
                net_conn_close(c, "out of memory");
                return -1;
            }
            memcpy(c->proxy_buf, data, len);
            c->proxy_len = len;
        }
        return (ssize_t)len;
    }
    if (r <= 0) {
        refuse(c, CM_REFUSED_PROXY_HEADER, r == CMS_EAGAIN ? "header too long" : why);
        net_conn_close(c, NULL);
        return -1;
    }
    if (!pi.local) { /* LOCAL: the proxy's own connection (a health check) */
        char real[64];
        log_debug("proxy_header", NULL, c->peer, "%s: source %s", c->proto->name,
                  proxy_src_text(&pi, real, sizeof(real)));
        memcpy(c->peer, real, sizeof(c->peer) < sizeof(real) ? sizeof(c->peer) : sizeof(real));
        c->peer[sizeof(c->peer) - 1] = '\0';
    }
    c->proxy_wait = false;
    free(c->proxy_buf);
    c->proxy_buf = NULL;
    c->proxy_len = 0;
    return (ssize_t)((size_t)r - had); /* header bytes of this read */
}
