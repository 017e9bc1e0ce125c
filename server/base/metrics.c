/*
 * metrics.c - the metrics registry: per-thread shards of 64-bit slots, summed
 * at a scrape, written in the Prometheus text format 0.0.4. See metrics.h.
 *
 * Slots: a counter series is one uint64; a gauge series one double (its bits
 * in the slot); a histogram series nbuckets + 1 counts (the last is +Inf,
 * not cumulative) and the sum (a double). A bound thread is its shard's only
 * writer: relaxed load, add, relaxed store, which the compiler turns into
 * plain moves (no lock prefix) and which a concurrent reader sees whole.
 */
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

typedef _Atomic uint64_t slot_t;

struct metrics_registry {
    uint64_t gen; /* unique per registry: a thread bound to a freed one is told apart
                     from a new one at the same address */
    const metric_def *defs;
    size_t ndefs;
    unsigned nshards;   /* bound shards; shards[nshards] is the shared one */
    size_t nslots;      /* per shard */
    size_t *offset;     /* first slot of each metric */
    unsigned *nseries;  /* series of each metric */
    unsigned *nvalues1; /* values of label 1 (1 without it) */
    unsigned *width;    /* slots per series */
    slot_t **shards;    /* nshards + 1, each nslots, cache-line aligned */
};

static _Atomic(metrics_registry *) installed;
static _Atomic uint64_t generations;

static __thread struct {
    uint64_t gen; /* 0: unbound */
    slot_t *slots;
} bound;

/* ---- definitions ------------------------------------------------------------ */

static bool name_ok(const char *s, bool colon)
{
    if (!s || !*s)
        return false;
    for (const char *c = s; *c; c++) {
        bool alpha = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_' ||
                     (colon && *c == ':');
        if (!alpha && !(c > s && *c >= '0' && *c <= '9'))
            return false;
    }
    return true;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static unsigned count_values(const char *const *v)
{
    unsigned n = 0;
    while (v && v[n])
        n++;
    return n;
}

static int check_def(const metric_def *d, char *err, size_t cap)
{
    if (!name_ok(d->name, true)) {
        snprintf(err, cap, "metric name \"%s\" is not valid", d->name ? d->name : "(null)");
        return -1;
    }
    if (!d->help || strchr(d->help, '\n')) {
        snprintf(err, cap, "%s: help must be one line", d->name);
        return -1;
    }
    if ((d->type == METRIC_COUNTER) != ends_with(d->name, "_total")) {
        snprintf(err, cap, "%s: counters and only counters end in _total", d->name);
        return -1;
    }
    if (d->type > METRIC_HISTOGRAM || (d->type != METRIC_GAUGE && d->agg != METRIC_AGG_SUM) ||
        d->agg > METRIC_AGG_GLOBAL) {
        snprintf(err, cap, "%s: bad type or aggregation", d->name);
        return -1;
    }
    for (int i = 0; i < METRICS_MAX_LABELS; i++) {
        const char *ln = d->label_names[i];
        if (!ln) {
            if (d->label_values[i] || (i == 0 && d->label_names[1])) {
                snprintf(err, cap, "%s: label %d has values but no name (or label 1 without 0)",
                         d->name, i);
                return -1;
            }
            continue;
        }
        if (!name_ok(ln, false) || strncmp(ln, "__", 2) == 0 ||
            (d->type == METRIC_HISTOGRAM && strcmp(ln, "le") == 0) ||
            (i == 1 && strcmp(ln, d->label_names[0]) == 0)) {
            snprintf(err, cap, "%s: label name \"%s\" is not valid here", d->name, ln);
            return -1;
        }
        if (count_values(d->label_values[i]) == 0) {
            snprintf(err, cap, "%s: label \"%s\" has no values", d->name, ln);
            return -1;
        }
    }
    if (d->type == METRIC_HISTOGRAM) {
        if (!d->buckets || d->nbuckets == 0 || d->nbuckets > METRICS_MAX_BUCKETS) {
            snprintf(err, cap, "%s: a histogram needs 1..%d buckets", d->name,
                     METRICS_MAX_BUCKETS);
            return -1;
        }
        for (unsigned b = 0; b < d->nbuckets; b++) {
            if (!isfinite(d->buckets[b]) || (b > 0 && d->buckets[b] <= d->buckets[b - 1])) {
                snprintf(err, cap, "%s: bucket bounds must be finite and increasing", d->name);
                return -1;
            }
        }
    } else if (d->buckets || d->nbuckets) {
        snprintf(err, cap, "%s: buckets on a non-histogram", d->name);
        return -1;
    }
    return 0;
}

metrics_registry *metrics_new(const metric_def *defs, size_t ndefs, unsigned nshards, char *err,
                              size_t cap)
{
    metrics_registry *r = NULL;
    if (nshards < 1 || nshards > 256 || ndefs == 0) {
        snprintf(err, cap, "1..256 shards and at least one metric");
        return NULL;
    }
    for (size_t i = 0; i < ndefs; i++) {
        if (check_def(&defs[i], err, cap) != 0)
            return NULL;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(defs[i].name, defs[j].name) == 0) {
                snprintf(err, cap, "metric %s defined twice", defs[i].name);
                return NULL;
            }
        }
    }
    r = calloc(1, sizeof(*r));
    if (!r)
        goto oom;
    r->gen = atomic_fetch_add(&generations, 1) + 1;
    r->defs = defs;
    r->ndefs = ndefs;
    r->nshards = nshards;
    r->offset = calloc(ndefs, sizeof(*r->offset));
    r->nseries = calloc(ndefs, sizeof(*r->nseries));
    r->nvalues1 = calloc(ndefs, sizeof(*r->nvalues1));
    r->width = calloc(ndefs, sizeof(*r->width));
    r->shards = calloc(nshards + 1, sizeof(*r->shards));
    if (!r->offset || !r->nseries || !r->nvalues1 || !r->width || !r->shards)
        goto oom;
    size_t n = 0;
    for (size_t i = 0; i < ndefs; i++) {
        const metric_def *d = &defs[i];
        unsigned v0 = d->label_names[0] ? count_values(d->label_values[0]) : 1;
        unsigned v1 = d->label_names[1] ? count_values(d->label_values[1]) : 1;
        r->nvalues1[i] = v1;
        r->nseries[i] = v0 * v1;
        r->width[i] = d->type == METRIC_HISTOGRAM ? d->nbuckets + 2 : 1;
        r->offset[i] = n;
        n += (size_t)r->nseries[i] * r->width[i];
    }
    r->nslots = n;
    size_t bytes = (n * sizeof(slot_t) + 63) / 64 * 64;
    for (unsigned s = 0; s <= nshards; s++) {
        r->shards[s] = aligned_alloc(64, bytes);
        if (!r->shards[s])
            goto oom;
        for (size_t k = 0; k < n; k++)
            atomic_init(&r->shards[s][k], 0);
    }
    return r;
oom:
    snprintf(err, cap, "out of memory");
    metrics_free(r);
    return NULL;
}

void metrics_free(metrics_registry *r)
{
    if (!r)
        return;
    metrics_registry *cur = r;
    atomic_compare_exchange_strong(&installed, &cur, NULL);
    if (r->shards)
        for (unsigned s = 0; s <= r->nshards; s++)
            free(r->shards[s]);
    free(r->shards);
    free(r->offset);
    free(r->nseries);
    free(r->nvalues1);
    free(r->width);
    free(r);
}

void metrics_install(metrics_registry *r)
{
    atomic_store(&installed, r);
}

metrics_registry *metrics_installed(void)
{
    return atomic_load_explicit(&installed, memory_order_acquire);
}

void metrics_bind_thread(int shard)
{
    metrics_registry *r = metrics_installed();
    if (!r || shard < 0 || (unsigned)shard >= r->nshards) {
        bound.gen = 0;
        bound.slots = NULL;
        return;
    }
    bound.gen = r->gen;
    bound.slots = r->shards[shard];
}

unsigned metrics_series2(const metrics_registry *r, unsigned id, unsigned i0, unsigned i1)
{
    if (!r || id >= r->ndefs)
        return 0;
    return i0 * r->nvalues1[id] + i1;
}

/* ---- updates ---------------------------------------------------------------- */

static inline double bits_to_double(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof(d));
    return d;
}

static inline uint64_t double_to_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

/* The first slot of (id, series) if it exists and has type t; the shard to
 * write in *own (NULL: the shared one, with atomic read-modify-write). */
static slot_t *series_slot(unsigned id, unsigned series, enum metric_type t,
                           metrics_registry **rp, slot_t **own)
{
    metrics_registry *r = atomic_load_explicit(&installed, memory_order_relaxed);
    if (!r || id >= r->ndefs || series >= r->nseries[id] || r->defs[id].type != t)
        return NULL;
    size_t off = r->offset[id] + (size_t)series * r->width[id];
    *rp = r;
    *own = bound.gen == r->gen ? bound.slots + off : NULL;
    return r->shards[r->nshards] + off;
}

static inline void own_add_u64(slot_t *s, uint64_t n)
{
    atomic_store_explicit(s, atomic_load_explicit(s, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline void own_add_double(slot_t *s, double d)
{
    double v = bits_to_double(atomic_load_explicit(s, memory_order_relaxed)) + d;
    atomic_store_explicit(s, double_to_bits(v), memory_order_relaxed);
}

static void shared_add_double(slot_t *s, double d)
{
    uint64_t old = atomic_load_explicit(s, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(s, &old, double_to_bits(bits_to_double(old) + d),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

void metrics_add(unsigned id, unsigned series, uint64_t n)
{
    metrics_registry *r;
    slot_t *own, *shared = series_slot(id, series, METRIC_COUNTER, &r, &own);
    if (!shared)
        return;
    if (own)
        own_add_u64(own, n);
    else
        atomic_fetch_add_explicit(shared, n, memory_order_relaxed);
}

void metrics_gauge_add(unsigned id, unsigned series, double delta)
{
    metrics_registry *r;
    slot_t *own, *shared = series_slot(id, series, METRIC_GAUGE, &r, &own);
    if (!shared || r->defs[id].agg == METRIC_AGG_MIN)
        return;
    if (own && r->defs[id].agg == METRIC_AGG_SUM)
        own_add_double(own, delta);
    else
        shared_add_double(shared, delta);
}

void metrics_gauge_set(unsigned id, unsigned series, double v)
{
    metrics_registry *r;
    slot_t *own, *shared = series_slot(id, series, METRIC_GAUGE, &r, &own);
    if (!shared)
        return;
    if (r->defs[id].agg == METRIC_AGG_GLOBAL)
        atomic_store_explicit(shared, double_to_bits(v), memory_order_relaxed);
    else if (own)
        atomic_store_explicit(own, double_to_bits(v), memory_order_relaxed);
    else if (r->defs[id].agg == METRIC_AGG_SUM)
        atomic_store_explicit(shared, double_to_bits(v), memory_order_relaxed);
}

void metrics_observe(unsigned id, unsigned series, double v)
{
    metrics_registry *r;
    slot_t *own, *shared = series_slot(id, series, METRIC_HISTOGRAM, &r, &own);
    if (!shared || isnan(v))
        return;
    const metric_def *d = &r->defs[id];
    unsigned b = 0;
    while (b < d->nbuckets && v > d->buckets[b])
        b++;
    if (own) {
        own_add_u64(own + b, 1);
        own_add_double(own + d->nbuckets + 1, v);
    } else {
        atomic_fetch_add_explicit(shared + b, 1, memory_order_relaxed);
        shared_add_double(shared + d->nbuckets + 1, v);
    }
}

/* ---- reading ---------------------------------------------------------------- */

static uint64_t sum_u64(const metrics_registry *r, size_t off)
{
    uint64_t v = 0;
    for (unsigned s = 0; s <= r->nshards; s++)
        v += atomic_load_explicit(&r->shards[s][off], memory_order_relaxed);
    return v;
}

static double sum_double(const metrics_registry *r, size_t off)
{
    double v = 0;
    for (unsigned s = 0; s <= r->nshards; s++)
        v += bits_to_double(atomic_load_explicit(&r->shards[s][off], memory_order_relaxed));
    return v;
}

static double gauge_value(const metrics_registry *r, unsigned id, size_t off)
{
    switch (r->defs[id].agg) {
    case METRIC_AGG_GLOBAL:
        return bits_to_double(
            atomic_load_explicit(&r->shards[r->nshards][off], memory_order_relaxed));
    case METRIC_AGG_MIN: {
        double m = INFINITY;
        for (unsigned s = 0; s < r->nshards; s++) {
            double v = bits_to_double(atomic_load_explicit(&r->shards[s][off],
                                                           memory_order_relaxed));
            if (v < m)
                m = v;
        }
        return m;
    }
    default:
        return sum_double(r, off);
    }
}

double metrics_value(const metrics_registry *r, unsigned id, unsigned series)
{
    if (!r || id >= r->ndefs || series >= r->nseries[id])
        return 0;
    size_t off = r->offset[id] + (size_t)series * r->width[id];
    switch (r->defs[id].type) {
    case METRIC_COUNTER:
        return (double)sum_u64(r, off);
    case METRIC_GAUGE:
        return gauge_value(r, id, off);
    default: {
        uint64_t n = 0;
        for (unsigned b = 0; b <= r->defs[id].nbuckets; b++)
            n += sum_u64(r, off + b);
        return (double)n;
    }
    }
}

/* ---- exposition ------------------------------------------------------------- */

typedef struct buf {
    char *p;
    size_t len, cap;
    bool failed;
} buf;

static void put(buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(buf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* Writes s with the escapes of a HELP text (\\ and \n) or, with quote, of a
 * label value (also \"). */
static void put_escaped(buf *b, const char *s, bool quote)
{
    for (const char *c = s; *c; c++) {
        if (*c == '\\')
            puts_(b, "\\\\");
        else if (*c == '\n')
            puts_(b, "\\n");
        else if (quote && *c == '"')
            puts_(b, "\\\"");
        else
            put(b, c, 1);
    }
}

/* The shortest decimal that reads back as d into s; +Inf, -Inf, NaN as the
 * format spells them. */
static void fmt_double(char *s, size_t cap, double d)
{
    if (isnan(d)) {
        snprintf(s, cap, "NaN");
        return;
    }
    if (isinf(d)) {
        snprintf(s, cap, "%s", d > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (d == floor(d) && fabs(d) < 9007199254740992.0) { /* integers as integers */
        snprintf(s, cap, "%.0f", d);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(s, cap, "%.*g", prec, d);
        if (strtod(s, NULL) == d)
            break;
    }
}

static void put_double(buf *b, double d)
{
    char s[40];
    fmt_double(s, sizeof(s), d);
    puts_(b, s);
}

static void put_u64(buf *b, uint64_t v)
{
    char s[24];
    snprintf(s, sizeof(s), "%llu", (unsigned long long)v);
    puts_(b, s);
}

/* name{labels of series[,le="bound"]} with a trailing space. le may be NULL. */
static void put_series(buf *b, const metric_def *d, const char *suffix, unsigned i0, unsigned i1,
                       const char *le)
{
    puts_(b, d->name);
    if (suffix)
        puts_(b, suffix);
    bool any = false;
    for (int k = 0; k < METRICS_MAX_LABELS; k++) {
        if (!d->label_names[k])
            continue;
        puts_(b, any ? "," : "{");
        any = true;
        puts_(b, d->label_names[k]);
        puts_(b, "=\"");
        put_escaped(b, d->label_values[k][k == 0 ? i0 : i1], true);
        puts_(b, "\"");
    }
    if (le) {
        puts_(b, any ? "," : "{");
        any = true;
        puts_(b, "le=\"");
        puts_(b, le);
        puts_(b, "\"");
    }
    puts_(b, any ? "} " : " ");
}

static void put_histogram(buf *b, const metrics_registry *r, unsigned id, size_t off, unsigned i0,
                          unsigned i1)
{
    const metric_def *d = &r->defs[id];
    uint64_t cum = 0;
    char le[40];
    for (unsigned k = 0; k <= d->nbuckets; k++) {
        cum += sum_u64(r, off + k);
        fmt_double(le, sizeof(le), k < d->nbuckets ? d->buckets[k] : INFINITY);
        put_series(b, d, "_bucket", i0, i1, le);
        put_u64(b, cum);
        puts_(b, "\n");
    }
    put_series(b, d, "_sum", i0, i1, NULL);
    put_double(b, sum_double(r, off + d->nbuckets + 1));
    puts_(b, "\n");
    put_series(b, d, "_count", i0, i1, NULL);
    put_u64(b, cum);
    puts_(b, "\n");
}

char *metrics_render(const metrics_registry *r, size_t *len)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    buf b = {0};
    put(&b, "", 0);
    for (unsigned id = 0; id < r->ndefs; id++) {
        const metric_def *d = &r->defs[id];
        puts_(&b, "# HELP ");
        puts_(&b, d->name);
        puts_(&b, " ");
        put_escaped(&b, d->help, false);
        puts_(&b, "\n# TYPE ");
        puts_(&b, d->name);
        puts_(&b, " ");
        puts_(&b, type_names[d->type]);
        puts_(&b, "\n");
        for (unsigned s = 0; s < r->nseries[id]; s++) {
            unsigned i0 = s / r->nvalues1[id], i1 = s % r->nvalues1[id];
            size_t off = r->offset[id] + (size_t)s * r->width[id];
            if (d->type == METRIC_HISTOGRAM) {
                put_histogram(&b, r, id, off, i0, i1);
                continue;
            }
            put_series(&b, d, NULL, i0, i1, NULL);
            if (d->type == METRIC_COUNTER)
                put_u64(&b, sum_u64(r, off));
            else
                put_double(&b, gauge_value(r, id, off));
            puts_(&b, "\n");
        }
    }
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    if (len)
        *len = b.len;
    return b.p;
}
