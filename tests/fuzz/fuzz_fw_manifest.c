/*
 * fuzz_fw_manifest.c - libFuzzer target for the firmware metadata parsers a
 * monitor (and cmsd at import) runs on peer bytes: release descriptors,
 * manifest documents, the signed manifest body, and the full verification.
 *
 * The input is used four ways:
 *  1. fw_descriptor_parse (what cmsd parses after the publisher signature);
 *  2. fw_manifest_split + fw_manifest_signed_parse of the decoded body;
 *  3. fw_manifest_signed_parse of the input itself (the signed grammar);
 *     when that succeeds, the manifest is rebuilt, signed with a key made at
 *     start-up, verified as its own device would (must pass the signature
 *     and binding checks), and its body must parse back to the same fields;
 *  4. fw_manifest_verify of the input as a document.
 * Invariants (abort on violation): a failure always gives a reason; an
 * accepted descriptor has a valid model and version; the round trip of 3.
 *
 *   make build/fuzz/fuzz_fw_manifest && build/fuzz/fuzz_fw_manifest tests/fuzz/corpus/fw_manifest
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "cms_err.h"
#include "fw_manifest.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_fw_manifest: invariant failed: %s (line %d)\n", #cond,           \
                    __LINE__);                                                                     \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static EVP_PKEY *dist, *pub;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    dist = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    pub = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    CHECK(dist && pub);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[512];
    fw_descriptor d;
    fw_manifest m, back;

    /* 1. descriptor */
    why[0] = '\0';
    if (fw_descriptor_parse(data, size, &d, why, sizeof(why)) == CMS_OK) {
        CHECK(fw_model_is_valid(d.model));
        CHECK(fw_version_parse(d.version, NULL) == CMS_OK);
        CHECK(d.length >= 1 && strlen(d.sha256_hex) == 64);
    } else {
        CHECK(why[0] != '\0');
    }

    /* 2. document -> signed bytes -> body */
    unsigned char *signed_buf = NULL;
    size_t signed_len = 0, nsigs = 0;
    fw_signature sigs[FW_MAX_SIGNATURES];
    why[0] = '\0';
    if (fw_manifest_split((const char *)data, size, &signed_buf, &signed_len, sigs, &nsigs, why,
                          sizeof(why)) == CMS_OK) {
        CHECK(signed_buf && nsigs >= 1 && nsigs <= FW_MAX_SIGNATURES);
        if (fw_manifest_signed_parse(signed_buf, signed_len, &m, why, sizeof(why)) != CMS_OK)
            CHECK(why[0] != '\0');
        fw_manifest_clear(&m);
    } else {
        CHECK(why[0] != '\0' && signed_buf == NULL);
    }
    free(signed_buf);

    /* 3. the signed grammar itself, and a round trip through build/verify */
    why[0] = '\0';
    if (fw_manifest_signed_parse(data, size, &m, why, sizeof(why)) == CMS_OK) {
        char *doc = NULL;
        size_t doc_len = 0;
        EVP_PKEY *keys[1] = {dist};
        CHECK(fw_manifest_build(&m, keys, 1, &doc, &doc_len) == CMS_OK);
        EVP_PKEY *dk[1] = {dist}, *pk[1] = {pub};
        fw_device_facts f = {.serial = m.serial,
                             .model = m.model,
                             .installed_version = m.installed_version,
                             .now = m.issued_at,
                             .dist_keys = dk,
                             .ndist = 1,
                             .publisher_keys = pk,
                             .npub = 1};
        int rc = fw_manifest_verify(doc, doc_len, &f, &back, why, sizeof(why));
        /* The signature and the binding hold; later checks may refuse. */
        /* Prefix checks: a reason may quote peer text (a key id, a model). */
        CHECK(rc == CMS_OK || strncmp(why, "manifest: no valid signature", 28) != 0);
        CHECK(rc == CMS_OK || strncmp(why, "manifest is for device", 22) != 0);
        if (back.serial[0]) {
            CHECK(strcmp(back.serial, m.serial) == 0 && strcmp(back.model, m.model) == 0);
            CHECK(back.length == m.length && back.manifest_counter == m.manifest_counter);
            CHECK(memcmp(back.sha256, m.sha256, 32) == 0);
            CHECK(back.descriptor_len == m.descriptor_len &&
                  memcmp(back.descriptor, m.descriptor, m.descriptor_len) == 0);
        }
        fw_manifest_clear(&back);
        free(doc);
    } else {
        CHECK(why[0] != '\0');
    }
    fw_manifest_clear(&m);

    /* 4. full verification of the input as a manifest document */
    EVP_PKEY *dk[1] = {dist}, *pk[1] = {pub};
    fw_device_facts f = {.serial = "MON-0001",
                         .model = "Example Monitor",
                         .installed_version = "1.0.0",
                         .now = 1800000000,
                         .dist_keys = dk,
                         .ndist = 1,
                         .publisher_keys = pk,
                         .npub = 1};
    why[0] = '\0';
    int rc = fw_manifest_verify((const char *)data, size, &f, &m, why, sizeof(why));
    CHECK(rc != CMS_OK); /* nothing the fuzzer makes is signed by our key */
    CHECK(why[0] != '\0');
    fw_manifest_clear(&m);
    return 0;
}
