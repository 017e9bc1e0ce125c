/*
 * clinical.h - the rest of what one message from one device carries, beside
 * its numeric vitals (vitals.h), as the store records it: text and coded
 * observations, waveform blocks and alarms. Plain records with no
 * behaviour, like vitals.h: the protocol side (pcd01.h, pcd04.h) fills them
 * from HL7 (ORU^R01, ORU^R40), the store (store_ingest_full) consumes them,
 * and neither needs the other's header. docs/clinical-data.md says where
 * each field ends up.
 *
 * All text is NUL-terminated, already unescaped, and fits its buffer; ""
 * means absent. Times are hl7_time_format output ("" = the store uses the
 * message's receive time).
 *
 * Thread: a record belongs to whoever holds it; nothing here is shared.
 */
#ifndef CMS_CLINICAL_H
#define CMS_CLINICAL_H

#include <stddef.h>

#include "vitals.h"

#define CLINICAL_VALUE_LEN 256    /* free text: an ST value, a facet value, an alarm's text */
#define CLINICAL_ALARM_ID_LEN 200 /* an HL7 EI entity identifier: up to 199 characters */

/* A text (ST) or coded (CWE, CE) observation. */
typedef struct clinical_text {
    unsigned set_id;                   /* the sender's row number */
    char value_type[4];                /* "ST", "CWE" or "CE" */
    char code[VITALS_ID_LEN];          /* what was observed, e.g. MDC "184326" */
    char label[VITALS_TEXT_LEN];       /* e.g. "MDC_ECG_STAT_RHY" */
    char coding_system[VITALS_ID_LEN]; /* e.g. "MDC" */
    char sub_id[VITALS_ID_LEN];        /* e.g. "1.5.1.2" */
    char text[CLINICAL_VALUE_LEN];     /* ST: the text; CWE/CE: the coded value's text */
    int truncated;                     /* text was longer than its buffer: cut, UTF-8 safe */
    char value_code[VITALS_ID_LEN];    /* CWE/CE: the value's code ("" for ST) */
    char value_system[VITALS_ID_LEN];  /* CWE/CE: its coding system */
    char status[8];                    /* e.g. "R", "F" */
    char observed_at[VITALS_TIME_LEN]; /* "" = the message's receive time */
    char equipment_id[VITALS_ID_LEN];  /* the measuring equipment instance, or "" */
} clinical_text;

/*
 * A row kept as sent because no field holds it (a vendor's attribute of a
 * waveform or an alarm, a value outside the known sets): stored, not lost.
 */
typedef struct clinical_facet {
    unsigned owner; /* index of the wave (or alarm) it describes */
    unsigned set_id;
    char value_type[4];
    char code[VITALS_ID_LEN];
    char label[VITALS_TEXT_LEN];
    char sub_id[VITALS_ID_LEN];
    char value[CLINICAL_VALUE_LEN]; /* components joined with '^' */
    int truncated;                  /* value was cut to fit */
    char unit_code[VITALS_ID_LEN];
    char unit_label[VITALS_TEXT_LEN];
} clinical_facet;

/*
 * One waveform block: nsamples samples at rate_hz from start_at; sample i
 * is samples[first + i] of the content's sample array, its physical value
 * that times resolution, in the block's unit.
 */
typedef struct clinical_wave {
    unsigned set_id;             /* the sender's row number of its NA/MA row */
    unsigned obx_index;          /* that row's position among the message's OBX rows */
    unsigned channel;            /* 1..n for a multiplexed (MA) row, else 0 */
    char code[VITALS_ID_LEN];    /* e.g. MDC "131330" */
    char label[VITALS_TEXT_LEN]; /* e.g. "MDC_ECG_ELEC_POTL_II" */
    char coding_system[VITALS_ID_LEN];
    char sub_id[VITALS_ID_LEN];
    char unit_code[VITALS_ID_LEN];
    char unit_label[VITALS_TEXT_LEN];
    char status[8];
    char start_at[VITALS_TIME_LEN]; /* time of the first sample */
    char equipment_id[VITALS_ID_LEN];
    double rate_hz;    /* samples per second, > 0 */
    double resolution; /* > 0; 1 when the sender gave none */
    int scale_exp;     /* 0..9: every sample * 10^scale_exp is an int32;
                          -1: not (kept as doubles) */
    size_t first, nsamples;
} clinical_wave;

/* One alarm event (see pcd04.h for where each field comes from). */
typedef struct clinical_alarm {
    char alarm_id[CLINICAL_ALARM_ID_LEN];  /* the same for every event of one alarm */
    char alarm_ns[VITALS_ID_LEN];          /* who assigned it: namespace id ... */
    char alarm_uid[VITALS_ID_LEN];         /* ... universal id (e.g. an EUI-64) ... */
    char alarm_uid_type[16];               /* ... and its type */
    char parent_id[CLINICAL_ALARM_ID_LEN]; /* the alarm it follows from, or "" */
    char event_code[VITALS_ID_LEN];        /* alarm type, e.g. "196674" */
    char event_label[VITALS_TEXT_LEN];     /* e.g. "MDC_EVT_DESAT" */
    char event_system[VITALS_ID_LEN];
    char alarm_text[CLINICAL_VALUE_LEN]; /* what the device shows, or "" */
    int text_truncated;                  /* alarm_text was cut to fit */
    char source_code[VITALS_ID_LEN];     /* the measurement that alarmed */
    char source_label[VITALS_TEXT_LEN];
    char source_sub_id[VITALS_ID_LEN];
    char value_text[VITALS_ID_LEN]; /* its current value as sent, "" if none */
    double value;                   /* valid when value_text[0] */
    char unit_code[VITALS_ID_LEN];
    char unit_label[VITALS_TEXT_LEN];
    char limits[VITALS_ID_LEN];     /* e.g. "90-100" */
    char phase[16];                 /* start start-only continue update escalate
                                       de-escalate inactivate reset end */
    char state[16];                 /* off inactive active latched, or "" */
    char inactivation[24];          /* enabled audio-paused audio-off alarm-paused
                                       alarm-off alert-acknowledged, or "" */
    char priority[4];               /* PH PM PL PN (PN: heartbeat), or "" */
    char kind[16];                  /* physiological technical advisory, or "" */
    char event_at[VITALS_TIME_LEN]; /* "" = the message's receive time */
    size_t first_facet, nfacets;    /* its kept rows in the content's alarm_facets */
} clinical_alarm;

/*
 * Everything of one message beyond vitals_msg, as borrowed arrays (any
 * count may be 0, the pointer then unused).
 */
typedef struct clinical_content {
    const clinical_text *texts;
    size_t ntexts;
    const clinical_wave *waves;
    size_t nwaves;
    const double *samples;             /* the waves' samples */
    const clinical_facet *wave_facets; /* owner = index in waves */
    size_t nwave_facets;
    const clinical_alarm *alarms;
    size_t nalarms;
    const clinical_facet *alarm_facets; /* owner = index in alarms */
    size_t nalarm_facets;
} clinical_content;

#endif
