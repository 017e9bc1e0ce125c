/* test_log.c - the log line formats (server/base/log.c): logfmt by default;
 * log_format = json writes one JSON object per line with ts, level, event,
 * device, peer and msg, strings escaped (quotes, backslashes, newlines,
 * control characters), bytes that are not UTF-8 replaced by U+FFFD, valid
 * UTF-8 kept, a very long message cut and the line still valid JSON; levels
 * below the minimum write nothing. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "cms_err.h"
#include "log.h"

static int saved_stderr = -1;
static int pipe_rd = -1;

/* Sends stderr to a pipe until capture_end(). */
static void capture_begin(void)
{
    int fds[2];
    assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    fcntl(fds[1], F_SETPIPE_SZ, 1 << 20);
    saved_stderr = dup(STDERR_FILENO);
    dup2(fds[1], STDERR_FILENO);
    close(fds[1]);
    pipe_rd = fds[0];
}

/* Restores stderr; returns what was written (malloc()ed). */
static char *capture_end(void)
{
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    char *out = calloc(1, 65536);
    ssize_t n = read(pipe_rd, out, 65535);
    close(pipe_rd);
    if (n < 0)
        n = 0;
    out[n] = '\0';
    return out;
}

static void test_text_default(void **state)
{
    (void)state;
    capture_begin();
    log_warn("tls_refused", "MON-0001", "127.0.0.1:5000", "mllp: %s", "certificate has expired");
    log_debug("hidden", NULL, NULL, "below the level");
    char *out = capture_end();
    assert_non_null(strstr(out, " level=warn event=tls_refused device=MON-0001 "
                                "peer=127.0.0.1:5000 msg=\"mllp: certificate has expired\"\n"));
    assert_memory_equal(out, "ts=", 3);
    assert_null(strstr(out, "hidden"));
    free(out);
}

static json_t *one_json_line(const char *out)
{
    const char *nl = strchr(out, '\n');
    assert_non_null(nl);
    assert_int_equal(nl[1], '\0'); /* exactly one line */
    json_error_t e;
    json_t *j = json_loadb(out, (size_t)(nl - out), 0, &e);
    if (!j)
        fail_msg("not JSON (%s): %s", e.text, out);
    return j;
}

static void test_json(void **state)
{
    (void)state;
    enum log_format f;
    assert_int_equal(log_format_parse("json", &f), CMS_OK);
    assert_int_equal(f, LOG_FORMAT_JSON);
    assert_int_equal(log_format_parse("xml", &f), CMS_EINVAL);
    log_set_format(LOG_FORMAT_JSON);

    capture_begin();
    log_warn("tls_refused", "MON-0001", "[::1]:5000", "say \"hi\"\\ now\nnext\x01 \xc3\xa9t\xc3\xa9 \xff\xfe end");
    char *out = capture_end();
    json_t *j = one_json_line(out);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "warn");
    assert_string_equal(json_string_value(json_object_get(j, "event")), "tls_refused");
    assert_string_equal(json_string_value(json_object_get(j, "device")), "MON-0001");
    assert_string_equal(json_string_value(json_object_get(j, "peer")), "[::1]:5000");
    assert_string_equal(json_string_value(json_object_get(j, "msg")),
                        "say \"hi\"\\ now\nnext\x01 \xc3\xa9t\xc3\xa9 \xef\xbf\xbd\xef\xbf\xbd end");
    const char *ts = json_string_value(json_object_get(j, "ts"));
    assert_non_null(ts);
    assert_int_equal(strlen(ts), strlen("2026-11-28T06:14:54.123Z"));
    assert_int_equal(ts[strlen(ts) - 1], 'Z');
    json_decref(j);
    free(out);

    /* No device, peer or message: those fields are absent. */
    capture_begin();
    log_info("ready", NULL, NULL, NULL);
    out = capture_end();
    j = one_json_line(out);
    assert_int_equal(json_object_size(j), 3);
    json_decref(j);
    free(out);

    /* A message far beyond a line is cut, and the line stays one JSON object. */
    char big[1000];
    memset(big, '"', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    capture_begin();
    log_error("big", "MON-0002", "10.0.0.1:1", "%s%s", big, big);
    out = capture_end();
    j = one_json_line(out);
    const char *msg = json_string_value(json_object_get(j, "msg"));
    assert_non_null(msg);
    assert_true(strlen(msg) > 500 && strlen(msg) < 1024);
    json_decref(j);
    free(out);
    log_set_format(LOG_FORMAT_TEXT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_default),
        cmocka_unit_test(test_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
