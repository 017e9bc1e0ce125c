/* test_config.c - the configuration table (server/base/config.c): every default
 * in the table passes its own key's checks and lands in its field; a file is
 * parsed over the defaults; each kind of mistake is refused with the message
 * an operator reads (file:line for a bad line, the key and what it accepts);
 * the rules between keys (required with, needs, min <= max); key files that
 * others can read; the printed table has one well-formed line per key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "cms_err.h"
#include "config.h"

static char dir[64];
static char cert[128], key[128], loose_key[128], conf[128];

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(chmod(path, mode), 0);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/cms-test-config-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(cert, sizeof(cert), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    snprintf(loose_key, sizeof(loose_key), "%s/loose.key", dir);
    snprintf(conf, sizeof(conf), "%s/cmsd.conf", dir);
    write_file(cert, "not parsed by config_load\n", 0644);
    write_file(key, "not parsed by config_load\n", 0600);
    write_file(loose_key, "not parsed by config_load\n", 0640);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(cert);
    unlink(key);
    unlink(loose_key);
    unlink(conf);
    rmdir(dir);
    return 0;
}

/* The required keys, then extra lines. */
static int load(cms_config *c, const char *extra, char *err, size_t cap)
{
    char text[4096];
    snprintf(text, sizeof(text),
             "tls_cert = %s\ntls_key = %s\ntls_device_ca = %s\n"
             "db_conninfo = \"host=/tmp dbname=cms\"\n%s",
             cert, key, cert, extra);
    write_file(conf, text, 0600);
    assert_int_equal(config_defaults(c), CMS_OK);
    err[0] = '\0';
    return config_load(c, conf, err, cap);
}

static void test_defaults(void **state)
{
    (void)state;
    static cms_config c;
    assert_int_equal(config_defaults(&c), CMS_OK);
    assert_string_equal(c.mllp_listen, "127.0.0.1:2575");
    assert_string_equal(c.https_listen, "127.0.0.1:8443");
    assert_int_equal(c.workers, 0);
    assert_string_equal(c.tls_cert, ""); /* required: no default */
    assert_string_equal(c.db_conninfo, "");
    assert_int_equal(c.tls_session_cache_size, 20480);
    assert_int_equal(c.max_frame_bytes, 1048576);
    assert_int_equal(c.max_output_bytes, 1048576);
    assert_int_equal(c.db_reconnect_max_ms, 5000);
    assert_int_equal(c.est_anon_per_min, 60);
    assert_int_equal(c.fw_max_image_bytes, 268435456);
    assert_string_equal(c.fw_cache_dir, "var/fw-cache");
    assert_string_equal(c.hl7_app, "CMS");
    assert_string_equal(c.log_level, "info");
}

static void test_file_over_defaults(void **state)
{
    (void)state;
    static cms_config c;
    char err[1024];
    assert_int_equal(load(&c,
                          "# a comment\n\nworkers = 3\nhl7_app = \"A \\\"B\\\"\"\n"
                          "log_level = WARN\nmax_frame_bytes = 2048 # trailing comment\n"
                          "https_listen = \"\"\n",
                          err, sizeof(err)),
                     CMS_OK);
    assert_int_equal(c.workers, 3);
    assert_string_equal(c.hl7_app, "A \"B\"");
    assert_string_equal(c.log_level, "WARN"); /* levels in any case, as before */
    assert_int_equal(c.max_frame_bytes, 2048);
    assert_string_equal(c.https_listen, "");
    assert_int_equal(c.idle_timeout_ms, 120000); /* untouched: the default */
    assert_string_equal(c.tls_cert, cert);
}

static void expect_refused(const char *extra, const char *want)
{
    static cms_config c;
    char err[1024];
    assert_int_equal(load(&c, extra, err, sizeof(err)), CMS_EINVAL);
    if (!strstr(err, want))
        fail_msg("message \"%s\" does not contain \"%s\"", err, want);
    if (!strstr(err, conf))
        fail_msg("message \"%s\" does not name the file", err);
}

static void test_line_errors(void **state)
{
    (void)state;
    /* Line 5: the four required lines come first. */
    expect_refused("colour = blue\n", ":5: unknown key \"colour\"");
    expect_refused("workers = 2\nworkers = 3\n", ":6: duplicate key \"workers\"");
    expect_refused("workers = 65\n", ":5: workers must be an integer in [0, 64], got \"65\"");
    expect_refused("workers = -1\n", "workers must be an integer in [0, 64]");
    expect_refused("max_connections = lots\n",
                   "max_connections must be an integer in [1, 1000000]");
    expect_refused("fw_manifest_ttl_s = 10\n",
                   "fw_manifest_ttl_s must be an integer in [60, 86400]");
    expect_refused("log_level = chatty\n", ":5: log_level must be debug, info, warn or error");
    expect_refused("just some words\n", ":5: expected \"key = value\"");
    expect_refused("hl7_app = \"open\n", ":5: unterminated quoted value for hl7_app");
    char longer[200];
    snprintf(longer, sizeof(longer), "hl7_facility = %0100d\n", 7);
    expect_refused(longer, "value of hl7_facility is too long (max 63 bytes)");
}

static void test_whole_file_rules(void **state)
{
    (void)state;
    static cms_config c;
    char err[1024], line[600];
    /* Required keys: missing, or set to "". */
    write_file(conf, "tls_key = x\n", 0600);
    assert_int_equal(config_defaults(&c), CMS_OK);
    assert_int_equal(config_load(&c, conf, err, sizeof(err)), CMS_EINVAL);
    assert_non_null(strstr(err, "tls_cert is required"));
    expect_refused("mllp_listen = \"\"\n", "mllp_listen must not be empty");
    expect_refused("db_reconnect_min_ms = 6000\n",
                   "db_reconnect_min_ms must not exceed db_reconnect_max_ms");
    /* Files: readable, and key files not open to others. */
    expect_refused("tls_crl = /nonexistent/crl.pem\n", "tls_crl /nonexistent/crl.pem");
    snprintf(line, sizeof(line), "fw_distribution_key = %s\n", loose_key);
    expect_refused(line, "is accessible by group/others; chmod 600 it");
    /* est_ca_key and est_ca_chain are used only with est_ca_cert. */
    snprintf(line, sizeof(line), "est_ca_cert = %s\n", cert);
    expect_refused(line, "est_ca_key is required when est_ca_cert is set");
    snprintf(line, sizeof(line), "est_ca_key = %s\nest_ca_chain = /nonexistent\n", loose_key);
    assert_int_equal(load(&c, line, err, sizeof(err)), CMS_OK); /* EST off: not used */
    snprintf(line, sizeof(line), "est_ca_cert = %s\nest_ca_key = %s\n", cert, loose_key);
    expect_refused(line, "est_ca_key");
    /* fw_distribution_key_next needs fw_distribution_key. */
    snprintf(line, sizeof(line), "fw_distribution_key_next = %s\n", key);
    expect_refused(line, "fw_distribution_key_next needs fw_distribution_key");
    snprintf(line, sizeof(line), "fw_distribution_key = %s\nfw_distribution_key_next = %s\n", key,
             key);
    assert_int_equal(load(&c, line, err, sizeof(err)), CMS_OK);
}

static void test_printed_table(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    config_keys_print(f);
    fclose(f);
    unsigned lines = 0, required = 0;
    char seen[64][40];
    for (char *save = NULL, *ln = strtok_r(buf, "\n", &save); ln;
         ln = strtok_r(NULL, "\n", &save)) {
        char name[40], type[16], def[64], acc[32];
        int used = 0;
        assert_int_equal(sscanf(ln, "%39s %15s %63s %31s %n", name, type, def, acc, &used), 4);
        assert_true(used > 0 && ln[used] != '\0'); /* a meaning */
        if (lines++ == 0) {
            assert_string_equal(name, "key");
            continue;
        }
        assert_true(lines - 2 < 64);
        for (unsigned i = 0; i + 2 < lines; i++)
            assert_string_not_equal(seen[i], name);
        snprintf(seen[lines - 2], sizeof(seen[0]), "%s", name);
        required += strcmp(def, "(required)") == 0;
        if (strcmp(type, "uint") == 0) { /* the default is inside the range */
            unsigned lo, hi, d;
            assert_int_equal(sscanf(acc, "%u..%u", &lo, &hi), 2);
            assert_int_equal(sscanf(def, "%u", &d), 1);
            assert_true(lo <= d && d <= hi);
        }
    }
    free(buf);
    assert_int_equal(required, 4); /* tls_cert, tls_key, tls_device_ca, db_conninfo */
    assert_true(lines > 50);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),      cmocka_unit_test(test_file_over_defaults),
        cmocka_unit_test(test_line_errors),   cmocka_unit_test(test_whole_file_rules),
        cmocka_unit_test(test_printed_table),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
