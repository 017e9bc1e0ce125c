/* test_net_plain.c - the loopback-only plaintext listener (server/net/plain.c)
 * on a real loop and real sockets: it refuses to bind a non-loopback address;
 * a GET gets the handler's answer with Content-Length and Connection: close,
 * the query string is not part of the path; HEAD gets the length without the
 * body; other methods 405, a malformed request line or a body 400, a request
 * head beyond the limit 431; connections beyond the limit are closed at once;
 * closing the listener with a silent client connected frees everything. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "cms_err.h"
#include "net_plain.h"

static int port;
static unsigned handled;

static void handler(void *ctx, const char *method, const char *path, net_plain_reply *r)
{
    (void)ctx;
    (void)method;
    handled++;
    if (strcmp(path, "/metrics") == 0) {
        r->status = 200;
        r->content_type = "text/plain; version=0.0.4; charset=utf-8";
        r->body = strdup("up 1\n");
        r->len = 5;
    } else {
        r->status = 404;
        r->body = strdup("no\n");
        r->len = 3;
    }
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    close(fd);
    return ntohs(sa.sin_port);
}

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {.tv_sec = 20};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* Sends req on a new connection, returns everything until the server closes. */
static char *exchange(const char *req, size_t len)
{
    int fd = dial();
    assert_int_equal(send(fd, req, len, MSG_NOSIGNAL), (ssize_t)len);
    size_t cap = 65536, n = 0;
    char *out = calloc(1, cap);
    ssize_t r;
    while ((r = recv(fd, out + n, cap - n - 1, 0)) > 0)
        n += (size_t)r;
    close(fd);
    return out;
}

typedef struct client_run {
    char *answers[8];
    bool over_limit_closed;
} client_run;

static void *client(void *arg)
{
    client_run *cr = arg;
    cr->answers[0] = exchange("GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", 38);
    cr->answers[1] = exchange("HEAD /metrics HTTP/1.0\r\n\r\n", 26);
    cr->answers[2] = exchange("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 45);
    cr->answers[3] = exchange("GET metrics HTTP/1.1\r\n\r\n", 24);
    cr->answers[4] = exchange("GET /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 43);
    char big[NET_PLAIN_MAX_REQUEST + 100];
    memset(big, 'a', sizeof(big));
    memcpy(big, "GET /", 5);
    cr->answers[5] = exchange(big, sizeof(big));
    cr->answers[6] = exchange("GET /other HTTP/1.1\r\n\r\n", 23);
    /* Fill every slot with silent connections; one more is closed at once. */
    int held[NET_PLAIN_MAX_CONNS];
    for (int i = 0; i < NET_PLAIN_MAX_CONNS; i++)
        held[i] = dial();
    usleep(100000);
    int extra = dial();
    char b;
    cr->over_limit_closed = recv(extra, &b, 1, 0) == 0;
    close(extra);
    for (int i = 0; i < NET_PLAIN_MAX_CONNS; i++)
        close(held[i]);
    /* The listener serves again once they are gone. */
    usleep(100000);
    cr->answers[7] = exchange("GET /metrics HTTP/1.1\r\n\r\n", 25);
    return NULL;
}

static net_plain *listener;
static bool closed_cb_ran;

static void on_closed(void *ctx)
{
    (void)ctx;
    closed_cb_ran = true;
}

static void on_client_done(uv_async_t *a)
{
    net_plain_close(listener, on_closed, NULL);
    uv_close((uv_handle_t *)a, NULL);
}

static client_run run;
static uv_async_t done_async;

static void *client_then_signal(void *arg)
{
    client(arg);
    /* One more connection left open while the listener closes. */
    int fd = dial();
    uv_async_send(&done_async);
    char b;
    (void)recv(fd, &b, 1, 0); /* returns when the listener closed it */
    close(fd);
    return NULL;
}

static void test_listener(void **state)
{
    (void)state;
    char err[256];
    uv_loop_t loop;
    uv_loop_init(&loop);
    assert_null(net_plain_listen(&loop, "0.0.0.0:9464", handler, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "loopback"));
    assert_null(net_plain_listen(&loop, "10.1.2.3:9464", handler, NULL, err, sizeof(err)));
    assert_int_equal(net_plain_is_loopback("127.0.0.2:1", err, sizeof(err)), 1);
    assert_int_equal(net_plain_is_loopback("[::1]:1", err, sizeof(err)), 1);
    assert_int_equal(net_plain_is_loopback("[::]:1", err, sizeof(err)), 0);
    assert_int_equal(net_plain_is_loopback("localhost:1", err, sizeof(err)), CMS_EINVAL);

    port = free_port();
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    listener = net_plain_listen(&loop, addr, handler, NULL, err, sizeof(err));
    if (!listener)
        fail_msg("%s", err);
    uv_async_init(&loop, &done_async, on_client_done);
    pthread_t th;
    pthread_create(&th, NULL, client_then_signal, &run);
    uv_run(&loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    assert_true(closed_cb_ran);
    assert_int_equal(uv_loop_close(&loop), 0); /* every handle closed */

    char **a = run.answers;
    assert_non_null(strstr(a[0], "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(a[0], "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    assert_non_null(strstr(a[0], "Content-Length: 5\r\n"));
    assert_non_null(strstr(a[0], "Connection: close\r\n"));
    assert_non_null(strstr(a[0], "\r\n\r\nup 1\n"));
    assert_non_null(strstr(a[1], "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(a[1], "Content-Length: 5\r\n"));
    assert_string_equal(strstr(a[1], "\r\n\r\n"), "\r\n\r\n"); /* no body */
    assert_non_null(strstr(a[2], "HTTP/1.1 405 "));
    assert_non_null(strstr(a[2], "Allow: GET, HEAD\r\n"));
    assert_non_null(strstr(a[3], "HTTP/1.1 400 "));
    assert_non_null(strstr(a[4], "HTTP/1.1 400 "));
    assert_non_null(strstr(a[5], "HTTP/1.1 431 "));
    assert_non_null(strstr(a[6], "HTTP/1.1 404 "));
    assert_true(run.over_limit_closed);
    assert_non_null(strstr(a[7], "HTTP/1.1 200 OK\r\n"));
    assert_int_equal(handled, 3 + 1); /* the GET, the HEAD, /other, the last GET */
    for (int i = 0; i < 8; i++)
        free(a[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_listener),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
