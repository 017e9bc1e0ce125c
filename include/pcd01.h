/*
 * pcd01.h - IHE PCD-01 (HL7 v2.6 ORU^R01) content extraction.
 *
 * Turns a parsed hl7_msg into a flat, self-contained pcd01_msg (all text is
 * unescaped and copied, so the frame buffer may be released), whose vitals
 * member is the record the store consumes (vitals.h). Validation that
 * is about the message alone happens here; identity (is this device allowed
 * to say this?) is the ingest service's job.
 *
 * Mapping:
 *   MSH-3 (all components, e.g. "MON-0002^MON-0002^L" or "X^0012..^EUI-64")
 *         -> sending_app[] (component 1..3 unescaped)
 *   MSH-4 -> sending_facility, MSH-7 -> vitals.msg_time, MSH-9 -> msg_type/trigger,
 *   MSH-10 -> vitals.control_id (required), MSH-12 -> version (2.x required),
 *   PID-3 first repetition: component 1 -> vitals.patient_id, 4.1 ->
 *         vitals.patient_authority,
 *   PV1-3 -> vitals.location ("CCU^^BED-07" becomes "CCU^^BED-07"-style joined text:
 *           components joined with '^', trailing empties trimmed),
 *   OBR-7 -> obr_time,
 *   OBX with value type NM -> one observation each (vitals.obs[]):
 *     OBX-1 set id, OBX-3.1 code, OBX-3.2 label, OBX-3.3 coding system,
 *     OBX-4 sub id, OBX-5 value (must parse as a finite decimal number),
 *     OBX-6.1/6.2/6.3 unit code/label/system, OBX-11 status,
 *     OBX-14 observed time (falls back to OBR-7, then MSH-7),
 *     OBX-18 equipment instance identifier (all repetitions, component 1,
 *            e.g. an EUI-64) -> obs.equipment_id.
 *   OBX with value type ST, CWE or CE -> one text observation each (texts[]):
 *     the same identifier, sub id, status, time and equipment columns; ST:
 *     OBX-5 -> text; CWE/CE: OBX-5.1 -> value_code, 5.2 -> text, 5.3 ->
 *     value_system. An empty OBX-5 is skipped as for NM. Free text longer
 *     than its slot (an ST value, a kept facet's value) is cut at a UTF-8
 *     character boundary and flagged (truncated), not refused; every
 *     identifier that does not fit is still an error.
 *   OBX with value type NA or MA (waveforms, IHE PCD Waveform Content
 *     Module) and the rows that describe them (their "facets": rows whose
 *     OBX-4 is the waveform's sub id plus ".n", and rows named as waveform
 *     attributes, e.g. 0^MDC_ATTR_SAMP_RATE^MDC) go to a pcd01_waves when
 *     the caller passes one (pcd01_extract_full), and are skipped otherwise.
 *     They are never numeric observations.
 *   OBX with empty value type (MDS/VMD/channel rows) and other value types
 *   are counted in skipped_obx and not stored, and so are NM/ST/CWE/CE rows
 *   whose OBX-5 is empty (e.g. status X: no value).
 *   OBX-18: component 1 of the first repetition that has one. Text fields
 *   are trimmed of surrounding blanks. The fallback time for OBX-14 is the
 *   OBR-7 of the OBR the OBX follows.
 *
 * Waveforms (pcd01_waves):
 *   one block per NA row (and one per channel of an MA row: OBX-5
 *   repetitions are instants, their components the channels), with
 *   OBX-3 code/label/system, OBX-4 sub id, OBX-6 unit (else the resolution
 *   facet's unit), OBX-11 status, OBX-14 start time (else OBR-7, else
 *   MSH-7), OBX-18 equipment id, and from its facets:
 *     MDC_ATTR_SAMP_RATE (codes 2464 / 68000)   -> rate_hz (per second)
 *     MDC_ATTR_TIME_PD_SAMP (2445 / 67981)      -> rate_hz = 1 / period
 *         (unit MDC_DIM_MILLI_SEC / MICRO_SEC / SEC; default seconds)
 *     MDC_ATTR_NU_MSMT_RES (2327 / 67863)       -> resolution
 *   matched by the reference id name (OBX-3.2) first and by either code
 *   (term code or context-free code: vendors use both) second, unless
 *   OBX-3.2 names another MDC reference id. Facet rows follow their
 *   waveform row; a named attribute row whose OBX-4 extends no waveform's
 *   sub id belongs to the last waveform before it. Any other
 *   facet row is kept as sent (pcd01_waves.facets). The physical value of
 *   sample i is sample_i * resolution (resolution 1 when no facet says it)
 *   in the block's unit. Samples are HL7 NM numbers; a block whose samples
 *   are all integers after scaling by 10^scale_exp (scale_exp 0..9: the
 *   most fraction digits sent) within 32 bits is marked so (the store keeps
 *   it as integers); otherwise scale_exp is -1 (kept as doubles).
 *
 * Thread: any.
 */
#ifndef CMS_PCD01_H
#define CMS_PCD01_H

#include <stddef.h>
#include "hl7.h"
#include "clinical.h"
#include "vitals.h"

#define PCD01_MAX_OBS VITALS_MAX_OBS
#define PCD01_ID_LEN VITALS_ID_LEN     /* identifiers: device ids, codes */
#define PCD01_TEXT_LEN VITALS_TEXT_LEN /* labels, locations */
#define PCD01_TIME_LEN VITALS_TIME_LEN /* hl7_time_format output */
#define PCD01_MAX_TEXTS 64   /* ST/CWE/CE observations per message */
#define PCD01_VALUE_LEN CLINICAL_VALUE_LEN /* an ST value, a facet value */
#define PCD01_MAX_WAVES 32   /* waveform blocks per message (MA: one per channel) */
#define PCD01_MAX_FACETS 64  /* kept (unmapped) facet rows per message */

/* An ST, CWE or CE observation (the store's record, clinical.h). */
typedef clinical_text pcd01_text;

/*
 * A message: the MSH fields an ACK echoes and the identity check reads, the
 * text observations, and (vitals) the record the store consumes: MSH-10
 * control id, MSH-7, PID-3, PV1-3 and the NM observations (vitals.h).
 * vitals is filled in place; a caller may clear the struct only up to
 * vitals.obs (offsetof) before each message.
 */
typedef struct pcd01_msg {
    char sending_app[3][PCD01_ID_LEN];   /* MSH-3 components 1..3 */
    char sending_facility[PCD01_ID_LEN]; /* MSH-4.1 */
    char msg_type[8];                    /* MSH-9.1, "ORU" */
    char trigger[8];                     /* MSH-9.2, "R01" */
    char version[16];                    /* MSH-12.1, "2.6" */
    char obr_time[PCD01_TIME_LEN];       /* OBR-7 formatted */
    size_t skipped_obx;                  /* OBX rows not stored (see above) */
    size_t ntexts;
    vitals_msg vitals;                   /* its obs[] last, then texts[] */
    pcd01_text texts[PCD01_MAX_TEXTS];   /* ST/CWE/CE observations */
} pcd01_msg;

/* A facet row kept as sent because no column holds it (clinical.h). */
typedef clinical_facet pcd01_facet;

/* One waveform block (see "Waveforms" above; the store's record, clinical.h):
 * its samples are waves->samples[first .. first + nsamples). */
typedef clinical_wave pcd01_wave;

/* The waveform content of one message; owns its sample arena. */
typedef struct pcd01_waves {
    size_t max_block;    /* the caller's limit on samples per block (0 = none) */
    size_t nwaves;
    pcd01_wave waves[PCD01_MAX_WAVES];
    size_t nfacets;
    pcd01_facet facets[PCD01_MAX_FACETS]; /* owner = index in waves[] */
    double *samples;     /* owned arena (grows) */
    size_t nsamples, cap;
} pcd01_waves;

/* Initialises w (empty; limit max_block samples per block, 0 = none). */
void pcd01_waves_init(pcd01_waves *w, size_t max_block);
/* Frees the arena of w (w stays usable: empty, as after init). */
void pcd01_waves_free(pcd01_waves *w);

/*
 * The outcome of an extraction for the ACK. ack is HL7_AA on success;
 * HL7_AR for a malformed message (also a too-large waveform block), HL7_AE
 * for bad waveform content (no sample rate, a non-numeric sample: the
 * reason names the OBX by its position and OBX-1). err_code is an HL7 table
 * 0357 code ("0" on success), reason never quotes field values.
 */
typedef struct pcd01_verdict {
    enum hl7_ack_code ack;
    const char *err_code;
    char reason[200];
} pcd01_verdict;

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
 *   CMS_ELIMIT   more than PCD01_MAX_OBS numeric observations, more than
 *                PCD01_MAX_TEXTS text ones, or a field longer than its buffer.
 * reason (cap bytes) gets a human-readable explanation on error, and
 * *err_code an HL7 table 0357 code string ("101", "102", "200", "203", ...;
 * "0" on success). Reasons never quote field values (patient data).
 */
int pcd01_extract(const hl7_msg *m, pcd01_msg *out, const char **err_code,
                  char *reason, size_t cap);

/*
 * pcd01_extract, and the waveform content into waves (NULL: waveform rows
 * are skipped). waves is reset first (its arena kept and grown as needed).
 * Returns what pcd01_extract returns, plus CMS_ENOMEM (arena), CMS_ELIMIT
 * for a block over waves->max_block samples or more than PCD01_MAX_WAVES
 * blocks (AR), and CMS_EPROTO with v->ack HL7_AE for waveform content
 * errors. v (required) says how to answer.
 */
int pcd01_extract_full(const hl7_msg *m, pcd01_msg *out, pcd01_waves *waves, pcd01_verdict *v);

#endif
