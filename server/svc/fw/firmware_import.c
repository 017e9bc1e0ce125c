/*
 * firmware_import.c - importing a firmware release (operator): verify the
 * publisher's signature, the descriptor, the image's length and SHA-256,
 * then store the image in chunks and record the release.
 *
 * Import: POST /api/v1/firmware/releases, body = the image bytes
 * (application/octet-stream, Content-Length required; the route's body limit
 * is fw_max_image_bytes), headers:
 *   Fw-Descriptor: base64 of the descriptor file's exact bytes
 *   Fw-Signature:  base64 of the publisher's signature over those bytes
 * Checks, in order (each refusal: 4xx with a reason + fw_import_refused
 * audit row): both headers present and base64; a configured publisher key
 * verifies the signature over the descriptor bytes; the descriptor parses
 * (only after the signature verified); body length = descriptor length;
 * SHA-256(body) = descriptor sha256 (computed on the thread pool, the loop
 * never hashes 256 MiB). Then the image goes to cms.fw_image_chunks one
 * FW_CHUNK_BYTES statement at a time (skipped when the same image is stored
 * already) and cms.fw_release_import records the release and its
 * fw_imported audit row in one transaction.
 *
 * Thread: the worker loop's thread (like every handler); the hash runs on
 * the thread pool and touches only its job.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "cms_err.h"
#include "firmware_int.h"
#include "log.h"
#include "pki.h"

typedef struct import_job {
    https_req *r;
    uv_work_t work;
    const unsigned char *body; /* borrowed from the request */
    size_t body_len;
    unsigned char *desc, *sig;
    size_t desc_len, sig_len;
    fw_descriptor d;
    char keyid[65];
    uint8_t digest[32];
    int hash_ok;
    unsigned nchunks, seq;
    char sha_param[2 + 64 + 1];
    char *chunk_param;
    char actor[96];
} import_job;

static void import_free(import_job *j)
{
    free(j->desc);
    free(j->sig);
    free(j->chunk_param);
    free(j);
}

/* Refuses the import: answer + fw_import_refused audit row. */
static void import_refuse(import_job *j, int status, const char *error, const char *detail)
{
    https_req *r = j->r;
    json_t *d = json_pack("{s:s, s:s}", "error", error, "reason", detail ? detail : "");
    if (d && j->d.model[0]) {
        json_object_set_new(d, "model", json_string(j->d.model));
        json_object_set_new(d, "version", json_string(j->d.version));
    }
    if (d && j->keyid[0])
        json_object_set_new(d, "publisher_keyid", json_string(j->keyid));
    if (d)
        json_object_set_new(d, "body_bytes", json_integer((json_int_t)j->body_len));
    log_warn("fw_import_refused", NULL, r->peer_addr, "%s: %s", error, detail ? detail : "");
    https_audit(r, "fw_import_refused", NULL, d);
    https_reply_error(r, status, error, detail);
    import_free(j);
}

static void import_done(void *ctx, int status, const store_rows *res)
{
    import_job *j = ctx;
    https_req *r = j->r;
    if (status != CMS_OK) {
        const char *state = store_rows_sqlstate(res);
        const char *msg = store_rows_error(res);
        if (state && (strcmp(state, "CF002") == 0 || strcmp(state, "CF003") == 0)) {
            import_refuse(j, 409, "conflict", msg);
            return;
        }
        svc__reply_db_error(r, status, res, fw__sqlstates);
        import_free(j);
        return;
    }
    bool created = strcmp(store_rows_get(res, 0, "outcome"), "imported") == 0;
    json_t *o =
        json_pack("{s:I, s:s, s:s, s:s, s:I, s:s, s:I, s:s, s:s}", "id",
                  (json_int_t)strtoll(store_rows_get(res, 0, "id"), NULL, 10), "outcome",
                  store_rows_get(res, 0, "outcome"), "model", j->d.model, "version", j->d.version,
                  "security_counter", (json_int_t)j->d.security_counter, "sha256", j->d.sha256_hex,
                  "length", (json_int_t)j->d.length, "publisher_keyid", j->keyid, "imported_by",
                  store_rows_get(res, 0, "imported_by"));
    log_info("fw_imported", NULL, r->peer_addr, "release %s %s (%s, %llu bytes) %s by %s",
             j->d.model, j->d.version, j->d.sha256_hex, (unsigned long long)j->d.length,
             created ? "imported" : "already present", j->actor);
    https_reply_json(r, created ? 201 : 200, o);
    import_free(j);
}

static void import_finish(import_job *j)
{
    char *desc_hex = malloc(2 * j->desc_len + 3), *sig_hex = malloc(2 * j->sig_len + 3);
    char len[24], vnum[24], ctr[24];
    int rc;
    if (!desc_hex || !sig_hex) {
        free(desc_hex);
        free(sig_hex);
        https_reply_error(j->r, 500, "internal_error", "out of memory");
        import_free(j);
        return;
    }
    memcpy(desc_hex, "\\x", 2);
    fw_hex(j->desc, j->desc_len, desc_hex + 2);
    memcpy(sig_hex, "\\x", 2);
    fw_hex(j->sig, j->sig_len, sig_hex + 2);
    snprintf(len, sizeof(len), "%llu", (unsigned long long)j->d.length);
    snprintf(vnum, sizeof(vnum), "%llu", (unsigned long long)j->d.version_num);
    snprintf(ctr, sizeof(ctr), "%u", j->d.security_counter);
    const char *p[] = {j->sha_param, len,     j->d.model, j->d.version, vnum,           ctr,
                       desc_hex,     sig_hex, j->keyid,   j->actor,     j->r->peer_addr};
    rc = store_query(fw__store(j->r),
                     "SELECT id, outcome, imported_by, imported_at FROM cms.fw_release_import("
                     "$1::bytea, $2::bigint, $3, $4, $5::bigint, $6::bigint, $7::bytea, "
                     "$8::bytea, $9, $10, $11)",
                     11, p, import_done, j);
    free(desc_hex);
    free(sig_hex);
    if (rc != CMS_OK) {
        https_reply_error(j->r, 503, "busy", "database queue full; retry");
        import_free(j);
    }
}

static void import_put_next(import_job *j);

static void import_chunk_done(void *ctx, int status, const store_rows *res)
{
    import_job *j = ctx;
    if (status != CMS_OK) {
        svc__reply_db_error(j->r, status, res, fw__sqlstates);
        import_free(j);
        return;
    }
    j->seq++;
    if (j->seq == j->nchunks)
        import_finish(j);
    else
        import_put_next(j);
}

static void import_put_next(import_job *j)
{
    size_t off = (size_t)j->seq * FW_CHUNK_BYTES;
    size_t n = j->body_len - off < FW_CHUNK_BYTES ? j->body_len - off : FW_CHUNK_BYTES;
    char seq[16];
    if (!j->chunk_param)
        j->chunk_param = malloc(2 * FW_CHUNK_BYTES + 3);
    if (!j->chunk_param) {
        https_reply_error(j->r, 500, "internal_error", "out of memory");
        import_free(j);
        return;
    }
    memcpy(j->chunk_param, "\\x", 2);
    fw_hex(j->body + off, n, j->chunk_param + 2);
    snprintf(seq, sizeof(seq), "%u", j->seq);
    const char *p[] = {j->sha_param, seq, j->chunk_param};
    if (store_query(fw__store(j->r),
                    "SELECT cms.fw_image_put_chunk($1::bytea, $2::integer, $3::bytea)", 3, p,
                    import_chunk_done, j) != CMS_OK) {
        https_reply_error(j->r, 503, "busy", "database queue full; retry");
        import_free(j);
    }
}

static void import_begun(void *ctx, int status, const store_rows *res)
{
    import_job *j = ctx;
    if (status != CMS_OK) {
        const char *state = store_rows_sqlstate(res);
        if (state && strcmp(state, "CF003") == 0) {
            import_refuse(j, 409, "conflict", store_rows_error(res));
            return;
        }
        svc__reply_db_error(j->r, status, res, fw__sqlstates);
        import_free(j);
        return;
    }
    if (store_rows_count(res) == 1 && strcmp(store_rows_text(res, 0, 0), "t") == 0) {
        import_finish(j); /* content-addressed: the same image is stored already */
        return;
    }
    j->seq = 0;
    import_put_next(j);
}

static void import_hash_work(uv_work_t *w)
{
    import_job *j = w->data;
    unsigned int n = 0;
    j->hash_ok =
        EVP_Digest(j->body, j->body_len, j->digest, &n, EVP_sha256(), NULL) == 1 && n == 32;
}

static void import_hashed(uv_work_t *w, int status)
{
    import_job *j = w->data;
    char got[65];
    if (status != 0 || !j->hash_ok) {
        https_reply_error(j->r, 500, "internal_error", "cannot hash the image");
        import_free(j);
        return;
    }
    if (CRYPTO_memcmp(j->digest, j->d.sha256, 32) != 0) {
        char why[256];
        fw_hex(j->digest, 32, got);
        snprintf(why, sizeof(why), "the image's SHA-256 is %s, the signed descriptor says %s", got,
                 j->d.sha256_hex);
        import_refuse(j, 422, "image_mismatch", why);
        return;
    }
    char len[24], csz[16];
    snprintf(len, sizeof(len), "%llu", (unsigned long long)j->d.length);
    snprintf(csz, sizeof(csz), "%u", FW_CHUNK_BYTES);
    const char *p[] = {j->sha_param, len, csz};
    if (store_query(fw__store(j->r),
                    "SELECT complete, nchunks FROM cms.fw_image_begin($1::bytea, $2::bigint, "
                    "$3::integer)",
                    3, p, import_begun, j) != CMS_OK) {
        https_reply_error(j->r, 503, "busy", "database queue full; retry");
        import_free(j);
    }
}

int fw_import(https_req *r)
{
    fw_worker *w = fw__worker(r);
    char why[300];
    if (!w || w->keys->npub == 0) {
        https_reply_error(r, 503, "not_configured",
                          "firmware import is off: no fw_publisher_keys configured");
        return CMS_OK;
    }
    import_job *j = calloc(1, sizeof(*j));
    if (!j) {
        https_reply_error(r, 500, "internal_error", "out of memory");
        return CMS_OK;
    }
    j->r = r;
    j->body = (const unsigned char *)r->http->body;
    j->body_len = r->http->body_len;
    svc__actor(r->peer, r->peer_cn, j->actor, sizeof(j->actor));
    const char *dh = http_request_header(r->http, "fw-descriptor");
    const char *sh = http_request_header(r->http, "fw-signature");
    if (!dh || !sh || http_request_header_count(r->http, "fw-descriptor") != 1 ||
        http_request_header_count(r->http, "fw-signature") != 1) {
        import_refuse(j, 400, "bad_request",
                      "send the image as the body with exactly one Fw-Descriptor and one "
                      "Fw-Signature header (base64)");
        return CMS_OK;
    }
    if (pki_base64_decode(dh, strlen(dh), &j->desc, &j->desc_len) != CMS_OK || j->desc_len == 0 ||
        j->desc_len > FW_DESCRIPTOR_MAX) {
        import_refuse(j, 400, "bad_request", "Fw-Descriptor is not base64 of 1..4096 bytes");
        return CMS_OK;
    }
    if (pki_base64_decode(sh, strlen(sh), &j->sig, &j->sig_len) != CMS_OK || j->sig_len == 0 ||
        j->sig_len > FW_SIG_MAX) {
        import_refuse(j, 400, "bad_request", "Fw-Signature is not base64 of a signature");
        return CMS_OK;
    }
    /* The signature first: nothing unsigned is parsed. */
    size_t k;
    for (k = 0; k < w->keys->npub; k++)
        if (pki_verify(w->keys->publishers[k], j->desc, j->desc_len, j->sig, j->sig_len) == CMS_OK)
            break;
    if (k == w->keys->npub) {
        snprintf(why, sizeof(why),
                 "the descriptor's signature does not verify with any of the %zu trusted "
                 "publisher keys (unsigned, altered, or signed by an unknown key)",
                 w->keys->npub);
        import_refuse(j, 422, "signature_invalid", why);
        return CMS_OK;
    }
    memcpy(j->keyid, w->keys->publisher_ids[k], 65);
    if (fw_descriptor_parse(j->desc, j->desc_len, &j->d, why, sizeof(why)) != CMS_OK) {
        memset(&j->d, 0, sizeof(j->d));
        import_refuse(j, 422, "descriptor_invalid", why);
        return CMS_OK;
    }
    if (j->d.length != j->body_len) {
        snprintf(why, sizeof(why), "the image is %zu bytes, the signed descriptor says %llu",
                 j->body_len, (unsigned long long)j->d.length);
        import_refuse(j, 422, "image_mismatch", why);
        return CMS_OK;
    }
    if (j->d.length > w->cfg->fw_max_image_bytes) {
        snprintf(why, sizeof(why), "image larger than fw_max_image_bytes (%u)",
                 w->cfg->fw_max_image_bytes);
        import_refuse(j, 413, "payload_too_large", why);
        return CMS_OK;
    }
    memcpy(j->sha_param, "\\x", 2);
    memcpy(j->sha_param + 2, j->d.sha256_hex, 65);
    j->nchunks = (unsigned)((j->d.length + FW_CHUNK_BYTES - 1) / FW_CHUNK_BYTES);
    j->work.data = j;
    if (uv_queue_work(w->loop, &j->work, import_hash_work, import_hashed) != 0) {
        https_reply_error(r, 500, "internal_error", "cannot queue the hash");
        import_free(j);
        return CMS_OK;
    }
    return CMS_EAGAIN;
}
