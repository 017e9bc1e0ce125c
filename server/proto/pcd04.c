/*
 * pcd04.c - IHE PCD-04 ORU^R40 alarm extraction (see pcd04.h for the
 * mapping; shared helpers in pcd_util.c).
 *
 * One pass over the segments: PID and PV1 as for ORU^R01, every OBR opens
 * an alarm, every OBX is classified into one facet of the current alarm.
 * The alarm is checked when the next OBR (or the end) closes it: an alarm
 * identifier, a known phase and an alarm type are required.
 */
#include "pcd04.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "cms_err.h"
#include "pcd_int.h"

enum facet {
    F_NONE = 0,
    F_TYPE = 1,
    F_SOURCE = 2,
    F_PHASE = 3,
    F_STATE = 4,
    F_INACT = 5,
    F_PRIO = 6,
    F_KIND = 7,
    F_TEXT = 100,
};

static const struct {
    const char *name;
    enum facet facet;
} facet_names[] = {
    {"MDC_EVT_ALARM", F_TYPE},
    {"MDC_ATTR_ALERT_SOURCE", F_SOURCE},
    {"MDC_ATTR_EVENT_PHASE", F_PHASE},
    {"MDC_ATTR_ALARM_STATE", F_STATE},
    {"MDC_ATTR_ALARM_INACTIVATION_STATE", F_INACT},
    {"MDC_ATTR_ALARM_PRIORITY", F_PRIO},
    {"MDC_ATTR_ALERT_TYPE", F_KIND},
    {"MDC_ATTR_ALERT_TEXT", F_TEXT},
};

/* The two numeric sets seen in the field for the same attributes. */
static const struct {
    const char *code;
    enum facet facet;
} facet_codes[] = {
    {"196616", F_TYPE}, {"68480", F_SOURCE}, {"68481", F_PHASE}, {"68482", F_STATE},
    {"68483", F_INACT}, {"68484", F_PRIO},   {"68485", F_KIND},  {"68165", F_PHASE},
    {"68166", F_STATE}, {"68167", F_INACT},  {"68168", F_PRIO},
};

static enum facet classify(const char *code, const char *label, const char *sub_id)
{
    unsigned n;

    for (size_t i = 0; i < sizeof(facet_names) / sizeof(facet_names[0]); i++)
        if (strcmp(label, facet_names[i].name) == 0)
            return facet_names[i].facet;
    if (strncmp(label, "MDC", 3) != 0)
        for (size_t i = 0; i < sizeof(facet_codes) / sizeof(facet_codes[0]); i++)
            if (strcmp(code, facet_codes[i].code) == 0)
                return facet_codes[i].facet;
    n = pcd__facet_no(sub_id);
    return n >= F_TYPE && n <= F_KIND ? (enum facet)n : F_NONE;
}

/* Lower-case copy with '_' as '-' (phases and states come in both). */
static void norm(const char *in, char *out, size_t cap)
{
    size_t i = 0;

    for (; in[i] && i + 1 < cap; i++)
        out[i] = in[i] == '_' ? '-' : (char)tolower((unsigned char)in[i]);
    out[i] = '\0';
}

static int one_of(const char *v, const char *const *set, char *out, size_t cap)
{
    for (size_t i = 0; set[i]; i++)
        if (strcmp(v, set[i]) == 0) {
            size_t n = strlen(set[i]);
            if (n >= cap)
                return 0;
            memcpy(out, set[i], n + 1);
            return 1;
        }
    return 0;
}

static const char *const phases[] = {"start",       "start-only", "continue", "update", "escalate",
                                     "de-escalate", "inactivate", "reset",    "end",    NULL};
static const char *const states[] = {"off", "inactive", "active", "latched", NULL};
static const char *const inacts[] = {"enabled",   "audio-paused",       "audio-off", "alarm-paused",
                                     "alarm-off", "alert-acknowledged", NULL};

/* PH/PM/PL/PN and SP/ST/SA, from a facet value or an OBX-8 repetition. */
static int priority_of(const char *v, char *out, size_t cap)
{
    static const char *const prios[] = {"PH", "PM", "PL", "PN", NULL};
    char up[4];
    size_t n = strlen(v);

    if (n != 2)
        return 0;
    up[0] = (char)toupper((unsigned char)v[0]);
    up[1] = (char)toupper((unsigned char)v[1]);
    up[2] = '\0';
    return one_of(up, prios, out, cap);
}

static int kind_of(const char *v, char *out, size_t cap)
{
    static const struct {
        const char *code, *kind;
    } kinds[] = {{"SP", "physiological"}, {"ST", "technical"}, {"SA", "advisory"}};

    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        if (strcasecmp(v, kinds[i].code) == 0 || strcasecmp(v, kinds[i].kind) == 0) {
            size_t n = strlen(kinds[i].kind);
            if (n >= cap)
                return 0;
            memcpy(out, kinds[i].kind, n + 1);
            return 1;
        }
    return 0;
}

typedef struct r40 {
    pcd__ctx *x;
    pcd01_msg *hdr;
    pcd04_msg *out;
    pcd04_alarm *cur; /* the alarm the OBX rows belong to */
    size_t cur_seg;   /* its OBR */
    char obr_time[PCD01_TIME_LEN];
    int have_type;
} r40;

/* Keeps a row as sent (an unknown facet, or a value we do not map). */
static int keep_row(r40 *r, const hl7_fields *fs, unsigned set_id)
{
    pcd01_facet *f;
    int rc;

    if (r->out->nfacets >= PCD04_MAX_FACETS)
        return pcd__fail(r->x, CMS_ELIMIT, "207", "more than %d unmapped alarm rows in one message",
                         PCD04_MAX_FACETS);
    f = &r->out->facets[r->out->nfacets];
    memset(f, 0, sizeof(*f));
    f->owner = (unsigned)(r->cur - r->out->alarms);
    if ((rc = pcd__facet(r->x, fs, set_id, f)))
        return rc;
    r->out->nfacets++;
    r->cur->nfacets++;
    return CMS_OK;
}

static int note_equipment(r40 *r, const hl7_fields *fs)
{
    char id[PCD01_ID_LEN];
    pcd04_msg *o = r->out;
    int rc = pcd__equipment(r->x, fs, id, sizeof(id));

    if (rc || id[0] == '\0')
        return rc;
    for (size_t i = 0; i < o->nequipment; i++)
        if (strcmp(o->equipment_ids[i], id) == 0)
            return CMS_OK;
    if (o->nequipment >= PCD04_MAX_EQUIPMENT)
        return pcd__fail(r->x, CMS_ELIMIT, "207",
                         "more than %d equipment identifiers (OBX-18) in one message",
                         PCD04_MAX_EQUIPMENT);
    memcpy(o->equipment_ids[o->nequipment++], id, sizeof(id));
    return CMS_OK;
}

/* OBX-8 repetitions: priority and kind when no facet row gave them. */
static int interpretation(r40 *r, const hl7_fields *fs)
{
    pcd04_alarm *a = r->cur;
    char code[16];
    int rc;

    for (unsigned rep = 1; rep <= 8; rep++) {
        hl7_str s = hl7_fields_get(fs, 8, rep, 1, 0);
        if (!s.p && rep > 1)
            break;
        if (pcd__trim(s).len >= sizeof(code))
            continue;
        if ((rc = pcd__copy(r->x, s, code, sizeof(code), fs->seg, "OBX-8")))
            return rc;
        if (a->priority[0] == '\0' && priority_of(code, a->priority, sizeof(a->priority)))
            continue;
        if (a->kind[0] == '\0')
            (void)kind_of(code, a->kind, sizeof(a->kind));
    }
    return CMS_OK;
}

static int obx(r40 *r, size_t seg)
{
    pcd__ctx *x = r->x;
    pcd04_alarm *a = r->cur;
    char vtype[8], code[PCD01_ID_LEN], label[PCD01_TEXT_LEN], sub[PCD01_ID_LEN];
    char val[PCD01_VALUE_LEN], tmp[32];
    unsigned set_id = 0;
    hl7_fields fs;
    enum facet f;
    int rc;

    hl7_split(x->m, seg, &fs);
    if (!a)
        return pcd__fail(x, CMS_EPROTO, "100", "segment %zu: OBX before the first OBR", seg + 1);
    if (pcd__uint(hl7_fields_get(&fs, 1, 0, 0, 0), &set_id) < 0)
        return pcd__fail(x, CMS_EPROTO, "102", "segment %zu: OBX-1 is not a set id", seg + 1);
    if ((rc = pcd__fget(x, &fs, 2, 1, 1, vtype, sizeof(vtype), "OBX-2")) ||
        (rc = pcd__fget(x, &fs, 3, 1, 1, code, sizeof(code), "OBX-3.1")) ||
        (rc = pcd__fget(x, &fs, 3, 1, 2, label, sizeof(label), "OBX-3.2")) ||
        (rc = pcd__fget(x, &fs, 4, 0, 0, sub, sizeof(sub), "OBX-4")) ||
        (rc = note_equipment(r, &fs)))
        return rc;
    if (vtype[0] == '\0') {
        r->hdr->skipped_obx++; /* device hierarchy (MDS/VMD/channel) */
        return CMS_OK;
    }
    f = classify(code, label, sub);
    switch (f) {
    case F_TYPE:
        if (r->have_type)
            return keep_row(r, &fs, set_id);
        r->have_type = 1;
        if ((rc = pcd__time(x, hl7_fields_get(&fs, 14, 1, 1, 0), a->event_at, sizeof(a->event_at),
                            seg, "OBX-14")) ||
            (rc = interpretation(r, &fs)))
            return rc;
        if (strcmp(vtype, "CWE") == 0 || strcmp(vtype, "CE") == 0 || strcmp(vtype, "CNE") == 0) {
            /* OBX-3 the generic MDC_EVT_ALARM, OBX-5 the event */
            if ((rc =
                     pcd__fget(x, &fs, 5, 1, 1, a->event_code, sizeof(a->event_code), "OBX-5.1")) ||
                (rc = pcd__fget(x, &fs, 5, 1, 2, a->event_label, sizeof(a->event_label),
                                "OBX-5.2")) ||
                (rc = pcd__fget(x, &fs, 5, 1, 3, a->event_system, sizeof(a->event_system),
                                "OBX-5.3")))
                return rc;
            if (a->alarm_text[0] == '\0' &&
                (rc = pcd__copy_text(x, hl7_get(x->m, seg, 5, 1, 9, 0), a->alarm_text,
                                     sizeof(a->alarm_text), seg, "OBX-5.9", &a->text_truncated)))
                return rc;
        }
        if (a->event_code[0] == '\0' && a->event_label[0] == '\0') {
            memcpy(a->event_code, code, sizeof(code));
            memcpy(a->event_label, label, sizeof(label));
            if ((rc = pcd__fget(x, &fs, 3, 1, 3, a->event_system, sizeof(a->event_system),
                                "OBX-3.3")))
                return rc;
            if (strcmp(vtype, "ST") == 0 && a->alarm_text[0] == '\0')
                rc = pcd__copy_text(x, hl7_fields_get(&fs, 5, 1, 0, 0), a->alarm_text,
                                    sizeof(a->alarm_text), seg, "OBX-5", &a->text_truncated);
        }
        return rc;
    case F_SOURCE:
        if (a->source_code[0] || a->source_label[0] || a->value_text[0])
            return keep_row(r, &fs, set_id);
        if (strcmp(label, "MDC_ATTR_ALERT_SOURCE") == 0 || strcmp(code, "68480") == 0) {
            rc = pcd__fget(x, &fs, 5, 1, 1, a->source_code, sizeof(a->source_code), "OBX-5.1");
            if (rc == CMS_OK)
                rc =
                    pcd__fget(x, &fs, 5, 1, 2, a->source_label, sizeof(a->source_label), "OBX-5.2");
        } else {
            memcpy(a->source_code, code, sizeof(code));
            memcpy(a->source_label, label, sizeof(label));
            rc = CMS_OK;
        }
        if (rc || (rc = interpretation(r, &fs)))
            return rc;
        memcpy(a->source_sub_id, sub, sizeof(sub));
        if (strcmp(vtype, "NM") == 0) {
            if ((rc = pcd__fget(x, &fs, 5, 1, 1, a->value_text, sizeof(a->value_text), "OBX-5")))
                return rc;
            if (a->value_text[0] && pcd__number(a->value_text, &a->value) < 0)
                return pcd__fail(x, CMS_EPROTO, "102",
                                 "segment %zu: OBX-5 of the alarm source is not a finite number",
                                 seg + 1);
        }
        if ((rc = pcd__fget(x, &fs, 6, 1, 1, a->unit_code, sizeof(a->unit_code), "OBX-6.1")) ||
            (rc = pcd__fget(x, &fs, 6, 1, 2, a->unit_label, sizeof(a->unit_label), "OBX-6.2")) ||
            (rc = pcd__joined(x, seg, hl7_fields_get(&fs, 7, 0, 0, 0), a->limits, sizeof(a->limits),
                              "OBX-7", NULL)))
            return rc;
        return CMS_OK;
    case F_TEXT:
        if (a->alarm_text[0])
            return keep_row(r, &fs, set_id);
        return pcd__copy_text(x, hl7_fields_get(&fs, 5, 1, 0, 0), a->alarm_text,
                              sizeof(a->alarm_text), seg, "OBX-5", &a->text_truncated);
    case F_PHASE:
    case F_STATE:
    case F_INACT:
    case F_PRIO:
    case F_KIND:
        break;
    default:
        return keep_row(r, &fs, set_id);
    }

    /* Enumerated facets: OBX-5 (ST; or CWE, its code). */
    if ((rc = pcd__fget(x, &fs, 5, 1, 1, val, sizeof(val), "OBX-5")))
        return rc;
    if (f == F_PHASE) {
        if (a->phase[0])
            return keep_row(r, &fs, set_id);
        norm(val, tmp, sizeof(tmp));
        if (val[0] == '\0')
            return pcd__fail(x, CMS_EPROTO, "101", "segment %zu: the alarm's event phase is empty",
                             seg + 1);
        if (!one_of(tmp, phases, a->phase, sizeof(a->phase)))
            return pcd__fail(x, CMS_EPROTO, "102",
                             "segment %zu: unknown alarm event phase (start, continue, update, "
                             "end, ... expected)",
                             seg + 1);
        return CMS_OK;
    }
    norm(val, tmp, sizeof(tmp));
    if (f == F_STATE && !a->state[0] && one_of(tmp, states, a->state, sizeof(a->state)))
        return CMS_OK;
    if (f == F_INACT && !a->inactivation[0] &&
        one_of(tmp, inacts, a->inactivation, sizeof(a->inactivation)))
        return CMS_OK;
    if (f == F_PRIO && priority_of(val, a->priority, sizeof(a->priority)))
        return CMS_OK;
    if (f == F_KIND && kind_of(val, a->kind, sizeof(a->kind)))
        return CMS_OK;
    if (val[0] == '\0')
        return CMS_OK;               /* an empty state/inactivation/priority says nothing */
    return keep_row(r, &fs, set_id); /* a value we do not know: kept as sent */
}

/* Checks the alarm the next OBR (or the end) closes. */
static int close_alarm(r40 *r)
{
    pcd04_alarm *a = r->cur;
    size_t seg = r->cur_seg;
    int rc;

    if (!a)
        return CMS_OK;
    if (a->phase[0] == '\0')
        return pcd__fail(r->x, CMS_EPROTO, "101",
                         "segment %zu: alarm without an event phase (MDC_ATTR_EVENT_PHASE)",
                         seg + 1);
    if (a->event_code[0] == '\0' && a->event_label[0] == '\0') {
        /* OBR-4: the alarm type when no facet gave one */
        if ((rc = pcd__get(r->x, seg, 4, 1, 1, 0, a->event_code, sizeof(a->event_code),
                           "OBR-4.1")) ||
            (rc = pcd__get(r->x, seg, 4, 1, 2, 0, a->event_label, sizeof(a->event_label),
                           "OBR-4.2")) ||
            (rc = pcd__get(r->x, seg, 4, 1, 3, 0, a->event_system, sizeof(a->event_system),
                           "OBR-4.3")))
            return rc;
        if (a->event_code[0] == '\0' && a->event_label[0] == '\0')
            return pcd__fail(r->x, CMS_EPROTO, "101",
                             "segment %zu: alarm without an alarm type (facet .1 or OBR-4)",
                             seg + 1);
    }
    if (a->event_at[0] == '\0') {
        const char *t = r->obr_time[0] ? r->obr_time : r->hdr->vitals.msg_time;
        memcpy(a->event_at, t, strlen(t) + 1);
    }
    r->out->nalarms++;
    r->cur = NULL;
    return CMS_OK;
}

static int obr(r40 *r, size_t seg)
{
    pcd__ctx *x = r->x;
    pcd04_alarm *a;
    int rc;

    if ((rc = close_alarm(r)))
        return rc;
    if (r->out->nalarms >= PCD04_MAX_ALARMS)
        return pcd__fail(x, CMS_ELIMIT, "207", "more than %d alarms in one message",
                         PCD04_MAX_ALARMS);
    a = &r->out->alarms[r->out->nalarms];
    memset(a, 0, sizeof(*a));
    a->first_facet = r->out->nfacets;
    r->cur = a;
    r->cur_seg = seg;
    r->have_type = 0;
    if ((rc = pcd__get(x, seg, 3, 1, 1, 0, a->alarm_id, sizeof(a->alarm_id), "OBR-3.1")) ||
        (rc = pcd__get(x, seg, 3, 1, 2, 0, a->alarm_ns, sizeof(a->alarm_ns), "OBR-3.2")) ||
        (rc = pcd__get(x, seg, 3, 1, 3, 0, a->alarm_uid, sizeof(a->alarm_uid), "OBR-3.3")) ||
        (rc = pcd__get(x, seg, 3, 1, 4, 0, a->alarm_uid_type, sizeof(a->alarm_uid_type),
                       "OBR-3.4")) ||
        (rc = pcd__get(x, seg, 29, 1, 2, 1, a->parent_id, sizeof(a->parent_id), "OBR-29.2")) ||
        (rc = a->parent_id[0] ? CMS_OK
                              : pcd__get(x, seg, 29, 1, 1, 1, a->parent_id, sizeof(a->parent_id),
                                         "OBR-29.1")) ||
        (rc = pcd__time(x, hl7_get(x->m, seg, 7, 1, 1, 0), r->obr_time, sizeof(r->obr_time), seg,
                        "OBR-7")))
        return rc;
    if (a->alarm_id[0] == '\0')
        return pcd__fail(x, CMS_EPROTO, "101", "segment %zu: OBR-3 (alarm identifier) is missing",
                         seg + 1);
    return CMS_OK;
}

int pcd04_extract(const hl7_msg *m, pcd01_msg *hdr, pcd04_msg *out, pcd01_verdict *v)
{
    pcd__ctx x = {m, &v->err_code, v->reason, sizeof(v->reason), 0, HL7_AR};
    r40 r;
    int rc, seen_pid = 0, seen_pv1 = 0;

    v->err_code = "0";
    v->reason[0] = '\0';
    out->nalarms = out->nfacets = out->nequipment = 0;
    memset(&r, 0, sizeof(r));
    r.x = &x;
    r.hdr = hdr;
    r.out = out;

    rc = pcd__header(&x, hdr);
    if (rc == CMS_OK)
        rc = pcd__check_header(&x, hdr, "ORU", "R40");
    for (size_t i = 1; rc == CMS_OK && i < m->nseg; i++) {
        hl7_str name = hl7_segment_name(m, i);

        if (pcd__is(name, "PID") && !seen_pid) {
            seen_pid = 1;
            rc = pcd__pid(&x, i, hdr);
        } else if (pcd__is(name, "PV1") && !seen_pv1) {
            seen_pv1 = 1;
            rc = pcd__pv1(&x, i, hdr);
        } else if (pcd__is(name, "OBR")) {
            rc = obr(&r, i);
        } else if (pcd__is(name, "OBX")) {
            rc = obx(&r, i);
        }
    }
    if (rc == CMS_OK)
        rc = close_alarm(&r);
    if (rc == CMS_OK && out->nalarms == 0)
        rc = pcd__fail(&x, CMS_EPROTO, "101", "ORU^R40 without an alarm (OBR)");
    v->ack = rc == CMS_OK ? HL7_AA : x.ack;
    if (rc != CMS_OK)
        out->nalarms = 0;
    return rc;
}

int pcd04_is_heartbeat(const pcd04_alarm *a)
{
    return strcmp(a->priority, "PN") == 0;
}
