/* test_proxy.c - PROXY protocol v2 header parser and the proxy allowlist. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "cms_err.h"
#include "proxy.h"

static const uint8_t SIG[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* What HAProxy's send-proxy-v2 sends for 192.0.2.7:40001 -> 127.0.0.1:2575, plus one
 * TLV (PP2_TYPE_UNIQUE_ID, 3 bytes), then the first bytes of a ClientHello. */
static size_t v4_header(uint8_t *b, int with_tls)
{
    size_t n = 0;
    memcpy(b, SIG, 12);
    n = 12;
    b[n++] = 0x21; /* v2, PROXY */
    b[n++] = 0x11; /* INET, STREAM */
    b[n++] = 0;
    b[n++] = 12 + 6;
    const uint8_t addrs[12] = {192, 0, 2, 7, 127, 0, 0, 1, 0x9C, 0x41, 0x0A, 0x0F};
    memcpy(b + n, addrs, 12);
    n += 12;
    const uint8_t tlv[6] = {0x05, 0x00, 0x03, 'a', 'b', 'c'};
    memcpy(b + n, tlv, 6);
    n += 6;
    if (with_tls) {
        const uint8_t hello[5] = {0x16, 0x03, 0x01, 0x02, 0x00};
        memcpy(b + n, hello, 5);
        n += 5;
    }
    return n;
}

static void test_v4_complete(void **state)
{
    (void)state;
    uint8_t b[64];
    size_t n = v4_header(b, 1);
    proxy_info pi;
    const char *why = NULL;
    int r = proxy_v2_parse(b, n, &pi, &why);
    assert_int_equal(r, 16 + 18); /* stops before the ClientHello */
    assert_false(pi.local);
    assert_int_equal(pi.family, AF_INET);
    assert_int_equal(pi.src_port, 40001);
    assert_int_equal(pi.dst_port, 2575);
    char text[64];
    assert_string_equal(proxy_src_text(&pi, text, sizeof(text)), "192.0.2.7:40001");
}

static void test_every_prefix_needs_more(void **state)
{
    (void)state;
    uint8_t b[64];
    size_t n = v4_header(b, 0);
    for (size_t i = 0; i < n; i++) {
        proxy_info pi = {.src_port = 7};
        assert_int_equal(proxy_v2_parse(b, i, &pi, NULL), CMS_EAGAIN);
        assert_int_equal(pi.src_port, 7); /* nothing written */
    }
    assert_int_equal(proxy_v2_parse(b, n, NULL, NULL), (int)n);
}

static void test_v6(void **state)
{
    (void)state;
    uint8_t b[64];
    memcpy(b, SIG, 12);
    b[12] = 0x21;
    b[13] = 0x21;
    b[14] = 0;
    b[15] = 36;
    memset(b + 16, 0, 36);
    inet_pton(AF_INET6, "2001:db8::5", b + 16);
    inet_pton(AF_INET6, "::1", b + 32);
    b[48] = 0x1F;
    b[49] = 0x90; /* 8080 */
    b[50] = 0x20;
    b[51] = 0xFB; /* 8443 */
    proxy_info pi;
    assert_int_equal(proxy_v2_parse(b, 52, &pi, NULL), 52);
    char text[64];
    assert_string_equal(proxy_src_text(&pi, text, sizeof(text)), "[2001:db8::5]:8080");
    assert_int_equal(pi.dst_port, 8443);
}

static void test_local(void **state)
{
    (void)state;
    uint8_t b[16];
    memcpy(b, SIG, 12);
    b[12] = 0x20; /* v2, LOCAL */
    b[13] = 0x00;
    b[14] = 0;
    b[15] = 0;
    proxy_info pi;
    assert_int_equal(proxy_v2_parse(b, 16, &pi, NULL), 16);
    assert_true(pi.local);
    char text[16];
    assert_string_equal(proxy_src_text(&pi, text, sizeof(text)), "local");
}

static void expect_refused(const uint8_t *b, size_t n, const char *want)
{
    const char *why = NULL;
    proxy_info pi;
    assert_int_equal(proxy_v2_parse(b, n, &pi, &why), CMS_EPROTO);
    assert_non_null(why);
    assert_non_null(strstr(why, want));
}

static void test_refusals(void **state)
{
    (void)state;
    uint8_t b[64];
    const char *v1 = "PROXY TCP4 192.0.2.7 127.0.0.1 40001 2575\r\n";
    expect_refused((const uint8_t *)v1, strlen(v1), "v1");
    assert_int_equal(proxy_v2_parse("PROX", 4, NULL, NULL), CMS_EAGAIN);

    const uint8_t hello[5] = {0x16, 0x03, 0x01, 0x02, 0x00}; /* no header: TLS at once */
    expect_refused(hello, sizeof(hello), "signature");

    size_t n = v4_header(b, 0);
    b[12] = 0x11; /* version 1 in the binary form */
    expect_refused(b, n, "version");
    n = v4_header(b, 0);
    b[12] = 0x22; /* command 2 */
    expect_refused(b, n, "command");
    n = v4_header(b, 0);
    b[13] = 0x12; /* UDP */
    expect_refused(b, n, "TCP");
    n = v4_header(b, 0);
    b[13] = 0x31; /* UNIX stream with PROXY */
    expect_refused(b, n, "TCP");
    n = v4_header(b, 0);
    b[15] = 8; /* shorter than IPv4 addresses */
    expect_refused(b, n, "shorter");
}

static void test_too_long(void **state)
{
    (void)state;
    uint8_t b[16];
    memcpy(b, SIG, 12);
    b[12] = 0x21;
    b[13] = 0x11;
    b[14] = 0xFF;
    b[15] = 0xFF;
    const char *why = NULL;
    assert_int_equal(proxy_v2_parse(b, 16, NULL, &why), CMS_ELIMIT);
    assert_non_null(strstr(why, "too long"));
}

static int match(const char *list, const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1)
        s4->sin_family = AF_INET;
    else if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1)
        s6->sin6_family = AF_INET6;
    else
        fail_msg("bad test address %s", ip);
    return proxy_allowlist_match(list, (struct sockaddr *)&ss, NULL);
}

static void test_allowlist(void **state)
{
    (void)state;
    const char *list = "127.0.0.1, 10.1.0.0/16 2001:db8::/32,192.0.2.128/25";
    assert_int_equal(match(list, "127.0.0.1"), 1);
    assert_int_equal(match(list, "127.0.0.2"), 0);
    assert_int_equal(match(list, "10.1.200.3"), 1);
    assert_int_equal(match(list, "10.2.0.1"), 0);
    assert_int_equal(match(list, "192.0.2.200"), 1);
    assert_int_equal(match(list, "192.0.2.127"), 0);
    assert_int_equal(match(list, "2001:db8:1::9"), 1);
    assert_int_equal(match(list, "2001:db9::9"), 0);
    assert_int_equal(match(list, "::ffff:127.0.0.1"), 1); /* mapped: matched as IPv4 */
    assert_int_equal(match("", "127.0.0.1"), 0);
    assert_int_equal(match("0.0.0.0/0", "203.0.113.9"), 1);

    const char *why = NULL;
    assert_int_equal(proxy_allowlist_check(list, &why), CMS_OK);
    assert_int_equal(proxy_allowlist_check("127.0.0.1/33", &why), CMS_EINVAL);
    assert_int_equal(proxy_allowlist_check("localhost", &why), CMS_EINVAL);
    assert_int_equal(proxy_allowlist_check("10.0.0.0/", &why), CMS_EINVAL);
    assert_int_equal(proxy_allowlist_check("10.0.0.0/-1", &why), CMS_EINVAL);
    assert_non_null(why);
    assert_int_equal(match("127.0.0.1, bogus", "10.0.0.1"), CMS_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v4_complete), cmocka_unit_test(test_every_prefix_needs_more),
        cmocka_unit_test(test_v6),          cmocka_unit_test(test_local),
        cmocka_unit_test(test_refusals),    cmocka_unit_test(test_too_long),
        cmocka_unit_test(test_allowlist),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
