/* test_pcd01.c - IHE PCD-01 ORU^R01 extraction. */
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

#include "sample_pcd01.h"

#define MSH                                                                                        \
    "MSH|^~\\&|MON-0001^MON-0001^L|Ward|CMS|HOSP|20261115083000+0100||ORU^R01^ORU_R01|C-1|P|2.6\r"
#define OBX_SPO2(v)                                                                                \
    "OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.1|" v "|262688^MDC_DIM_PERCENT^MDC|||||R\r"

static hl7_msg m;
static pcd01_msg out;
static const char *code;
static char reason[256];
static char *buf;

/* Parses an exact-length heap copy (no NUL after it) and extracts. */
static int extract_n(const char *s, size_t n)
{
    int rc;

    free(buf);
    buf = malloc(n ? n : 1);
    assert_non_null(buf);
    memcpy(buf, s, n);
    rc = hl7_parse(&m, buf, n, reason, sizeof(reason));
    if (rc != CMS_OK)
        fail_msg("hl7_parse: %s", reason);
    code = NULL;
    reason[0] = '\0';
    return pcd01_extract(&m, &out, &code, reason, sizeof(reason));
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

static void test_sample_fully_extracted(void **state)
{
    (void)state;
    assert_int_equal(extract_n(sample, sizeof(sample) - 1), CMS_OK);
    assert_string_equal(code, "0");
    assert_string_equal(out.vitals.control_id, "MON-0002-000417");
    assert_string_equal(out.sending_app[0], "MON-0002");
    assert_string_equal(out.sending_app[1], "MON-0002");
    assert_string_equal(out.sending_app[2], "L");
    assert_string_equal(out.sending_facility, "Example Monitors");
    assert_string_equal(out.msg_type, "ORU");
    assert_string_equal(out.trigger, "R01");
    assert_string_equal(out.version, "2.6");
    assert_string_equal(out.vitals.msg_time, "2026-11-15 08:30:00.250000+01:00");
    assert_string_equal(out.vitals.patient_id, "MRN-448812");
    assert_string_equal(out.vitals.patient_authority, "GENERAL HOSPITAL");
    assert_string_equal(out.vitals.location, "CCU^^BED-07");
    assert_string_equal(out.obr_time, "2026-11-15 08:30:00.000000+01:00");
    assert_int_equal(out.vitals.nobs, 8);
    assert_int_equal(out.skipped_obx, 4);

    static const struct {
        unsigned set_id;
        const char *code, *label, *sub_id, *value_text;
        double value;
        const char *unit_code, *unit_label, *time;
    } want[8] = {
        {3, "147842", "MDC_ECG_HEART_RATE", "1.5.1.1", "72", 72, "264864", "MDC_DIM_BEAT_PER_MIN",
         "2026-11-15 08:30:00.000000+01:00"},
        {5, "150456", "MDC_PULS_OXIM_SAT_O2", "1.22.1.1", "96", 96, "262688", "MDC_DIM_PERCENT",
         "2026-11-15 08:30:00.000000+01:00"},
        {6, "149530", "MDC_PULS_OXIM_PULS_RATE", "1.22.1.2", "71", 71, "264864",
         "MDC_DIM_BEAT_PER_MIN", "2026-11-15 08:30:00.000000+01:00"},
        {8, "150021", "MDC_PRESS_BLD_NONINV_SYS", "1.1.1.1", "132", 132, "266016", "MDC_DIM_MMHG",
         "2026-11-15 08:28:45.000000+01:00"},
        {9, "150022", "MDC_PRESS_BLD_NONINV_DIA", "1.1.1.2", "84", 84, "266016", "MDC_DIM_MMHG",
         "2026-11-15 08:28:45.000000+01:00"},
        {10, "150023", "MDC_PRESS_BLD_NONINV_MEAN", "1.1.1.3", "100", 100, "266016", "MDC_DIM_MMHG",
         "2026-11-15 08:28:45.000000+01:00"},
        {11, "150344", "MDC_TEMP", "1.13.1.1", "37.2", 37.2, "268192", "MDC_DIM_DEGC",
         "2026-11-15 08:30:00.000000+01:00"},
        {12, "151562", "MDC_RESP_RATE", "1.5.1.2", "16", 16, "264928", "MDC_DIM_RESP_PER_MIN",
         "2026-11-15 08:30:00.000000+01:00"},
    };
    for (size_t i = 0; i < 8; i++) {
        const vitals_obs *o = &out.vitals.obs[i];
        assert_int_equal(o->set_id, want[i].set_id);
        assert_string_equal(o->code, want[i].code);
        assert_string_equal(o->label, want[i].label);
        assert_string_equal(o->coding_system, "MDC");
        assert_string_equal(o->sub_id, want[i].sub_id);
        assert_string_equal(o->value_text, want[i].value_text);
        assert_float_equal(o->value, want[i].value, 1e-9);
        assert_string_equal(o->unit_code, want[i].unit_code);
        assert_string_equal(o->unit_label, want[i].unit_label);
        assert_string_equal(o->status, "R");
        assert_string_equal(o->observed_at, want[i].time);
        assert_string_equal(o->equipment_id, "");
    }
}

static void test_observed_time_fallbacks(void **state)
{
    (void)state;
    /* OBX-14, else the preceding OBR-7, else MSH-7 */
    assert_int_equal(
        extract(MSH "OBX|1|NM|1^A^MDC||1|||||||||20261115082000+0100\r" OBX_SPO2(
            "97") "OBR|1||||||20261115081000+0100\r" OBX_SPO2("98") "OBR|2\r" OBX_SPO2("99")),
        CMS_OK);
    assert_int_equal(out.vitals.nobs, 4);
    assert_string_equal(out.vitals.obs[0].observed_at, "2026-11-15 08:20:00.000000+01:00");
    assert_string_equal(out.vitals.obs[1].observed_at, "2026-11-15 08:30:00.000000+01:00");
    assert_string_equal(out.vitals.obs[2].observed_at, "2026-11-15 08:10:00.000000+01:00");
    assert_string_equal(out.vitals.obs[3].observed_at, "2026-11-15 08:30:00.000000+01:00");
    assert_string_equal(out.obr_time, "2026-11-15 08:10:00.000000+01:00");

    /* no time anywhere: "" (the caller uses the receive time) */
    assert_int_equal(extract("MSH|^~\\&|M|F|||||ORU^R01|C|P|2.6\r" OBX_SPO2("97")), CMS_OK);
    assert_string_equal(out.vitals.msg_time, "");
    assert_string_equal(out.vitals.obs[0].observed_at, "");

    /* v2.4-style TS with a degree of precision component */
    assert_int_equal(extract(MSH "OBX|1|NM|1^A^MDC||1|||||||||20261115082000^S\r"), CMS_OK);
    assert_string_equal(out.vitals.obs[0].observed_at, "2026-11-15 08:20:00.000000");
}

static void test_custom_delimiters_and_escapes(void **state)
{
    (void)state;
    assert_int_equal(
        extract("MSH!@#$%!MON-9@X$F$Y@L!Ward!!!20261115083000!!ORU@R01!C$S$1!P!2.5.1\r"
                "PID!!!P1@@@AUTH%1.2@MR\r"
                "PV1!!I!ICU@$T$@B1@@@\r"
                "OBX!1!NM!150456@SpO2 $F$ pleth@MDC!1.22.1.1! +97.5 !262688@@MDC!!!!!R!!!!!!!"
                "#0012345678ABCDEF@EUI-64#FFFF\r"),
        CMS_OK);
    assert_string_equal(out.vitals.control_id, "C@1"); /* \S\ is the message's component char */
    assert_string_equal(out.sending_app[0], "MON-9");
    assert_string_equal(out.sending_app[1], "X!Y");
    assert_string_equal(out.version, "2.5.1");
    assert_string_equal(out.vitals.patient_id, "P1");
    assert_string_equal(out.vitals.patient_authority, "AUTH");
    assert_string_equal(out.vitals.location, "ICU^%^B1");
    assert_int_equal(out.vitals.nobs, 1);
    assert_string_equal(out.vitals.obs[0].label, "SpO2 ! pleth");
    assert_string_equal(out.vitals.obs[0].value_text, "+97.5"); /* as sent, trimmed */
    assert_float_equal(out.vitals.obs[0].value, 97.5, 1e-9);
    assert_string_equal(out.vitals.obs[0].unit_code, "262688");
    assert_string_equal(out.vitals.obs[0].unit_label, "");
    assert_string_equal(out.vitals.obs[0].equipment_id, "0012345678ABCDEF");
}

static void test_skipped_rows(void **state)
{
    (void)state;
    assert_int_equal(extract(MSH "OBX|1||69965^MDC_DEV_MON^MDC|1.0.0.0|||||||X\r"
                                 "OBX|2|ST|1^A^MDC||hello\r"
                                 "OBX|3|NA|1^WAVE^MDC||1^2^3\r"
                                 "OBX|4|NM|150456^SAT^MDC|||262688^P^MDC|||||X\r" OBX_SPO2("-0.5")),
                     CMS_OK);
    assert_int_equal(out.vitals.nobs, 1);
    /* the MDS row, the NA waveform (no pcd01_waves asked for) and the NM
     * row without a value; the ST row is a text observation */
    assert_int_equal(out.skipped_obx, 3);
    assert_int_equal(out.ntexts, 1);
    assert_string_equal(out.texts[0].text, "hello");
    assert_float_equal(out.vitals.obs[0].value, -0.5, 1e-12);
    assert_string_equal(out.vitals.patient_id, "");
}

static void test_wrong_message_type(void **state)
{
    (void)state;
    assert_int_equal(extract("MSH|^~\\&|M|F|||20261115||ADT^A01|C-9|P|2.6\r"), CMS_EINVAL);
    assert_string_equal(code, "200");
    assert_true(strlen(reason) > 0);
    /* the header is still there for the AR */
    assert_string_equal(out.vitals.control_id, "C-9");
    assert_string_equal(out.msg_type, "ADT");
    assert_int_equal(extract("MSH|^~\\&|M|F|||20261115||ORU^R40|C-9|P|2.6\r"), CMS_EINVAL);
    assert_string_equal(code, "200");
    assert_int_equal(extract("MSH|^~\\&|M|F|||20261115||ORU|C-9|P|2.6\r"), CMS_EINVAL);
    assert_string_equal(code, "200");
}

static void test_bad_version(void **state)
{
    const char *bad[] = {"3.0", "", "2", "2.", "26", "2.x"};
    char msg[128];

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(msg, sizeof(msg), "MSH|^~\\&|M|F|||20261115||ORU^R01|C|P|%s\r", bad[i]);
        assert_int_equal(extract(msg), CMS_EINVAL);
        assert_string_equal(code, "203");
    }
    assert_int_equal(extract("MSH|^~\\&|M|F|||20261115||ORU^R01|C|P|2.8.2\r"), CMS_OK);
}

static void test_missing_control_id(void **state)
{
    (void)state;
    assert_int_equal(extract("MSH|^~\\&|M|F|||20261115||ORU^R01||P|2.6\r" OBX_SPO2("97")),
                     CMS_EPROTO);
    assert_string_equal(code, "101");
    assert_non_null(strstr(reason, "MSH-10"));
    /* also when MSH stops early */
    assert_int_equal(extract("MSH|^~\\&|M\r"), CMS_EPROTO);
    assert_string_equal(code, "101");
}

static void test_bad_numbers(void **state)
{
    const char *bad[] = {"abc", "1e5", "inf", "NaN", "0x10",  "1.2.3", "--1",
                         "+",   ".",   "1,5", "7 2", "72~73", "1e999"};
    char msg[512];

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(msg, sizeof(msg), MSH OBX_SPO2("%s"), bad[i]);
        if (extract(msg) != CMS_EPROTO)
            fail_msg("value \"%s\" was accepted", bad[i]);
        assert_string_equal(code, "102");
        assert_null(strstr(reason, bad[i])); /* reasons do not quote patient data */
    }
    const char *good[] = {"0", "-1", "+2", ".5", "5.", "0012.50"};
    const double val[] = {0, -1, 2, 0.5, 5, 12.5};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        snprintf(msg, sizeof(msg), MSH OBX_SPO2("%s"), good[i]);
        assert_int_equal(extract(msg), CMS_OK);
        assert_string_equal(out.vitals.obs[0].value_text, good[i]);
        assert_float_equal(out.vitals.obs[0].value, val[i], 1e-12);
    }
}

static void test_bad_times(void **state)
{
    (void)state;
    assert_int_equal(extract(MSH "OBX|1|NM|1^A^MDC||1|||||||||20261315\r"), CMS_EPROTO);
    assert_string_equal(code, "102");
    assert_non_null(strstr(reason, "OBX-14"));
    assert_int_equal(extract("MSH|^~\\&|M|F|||2026111508300||ORU^R01|C|P|2.6\r"), CMS_EPROTO);
    assert_string_equal(code, "102");
    assert_non_null(strstr(reason, "MSH-7"));
    assert_int_equal(extract(MSH "OBR|1||||||20260230\r"), CMS_EPROTO);
    assert_string_equal(code, "102");
}

static void test_other_errors(void **state)
{
    char big[201];

    (void)state;
    /* NM observation without an identifier */
    assert_int_equal(extract(MSH "OBX|1|NM|||72\r"), CMS_EPROTO);
    assert_string_equal(code, "101");
    /* bad set id */
    assert_int_equal(extract(MSH "OBX|x|NM|1^A||72\r"), CMS_EPROTO);
    assert_string_equal(code, "102");
    /* malformed escape */
    assert_int_equal(extract(MSH "OBX|1|NM|1^A\\X4\\||72\r"), CMS_EPROTO);
    assert_string_equal(code, "102");
    /* a field longer than its slot is an error, not a truncation */
    memset(big, 'A', 200);
    big[200] = '\0';
    char msg[1024];

    snprintf(msg, sizeof(msg), MSH "PID|||%s\r", big);
    assert_int_equal(extract(msg), CMS_ELIMIT);
    assert_string_equal(out.vitals.patient_id, "");
    snprintf(msg, sizeof(msg), "MSH|^~\\&|M|F|||||ORU^R01|%s%s|P|2.6\r", big, big);
    assert_int_equal(extract(msg), CMS_ELIMIT);
    assert_int_equal(pcd01_read_header(&m, &out), CMS_EPROTO);
    assert_string_equal(out.vitals.control_id, "");
    assert_string_equal(out.msg_type, "ORU"); /* the rest is still read */
}

static void test_too_many_observations(void **state)
{
    size_t per = strlen(OBX_SPO2("97")), n = strlen(MSH) + per * (PCD01_MAX_OBS + 1);
    char *msg = malloc(n + 1), *p = msg;

    (void)state;
    memcpy(p, MSH, strlen(MSH));
    p += strlen(MSH);
    for (size_t i = 0; i < PCD01_MAX_OBS; i++, p += per)
        memcpy(p, OBX_SPO2("97"), per);
    assert_int_equal(extract_n(msg, (size_t)(p - msg)), CMS_OK);
    assert_int_equal(out.vitals.nobs, PCD01_MAX_OBS);
    memcpy(p, OBX_SPO2("97"), per);
    p += per;
    assert_int_equal(extract_n(msg, (size_t)(p - msg)), CMS_ELIMIT);
    free(msg);
}

static void test_read_header_for_ar(void **state)
{
    (void)state;
    assert_int_equal(
        hl7_parse(&m, "MSH|^~\\&|APP^X|FAC||||||CTL|P|3.1\r", 33, reason, sizeof(reason)), CMS_OK);
    assert_int_equal(pcd01_read_header(&m, &out), CMS_OK);
    assert_string_equal(out.vitals.control_id, "CTL");
    assert_string_equal(out.sending_app[0], "APP");
    assert_string_equal(out.sending_app[1], "X");
    assert_string_equal(out.sending_facility, "FAC");
    assert_string_equal(out.msg_type, "");
    assert_string_equal(out.version, "3.1");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_sample_fully_extracted, teardown),
        cmocka_unit_test_teardown(test_observed_time_fallbacks, teardown),
        cmocka_unit_test_teardown(test_custom_delimiters_and_escapes, teardown),
        cmocka_unit_test_teardown(test_skipped_rows, teardown),
        cmocka_unit_test_teardown(test_wrong_message_type, teardown),
        cmocka_unit_test_teardown(test_bad_version, teardown),
        cmocka_unit_test_teardown(test_missing_control_id, teardown),
        cmocka_unit_test_teardown(test_bad_numbers, teardown),
        cmocka_unit_test_teardown(test_bad_times, teardown),
        cmocka_unit_test_teardown(test_other_errors, teardown),
        cmocka_unit_test_teardown(test_too_many_observations, teardown),
        cmocka_unit_test_teardown(test_read_header_for_ar, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
