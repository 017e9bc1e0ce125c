/*
 * fuzz_events_wire.c - libFuzzer target for the relay line parser
 * (server/svc/events/events_wire.c), which reads the NOTIFY payloads other
 * instances wrote through the database.
 *
 * Whatever the bytes: the parser only moves forward and never past the end,
 * every parsed event's fields are within their bounds, and a parsed event
 * written back with events__wire_put parses to the same fields.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../server/svc/events/events_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size;
    events__wire_event ev;
    int rc;
    while ((rc = events__wire_next(&p, end, &ev)) != 0) {
        if (p > end || p < (const char *)data)
            abort();
        if (rc < 0)
            continue;
        if (strlen(ev.origin) != EVENTS__ORIGIN_LEN - 1 || strlen(ev.ward) >= EVENTS_WARD_LEN ||
            ev.json_len == 0 || ev.json[0] != '{' || memchr(ev.json, '\n', ev.json_len) ||
            ev.json < (const char *)data || ev.json + ev.json_len > end)
            abort();
        char *json = malloc(ev.json_len + 1);
        char *line = malloc(EVENTS__PAYLOAD_MAX + 1);
        if (!json || !line)
            abort();
        memcpy(json, ev.json, ev.json_len);
        json[ev.json_len] = '\0';
        if (!memchr(json, '\0', ev.json_len)) {
            size_t n = events__wire_put(line, EVENTS__PAYLOAD_MAX, ev.origin, ev.published_us,
                                        ev.type, ev.ward, json);
            if (n) {
                const char *q = line;
                events__wire_event back;
                if (events__wire_next(&q, line + n, &back) != 1 || q != line + n ||
                    strcmp(back.origin, ev.origin) != 0 || strcmp(back.type, ev.type) != 0 ||
                    strcmp(back.ward, ev.ward) != 0 || back.published_us != ev.published_us ||
                    back.json_len != ev.json_len || memcmp(back.json, json, ev.json_len) != 0)
                    abort();
            }
        }
        free(json);
        free(line);
    }
    return 0;
}
