/*
 * msg.c - IHE PCD-01 ORU^R01 generator for one simulated monitor.
 *
 * The layout follows /work/shared/samples/pcd01-vitals.hl7: MSH (v2.6, the
 * PCD-01 profile in MSH-21), PID, PV1, OBR, then OBX rows in the device
 * hierarchy: the MDS row, a VMD row before each VMD's metrics (value type
 * empty, status X), and NM metric rows with OBX-14 in UTC ("+0000").
 *
 * Values follow a mean-reverting random walk around a per-device resting
 * value; pulse rate follows heart rate, NIBP is measured every
 * NIBP_INTERVAL_MS and keeps its own OBX-14 time between measurements, mean
 * pressures are computed from systolic and diastolic.
 *
 * Waveforms (--waveforms): after the numerics, one NA block per channel
 * (IHE PCD Waveform Content Module, as tests/unit/sample_wave.h): the
 * samples, then its facet rows MDC_ATTR_SAMP_RATE (.1) and
 * MDC_ATTR_NU_MSMT_RES (.2). A block covers 1/--rate seconds (one second
 * unpaced) and starts where the previous one ended (OBX-14 with ms), so the
 * stored blocks of a device tile time without gaps. Shapes: a PQRST complex
 * at the device's heart rate (ECG, counts of 2.5 uV), a pulse wave (pleth).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cms_err.h"
#include "hl7.h"
#include "mllp.h"
#include "monitor.h"

#define NIBP_INTERVAL_MS (5u * 60u * 1000u)

enum vkind { V_WALK = 0, V_FOLLOW, V_MEAN };

struct vmd_def {
    const char *code, *label, *sub_id;
};

/* VMD rows we emit (others are left implicit, as in the sample). */
static const struct vmd_def vmds[] = {
    {"69798", "MDC_DEV_ECG_VMD", "1.5.0.0"},
    {"69642", "MDC_DEV_ANALY_SAT_O2_VMD", "1.22.0.0"},
    {"70686", "MDC_DEV_PRESS_BLD_NONINV_VMD", "1.1.0.0"},
};

struct vdef {
    const char *code, *label;
    unsigned vmd_id, chan, metric; /* OBX-4 = 1.<vmd_id>.<chan>.<metric> */
    int vmd;                       /* index in vmds[] or -1 */
    const char *unit_code, *unit_label;
    double base, base_sd, step, min, max;
    int decimals;
    enum vkind kind;
    int ref, ref2;    /* V_FOLLOW: ref; V_MEAN: sys=ref dia=ref2 */
    int intermittent; /* NIBP */
    unsigned rank;    /* selection priority for --obs */
};

/* In display order; the first --obs by rank are sent. */
static const struct vdef defs[] = {
    /*  0 */ {"147842", "MDC_ECG_HEART_RATE", 5, 1, 1, 0, "264864", "MDC_DIM_BEAT_PER_MIN", 75, 10,
              1.2, 30, 200, 0, V_WALK, 0, 0, 0, 0},
    /*  1 */
    {"151562", "MDC_RESP_RATE", 5, 1, 2, 0, "264928", "MDC_DIM_RESP_PER_MIN", 16, 3, 0.5, 4, 60, 0,
     V_WALK, 0, 0, 0, 6},
    /*  2 */
    {"150456", "MDC_PULS_OXIM_SAT_O2", 22, 1, 1, 1, "262688", "MDC_DIM_PERCENT", 97, 1.2, 0.3, 70,
     100, 0, V_WALK, 0, 0, 0, 1},
    /*  3 */
    {"149530", "MDC_PULS_OXIM_PULS_RATE", 22, 1, 2, 1, "264864", "MDC_DIM_BEAT_PER_MIN", 0, 0, 1.0,
     30, 200, 0, V_FOLLOW, 0, 0, 0, 2},
    /*  4 */
    {"150488", "MDC_PULS_OXIM_PERF_REL", 22, 1, 3, 1, "262688", "MDC_DIM_PERCENT", 3.5, 1.2, 0.1,
     0.2, 20, 1, V_WALK, 0, 0, 0, 9},
    /*  5 */
    {"150021", "MDC_PRESS_BLD_NONINV_SYS", 1, 1, 1, 2, "266016", "MDC_DIM_MMHG", 125, 12, 5, 60,
     230, 0, V_WALK, 0, 0, 1, 3},
    /*  6 */
    {"150022", "MDC_PRESS_BLD_NONINV_DIA", 1, 1, 2, 2, "266016", "MDC_DIM_MMHG", 78, 7, 3, 30, 140,
     0, V_WALK, 0, 0, 1, 4},
    /*  7 */
    {"150023", "MDC_PRESS_BLD_NONINV_MEAN", 1, 1, 3, 2, "266016", "MDC_DIM_MMHG", 0, 0, 0, 30, 200,
     0, V_MEAN, 5, 6, 1, 5},
    /*  8 */
    {"150344", "MDC_TEMP", 13, 1, 1, -1, "268192", "MDC_DIM_DEGC", 36.9, 0.4, 0.02, 33, 42, 1,
     V_WALK, 0, 0, 0, 7},
    /*  9 */
    {"151712", "MDC_CONC_AWAY_CO2_ET", 30, 1, 1, -1, "266016", "MDC_DIM_MMHG", 38, 3, 0.5, 10, 80,
     0, V_WALK, 0, 0, 0, 8},
    /* 10 */
    {"151594", "MDC_AWAY_RESP_RATE", 30, 1, 2, -1, "264928", "MDC_DIM_RESP_PER_MIN", 0, 0, 0.6, 4,
     60, 0, V_FOLLOW, 1, 0, 0, 10},
    /* 11 */
    {"150033", "MDC_PRESS_BLD_ART_SYS", 3, 1, 1, -1, "266016", "MDC_DIM_MMHG", 122, 12, 1.5, 50,
     240, 0, V_WALK, 0, 0, 0, 11},
    /* 12 */
    {"150034", "MDC_PRESS_BLD_ART_DIA", 3, 1, 2, -1, "266016", "MDC_DIM_MMHG", 74, 7, 1.0, 25, 150,
     0, V_WALK, 0, 0, 0, 12},
    /* 13 */
    {"150035", "MDC_PRESS_BLD_ART_MEAN", 3, 1, 3, -1, "266016", "MDC_DIM_MMHG", 0, 0, 0, 30, 200, 0,
     V_MEAN, 11, 12, 0, 13},
    /* 14 */
    {"150087", "MDC_PRESS_BLD_VEN_CENT_MEAN", 4, 1, 1, -1, "266016", "MDC_DIM_MMHG", 8, 3, 0.4, 0,
     30, 0, V_WALK, 0, 0, 0, 14},
    /* 15 */
    {"150045", "MDC_PRESS_BLD_ART_PULM_SYS", 6, 1, 1, -1, "266016", "MDC_DIM_MMHG", 25, 4, 0.8, 10,
     80, 0, V_WALK, 0, 0, 0, 15},
    /* 16 */
    {"150046", "MDC_PRESS_BLD_ART_PULM_DIA", 6, 1, 2, -1, "266016", "MDC_DIM_MMHG", 10, 3, 0.5, 2,
     40, 0, V_WALK, 0, 0, 0, 16},
    /* 17 */
    {"150047", "MDC_PRESS_BLD_ART_PULM_MEAN", 6, 1, 3, -1, "266016", "MDC_DIM_MMHG", 0, 0, 0, 5, 60,
     0, V_MEAN, 15, 16, 0, 17},
};
#define NDEFS (sizeof defs / sizeof defs[0])

static const struct wave_def wave_defs[] = {
    {"ecg1", "131329", "MDC_ECG_ELEC_POTL_I", "1.5.1.131329", "266418", "MDC_DIM_MICRO_VOLT", 500,
     2.5, 0, 0.6},
    {"ecg2", "131330", "MDC_ECG_ELEC_POTL_II", "1.5.1.131330", "266418", "MDC_DIM_MICRO_VOLT", 500,
     2.5, 0, 1.0},
    {"v1", "131331", "MDC_ECG_ELEC_POTL_V1", "1.5.1.131331", "266418", "MDC_DIM_MICRO_VOLT", 500,
     2.5, 0, -0.7},
    {"pleth", "150452", "MDC_PULS_OXIM_PLETH", "1.22.1.150452", "262656", "MDC_DIM_DIMLESS", 125,
     1.0, 1, 1.0},
};
#define NWAVEDEFS (sizeof wave_defs / sizeof wave_defs[0])

int gen_wave_list(const char *list, const struct wave_def **out)
{
    int n = 0;
    const char *p = list;

    while (*p) {
        size_t len = strcspn(p, ",");
        size_t k;
        for (k = 0; k < NWAVEDEFS; k++)
            if (strlen(wave_defs[k].name) == len && strncmp(p, wave_defs[k].name, len) == 0)
                break;
        if (k == NWAVEDEFS || len == 0) {
            fprintf(stderr, "cms-monitor: --waveforms: unknown channel '%.*s' (ecg1, ecg2, v1, "
                            "pleth)\n",
                    (int)len, p);
            return -1;
        }
        for (int j = 0; j < n; j++)
            if (out[j] == &wave_defs[k]) {
                fprintf(stderr, "cms-monitor: --waveforms: '%s' twice\n", wave_defs[k].name);
                return -1;
            }
        if (n == MON_MAX_WAVES) {
            fprintf(stderr, "cms-monitor: --waveforms: at most %d channels\n", MON_MAX_WAVES);
            return -1;
        }
        out[n++] = &wave_defs[k];
        p += len;
        if (*p == ',')
            p++;
    }
    return n;
}

int gen_wave_sample(const struct wave_def *d, uint64_t i, double hr_bpm)
{
    double beat = 60.0 / (hr_bpm > 20 ? hr_bpm : 72.0);
    double t = fmod((double)i / d->hz, beat) / beat * (60.0 / 72.0); /* one 72-bpm beat */
    double v = 0;

    if (d->shape == 0) {
        v += 60 * exp(-pow((t - 0.16) / 0.025, 2));
        v -= 40 * exp(-pow((t - 0.245) / 0.008, 2));
        v += 480 * exp(-pow((t - 0.26) / 0.010, 2));
        v -= 90 * exp(-pow((t - 0.275) / 0.009, 2));
        v += 120 * exp(-pow((t - 0.50) / 0.050, 2));
        v *= d->amplitude;
    } else {
        double u = t / (60.0 / 72.0);
        v = 1200 + 1800 * exp(-pow((u - 0.25) / 0.12, 2)) + 500 * exp(-pow((u - 0.55) / 0.1, 2));
    }
    return (int)lround(v);
}

static const char *const family_names[] = {"SMITH",  "GARCIA",    "MUELLER",  "ROSSI",   "DUBOIS",
                                           "NOVAK",  "SILVA",     "KOWALSKI", "NGUYEN",  "OKAFOR",
                                           "TANAKA", "JOHANSSON", "MURPHY",   "IVANOVA", "KHAN"};
static const char *const given_names[2][8] = {
    {"JAMES", "PETER", "DAVID", "AHMED", "JONAS", "MARCO", "SAMUEL", "KENJI"},
    {"ANNA", "MARIA", "LUCIA", "SOFIA", "ELENA", "GRACE", "YUKI", "OLGA"}};

uint64_t gen_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

double gen_uniform(uint64_t *s)
{
    return (double)(gen_rand(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* Roughly standard normal (Irwin-Hall with 4 terms, variance scaled to 1). */
static double gauss(uint64_t *s)
{
    double t = gen_uniform(s) + gen_uniform(s) + gen_uniform(s) + gen_uniform(s);
    return (t - 2.0) * 1.7320508075688772;
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static double clampd(double v, double lo, double hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* The number at the end of the serial ("MON-0042" -> "0042"), or the serial. */
static const char *serial_digits(const char *serial)
{
    size_t n = strlen(serial);
    size_t i = n;
    while (i > 0 && serial[i - 1] >= '0' && serial[i - 1] <= '9')
        i--;
    return i < n ? serial + i : serial;
}

/* A raw HL7 value given on the command line: components allowed, nothing else. */
static int raw_field_ok(const char *s)
{
    for (; *s; s++)
        if (*s == '|' || *s == '~' || *s == '\\' || *s == '&' || (unsigned char)*s < 0x20)
            return 0;
    return 1;
}

/* Index in g->v of instance inst of definition d, or -1 if not sent. */
static int slot_of(const struct gen *g, unsigned inst, unsigned d)
{
    /* Instance 0 holds the NDEFS definitions ordered by rank; the slot of a
     * definition is its rank, further instances follow in blocks. */
    unsigned slot = inst * (unsigned)NDEFS + (inst == 0 ? defs[d].rank : d);
    return slot < g->nobs ? (int)slot : -1;
}

int gen_init(struct gen *g, const struct mon_opts *o, const char *serial, uint64_t seed)
{
    static const hl7_delims delims = {'|', '^', '~', '\\', '&'};
    char mrn[MON_SERIAL_LEN + 80], mrn_esc[2 * sizeof mrn], loc[160];
    uint64_t h = hash_str(serial);
    int n;

    memset(g, 0, sizeof *g);
    g->opts = o;
    g->rng = (seed ^ h) | 1;
    for (int i = 0; i < 8; i++)
        (void)gen_rand(&g->rng);
    g->nobs = o->obs;

    if (hl7_escape(&delims, serial, g->serial_esc, sizeof g->serial_esc) < 0)
        return CMS_EINVAL;
    n = snprintf(g->msh3, sizeof g->msh3, "%s^%s^L", g->serial_esc, g->serial_esc);
    if (n < 0 || (size_t)n >= sizeof g->msh3)
        return CMS_EINVAL;
    snprintf(g->sending_fac, sizeof g->sending_fac, "cms-monitor");

    if (o->patient == NULL)
        snprintf(mrn, sizeof mrn, "MRN-%s", serial);
    else if (o->devices > 1)
        snprintf(mrn, sizeof mrn, "%s%s", o->patient, serial_digits(serial));
    else
        snprintf(mrn, sizeof mrn, "%s", o->patient);
    if (hl7_escape(&delims, mrn, mrn_esc, sizeof mrn_esc) < 0 ||
        hl7_escape(&delims, o->facility, g->facility_esc, sizeof g->facility_esc) < 0)
        return CMS_EINVAL;
    {
        unsigned year = 1935u + (unsigned)((h >> 8) % 70u);
        unsigned month = 1u + (unsigned)((h >> 16) % 12u);
        unsigned day = 1u + (unsigned)((h >> 24) % 28u);
        n = snprintf(g->pid, sizeof g->pid, "PID|||%s^^^%s^MR||%s^%s^^^^^L||%04u%02u%02u|%c",
                     mrn_esc, g->facility_esc, family_names[h % 15u],
                     given_names[(h >> 32) & 1u][(h >> 4) % 8u], year, month, day,
                     (h >> 32) & 1u ? 'F' : 'M');
        if (n < 0 || (size_t)n >= sizeof g->pid)
            return CMS_EINVAL;
    }
    const char *bed = serial_digits(g->serial_esc); /* the bed number: the device's */
    if (o->location != NULL) {
        if (!raw_field_ok(o->location) || strlen(o->location) >= sizeof loc)
            return CMS_EINVAL;
        snprintf(loc, sizeof loc, "%s", o->location);
    } else if (o->wards > 0) { /* device number n in ward WARD-<1 + n % wards> */
        unsigned long num = strtoul(bed, NULL, 10);
        snprintf(loc, sizeof loc, "WARD-%lu^^BED-%.32s", 1 + num % o->wards, bed);
    } else {
        snprintf(loc, sizeof loc, "ICU^^BED-%.32s", bed);
    }
    n = snprintf(g->pv1, sizeof g->pv1, "PV1||I|%s", loc);
    if (n < 0 || (size_t)n >= sizeof g->pv1)
        return CMS_EINVAL;

    if (o->waveforms) {
        int nw = gen_wave_list(o->waveforms, g->waves);
        if (nw < 0)
            return CMS_EINVAL;
        g->nwaves = (unsigned)nw;
    }
    g->v = calloc(g->nobs ? g->nobs : 1, sizeof *g->v);
    if (g->v == NULL)
        return CMS_ENOMEM;
    for (unsigned inst = 0; inst * (unsigned)NDEFS < g->nobs; inst++) {
        for (unsigned d = 0; d < NDEFS; d++) {
            int s = slot_of(g, inst, d);
            if (s < 0)
                continue;
            const struct vdef *vd = &defs[d];
            g->v[s].base = clampd(vd->base + vd->base_sd * gauss(&g->rng), vd->min, vd->max);
            g->v[s].value = g->v[s].base;
        }
    }
    return CMS_OK;
}

void gen_free(struct gen *g)
{
    free(g->v);
    g->v = NULL;
}

/* Advances the random walk of every sent parameter. now_ms: wall clock. */
static void advance(struct gen *g, uint64_t now_ms)
{
    unsigned ninst = (g->nobs + (unsigned)NDEFS - 1) / (unsigned)NDEFS;
    for (unsigned inst = 0; inst < ninst; inst++) {
        for (unsigned d = 0; d < NDEFS; d++) {
            int s = slot_of(g, inst, d);
            if (s < 0)
                continue;
            struct vital *v = &g->v[s];
            const struct vdef *vd = &defs[d];
            if (vd->intermittent) {
                if (v->measured_ms != 0 && now_ms - v->measured_ms < NIBP_INTERVAL_MS)
                    continue;
                v->measured_ms = now_ms;
            }
            if (vd->kind == V_WALK) {
                v->value += vd->step * gauss(&g->rng) + 0.05 * (v->base - v->value);
                v->value = clampd(v->value, vd->min, vd->max);
            }
        }
        /* Keep diastolic below systolic. */
        for (unsigned d = 0; d < NDEFS; d++) {
            if (defs[d].kind != V_MEAN)
                continue;
            int r1 = slot_of(g, inst, (unsigned)defs[d].ref);
            int r2 = slot_of(g, inst, (unsigned)defs[d].ref2);
            if (r1 >= 0 && r2 >= 0 && g->v[r2].value > g->v[r1].value - 15)
                g->v[r2].value = g->v[r1].value - 15;
        }
        /* Dependent parameters, after their references moved. */
        for (unsigned d = 0; d < NDEFS; d++) {
            int s = slot_of(g, inst, d);
            if (s < 0 || defs[d].kind == V_WALK)
                continue;
            const struct vdef *vd = &defs[d];
            struct vital *v = &g->v[s];
            int r1 = slot_of(g, inst, (unsigned)vd->ref);
            if (vd->kind == V_FOLLOW) {
                double ref = r1 >= 0 ? g->v[r1].value : defs[vd->ref].base;
                v->value = clampd(ref + vd->step * gauss(&g->rng), vd->min, vd->max);
            } else {
                int r2 = slot_of(g, inst, (unsigned)vd->ref2);
                double sys = r1 >= 0 ? g->v[r1].value : defs[vd->ref].base;
                double dia = r2 >= 0 ? g->v[r2].value : defs[vd->ref2].base;
                if (vd->intermittent && r1 >= 0)
                    v->measured_ms = g->v[r1].measured_ms;
                v->value = dia + (sys - dia) / 3.0;
            }
        }
    }
}

/* "YYYYMMDDHHMMSS" in UTC for ms since the epoch, cached per second. */
static void fmt_utc(uint64_t ms, char out[16])
{
    static uint64_t cached_sec = UINT64_MAX;
    static char cached[32];
    uint64_t sec = ms / 1000;
    if (sec != cached_sec) {
        time_t t = (time_t)sec;
        struct tm tm;
        gmtime_r(&t, &tm);
        snprintf(cached, sizeof cached, "%04u%02u%02u%02u%02u%02u",
                 (unsigned)(tm.tm_year + 1900) % 10000u, (unsigned)(tm.tm_mon + 1) % 100u,
                 (unsigned)tm.tm_mday % 100u, (unsigned)tm.tm_hour % 100u,
                 (unsigned)tm.tm_min % 100u, (unsigned)tm.tm_sec % 100u);
        cached_sec = sec;
    }
    memcpy(out, cached, 15);
    out[15] = '\0';
}

/* Output buffer with append helpers: the hot path avoids printf, which
 * dominated the generator's CPU profile. */
struct sb {
    char *p;
    size_t len, cap;
    int overflow;
};

static inline void sb_put(struct sb *b, const char *s, size_t n)
{
    if (b->overflow || n > b->cap - b->len) {
        b->overflow = 1;
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static inline void sb_puts(struct sb *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_putu(struct sb *b, uint64_t v)
{
    char t[24];
    size_t i = sizeof t;
    do {
        t[--i] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    sb_put(b, t + i, sizeof t - i);
}

/* v with exactly decimals digits after the point (0..6), rounded half up. */
static void sb_putfix(struct sb *b, double v, int decimals)
{
    static const uint64_t pow10[] = {1, 10, 100, 1000, 10000, 100000, 1000000};
    uint64_t scale = pow10[decimals < 0 ? 0 : decimals > 6 ? 6 : decimals];
    if (v < 0) {
        sb_put(b, "-", 1);
        v = -v;
    }
    uint64_t x = (uint64_t)(v * (double)scale + 0.5);
    sb_putu(b, x / scale);
    if (scale > 1) {
        char t[8];
        uint64_t f = x % scale;
        size_t n = 0;
        for (uint64_t d = scale / 10; d > 0; d /= 10)
            t[n++] = (char)('0' + (f / d) % 10u);
        sb_put(b, ".", 1);
        sb_put(b, t, n);
    }
}

/* HR of the device (first instance), for the ECG shape. */
static double heart_rate(const struct gen *g)
{
    int s = slot_of(g, 0, 0);
    return s >= 0 ? g->v[s].value : 72.0;
}

/* The waveform blocks of one message (see the top of the file). */
static void put_waves(struct gen *g, struct sb *b, unsigned *set_id, uint64_t now_ms,
                      unsigned *nsamples)
{
    double per_s = g->opts->rate > 0 ? 1.0 / g->opts->rate : 1.0;
    double hr = heart_rate(g);

    if (g->wave_epoch_ms == 0)
        g->wave_epoch_ms = now_ms;
    for (unsigned w = 0; w < g->nwaves; w++) {
        const struct wave_def *d = g->waves[w];
        uint64_t first = g->wave_next[w];
        uint64_t n = (uint64_t)llround(d->hz * per_s);
        uint64_t start_ms = g->wave_epoch_ms + (uint64_t)((double)first * 1000.0 / d->hz);
        char t_s[16], ms3[4];

        if (n == 0)
            n = 1;
        fmt_utc(start_ms, t_s);
        ms3[0] = '.';
        ms3[1] = (char)('0' + start_ms % 1000u / 100u);
        ms3[2] = (char)('0' + start_ms % 100u / 10u);
        ms3[3] = (char)('0' + start_ms % 10u);
        sb_puts(b, "OBX|");
        sb_putu(b, (*set_id)++);
        sb_puts(b, "|NA|");
        sb_puts(b, d->code);
        sb_put(b, "^", 1);
        sb_puts(b, d->label);
        sb_puts(b, "^MDC|");
        sb_puts(b, d->sub_id);
        sb_put(b, "|", 1);
        for (uint64_t i = 0; i < n; i++) {
            int v = gen_wave_sample(d, first + i, hr);
            if (i)
                sb_put(b, "^", 1);
            if (v < 0) {
                sb_put(b, "-", 1);
                v = -v;
            }
            sb_putu(b, (uint64_t)v);
        }
        sb_put(b, "|", 1);
        sb_puts(b, d->unit_code);
        sb_put(b, "^", 1);
        sb_puts(b, d->unit_label);
        sb_puts(b, "^MDC|||||F|||");
        sb_puts(b, t_s);
        sb_put(b, ms3, 4);
        sb_puts(b, "+0000\rOBX|");
        sb_putu(b, (*set_id)++);
        sb_puts(b, "|NM|0^MDC_ATTR_SAMP_RATE^MDC|");
        sb_puts(b, d->sub_id);
        sb_puts(b, ".1|");
        sb_putfix(b, d->hz, d->hz == floor(d->hz) ? 0 : 1);
        sb_puts(b, "|264608^MDC_DIM_PER_SEC^MDC|||||F\rOBX|");
        sb_putu(b, (*set_id)++);
        sb_puts(b, "|NM|2327^MDC_ATTR_NU_MSMT_RES^MDC|");
        sb_puts(b, d->sub_id);
        sb_puts(b, ".2|");
        sb_putfix(b, d->resolution, 1);
        sb_put(b, "|", 1);
        sb_puts(b, d->unit_code);
        sb_put(b, "^", 1);
        sb_puts(b, d->unit_label);
        sb_puts(b, "^MDC|||||F\r");
        g->wave_next[w] = first + n;
        *nsamples += (unsigned)n;
    }
}

int gen_message(struct gen *g, const char *ctrl, char **out, size_t *len, unsigned *nobs,
                unsigned *nsamples)
{
    static char *scratch;
    static size_t scratch_cap;
    struct timespec ts;
    uint64_t now_ms;
    char now_s[16], t_s[16], ms3[4];
    unsigned set_id = 1, count = 0;
    unsigned ninst = (g->nobs + (unsigned)NDEFS - 1) / (unsigned)NDEFS;
    size_t need = 2048 + (size_t)g->nobs * 200 + (size_t)ninst * 3 * 120;
    for (unsigned w = 0; w < g->nwaves; w++)
        need += 600 + (size_t)(g->waves[w]->hz * (g->opts->rate > 0 ? 1.0 / g->opts->rate : 1.0) +
                               1.0) * 8;
    struct sb b;

    if (scratch_cap < need) {
        char *p = realloc(scratch, need);
        if (p == NULL)
            return CMS_ENOMEM;
        scratch = p;
        scratch_cap = need;
    }
    b.p = scratch;
    b.len = 0;
    b.cap = scratch_cap;
    b.overflow = 0;

    clock_gettime(CLOCK_REALTIME, &ts);
    now_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    advance(g, now_ms);
    fmt_utc(now_ms, now_s);

    sb_puts(&b, "MSH|^~\\&|");
    sb_puts(&b, g->msh3);
    sb_put(&b, "|", 1);
    sb_puts(&b, g->sending_fac);
    sb_puts(&b, "|CMS|");
    sb_puts(&b, g->facility_esc);
    sb_put(&b, "|", 1);
    sb_puts(&b, now_s);
    ms3[0] = (char)('.');
    ms3[1] = (char)('0' + now_ms % 1000u / 100u);
    ms3[2] = (char)('0' + now_ms % 100u / 10u);
    ms3[3] = (char)('0' + now_ms % 10u);
    sb_put(&b, ms3, 4);
    sb_puts(&b, "+0000||ORU^R01^ORU_R01|");
    sb_puts(&b, ctrl);
    sb_puts(&b, "|P|2.6|||NE|AL||UNICODE UTF-8|||"
                "PCD_DEC_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\r");
    sb_puts(&b, g->pid);
    sb_put(&b, "\r", 1);
    sb_puts(&b, g->pv1);
    sb_puts(&b, "\rOBR|1|");
    for (int k = 0; k < 2; k++) {
        sb_puts(&b, ctrl);
        sb_put(&b, "^", 1);
        sb_puts(&b, g->serial_esc);
        sb_put(&b, "|", 1);
    }
    sb_puts(&b, "182777000^monitoring of patient^SCT|||");
    sb_puts(&b, now_s);
    sb_puts(&b, "+0000\r");
    sb_puts(&b, "OBX|");
    sb_putu(&b, set_id++);
    sb_puts(&b, "||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X\r");

    for (unsigned inst = 0; inst < ninst; inst++) {
        int vmd_done[sizeof vmds / sizeof vmds[0]] = {0};
        for (unsigned d = 0; d < NDEFS; d++) {
            int s = slot_of(g, inst, d);
            if (s < 0)
                continue;
            const struct vdef *vd = &defs[d];
            const struct vital *v = &g->v[s];
            if (vd->vmd >= 0 && !vmd_done[vd->vmd] && inst == 0) {
                const struct vmd_def *m = &vmds[vd->vmd];
                sb_puts(&b, "OBX|");
                sb_putu(&b, set_id++);
                sb_puts(&b, "||");
                sb_puts(&b, m->code);
                sb_put(&b, "^", 1);
                sb_puts(&b, m->label);
                sb_puts(&b, "^MDC|");
                sb_puts(&b, m->sub_id);
                sb_puts(&b, "|||||||X\r");
                vmd_done[vd->vmd] = 1;
            }
            if (vd->intermittent && v->measured_ms != 0)
                fmt_utc(v->measured_ms, t_s);
            else
                memcpy(t_s, now_s, sizeof t_s);
            sb_puts(&b, "OBX|");
            sb_putu(&b, set_id++);
            sb_puts(&b, "|NM|");
            sb_puts(&b, vd->code);
            sb_put(&b, "^", 1);
            sb_puts(&b, vd->label);
            sb_puts(&b, "^MDC|1.");
            sb_putu(&b, vd->vmd_id);
            sb_put(&b, ".", 1);
            sb_putu(&b, vd->chan + inst);
            sb_put(&b, ".", 1);
            sb_putu(&b, vd->metric);
            sb_put(&b, "|", 1);
            sb_putfix(&b, v->value, vd->decimals);
            sb_put(&b, "|", 1);
            sb_puts(&b, vd->unit_code);
            sb_put(&b, "^", 1);
            sb_puts(&b, vd->unit_label);
            sb_puts(&b, "^MDC|||||R|||");
            sb_puts(&b, t_s);
            sb_puts(&b, "+0000\r");
            count++;
        }
    }
    *nsamples = 0;
    put_waves(g, &b, &set_id, now_ms, nsamples);
    if (b.overflow)
        return CMS_ELIMIT;

    *out = malloc(b.len + 3);
    if (*out == NULL)
        return CMS_ENOMEM;
    *len = mllp_encode(*out, b.len + 3, b.p, b.len);
    *nobs = count;
    return CMS_OK;
}
