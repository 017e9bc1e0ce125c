/*
 * pcd_int.h - internals shared by the IHE PCD extractors of server/proto
 * (not public):
 *
 *   pcd_util.c   error context, field copies (unescaped, never truncated),
 *                times, HL7 NM/SI numbers, MSH/PID/PV1/OBR reading, OBX-18
 *   pcd01.c      ORU^R01 (numeric, text and coded observations)
 *   pcd01_wave.c ORU^R01 waveform content (NA/MA rows and their facets)
 *   pcd04.c      ORU^R40 alarms
 *
 * Reasons written through pcd__fail never quote field values: they end up in
 * ACKs and logs, and OBX values are patient data.
 *
 * Thread: any; no global state.
 */
#ifndef CMS_PCD_INT_H
#define CMS_PCD_INT_H

#include <stddef.h>

#include "hl7.h"
#include "pcd01.h"

/* Error context threaded through the helpers: the first failure is kept. */
typedef struct pcd__ctx {
    const hl7_msg *m;
    const char **err_code; /* may be NULL */
    char *reason;          /* may be NULL */
    size_t cap;
    int failed;
    enum hl7_ack_code ack; /* what the first failure asks for (AR unless said) */
} pcd__ctx;

/* Records the first failure (code: HL7 table 0357; the ACK is AR) and
 * returns rc. Later failures are ignored. */
int pcd__fail(pcd__ctx *x, int rc, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Same, for a failure that is answered AE (waveform content). */
int pcd__fail_ae(pcd__ctx *x, int rc, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* s without surrounding blanks (space, TAB). */
hl7_str pcd__trim(hl7_str s);

/*
 * Unescapes the trimmed slice s into out (cap bytes). Returns CMS_OK, or
 * CMS_ELIMIT / CMS_EPROTO with the failure recorded (what names the field,
 * e.g. "MSH-10"; seg is 0-based and printed 1-based). out is "" on error.
 */
int pcd__copy(pcd__ctx *x, hl7_str s, char *out, size_t cap, size_t seg, const char *what);
/*
 * pcd__copy for free text (ST values, facet values, alarm text), where a
 * value longer than its slot is cut (at a UTF-8 character boundary) and
 * *truncated set to 1 instead of refusing the message: a cut text is still
 * the text, a cut identifier would be another identifier.
 */
int pcd__copy_text(pcd__ctx *x, hl7_str s, char *out, size_t cap, size_t seg, const char *what,
                   int *truncated);
/* pcd__copy of hl7_get(m, seg, f, r, c, s). */
int pcd__get(pcd__ctx *x, size_t seg, unsigned f, unsigned r, unsigned c, unsigned s, char *out,
             size_t cap, const char *what);
/* pcd__copy of hl7_fields_get(fs, f, r, c, 0). */
int pcd__fget(pcd__ctx *x, const hl7_fields *fs, unsigned f, unsigned r, unsigned c, char *out,
              size_t cap, const char *what);
/* Every component of the first repetition of field f, unescaped and joined
 * with '^', trailing empty components dropped (PV1-3, OBX-7, facet values).
 * truncated NULL: too long is an error (CMS_ELIMIT); else the text is cut
 * as in pcd__copy_text. */
int pcd__joined(pcd__ctx *x, size_t seg, hl7_str field, char *out, size_t cap, const char *what,
                int *truncated);

/* Parses a DTM slice into out (hl7_time_format, cap >= PCD01_TIME_LEN);
 * "" stays "". */
int pcd__time(pcd__ctx *x, hl7_str s, char *out, size_t cap, size_t seg, const char *what);

/* HL7 NM: [+-]digits[.digits] (no exponent, hex, inf, nan); *out finite.
 * Returns CMS_OK or CMS_EPROTO. */
int pcd__number(const char *s, double *out);
/* HL7 SI from a slice: a non-negative integer that fits 32 bits; "" is 0. */
int pcd__uint(hl7_str s, unsigned *out);

/*
 * Reads MSH into out's header fields (control id, sending app, facility,
 * type, trigger, version) and zeroes everything else out holds (counts,
 * patient, location, times). Best effort: every field is tried; returns the
 * first failure.
 */
int pcd__header(pcd__ctx *x, pcd01_msg *out);

/*
 * The checks every PCD message passes after pcd__header: MSH-10 present,
 * MSH-9 is type^trigger (else CMS_EINVAL, 200), version 2.x (CMS_EINVAL,
 * 203), MSH-7 a valid time (into out->vitals.msg_time).
 */
int pcd__check_header(pcd__ctx *x, pcd01_msg *out, const char *type, const char *trigger);

/* PID (first): PID-3.1 and 3.4.1 into out. */
int pcd__pid(pcd__ctx *x, size_t seg, pcd01_msg *out);
/* PV1 (first): PV1-3 into out->vitals.location. */
int pcd__pv1(pcd__ctx *x, size_t seg, pcd01_msg *out);

/* OBX-18: component 1 of the first repetition that has one ("" if none). */
int pcd__equipment(pcd__ctx *x, const hl7_fields *fs, char *out, size_t cap);

/* True when name (a slice) equals the NUL-terminated lit. */
int pcd__is(hl7_str name, const char *lit);

/*
 * The facet number of an IHE PCD sub-id: the last dotted component when the
 * sub-id has at least five (MDS.VMD.CHAN.METRIC.FACET, e.g. "1.3.1.150456.3"
 * -> 3), else 0. Non-numeric -> 0.
 */
unsigned pcd__facet_no(const char *sub_id);

/* True when sub_id is parent + "." + digits (a facet row of parent). */
int pcd__is_facet_of(const char *sub_id, const char *parent);

/*
 * Fills a pcd01_facet from the OBX split in fs (owner set by the caller).
 * Returns CMS_OK or a recorded failure.
 */
int pcd__facet(pcd__ctx *x, const hl7_fields *fs, unsigned set_id, pcd01_facet *f);

/* ---- pcd01_wave.c: waveform rows while an ORU^R01 is read ------------- */

typedef struct pcd__wavestate {
    pcd01_waves *w;  /* NULL: waveform rows are recognised and skipped */
    unsigned obx_no; /* position of the current OBX among the OBX rows, 1-based */
    size_t nrows;    /* NA/MA rows seen (their sub ids, for facet rows) */
    char sub[PCD01_MAX_WAVES][PCD01_ID_LEN];
    unsigned row_obx[PCD01_MAX_WAVES];
    size_t row_wave[PCD01_MAX_WAVES]; /* index of the row's first block in w */
} pcd__wavestate;

/* ws->w = w (reset: no blocks, no facets, no samples). */
void pcd__wave_begin(pcd__wavestate *ws, pcd01_waves *w);

/* An NA or MA row (vtype): one block per channel. */
int pcd__wave_row(pcd__ctx *x, pcd__wavestate *ws, const hl7_fields *fs, const char *vtype,
                  const char *fallback_time);

/*
 * Any other OBX row once a waveform row was seen: *taken = 1 when it is one
 * of the waveform's facets (then it is consumed here: sample rate,
 * resolution, or kept as sent), 0 when it is an ordinary observation.
 */
int pcd__wave_facet(pcd__ctx *x, pcd__wavestate *ws, const hl7_fields *fs, int *taken);

/* After the last row: every block must have a sample rate (AE otherwise). */
int pcd__wave_end(pcd__ctx *x, pcd__wavestate *ws);

#endif
