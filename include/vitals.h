/*
 * vitals.h - one message of vital-sign observations from one device, as the
 * store records it (cms.messages, cms.observations; read through the
 * cms.vitals view). A plain record with no behaviour: the protocol side
 * (pcd01.h) fills it from an HL7 ORU^R01, the store (store_ingest) consumes
 * it, and neither needs the other's header.
 *
 * All text is NUL-terminated, already unescaped, and fits its buffer; ""
 * means absent. Times are hl7_time_format output ("2026-11-15
 * 07:30:00.310+01:00", or without an offset: the store's session time zone
 * applies).
 *
 * Thread: a record belongs to whoever holds it; nothing here is shared.
 */
#ifndef CMS_VITALS_H
#define CMS_VITALS_H

#include <stddef.h>

#define VITALS_MAX_OBS 128
#define VITALS_ID_LEN 64    /* identifiers: device ids, codes */
#define VITALS_TEXT_LEN 128 /* labels, locations */
#define VITALS_TIME_LEN 40  /* hl7_time_format output */

/* One numeric observation. */
typedef struct vitals_obs {
    unsigned set_id;                   /* the sender's row number in the message */
    char code[VITALS_ID_LEN];          /* e.g. MDC "150456" */
    char label[VITALS_TEXT_LEN];       /* e.g. "MDC_PULS_OXIM_SAT_O2" */
    char coding_system[VITALS_ID_LEN]; /* e.g. "MDC" */
    char sub_id[VITALS_ID_LEN];        /* e.g. "1.22.1.1" */
    double value;                      /* value_text as a number (finite) */
    char value_text[VITALS_ID_LEN];    /* the value as sent (exact decimal text) */
    char unit_code[VITALS_ID_LEN];     /* e.g. "262688" (may be "") */
    char unit_label[VITALS_TEXT_LEN];  /* e.g. "MDC_DIM_PERCENT" */
    char status[8];                    /* e.g. "R", "F" */
    char observed_at[VITALS_TIME_LEN]; /* "" = the store uses the receive time */
    char equipment_id[VITALS_ID_LEN];  /* the equipment instance that measured, or "" */
} vitals_obs;

/*
 * One message. (device, control_id) is the store's exactly-once key: a
 * message stored again with the same pair writes nothing new.
 */
typedef struct vitals_msg {
    char control_id[VITALS_ID_LEN + 136];  /* the sender's message id (up to 199 chars) */
    char msg_time[VITALS_TIME_LEN];        /* when the sender built it, "" if unknown */
    char patient_id[VITALS_ID_LEN];        /* "" if none */
    char patient_authority[VITALS_ID_LEN]; /* who assigned patient_id */
    char location[VITALS_TEXT_LEN];        /* e.g. "CCU^^BED-07" */
    size_t nobs;                           /* obs[0..nobs) are set */
    vitals_obs obs[VITALS_MAX_OBS];        /* last: a reader may clear only what precedes it */
} vitals_msg;

#endif
