/*
 * pcd01.c - IHE PCD-01 ORU^R01 content extraction (see pcd01.h for the
 * field mapping).
 *
 * Every text field is unescaped into its fixed-size slot; a value that does
 * not fit is an error (CMS_ELIMIT), never a silent truncation, because a
 * truncated identifier would be stored as a different identifier. Reasons
 * never quote field values: they end up in ACKs and logs, and OBX values are
 * patient data.
 */
#include "pcd01.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cms_err.h"

/* Error context threaded through the helpers. */
typedef struct pcd01__ctx {
    const hl7_msg *m;
    const char **err_code;
    char *reason;
    size_t cap;
    int failed; /* the first failure's code and reason are kept */
} pcd01__ctx;

static int pcd01__fail(pcd01__ctx *x, int rc, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int pcd01__fail(pcd01__ctx *x, int rc, const char *code, const char *fmt, ...)
{
    va_list ap;

    if (x->failed)
        return rc;
    x->failed = 1;
    if (x->err_code)
        *x->err_code = code;
    if (x->reason && x->cap > 0) {
        va_start(ap, fmt);
        vsnprintf(x->reason, x->cap, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static hl7_str pcd01__trim(hl7_str s)
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

/*
 * Unescapes a trimmed slice into out. Returns CMS_OK, or CMS_ELIMIT/CMS_EPROTO
 * with the error recorded (what names the field, e.g. "MSH-10").
 */
static int pcd01__copy(pcd01__ctx *x, hl7_str s, char *out, size_t cap, size_t seg,
                       const char *what)
{
    int n = hl7_unescape(x->m, pcd01__trim(s), out, cap);

    if (n < 0)
        out[0] = '\0'; /* never leave a truncated value behind */
    if (n == CMS_ELIMIT)
        return pcd01__fail(x, CMS_ELIMIT, "102", "segment %zu: %s is longer than %zu bytes",
                           seg + 1, what, cap - 1);
    if (n < 0)
        return pcd01__fail(x, CMS_EPROTO, "102", "segment %zu: %s has a malformed escape sequence",
                           seg + 1, what);
    return CMS_OK;
}

static int pcd01__get(pcd01__ctx *x, size_t seg, unsigned f, unsigned r, unsigned c, unsigned s,
                      char *out, size_t cap, const char *what)
{
    return pcd01__copy(x, hl7_get(x->m, seg, f, r, c, s), out, cap, seg, what);
}

/* pcd01__get from a segment split once (OBX: a dozen fields read per row). */
static int pcd01__fget(pcd01__ctx *x, const hl7_fields *fs, unsigned f, unsigned r, unsigned c,
                       char *out, size_t cap, const char *what)
{
    return pcd01__copy(x, hl7_fields_get(fs, f, r, c, 0), out, cap, fs->seg, what);
}

/* Parses a DTM slice into out (hl7_time_format); "" stays "". */
static int pcd01__time(pcd01__ctx *x, hl7_str s, char *out, size_t cap, size_t seg,
                       const char *what)
{
    hl7_time t;

    out[0] = '\0';
    s = pcd01__trim(s);
    if (s.len == 0)
        return CMS_OK;
    if (hl7_time_parse(s, &t) < 0 || hl7_time_format(&t, out, cap) < 0) {
        out[0] = '\0';
        return pcd01__fail(x, CMS_EPROTO, "102", "segment %zu: %s is not a valid HL7 date/time",
                           seg + 1, what);
    }
    return CMS_OK;
}

/*
 * HL7 NM: optional sign, digits, optional decimal point and digits; no
 * exponent, no hex, no inf/nan (strtod would accept all of those).
 */
static int pcd01__number(const char *s, double *out)
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

/* HL7 SI: a non-negative integer; "" is 0. */
static int pcd01__uint(hl7_str s, unsigned *out)
{
    unsigned long v = 0;

    s = pcd01__trim(s);
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

static void pcd01__keep(int *first, int rc)
{
    if (*first == CMS_OK)
        *first = rc;
}

static int pcd01__header(pcd01__ctx *x, pcd01_msg *out)
{
    int rc;

    out->control_id[0] = '\0';
    for (size_t i = 0; i < 3; i++)
        out->sending_app[i][0] = '\0';
    out->sending_facility[0] = '\0';
    out->msg_type[0] = '\0';
    out->trigger[0] = '\0';
    out->version[0] = '\0';
    out->msg_time[0] = '\0';
    out->patient_id[0] = '\0';
    out->patient_authority[0] = '\0';
    out->location[0] = '\0';
    out->obr_time[0] = '\0';
    out->nobs = 0;
    out->skipped_obx = 0;

    if (x->m->nseg == 0 || hl7_find_segment(x->m, "MSH", 0) != 0)
        return pcd01__fail(x, CMS_EPROTO, "100", "the message does not start with MSH");

    /* Best effort: every field is tried so that an AR can echo what could
     * be read; the first failure is returned. */
    rc = pcd01__get(x, 0, 10, 0, 0, 0, out->control_id, sizeof(out->control_id), "MSH-10");
    for (unsigned c = 1; c <= 3; c++)
        pcd01__keep(&rc, pcd01__get(x, 0, 3, 1, c, 0, out->sending_app[c - 1],
                                    sizeof(out->sending_app[0]), "MSH-3"));
    pcd01__keep(&rc, pcd01__get(x, 0, 4, 1, 1, 0, out->sending_facility,
                                sizeof(out->sending_facility), "MSH-4"));
    pcd01__keep(&rc, pcd01__get(x, 0, 9, 1, 1, 0, out->msg_type, sizeof(out->msg_type), "MSH-9.1"));
    pcd01__keep(&rc, pcd01__get(x, 0, 9, 1, 2, 0, out->trigger, sizeof(out->trigger), "MSH-9.2"));
    pcd01__keep(&rc, pcd01__get(x, 0, 12, 1, 1, 0, out->version, sizeof(out->version), "MSH-12"));
    return rc;
}

int pcd01_read_header(const hl7_msg *m, pcd01_msg *out)
{
    pcd01__ctx x = {m, NULL, NULL, 0, 0};

    return pcd01__header(&x, out) == CMS_OK ? CMS_OK : CMS_EPROTO;
}

/* PV1-3 (PL): components of the first repetition, unescaped, joined with
 * '^', trailing empty components dropped. Linear in the field length. */
static int pcd01__location(pcd01__ctx *x, size_t seg, char *out, size_t cap)
{
    hl7_str rep = hl7_get(x->m, seg, 3, 1, 0, 0);
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

        if (o > 0 || p != rep.p) {
            if (o + 1 >= cap)
                goto toolong;
            out[o++] = '^';
            out[o] = '\0';
        }
        n = hl7_unescape(x->m, comp, out + o, cap - o);
        if (n == CMS_ELIMIT)
            goto toolong;
        if (n < 0)
            return pcd01__fail(x, CMS_EPROTO, "102",
                               "segment %zu: PV1-3 has a malformed escape sequence", seg + 1);
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
    out[0] = '\0';
    return pcd01__fail(x, CMS_ELIMIT, "102", "segment %zu: PV1-3 is longer than %zu bytes", seg + 1,
                       cap - 1);
}

/* OBX-18: component 1 of the first repetition that has one. */
static int pcd01__equipment(pcd01__ctx *x, const hl7_fields *fs, char *out, size_t cap)
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
        int rc;

        if (sc)
            c1.len = (size_t)(sc - c1.p);
        c1 = pcd01__trim(c1);
        if (c1.len > 0) {
            rc = pcd01__copy(x, c1, out, cap, seg, "OBX-18");
            return rc;
        }
        if (!q)
            return CMS_OK;
        p = q + 1;
    }
}

static int pcd01__obx(pcd01__ctx *x, size_t seg, pcd01_msg *out, const char *fallback_time)
{
    char vtype[8];
    pcd01_obs *o;
    hl7_str value;
    hl7_fields fs;
    int rc;

    hl7_split(x->m, seg, &fs);
    if ((rc = pcd01__fget(x, &fs, 2, 1, 1, vtype, sizeof(vtype), "OBX-2")))
        return rc;
    value = pcd01__trim(hl7_fields_get(&fs, 5, 0, 0, 0));
    if (strcmp(vtype, "NM") != 0 || value.len == 0) {
        /* Device hierarchy rows (empty type), other value types, and NM
         * rows without a value (e.g. status X): nothing to store. */
        out->skipped_obx++;
        return CMS_OK;
    }
    if (out->nobs >= PCD01_MAX_OBS)
        return pcd01__fail(x, CMS_ELIMIT, "207", "more than %d numeric observations",
                           PCD01_MAX_OBS);

    o = &out->obs[out->nobs];
    memset(o, 0, sizeof(*o));
    if (pcd01__uint(hl7_fields_get(&fs, 1, 0, 0, 0), &o->set_id) < 0)
        return pcd01__fail(x, CMS_EPROTO, "102", "segment %zu: OBX-1 is not a set id", seg + 1);
    if ((rc = pcd01__fget(x, &fs, 3, 1, 1, o->code, sizeof(o->code), "OBX-3.1")) ||
        (rc = pcd01__fget(x, &fs, 3, 1, 2, o->label, sizeof(o->label), "OBX-3.2")) ||
        (rc = pcd01__fget(x, &fs, 3, 1, 3, o->coding_system, sizeof(o->coding_system),
                          "OBX-3.3")) ||
        (rc = pcd01__fget(x, &fs, 4, 0, 0, o->sub_id, sizeof(o->sub_id), "OBX-4")) ||
        (rc = pcd01__copy(x, value, o->value_text, sizeof(o->value_text), seg, "OBX-5")) ||
        (rc = pcd01__fget(x, &fs, 6, 1, 1, o->unit_code, sizeof(o->unit_code), "OBX-6.1")) ||
        (rc = pcd01__fget(x, &fs, 6, 1, 2, o->unit_label, sizeof(o->unit_label), "OBX-6.2")) ||
        (rc = pcd01__fget(x, &fs, 11, 1, 1, o->status, sizeof(o->status), "OBX-11")) ||
        (rc = pcd01__time(x, hl7_fields_get(&fs, 14, 1, 1, 0), o->observed_at,
                          sizeof(o->observed_at), seg, "OBX-14")) ||
        (rc = pcd01__equipment(x, &fs, o->equipment_id, sizeof(o->equipment_id))))
        return rc;
    if (o->code[0] == '\0')
        return pcd01__fail(x, CMS_EPROTO, "101", "segment %zu: OBX-3 (observation id) is missing",
                           seg + 1);
    if (pcd01__number(o->value_text, &o->value) < 0)
        return pcd01__fail(x, CMS_EPROTO, "102",
                           "segment %zu: OBX-5 of an NM observation is not a finite number",
                           seg + 1);
    if (o->observed_at[0] == '\0')
        memcpy(o->observed_at, fallback_time, strlen(fallback_time) + 1);
    out->nobs++;
    return CMS_OK;
}

int pcd01_extract(const hl7_msg *m, pcd01_msg *out, const char **err_code, char *reason, size_t cap)
{
    pcd01__ctx x = {m, err_code, reason, cap, 0};
    const char *obr_time = "";
    int rc, seen_pid = 0, seen_pv1 = 0, seen_obr = 0;
    char cur_obr_time[PCD01_TIME_LEN];

    if (err_code)
        *err_code = "0";
    if (reason && cap > 0)
        reason[0] = '\0';

    rc = pcd01__header(&x, out);
    if (rc < 0)
        goto done;
    if (out->control_id[0] == '\0') {
        rc = pcd01__fail(&x, CMS_EPROTO, "101", "MSH-10 (message control id) is missing");
        goto done;
    }
    if (strcmp(out->msg_type, "ORU") != 0 || strcmp(out->trigger, "R01") != 0) {
        rc = pcd01__fail(&x, CMS_EINVAL, "200", "only ORU^R01 is accepted");
        goto done;
    }
    if (strncmp(out->version, "2.", 2) != 0 || out->version[2] < '0' || out->version[2] > '9') {
        rc = pcd01__fail(&x, CMS_EINVAL, "203", "unsupported HL7 version (2.x required)");
        goto done;
    }
    rc = pcd01__time(&x, hl7_get(m, 0, 7, 1, 1, 0), out->msg_time, sizeof(out->msg_time), 0,
                     "MSH-7");
    if (rc < 0)
        goto done;

    cur_obr_time[0] = '\0';
    for (size_t i = 1; i < m->nseg; i++) {
        hl7_str name = hl7_segment_name(m, i);

        if (name.len != 3)
            continue;
        if (memcmp(name.p, "PID", 3) == 0 && !seen_pid) {
            seen_pid = 1;
            rc = pcd01__get(&x, i, 3, 1, 1, 0, out->patient_id, sizeof(out->patient_id), "PID-3.1");
            if (rc == 0)
                rc = pcd01__get(&x, i, 3, 1, 4, 1, out->patient_authority,
                                sizeof(out->patient_authority), "PID-3.4");
        } else if (memcmp(name.p, "PV1", 3) == 0 && !seen_pv1) {
            seen_pv1 = 1;
            rc = pcd01__location(&x, i, out->location, sizeof(out->location));
        } else if (memcmp(name.p, "OBR", 3) == 0) {
            /* OBX rows fall back to the time of the OBR they follow. */
            rc = pcd01__time(&x, hl7_get(m, i, 7, 1, 1, 0), cur_obr_time, sizeof(cur_obr_time), i,
                             "OBR-7");
            if (rc == 0 && !seen_obr)
                memcpy(out->obr_time, cur_obr_time, sizeof(cur_obr_time));
            seen_obr = 1;
        } else if (memcmp(name.p, "OBX", 3) == 0) {
            obr_time = cur_obr_time[0] ? cur_obr_time : out->msg_time;
            rc = pcd01__obx(&x, i, out, obr_time);
        }
        if (rc < 0)
            goto done;
    }
    rc = CMS_OK;

done:
    return rc;
}
