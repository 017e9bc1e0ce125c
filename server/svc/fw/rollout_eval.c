/*
 * rollout_eval.c - when staged rollouts are evaluated outside an operator's
 * request (fw_rollout.h): after a device's report (the rollouts of the
 * release it named) and on the periodic tick (every rollout that may move).
 * The decisions themselves are SQL (cms.fw_rollout_evaluate, sql/016:
 * idempotent, under the rollout's row lock, so every cmsd instance may run
 * them); here the statement is queued, and its transitions counted and logged.
 *
 * Thread: the worker loop's thread.
 */
#include <stdio.h>
#include <string.h>

#include "cms_err.h"
#include "cms_metrics.h"
#include "fw_rollout.h"
#include "log.h"
#include "metrics.h"
#include "rollout_int.h"

/* The label values of cmsd_fw_rollout_transitions_total, in cm_rollout_event order. */
static const char *const events[CM_ROLLOUT__COUNT] = {
    "rollout_created",   "rollout_started",           "rollout_stage_advanced",
    "rollout_paused",    "rollout_resumed",           "rollout_aborted",
    "rollout_completed", "rollout_device_retargeted", "rollout_device_excluded",
};

static void count_one(const char *rollout_id, const char *ev, size_t n, const char *trigger)
{
    for (unsigned i = 0; i < CM_ROLLOUT__COUNT; i++) {
        if (strlen(events[i]) == n && memcmp(events[i], ev, n) == 0) {
            metrics_add(CM_FW_ROLLOUT_TRANSITIONS, i, 1);
            log_info("rollout_transition", NULL, NULL, "rollout %s: %s (%s)", rollout_id, events[i],
                     trigger);
            return;
        }
    }
    log_warn("rollout_transition", NULL, NULL, "rollout %s: unknown transition %.*s (%s)",
             rollout_id, (int)n, ev, trigger);
}

void rollout__transitions(const char *rollout_id, const char *evs, const char *trigger)
{
    const char *p = evs;
    if (!evs)
        return;
    if (*p == '{')
        p++;
    while (*p && *p != '}') {
        size_t n = strcspn(p, ",}");
        if (n)
            count_one(rollout_id, p, n, trigger);
        p += n;
        if (*p == ',')
            p++;
    }
}

static char trigger_report[] = "report", trigger_tick[] = "tick";

static void eval_done(void *ctx, int status, const store_rows *res)
{
    const char *trigger = ctx;
    if (status != CMS_OK) {
        const char *state = store_rows_sqlstate(res), *msg = store_rows_error(res);
        log_warn("fw_rollout_eval", NULL, NULL, "%s evaluation not done: %s %s%s%s", trigger,
                 cms_strerror(status), state ? state : "", state ? ": " : "", msg ? msg : "");
        return;
    }
    for (int i = 0; i < store_rows_count(res); i++)
        rollout__transitions(store_rows_text(res, i, 0), store_rows_text(res, i, 1), trigger);
}

void fw_rollout_after_report(store_t *s, const char *release_id)
{
    const char *p[] = {release_id};
    if (store_query(s,
                    "SELECT rollout_id, event FROM cms.fw_rollout_evaluate_release($1::bigint, "
                    "'report')",
                    1, p, eval_done, trigger_report) != CMS_OK)
        log_warn("fw_rollout_eval", NULL, NULL,
                 "release %s: evaluation after a report not queued (the tick does it)", release_id);
}

void fw_rollout_tick(store_t *s)
{
    if (store_query(s, "SELECT rollout_id, event FROM cms.fw_rollout_tick()", 0, NULL, eval_done,
                    trigger_tick) != CMS_OK)
        log_warn("fw_rollout_eval", NULL, NULL, "tick not queued (database queue full)");
}
