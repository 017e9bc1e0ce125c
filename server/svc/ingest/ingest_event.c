/* ingest_event.c - the live event of a stored message (see ingest_int.h). */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "events.h"
#include "ingest_int.h"

static json_t *str(const char *s)
{
    json_t *j = json_string(s);
    return j ? j : json_string("?"); /* not UTF-8: a mark, not a missing member */
}

void ingest__ward(const char *location, char *out, size_t cap)
{
    size_t n = strcspn(location, "^");
    if (n >= cap)
        n = cap - 1;
    memcpy(out, location, n);
    out[n] = '\0';
}

char *ingest__event_json(const char *serial, const pcd01_msg *m, const pcd04_msg *r40,
                         const char **type)
{
    if (!events_on())
        return NULL;
    json_t *o = json_object();
    json_t *list = json_array();
    char *out = NULL;
    if (!o || !list)
        goto cleanup;
    json_object_set_new(o, "device", str(serial));
    json_object_set_new(o, "location", str(m->vitals.location));
    if (r40) {
        *type = "alarm";
        for (size_t i = 0; i < r40->nalarms; i++) {
            const pcd04_alarm *a = &r40->alarms[i];
            if (pcd04_is_heartbeat(a))
                continue;
            json_array_append_new(
                list, json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "alarm_id",
                                str(a->alarm_id), "phase", str(a->phase), "state", str(a->state),
                                "priority", str(a->priority), "kind", str(a->kind), "label",
                                str(a->event_label), "text", str(a->alarm_text), "value",
                                str(a->value_text), "unit", str(a->unit_label)));
        }
        if (json_array_size(list) == 0) /* heartbeats only: nothing to show */
            goto cleanup;
        json_object_set(o, "alarms", list);
    } else {
        *type = "vitals";
        for (size_t i = 0; i < m->vitals.nobs; i++) {
            const vitals_obs *v = &m->vitals.obs[i];
            json_array_append_new(list, json_pack("{s:o, s:o, s:o, s:o, s:o}", "code", str(v->code),
                                                  "label", str(v->label), "sub_id", str(v->sub_id),
                                                  "value", str(v->value_text), "unit",
                                                  str(v->unit_label)));
        }
        json_object_set(o, "observations", list);
    }
    out = json_dumps(o, JSON_COMPACT);
cleanup:
    json_decref(list);
    json_decref(o);
    return out;
}
