/*
 * hl7.c - HL7 v2 ER7 parsing (indexing, no copies, no allocation), escaping,
 * DTM times and ACK encoding.
 *
 * hl7_parse() validates the envelope once (MSH first, legal delimiters, no
 * control characters, well-formed segment names) and records one slice per
 * segment. Accessors then split lazily: each hl7_get() is a linear scan of
 * one segment, so the cost of reading a message is proportional to its size
 * times the number of fields the caller asks for, never quadratic in the
 * attacker's input.
 */
#include "hl7.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cms_err.h"

static const hl7_str hl7__empty = {NULL, 0};
static const hl7_delims hl7__std_delims = {'|', '^', '~', '\\', '&'};

static void hl7__reason(char *reason, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void hl7__reason(char *reason, size_t cap, const char *fmt, ...)
{
    va_list ap;

    if (!reason || cap == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(reason, cap, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------ parse */

/* A delimiter must be visible ASCII punctuation: not alphanumeric, not
 * space, not a control character, not CR/LF, not 8-bit. */
static int hl7__delim_ok(unsigned char ch)
{
    if (ch <= 0x20 || ch >= 0x7F)
        return 0;
    if ((ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z'))
        return 0;
    return 1;
}

static int hl7__is_ctl(unsigned char ch)
{
    return (ch < 0x20 && ch != '\t') || ch == 0x7F;
}

static int hl7__segname_ok(const char *p)
{
    for (int i = 0; i < 3; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')))
            return 0;
    }
    return 1;
}

/* Reads MSH-1 and MSH-2 from the start of buf (len >= 4 checked by caller). */
static int hl7__read_delims(hl7_msg *m, const char *buf, size_t len, char *reason, size_t cap)
{
    char set[6];
    size_t n = 0, i = 4;

    if (memcmp(buf, "MSH", 3) != 0) {
        hl7__reason(reason, cap, "message does not start with MSH");
        return CMS_EPROTO;
    }
    set[n++] = buf[3];
    /* MSH-2 runs to the next field separator or the end of the segment. */
    while (i < len && buf[i] != buf[3] && buf[i] != '\r' && buf[i] != '\n') {
        if (n == sizeof(set)) {
            hl7__reason(reason, cap, "MSH-2 has more than 5 encoding characters");
            return CMS_EPROTO;
        }
        set[n++] = buf[i++];
    }
    if (n < 5) {
        hl7__reason(reason, cap, "MSH-2 must hold 4 encoding characters");
        return CMS_EPROTO;
    }
    for (size_t a = 0; a < n; a++) {
        if (!hl7__delim_ok((unsigned char)set[a])) {
            hl7__reason(reason, cap, "illegal delimiter 0x%02x in MSH-1/MSH-2",
                        (unsigned)(unsigned char)set[a]);
            return CMS_EPROTO;
        }
        for (size_t b = a + 1; b < n; b++) {
            if (set[a] == set[b]) {
                hl7__reason(reason, cap, "delimiter '%c' is used twice in MSH-1/MSH-2", set[a]);
                return CMS_EPROTO;
            }
        }
    }
    /* set[5], when present, is the v2.7 truncation character: unused. */
    m->d.field = set[0];
    m->d.comp = set[1];
    m->d.rep = set[2];
    m->d.esc = set[3];
    m->d.sub = set[4];
    return CMS_OK;
}

int hl7_parse(hl7_msg *m, const char *buf, size_t len, char *reason, size_t cap)
{
    size_t i = 0;
    int rc;

    if (reason && cap > 0)
        reason[0] = '\0';
    m->buf = buf;
    m->len = len;
    m->nseg = 0;
    m->d = hl7__std_delims;

    if (!buf || len == 0) {
        hl7__reason(reason, cap, "empty message");
        return CMS_EPROTO;
    }
    /* Leading blank lines are tolerated like blank lines between segments. */
    while (i < len && (buf[i] == '\r' || buf[i] == '\n'))
        i++;
    if (len - i < 8) {
        hl7__reason(reason, cap, "message too short for an MSH segment");
        rc = CMS_EPROTO;
        goto fail;
    }
    rc = hl7__read_delims(m, buf + i, len - i, reason, cap);
    if (rc < 0)
        goto fail;

    while (i < len) {
        size_t start = i;
        hl7_str seg;

        while (i < len && buf[i] != '\r' && buf[i] != '\n') {
            if (hl7__is_ctl((unsigned char)buf[i])) {
                hl7__reason(reason, cap, "control character 0x%02x at offset %zu",
                            (unsigned)(unsigned char)buf[i], i);
                rc = CMS_EPROTO;
                goto fail;
            }
            i++;
        }
        seg.p = buf + start;
        seg.len = i - start;
        /* Skip the terminator(s): CR, LF, CRLF, and any blank lines. */
        while (i < len && (buf[i] == '\r' || buf[i] == '\n'))
            i++;
        if (seg.len == 0)
            continue;

        if (seg.len < 3 || !hl7__segname_ok(seg.p) || (seg.len > 3 && seg.p[3] != m->d.field)) {
            hl7__reason(reason, cap, "malformed segment %zu (bad segment name)", m->nseg + 1);
            rc = CMS_EPROTO;
            goto fail;
        }
        if (m->nseg > 0 && memcmp(seg.p, "MSH", 3) == 0) {
            hl7__reason(reason, cap, "more than one MSH segment (batches are not accepted)");
            rc = CMS_EPROTO;
            goto fail;
        }
        if (m->nseg == HL7_MAX_SEGMENTS) {
            hl7__reason(reason, cap, "more than %d segments", HL7_MAX_SEGMENTS);
            rc = CMS_ELIMIT;
            goto fail;
        }
        m->seg[m->nseg++] = seg;
    }
    return CMS_OK;

fail:
    m->nseg = 0;
    return rc;
}

/* ---------------------------------------------------------------- access */

int hl7_find_segment(const hl7_msg *m, const char *name, size_t from)
{
    if (!m || !name || strlen(name) != 3)
        return -1;
    for (size_t i = from; i < m->nseg; i++) {
        if (m->seg[i].len >= 3 && memcmp(m->seg[i].p, name, 3) == 0)
            return (int)i;
    }
    return -1;
}

hl7_str hl7_segment_name(const hl7_msg *m, size_t seg)
{
    hl7_str s = hl7__empty;

    if (!m || seg >= m->nseg)
        return s;
    s.p = m->seg[seg].p;
    s.len = m->seg[seg].len < 3 ? m->seg[seg].len : 3;
    return s;
}

/* The idx-th (0-based) piece of s split on delim, or an empty slice. */
static hl7_str hl7__piece(hl7_str s, char delim, unsigned idx)
{
    const char *p = s.p;
    const char *end;
    const char *q;
    hl7_str r = hl7__empty;

    if (!p || s.len == 0)
        return r;
    end = p + s.len;
    while (idx > 0) {
        q = memchr(p, delim, (size_t)(end - p));
        if (!q)
            return r;
        p = q + 1;
        idx--;
    }
    q = memchr(p, delim, (size_t)(end - p));
    r.p = p;
    r.len = q ? (size_t)(q - p) : (size_t)(end - p);
    return r;
}

/* Repetition r, component c, subcomponent s of a field (0s as in hl7_get). */
static hl7_str hl7__descend(const hl7_msg *m, hl7_str x, unsigned r, unsigned c, unsigned s)
{
    if (r == 0 && c == 0 && s == 0)
        return x;
    x = hl7__piece(x, m->d.rep, r ? r - 1 : 0);
    if (c == 0 && s == 0)
        return x;
    x = hl7__piece(x, m->d.comp, c ? c - 1 : 0);
    if (s == 0)
        return x;
    return hl7__piece(x, m->d.sub, s - 1);
}

/*
 * A 0 at a level means "the whole thing at that level" when nothing deeper is
 * asked for; when a deeper level is given (r = 0, c = 2), the 0 means the
 * first element (so hl7_get(m, i, 9, 0, 2, 0) is MSH-9.2 of repetition 1).
 */
hl7_str hl7_get(const hl7_msg *m, size_t seg, unsigned f, unsigned r, unsigned c, unsigned s)
{
    hl7_str x;
    int msh;

    if (!m || seg >= m->nseg)
        return hl7__empty;
    x = m->seg[seg];
    if (!x.p || x.len < 3)
        return hl7__empty;
    msh = x.len >= 4 && memcmp(x.p, "MSH", 3) == 0 && x.p[3] == m->d.field;

    if (f == 0 || (msh && f <= 2)) {
        /* The segment name, MSH-1 and MSH-2 are atoms: never split. */
        if (r > 1 || c > 1 || s > 1)
            return hl7__empty;
        if (f == 0) {
            x.len = 3;
        } else if (f == 1) {
            x.p += 3;
            x.len = 1;
        } else {
            x = hl7__piece(x, m->d.field, 1);
        }
        return x;
    }

    return hl7__descend(m, hl7__piece(x, m->d.field, msh ? f - 1 : f), r, c, s);
}

hl7_str hl7_field(const hl7_msg *m, size_t seg, unsigned f)
{
    return hl7_get(m, seg, f, 0, 0, 0);
}

void hl7_split(const hl7_msg *m, size_t seg, hl7_fields *out)
{
    out->m = m;
    out->seg = seg;
    out->split = 0;
    if (!m || seg >= m->nseg)
        return;
    hl7_str x = m->seg[seg];
    if (!x.p || x.len < 3 || memcmp(x.p, "MSH", 3) == 0)
        return; /* MSH numbers its fields differently: left to hl7_get */
    const char *p = x.p, *end = x.p + x.len;
    for (unsigned i = 0; i < HL7_SPLIT_FIELDS; i++) {
        if (!p) {
            out->f[i] = hl7__empty;
            continue;
        }
        const char *q = memchr(p, m->d.field, (size_t)(end - p));
        out->f[i].p = p;
        out->f[i].len = q ? (size_t)(q - p) : (size_t)(end - p);
        p = q ? q + 1 : NULL;
    }
    out->split = 1;
}

hl7_str hl7_fields_get(const hl7_fields *fs, unsigned f, unsigned r, unsigned c, unsigned s)
{
    if (!fs->split || f == 0 || f >= HL7_SPLIT_FIELDS)
        return hl7_get(fs->m, fs->seg, f, r, c, s);
    return hl7__descend(fs->m, fs->f[f], r, c, s);
}

/* --------------------------------------------------------------- escapes */

static int hl7__hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

int hl7_unescape(const hl7_msg *m, hl7_str src, char *out, size_t cap)
{
    const hl7_delims *d = m ? &m->d : &hl7__std_delims;
    size_t o = 0, i = 0;
    int rc = CMS_OK;

    if (cap > 0 && out)
        out[0] = '\0';
    if (!out)
        cap = 0;
    if (!src.p)
        src.len = 0;

#define HL7__EMIT(ch)                                                                              \
    do {                                                                                           \
        if (o + 1 >= cap) {                                                                        \
            rc = CMS_ELIMIT;                                                                       \
            goto done;                                                                             \
        }                                                                                          \
        out[o++] = (ch);                                                                           \
    } while (0)

    while (i < src.len) {
        const char *seq, *close;
        size_t n;

        if (src.p[i] != d->esc) {
            HL7__EMIT(src.p[i]);
            i++;
            continue;
        }
        seq = src.p + i + 1;
        close = memchr(seq, d->esc, src.len - i - 1);
        if (!close) {
            rc = CMS_EPROTO; /* unterminated escape sequence */
            goto done;
        }
        n = (size_t)(close - seq);
        i = (size_t)(close - src.p) + 1;
        if (n == 0) {
            rc = CMS_EPROTO; /* "\\": empty escape sequence */
            goto done;
        }
        if (n == 1) {
            switch (seq[0]) {
            case 'X': /* \X\ without hex digits */
                rc = CMS_EPROTO;
                goto done;
            case 'F':
                HL7__EMIT(d->field);
                break;
            case 'S':
                HL7__EMIT(d->comp);
                break;
            case 'T':
                HL7__EMIT(d->sub);
                break;
            case 'R':
                HL7__EMIT(d->rep);
                break;
            case 'E':
                HL7__EMIT(d->esc);
                break;
            default:
                break; /* \H\ \N\ and unknown: formatting, dropped */
            }
            continue;
        }
        if (seq[0] == 'X') {
            if ((n - 1) % 2 != 0) {
                rc = CMS_EPROTO;
                goto done;
            }
            for (size_t k = 1; k < n; k += 2) {
                int hi = hl7__hexval(seq[k]), lo = hl7__hexval(seq[k + 1]);
                if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                    rc = CMS_EPROTO; /* not hex, or a NUL byte */
                    goto done;
                }
                HL7__EMIT((char)(hi * 16 + lo));
            }
            continue;
        }
        /* \.br\ \Cxxyy\ \Mxxyyzz\ \Zxxx\ ...: dropped. */
    }
#undef HL7__EMIT

done:
    if (cap > 0)
        out[o < cap ? o : cap - 1] = '\0';
    if (rc < 0)
        return rc;
    if (o > INT_MAX)
        return CMS_ELIMIT;
    return (int)o;
}

int hl7_get_text(const hl7_msg *m, size_t seg, unsigned f, unsigned r, unsigned c, unsigned s,
                 char *out, size_t cap)
{
    return hl7_unescape(m, hl7_get(m, seg, f, r, c, s), out, cap);
}

/* Appends the escape sequence for ch (an HL7 delimiter) or 0 if not one. */
static const char *hl7__escape_seq(const hl7_delims *d, char ch)
{
    if (ch == d->esc)
        return "E";
    if (ch == d->field)
        return "F";
    if (ch == d->comp)
        return "S";
    if (ch == d->rep)
        return "R";
    if (ch == d->sub)
        return "T";
    return NULL;
}

/*
 * Output is always NUL-terminated when cap > 0, and the NUL must fit.
 * Control characters other than TAB are replaced by a space like CR/LF, so
 * the output always passes hl7_parse on the other side.
 */
int hl7_escape(const hl7_delims *d, const char *text, char *out, size_t cap)
{
    size_t o = 0;
    int rc = CMS_OK;

    if (!d)
        d = &hl7__std_delims;
    if (cap > 0 && out)
        out[0] = '\0';
    if (!out)
        cap = 0;
    if (!text)
        text = "";

    for (const char *p = text; *p; p++) {
        const char *seq = hl7__escape_seq(d, *p);
        if (seq) {
            if (cap < 4 || o > cap - 4) { /* esc, letter, esc, NUL */
                rc = CMS_ELIMIT;
                goto done;
            }
            out[o++] = d->esc;
            out[o++] = seq[0];
            out[o++] = d->esc;
        } else {
            char ch = *p;
            if (hl7__is_ctl((unsigned char)ch))
                ch = ' ';
            if (o + 1 >= cap) {
                rc = CMS_ELIMIT;
                goto done;
            }
            out[o++] = ch;
        }
    }
done:
    if (cap > 0)
        out[o < cap ? o : cap - 1] = '\0';
    if (rc < 0)
        return rc;
    if (o > INT_MAX)
        return CMS_ELIMIT;
    return (int)o;
}

/* ----------------------------------------------------------------- times */

static int hl7__leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int hl7__days_in_month(int y, int mo)
{
    static const int dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (mo == 2 && hl7__leap(y))
        return 29;
    return dim[mo - 1];
}

/* n decimal digits at p (all verified digits by the caller). */
static int hl7__num(const char *p, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (p[i] - '0');
    return v;
}

static int hl7__isdigit(char ch)
{
    return ch >= '0' && ch <= '9';
}

int hl7_time_parse(hl7_str s, hl7_time *t)
{
    const char *p = s.p;
    size_t n = s.len, nd = 0, i;
    hl7_time v;

    memset(&v, 0, sizeof(v));
    v.month = 1;
    v.day = 1;
    if (!p || n == 0)
        return CMS_EPROTO;

    while (nd < n && hl7__isdigit(p[nd]))
        nd++;
    if (nd < 4 || nd > 14 || nd % 2 != 0)
        return CMS_EPROTO;
    v.precision = (int)nd;
    v.year = hl7__num(p, 4);
    if (nd >= 6)
        v.month = hl7__num(p + 4, 2);
    if (nd >= 8)
        v.day = hl7__num(p + 6, 2);
    if (nd >= 10)
        v.hour = hl7__num(p + 8, 2);
    if (nd >= 12)
        v.minute = hl7__num(p + 10, 2);
    if (nd >= 14)
        v.second = hl7__num(p + 12, 2);
    i = nd;

    if (i < n && p[i] == '.') {
        size_t k = 0;
        if (nd != 14)
            return CMS_EPROTO; /* a fraction only after seconds */
        i++;
        while (i + k < n && hl7__isdigit(p[i + k]))
            k++;
        /* HL7 allows 4 fraction digits; monitors in the field send up to 6
         * (microseconds): accept them rather than lose a reading. */
        if (k < 1 || k > 6)
            return CMS_EPROTO;
        v.usec = hl7__num(p + i, k);
        for (size_t z = k; z < 6; z++)
            v.usec *= 10;
        i += k;
    }
    if (i < n && (p[i] == '+' || p[i] == '-')) {
        int sign = p[i] == '-' ? -1 : 1, oh, om;
        if (n - i != 5)
            return CMS_EPROTO;
        for (size_t k = 1; k <= 4; k++) {
            if (!hl7__isdigit(p[i + k]))
                return CMS_EPROTO;
        }
        oh = hl7__num(p + i + 1, 2);
        om = hl7__num(p + i + 3, 2);
        if (om >= 60 || oh * 60 + om > 14 * 60)
            return CMS_EPROTO;
        v.has_tz = 1;
        v.tz_offset_min = sign * (oh * 60 + om);
        i += 5;
    }
    if (i != n)
        return CMS_EPROTO;

    if (v.year < 1 || v.month < 1 || v.month > 12 || v.day < 1 ||
        v.day > hl7__days_in_month(v.year, v.month) || v.hour > 23 || v.minute > 59 ||
        v.second > 59)
        return CMS_EPROTO;
    *t = v;
    return CMS_OK;
}

/* v (0 <= v < 10^width) as exactly width decimal digits; returns the end. */
static char *put_digits(char *o, int v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        o[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return o + width;
}

/* Returns the length, CMS_ELIMIT, or CMS_EINVAL if t holds out-of-range
 * values (a caller bug: hl7_time_parse never produces them). */
int hl7_time_format(const hl7_time *t, char *out, size_t cap)
{
    int n;

    if (!t || t->year < 1 || t->year > 9999 || t->month < 1 || t->month > 12 || t->day < 1 ||
        t->day > 31 || t->hour < 0 || t->hour > 23 || t->minute < 0 || t->minute > 59 ||
        t->second < 0 || t->second > 60 || t->usec < 0 || t->usec > 999999 ||
        (t->has_tz && (t->tz_offset_min < -14 * 60 || t->tz_offset_min > 14 * 60)))
        return CMS_EINVAL;
    if (!out || cap == 0)
        return CMS_ELIMIT;
    /* Fixed widths of validated fields, written digit by digit: this runs for every
     * stored observation (snprintf here was a visible share of cmsd's CPU). */
    n = t->has_tz ? 32 : 26; /* "YYYY-MM-DD HH:MM:SS.uuuuuu" [+"+HH:MM"] */
    if ((size_t)n >= cap) {
        out[0] = '\0';
        return CMS_ELIMIT;
    }
    char *o = out;
    o = put_digits(o, t->year, 4);
    *o++ = '-';
    o = put_digits(o, t->month, 2);
    *o++ = '-';
    o = put_digits(o, t->day, 2);
    *o++ = ' ';
    o = put_digits(o, t->hour, 2);
    *o++ = ':';
    o = put_digits(o, t->minute, 2);
    *o++ = ':';
    o = put_digits(o, t->second, 2);
    *o++ = '.';
    o = put_digits(o, t->usec, 6);
    if (t->has_tz) {
        int off = t->tz_offset_min < 0 ? -t->tz_offset_min : t->tz_offset_min;
        *o++ = t->tz_offset_min < 0 ? '-' : '+';
        o = put_digits(o, off / 60, 2);
        *o++ = ':';
        o = put_digits(o, off % 60, 2);
    }
    *o = '\0';
    return n;
}

/* ------------------------------------------------------------------- ACK */

typedef struct hl7__wbuf {
    char *out;
    size_t cap, len;
    int err;
} hl7__wbuf;

static void hl7__put(hl7__wbuf *w, const char *s)
{
    size_t n = strlen(s);

    if (w->err)
        return;
    if (n >= w->cap - w->len) { /* keep room for the NUL */
        w->err = CMS_ELIMIT;
        return;
    }
    memcpy(w->out + w->len, s, n);
    w->len += n;
    w->out[w->len] = '\0';
}

static void hl7__put_esc(hl7__wbuf *w, const char *s)
{
    int n;

    if (w->err)
        return;
    n = hl7_escape(&hl7__std_delims, s ? s : "", w->out + w->len, w->cap - w->len);
    if (n < 0) {
        w->err = n;
        return;
    }
    w->len += (size_t)n;
}

static const char *hl7__err_text(const char *code)
{
    static const struct {
        const char *code, *text;
    } tab[] = {
        {"0", "Message accepted"},
        {"100", "Segment sequence error"},
        {"101", "Required field missing"},
        {"102", "Data type error"},
        {"103", "Table value not found"},
        {"200", "Unsupported message type"},
        {"201", "Unsupported event code"},
        {"202", "Unsupported processing id"},
        {"203", "Unsupported version id"},
        {"204", "Unknown key identifier"},
        {"205", "Duplicate key identifier"},
        {"206", "Application record locked"},
        {"207", "Application internal error"},
    };
    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++) {
        if (strcmp(code, tab[i].code) == 0)
            return tab[i].text;
    }
    return "";
}

static const char *hl7__nz(const char *s)
{
    return s ? s : "";
}

/*
 * Layout (v2.5+ ERR):
 *   MSH|^~\&|our_app|our_fac|their_app|their_fac|ts||ACK^trg^ACK|ack_id|P|ver<CR>
 *   MSA|code|control_id[|reason]<CR>
 *   ERR|||err_code^err_text^HL70357|E||||reason<CR>        (AE/AR only)
 * The output is NUL-terminated; the NUL must fit in cap.
 */
int hl7_ack_encode(const hl7_ack *a, char *out, size_t cap)
{
    hl7__wbuf w = {out, cap, 0, 0};
    const char *code;
    const char *version;
    const char *reason;
    const char *err_code;

    if (!a || !out || cap == 0)
        return CMS_ELIMIT;
    out[0] = '\0';
    switch (a->code) {
    case HL7_AA:
        code = "AA";
        break;
    case HL7_AE:
        code = "AE";
        break;
    case HL7_AR:
        code = "AR";
        break;
    default:
        return CMS_EINVAL;
    }
    version = a->version && a->version[0] ? a->version : "2.6";
    reason = hl7__nz(a->reason);
    err_code = a->err_code && a->err_code[0] ? a->err_code : "207";

    hl7__put(&w, "MSH|^~\\&|");
    hl7__put_esc(&w, a->our_app);
    hl7__put(&w, "|");
    hl7__put_esc(&w, a->our_facility);
    hl7__put(&w, "|");
    hl7__put_esc(&w, a->their_app);
    hl7__put(&w, "|");
    hl7__put_esc(&w, a->their_facility);
    hl7__put(&w, "|");
    hl7__put_esc(&w, a->timestamp);
    hl7__put(&w, "||ACK");
    if (a->trigger && a->trigger[0]) {
        hl7__put(&w, "^");
        hl7__put_esc(&w, a->trigger);
        hl7__put(&w, "^ACK");
    }
    hl7__put(&w, "|");
    hl7__put_esc(&w, a->ack_control_id);
    hl7__put(&w, "|P|");
    hl7__put_esc(&w, version);
    hl7__put(&w, "\rMSA|");
    hl7__put(&w, code);
    hl7__put(&w, "|");
    hl7__put_esc(&w, a->control_id);
    if (a->code != HL7_AA) {
        if (reason[0]) {
            hl7__put(&w, "|");
            hl7__put_esc(&w, reason);
        }
        hl7__put(&w, "\rERR|||");
        hl7__put_esc(&w, err_code);
        hl7__put(&w, "^");
        hl7__put_esc(&w, hl7__err_text(err_code));
        hl7__put(&w, "^HL70357|E");
        if (reason[0]) {
            hl7__put(&w, "||||");
            hl7__put_esc(&w, reason);
        }
    }
    hl7__put(&w, "\r");

    if (w.err) {
        out[0] = '\0';
        return w.err;
    }
    if (w.len > INT_MAX)
        return CMS_ELIMIT;
    return (int)w.len;
}
