/*
 * ratelimit.c - token buckets per key in a fixed, set-associative table.
 * See ratelimit.h for the contract.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "ratelimit.h"

#define RL_WAYS 8
#define RL_KEY_MAX 63

typedef struct rl_slot {
    uint64_t last_ms;     /* last time the bucket was refilled (0 = empty slot) */
    uint64_t reported_ms; /* last report of a refusal, 0 = none in this episode */
    uint64_t refused;     /* refusals since the last report */
    double tokens;
    uint8_t len;
    char key[RL_KEY_MAX];
} rl_slot;

struct rl_table {
    pthread_mutex_t lock;
    rl_slot *slots;
    size_t nsets; /* a power of two */
    double per_ms, burst;
    uint64_t report_ms, seed;
};

rl_table *rl_new(size_t slots, double per_minute, double burst, uint64_t report_ms)
{
    if (!(per_minute > 0) || !(burst >= 1) || slots < RL_WAYS)
        return NULL;
    rl_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    size_t nsets = 1;
    while (nsets * RL_WAYS < slots)
        nsets <<= 1;
    t->slots = calloc(nsets * RL_WAYS, sizeof(*t->slots));
    if (!t->slots || pthread_mutex_init(&t->lock, NULL) != 0) {
        free(t->slots);
        free(t);
        return NULL;
    }
    t->nsets = nsets;
    t->per_ms = per_minute / 60000.0;
    t->burst = burst;
    t->report_ms = report_ms;
    if (RAND_bytes((unsigned char *)&t->seed, sizeof(t->seed)) != 1)
        t->seed = (uint64_t)(uintptr_t)t ^ 0x9e3779b97f4a7c15ULL;
    return t;
}

void rl_free(rl_table *t)
{
    if (!t)
        return;
    pthread_mutex_destroy(&t->lock);
    free(t->slots);
    free(t);
}

/* FNV-1a over the key, started from the table's random seed, then mixed. */
static uint64_t rl_hash(const rl_table *t, const unsigned char *k, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL ^ t->seed;
    for (size_t i = 0; i < n; i++) {
        h ^= k[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

/* The key's slot in its set: found, else an empty one, else the least recently seen. */
static rl_slot *rl_slot_for(rl_table *t, const char *key, size_t len, bool *fresh)
{
    rl_slot *set =
        t->slots + (rl_hash(t, (const unsigned char *)key, len) & (t->nsets - 1)) * RL_WAYS;
    rl_slot *victim = &set[0];
    for (int i = 0; i < RL_WAYS; i++) {
        rl_slot *s = &set[i];
        if (s->last_ms && s->len == len && memcmp(s->key, key, len) == 0) {
            *fresh = false;
            return s;
        }
        if (victim->last_ms && (!s->last_ms || s->last_ms < victim->last_ms))
            victim = s;
    }
    *fresh = true;
    return victim;
}

bool rl_take(rl_table *t, const void *key, size_t len, uint64_t now_ms, rl_verdict *v)
{
    bool fresh, ok;
    if (len > RL_KEY_MAX)
        len = RL_KEY_MAX;
    if (now_ms == 0)
        now_ms = 1; /* 0 marks an empty slot */
    pthread_mutex_lock(&t->lock);
    rl_slot *s = rl_slot_for(t, key, len, &fresh);
    if (fresh) {
        memset(s, 0, sizeof(*s));
        memcpy(s->key, key, len);
        s->len = (uint8_t)len;
        s->tokens = t->burst;
    } else if (now_ms > s->last_ms) {
        s->tokens = fmin(t->burst, s->tokens + (double)(now_ms - s->last_ms) * t->per_ms);
    }
    if (now_ms > s->last_ms) /* a fresh slot's is 0 */
        s->last_ms = now_ms;
    if (s->tokens >= 1.0) {
        s->tokens -= 1.0;
        ok = true;
        if (s->tokens >= 1.0)
            s->reported_ms = 0; /* the episode is over once the bucket refills */
    } else {
        ok = false;
        s->refused++;
        if (v) {
            v->retry_ms = (uint64_t)ceil((1.0 - s->tokens) / t->per_ms);
            v->report = !s->reported_ms || now_ms - s->reported_ms >= t->report_ms;
            v->suppressed = v->report ? s->refused - 1 : 0;
        }
        if (!v || v->report) {
            s->reported_ms = now_ms;
            s->refused = 0;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return ok;
}
