/*
 * fw_manifest.c - the firmware distribution format (fw_manifest.h): release
 * descriptors and device manifests as bytes: strict parsing (jansson,
 * duplicates refused, no unknown members), building and signing a
 * manifest, and the monitor-side verification in the order docs/firmware.md
 * gives. No I/O; any thread.
 *
 * In proto, not svc/fw: this is a wire format parsed from bytes that arrive
 * from outside (a publisher's descriptor, a manifest on a monitor), fuzzed
 * like the HL7 and HTTP parsers, with no state, SQL or sockets; the service
 * (svc/fw) and the device-side reference verifier (tools/cms-fwverify) both
 * build on it. It signs and verifies through pki, a leaf layer (OpenSSL
 * only), which knows nothing of it.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "cms_err.h"
#include "fw_manifest.h"
#include "pki.h"

#define WHY(...) (snprintf(why, cap, __VA_ARGS__))

/* ---- small helpers ------------------------------------------------------------------- */

void fw_hex(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* Hex digit value + 1, 0 for anything else (image chunks arrive from
 * PostgreSQL as hex text: this decode is on the download path, see
 * docs/benchmarks.md P5). */
static const uint8_t hex_tab[256] = {
    ['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5,
    ['5'] = 6, ['6'] = 7, ['7'] = 8, ['8'] = 9, ['9'] = 10,
    ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
    ['A'] = 11, ['B'] = 12, ['C'] = 13, ['D'] = 14, ['E'] = 15, ['F'] = 16,
};

int fw_unhex(const char *in, size_t in_len, uint8_t *out, size_t n)
{
    if (in_len != 2 * n)
        return CMS_EPROTO;
    const unsigned char *u = (const unsigned char *)in;
    unsigned bad = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned hi = hex_tab[u[2 * i]], lo = hex_tab[u[2 * i + 1]];
        bad |= (hi == 0) | (lo == 0);
        out[i] = (uint8_t)(((hi - 1) << 4) | ((lo - 1) & 15));
    }
    return bad ? CMS_EPROTO : CMS_OK;
}

/* 64 lowercase hex digits -> 32 bytes. */
static int sha_from_hex(const char *s, uint8_t out[32])
{
    if (strlen(s) != 64)
        return CMS_EPROTO;
    for (size_t i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return CMS_EPROTO;
    return fw_unhex(s, 64, out, 32);
}

int fw_version_parse(const char *s, uint64_t *num)
{
    uint64_t parts[3] = {0, 0, 0};
    size_t np = 0;
    const char *p = s;
    if (!s || strlen(s) > FW_VERSION_MAX)
        return CMS_EPROTO;
    for (;;) {
        const char *start = p;
        uint64_t v = 0;
        while (*p >= '0' && *p <= '9') {
            v = v * 10 + (uint64_t)(*p - '0');
            p++;
            if (p - start > 6)
                return CMS_EPROTO;
        }
        if (p == start || (p - start > 1 && *start == '0'))
            return CMS_EPROTO;
        parts[np++] = v;
        if (np == 3)
            break;
        if (*p != '.')
            return CMS_EPROTO;
        p++;
    }
    if (*p != '\0')
        return CMS_EPROTO;
    if (num)
        *num = parts[0] * 1000000000000ull + parts[1] * 1000000ull + parts[2];
    return CMS_OK;
}

int fw_model_is_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > FW_MODEL_MAX || s[0] == ' ' || s[n - 1] == ' ')
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return 0;
    return 1;
}

static int serial_ok(const char *s)
{
    return pki_cn_is_valid(s) && strlen(s) <= FW_SERIAL_MAX;
}

void fw_time_format(int64_t t, char out[21])
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm) || tm.tm_year + 1900 > 9999 || tm.tm_year + 1900 < 0) {
        snprintf(out, 21, "invalid-time");
        return;
    }
    char tmp[80];
    snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    memcpy(out, tmp, 20);
    out[20] = '\0';
}

int fw_time_parse(const char *s, int64_t *out)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:ddZ";
    if (!s || strlen(s) != sizeof(shape) - 1)
        return CMS_EPROTO;
    for (size_t i = 0; shape[i]; i++) {
        if (shape[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != shape[i])
            return CMS_EPROTO;
    }
#define NUM2(i) ((s[i] - '0') * 10 + (s[i + 1] - '0'))
    struct tm tm = {0};
    tm.tm_year = NUM2(0) * 100 + NUM2(2) - 1900;
    tm.tm_mon = NUM2(5) - 1;
    tm.tm_mday = NUM2(8);
    tm.tm_hour = NUM2(11);
    tm.tm_min = NUM2(14);
    tm.tm_sec = NUM2(17);
#undef NUM2
    if (tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 ||
        tm.tm_sec > 59)
        return CMS_EPROTO;
    struct tm back = tm;
    time_t t = timegm(&back);
    if (t == (time_t)-1 || back.tm_mday != tm.tm_mday || back.tm_mon != tm.tm_mon)
        return CMS_EPROTO; /* e.g. February 30 */
    *out = (int64_t)t;
    return CMS_OK;
}

/* ---- strict object walking ----------------------------------------------------------- */

/* Refuses members of o not in the NULL-terminated list allowed. */
static int only_members(json_t *o, const char *const *allowed, const char *what, char *why,
                        size_t cap)
{
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        size_t i;
        for (i = 0; allowed[i]; i++)
            if (strcmp(key, allowed[i]) == 0)
                break;
        if (!allowed[i]) {
            WHY("%s: unexpected member \"%.40s\"", what, key);
            return CMS_EPROTO;
        }
    }
    return CMS_OK;
}

/* A string member (required), at most max bytes, copied into out. */
static int get_str(json_t *o, const char *name, char *out, size_t max, const char *what, char *why,
                   size_t cap)
{
    json_t *v = json_object_get(o, name);
    if (!json_is_string(v)) {
        WHY("%s: \"%s\" must be a string", what, name);
        return CMS_EPROTO;
    }
    size_t n = json_string_length(v);
    if (n > max || strlen(json_string_value(v)) != n) {
        WHY("%s: \"%s\" is too long or holds a NUL", what, name);
        return CMS_EPROTO;
    }
    memcpy(out, json_string_value(v), n + 1);
    return CMS_OK;
}

/* An integer member in [lo, hi]. */
static int get_int(json_t *o, const char *name, json_int_t lo, json_int_t hi, json_int_t *out,
                   const char *what, char *why, size_t cap)
{
    json_t *v = json_object_get(o, name);
    if (!json_is_integer(v)) {
        WHY("%s: \"%s\" must be an integer", what, name);
        return CMS_EPROTO;
    }
    json_int_t n = json_integer_value(v);
    if (n < lo || n > hi) {
        WHY("%s: \"%s\" out of range", what, name);
        return CMS_EPROTO;
    }
    *out = n;
    return CMS_OK;
}

/* A base64 string member, decoded (free()), at most max bytes decoded. */
static int get_b64(json_t *o, const char *name, size_t max, unsigned char **out, size_t *out_len,
                   const char *what, char *why, size_t cap)
{
    json_t *v = json_object_get(o, name);
    *out = NULL;
    if (!json_is_string(v) || json_string_length(v) > (max + 2) / 3 * 4 + 4) {
        WHY("%s: \"%s\" must be a base64 string of at most %zu bytes", what, name, max);
        return CMS_EPROTO;
    }
    int rc = pki_base64_decode(json_string_value(v), json_string_length(v), out, out_len);
    if (rc != CMS_OK) {
        WHY("%s: \"%s\" is not valid base64", what, name);
        return rc == CMS_ENOMEM ? CMS_ENOMEM : CMS_EPROTO;
    }
    if (*out_len > max || *out_len == 0) {
        free(*out);
        *out = NULL;
        WHY("%s: \"%s\" has a bad length", what, name);
        return CMS_EPROTO;
    }
    return CMS_OK;
}

static json_t *load_object(const unsigned char *buf, size_t len, const char *what, char *why,
                           size_t cap)
{
    json_error_t err;
    json_t *o = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &err);
    if (!o) {
        WHY("%s: not valid JSON (%.80s)", what, err.text);
        return NULL;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        WHY("%s: not a JSON object", what);
        return NULL;
    }
    return o;
}

/* ---- descriptors ---------------------------------------------------------------------- */

int fw_descriptor_parse(const unsigned char *buf, size_t len, fw_descriptor *out, char *why,
                        size_t cap)
{
    static const char *const members[] = {"format", "model",  "version", "security_counter",
                                          "sha256", "length", "notes",   NULL};
    static const char what[] = "descriptor";
    char fmt[32], hex[65], notes[FW_NOTES_MAX + 1];
    json_int_t n;
    int rc = CMS_EPROTO;
    memset(out, 0, sizeof(*out));
    if (len > FW_DESCRIPTOR_MAX) {
        WHY("descriptor: larger than %u bytes", FW_DESCRIPTOR_MAX);
        return CMS_ELIMIT;
    }
    json_t *o = load_object(buf, len, what, why, cap);
    if (!o)
        return CMS_EPROTO;
    if (only_members(o, members, what, why, cap) != CMS_OK ||
        get_str(o, "format", fmt, sizeof(fmt) - 1, what, why, cap) != CMS_OK)
        goto cleanup;
    if (strcmp(fmt, FW_DESCRIPTOR_FORMAT) != 0) {
        WHY("descriptor: format must be \"%s\"", FW_DESCRIPTOR_FORMAT);
        goto cleanup;
    }
    if (get_str(o, "model", out->model, FW_MODEL_MAX, what, why, cap) != CMS_OK ||
        get_str(o, "version", out->version, FW_VERSION_MAX, what, why, cap) != CMS_OK ||
        get_str(o, "sha256", hex, 64, what, why, cap) != CMS_OK)
        goto cleanup;
    if (!fw_model_is_valid(out->model)) {
        WHY("descriptor: model must be 1..%u printable ASCII characters", FW_MODEL_MAX);
        goto cleanup;
    }
    if (fw_version_parse(out->version, &out->version_num) != CMS_OK) {
        WHY("descriptor: version must be MAJOR.MINOR.PATCH (decimal, no leading zeros)");
        goto cleanup;
    }
    if (sha_from_hex(hex, out->sha256) != CMS_OK) {
        WHY("descriptor: sha256 must be 64 lowercase hex digits");
        goto cleanup;
    }
    memcpy(out->sha256_hex, hex, 65);
    if (get_int(o, "security_counter", 0, 4294967295LL, &n, what, why, cap) != CMS_OK)
        goto cleanup;
    out->security_counter = (uint32_t)n;
    if (get_int(o, "length", 1, 9007199254740992LL, &n, what, why, cap) != CMS_OK)
        goto cleanup;
    out->length = (uint64_t)n;
    if (json_object_get(o, "notes") &&
        get_str(o, "notes", notes, FW_NOTES_MAX, what, why, cap) != CMS_OK)
        goto cleanup;
    rc = CMS_OK;
cleanup:
    json_decref(o);
    return rc;
}

/* ---- manifests ------------------------------------------------------------------------ */

void fw_manifest_clear(fw_manifest *m)
{
    free(m->descriptor);
    free(m->publisher_sig);
    memset(m, 0, sizeof(*m));
}

int fw_manifest_build(const fw_manifest *m, EVP_PKEY *const *keys, size_t nkeys, char **out,
                      size_t *out_len)
{
    char issued[21], expires[21];
    char *desc_b64 = NULL, *psig_b64 = NULL, *body = NULL, *body_b64 = NULL;
    json_t *sb = NULL, *doc = NULL, *sigs = NULL;
    int rc = CMS_ENOMEM;
    *out = NULL;
    if (nkeys == 0 || nkeys > FW_MAX_SIGNATURES)
        return CMS_EINVAL;
    fw_time_format(m->issued_at, issued);
    fw_time_format(m->expires_at, expires);
    if (pki_base64_encode(m->descriptor, m->descriptor_len, 0, &desc_b64, NULL) != CMS_OK ||
        pki_base64_encode(m->publisher_sig, m->publisher_sig_len, 0, &psig_b64, NULL) != CMS_OK)
        goto cleanup;
    sb =
        json_pack("{s:s, s:{s:s, s:s}, s:s, s:{s:s, s:I, s:s, s:I, s:s}, s:I, s:{s:s, s:s, s:s},"
                  " s:s, s:s, s:I}",
                  "type", FW_SIGNED_TYPE, "device", "serial", m->serial, "model", m->model,
                  "installed_version", m->installed_version, "target", "version", m->target_version,
                  "security_counter", (json_int_t)m->security_counter, "sha256", m->sha256_hex,
                  "length", (json_int_t)m->length, "download", m->download, "release_id",
                  (json_int_t)m->release_id, "publisher", "keyid", m->publisher_keyid, "descriptor",
                  desc_b64, "signature", psig_b64, "issued_at", issued, "expires_at", expires,
                  "manifest_counter", (json_int_t)m->manifest_counter);
    if (!sb)
        goto cleanup;
    body = json_dumps(sb, JSON_COMPACT | JSON_SORT_KEYS);
    if (!body)
        goto cleanup;
    size_t body_len = strlen(body);
    if (pki_base64_encode((const unsigned char *)body, body_len, 0, &body_b64, NULL) != CMS_OK)
        goto cleanup;
    sigs = json_array();
    if (!sigs)
        goto cleanup;
    for (size_t i = 0; i < nkeys; i++) {
        unsigned char *sig = NULL;
        size_t sig_len = 0;
        char id[PKI_SHA256_HEX_SIZE], *sig_b64 = NULL;
        if (!EVP_PKEY_is_a(keys[i], "ED25519")) {
            rc = CMS_EINVAL;
            goto cleanup;
        }
        if ((rc = pki_pubkey_id_sha256(keys[i], id)) != CMS_OK ||
            (rc = pki_sign(keys[i], (const unsigned char *)body, body_len, &sig, &sig_len)) !=
                CMS_OK)
            goto cleanup;
        rc = pki_base64_encode(sig, sig_len, 0, &sig_b64, NULL);
        free(sig);
        if (rc != CMS_OK)
            goto cleanup;
        rc = json_array_append_new(sigs, json_pack("{s:s, s:s, s:s}", "keyid", id, "alg", "ed25519",
                                                   "sig", sig_b64)) == 0
                 ? CMS_OK
                 : CMS_ENOMEM;
        free(sig_b64);
        if (rc != CMS_OK)
            goto cleanup;
    }
    doc = json_pack("{s:s, s:s, s:O}", "format", FW_MANIFEST_FORMAT, "signed", body_b64,
                    "signatures", sigs);
    if (!doc) {
        rc = CMS_ENOMEM;
        goto cleanup;
    }
    *out = json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS);
    rc = *out ? CMS_OK : CMS_ENOMEM;
    if (*out && out_len)
        *out_len = strlen(*out);
cleanup:
    json_decref(sb);
    json_decref(doc);
    json_decref(sigs);
    free(desc_b64);
    free(psig_b64);
    free(body);
    free(body_b64);
    return rc;
}

int fw_manifest_split(const char *doc, size_t len, unsigned char **signed_buf, size_t *signed_len,
                      fw_signature *sigs, size_t *nsigs, char *why, size_t cap)
{
    static const char *const members[] = {"format", "signed", "signatures", NULL};
    static const char *const sig_members[] = {"keyid", "alg", "sig", NULL};
    static const char what[] = "manifest";
    char fmt[32];
    int rc = CMS_EPROTO;
    *signed_buf = NULL;
    *nsigs = 0;
    if (len > FW_MANIFEST_MAX) {
        WHY("manifest: larger than %u bytes", FW_MANIFEST_MAX);
        return CMS_ELIMIT;
    }
    json_t *o = load_object((const unsigned char *)doc, len, what, why, cap);
    if (!o)
        return CMS_EPROTO;
    if (only_members(o, members, what, why, cap) != CMS_OK ||
        get_str(o, "format", fmt, sizeof(fmt) - 1, what, why, cap) != CMS_OK)
        goto cleanup;
    if (strcmp(fmt, FW_MANIFEST_FORMAT) != 0) {
        WHY("manifest: format must be \"%s\"", FW_MANIFEST_FORMAT);
        goto cleanup;
    }
    json_t *a = json_object_get(o, "signatures");
    if (!json_is_array(a) || json_array_size(a) == 0 || json_array_size(a) > FW_MAX_SIGNATURES) {
        WHY("manifest: \"signatures\" must be an array of 1..%u signatures", FW_MAX_SIGNATURES);
        goto cleanup;
    }
    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *s = json_array_get(a, i);
        char alg[16];
        unsigned char *sig = NULL;
        size_t sig_len = 0;
        if (!json_is_object(s)) {
            WHY("manifest: signature %zu is not an object", i);
            goto cleanup;
        }
        if (only_members(s, sig_members, "manifest signature", why, cap) != CMS_OK ||
            get_str(s, "keyid", sigs[i].keyid, 64, what, why, cap) != CMS_OK ||
            get_str(s, "alg", alg, sizeof(alg) - 1, what, why, cap) != CMS_OK)
            goto cleanup;
        if (strcmp(alg, "ed25519") != 0) {
            WHY("manifest: signature algorithm must be ed25519");
            goto cleanup;
        }
        if ((rc = get_b64(s, "sig", FW_SIG_MAX, &sig, &sig_len, what, why, cap)) != CMS_OK) {
            if (rc != CMS_ENOMEM)
                rc = CMS_EPROTO;
            goto cleanup;
        }
        rc = CMS_EPROTO;
        memcpy(sigs[i].sig, sig, sig_len);
        sigs[i].sig_len = sig_len;
        free(sig);
        *nsigs = i + 1;
    }
    if ((rc = get_b64(o, "signed", FW_MANIFEST_MAX, signed_buf, signed_len, what, why, cap)) !=
        CMS_OK) {
        if (rc != CMS_ENOMEM)
            rc = CMS_EPROTO;
        goto cleanup;
    }
    rc = CMS_OK;
cleanup:
    json_decref(o);
    return rc;
}

int fw_manifest_signed_parse(const unsigned char *buf, size_t len, fw_manifest *out, char *why,
                             size_t cap)
{
    static const char *const members[] = {
        "type",      "device",    "installed_version", "target",           "release_id",
        "publisher", "issued_at", "expires_at",        "manifest_counter", NULL};
    static const char *const dev_members[] = {"serial", "model", NULL};
    static const char *const tgt_members[] = {"version", "security_counter", "sha256",
                                              "length",  "download",         NULL};
    static const char *const pub_members[] = {"keyid", "descriptor", "signature", NULL};
    static const char what[] = "manifest body";
    char type[40], hex[65], t1[24], t2[24];
    json_int_t n;
    int rc = CMS_EPROTO;
    memset(out, 0, sizeof(*out));
    json_t *o = load_object(buf, len, what, why, cap);
    if (!o)
        return CMS_EPROTO;
    json_t *dev = json_object_get(o, "device"), *tgt = json_object_get(o, "target"),
           *pub = json_object_get(o, "publisher");
    if (only_members(o, members, what, why, cap) != CMS_OK ||
        get_str(o, "type", type, sizeof(type) - 1, what, why, cap) != CMS_OK)
        goto cleanup;
    if (strcmp(type, FW_SIGNED_TYPE) != 0) {
        WHY("manifest body: type must be \"%s\"", FW_SIGNED_TYPE);
        goto cleanup;
    }
    if (!json_is_object(dev) || !json_is_object(tgt) || !json_is_object(pub)) {
        WHY("manifest body: device, target and publisher must be objects");
        goto cleanup;
    }
    if (only_members(dev, dev_members, "manifest device", why, cap) != CMS_OK ||
        only_members(tgt, tgt_members, "manifest target", why, cap) != CMS_OK ||
        only_members(pub, pub_members, "manifest publisher", why, cap) != CMS_OK ||
        get_str(dev, "serial", out->serial, FW_SERIAL_MAX, what, why, cap) != CMS_OK ||
        get_str(dev, "model", out->model, FW_MODEL_MAX, what, why, cap) != CMS_OK ||
        get_str(o, "installed_version", out->installed_version, FW_VERSION_MAX, what, why, cap) !=
            CMS_OK ||
        get_str(tgt, "version", out->target_version, FW_VERSION_MAX, what, why, cap) != CMS_OK ||
        get_str(tgt, "sha256", hex, 64, what, why, cap) != CMS_OK ||
        get_str(tgt, "download", out->download, sizeof(out->download) - 1, what, why, cap) !=
            CMS_OK ||
        get_str(pub, "keyid", out->publisher_keyid, 64, what, why, cap) != CMS_OK ||
        get_str(o, "issued_at", t1, 20, what, why, cap) != CMS_OK ||
        get_str(o, "expires_at", t2, 20, what, why, cap) != CMS_OK)
        goto cleanup;
    if (!serial_ok(out->serial) || !fw_model_is_valid(out->model)) {
        WHY("manifest body: bad device serial or model");
        goto cleanup;
    }
    if (fw_version_parse(out->installed_version, &out->installed_num) != CMS_OK ||
        fw_version_parse(out->target_version, &out->target_num) != CMS_OK) {
        WHY("manifest body: versions must be MAJOR.MINOR.PATCH");
        goto cleanup;
    }
    if (sha_from_hex(hex, out->sha256) != CMS_OK) {
        WHY("manifest body: target sha256 must be 64 lowercase hex digits");
        goto cleanup;
    }
    memcpy(out->sha256_hex, hex, 65);
    if (fw_time_parse(t1, &out->issued_at) != CMS_OK ||
        fw_time_parse(t2, &out->expires_at) != CMS_OK) {
        WHY("manifest body: issued_at/expires_at must be YYYY-MM-DDTHH:MM:SSZ");
        goto cleanup;
    }
    if (get_int(tgt, "security_counter", 0, 4294967295LL, &n, what, why, cap) != CMS_OK)
        goto cleanup;
    out->security_counter = (uint32_t)n;
    if (get_int(tgt, "length", 1, 9007199254740992LL, &n, what, why, cap) != CMS_OK)
        goto cleanup;
    out->length = (uint64_t)n;
    if (get_int(o, "release_id", 1, INT64_MAX, &n, what, why, cap) != CMS_OK)
        goto cleanup;
    out->release_id = (int64_t)n;
    if (get_int(o, "manifest_counter", 1, INT64_MAX, &n, what, why, cap) != CMS_OK)
        goto cleanup;
    out->manifest_counter = (uint64_t)n;
    if ((rc = get_b64(pub, "descriptor", FW_DESCRIPTOR_MAX, &out->descriptor, &out->descriptor_len,
                      what, why, cap)) != CMS_OK ||
        (rc = get_b64(pub, "signature", FW_SIG_MAX, &out->publisher_sig, &out->publisher_sig_len,
                      what, why, cap)) != CMS_OK) {
        if (rc != CMS_ENOMEM)
            rc = CMS_EPROTO;
        goto cleanup;
    }
    char expect[128];
    snprintf(expect, sizeof(expect), "/fw/v1/images/%s", out->sha256_hex);
    if (strcmp(out->download, expect) != 0) {
        WHY("manifest body: download must be %s", expect);
        rc = CMS_EPROTO;
        goto cleanup;
    }
    rc = CMS_OK;
cleanup:
    json_decref(o);
    return rc;
}

/* ---- verification (what a monitor does) ------------------------------------------------ */

/* Index of the pinned key whose id is keyid, or -1. */
static int find_key(EVP_PKEY *const *keys, size_t n, const char *keyid)
{
    for (size_t i = 0; i < n; i++) {
        char id[PKI_SHA256_HEX_SIZE];
        if (pki_pubkey_id_sha256(keys[i], id) == CMS_OK && strcmp(id, keyid) == 0)
            return (int)i;
    }
    return -1;
}

int fw_manifest_verify(const char *doc, size_t len, const fw_device_facts *dev, fw_manifest *out,
                       char *why, size_t cap)
{
    unsigned char *body = NULL;
    size_t body_len = 0, nsigs = 0;
    fw_signature sigs[FW_MAX_SIGNATURES];
    fw_descriptor d;
    char dwhy[200];
    uint64_t installed_num;
    int rc;

    memset(out, 0, sizeof(*out));
    /* 1. Structure of the document (nothing signed is parsed yet). */
    rc = fw_manifest_split(doc, len, &body, &body_len, sigs, &nsigs, why, cap);
    if (rc != CMS_OK)
        return rc;
    /* 2. A valid signature by a pinned distribution key over the exact signed bytes. */
    bool signed_ok = false;
    for (size_t i = 0; i < nsigs && !signed_ok; i++) {
        int k = find_key(dev->dist_keys, dev->ndist, sigs[i].keyid);
        if (k >= 0 &&
            pki_verify(dev->dist_keys[k], body, body_len, sigs[i].sig, sigs[i].sig_len) == CMS_OK)
            signed_ok = true;
    }
    if (!signed_ok) {
        WHY("manifest: no valid signature by a pinned distribution key");
        rc = CMS_EPERM;
        goto cleanup;
    }
    /* 3. Only now parse the signed bytes. */
    rc = fw_manifest_signed_parse(body, body_len, out, why, cap);
    if (rc != CMS_OK)
        goto cleanup;
    rc = CMS_EPERM;
    /* 4. Bound to this device: serial, model, the version it runs. */
    if (strcmp(out->serial, dev->serial) != 0) {
        WHY("manifest is for device %s, not %s (wrong device / mix-and-match)", out->serial,
            dev->serial);
        goto cleanup;
    }
    if (strcmp(out->model, dev->model) != 0) {
        WHY("manifest is for model \"%s\", this device is \"%s\" (wrong software)", out->model,
            dev->model);
        goto cleanup;
    }
    if (fw_version_parse(dev->installed_version, &installed_num) != CMS_OK) {
        WHY("own installed version \"%s\" is not MAJOR.MINOR.PATCH", dev->installed_version);
        rc = CMS_EINVAL;
        goto cleanup;
    }
    if (out->installed_num != installed_num) {
        WHY("manifest was made for installed version %s, this device runs %s",
            out->installed_version, dev->installed_version);
        goto cleanup;
    }
    /* 5. Freshness: validity window against the device's clock. */
    if (out->expires_at <= out->issued_at || out->expires_at - out->issued_at > FW_MAX_VALIDITY_S) {
        WHY("manifest validity window is empty or longer than %d s", FW_MAX_VALIDITY_S);
        goto cleanup;
    }
    if (dev->now >= out->expires_at) {
        char t[21];
        fw_time_format(out->expires_at, t);
        WHY("manifest expired at %s (freeze / replay of an old manifest)", t);
        goto cleanup;
    }
    if (out->issued_at > dev->now + FW_CLOCK_SKEW_S) {
        WHY("manifest issued in the future (clock skew over %d s)", FW_CLOCK_SKEW_S);
        goto cleanup;
    }
    /* 6. Manifest counter: strictly above the last one accepted. */
    if (out->manifest_counter <= dev->last_manifest_counter) {
        WHY("manifest counter %llu is not above the last accepted %llu (replayed or old "
            "manifest)",
            (unsigned long long)out->manifest_counter,
            (unsigned long long)dev->last_manifest_counter);
        goto cleanup;
    }
    /* 7. The publisher's signature over the embedded descriptor, by a pinned key. */
    int pk = find_key(dev->publisher_keys, dev->npub, out->publisher_keyid);
    if (pk < 0) {
        WHY("descriptor signed by key %.16s..., which is not a pinned publisher key",
            out->publisher_keyid);
        goto cleanup;
    }
    if (pki_verify(dev->publisher_keys[pk], out->descriptor, out->descriptor_len,
                   out->publisher_sig, out->publisher_sig_len) != CMS_OK) {
        WHY("publisher signature over the descriptor is not valid");
        goto cleanup;
    }
    /* 8. The descriptor says the same as the manifest. */
    if (fw_descriptor_parse(out->descriptor, out->descriptor_len, &d, dwhy, sizeof(dwhy)) !=
        CMS_OK) {
        WHY("%s", dwhy);
        rc = CMS_EPROTO;
        goto cleanup;
    }
    if (strcmp(d.model, dev->model) != 0) {
        WHY("descriptor is for model \"%s\", this device is \"%s\" (wrong software)", d.model,
            dev->model);
        goto cleanup;
    }
    if (d.version_num != out->target_num || d.security_counter != out->security_counter ||
        CRYPTO_memcmp(d.sha256, out->sha256, 32) != 0 || d.length != out->length) {
        WHY("descriptor and manifest disagree on version, counter, hash or length "
            "(mix-and-match)");
        goto cleanup;
    }
    /* 9. No rollback. */
    if (out->target_num <= installed_num) {
        WHY("target version %s is not newer than installed %s (rollback)", out->target_version,
            dev->installed_version);
        goto cleanup;
    }
    if (out->security_counter < dev->security_counter) {
        WHY("target security counter %u is below the device's %u (rollback)", out->security_counter,
            dev->security_counter);
        goto cleanup;
    }
    /* 10. Endless data: the length must fit what the device can take. */
    if (dev->max_image_bytes && out->length > dev->max_image_bytes) {
        WHY("image length %llu exceeds the device's limit %llu", (unsigned long long)out->length,
            (unsigned long long)dev->max_image_bytes);
        goto cleanup;
    }
    rc = CMS_OK;
cleanup:
    free(body);
    return rc;
}
