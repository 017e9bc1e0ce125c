/*
 * hl7.c - HL7 v2 ER7 parsing (indexing, no copies, no allocation) and
 * field access. Escapes are hl7_escape.c, DTM times hl7_time.c, ACK
 * encoding hl7_ack.c; hl7_int.h holds what they share.
 *
 * hl7_parse() validates the envelope once (MSH first, legal delimiters, no
 * control characters, well-formed segment names) and records one slice per
 * segment. Accessors then split lazily: each hl7_get() is a linear scan of
 * one segment, so the cost of reading a message is proportional to its size
 * times the number of fields the caller asks for, never quadratic in the
 * attacker's input.
 */
#include "hl7.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cms_err.h"
#include "hl7_int.h"

static const hl7_str hl7__empty = {NULL, 0};
const hl7_delims hl7__std_delims = {'|', '^', '~', '\\', '&'};

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
