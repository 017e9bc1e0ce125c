/*
 * metrics.h - a registry of counters, gauges and histograms with a fixed set
 * of series, updated without locks by several threads and written out in the
 * Prometheus text exposition format 0.0.4.
 *
 * Every metric family is declared up front in a table (metric_def): its name,
 * help, type, at most two labels with a fixed list of values each, and for a
 * histogram its bucket upper bounds. A series is one combination of label
 * values (metrics_series2()), so nothing is allocated or looked up by name
 * while serving, and no label value can come from a peer (no device or patient
 * identifiers: the values are in the table).
 *
 * Shards: each worker thread binds itself to a shard of its own
 * (metrics_bind_thread()) and is its only writer, so an update is a relaxed
 * load and store of a 64-bit slot (no lock, no atomic read-modify-write, no
 * cache line shared with another writer). A thread that did not bind (the
 * main thread, libuv's thread pool) updates a shared shard with atomic
 * read-modify-write instructions. A scrape (metrics_render()) sums the shards;
 * it may run on any thread while the writers go on: each slot is read whole,
 * and every value is at most one update behind.
 *
 * Units are base units (seconds, bytes, messages); counter names end in
 * "_total" (checked by metrics_new()).
 *
 * The process has one installed registry (metrics_install()); the update
 * functions act on it and do nothing when none is installed (metrics off), so
 * that instrumented code needs no registry pointer.
 *
 * Thread: metrics_new/metrics_free/metrics_install at start-up and shutdown
 * (no update may run meanwhile); metrics_bind_thread on the thread it binds;
 * updates and metrics_render on any thread.
 */
#ifndef CMS_METRICS_H
#define CMS_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct metrics_registry metrics_registry;

enum metric_type { METRIC_COUNTER = 0, METRIC_GAUGE, METRIC_HISTOGRAM };

/* How a gauge's shards combine at a scrape. */
enum metric_agg {
    METRIC_AGG_SUM = 0, /* per-thread parts of one quantity (connections open, queue depth) */
    METRIC_AGG_MIN,     /* the worst of the bound shards, e.g. "database up" (1 only when
                           every worker's database connection is up); unbound threads'
                           updates are ignored for it */
    METRIC_AGG_GLOBAL   /* one value for the process, set by any thread (last write wins):
                           expiry timestamps, "ready" */
};

#define METRICS_MAX_LABELS 2
#define METRICS_MAX_BUCKETS 24

typedef struct metric_def {
    const char *name; /* [a-zA-Z_:][a-zA-Z0-9_:]*; counters end in "_total" */
    const char *help; /* one line */
    enum metric_type type;
    enum metric_agg agg; /* gauges only (counters and histograms sum) */
    /* Label names (NULL = unused; label 1 only with label 0) and, for each, a
     * NULL-terminated list of its values. All static strings. */
    const char *label_names[METRICS_MAX_LABELS];
    const char *const *label_values[METRICS_MAX_LABELS];
    /* Histograms: upper bounds, strictly increasing, in base units, without
     * +Inf (added); at most METRICS_MAX_BUCKETS. */
    const double *buckets;
    unsigned nbuckets;
} metric_def;

/*
 * A registry for defs (borrowed: must outlive it; metric ids are indexes into
 * defs) with nshards bound shards (1..256) plus the shared one. Checks every
 * definition (names, label names, "le" not used as a label, counter suffix,
 * bucket order). Returns NULL with a reason in err (cap bytes) on a bad
 * definition or when out of memory. All values start at 0.
 */
metrics_registry *metrics_new(const metric_def *defs, size_t ndefs, unsigned nshards, char *err,
                              size_t cap);

/* Frees r (NULL allowed). If it is installed, uninstalls it first. */
void metrics_free(metrics_registry *r);

/* Makes r the registry the update functions act on (NULL: none, updates do nothing). */
void metrics_install(metrics_registry *r);

/* The installed registry, or NULL. */
metrics_registry *metrics_installed(void);

/*
 * The calling thread becomes the only writer of shard (< nshards) of the
 * installed registry; it must not be bound to it by another thread.
 * metrics_bind_thread(-1) unbinds (updates go to the shared shard again).
 * Binding to a registry that is later uninstalled is harmless.
 */
void metrics_bind_thread(int shard);

/* The series index of label values (i0, i1) of metric id: i0 * count(label 1) + i1. */
unsigned metrics_series2(const metrics_registry *r, unsigned id, unsigned i0, unsigned i1);

/*
 * Updates (on the installed registry; no-ops without one, or for an id,
 * series or type that does not match: they never fail):
 *   metrics_add        counter id, series += n
 *   metrics_gauge_add  gauge id, series += delta (SUM gauges)
 *   metrics_gauge_set  gauge id, series = v (the calling thread's shard for
 *                      SUM/MIN gauges, the process value for GLOBAL ones)
 *   metrics_observe    histogram id, series: one observation of v
 */
void metrics_add(unsigned id, unsigned series, uint64_t n);
void metrics_gauge_add(unsigned id, unsigned series, double delta);
void metrics_gauge_set(unsigned id, unsigned series, double v);
void metrics_observe(unsigned id, unsigned series, double v);

/*
 * Current value of a counter or gauge series summed (aggregated) over the
 * shards, or, for a histogram, its number of observations. For tests and
 * health answers. 0 for an unknown id/series.
 */
double metrics_value(const metrics_registry *r, unsigned id, unsigned series);

/*
 * Writes every family of r in the text exposition format 0.0.4 (HELP, TYPE,
 * one line per series; histograms as cumulative _bucket{le=...} lines, +Inf
 * included, then _sum and _count). Returns a malloc()ed NUL-terminated buffer
 * the caller frees, its length in *len; NULL when out of memory.
 */
char *metrics_render(const metrics_registry *r, size_t *len);

/* The content type of metrics_render()'s output. */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif
