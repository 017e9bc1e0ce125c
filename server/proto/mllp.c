/*
 * mllp.c - MLLP framing: a push decoder and an encoder.
 *
 * The decoder is a small state machine over bytes (see mllp.h):
 *
 *   WAIT_SB --0x0B--> IN_FRAME --0x1C--> SAW_EB --0x0D--> (frame) WAIT_SB
 *      ^ CR/LF ignored   | 0x0B: EPROTO     | anything else: EPROTO
 *      | other: EPROTO   | > max_frame: ELIMIT
 *
 * Bytes inside a frame are copied in runs (memchr for the next control byte),
 * so a large frame costs one memcpy per read, not one branch per byte. A
 * second 0x0B inside a frame means that the peer lost sync (or is hostile):
 * we fail rather than guess where the real frame starts.
 */
#include "mllp.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cms_err.h"

#define MLLP_MIN_CAP 4096

void mllp_decoder_init(mllp_decoder *d, size_t max_frame, mllp_frame_cb cb, void *ctx)
{
    memset(d, 0, sizeof(*d));
    d->state = MLLP_WAIT_SB;
    /* Clamped so that max_frame + 1 and the doubling below cannot overflow. */
    d->max_frame = max_frame > SIZE_MAX / 4 ? SIZE_MAX / 4 : max_frame;
    d->on_frame = cb;
    d->ctx = ctx;
}

void mllp_decoder_free(mllp_decoder *d)
{
    free(d->buf);
    d->buf = NULL;
    d->len = 0;
    d->cap = 0;
    d->state = MLLP_FAILED;
}

size_t mllp_decoder_buffered(const mllp_decoder *d)
{
    if (d->state == MLLP_IN_FRAME || d->state == MLLP_SAW_EB)
        return d->len;
    return 0;
}

static int mllp__fail(mllp_decoder *d, int err)
{
    d->state = MLLP_FAILED;
    return err;
}

/*
 * Makes room for n more payload bytes plus the terminating NUL. The limit is
 * checked before any allocation; the buffer grows geometrically but never
 * beyond max_frame + 1.
 */
static int mllp__reserve(mllp_decoder *d, size_t n)
{
    size_t need, limit, ncap;
    char *nbuf;

    if (n > d->max_frame || d->len > d->max_frame - n)
        return CMS_ELIMIT;
    need = d->len + n + 1; /* cannot overflow: len + n <= max_frame < SIZE_MAX */
    if (need <= d->cap)
        return CMS_OK;

    limit = d->max_frame + 1;
    ncap = d->cap ? d->cap : MLLP_MIN_CAP;
    while (ncap < need) {
        if (ncap > limit / 2) {
            ncap = limit;
            break;
        }
        ncap *= 2;
    }
    if (ncap > limit)
        ncap = limit;
    if (ncap < need) /* unreachable: need <= limit */
        return CMS_EINTERNAL;

    nbuf = realloc(d->buf, ncap);
    if (!nbuf)
        return CMS_ENOMEM;
    d->buf = nbuf;
    d->cap = ncap;
    return CMS_OK;
}

/* Hands the assembled payload to the owner and resets for the next frame. */
static int mllp__deliver(mllp_decoder *d)
{
    static const char empty[1] = {0};
    const char *payload = empty;
    size_t len = d->len;
    int rc = 0;

    if (d->buf) {
        d->buf[len] = '\0';
        payload = d->buf;
    }
    d->state = MLLP_WAIT_SB;
    if (d->on_frame)
        rc = d->on_frame(d->ctx, payload, len);
    d->len = 0;
    return rc < 0 ? rc : CMS_OK;
}

int mllp_decoder_feed(mllp_decoder *d, const char *data, size_t len)
{
    const char *p = data;
    const char *end = data + len;
    int rc = CMS_OK;

    if (d->state == MLLP_FAILED)
        return CMS_EPROTO;
    if (len == 0)
        return CMS_OK;
    if (!data)
        return mllp__fail(d, CMS_EINVAL);

    while (p < end) {
        switch (d->state) {
        case MLLP_WAIT_SB: {
            unsigned char ch = (unsigned char)*p++;
            if (ch == MLLP_SB) {
                d->state = MLLP_IN_FRAME;
                d->len = 0;
            } else if (ch != '\r' && ch != '\n') {
                return mllp__fail(d, CMS_EPROTO);
            }
            break;
        }
        case MLLP_IN_FRAME: {
            /* Copy the run up to the next 0x0B or 0x1C in one go. */
            const char *q = p;
            size_t run;
            while (q < end && *q != (char)MLLP_EB && *q != (char)MLLP_SB)
                q++;
            run = (size_t)(q - p);
            if (run > 0) {
                rc = mllp__reserve(d, run);
                if (rc < 0)
                    return mllp__fail(d, rc);
                memcpy(d->buf + d->len, p, run);
                d->len += run;
                p = q;
            }
            if (p < end) {
                if (*p == (char)MLLP_SB)
                    return mllp__fail(d, CMS_EPROTO);
                d->state = MLLP_SAW_EB;
                p++;
            }
            break;
        }
        case MLLP_SAW_EB:
            if (*p++ != (char)MLLP_CR)
                return mllp__fail(d, CMS_EPROTO);
            rc = mllp__deliver(d);
            if (rc < 0)
                return mllp__fail(d, rc);
            if (p == end) {
                /* Nothing more buffered: an idle connection holds no frame
                 * buffer (thousands of monitors mostly wait between frames). */
                free(d->buf);
                d->buf = NULL;
                d->cap = 0;
            }
            break;
        case MLLP_FAILED:
        default:
            return CMS_EPROTO;
        }
    }
    return CMS_OK;
}

size_t mllp_encode(char *out, size_t cap, const char *payload, size_t len)
{
    if (len > (size_t)-1 - 3 || cap < len + 3)
        return 0;
    if (len > 0)
        memmove(out + 1, payload, len); /* payload may already sit at out + 1 */
    out[0] = (char)MLLP_SB;
    out[len + 1] = (char)MLLP_EB;
    out[len + 2] = (char)MLLP_CR;
    return len + 3;
}
