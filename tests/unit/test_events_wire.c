/* test_events_wire.c - the relay line of a live event (server/svc/events/events_wire.c):
 * what one instance NOTIFYs comes back field for field on another (a ward holding a space or
 * a line feed included), several lines share a payload, a line that does not fit is not
 * written, and malformed lines are skipped one by one without losing the good ones. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "../../server/svc/events/events_int.h"

#define ORIGIN "0123456789abcdef"

static void test_round_trip(void **state)
{
    (void)state;
    char buf[EVENTS__PAYLOAD_MAX + 1];
    const char *json = "{\"device\":\"MON-1\",\"location\":\"CCU^^BED-07\"}";
    size_t n = events__wire_put(buf, sizeof(buf), ORIGIN, 1764880000123456u, "vitals", "CCU", json);
    assert_true(n > 0);
    size_t m =
        events__wire_put(buf + n, sizeof(buf) - n, "fedcba9876543210", 7, "alarm", "a b\nc", "{}");
    assert_true(m > 0);
    size_t k =
        events__wire_put(buf + n + m, sizeof(buf) - n - m, ORIGIN, 8, "vitals", NULL, "{\"x\":1}");
    assert_true(k > 0);
    const char *p = buf, *end = buf + n + m + k;
    events__wire_event ev;
    assert_int_equal(events__wire_next(&p, end, &ev), 1);
    assert_string_equal(ev.origin, ORIGIN);
    assert_true(ev.published_us == 1764880000123456u);
    assert_string_equal(ev.type, "vitals");
    assert_string_equal(ev.ward, "CCU");
    assert_int_equal(ev.json_len, strlen(json));
    assert_memory_equal(ev.json, json, ev.json_len);
    assert_int_equal(events__wire_next(&p, end, &ev), 1);
    assert_string_equal(ev.origin, "fedcba9876543210");
    assert_string_equal(ev.type, "alarm");
    assert_string_equal(ev.ward, "a b\nc"); /* counted, not searched for */
    assert_int_equal(ev.json_len, 2);
    assert_int_equal(events__wire_next(&p, end, &ev), 1);
    assert_string_equal(ev.ward, "");
    assert_int_equal(ev.json_len, 7);
    assert_int_equal(events__wire_next(&p, end, &ev), 0);
}

static void test_put_refuses(void **state)
{
    (void)state;
    char buf[256];
    char ward[EVENTS_WARD_LEN + 1];
    memset(ward, 'W', sizeof(ward) - 1);
    ward[sizeof(ward) - 1] = '\0';
    size_t need = events__wire_put(buf, sizeof(buf), ORIGIN, 1, "vitals", "W", "{}");
    assert_true(need > 0);
    assert_int_equal(events__wire_put(buf, need - 1, ORIGIN, 1, "vitals", "W", "{}"), 0);
    assert_int_equal(events__wire_put(buf, sizeof(buf), "0123", 1, "vitals", "W", "{}"), 0);
    assert_int_equal(events__wire_put(buf, sizeof(buf), "0123456789ABCDEF", 1, "vitals", "W", "{}"),
                     0);
    assert_int_equal(events__wire_put(buf, sizeof(buf), ORIGIN, 1, "Vitals", "W", "{}"), 0);
    assert_int_equal(events__wire_put(buf, sizeof(buf), ORIGIN, 1, "vitals", ward, "{}"), 0);
    assert_int_equal(events__wire_put(buf, sizeof(buf), ORIGIN, 1, "vitals", "W", "[]"), 0);
    assert_int_equal(events__wire_put(buf, sizeof(buf), ORIGIN, 1, "vitals", "W", "{\n}"), 0);
    assert_int_equal(events__wire_put(buf, sizeof(buf), ORIGIN, 1, "vitals", "W", ""), 0);
}

static void test_malformed_lines_skipped(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "0123456789abcde 1 vitals 0 {}\n",                     /* short origin */
        "0123456789abcdeX 1 vitals 0 {}\n",                    /* not hex */
        "0123456789abcdef x vitals 0 {}\n",                    /* time not decimal */
        "0123456789abcdef 99999999999999999999 vitals 0 {}\n", /* > 2^64 - 1 */
        "0123456789abcdef 1 VITALS 0 {}\n",                    /* type */
        "0123456789abcdef 1 vitals 64 {}\n",                   /* ward too long */
        "0123456789abcdef 1 vitals 9 CCU{}\n",                 /* ward runs past the line */
        "0123456789abcdef 1 vitals 0 []\n",                    /* not an object */
        "0123456789abcdef 1 vitals 0 \n",                      /* no JSON */
        "0123456789abcdef 1 vitals 0 {}",                      /* no LF */
    };
    const char good[] = "0123456789abcdef 5 alarm 3 ICU{\"ok\":true}\n";
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char buf[512];
        int len = snprintf(buf, sizeof(buf), "%s%s%s", good, bad[i],
                           bad[i][strlen(bad[i]) - 1] == '\n' ? good : "");
        const char *p = buf, *end = buf + len;
        events__wire_event ev;
        int got = 0, refused = 0, rc;
        while ((rc = events__wire_next(&p, end, &ev)) != 0) {
            if (rc > 0) {
                got++;
                assert_string_equal(ev.ward, "ICU");
                assert_true(ev.published_us == 5);
            } else {
                refused++;
            }
            assert_true(p <= end);
        }
        assert_int_equal(refused, 1);
        assert_int_equal(got, bad[i][strlen(bad[i]) - 1] == '\n' ? 2 : 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_put_refuses),
        cmocka_unit_test(test_malformed_lines_skipped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
