/*
 * hl7_ack.c - ACK encoding (MSH, MSA, and ERR for AE/AR) with the standard
 * delimiters; every text goes through hl7_escape().
 */
#include "hl7.h"

#include <limits.h>
#include <string.h>

#include "cms_err.h"

typedef struct hl7__wbuf {
    char *out;
    size_t cap, len;
    int err;
} hl7__wbuf;

static void hl7__put(hl7__wbuf *w, const char *s)
{
    size_t n = strlen(s);

    if (w->err)
        return;
    if (n >= w->cap - w->len) { /* keep room for the NUL */
        w->err = CMS_ELIMIT;
        return;
    }
    memcpy(w->out + w->len, s, n);
    w->len += n;
    w->out[w->len] = '\0';
}

static void hl7__put_esc(hl7__wbuf *w, const char *s)
{
    int n;

    if (w->err)
        return;
    n = hl7_escape(NULL, s ? s : "", w->out + w->len, w->cap - w->len); /* NULL: |^~\& */
    if (n < 0) {
        w->err = n;
        return;
    }
    w->len += (size_t)n;
}

static const char *hl7__err_text(const char *code)
{
    static const struct {
        const char *code, *text;
    } tab[] = {
        {"0", "Message accepted"},
        {"100", "Segment sequence error"},
        {"101", "Required field missing"},
        {"102", "Data type error"},
        {"103", "Table value not found"},
        {"200", "Unsupported message type"},
        {"201", "Unsupported event code"},
        {"202", "Unsupported processing id"},
        {"203", "Unsupported version id"},
        {"204", "Unknown key identifier"},
        {"205", "Duplicate key identifier"},
        {"206", "Application record locked"},
        {"207", "Application internal error"},
    };
    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++) {
        if (strcmp(code, tab[i].code) == 0)
            return tab[i].text;
    }
    return "";
}

static const char *hl7__nz(const char *s)
{
    return s ? s : "";
}

/*
 * Layout (v2.5+ ERR):
 *   MSH|^~\&|our_app|our_fac|their_app|their_fac|ts||ACK^trg^ACK|ack_id|P|ver<CR>
 *   MSA|code|control_id[|reason]<CR>
 *   ERR|||err_code^err_text^HL70357|E||||reason<CR>        (AE/AR only)
 * The output is NUL-terminated; the NUL must fit in cap.
 */
int hl7_ack_encode(const hl7_ack *a, char *out, size_t cap)
{
    hl7__wbuf w = {out, cap, 0, 0};
    const char *code;
    const char *version;
    const char *reason;
    const char *err_code;

    if (!a || !out || cap == 0)
        return CMS_ELIMIT;
    out[0] = '\0';
    switch (a->code) {
    case HL7_AA:
        code = "AA";
        break;
    case HL7_AE:
        code = "AE";
        break;
    case HL7_AR:
        code = "AR";
        break;
    default:
        return CMS_EINVAL;
    }
    version = a->version && a->version[0] ? a->version : "2.6";
    reason = hl7__nz(a->reason);
    err_code = a->err_code && a->err_code[0] ? a->err_code : "207";

    hl7__put(&w, "MSH|^~\\&|");
    hl7__put_esc(&w, a->our_app);
    hl7__put(&w, "|");
    hl7__put_esc(&w, a->our_facility);
    hl7__put(&w, "|");
    hl7__put_esc(&w, a->their_app);
    hl7__put(&w, "|");
    hl7__put_esc(&w, a->their_facility);
    hl7__put(&w, "|");
    hl7__put_esc(&w, a->timestamp);
    hl7__put(&w, "||ACK");
    if (a->trigger && a->trigger[0]) {
        hl7__put(&w, "^");
        hl7__put_esc(&w, a->trigger);
        hl7__put(&w, "^ACK");
    }
    hl7__put(&w, "|");
    hl7__put_esc(&w, a->ack_control_id);
    hl7__put(&w, "|P|");
    hl7__put_esc(&w, version);
    hl7__put(&w, "\rMSA|");
    hl7__put(&w, code);
    hl7__put(&w, "|");
    hl7__put_esc(&w, a->control_id);
    if (a->code != HL7_AA) {
        if (reason[0]) {
            hl7__put(&w, "|");
            hl7__put_esc(&w, reason);
        }
        hl7__put(&w, "\rERR|||");
        hl7__put_esc(&w, err_code);
        hl7__put(&w, "^");
        hl7__put_esc(&w, hl7__err_text(err_code));
        hl7__put(&w, "^HL70357|E");
        if (reason[0]) {
            hl7__put(&w, "||||");
            hl7__put_esc(&w, reason);
        }
    }
    hl7__put(&w, "\r");

    if (w.err) {
        out[0] = '\0';
        return w.err;
    }
    if (w.len > INT_MAX)
        return CMS_ELIMIT;
    return (int)w.len;
}
