/*
 * store_devcache.c - device checks answered from memory (one table per worker).
 *
 * Every new TLS session (resumed ones too) is checked against the registry:
 * device status, the certificate it presented, its identifiers
 * (cms.device_check). Monitors reconnect all the time, so most checks ask
 * again what was just answered; measured, the query is ~40 % of the cost of
 * a resumed session (docs/benchmarks.md, P4).
 *
 * Only "active" verdicts are kept, keyed by (serial, certificate SHA-256),
 * for at most device_cache_ttl_s. Refusals always ask the database, so an
 * operator who activates a device sees it admitted at once. A kept verdict
 * must never outlive the facts it came from, so:
 *   - sql/010 triggers NOTIFY cms_registry with the serial on any change of a
 *     device's status, certificates or identifiers; the serial's entries are
 *     dropped when it arrives (an empty payload drops everything);
 *   - nothing is kept unless the control connection LISTENs and the schema
 *     has those triggers (cms.registry_notify_ready()); when that connection
 *     is lost, everything is dropped (notifications may be missed while
 *     down) and nothing is kept until it is back;
 *   - a check answered after an invalidation that happened while it was in
 *     flight is used but not kept (generation counter), so a result computed
 *     before a revocation committed can not be kept after its notification.
 * Memory: one small allocation per (device, certificate), bounded by
 * DC_MAX_ENTRIES; expired entries are swept every DC_SWEEP_MS.
 */
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>

#include "cms_err.h"
#include "log.h"
#include "store_int.h"

#define DC_BUCKETS 4096u /* power of two */
#define DC_MAX_ENTRIES 65536u
#define DC_SWEEP_MS 10000u
#define DC_FP_HEX 64
#define DC_FP_LEN 32 /* kept as bytes: 32 B less per entry than the hex */

struct store__dc_entry {
    struct store__dc_entry *next;
    uint64_t expires; /* uv_now() ms */
    int64_t id;
    uint32_t hash;
    uint8_t nidents;
    unsigned char fp[DC_FP_LEN];
    char strings[]; /* serial '\0' then each identifier '\0' */
};

static uint32_t hash_serial(const char *serial)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)serial; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h;
}

static bool dc_on(const store_t *s)
{
    return s->cfg.device_cache_ttl_s > 0 && s->dc_ready && s->dc_buckets;
}

static void entry_unlink_free(store_t *s, store__dc_entry **pp)
{
    store__dc_entry *e = *pp;
    *pp = e->next;
    free(e);
    s->dc_n--;
}

void store__dc_clear(store_t *s)
{
    s->dc_gen++;
    if (!s->dc_buckets)
        return;
    for (size_t b = 0; b < DC_BUCKETS; b++)
        while (s->dc_buckets[b])
            entry_unlink_free(s, &s->dc_buckets[b]);
}

void store__dc_free(store_t *s)
{
    store__dc_clear(s);
    free(s->dc_buckets);
    s->dc_buckets = NULL;
}

void store__dc_forget(store_t *s, const char *serial)
{
    s->dc_gen++;
    if (!s->dc_buckets)
        return;
    uint32_t h = hash_serial(serial);
    for (store__dc_entry **pp = &s->dc_buckets[h & (DC_BUCKETS - 1)]; *pp;) {
        if ((*pp)->hash == h && strcmp((*pp)->strings, serial) == 0)
            entry_unlink_free(s, pp);
        else
            pp = &(*pp)->next;
    }
}

/* The registry changed (payload = serial), or may have (NULL: reconnected;
 * "": a TRUNCATE). */
static void on_registry(void *ctx, const char *payload)
{
    store_t *s = ctx;
    if (!payload || !*payload) {
        if (s->dc_n > 0)
            log_debug("device_cache", NULL, NULL, "dropped %zu verdict(s): %s", s->dc_n,
                      payload ? "registry truncated" : "control connection was re-established");
        store__dc_clear(s);
    } else {
        store__dc_forget(s, payload);
    }
}

static void on_ready(void *ctx, int status, const store_rows *rows)
{
    store_t *s = ctx;
    bool ok = status == CMS_OK && store_rows_count(rows) == 1 &&
              strcmp(store_rows_text(rows, 0, 0), "t") == 0;
    if (status == CMS_EPROTO && !s->dc_warned) { /* the function is missing */
        s->dc_warned = true;
        log_warn("device_cache", NULL, NULL,
                 "cms.registry_notify_ready() unavailable (schema before sql/010: run `cmsctl db "
                 "migrate`): every connection is checked against the database");
    }
    s->dc_ready = ok && !s->dc_listen_failed && store__conn_up(&s->control);
}

void store__dc_init(store_t *s)
{
    if (s->cfg.device_cache_ttl_s == 0)
        return;
    s->dc_buckets = calloc(DC_BUCKETS, sizeof(*s->dc_buckets));
    if (!s->dc_buckets) {
        log_warn("device_cache", NULL, NULL, "out of memory: device checks are not cached");
        return;
    }
    if (store_listen(s, "cms_registry", on_registry, s) != CMS_OK) {
        free(s->dc_buckets);
        s->dc_buckets = NULL;
    }
}

void store__dc_on_up(store_t *s)
{
    s->dc_listen_failed = false;
    if (s->dc_buckets) /* after the LISTENs, which ctl_on_up queued first */
        (void)store_query(s, "SELECT cms.registry_notify_ready()", 0, NULL, on_ready, s);
}

void store__dc_on_down(store_t *s)
{
    s->dc_ready = false;
    store__dc_clear(s);
}

/* The fingerprint's 32 bytes from its 64 hex digits: 0, or -1 for anything else. */
static int fp_bytes(const char *hex, unsigned char out[DC_FP_LEN])
{
    size_t n = 0;
    if (!hex || strlen(hex) != DC_FP_HEX ||
        OPENSSL_hexstr2buf_ex(out, DC_FP_LEN, &n, hex, '\0') != 1 || n != DC_FP_LEN)
        return -1;
    return 0;
}

/* The link to the entry for (serial, fingerprint) in its bucket, or NULL. */
static store__dc_entry **find(store_t *s, uint32_t h, const char *serial,
                              const unsigned char fp[DC_FP_LEN])
{
    for (store__dc_entry **pp = &s->dc_buckets[h & (DC_BUCKETS - 1)]; *pp; pp = &(*pp)->next)
        if ((*pp)->hash == h && strcmp((*pp)->strings, serial) == 0 &&
            memcmp((*pp)->fp, fp, DC_FP_LEN) == 0)
            return pp;
    return NULL;
}

void store__dc_put(store_t *s, uint64_t gen, const char *fingerprint, const store_device *dev)
{
    unsigned char fp[DC_FP_LEN];
    if (!dc_on(s) || gen != s->dc_gen || fp_bytes(fingerprint, fp) != 0 ||
        strcmp(dev->status, "active") != 0 || s->dc_n >= DC_MAX_ENTRIES)
        return;
    size_t need = strlen(dev->serial) + 1;
    for (size_t i = 0; i < dev->nidents; i++)
        need += strlen(dev->idents[i]) + 1;
    uint32_t h = hash_serial(dev->serial);
    store__dc_entry **old = find(s, h, dev->serial, fp);
    if (old)
        entry_unlink_free(s, old); /* replaced below */
    store__dc_entry **head = &s->dc_buckets[h & (DC_BUCKETS - 1)];
    store__dc_entry *e = malloc(sizeof(*e) + need);
    if (!e)
        return;
    e->expires = uv_now(s->loop) + (uint64_t)s->cfg.device_cache_ttl_s * 1000;
    e->id = dev->id;
    e->hash = h;
    e->nidents = (uint8_t)dev->nidents;
    memcpy(e->fp, fp, DC_FP_LEN);
    char *p = e->strings;
    size_t n = strlen(dev->serial) + 1;
    memcpy(p, dev->serial, n);
    p += n;
    for (size_t i = 0; i < dev->nidents; i++) {
        n = strlen(dev->idents[i]) + 1;
        memcpy(p, dev->idents[i], n);
        p += n;
    }
    e->next = *head;
    *head = e;
    s->dc_n++;
}

bool store__dc_get(store_t *s, const char *serial, const char *fingerprint, store_device *dev)
{
    unsigned char fp[DC_FP_LEN];
    if (!dc_on(s) || !serial || fp_bytes(fingerprint, fp) != 0)
        return false;
    store__dc_entry **pp = find(s, hash_serial(serial), serial, fp);
    if (!pp)
        return false;
    store__dc_entry *e = *pp;
    if (uv_now(s->loop) >= e->expires) {
        entry_unlink_free(s, pp);
        return false;
    }
    memset(dev, 0, sizeof(*dev));
    dev->id = e->id;
    snprintf(dev->serial, sizeof(dev->serial), "%s", e->strings);
    snprintf(dev->status, sizeof(dev->status), "active");
    const char *p = e->strings + strlen(e->strings) + 1;
    for (size_t i = 0; i < e->nidents && i < sizeof(dev->idents) / sizeof(dev->idents[0]); i++) {
        snprintf(dev->idents[i], sizeof(dev->idents[i]), "%s", p);
        p += strlen(p) + 1;
        dev->nidents = i + 1;
    }
    return true;
}

void store__dc_sweep(store_t *s, uint64_t now)
{
    if (!s->dc_buckets || s->dc_n == 0 || now - s->dc_swept_at < DC_SWEEP_MS)
        return;
    s->dc_swept_at = now;
    for (size_t b = 0; b < DC_BUCKETS; b++)
        for (store__dc_entry **pp = &s->dc_buckets[b]; *pp;) {
            if (now >= (*pp)->expires)
                entry_unlink_free(s, pp);
            else
                pp = &(*pp)->next;
        }
}

size_t store_device_cache_size(const store_t *s)
{
    return s->dc_n;
}
