/*
 * firmware_image.c - GET /fw/v1/images/:sha256 for devices: authorization
 * (allowlisted for this device), a local cache verified by hash, and a
 * streamed answer (Range/206, If-Range, ETag) with memory that does not
 * grow with the image.
 *
 * Where the bytes come from:
 *   1. cms.fw_image_authorize says whether this device may have the image,
 *      and the image's length and store_gen (bumped by a trigger whenever a
 *      stored chunk is updated or deleted).
 *   2. The workers remember (one record, shared), per image, the cache file
 *      verified: the file's identity (dev, inode, size, mtime, ctime), the
 *      store_gen it was built from, and when its SHA-256 was checked.
 *   3. No record, or another store_gen: the image is (re)built from the
 *      database chunks (one store_query per chunk, written with uv_fs_write
 *      to a temp file while hashing); the whole image's SHA-256 must equal
 *      its name, else the store was tampered with: refused (500
 *      image_integrity), logged, audited (fw_image_tampered), nothing served.
 *   4. A record whose file identity changed, or older than
 *      FW_CACHE_REVERIFY_MS: the file's SHA-256 is checked again on the
 *      thread pool; a mismatch is audited (fw_cache_tampered), the file
 *      removed and rebuilt from the database.
 *   5. While serving, each block is read on the thread pool and the file's
 *      identity checked again after the read, before any of its bytes is
 *      sent (read_block_work); a change cuts the connection
 *      (https_stream_end(r, false): a truncated body) and is audited.
 * The loop never blocks on a file: opens, reads, writes and renames go
 * through uv_fs_* and whole-file hashing through uv_queue_work.
 *
 * This file: authorization (1), serving (5), the end of a request. The
 * cache file (2 to 4) is firmware_cache.c's; the download job they share is
 * in firmware_dl.h.
 *
 * Slow or stalled peers: output that has not drained for write_timeout_ms
 * ends the transfer (the peer stopped reading), and fw_download_timeout_s
 * bounds a whole request. Either way the connection is closed, and the
 * transfer logged and audited (fw_download_aborted) with the bytes sent.
 *
 * Thread: the worker loop's thread (the verify job runs on the pool and
 * only touches its own job struct).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <jansson.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "firmware_dl.h"
#include "log.h"

/* A checked block goes to TLS in slices, each flushed to the socket before
 * the next is encrypted, so that the kernel starts sending early (16, 32,
 * 64 and 128 KiB measured the same within noise in P5; 256 KiB at once was
 * slower). */
#define FW_SEND_SLICE (64 * 1024)

static void dl_serve_next(fw_dl *d);

/* ---- end of a request --------------------------------------------------------------------- */

static void dl_free(fw_dl *d)
{
    if (d->fd >= 0) {
        uv_fs_t req;
        uv_fs_close(NULL, &req, d->fd, NULL); /* synchronous: close(2) of a regular file */
        uv_fs_req_cleanup(&req);
    }
    if (d->tmp_path[0])
        unlink(d->tmp_path); /* a build that did not complete */
    EVP_MD_CTX_free(d->md);
    free(d->buf);
    free(d->sbuf[0]);
    free(d->sbuf[1]);
    free(d);
}

static void on_timer_closed(uv_handle_t *h)
{
    dl_free(h->data);
}

void fw__dl_release(fw_dl *d)
{
    if (d->fs_busy)
        return; /* the callback in flight calls us again */
    if (d->timer_on) {
        d->timer_on = false;
        uv_close((uv_handle_t *)&d->timer, on_timer_closed);
        return;
    }
    dl_free(d);
}

bool fw__dl_fs_back(fw_dl *d)
{
    d->fs_busy = false;
    if (!d->ended)
        return true;
    fw__dl_release(d);
    return false;
}

void fw__dl_fail(fw_dl *d, int status, const char *error, const char *detail)
{
    d->phase = DL_DONE;
    d->ended = true;
    https_reply_error(d->r, status, error, detail);
    fw__dl_release(d);
}

/* Ends the streamed answer (ok = every byte sent) and releases d. */
static void dl_end(fw_dl *d, bool ok, const char *why)
{
    if (d->ended)
        return;
    d->ended = true;
    d->phase = DL_DONE;
    metrics_add(CM_FW_DOWNLOADS, ok ? CM_FW_COMPLETE : CM_FW_FAILED, 1);
    if (!ok) {
        char peer[64];
        snprintf(peer, sizeof(peer), "%s", d->r->peer_addr);
        log_warn("fw_download_aborted", d->r->peer_cn, peer,
                 "image %.16s...: %s after %llu of %llu bytes", d->hex, why,
                 (unsigned long long)d->sent, (unsigned long long)d->rng.length);
        https_audit(d->r, "fw_download_aborted", d->r->peer_cn,
                    json_pack("{s:s, s:s, s:I, s:I, s:I}", "sha256", d->hex, "reason", why, "sent",
                              (json_int_t)d->sent, "expected", (json_int_t)d->rng.length,
                              "release_id", (json_int_t)d->release_id));
    } else {
        log_info("fw_download", d->r->peer_cn, d->r->peer_addr,
                 "image %.16s... %d: %llu bytes from %llu", d->hex, d->rng.status,
                 (unsigned long long)d->sent, (unsigned long long)d->rng.first);
    }
    https_stream_end(d->r, ok);
    fw__dl_release(d);
}

/* ---- serving -------------------------------------------------------------------------------- */

/*
 * Ticks while serving: the whole request is bounded by fw_download_timeout_s,
 * and output that has not drained for write_timeout_ms means the peer
 * stopped reading (stalled): both end the transfer. (The net layer's own
 * write timeout does the latter too; this keeps the guarantee local.)
 */
static void on_download_tick(uv_timer_t *t)
{
    fw_dl *d = t->data;
    uint64_t now = uv_now(d->w->loop);
    if (d->phase != DL_SERVE || d->ended)
        return;
    if (now - d->serve_started >= (uint64_t)d->w->cfg->fw_download_timeout_s * 1000) {
        dl_end(d, false, "fw_download_timeout_s exceeded");
        return;
    }
    if (https_stream_pending(d->r) <= HTTPS_STREAM_LOW_WATER)
        d->last_progress = now;
    else if (now - d->last_progress >= d->w->cfg->write_timeout_ms)
        dl_end(d, false, "stalled: output not drained for write_timeout_ms");
}

static void on_writable(https_req *r, void *ctx)
{
    (void)r;
    dl_serve_next(ctx);
}

/*
 * Thread pool: reads the block at d->rpos and checks that the file is still
 * the one whose SHA-256 was verified (device, inode, size, mtime, ctime).
 * Any write through the file system changes mtime/ctime before the new bytes
 * can be read, so a block read after a change is caught here, before it is
 * sent. The whole file is hashed again whenever its identity changed and at
 * least every FW_CACHE_REVERIFY_MS; the device checks the image's SHA-256
 * from its signed manifest anyway. (Hashing each block on every download
 * instead cost 35 % of the download rate on 2 cores: docs/benchmarks.md P5.)
 */
static bool same_file(const fw_dl *d, const struct stat *st)
{
    return (uint64_t)st->st_dev == d->f_dev && (uint64_t)st->st_ino == d->f_ino &&
           (uint64_t)st->st_size == d->f_size &&
           (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec == d->f_mtime_ns &&
           (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec == d->f_ctime_ns;
}

/*
 * The block at d->rpos into sbuf[d->rd] (preadv2 with flags), then whether the
 * file is still the verified one into d->verify_ok. False, verify_ok 0, when
 * not all of the block could be read: with RWF_NOWAIT, when the page cache
 * does not hold it all (EAGAIN or a short read), or the call is unsupported.
 */
static bool read_block(fw_dl *d, int flags)
{
    uint64_t off = d->rpos / FW_BLOCK_BYTES * FW_BLOCK_BYTES;
    size_t want = (size_t)(d->length - off < FW_BLOCK_BYTES ? d->length - off : FW_BLOCK_BYTES);
    size_t got = 0;
    struct stat st;
    d->verify_ok = 0;
    while (got < want) {
        struct iovec iov = {d->sbuf[d->rd] + got, want - got};
        ssize_t n = preadv2(d->fd, &iov, 1, (off_t)(off + got), flags);
        if (n <= 0)
            return false;
        got += (size_t)n;
    }
    d->verify_ok = fstat(d->fd, &st) == 0 && same_file(d, &st);
    return true;
}

static void read_block_work(uv_work_t *wk)
{
    (void)read_block(wk->data, 0);
}

/* The block read into sbuf[d->rd] becomes the ready one; false (download
 * ended) when it could not be read or the file is not the verified one. */
static bool block_read_done(fw_dl *d, bool ok)
{
    if (!ok) {
        fw__dl_tampered(d, "fw_cache_tampered", "the cache file, changed while serving");
        unlink(d->path);
        dl_end(d, false, "the cache file changed while serving");
        return false;
    }
    uint64_t off = d->rpos / FW_BLOCK_BYTES * FW_BLOCK_BYTES;
    uint64_t stop = d->end < off + FW_BLOCK_BYTES ? d->end : off + FW_BLOCK_BYTES;
    d->ready = true;
    d->ready_idx = d->rd;
    d->ready_at = (size_t)(d->rpos - off);
    d->ready_len = (size_t)(stop - d->rpos);
    d->rpos = stop;
    return true;
}

static void on_block_read(uv_work_t *wk, int status)
{
    fw_dl *d = wk->data;
    if (!fw__dl_fs_back(d))
        return;
    if (block_read_done(d, status == 0 && d->verify_ok))
        dl_serve_next(d);
}

/*
 * Reads the next block into sbuf[idx]: 1 read at once (d->ready set), 0 queued
 * on the thread pool (on_block_read goes on), -1 the download ended. A block
 * the page cache holds is read here, on the loop (RWF_NOWAIT never waits for
 * the disk): a served image nearly always is cached (just verified or served),
 * and a thread-pool round trip per block (two wake-ups, the block crossing
 * CPUs) cost more than the copy itself (docs/benchmarks.md, P5). Either way
 * the file's identity is checked after the read (read_block).
 */
static int start_read(fw_dl *d, unsigned idx)
{
    d->rd = idx;
    if (read_block(d, RWF_NOWAIT))
        return block_read_done(d, d->verify_ok) ? 1 : -1;
    d->work.data = d;
    d->fs_busy = true;
    if (uv_queue_work(d->w->loop, &d->work, read_block_work, on_block_read) != 0) {
        d->fs_busy = false;
        dl_end(d, false, "cannot read the cache file");
        return -1;
    }
    return 0;
}

/*
 * Moves the download on. Two block buffers: once the output before it is
 * down to HTTPS_STREAM_LOW_WATER, the checked block is handed to TLS
 * (https_stream_write encrypts it at once) and the next block is read into
 * the other buffer (start_read: on the loop from the page cache, else on the
 * thread pool while this one drains).
 */
static void dl_serve_next(fw_dl *d)
{
    for (;;) {
        if (d->ended)
            return;
        if (net_conn_state(d->r->conn) != NET_ACTIVE) { /* a read in flight: dl_release waits */
            dl_end(d, false, "connection closed (peer gone, or write_timeout_ms)");
            return;
        }
        bool sent = false;
        if (d->ready && https_stream_pending(d->r) <= HTTPS_STREAM_LOW_WATER) {
            unsigned idx = d->ready_idx;
            size_t at = d->ready_at, len = d->ready_len;
            d->ready = false;
            if (!d->fs_busy && d->rpos < d->end && start_read(d, idx ^ 1u) < 0)
                return;
            for (size_t o = 0; o < len; o += FW_SEND_SLICE) {
                size_t n = len - o < FW_SEND_SLICE ? len - o : FW_SEND_SLICE;
                if (https_stream_write(d->r, d->sbuf[idx] + at + o, n) != CMS_OK) {
                    dl_end(d, false, "connection closed");
                    return;
                }
            }
            d->pos += len;
            d->sent += len;
            metrics_add(CM_FW_BYTES, 0, len);
            d->last_progress = uv_now(d->w->loop);
            sent = true;
        }
        if (d->pos >= d->end) {
            dl_end(d, true, NULL);
            return;
        }
        if (!d->ready && !d->fs_busy && d->rpos < d->end) {
            int rc = start_read(d, 0); /* queued: on_block_read calls again */
            if (rc != 1)
                return;
            continue; /* read at once: send it if the output has room */
        }
        /* A block read at once while this one went out: send it too if the
         * output drained meanwhile; otherwise on_writable comes back. */
        if (!(sent && d->ready && https_stream_pending(d->r) <= HTTPS_STREAM_LOW_WATER))
            return;
    }
}

void fw__dl_serve(fw_dl *d)
{
    http_buf head;
    d->phase = DL_SERVE;
    free(d->buf); /* the build's chunk buffer, if any */
    d->buf = NULL;
    d->buf_len = 0;
    d->sbuf[0] = malloc(FW_BLOCK_BYTES);
    d->sbuf[1] = malloc(FW_BLOCK_BYTES);
    if (!d->sbuf[0] || !d->sbuf[1]) {
        fw__dl_fail(d, 500, "internal_error", "out of memory");
        return;
    }
    http_buf_init(&head, 8192);
    if (http_range_response_start(&head, &d->rng, "application/octet-stream", d->etag,
                                  d->r->http->keep_alive ? HTTP_RESP_KEEP_ALIVE : 0) != CMS_OK) {
        http_buf_free(&head);
        fw__dl_fail(d, 500, "internal_error", "cannot build the answer");
        return;
    }
    d->pos = d->rpos = d->rng.first;
    d->end = d->rng.first + d->rng.length;
    d->serve_started = d->last_progress = uv_now(d->w->loop);
    if (uv_timer_init(d->w->loop, &d->timer) == 0) {
        uint64_t tick = d->w->cfg->write_timeout_ms / 4;
        tick = tick < 100 ? 100 : tick > 1000 ? 1000 : tick;
        d->timer.data = d;
        d->timer_on = true;
        uv_timer_start(&d->timer, on_download_tick, tick, tick);
    }
    d->streaming = true;
    https_stream_begin(d->r, head.data, head.len, on_writable, d);
    http_buf_free(&head);
}

/* ---- authorization --------------------------------------------------------------------------- */

static void on_authorized(void *ctx, int status, const store_rows *res)
{
    fw_dl *d = ctx;
    https_req *r = d->r;
    d->fs_busy = false;
    if (status != CMS_OK) {
        svc__reply_db_error(r, status, res, fw__sqlstates);
        d->ended = true;
        fw__dl_release(d);
        return;
    }
    if (store_rows_count(res) != 1) {
        log_warn("fw_image_refused", r->peer_cn, r->peer_addr,
                 "image %s is not allowlisted for this device", d->hex);
        https_audit(
            r, "fw_image_refused", r->peer_cn,
            json_pack("{s:s, s:s}", "sha256", d->hex, "reason", "not allowlisted for this device"));
        fw__dl_fail(d, 404, "not_found", "no image with this hash is allowlisted for this device");
        return;
    }
    d->release_id = strtoll(store_rows_text(res, 0, 0), NULL, 10);
    d->length = strtoull(store_rows_text(res, 0, 1), NULL, 10);
    d->nchunks = (unsigned)strtoul(store_rows_text(res, 0, 3), NULL, 10);
    d->store_gen = strtoll(store_rows_text(res, 0, 4), NULL, 10);
    if (strtol(store_rows_text(res, 0, 2), NULL, 10) != (long)FW_CHUNK_BYTES ||
        d->nchunks != (d->length + FW_CHUNK_BYTES - 1) / FW_CHUNK_BYTES) {
        fw__dl_fail(d, 500, "internal_error", "stored image has an unexpected chunk size");
        return;
    }
    http_etag_format(d->etag, d->sha);
    http_range_select(r->http, d->etag, d->length, &d->rng);
    if (d->rng.status == 416 || r->http->method == HTTP_HEAD) {
        http_buf head;
        http_buf_init(&head, 8192);
        if (http_range_response_start(&head, &d->rng, "application/octet-stream", d->etag,
                                      r->http->keep_alive ? HTTP_RESP_KEEP_ALIVE : 0) != CMS_OK) {
            http_buf_free(&head);
            fw__dl_fail(d, 500, "internal_error", "cannot build the answer");
            return;
        }
        d->streaming = true;
        d->ended = true;
        https_stream_begin(r, head.data, head.len, on_writable, d);
        http_buf_free(&head);
        https_stream_end(r, true);
        fw__dl_release(d);
        return;
    }
    fw__dl_open(d);
}

int fw_image_get(https_req *r)
{
    static const char *const allowed[] = {NULL};
    fw_worker *w = fw__worker(r);
    const char *hex = r->params[0];
    if (!w || w->keys->ndist == 0) {
        https_reply_error(r, 503, "not_configured", "no fw_distribution_key configured");
        return CMS_OK;
    }
    if (!svc__query_ok(r, allowed))
        return CMS_OK;
    fw_dl *d = calloc(1, sizeof(*d));
    if (!d) {
        https_reply_error(r, 500, "internal_error", "out of memory");
        return CMS_OK;
    }
    d->r = r;
    d->w = w;
    d->fd = -1;
    size_t n = strlen(hex);
    bool ok = n == 64;
    for (size_t i = 0; ok && i < n; i++)
        ok = (hex[i] >= '0' && hex[i] <= '9') || (hex[i] >= 'a' && hex[i] <= 'f');
    if (!ok || fw_unhex(hex, 64, d->sha, 32) != CMS_OK) {
        free(d);
        https_reply_error(r, 404, "not_found", "images are named by 64 lowercase hex digits");
        return CMS_OK;
    }
    memcpy(d->hex, hex, 65);
    snprintf(d->path, sizeof(d->path), "%s/%s", w->cfg->fw_cache_dir, d->hex);
    char dev[24], sha[2 + 64 + 1];
    snprintf(dev, sizeof(dev), "%lld", (long long)r->device_id);
    memcpy(sha, "\\x", 2);
    memcpy(sha + 2, hex, 65);
    const char *p[] = {dev, sha};
    d->fs_busy = true;
    int rc = store_query(fw__store(r),
                         "SELECT release_id, length, chunk_size, nchunks, store_gen "
                         "FROM cms.fw_image_authorize($1::bigint, $2::bytea)",
                         2, p, on_authorized, d);
    if (rc != CMS_OK) {
        free(d);
        https_reply_error(r, 503, "busy", "database queue full; retry");
        return CMS_OK;
    }
    return CMS_EAGAIN;
}
