/*
 * cms-fwverify - reference monitor-side firmware verifier.
 *
 * Does what a monitor must do before installing (docs/firmware.md, "What a
 * monitor checks"), with the keys it pins and the facts it knows about
 * itself, and says ACCEPT or REFUSE with the reason:
 *   1..10  the manifest (fw_manifest_verify in server/proto/fw_manifest.c):
 *          a pinned distribution key's signature over the signed bytes,
 *          device serial and model, installed version, validity window
 *          against the clock, manifest counter above the last accepted,
 *          a pinned publisher key's signature over the embedded descriptor,
 *          descriptor = target, no rollback, length within the device;
 *   11     the image: exactly the manifest's length (a regular file of
 *          another size is refused before reading; from a pipe, at most
 *          length bytes are ever read), SHA-256 equal to the manifest's.
 * Exit status: 0 accepted, 1 refused, 2 usage or unreadable input.
 * On acceptance it prints "manifest_counter=N": the value the monitor must
 * persist as its new last accepted counter.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "cms_err.h"
#include "fw_manifest.h"
#include "pki.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: cms-fwverify --dist-key PUB [--dist-key PUB] --publisher-key PUB [...]\n"
            "                    --serial SERIAL --model MODEL --installed X.Y.Z\n"
            "                    [--counter N] [--last-manifest-counter N] [--now TIME]\n"
            "                    [--max-image-bytes N] --manifest FILE [--image FILE]\n\n"
            "Verifies a firmware manifest (and image) as a monitor must before installing.\n"
            "  --dist-key PUB            pinned distribution public key (PEM, Ed25519); up to 2\n"
            "  --publisher-key PUB       pinned publisher public key (PEM); up to 8\n"
            "  --serial, --model         this device's identity\n"
            "  --installed X.Y.Z         the version it runs\n"
            "  --counter N               security counter of the firmware it runs (default 0)\n"
            "  --last-manifest-counter N highest manifest counter accepted before (default 0)\n"
            "  --now TIME                the clock: seconds since the epoch or\n"
            "                            YYYY-MM-DDTHH:MM:SSZ (default: the system clock)\n"
            "  --max-image-bytes N       what the device can store (default: no limit)\n"
            "  --manifest FILE           the manifest (as GET /fw/v1/manifest returned it)\n"
            "  --image FILE              the downloaded image ('-' = standard input); without\n"
            "                            it only the manifest is checked (before a download)\n"
            "Exit: 0 ACCEPT, 1 REFUSE (reason on stdout), 2 usage/unreadable input.\n");
}

static int refuse(const char *why)
{
    printf("REFUSE: %s\n", why);
    return 1;
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!s || *s < '0' || *s > '9')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return -1;
    *out = v;
    return 0;
}

/* Reads a whole small file (at most max bytes; more is an error). */
static int read_small(const char *path, size_t max, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    int err = ferror(f);
    fclose(f);
    if (!buf || err || n > max) {
        free(buf);
        return n > max ? -2 : -1;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

/* Checks the image against m: length first (never reads past it), then SHA-256. */
static int check_image(const char *path, const fw_manifest *m, char *why, size_t cap)
{
    int fd = strcmp(path, "-") == 0 ? 0 : open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    unsigned char buf[65536], digest[32];
    unsigned int hl = 0;
    int rc = -1;
    if (fd < 0) {
        snprintf(why, cap, "cannot open image %s: %s", path, strerror(errno));
        return -2;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 || fstat(fd, &st) != 0) {
        snprintf(why, cap, "cannot read image %s", path);
        rc = -2;
        goto out;
    }
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size != m->length) {
        snprintf(why, cap, "image is %llu bytes, the manifest says %llu (%s)",
                 (unsigned long long)st.st_size, (unsigned long long)m->length,
                 (uint64_t)st.st_size > m->length ? "extra bytes: endless data" : "truncated");
        goto out;
    }
    uint64_t left = m->length;
    while (left > 0) {
        size_t want = left < sizeof(buf) ? (size_t)left : sizeof(buf);
        ssize_t n = read(fd, buf, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(why, cap, "image ended after %llu of %llu bytes (truncated)",
                     (unsigned long long)(m->length - left), (unsigned long long)m->length);
            goto out;
        }
        EVP_DigestUpdate(md, buf, (size_t)n);
        left -= (uint64_t)n;
    }
    if (EVP_DigestFinal_ex(md, digest, &hl) != 1) {
        snprintf(why, cap, "cannot hash the image");
        rc = -2;
        goto out;
    }
    if (CRYPTO_memcmp(digest, m->sha256, 32) != 0) {
        char got[65];
        fw_hex(digest, 32, got);
        snprintf(why, cap, "image SHA-256 is %s, the manifest says %s (tampered image)", got,
                 m->sha256_hex);
        goto out;
    }
    rc = 0;
out:
    EVP_MD_CTX_free(md);
    if (fd > 0)
        close(fd);
    return rc;
}

int main(int argc, char **argv)
{
    enum {
        O_DIST = 256,
        O_PUB,
        O_SERIAL,
        O_MODEL,
        O_INSTALLED,
        O_COUNTER,
        O_LAST,
        O_NOW,
        O_MAX,
        O_MANIFEST,
        O_IMAGE
    };
    static const struct option longopts[] = {
        {"dist-key", required_argument, NULL, O_DIST},
        {"publisher-key", required_argument, NULL, O_PUB},
        {"serial", required_argument, NULL, O_SERIAL},
        {"model", required_argument, NULL, O_MODEL},
        {"installed", required_argument, NULL, O_INSTALLED},
        {"counter", required_argument, NULL, O_COUNTER},
        {"last-manifest-counter", required_argument, NULL, O_LAST},
        {"now", required_argument, NULL, O_NOW},
        {"max-image-bytes", required_argument, NULL, O_MAX},
        {"manifest", required_argument, NULL, O_MANIFEST},
        {"image", required_argument, NULL, O_IMAGE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    EVP_PKEY *dist[2] = {NULL, NULL}, *pubs[FW_MAX_KEYS] = {NULL};
    size_t ndist = 0, npub = 0;
    const char *manifest_path = NULL, *image_path = NULL;
    fw_device_facts dev = {0};
    uint64_t v;
    char why[512];
    int opt, status = 2;
    char *doc = NULL;
    size_t doc_len = 0;
    fw_manifest m;
    memset(&m, 0, sizeof(m));
    dev.now = (int64_t)time(NULL);

    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case O_DIST:
        case O_PUB: {
            EVP_PKEY *k = NULL;
            if ((opt == O_DIST && ndist == 2) || (opt == O_PUB && npub == FW_MAX_KEYS)) {
                fprintf(stderr, "cms-fwverify: too many keys\n");
                goto done;
            }
            if (pki_pubkey_load(optarg, &k, why, sizeof(why)) != CMS_OK) {
                fprintf(stderr, "cms-fwverify: %s: %s\n", optarg, why);
                goto done;
            }
            if (opt == O_DIST)
                dist[ndist++] = k;
            else
                pubs[npub++] = k;
            break;
        }
        case O_SERIAL:
            dev.serial = optarg;
            break;
        case O_MODEL:
            dev.model = optarg;
            break;
        case O_INSTALLED:
            dev.installed_version = optarg;
            break;
        case O_COUNTER:
            if (parse_u64(optarg, 4294967295ull, &v) != 0) {
                fprintf(stderr, "cms-fwverify: --counter: 0..4294967295\n");
                goto done;
            }
            dev.security_counter = (uint32_t)v;
            break;
        case O_LAST:
            if (parse_u64(optarg, INT64_MAX, &v) != 0) {
                fprintf(stderr, "cms-fwverify: --last-manifest-counter: a number\n");
                goto done;
            }
            dev.last_manifest_counter = v;
            break;
        case O_NOW: {
            int64_t t;
            if (parse_u64(optarg, INT64_MAX, &v) == 0)
                dev.now = (int64_t)v;
            else if (fw_time_parse(optarg, &t) == CMS_OK)
                dev.now = t;
            else {
                fprintf(stderr, "cms-fwverify: --now: epoch seconds or YYYY-MM-DDTHH:MM:SSZ\n");
                goto done;
            }
            break;
        }
        case O_MAX:
            if (parse_u64(optarg, UINT64_MAX, &v) != 0) {
                fprintf(stderr, "cms-fwverify: --max-image-bytes: a number\n");
                goto done;
            }
            dev.max_image_bytes = v;
            break;
        case O_MANIFEST:
            manifest_path = optarg;
            break;
        case O_IMAGE:
            image_path = optarg;
            break;
        case 'h':
            usage(stdout);
            status = 0;
            goto done;
        default:
            usage(stderr);
            goto done;
        }
    }
    if (optind != argc || !ndist || !npub || !dev.serial || !dev.model || !dev.installed_version ||
        !manifest_path) {
        usage(stderr);
        goto done;
    }
    int rr = read_small(manifest_path, FW_MANIFEST_MAX, &doc, &doc_len);
    if (rr == -2) {
        status = refuse("manifest larger than 64 KiB (endless data)");
        goto done;
    }
    if (rr != 0) {
        fprintf(stderr, "cms-fwverify: cannot read %s: %s\n", manifest_path, strerror(errno));
        goto done;
    }
    dev.dist_keys = dist;
    dev.ndist = ndist;
    dev.publisher_keys = pubs;
    dev.npub = npub;
    int rc = fw_manifest_verify(doc, doc_len, &dev, &m, why, sizeof(why));
    if (rc == CMS_EINVAL) {
        fprintf(stderr, "cms-fwverify: %s\n", why);
        goto done;
    }
    if (rc != CMS_OK) {
        status = refuse(why);
        goto done;
    }
    if (image_path) {
        int ir = check_image(image_path, &m, why, sizeof(why));
        if (ir == -2) {
            fprintf(stderr, "cms-fwverify: %s\n", why);
            goto done;
        }
        if (ir != 0) {
            status = refuse(why);
            goto done;
        }
    }
    printf("ACCEPT: %s (%s) %s -> %s, security counter %u, %llu bytes, sha256 %s%s\n", m.serial,
           m.model, m.installed_version, m.target_version, m.security_counter,
           (unsigned long long)m.length, m.sha256_hex,
           image_path ? "" : " (manifest only: verify the image after the download)");
    printf("manifest_counter=%llu\n", (unsigned long long)m.manifest_counter);
    status = 0;
done:
    fw_manifest_clear(&m);
    free(doc);
    for (size_t i = 0; i < ndist; i++)
        EVP_PKEY_free(dist[i]);
    for (size_t i = 0; i < npub; i++)
        EVP_PKEY_free(pubs[i]);
    return status;
}
