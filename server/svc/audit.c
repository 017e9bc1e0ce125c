/* audit.c - one way for the services to append an audit row with a JSON detail,
 * and the chain-head anchors written to the log (svc.h). */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cms_err.h"
#include "log.h"
#include "svc.h"

void svc_audit(store_t *store, const char *event, const char *actor, const char *device,
               const char *peer, json_t *detail)
{
    char *text = detail ? json_dumps(detail, JSON_COMPACT) : NULL;
    store_audit(store, event, actor, device, peer, text);
    free(text);
    json_decref(detail);
}

static void on_anchor(void *ctx, int status, const store_rows *res)
{
    svc_state *st = ctx;
    if (status != CMS_OK || store_rows_count(res) != 1 || store_rows_null(res, 0, 0))
        return; /* database away, or an empty log: the next tick tries again */
    long long id = strtoll(store_rows_text(res, 0, 0), NULL, 10);
    if (id == st->anchor_id)
        return;
    st->anchor_id = id;
    log_info("audit_anchor", NULL, NULL, "id=%lld sha256=%s", id, store_rows_text(res, 0, 1));
}

void svc_audit_anchor(svc_state *st)
{
    static const char sql[] = "SELECT last_id, encode(last_hash, 'hex') "
                              "FROM cms.audit_chain_head WHERE singleton";
    if (st->store && store_query(st->store, sql, 0, NULL, on_anchor, st) != CMS_OK)
        log_warn("audit_anchor", NULL, NULL, "cannot queue the chain head query: skipped");
}

bool svc_audit_anchor_parse(const char *s, long long *id, char hex[65])
{
    long long v = 0;
    char h[65];
    if (*s < '1' || *s > '9')
        return false; /* no sign, space or leading zero: the log writes none */
    for (; *s >= '0' && *s <= '9'; s++) {
        int d = *s - '0';
        if (v > (LLONG_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    if (*s++ != ':')
        return false;
    for (int i = 0; i < 64; i++) {
        char c = s[i]; /* an early NUL is not a hex digit: the loop stops there */
        if (c >= 'A' && c <= 'F')
            c = (char)(c - 'A' + 'a');
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
        h[i] = c;
    }
    if (s[64] != '\0')
        return false;
    h[64] = '\0';
    *id = v;
    memcpy(hex, h, sizeof(h));
    return true;
}
