/* test_pcd01_wave.c - PCD-01 waveform content (NA/MA rows and their facets) and text
 * observations (ST/CWE/CE). */
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

#include "sample_wave.h"

#define MSH                                                                                        \
    "MSH|^~\\&|MON-0001|Ward|||20261115083000+0100||ORU^R01^ORU_R01|C-1|P|2.6\r"                   \
    "OBR|1||C-1|||||20261115083000+0100\r"
#define RATE(sub, hz)                                                                              \
    "OBX|9|NM|0^MDC_ATTR_SAMP_RATE^MDC|" sub "|" hz "|264608^MDC_DIM_PER_SEC^MDC\r"

static hl7_msg m;
static pcd01_msg out;
static pcd01_waves w;
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
    return pcd01_extract_full(&m, &out, &w, &v);
}

static int extract(const char *s)
{
    return extract_n(s, strlen(s));
}

static int setup(void **state)
{
    (void)state;
    pcd01_waves_init(&w, 4096);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    free(buf);
    buf = NULL;
    pcd01_waves_free(&w);
    return 0;
}

static void test_vendor_ecg_and_pleth(void **state)
{
    char *msg = malloc(64 * 1024);
    size_t n;

    (void)state;
    assert_non_null(msg);
    n = wave_message(msg, 64 * 1024, 500, 500, 125);
    assert_true(n < 64 * 1024);
    assert_int_equal(extract_n(msg, n), CMS_OK);
    assert_int_equal(v.ack, HL7_AA);

    /* the SpO2 numeric after the waveforms is a vital; no facet row is */
    assert_int_equal(out.vitals.nobs, 1);
    assert_string_equal(out.vitals.obs[0].code, "150456");
    assert_int_equal(out.skipped_obx, 3); /* MDS, VMD, VMD rows */

    assert_int_equal(w.nwaves, 2);
    const pcd01_wave *ecg = &w.waves[0], *pl = &w.waves[1];
    assert_string_equal(ecg->code, "131330");
    assert_string_equal(ecg->label, "MDC_ECG_ELEC_POTL_II");
    assert_string_equal(ecg->sub_id, "1.5.1.131330");
    assert_string_equal(ecg->unit_code, "266418");
    assert_string_equal(ecg->unit_label, "MDC_DIM_MICRO_VOLT");
    assert_string_equal(ecg->start_at, "2026-11-15 08:30:00.000000+01:00");
    assert_string_equal(ecg->equipment_id, "0012A1FFFE000002");
    assert_int_equal(ecg->set_id, 3);
    assert_int_equal(ecg->obx_index, 3);
    assert_int_equal(ecg->channel, 0);
    assert_float_equal(ecg->rate_hz, 500.0, 1e-12);
    assert_float_equal(ecg->resolution, 2.5, 1e-12);
    assert_int_equal(ecg->scale_exp, 0);
    assert_int_equal(ecg->nsamples, 500);
    for (size_t i = 0; i < 500; i++)
        assert_float_equal(w.samples[ecg->first + i], (double)ecg_count(i), 0);

    /* 8 ms period = 125 Hz; no resolution facet: 1 */
    assert_string_equal(pl->label, "MDC_PULS_OXIM_PLETH");
    assert_float_equal(pl->rate_hz, 125.0, 1e-9);
    assert_float_equal(pl->resolution, 1.0, 0);
    assert_int_equal(pl->nsamples, 125);
    assert_int_equal(pl->obx_index, 8);
    for (size_t i = 0; i < 125; i++)
        assert_float_equal(w.samples[pl->first + i], (double)pleth_count(i), 0);

    /* the data range facet is kept as sent, with its waveform */
    assert_int_equal(w.nfacets, 1);
    assert_int_equal(w.facets[0].owner, 0);
    assert_string_equal(w.facets[0].label, "MDC_ATTR_DATA_RANGE");
    assert_string_equal(w.facets[0].value, "-4096^4095");
    assert_string_equal(w.facets[0].value_type, "NR");

    /* without a pcd01_waves: the same vitals, the waveform rows skipped */
    assert_int_equal(pcd01_extract(&m, &out, NULL, NULL, 0), CMS_OK);
    assert_int_equal(out.vitals.nobs, 1);
    assert_int_equal(out.skipped_obx, 3 + 2 + 4);
    free(msg);
}

static void test_decimal_and_scaled_samples(void **state)
{
    (void)state;
    assert_int_equal(
        extract(MSH "OBX|1|NA|131329^MDC_ECG_ELEC_POTL_I^MDC|1.1.1.1001|0.5^-1.25^"
                    "3^ 0.125 |266418^MDC_DIM_MILLI_VOLT^MDC\r" RATE("1.1.1.1001.1", "256.0")),
        CMS_OK);
    assert_int_equal(w.nwaves, 1);
    assert_int_equal(w.waves[0].scale_exp, 3);
    assert_float_equal(w.samples[1], -1.25, 0);
    assert_float_equal(w.samples[3], 0.125, 0);
    assert_float_equal(w.waves[0].rate_hz, 256.0, 0);
    /* no OBX-14: the OBR's time */
    assert_string_equal(w.waves[0].start_at, "2026-11-15 08:30:00.000000+01:00");

    /* floating noise of a simulator: too many digits for 32-bit integers */
    assert_int_equal(extract(MSH "OBX|1|NA|131329^MDC_ECG_LEAD_I^MDC|1.1.1.1001|0.0^"
                                 "0.029039286658642516|266418^MDC_DIM_MILLI_VOLT^MDC\r" RATE(
                                     "1.1.1.1001.1", "150")),
                     CMS_OK);
    assert_int_equal(w.waves[0].scale_exp, -1);
    assert_float_equal(w.samples[1], 0.029039286658642516, 1e-18);
    assert_int_equal(extract(MSH "OBX|1|NA|1^W^MDC|1.1.1.1|3000000000^1\r" RATE("1.1.1.1.1", "1")),
                     CMS_OK);
    assert_int_equal(w.waves[0].scale_exp, -1);
}

static void test_ma_channels(void **state)
{
    (void)state;
    /* three instants of two channels */
    assert_int_equal(extract(MSH "OBX|1|MA|131328^MDC_ECG_ELEC_POTL^MDC|1.5.1.1|1^10~2^20~3^30|"
                                 "266418^MDC_DIM_MICRO_VOLT^MDC\r" RATE(
                                     "1.5.1.1.1", "500") "OBX|10|NM|2327^^MDC|1.5.1.1.2|5\r"),
                     CMS_OK);
    assert_int_equal(w.nwaves, 2);
    assert_int_equal(w.waves[0].channel, 1);
    assert_int_equal(w.waves[1].channel, 2);
    assert_int_equal(w.waves[0].nsamples, 3);
    assert_int_equal(w.waves[1].nsamples, 3);
    assert_float_equal(w.samples[w.waves[0].first + 2], 3, 0);
    assert_float_equal(w.samples[w.waves[1].first + 0], 10, 0);
    assert_float_equal(w.samples[w.waves[1].first + 2], 30, 0);
    /* the facets apply to every channel; the resolution by its bare term code */
    assert_float_equal(w.waves[1].rate_hz, 500, 0);
    assert_float_equal(w.waves[1].resolution, 5, 0);

    assert_int_equal(extract(MSH "OBX|1|MA|1^W^MDC|1.5.1.1|1^10~2|\r" RATE("1.5.1.1.1", "500")),
                     CMS_EPROTO);
    assert_int_equal(v.ack, HL7_AE);
    assert_int_equal(extract(MSH "OBX|1|MA|1^W^MDC|1.5.1.1|1^10~2^20^7|\r" RATE("1.5.1.1.1", "5")),
                     CMS_EPROTO);
    assert_int_equal(v.ack, HL7_AE);
}

static void test_content_errors_are_ae_with_the_obx(void **state)
{
    (void)state;
    /* no sample rate: AE naming the OBX by position and set id */
    assert_int_equal(extract(MSH "OBX|1|NM|150456^SAT^MDC|1.22.1.1|96\r"
                                 "OBX|7|NA|131330^MDC_ECG_ELEC_POTL_II^MDC|1.5.1.131330|1^2^3\r"),
                     CMS_EPROTO);
    assert_int_equal(v.ack, HL7_AE);
    assert_string_equal(v.err_code, "101");
    assert_non_null(strstr(v.reason, "OBX #2 (OBX-1 7)"));
    assert_non_null(strstr(v.reason, "sample rate"));
    /* a sample that is not a number; the reason does not quote it */
    assert_int_equal(extract(MSH "OBX|3|NA|1^W^MDC|1.5.1.1|1^2^x9^4\r" RATE("1.5.1.1.1", "500")),
                     CMS_EPROTO);
    assert_int_equal(v.ack, HL7_AE);
    assert_string_equal(v.err_code, "102");
    assert_non_null(strstr(v.reason, "OBX #1 (OBX-1 3)"));
    assert_non_null(strstr(v.reason, "sample 3"));
    assert_null(strstr(v.reason, "x9"));
    const char *bad[] = {"1^^3", "1^2^", "1e3", "nan", "0x10", "1.2.3", "--1", "1~2"};
    char msg[512];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(msg, sizeof(msg), MSH "OBX|1|NA|1^W^MDC|1.5.1.1|%s\r" RATE("1.5.1.1.1", "500"),
                 bad[i]);
        if (extract(msg) != CMS_EPROTO || v.ack != HL7_AE)
            fail_msg("samples \"%s\" were accepted", bad[i]);
    }
    /* a rate that is no positive number */
    assert_int_equal(extract(MSH "OBX|1|NA|1^W^MDC|1.5.1.1|1^2\r" RATE("1.5.1.1.1", "0")),
                     CMS_EPROTO);
    assert_int_equal(v.ack, HL7_AE);
    assert_int_equal(extract(MSH "OBX|1|NA|1^W^MDC|1.5.1.1|1^2\r" RATE("1.5.1.1.1", "fast")),
                     CMS_EPROTO);
    assert_int_equal(v.ack, HL7_AE);
}

static void test_oversized_block_is_ar(void **state)
{
    char *msg = malloc(32 * 1024);
    size_t n;

    (void)state;
    assert_non_null(msg);
    pcd01_waves_free(&w);
    pcd01_waves_init(&w, 499);
    n = wave_message(msg, 32 * 1024, 500, 500, 125);
    assert_int_equal(extract_n(msg, n), CMS_ELIMIT);
    assert_int_equal(v.ack, HL7_AR);
    assert_non_null(strstr(v.reason, "OBX #3 (OBX-1 3)"));
    assert_non_null(strstr(v.reason, "500 samples"));
    pcd01_waves_free(&w);
    pcd01_waves_init(&w, 500);
    assert_int_equal(extract_n(msg, n), CMS_OK);
    free(msg);
}

static void test_unknown_facets_kept(void **state)
{
    (void)state;
    assert_int_equal(
        extract(MSH "OBX|1|NA|1^W^MDC|1.5.1.1|1^2\r" RATE(
            "1.5.1.1.1", "500") "OBX|3|ST|0^MDCX_FILTER_MODE^MDC|1.5.1.1.7|monitoring\r"
                                "OBX|4|NM|2464^MDC_ATTR_NOT_A_RATE^MDC|1.5.1.1.8|7\r"
                                "OBX|5|NM|150456^SAT^MDC|1.22.1.1|96\r"),
        CMS_OK);
    /* the vendor facet and the row named as something else (not read as a rate by
     * its number) are kept; the SpO2 row (not a facet) is a vital */
    assert_int_equal(w.nfacets, 2);
    assert_string_equal(w.facets[0].label, "MDCX_FILTER_MODE");
    assert_string_equal(w.facets[0].value, "monitoring");
    assert_string_equal(w.facets[1].code, "2464");
    assert_float_equal(w.waves[0].rate_hz, 500, 0);
    assert_int_equal(out.vitals.nobs, 1);
    assert_string_equal(out.vitals.obs[0].code, "150456");
    /* a bare numeric code is enough when no name is given */
    assert_int_equal(extract(MSH "OBX|1|NA|1^W^MDC|1.5.1.1|1^2\r"
                                 "OBX|2|NM|68000|1.5.1.1.1|250\r"),
                     CMS_OK);
    assert_float_equal(w.waves[0].rate_hz, 250, 0);
    /* an empty NA is no block, and its facets are not vitals */
    assert_int_equal(extract(MSH "OBX|1|NA|1^W^MDC|1.5.1.1||||||X\r" RATE("1.5.1.1.1", "500")),
                     CMS_OK);
    assert_int_equal(w.nwaves, 0);
    assert_int_equal(out.vitals.nobs, 0);
    assert_int_equal(out.skipped_obx, 1);
}

static void test_text_observations(void **state)
{
    (void)state;
    assert_int_equal(
        extract(MSH "OBX|1|ST|184326^MDC_ECG_STAT_RHY^MDC|1.5.1.2|Sinus \\T\\ rhythm||||||R|||"
                    "20261115082959+0100||||EQ-1\r"
                    "OBX|2|CWE|192512^MDC_ECG_LEAD^MDC|1.5.1.3|131330^MDC_ECG_LEAD_II^MDC||||||R\r"
                    "OBX|3|CE|68220^MDC_ATTR_MODE_OP^MDC|1.0.0.0.1|^demo mode||||||R\r"
                    "OBX|4|ST|1^Empty^MDC|1.0.0.1|||||||X\r"),
        CMS_OK);
    assert_int_equal(out.ntexts, 3);
    assert_int_equal(out.skipped_obx, 1);
    assert_string_equal(out.texts[0].value_type, "ST");
    assert_string_equal(out.texts[0].code, "184326");
    assert_string_equal(out.texts[0].text, "Sinus & rhythm");
    assert_string_equal(out.texts[0].value_code, "");
    assert_string_equal(out.texts[0].observed_at, "2026-11-15 08:29:59.000000+01:00");
    assert_string_equal(out.texts[0].equipment_id, "EQ-1");
    assert_string_equal(out.texts[1].value_type, "CWE");
    assert_string_equal(out.texts[1].value_code, "131330");
    assert_string_equal(out.texts[1].text, "MDC_ECG_LEAD_II");
    assert_string_equal(out.texts[1].value_system, "MDC");
    assert_string_equal(out.texts[1].observed_at, "2026-11-15 08:30:00.000000+01:00");
    assert_string_equal(out.texts[2].value_code, "");
    assert_string_equal(out.texts[2].text, "demo mode");
    /* coded without code or text; no identifier */
    assert_int_equal(extract(MSH "OBX|1|CWE|1^X^MDC||^^MDC\r"), CMS_EPROTO);
    assert_string_equal(v.err_code, "101");
    assert_int_equal(v.ack, HL7_AR);
    assert_int_equal(extract(MSH "OBX|1|ST|||hello\r"), CMS_EPROTO);
    assert_string_equal(v.err_code, "101");
}

static void test_long_text_is_cut_not_refused(void **state)
{
    char msg[4096], *p = msg;

    (void)state;
    /* 300 bytes of text: cut to the slot and flagged */
    p += sprintf(p, MSH "OBX|1|ST|1^NOTE^MDC|1.0.0.1|");
    for (int i = 0; i < 300; i++)
        *p++ = (char)('a' + i % 26);
    p += sprintf(p, "\r");
    assert_int_equal(extract_n(msg, (size_t)(p - msg)), CMS_OK);
    assert_int_equal(out.ntexts, 1);
    assert_int_equal(out.texts[0].truncated, 1);
    assert_int_equal(strlen(out.texts[0].text), PCD01_VALUE_LEN - 1);
    assert_int_equal(out.texts[0].text[0], 'a');
    /* a 2-byte UTF-8 character across the boundary is not split */
    p = msg;
    p += sprintf(p, MSH "OBX|1|ST|1^NOTE^MDC|1.0.0.1|");
    for (int i = 0; i < PCD01_VALUE_LEN - 2; i++)
        *p++ = 'x';
    p += sprintf(p, "\xc3\xa9\xc3\xa9\r");
    assert_int_equal(extract_n(msg, (size_t)(p - msg)), CMS_OK);
    assert_int_equal(out.texts[0].truncated, 1);
    assert_int_equal(strlen(out.texts[0].text), PCD01_VALUE_LEN - 2);
    /* one that fits exactly is not flagged */
    p = msg;
    p += sprintf(p, MSH "OBX|1|ST|1^NOTE^MDC|1.0.0.1|");
    for (int i = 0; i < PCD01_VALUE_LEN - 3; i++)
        *p++ = 'x';
    p += sprintf(p, "\xc3\xa9\r");
    assert_int_equal(extract_n(msg, (size_t)(p - msg)), CMS_OK);
    assert_int_equal(out.texts[0].truncated, 0);
    assert_int_equal(strlen(out.texts[0].text), PCD01_VALUE_LEN - 1);
    /* an identifier that does not fit is still refused */
    p = msg;
    p += sprintf(p, MSH "OBX|1|ST|");
    for (int i = 0; i < PCD01_ID_LEN; i++)
        *p++ = '7';
    p += sprintf(p, "^NOTE^MDC|1.0.0.1|text\r");
    assert_int_equal(extract_n(msg, (size_t)(p - msg)), CMS_ELIMIT);
    assert_int_equal(v.ack, HL7_AR);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_vendor_ecg_and_pleth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_decimal_and_scaled_samples, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ma_channels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_content_errors_are_ae_with_the_obx, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversized_block_is_ar, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_facets_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_observations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_text_is_cut_not_refused, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
