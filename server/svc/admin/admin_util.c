/*
 * admin_util.c - helpers of the operator API handlers (admin_int.h): the
 * room's SQLSTATE answers, query parameters, output size.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_int.h"
#include "cms_err.h"
#include "log.h"
#include "svc.h"

/* 400 for a value the peer sent (class 22: our functions raise 22023), 404
 * for an unknown name (P0002), 409 for a constraint (class 23). */
const svc__sqlstate admin__sqlstates[] = {
    {"22", 400, "bad_request"},
    {"P0002", 404, "not_found"},
    {"23", 409, "conflict"},
    {NULL, 0, NULL},
};

/*
 * Gets query parameter name into out. Returns 1 (present, non-empty), 0
 * (absent or empty: treated alike), or -1 after answering 400.
 */
int admin__query_param(https_req *r, const char *name, char *out, size_t cap)
{
    size_t len = 0;
    int rc = http_query_get(r->http->query, r->http->query_len, name, out, cap, &len);
    if (rc == 1)
        return len > 0 ? 1 : 0;
    if (rc == 0)
        return 0;
    char detail[120];
    snprintf(detail, sizeof(detail), "query parameter '%s' is %s", name,
             rc == CMS_ELIMIT ? "too long" : "malformed");
    https_reply_error(r, 400, "bad_request", detail);
    return -1;
}

/* 1..cap-1 printable characters, no control characters (serials, events). */
bool admin__plain_text(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

/*
 * Parses a positive decimal integer in [1, max] from a query parameter.
 * Returns 1 (set), 0 (absent: *v unchanged) or -1 after answering 400.
 */
int admin__query_uint(https_req *r, const char *name, long long max, long long *v)
{
    char buf[32];
    int rc = admin__query_param(r, name, buf, sizeof(buf));
    if (rc <= 0)
        return rc;
    char *end;
    errno = 0;
    long long x = strtoll(buf, &end, 10);
    if (errno || *end || end == buf || buf[0] == '-' || buf[0] == '+' || x < 1 || x > max) {
        char detail[120];
        snprintf(detail, sizeof(detail), "%s must be an integer from 1 to %lld", name, max);
        https_reply_error(r, 400, "bad_request", detail);
        return -1;
    }
    *v = x;
    return 1;
}

/*
 * Keeps the first elements of list (a member of body) whose encoding fits
 * the output limit with room to spare, so that a page is never refused as
 * too large. Returns the number of elements dropped.
 */
size_t admin__fit_output(https_req *r, json_t *list)
{
    size_t budget = r->ctx->cfg.max_output_bytes ? r->ctx->cfg.max_output_bytes : 1u << 20;
    budget = budget > 16384 ? budget - 8192 : budget / 2; /* head + the rest of the body */
    size_t used = 0, n = json_array_size(list), keep = n;
    for (size_t i = 0; i < n; i++) {
        used += json_dumpb(json_array_get(list, i), NULL, 0, JSON_COMPACT) + 1;
        if (used > budget) {
            keep = i > 0 ? i : 1; /* one element always goes (the limit is far above it) */
            break;
        }
    }
    for (size_t i = n; i > keep; i--)
        json_array_remove(list, i - 1);
    return n - keep;
}
