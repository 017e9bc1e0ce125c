/* test_console_csrf.c - the console's CSRF rule (server/svc/console/console_csrf.c)
 * without a request: requests that are not a browser's pass; a browser's must
 * come from the console's own origin (Origin, Sec-Fetch-Site) and carry the
 * token of its certificate for today or yesterday; tokens and the secret are
 * deterministic, and a reload with another key file changes them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cms_err.h"
#include "../../server/svc/console/console_int.h"

#define HOST "cms.example:8443"
#define ORIGIN "https://cms.example:8443"
#define DAY 20000LL

static const char KEY_PEM[] = "-----BEGIN PRIVATE KEY-----\ntest key bytes\n-----END PRIVATE "
                              "KEY-----\n";
/* HMAC-SHA-256("cms console csrf v1", KEY_PEM) and the token of FP_A on DAY under it
 * (computed with Python's hmac). */
static const char KEY_SECRET_HEX[] =
    "03f5af9d5dcc0da47b89285917b530f61514f15e5f232aa32d0477e13ebda4b3";
static const char KEY_TOKEN_FP_A_DAY[] =
    "14b3abf85b82a0d46e80949ae2bc0671b189bb473a5b01247acac5deeccc17de";

static const char FP_A[] = "abababababababababababababababababababababababababababababababab";
static const char FP_B[] = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";

static unsigned char secret[CONSOLE__SECRET_SIZE];

static int setup(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(secret); i++)
        secret[i] = (unsigned char)(i * 7 + 1);
    return 0;
}

static char why[160];

/* The decision for a browser request from the console (Origin and Sec-Fetch-Site its own,
 * the console's cookie-less fetch) with token tok and certificate fp on day DAY. */
static bool console_request(const char *tok, const char *fp)
{
    why[0] = '\0';
    return console__csrf_decide(secret, ORIGIN, "same-origin", "cors", NULL, HOST, tok, fp, DAY,
                                why, sizeof(why));
}

static void token(const char *fp, long long day, char out[65])
{
    console__csrf_token(secret, fp, day, out);
}

static void test_not_a_browser_passes(void **state)
{
    (void)state;
    why[0] = '\0';
    assert_true(console__csrf_decide(secret, NULL, NULL, NULL, NULL, HOST, NULL, FP_A, DAY, why,
                                     sizeof(why)));
    /* even without a console (cmsctl against a server without the console) or a Host */
    assert_true(console__csrf_decide(NULL, NULL, NULL, NULL, NULL, NULL, NULL, FP_A, DAY, why,
                                     sizeof(why)));
    assert_string_equal(why, "");
}

static void test_cross_origin_refused(void **state)
{
    (void)state;
    char tok[65];
    token(FP_A, DAY, tok);
    const char *bad[] = {"https://evil.example",
                         "http://cms.example:8443", /* another scheme */
                         "https://cms.example",     /* another port */
                         "https://cms.example:8443.evil.example",
                         "https://evil.example/cms.example:8443",
                         "null",
                         "",
                         NULL};
    for (int i = 0; bad[i]; i++) {
        why[0] = '\0';
        if (console__csrf_decide(secret, bad[i], NULL, NULL, NULL, HOST, tok, FP_A, DAY, why,
                                 sizeof(why)))
            fail_msg("Origin \"%s\" accepted", bad[i]);
        if (strncmp(why, "cross-site request (Origin ", 27) != 0)
            fail_msg("Origin \"%s\": why \"%s\"", bad[i], why);
    }
    /* no Host to compare with: refused */
    assert_false(console__csrf_decide(secret, ORIGIN, NULL, NULL, NULL, NULL, tok, FP_A, DAY, why,
                                      sizeof(why)));
    /* the console's origin, any letter case (hosts are case-insensitive): accepted */
    assert_true(console__csrf_decide(secret, "HTTPS://CMS.Example:8443", NULL, NULL, NULL, HOST,
                                     tok, FP_A, DAY, why, sizeof(why)));
}

static void test_sec_fetch_site(void **state)
{
    (void)state;
    char tok[65];
    token(FP_A, DAY, tok);
    const char *bad[] = {"cross-site", "same-site", "none", "", "Same-Origin", NULL};
    for (int i = 0; bad[i]; i++) {
        why[0] = '\0';
        if (console__csrf_decide(secret, NULL, bad[i], NULL, NULL, HOST, tok, FP_A, DAY, why,
                                 sizeof(why)))
            fail_msg("Sec-Fetch-Site \"%s\" accepted", bad[i]);
        if (strncmp(why, "cross-site request (Sec-Fetch-Site ", 35) != 0)
            fail_msg("Sec-Fetch-Site \"%s\": why \"%s\"", bad[i], why);
    }
    /* a same-origin Origin does not save a cross-site Sec-Fetch-Site */
    assert_false(console__csrf_decide(secret, ORIGIN, "cross-site", NULL, NULL, HOST, tok, FP_A,
                                      DAY, why, sizeof(why)));
    assert_true(console__csrf_decide(secret, NULL, "same-origin", NULL, NULL, HOST, tok, FP_A, DAY,
                                     why, sizeof(why)));
    assert_true(console_request(tok, FP_A));
}

static void test_missing_token(void **state)
{
    (void)state;
    assert_false(console_request(NULL, FP_A));
    assert_string_equal(why, "missing X-CSRF-Token (GET /api/v1/console/session gives it)");
    assert_false(console_request("", FP_A));
    assert_string_equal(why, "missing X-CSRF-Token (GET /api/v1/console/session gives it)");
    /* any one browser header makes it a browser's request */
    const char *hdr[4] = {NULL, NULL, NULL, NULL};
    for (int i = 0; i < 4; i++) {
        memset(hdr, 0, sizeof(hdr));
        hdr[i] = i == 0 ? ORIGIN : i == 1 ? "same-origin" : i == 2 ? "navigate" : "a=b";
        if (console__csrf_decide(secret, hdr[0], hdr[1], hdr[2], hdr[3], HOST, NULL, FP_A, DAY, why,
                                 sizeof(why)))
            fail_msg("browser header %d alone: accepted without a token", i);
    }
}

static void test_no_console(void **state)
{
    (void)state;
    char tok[65];
    token(FP_A, DAY, tok);
    assert_false(console__csrf_decide(NULL, ORIGIN, "same-origin", NULL, NULL, HOST, tok, FP_A, DAY,
                                      why, sizeof(why)));
    assert_string_equal(why, "console not configured");
}

static void test_token_checks(void **state)
{
    (void)state;
    char tok[65], t[80];
    token(FP_A, DAY, tok);
    assert_true(console_request(tok, FP_A));
    assert_string_equal(why, "");
    /* yesterday's: accepted (a page left open over midnight) */
    token(FP_A, DAY - 1, t);
    assert_true(console_request(t, FP_A));
    /* two days ago, and tomorrow's: refused */
    token(FP_A, DAY - 2, t);
    assert_false(console_request(t, FP_A));
    assert_string_equal(why, "invalid X-CSRF-Token");
    token(FP_A, DAY + 1, t);
    assert_false(console_request(t, FP_A));
    /* another certificate's token */
    token(FP_B, DAY, t);
    assert_false(console_request(t, FP_A));
    assert_string_equal(why, "invalid X-CSRF-Token");
    /* wrong: one digit changed, upper case, too long, too short */
    memcpy(t, tok, 65);
    t[10] = t[10] == '0' ? '1' : '0';
    assert_false(console_request(t, FP_A));
    for (int i = 0; i < 64; i++)
        t[i] = (char)(tok[i] >= 'a' ? tok[i] - 'a' + 'A' : tok[i]);
    t[64] = '\0';
    if (strcmp(t, tok) != 0)
        assert_false(console_request(t, FP_A));
    snprintf(t, sizeof(t), "%s0", tok);
    assert_false(console_request(t, FP_A));
    assert_string_equal(why, "invalid X-CSRF-Token");
    memcpy(t, tok, 63);
    t[63] = '\0';
    assert_false(console_request(t, FP_A));
    assert_false(console_request("x", FP_A));
    /* a token made with another secret */
    unsigned char other[CONSOLE__SECRET_SIZE];
    memcpy(other, secret, sizeof(other));
    other[0] ^= 1;
    console__csrf_token(other, FP_A, DAY, t);
    assert_false(console_request(t, FP_A));
}

static void test_tokens_deterministic(void **state)
{
    (void)state;
    char a[65], b[65];
    token(FP_A, DAY, a);
    token(FP_A, DAY, b);
    assert_string_equal(a, b);
    assert_int_equal(strlen(a), 64);
    assert_int_equal(strspn(a, "0123456789abcdef"), 64);
    token(FP_A, DAY + 1, b);
    assert_string_not_equal(a, b);
    token(FP_B, DAY, b);
    assert_string_not_equal(a, b);
    /* the public call gives the same token from the state */
    console_state cs;
    memset(&cs, 0, sizeof(cs));
    memcpy(cs.secret, secret, sizeof(secret));
    console_csrf_token(&cs, FP_A, DAY, b);
    assert_string_equal(a, b);
}

/* Writes data (n bytes) to a new temporary file whose path goes into path. */
static void temp_key(char path[64], const void *data, size_t n)
{
    snprintf(path, 64, "/tmp/test_console_csrf.XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, n), (ssize_t)n);
    close(fd);
}

static void test_secret_from_key_file(void **state)
{
    (void)state;
    char p1[64], p2[64], p3[64], p4[64], err[256];
    temp_key(p1, KEY_PEM, sizeof(KEY_PEM) - 1);
    temp_key(p2, KEY_PEM, sizeof(KEY_PEM) - 1);
    temp_key(p3, "another key\n", 12);
    temp_key(p4, "", 0);
    console_state *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(console__csrf_init(a, p1, err, sizeof(err)), 0);
    assert_int_equal(console__csrf_init(b, p2, err, sizeof(err)), 0);
    /* the same bytes in another file: the same secret (instances sharing the key agree) */
    assert_memory_equal(a->secret, b->secret, CONSOLE__SECRET_SIZE);
    char hex[2 * CONSOLE__SECRET_SIZE + 1];
    for (size_t i = 0; i < CONSOLE__SECRET_SIZE; i++)
        snprintf(hex + 2 * i, 3, "%02x", a->secret[i]);
    assert_string_equal(hex, KEY_SECRET_HEX);
    char tok[65];
    console_csrf_token(a, FP_A, DAY, tok);
    assert_string_equal(tok, KEY_TOKEN_FP_A_DAY);
    /* other bytes: another secret */
    assert_int_equal(console__csrf_init(b, p3, err, sizeof(err)), 0);
    assert_memory_not_equal(a->secret, b->secret, CONSOLE__SECRET_SIZE);
    /* a reload: the same file's key changes nothing, another file's rotates the tokens */
    console_csrf_key k;
    assert_int_equal(console_csrf_key_load(p2, &k, err, sizeof(err)), CMS_OK);
    assert_false(console_csrf_key_set(a, &k));
    console_csrf_token(a, FP_A, DAY, tok);
    assert_string_equal(tok, KEY_TOKEN_FP_A_DAY);
    assert_int_equal(console_csrf_key_load(p3, &k, err, sizeof(err)), CMS_OK);
    assert_true(console_csrf_key_set(a, &k));
    assert_memory_equal(a->secret, b->secret, CONSOLE__SECRET_SIZE);
    console_csrf_token(a, FP_A, DAY, tok);
    assert_string_not_equal(tok, KEY_TOKEN_FP_A_DAY);
    assert_int_equal(console_csrf_key_load(p4, &k, err, sizeof(err)), CMS_EINVAL);
    /* empty, missing: refused with the path in the reason */
    err[0] = '\0';
    assert_int_equal(console__csrf_init(b, p4, err, sizeof(err)), -1);
    assert_non_null(strstr(err, p4));
    err[0] = '\0';
    assert_int_equal(console__csrf_init(b, "/nonexistent/test_console_csrf.key", err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "cannot read tls_key"));
    unlink(p1);
    unlink(p2);
    unlink(p3);
    unlink(p4);
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_not_a_browser_passes), cmocka_unit_test(test_cross_origin_refused),
        cmocka_unit_test(test_sec_fetch_site),       cmocka_unit_test(test_missing_token),
        cmocka_unit_test(test_no_console),           cmocka_unit_test(test_token_checks),
        cmocka_unit_test(test_tokens_deterministic), cmocka_unit_test(test_secret_from_key_file),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
