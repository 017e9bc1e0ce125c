/* audit.c - one way for the services to append an audit row with a JSON detail,
 * and the chain-head anchors written to the log (svc.h). */
#include <stdlib.h>

#include <libpq-fe.h>

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

static void on_anchor(void *ctx, int status, const struct pg_result *res)
{
    svc_state *st = ctx;
    if (status != CMS_OK || PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
        return; /* database away, or an empty log: the next tick tries again */
    long long id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    if (id == st->anchor_id)
        return;
    st->anchor_id = id;
    log_info("audit_anchor", NULL, NULL, "id=%lld sha256=%s", id, PQgetvalue(res, 0, 1));
}

void svc_audit_anchor(svc_state *st)
{
    static const char sql[] = "SELECT last_id, encode(last_hash, 'hex') "
                              "FROM cms.audit_chain_head WHERE singleton";
    if (st->store && store_query(st->store, sql, 0, NULL, on_anchor, st) != CMS_OK)
        log_warn("audit_anchor", NULL, NULL, "cannot queue the chain head query: skipped");
}
