/* test_deadline.c - the per-loop deadline heap (server/net/deadline.c): order kept
 * through inserts, moves and removals; only what is due fires; the loop's timer
 * follows the earliest deadline. Connections here are bare structs in NET_CLOSED
 * state, for which the deadline handler (conn.c) does nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../server/net/net_int.h"

#define N 2000

typedef struct fixture {
    uv_loop_t loop;
    net_server *srv;
    net_conn *c[N];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    net_limits lim = {.max_connections = N};
    f->srv = net_server_new(&f->loop, &lim);
    assert_non_null(f->srv);
    assert_int_equal(net__deadline_reserve(f->srv, N), 0);
    for (int i = 0; i < N; i++) {
        f->c[i] = calloc(1, sizeof(struct net_conn));
        assert_non_null(f->c[i]);
        f->c[i]->srv = f->srv;
        f->c[i]->state = NET_CLOSED;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    for (int i = 0; i < N; i++) {
        net__deadline_clear(f->c[i]);
        free(f->c[i]);
    }
    uv_close((uv_handle_t *)&f->srv->timer, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    net__deadline_free(f->srv);
    free(f->srv);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

/* Every parent no later than its children, every position recorded. */
static void check_heap(const net_server *s)
{
    for (size_t i = 0; i < s->heap_len; i++) {
        assert_int_equal(s->heap[i]->heap_pos, i + 1);
        if (i > 0)
            assert_true(s->heap[(i - 1) / 2]->deadline <= s->heap[i]->deadline);
    }
    if (s->heap_len > 0) {
        assert_true(uv_is_active((const uv_handle_t *)&s->timer));
        assert_int_equal(s->timer_at, s->heap[0]->deadline);
    } else {
        assert_false(uv_is_active((const uv_handle_t *)&s->timer));
    }
}

static void test_order_through_moves_and_removals(void **state)
{
    fixture *f = *state;
    uint64_t base = uv_now(&f->loop) + 3600 * 1000; /* none due during this test */
    srand(7);
    for (int i = 0; i < N; i++)
        net__deadline_set(f->c[i], base + (uint64_t)(rand() % 100000));
    check_heap(f->srv);
    assert_int_equal(f->srv->heap_len, N);
    for (int k = 0; k < 3 * N; k++) {
        net_conn *c = f->c[rand() % N];
        switch (rand() % 3) {
        case 0: /* earlier, later or the same */
            net__deadline_set(c, base + (uint64_t)(rand() % 100000));
            break;
        case 1:
            net__deadline_clear(c);
            assert_int_equal(c->heap_pos, 0);
            break;
        default:
            net__deadline_clear(c); /* clearing twice is harmless */
            net__deadline_clear(c);
            net__deadline_set(c, base + (uint64_t)(rand() % 100000));
        }
        if (k % 97 == 0)
            check_heap(f->srv);
    }
    check_heap(f->srv);
    size_t in = 0;
    for (int i = 0; i < N; i++)
        in += f->c[i]->heap_pos != 0;
    assert_int_equal(in, f->srv->heap_len);
    for (int i = 0; i < N; i++)
        net__deadline_clear(f->c[i]);
    assert_int_equal(f->srv->heap_len, 0);
    check_heap(f->srv);
}

static void test_only_due_fire(void **state)
{
    fixture *f = *state;
    uv_update_time(&f->loop);
    uint64_t now = uv_now(&f->loop);
    for (int i = 0; i < N; i++) /* half due within 20 ms, half in an hour */
        net__deadline_set(f->c[i], i % 2 ? now + 3600 * 1000 + (uint64_t)i : now + (uint64_t)(i % 20));
    check_heap(f->srv);
    while (f->srv->heap_len > N / 2)
        uv_run(&f->loop, UV_RUN_ONCE);
    for (int i = 0; i < N; i++)
        assert_int_equal(f->c[i]->heap_pos != 0, i % 2 != 0);
    check_heap(f->srv);
    assert_true(f->srv->timer_at >= now + 3600 * 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_order_through_moves_and_removals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_only_due_fire, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
