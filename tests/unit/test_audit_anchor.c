/* test_audit_anchor.c - the anchor an operator copies from an audit_anchor log
 * line ("ID:SHA256", server/svc/audit.c): accepted as cmsd writes it, hex in
 * either case; refused with a sign, space, leading zero, zero, an id beyond
 * LLONG_MAX, a hash of the wrong length or with a non-hex digit, no colon;
 * a refusal writes nothing. */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "svc.h"

#define H64 "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

static void test_accepts_what_the_log_writes(void **state)
{
    (void)state;
    long long id = 0;
    char hex[65];
    assert_true(svc_audit_anchor_parse("42:" H64, &id, hex));
    assert_int_equal(id, 42);
    assert_string_equal(hex, H64);
    /* upper case (copied from a tool that upper-cases) comes back lower case */
    assert_true(svc_audit_anchor_parse(
        "7:00112233445566778899AABBCCDDEEFF00112233445566778899AaBbCcDdEeFf", &id, hex));
    assert_int_equal(id, 7);
    assert_string_equal(hex, H64);
    assert_true(svc_audit_anchor_parse("9223372036854775807:" H64, &id, hex));
    assert_true(id == LLONG_MAX);
}

static void test_refuses_and_writes_nothing(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        ":" H64,
        "0:" H64,
        "042:" H64,
        "+42:" H64,
        "-42:" H64,
        " 42:" H64,
        "42 :" H64,
        "42" H64,
        "42;" H64,
        "9223372036854775808:" H64,     /* LLONG_MAX + 1 */
        "99999999999999999999999:" H64, /* far beyond */
        "42:" H64 "0",                  /* 65 digits */
        "42:0011223344556677",          /* short */
        "42:g0112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        "42:" H64 " ",
        "42:" H64 "\n",
        NULL,
    };
    for (int i = 0; bad[i]; i++) {
        long long id = -1;
        char hex[65] = "unchanged";
        if (svc_audit_anchor_parse(bad[i], &id, hex))
            fail_msg("accepted \"%s\"", bad[i]);
        assert_int_equal(id, -1);
        assert_string_equal(hex, "unchanged");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepts_what_the_log_writes),
        cmocka_unit_test(test_refuses_and_writes_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
