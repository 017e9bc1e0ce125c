/*
 * pcd01.h - IHE PCD-01 (HL7 v2.6 ORU^R01) content extraction.
 *
 * Turns a parsed hl7_msg into a flat, self-contained pcd01_msg (all text is
 * unescaped and copied, so the frame buffer may be released). Validation that
 * is about the message alone happens here; identity (is this device allowed
 * to say this?) is the ingest service's job.
 *
 * Mapping:
 *   MSH-3 (all components, e.g. "MON-0002^MON-0002^L" or "X^0012..^EUI-64")
 *         -> sending_app[] (component 1..3 unescaped)
 *   MSH-4 -> sending_facility, MSH-7 -> msg_time, MSH-9 -> msg_type/trigger,
 *   MSH-10 -> control_id (required), MSH-12 -> version (2.x required),
 *   PID-3 first repetition: component 1 -> patient_id, 4.1 -> patient_authority,
 *   PV1-3 -> location ("CCU^^BED-07" becomes "CCU^^BED-07"-style joined text:
 *           components joined with '^', trailing empties trimmed),
 *   OBR-7 -> obr_time,
 *   OBX with value type NM -> one observation each:
 *     OBX-1 set id, OBX-3.1 code, OBX-3.2 label, OBX-3.3 coding system,
 *     OBX-4 sub id, OBX-5 value (must parse as a finite decimal number),
 *     OBX-6.1/6.2/6.3 unit code/label/system, OBX-11 status,
 *     OBX-14 observed time (falls back to OBR-7, then MSH-7),
 *     OBX-18 equipment instance identifier (all repetitions, component 1,
 *            e.g. an EUI-64) -> obs.equipment_id.
 *   OBX with empty value type (MDS/VMD/channel rows) and other value types
 *   (ST, CWE, NA waveforms, ...) are counted in skipped_obx and not stored,
 *   and so are NM rows whose OBX-5 is empty (e.g. status X: no value).
 *   OBX-18: component 1 of the first repetition that has one. Text fields
 *   are trimmed of surrounding blanks. The fallback time for OBX-14 is the
 *   OBR-7 of the OBR the OBX follows.
 *
 * Thread: any.
 */
#ifndef CMS_PCD01_H
#define CMS_PCD01_H

#include <stddef.h>
#include "hl7.h"

#define PCD01_MAX_OBS 128
#define PCD01_ID_LEN 64      /* identifiers: control id, device ids, codes */
#define PCD01_TEXT_LEN 128   /* labels, locations */
#define PCD01_TIME_LEN 40    /* hl7_time_format output */

typedef struct pcd01_obs {
    unsigned set_id;
    char code[PCD01_ID_LEN];          /* OBX-3.1, e.g. "150456" */
    char label[PCD01_TEXT_LEN];       /* OBX-3.2, e.g. "MDC_PULS_OXIM_SAT_O2" */
    char coding_system[PCD01_ID_LEN]; /* OBX-3.3, e.g. "MDC" */
    char sub_id[PCD01_ID_LEN];        /* OBX-4, e.g. "1.22.1.1" */
    double value;                     /* OBX-5 */
    char value_text[PCD01_ID_LEN];    /* OBX-5 as sent (exact decimal text) */
    char unit_code[PCD01_ID_LEN];     /* OBX-6.1, e.g. "262688" (may be "") */
    char unit_label[PCD01_TEXT_LEN];  /* OBX-6.2, e.g. "MDC_DIM_PERCENT" */
    char status[8];                   /* OBX-11, e.g. "R", "F" */
    char observed_at[PCD01_TIME_LEN]; /* hl7_time_format of OBX-14/OBR-7/MSH-7 */
    char equipment_id[PCD01_ID_LEN];  /* OBX-18.1 of the first repetition, or "" */
} pcd01_obs;

typedef struct pcd01_msg {
    char control_id[PCD01_ID_LEN + 136]; /* MSH-10, up to 199 chars in v2.6 */
    char sending_app[3][PCD01_ID_LEN];   /* MSH-3 components 1..3 */
    char sending_facility[PCD01_ID_LEN]; /* MSH-4.1 */
    char msg_type[8];                    /* MSH-9.1, "ORU" */
    char trigger[8];                     /* MSH-9.2, "R01" */
    char version[16];                    /* MSH-12.1, "2.6" */
    char msg_time[PCD01_TIME_LEN];       /* MSH-7 formatted, "" if absent */
    char patient_id[PCD01_ID_LEN];       /* PID-3.1, "" if no PID */
    char patient_authority[PCD01_ID_LEN];/* PID-3.4.1 */
    char location[PCD01_TEXT_LEN];       /* PV1-3 */
    char obr_time[PCD01_TIME_LEN];       /* OBR-7 formatted */
    size_t nobs;
    pcd01_obs obs[PCD01_MAX_OBS];
    size_t skipped_obx;                  /* OBX rows not stored (see above) */
} pcd01_msg;

/*
 * Reads the MSH of m into the header fields of out (control id, apps,
 * type, trigger, version) even when the rest is invalid, so that an AR can
 * echo them. Returns CMS_OK or CMS_EPROTO.
 */
int pcd01_read_header(const hl7_msg *m, pcd01_msg *out);

/*
 * Extracts a full ORU^R01. Returns:
 *   CMS_OK       out is filled (nobs may be 0 if the message carried none);
 *   CMS_EPROTO   malformed (missing MSH-10, bad number, bad time, ...)
 *   CMS_EINVAL   wrong message type / unsupported version (AR with 200/203)
 *   CMS_ELIMIT   more than PCD01_MAX_OBS numeric observations or a field
 *                longer than its buffer.
 * reason (cap bytes) gets a human-readable explanation on error, and
 * *err_code an HL7 table 0357 code string ("101", "102", "200", "203", ...;
 * "0" on success). Reasons never quote field values (patient data).
 */
int pcd01_extract(const hl7_msg *m, pcd01_msg *out, const char **err_code,
                  char *reason, size_t cap);

#endif
