/*
 * fuzz_proxy.c - libFuzzer target for the PROXY protocol v2 header parser and
 * the proxy allowlist parser (both read bytes a peer or an operator wrote).
 *
 * The header parser must give the same verdict whatever prefix it is shown
 * first: every prefix shorter than a complete header is CMS_EAGAIN or the
 * same refusal, a complete header never consumes more than it was given, and
 * the formatted source address always fits and is NUL-terminated. The raw
 * input, as text, is also an allowlist: matching must agree with checking.
 */
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "cms_err.h"
#include "proxy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    proxy_info pi;
    const char *why = NULL;
    int whole = proxy_v2_parse(data, size, &pi, &why);
    if (whole > 0) {
        if ((size_t)whole > size || whole > PROXY_V2_MAX_HEADER)
            abort();
        char text[64];
        proxy_src_text(&pi, text, sizeof(text));
        if (strnlen(text, sizeof(text)) == sizeof(text))
            abort();
    } else if (whole != CMS_EAGAIN && whole != CMS_EPROTO && whole != CMS_ELIMIT) {
        abort();
    } else if (whole != CMS_EAGAIN && !why) {
        abort();
    }
    /* Prefixes: a valid beginning waits; a refusal is the same refusal at the end. */
    for (size_t i = 0; i < size && i < 128; i++) {
        int r = proxy_v2_parse(data, i, NULL, NULL);
        if (r > 0 && (whole <= 0 || r != whole))
            abort(); /* complete on a prefix means complete with the same length */
        if (r == CMS_EPROTO && whole == CMS_EAGAIN)
            abort(); /* refused on a prefix, waiting on the whole */
    }

    char *list = malloc(size + 1);
    if (!list)
        return 0;
    memcpy(list, data, size);
    list[size] = '\0';
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7F000001)};
    int ok = proxy_allowlist_check(list, NULL);
    int m = proxy_allowlist_match(list, (struct sockaddr *)&a4, NULL);
    if ((ok == CMS_EINVAL) != (m == CMS_EINVAL) && !(m == 1))
        abort(); /* a malformed list is malformed for matching too (unless matched first) */
    free(list);
    return 0;
}
