/* test_fw_rollout.c - what an operator writes for a staged rollout
 * (server/svc/fw/rollout_spec.c): stages "N%" and "group:NAME" and their
 * ordering rules, daily windows "HH:MM-HH:MM" (spanning midnight), whether a
 * window is open at a minute, and how many devices a percentage reaches. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cms_err.h"
#include "fw_rollout.h"

static void test_stage_percent(void **state)
{
    (void)state;
    fw_rollout_stage s;
    assert_int_equal(fw_rollout_parse_stage("10%", &s), CMS_OK);
    assert_int_equal(s.percent, 10);
    assert_string_equal(s.group, "");
    assert_int_equal(fw_rollout_parse_stage("1%", &s), CMS_OK);
    assert_int_equal(s.percent, 1);
    assert_int_equal(fw_rollout_parse_stage("100%", &s), CMS_OK);
    assert_int_equal(s.percent, 100);
    const char *bad[] = {"0%",  "101%", "1000%", "010%", "-5%",  "+5%",  "5",      "5%%",
                         "5 %", " 5%",  "%",     "",     "5.5%", "1e2%", "group:", NULL};
    for (int i = 0; bad[i]; i++)
        if (fw_rollout_parse_stage(bad[i], &s) != CMS_EINVAL)
            fail_msg("stage \"%s\" accepted", bad[i]);
}

static void test_stage_group(void **state)
{
    (void)state;
    fw_rollout_stage s;
    assert_int_equal(fw_rollout_parse_stage("group:icu-3", &s), CMS_OK);
    assert_int_equal(s.percent, 0);
    assert_string_equal(s.group, "icu-3");
    assert_int_equal(fw_rollout_parse_stage("group:ward.A_1:b", &s), CMS_OK);
    assert_string_equal(s.group, "ward.A_1:b");
    char longest[6 + 63 + 1];
    memcpy(longest, "group:", 6);
    memset(longest + 6, 'g', 63);
    longest[6 + 63] = '\0';
    assert_int_equal(fw_rollout_parse_stage(longest, &s), CMS_OK);
    assert_int_equal(strlen(s.group), 63);
    char too_long[6 + 65];
    memcpy(too_long, "group:", 6);
    memset(too_long + 6, 'g', 64);
    too_long[6 + 64] = '\0';
    assert_int_equal(fw_rollout_parse_stage(too_long, &s), CMS_EINVAL);
    assert_int_equal(fw_rollout_parse_stage("group:-icu", &s), CMS_EINVAL);
    assert_int_equal(fw_rollout_parse_stage("group:icu 3", &s), CMS_EINVAL);
    assert_int_equal(fw_rollout_parse_stage("group:icu/3", &s), CMS_EINVAL);
    assert_int_equal(fw_rollout_parse_stage("Group:icu", &s), CMS_EINVAL);
    assert_int_equal(fw_rollout_parse_stage(NULL, &s), CMS_EINVAL);
}

static void test_stage_list(void **state)
{
    (void)state;
    fw_rollout_stage st[FW_ROLLOUT_MAX_STAGES + 1];
    char err[200];
    const char *ok[] = {"group:pilot", "10%", "50%", "group:icu", "100%"};
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(fw_rollout_parse_stage(ok[i], &st[i]), CMS_OK);
    assert_int_equal(fw_rollout_check_stages(st, 5, err, sizeof(err)), CMS_OK);
    /* percentages must rise */
    fw_rollout_parse_stage("50%", &st[0]);
    fw_rollout_parse_stage("50%", &st[1]);
    assert_int_equal(fw_rollout_check_stages(st, 2, err, sizeof(err)), CMS_EINVAL);
    assert_non_null(strstr(err, "stage 2"));
    fw_rollout_parse_stage("40%", &st[1]);
    assert_int_equal(fw_rollout_check_stages(st, 2, err, sizeof(err)), CMS_EINVAL);
    /* a group twice */
    fw_rollout_parse_stage("group:icu", &st[0]);
    fw_rollout_parse_stage("10%", &st[1]);
    fw_rollout_parse_stage("group:icu", &st[2]);
    assert_int_equal(fw_rollout_check_stages(st, 3, err, sizeof(err)), CMS_EINVAL);
    assert_non_null(strstr(err, "group icu is stage 1"));
    /* 1..16 stages */
    assert_int_equal(fw_rollout_check_stages(st, 0, err, sizeof(err)), CMS_EINVAL);
    for (int i = 0; i < FW_ROLLOUT_MAX_STAGES + 1; i++) {
        char b[8];
        snprintf(b, sizeof(b), "%d%%", i + 1);
        assert_int_equal(fw_rollout_parse_stage(b, &st[i]), CMS_OK);
    }
    assert_int_equal(fw_rollout_check_stages(st, FW_ROLLOUT_MAX_STAGES, err, sizeof(err)), CMS_OK);
    assert_int_equal(fw_rollout_check_stages(st, FW_ROLLOUT_MAX_STAGES + 1, err, sizeof(err)),
                     CMS_EINVAL);
}

static void test_window_parse(void **state)
{
    (void)state;
    int a = -1, b = -1;
    assert_int_equal(fw_rollout_parse_window("22:00-04:30", &a, &b), CMS_OK);
    assert_int_equal(a, 22 * 60);
    assert_int_equal(b, 4 * 60 + 30);
    assert_int_equal(fw_rollout_parse_window("00:00-23:59", &a, &b), CMS_OK);
    assert_int_equal(a, 0);
    assert_int_equal(b, 1439);
    const char *bad[] = {
        "24:00-01:00", "10:60-11:00", "10:00-10:00", "1:00-02:00", "10:00 - 11:00", "10:00-11:00 ",
        "10:00",       "10.00-11.00", "10:00-11:0",  "",           "aa:bb-cc:dd",   NULL};
    for (int i = 0; bad[i]; i++)
        if (fw_rollout_parse_window(bad[i], &a, &b) != CMS_EINVAL)
            fail_msg("window \"%s\" accepted", bad[i]);
    assert_int_equal(fw_rollout_parse_window(NULL, &a, &b), CMS_EINVAL);
}

static void test_window_open(void **state)
{
    (void)state;
    /* 02:00-05:00: start included, end excluded */
    assert_false(fw_rollout_window_open(120, 300, 119));
    assert_true(fw_rollout_window_open(120, 300, 120));
    assert_true(fw_rollout_window_open(120, 300, 299));
    assert_false(fw_rollout_window_open(120, 300, 300));
    assert_false(fw_rollout_window_open(120, 300, 1439));
    /* 22:00-04:00 spans midnight */
    assert_true(fw_rollout_window_open(1320, 240, 1320));
    assert_true(fw_rollout_window_open(1320, 240, 1439));
    assert_true(fw_rollout_window_open(1320, 240, 0));
    assert_true(fw_rollout_window_open(1320, 240, 239));
    assert_false(fw_rollout_window_open(1320, 240, 240));
    assert_false(fw_rollout_window_open(1320, 240, 720));
    assert_false(fw_rollout_window_open(1320, 240, 1319));
}

static void test_stage_reach(void **state)
{
    (void)state;
    assert_int_equal(fw_rollout_stage_reach(10, 10), 1);
    assert_int_equal(fw_rollout_stage_reach(10, 3), 1); /* ceil: a stage reaches a device */
    assert_int_equal(fw_rollout_stage_reach(50, 3), 2);
    assert_int_equal(fw_rollout_stage_reach(100, 3), 3);
    assert_int_equal(fw_rollout_stage_reach(1, 1000), 10);
    assert_int_equal(fw_rollout_stage_reach(33, 100), 33);
    assert_int_equal(fw_rollout_stage_reach(100, 4000000000u), 4000000000u);
    assert_int_equal(fw_rollout_stage_reach(50, 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stage_percent), cmocka_unit_test(test_stage_group),
        cmocka_unit_test(test_stage_list),    cmocka_unit_test(test_window_parse),
        cmocka_unit_test(test_window_open),   cmocka_unit_test(test_stage_reach),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
