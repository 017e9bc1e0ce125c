/*
 * deadline.c - every connection's next deadline (handshake, idle, write,
 * linger, protocol) in one binary min-heap per loop, served by one libuv timer.
 *
 * A uv_timer_t per connection cost 152 bytes of every held session (P3 in
 * docs/benchmarks.md); a heap slot costs a pointer plus the 12 bytes in
 * net_conn. Deadlines move rarely (a connection re-arms when its state
 * changes or its deadline passed, not on every read: the idle check compares
 * with last_input when it fires), so the O(log n) updates are cheap.
 */
#include <stdint.h>
#include <stdlib.h>
#include "net_int.h"

static void heap_place(net_server *s, size_t i, net_conn *c)
{
    s->heap[i] = c;
    c->heap_pos = (uint32_t)i + 1;
}

static void sift_up(net_server *s, size_t i)
{
    net_conn *c = s->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (s->heap[parent]->deadline <= c->deadline)
            break;
        heap_place(s, i, s->heap[parent]);
        i = parent;
    }
    heap_place(s, i, c);
}

static void sift_down(net_server *s, size_t i)
{
    net_conn *c = s->heap[i];
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        uint64_t best = c->deadline;
        if (l < s->heap_len && s->heap[l]->deadline < best)
            m = l, best = s->heap[l]->deadline;
        if (l + 1 < s->heap_len && s->heap[l + 1]->deadline < best)
            m = l + 1;
        if (m == i)
            break;
        heap_place(s, i, s->heap[m]);
        i = m;
    }
    heap_place(s, i, c);
}

static void on_deadline_timer(uv_timer_t *t);

/* Points the loop's timer at the earliest deadline (or stops it). */
static void rearm(net_server *s)
{
    if (s->heap_len == 0) {
        if (s->timer_at) {
            uv_timer_stop(&s->timer);
            s->timer_at = 0;
        }
        return;
    }
    uint64_t at = s->heap[0]->deadline;
    if (at == s->timer_at && uv_is_active((uv_handle_t *)&s->timer))
        return;
    uint64_t now = uv_now(s->loop);
    s->timer_at = at;
    uv_timer_start(&s->timer, on_deadline_timer, at > now ? at - now : 0, 0);
}

static void heap_remove(net_server *s, net_conn *c)
{
    size_t i = c->heap_pos - 1;
    c->heap_pos = 0;
    net_conn *last = s->heap[--s->heap_len];
    if (last == c)
        return;
    heap_place(s, i, last);
    if (i > 0 && s->heap[(i - 1) / 2]->deadline > last->deadline)
        sift_up(s, i);
    else
        sift_down(s, i);
}

int net__deadline_reserve(net_server *s, size_t n)
{
    if (n <= s->heap_cap)
        return 0;
    size_t cap = s->heap_cap ? s->heap_cap : 256;
    while (cap < n)
        cap *= 2;
    net_conn **h = realloc(s->heap, cap * sizeof(*h));
    if (!h)
        return -1;
    s->heap = h;
    s->heap_cap = cap;
    return 0;
}

void net__deadline_set(net_conn *c, uint64_t at)
{
    net_server *s = c->srv;
    if (c->heap_pos) {
        uint64_t old = c->deadline;
        c->deadline = at;
        if (at < old)
            sift_up(s, c->heap_pos - 1);
        else if (at > old)
            sift_down(s, c->heap_pos - 1);
        rearm(s);
        return;
    }
    /* room was reserved when the connection was linked (one slot each) */
    c->deadline = at;
    s->heap[s->heap_len] = c;
    c->heap_pos = (uint32_t)++s->heap_len;
    sift_up(s, s->heap_len - 1);
    rearm(s);
}

void net__deadline_clear(net_conn *c)
{
    if (!c->heap_pos)
        return;
    heap_remove(c->srv, c);
    rearm(c->srv);
}

static void on_deadline_timer(uv_timer_t *t)
{
    net_server *s = t->data;
    uint64_t now = uv_now(s->loop);
    s->timer_at = 0;
    /* Each due connection leaves the heap before its handler runs; a handler
     * that re-arms puts it back with a deadline after now, so this ends. */
    while (s->heap_len > 0 && s->heap[0]->deadline <= now) {
        net_conn *c = s->heap[0];
        heap_remove(s, c);
        net__conn_deadline(c);
    }
    rearm(s);
}

void net__deadline_init(net_server *s)
{
    uv_timer_init(s->loop, &s->timer);
    s->timer.data = s;
}

void net__deadline_free(net_server *s)
{
    free(s->heap);
    s->heap = NULL;
    s->heap_len = s->heap_cap = 0;
}
