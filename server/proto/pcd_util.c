/*
 * pcd_util.c - what the IHE PCD extractors share (see pcd_int.h): the error
 * context, unescaped copies into fixed slots, times, numbers, the message
 * header and the patient context.
 *
 * Every text field is unescaped into its fixed-size slot; a value that does
 * not fit is an error (CMS_ELIMIT), never a silent truncation, because a
 * truncated identifier would be stored as a different identifier.
 */
#include "pcd_int.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cms_err.h"

static int pcd__vfail(pcd__ctx *x, int rc, enum hl7_ack_code ack, const char *code, const char *fmt,
                      va_list ap) __attribute__((format(printf, 5, 0)));

static int pcd__vfail(pcd__ctx *x, int rc, enum hl7_ack_code ack, const char *code, const char *fmt,
                      va_list ap)
{
    if (x->failed)
        return rc;
    x->failed = 1;
    x->ack = ack;
    if (x->err_code)
        *x->err_code = code;
    if (x->reason && x->cap > 0)
        vsnprintf(x->reason, x->cap, fmt, ap);
    return rc;
}

int pcd__fail(pcd__ctx *x, int rc, const char *code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    rc = pcd__vfail(x, rc, HL7_AR, code, fmt, ap);
    va_end(ap);
    return rc;
}

int pcd__fail_ae(pcd__ctx *x, int rc, const char *code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    rc = pcd__vfail(x, rc, HL7_AE, code, fmt, ap);
    va_end(ap);
    return rc;
}

hl7_str pcd__trim(hl7_str s)
{
    if (!s.p)
        return s;
    while (s.len > 0 && (s.p[0] == ' ' || s.p[0] == '\t')) {
        s.p++;
        s.len--;
    }
    while (s.len > 0 && (s.p[s.len - 1] == ' ' || s.p[s.len - 1] == '\t'))
        s.len--;
    return s;
}

int pcd__copy(pcd__ctx *x, hl7_str s, char *out, size_t cap, size_t seg, const char *what)
{
    int n = hl7_unescape(x->m, pcd__trim(s), out, cap);

    if (n < 0)
        out[0] = '\0'; /* never leave a truncated value behind */
    if (n == CMS_ELIMIT)
        return pcd__fail(x, CMS_ELIMIT, "102", "segment %zu: %s is longer than %zu bytes", seg + 1,
                         what, cap - 1);
    if (n < 0)
        return pcd__fail(x, CMS_EPROTO, "102", "segment %zu: %s has a malformed escape sequence",
                         seg + 1, what);
    return CMS_OK;
}

/* Drops an incomplete UTF-8 sequence from the end of out (len bytes). */
static size_t utf8_cut(char *out, size_t len)
{
    size_t i = len, need;
    unsigned char lead;

    while (i > 0 && ((unsigned char)out[i - 1] & 0xC0) == 0x80 && len - i < 3)
        i--;
    if (i == 0)
        return len;
    lead = (unsigned char)out[i - 1];
    if (lead < 0x80)
        return len; /* ASCII last: any continuation bytes after it are not ours to fix */
    need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    if (len - (i - 1) < need) {
        out[i - 1] = '\0';
        return i - 1;
    }
    return len;
}

int pcd__copy_text(pcd__ctx *x, hl7_str s, char *out, size_t cap, size_t seg, const char *what,
                   int *truncated)
{
    int n = hl7_unescape(x->m, pcd__trim(s), out, cap);

    if (n == CMS_ELIMIT) {
        (void)utf8_cut(out, strlen(out));
        *truncated = 1;
        return CMS_OK;
    }
    if (n < 0) {
        out[0] = '\0';
        return pcd__fail(x, CMS_EPROTO, "102", "segment %zu: %s has a malformed escape sequence",
                         seg + 1, what);
    }
    return CMS_OK;
}

int pcd__get(pcd__ctx *x, size_t seg, unsigned f, unsigned r, unsigned c, unsigned s, char *out,
             size_t cap, const char *what)
{
    return pcd__copy(x, hl7_get(x->m, seg, f, r, c, s), out, cap, seg, what);
}

int pcd__fget(pcd__ctx *x, const hl7_fields *fs, unsigned f, unsigned r, unsigned c, char *out,
              size_t cap, const char *what)
{
    return pcd__copy(x, hl7_fields_get(fs, f, r, c, 0), out, cap, fs->seg, what);
}

int pcd__joined(pcd__ctx *x, size_t seg, hl7_str field, char *out, size_t cap, const char *what,
                int *truncated)
{
    const char *rsep = field.p ? memchr(field.p, x->m->d.rep, field.len) : NULL;
    hl7_str rep = {field.p, rsep ? (size_t)(rsep - field.p) : field.len};
    const char *p = rep.p, *end;
    size_t o = 0, keep = 0;

    out[0] = '\0';
    if (!p)
        return CMS_OK;
    end = p + rep.len;
    for (;;) {
        const char *q = memchr(p, x->m->d.comp, (size_t)(end - p));
        hl7_str comp = {p, q ? (size_t)(q - p) : (size_t)(end - p)};
        int n;

        if (p != rep.p) {
            if (o + 1 >= cap)
                goto toolong;
            out[o++] = '^';
            out[o] = '\0';
        }
        n = hl7_unescape(x->m, comp, out + o, cap - o);
        if (n == CMS_ELIMIT)
            goto toolong;
        if (n < 0) {
            out[0] = '\0';
            return pcd__fail(x, CMS_EPROTO, "102",
                             "segment %zu: %s has a malformed escape sequence", seg + 1, what);
        }
        o += (size_t)n;
        if (n > 0)
            keep = o;
        if (!q)
            break;
        p = q + 1;
    }
    out[keep] = '\0';
    return CMS_OK;

toolong:
    if (truncated) {
        out[cap - 1] = '\0'; /* hl7_unescape left what fitted, NUL-terminated */
        (void)utf8_cut(out, strlen(out));
        *truncated = 1;
        return CMS_OK;
    }
    out[0] = '\0';
    return pcd__fail(x, CMS_ELIMIT, "102", "segment %zu: %s is longer than %zu bytes", seg + 1,
                     what, cap - 1);
}

int pcd__time(pcd__ctx *x, hl7_str s, char *out, size_t cap, size_t seg, const char *what)
{
    hl7_time t;

    out[0] = '\0';
    s = pcd__trim(s);
    if (s.len == 0)
        return CMS_OK;
    if (hl7_time_parse(s, &t) < 0 || hl7_time_format(&t, out, cap) < 0) {
        out[0] = '\0';
        return pcd__fail(x, CMS_EPROTO, "102", "segment %zu: %s is not a valid HL7 date/time",
                         seg + 1, what);
    }
    return CMS_OK;
}

int pcd__number(const char *s, double *out)
{
    const char *p = s;
    size_t int_digits = 0, frac_digits = 0;
    char *end = NULL;
    double v;

    if (*p == '+' || *p == '-')
        p++;
    while (*p >= '0' && *p <= '9') {
        p++;
        int_digits++;
    }
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') {
            p++;
            frac_digits++;
        }
    }
    if (*p != '\0' || int_digits + frac_digits == 0)
        return CMS_EPROTO;
    v = strtod(s, &end);
    if (!end || *end != '\0' || !isfinite(v))
        return CMS_EPROTO;
    *out = v;
    return CMS_OK;
}

int pcd__uint(hl7_str s, unsigned *out)
{
    unsigned long v = 0;

    s = pcd__trim(s);
    for (size_t i = 0; i < s.len; i++) {
        if (s.p[i] < '0' || s.p[i] > '9')
            return CMS_EPROTO;
        v = v * 10 + (unsigned long)(s.p[i] - '0');
        if (v > 0xFFFFFFFFul)
            return CMS_EPROTO;
    }
    *out = (unsigned)v;
    return CMS_OK;
}

static void pcd__keep(int *first, int rc)
{
    if (*first == CMS_OK)
        *first = rc;
}

int pcd__header(pcd__ctx *x, pcd01_msg *out)
{
    int rc;

    out->vitals.control_id[0] = '\0';
    for (size_t i = 0; i < 3; i++)
        out->sending_app[i][0] = '\0';
    out->sending_facility[0] = '\0';
    out->msg_type[0] = '\0';
    out->trigger[0] = '\0';
    out->version[0] = '\0';
    out->vitals.msg_time[0] = '\0';
    out->vitals.patient_id[0] = '\0';
    out->vitals.patient_authority[0] = '\0';
    out->vitals.location[0] = '\0';
    out->obr_time[0] = '\0';
    out->vitals.nobs = 0;
    out->skipped_obx = 0;
    out->ntexts = 0;

    if (x->m->nseg == 0 || hl7_find_segment(x->m, "MSH", 0) != 0)
        return pcd__fail(x, CMS_EPROTO, "100", "the message does not start with MSH");

    /* Best effort: every field is tried so that an AR can echo what could
     * be read; the first failure is returned. */
    rc = pcd__get(x, 0, 10, 0, 0, 0, out->vitals.control_id, sizeof(out->vitals.control_id),
                  "MSH-10");
    for (unsigned c = 1; c <= 3; c++)
        pcd__keep(&rc, pcd__get(x, 0, 3, 1, c, 0, out->sending_app[c - 1],
                                sizeof(out->sending_app[0]), "MSH-3"));
    pcd__keep(&rc, pcd__get(x, 0, 4, 1, 1, 0, out->sending_facility, sizeof(out->sending_facility),
                            "MSH-4"));
    pcd__keep(&rc, pcd__get(x, 0, 9, 1, 1, 0, out->msg_type, sizeof(out->msg_type), "MSH-9.1"));
    pcd__keep(&rc, pcd__get(x, 0, 9, 1, 2, 0, out->trigger, sizeof(out->trigger), "MSH-9.2"));
    pcd__keep(&rc, pcd__get(x, 0, 12, 1, 1, 0, out->version, sizeof(out->version), "MSH-12"));
    return rc;
}

int pcd__check_header(pcd__ctx *x, pcd01_msg *out, const char *type, const char *trigger)
{
    if (out->vitals.control_id[0] == '\0')
        return pcd__fail(x, CMS_EPROTO, "101", "MSH-10 (message control id) is missing");
    if (strcmp(out->msg_type, type) != 0 || strcmp(out->trigger, trigger) != 0)
        return pcd__fail(x, CMS_EINVAL, "200", "only ORU^R01 and ORU^R40 are accepted");
    if (strncmp(out->version, "2.", 2) != 0 || out->version[2] < '0' || out->version[2] > '9')
        return pcd__fail(x, CMS_EINVAL, "203", "unsupported HL7 version (2.x required)");
    return pcd__time(x, hl7_get(x->m, 0, 7, 1, 1, 0), out->vitals.msg_time,
                     sizeof(out->vitals.msg_time), 0, "MSH-7");
}

int pcd__pid(pcd__ctx *x, size_t seg, pcd01_msg *out)
{
    int rc = pcd__get(x, seg, 3, 1, 1, 0, out->vitals.patient_id, sizeof(out->vitals.patient_id),
                      "PID-3.1");

    if (rc == CMS_OK)
        rc = pcd__get(x, seg, 3, 1, 4, 1, out->vitals.patient_authority,
                      sizeof(out->vitals.patient_authority), "PID-3.4");
    return rc;
}

int pcd__pv1(pcd__ctx *x, size_t seg, pcd01_msg *out)
{
    return pcd__joined(x, seg, hl7_get(x->m, seg, 3, 0, 0, 0), out->vitals.location,
                       sizeof(out->vitals.location), "PV1-3", NULL);
}

int pcd__equipment(pcd__ctx *x, const hl7_fields *fs, char *out, size_t cap)
{
    size_t seg = fs->seg;
    hl7_str f = hl7_fields_get(fs, 18, 0, 0, 0);
    const char *p = f.p, *end;

    out[0] = '\0';
    if (!p)
        return CMS_OK;
    end = p + f.len;
    for (;;) {
        const char *q = memchr(p, x->m->d.rep, (size_t)(end - p));
        hl7_str rep = {p, q ? (size_t)(q - p) : (size_t)(end - p)};
        const char *c = memchr(rep.p, x->m->d.comp, rep.len);
        hl7_str c1 = {rep.p, c ? (size_t)(c - rep.p) : rep.len};
        const char *sc = memchr(c1.p, x->m->d.sub, c1.len);

        if (sc)
            c1.len = (size_t)(sc - c1.p);
        c1 = pcd__trim(c1);
        if (c1.len > 0)
            return pcd__copy(x, c1, out, cap, seg, "OBX-18");
        if (!q)
            return CMS_OK;
        p = q + 1;
    }
}

int pcd__is(hl7_str name, const char *lit)
{
    size_t n = strlen(lit);

    return name.len == n && (n == 0 || memcmp(name.p, lit, n) == 0);
}

unsigned pcd__facet_no(const char *sub_id)
{
    size_t dots = 0;
    const char *last = sub_id;
    unsigned long v = 0;

    for (const char *p = sub_id; *p; p++)
        if (*p == '.') {
            dots++;
            last = p + 1;
        }
    if (dots < 4 || *last == '\0')
        return 0;
    for (const char *p = last; *p; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        v = v * 10 + (unsigned long)(*p - '0');
        if (v > 1000)
            return 0;
    }
    return (unsigned)v;
}

int pcd__is_facet_of(const char *sub_id, const char *parent)
{
    size_t n = strlen(parent);
    const char *p;

    if (n == 0 || strncmp(sub_id, parent, n) != 0 || sub_id[n] != '.')
        return 0;
    p = sub_id + n + 1;
    if (*p == '\0')
        return 0;
    for (; *p; p++)
        if (*p < '0' || *p > '9')
            return 0;
    return 1;
}

int pcd__facet(pcd__ctx *x, const hl7_fields *fs, unsigned set_id, pcd01_facet *f)
{
    int rc;

    f->set_id = set_id;
    if ((rc = pcd__fget(x, fs, 2, 1, 1, f->value_type, sizeof(f->value_type), "OBX-2")) ||
        (rc = pcd__fget(x, fs, 3, 1, 1, f->code, sizeof(f->code), "OBX-3.1")) ||
        (rc = pcd__fget(x, fs, 3, 1, 2, f->label, sizeof(f->label), "OBX-3.2")) ||
        (rc = pcd__fget(x, fs, 4, 0, 0, f->sub_id, sizeof(f->sub_id), "OBX-4")) ||
        (rc = pcd__joined(x, fs->seg, hl7_fields_get(fs, 5, 0, 0, 0), f->value, sizeof(f->value),
                          "OBX-5", &f->truncated)) ||
        (rc = pcd__fget(x, fs, 6, 1, 1, f->unit_code, sizeof(f->unit_code), "OBX-6.1")) ||
        (rc = pcd__fget(x, fs, 6, 1, 2, f->unit_label, sizeof(f->unit_label), "OBX-6.2")))
        return rc;
    return CMS_OK;
}
