/*
 * ratelimit.h - token buckets per key (a peer's address), bounded in memory.
 *
 * Each key gets a bucket of `burst` tokens, refilled evenly at `per_minute`
 * tokens a minute; a request takes one token or is refused. The table holds
 * at most `slots` keys (rounded up to a power of two, in sets of 8): when a
 * set is full, the key seen least recently in it is forgotten (so a flood of
 * distinct addresses can reset buckets: pair this with a global limit).
 * Keys are hashed with a random per-table seed.
 *
 * Refusals are counted per key for reporting: the first refusal of an
 * episode is reported at once, then at most one report per `report_ms`
 * carrying the number of refusals since the last one, so a flood makes a few
 * log lines, not one per request.
 *
 * Thread: any; a table has its own mutex and may be shared by the workers.
 */
#ifndef CMS_RATELIMIT_H
#define CMS_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct rl_table rl_table;

typedef struct rl_verdict {
    uint64_t retry_ms;   /* refused: milliseconds until the next token */
    bool report;         /* refused: log this refusal (see above) */
    uint64_t suppressed; /* with report: refusals of this key not reported before */
} rl_verdict;

/* A table, or NULL on allocation failure. per_minute > 0, burst >= 1, slots >= 8. */
rl_table *rl_new(size_t slots, double per_minute, double burst, uint64_t report_ms);
/* Frees t (NULL allowed). */
void rl_free(rl_table *t);

/*
 * Takes a token for key (len bytes, borrowed; keys longer than 63 bytes are
 * cut to 63) at now_ms (a monotonic clock). Returns true when allowed; false
 * when refused, with *v filled in (v may be NULL).
 */
bool rl_take(rl_table *t, const void *key, size_t len, uint64_t now_ms, rl_verdict *v);

#endif
