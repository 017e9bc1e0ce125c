/*
 * stats.c - ACK latency histogram and the progress / final reports.
 *
 * The histogram is HDR-like: values in microseconds, exact below 64 us, then
 * 32 linear sub-buckets per power of two, so any quantile is known within
 * 1/32 (about 3 %) with a fixed 1.3k-bucket array and O(1) insertion,
 * whatever the number of samples. Quantiles report the upper edge of the
 * bucket (never better than the truth), capped at the exact maximum.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include <jansson.h>

#include "monitor.h"

static unsigned bucket_of(uint64_t us)
{
    if (us < 2 * HIST_SUB)
        return (unsigned)us;
    unsigned e = 63u - (unsigned)__builtin_clzll(us); /* >= HIST_SUB_BITS + 1 */
    unsigned shift = e - HIST_SUB_BITS;
    unsigned sub = (unsigned)(us >> shift) - HIST_SUB;
    unsigned idx = 2 * HIST_SUB + (e - (HIST_SUB_BITS + 1)) * HIST_SUB + sub;
    return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

/* Highest value that falls in bucket idx. */
static uint64_t bucket_high(unsigned idx)
{
    if (idx < 2 * HIST_SUB)
        return idx;
    unsigned group = (idx - 2 * HIST_SUB) / HIST_SUB;
    unsigned sub = (idx - 2 * HIST_SUB) % HIST_SUB;
    unsigned shift = group + 1;
    return (((uint64_t)HIST_SUB + sub) << shift) + ((uint64_t)1 << shift) - 1;
}

void hist_add(struct hist *h, uint64_t us)
{
    h->b[bucket_of(us)]++;
    h->n++;
    h->sum_us += us;
    if (us > h->max_us)
        h->max_us = us;
}

uint64_t hist_quantile(const struct hist *h, double q)
{
    if (h->n == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)h->n + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t v = bucket_high(i);
            return v < h->max_us ? v : h->max_us;
        }
    }
    return h->max_us;
}

void hist_merge(struct hist *into, const struct hist *from)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        into->b[i] += from->b[i];
    into->n += from->n;
    into->sum_us += from->sum_us;
    if (from->max_us > into->max_us)
        into->max_us = from->max_us;
}

static void cpu_times(double *user, double *sys)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    *sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

double stats_cpu_seconds(void)
{
    double u, s;
    cpu_times(&u, &s);
    return u + s;
}

static uint64_t pending_total(const struct mon *m)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < m->ndev; i++)
        n += m->devs[i].npend;
    return n;
}

static double ms(uint64_t us)
{
    return (double)us / 1000.0;
}

void stats_report_progress(struct mon *m)
{
    uint64_t now = uv_hrtime();
    double dt = (double)(now - m->prev_ns) / 1e9;
    double t = (double)(now - m->start_ns) / 1e9;
    const struct mon_stats *s = &m->st, *p = &m->prev;
    double cpu = stats_cpu_seconds();

    if (dt <= 0)
        dt = 1e-9;
    fprintf(stderr,
            "[%7.1fs] conns %u/%u sent %" PRIu64 " (%.0f/s) aa %" PRIu64 " (%.0f/s) ae %" PRIu64
            " ar %" PRIu64 " resent %" PRIu64 " reconn %" PRIu64 " pending %" PRIu64
            " lat ms p50 %.2f p99 %.2f max %.2f cpu %.2fs (%.0f%%)\n",
            t, m->active, m->ndev, s->sent, (double)(s->sent - p->sent) / dt, s->aa,
            (double)(s->aa - p->aa) / dt, s->ae, s->ar, s->resent, s->reconnects, pending_total(m),
            ms(hist_quantile(&m->ihist, 0.5)), ms(hist_quantile(&m->ihist, 0.99)),
            ms(m->ihist.max_us), cpu, t > 0 ? 100.0 * cpu / t : 0.0);
    m->prev = m->st;
    m->prev_ns = now;
    memset(&m->ihist, 0, sizeof m->ihist);
}

void stats_report_final(struct mon *m, int status)
{
    const struct mon_stats *s = &m->st;
    const struct hist *h = &m->hist;
    uint64_t end = m->end_ns ? m->end_ns : uv_hrtime();
    double el = (double)(end - m->start_ns) / 1e9;
    double u, sy;
    uint64_t unacked = s->sent - (s->aa + s->ae + s->ar);

    cpu_times(&u, &sy);
    if (el <= 0)
        el = 1e-9;
    if (m->opts.json) {
        json_t *o = json_pack(
            "{s:I, s:f, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I,"
            " s:f, s:f, s:{s:f, s:f, s:f, s:f, s:f, s:f, s:I},"
            " s:{s:f, s:f, s:f, s:f}, s:I, s:I, s:i}",
            "devices", (json_int_t)m->ndev, "elapsed_s", el, "sent", (json_int_t)s->sent,
            "acked_aa", (json_int_t)s->aa, "ae", (json_int_t)s->ae, "ar", (json_int_t)s->ar,
            "resent", (json_int_t)s->resent, "unacked", (json_int_t)unacked, "reconnects",
            (json_int_t)s->reconnects, "drops", (json_int_t)s->drops, "conn_failures",
            (json_int_t)s->conn_failures, "handshakes", (json_int_t)s->handshakes, "ack_timeouts",
            (json_int_t)s->ack_timeouts, "unmatched_acks", (json_int_t)s->unmatched, "bad_acks",
            (json_int_t)s->bad_acks, "obs_acked", (json_int_t)s->obs_acked, "msgs_per_s",
            (double)s->aa / el, "obs_per_s", (double)s->obs_acked / el, "latency_ms", "p50",
            ms(hist_quantile(h, 0.5)), "p90", ms(hist_quantile(h, 0.9)), "p99",
            ms(hist_quantile(h, 0.99)), "p999", ms(hist_quantile(h, 0.999)), "max", ms(h->max_us),
            "mean", h->n ? ms(h->sum_us / h->n) : 0.0, "n", (json_int_t)h->n, "cpu", "user_s", u,
            "sys_s", sy, "total_s", u + sy, "share_of_one_core", (u + sy) / el, "bytes_out",
            (json_int_t)s->bytes_out, "bytes_in", (json_int_t)s->bytes_in, "exit_status", status);
        if (o != NULL) {
            json_dumpf(o, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            fputc('\n', stdout);
            json_decref(o);
        }
        fflush(stdout);
        return;
    }
    printf("cms-monitor: %u device(s), %.1f s, exit status %d\n", m->ndev, el, status);
    printf("  sent          %" PRIu64 " (%.1f msg/s acked)\n", s->sent, (double)s->aa / el);
    printf("  acked AA      %" PRIu64 "\n", s->aa);
    printf("  AE / AR       %" PRIu64 " / %" PRIu64 "\n", s->ae, s->ar);
    printf("  unacked       %" PRIu64 "\n", unacked);
    printf("  resent        %" PRIu64 "\n", s->resent);
    printf("  reconnects    %" PRIu64 " (drops %" PRIu64 ", failed attempts %" PRIu64
           ", ack timeouts %" PRIu64 ")\n",
           s->reconnects, s->drops, s->conn_failures, s->ack_timeouts);
    if (s->unmatched || s->bad_acks)
        printf("  odd ACKs      %" PRIu64 " unmatched, %" PRIu64 " unparseable\n", s->unmatched,
               s->bad_acks);
    printf("  observations  %" PRIu64 " acked (%.1f obs/s)\n", s->obs_acked,
           (double)s->obs_acked / el);
    printf("  latency ms    p50 %.2f  p90 %.2f  p99 %.2f  max %.2f  (n=%" PRIu64 ")\n",
           ms(hist_quantile(h, 0.5)), ms(hist_quantile(h, 0.9)), ms(hist_quantile(h, 0.99)),
           ms(h->max_us), h->n);
    printf("  cpu           %.2f s user + %.2f s sys = %.1f%% of one core\n", u, sy,
           100.0 * (u + sy) / el);
    fflush(stdout);
}
