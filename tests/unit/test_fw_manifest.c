/*
 * test_fw_manifest.c - unit tests of the firmware format (fw_manifest.h,
 * cmocka): versions, times, descriptors, and manifests built, signed and
 * verified with keys made here (Ed25519 and P-256 publishers), each
 * verification refusal checked by its reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/evp.h>

#include "cms_err.h"
#include "fw_manifest.h"
#include "pki.h"

static void test_versions(void **state)
{
    (void)state;
    uint64_t n;
    assert_int_equal(fw_version_parse("1.2.3", &n), CMS_OK);
    assert_true(n == 1000000000000ull * 1 + 1000000ull * 2 + 3);
    assert_int_equal(fw_version_parse("0.0.0", &n), CMS_OK);
    assert_true(n == 0);
    assert_int_equal(fw_version_parse("999999.999999.999999", &n), CMS_OK);
    uint64_t a, b;
    fw_version_parse("1.10.0", &a);
    fw_version_parse("1.9.99", &b);
    assert_true(a > b); /* numeric, not lexical */
    const char *bad[] = {"",       "1",    "1.2",    "1.2.3.4", "01.2.3",      "1.02.3",    "1.2.x",
                         "-1.2.3", "1..3", "1.2.3 ", " 1.2.3",  "1000000.0.0", "1.2.3-rc1", NULL};
    for (size_t i = 0; bad[i]; i++)
        assert_int_equal(fw_version_parse(bad[i], &n), CMS_EPROTO);
}

static void test_times(void **state)
{
    (void)state;
    int64_t t;
    char s[21];
    assert_int_equal(fw_time_parse("2026-11-28T06:14:54Z", &t), CMS_OK);
    fw_time_format(t, s);
    assert_string_equal(s, "2026-11-28T06:14:54Z");
    assert_int_equal(fw_time_parse("1970-01-01T00:00:00Z", &t), CMS_OK);
    assert_true(t == 0);
    const char *bad[] = {"2026-02-30T00:00:00Z",
                         "2026-11-28 06:14:54Z",
                         "2026-11-28T06:14:54",
                         "2026-11-28T24:00:00Z",
                         "2026-11-28T06:14:54+00:00",
                         "",
                         NULL};
    for (size_t i = 0; bad[i]; i++)
        assert_int_equal(fw_time_parse(bad[i], &t), CMS_EPROTO);
}

#define SHA "3275a257f143fdb2c3234bc0a4e7bb2f862e66ce980d9c75f66604186a454720"
#define DESC(extra)                                                                                \
    "{\"format\":\"cms-fw-descriptor/1\",\"model\":\"Example Monitor\",\"version\":\"1.1.0\","     \
    "\"security_counter\":3,\"sha256\":\"" SHA "\",\"length\":3158073" extra "}"

static int parse(const char *s, fw_descriptor *d, char *why)
{
    return fw_descriptor_parse((const unsigned char *)s, strlen(s), d, why, 200);
}

static void test_descriptors(void **state)
{
    (void)state;
    fw_descriptor d;
    char why[200];
    assert_int_equal(parse(DESC(""), &d, why), CMS_OK);
    assert_string_equal(d.model, "Example Monitor");
    assert_string_equal(d.version, "1.1.0");
    assert_int_equal(d.security_counter, 3);
    assert_true(d.length == 3158073);
    assert_string_equal(d.sha256_hex, SHA);
    assert_int_equal(d.sha256[0], 0x32);
    assert_int_equal(parse(DESC(",\"notes\":\"fixes\""), &d, why), CMS_OK);

    struct {
        const char *text, *reason;
    } bad[] = {
        {DESC(",\"extra\":1"), "unexpected member"},
        {DESC(",\"length\":5"), "not valid JSON"}, /* duplicate member */
        {"[1]", "not a JSON object"},
        {DESC("") " ", NULL}, /* trailing space is fine JSON-wise */
        {DESC("") "x", "not valid JSON"},
        {"{\"format\":\"cms-fw-descriptor/2\"}", "format"},
        {"{\"format\":\"cms-fw-descriptor/1\",\"model\":\"\",\"version\":\"1.0.0\","
         "\"security_counter\":1,\"sha256\":\"" SHA "\",\"length\":1}",
         "model"},
        {"{\"format\":\"cms-fw-descriptor/1\",\"model\":\"M\",\"version\":\"1.0\","
         "\"security_counter\":1,\"sha256\":\"" SHA "\",\"length\":1}",
         "version"},
        {"{\"format\":\"cms-fw-descriptor/1\",\"model\":\"M\",\"version\":\"1.0.0\","
         "\"security_counter\":-1,\"sha256\":\"" SHA "\",\"length\":1}",
         "security_counter"},
        {"{\"format\":\"cms-fw-descriptor/1\",\"model\":\"M\",\"version\":\"1.0.0\","
         "\"security_counter\":4294967296,\"sha256\":\"" SHA "\",\"length\":1}",
         "security_counter"},
        {"{\"format\":\"cms-fw-descriptor/1\",\"model\":\"M\",\"version\":\"1.0.0\","
         "\"security_counter\":1,\"sha256\":\"" SHA "\",\"length\":0}",
         "length"},
        {"{\"format\":\"cms-fw-descriptor/1\",\"model\":\"M\",\"version\":\"1.0.0\","
         "\"security_counter\":1,\"sha256\":\"ABCD\",\"length\":1}",
         "sha256"},
        {"{\"format\":\"cms-fw-descriptor/1\",\"model\":\"M\",\"version\":\"1.0.0\","
         "\"security_counter\":\"1\",\"sha256\":\"" SHA "\",\"length\":1}",
         "integer"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = parse(bad[i].text, &d, why);
        if (!bad[i].reason) {
            assert_int_equal(rc, CMS_OK);
            continue;
        }
        assert_int_equal(rc, CMS_EPROTO);
        if (!strstr(why, bad[i].reason))
            fail_msg("case %zu: reason \"%s\" lacks \"%s\"", i, why, bad[i].reason);
    }
    /* A NUL inside a string is refused (jansson without JSON_ALLOW_NUL). */
    const char nul[] = "{\"format\":\"cms-fw-descriptor/1\",\"model\":\"M\\u0000X\"}";
    assert_int_equal(parse(nul, &d, why), CMS_EPROTO);
    char big[FW_DESCRIPTOR_MAX + 10];
    memset(big, ' ', sizeof(big));
    assert_int_equal(fw_descriptor_parse((unsigned char *)big, sizeof(big), &d, why, 200),
                     CMS_ELIMIT);
}

/* ---- manifests ------------------------------------------------------------------------- */

typedef struct fixture {
    EVP_PKEY *dist, *dist2, *pub, *pub_ec, *rogue;
    char desc[512];
    unsigned char *sig;
    size_t sig_len;
    fw_manifest m;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    f->dist = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    f->dist2 = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    f->pub = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    f->pub_ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    f->rogue = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    snprintf(f->desc, sizeof(f->desc), "%s", DESC(""));
    assert_int_equal(
        pki_sign(f->pub, (unsigned char *)f->desc, strlen(f->desc), &f->sig, &f->sig_len), CMS_OK);
    fw_manifest *m = &f->m;
    snprintf(m->serial, sizeof(m->serial), "MON-0001");
    snprintf(m->model, sizeof(m->model), "Example Monitor");
    snprintf(m->installed_version, sizeof(m->installed_version), "1.0.0");
    snprintf(m->target_version, sizeof(m->target_version), "1.1.0");
    m->security_counter = 3;
    snprintf(m->sha256_hex, sizeof(m->sha256_hex), SHA);
    m->length = 3158073;
    snprintf(m->download, sizeof(m->download), "/fw/v1/images/" SHA);
    m->release_id = 7;
    m->descriptor = (unsigned char *)f->desc;
    m->descriptor_len = strlen(f->desc);
    m->publisher_sig = f->sig;
    m->publisher_sig_len = f->sig_len;
    pki_pubkey_id_sha256(f->pub, m->publisher_keyid);
    m->issued_at = 1800000000;
    m->expires_at = 1800000000 + 3600;
    m->manifest_counter = 17;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    EVP_PKEY_free(f->dist);
    EVP_PKEY_free(f->dist2);
    EVP_PKEY_free(f->pub);
    EVP_PKEY_free(f->pub_ec);
    EVP_PKEY_free(f->rogue);
    free(f->sig);
    free(f);
    return 0;
}

/* Builds f->m signed by keys, verifies with facts adjusted by the caller. */
static int run(fixture *f, EVP_PKEY **sign_keys, size_t nsign, fw_device_facts *dev, char *why)
{
    char *doc = NULL;
    size_t len = 0;
    fw_manifest out;
    assert_int_equal(fw_manifest_build(&f->m, sign_keys, nsign, &doc, &len), CMS_OK);
    int rc = fw_manifest_verify(doc, len, dev, &out, why, 300);
    if (rc == CMS_OK) {
        assert_string_equal(out.target_version, "1.1.0");
        assert_true(out.manifest_counter == 17);
        assert_memory_equal(out.descriptor, f->desc, strlen(f->desc));
    }
    fw_manifest_clear(&out);
    free(doc);
    return rc;
}

static fw_device_facts facts(fixture *f, EVP_PKEY **dist, EVP_PKEY **pub)
{
    dist[0] = f->dist;
    pub[0] = f->pub;
    return (fw_device_facts){.serial = "MON-0001",
                             .model = "Example Monitor",
                             .installed_version = "1.0.0",
                             .security_counter = 2,
                             .last_manifest_counter = 16,
                             .now = 1800000000 + 60,
                             .dist_keys = dist,
                             .ndist = 1,
                             .publisher_keys = pub,
                             .npub = 1};
}

#define EXPECT_REFUSED(mutation, text)                                                             \
    do {                                                                                           \
        EVP_PKEY *dk[2], *pk[2], *sk[1] = {f->dist};                                               \
        fw_device_facts dev = facts(f, dk, pk);                                                    \
        char why[300] = "";                                                                        \
        mutation;                                                                                  \
        int rc_ = run(f, sk, 1, &dev, why);                                                        \
        assert_int_not_equal(rc_, CMS_OK);                                                         \
        if (!strstr(why, text))                                                                    \
            fail_msg("reason \"%s\" lacks \"%s\"", why, text);                                     \
    } while (0)

static void test_manifest_accepts(void **state)
{
    fixture *f = *state;
    EVP_PKEY *dk[2], *pk[2], *sk[2] = {f->dist, f->dist2};
    fw_device_facts dev = facts(f, dk, pk);
    char why[300] = "";
    assert_int_equal(run(f, sk, 1, &dev, why), CMS_OK);
    /* Rotation: signed by both keys, a device pinning only the next key accepts. */
    dk[0] = f->dist2;
    assert_int_equal(run(f, sk, 2, &dev, why), CMS_OK);
    assert_int_not_equal(run(f, sk, 1, &dev, why), CMS_OK);
}

static void test_manifest_refusals(void **state)
{
    fixture *f = *state;
    EXPECT_REFUSED(dev.serial = "MON-0002", "wrong device");
    EXPECT_REFUSED(dev.model = "Other", "wrong software");
    EXPECT_REFUSED(dev.installed_version = "1.1.0", "installed version");
    EXPECT_REFUSED(dev.now = 1800000000 + 3600, "expired");
    EXPECT_REFUSED(dev.now = 1800000000 - 1000, "future");
    EXPECT_REFUSED(dev.last_manifest_counter = 17, "not above the last accepted");
    EXPECT_REFUSED(dev.security_counter = 4, "rollback");
    EXPECT_REFUSED(dev.max_image_bytes = 1000, "exceeds the device's limit");
    EXPECT_REFUSED(dk[0] = f->rogue, "pinned distribution key");
    EXPECT_REFUSED(pk[0] = f->rogue, "not a pinned publisher key");
}

static void test_manifest_inconsistent(void **state)
{
    fixture *f = *state;
    /* The signed body says 1.2.0 while the publisher's descriptor says 1.1.0. */
    snprintf(f->m.target_version, sizeof(f->m.target_version), "1.2.0");
    EXPECT_REFUSED((void)0, "disagree");
    snprintf(f->m.target_version, sizeof(f->m.target_version), "1.1.0");
    f->m.length = 3158074;
    EXPECT_REFUSED((void)0, "disagree");
    f->m.length = 3158073;
    f->m.expires_at = f->m.issued_at + FW_MAX_VALIDITY_S + 1;
    EXPECT_REFUSED((void)0, "validity window");
    f->m.expires_at = f->m.issued_at + 3600;
    /* A descriptor signature that does not verify. */
    f->sig[0] ^= 1;
    EXPECT_REFUSED((void)0, "publisher signature");
    f->sig[0] ^= 1;
    /* Target not newer than installed. */
    snprintf(f->m.installed_version, sizeof(f->m.installed_version), "1.1.0");
    EXPECT_REFUSED(dev.installed_version = "1.1.0", "rollback");
}

static void test_p256_publisher(void **state)
{
    fixture *f = *state;
    unsigned char *sig = NULL;
    size_t sig_len = 0;
    assert_int_equal(pki_sign(f->pub_ec, (unsigned char *)f->desc, strlen(f->desc), &sig, &sig_len),
                     CMS_OK);
    f->m.publisher_sig = sig;
    f->m.publisher_sig_len = sig_len;
    pki_pubkey_id_sha256(f->pub_ec, f->m.publisher_keyid);
    EVP_PKEY *dk[2], *pk[2], *sk[1] = {f->dist};
    fw_device_facts dev = facts(f, dk, pk);
    pk[0] = f->pub_ec;
    char why[300] = "";
    assert_int_equal(run(f, sk, 1, &dev, why), CMS_OK);
    free(sig);
}

static void test_split_limits(void **state)
{
    (void)state;
    unsigned char *buf = NULL;
    size_t len = 0, n = 0;
    fw_signature sigs[FW_MAX_SIGNATURES];
    char why[200];
    const char *docs[] = {
        "{}",
        "{\"format\":\"cms-fw-manifest/1\",\"signed\":\"e30=\",\"signatures\":[]}",
        "{\"format\":\"cms-fw-manifest/1\",\"signed\":\"e30=\",\"signatures\":[{\"keyid\":\"a\","
        "\"alg\":\"rsa\",\"sig\":\"AA==\"}]}",
        "{\"format\":\"cms-fw-manifest/1\",\"signed\":\"!!\",\"signatures\":[{\"keyid\":\"a\","
        "\"alg\":\"ed25519\",\"sig\":\"AA==\"}]}",
        "{\"format\":\"cms-fw-manifest/1\",\"signed\":\"e30=\",\"extra\":1,\"signatures\":[]}",
        NULL};
    for (size_t i = 0; docs[i]; i++) {
        assert_int_not_equal(
            fw_manifest_split(docs[i], strlen(docs[i]), &buf, &len, sigs, &n, why, sizeof(why)),
            CMS_OK);
        assert_null(buf);
    }
    const char *ok = "{\"format\":\"cms-fw-manifest/1\",\"signed\":\"e30=\",\"signatures\":"
                     "[{\"keyid\":\"ab\",\"alg\":\"ed25519\",\"sig\":\"AAEC\"}]}";
    assert_int_equal(fw_manifest_split(ok, strlen(ok), &buf, &len, sigs, &n, why, sizeof(why)),
                     CMS_OK);
    assert_int_equal(len, 2);
    assert_memory_equal(buf, "{}", 2);
    assert_int_equal(n, 1);
    assert_int_equal(sigs[0].sig_len, 3);
    free(buf);
}

static void test_hex_round_trip_and_refusals(void **state)
{
    (void)state;
    uint8_t in[256], out[256];
    char hex[513];
    for (int i = 0; i < 256; i++)
        in[i] = (uint8_t)i;
    fw_hex(in, sizeof(in), hex);
    assert_int_equal(fw_unhex(hex, 512, out, 256), CMS_OK);
    assert_memory_equal(in, out, 256);
    assert_int_equal(fw_unhex("0aFF", 4, out, 2), CMS_OK); /* upper case accepted */
    assert_int_equal(out[0], 0x0a);
    assert_int_equal(out[1], 0xff);
    assert_int_equal(fw_unhex("0g", 2, out, 1), CMS_EPROTO);
    assert_int_equal(fw_unhex("g0", 2, out, 1), CMS_EPROTO);
    assert_int_equal(fw_unhex("0\x80", 2, out, 1), CMS_EPROTO);
    assert_int_equal(fw_unhex("000", 3, out, 1), CMS_EPROTO); /* length must be 2 n */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_hex_round_trip_and_refusals),
        cmocka_unit_test(test_times),
        cmocka_unit_test(test_descriptors),
        cmocka_unit_test_setup_teardown(test_manifest_accepts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_inconsistent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_p256_publisher, setup, teardown),
        cmocka_unit_test(test_split_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
