/*
 * pcd01.c - IHE PCD-01 ORU^R01 content extraction (see pcd01.h for the
 * field mapping; shared helpers in pcd_util.c, waveforms in pcd01_wave.c).
 */
#include "pcd01.h"

#include <stdio.h>
#include <string.h>

#include "cms_err.h"
#include "pcd_int.h"

int pcd01_read_header(const hl7_msg *m, pcd01_msg *out)
{
    pcd__ctx x = {m, NULL, NULL, 0, 0, HL7_AR};

    return pcd__header(&x, out) == CMS_OK ? CMS_OK : CMS_EPROTO;
}

/* An ST, CWE or CE row with a value. */
static int pcd01__text(pcd__ctx *x, const hl7_fields *fs, pcd01_msg *out, const char *vtype,
                       const char *fallback_time)
{
    size_t seg = fs->seg;
    int coded = strcmp(vtype, "ST") != 0;
    pcd01_text *t;
    int rc;

    if (out->ntexts >= PCD01_MAX_TEXTS)
        return pcd__fail(x, CMS_ELIMIT, "207", "more than %d text observations", PCD01_MAX_TEXTS);
    t = &out->texts[out->ntexts];
    memset(t, 0, sizeof(*t));
    memcpy(t->value_type, vtype, strlen(vtype) + 1);
    if (pcd__uint(hl7_fields_get(fs, 1, 0, 0, 0), &t->set_id) < 0)
        return pcd__fail(x, CMS_EPROTO, "102", "segment %zu: OBX-1 is not a set id", seg + 1);
    if ((rc = pcd__fget(x, fs, 3, 1, 1, t->code, sizeof(t->code), "OBX-3.1")) ||
        (rc = pcd__fget(x, fs, 3, 1, 2, t->label, sizeof(t->label), "OBX-3.2")) ||
        (rc = pcd__fget(x, fs, 3, 1, 3, t->coding_system, sizeof(t->coding_system), "OBX-3.3")) ||
        (rc = pcd__fget(x, fs, 4, 0, 0, t->sub_id, sizeof(t->sub_id), "OBX-4")) ||
        (rc = pcd__copy_text(x, hl7_fields_get(fs, 5, 1, coded ? 2 : 0, 0), t->text,
                             sizeof(t->text), seg, coded ? "OBX-5.2" : "OBX-5", &t->truncated)) ||
        (rc = coded ? pcd__fget(x, fs, 5, 1, 1, t->value_code, sizeof(t->value_code), "OBX-5.1")
                    : CMS_OK) ||
        (rc = coded ? pcd__fget(x, fs, 5, 1, 3, t->value_system, sizeof(t->value_system), "OBX-5.3")
                    : CMS_OK) ||
        (rc = pcd__fget(x, fs, 11, 1, 1, t->status, sizeof(t->status), "OBX-11")) ||
        (rc = pcd__time(x, hl7_fields_get(fs, 14, 1, 1, 0), t->observed_at, sizeof(t->observed_at),
                        seg, "OBX-14")) ||
        (rc = pcd__equipment(x, fs, t->equipment_id, sizeof(t->equipment_id))))
        return rc;
    if (t->code[0] == '\0')
        return pcd__fail(x, CMS_EPROTO, "101", "segment %zu: OBX-3 (observation id) is missing",
                         seg + 1);
    if (coded && t->value_code[0] == '\0' && t->text[0] == '\0')
        return pcd__fail(x, CMS_EPROTO, "101",
                         "segment %zu: OBX-5 of a coded observation has neither code nor text",
                         seg + 1);
    if (t->observed_at[0] == '\0')
        memcpy(t->observed_at, fallback_time, strlen(fallback_time) + 1);
    out->ntexts++;
    return CMS_OK;
}

static int is_wave_type(const char *vtype)
{
    return strcmp(vtype, "NA") == 0 || strcmp(vtype, "MA") == 0;
}

static int is_text_type(const char *vtype)
{
    return strcmp(vtype, "ST") == 0 || strcmp(vtype, "CWE") == 0 || strcmp(vtype, "CE") == 0;
}

static int pcd01__obx(pcd__ctx *x, size_t seg, pcd01_msg *out, pcd__wavestate *ws,
                      const char *fallback_time)
{
    char vtype[8];
    vitals_obs *o;
    hl7_str value;
    hl7_fields fs;
    int rc;

    hl7_split(x->m, seg, &fs);
    ws->obx_no++;
    if ((rc = pcd__fget(x, &fs, 2, 1, 1, vtype, sizeof(vtype), "OBX-2")))
        return rc;
    if (is_wave_type(vtype)) {
        size_t before = ws->w ? ws->w->nwaves : 0;
        if ((rc = pcd__wave_row(x, ws, &fs, vtype, fallback_time)))
            return rc;
        if (!ws->w || ws->w->nwaves == before)
            out->skipped_obx++;
        return CMS_OK;
    }
    if (ws->nrows > 0) {
        int taken = 0;
        if ((rc = pcd__wave_facet(x, ws, &fs, &taken)))
            return rc;
        if (taken) {
            if (!ws->w)
                out->skipped_obx++;
            return CMS_OK;
        }
    }
    value = pcd__trim(hl7_fields_get(&fs, 5, 0, 0, 0));
    if (value.len > 0 && is_text_type(vtype))
        return pcd01__text(x, &fs, out, vtype, fallback_time);
    if (strcmp(vtype, "NM") != 0 || value.len == 0) {
        /* Device hierarchy rows (empty type), other value types, and NM
         * rows without a value (e.g. status X): nothing to store. */
        out->skipped_obx++;
        return CMS_OK;
    }
    if (out->vitals.nobs >= PCD01_MAX_OBS)
        return pcd__fail(x, CMS_ELIMIT, "207", "more than %d numeric observations", PCD01_MAX_OBS);

    o = &out->vitals.obs[out->vitals.nobs];
    memset(o, 0, sizeof(*o));
    if (pcd__uint(hl7_fields_get(&fs, 1, 0, 0, 0), &o->set_id) < 0)
        return pcd__fail(x, CMS_EPROTO, "102", "segment %zu: OBX-1 is not a set id", seg + 1);
    if ((rc = pcd__fget(x, &fs, 3, 1, 1, o->code, sizeof(o->code), "OBX-3.1")) ||
        (rc = pcd__fget(x, &fs, 3, 1, 2, o->label, sizeof(o->label), "OBX-3.2")) ||
        (rc = pcd__fget(x, &fs, 3, 1, 3, o->coding_system, sizeof(o->coding_system), "OBX-3.3")) ||
        (rc = pcd__fget(x, &fs, 4, 0, 0, o->sub_id, sizeof(o->sub_id), "OBX-4")) ||
        (rc = pcd__copy(x, value, o->value_text, sizeof(o->value_text), seg, "OBX-5")) ||
        (rc = pcd__fget(x, &fs, 6, 1, 1, o->unit_code, sizeof(o->unit_code), "OBX-6.1")) ||
        (rc = pcd__fget(x, &fs, 6, 1, 2, o->unit_label, sizeof(o->unit_label), "OBX-6.2")) ||
        (rc = pcd__fget(x, &fs, 11, 1, 1, o->status, sizeof(o->status), "OBX-11")) ||
        (rc = pcd__time(x, hl7_fields_get(&fs, 14, 1, 1, 0), o->observed_at, sizeof(o->observed_at),
                        seg, "OBX-14")) ||
        (rc = pcd__equipment(x, &fs, o->equipment_id, sizeof(o->equipment_id))))
        return rc;
    if (o->code[0] == '\0')
        return pcd__fail(x, CMS_EPROTO, "101", "segment %zu: OBX-3 (observation id) is missing",
                         seg + 1);
    if (pcd__number(o->value_text, &o->value) < 0)
        return pcd__fail(x, CMS_EPROTO, "102",
                         "segment %zu: OBX-5 of an NM observation is not a finite number", seg + 1);
    if (o->observed_at[0] == '\0')
        memcpy(o->observed_at, fallback_time, strlen(fallback_time) + 1);
    out->vitals.nobs++;
    return CMS_OK;
}

static int pcd01__run(const hl7_msg *m, pcd01_msg *out, pcd01_waves *waves, pcd__ctx *x)
{
    const char *obr_time = "";
    int rc, seen_pid = 0, seen_pv1 = 0, seen_obr = 0;
    char cur_obr_time[PCD01_TIME_LEN];
    pcd__wavestate ws;

    pcd__wave_begin(&ws, waves);
    rc = pcd__header(x, out);
    if (rc < 0)
        return rc;
    if ((rc = pcd__check_header(x, out, "ORU", "R01")) < 0)
        return rc;

    cur_obr_time[0] = '\0';
    for (size_t i = 1; i < m->nseg; i++) {
        hl7_str name = hl7_segment_name(m, i);

        if (name.len != 3)
            continue;
        if (memcmp(name.p, "PID", 3) == 0 && !seen_pid) {
            seen_pid = 1;
            rc = pcd__pid(x, i, out);
        } else if (memcmp(name.p, "PV1", 3) == 0 && !seen_pv1) {
            seen_pv1 = 1;
            rc = pcd__pv1(x, i, out);
        } else if (memcmp(name.p, "OBR", 3) == 0) {
            /* OBX rows fall back to the time of the OBR they follow. */
            rc = pcd__time(x, hl7_get(m, i, 7, 1, 1, 0), cur_obr_time, sizeof(cur_obr_time), i,
                           "OBR-7");
            if (rc == 0 && !seen_obr)
                memcpy(out->obr_time, cur_obr_time, sizeof(cur_obr_time));
            seen_obr = 1;
        } else if (memcmp(name.p, "OBX", 3) == 0) {
            obr_time = cur_obr_time[0] ? cur_obr_time : out->vitals.msg_time;
            rc = pcd01__obx(x, i, out, &ws, obr_time);
        }
        if (rc < 0)
            return rc;
    }
    return pcd__wave_end(x, &ws);
}

int pcd01_extract(const hl7_msg *m, pcd01_msg *out, const char **err_code, char *reason, size_t cap)
{
    pcd__ctx x = {m, err_code, reason, cap, 0, HL7_AR};

    if (err_code)
        *err_code = "0";
    if (reason && cap > 0)
        reason[0] = '\0';
    return pcd01__run(m, out, NULL, &x);
}

int pcd01_extract_full(const hl7_msg *m, pcd01_msg *out, pcd01_waves *waves, pcd01_verdict *v)
{
    pcd__ctx x = {m, &v->err_code, v->reason, sizeof(v->reason), 0, HL7_AR};
    int rc;

    v->err_code = "0";
    v->reason[0] = '\0';
    rc = pcd01__run(m, out, waves, &x);
    v->ack = rc == CMS_OK ? HL7_AA : x.ack;
    return rc;
}
