/*
 * store_latest.c - the newest committed numeric value of each (device, MDC
 * code, sub id), written to cms.latest_observations (the cms.latest_vitals
 * view) once a second.
 *
 * Why not in the ingest statement: an upsert per (device, code) in every
 * group commit measured (pgbench, 256 messages x 10 observations from 200
 * devices) as adding more than half again to the statement's time, on the
 * path whose rate is the product's. Here a value costs one hash lookup when
 * its message commits, and the database one upsert per (device, code) per
 * second, whatever the message rate.
 *
 * Kept: only values of messages that committed and were new (a duplicate
 * adds nothing). Per key the newest observation time wins (times are read
 * from the hl7_time_format text; one without an offset counts as UTC here,
 * the database compares again with the session's zone). A second later, or
 * at store_close, the kept values go as one cms.latest_upsert statement on
 * the control connection and the map starts empty again: it holds at most
 * one entry per (device, code, sub id) seen in a second. The write costs
 * the database about 10 µs per row (12 500 rows: 110 ms on an idle 2-core
 * host, 300-400 ms under P2's load), so the pace follows it: the next write
 * goes no sooner than LATEST_COST_FACTOR times the last one took (at least
 * LATEST_FLUSH_MS, at most LATEST_MAX_MS apart), which keeps it near a tenth
 * of one database backend per worker however many monitors there are; the
 * table is then a few seconds behind at most. The database
 * replaces a row only by a newer (or equally new) observation. A write lost
 * with the connection is made good by the next value of that key; while the
 * control queue is crowded the write waits (the map does not grow beyond its
 * keys).
 *
 * Thread: the loop's thread only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "store_int.h"

#define LATEST_FLUSH_MS 1000u  /* the newest values are written this often ... */
#define LATEST_COST_FACTOR 10u /* ... or, when a write took longer, 10x its time */
#define LATEST_MAX_MS 10000u   /* ... but never further apart than this */
#define LATEST_BUCKETS 4096u

const char store__latest_sql[] =
    "SELECT cms.latest_upsert($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],"
    " $6::text[], $7::text[], $8::text[], $9::double precision[], $10::text[], $11::text[])";

typedef struct latest_entry {
    struct latest_entry *next;
    uint64_t hash;
    int64_t device_id;
    int64_t t_us; /* observed_at, else received_at */
    double value;
    const char *code, *sub_id, *observed_at, *received_at, *label, *unit_code, *unit_label, *pa,
        *pid;
} latest_entry;

struct store__latest {
    latest_entry *b[LATEST_BUCKETS];
    size_t n;
};

static uint64_t fnv(uint64_t h, const char *s)
{
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return (h ^ 0xff) * 1099511628211ull; /* a separator: ("ab","c") != ("a","bc") */
}

static int digits(const char *p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* "YYYY-MM-DD HH:MM:SS.ffffff[+-]HH:MM" (hl7_time_format) to us since the
 * epoch; INT64_MIN when it is not that. */
static int64_t time_us(const char *t)
{
    struct tm tm;
    int64_t us = 0;
    const char *p;

    if (strlen(t) < 19 || t[4] != '-' || t[7] != '-' || t[10] != ' ' || t[13] != ':' ||
        t[16] != ':')
        return INT64_MIN;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = digits(t, 4) - 1900;
    tm.tm_mon = digits(t + 5, 2) - 1;
    tm.tm_mday = digits(t + 8, 2);
    tm.tm_hour = digits(t + 11, 2);
    tm.tm_min = digits(t + 14, 2);
    tm.tm_sec = digits(t + 17, 2);
    if (tm.tm_year < 0 || tm.tm_mon < 0 || tm.tm_mday < 0 || tm.tm_hour < 0 || tm.tm_min < 0 ||
        tm.tm_sec < 0)
        return INT64_MIN;
    p = t + 19;
    if (*p == '.') {
        int n = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, n++)
            if (n < 6)
                us = us * 10 + (*p - '0');
        for (; n < 6; n++)
            us *= 10;
    }
    us += (int64_t)timegm(&tm) * 1000000;
    if ((*p == '+' || *p == '-') && strlen(p) >= 6 && p[3] == ':') {
        int off = digits(p + 1, 2) * 60 + digits(p + 4, 2);
        us -= (*p == '+' ? 1 : -1) * (int64_t)off * 60000000;
    }
    return us;
}

static size_t slen(const char *s)
{
    return strlen(s) + 1;
}

static const char *put(char **arena, const char *src)
{
    size_t n = strlen(src) + 1;
    char *d = *arena;
    memcpy(d, src, n);
    *arena += n;
    return d;
}

static latest_entry *entry_new(const ingest_item *it, const ingest_obs *o, uint64_t h, int64_t t_us)
{
    size_t strs = slen(o->code) + slen(o->sub_id) + slen(o->observed_at) + slen(it->received_at) +
                  slen(o->label) + slen(o->unit_code) + slen(o->unit_label) +
                  slen(it->patient_authority) + slen(it->patient_id);
    latest_entry *e = malloc(sizeof *e + strs);
    if (!e)
        return NULL;
    char *arena = (char *)(e + 1);
    e->next = NULL;
    e->hash = h;
    e->device_id = it->device_id;
    e->t_us = t_us;
    e->value = o->value;
    e->code = put(&arena, o->code);
    e->sub_id = put(&arena, o->sub_id);
    e->observed_at = put(&arena, o->observed_at);
    e->received_at = put(&arena, it->received_at);
    e->label = put(&arena, o->label);
    e->unit_code = put(&arena, o->unit_code);
    e->unit_label = put(&arena, o->unit_label);
    e->pa = put(&arena, it->patient_authority);
    e->pid = put(&arena, it->patient_id);
    return e;
}

void store__latest_put(store_t *s, const ingest_item *it)
{
    if (!s->latest && !(s->latest = calloc(1, sizeof *s->latest))) {
        log_warn("latest_dropped", NULL, NULL, "out of memory: device_id=%lld",
                 (long long)it->device_id);
        return;
    }
    struct store__latest *l = s->latest;
    int64_t recv_us = time_us(it->received_at);
    for (size_t i = 0; i < it->nobs; i++) {
        const ingest_obs *o = &it->obs[i];
        uint64_t h = 1469598103934665603ull ^ (uint64_t)it->device_id;
        h = fnv(fnv(h * 1099511628211ull, o->code), o->sub_id);
        int64_t t = o->observed_at[0] ? time_us(o->observed_at) : recv_us;
        latest_entry **pp = &l->b[h % LATEST_BUCKETS];
        for (; *pp; pp = &(*pp)->next) {
            latest_entry *e = *pp;
            if (e->hash == h && e->device_id == it->device_id && strcmp(e->code, o->code) == 0 &&
                strcmp(e->sub_id, o->sub_id) == 0)
                break;
        }
        if (*pp && (*pp)->t_us > t)
            continue; /* what we hold is newer */
        latest_entry *e = entry_new(it, o, h, t);
        if (!e)
            continue; /* the next value of this key makes it good */
        if (*pp) {
            latest_entry *old = *pp;
            e->next = old->next;
            free(old);
        } else {
            l->n++;
        }
        *pp = e;
    }
}

static void clear(struct store__latest *l)
{
    for (size_t i = 0; i < LATEST_BUCKETS; i++) {
        latest_entry *e = l->b[i];
        while (e) {
            latest_entry *next = e->next;
            free(e);
            e = next;
        }
        l->b[i] = NULL;
    }
    l->n = 0;
}

void store__latest_written(store_t *s, uint64_t cost_ms)
{
    s->latest_cost_ms = cost_ms;
}

/* How long after the last write the next one may go. */
static uint64_t pace_ms(const store_t *s)
{
    uint64_t ms = s->latest_cost_ms * LATEST_COST_FACTOR;
    return ms < LATEST_FLUSH_MS ? LATEST_FLUSH_MS : ms > LATEST_MAX_MS ? LATEST_MAX_MS : ms;
}

void store__latest_tick(store_t *s, uint64_t now, bool force)
{
    struct store__latest *l = s->latest;
    if (!l || l->n == 0 || (!force && now - s->latest_flushed_at < pace_ms(s)))
        return;
    if (!force && store_ctl_crowded(s))
        return; /* device checks first; the map keeps at most one entry per key */
    s->latest_flushed_at = now;
    store__buf a[11];
    memset(a, 0, sizeof a);
    for (int k = 0; k < 11; k++)
        store__arr_begin(&a[k]);
    for (size_t i = 0; i < LATEST_BUCKETS; i++)
        for (const latest_entry *e = l->b[i]; e; e = e->next) {
            store__arr_int(&a[0], (long long)e->device_id);
            store__arr_text(&a[1], e->code);
            store__arr_text(&a[2], e->sub_id);
            store__arr_text(&a[3], e->pa);
            store__arr_text(&a[4], e->pid);
            store__arr_text(&a[5], e->observed_at);
            store__arr_text(&a[6], e->received_at);
            store__arr_text(&a[7], e->label);
            store__arr_double(&a[8], e->value);
            store__arr_text(&a[9], e->unit_code);
            store__arr_text(&a[10], e->unit_label);
        }
    size_t n = l->n;
    clear(l);
    bool oom = false;
    const char *p[11];
    for (int k = 0; k < 11; k++) {
        store__arr_end(&a[k]);
        oom = oom || a[k].oom;
        p[k] = a[k].p;
    }
    ctl_item *it = oom ? NULL : store__ctl_new(CTL_LATEST, 11, p);
    for (int k = 0; k < 11; k++)
        store__buf_free(&a[k]);
    if (!it) {
        log_warn("latest_dropped", NULL, NULL, "out of memory: %zu values", n);
        return;
    }
    store__ctl_push(s, it);
    store__ctl_kick(s);
}

void store__latest_free(store_t *s)
{
    if (!s->latest)
        return;
    clear(s->latest);
    free(s->latest);
    s->latest = NULL;
}
