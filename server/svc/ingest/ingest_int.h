/*
 * ingest_int.h - what ingest.c shares with ingest_event.c (the live event of
 * a stored message). Internal to server/svc/ingest.
 *
 * Thread: the worker loop's (the scratch messages are the loop's).
 */
#ifndef CMS_INGEST_INT_H
#define CMS_INGEST_INT_H

#include "pcd01.h"
#include "pcd04.h"

/*
 * The live event (events.h) of one message about to be stored, as a one-line
 * JSON object, malloc'd (the caller frees it), or NULL (out of memory, or the
 * hub is off). serial: the authenticated device; m: the message; r40: its
 * alarms when it is an ORU^R40, else NULL (both borrowed for the call).
 * *type is set to "vitals" or "alarm" (static).
 *   vitals: {"device", "location", "observations": [{"code", "label",
 *            "sub_id", "value" (as sent), "unit"}]}
 *   alarm:  {"device", "location", "alarms": [{"alarm_id", "phase", "state",
 *            "priority", "kind", "label", "text", "value", "unit"}]}
 * No patient identifier: the console fetches what it needs through the
 * viewer API.
 */
char *ingest__event_json(const char *serial, const pcd01_msg *m, const pcd04_msg *r40,
                         const char **type);

/* The ward of a location ("ICU^^BED-07" -> "ICU"): its first HL7 component,
 * into out (cap bytes, cut to fit). */
void ingest__ward(const char *location, char *out, size_t cap);

#endif
