/*
 * hl7_escape.c - HL7 v2 escape sequences: decoding a field's text
 * (hl7_unescape, hl7_get_text) and encoding text for a field (hl7_escape).
 */
#include "hl7.h"

#include <limits.h>
#include <string.h>

#include "cms_err.h"
#include "hl7_int.h"

static int hl7__hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

int hl7_unescape(const hl7_msg *m, hl7_str src, char *out, size_t cap)
{
    const hl7_delims *d = m ? &m->d : &hl7__std_delims;
    size_t o = 0, i = 0;
    int rc = CMS_OK;

    if (cap > 0 && out)
        out[0] = '\0';
    if (!out)
        cap = 0;
    if (!src.p)
        src.len = 0;

#define HL7__EMIT(ch)                                                                              \
    do {                                                                                           \
        if (o + 1 >= cap) {                                                                        \
            rc = CMS_ELIMIT;                                                                       \
            goto done;                                                                             \
        }                                                                                          \
        out[o++] = (ch);                                                                           \
    } while (0)

    while (i < src.len) {
        const char *seq, *close;
        size_t n;

        if (src.p[i] != d->esc) {
            HL7__EMIT(src.p[i]);
            i++;
            continue;
        }
        seq = src.p + i + 1;
        close = memchr(seq, d->esc, src.len - i - 1);
        if (!close) {
            rc = CMS_EPROTO; /* unterminated escape sequence */
            goto done;
        }
        n = (size_t)(close - seq);
        i = (size_t)(close - src.p) + 1;
        if (n == 0) {
            rc = CMS_EPROTO; /* "\\": empty escape sequence */
            goto done;
        }
        if (n == 1) {
            switch (seq[0]) {
            case 'X': /* \X\ without hex digits */
                rc = CMS_EPROTO;
                goto done;
            case 'F':
                HL7__EMIT(d->field);
                break;
            case 'S':
                HL7__EMIT(d->comp);
                break;
            case 'T':
                HL7__EMIT(d->sub);
                break;
            case 'R':
                HL7__EMIT(d->rep);
                break;
            case 'E':
                HL7__EMIT(d->esc);
                break;
            default:
                break; /* \H\ \N\ and unknown: formatting, dropped */
            }
            continue;
        }
        if (seq[0] == 'X') {
            if ((n - 1) % 2 != 0) {
                rc = CMS_EPROTO;
                goto done;
            }
            for (size_t k = 1; k < n; k += 2) {
                int hi = hl7__hexval(seq[k]), lo = hl7__hexval(seq[k + 1]);
                if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                    rc = CMS_EPROTO; /* not hex, or a NUL byte */
                    goto done;
                }
                HL7__EMIT((char)(hi * 16 + lo));
            }
            continue;
        }
        /* \.br\ \Cxxyy\ \Mxxyyzz\ \Zxxx\ ...: dropped. */
    }
#undef HL7__EMIT

done:
    if (cap > 0)
        out[o < cap ? o : cap - 1] = '\0';
    if (rc < 0)
        return rc;
    if (o > INT_MAX)
        return CMS_ELIMIT;
    return (int)o;
}

int hl7_get_text(const hl7_msg *m, size_t seg, unsigned f, unsigned r, unsigned c, unsigned s,
                 char *out, size_t cap)
{
    return hl7_unescape(m, hl7_get(m, seg, f, r, c, s), out, cap);
}

/* Appends the escape sequence for ch (an HL7 delimiter) or 0 if not one. */
static const char *hl7__escape_seq(const hl7_delims *d, char ch)
{
    if (ch == d->esc)
        return "E";
    if (ch == d->field)
        return "F";
    if (ch == d->comp)
        return "S";
    if (ch == d->rep)
        return "R";
    if (ch == d->sub)
        return "T";
    return NULL;
}

/*
 * Output is always NUL-terminated when cap > 0, and the NUL must fit.
 * Control characters other than TAB are replaced by a space like CR/LF, so
 * the output always passes hl7_parse on the other side.
 */
int hl7_escape(const hl7_delims *d, const char *text, char *out, size_t cap)
{
    size_t o = 0;
    int rc = CMS_OK;

    if (!d)
        d = &hl7__std_delims;
    if (cap > 0 && out)
        out[0] = '\0';
    if (!out)
        cap = 0;
    if (!text)
        text = "";

    for (const char *p = text; *p; p++) {
        const char *seq = hl7__escape_seq(d, *p);
        if (seq) {
            if (cap < 4 || o > cap - 4) { /* esc, letter, esc, NUL */
                rc = CMS_ELIMIT;
                goto done;
            }
            out[o++] = d->esc;
            out[o++] = seq[0];
            out[o++] = d->esc;
        } else {
            char ch = *p;
            if (hl7__is_ctl((unsigned char)ch))
                ch = ' ';
            if (o + 1 >= cap) {
                rc = CMS_ELIMIT;
                goto done;
            }
            out[o++] = ch;
        }
    }
done:
    if (cap > 0)
        out[o < cap ? o : cap - 1] = '\0';
    if (rc < 0)
        return rc;
    if (o > INT_MAX)
        return CMS_ELIMIT;
    return (int)o;
}
