/*
 * firmware_cache.c - the local cache file of a firmware image, for the
 * download (firmware_dl.h): the workers' shared record of verified files
 * (identity, store_gen, when), the open-and-match, the whole-file hash on
 * the thread pool when the file changed or the record is older than
 * FW_CACHE_REVERIFY_MS, and the rebuild from the database chunks (one
 * store_query per chunk, written with uv_fs_write to a temp file while
 * hashing, renamed into place only when the SHA-256 matches). See
 * firmware_image.c for the whole story.
 *
 * Thread: the worker loop's thread; verify_work runs on the thread pool and
 * touches only its own download.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "cms_err.h"
#include "firmware_dl.h"
#include "log.h"

static void dl_build(fw_dl *d);

/* ---- cache records (shared by the workers) ----------------------------------------------- */

fw_cache *fw__cache_new(void)
{
    fw_cache *c = calloc(1, sizeof(*c));
    if (c && pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c);
        return NULL;
    }
    return c;
}

void fw__cache_free(fw_cache *c)
{
    if (!c)
        return;
    for (fw_cache_entry *e = c->head, *n; e; e = n) {
        n = e->next;
        free(e);
    }
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* The entry for sha, or NULL. Lock held. */
static fw_cache_entry *find_locked(fw_cache *c, const uint8_t sha[32])
{
    for (fw_cache_entry *e = c->head; e; e = e->next)
        if (memcmp(e->sha256, sha, 32) == 0)
            return e;
    return NULL;
}

/* Unlinks the entry for sha; returns it (caller frees) or NULL. Lock held. */
static fw_cache_entry *unlink_locked(fw_cache *c, const uint8_t sha[32])
{
    for (fw_cache_entry **pp = &c->head; *pp; pp = &(*pp)->next) {
        if (memcmp((*pp)->sha256, sha, 32) == 0) {
            fw_cache_entry *e = *pp;
            *pp = e->next;
            c->n--;
            return e;
        }
    }
    return NULL;
}

static void cache_forget(fw_worker *w, const uint8_t sha[32])
{
    fw_cache *c = w->keys->cache;
    pthread_mutex_lock(&c->lock);
    fw_cache_entry *e = unlink_locked(c, sha);
    pthread_mutex_unlock(&c->lock);
    if (e)
        free(e);
}

/* True (and *gen set) when some worker verified a cache file for sha. */
static bool cache_gen(fw_worker *w, const uint8_t sha[32], int64_t *gen)
{
    fw_cache *c = w->keys->cache;
    pthread_mutex_lock(&c->lock);
    fw_cache_entry *e = find_locked(c, sha);
    if (e)
        *gen = e->store_gen;
    pthread_mutex_unlock(&c->lock);
    return e != NULL;
}

/* True when the file d opened (st) is the one verified for d's image and
 * store generation, unchanged since, less than FW_CACHE_REVERIFY_MS ago:
 * d's file identity is then set from the record. */
static bool cache_match(fw_dl *d, const uv_stat_t *st)
{
    fw_cache *c = d->w->keys->cache;
    int64_t mt = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    int64_t ct = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
    uint64_t now = uv_hrtime() / 1000000;
    pthread_mutex_lock(&c->lock);
    fw_cache_entry *e = find_locked(c, d->sha);
    bool ok = e && e->store_gen == d->store_gen && e->dev == st->st_dev && e->ino == st->st_ino &&
              e->size == st->st_size && e->mtime_ns == mt && e->ctime_ns == ct &&
              now - e->verified_at < FW_CACHE_REVERIFY_MS;
    if (ok) {
        d->f_dev = e->dev, d->f_ino = e->ino, d->f_size = e->size;
        d->f_mtime_ns = e->mtime_ns, d->f_ctime_ns = e->ctime_ns;
    }
    pthread_mutex_unlock(&c->lock);
    return ok;
}

/* Records the file d verified. */
static void cache_remember(fw_dl *d)
{
    fw_cache *c = d->w->keys->cache;
    fw_cache_entry *e = calloc(1, sizeof(*e)), *old, *drop = NULL;
    if (!e)
        return;
    memcpy(e->sha256, d->sha, 32);
    e->store_gen = d->store_gen;
    e->length = d->length;
    e->dev = d->f_dev, e->ino = d->f_ino, e->size = d->f_size;
    e->mtime_ns = d->f_mtime_ns, e->ctime_ns = d->f_ctime_ns;
    e->verified_at = uv_hrtime() / 1000000;
    pthread_mutex_lock(&c->lock);
    old = unlink_locked(c, d->sha);
    e->next = c->head;
    c->head = e;
    if (++c->n > FW_CACHE_ENTRIES) { /* drop the oldest */
        fw_cache_entry **pp = &c->head;
        while ((*pp)->next)
            pp = &(*pp)->next;
        drop = *pp;
        *pp = NULL;
        c->n--;
    }
    pthread_mutex_unlock(&c->lock);
    if (old)
        free(old);
    if (drop)
        free(drop);
}

void fw__dl_tampered(fw_dl *d, const char *event, const char *where)
{
    log_error(event, d->r->peer_cn, d->r->peer_addr,
              "image %s: %s does not match its SHA-256: refused", d->hex, where);
    https_audit(d->r, event, d->r->peer_cn,
                json_pack("{s:s, s:s, s:I}", "sha256", d->hex, "where", where, "release_id",
                          (json_int_t)d->release_id));
    cache_forget(d->w, d->sha);
}

/* ---- verifying an existing cache file (thread pool) --------------------------------------- */

static void stat_of(const struct stat *st, fw_dl *d)
{
    d->f_dev = (uint64_t)st->st_dev;
    d->f_ino = (uint64_t)st->st_ino;
    d->f_size = (uint64_t)st->st_size;
    d->f_mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    d->f_ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
}

static void verify_work(uv_work_t *wk)
{
    fw_dl *d = wk->data;
    struct stat before, after;
    unsigned char *buf = malloc(FW_BLOCK_BYTES);
    EVP_MD_CTX *all = EVP_MD_CTX_new();
    unsigned int hl;
    d->verify_ok = 0;
    if (!buf || !all || fstat(d->fd, &before) != 0 || (uint64_t)before.st_size != d->length ||
        EVP_DigestInit_ex(all, EVP_sha256(), NULL) != 1)
        goto out;
    for (uint64_t off = 0; off < d->length; off += FW_BLOCK_BYTES) {
        size_t want = (size_t)(d->length - off < FW_BLOCK_BYTES ? d->length - off : FW_BLOCK_BYTES);
        size_t got = 0;
        while (got < want) {
            ssize_t n = pread(d->fd, buf + got, want - got, (off_t)(off + got));
            if (n <= 0)
                goto out;
            got += (size_t)n;
        }
        if (EVP_DigestUpdate(all, buf, want) != 1)
            goto out;
    }
    if (EVP_DigestFinal_ex(all, d->verify_digest, &hl) != 1 || fstat(d->fd, &after) != 0 ||
        before.st_mtim.tv_nsec != after.st_mtim.tv_nsec ||
        before.st_mtim.tv_sec != after.st_mtim.tv_sec ||
        before.st_ctim.tv_sec != after.st_ctim.tv_sec ||
        before.st_ctim.tv_nsec != after.st_ctim.tv_nsec)
        goto out;
    stat_of(&after, d);
    d->verify_ok = CRYPTO_memcmp(d->verify_digest, d->sha, 32) == 0;
out:
    EVP_MD_CTX_free(all);
    free(buf);
}

static void verify_done(uv_work_t *wk, int status)
{
    fw_dl *d = wk->data;
    if (!fw__dl_fs_back(d))
        return;
    if (status == 0 && d->verify_ok) {
        cache_remember(d);
        fw__dl_serve(d);
        return;
    }
    fw__dl_tampered(d, "fw_cache_tampered", "the local cache file");
    uv_fs_t req;
    uv_fs_close(NULL, &req, d->fd, NULL);
    uv_fs_req_cleanup(&req);
    d->fd = -1;
    unlink(d->path);
    dl_build(d); /* the database copy is the reference */
}

/* ---- building the cache file from the database chunks ------------------------------------- */

static void build_fail(fw_dl *d, int status, const char *error, const char *detail)
{
    if (d->fd >= 0) {
        uv_fs_t req;
        uv_fs_close(NULL, &req, d->fd, NULL);
        uv_fs_req_cleanup(&req);
        d->fd = -1;
    }
    fw__dl_fail(d, status, error, detail);
}

static void build_next(fw_dl *d);

static void on_renamed(uv_fs_t *req)
{
    fw_dl *d = req->data;
    int rc = (int)req->result;
    uv_fs_req_cleanup(req);
    if (!fw__dl_fs_back(d))
        return;
    if (rc < 0) {
        log_error("fw_cache", NULL, NULL, "rename %s: %s", d->tmp_path, uv_strerror(rc));
        build_fail(d, 500, "internal_error", "cannot store the cache file");
        return;
    }
    d->tmp_path[0] = '\0';
    struct stat st;
    if (fstat(d->fd, &st) != 0) { /* fstat on an open descriptor does not block */
        build_fail(d, 500, "internal_error", "cannot stat the cache file");
        return;
    }
    stat_of(&st, d);
    cache_remember(d);
    log_info("fw_cache", NULL, NULL, "image %s verified from the database (%llu bytes)", d->hex,
             (unsigned long long)d->length);
    fw__dl_serve(d);
}

static void build_finish(fw_dl *d)
{
    uint8_t digest[32];
    unsigned int hl = 0;
    if (EVP_DigestFinal_ex(d->md, digest, &hl) != 1 || d->built != d->length ||
        CRYPTO_memcmp(digest, d->sha, 32) != 0) {
        fw__dl_tampered(d, "fw_image_tampered", "the image stored in the database");
        build_fail(d, 500, "image_integrity",
                   "the stored image does not match its SHA-256; it is not served");
        return;
    }
    d->fs.data = d;
    d->fs_busy = true;
    if (uv_fs_rename(d->w->loop, &d->fs, d->tmp_path, d->path, on_renamed) != 0) {
        d->fs_busy = false;
        uv_fs_req_cleanup(&d->fs);
        build_fail(d, 500, "internal_error", "cannot store the cache file");
    }
}

static void on_chunk_written(uv_fs_t *req)
{
    fw_dl *d = req->data;
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    if (!fw__dl_fs_back(d))
        return;
    if (n != (ssize_t)d->buf_len) {
        log_error("fw_cache", NULL, NULL, "write %s: %s", d->tmp_path,
                  n < 0 ? uv_strerror((int)n) : "short write");
        build_fail(d, 500, "internal_error", "cannot write the cache file");
        return;
    }
    d->seq++;
    if (d->seq == d->nchunks)
        build_finish(d);
    else
        build_next(d);
}

static void on_chunk(void *ctx, int status, const store_rows *res)
{
    fw_dl *d = ctx;
    if (!fw__dl_fs_back(d))
        return;
    if (status != CMS_OK) {
        build_fail(d, 503, "database_unavailable", "cannot read the image from the database");
        return;
    }
    uint64_t off = (uint64_t)d->seq * FW_CHUNK_BYTES;
    size_t want = (size_t)(d->length - off < FW_CHUNK_BYTES ? d->length - off : FW_CHUNK_BYTES);
    const char *hex = store_rows_count(res) == 1 ? store_rows_text(res, 0, 0) : "";
    if (strlen(hex) != 2 * want || fw_unhex(hex, 2 * want, d->buf, want) != CMS_OK) {
        fw__dl_tampered(d, "fw_image_tampered", "a database chunk (missing or of the wrong size)");
        build_fail(d, 500, "image_integrity",
                   "the stored image does not match its SHA-256; it is not served");
        return;
    }
    EVP_DigestUpdate(d->md, d->buf, want);
    d->built += want;
    d->buf_len = want;
    uv_buf_t b = uv_buf_init((char *)d->buf, (unsigned)want);
    d->fs.data = d;
    d->fs_busy = true;
    if (uv_fs_write(d->w->loop, &d->fs, d->fd, &b, 1, (int64_t)off, on_chunk_written) != 0) {
        d->fs_busy = false;
        uv_fs_req_cleanup(&d->fs);
        build_fail(d, 500, "internal_error", "cannot write the cache file");
    }
}

static void build_next(fw_dl *d)
{
    char seq[16], sha[2 + 64 + 1];
    snprintf(seq, sizeof(seq), "%u", d->seq);
    memcpy(sha, "\\x", 2);
    memcpy(sha + 2, d->hex, 65);
    const char *p[] = {sha, seq};
    d->fs_busy = true;
    if (store_query(fw__store(d->r),
                    "SELECT encode(data, 'hex') FROM cms.fw_image_chunks "
                    "WHERE sha256 = $1::bytea AND seq = $2::integer",
                    2, p, on_chunk, d) != CMS_OK) {
        d->fs_busy = false;
        build_fail(d, 503, "busy", "database queue full; retry");
    }
}

/* A uv_fs_open of a download came back: *fd is the descriptor (negative:
 * the error), kept in d->fd when valid (dl_free closes it). False when the
 * download ended meanwhile (then released: do not touch it). */
static bool open_back(uv_fs_t *req, int *fd)
{
    fw_dl *d = req->data;
    *fd = (int)req->result;
    uv_fs_req_cleanup(req);
    if (*fd >= 0)
        d->fd = *fd;
    return fw__dl_fs_back(d);
}

static void on_tmp_open(uv_fs_t *req)
{
    fw_dl *d = req->data;
    int fd;
    if (!open_back(req, &fd))
        return;
    if (fd < 0) {
        log_error("fw_cache", NULL, NULL, "open %s: %s", d->tmp_path, uv_strerror(fd));
        d->tmp_path[0] = '\0';
        fw__dl_fail(d, 500, "internal_error", "cannot create the cache file");
        return;
    }
    build_next(d);
}

static void dl_build(fw_dl *d)
{
    fw_worker *w = d->w;
    d->phase = DL_BUILD;
    d->seq = 0;
    d->built = 0;
    if (d->buf_len < FW_CHUNK_BYTES) {
        free(d->buf);
        d->buf = malloc(FW_CHUNK_BYTES);
        d->buf_len = d->buf ? FW_CHUNK_BYTES : 0;
    }
    EVP_MD_CTX_free(d->md);
    d->md = EVP_MD_CTX_new();
    if (!d->buf || !d->md || EVP_DigestInit_ex(d->md, EVP_sha256(), NULL) != 1) {
        fw__dl_fail(d, 500, "internal_error", "out of memory");
        return;
    }
    snprintf(d->tmp_path, sizeof(d->tmp_path), "%s/.%s.%d.%u.%llu.tmp", w->cfg->fw_cache_dir,
             d->hex, (int)getpid(), w->worker_id, (unsigned long long)++w->tmp_seq);
    d->fs.data = d;
    d->fs_busy = true;
    if (uv_fs_open(w->loop, &d->fs, d->tmp_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600,
                   on_tmp_open) != 0) {
        d->fs_busy = false;
        uv_fs_req_cleanup(&d->fs);
        d->tmp_path[0] = '\0';
        fw__dl_fail(d, 500, "internal_error", "cannot create the cache file");
    }
}

/* ---- opening the cache file ------------------------------------------------------------------ */

static void on_fstat(uv_fs_t *req)
{
    fw_dl *d = req->data;
    int rc = (int)req->result;
    uv_stat_t st = req->statbuf;
    uv_fs_req_cleanup(req);
    if (!fw__dl_fs_back(d))
        return;
    if (rc == 0 && cache_match(d, &st)) { /* unchanged since verified */
        fw__dl_serve(d);
        return;
    }
    /* Changed (or not verified for this store_gen): hash it again. */
    d->phase = DL_VERIFY;
    d->work.data = d;
    d->fs_busy = true;
    if (uv_queue_work(d->w->loop, &d->work, verify_work, verify_done) != 0) {
        d->fs_busy = false;
        fw__dl_fail(d, 500, "internal_error", "cannot queue the verification");
    }
}

static void on_open(uv_fs_t *req)
{
    fw_dl *d = req->data;
    int fd;
    if (!open_back(req, &fd))
        return;
    if (fd < 0) {
        if (fd != UV_ENOENT)
            log_warn("fw_cache", NULL, NULL, "open %s: %s", d->path, uv_strerror(fd));
        dl_build(d);
        return;
    }
    d->fs.data = d;
    d->fs_busy = true;
    if (uv_fs_fstat(d->w->loop, &d->fs, d->fd, on_fstat) != 0) {
        d->fs_busy = false;
        uv_fs_req_cleanup(&d->fs);
        fw__dl_fail(d, 500, "internal_error", "cannot stat the cache file");
    }
}

void fw__dl_open(fw_dl *d)
{
    int64_t gen;
    bool known = cache_gen(d->w, d->sha, &gen);
    if (!known || gen != d->store_gen) {
        if (known)
            log_warn("fw_cache", NULL, NULL,
                     "image %s: stored chunks changed (store_gen %lld -> %lld): verifying "
                     "them again",
                     d->hex, (long long)gen, (long long)d->store_gen);
        cache_forget(d->w, d->sha);
        dl_build(d);
        return;
    }
    d->phase = DL_OPEN;
    d->fs.data = d;
    d->fs_busy = true;
    if (uv_fs_open(d->w->loop, &d->fs, d->path, O_RDONLY | O_CLOEXEC, 0, on_open) != 0) {
        d->fs_busy = false;
        uv_fs_req_cleanup(&d->fs);
        dl_build(d);
    }
}
