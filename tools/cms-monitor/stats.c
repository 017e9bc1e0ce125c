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
    double cpu = stats_cpu_seconds() - m->cpu_start;

    if (dt <= 0)
        dt = 1e-9;
    fprintf(stderr,
            "[%7.1fs] conns %u/%u sent %" PRIu64 " (%.0f/s) aa %" PRIu64 " (%.0f/s) ae %" PRIu64
            " ar %" PRIu64 " resent %" PRIu64 " reconn %" PRIu64 " pending %" PRIu64
            " lat ms p50 %.2f p99 %.2f max %.2f cpu %.2fs (%.0f%%)\n",
            t, m->active, m->ndev, s->sent, (double)(s->sent - p->sent) / dt, s->aa,
            (double)(s->aa - p->aa) / dt, s->ae, s->ar, s->resent, s->reconnects, m->pending,
            ms(hist_quantile(&m->ihist, 0.5)), ms(hist_quantile(&m->ihist, 0.99)),
            ms(m->ihist.max_us), cpu, t > 0 ? 100.0 * cpu / t : 0.0);
    m->prev = m->st;
    m->prev_ns = now;
    memset(&m->ihist, 0, sizeof m->ihist);
}

static void setu(json_t *o, const char *k, uint64_t v)
{
    json_object_set_new(o, k, json_integer((json_int_t)v));
}

static void setf(json_t *o, const char *k, double v)
{
    json_object_set_new(o, k, json_real(v));
}

void stats_report_final(struct mon *m, int status)
{
    const struct mon_stats *s = &m->st;
    const struct hist *h = &m->hist;
    uint64_t now = uv_hrtime();
    /* Throughput window: start to the last ACK (or to the stop when none came). */
    uint64_t end = m->last_ack_ns ? m->last_ack_ns : (m->end_ns ? m->end_ns : now);
    double el = (double)(end - m->start_ns) / 1e9;
    double wall = (double)(now - m->start_ns) / 1e9;
    double u, sy;
    uint64_t all = s->sent + s->alarms_sent + s->heartbeats_sent;
    uint64_t answered = s->aa + s->alarms_aa + s->heartbeats_aa + s->ae + s->ar;
    uint64_t unacked = all > answered ? all - answered : 0;

    cpu_times(&u, &sy);
    double run_cpu = u + sy - m->cpu_start;
    if (el <= 0)
        el = 1e-9;
    if (wall <= 0)
        wall = 1e-9;
    if (m->opts.json) {
        json_t *o = json_object(), *lat = json_object(), *cpu = json_object();
        setu(o, "devices", m->ndev);
        setu(o, "devices_acked", m->devs_up);
        setf(o, "elapsed_s", el);
        setf(o, "wall_s", wall);
        setu(o, "sent", s->sent);
        setu(o, "acked_aa", s->aa);
        setu(o, "ae", s->ae);
        setu(o, "ar", s->ar);
        setu(o, "unacked", unacked);
        setu(o, "resent", s->resent);
        setu(o, "lost", s->lost);
        setu(o, "reconnects", s->reconnects);
        setu(o, "drops", s->drops);
        setu(o, "conn_failures", s->conn_failures);
        setu(o, "handshakes", s->handshakes);
        setu(o, "resumed", s->resumed);
        setu(o, "ack_timeouts", s->ack_timeouts);
        setu(o, "unmatched_acks", s->unmatched);
        setu(o, "bad_acks", s->bad_acks);
        setu(o, "obs_acked", s->obs_acked);
        setf(o, "msgs_per_s", (double)s->aa / el);
        setf(o, "obs_per_s", (double)s->obs_acked / el);
        setu(o, "samples_acked", s->samples_acked);
        setf(o, "samples_per_s", (double)s->samples_acked / el);
        setu(o, "alarms_sent", s->alarms_sent);
        setu(o, "alarms_aa", s->alarms_aa);
        setu(o, "heartbeats_sent", s->heartbeats_sent);
        setu(o, "heartbeats_aa", s->heartbeats_aa);
        {
            json_t *al = json_object();
            const struct hist *ah = &m->ahist;
            setf(al, "p50", ms(hist_quantile(ah, 0.5)));
            setf(al, "p99", ms(hist_quantile(ah, 0.99)));
            setf(al, "max", ms(ah->max_us));
            setu(al, "n", ah->n);
            /* the same for the alarms sent once every device was connected (+ --steady-after) */
            json_t *st = json_object();
            ah = &m->ahist_steady;
            setf(st, "p50", ms(hist_quantile(ah, 0.5)));
            setf(st, "p99", ms(hist_quantile(ah, 0.99)));
            setf(st, "max", ms(ah->max_us));
            setu(st, "n", ah->n);
            json_object_set_new(al, "steady", st);
            json_object_set_new(o, "alarm_latency_ms", al);
        }
        setf(lat, "p50", ms(hist_quantile(h, 0.5)));
        setf(lat, "p90", ms(hist_quantile(h, 0.9)));
        setf(lat, "p99", ms(hist_quantile(h, 0.99)));
        setf(lat, "p999", ms(hist_quantile(h, 0.999)));
        setf(lat, "max", ms(h->max_us));
        setf(lat, "mean", h->n ? ms(h->sum_us / h->n) : 0.0);
        setu(lat, "n", h->n);
        json_object_set_new(o, "latency_ms", lat);
        setf(cpu, "user_s", u);
        setf(cpu, "sys_s", sy);
        setf(cpu, "setup_s", m->cpu_start);
        setf(cpu, "run_s", run_cpu);
        setf(cpu, "share_of_one_core", run_cpu / wall);
        json_object_set_new(o, "cpu", cpu);
        setu(o, "bytes_out", s->bytes_out);
        setu(o, "bytes_in", s->bytes_in);
        setu(o, "exit_status", (uint64_t)status);
        json_dumpf(o, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
        fputc('\n', stdout);
        json_decref(o);
        fflush(stdout);
        return;
    }
    printf("cms-monitor: %u device(s) (%u got ACKs), %.1f s, exit status %d\n", m->ndev, m->devs_up,
           el, status);
    printf("  sent          %" PRIu64 " (%.1f msg/s acked)\n", s->sent, (double)s->aa / el);
    printf("  acked AA      %" PRIu64 "\n", s->aa);
    printf("  AE / AR       %" PRIu64 " / %" PRIu64 "\n", s->ae, s->ar);
    printf("  unacked       %" PRIu64 "\n", unacked);
    printf("  resent        %" PRIu64 "\n", s->resent);
    printf("  reconnects    %" PRIu64 " (drops %" PRIu64 ", failed attempts %" PRIu64
           ", ack timeouts %" PRIu64 ")\n",
           s->reconnects, s->drops, s->conn_failures, s->ack_timeouts);
    printf("  handshakes    %" PRIu64 " (%" PRIu64 " resumed)\n", s->handshakes, s->resumed);
    if (s->unmatched || s->bad_acks)
        printf("  odd ACKs      %" PRIu64 " unmatched, %" PRIu64 " unparseable\n", s->unmatched,
               s->bad_acks);
    printf("  observations  %" PRIu64 " acked (%.1f obs/s)\n", s->obs_acked,
           (double)s->obs_acked / el);
    if (s->samples_acked)
        printf("  wave samples  %" PRIu64 " acked (%.1f samples/s)\n", s->samples_acked,
               (double)s->samples_acked / el);
    if (s->alarms_sent || s->heartbeats_sent)
        printf("  alarms        %" PRIu64 " sent, %" PRIu64 " AA (ACK ms p50 %.2f p99 %.2f max "
               "%.2f); heartbeats %" PRIu64 " sent, %" PRIu64 " AA\n",
               s->alarms_sent, s->alarms_aa, ms(hist_quantile(&m->ahist, 0.5)),
               ms(hist_quantile(&m->ahist, 0.99)), ms(m->ahist.max_us), s->heartbeats_sent,
               s->heartbeats_aa);
    printf("  latency ms    p50 %.2f  p90 %.2f  p99 %.2f  max %.2f  (n=%" PRIu64 ")\n",
           ms(hist_quantile(h, 0.5)), ms(hist_quantile(h, 0.9)), ms(hist_quantile(h, 0.99)),
           ms(h->max_us), h->n);
    printf("  cpu           %.2f s user + %.2f s sys; run %.2f s = %.1f%% of one core over "
           "%.1f s (setup %.2f s)\n",
           u, sy, run_cpu, 100.0 * run_cpu / wall, wall, m->cpu_start);
    fflush(stdout);
}
