/* sample_wave.h - PCD-01 waveform messages as a multi-parameter monitor sends them (IHE PCD
 * Waveform Content Module in an ORU^R01, v2.6), built at run time because the sample values
 * are many: one second of ECG lead II at 500 Hz (integer counts of 2.5 uV, the resolution
 * facet) and one second of SpO2 pleth at 125 Hz (sample period 8 ms instead of a rate),
 * plus an ordinary SpO2 numeric after them. Samples are a synthetic PQRST complex at 72 bpm
 * and a pleth pulse: shaped like the real thing, not recorded from anyone.
 *
 * wave_message(buf, cap, ecg_hz, ecg_n, pleth_n) writes the message (CR after every segment)
 * and returns its length; the sample values are ecg_count(i) and pleth_count(i).
 */
#ifndef CMS_TEST_SAMPLE_WAVE_H
#define CMS_TEST_SAMPLE_WAVE_H

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ECG lead II in counts of 2.5 uV at 500 Hz: P, QRS, T of a beat every 0.833 s. */
static int ecg_count(size_t i)
{
    double t = fmod((double)i / 500.0, 60.0 / 72.0);
    double v = 0;
    v += 60 * exp(-pow((t - 0.16) / 0.025, 2));  /* P */
    v -= 40 * exp(-pow((t - 0.245) / 0.008, 2)); /* Q */
    v += 480 * exp(-pow((t - 0.26) / 0.010, 2)); /* R */
    v -= 90 * exp(-pow((t - 0.275) / 0.009, 2)); /* S */
    v += 120 * exp(-pow((t - 0.50) / 0.050, 2)); /* T */
    return (int)lround(v);
}

/* Pleth, dimensionless 0..4095 at 125 Hz. */
static int pleth_count(size_t i)
{
    double t = fmod((double)i / 125.0, 60.0 / 72.0) / (60.0 / 72.0);
    double v = 1200 + 1800 * exp(-pow((t - 0.25) / 0.12, 2)) + 500 * exp(-pow((t - 0.55) / 0.1, 2));
    return (int)lround(v);
}

static size_t wave_message(char *buf, size_t cap, unsigned ecg_hz, size_t ecg_n, size_t pleth_n)
{
    size_t o = 0;
    int n;

#define PUT(...)                                                                                   \
    do {                                                                                           \
        n = snprintf(buf + o, o < cap ? cap - o : 0, __VA_ARGS__);                                 \
        o += (size_t)n;                                                                            \
    } while (0)
    PUT("MSH|^~\\&|MON-0002^0012A1FFFE000002^EUI-64|Example Monitors|CMS|GENERAL "
        "HOSPITAL|20261115083001.000+0100||ORU^R01^ORU_R01|MON-0002-W-000001|P|2.6|||NE|AL||"
        "UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\r");
    PUT("PID|||MRN-448812^^^GENERAL HOSPITAL^MR||ROE^RICHARD^^^^^L||19580211|M\r");
    PUT("PV1||I|CCU^^BED-07\r");
    PUT("OBR|1|MON-0002-W-000001^MON-0002|MON-0002-W-000001^MON-0002|69121^MDC_OBS_WAVE_CTS^MDC|||"
        "20261115083000.000+0100|20261115083001.000+0100\r");
    PUT("OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X\r");
    PUT("OBX|2||69798^MDC_DEV_ECG_VMD^MDC|1.5.0.0|||||||X\r");
    PUT("OBX|3|NA|131330^MDC_ECG_ELEC_POTL_II^MDC|1.5.1.131330|");
    for (size_t i = 0; i < ecg_n; i++)
        PUT("%s%d", i ? "^" : "", ecg_count(i));
    PUT("|266418^MDC_DIM_MICRO_VOLT^MDC|||||F|||20261115083000.000+0100||||"
        "0012A1FFFE000002^^0012A1FFFE000002^EUI-64\r");
    PUT("OBX|4|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.5.1.131330.1|%u|264608^MDC_DIM_PER_SEC^MDC|||||F\r",
        ecg_hz);
    PUT("OBX|5|NM|2327^MDC_ATTR_NU_MSMT_RES^MDC|1.5.1.131330.2|2.5|266418^MDC_DIM_MICRO_VOLT^MDC"
        "|||||F\r");
    PUT("OBX|6|NR|0^MDC_ATTR_DATA_RANGE^MDC|1.5.1.131330.3|-4096^4095|||||F\r");
    PUT("OBX|7||69642^MDC_DEV_ANALY_SAT_O2_VMD^MDC|1.22.0.0|||||||X\r");
    PUT("OBX|8|NA|150452^MDC_PULS_OXIM_PLETH^MDC|1.22.1.150452|");
    for (size_t i = 0; i < pleth_n; i++)
        PUT("%s%d", i ? "^" : "", pleth_count(i));
    PUT("|262656^MDC_DIM_DIMLESS^MDC|||||F|||20261115083000.000+0100\r");
    PUT("OBX|9|NM|2445^MDC_ATTR_TIME_PD_SAMP^MDC|1.22.1.150452.1|8|264338^MDC_DIM_MILLI_SEC^MDC|||"
        "||F\r");
    PUT("OBX|10|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.1|96|262688^MDC_DIM_PERCENT^MDC|||||R|||"
        "20261115083000+0100\r");
#undef PUT
    return o;
}

#endif
