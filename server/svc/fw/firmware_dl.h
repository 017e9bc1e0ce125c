/*
 * firmware_dl.h - one device's image download (GET /fw/v1/images/:sha256),
 * shared by the two files that carry it: firmware_image.c (authorization,
 * serving, the end of the request) and firmware_cache.c (the local cache
 * file: opened and matched against the workers' verified records, hashed
 * again on the thread pool, or rebuilt from the database chunks). Internal
 * to server/svc/fw.
 *
 * Thread: the worker loop's thread; the thread-pool jobs touch only their
 * own fw_dl while fs_busy is set.
 */
#ifndef CMS_FIRMWARE_DL_H
#define CMS_FIRMWARE_DL_H

#include <stdbool.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "firmware_int.h"
#include "http.h"

enum dl_phase { DL_AUTH = 0, DL_OPEN, DL_VERIFY, DL_BUILD, DL_SERVE, DL_DONE };

typedef struct fw_dl {
    https_req *r;
    fw_worker *w;
    enum dl_phase phase;
    uint8_t sha[32];
    char hex[65];
    char path[CONFIG_STR + 80];
    char tmp_path[CONFIG_STR + 120];
    int64_t release_id, store_gen;
    uint64_t length;
    unsigned nchunks;
    http_range rng;
    char etag[HTTP_ETAG_SIZE];
    /* file being served / verified / written */
    uv_file fd;
    uv_fs_t fs;
    bool fs_busy; /* a uv_fs request or the verify job is in flight */
    uv_work_t work;
    /* identity of the file we serve from (checked after every block read) */
    uint64_t f_dev, f_ino, f_size;
    int64_t f_mtime_ns, f_ctime_ns;
    int verify_ok;
    uint8_t verify_digest[32];
    /* build from the database */
    unsigned seq;
    EVP_MD_CTX *md;
    uint64_t built;
    unsigned char *buf; /* FW_CHUNK_BYTES (build) or FW_BLOCK_BYTES (serve) */
    size_t buf_len;
    /* serving: [pos, end) is still to send; the block at rpos is read while
     * the one before it drains to the peer */
    uint64_t pos, end, sent, rpos;
    unsigned char *sbuf[2]; /* FW_BLOCK_BYTES each: one read while one is sent */
    unsigned rd;            /* sbuf index the read in flight fills */
    bool ready;             /* sbuf[ready_idx] holds [pos, pos + ready_len), checked */
    unsigned ready_idx;
    size_t ready_at, ready_len; /* offset in that buffer, length */
    bool streaming, ended;
    uv_timer_t timer;
    bool timer_on;
    uint64_t serve_started, last_progress; /* uv_now() */
} fw_dl;

/* ---- firmware_image.c ---- */

/* A thread-pool or file-system job of d came back: false when the download
 * ended meanwhile (d is then released and must not be touched). */
bool fw__dl_fs_back(fw_dl *d);
/* Releases d once nothing is in flight any more. */
void fw__dl_release(fw_dl *d);
/* Answers with an error (before streaming began) and releases d. */
void fw__dl_fail(fw_dl *d, int status, const char *error, const char *detail);
/* Streams the answer from the verified cache file open in d->fd. */
void fw__dl_serve(fw_dl *d);

/* ---- firmware_cache.c ---- */

/*
 * After authorization: serves from the cache file when a worker verified it
 * for this store_gen and it is unchanged (fw__dl_serve), hashes it again
 * when it changed or the record is old, or rebuilds it from the database
 * chunks. Every path ends in fw__dl_serve or fw__dl_fail.
 */
void fw__dl_open(fw_dl *d);
/* Logs and audits event (the image does not match its SHA-256 in where)
 * and forgets the cache record of d's image. */
void fw__dl_tampered(fw_dl *d, const char *event, const char *where);

#endif
