/* test_pcd04.c - IHE PCD-04 ORU^R40 alarm extraction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cms_err.h"
#include "hl7.h"
#include "pcd01.h"
#include "pcd04.h"

#include "sample_pcd04.h"

#define MSH "MSH|^~\\&|MON-0001|Ward|||20261115083000+0100||ORU^R40^ORU_R40|C-40|P|2.6\r"
#define OBR "OBR|1||A-1^MON-0001|196616^MDC_EVT_ALARM^MDC|||20261115083000+0100\r"
#define TYPE "OBX|1|ST|196674^MDC_EVT_DESAT^MDC|1.22.1.150456.1|Desat\r"
#define PHASE(p) "OBX|3|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|1.22.1.150456.3|" p "\r"

static hl7_msg m;
static pcd01_msg hdr;
static pcd04_msg out;
static pcd01_verdict v;
static char *buf;

static int extract_n(const char *s, size_t n)
{
    char reason[256];

    free(buf);
    buf = malloc(n ? n : 1);
    assert_non_null(buf);
    memcpy(buf, s, n);
    if (hl7_parse(&m, buf, n, reason, sizeof(reason)) != CMS_OK)
        fail_msg("hl7_parse: %s", reason);
    return pcd04_extract(&m, &hdr, &out, &v);
}

static int extract(const char *s)
{
    return extract_n(s, strlen(s));
}

static int teardown(void **state)
{
    (void)state;
    free(buf);
    buf = NULL;
    return 0;
}

static void test_desat_start(void **state)
{
    (void)state;
    assert_int_equal(extract(r40_desat_start), CMS_OK);
    assert_int_equal(v.ack, HL7_AA);
    assert_string_equal(v.err_code, "0");
    /* the header as for ORU^R01 */
    assert_string_equal(hdr.vitals.control_id, "MON-0001-A-000101");
    assert_string_equal(hdr.sending_app[0], "MON-0001");
    assert_string_equal(hdr.sending_app[1], "0012A1FFFE000001");
    assert_string_equal(hdr.trigger, "R40");
    assert_string_equal(hdr.vitals.patient_id, "MRN-448812");
    assert_string_equal(hdr.vitals.patient_authority, "GENERAL HOSPITAL");
    assert_string_equal(hdr.vitals.location, "CCU^^BED-07");
    assert_string_equal(hdr.vitals.msg_time, "2026-11-15 08:30:12.500000+01:00");
    assert_int_equal(hdr.vitals.nobs, 0);

    assert_int_equal(out.nalarms, 1);
    const pcd04_alarm *a = &out.alarms[0];
    assert_string_equal(a->alarm_id, "ALM-20261115-0042");
    assert_string_equal(a->alarm_ns, "MON-0001");
    assert_string_equal(a->alarm_uid, "0012A1FFFE000001");
    assert_string_equal(a->alarm_uid_type, "EUI-64");
    assert_string_equal(a->event_code, "196674");
    assert_string_equal(a->event_label, "MDC_EVT_DESAT");
    assert_string_equal(a->event_system, "MDC");
    assert_string_equal(a->alarm_text, "SpO2 Desat");
    assert_string_equal(a->source_code, "150456");
    assert_string_equal(a->source_label, "MDC_PULS_OXIM_SAT_O2");
    assert_string_equal(a->source_sub_id, "1.22.1.150456.2");
    assert_string_equal(a->value_text, "84");
    assert_float_equal(a->value, 84.0, 1e-12);
    assert_string_equal(a->unit_code, "262688");
    assert_string_equal(a->unit_label, "MDC_DIM_PERCENT");
    assert_string_equal(a->limits, "90-100");
    assert_string_equal(a->phase, "start");
    assert_string_equal(a->state, "active");
    assert_string_equal(a->inactivation, "enabled");
    assert_string_equal(a->priority, "PH");
    assert_string_equal(a->kind, "physiological");
    /* the type row's OBX-14, not OBR-7 */
    assert_string_equal(a->event_at, "2026-11-15 08:30:11.750000+01:00");
    assert_int_equal(a->nfacets, 0);
    assert_false(pcd04_is_heartbeat(a));
    assert_int_equal(out.nequipment, 1);
    assert_string_equal(out.equipment_ids[0], "0012A1FFFE000001");
}

static void test_other_vendor_layout(void **state)
{
    (void)state;
    assert_int_equal(extract(r40_leadoff), CMS_OK);
    assert_int_equal(out.nalarms, 1);
    const pcd04_alarm *a = &out.alarms[0];
    assert_string_equal(a->alarm_id, "LEADOFF-31");
    /* the event from the CWE value of the generic MDC_EVT_ALARM row */
    assert_string_equal(a->event_code, "196680");
    assert_string_equal(a->event_label, "MDC_EVT_LEAD_OFF");
    assert_string_equal(a->alarm_text, "ECG Lead Off");
    /* priority and kind from OBX-8 */
    assert_string_equal(a->priority, "PL");
    assert_string_equal(a->kind, "technical");
    /* the alert source as a coded value */
    assert_string_equal(a->source_code, "69798");
    assert_string_equal(a->source_label, "MDC_DEV_ECG_VMD");
    assert_string_equal(a->value_text, "");
    /* the other numeric set, without names; values normalised */
    assert_string_equal(a->phase, "continue");
    assert_string_equal(a->state, "latched");
    assert_string_equal(a->inactivation, "audio-paused");
    assert_string_equal(a->event_at, "2026-11-15 09:05:01.000000+08:00");
    /* the vendor's own attribute is kept as sent, the MDS row skipped */
    assert_int_equal(a->nfacets, 1);
    assert_int_equal(out.nfacets, 1);
    assert_int_equal(out.facets[0].owner, 0);
    assert_int_equal(out.facets[0].set_id, 7);
    assert_string_equal(out.facets[0].label, "MDCX_VENDOR_ALARM_REPEAT");
    assert_string_equal(out.facets[0].sub_id, "1.7.0.196680.9");
    assert_string_equal(out.facets[0].value, "3");
    assert_int_equal(hdr.skipped_obx, 1);
    assert_int_equal(out.nequipment, 0);
}

static void test_end_and_heartbeat(void **state)
{
    (void)state;
    assert_int_equal(extract(r40_desat_end), CMS_OK);
    assert_string_equal(out.alarms[0].alarm_id, "ALM-20261115-0042");
    assert_string_equal(out.alarms[0].phase, "end");
    assert_string_equal(out.alarms[0].state, "inactive");
    assert_string_equal(out.alarms[0].inactivation, "alert-acknowledged");
    assert_string_equal(out.alarms[0].value_text, "93");

    assert_int_equal(extract(r40_heartbeat), CMS_OK);
    assert_string_equal(out.alarms[0].priority, "PN");
    assert_string_equal(out.alarms[0].kind, "advisory");
    assert_true(pcd04_is_heartbeat(&out.alarms[0]));
    /* no OBX-14 on the type row: OBR-7 */
    assert_string_equal(out.alarms[0].event_at, "2026-11-15 08:31:00.000000+01:00");
}

static void test_names_before_numbers(void **state)
{
    (void)state;
    /* a known name wins over a number of the other set ... */
    assert_int_equal(
        extract(MSH OBR TYPE "OBX|2|ST|68166^MDC_ATTR_EVENT_PHASE^MDC|1.22.1.150456.4|update\r"),
        CMS_OK);
    assert_string_equal(out.alarms[0].phase, "update");
    /* ... another MDC name is not overruled by a number: facet by sub-id (.9: kept) */
    assert_int_equal(extract(MSH OBR TYPE PHASE(
                         "start") "OBX|4|ST|68482^MDC_ATTR_SOMETHING_ELSE^MDC|1.22.1.150456.9|x\r"),
                     CMS_OK);
    assert_string_equal(out.alarms[0].state, "");
    assert_int_equal(out.nfacets, 1);
    /* no name, no known number: the sub-id facet number */
    assert_int_equal(extract(MSH OBR TYPE "OBX|2|ST|99^^MDC|1.22.1.150456.3|Start_Only\r"), CMS_OK);
    assert_string_equal(out.alarms[0].phase, "start-only");
    /* a 4-level sub id has no facet number */
    assert_int_equal(extract(MSH OBR TYPE "OBX|2|ST|99^^MDC|1.22.1.3|end\r"), CMS_EPROTO);
    assert_string_equal(v.err_code, "101");
}

static void test_unknown_values_kept(void **state)
{
    (void)state;
    assert_int_equal(
        extract(MSH OBR TYPE PHASE(
            "start") "OBX|4|ST|68482^MDC_ATTR_ALARM_STATE^MDC|1.22.1.150456.4|blinking\r"
                     "OBX|6|ST|68484^MDC_ATTR_ALARM_PRIORITY^MDC|1.22.1.150456.6|20\r"),
        CMS_OK);
    assert_string_equal(out.alarms[0].state, "");
    assert_string_equal(out.alarms[0].priority, "");
    assert_int_equal(out.nfacets, 2);
    assert_string_equal(out.facets[0].value, "blinking");
    assert_string_equal(out.facets[1].value, "20");
}

static void test_several_alarms(void **state)
{
    (void)state;
    assert_int_equal(extract(MSH OBR TYPE PHASE(
                         "start") "OBR|2||A-2^MON-0001||||||||||||||||||||||||||^A-1&MON-0001\r"
                                  "OBX|1|ST|196648^MDC_EVT_HI^MDC|1.5.1.147842.1|HR High||||||F|||"
                                  "20261115083005+0100||||EQ-9\r" PHASE("end")),
                     CMS_OK);
    assert_int_equal(out.nalarms, 2);
    assert_string_equal(out.alarms[0].alarm_id, "A-1");
    assert_string_equal(out.alarms[0].phase, "start");
    assert_string_equal(out.alarms[0].event_at, "2026-11-15 08:30:00.000000+01:00");
    assert_string_equal(out.alarms[1].alarm_id, "A-2");
    assert_string_equal(out.alarms[1].parent_id, "A-1");
    assert_string_equal(out.alarms[1].event_label, "MDC_EVT_HI");
    assert_string_equal(out.alarms[1].phase, "end");
    assert_string_equal(out.alarms[1].event_at, "2026-11-15 08:30:05.000000+01:00");
    assert_int_equal(out.nequipment, 1);
    assert_string_equal(out.equipment_ids[0], "EQ-9");
}

static void test_alarm_type_from_obr4(void **state)
{
    (void)state;
    assert_int_equal(extract(MSH OBR PHASE("start")), CMS_OK);
    assert_string_equal(out.alarms[0].event_code, "196616");
    assert_string_equal(out.alarms[0].event_label, "MDC_EVT_ALARM");
}

static void test_refusals(void **state)
{
    (void)state;
    /* no phase */
    assert_int_equal(extract(MSH OBR TYPE), CMS_EPROTO);
    assert_int_equal(v.ack, HL7_AR);
    assert_string_equal(v.err_code, "101");
    assert_non_null(strstr(v.reason, "phase"));
    /* an unknown phase */
    assert_int_equal(extract(MSH OBR TYPE PHASE("wobble")), CMS_EPROTO);
    assert_string_equal(v.err_code, "102");
    assert_null(strstr(v.reason, "wobble")); /* reasons do not quote values */
    /* no OBR-3 */
    assert_int_equal(extract(MSH "OBR|1||^MON-0001\r" TYPE PHASE("start")), CMS_EPROTO);
    assert_string_equal(v.err_code, "101");
    assert_non_null(strstr(v.reason, "OBR-3"));
    /* no type anywhere */
    assert_int_equal(extract(MSH "OBR|1||A-1\r" PHASE("start")), CMS_EPROTO);
    assert_string_equal(v.err_code, "101");
    /* OBX before OBR, no OBR at all */
    assert_int_equal(extract(MSH TYPE OBR PHASE("start")), CMS_EPROTO);
    assert_string_equal(v.err_code, "100");
    assert_int_equal(extract(MSH "PID|||P-1\r"), CMS_EPROTO);
    assert_string_equal(v.err_code, "101");
    /* a source value that is not a number */
    assert_int_equal(extract(MSH OBR TYPE PHASE(
                         "start") "OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.150456.2|8x4\r"),
                     CMS_EPROTO);
    assert_string_equal(v.err_code, "102");
    /* not R40, not 2.x; the header is still read for the AR */
    assert_int_equal(extract("MSH|^~\\&|M|F|||20261115||ORU^R01|C-9|P|2.6\r"), CMS_EINVAL);
    assert_string_equal(v.err_code, "200");
    assert_string_equal(hdr.vitals.control_id, "C-9");
    assert_int_equal(extract("MSH|^~\\&|M|F|||20261115||ORU^R40|C-9|P|3.0\r" OBR), CMS_EINVAL);
    assert_string_equal(v.err_code, "203");
    assert_int_equal(out.nalarms, 0);
}

static void test_limits(void **state)
{
    char *msg = malloc(64 * 1024), *p = msg;

    (void)state;
    assert_non_null(msg);
    p += sprintf(p, "%s", MSH);
    for (int i = 0; i <= PCD04_MAX_ALARMS; i++)
        p += sprintf(p, "OBR|%d||A-%d\r%s%s", i + 1, i, TYPE, PHASE("start"));
    assert_int_equal(extract_n(msg, (size_t)(p - msg)), CMS_ELIMIT);
    assert_int_equal(v.ack, HL7_AR);

    p = msg;
    p += sprintf(p, "%s%s%s%s", MSH, OBR, TYPE, PHASE("start"));
    for (int i = 0; i <= PCD04_MAX_EQUIPMENT; i++)
        p += sprintf(p, "OBX|%d|ST|1^X^MDC|1.1.1.1.9|v||||||F|||||||EQ-%d\r", 10 + i, i);
    assert_int_equal(extract_n(msg, (size_t)(p - msg)), CMS_ELIMIT);
    free(msg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_desat_start, teardown),
        cmocka_unit_test_teardown(test_other_vendor_layout, teardown),
        cmocka_unit_test_teardown(test_end_and_heartbeat, teardown),
        cmocka_unit_test_teardown(test_names_before_numbers, teardown),
        cmocka_unit_test_teardown(test_unknown_values_kept, teardown),
        cmocka_unit_test_teardown(test_several_alarms, teardown),
        cmocka_unit_test_teardown(test_alarm_type_from_obr4, teardown),
        cmocka_unit_test_teardown(test_refusals, teardown),
        cmocka_unit_test_teardown(test_limits, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
