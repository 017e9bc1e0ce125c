/*
 * store_more.c - a message's text observations, waveform blocks and alarms,
 * serialized when the message is queued (store_ingest_full), so that a
 * queued message holds only what it carries (a few hundred bytes per text
 * or alarm, a few bytes per sample), not the fixed-size records.
 *
 * Each record becomes the members of one JSON object for the t, w and a
 * parameters of cms.ingest_batch2 (sql/015), without braces: the batch adds
 * "msg" (the message's index in the batch) and "i" (the record's order),
 * which are known only then. Waveform samples become one PostgreSQL array
 * literal per block for w_samples: integers when every sample times
 * 10^scale_exp fits 32 bits (kind 2 when 16 bits do, else 4; scale =
 * resolution / 10^scale_exp), else doubles (kind 8, scale = resolution), so
 * that raw * scale is the physical value.
 *
 * Values reach the database only as parameter values (JSON and array
 * literals), never as SQL text.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"

static void key(store__buf *b, const char *k, bool first)
{
    if (!first)
        store__buf_append(b, ",", 1);
    store__buf_append(b, "\"", 1);
    store__buf_append(b, k, strlen(k));
    store__buf_append(b, "\":", 2);
}

static void kstr(store__buf *b, const char *k, const char *v)
{
    key(b, k, false);
    store__json_str(b, v);
}

static void knum(store__buf *b, const char *k, double v)
{
    key(b, k, false);
    store__json_num(b, v);
}

static void kbool(store__buf *b, const char *k, bool v)
{
    key(b, k, false);
    store__buf_append(b, v ? "true" : "false", v ? 4 : 5);
}

static void end_piece(store__buf *b)
{
    store__buf_append(b, "", 1); /* the NUL that ends a piece */
}

/* "facets":[...] of the records with this owner, or null. */
static void facets(store__buf *b, const clinical_facet *f, size_t n, size_t owner)
{
    bool any = false;

    key(b, "facets", false);
    for (size_t i = 0; i < n; i++) {
        if (f[i].owner != owner)
            continue;
        store__buf_append(b, any ? ",{" : "[{", 2);
        any = true;
        key(b, "set_id", true);
        store__json_num(b, (double)f[i].set_id);
        kstr(b, "value_type", f[i].value_type);
        kstr(b, "code", f[i].code);
        kstr(b, "label", f[i].label);
        kstr(b, "sub_id", f[i].sub_id);
        kstr(b, "value", f[i].value);
        kstr(b, "unit_code", f[i].unit_code);
        kstr(b, "unit_label", f[i].unit_label);
        kbool(b, "truncated", f[i].truncated != 0);
        store__buf_append(b, "}", 1);
    }
    if (any)
        store__buf_append(b, "]", 1);
    else
        store__buf_append(b, "null", 4);
}

static void text_piece(store__buf *b, const clinical_text *t)
{
    key(b, "set_id", true);
    store__json_num(b, (double)t->set_id);
    kstr(b, "type", t->value_type);
    kstr(b, "code", t->code);
    kstr(b, "label", t->label);
    kstr(b, "system", t->coding_system);
    kstr(b, "sub_id", t->sub_id);
    kstr(b, "text", t->text);
    kbool(b, "truncated", t->truncated != 0);
    kstr(b, "vcode", t->value_code);
    kstr(b, "vsystem", t->value_system);
    kstr(b, "status", t->status);
    kstr(b, "at", t->observed_at);
    kstr(b, "equipment", t->equipment_id);
    end_piece(b);
}

static const double pow10_tab[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};

/* The block's kind (2, 4, 8) and scale; its samples as integers in raw[]
 * when the kind is 2 or 4. */
static int wave_kind(const clinical_wave *w, const double *v, double *scale)
{
    int e = w->scale_exp;
    bool fits16 = true;

    if (e < 0 || e > 9) {
        *scale = w->resolution;
        return 8;
    }
    for (size_t i = 0; i < w->nsamples; i++) {
        double x = nearbyint(v[i] * pow10_tab[e]);
        if (!(x >= -2147483648.0 && x <= 2147483647.0)) {
            *scale = w->resolution;
            return 8; /* the extractor's promise did not hold: keep it exact anyway */
        }
        if (x < -32768.0 || x > 32767.0)
            fits16 = false;
    }
    *scale = w->resolution / pow10_tab[e];
    return fits16 ? 2 : 4;
}

static void wave_samples(store__buf *b, const clinical_wave *w, const double *v, int kind)
{
    char tmp[40];

    store__buf_append(b, "{", 1);
    for (size_t i = 0; i < w->nsamples; i++) {
        int n;
        if (i)
            store__buf_append(b, ",", 1);
        if (kind == 8)
            n = snprintf(tmp, sizeof tmp, "%.17g", v[i]);
        else
            n = snprintf(tmp, sizeof tmp, "%ld", (long)nearbyint(v[i] * pow10_tab[w->scale_exp]));
        store__buf_append(b, tmp, (size_t)n);
    }
    store__buf_append(b, "}", 1);
    end_piece(b);
}

static void wave_piece(store__buf *b, const clinical_content *c, size_t k, int kind, double scale)
{
    const clinical_wave *w = &c->waves[k];

    key(b, "set_id", true);
    store__json_num(b, (double)w->set_id);
    knum(b, "channel", (double)w->channel);
    kstr(b, "code", w->code);
    kstr(b, "label", w->label);
    kstr(b, "system", w->coding_system);
    kstr(b, "sub_id", w->sub_id);
    kstr(b, "ucode", w->unit_code);
    kstr(b, "ulabel", w->unit_label);
    kstr(b, "status", w->status);
    kstr(b, "at", w->start_at);
    kstr(b, "equipment", w->equipment_id);
    knum(b, "rate", w->rate_hz);
    knum(b, "scale", scale);
    knum(b, "n", (double)w->nsamples);
    knum(b, "kind", kind);
    facets(b, c->wave_facets, c->nwave_facets, k);
    end_piece(b);
}

static void alarm_piece(store__buf *b, const clinical_content *c, size_t k)
{
    const clinical_alarm *a = &c->alarms[k];

    key(b, "id", true);
    store__json_str(b, a->alarm_id);
    kstr(b, "parent", a->parent_id);
    kstr(b, "phase", a->phase);
    kstr(b, "state", a->state);
    kstr(b, "inact", a->inactivation);
    kstr(b, "prio", a->priority);
    kstr(b, "kind", a->kind);
    kstr(b, "code", a->event_code);
    kstr(b, "label", a->event_label);
    kstr(b, "system", a->event_system);
    kstr(b, "text", a->alarm_text);
    kbool(b, "truncated", a->text_truncated != 0);
    kstr(b, "scode", a->source_code);
    kstr(b, "slabel", a->source_label);
    kstr(b, "ssub", a->source_sub_id);
    key(b, "value", false);
    if (a->value_text[0])
        store__json_num(b, a->value);
    else
        store__buf_append(b, "null", 4);
    kstr(b, "vtext", a->value_text);
    kstr(b, "ucode", a->unit_code);
    kstr(b, "ulabel", a->unit_label);
    kstr(b, "limits", a->limits);
    kstr(b, "at", a->event_at);
    facets(b, c->alarm_facets, c->nalarm_facets, k);
    end_piece(b);
}

ingest_more *store__more_new(store_t *s, const clinical_content *c, bool *oom)
{
    store__buf *b = &s->more_buf;
    size_t t_at, w_at, a_at, s_at;
    int kinds[64];
    double scales[64];

    *oom = false;
    if (!c || (c->ntexts == 0 && c->nwaves == 0 && c->nalarms == 0))
        return NULL;
    if (c->nwaves > sizeof kinds / sizeof kinds[0]) {
        *oom = true; /* more blocks than any extractor makes */
        return NULL;
    }
    store__buf_reset(b);
    t_at = b->len;
    for (size_t i = 0; i < c->ntexts; i++)
        text_piece(b, &c->texts[i]);
    w_at = b->len;
    for (size_t i = 0; i < c->nwaves; i++) {
        kinds[i] = wave_kind(&c->waves[i], c->samples + c->waves[i].first, &scales[i]);
        wave_piece(b, c, i, kinds[i], scales[i]);
    }
    a_at = b->len;
    for (size_t i = 0; i < c->nalarms; i++)
        alarm_piece(b, c, i);
    s_at = b->len;
    for (size_t i = 0; i < c->nwaves; i++)
        wave_samples(b, &c->waves[i], c->samples + c->waves[i].first, kinds[i]);
    if (b->oom) {
        *oom = true;
        return NULL;
    }

    ingest_more *m = malloc(sizeof *m + b->len);
    if (!m) {
        *oom = true;
        return NULL;
    }
    char *data = (char *)(m + 1);
    memcpy(data, b->p, b->len);
    m->nt = (unsigned)c->ntexts;
    m->nw = (unsigned)c->nwaves;
    m->na = (unsigned)c->nalarms;
    m->t = data + t_at;
    m->w = data + w_at;
    m->a = data + a_at;
    m->samples = data + s_at;
    return m;
}
