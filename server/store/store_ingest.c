/*
 * store_ingest.c - the ingest queue and group commit.
 *
 * store_ingest() copies a message into one compact allocation and appends it
 * to its lane's queue (see the end of this comment). A batch (up to batch_max_msgs from the head)
 * is sent as one call of cms.ingest_batch2() (sql/015) with 21 array parameters for the vitals and
 * four for what messages carry beyond them (store_more.c: JSON arrays of text observations,
 * waveform blocks and alarms, a text[] of sample literals; all NULL when no message of the batch
 * has any) when the queue reaches batch_max_msgs, when batch_max_delay_ms passed since the first
 * queued one, or right after the previous batch returned (group commit: whatever queued meanwhile
 * goes next). One batch is in flight at a time.
 *
 * Outcomes of a batch:
 *   - success: each callback gets CMS_OK and its duplicate flag;
 *   - connection lost / query timeout: outcome unknown, the batch goes back
 *     to the head of the queue and is sent again after reconnecting (the
 *     (device_id, control_id) key makes this exactly-once);
 *   - SQLSTATE class 22 or 23: the batch is split, its messages are sent one
 *     at a time; a single message refused so gets CMS_EPROTO;
 *   - other errors (deadlock, serialization, statement timeout, missing
 *     schema...): the batch goes back to the head and is retried after a
 *     growing delay.
 * Queued (not in-flight) messages older than ingest_timeout_ms fail with
 * CMS_EUNAVAIL.
 *
 * All of the above is per lane (store__lane): a connection with its queue.
 * The bulk lane batches as described; the alarm lane (store_config.alarm_lane)
 * takes the messages that carry a real alarm (priority PH, PM, PL or none
 * given; PN heartbeats stay bulk) and sends them at once (no batch delay),
 * so an alarm never waits behind a numerics batch in flight. Both lanes
 * write with the same statement: the (device_id, control_id) key keeps a
 * message exactly once whichever lane carried it, and the two lanes touch
 * different rows (a message's own rows; alarms only in the alarm lane), so
 * neither waits for the other's locks. When the alarm lane's connection is
 * down, its messages (queued and in flight) move to the head of the bulk
 * lane and new alarms go there until it is back and no alarm is left on the
 * bulk lane (s->bulk_alarms): a device's alarm events are committed in the
 * order they came (a continue never overtakes its start).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "log.h"
#include "store_int.h"

static const char ingest_sql[] =
    "SELECT idx, duplicate, unknown_alarms FROM cms.ingest_batch2("
    "$1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],"
    " $7::text[], $8::integer[],"
    " $9::integer[], $10::integer[], $11::text[], $12::text[], $13::text[], $14::text[],"
    " $15::double precision[], $16::text[], $17::text[], $18::text[], $19::text[],"
    " $20::text[], $21::text[], $22::jsonb, $23::jsonb, $24::text[], $25::jsonb)";

/* ---- fifo -------------------------------------------------------------- */

static void fifo_push(ingest_fifo *f, ingest_item *it)
{
    it->next = NULL;
    if (f->tail)
        f->tail->next = it;
    else
        f->head = it;
    f->tail = it;
    f->n++;
}

static ingest_item *fifo_pop(ingest_fifo *f)
{
    ingest_item *it = f->head;
    if (!it)
        return NULL;
    f->head = it->next;
    if (!f->head)
        f->tail = NULL;
    f->n--;
    it->next = NULL;
    return it;
}

/* Puts all of src (in order) in front of dst; src becomes empty. */
static void fifo_prepend(ingest_fifo *dst, ingest_fifo *src)
{
    if (!src->head)
        return;
    src->tail->next = dst->head;
    if (!dst->tail)
        dst->tail = src->tail;
    dst->head = src->head;
    dst->n += src->n;
    src->head = src->tail = NULL;
    src->n = 0;
}

/* Puts the in-flight batch back at the head of the queue, as it was. */
static void requeue_inflight(store__lane *l)
{
    if (l->inflight_split)
        l->split_remaining += l->inflight.n;
    l->inflight_split = false;
    fifo_prepend(&l->queue, &l->inflight);
}

size_t store_backlog(const store_t *s)
{
    size_t n = 0;
    for (int i = 0; i < STORE_NLANES; i++)
        n += s->lanes[i].queue.n + s->lanes[i].inflight.n;
    return n;
}

size_t store__ingest_inflight_up(const store_t *s)
{
    size_t n = 0;
    for (int i = 0; i < STORE_NLANES; i++)
        if (store__conn_up(&s->lanes[i].conn))
            n += s->lanes[i].inflight.n;
    return n;
}

void store_on_drain(store_t *s, void (*cb)(void *ctx), void *ctx)
{
    s->drain_cb = cb;
    s->drain_ctx = ctx;
}

void store_on_results(store_t *s, void (*cb)(void *ctx), void *ctx)
{
    s->results_cb = cb;
    s->results_ctx = ctx;
}

/* The end of a round of item callbacks: see store_on_results. */
static void results_round(store_t *s)
{
    if (s->results_due && s->results_cb) {
        s->results_due = false;
        s->results_cb(s->results_ctx);
    }
}

static void check_drain(store_t *s)
{
    if (s->refused && !s->closing && store_backlog(s) < s->cfg.max_queued_msgs / 2) {
        s->refused = false;
        if (s->drain_cb)
            s->drain_cb(s->drain_ctx);
    }
}

/* ---- copying a message ------------------------------------------------- */

static size_t slen(const char *p)
{
    return strlen(p) + 1;
}

static const char *put(char **arena, const char *src)
{
    size_t n = strlen(src) + 1;
    char *d = *arena;
    memcpy(d, src, n);
    *arena += n;
    return d;
}

/* Server receive time as text with an explicit UTC offset. */
static void now_text(char out[40])
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, 40, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(out + n, 40 - n, ".%06d+00:00", (int)(ts.tv_nsec / 1000 % 1000000));
}

static ingest_item *item_new(int64_t device_id, const vitals_msg *m)
{
    size_t nobs = m->nobs > VITALS_MAX_OBS ? VITALS_MAX_OBS : m->nobs;
    size_t strs = slen(m->control_id) + slen(m->patient_authority) + slen(m->patient_id) +
                  slen(m->location) + slen(m->msg_time);
    for (size_t i = 0; i < nobs; i++) {
        const vitals_obs *o = &m->obs[i];
        strs += slen(o->code) + slen(o->label) + slen(o->coding_system) + slen(o->sub_id) +
                slen(o->value_text) + slen(o->unit_code) + slen(o->unit_label) + slen(o->status) +
                slen(o->observed_at) + slen(o->equipment_id);
    }
    ingest_item *it = malloc(sizeof *it + nobs * sizeof(ingest_obs) + strs);
    if (!it)
        return NULL;
    memset(it, 0, sizeof *it);
    it->obs = (ingest_obs *)(it + 1);
    char *arena = (char *)(it->obs + nobs);
    it->device_id = device_id;
    it->control_id = put(&arena, m->control_id);
    it->patient_authority = put(&arena, m->patient_authority);
    it->patient_id = put(&arena, m->patient_id);
    it->location = put(&arena, m->location);
    it->msg_time = put(&arena, m->msg_time);
    now_text(it->received_at);
    it->nobs = nobs;
    for (size_t i = 0; i < nobs; i++) {
        const vitals_obs *o = &m->obs[i];
        ingest_obs *d = &it->obs[i];
        d->set_id = o->set_id;
        d->value = o->value;
        d->code = put(&arena, o->code);
        d->label = put(&arena, o->label);
        d->coding_system = put(&arena, o->coding_system);
        d->sub_id = put(&arena, o->sub_id);
        d->value_text = put(&arena, o->value_text);
        d->unit_code = put(&arena, o->unit_code);
        d->unit_label = put(&arena, o->unit_label);
        d->status = put(&arena, o->status);
        d->observed_at = put(&arena, o->observed_at);
        d->equipment_id = put(&arena, o->equipment_id);
    }
    return it;
}

static void item_done(store_t *s, ingest_item *it, int status, bool dup, unsigned unknown)
{
    s->results_due = true;
    if (it->alarm_in_bulk)
        s->bulk_alarms--;
    store_ingest_cb cb = it->cb;
    store_ingest_full_cb full_cb = it->full_cb;
    void *ctx = it->ctx;
    free(it->more);
    free(it);
    if (full_cb) {
        store_ingest_result r = {dup, unknown};
        full_cb(ctx, status, status == CMS_OK ? &r : NULL);
    } else {
        cb(ctx, status, dup);
    }
}

/* ---- batching ---------------------------------------------------------- */

static void batch_timer_cb(uv_timer_t *t)
{
    store__lane *l = t->data;
    l->batch_timer_on = false;
    store__lane_kick(l);
}

static void arm_batch_timer(store__lane *l, uint64_t ms)
{
    uv_timer_start(&l->batch_timer, batch_timer_cb, ms, 0);
    l->batch_timer_on = true;
}

void store__ingest_init(store_t *s)
{
    static const char *const names[STORE_NLANES] = {"bulk", "alarm"};
    static const char *const conn_names[STORE_NLANES] = {"ingest", "ingest_alarm"};
    for (int i = 0; i < STORE_NLANES; i++) {
        store__lane *l = &s->lanes[i];
        store__conn_init(s, &l->conn, conn_names[i]);
        l->conn.on_up = store__ingest_on_up;
        l->conn.on_result = store__ingest_on_result;
        l->conn.on_down = store__ingest_on_down;
        l->name = names[i];
        l->on = i == STORE_LANE_BULK || s->cfg.alarm_lane;
        l->retry_ms = s->cfg.reconnect_min_ms;
        uv_timer_init(s->loop, &l->batch_timer);
        l->batch_timer.data = l;
    }
}

void store__ingest_start(store_t *s)
{
    for (int i = 0; i < STORE_NLANES; i++)
        if (s->lanes[i].on)
            store__conn_start(&s->lanes[i].conn);
}

void store__ingest_free_buffers(store_t *s)
{
    for (int i = 0; i < STORE_NPARAMS; i++)
        store__buf_free(&s->arr[i]);
    store__buf_free(&s->more_buf);
}

/* Appends each NUL-terminated piece of a JSON array param as
 * {"msg":idx[,"i":k],<piece>}. */
static void json_pieces(store__buf *b, const char *p, unsigned n, long long idx, long long *k)
{
    char tmp[64];
    for (unsigned j = 0; j < n; j++) {
        size_t len = strlen(p);
        int m = k ? snprintf(tmp, sizeof tmp, "%s{\"msg\":%lld,\"i\":%lld,", b->len > 1 ? "," : "",
                             idx, ++*k)
                  : snprintf(tmp, sizeof tmp, "%s{\"msg\":%lld,", b->len > 1 ? "," : "", idx);
        store__buf_append(b, tmp, (size_t)m);
        store__buf_append(b, p, len);
        store__buf_append(b, "}", 1);
        p += len + 1;
    }
}

/* The 4 parameters for what the batch's messages carry beyond vitals;
 * all NULL when none does. */
static bool build_more(store_t *s, const ingest_fifo *batch, const char *vals[STORE_NPARAMS])
{
    store__buf *t = &s->arr[STORE_NARRAYS], *w = t + 1, *ws = t + 2, *a = t + 3;
    bool any = false;
    long long idx = 0, wi = 0, ai = 0;

    for (ingest_item *it = batch->head; it && !any; it = it->next)
        any = it->more != NULL;
    for (int i = STORE_NARRAYS; i < STORE_NPARAMS; i++)
        vals[i] = NULL;
    if (!any)
        return true;
    store__buf_reset(t);
    store__buf_reset(w);
    store__buf_reset(a);
    store__buf_append(t, "[", 1);
    store__buf_append(w, "[", 1);
    store__buf_append(a, "[", 1);
    store__arr_begin(ws);
    for (ingest_item *it = batch->head; it; it = it->next) {
        idx++;
        if (!it->more)
            continue;
        const ingest_more *m = it->more;
        json_pieces(t, m->t, m->nt, idx, NULL);
        json_pieces(w, m->w, m->nw, idx, &wi);
        json_pieces(a, m->a, m->na, idx, &ai);
        const char *p = m->samples;
        for (unsigned j = 0; j < m->nw; j++) {
            store__arr_text(ws, p);
            p += strlen(p) + 1;
        }
    }
    store__buf_append(t, "]", 2); /* with the NUL */
    store__buf_append(w, "]", 2);
    store__buf_append(a, "]", 2);
    store__arr_end(ws);
    if (t->oom || w->oom || a->oom || ws->oom)
        return false;
    vals[STORE_NARRAYS] = t->p;
    vals[STORE_NARRAYS + 1] = w->p;
    vals[STORE_NARRAYS + 2] = ws->p;
    vals[STORE_NARRAYS + 3] = a->p;
    return true;
}

/* Builds the parameters of batch in s->arr (copied by libpq when sent, so
 * the lanes share the buffers). Returns false on OOM. */
static bool build_params(store_t *s, const ingest_fifo *batch, const char *vals[STORE_NPARAMS])
{
    store__buf *a = s->arr;
    for (int i = 0; i < STORE_NARRAYS; i++)
        store__arr_begin(&a[i]);
    long long idx = 0;
    for (ingest_item *it = batch->head; it; it = it->next) {
        idx++;
        store__arr_int(&a[0], (long long)it->device_id);
        store__arr_text(&a[1], it->control_id);
        store__arr_text(&a[2], it->patient_authority);
        store__arr_text(&a[3], it->patient_id);
        store__arr_text(&a[4], it->location);
        store__arr_text(&a[5], it->msg_time);
        store__arr_text(&a[6], it->received_at);
        store__arr_int(&a[7], (long long)it->nobs);
        for (size_t j = 0; j < it->nobs; j++) {
            const ingest_obs *o = &it->obs[j];
            store__arr_int(&a[8], idx);
            store__arr_int(&a[9], (long long)o->set_id);
            store__arr_text(&a[10], o->code);
            store__arr_text(&a[11], o->label);
            store__arr_text(&a[12], o->coding_system);
            store__arr_text(&a[13], o->sub_id);
            store__arr_double(&a[14], o->value);
            store__arr_text(&a[15], o->value_text);
            store__arr_text(&a[16], o->unit_code);
            store__arr_text(&a[17], o->unit_label);
            store__arr_text(&a[18], o->status);
            store__arr_text(&a[19], o->observed_at);
            store__arr_text(&a[20], o->equipment_id);
        }
    }
    for (int i = 0; i < STORE_NARRAYS; i++) {
        store__arr_end(&a[i]);
        if (a[i].oom)
            return false;
        vals[i] = a[i].p;
    }
    return build_more(s, batch, vals);
}

void store__lane_kick(store__lane *l)
{
    store_t *s = l->conn.s;
    if (l->inflight.n > 0 || l->queue.n == 0 || l->conn.state != SC_READY)
        return;
    uint64_t now = uv_now(s->loop);
    if (l->hold_until > now) {
        if (!l->batch_timer_on)
            arm_batch_timer(l, l->hold_until - now);
        return;
    }
    if (l->batch_timer_on) {
        uv_timer_stop(&l->batch_timer);
        l->batch_timer_on = false;
    }
    l->inflight_split = l->split_remaining > 0;
    size_t max = l->inflight_split ? 1 : s->cfg.batch_max_msgs;
    while (l->inflight.n < max && l->queue.n > 0)
        fifo_push(&l->inflight, fifo_pop(&l->queue));
    if (l->inflight_split)
        l->split_remaining--;

    const char *vals[STORE_NPARAMS];
    if (!build_params(s, &l->inflight, vals)) {
        log_error("store_batch_oom", NULL, NULL, "lane=%s msgs=%zu", l->name, l->inflight.n);
        requeue_inflight(l);
        l->hold_until = now + l->retry_ms;
        arm_batch_timer(l, l->retry_ms);
        return;
    }
    /* On failure the connection resets and on_down puts the batch back. */
    store__conn_send(&l->conn, "ingest_batch", ingest_sql, STORE_NPARAMS, vals);
}

/* A real alarm (not only PN heartbeats) in the message? */
static bool has_alarm(const clinical_content *more)
{
    for (size_t i = 0; more && i < more->nalarms; i++)
        if (strcmp(more->alarms[i].priority, "PN") != 0)
            return true;
    return false;
}

/* The lane a new message joins: the alarm lane for an alarm while its
 * connection is up and no alarm waits on the bulk lane, else the bulk lane. */
static store__lane *lane_for(store_t *s, ingest_item *it, const clinical_content *more)
{
    store__lane *a = &s->lanes[STORE_LANE_ALARM];
    if (!a->on || !has_alarm(more))
        return &s->lanes[STORE_LANE_BULK];
    if (store__conn_up(&a->conn) && s->bulk_alarms == 0)
        return a;
    it->alarm_in_bulk = true;
    s->bulk_alarms++;
    return &s->lanes[STORE_LANE_BULK];
}

static int ingest(store_t *s, int64_t device_id, const vitals_msg *msg,
                  const clinical_content *more, store_ingest_cb cb, store_ingest_full_cb full_cb,
                  void *ctx)
{
    bool oom = false;
    if (s->closing)
        return CMS_ECLOSED;
    if ((!cb && !full_cb) || !msg)
        return CMS_EINVAL;
    if (store_backlog(s) >= s->cfg.max_queued_msgs) {
        s->refused = true;
        return CMS_ELIMIT;
    }
    ingest_item *it = item_new(device_id, msg);
    if (!it)
        return CMS_ENOMEM;
    it->more = store__more_new(s, more, &oom);
    if (oom) {
        free(it);
        return CMS_ENOMEM;
    }
    it->cb = cb;
    it->full_cb = full_cb;
    it->ctx = ctx;
    it->deadline = uv_now(s->loop) + s->cfg.ingest_timeout_ms;
    store__lane *l = lane_for(s, it, more);
    fifo_push(&l->queue, it);
    if (l->queue.n >= s->cfg.batch_max_msgs || l == &s->lanes[STORE_LANE_ALARM])
        store__lane_kick(l);
    else if (!l->batch_timer_on && l->inflight.n == 0)
        arm_batch_timer(l, s->cfg.batch_max_delay_ms);
    return CMS_OK;
}

int store_ingest(store_t *s, int64_t device_id, const vitals_msg *msg, store_ingest_cb cb,
                 void *ctx)
{
    return ingest(s, device_id, msg, NULL, cb, NULL, ctx);
}

int store_ingest_full(store_t *s, int64_t device_id, const vitals_msg *msg,
                      const clinical_content *more, store_ingest_full_cb cb, void *ctx)
{
    return ingest(s, device_id, msg, more, NULL, cb, ctx);
}

/* ---- results ----------------------------------------------------------- */

void store__ingest_on_up(store__conn *c)
{
    store__lane *l = store__lane_of(c);
    l->hold_until = 0;
    store__lane_kick(l);
}

/* Moves everything of the alarm lane a to the head of the bulk lane b (a's
 * connection is down). b's head items to send one at a time stay so; the
 * moved ones are sent one at a time too when b had any (over-splitting only
 * costs time). */
static void lane_hand_over(store__lane *a, store__lane *b)
{
    size_t moved = a->queue.n, split = a->split_remaining;
    if (moved == 0)
        return;
    for (ingest_item *it = a->queue.head; it; it = it->next)
        it->alarm_in_bulk = true;
    a->conn.s->bulk_alarms += moved;
    b->split_remaining = b->split_remaining > 0 ? b->split_remaining + moved : split;
    a->split_remaining = 0;
    fifo_prepend(&b->queue, &a->queue);
    log_warn("store_lane_handover", NULL, NULL, "msgs=%zu from=%s to=%s", moved, a->name, b->name);
    store__lane_kick(b);
}

void store__ingest_on_down(store__conn *c, bool query_lost)
{
    store__lane *l = store__lane_of(c);
    store_t *s = c->s;
    (void)query_lost;
    if (l->inflight.n > 0) {
        /* Unknown outcome: send the same messages again after reconnecting. */
        log_warn("store_batch_resend", NULL, NULL, "lane=%s msgs=%zu reason=connection_lost",
                 l->name, l->inflight.n);
        requeue_inflight(l);
    }
    if (l != &s->lanes[STORE_LANE_BULK] && !s->closing)
        lane_hand_over(l, &s->lanes[STORE_LANE_BULK]);
    if (s->closing)
        store__maybe_finish_close(s);
}

static bool data_error(const char *sqlstate)
{
    return sqlstate && (strncmp(sqlstate, "22", 2) == 0 || strncmp(sqlstate, "23", 2) == 0);
}

static void one_line(char *buf, size_t cap, const char *m)
{
    snprintf(buf, cap, "%s", m ? m : "");
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = ' ';
    size_t n = strlen(buf);
    while (n > 0 && buf[n - 1] == ' ')
        buf[--n] = '\0';
}

static void batch_failed(store__lane *l, PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    char msg[512];
    const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    one_line(msg, sizeof msg, primary ? primary : PQresultErrorMessage(res));
    if (data_error(state)) {
        if (l->inflight.n > 1) {
            log_warn("store_batch_split", NULL, NULL, "lane=%s msgs=%zu sqlstate=%s error=\"%s\"",
                     l->name, l->inflight.n, state, msg);
            l->inflight_split = true; /* all of it goes back one by one */
            requeue_inflight(l);
            return;
        }
        ingest_item *it = fifo_pop(&l->inflight);
        log_warn("store_msg_refused", NULL, NULL,
                 "device_id=%lld control_id=%s sqlstate=%s error=\"%s\"", (long long)it->device_id,
                 it->control_id, state, msg);
        item_done(l->conn.s, it, CMS_EPROTO, false, 0);
        return;
    }
    /* Transient or not ours to judge: retry the same batch after a delay. */
    store_t *s = l->conn.s;
    log_warn("store_batch_retry", NULL, NULL,
             "lane=%s msgs=%zu sqlstate=%s retry_in_ms=%u error=\"%s\"", l->name, l->inflight.n,
             state ? state : "-", l->retry_ms, msg);
    requeue_inflight(l);
    l->hold_until = uv_now(s->loop) + l->retry_ms;
    unsigned next = l->retry_ms * 2;
    l->retry_ms = next > s->cfg.reconnect_max_ms ? s->cfg.reconnect_max_ms : next;
}

void store__ingest_on_result(store__conn *c, PGresult *res)
{
    store__lane *l = store__lane_of(c);
    store_t *s = c->s;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        batch_failed(l, res);
        goto next;
    }
    size_t n = l->inflight.n;
    if ((size_t)PQntuples(res) != n || PQnfields(res) != 3) {
        log_error("store_batch_bad_result", NULL, NULL, "lane=%s msgs=%zu rows=%d", l->name, n,
                  PQntuples(res));
        requeue_inflight(l);
        l->hold_until = uv_now(s->loop) + l->retry_ms;
        goto next;
    }
    l->retry_ms = s->cfg.reconnect_min_ms;
    /* Detach first: callbacks may queue new messages or close the store. */
    ingest_fifo done = l->inflight;
    l->inflight.head = l->inflight.tail = NULL;
    l->inflight.n = 0;
    l->batches_ok++;
    l->msgs_ok += n;
    metrics_observe(CM_BATCH_MESSAGES, 0, (double)n);
    int row = 0;
    ingest_item *it;
    while ((it = fifo_pop(&done)) != NULL) {
        bool dup = PQgetvalue(res, row, 1)[0] == 't';
        unsigned unknown = (unsigned)strtoul(PQgetvalue(res, row, 2), NULL, 10);
        l->obs_ok += dup ? 0 : it->nobs;
        if (!dup)
            metrics_add(CM_OBSERVATIONS, 0, it->nobs);
        row++;
        if (!dup && it->nobs)
            store__latest_put(s, it);
        item_done(s, it, CMS_OK, dup, unknown);
    }
next:
    results_round(s);
    check_drain(s);
    if (s->closing) {
        store__latest_tick(s, uv_now(s->loop), true); /* what the last batch committed */
        store__maybe_finish_close(s);
    } else
        store__lane_kick(l);
}

/* ---- expiry and shutdown ---------------------------------------------- */

void store__ingest_expire(store_t *s, uint64_t now)
{
    for (int i = 0; i < STORE_NLANES; i++) {
        store__lane *l = &s->lanes[i];
        size_t expired = 0;
        while (l->queue.head && l->queue.head->deadline <= now) {
            ingest_item *it = fifo_pop(&l->queue);
            if (l->split_remaining > 0)
                l->split_remaining--;
            expired++;
            item_done(s, it, CMS_EUNAVAIL, false, 0);
        }
        results_round(s);
        if (expired) {
            log_warn("store_ingest_timeout", NULL, NULL,
                     "lane=%s expired=%zu queued=%zu ingest_conn=%s", l->name, expired, l->queue.n,
                     store__conn_up(&l->conn) ? "up" : "down");
            check_drain(s);
        }
    }
}

void store__ingest_fail_queued(store_t *s, int status)
{
    ingest_item *it;
    for (int i = 0; i < STORE_NLANES; i++) {
        s->lanes[i].split_remaining = 0;
        while ((it = fifo_pop(&s->lanes[i].queue)) != NULL)
            item_done(s, it, status, false, 0);
    }
    results_round(s);
}

void store__ingest_fail_inflight(store_t *s, int status)
{
    ingest_item *it;
    for (int i = 0; i < STORE_NLANES; i++)
        while ((it = fifo_pop(&s->lanes[i].inflight)) != NULL)
            item_done(s, it, status, false, 0);
    results_round(s);
}
