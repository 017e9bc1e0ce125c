/*
 * firmware_keys.c - the firmware service's keys (loaded once at start-up,
 * shared read-only by every worker), the per-worker state, and the public
 * key listing GET /fw/v1/keys. Key material is never logged: only key ids
 * (SHA-256 of the SubjectPublicKeyInfo).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cms_err.h"
#include "firmware_int.h"
#include "log.h"
#include "pki.h"

void fw_keys_free(fw_keys *k)
{
    if (!k)
        return;
    for (size_t i = 0; i < k->npub; i++)
        EVP_PKEY_free(k->publishers[i]);
    for (size_t i = 0; i < k->ndist; i++)
        EVP_PKEY_free(k->dist[i]);
    fw__cache_free(k->cache);
    free(k);
}

/* mkdir -p for the cache directory (mode 0700 for what we create). */
static int make_dir(const char *path, char *err, size_t cap)
{
    char buf[CONFIG_STR];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(buf)) {
        snprintf(err, cap, "fw_cache_dir: empty or too long");
        return CMS_EINVAL;
    }
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0700) != 0 && errno != EEXIST) {
            snprintf(err, cap, "fw_cache_dir %s: %s", buf, strerror(errno));
            return CMS_EINVAL;
        }
        buf[i] = c;
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, cap, "fw_cache_dir %s: not a directory", path);
        return CMS_EINVAL;
    }
    if (st.st_mode & 0002) {
        snprintf(err, cap, "fw_cache_dir %s: world-writable; chmod 700 it", path);
        return CMS_EINVAL;
    }
    return CMS_OK;
}

static int load_dist(const char *path, fw_keys *k, char *err, size_t cap)
{
    char why[256];
    EVP_PKEY *key = NULL;
    if (pki_key_load_private(path, &key, why, sizeof(why)) != CMS_OK) {
        snprintf(err, cap, "fw distribution key %s: %s", path, why);
        return CMS_EINVAL;
    }
    if (!EVP_PKEY_is_a(key, "ED25519")) {
        EVP_PKEY_free(key);
        snprintf(err, cap, "fw distribution key %s: must be Ed25519", path);
        return CMS_EINVAL;
    }
    k->dist[k->ndist] = key;
    if (pki_pubkey_id_sha256(key, k->dist_ids[k->ndist]) != CMS_OK) {
        snprintf(err, cap, "fw distribution key %s: cannot compute its id", path);
        k->ndist++;
        return CMS_EINVAL;
    }
    k->ndist++;
    return CMS_OK;
}

int fw_keys_load(const cms_config *cfg, fw_keys **out, char *err, size_t cap)
{
    fw_keys *k = calloc(1, sizeof(*k));
    int rc = CMS_EINVAL;
    *out = NULL;
    if (!k || !(k->cache = fw__cache_new())) {
        free(k);
        snprintf(err, cap, "out of memory");
        return CMS_ENOMEM;
    }
    /* Publisher keys: "a.pub,b.pub" (spaces around names ignored). */
    const char *p = cfg->fw_publisher_keys;
    while (*p) {
        char path[CONFIG_STR], why[256];
        while (*p == ' ' || *p == ',')
            p++;
        if (!*p)
            break;
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m > 0 && p[m - 1] == ' ')
            m--;
        if (m >= sizeof(path)) {
            snprintf(err, cap, "fw_publisher_keys: a file name is too long");
            goto fail;
        }
        memcpy(path, p, m);
        path[m] = '\0';
        p += n;
        if (k->npub == FW_MAX_KEYS) {
            snprintf(err, cap, "fw_publisher_keys: at most %u keys", FW_MAX_KEYS);
            goto fail;
        }
        EVP_PKEY *key = NULL;
        if (pki_pubkey_load(path, &key, why, sizeof(why)) != CMS_OK) {
            snprintf(err, cap, "fw_publisher_keys %s: %s", path, why);
            goto fail;
        }
        k->publishers[k->npub] = key;
        if (pki_pubkey_id_sha256(key, k->publisher_ids[k->npub]) != CMS_OK) {
            k->npub++;
            snprintf(err, cap, "fw_publisher_keys %s: cannot compute its id", path);
            goto fail;
        }
        for (size_t i = 0; i < k->npub; i++) {
            if (strcmp(k->publisher_ids[i], k->publisher_ids[k->npub]) == 0) {
                k->npub++;
                snprintf(err, cap, "fw_publisher_keys: %s is listed twice", path);
                goto fail;
            }
        }
        k->npub++;
    }
    if (cfg->fw_distribution_key[0] && load_dist(cfg->fw_distribution_key, k, err, cap) != CMS_OK)
        goto fail;
    if (cfg->fw_distribution_key_next[0] &&
        load_dist(cfg->fw_distribution_key_next, k, err, cap) != CMS_OK)
        goto fail;
    if (k->ndist == 2 && strcmp(k->dist_ids[0], k->dist_ids[1]) == 0) {
        snprintf(err, cap, "fw_distribution_key_next is the same key as fw_distribution_key");
        goto fail;
    }
    if (k->ndist > 0 && make_dir(cfg->fw_cache_dir, err, cap) != CMS_OK)
        goto fail;
    for (size_t i = 0; i < k->npub; i++)
        log_info("fw_key", NULL, NULL, "publisher key %zu: id %s", i, k->publisher_ids[i]);
    for (size_t i = 0; i < k->ndist; i++)
        log_info("fw_key", NULL, NULL, "distribution key%s: id %s", i ? " (next)" : "",
                 k->dist_ids[i]);
    *out = k;
    return CMS_OK;
fail:
    fw_keys_free(k);
    return rc;
}

/* ---- per worker ---------------------------------------------------------------------- */

fw_worker *fw_worker_new(const fw_keys *keys, const cms_config *cfg, uv_loop_t *loop,
                         unsigned worker_id)
{
    fw_worker *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->keys = keys;
    w->cfg = cfg;
    w->loop = loop;
    w->worker_id = worker_id;
    return w;
}

void fw_worker_free(fw_worker *w)
{
    if (!w)
        return;
    free(w);
}

/* ---- GET /fw/v1/keys ------------------------------------------------------------------- */

int fw_keys_get(https_req *r)
{
    fw_worker *w = fw__worker(r);
    json_t *dist = json_array(), *pubs = json_array();
    for (size_t i = 0; w && i < w->keys->ndist; i++) {
        char *pem = NULL;
        if (pki_pubkey_to_pem(w->keys->dist[i], &pem, NULL) != CMS_OK)
            continue;
        json_array_append_new(dist, json_pack("{s:s, s:s, s:s, s:s}", "keyid", w->keys->dist_ids[i],
                                              "role", i == 0 ? "current" : "next", "alg", "ed25519",
                                              "public_key_pem", pem));
        free(pem);
    }
    for (size_t i = 0; w && i < w->keys->npub; i++) {
        char *pem = NULL;
        if (pki_pubkey_to_pem(w->keys->publishers[i], &pem, NULL) != CMS_OK)
            continue;
        json_array_append_new(
            pubs, json_pack("{s:s, s:s, s:s}", "keyid", w->keys->publisher_ids[i], "alg",
                            EVP_PKEY_is_a(w->keys->publishers[i], "ED25519") ? "ed25519"
                                                                             : "ecdsa-p256-sha256",
                            "public_key_pem", pem));
        free(pem);
    }
    https_reply_json(r, 200,
                     json_pack("{s:o, s:o}", "distribution_keys", dist, "publisher_keys", pubs));
    return CMS_OK;
}
