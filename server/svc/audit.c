/* audit.c - one way for the services to append an audit row with a JSON detail. */
#include <stdlib.h>

#include "svc.h"

void svc_audit(store_t *store, const char *event, const char *actor, const char *device,
               const char *peer, json_t *detail)
{
    char *text = detail ? json_dumps(detail, JSON_COMPACT) : NULL;
    store_audit(store, event, actor, device, peer, text);
    free(text);
    json_decref(detail);
}
