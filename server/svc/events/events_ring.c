/*
 * events_ring.c - the hub's ring of formatted events: ids, storage, trimming
 * by count and bytes, and what follows a Last-Event-ID (see events_int.h).
 * No locks, loop or sockets: events.c calls it under the hub's mutex.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cms_err.h"
#include "events_int.h"

int events__ring_init(events__ring *rg, size_t max_events, size_t max_bytes, uint64_t first_id)
{
    *rg = (events__ring){0};
    if (max_events == 0 || first_id == 0)
        return CMS_EINVAL;
    rg->slot = calloc(max_events, sizeof(*rg->slot));
    rg->len = calloc(max_events, sizeof(*rg->len));
    rg->ward = calloc(max_events, sizeof(*rg->ward));
    if (!rg->slot || !rg->len || !rg->ward) {
        events__ring_free(rg);
        return CMS_ENOMEM;
    }
    rg->max_events = max_events;
    rg->max_bytes = max_bytes;
    rg->first_id = first_id;
    rg->next_id = first_id;
    rg->kept_from = first_id;
    return CMS_OK;
}

void events__ring_free(events__ring *rg)
{
    if (rg->slot)
        for (size_t i = 0; i < rg->max_events; i++)
            free(rg->slot[i]);
    free(rg->slot);
    free(rg->len);
    free(rg->ward);
    *rg = (events__ring){0};
}

size_t events__ring_event_cap(const char *type, const char *json)
{
    return strlen(type) + strlen(json) + 96;
}

uint64_t events__ring_put(events__ring *rg, char *ev, const char *type, const char *ward,
                          const char *json, uint64_t published_us)
{
    size_t cap = events__ring_event_cap(type, json);
    uint64_t id = rg->next_id++;
    /* data: the object with "published_us" (when the hub took it) first */
    bool empty = json[0] != '{' || json[1] == '}';
    int n =
        snprintf(ev, cap, "id: %" PRIu64 "\nevent: %s\ndata: {\"published_us\":%" PRIu64 "%s%s\n\n",
                 id, type, published_us, empty ? "}" : ",", empty ? "" : json + 1);
    size_t i = (size_t)(id % rg->max_events);
    if (rg->slot[i]) { /* the event max_events before this one */
        rg->bytes -= rg->len[i];
        free(rg->slot[i]);
        rg->slot[i] = NULL;
        if (rg->kept_from <= id - rg->max_events)
            rg->kept_from = id - rg->max_events + 1;
    }
    rg->slot[i] = ev;
    rg->len[i] = n > 0 ? (size_t)n : 0;
    rg->bytes += rg->len[i];
    snprintf(rg->ward[i], EVENTS_WARD_LEN, "%s", ward ? ward : "");
    while (rg->bytes > rg->max_bytes && rg->kept_from < id) { /* large events: fewer kept */
        size_t o = (size_t)(rg->kept_from % rg->max_events);
        rg->bytes -= rg->len[o];
        free(rg->slot[o]);
        rg->slot[o] = NULL;
        rg->len[o] = 0;
        rg->kept_from++;
    }
    return id;
}

uint64_t events__ring_newest(const events__ring *rg)
{
    return rg->next_id - 1;
}

size_t events__ring_copy(const events__ring *rg, uint64_t *last, const char *ward, char **buf,
                         size_t *cap)
{
    size_t used = 0;
    if (rg->max_events == 0) /* freed (events_hub_free): nothing to send */
        return 0;
    uint64_t newest = rg->next_id - 1; /* first_id - 1: none yet */
    uint64_t oldest = rg->kept_from;
    if (*last != newest && (*last + 1 < oldest || *last > newest)) {
        char reset[64];
        int n =
            snprintf(reset, sizeof(reset), "id: %" PRIu64 "\nevent: reset\ndata: {}\n\n", newest);
        size_t len = n > 0 ? (size_t)n : 0;
        if (len > *cap) { /* never in events.c (its buffer is 64 KiB) */
            char *b = realloc(*buf, len);
            if (!b)
                return 0;
            *buf = b;
            *cap = len;
        }
        memcpy(*buf, reset, len);
        used = len;
        *last = newest;
        return used;
    }
    for (uint64_t id = *last + 1; id <= newest; id++) {
        size_t i = (size_t)(id % rg->max_events);
        size_t n = rg->len[i];
        if (ward[0] && strcmp(ward, rg->ward[i]) != 0) { /* another ward's: skipped */
            *last = id;
            continue;
        }
        if (used + n > *cap) {
            if (used > 0)
                break;
            char *b = realloc(*buf, n);
            if (!b)
                break;
            *buf = b;
            *cap = n;
        }
        memcpy(*buf + used, rg->slot[i], n);
        used += n;
        *last = id;
    }
    return used;
}

bool events__parse_last_id(const char *v, uint64_t *id)
{
    if (!v || !*v || strlen(v) > 19)
        return false;
    uint64_t n = 0;
    for (const char *p = v; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        n = n * 10 + (uint64_t)(*p - '0');
    }
    *id = n;
    return true;
}
