/*
 * test_store_array.c - PostgreSQL array literals built for array parameters
 * and parsed from array_agg output (server/store/store_array.c).
 */
#include <math.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "../../server/store/store_int.h"

static void test_text_quoting(void **state)
{
    (void)state;
    store__buf b = {0};
    store__arr_begin(&b);
    store__arr_text(&b, "plain");
    store__arr_text(&b, "say \"hi\"");
    store__arr_text(&b, "back\\slash");
    store__arr_text(&b, "");
    store__arr_text(&b, NULL);
    store__arr_text(&b, "NULL");
    store__arr_text(&b, "a,b{c}");
    store__arr_end(&b);
    assert_false(b.oom);
    assert_string_equal(b.p, "{\"plain\",\"say \\\"hi\\\"\",\"back\\\\slash\",\"\",NULL,"
                             "\"NULL\",\"a,b{c}\"}");
    store__buf_free(&b);
}

static void test_numbers(void **state)
{
    (void)state;
    store__buf b = {0};
    store__arr_begin(&b);
    store__arr_int(&b, -42);
    store__arr_double(&b, 0.1);
    store__arr_double(&b, 36.6);
    store__arr_double(&b, NAN);
    store__arr_end(&b);
    assert_string_equal(b.p, "{-42,0.10000000000000001,36.600000000000001,NaN}");
    /* integers, and whole doubles written as integers, exactly as "%lld" / "%.17g" would */
    store__arr_begin(&b);
    store__arr_int(&b, 0);
    store__arr_int(&b, LLONG_MIN);
    store__arr_int(&b, LLONG_MAX);
    store__arr_double(&b, 72.0);
    store__arr_double(&b, -40.0);
    store__arr_double(&b, 0.0);
    store__arr_double(&b, -0.0);              /* keeps its sign */
    store__arr_double(&b, 9007199254740991.0); /* 2^53 - 1 */
    store__arr_double(&b, 9007199254740992.0); /* 2^53: %.17g */
    store__arr_double(&b, 1e300);
    store__arr_double(&b, -INFINITY);
    store__arr_end(&b);
    assert_string_equal(b.p, "{0,-9223372036854775808,9223372036854775807,72,-40,0,-0,"
                             "9007199254740991,9007199254740992,1.0000000000000001e+300,"
                             "-Infinity}");
    store__arr_begin(&b); /* reuse */
    store__arr_end(&b);
    assert_string_equal(b.p, "{}");
    store__buf_free(&b);
}

static void test_grows(void **state)
{
    (void)state;
    store__buf b = {0};
    store__arr_begin(&b);
    for (int i = 0; i < 10000; i++)
        store__arr_text(&b, "0123456789\"");
    store__arr_end(&b);
    assert_false(b.oom);
    assert_int_equal(b.len, 2 + 10000 * 14 + 9999); /* braces, elements, commas */
    store__buf_free(&b);
}

static void test_parse(void **state)
{
    (void)state;
    char out[8][64];
    assert_int_equal(store__arr_parse("{}", out, 8), 0);
    assert_int_equal(store__arr_parse("{abc,\"x \\\"y\\\" \\\\z\",NULL,\"NULL\"}", out, 8), 3);
    assert_string_equal(out[0], "abc");
    assert_string_equal(out[1], "x \"y\" \\z");
    assert_string_equal(out[2], "NULL");
    assert_int_equal(store__arr_parse("{a,b,c}", out, 2), 2);
    assert_int_equal(store__arr_parse("abc", out, 8), -1);
    assert_int_equal(store__arr_parse("{\"unterminated", out, 8), -1);
    assert_int_equal(store__arr_parse(NULL, out, 8), -1);
}

/* JSON text for the jsonb parameters of cms.ingest_batch2: what jsonb accepts, values exact. */
static void test_json(void **state)
{
    store__buf b = {0};

    (void)state;
    store__buf_reset(&b);
    store__json_str(&b, "a\"b\\c\x01\td/\xc3\xa9");
    store__buf_append(&b, "", 1);
    assert_string_equal(b.p, "\"a\\\"b\\\\c\\u0001\\u0009d/\xc3\xa9\"");
    store__buf_reset(&b);
    store__json_num(&b, 500);
    store__buf_append(&b, ",", 1);
    store__json_num(&b, 0.1);
    store__buf_append(&b, ",", 1);
    store__json_num(&b, -2.5e-7);
    store__buf_append(&b, ",", 1);
    store__json_num(&b, NAN);
    store__buf_append(&b, ",", 1);
    store__json_num(&b, -INFINITY);
    store__buf_append(&b, "", 1);
    assert_string_equal(b.p, "500,0.10000000000000001,-2.4999999999999999e-07,null,null");
    store__buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_quoting),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_grows),
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
