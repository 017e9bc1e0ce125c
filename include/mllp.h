/*
 * mllp.h - Minimal Lower Layer Protocol framing (HL7 v2 transport).
 *
 * A frame is 0x0B <payload> 0x1C 0x0D. The decoder is a push parser: feed it
 * whatever bytes arrived (frames may be split across reads or several may
 * arrive in one read); it calls on_frame once per complete payload, in order.
 * Bytes outside a frame (between 0x1C 0x0D and the next 0x0B) other than
 * CR/LF whitespace are a protocol error. A payload larger than max_frame is a
 * limit error; the decoder then stays failed (the connection must close).
 *
 * Thread: the owner's thread only. The payload buffer grows up to max_frame
 * and is released whenever a feed ends on a frame boundary, so an idle
 * connection holds no buffer.
 */
#ifndef CMS_MLLP_H
#define CMS_MLLP_H

#include <stddef.h>
#include <stdint.h>

#define MLLP_SB 0x0B
#define MLLP_EB 0x1C
#define MLLP_CR 0x0D

/*
 * Called for each complete frame. payload/len are borrowed and valid only
 * during the call (payload is NUL-terminated for convenience, the NUL is not
 * counted in len). Return 0 to go on, or a negative cms_err to make
 * mllp_decoder_feed stop at once and return that code (e.g. the owner closed).
 */
typedef int (*mllp_frame_cb)(void *ctx, const char *payload, size_t len);

enum mllp_state { MLLP_WAIT_SB = 0, MLLP_IN_FRAME, MLLP_SAW_EB, MLLP_FAILED };

typedef struct mllp_decoder {
    enum mllp_state state;
    char *buf;        /* owned; payload being assembled */
    size_t len;       /* bytes of payload so far */
    size_t cap;       /* allocated bytes of buf */
    size_t max_frame; /* limit on payload bytes */
    mllp_frame_cb on_frame;
    void *ctx;        /* borrowed; passed to on_frame */
} mllp_decoder;

/* Initialises d. max_frame > 0. Never fails (allocation is lazy). */
void mllp_decoder_init(mllp_decoder *d, size_t max_frame, mllp_frame_cb cb, void *ctx);
/* Frees the buffer; d may be reused after mllp_decoder_init. */
void mllp_decoder_free(mllp_decoder *d);
/*
 * Feeds bytes. Returns CMS_OK when all bytes were consumed, CMS_EPROTO on
 * garbage outside a frame, CMS_ELIMIT when a frame exceeds max_frame,
 * CMS_ENOMEM, or the negative value returned by on_frame. After any error the
 * decoder is in MLLP_FAILED and every further feed returns CMS_EPROTO.
 */
int mllp_decoder_feed(mllp_decoder *d, const char *data, size_t len);
/* Bytes currently buffered for an incomplete frame (for memory accounting). */
size_t mllp_decoder_buffered(const mllp_decoder *d);

/*
 * Wraps payload into a frame in out (cap bytes). Returns the frame length, or
 * 0 if cap < len + 3.
 */
size_t mllp_encode(char *out, size_t cap, const char *payload, size_t len);

#endif
