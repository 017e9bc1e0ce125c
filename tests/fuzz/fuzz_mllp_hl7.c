/*
 * fuzz_mllp_hl7.c - libFuzzer target for everything a monitor's bytes reach
 * before the database: MLLP framing, HL7 parsing, PCD-01 extraction (numeric,
 * text and waveform content: NA/MA rows and their facets), PCD-04 ORU^R40
 * alarm extraction and the ACK we send back.
 *
 * The input is a byte stream as read from the socket. It is fed twice: in
 * one piece to decoder A, whose frame callback runs hl7_parse +
 * pcd01_extract + hl7_ack_encode, and byte by byte to decoder B, which must
 * deliver the same frames and end with the same result (split invariance).
 * An input that does not start with 0x0B is also processed as one bare HL7
 * payload, so that the parser is reached without the fuzzer having to learn
 * the framing first.
 *
 * Checked invariants (abort on violation), beyond ASan/UBSan:
 *   - every ACK we encode parses back with 3 (AE/AR) or 2 (AA) segments,
 *     MSA-1 is the code and MSA-2 unescapes to the control id we echoed;
 *   - the frames and the final return code do not depend on read sizes;
 *   - hl7_fields_get (fields split once) returns exactly what hl7_get returns;
 *   - pcd01_extract_full agrees with pcd01_extract on the vitals, its blocks
 *     lie inside the sample arena, within the block limit, each with a
 *     positive rate and a scale_exp in -1..9 whose integers fit 32 bits;
 *     an AE is only ever asked for by waveform content;
 *   - pcd04_extract: on success every alarm has an id, a known phase and a
 *     type, facets point at their alarm; on error no alarm is left.
 *
 * Build: make build/fuzz/fuzz_mllp_hl7
 * Run:   build/fuzz/fuzz_mllp_hl7 -max_len=8192 tests/fuzz/corpus/mllp_hl7
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cms_err.h"
#include "hl7.h"
#include "mllp.h"
#include "pcd01.h"
#include "pcd04.h"

#define FUZZ_MAX_FRAME 2048
#define FUZZ_MAX_FRAMES 256

static hl7_msg msg; /* large: static, the target is single-threaded */
static hl7_msg ack_msg;
static pcd01_msg pcd;
static pcd01_msg pcd_full;
static pcd01_waves waves;
static pcd04_msg r40;
static int waves_ready;

#define FUZZ_MAX_BLOCK 512

typedef struct frames {
    size_t n;
    size_t len[FUZZ_MAX_FRAMES];
    uint64_t hash[FUZZ_MAX_FRAMES];
    size_t checked; /* decoder B's position in the list */
} frames;

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "invariant violated: %s\n", what);
        abort();
    }
}

/* hl7_fields_get (one split per segment) answers exactly as hl7_get; a few
 * (repetition, component, subcomponent) paths per field keep the runs fast
 * (tests/unit/test_hl7.c goes through all of them). */
static void check_split(const hl7_msg *m)
{
    static const unsigned path[][3] = {{0, 0, 0}, {1, 1, 0}, {2, 1, 0}, {1, 2, 1}};
    hl7_fields fs;
    for (size_t seg = 0; seg < m->nseg && seg < 8; seg++) {
        hl7_split(m, seg, &fs);
        for (unsigned f = 0; f <= HL7_SPLIT_FIELDS + 1; f++)
            for (size_t k = 0; k < sizeof path / sizeof path[0]; k++) {
                hl7_str a = hl7_get(m, seg, f, path[k][0], path[k][1], path[k][2]);
                hl7_str b = hl7_fields_get(&fs, f, path[k][0], path[k][1], path[k][2]);
                check(a.p == b.p && a.len == b.len, "hl7_fields_get == hl7_get");
            }
    }
}

static void check_ack(const hl7_ack *a, const char *ack, int n)
{
    char reason[128], text[512];
    static const char *codes[] = {"AA", "AE", "AR"};
    hl7_str s;
    int rc;

    rc = hl7_parse(&ack_msg, ack, (size_t)n, reason, sizeof(reason));
    check(rc == CMS_OK, "our ACK parses");
    check(ack_msg.nseg == (a->code == HL7_AA ? 2u : 3u), "ACK segment count");
    s = hl7_field(&ack_msg, 1, 1);
    check(s.len == 2 && memcmp(s.p, codes[a->code], 2) == 0, "MSA-1 is the ack code");
    rc = hl7_get_text(&ack_msg, 1, 2, 0, 0, 0, text, sizeof(text));
    if (rc >= 0) {
        /* hl7_escape turns control characters (e.g. from \X0D\) into spaces */
        const char *c = a->control_id;
        size_t i = 0;
        for (; c[i] && text[i]; i++) {
            unsigned char want = (unsigned char)c[i];
            if (want < 0x20 && want != '\t')
                want = ' ';
            if (want == 0x7f)
                want = ' ';
            check((unsigned char)text[i] == want, "MSA-2 round-trips the control id");
        }
        check(c[i] == '\0' && text[i] == '\0', "MSA-2 round-trips the control id (length)");
    }
    if (a->code != HL7_AA) {
        s = hl7_field(&ack_msg, 2, 4);
        check(s.len == 1 && s.p[0] == 'E', "ERR-4 is E");
    }
}

/* The waveform-aware extraction of the same message. */
static void check_full(const hl7_msg *m, int rc_plain)
{
    pcd01_verdict v;
    int rc;

    if (!waves_ready) {
        pcd01_waves_init(&waves, FUZZ_MAX_BLOCK);
        waves_ready = 1;
    }
    rc = pcd01_extract_full(m, &pcd_full, &waves, &v);
    check(v.err_code != NULL, "pcd01_extract_full sets err_code");
    check((rc == CMS_OK) == (v.ack == HL7_AA), "AA exactly on success");
    if (rc_plain != CMS_OK && rc == CMS_OK)
        check(0, "the full extraction accepts what the plain one refused");
    if (rc != CMS_OK)
        return;
    check(pcd_full.vitals.nobs == pcd.vitals.nobs, "same vitals with and without waveforms");
    for (size_t i = 0; i < pcd_full.vitals.nobs; i++)
        check(strcmp(pcd_full.vitals.obs[i].code, pcd.vitals.obs[i].code) == 0, "same vital codes");
    check(waves.nwaves <= PCD01_MAX_WAVES, "nwaves within limit");
    check(waves.nfacets <= PCD01_MAX_FACETS, "nfacets within limit");
    check(pcd_full.ntexts <= PCD01_MAX_TEXTS, "ntexts within limit");
    for (size_t i = 0; i < waves.nwaves; i++) {
        const pcd01_wave *b = &waves.waves[i];
        check(b->nsamples > 0 && b->nsamples <= FUZZ_MAX_BLOCK, "block size within limit");
        check(b->first + b->nsamples <= waves.nsamples, "block inside the arena");
        check(b->rate_hz > 0 && b->rate_hz <= 1e6, "block has a rate");
        check(b->resolution > 0, "block has a resolution");
        check(b->scale_exp >= -1 && b->scale_exp <= 9, "scale_exp in range");
        if (b->scale_exp >= 0) {
            double f = 1;
            for (int k = 0; k < b->scale_exp; k++)
                f *= 10;
            for (size_t j = 0; j < b->nsamples; j++) {
                double s = waves.samples[b->first + j] * f;
                check(s > -2147483648.5 && s < 2147483647.5, "scaled sample fits 32 bits");
            }
        }
    }
    for (size_t i = 0; i < waves.nfacets; i++)
        check(waves.facets[i].owner < waves.nwaves, "facet belongs to a block");
}

static void check_r40(const hl7_msg *m)
{
    pcd01_msg *hdr = &pcd_full;
    pcd01_verdict v;
    int rc = pcd04_extract(m, hdr, &r40, &v);

    check((rc == CMS_OK) == (v.ack == HL7_AA), "R40: AA exactly on success");
    check(rc == CMS_OK || v.ack == HL7_AR, "R40: errors are AR");
    if (rc != CMS_OK) {
        check(r40.nalarms == 0, "R40: no alarm left on error");
        return;
    }
    check(r40.nalarms > 0 && r40.nalarms <= PCD04_MAX_ALARMS, "R40: alarm count");
    for (size_t i = 0; i < r40.nalarms; i++) {
        const pcd04_alarm *al = &r40.alarms[i];
        check(al->alarm_id[0] != '\0', "R40: alarm id");
        check(al->phase[0] != '\0', "R40: phase");
        check(al->event_code[0] || al->event_label[0], "R40: alarm type");
        check(al->first_facet + al->nfacets <= r40.nfacets, "R40: facets inside");
    }
    for (size_t i = 0; i < r40.nfacets; i++)
        check(r40.facets[i].owner < r40.nalarms, "R40: facet belongs to an alarm");
}

static void process(const char *payload, size_t len)
{
    char reason[256], ack[2048];
    const char *err_code = NULL;
    hl7_ack a;
    int rc, n;

    memset(&a, 0, sizeof(a));
    a.our_app = "CMS";
    a.our_facility = "FUZZ";
    a.ack_control_id = "CMS-ACK-1";
    a.timestamp = "20261128061454.123+0000";

    rc = hl7_parse(&msg, payload, len, reason, sizeof(reason));
    if (rc == CMS_OK)
        check_split(&msg);
    if (rc < 0) {
        /* What the server does: AR without an echo. */
        a.code = HL7_AR;
        a.control_id = "";
        a.reason = reason;
        a.err_code = "100";
        n = hl7_ack_encode(&a, ack, sizeof(ack));
        check(n > 0, "AR for an unparsable message fits");
        check_ack(&a, ack, n);
        return;
    }

    /* Poke at accessors with coordinates taken from the message itself. */
    for (size_t i = 0; i < msg.nseg && i < 8; i++) {
        char text[64];
        unsigned f = (unsigned)(msg.seg[i].len % 24);
        (void)hl7_get_text(&msg, i, f, (unsigned)(i % 3), (unsigned)(i % 4), (unsigned)(i % 2),
                           text, sizeof(text));
        (void)hl7_segment_name(&msg, i);
    }
    (void)hl7_find_segment(&msg, "OBX", 1);

    rc = pcd01_extract(&msg, &pcd, &err_code, reason, sizeof(reason));
    check(err_code != NULL, "pcd01_extract sets err_code");
    check(pcd.vitals.nobs <= PCD01_MAX_OBS, "nobs within limit");
    for (size_t i = 0; i < pcd.vitals.nobs && rc == CMS_OK; i++) {
        const char *ts = pcd.vitals.obs[i].observed_at;
        check(strlen(pcd.vitals.obs[i].value_text) > 0, "stored NM has a value");
        check(ts[0] == '\0' || strlen(ts) >= 26, "observed_at is empty or formatted");
    }

    check_full(&msg, rc);
    check_r40(&msg);

    a.code = rc == CMS_OK ? HL7_AA : (rc == CMS_EPROTO || rc == CMS_EINVAL ? HL7_AR : HL7_AE);
    a.their_app = pcd.sending_app[0];
    a.their_facility = pcd.sending_facility;
    a.control_id = pcd.vitals.control_id;
    a.version = pcd.version;
    a.trigger = pcd.trigger;
    a.reason = rc == CMS_OK ? NULL : reason;
    a.err_code = rc == CMS_OK ? NULL : err_code;
    n = hl7_ack_encode(&a, ack, sizeof(ack));
    check(n > 0 || n == CMS_ELIMIT, "ACK encodes or reports ELIMIT");
    if (n > 0)
        check_ack(&a, ack, n);
}

static int on_frame_a(void *ctx, const char *payload, size_t len)
{
    frames *fr = ctx;

    check(payload[len] == '\0', "payload NUL-terminated");
    check(len <= FUZZ_MAX_FRAME, "frame within max_frame");
    if (fr->n < FUZZ_MAX_FRAMES) {
        fr->len[fr->n] = len;
        fr->hash[fr->n] = fnv1a(payload, len);
    }
    fr->n++;
    process(payload, len);
    return 0;
}

static int on_frame_b(void *ctx, const char *payload, size_t len)
{
    frames *fr = ctx;
    size_t i = fr->checked++;

    check(i < fr->n, "split feed delivers no extra frame");
    if (i < FUZZ_MAX_FRAMES) {
        check(fr->len[i] == len, "split feed: same frame length");
        check(fr->hash[i] == fnv1a(payload, len), "split feed: same frame bytes");
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    mllp_decoder a, b;
    frames fr;
    int rc_a, rc_b = CMS_OK;

    memset(&fr, 0, sizeof(fr));
    mllp_decoder_init(&a, FUZZ_MAX_FRAME, on_frame_a, &fr);
    mllp_decoder_init(&b, FUZZ_MAX_FRAME, on_frame_b, &fr);

    rc_a = mllp_decoder_feed(&a, in, size);
    for (size_t i = 0; i < size && rc_b == CMS_OK; i++)
        rc_b = mllp_decoder_feed(&b, in + i, 1);
    check(rc_a == rc_b, "split feed: same result");
    check(fr.checked == fr.n, "split feed: same number of frames");
    check(mllp_decoder_buffered(&a) == mllp_decoder_buffered(&b), "same buffered bytes");
    check(mllp_decoder_buffered(&a) <= FUZZ_MAX_FRAME, "buffered within max_frame");
    if (rc_a < 0)
        check(mllp_decoder_feed(&a, "\r", 1) == CMS_EPROTO, "failed decoder stays failed");
    mllp_decoder_free(&a);
    mllp_decoder_free(&b);

    if (size > 0 && data[0] != MLLP_SB) {
        /* exact-size copy: no NUL after the payload */
        char *copy = malloc(size);
        if (copy) {
            memcpy(copy, in, size);
            process(copy, size);
            free(copy);
        }
    }
    return 0;
}
