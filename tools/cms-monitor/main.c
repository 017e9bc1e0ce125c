/*
 * main.c - cms-monitor: command line, identities, SSL_CTX, run phases, exit
 * status. See usage() for the flags and monitor.h for the object model.
 */
#include <errno.h>
#include <stdarg.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <unistd.h>
#include <netdb.h>
#include <arpa/inet.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "cms_err.h"
#include "log.h"
#include "monitor.h"

#define EXIT_OK 0
#define EXIT_SETUP 1
#define EXIT_NACK 2
#define EXIT_UNACKED 3

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: cms-monitor [options]\n"
        "Patient monitor simulator and load generator for cmsd: sends IHE PCD-01 ORU^R01\n"
        "messages (numerics, optionally waveforms) and IHE PCD-04 ORU^R40 alarms over MLLP\n"
        "over mutual TLS and waits for the HL7 ACK of each.\n"
        "\n"
        "Server:\n"
        "  --host H              server name or address (default 127.0.0.1); the server\n"
        "                        certificate must match it (DNS or IP subjectAltName)\n"
        "  --port P              MLLP/TLS port (default 2575)\n"
        "  --ca FILE             CA bundle that verifies the server (required)\n"
        "  --source ADDR         connect from this local address (numeric, same family as\n"
        "                        the server's): each process of a large load on loopback\n"
        "                        takes its own 127.0.0.x, so that the ~28 000 ephemeral\n"
        "                        ports of one source/destination pair do not run out\n"
        "Identity (one of):\n"
        "  --cert FILE --key FILE        one device; FILE may hold the chain after the leaf\n"
        "  --cert-dir DIR                many devices: DIR/<serial>.crt, or "
        "DIR/devices/<serial>.crt\n"
        "                                (a certs/mkpki.sh PKI directory); the key is the first "
        "of\n"
        "                                --key FILE (shared), <certdir>/<serial>.key,\n"
        "                                <pki>/mint/<prefix>.key (mkpki.sh mint's shared key)\n"
        "    --serial-prefix S   serial prefix (default MON-)\n"
        "    --first N           first serial number (default 1); serial = prefix + %%04u\n"
        "    --devices K         number of devices (default 1)\n"
        "  --serial S            serial claimed in MSH-3/OBR (default: the certificate's CN;\n"
        "                        one device only; a different value tests impersonation)\n"
        "Traffic:\n"
        "  --count N             messages per device, 0 = unlimited (default 0)\n"
        "  --rate R              messages per second per device, 0 = as fast as the window\n"
        "                        allows (default 1)\n"
        "  --duration SEC        stop sending after SEC seconds, then wait for the ACKs\n"
        "                        (default 0 = until --count or SIGINT)\n"
        "  --window W            unacknowledged messages per connection (default 1, max %d)\n"
        "  --connect-rate C      new TLS handshakes per second, 0 = no limit (default 500)\n"
        "  --obs K               NM observations per message (default 10, max %d): HR, SpO2,\n"
        "                        pulse rate, NIBP sys/dia/mean, resp rate, temperature, etCO2,\n"
        "                        perfusion index, then awRR, ABP, CVP, PAP, then repeats\n"
        "  --patient MRN         PID-3 (default MRN-<serial>; with several devices MRN is a\n"
        "                        prefix followed by the serial's number)\n"
        "  --location L          PV1-3, HL7 components allowed (default ICU^^BED-<number>)\n"
        "  --wards N             devices spread over N wards: PV1-3 WARD-<1 + number %% N>^^\n"
        "                        BED-<number> (default 0: all in ICU)\n"
        "  --facility F          MSH-6 and PID-3 assigning authority (default GENERAL HOSPITAL)\n"
        "  --control-prefix P    MSH-10 = P<6-digit sequence> (default <serial>-<random run "
        "tag>-;\n"
        "                        with several devices: P<serial>-<sequence>)\n"
        "  --resend-on-reconnect / --no-resend-on-reconnect\n"
        "                        after a dropped connection, resend unacknowledged messages\n"
        "                        with the same MSH-10 (default on)\n"
        "  --resume              reuse TLS sessions when reconnecting\n"
        "  --waveforms LIST      waveform channels in every ORU^R01 (comma-separated: ecg1,\n"
        "                        ecg2, v1 at 500 Hz, pleth at 125 Hz): one NA block each\n"
        "                        covering 1/--rate s (1 s unpaced), with rate and resolution\n"
        "  --alarms SEC          ORU^R40 alarms: one starts every SEC s on average per device\n"
        "                        (SpO2 desat, HR high, ECG lead-off), continues every 10 s,\n"
        "                        ends after 5-30 s (default 0 = none)\n"
        "  --heartbeat SEC       ORU^R40 watchdog (priority PN) every SEC s (default 0 = none)\n"
        "  --steady-after SEC    the alarm latency's \"steady\" figures count alarms sent SEC s\n"
        "                        or more after every device got its first ACK (default 5)\n"
        "Timing:\n"
        "  --ack-timeout MS      reconnect when an ACK takes longer (default 30000)\n"
        "  --handshake-timeout MS  TCP connect + TLS handshake limit (default 10000)\n"
        "  --drain-timeout MS    after --duration/--count/SIGINT, wait this long for\n"
        "                        outstanding ACKs (default 30000)\n"
        "  --retries N           at start, give up (exit 1) after N failed attempts of a\n"
        "                        device while no connection ever got an ACK (default 5)\n"
        "  --backoff-min MS, --backoff-max MS   reconnect backoff (default 100, 10000)\n"
        "Output:\n"
        "  --json                final statistics as JSON on stdout\n"
        "  --quiet               no progress lines (every 5 s on stderr) and no info logs\n"
        "  --verbose             print each ACK (stdout) and each connection\n"
        "  --report-interval MS  progress line period (default 5000)\n"
        "  --seed N              random seed for the vital-sign random walks\n"
        "  -h, --help            this text\n"
        "\n"
        "Statistics: sent, acked AA/AE/AR, unacked, resent, reconnects, ACK latency\n"
        "p50/p90/p99/max (send to ACK receipt, log-bucket histogram, +-3%%), observations\n"
        "and waveform samples acked, alarm events and heartbeats sent/acked with the alarms'\n"
        "own ACK latency, and the process's CPU time (getrusage). Sent and AA count ORU^R01\n"
        "messages; alarms and heartbeats are counted apart (AE/AR count all).\n"
        "Exit status: 0 every sent message acked AA (possibly after a resend); 2 some AE or\n"
        "AR; 3 some message never acknowledged (or none sent); 1 setup error (bad flags, "
        "unreadable\n"
        "certificate or key, server unreachable or refusing us at start).\n",
        MON_MAX_WINDOW, MON_MAX_OBS);
}

enum {
    OPT_HOST = 256,
    OPT_PORT,
    OPT_CA,
    OPT_SOURCE,
    OPT_CERT,
    OPT_KEY,
    OPT_CERT_DIR,
    OPT_SERIAL_PREFIX,
    OPT_FIRST,
    OPT_DEVICES,
    OPT_SERIAL,
    OPT_COUNT,
    OPT_RATE,
    OPT_DURATION,
    OPT_WINDOW,
    OPT_CONNECT_RATE,
    OPT_OBS,
    OPT_PATIENT,
    OPT_LOCATION,
    OPT_FACILITY,
    OPT_CONTROL_PREFIX,
    OPT_RESEND,
    OPT_NO_RESEND,
    OPT_RESUME,
    OPT_ACK_TIMEOUT,
    OPT_HS_TIMEOUT,
    OPT_DRAIN_TIMEOUT,
    OPT_RETRIES,
    OPT_BACKOFF_MIN,
    OPT_BACKOFF_MAX,
    OPT_JSON,
    OPT_QUIET,
    OPT_VERBOSE,
    OPT_REPORT,
    OPT_SEED,
    OPT_WAVEFORMS,
    OPT_ALARMS,
    OPT_WARDS,
    OPT_STEADY_AFTER,
    OPT_HEARTBEAT,
};

static const struct option longopts[] = {
    {"host", required_argument, 0, OPT_HOST},
    {"port", required_argument, 0, OPT_PORT},
    {"ca", required_argument, 0, OPT_CA},
    {"source", required_argument, 0, OPT_SOURCE},
    {"cert", required_argument, 0, OPT_CERT},
    {"key", required_argument, 0, OPT_KEY},
    {"cert-dir", required_argument, 0, OPT_CERT_DIR},
    {"serial-prefix", required_argument, 0, OPT_SERIAL_PREFIX},
    {"first", required_argument, 0, OPT_FIRST},
    {"devices", required_argument, 0, OPT_DEVICES},
    {"serial", required_argument, 0, OPT_SERIAL},
    {"count", required_argument, 0, OPT_COUNT},
    {"rate", required_argument, 0, OPT_RATE},
    {"duration", required_argument, 0, OPT_DURATION},
    {"window", required_argument, 0, OPT_WINDOW},
    {"connect-rate", required_argument, 0, OPT_CONNECT_RATE},
    {"obs", required_argument, 0, OPT_OBS},
    {"patient", required_argument, 0, OPT_PATIENT},
    {"location", required_argument, 0, OPT_LOCATION},
    {"wards", required_argument, 0, OPT_WARDS},
    {"facility", required_argument, 0, OPT_FACILITY},
    {"control-prefix", required_argument, 0, OPT_CONTROL_PREFIX},
    {"resend-on-reconnect", no_argument, 0, OPT_RESEND},
    {"no-resend-on-reconnect", no_argument, 0, OPT_NO_RESEND},
    {"resume", no_argument, 0, OPT_RESUME},
    {"ack-timeout", required_argument, 0, OPT_ACK_TIMEOUT},
    {"handshake-timeout", required_argument, 0, OPT_HS_TIMEOUT},
    {"drain-timeout", required_argument, 0, OPT_DRAIN_TIMEOUT},
    {"retries", required_argument, 0, OPT_RETRIES},
    {"backoff-min", required_argument, 0, OPT_BACKOFF_MIN},
    {"backoff-max", required_argument, 0, OPT_BACKOFF_MAX},
    {"json", no_argument, 0, OPT_JSON},
    {"quiet", no_argument, 0, OPT_QUIET},
    {"verbose", no_argument, 0, OPT_VERBOSE},
    {"report-interval", required_argument, 0, OPT_REPORT},
    {"seed", required_argument, 0, OPT_SEED},
    {"waveforms", required_argument, 0, OPT_WAVEFORMS},
    {"alarms", required_argument, 0, OPT_ALARMS},
    {"steady-after", required_argument, 0, OPT_STEADY_AFTER},
    {"heartbeat", required_argument, 0, OPT_HEARTBEAT},
    {"help", no_argument, 0, 'h'},
    {0, 0, 0, 0},
};

static int parse_u64(const char *name, const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi) {
        fprintf(stderr,
                "cms-monitor: --%s: expected an integer in %" PRIu64 "..%" PRIu64 ", got '%s'\n",
                name, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_uint(const char *name, const char *s, unsigned lo, unsigned hi, unsigned *out)
{
    uint64_t v;
    if (parse_u64(name, s, lo, hi, &v) < 0)
        return -1;
    *out = (unsigned)v;
    return 0;
}

static int parse_double(const char *name, const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "cms-monitor: --%s: expected a number in %g..%g, got '%s'\n", name, lo, hi,
                s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_opts(int argc, char **argv, struct mon_opts *o)
{
    int c, r = 0;
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 2575;
    o->serial_prefix = "MON-";
    o->first = 1;
    o->devices = 1;
    o->steady_after = 5;
    o->serial_width = 4;
    o->rate = 1;
    o->window = 1;
    o->connect_rate = 500;
    o->obs = 10;
    o->facility = "GENERAL HOSPITAL";
    o->resend = 1;
    o->ack_timeout_ms = 30000;
    o->handshake_timeout_ms = 10000;
    o->drain_timeout_ms = 30000;
    o->retries = 5;
    o->backoff_min_ms = 100;
    o->backoff_max_ms = 10000;
    o->report_ms = 5000;

    while (r == 0 && (c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        const char *n = NULL;
        for (const struct option *lo = longopts; lo->name; lo++)
            if (lo->val == c)
                n = lo->name;
        switch (c) {
        case OPT_HOST:
            o->host = optarg;
            break;
        case OPT_PORT:
            r = parse_uint(n, optarg, 1, 65535, &o->port);
            break;
        case OPT_CA:
            o->ca = optarg;
            break;
        case OPT_SOURCE:
            o->source = optarg;
            break;
        case OPT_CERT:
            o->cert = optarg;
            break;
        case OPT_KEY:
            o->key = optarg;
            break;
        case OPT_CERT_DIR:
            o->cert_dir = optarg;
            break;
        case OPT_SERIAL_PREFIX:
            o->serial_prefix = optarg;
            break;
        case OPT_FIRST:
            r = parse_uint(n, optarg, 0, 99999999, &o->first);
            break;
        case OPT_DEVICES:
            r = parse_uint(n, optarg, 1, 1000000, &o->devices);
            break;
        case OPT_SERIAL:
            o->serial = optarg;
            break;
        case OPT_COUNT:
            r = parse_u64(n, optarg, 0, UINT64_MAX / 2, &o->count);
            break;
        case OPT_RATE:
            r = parse_double(n, optarg, 0, 1e6, &o->rate);
            break;
        case OPT_DURATION:
            r = parse_double(n, optarg, 0, 1e8, &o->duration);
            break;
        case OPT_WINDOW:
            r = parse_uint(n, optarg, 1, MON_MAX_WINDOW, &o->window);
            break;
        case OPT_CONNECT_RATE:
            r = parse_double(n, optarg, 0, 1e7, &o->connect_rate);
            break;
        case OPT_OBS:
            r = parse_uint(n, optarg, 0, MON_MAX_OBS, &o->obs);
            break;
        case OPT_PATIENT:
            o->patient = optarg;
            break;
        case OPT_LOCATION:
            o->location = optarg;
            break;
        case OPT_WARDS:
            r = parse_uint(n, optarg, 0, 100000, &o->wards);
            break;
        case OPT_FACILITY:
            o->facility = optarg;
            break;
        case OPT_CONTROL_PREFIX:
            o->control_prefix = optarg;
            break;
        case OPT_RESEND:
            o->resend = 1;
            break;
        case OPT_NO_RESEND:
            o->resend = 0;
            break;
        case OPT_RESUME:
            o->resume = 1;
            break;
        case OPT_ACK_TIMEOUT:
            r = parse_uint(n, optarg, 1, 86400000, &o->ack_timeout_ms);
            break;
        case OPT_HS_TIMEOUT:
            r = parse_uint(n, optarg, 1, 86400000, &o->handshake_timeout_ms);
            break;
        case OPT_DRAIN_TIMEOUT:
            r = parse_uint(n, optarg, 0, 86400000, &o->drain_timeout_ms);
            break;
        case OPT_RETRIES:
            r = parse_uint(n, optarg, 1, 1000000, &o->retries);
            break;
        case OPT_BACKOFF_MIN:
            r = parse_uint(n, optarg, 1, 3600000, &o->backoff_min_ms);
            break;
        case OPT_BACKOFF_MAX:
            r = parse_uint(n, optarg, 1, 3600000, &o->backoff_max_ms);
            break;
        case OPT_JSON:
            o->json = 1;
            break;
        case OPT_QUIET:
            o->quiet = 1;
            break;
        case OPT_VERBOSE:
            o->verbose = 1;
            break;
        case OPT_REPORT:
            r = parse_uint(n, optarg, 100, 86400000, &o->report_ms);
            break;
        case OPT_SEED:
            r = parse_u64(n, optarg, 0, UINT64_MAX, &o->seed);
            break;
        case OPT_WAVEFORMS: {
            const struct wave_def *w[MON_MAX_WAVES];
            o->waveforms = optarg;
            r = gen_wave_list(optarg, w) < 0 ? -1 : 0;
            break;
        }
        case OPT_ALARMS:
            r = parse_double(n, optarg, 0, 86400, &o->alarm_every);
            break;
        case OPT_STEADY_AFTER:
            r = parse_double(n, optarg, 0, 86400, &o->steady_after);
            break;
        case OPT_HEARTBEAT:
            r = parse_double(n, optarg, 0, 86400, &o->heartbeat);
            break;
        case 'h':
            usage(stdout);
            exit(EXIT_OK);
        default:
            r = -1;
            break;
        }
    }
    if (r < 0)
        return -1;
    if (optind < argc) {
        fprintf(stderr, "cms-monitor: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (o->ca == NULL) {
        fprintf(stderr, "cms-monitor: --ca FILE is required (the CA that verifies the server)\n");
        return -1;
    }
    if ((o->cert != NULL) == (o->cert_dir != NULL)) {
        fprintf(stderr, "cms-monitor: give either --cert FILE --key FILE or --cert-dir DIR\n");
        return -1;
    }
    if (o->cert && o->key == NULL) {
        fprintf(stderr, "cms-monitor: --cert needs --key\n");
        return -1;
    }
    if (o->cert && o->devices != 1) {
        fprintf(stderr, "cms-monitor: --devices needs --cert-dir (one identity per device)\n");
        return -1;
    }
    if (o->serial && o->devices != 1) {
        fprintf(stderr, "cms-monitor: --serial applies to one device only\n");
        return -1;
    }
    if (o->backoff_max_ms < o->backoff_min_ms)
        o->backoff_max_ms = o->backoff_min_ms;
    if (o->control_prefix && strlen(o->control_prefix) > 64) {
        fprintf(stderr, "cms-monitor: --control-prefix: at most 64 characters\n");
        return -1;
    }
    return 0;
}

/* ---- setup ---- */

/*
 * --source: a numeric address of the server's family, checked once here by
 * binding a probe socket to it (a typo or an address this host does not have
 * is a setup error, not one failed connection per device).
 */
static int resolve_source(struct mon *m)
{
    struct addrinfo hints, *res = NULL;
    int fd = -1, rc = -1;

    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_family = m->addr.ss_family;
    hints.ai_flags = AI_NUMERICHOST;
    int r = getaddrinfo(m->opts.source, "0", &hints, &res);
    if (r != 0 || res == NULL) {
        fprintf(stderr,
                "cms-monitor: --source %s: not a numeric %s address (the server's family): %s\n",
                m->opts.source, m->addr.ss_family == AF_INET6 ? "IPv6" : "IPv4", gai_strerror(r));
        goto cleanup;
    }
    memcpy(&m->src, res->ai_addr, res->ai_addrlen);
    fd = socket(m->src.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&m->src, (socklen_t)res->ai_addrlen) != 0) {
        fprintf(stderr, "cms-monitor: --source %s: cannot bind: %s\n", m->opts.source,
                strerror(errno));
        goto cleanup;
    }
    rc = 0;
cleanup:
    if (fd >= 0)
        close(fd);
    if (res)
        freeaddrinfo(res);
    return rc;
}

static int resolve(struct mon *m)
{
    struct addrinfo hints, *res = NULL;
    char port[8];
    struct in6_addr a6;
    struct in_addr a4;

    m->host_is_ip =
        inet_pton(AF_INET, m->opts.host, &a4) == 1 || inet_pton(AF_INET6, m->opts.host, &a6) == 1;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_family = AF_UNSPEC;
    snprintf(port, sizeof port, "%u", m->opts.port);
    /* Before the loop runs: a blocking lookup is fine here. */
    int r = getaddrinfo(m->opts.host, port, &hints, &res);
    if (r != 0 || res == NULL) {
        fprintf(stderr, "cms-monitor: cannot resolve %s: %s\n", m->opts.host, gai_strerror(r));
        return -1;
    }
    memcpy(&m->addr, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return m->opts.source ? resolve_source(m) : 0;
}

static void raise_nofile(unsigned want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)want + 64)
        log_warn("fd_limit", NULL, NULL, "RLIMIT_NOFILE is %llu for %u devices; raise ulimit -n",
                 (unsigned long long)rl.rlim_cur, want);
}

static int setup_devices(struct mon *m, uint64_t run_tag)
{
    const struct mon_opts *o = &m->opts;
    m->ndev = o->devices;
    m->devs = calloc(m->ndev, sizeof *m->devs);
    if (m->devs == NULL)
        return -1;
    for (unsigned i = 0; i < m->ndev; i++) {
        struct device *dev = &m->devs[i];
        dev->mon = m;
        dev->idx = i;
        dev_init_handles(dev);
        if (ident_load(dev, o->first + i) < 0)
            return -1;
        if (o->control_prefix == NULL)
            snprintf(dev->ctrl_prefix, sizeof dev->ctrl_prefix, "%s-%06" PRIx64 "-", dev->serial,
                     run_tag & 0xffffffu);
        else if (m->ndev > 1)
            snprintf(dev->ctrl_prefix, sizeof dev->ctrl_prefix, "%s%s-", o->control_prefix,
                     dev->serial);
        else
            snprintf(dev->ctrl_prefix, sizeof dev->ctrl_prefix, "%s", o->control_prefix);
        int r = gen_init(&dev->gen, o, dev->serial, o->seed + i * 0x9E3779B97F4A7C15ULL);
        if (r != CMS_OK) {
            fprintf(stderr, "cms-monitor: %s: %s\n", dev->serial,
                    r == CMS_EINVAL ? "bad --location, --patient or serial" : cms_strerror(r));
            return -1;
        }
        dev->pend = calloc(o->window, sizeof *dev->pend);
        if (dev->pend == NULL)
            return -1;
    }
    return 0;
}

/* ---- run phases ---- */

static void close_if_open(uv_handle_t *h)
{
    if (h->loop && !uv_is_closing(h))
        uv_close(h, NULL);
}

static void walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    close_if_open(h);
}

void mon_check_done(struct mon *m)
{
    if (m->phase != PHASE_STOP && m->done_devs == m->ndev) {
        mon_stop(m);
        return;
    }
    if (m->phase == PHASE_STOP && m->nconns == 0 && !m->handles_closed) {
        m->handles_closed = 1;
        close_if_open((uv_handle_t *)&m->ramp_timer);
        close_if_open((uv_handle_t *)&m->report_timer);
        close_if_open((uv_handle_t *)&m->duration_timer);
        close_if_open((uv_handle_t *)&m->drain_timer);
        close_if_open((uv_handle_t *)&m->sigint);
        close_if_open((uv_handle_t *)&m->sigterm);
        for (unsigned i = 0; i < m->ndev; i++)
            dev_close_handles(&m->devs[i]);
    }
}

void mon_stop(struct mon *m)
{
    if (m->phase == PHASE_STOP)
        return;
    m->phase = PHASE_STOP;
    m->end_ns = uv_hrtime();
    uv_timer_stop(&m->ramp_timer);
    uv_timer_stop(&m->duration_timer);
    uv_timer_stop(&m->drain_timer);
    uv_timer_stop(&m->report_timer);
    for (unsigned i = 0; i < m->ndev; i++)
        dev_finish(&m->devs[i]);
    mon_check_done(m);
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct mon *m = t->data;
    if (m->pending && !m->opts.quiet)
        log_warn("drain_timeout", NULL, NULL, "%" PRIu64 " messages still unacknowledged",
                 m->pending);
    mon_stop(m);
}

void mon_drain(struct mon *m)
{
    if (m->phase != PHASE_RUN)
        return;
    m->phase = PHASE_DRAIN;
    m->end_ns = uv_hrtime();
    uv_timer_stop(&m->duration_timer);
    uv_timer_start(&m->drain_timer, on_drain_timeout, m->opts.drain_timeout_ms, 0);
    for (unsigned i = 0; i < m->ndev; i++) {
        struct device *dev = &m->devs[i];
        uv_timer_stop(&dev->send_timer);
        /* Devices with nothing outstanding are done; the others finish on
         * their last ACK (or reconnect to get it, when resending). */
        if (dev->npend == 0 || (dev->conn == NULL && !m->opts.resend))
            dev_finish(dev);
    }
    mon_check_done(m);
}

static void on_duration(uv_timer_t *t)
{
    mon_drain(t->data);
}

static void on_report(uv_timer_t *t)
{
    stats_report_progress(t->data);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct mon *m = s->data;
    if (m->phase == PHASE_RUN && !m->opts.quiet)
        log_info("signal", NULL, NULL, "%s: draining (again to stop now)", strsignal(signum));
    if (m->phase == PHASE_RUN)
        mon_drain(m);
    else
        mon_stop(m);
}

static int exit_status(const struct mon *m)
{
    if (m->fatal)
        return EXIT_SETUP;
    if (m->st.ae || m->st.ar)
        return EXIT_NACK;
    if (m->st.aa < m->st.sent || m->st.alarms_aa < m->st.alarms_sent ||
        m->st.heartbeats_aa < m->st.heartbeats_sent || m->st.lost ||
        m->st.sent + m->st.alarms_sent + m->st.heartbeats_sent == 0)
        return EXIT_UNACKED;
    return EXIT_OK;
}

static void cleanup(struct mon *m)
{
    for (unsigned i = 0; i < m->ndev; i++) {
        struct device *dev = &m->devs[i];
        for (unsigned j = 0; j < dev->npend; j++)
            free(dev->pend[j].frame);
        free(dev->pend);
        gen_free(&dev->gen);
        X509_free(dev->cert);
        EVP_PKEY_free(dev->key);
        sk_X509_pop_free(dev->chain, X509_free);
        SSL_SESSION_free(dev->session);
    }
    free(m->devs);
    ident_cleanup();
    SSL_CTX_free(m->ctx);
}

int main(int argc, char **argv)
{
    static struct mon mon;
    struct mon *m = &mon;
    uint64_t run_tag = 0;
    int status;

    if (parse_opts(argc, argv, &m->opts) < 0) {
        fprintf(stderr, "Try 'cms-monitor --help'.\n");
        return EXIT_SETUP;
    }
    if (m->opts.quiet)
        log_set_level(LOG_WARN);
    signal(SIGPIPE, SIG_IGN);
    if (getrandom(&run_tag, sizeof run_tag, 0) != (ssize_t)sizeof run_tag)
        run_tag = uv_hrtime() ^ (uint64_t)getpid();
    if (m->opts.seed == 0)
        m->opts.seed = run_tag * 0x9E3779B97F4A7C15ULL + 1;

    m->loop = uv_default_loop();
    uv_timer_init(m->loop, &m->ramp_timer);
    uv_timer_init(m->loop, &m->report_timer);
    uv_timer_init(m->loop, &m->duration_timer);
    uv_timer_init(m->loop, &m->drain_timer);
    uv_signal_init(m->loop, &m->sigint);
    uv_signal_init(m->loop, &m->sigterm);
    m->ramp_timer.data = m->report_timer.data = m->duration_timer.data = m;
    m->drain_timer.data = m->sigint.data = m->sigterm.data = m;

    m->ctx = ident_make_ctx(&m->opts);
    if (m->ctx == NULL || resolve(m) < 0 || setup_devices(m, run_tag) < 0) {
        m->fatal = 1;
        m->phase = PHASE_STOP;
        m->handles_closed = 1;
        uv_walk(m->loop, walk_close, NULL);
        uv_run(m->loop, UV_RUN_DEFAULT);
        cleanup(m);
        return EXIT_SETUP;
    }
    raise_nofile(m->ndev);

    uv_update_time(m->loop); /* loading identities may have taken a while */
    m->start_ns = m->prev_ns = uv_hrtime();
    m->cpu_start = stats_cpu_seconds();
    uv_signal_start(&m->sigint, on_signal, SIGINT);
    uv_signal_start(&m->sigterm, on_signal, SIGTERM);
    if (!m->opts.quiet)
        uv_timer_start(&m->report_timer, on_report, m->opts.report_ms, m->opts.report_ms);
    if (m->opts.duration > 0)
        uv_timer_start(&m->duration_timer, on_duration, (uint64_t)(m->opts.duration * 1000.0), 0);
    for (unsigned i = 0; i < m->ndev; i++)
        dev_enqueue(&m->devs[i]);

    uv_run(m->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(m->loop) != 0)
        log_warn("loop_busy", NULL, NULL, "handles still open at exit");

    status = exit_status(m);
    stats_report_final(m, status);
    cleanup(m);
    return status;
}
