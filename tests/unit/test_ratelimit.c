/* test_ratelimit.c - token buckets per key (server/base/ratelimit.c): a burst, then
 * one request per refill interval; Retry-After arithmetic; keys are independent;
 * a long pause does not bank more than the burst; refusals are reported once per
 * episode and then once per report interval with the count in between; a full
 * set forgets the key seen least recently. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "ratelimit.h"

#define T0 1000000u /* any monotonic start */

static bool take(rl_table *t, const char *key, uint64_t now, rl_verdict *v)
{
    return rl_take(t, key, strlen(key), now, v);
}

static void test_burst_then_refill(void **state)
{
    (void)state;
    rl_table *t = rl_new(64, 60, 3, 60000); /* 1 a second, 3 at once */
    rl_verdict v;
    for (int i = 0; i < 3; i++)
        assert_true(take(t, "10.0.0.1", T0, &v));
    assert_false(take(t, "10.0.0.1", T0, &v));
    assert_int_equal(v.retry_ms, 1000);
    assert_false(take(t, "10.0.0.1", T0 + 400, &v));
    assert_int_equal(v.retry_ms, 600);
    assert_true(take(t, "10.0.0.1", T0 + 1000, &v)); /* one token back after a second */
    assert_false(take(t, "10.0.0.1", T0 + 1000, &v));
    /* Another address has its own bucket. */
    assert_true(take(t, "10.0.0.2", T0 + 1000, &v));
    /* A day idle refills to the burst, not beyond. */
    uint64_t later = T0 + 86400000u;
    for (int i = 0; i < 3; i++)
        assert_true(take(t, "10.0.0.1", later, &v));
    assert_false(take(t, "10.0.0.1", later, &v));
    rl_free(t);
}

static void test_reports_once_per_interval(void **state)
{
    (void)state;
    rl_table *t = rl_new(64, 6, 1, 10000); /* one per 10 s; report every 10 s */
    rl_verdict v;
    assert_true(take(t, "a", T0, &v));
    assert_false(take(t, "a", T0 + 1, &v));
    assert_true(v.report); /* the first refusal of an episode */
    assert_int_equal(v.suppressed, 0);
    for (int i = 2; i < 7; i++) { /* five more, quiet */
        assert_false(take(t, "a", T0 + (uint64_t)i, &v));
        assert_false(v.report);
    }
    assert_false(take(t, "a", T0 + 9000, &v)); /* < 10 s since the report */
    assert_false(v.report);
    /* 10 s after the report the bucket has refilled: allowed, so the next
     * refusal, 11 s in, reports with the six not reported before it. */
    assert_true(take(t, "a", T0 + 10001, &v));
    assert_false(take(t, "a", T0 + 11000, &v));
    assert_true(v.report);
    assert_int_equal(v.suppressed, 6);
    rl_free(t);
}

static void test_full_set_forgets_least_recent(void **state)
{
    (void)state;
    rl_table *t = rl_new(8, 60, 1, 60000); /* one set of 8 */
    rl_verdict v;
    char key[16];
    for (int i = 0; i < 8; i++) { /* k0 (oldest) .. k7, each bucket now empty */
        snprintf(key, sizeof(key), "k%d", i);
        assert_true(take(t, key, T0 + (uint64_t)i, &v));
        assert_false(take(t, key, T0 + (uint64_t)i, &v));
    }
    /* A ninth key takes k0's slot; k1 .. k7 are still limited. */
    assert_true(take(t, "k8", T0 + 8, &v));
    for (int i = 1; i < 8; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        assert_false(take(t, key, T0 + 9, &v));
    }
    /* k0 was forgotten: it starts again with a full bucket (and evicts k8,
     * now the least recently seen). */
    assert_true(take(t, "k0", T0 + 10, &v));
    assert_true(take(t, "k8", T0 + 11, &v));
    rl_free(t);
}

static void test_long_keys_are_cut(void **state)
{
    (void)state;
    rl_table *t = rl_new(64, 60, 1, 60000);
    char a[100], b[100];
    memset(a, 'x', sizeof(a));
    memcpy(b, a, sizeof(b));
    b[99] = 'y'; /* differs only after byte 63 */
    assert_true(rl_take(t, a, sizeof(a), T0, NULL));
    assert_false(rl_take(t, b, sizeof(b), T0, NULL));
    rl_free(t);
}

static void test_bad_parameters(void **state)
{
    (void)state;
    assert_null(rl_new(64, 0, 1, 1000));
    assert_null(rl_new(64, 60, 0.5, 1000));
    assert_null(rl_new(4, 60, 1, 1000));
    rl_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_refill),
        cmocka_unit_test(test_reports_once_per_interval),
        cmocka_unit_test(test_full_set_forgets_least_recent),
        cmocka_unit_test(test_long_keys_are_cut),
        cmocka_unit_test(test_bad_parameters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
