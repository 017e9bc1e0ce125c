/*
 * hsbench.c - mutual-TLS handshake load generator for `make bench` (scenario P4).
 *
 * Opens TCP connections to a TLS server as fast as the server answers, from P
 * processes, each connection doing one mTLS handshake with a device certificate
 * and then closing (close_notify, then close). A handshake is counted only when
 * the server has finished its side: TLS 1.3 clients wait for the first
 * NewSessionTicket, which a server sends after it has verified the client's
 * certificate and Finished; with TLS 1.2 SSL_connect itself returns only after
 * the server's Finished. So both servers pay the full cost before a count.
 *
 *   hsbench --host 127.0.0.1 --port N --cert-dir PKI --devices K --procs P
 *           --duration S --mode full|resume [--key FILE] [--serial-prefix MON-]
 *
 * --probe ticket (default) counts at the server's first TLS 1.3 ticket; --probe
 * mllp|http sends one small request and counts at its answer (see below).
 *
 * full:   every connection is a new session (no ticket offered).
 * resume: each device slot keeps the newest ticket it received and offers it
 *         on its next connection; the first connection of each slot is full
 *         and not counted as resumed. SSL_session_reused() decides.
 *
 * The client does not verify the server certificate (SSL_VERIFY_NONE): that
 * saves one ECDSA verify per handshake on the load generator's side and does
 * not change the server's work. Output: one JSON object on stdout with the
 * counts, the rate and the CPU seconds of all client processes.
 *
 * Ports: the client closes first, so its side holds TIME_WAIT; Linux reuses
 * those for loopback connections (net.ipv4.tcp_tw_reuse = 2, the default).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct counters { /* one cache line per process, in shared memory */
    volatile uint64_t ok, resumed, full, errors, no_ticket;
    char pad[24];
};

static const char *opt_host = "127.0.0.1";
static int opt_port;
static const char *opt_dir;
static const char *opt_key;
static const char *opt_prefix = "MON-";
static int opt_first = 1, opt_devices = 64, opt_procs = 4;
static double opt_duration = 10, opt_ticket_wait = 2.0;
static int opt_resume;
static const char *opt_probe = "ticket";

/* --probe mllp: an HL7 query cmsd answers AR without touching the database (it
 * answers only once the device registry check has passed); --probe http: a
 * request nginx answers from its config. The handshake counts when the answer
 * arrives: both servers have then accepted the session for application data. */
static const char mllp_probe[] = "\x0bMSH|^~\\&|BENCH|BENCH|CMS|CMS|20250101000000||QRY^A19^QRY_A19|"
                                 "HS1|P|2.6\rQRD|20250101000000|R|I|HS1|||1^RD|X|DEM\r\x1c\x0d";
static const char http_probe[] = "GET /hs HTTP/1.1\r\nHost: localhost\r\n\r\n";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int got_ticket; /* set by the new-session callback of the current connection */
static SSL_SESSION *last_ticket;

static int on_new_session(SSL *ssl, SSL_SESSION *s)
{
    (void)ssl;
    got_ticket = 1;
    if (last_ticket)
        SSL_SESSION_free(last_ticket);
    last_ticket = s; /* we keep the reference */
    return 1;
}

/* The device's certificate and key, handed to OpenSSL only when the server asks for
 * them (a full handshake): a resumed TLS 1.3 handshake has no CertificateRequest, so
 * the client does not pay for installing (and checking) a key pair it will not use. */
static X509 *cur_cert;
static EVP_PKEY *cur_key;

static int on_cert_request(SSL *ssl, X509 **x509, EVP_PKEY **pkey)
{
    (void)ssl;
    if (!cur_cert || !cur_key)
        return 0;
    X509_up_ref(cur_cert);
    EVP_PKEY_up_ref(cur_key);
    *x509 = cur_cert;
    *pkey = cur_key;
    return 1;
}

static X509 *load_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    return x;
}

static int tcp_connect(const struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* After SSL_connect: wait until the server's first ticket (TLS 1.3) arrives. */
static int wait_ticket(SSL *ssl, int fd)
{
    if (SSL_version(ssl) != TLS1_3_VERSION)
        return 1;
    double deadline = now_s() + opt_ticket_wait;
    char b[256];
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); /* SSL_read must not block */
    while (!got_ticket) {
        int r = SSL_read(ssl, b, sizeof b);
        if (r > 0)
            continue; /* unexpected data: ignore */
        int e = SSL_get_error(ssl, r);
        if (e != SSL_ERROR_WANT_READ)
            return got_ticket ? 1 : -1; /* closed or failed */
        if (got_ticket)
            break;
        double left = deadline - now_s();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        poll(&p, 1, (int)(left * 1000) + 1);
    }
    return 1;
}

/* Writes the probe and reads until its answer is complete: 1 ok, 0 timeout, -1 error. */
static int probe(SSL *ssl, int fd)
{
    int mllp = strcmp(opt_probe, "mllp") == 0;
    const char *req = mllp ? mllp_probe : http_probe;
    int len = (int)(mllp ? sizeof mllp_probe - 1 : sizeof http_probe - 1);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    if (SSL_write(ssl, req, len) != len)
        return -1;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    double deadline = now_s() + opt_ticket_wait;
    char b[4096];
    size_t have = 0;
    for (;;) {
        int r = SSL_read(ssl, b + have, (int)(sizeof b - 1 - have));
        if (r > 0) {
            have += (size_t)r;
            b[have] = 0;
            if (mllp && have >= 2 && b[have - 2] == 0x1c && b[have - 1] == 0x0d)
                return 1;
            if (!mllp && strstr(b, "\r\n\r\n")) /* a 2xx status, or the server refused us */
                return strncmp(b, "HTTP/1.1 2", 10) == 0 ? 1 : -1;
            if (have >= sizeof b - 1)
                have = 0;
            continue;
        }
        if (SSL_get_error(ssl, r) != SSL_ERROR_WANT_READ)
            return -1;
        double left = deadline - now_s();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        poll(&p, 1, (int)(left * 1000) + 1);
    }
}

static void child(int idx, struct counters *c, const struct sockaddr_in *sa, X509 **certs,
                  EVP_PKEY **keys, int ncert)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
    SSL_CTX_set_client_cert_cb(ctx, on_cert_request);
    /* this process's device slots: idx, idx+P, idx+2P, ... */
    int nslots = 0;
    int *slot = calloc((size_t)ncert, sizeof *slot);
    SSL_SESSION **sess = calloc((size_t)ncert, sizeof *sess);
    for (int i = idx; i < ncert; i += opt_procs)
        slot[nslots++] = i;
    if (nslots == 0)
        slot[nslots++] = idx % ncert;
    double end = now_s() + opt_duration;
    unsigned long n = 0;
    SSL *ssl = NULL; /* one SSL object per process, cleared between connections */
    while (now_s() < end) {
        int si = (int)(n++ % (unsigned long)nslots), d = slot[si];
        int fd = tcp_connect(sa);
        if (fd < 0) {
            c->errors++;
            usleep(1000);
            continue;
        }
        if (!ssl)
            ssl = SSL_new(ctx);
        /* SSL_clear keeps the certificate the last full handshake installed, and
         * OpenSSL asks on_cert_request only when none is set: this slot's device. */
        SSL_certs_clear(ssl);
        cur_cert = certs[d];
        cur_key = keys[d];
        SSL_set_fd(ssl, fd);
        SSL_set_session(ssl, opt_resume ? sess[si] : NULL);
        got_ticket = 0;
        int ok = SSL_connect(ssl) == 1;
        if (ok) {
            int w = strcmp(opt_probe, "ticket") == 0 ? wait_ticket(ssl, fd) : probe(ssl, fd);
            if (w < 0)
                ok = 0;
            else if (w == 0)
                c->no_ticket++;
        }
        if (ok) {
            c->ok++;
            if (SSL_session_reused(ssl))
                c->resumed++;
            else
                c->full++;
            if (opt_resume && last_ticket) {
                if (sess[si])
                    SSL_SESSION_free(sess[si]);
                sess[si] = last_ticket;
                last_ticket = NULL;
            }
            SSL_shutdown(ssl);
        } else {
            c->errors++;
            ERR_clear_error();
        }
        if (last_ticket) {
            SSL_SESSION_free(last_ticket);
            last_ticket = NULL;
        }
        SSL_clear(ssl);
        close(fd);
    }
    _exit(0);
}

static void usage(void)
{
    fprintf(stderr, "usage: hsbench --port N --cert-dir PKI [--host A] [--devices K] [--first N]\n"
                    "               [--serial-prefix P] [--key FILE] [--procs P] [--duration S]\n"
                    "               [--mode full|resume] [--ticket-wait S] [--probe ticket|mllp|http]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"host", 1, 0, 'h'},     {"port", 1, 0, 'p'},          {"cert-dir", 1, 0, 'd'},
        {"key", 1, 0, 'k'},      {"serial-prefix", 1, 0, 's'}, {"first", 1, 0, 'f'},
        {"devices", 1, 0, 'n'},  {"procs", 1, 0, 'P'},         {"duration", 1, 0, 't'},
        {"mode", 1, 0, 'm'},     {"ticket-wait", 1, 0, 'w'},   {"probe", 1, 0, 'r'}, {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'h': opt_host = optarg; break;
        case 'p': opt_port = atoi(optarg); break;
        case 'd': opt_dir = optarg; break;
        case 'k': opt_key = optarg; break;
        case 's': opt_prefix = optarg; break;
        case 'f': opt_first = atoi(optarg); break;
        case 'n': opt_devices = atoi(optarg); break;
        case 'P': opt_procs = atoi(optarg); break;
        case 't': opt_duration = atof(optarg); break;
        case 'w': opt_ticket_wait = atof(optarg); break;
        case 'r':
            if (strcmp(optarg, "ticket") && strcmp(optarg, "mllp") && strcmp(optarg, "http"))
                usage();
            opt_probe = optarg;
            break;
        case 'm':
            if (strcmp(optarg, "full") == 0)
                opt_resume = 0;
            else if (strcmp(optarg, "resume") == 0)
                opt_resume = 1;
            else
                usage();
            break;
        default: usage();
        }
    }
    if (!opt_port || !opt_dir || opt_devices < 1 || opt_procs < 1)
        usage();
    signal(SIGPIPE, SIG_IGN);

    X509 **certs = calloc((size_t)opt_devices, sizeof *certs);
    EVP_PKEY **keys = calloc((size_t)opt_devices, sizeof *keys);
    EVP_PKEY *shared = NULL;
    if (opt_key) {
        FILE *f = fopen(opt_key, "r");
        if (!f || !(shared = PEM_read_PrivateKey(f, NULL, NULL, NULL))) {
            fprintf(stderr, "hsbench: cannot read key %s\n", opt_key);
            return 1;
        }
        fclose(f);
    }
    for (int i = 0; i < opt_devices; i++) {
        char p[4096];
        snprintf(p, sizeof p, "%s/devices/%s%04d.crt", opt_dir, opt_prefix, opt_first + i);
        if (!(certs[i] = load_cert(p))) {
            fprintf(stderr, "hsbench: cannot read %s\n", p);
            return 1;
        }
        if (shared) {
            keys[i] = shared;
            continue;
        }
        snprintf(p, sizeof p, "%s/devices/%s%04d.key", opt_dir, opt_prefix, opt_first + i);
        FILE *f = fopen(p, "r");
        if (!f || !(keys[i] = PEM_read_PrivateKey(f, NULL, NULL, NULL))) {
            fprintf(stderr, "hsbench: cannot read key %s\n", p);
            return 1;
        }
        fclose(f);
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt_port)};
    if (inet_pton(AF_INET, opt_host, &sa.sin_addr) != 1) {
        fprintf(stderr, "hsbench: --host must be an IPv4 address\n");
        return 1;
    }
    struct counters *c = mmap(NULL, sizeof *c * (size_t)opt_procs, PROT_READ | PROT_WRITE,
                              MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (c == MAP_FAILED)
        return 1;
    memset(c, 0, sizeof *c * (size_t)opt_procs);
    double t0 = now_s();
    for (int i = 0; i < opt_procs; i++) {
        pid_t p = fork();
        if (p == 0)
            child(i, &c[i], &sa, certs, keys, opt_devices);
        if (p < 0) {
            perror("fork");
            return 1;
        }
    }
    while (wait(NULL) > 0)
        ;
    double el = now_s() - t0;
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    uint64_t ok = 0, res = 0, full = 0, err = 0, nt = 0;
    for (int i = 0; i < opt_procs; i++) {
        ok += c[i].ok;
        res += c[i].resumed;
        full += c[i].full;
        err += c[i].errors;
        nt += c[i].no_ticket;
    }
    printf("{\"probe\": \"%s\", \"mode\": \"%s\", \"procs\": %d, \"devices\": %d, \"elapsed_s\": %.3f, "
           "\"handshakes\": %llu, \"full\": %llu, \"resumed\": %llu, \"errors\": %llu, "
           "\"no_ticket\": %llu, \"per_s\": %.1f, \"full_per_s\": %.1f, \"resumed_per_s\": %.1f, "
           "\"client_cpu_s\": %.3f, \"client_cores\": %.3f}\n",
           opt_probe, opt_resume ? "resume" : "full", opt_procs, opt_devices, el, (unsigned long long)ok,
           (unsigned long long)full, (unsigned long long)res, (unsigned long long)err,
           (unsigned long long)nt, (double)ok / el, (double)full / el, (double)res / el, cpu,
           cpu / el);
    for (int i = 0; i < opt_devices; i++) {
        X509_free(certs[i]);
        if (!shared)
            EVP_PKEY_free(keys[i]);
    }
    EVP_PKEY_free(shared);
    free(certs);
    free(keys);
    munmap(c, sizeof *c * (size_t)opt_procs);
    return 0;
}
