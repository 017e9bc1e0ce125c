/*
 * firmware_device.c - what a monitor asks: its manifest and its reports.
 *
 * GET /fw/v1/manifest?installed=MAJOR.MINOR.PATCH[&counter=N]
 *   installed (required): the version the device runs; counter (optional):
 *   the security counter of that firmware. cms.fw_manifest_next picks the
 *   newest allowlisted release of the device's model that is newer than
 *   installed and whose counter is not below the device's, increments the
 *   device's manifest counter and audits fw_manifest_issued; the manifest is
 *   then signed here with the distribution key(s): 200 application/json.
 *   204 when nothing applies. 503 when no distribution key is configured.
 *
 * POST /fw/v1/report  {"status": "downloading"|"downloaded"|"installed"|"failed"|
 *                                "rolled_back",
 *                      "version": "X.Y.Z" (what it runs now), "sha256": hex (optional;
 *                      required for rolled_back: the image it went back from),
 *                      "reason": text (optional, <= 256 bytes)}
 *   recorded by cms.fw_report (rollout state, registry firmware_version,
 *   installed security counter; audited fw_report). 200 {"recorded": true,
 *   "release_id": id or null, "flagged": false}. A report naming a release
 *   neither approved for nor offered to the device is kept as its reported
 *   version only, flagged and audited fw_report_unapproved (sql/012):
 *   {"recorded": true, "release_id": null, "flagged": true}.
 *   An installed, failed or rolled_back report of a release then has its
 *   staged rollouts evaluated (fw_rollout_after_report, after the answer).
 *
 * Thread: the worker loop's thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "cms_err.h"
#include "firmware_int.h"
#include "fw_rollout.h"
#include "log.h"

/* ---- manifest -------------------------------------------------------------------------- */

static void manifest_done(void *ctx, int status, const store_rows *res)
{
    https_req *r = ctx;
    fw_worker *w = fw__worker(r);
    fw_manifest m;
    char *doc = NULL;
    size_t doc_len = 0;
    if (status != CMS_OK) {
        svc__reply_db_error(r, status, res, fw__sqlstates);
        return;
    }
    if (store_rows_count(res) == 0) {
        https_reply(r, 204, NULL, NULL, 0, NULL, 0);
        return;
    }
    memset(&m, 0, sizeof(m));
    snprintf(m.serial, sizeof(m.serial), "%s", store_rows_text(res, 0, 1));
    snprintf(m.model, sizeof(m.model), "%s", store_rows_text(res, 0, 2));
    snprintf(m.target_version, sizeof(m.target_version), "%s", store_rows_text(res, 0, 3));
    m.security_counter = (uint32_t)strtoul(store_rows_text(res, 0, 4), NULL, 10);
    snprintf(m.sha256_hex, sizeof(m.sha256_hex), "%s", store_rows_text(res, 0, 5));
    m.length = strtoull(store_rows_text(res, 0, 6), NULL, 10);
    m.release_id = strtoll(store_rows_text(res, 0, 0), NULL, 10);
    snprintf(m.publisher_keyid, sizeof(m.publisher_keyid), "%s", store_rows_text(res, 0, 9));
    m.manifest_counter = strtoull(store_rows_text(res, 0, 10), NULL, 10);
    snprintf(m.download, sizeof(m.download), "/fw/v1/images/%s", m.sha256_hex);
    /* The installed version as the device sent it, already validated. */
    char installed[FW_VERSION_MAX + 1];
    http_query_get(r->http->query, r->http->query_len, "installed", installed, sizeof(installed),
                   NULL);
    snprintf(m.installed_version, sizeof(m.installed_version), "%s", installed);
    m.issued_at = (int64_t)time(NULL);
    m.expires_at = m.issued_at + (int64_t)w->cfg->fw_manifest_ttl_s;
    if (fw__unhex_alloc(store_rows_text(res, 0, 7), &m.descriptor, &m.descriptor_len) != CMS_OK ||
        fw__unhex_alloc(store_rows_text(res, 0, 8), &m.publisher_sig, &m.publisher_sig_len) !=
            CMS_OK ||
        fw_manifest_build(&m, w->keys->dist, w->keys->ndist, &doc, &doc_len) != CMS_OK) {
        log_error("fw_manifest", r->peer_cn, r->peer_addr, "cannot build the manifest");
        https_reply_error(r, 500, "internal_error", "cannot build the manifest");
        fw_manifest_clear(&m);
        return;
    }
    log_info("fw_manifest", r->peer_cn, r->peer_addr,
             "offered release %lld %s -> %s (counter %u, manifest %llu)", (long long)m.release_id,
             m.installed_version, m.target_version, m.security_counter,
             (unsigned long long)m.manifest_counter);
    https_reply(r, 200, "application/json", doc, doc_len, NULL, 0);
    free(doc);
    fw_manifest_clear(&m);
}

int fw_manifest_get(https_req *r)
{
    static const char *const allowed[] = {"installed", "counter", NULL};
    fw_worker *w = fw__worker(r);
    char installed[FW_VERSION_MAX + 2], counter[16], num[24], ctr[16];
    uint64_t inum;
    if (!w || w->keys->ndist == 0) {
        https_reply_error(r, 503, "not_configured", "no fw_distribution_key configured");
        return CMS_OK;
    }
    if (!svc__query_ok(r, allowed))
        return CMS_OK;
    int has = http_query_get(r->http->query, r->http->query_len, "installed", installed,
                             sizeof(installed), NULL);
    if (has != 1 || fw_version_parse(installed, &inum) != CMS_OK) {
        https_reply_error(r, 400, "bad_request",
                          "installed=MAJOR.MINOR.PATCH (the version the device runs) is required");
        return CMS_OK;
    }
    has = http_query_get(r->http->query, r->http->query_len, "counter", counter, sizeof(counter),
                         NULL);
    if (has < 0) {
        https_reply_error(r, 400, "bad_request", "bad counter parameter");
        return CMS_OK;
    }
    if (has == 1) {
        char *end;
        unsigned long long c = strtoull(counter, &end, 10);
        if (*counter < '0' || *counter > '9' || *end || c > 4294967295ull) {
            https_reply_error(r, 400, "bad_request", "counter must be an integer 0..4294967295");
            return CMS_OK;
        }
        snprintf(ctr, sizeof(ctr), "%llu", c);
    }
    char dev[24];
    snprintf(dev, sizeof(dev), "%lld", (long long)r->device_id);
    snprintf(num, sizeof(num), "%llu", (unsigned long long)inum);
    const char *p[] = {dev, installed, num, has == 1 ? ctr : NULL, r->peer_addr};
    return svc__submit(r,
                       "SELECT release_id, serial, model, version, security_counter, sha256, "
                       "length, descriptor, publisher_sig, publisher_keyid, manifest_counter "
                       "FROM cms.fw_manifest_next($1::bigint, $2, $3::bigint, $4::bigint, $5)",
                       5, p, manifest_done);
}

/* ---- report ---------------------------------------------------------------------------- */

static void report_done(void *ctx, int status, const store_rows *res)
{
    https_req *r = ctx;
    if (status != CMS_OK) {
        svc__reply_db_error(r, status, res, fw__sqlstates);
        return;
    }
    const char *rid = store_rows_count(res) == 1 && !store_rows_null(res, 0, 0)
                          ? store_rows_text(res, 0, 0)
                          : NULL;
    /* 'flagged': a release not approved for (nor offered to) this device (sql/012). */
    bool flagged = store_rows_count(res) == 1 && strcmp(store_rows_text(res, 0, 1), "flagged") == 0;
    if (flagged)
        log_warn("fw_report_unapproved", r->peer_cn, r->peer_addr,
                 "report of a release not approved for this device: recorded as its reported "
                 "version, flagged, not counted");
    else
        log_info("fw_report", r->peer_cn, r->peer_addr, "report recorded (release %s)",
                 rid ? rid : "none");
    /* A report that can move a staged rollout: evaluate it once committed (sql/016). */
    const char *st = store_rows_count(res) == 1 ? store_rows_text(res, 0, 1) : "";
    bool moves = rid && !flagged &&
                 (strcmp(st, "installed") == 0 || strcmp(st, "failed") == 0 ||
                  strcmp(st, "rolled_back") == 0);
    store_t *store = fw__store(r);
    https_reply_json(r, 200,
                     json_pack("{s:b, s:o, s:b}", "recorded", 1, "release_id",
                               rid ? json_integer(strtoll(rid, NULL, 10)) : json_null(),
                               "flagged", flagged));
    if (moves)
        fw_rollout_after_report(store, rid);
}

int fw_report(https_req *r)
{
    static const char *const members[] = {"status", "version", "sha256", "reason", NULL};
    json_error_t jerr;
    char dev[24], sha[2 + 64 + 1];
    const char *why = NULL;
    json_t *b = json_loadb(r->http->body, r->http->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(b)) {
        json_decref(b);
        https_reply_error(r, 400, "bad_request", "the body must be a JSON object");
        return CMS_OK;
    }
    const char *key;
    json_t *v;
    json_object_foreach(b, key, v)
    {
        size_t i;
        for (i = 0; members[i] && strcmp(members[i], key) != 0; i++)
            ;
        if (!members[i] || !json_is_string(v))
            why = "members: status, version, sha256, reason (strings)";
    }
    const char *status = json_string_value(json_object_get(b, "status"));
    const char *version = json_string_value(json_object_get(b, "version"));
    const char *hex = json_string_value(json_object_get(b, "sha256"));
    const char *reason = json_string_value(json_object_get(b, "reason"));
    uint8_t digest[32];
    if (!why && !status)
        why = "status is required";
    if (!why && version && fw_version_parse(version, NULL) != CMS_OK)
        why = "version must be MAJOR.MINOR.PATCH";
    if (!why && hex && (strlen(hex) != 64 || fw_unhex(hex, 64, digest, 32) != CMS_OK))
        why = "sha256 must be 64 hex digits";
    if (!why && reason &&
        (json_string_length(json_object_get(b, "reason")) > 256 || strlen(reason) > 256))
        why = "reason is limited to 256 bytes";
    if (!why && strcmp(status, "installed") == 0 && !version)
        why = "an installed report must name the version";
    if (!why && strcmp(status, "rolled_back") == 0 && !hex)
        why = "a rolled_back report must name the image it rolled back from (sha256)";
    if (why) {
        json_decref(b);
        https_reply_error(r, 400, "bad_request", why);
        return CMS_OK;
    }
    if (hex) {
        memcpy(sha, "\\x", 2);
        fw_hex(digest, 32, sha + 2);
    }
    snprintf(dev, sizeof(dev), "%lld", (long long)r->device_id);
    const char *p[] = {dev, status, version, hex ? sha : NULL, reason, r->peer_addr};
    int rc = svc__submit(r,
                         "SELECT release_id, state FROM cms.fw_report($1::bigint, $2, $3, "
                         "$4::bytea, $5, $6)",
                         6, p, report_done);
    json_decref(b); /* params were copied by store_query */
    return rc;
}
