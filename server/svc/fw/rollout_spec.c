/*
 * rollout_spec.c - what an operator writes for a staged rollout, parsed and
 * checked before anything reaches the database (fw_rollout.h): stages
 * ("10%", "group:icu-3"), daily maintenance windows ("22:00-04:00"), and the
 * two rules the database applies (window open, stage reach) for tools and
 * unit tests. Pure functions: no allocation, no I/O.
 */
#include <stdio.h>
#include <string.h>

#include "cms_err.h"
#include "fw_rollout.h"

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_group_char(char c, bool first)
{
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || is_digit(c))
        return true;
    return !first && (c == '.' || c == '_' || c == ':' || c == '-');
}

int fw_rollout_parse_stage(const char *s, fw_rollout_stage *out)
{
    if (!s || !out)
        return CMS_EINVAL;
    memset(out, 0, sizeof(*out));
    if (strncmp(s, "group:", 6) == 0) {
        const char *g = s + 6;
        size_t n = strlen(g);
        if (n == 0 || n > FW_ROLLOUT_GROUP_MAX)
            return CMS_EINVAL;
        for (size_t i = 0; i < n; i++)
            if (!is_group_char(g[i], i == 0))
                return CMS_EINVAL;
        memcpy(out->group, g, n + 1);
        return CMS_OK;
    }
    /* N% : 1..100, no sign, no leading zero */
    int v = 0;
    size_t i = 0;
    if (!is_digit(s[0]) || s[0] == '0')
        return CMS_EINVAL;
    for (; is_digit(s[i]) && i < 3; i++)
        v = v * 10 + (s[i] - '0');
    if (s[i] != '%' || s[i + 1] != '\0' || v < 1 || v > 100)
        return CMS_EINVAL;
    out->percent = v;
    return CMS_OK;
}

int fw_rollout_check_stages(const fw_rollout_stage *st, size_t n, char *err, size_t cap)
{
    int last = 0;
    if (n < 1 || n > FW_ROLLOUT_MAX_STAGES) {
        snprintf(err, cap, "a rollout has 1..%d stages", FW_ROLLOUT_MAX_STAGES);
        return CMS_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (st[i].percent) {
            if (st[i].percent <= last) {
                snprintf(err, cap,
                         "stage %zu: percentages are cumulative and must rise (%d%% after %d%%)",
                         i + 1, st[i].percent, last);
                return CMS_EINVAL;
            }
            last = st[i].percent;
            continue;
        }
        for (size_t j = 0; j < i; j++) {
            if (!st[j].percent && strcmp(st[j].group, st[i].group) == 0) {
                snprintf(err, cap, "stage %zu: group %s is stage %zu already", i + 1, st[i].group,
                         j + 1);
                return CMS_EINVAL;
            }
        }
    }
    return CMS_OK;
}

/* "HH:MM" at s (exactly 5 characters) -> minutes, or -1. */
static int hhmm(const char *s)
{
    if (!is_digit(s[0]) || !is_digit(s[1]) || s[2] != ':' || !is_digit(s[3]) || !is_digit(s[4]))
        return -1;
    int h = (s[0] - '0') * 10 + (s[1] - '0'), m = (s[3] - '0') * 10 + (s[4] - '0');
    if (h > 23 || m > 59)
        return -1;
    return h * 60 + m;
}

int fw_rollout_parse_window(const char *s, int *start_min, int *end_min)
{
    if (!s || strlen(s) != 11 || s[5] != '-')
        return CMS_EINVAL;
    int a = hhmm(s), b = hhmm(s + 6);
    if (a < 0 || b < 0 || a == b)
        return CMS_EINVAL;
    *start_min = a;
    *end_min = b;
    return CMS_OK;
}

bool fw_rollout_window_open(int start_min, int end_min, int now_min)
{
    if (start_min < end_min)
        return now_min >= start_min && now_min < end_min;
    return now_min >= start_min || now_min < end_min; /* spans midnight */
}

unsigned fw_rollout_stage_reach(unsigned percent, unsigned n)
{
    return (unsigned)(((unsigned long long)percent * n + 99) / 100);
}
