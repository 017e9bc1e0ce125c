/* test_mllp.c - MLLP push decoder and encoder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cms_err.h"
#include "mllp.h"

#define MAX_FRAMES 16

typedef struct rec {
    size_t n;
    char *frame[MAX_FRAMES];
    size_t len[MAX_FRAMES];
    int nul_ok;     /* every payload arrived NUL-terminated */
    int stop_after; /* return CMS_ECLOSED after this many frames (0 = never) */
} rec;

static int on_frame(void *ctx, const char *payload, size_t len)
{
    rec *r = ctx;

    assert_true(r->n < MAX_FRAMES);
    r->frame[r->n] = malloc(len + 1);
    assert_non_null(r->frame[r->n]);
    memcpy(r->frame[r->n], payload, len + 1);
    r->len[r->n] = len;
    if (payload[len] != '\0')
        r->nul_ok = 0;
    r->n++;
    if (r->stop_after && r->n == (size_t)r->stop_after)
        return CMS_ECLOSED;
    return 0;
}

static void rec_free(rec *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->frame[i]);
}

static int setup(void **state)
{
    rec *r = calloc(1, sizeof(*r));
    r->nul_ok = 1;
    *state = r;
    return 0;
}

static int teardown(void **state)
{
    rec_free(*state);
    free(*state);
    return 0;
}

#define MSG1 "MSH|^~\\&|A|B|C|D|20261115083000||ORU^R01|1|P|2.6\r"
#define MSG2 "MSH|^~\\&|A|B|C|D|20261115083000||ORU^R01|2|P|2.6\rPID|||X\r"
#define F(s) "\x0b" s "\x1c\r"

static void test_single_frame(void **state)
{
    rec *r = *state;
    mllp_decoder d;
    const char in[] = F(MSG1);

    mllp_decoder_init(&d, 1024, on_frame, r);
    assert_int_equal(mllp_decoder_feed(&d, in, sizeof(in) - 1), CMS_OK);
    assert_int_equal(r->n, 1);
    assert_int_equal(r->len[0], strlen(MSG1));
    assert_memory_equal(r->frame[0], MSG1, strlen(MSG1));
    assert_true(r->nul_ok);
    assert_int_equal(mllp_decoder_buffered(&d), 0);
    mllp_decoder_free(&d);
}

static void test_split_byte_by_byte(void **state)
{
    rec *r = *state;
    mllp_decoder d;
    const char in[] = F(MSG1) F(MSG2);

    mllp_decoder_init(&d, 1024, on_frame, r);
    for (size_t i = 0; i < sizeof(in) - 1; i++) {
        assert_int_equal(mllp_decoder_feed(&d, in + i, 1), CMS_OK);
        if (i == 5)
            assert_int_equal(mllp_decoder_buffered(&d), 5); /* 0x0B + 5 payload bytes */
    }
    assert_int_equal(r->n, 2);
    assert_string_equal(r->frame[0], MSG1);
    assert_string_equal(r->frame[1], MSG2);
    assert_true(r->nul_ok);
    mllp_decoder_free(&d);
}

static void test_coalesced_frames_with_crlf_between(void **state)
{
    rec *r = *state;
    mllp_decoder d;
    const char in[] = "\r\n" F(MSG1) "\n" F(MSG2) "\r\n\r\n" F("X");

    mllp_decoder_init(&d, 1024, on_frame, r);
    assert_int_equal(mllp_decoder_feed(&d, in, sizeof(in) - 1), CMS_OK);
    assert_int_equal(r->n, 3);
    assert_string_equal(r->frame[0], MSG1);
    assert_string_equal(r->frame[1], MSG2);
    assert_string_equal(r->frame[2], "X");
    mllp_decoder_free(&d);
}

static void test_split_across_end_block(void **state)
{
    rec *r = *state;
    mllp_decoder d;
    const char a[] = "\x0b"
                     "abc\x1c";
    const char b[] = "\r\x0b"
                     "de";
    const char c[] = "f\x1c\r";

    mllp_decoder_init(&d, 1024, on_frame, r);
    assert_int_equal(mllp_decoder_feed(&d, a, sizeof(a) - 1), CMS_OK);
    assert_int_equal(r->n, 0);
    assert_int_equal(mllp_decoder_feed(&d, b, sizeof(b) - 1), CMS_OK);
    assert_int_equal(r->n, 1);
    assert_int_equal(mllp_decoder_buffered(&d), 2);
    assert_int_equal(mllp_decoder_feed(&d, c, sizeof(c) - 1), CMS_OK);
    assert_int_equal(r->n, 2);
    assert_string_equal(r->frame[0], "abc");
    assert_string_equal(r->frame[1], "def");
    mllp_decoder_free(&d);
}

static void test_garbage_between_frames_fails_for_good(void **state)
{
    rec *r = *state;
    mllp_decoder d;
    const char in[] = F("one") "GET / HTTP/1.1\r\n" F("two");

    mllp_decoder_init(&d, 1024, on_frame, r);
    assert_int_equal(mllp_decoder_feed(&d, in, sizeof(in) - 1), CMS_EPROTO);
    assert_int_equal(r->n, 1); /* the frame before the garbage was delivered */
    assert_int_equal(d.state, MLLP_FAILED);
    assert_int_equal(mllp_decoder_feed(&d, F("three"), 8), CMS_EPROTO);
    assert_int_equal(r->n, 1);
    mllp_decoder_free(&d);
}

static void test_start_block_inside_frame_is_error(void **state)
{
    rec *r = *state;
    mllp_decoder d;
    const char in[] = "\x0b"
                      "abc\x0b"
                      "def\x1c\r";

    mllp_decoder_init(&d, 1024, on_frame, r);
    assert_int_equal(mllp_decoder_feed(&d, in, sizeof(in) - 1), CMS_EPROTO);
    assert_int_equal(r->n, 0);
    mllp_decoder_free(&d);
}

static void test_end_block_without_cr_is_error(void **state)
{
    rec *r = *state;
    mllp_decoder d;
    const char in[] = "\x0b"
                      "abc\x1c"
                      "d";

    mllp_decoder_init(&d, 1024, on_frame, r);
    assert_int_equal(mllp_decoder_feed(&d, in, sizeof(in) - 1), CMS_EPROTO);
    assert_int_equal(r->n, 0);
    mllp_decoder_free(&d);
}

static void test_oversize_frame(void **state)
{
    rec *r = *state;
    mllp_decoder d;
    char big[20];

    /* Exactly max_frame bytes is fine. */
    mllp_decoder_init(&d, 16, on_frame, r);
    big[0] = 0x0b;
    memset(big + 1, 'A', 16);
    big[17] = 0x1c;
    big[18] = '\r';
    assert_int_equal(mllp_decoder_feed(&d, big, 19), CMS_OK);
    assert_int_equal(r->n, 1);
    assert_int_equal(r->len[0], 16);
    assert_true(d.cap <= 17); /* never grown beyond max_frame + NUL */

    /* One more byte is a limit error, detected before the end block. */
    assert_int_equal(mllp_decoder_feed(&d, "\x0b", 1), CMS_OK);
    assert_int_equal(mllp_decoder_feed(&d, big + 1, 16), CMS_OK);
    assert_int_equal(mllp_decoder_feed(&d, "A", 1), CMS_ELIMIT);
    assert_int_equal(d.state, MLLP_FAILED);
    assert_int_equal(mllp_decoder_feed(&d, "\x1c\r", 2), CMS_EPROTO);
    assert_int_equal(r->n, 1);
    mllp_decoder_free(&d);
}

static void test_large_frame_grows_buffer(void **state)
{
    rec *r = *state;
    mllp_decoder d;
    size_t n = 300000, off = 0, step = 1;
    char *in = malloc(n + 3);

    in[0] = 0x0b;
    for (size_t i = 0; i < n; i++)
        in[1 + i] = (char)('a' + i % 26);
    in[n + 1] = 0x1c;
    in[n + 2] = '\r';
    mllp_decoder_init(&d, 1 << 20, on_frame, r);
    while (off < n + 3) { /* uneven chunks: 1, 2, 4, ... bytes */
        size_t k = step < n + 3 - off ? step : n + 3 - off;
        assert_int_equal(mllp_decoder_feed(&d, in + off, k), CMS_OK);
        off += k;
        step = step * 2 + 1;
    }
    assert_int_equal(r->n, 1);
    assert_int_equal(r->len[0], n);
    assert_memory_equal(r->frame[0], in + 1, n);
    /* the feed ended on the frame boundary: an idle decoder holds no buffer */
    assert_null(d.buf);
    assert_int_equal(d.cap, 0);
    mllp_decoder_free(&d);
    free(in);
}

static void test_callback_error_stops_feed(void **state)
{
    rec *r = *state;
    mllp_decoder d;
    const char in[] = F("one") F("two") F("three");

    r->stop_after = 2;
    mllp_decoder_init(&d, 1024, on_frame, r);
    assert_int_equal(mllp_decoder_feed(&d, in, sizeof(in) - 1), CMS_ECLOSED);
    assert_int_equal(r->n, 2);
    assert_int_equal(mllp_decoder_feed(&d, F("four"), 7), CMS_EPROTO);
    assert_int_equal(r->n, 2);
    mllp_decoder_free(&d);
}

static void test_huge_max_frame_does_not_overflow(void **state)
{
    rec *r = *state;
    mllp_decoder d;
    const char in[] = F(MSG1);

    mllp_decoder_init(&d, SIZE_MAX, on_frame, r);
    assert_int_equal(mllp_decoder_feed(&d, in, sizeof(in) - 1), CMS_OK);
    assert_int_equal(r->n, 1);
    assert_string_equal(r->frame[0], MSG1);
    mllp_decoder_free(&d);
}

static void test_empty_frame(void **state)
{
    rec *r = *state;
    mllp_decoder d;

    mllp_decoder_init(&d, 1024, on_frame, r);
    assert_int_equal(mllp_decoder_feed(&d, "\x0b\x1c\r", 3), CMS_OK);
    assert_int_equal(r->n, 1);
    assert_int_equal(r->len[0], 0);
    assert_string_equal(r->frame[0], "");
    mllp_decoder_free(&d);
}

static void test_encode_roundtrip(void **state)
{
    rec *r = *state;
    mllp_decoder d;
    char out[128];
    size_t n;

    assert_int_equal(mllp_encode(out, sizeof(out), MSG1, strlen(MSG1)), strlen(MSG1) + 3);
    n = strlen(MSG1) + 3;
    assert_int_equal((unsigned char)out[0], 0x0b);
    assert_int_equal((unsigned char)out[n - 2], 0x1c);
    assert_int_equal((unsigned char)out[n - 1], 0x0d);
    mllp_decoder_init(&d, 1024, on_frame, r);
    assert_int_equal(mllp_decoder_feed(&d, out, n), CMS_OK);
    assert_int_equal(r->n, 1);
    assert_string_equal(r->frame[0], MSG1);
    mllp_decoder_free(&d);

    /* cap must hold payload + 3 */
    assert_int_equal(mllp_encode(out, 5, "abc", 3), 0);
    assert_int_equal(mllp_encode(out, 6, "abc", 3), 6);
    assert_memory_equal(out,
                        "\x0b"
                        "abc\x1c\r",
                        6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_single_frame, setup, teardown),
        cmocka_unit_test_setup_teardown(test_split_byte_by_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_coalesced_frames_with_crlf_between, setup, teardown),
        cmocka_unit_test_setup_teardown(test_split_across_end_block, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_between_frames_fails_for_good, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_start_block_inside_frame_is_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_end_block_without_cr_is_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversize_frame, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_frame_grows_buffer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_callback_error_stops_feed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_huge_max_frame_does_not_overflow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_frame, setup, teardown),
        cmocka_unit_test_setup_teardown(test_encode_roundtrip, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
