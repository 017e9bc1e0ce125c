/* test_hl7.c - HL7 v2 parsing, field access, escapes, times and ACKs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cms_err.h"
#include "hl7.h"

#include "sample_pcd01.h"

/* Messages are parsed from exact-length heap copies (no NUL after them), so
 * that ASan catches any read past len. */
#define MAX_BUFS 64
static char *bufs[MAX_BUFS];
static size_t nbufs;

static int parse_n(hl7_msg *m, const char *s, size_t n, char *reason, size_t cap)
{
    char *b = malloc(n ? n : 1);

    assert_non_null(b);
    assert_true(nbufs < MAX_BUFS);
    memcpy(b, s, n);
    bufs[nbufs++] = b;
    return hl7_parse(m, b, n, reason, cap);
}

static int parse(hl7_msg *m, const char *s)
{
    char reason[128];
    return parse_n(m, s, strlen(s), reason, sizeof(reason));
}

static int free_bufs(void **state)
{
    (void)state;
    for (size_t i = 0; i < nbufs; i++)
        free(bufs[i]);
    nbufs = 0;
    return 0;
}

#define assert_slice(x, lit)                                                                       \
    do {                                                                                           \
        hl7_str s_ = (x);                                                                          \
        assert_int_equal(s_.len, strlen(lit));                                                     \
        if (s_.len)                                                                                \
            assert_memory_equal(s_.p, lit, s_.len);                                                \
    } while (0)

static hl7_msg m; /* 16 KiB: keep it off the stack */

static void test_parse_sample(void **state)
{
    char reason[128] = "";

    (void)state;
    assert_int_equal(parse_n(&m, sample, sizeof(sample) - 1, reason, sizeof(reason)), CMS_OK);
    assert_int_equal(m.nseg, 16);
    assert_int_equal(m.d.field, '|');
    assert_int_equal(m.d.comp, '^');
    assert_int_equal(m.d.rep, '~');
    assert_int_equal(m.d.esc, '\\');
    assert_int_equal(m.d.sub, '&');
    assert_slice(hl7_segment_name(&m, 0), "MSH");
    assert_slice(hl7_segment_name(&m, 15), "OBX");
    /* MSH numbering: MSH-1 is the separator, MSH-2 the encoding characters. */
    assert_slice(hl7_field(&m, 0, 0), "MSH");
    assert_slice(hl7_field(&m, 0, 1), "|");
    assert_slice(hl7_field(&m, 0, 2), "^~\\&");
    assert_slice(hl7_get(&m, 0, 2, 1, 1, 0), "^~\\&"); /* never split */
    assert_slice(hl7_field(&m, 0, 3), "MON-0002^MON-0002^L");
    assert_slice(hl7_get(&m, 0, 3, 1, 3, 0), "L");
    assert_slice(hl7_field(&m, 0, 7), "20261115083000.250+0100");
    assert_slice(hl7_get(&m, 0, 9, 1, 2, 0), "R01");
    assert_slice(hl7_get(&m, 0, 9, 0, 3, 0), "ORU_R01"); /* r = 0 with c: first repetition */
    assert_slice(hl7_field(&m, 0, 10), "MON-0002-000417");
    assert_slice(hl7_field(&m, 0, 12), "2.6");
    assert_slice(hl7_field(&m, 0, 21), "PCD_DEC_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO");
    assert_slice(hl7_field(&m, 0, 22), "");
    /* Other segments: field 1 follows the name. */
    assert_int_equal(hl7_find_segment(&m, "PID", 0), 1);
    assert_slice(hl7_get(&m, 1, 3, 1, 4, 0), "GENERAL HOSPITAL");
    assert_slice(hl7_get(&m, 1, 5, 1, 2, 0), "RICHARD");
    assert_int_equal(hl7_find_segment(&m, "OBX", 0), 4);
    assert_int_equal(hl7_find_segment(&m, "OBX", 5), 5);
    assert_int_equal(hl7_find_segment(&m, "NTE", 0), -1);
    assert_int_equal(hl7_find_segment(&m, "OBXX", 0), -1);
    assert_slice(hl7_field(&m, 6, 5), "72");
    assert_slice(hl7_get(&m, 6, 6, 1, 2, 0), "MDC_DIM_BEAT_PER_MIN");
    assert_slice(hl7_field(&m, 6, 14), "20261115083000+0100");
    /* Out of range is empty, not a crash. */
    assert_slice(hl7_field(&m, 16, 1), "");
    assert_slice(hl7_field(&m, 6, 99), "");
    assert_slice(hl7_get(&m, 6, 3, 2, 1, 0), "");
    assert_slice(hl7_get(&m, 6, 3, 1, 9, 0), "");
    assert_slice(hl7_get(&m, 0, 1, 2, 0, 0), "");
}

static void test_custom_delimiters(void **state)
{
    (void)state;
    /* field !, component @, repetition #, escape $, subcomponent % */
    assert_int_equal(parse(&m, "MSH!@#$%!APP@FAC!X|Y^Z!!!!ORU@R01!ID$F$1!P!2.6\r"
                               "OBX!1!NM!150456@SAT@MDC!!9$S$8!a%b#c@d%e\r"),
                     CMS_OK);
    assert_int_equal(m.d.field, '!');
    assert_int_equal(m.d.comp, '@');
    assert_int_equal(m.d.rep, '#');
    assert_int_equal(m.d.esc, '$');
    assert_int_equal(m.d.sub, '%');
    assert_slice(hl7_field(&m, 0, 1), "!");
    assert_slice(hl7_field(&m, 0, 2), "@#$%");
    assert_slice(hl7_get(&m, 0, 3, 1, 2, 0), "FAC");
    assert_slice(hl7_field(&m, 0, 4), "X|Y^Z"); /* standard chars are plain text here */
    assert_slice(hl7_get(&m, 0, 8, 1, 2, 0), "R01");
    assert_slice(hl7_get(&m, 1, 3, 1, 2, 0), "SAT");
    assert_slice(hl7_get(&m, 1, 6, 1, 1, 2), "b");
    assert_slice(hl7_get(&m, 1, 6, 2, 2, 2), "e");

    char out[32];
    assert_int_equal(hl7_get_text(&m, 0, 9, 0, 0, 0, out, sizeof(out)), 4);
    assert_string_equal(out, "ID!1");
    assert_int_equal(hl7_get_text(&m, 1, 5, 0, 0, 0, out, sizeof(out)), 3);
    assert_string_equal(out, "9@8");
}

static void test_bad_delimiters(void **state)
{
    char reason[128];

    (void)state;
    /* repeated */
    assert_int_equal(parse_n(&m, "MSH|^^\\&|A\r", 11, reason, sizeof(reason)), CMS_EPROTO);
    assert_non_null(strstr(reason, "twice"));
    assert_int_equal(parse(&m, "MSH|^~\\|\r"), CMS_EPROTO); /* field sep repeated in MSH-2 */
    assert_int_equal(parse(&m, "MSH|^~||A\r"), CMS_EPROTO);
    /* alphanumeric, space, control, 8-bit */
    assert_int_equal(parse(&m, "MSH|A~\\&|X\r"), CMS_EPROTO);
    assert_int_equal(parse(&m, "MSH|^~\\1|X\r"), CMS_EPROTO);
    assert_int_equal(parse(&m, "MSH ^~\\&|X\r"), CMS_EPROTO);
    assert_int_equal(parse(&m, "MSH|^~\t&|X\r"), CMS_EPROTO);
    assert_int_equal(parse(&m, "MSH|^~\xc3&|X\r"), CMS_EPROTO);
    /* CR right after MSH: field separator would be CR */
    assert_int_equal(parse(&m, "MSH\r^~\\&|X\r"), CMS_EPROTO);
    /* too few / too many encoding characters */
    assert_int_equal(parse(&m, "MSH|^~\\|X|Y\r"), CMS_EPROTO);
    assert_int_equal(parse(&m, "MSH|^~\\&#*|X\r"), CMS_EPROTO);
    /* v2.7 truncation character is accepted */
    assert_int_equal(parse(&m, "MSH|^~\\&#|X\r"), CMS_OK);
    assert_slice(hl7_field(&m, 0, 2), "^~\\&#");
    assert_slice(hl7_field(&m, 0, 3), "X");
}

static void test_envelope_errors(void **state)
{
    char reason[128];

    (void)state;
    assert_int_equal(parse_n(&m, "", 0, reason, sizeof(reason)), CMS_EPROTO);
    assert_int_equal(hl7_parse(&m, NULL, 0, reason, sizeof(reason)), CMS_EPROTO);
    assert_int_equal(parse(&m, "MSH|^~\\"), CMS_EPROTO); /* too short */
    assert_int_equal(parse_n(&m, "PID|1\rMSH|^~\\&|A\r", 17, reason, sizeof(reason)), CMS_EPROTO);
    assert_non_null(strstr(reason, "MSH"));
    /* NUL and other control characters */
    assert_int_equal(parse_n(&m, "MSH|^~\\&|A\0B\r", 13, reason, sizeof(reason)), CMS_EPROTO);
    assert_non_null(strstr(reason, "control character"));
    assert_int_equal(parse(&m, "MSH|^~\\&|A\x1c\r"), CMS_EPROTO);
    assert_int_equal(parse(&m, "MSH|^~\\&|A\x7f\r"), CMS_EPROTO);
    /* TAB and UTF-8 are text */
    assert_int_equal(parse(&m, "MSH|^~\\&|A\tB|Zo\xc3\xab\r"), CMS_OK);
    /* bad segment names */
    assert_int_equal(parse(&m, "MSH|^~\\&|A\rob|1\r"), CMS_EPROTO);
    assert_int_equal(parse(&m, "MSH|^~\\&|A\robx|1\r"), CMS_EPROTO);
    assert_int_equal(parse(&m, "MSH|^~\\&|A\rOBXX|1\r"), CMS_EPROTO);
    /* a second MSH (batch or smuggled message) */
    assert_int_equal(parse_n(&m, "MSH|^~\\&|A\rMSH|^~\\&|B\r", 22, reason, sizeof(reason)),
                     CMS_EPROTO);
    assert_non_null(strstr(reason, "MSH"));
    assert_int_equal(m.nseg, 0);
}

static void test_segment_terminators(void **state)
{
    (void)state;
    /* CR, LF, CRLF, blank lines, no final terminator: all the same message. */
    const char *variants[] = {
        "MSH|^~\\&|A\rPID|||P1\rOBX|1\r",       "MSH|^~\\&|A\nPID|||P1\nOBX|1\n",
        "MSH|^~\\&|A\r\nPID|||P1\r\nOBX|1\r\n", "\r\nMSH|^~\\&|A\r\r\nPID|||P1\r\rOBX|1\r\r\n\r\n",
        "MSH|^~\\&|A\rPID|||P1\rOBX|1",
    };
    for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
        assert_int_equal(parse(&m, variants[i]), CMS_OK);
        assert_int_equal(m.nseg, 3);
        assert_slice(hl7_field(&m, 0, 3), "A");
        assert_slice(hl7_field(&m, 1, 3), "P1");
        assert_slice(hl7_field(&m, 2, 1), "1");
    }
    /* a segment may be just its name */
    assert_int_equal(parse(&m, "MSH|^~\\&\rZZZ\r"), CMS_OK);
    assert_int_equal(m.nseg, 2);
    assert_slice(hl7_field(&m, 1, 1), "");
}

static void test_segment_limit(void **state)
{
    size_t n = 8 + 1 + (HL7_MAX_SEGMENTS)*6;
    char *s = malloc(n + 1), reason[128];
    size_t o = 0;

    (void)state;
    memcpy(s, "MSH|^~\\&\r", 9);
    o = 9;
    for (size_t i = 0; i < HL7_MAX_SEGMENTS - 1; i++) {
        memcpy(s + o, "OBX|1\r", 6);
        o += 6;
    }
    assert_int_equal(parse_n(&m, s, o, reason, sizeof(reason)), CMS_OK);
    assert_int_equal(m.nseg, HL7_MAX_SEGMENTS);
    memcpy(s + o, "OBX|1\r", 6);
    o += 6;
    assert_int_equal(parse_n(&m, s, o, reason, sizeof(reason)), CMS_ELIMIT);
    free(s);
}

static void test_repetitions_and_empty_fields(void **state)
{
    (void)state;
    assert_int_equal(parse(&m, "MSH|^~\\&|A\rPID|1||A1^^^AUTH&1.2.3&ISO^MR~B2^^^OTHER||\r"),
                     CMS_OK);
    assert_slice(hl7_field(&m, 1, 1), "1");
    assert_slice(hl7_field(&m, 1, 2), ""); /* empty in the middle */
    assert_slice(hl7_field(&m, 1, 4), ""); /* empty at the end */
    assert_slice(hl7_field(&m, 1, 5), ""); /* missing */
    assert_slice(hl7_get(&m, 1, 3, 0, 0, 0), "A1^^^AUTH&1.2.3&ISO^MR~B2^^^OTHER");
    assert_slice(hl7_get(&m, 1, 3, 1, 0, 0), "A1^^^AUTH&1.2.3&ISO^MR");
    assert_slice(hl7_get(&m, 1, 3, 2, 0, 0), "B2^^^OTHER");
    assert_slice(hl7_get(&m, 1, 3, 3, 0, 0), "");
    assert_slice(hl7_get(&m, 1, 3, 2, 1, 0), "B2");
    assert_slice(hl7_get(&m, 1, 3, 2, 4, 0), "OTHER");
    assert_slice(hl7_get(&m, 1, 3, 1, 2, 0), "");
    assert_slice(hl7_get(&m, 1, 3, 1, 4, 0), "AUTH&1.2.3&ISO");
    assert_slice(hl7_get(&m, 1, 3, 1, 4, 1), "AUTH");
    assert_slice(hl7_get(&m, 1, 3, 1, 4, 3), "ISO");
    assert_slice(hl7_get(&m, 1, 3, 1, 4, 4), "");
    assert_slice(hl7_get(&m, 1, 3, 1, 5, 1), "MR"); /* no subcomponents: s = 1 is the whole */
    assert_slice(hl7_get(&m, 1, 3, 0, 4, 2), "1.2.3");
}

/* Every (field, repetition, component, subcomponent) of every segment: the split
 * segment answers exactly as hl7_get (same pointer, same length), MSH included. */
static void test_split_fields_match_get(void **state)
{
    (void)state;
    static const char *msgs[] = {
        sample,
        "MSH|^~\\&|A\rPID|1||A1^^^AUTH&1.2.3&ISO^MR~B2^^^OTHER||\r",
        "MSH|^~\\&|A\rOBX|1|NM|a^b^c|1.2.3|7|x||||||F|||20250101\rOBX|\rOBX\r"
        "OBX|1|2|3|4|5|6|7|8|9|10|11|12|13|14|15|16|17|18|19|20|21|22|23|24|25|26|27\r",
        "MSH$%*@+$A\rOBX$1$NM$a%b%c@d+e$$$\r", /* other delimiters */
    };
    hl7_fields fs;
    for (size_t k = 0; k < sizeof msgs / sizeof msgs[0]; k++) {
        assert_int_equal(parse(&m, msgs[k]), CMS_OK);
        for (size_t seg = 0; seg <= m.nseg; seg++) { /* one past the end too */
            hl7_split(&m, seg, &fs);
            for (unsigned f = 0; f <= HL7_SPLIT_FIELDS + 4; f++)
                for (unsigned r = 0; r <= 3; r++)
                    for (unsigned c = 0; c <= 4; c++)
                        for (unsigned sub = 0; sub <= 3; sub++) {
                            hl7_str a = hl7_get(&m, seg, f, r, c, sub);
                            hl7_str b = hl7_fields_get(&fs, f, r, c, sub);
                            assert_ptr_equal(a.p, b.p);
                            assert_int_equal(a.len, b.len);
                        }
        }
    }
    assert_int_equal(parse(&m, msgs[2]), CMS_OK);
    hl7_split(&m, 4, &fs);
    assert_slice(hl7_fields_get(&fs, 23, 0, 0, 0), "23"); /* last split field */
    assert_slice(hl7_fields_get(&fs, 27, 0, 0, 0), "27"); /* past them: hl7_get */
    hl7_split(&m, 1, &fs);
    assert_slice(hl7_fields_get(&fs, 3, 1, 3, 0), "c");
}

static void test_unescape(void **state)
{
    char out[64];

    (void)state;
    assert_int_equal(parse(&m, "MSH|^~\\&|A\r"
                               "NTE|1|a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f|\\X41\\\\X4142\\x|"
                               "\\H\\bold\\N\\ line\\.br\\2|\\X0D0A\\|\\Xc3a9\\\r"),
                     CMS_OK);
    assert_int_equal(hl7_get_text(&m, 1, 2, 0, 0, 0, out, sizeof(out)), 11);
    assert_string_equal(out, "a|b^c&d~e\\f");
    assert_int_equal(hl7_get_text(&m, 1, 3, 0, 0, 0, out, sizeof(out)), 4);
    assert_string_equal(out, "AABx");
    assert_int_equal(hl7_get_text(&m, 1, 4, 0, 0, 0, out, sizeof(out)), 10);
    assert_string_equal(out, "bold line2"); /* \H\ \N\ \.br\ dropped */
    assert_int_equal(hl7_get_text(&m, 1, 5, 0, 0, 0, out, sizeof(out)), 2);
    assert_string_equal(out, "\r\n");
    assert_int_equal(hl7_get_text(&m, 1, 6, 0, 0, 0, out, sizeof(out)), 2);
    assert_string_equal(out, "\xc3\xa9");
    /* an absent field is the empty string */
    assert_int_equal(hl7_get_text(&m, 1, 9, 0, 0, 0, out, sizeof(out)), 0);
    assert_string_equal(out, "");
}

static void test_unescape_malformed_and_limits(void **state)
{
    char out[8];
    const char *bad[] = {
        "\\F",     /* unterminated */
        "abc\\",   /* lone escape at the end */
        "\\\\",    /* empty sequence */
        "\\X4\\",  /* odd hex digits */
        "\\XZZ\\", /* not hex */
        "\\X\\",   /* no digits */
        "\\X00\\", /* NUL byte */
        "\\X4100\\",
    };

    (void)state;
    assert_int_equal(parse(&m, "MSH|^~\\&\r"), CMS_OK);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        hl7_str s = {bad[i], strlen(bad[i])};
        memset(out, 'x', sizeof(out));
        assert_int_equal(hl7_unescape(&m, s, out, sizeof(out)), CMS_EPROTO);
        assert_true(memchr(out, '\0', sizeof(out)) != NULL);
    }
    /* exactly fits (7 + NUL), then one too many */
    hl7_str fits = {"abc\\F\\def", 9};
    assert_int_equal(hl7_unescape(&m, fits, out, sizeof(out)), 7);
    assert_string_equal(out, "abc|def");
    hl7_str over = {"abcdefgh", 8};
    assert_int_equal(hl7_unescape(&m, over, out, sizeof(out)), CMS_ELIMIT);
    assert_int_equal(strlen(out), 7);
    assert_int_equal(hl7_unescape(&m, over, out, 0), CMS_ELIMIT);
    hl7_str none = {NULL, 0};
    assert_int_equal(hl7_unescape(&m, none, out, sizeof(out)), 0);
    assert_string_equal(out, "");
}

static void test_escape(void **state)
{
    char out[64];
    hl7_delims d = {'|', '^', '~', '\\', '&'};

    (void)state;
    assert_int_equal(hl7_escape(&d, "a|b^c~d\\e&f\rg\nh", out, sizeof(out)), 25);
    assert_string_equal(out, "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f g h");
    assert_int_equal(hl7_escape(&d, "", out, sizeof(out)), 0);
    assert_string_equal(out, "");
    /* 4 bytes of room: "a" + NUL fits, "a" + "\F\" + NUL does not */
    assert_int_equal(hl7_escape(&d, "a|", out, 4), CMS_ELIMIT);
    assert_string_equal(out, "a");
    assert_int_equal(hl7_escape(&d, "abc", out, 3), CMS_ELIMIT);
    assert_int_equal(hl7_escape(&d, "ab", out, 3), 2);

    /* round trip through a parser with custom delimiters */
    hl7_delims c = {'!', '@', '#', '$', '%'};
    assert_int_equal(hl7_escape(&c, "x!y@z$", out, sizeof(out)), 12);
    assert_string_equal(out, "x$F$y$S$z$E$");
}

static void expect_time(const char *in, const char *formatted, int precision)
{
    hl7_time t;
    char out[40];
    hl7_str s = {in, strlen(in)};

    if (hl7_time_parse(s, &t) != CMS_OK)
        fail_msg("hl7_time_parse(\"%s\") failed", in);
    assert_int_equal(t.precision, precision);
    assert_int_equal(hl7_time_format(&t, out, sizeof(out)), (int)strlen(formatted));
    assert_string_equal(out, formatted);
}

static void expect_bad_time(const char *in)
{
    hl7_time t;
    hl7_str s = {in, strlen(in)};

    if (hl7_time_parse(s, &t) != CMS_EPROTO)
        fail_msg("hl7_time_parse(\"%s\") accepted a bad time", in);
}

static void test_time_parse_format(void **state)
{
    (void)state;
    expect_time("20261115083000.310+0100", "2026-11-15 08:30:00.310000+01:00", 14);
    expect_time("20261115082845+0100", "2026-11-15 08:28:45.000000+01:00", 14);
    expect_time("20261115083000", "2026-11-15 08:30:00.000000", 14);
    expect_time("20261115083000.1234-0530", "2026-11-15 08:30:00.123400-05:30", 14);
    expect_time("20261115083000.5", "2026-11-15 08:30:00.500000", 14);
    expect_time("20261115083000.123456", "2026-11-15 08:30:00.123456", 14); /* field practice */
    expect_time("202611150830", "2026-11-15 08:30:00.000000", 12);
    expect_time("2026111508", "2026-11-15 08:00:00.000000", 10);
    expect_time("20261115", "2026-11-15 00:00:00.000000", 8);
    expect_time("202611", "2026-11-01 00:00:00.000000", 6);
    expect_time("2026", "2026-01-01 00:00:00.000000", 4);
    expect_time("2026-0000", "2026-01-01 00:00:00.000000+00:00", 4);
    expect_time("20240229235959+1400", "2024-02-29 23:59:59.000000+14:00", 14);
    expect_time("20000229", "2000-02-29 00:00:00.000000", 8);
    expect_time("20261231-1400", "2026-12-31 00:00:00.000000-14:00", 8);

    expect_bad_time("");
    expect_bad_time("202");
    expect_bad_time("20261");                /* odd number of digits */
    expect_bad_time("202611150830001");      /* 15 digits */
    expect_bad_time("20261315");             /* month 13 */
    expect_bad_time("20260015");             /* month 0 */
    expect_bad_time("20261100");             /* day 0 */
    expect_bad_time("20261131");             /* 31 November */
    expect_bad_time("20250229");             /* not a leap year */
    expect_bad_time("19000229");             /* century, not a leap year */
    expect_bad_time("2026111524");           /* hour 24 */
    expect_bad_time("202611150860");         /* minute 60 */
    expect_bad_time("20261115083060");       /* second 60: not accepted */
    expect_bad_time("00000101");             /* year 0 */
    expect_bad_time("20261115083000.");      /* fraction without digits */
    expect_bad_time("20261115083000.1234567"); /* more than 6 fraction digits */
    expect_bad_time("202611150830.5");       /* fraction before seconds */
    expect_bad_time("20261115+01");          /* short offset */
    expect_bad_time("20261115+010");
    expect_bad_time("20261115+01000");
    expect_bad_time("20261115+1401"); /* beyond +14:00 */
    expect_bad_time("20261115-1500");
    expect_bad_time("20261115+0160"); /* offset minutes 60 */
    expect_bad_time("20261115+01:00");
    expect_bad_time("2026-11-15");
    expect_bad_time("20261115 ");
    expect_bad_time(" 20261115");
    expect_bad_time("20261115Z");

    /* Formatting rejects garbage and small buffers. */
    hl7_time t = {2026, 11, 15, 8, 30, 0, 0, 1, -90, 14};
    char out[40];
    assert_int_equal(hl7_time_format(&t, out, sizeof(out)), 32);
    assert_string_equal(out, "2026-11-15 08:30:00.000000-01:30");
    assert_int_equal(hl7_time_format(&t, out, 32), CMS_ELIMIT);
    t.month = 13;
    assert_true(hl7_time_format(&t, out, sizeof(out)) < 0);
}

static hl7_ack base_ack(void)
{
    hl7_ack a;
    memset(&a, 0, sizeof(a));
    a.code = HL7_AA;
    a.their_app = "MON-0002";
    a.their_facility = "Example Monitors";
    a.control_id = "MON-0002-000417";
    a.version = "2.6";
    a.trigger = "R01";
    a.our_app = "CMS";
    a.our_facility = "GENERAL HOSPITAL";
    a.ack_control_id = "CMS-ACK-1";
    a.timestamp = "20261115083000.310+0100";
    return a;
}

static void test_ack_aa_exact(void **state)
{
    /* /work/shared/samples/ack-aa.hl7, byte for byte */
    static const char expect[] =
        "MSH|^~\\&|CMS|GENERAL HOSPITAL|MON-0002|Example Monitors|20261115083000.310+0100||"
        "ACK^R01^ACK|CMS-ACK-1|P|2.6\rMSA|AA|MON-0002-000417\r";
    hl7_ack a = base_ack();
    char out[512];

    (void)state;
    assert_int_equal(hl7_ack_encode(&a, out, sizeof(out)), (int)strlen(expect));
    assert_string_equal(out, expect);
    /* a reason is ignored for AA */
    a.reason = "ignored";
    a.err_code = "207";
    assert_int_equal(hl7_ack_encode(&a, out, sizeof(out)), (int)strlen(expect));
    assert_string_equal(out, expect);
    /* too small: all or nothing */
    assert_int_equal(hl7_ack_encode(&a, out, strlen(expect)), CMS_ELIMIT);
    assert_int_equal(hl7_ack_encode(&a, out, strlen(expect) + 1), (int)strlen(expect));
    /* empty version defaults to 2.6, missing trigger gives plain ACK */
    a.version = "";
    a.trigger = NULL;
    a.their_app = NULL;
    assert_true(hl7_ack_encode(&a, out, sizeof(out)) > 0);
    assert_non_null(strstr(out, "|GENERAL HOSPITAL||Example Monitors|"));
    assert_non_null(strstr(out, "||ACK|CMS-ACK-1|P|2.6\r"));
}

static void test_ack_ar_escaped_reason(void **state)
{
    static const char expect[] =
        "MSH|^~\\&|CMS|GENERAL HOSPITAL|MON-0002|Example Monitors|20261115083000.310+0100||"
        "ACK^R01^ACK|CMS-ACK-1|P|2.6\r"
        "MSA|AR|MON-0002-000417|bad \\F\\ in OBX-5 \\S\\ 3\\E\\ x\r"
        "ERR|||200^Unsupported message type^HL70357|E||||bad \\F\\ in OBX-5 \\S\\ 3\\E\\ x\r";
    hl7_ack a = base_ack();
    char out[512], text[128];

    (void)state;
    a.code = HL7_AR;
    a.reason = "bad | in OBX-5 ^ 3\\\rx";
    a.err_code = "200";
    assert_int_equal(hl7_ack_encode(&a, out, sizeof(out)), (int)strlen(expect));
    assert_string_equal(out, expect);

    /* What the monitor's parser sees. */
    assert_int_equal(parse(&m, out), CMS_OK);
    assert_int_equal(m.nseg, 3);
    assert_int_equal(hl7_get_text(&m, 1, 3, 0, 0, 0, text, sizeof(text)), 21);
    assert_string_equal(text, "bad | in OBX-5 ^ 3\\ x");
    assert_slice(hl7_get(&m, 2, 3, 1, 1, 0), "200");
    assert_slice(hl7_get(&m, 2, 3, 1, 3, 0), "HL70357");
    assert_slice(hl7_field(&m, 2, 4), "E");
    assert_int_equal(hl7_get_text(&m, 2, 8, 0, 0, 0, text, sizeof(text)), 21);
    assert_string_equal(text, "bad | in OBX-5 ^ 3\\ x");
}

static void test_ack_ae_defaults(void **state)
{
    static const char expect_tail[] =
        "MSA|AE|ID\\S\\1\rERR|||207^Application internal error^HL70357|E\r";
    hl7_ack a = base_ack();
    char out[512];
    int n;

    (void)state;
    a.code = HL7_AE;
    a.control_id = "ID^1";
    n = hl7_ack_encode(&a, out, sizeof(out));
    assert_true(n > 0);
    assert_true((size_t)n > strlen(expect_tail));
    assert_string_equal(out + n - strlen(expect_tail), expect_tail);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_parse_sample, free_bufs),
        cmocka_unit_test_teardown(test_custom_delimiters, free_bufs),
        cmocka_unit_test_teardown(test_bad_delimiters, free_bufs),
        cmocka_unit_test_teardown(test_envelope_errors, free_bufs),
        cmocka_unit_test_teardown(test_segment_terminators, free_bufs),
        cmocka_unit_test_teardown(test_segment_limit, free_bufs),
        cmocka_unit_test_teardown(test_repetitions_and_empty_fields, free_bufs),
        cmocka_unit_test_teardown(test_split_fields_match_get, free_bufs),
        cmocka_unit_test_teardown(test_unescape, free_bufs),
        cmocka_unit_test_teardown(test_unescape_malformed_and_limits, free_bufs),
        cmocka_unit_test_teardown(test_escape, free_bufs),
        cmocka_unit_test_teardown(test_time_parse_format, free_bufs),
        cmocka_unit_test_teardown(test_ack_aa_exact, free_bufs),
        cmocka_unit_test_teardown(test_ack_ar_escaped_reason, free_bufs),
        cmocka_unit_test_teardown(test_ack_ae_defaults, free_bufs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
