/* test_sdnotify.c - the notify datagram (server/base/sdnotify.c) against
 * sockets this test listens on, as a service manager would: a path socket and
 * an abstract one receive exactly READY=1 / RELOADING=1 with a MONOTONIC_USEC
 * taken between the calls / STOPPING=1 / WATCHDOG=1; without $NOTIFY_SOCKET
 * nothing is sent; a malformed address or a socket nobody listens on is an
 * error; $WATCHDOG_USEC counts only for our own pid. */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "cms_err.h"
#include "sdnotify.h"

typedef struct listener {
    int fd;
    char name[108]; /* what goes into $NOTIFY_SOCKET */
    char path[108]; /* file to unlink, "" for abstract */
} listener;

static void listen_on(listener *l, bool abstract)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    socklen_t len;
    l->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(l->fd >= 0);
    if (abstract) {
        snprintf(l->name, sizeof(l->name), "@cms-test-notify-%d", (int)getpid());
        l->path[0] = '\0';
        size_t n = strlen(l->name);
        memcpy(sa.sun_path, l->name, n);
        sa.sun_path[0] = '\0';
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else {
        char dir[] = "/tmp/cms-notify-XXXXXX";
        assert_non_null(mkdtemp(dir));
        snprintf(l->path, sizeof(l->path), "%s/notify", dir);
        snprintf(l->name, sizeof(l->name), "%s", l->path);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", l->path);
        len = sizeof(sa);
    }
    assert_int_equal(bind(l->fd, (struct sockaddr *)&sa, len), 0);
    setenv("NOTIFY_SOCKET", l->name, 1);
}

static void close_listener(listener *l)
{
    close(l->fd);
    if (l->path[0]) {
        unlink(l->path);
        char *slash = strrchr(l->path, '/');
        *slash = '\0';
        rmdir(l->path);
    }
    unsetenv("NOTIFY_SOCKET");
}

/* The next datagram, NUL-terminated. */
static void receive(listener *l, char *buf, size_t cap)
{
    ssize_t n = recv(l->fd, buf, cap - 1, MSG_DONTWAIT);
    assert_true(n > 0);
    buf[n] = '\0';
}

static unsigned long long mono_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000ull;
}

static void states_on(bool abstract)
{
    listener l;
    char buf[512];
    listen_on(&l, abstract);
    assert_int_equal(sdnotify_ready("serving 2 workers"), 1);
    receive(&l, buf, sizeof(buf));
    assert_string_equal(buf, "READY=1\nSTATUS=serving 2 workers");
    assert_int_equal(sdnotify_ready(NULL), 1);
    receive(&l, buf, sizeof(buf));
    assert_string_equal(buf, "READY=1");

    unsigned long long before = mono_usec();
    assert_int_equal(sdnotify_reloading(), 1);
    unsigned long long after = mono_usec();
    receive(&l, buf, sizeof(buf));
    unsigned long long at = 0;
    assert_int_equal(sscanf(buf, "RELOADING=1\nMONOTONIC_USEC=%llu", &at), 1);
    assert_true(at >= before && at <= after);
    assert_non_null(strchr(buf, '\n'));

    assert_int_equal(sdnotify_stopping(), 1);
    receive(&l, buf, sizeof(buf));
    assert_string_equal(buf, "STOPPING=1");
    assert_int_equal(sdnotify_watchdog(), 1);
    receive(&l, buf, sizeof(buf));
    assert_string_equal(buf, "WATCHDOG=1");
    /* Nothing else was sent. */
    assert_true(recv(l.fd, buf, sizeof(buf), MSG_DONTWAIT) < 0);
    close_listener(&l);
}

static void test_path_socket(void **state)
{
    (void)state;
    states_on(false);
}

static void test_abstract_socket(void **state)
{
    (void)state;
    states_on(true);
}

static void test_no_manager(void **state)
{
    (void)state;
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(sdnotify_ready(NULL), 0);
    setenv("NOTIFY_SOCKET", "", 1);
    assert_int_equal(sdnotify_stopping(), 0);
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    assert_int_equal(sdnotify_stopping(), CMS_EINVAL);
    setenv("NOTIFY_SOCKET", "@", 1);
    assert_int_equal(sdnotify_stopping(), CMS_EINVAL);
    char longp[200];
    memset(longp, 'a', sizeof(longp) - 1);
    longp[0] = '/';
    longp[sizeof(longp) - 1] = '\0';
    setenv("NOTIFY_SOCKET", longp, 1);
    assert_int_equal(sdnotify_stopping(), CMS_EINVAL);
    /* Nobody listens there. */
    setenv("NOTIFY_SOCKET", "/nonexistent-dir/notify", 1);
    assert_int_equal(sdnotify_stopping(), CMS_EUNAVAIL);
    unsetenv("NOTIFY_SOCKET");
}

static void test_watchdog_usec(void **state)
{
    (void)state;
    char pid[32];
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    assert_int_equal(sdnotify_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "30000000", 1);
    assert_int_equal(sdnotify_watchdog_usec(), 30000000);
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(sdnotify_watchdog_usec(), 30000000);
    snprintf(pid, sizeof(pid), "%d", (int)getpid() + 1);
    setenv("WATCHDOG_PID", pid, 1); /* meant for another process */
    assert_int_equal(sdnotify_watchdog_usec(), 0);
    unsetenv("WATCHDOG_PID");
    setenv("WATCHDOG_USEC", "30s", 1);
    assert_int_equal(sdnotify_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "-5", 1);
    assert_int_equal(sdnotify_watchdog_usec(), 0);
    unsetenv("WATCHDOG_USEC");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_path_socket),
        cmocka_unit_test(test_abstract_socket),
        cmocka_unit_test(test_no_manager),
        cmocka_unit_test(test_watchdog_usec),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
