/*
 * hl7.h - HL7 v2 ER7 ("pipe") message parsing and ACK encoding.
 *
 * hl7_parse() indexes a message without copying it: segments are split on CR
 * (LF and CRLF tolerated), delimiters come from MSH-1 (field separator) and
 * MSH-2 (component, repetition, escape, subcomponent). Accessors return the
 * raw (still escaped) slice of a field/component; hl7_unescape() decodes
 * \F\ \S\ \T\ \R\ \E\ and \Xhh..\ (other escapes such as \H\ \N\ are dropped).
 *
 * Field numbering follows the standard: for MSH, field 1 is the field
 * separator itself and field 2 the encoding characters, so MSH-10 is
 * hl7_field(msg, msh, 10); for other segments field 1 is the first after the
 * segment name. Repetitions, components and subcomponents are 1-based.
 *
 * Files (server/proto/): hl7.c parsing and field access, hl7_escape.c
 * escapes, hl7_time.c DTM times, hl7_ack.c ACK encoding; hl7_int.h is
 * what they share.
 *
 * Nothing here allocates: every hl7_str points into the buffer given to
 * hl7_parse() (borrowed; valid as long as that buffer), and every output
 * goes to a caller buffer. Thread: any; no global state (an hl7_msg is used
 * by one thread at a time).
 */
#ifndef CMS_HL7_H
#define CMS_HL7_H

#include <stddef.h>
#include <stdint.h>

#define HL7_MAX_SEGMENTS 1024

typedef struct hl7_delims {
    char field, comp, rep, esc, sub;
} hl7_delims;

/* A borrowed slice into the message buffer. */
typedef struct hl7_str {
    const char *p;
    size_t len;
} hl7_str;

typedef struct hl7_msg {
    const char *buf; /* borrowed; must outlive the hl7_msg */
    size_t len;
    hl7_delims d;
    size_t nseg;
    hl7_str seg[HL7_MAX_SEGMENTS]; /* each whole segment, without CR */
} hl7_msg;

/*
 * Parses buf (len bytes; need not be NUL-terminated; borrowed and recorded
 * in m: it must outlive m and every slice taken from it) into m (caller
 * storage, about 16 KiB: not for small stacks). Returns CMS_OK,
 * CMS_EPROTO (no MSH first, bad delimiters, empty, control characters, ...)
 * or CMS_ELIMIT (more than HL7_MAX_SEGMENTS). On error, reason (cap bytes)
 * receives a short human-readable explanation and m->nseg is 0.
 * Details: MSH-2 holds 4 encoding characters (a 5th, the v2.7 truncation
 * character, is accepted and ignored); all delimiters must be distinct
 * printable ASCII punctuation. Blank lines are skipped. Control characters
 * other than TAB, CR and LF are refused. Segment names are 3 of [A-Z0-9].
 * A second MSH (batch) is refused.
 */
int hl7_parse(hl7_msg *m, const char *buf, size_t len, char *reason, size_t cap);

/* Index of the first segment named name ("PID", exactly 3 bytes) at or after
 * from, or -1 (also when m or name is NULL). */
int hl7_find_segment(const hl7_msg *m, const char *name, size_t from);
/* The segment name (first three bytes), as a slice; empty when seg >= m->nseg. */
hl7_str hl7_segment_name(const hl7_msg *m, size_t seg);

/*
 * Raw slice of field f, repetition r, component c, subcomponent s of segment
 * seg (r/c/s 1-based; pass 0 for "the whole thing at that level"). An absent
 * element yields an empty slice (p may be NULL, len 0). A 0 above a level
 * that is asked for means the first element (r = 0, c = 2 is the second
 * component of the first repetition). f = 0 is the segment name; MSH-1 and
 * MSH-2 are never split. m NULL or seg >= m->nseg yields an empty slice.
 */
hl7_str hl7_get(const hl7_msg *m, size_t seg, unsigned f, unsigned r, unsigned c, unsigned s);
/* Shorthand for hl7_get(m, seg, f, 0, 0, 0). */
hl7_str hl7_field(const hl7_msg *m, size_t seg, unsigned f);

/*
 * A segment's first HL7_SPLIT_FIELDS fields, found in one pass, for callers
 * that read many fields of one segment (hl7_get scans from the segment's
 * start on every call). hl7_fields_get(fs, f, r, c, s) returns exactly what
 * hl7_get(m, seg, f, r, c, s) returns, for any f (beyond the split ones, and
 * for MSH, it calls hl7_get). out is caller storage; it borrows m, which
 * must outlive it.
 */
#define HL7_SPLIT_FIELDS 24
typedef struct hl7_fields {
    const hl7_msg *m;
    size_t seg;
    int split; /* 0: MSH or no such segment: every call goes to hl7_get */
    hl7_str f[HL7_SPLIT_FIELDS]; /* f[0] = the segment name */
} hl7_fields;
void hl7_split(const hl7_msg *m, size_t seg, hl7_fields *out);
hl7_str hl7_fields_get(const hl7_fields *fs, unsigned f, unsigned r, unsigned c, unsigned s);

/*
 * Unescapes src into out (cap bytes, always NUL-terminated when cap > 0)
 * with m's delimiters (m NULL: |^~\&). Formatting escapes (\H\ \N\ \.br\
 * ...) are dropped; \X00\ (a NUL byte) is refused.
 * Returns the unescaped length, or CMS_ELIMIT if it does not fit, or
 * CMS_EPROTO for a malformed escape sequence (out then holds what was
 * decoded before it).
 */
int hl7_unescape(const hl7_msg *m, hl7_str src, char *out, size_t cap);
/* hl7_get + hl7_unescape into out. Same returns as hl7_unescape. */
int hl7_get_text(const hl7_msg *m, size_t seg, unsigned f, unsigned r, unsigned c,
                 unsigned s, char *out, size_t cap);

/*
 * Escapes text for use inside a field with delimiters d (| ^ ~ \ & become
 * \F\ \S\ \R\ \E\ \T\; CR/LF and other control characters except TAB become
 * a space). d NULL means |^~\&. out is always NUL-terminated when cap > 0
 * and the NUL must fit. Returns length or CMS_ELIMIT.
 */
int hl7_escape(const hl7_delims *d, const char *text, char *out, size_t cap);

/*
 * A point in time from an HL7 DTM/TS value: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ].
 * has_tz = 0 when the value carried no offset (then it is the sender's local
 * time and the caller applies the configured default zone).
 */
typedef struct hl7_time {
    int year, month, day, hour, minute, second;
    int usec;
    int has_tz;
    int tz_offset_min; /* east of UTC, e.g. +0100 -> 60 */
    int precision;     /* number of digits given before the fraction: 4..14 */
} hl7_time;

/* Parses a DTM. Returns CMS_OK or CMS_EPROTO (bad syntax or out-of-range value). */
int hl7_time_parse(hl7_str s, hl7_time *t);
/*
 * Formats t as an ISO 8601 string that PostgreSQL accepts as timestamptz:
 * "2026-11-15 08:30:00.310000+01:00", or without the offset when !has_tz.
 * Returns length or CMS_ELIMIT (cap >= 40 always suffices), or CMS_EINVAL
 * if t holds out-of-range values (hl7_time_parse never produces them).
 */
int hl7_time_format(const hl7_time *t, char *out, size_t cap);

/* ACK codes (MSA-1). */
enum hl7_ack_code { HL7_AA = 0, HL7_AE = 1, HL7_AR = 2 };

typedef struct hl7_ack {
    enum hl7_ack_code code;
    /* From the message being acknowledged (unescaped text, may be ""): */
    const char *their_app;      /* MSH-3, becomes our MSH-5 */
    const char *their_facility; /* MSH-4, becomes our MSH-6 */
    const char *control_id;     /* MSH-10, becomes MSA-2 */
    const char *version;        /* MSH-12, echoed; "2.6" if empty */
    const char *trigger;        /* MSH-9.2 (e.g. "R01"), echoed in ACK^<trigger>^ACK */
    /* Ours: */
    const char *our_app;        /* our MSH-3 */
    const char *our_facility;   /* our MSH-4 */
    const char *ack_control_id; /* our MSH-10 (unique per ACK) */
    const char *timestamp;      /* our MSH-7, HL7 DTM (e.g. 20261128061454.123+0000) */
    /* For AE/AR: human-readable reason (MSA-3 and ERR-8) and HL7 error code
     * (table 0357, e.g. "100" segment sequence error, "101" required field
     * missing, "102" data type error, "200" unsupported message type,
     * "203" unsupported version, "207" application internal error). */
    const char *reason;
    const char *err_code;
} hl7_ack;

/*
 * Encodes an ACK (MSH, MSA, and ERR when code != AA), segments ending in CR,
 * without MLLP framing, using the standard delimiters |^~\&. All text is
 * escaped; NULL strings are "". For AE/AR: MSA-3 = reason (omitted when
 * empty), ERR-3 = "<err_code>^<table 0357 text>^HL70357" (err_code defaults
 * to "207"), ERR-4 = "E", ERR-8 = reason. The output is NUL-terminated and
 * the NUL must fit. Returns the length or CMS_ELIMIT if cap is too small
 * (escaping can triple the text: size cap for 3x the inputs plus 128).
 */
int hl7_ack_encode(const hl7_ack *a, char *out, size_t cap);

#endif
