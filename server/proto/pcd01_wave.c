/*
 * pcd01_wave.c - IHE PCD-01 waveform content (PCD Waveform Content Module):
 * NA and MA rows, and the facet rows that follow them (see pcd01.h,
 * "Waveforms").
 *
 * A block's samples are parsed into the arena of its pcd01_waves as doubles
 * (exact for the decimal text sent: mantissa / 10^digits, both exact in a
 * double, one correctly rounded division), together with what the store
 * needs to keep them as integers: the most fraction digits sent
 * (scale_exp) and whether every sample times 10^scale_exp fits 32 bits.
 *
 * Errors: a block over the caller's limit or too many blocks is an AR (the
 * message is refused as too large); a sample that is not an HL7 NM number,
 * MA rows of unequal width and a block without a sample rate are AE, with
 * the OBX named by its position and OBX-1 (never its values).
 */
#include "pcd_int.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cms_err.h"

void pcd01_waves_init(pcd01_waves *w, size_t max_block)
{
    memset(w, 0, sizeof(*w));
    w->max_block = max_block;
}

void pcd01_waves_free(pcd01_waves *w)
{
    free(w->samples);
    w->samples = NULL;
    w->nsamples = w->cap = 0;
    w->nwaves = w->nfacets = 0;
}

void pcd__wave_begin(pcd__wavestate *ws, pcd01_waves *w)
{
    ws->w = w;
    ws->obx_no = 0;
    ws->nrows = 0;
    if (w) {
        w->nwaves = 0;
        w->nfacets = 0;
        w->nsamples = 0;
    }
}

static int reserve(pcd01_waves *w, size_t more)
{
    size_t cap;
    double *p;

    if (more <= w->cap - w->nsamples)
        return CMS_OK;
    if (more > SIZE_MAX / sizeof(double) / 2 - w->nsamples)
        return CMS_ENOMEM;
    cap = w->cap ? w->cap : 4096;
    while (cap - w->nsamples < more)
        cap *= 2;
    p = realloc(w->samples, cap * sizeof(double));
    if (!p)
        return CMS_ENOMEM;
    w->samples = p;
    w->cap = cap;
    return CMS_OK;
}

static const double pow10_tab[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8, 1e9,
                                   1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18};

/*
 * One sample, HL7 NM: [+-]digits[.digits] (blanks around it tolerated).
 * Returns the number of fraction digits (more than 18 digits in all: 99,
 * the value then from strtod), or -1 when it is not a number.
 */
static int parse_sample(const char *p, size_t n, double *out)
{
    const char *end = p + n, *start;
    int neg = 0, digits = 0, frac = -1;
    int64_t mant = 0;

    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    start = p;
    if (p < end && (*p == '+' || *p == '-'))
        neg = *p++ == '-';
    for (; p < end; p++) {
        if (*p >= '0' && *p <= '9') {
            if (++digits <= 18)
                mant = mant * 10 + (*p - '0');
            if (frac >= 0)
                frac++;
        } else if (*p == '.' && frac < 0) {
            frac = 0;
        } else {
            return -1;
        }
    }
    if (digits == 0)
        return -1;
    if (frac < 0)
        frac = 0;
    if (digits > 18) {
        char tmp[64];
        size_t len = (size_t)(end - start);
        if (len >= sizeof(tmp))
            return -1;
        memcpy(tmp, start, len);
        tmp[len] = '\0';
        *out = strtod(tmp, NULL);
        return isfinite(*out) ? 99 : -1;
    }
    *out = (double)(neg ? -mant : mant) / pow10_tab[frac];
    return frac;
}

/* Position of the current OBX for reasons: "OBX #7 (OBX-1 12)". */
#define OBXPOS(ws, set) (ws)->obx_no, (set)

int pcd__wave_row(pcd__ctx *x, pcd__wavestate *ws, const hl7_fields *fs, const char *vtype,
                  const char *fallback_time)
{
    pcd01_waves *w = ws->w;
    int is_ma = strcmp(vtype, "MA") == 0;
    hl7_str value = pcd__trim(hl7_fields_get(fs, 5, 0, 0, 0));
    char sub[PCD01_ID_LEN];
    size_t nchan = 1, nrep = 1, first_wave;
    unsigned set_id = 0;
    pcd01_wave *b;
    int rc;

    if ((rc = pcd__fget(x, fs, 4, 0, 0, sub, sizeof(sub), "OBX-4")))
        return rc;
    if (pcd__uint(hl7_fields_get(fs, 1, 0, 0, 0), &set_id) < 0)
        return pcd__fail(x, CMS_EPROTO, "102", "segment %zu: OBX-1 is not a set id", fs->seg + 1);
    if (ws->nrows < PCD01_MAX_WAVES) {
        memcpy(ws->sub[ws->nrows], sub, sizeof(sub));
        ws->row_obx[ws->nrows] = ws->obx_no;
        ws->row_wave[ws->nrows] = w ? w->nwaves : 0;
        ws->nrows++;
    } else if (w) {
        return pcd__fail(x, CMS_ELIMIT, "207", "more than %d waveform blocks in one message",
                         PCD01_MAX_WAVES);
    }
    if (!w)
        return CMS_OK;

    /* Shape: NA is one channel of components (the samples); MA is
     * repetitions (instants) of components (channels), every repetition as
     * wide as the first. An empty OBX-5 is no block (skipped, as an NM row
     * without a value). */
    if (value.len == 0)
        return CMS_OK;
    {
        const char *p = value.p, *end = value.p + value.len;
        const char *rep_end = memchr(p, x->m->d.rep, value.len);
        if (is_ma) {
            for (const char *q = p; q < (rep_end ? rep_end : end); q++)
                nchan += *q == x->m->d.comp;
            for (const char *q = p; q < end; q++)
                nrep += *q == x->m->d.rep;
        } else {
            if (rep_end)
                return pcd__fail_ae(x, CMS_EPROTO, "102",
                                    "OBX #%u (OBX-1 %u): an NA waveform has one repetition",
                                    OBXPOS(ws, set_id));
            for (const char *q = p; q < end; q++)
                nrep += *q == x->m->d.comp;
        }
    }
    if (w->max_block && nrep > w->max_block)
        return pcd__fail(x, CMS_ELIMIT, "207",
                         "OBX #%u (OBX-1 %u): waveform block of %zu samples is over the limit "
                         "of %zu",
                         OBXPOS(ws, set_id), nrep, w->max_block);
    if (nchan > PCD01_MAX_WAVES - w->nwaves)
        return pcd__fail(x, CMS_ELIMIT, "207", "more than %d waveform blocks in one message",
                         PCD01_MAX_WAVES);
    if (nchan > SIZE_MAX / nrep || reserve(w, nchan * nrep) != CMS_OK)
        return pcd__fail(x, CMS_ENOMEM, "207", "out of memory for waveform samples");

    first_wave = w->nwaves;
    b = &w->waves[first_wave];
    memset(b, 0, sizeof(*b));
    b->set_id = set_id;
    b->obx_index = ws->obx_no;
    b->resolution = 1.0;
    memcpy(b->sub_id, sub, sizeof(sub));
    if ((rc = pcd__fget(x, fs, 3, 1, 1, b->code, sizeof(b->code), "OBX-3.1")) ||
        (rc = pcd__fget(x, fs, 3, 1, 2, b->label, sizeof(b->label), "OBX-3.2")) ||
        (rc = pcd__fget(x, fs, 3, 1, 3, b->coding_system, sizeof(b->coding_system), "OBX-3.3")) ||
        (rc = pcd__fget(x, fs, 6, 1, 1, b->unit_code, sizeof(b->unit_code), "OBX-6.1")) ||
        (rc = pcd__fget(x, fs, 6, 1, 2, b->unit_label, sizeof(b->unit_label), "OBX-6.2")) ||
        (rc = pcd__fget(x, fs, 11, 1, 1, b->status, sizeof(b->status), "OBX-11")) ||
        (rc = pcd__time(x, hl7_fields_get(fs, 14, 1, 1, 0), b->start_at, sizeof(b->start_at),
                        fs->seg, "OBX-14")) ||
        (rc = pcd__equipment(x, fs, b->equipment_id, sizeof(b->equipment_id))))
        return rc;
    if (b->code[0] == '\0' && b->label[0] == '\0')
        return pcd__fail(x, CMS_EPROTO, "101", "segment %zu: OBX-3 (observation id) is missing",
                         fs->seg + 1);
    if (b->start_at[0] == '\0')
        memcpy(b->start_at, fallback_time, strlen(fallback_time) + 1);
    for (size_t c = 1; c < nchan; c++)
        w->waves[first_wave + c] = *b;
    for (size_t c = 0; c < nchan; c++) {
        pcd01_wave *bc = &w->waves[first_wave + c];
        bc->channel = is_ma ? (unsigned)(c + 1) : 0;
        bc->first = w->nsamples + c * nrep;
        bc->nsamples = nrep;
        bc->scale_exp = 0;
    }

    /* The samples: walk the value once. NA: every component is the next
     * sample. MA: component c of repetition r is sample r of channel c. */
    {
        const char *p = value.p, *end = value.p + value.len;
        const char sep_inst = is_ma ? x->m->d.rep : x->m->d.comp;
        const char sep_chan = is_ma ? x->m->d.comp : x->m->d.rep; /* NA: refused above */
        int maxfrac[PCD01_MAX_WAVES] = {0};
        double maxabs[PCD01_MAX_WAVES] = {0};
        size_t r = 0, c = 0;

        for (;;) {
            const char *q = p;
            double v;
            int frac;

            while (q < end && *q != sep_inst && *q != sep_chan)
                q++;
            if (c >= nchan || r >= nrep)
                return pcd__fail_ae(x, CMS_EPROTO, "102",
                                    "OBX #%u (OBX-1 %u): MA waveform repetitions of unequal width",
                                    OBXPOS(ws, set_id));
            frac = parse_sample(p, (size_t)(q - p), &v);
            if (frac < 0)
                return pcd__fail_ae(x, CMS_EPROTO, "102",
                                    "OBX #%u (OBX-1 %u): waveform sample %zu is not a number",
                                    OBXPOS(ws, set_id), r + 1);
            w->samples[w->nsamples + c * nrep + r] = v;
            if (frac > maxfrac[c])
                maxfrac[c] = frac;
            if (fabs(v) > maxabs[c])
                maxabs[c] = fabs(v);
            if (q == end)
                break;
            if (*q == sep_inst) {
                if (c + 1 != nchan)
                    return pcd__fail_ae(
                        x, CMS_EPROTO, "102",
                        "OBX #%u (OBX-1 %u): MA waveform repetitions of unequal width",
                        OBXPOS(ws, set_id));
                r++;
                c = 0;
            } else {
                c++;
            }
            p = q + 1;
        }
        if (c + 1 != nchan || r + 1 != nrep)
            return pcd__fail_ae(x, CMS_EPROTO, "102",
                                "OBX #%u (OBX-1 %u): MA waveform repetitions of unequal width",
                                OBXPOS(ws, set_id));
        for (size_t k = 0; k < nchan; k++) {
            pcd01_wave *bk = &w->waves[first_wave + k];
            int e = maxfrac[k];
            bk->scale_exp = e <= 9 && maxabs[k] * pow10_tab[e] < 2147483647.5 ? e : -1;
        }
    }
    w->nsamples += nchan * nrep;
    w->nwaves += nchan;
    return CMS_OK;
}

/* ---- facets -------------------------------------------------------------- */

enum wattr { WA_NONE = 0, WA_RATE, WA_PERIOD, WA_RES, WA_OTHER };

static const struct {
    const char *name;
    const char *code_term, *code_cf; /* term code, context-free code (partition 1) */
    enum wattr attr;
} wattrs[] = {
    {"MDC_ATTR_SAMP_RATE", "2464", "68000", WA_RATE},
    {"MDC_ATTR_TIME_PD_SAMP", "2445", "67981", WA_PERIOD},
    {"MDC_ATTR_NU_MSMT_RES", "2327", "67863", WA_RES},
    /* attributes kept as sent (known to belong to a waveform) */
    {"MDC_ATTR_DATA_RANGE", NULL, NULL, WA_OTHER},
    {"MDC_ATTR_SCALE_SPECN_I16", NULL, NULL, WA_OTHER},
    {"MDC_ATTR_SCALE_RANGE", NULL, NULL, WA_OTHER},
    {"MDC_ATTR_WAV_ENCODING", NULL, NULL, WA_OTHER},
    {"MDC_ATTR_GRID_VIS", NULL, NULL, WA_OTHER},
};

/* By reference id name first; by either numeric code unless the row names
 * another MDC reference id (a name we do not know is not overruled by a
 * number that may mean something else in the other set). */
static enum wattr classify(const char *code, const char *label)
{
    for (size_t i = 0; i < sizeof(wattrs) / sizeof(wattrs[0]); i++)
        if (label[0] && strcmp(label, wattrs[i].name) == 0)
            return wattrs[i].attr;
    if (strncmp(label, "MDC", 3) == 0 || code[0] == '\0')
        return WA_NONE;
    for (size_t i = 0; i < sizeof(wattrs) / sizeof(wattrs[0]); i++)
        if (wattrs[i].code_term &&
            (strcmp(code, wattrs[i].code_term) == 0 || strcmp(code, wattrs[i].code_cf) == 0))
            return wattrs[i].attr;
    return WA_NONE;
}

/* Seconds per unit of a sample period (by unit name, then MDC code). */
static double period_unit(const char *code, const char *label)
{
    if (strcasecmp(label, "MDC_DIM_MILLI_SEC") == 0 || strcmp(code, "264338") == 0 ||
        strcasecmp(label, "ms") == 0)
        return 1e-3;
    if (strcasecmp(label, "MDC_DIM_MICRO_SEC") == 0 || strcmp(code, "264339") == 0 ||
        strcasecmp(label, "us") == 0)
        return 1e-6;
    return 1.0;
}

int pcd__wave_facet(pcd__ctx *x, pcd__wavestate *ws, const hl7_fields *fs, int *taken)
{
    pcd01_waves *w = ws->w;
    char code[PCD01_ID_LEN], label[PCD01_TEXT_LEN], sub[PCD01_ID_LEN];
    enum wattr attr;
    size_t row = SIZE_MAX;
    unsigned set_id = 0;
    int rc;

    *taken = 0;
    if ((rc = pcd__fget(x, fs, 3, 1, 1, code, sizeof(code), "OBX-3.1")) ||
        (rc = pcd__fget(x, fs, 3, 1, 2, label, sizeof(label), "OBX-3.2")) ||
        (rc = pcd__fget(x, fs, 4, 0, 0, sub, sizeof(sub), "OBX-4")))
        return rc;
    for (size_t i = ws->nrows; i-- > 0;)
        if (pcd__is_facet_of(sub, ws->sub[i])) {
            row = i;
            break;
        }
    attr = classify(code, label);
    if (row == SIZE_MAX) {
        if (attr == WA_NONE)
            return CMS_OK;   /* an ordinary observation */
        row = ws->nrows - 1; /* named as a waveform attribute: the last waveform's */
    }
    *taken = 1;
    if (!w)
        return CMS_OK;
    if (pcd__uint(hl7_fields_get(fs, 1, 0, 0, 0), &set_id) < 0)
        return pcd__fail(x, CMS_EPROTO, "102", "segment %zu: OBX-1 is not a set id", fs->seg + 1);

    size_t first = ws->row_wave[row], n = 0;
    while (first + n < w->nwaves && w->waves[first + n].obx_index == ws->row_obx[row])
        n++;
    if (n == 0)
        return CMS_OK; /* its waveform row was refused before */

    if (attr == WA_RATE || attr == WA_PERIOD || attr == WA_RES) {
        char text[PCD01_ID_LEN], ucode[PCD01_ID_LEN], ulabel[PCD01_TEXT_LEN];
        double v = 0;

        if ((rc = pcd__fget(x, fs, 5, 1, 1, text, sizeof(text), "OBX-5")) ||
            (rc = pcd__fget(x, fs, 6, 1, 1, ucode, sizeof(ucode), "OBX-6.1")) ||
            (rc = pcd__fget(x, fs, 6, 1, 2, ulabel, sizeof(ulabel), "OBX-6.2")))
            return rc;
        if (pcd__number(text, &v) < 0 || !(v > 0))
            return pcd__fail_ae(x, CMS_EPROTO, "102",
                                "OBX #%u (OBX-1 %u): %s of waveform OBX #%u is not a positive "
                                "number",
                                ws->obx_no, set_id,
                                attr == WA_RES ? "the resolution" : "the sample rate",
                                ws->row_obx[row]);
        if (attr == WA_PERIOD)
            v = 1.0 / (v * period_unit(ucode, ulabel));
        if ((attr != WA_RES) && !(v <= 1e6 && isfinite(v)))
            return pcd__fail_ae(x, CMS_EPROTO, "102",
                                "OBX #%u (OBX-1 %u): sample rate of waveform OBX #%u is over 1 MHz",
                                ws->obx_no, set_id, ws->row_obx[row]);
        for (size_t k = 0; k < n; k++) {
            pcd01_wave *b = &w->waves[first + k];
            if (attr == WA_RES) {
                b->resolution = v;
                if (b->unit_code[0] == '\0' && b->unit_label[0] == '\0') {
                    memcpy(b->unit_code, ucode, sizeof(ucode));
                    memcpy(b->unit_label, ulabel, sizeof(ulabel));
                }
            } else {
                b->rate_hz = v;
            }
        }
        return CMS_OK;
    }

    /* Any other facet: kept as sent, with the first block of its row. */
    if (w->nfacets >= PCD01_MAX_FACETS)
        return pcd__fail(x, CMS_ELIMIT, "207", "more than %d waveform facet rows in one message",
                         PCD01_MAX_FACETS);
    pcd01_facet *f = &w->facets[w->nfacets];
    memset(f, 0, sizeof(*f));
    f->owner = (unsigned)first;
    if ((rc = pcd__facet(x, fs, set_id, f)))
        return rc;
    w->nfacets++;
    return CMS_OK;
}

int pcd__wave_end(pcd__ctx *x, pcd__wavestate *ws)
{
    pcd01_waves *w = ws->w;

    if (!w)
        return CMS_OK;
    for (size_t i = 0; i < w->nwaves; i++)
        if (!(w->waves[i].rate_hz > 0))
            return pcd__fail_ae(x, CMS_EPROTO, "101",
                                "OBX #%u (OBX-1 %u): waveform without a sample rate "
                                "(MDC_ATTR_SAMP_RATE facet)",
                                w->waves[i].obx_index, w->waves[i].set_id);
    return CMS_OK;
}
