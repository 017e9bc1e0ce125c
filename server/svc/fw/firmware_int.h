/*
 * firmware_int.h - shared between the firmware service's files only
 * (server/svc/fw/). Not a public interface.
 */
#ifndef CMS_FIRMWARE_INT_H
#define CMS_FIRMWARE_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <pthread.h>

#include <jansson.h>

#include "firmware.h"
#include "https.h"
#include "store.h"
#include "svc.h"
#include "../svc_int.h"

/* A cache file whose SHA-256 a worker verified: its identity, the store
 * generation it was checked against, and when. */
typedef struct fw_cache_entry {
    struct fw_cache_entry *next;
    uint8_t sha256[32];
    int64_t store_gen;
    uint64_t length;
    uint64_t dev, ino, size;
    int64_t mtime_ns, ctime_ns;
    uint64_t verified_at; /* uv_hrtime() / 1e6 when its SHA-256 was checked */
} fw_cache_entry;

/* Every worker's verified cache files, so that a file verified (or built)
 * by one worker is served by all without hashing it again. Entries are
 * copied in and out under the lock: no pointer into the list escapes it. */
typedef struct fw_cache {
    pthread_mutex_t lock;
    fw_cache_entry *head; /* most recently verified first */
    size_t n;
} fw_cache;

struct fw_worker {
    const fw_keys *keys;   /* borrowed, shared read-only (keys->cache: locked) */
    const cms_config *cfg; /* borrowed */
    uv_loop_t *loop;
    unsigned worker_id;
    uint64_t tmp_seq; /* temp file names */
};

#define FW_CHUNK_BYTES (1u << 20)   /* image bytes per database row */
#define FW_BLOCK_BYTES (256u << 10) /* verification/serving block of the local cache */
#define FW_CACHE_ENTRIES 32
/* A verified cache file is hashed again (whole) at least this often. */
#define FW_CACHE_REVERIFY_MS (3600u * 1000)

/* The worker's firmware state of r (NULL when firmware is not set up). */
static inline fw_worker *fw__worker(https_req *r)
{
    svc_state *st = r->ctx->svc;
    return st ? (fw_worker *)st->fw : NULL;
}

static inline store_t *fw__store(https_req *r)
{
    return ((svc_state *)r->ctx->svc)->store;
}

/* The room's answers to SQLSTATEs (svc__db_error): 400 class 22, 404 P0002,
 * 403 CF001 (two-person rule) and 42501, 409 CF002 and class 23. */
extern const svc__sqlstate fw__sqlstates[];
/* Parses a positive decimal id (release ids). */
bool fw__parse_id(const char *s, int64_t *out);
/* Decodes hex text (from encode(x,'hex')) into a new buffer (free()). */
int fw__unhex_alloc(const char *hex, unsigned char **out, size_t *out_len);

/* The shared cache record (firmware_cache.c): NULL on allocation failure. */
fw_cache *fw__cache_new(void);
void fw__cache_free(fw_cache *c);

#endif
