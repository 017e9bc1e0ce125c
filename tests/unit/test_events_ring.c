/* test_events_ring.c - the live-event hub's ring (server/svc/events/events_ring.c):
 * ids increase from the first id, the ring keeps at most N events and B bytes
 * (small limits here; the hub uses EVENTS_RING and EVENTS_RING_BYTES), a
 * Last-Event-ID resumes with exactly the later events or gets a "reset", and
 * ?ward=W streams get only W's events. */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cms_err.h"
#include "../../server/svc/events/events_int.h"

#define FIRST 1000000u

static uint64_t put(events__ring *rg, const char *type, const char *ward, const char *json)
{
    char *ev = malloc(events__ring_event_cap(type, json));
    assert_non_null(ev);
    return events__ring_put(rg, ev, type, ward, json, 42);
}

/* What a client that last saw *last receives next (one copy; buffer of 64 KiB as in events.c). */
typedef struct copied {
    char *buf;
    size_t cap, len;
} copied;

static void copy(const events__ring *rg, uint64_t *last, const char *ward, copied *c)
{
    if (!c->buf) {
        c->cap = 64 * 1024;
        c->buf = malloc(c->cap);
        assert_non_null(c->buf);
    }
    c->len = events__ring_copy(rg, last, ward, &c->buf, &c->cap);
}

/* The ids of the events in c, in order, into ids (at most max); returns how many. */
static size_t ids_of(const copied *c, uint64_t *ids, size_t max)
{
    size_t k = 0;
    const char *p = c->buf, *end = c->buf + c->len;
    while (p < end && k < max) {
        assert_memory_equal(p, "id: ", 4);
        ids[k++] = strtoull(p + 4, NULL, 10);
        const char *e = memmem(p, (size_t)(end - p), "\n\n", 2);
        assert_non_null(e);
        p = e + 2;
    }
    return k;
}

static bool is_reset(const copied *c, uint64_t newest)
{
    char want[64];
    int n = snprintf(want, sizeof(want), "id: %" PRIu64 "\nevent: reset\ndata: {}\n\n", newest);
    return c->len == (size_t)n && memcmp(c->buf, want, c->len) == 0;
}

static void test_ids_increase_and_format(void **state)
{
    (void)state;
    events__ring rg;
    assert_int_equal(events__ring_init(&rg, 8, 1 << 20, FIRST), CMS_OK);
    assert_int_equal(events__ring_newest(&rg), FIRST - 1);
    uint64_t a = put(&rg, "vitals", "icu", "{\"bed\":\"b1\"}");
    uint64_t b = put(&rg, "alarm", "", "{}");
    uint64_t c = put(&rg, "vitals", NULL, "{\"x\":1}");
    assert_int_equal(a, FIRST);
    assert_int_equal(b, FIRST + 1);
    assert_int_equal(c, FIRST + 2);
    assert_int_equal(events__ring_newest(&rg), c);

    copied cp = {0};
    uint64_t last = FIRST - 1; /* a client that connected before any event */
    copy(&rg, &last, "", &cp);
    assert_int_equal(last, c);
    assert_true(cp.len < cp.cap);
    cp.buf[cp.len] = '\0';
    assert_string_equal(cp.buf,
                        "id: 1000000\nevent: vitals\ndata: {\"published_us\":42,\"bed\":\"b1\"}\n\n"
                        "id: 1000001\nevent: alarm\ndata: {\"published_us\":42}\n\n"
                        "id: 1000002\nevent: vitals\ndata: {\"published_us\":42,\"x\":1}\n\n");
    /* nothing new: nothing copied, last unchanged */
    copy(&rg, &last, "", &cp);
    assert_int_equal(cp.len, 0);
    assert_int_equal(last, c);
    free(cp.buf);
    events__ring_free(&rg);
}

static void test_count_trimming(void **state)
{
    (void)state;
    events__ring rg;
    assert_int_equal(events__ring_init(&rg, 4, 1 << 20, FIRST), CMS_OK);
    for (int i = 0; i < 10; i++)
        put(&rg, "vitals", "", "{}");
    assert_int_equal(rg.kept_from, FIRST + 6); /* the last 4: FIRST+6 .. FIRST+9 */
    copied cp = {0};
    uint64_t ids[16];
    /* from just before the oldest held: all four */
    uint64_t last = FIRST + 5;
    copy(&rg, &last, "", &cp);
    assert_int_equal(ids_of(&cp, ids, 16), 4);
    assert_int_equal(ids[0], FIRST + 6);
    assert_int_equal(ids[3], FIRST + 9);
    assert_int_equal(last, FIRST + 9);
    /* from one whose successor was dropped: reset at the newest */
    last = FIRST + 4;
    copy(&rg, &last, "", &cp);
    assert_true(is_reset(&cp, FIRST + 9));
    assert_int_equal(last, FIRST + 9);
    /* bytes held: exactly the four events */
    size_t one = rg.len[(FIRST + 9) % 4];
    assert_int_equal(rg.bytes, 4 * one);
    free(cp.buf);
    events__ring_free(&rg);
}

static void test_byte_trimming(void **state)
{
    (void)state;
    events__ring rg;
    /* a budget of three and a half events (of the same size) holds three */
    const char *json = "{\"v\":\"0123456789012\"}";
    size_t one = strlen(
        "id: 1000000\nevent: vitals\ndata: {\"published_us\":42,\"v\":\"0123456789012\"}\n\n");
    size_t budget = 3 * one + one / 2;
    assert_int_equal(events__ring_init(&rg, 16, budget, FIRST), CMS_OK);
    uint64_t id = put(&rg, "vitals", "", json);
    assert_int_equal(rg.len[id % 16], one);
    for (int i = 0; i < 5; i++)
        id = put(&rg, "vitals", "", json);
    assert_int_equal(id, FIRST + 5);
    assert_int_equal(rg.kept_from, FIRST + 3);
    assert_true(rg.bytes <= budget);
    assert_int_equal(rg.bytes, 3 * one);
    copied cp = {0};
    uint64_t ids[16];
    uint64_t last = FIRST + 2;
    copy(&rg, &last, "", &cp);
    assert_int_equal(ids_of(&cp, ids, 16), 3);
    assert_int_equal(ids[0], FIRST + 3);
    last = FIRST + 1;
    copy(&rg, &last, "", &cp);
    assert_true(is_reset(&cp, FIRST + 5));
    /* the freed slots are empty, the held ones are not */
    assert_null(rg.slot[(FIRST + 2) % 16]);
    assert_non_null(rg.slot[(FIRST + 3) % 16]);
    free(cp.buf);
    events__ring_free(&rg);
}

static void test_event_larger_than_byte_limit(void **state)
{
    (void)state;
    events__ring rg;
    assert_int_equal(events__ring_init(&rg, 16, 100, FIRST), CMS_OK);
    put(&rg, "vitals", "", "{}");
    put(&rg, "vitals", "", "{}");
    char big[300];
    memset(big, 'a', sizeof(big));
    memcpy(big, "{\"v\":\"", 6);
    memcpy(big + sizeof(big) - 3, "\"}", 3);
    uint64_t id = put(&rg, "vitals", "", big);
    /* the big one alone is kept (it passes the budget by itself) */
    assert_int_equal(rg.kept_from, id);
    assert_true(rg.bytes > 100);
    copied cp = {.cap = 64, .buf = malloc(64)}; /* smaller than the event: grown for it */
    assert_non_null(cp.buf);
    uint64_t last = id - 1;
    copy(&rg, &last, "", &cp);
    assert_int_equal(last, id);
    assert_int_equal(cp.len, rg.len[id % 16]);
    assert_true(cp.cap >= cp.len);
    assert_memory_equal(cp.buf + cp.len - 5, "a\"}\n\n", 5);
    /* the next small event pushes the big one out */
    uint64_t next = put(&rg, "vitals", "", "{}");
    assert_int_equal(rg.kept_from, next);
    assert_true(rg.bytes <= 100);
    last = id - 1;
    copy(&rg, &last, "", &cp);
    assert_true(is_reset(&cp, next));
    free(cp.buf);
    events__ring_free(&rg);
}

static void test_resume_middle(void **state)
{
    (void)state;
    events__ring rg;
    assert_int_equal(events__ring_init(&rg, 32, 1 << 20, FIRST), CMS_OK);
    for (int i = 0; i < 10; i++)
        put(&rg, "vitals", "", "{}");
    copied cp = {0};
    uint64_t ids[16];
    uint64_t last = FIRST + 4;
    copy(&rg, &last, "", &cp);
    size_t n = ids_of(&cp, ids, 16);
    assert_int_equal(n, 5);
    for (size_t k = 0; k < n; k++)
        assert_int_equal(ids[k], FIRST + 5 + k);
    assert_int_equal(last, FIRST + 9);
    /* a buffer that holds only two events: two per copy, in order */
    free(cp.buf);
    size_t one = rg.len[FIRST % 32];
    cp = (copied){.cap = 2 * one + one / 2, .buf = malloc(2 * one + one / 2)};
    assert_non_null(cp.buf);
    last = FIRST + 4;
    copy(&rg, &last, "", &cp);
    assert_int_equal(ids_of(&cp, ids, 16), 2);
    assert_int_equal(ids[0], FIRST + 5);
    assert_int_equal(last, FIRST + 6);
    copy(&rg, &last, "", &cp);
    assert_int_equal(ids_of(&cp, ids, 16), 2);
    assert_int_equal(ids[0], FIRST + 7);
    free(cp.buf);
    events__ring_free(&rg);
}

static void test_resume_reset(void **state)
{
    (void)state;
    events__ring rg;
    assert_int_equal(events__ring_init(&rg, 4, 1 << 20, FIRST), CMS_OK);
    copied cp = {0};
    /* no event yet: 0 or a future id (a restarted peer's) resets at first_id - 1 */
    uint64_t last = 0;
    copy(&rg, &last, "", &cp);
    assert_true(is_reset(&cp, FIRST - 1));
    for (int i = 0; i < 6; i++)
        put(&rg, "vitals", "", "{}");
    uint64_t newest = FIRST + 5;
    assert_int_equal(rg.kept_from, FIRST + 2); /* ring of 4: FIRST+2 .. FIRST+5 held */
    const uint64_t resets[] = {0, 1, FIRST - 2, FIRST, newest + 1, newest + 1000000, UINT64_MAX};
    for (size_t k = 0; k < sizeof(resets) / sizeof(resets[0]); k++) {
        last = resets[k];
        copy(&rg, &last, "icu", &cp); /* the reset goes to ward streams too */
        if (!is_reset(&cp, newest))
            fail_msg("Last-Event-ID %" PRIu64 ": no reset", resets[k]);
        assert_int_equal(last, newest);
    }
    /* just before the oldest held: every held event, no reset */
    uint64_t ids[8];
    last = FIRST + 1;
    copy(&rg, &last, "", &cp);
    assert_int_equal(ids_of(&cp, ids, 8), 4);
    assert_int_equal(ids[0], FIRST + 2);
    assert_int_equal(last, newest);
    /* the newest itself: nothing to send, no reset */
    last = newest;
    copy(&rg, &last, "", &cp);
    assert_int_equal(cp.len, 0);
    assert_int_equal(last, newest);
    free(cp.buf);
    events__ring_free(&rg);
}

static void test_parse_last_id(void **state)
{
    (void)state;
    uint64_t id = 7;
    assert_true(events__parse_last_id("0", &id));
    assert_int_equal(id, 0);
    assert_true(events__parse_last_id("1733375609123456", &id));
    assert_int_equal(id, 1733375609123456u);
    assert_true(events__parse_last_id("9999999999999999999", &id));
    assert_int_equal(id, 9999999999999999999u);
    /* garbage: not a resume at all (the stream starts live, no reset) */
    const char *bad[] = {"", "-1", "12a", " 12", "12 ", "0x10", "+5", "99999999999999999999", NULL};
    for (int i = 0; bad[i]; i++) {
        id = 7;
        if (events__parse_last_id(bad[i], &id) || id != 7)
            fail_msg("Last-Event-ID \"%s\" accepted", bad[i]);
    }
    assert_false(events__parse_last_id(NULL, &id));
}

static void test_ward_filter(void **state)
{
    (void)state;
    events__ring rg;
    assert_int_equal(events__ring_init(&rg, 16, 1 << 20, FIRST), CMS_OK);
    put(&rg, "vitals", "icu", "{}");   /* FIRST   */
    put(&rg, "vitals", "er", "{}");    /* FIRST+1 */
    put(&rg, "alarm", "", "{}");       /* FIRST+2: no ward */
    put(&rg, "alarm", "icu", "{}");    /* FIRST+3 */
    put(&rg, "vitals", "icu-2", "{}"); /* FIRST+4: not a prefix match */
    char longward[100];
    memset(longward, 'w', sizeof(longward) - 1);
    longward[sizeof(longward) - 1] = '\0';
    put(&rg, "vitals", longward, "{}"); /* FIRST+5: cut to 63 bytes */
    copied cp = {0};
    uint64_t ids[16];
    uint64_t last = FIRST - 1;
    copy(&rg, &last, "icu", &cp);
    assert_int_equal(ids_of(&cp, ids, 16), 2);
    assert_int_equal(ids[0], FIRST);
    assert_int_equal(ids[1], FIRST + 3);
    assert_int_equal(last, FIRST + 5); /* moved past the others' events */
    last = FIRST - 1;
    copy(&rg, &last, "er", &cp);
    assert_int_equal(ids_of(&cp, ids, 16), 1);
    assert_int_equal(ids[0], FIRST + 1);
    last = FIRST - 1;
    copy(&rg, &last, "", &cp); /* no ward: every event */
    assert_int_equal(ids_of(&cp, ids, 16), 6);
    char cut[EVENTS_WARD_LEN];
    memset(cut, 'w', EVENTS_WARD_LEN - 1);
    cut[EVENTS_WARD_LEN - 1] = '\0';
    last = FIRST - 1;
    copy(&rg, &last, cut, &cp);
    assert_int_equal(ids_of(&cp, ids, 16), 1);
    assert_int_equal(ids[0], FIRST + 5);
    /* only other wards' events after last: nothing copied, last moves on */
    last = FIRST + 3;
    copy(&rg, &last, "er", &cp);
    assert_int_equal(cp.len, 0);
    assert_int_equal(last, FIRST + 5);
    free(cp.buf);
    events__ring_free(&rg);
}

static void test_init_and_free(void **state)
{
    (void)state;
    events__ring rg;
    assert_int_equal(events__ring_init(&rg, 0, 100, FIRST), CMS_EINVAL);
    assert_int_equal(events__ring_init(&rg, 4, 100, 0), CMS_EINVAL);
    events__ring_free(&rg); /* a zeroed ring */
    /* a freed ring copies nothing (a stream served after events_hub_free) */
    copied cp = {0};
    uint64_t last = 5;
    copy(&rg, &last, "", &cp);
    assert_int_equal(cp.len, 0);
    assert_int_equal(last, 5);
    free(cp.buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_increase_and_format),
        cmocka_unit_test(test_count_trimming),
        cmocka_unit_test(test_byte_trimming),
        cmocka_unit_test(test_event_larger_than_byte_limit),
        cmocka_unit_test(test_resume_middle),
        cmocka_unit_test(test_resume_reset),
        cmocka_unit_test(test_parse_last_id),
        cmocka_unit_test(test_ward_filter),
        cmocka_unit_test(test_init_and_free),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
