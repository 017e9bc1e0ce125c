/*
 * pcd04.h - IHE PCD-04 (Alarm Communication Management, "Report Alert")
 * ORU^R40 content extraction.
 *
 * The message header, patient and location are read exactly as for
 * ORU^R01 (pcd01.h) into a pcd01_msg (its obs and texts stay empty); the
 * alarms go to a pcd04_msg, self-contained (all text unescaped and copied).
 *
 * Structure: every OBR starts one alarm (vendors send one per message; a
 * few send several), and the OBX rows after it are that alarm's facets.
 * Mapping per alarm:
 *   OBR-3   alarm identifier (EI): 3.1 -> alarm_id (required; an update,
 *           continue or end of the same alarm carries the same one),
 *           3.2/3.3/3.4 -> alarm_ns / alarm_uid / alarm_uid_type (the
 *           device that assigned it, for the identity check)
 *   OBR-29  parent (EIP): 29.2.1 (filler id) or else 29.1.1 -> parent_id
 *   OBR-4   fallback for the alarm type when no type facet names one
 *   OBR-7   fallback for the event time
 *   OBX rows, their facet found by (first match wins):
 *     1. OBX-3.2 reference id name: MDC_ATTR_ALERT_SOURCE (2),
 *        MDC_ATTR_EVENT_PHASE (3), MDC_ATTR_ALARM_STATE (4),
 *        MDC_ATTR_ALARM_INACTIVATION_STATE (5), MDC_ATTR_ALARM_PRIORITY (6),
 *        MDC_ATTR_ALERT_TYPE (7), MDC_ATTR_ALERT_TEXT (text), MDC_EVT_ALARM (1);
 *     2. unless OBX-3.2 is another MDC reference id ("MDC..."), the code
 *        OBX-3.1 in either numeric set vendors use: 68480..68485 (facets
 *        2..7) or 68165..68168 (facets 3..6); 196616 for 1;
 *     3. the facet number of OBX-4 (its 5th or later dotted component,
 *        "1.3.1.150456.3" -> 3).
 *   facet 1 (alarm type): the alarm's MDC event code: OBX-5 (CWE) when
 *           OBX-3 is the generic MDC_EVT_ALARM, else OBX-3 itself; an ST
 *           OBX-5 is the alarm text; OBX-8 repetitions may carry the
 *           priority (PH/PM/PL/PN) and kind (SP/ST/SA) too; OBX-14 ->
 *           event_at (else OBR-7, else MSH-7)
 *   facet 2 (source): OBX-3 -> source code/label (or OBX-5 when OBX-3 is
 *           MDC_ATTR_ALERT_SOURCE), OBX-4 -> source_sub_id, an NM OBX-5 ->
 *           value (a finite number), OBX-6 -> unit, OBX-7 -> limits
 *           (e.g. "90-100"), OBX-8 as for facet 1
 *   facet 3 phase (required): start, start_only, continue, update, escalate,
 *           de-escalate, inactivate, reset, end (case-insensitive; "-" and
 *           "_" alike); anything else is refused (the lifecycle depends on it)
 *   facet 4 state: off, inactive, active, latched
 *   facet 5 inactivation: enabled, audio-paused, audio-off, alarm-paused,
 *           alarm-off, alert-acknowledged
 *   facet 6 priority: PH, PM, PL, PN (PN: no alarm; heartbeats/watchdogs)
 *   facet 7 kind: SP -> physiological, ST -> technical, SA -> advisory
 *   A state, inactivation, priority or kind value we do not know leaves
 *   the column "" and is kept as sent in facets[], as is every row that
 *   maps to no column (unknown facets are kept, not fatal). Device
 *   hierarchy rows (empty OBX-2) are skipped.
 *   OBX-18 of any row -> equipment_ids (distinct, for the identity check).
 *
 * Thread: any.
 */
#ifndef CMS_PCD04_H
#define CMS_PCD04_H

#include <stddef.h>

#include "clinical.h"
#include "hl7.h"
#include "pcd01.h"

#define PCD04_MAX_ALARMS 16
#define PCD04_MAX_FACETS 64
#define PCD04_MAX_EQUIPMENT 8
#define PCD04_ID_LEN CLINICAL_ALARM_ID_LEN /* an EI entity identifier: up to 199 characters */

/* One alarm (the store's record, clinical.h); its kept rows are
 * pcd04_msg.facets[first_facet .. first_facet + nfacets). */
typedef clinical_alarm pcd04_alarm;

typedef struct pcd04_msg {
    size_t nalarms;
    pcd04_alarm alarms[PCD04_MAX_ALARMS];
    size_t nfacets;
    pcd01_facet facets[PCD04_MAX_FACETS]; /* owner = index in alarms[] */
    size_t nequipment;
    char equipment_ids[PCD04_MAX_EQUIPMENT][PCD01_ID_LEN]; /* distinct OBX-18.1 */
} pcd04_msg;

/*
 * Extracts an ORU^R40: the header, PID and PV1 into hdr (as
 * pcd01_extract does; hdr->nobs and ntexts are 0) and the alarms into out.
 * Returns CMS_OK (at least one alarm), CMS_EPROTO (malformed: no OBR,
 * an OBX before the first OBR, missing OBR-3 or phase, unknown phase, bad
 * number or time, ...), CMS_EINVAL (not ORU^R40, or not 2.x: 200/203),
 * CMS_ELIMIT (more than PCD04_MAX_ALARMS / _FACETS / _EQUIPMENT, or a field
 * longer than its slot). v (required) says how to answer: HL7_AA on
 * success, HL7_AR otherwise, with an HL7 table 0357 code and a reason that
 * never quotes field values. Even on error, hdr's MSH fields are filled as
 * far as they could be read (for the AR's echo).
 */
int pcd04_extract(const hl7_msg *m, pcd01_msg *hdr, pcd04_msg *out, pcd01_verdict *v);

/* True when a is a heartbeat/watchdog (priority PN): it refreshes the
 * device's "last heard" instead of entering the alarm list. */
int pcd04_is_heartbeat(const pcd04_alarm *a);

#endif
