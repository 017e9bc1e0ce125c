/*
 * hl7_time.c - HL7 DTM/TS values: strict parsing into hl7_time and the
 * timestamptz text stored for every observation (a hot path: no snprintf).
 */
#include "hl7.h"

#include <string.h>

#include "cms_err.h"

static int hl7__leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int hl7__days_in_month(int y, int mo)
{
    static const int dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (mo == 2 && hl7__leap(y))
        return 29;
    return dim[mo - 1];
}

/* n decimal digits at p (all verified digits by the caller). */
static int hl7__num(const char *p, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (p[i] - '0');
    return v;
}

static int hl7__isdigit(char ch)
{
    return ch >= '0' && ch <= '9';
}

int hl7_time_parse(hl7_str s, hl7_time *t)
{
    const char *p = s.p;
    size_t n = s.len, nd = 0, i;
    hl7_time v;

    memset(&v, 0, sizeof(v));
    v.month = 1;
    v.day = 1;
    if (!p || n == 0)
        return CMS_EPROTO;

    while (nd < n && hl7__isdigit(p[nd]))
        nd++;
    if (nd < 4 || nd > 14 || nd % 2 != 0)
        return CMS_EPROTO;
    v.precision = (int)nd;
    v.year = hl7__num(p, 4);
    if (nd >= 6)
        v.month = hl7__num(p + 4, 2);
    if (nd >= 8)
        v.day = hl7__num(p + 6, 2);
    if (nd >= 10)
        v.hour = hl7__num(p + 8, 2);
    if (nd >= 12)
        v.minute = hl7__num(p + 10, 2);
    if (nd >= 14)
        v.second = hl7__num(p + 12, 2);
    i = nd;

    if (i < n && p[i] == '.') {
        size_t k = 0;
        if (nd != 14)
            return CMS_EPROTO; /* a fraction only after seconds */
        i++;
        while (i + k < n && hl7__isdigit(p[i + k]))
            k++;
        /* HL7 allows 4 fraction digits; monitors in the field send up to 6
         * (microseconds): accept them rather than lose a reading. */
        if (k < 1 || k > 6)
            return CMS_EPROTO;
        v.usec = hl7__num(p + i, k);
        for (size_t z = k; z < 6; z++)
            v.usec *= 10;
        i += k;
    }
    if (i < n && (p[i] == '+' || p[i] == '-')) {
        int sign = p[i] == '-' ? -1 : 1, oh, om;
        if (n - i != 5)
            return CMS_EPROTO;
        for (size_t k = 1; k <= 4; k++) {
            if (!hl7__isdigit(p[i + k]))
                return CMS_EPROTO;
        }
        oh = hl7__num(p + i + 1, 2);
        om = hl7__num(p + i + 3, 2);
        if (om >= 60 || oh * 60 + om > 14 * 60)
            return CMS_EPROTO;
        v.has_tz = 1;
        v.tz_offset_min = sign * (oh * 60 + om);
        i += 5;
    }
    if (i != n)
        return CMS_EPROTO;

    if (v.year < 1 || v.month < 1 || v.month > 12 || v.day < 1 ||
        v.day > hl7__days_in_month(v.year, v.month) || v.hour > 23 || v.minute > 59 ||
        v.second > 59)
        return CMS_EPROTO;
    *t = v;
    return CMS_OK;
}

/* v (0 <= v < 10^width) as exactly width decimal digits; returns the end. */
static char *put_digits(char *o, int v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        o[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return o + width;
}

/* Returns the length, CMS_ELIMIT, or CMS_EINVAL if t holds out-of-range
 * values (a caller bug: hl7_time_parse never produces them). */
int hl7_time_format(const hl7_time *t, char *out, size_t cap)
{
    int n;

    if (!t || t->year < 1 || t->year > 9999 || t->month < 1 || t->month > 12 || t->day < 1 ||
        t->day > 31 || t->hour < 0 || t->hour > 23 || t->minute < 0 || t->minute > 59 ||
        t->second < 0 || t->second > 60 || t->usec < 0 || t->usec > 999999 ||
        (t->has_tz && (t->tz_offset_min < -14 * 60 || t->tz_offset_min > 14 * 60)))
        return CMS_EINVAL;
    if (!out || cap == 0)
        return CMS_ELIMIT;
    /* Fixed widths of validated fields, written digit by digit: this runs for every
     * stored observation (snprintf here was a visible share of cmsd's CPU). */
    n = t->has_tz ? 32 : 26; /* "YYYY-MM-DD HH:MM:SS.uuuuuu" [+"+HH:MM"] */
    if ((size_t)n >= cap) {
        out[0] = '\0';
        return CMS_ELIMIT;
    }
    char *o = out;
    o = put_digits(o, t->year, 4);
    *o++ = '-';
    o = put_digits(o, t->month, 2);
    *o++ = '-';
    o = put_digits(o, t->day, 2);
    *o++ = ' ';
    o = put_digits(o, t->hour, 2);
    *o++ = ':';
    o = put_digits(o, t->minute, 2);
    *o++ = ':';
    o = put_digits(o, t->second, 2);
    *o++ = '.';
    o = put_digits(o, t->usec, 6);
    if (t->has_tz) {
        int off = t->tz_offset_min < 0 ? -t->tz_offset_min : t->tz_offset_min;
        *o++ = t->tz_offset_min < 0 ? '-' : '+';
        o = put_digits(o, off / 60, 2);
        *o++ = ':';
        o = put_digits(o, off % 60, 2);
    }
    *o = '\0';
    return n;
}
