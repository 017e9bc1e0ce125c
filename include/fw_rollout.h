/*
 * fw_rollout.h - staged firmware rollouts (svc layer, server/svc/fw/rollout*.c):
 * the operator API over sql/016_fw_rollouts.sql, the evaluation triggers
 * (after a device's report, on the periodic tick), and the pure parsing of
 * what an operator writes (stages, maintenance windows), unit-tested alone.
 *
 * A rollout decides only WHETHER a device is offered an approved release
 * now; the allowlist (two operators) and the per-device signed manifest are
 * firmware.h's. docs/firmware.md ("Staged rollouts") is the contract.
 *
 * Thread: the parsing functions are pure (any thread); everything else runs
 * on the loop thread of the worker that owns the request or store.
 */
#ifndef CMS_FW_ROLLOUT_H
#define CMS_FW_ROLLOUT_H

#include <stdbool.h>
#include <stddef.h>

#include "https.h"
#include "store.h"

#define FW_ROLLOUT_MAX_STAGES 16
#define FW_ROLLOUT_GROUP_MAX 63

/* One stage as written: "N%" (cumulative percentage of the target set,
 * 1..100) or "group:NAME" (the members of a group). */
typedef struct fw_rollout_stage {
    int percent;                          /* 1..100, or 0 for a group stage */
    char group[FW_ROLLOUT_GROUP_MAX + 1]; /* the group's name, "" for a percentage */
} fw_rollout_stage;

/*
 * Parses one stage, s (borrowed, NUL-terminated): "N%" with N 1..100 in
 * decimal without sign or leading zero, or "group:NAME" with NAME 1..63
 * characters of A-Z a-z 0-9 . _ : - starting with a letter or digit (the
 * group names of cms.group_update). Fills *out.
 * Returns CMS_OK or CMS_EINVAL (out undefined).
 */
int fw_rollout_parse_stage(const char *s, fw_rollout_stage *out);

/*
 * Checks a whole stage list: 1..FW_ROLLOUT_MAX_STAGES stages, percentages
 * rising strictly (they are cumulative), no group named twice. On
 * CMS_EINVAL a sentence for the operator goes to err (cap bytes).
 */
int fw_rollout_check_stages(const fw_rollout_stage *st, size_t n, char *err, size_t cap);

/*
 * Parses a daily maintenance window "HH:MM-HH:MM" (00:00..23:59, 24-hour),
 * s borrowed. An end before the start spans midnight ("22:00-04:00"); the
 * same start and end is refused (no window means "always"). Minutes since
 * midnight go to *start_min and *end_min. Returns CMS_OK or CMS_EINVAL.
 */
int fw_rollout_parse_window(const char *s, int *start_min, int *end_min);

/*
 * Is the window [start_min, end_min) open at minute now_min of the day (all
 * 0..1439)? The rule cms.fw_rollout_window_open applies in SQL (in the
 * rollout's time zone); here for tools and tests.
 */
bool fw_rollout_window_open(int start_min, int end_min, int now_min);

/*
 * How many of n target devices a cumulative percentage stage reaches:
 * ceil(percent * n / 100), the rule of cms.fw_rollout_create.
 */
unsigned fw_rollout_stage_reach(unsigned percent, unsigned n);

/*
 * Route handlers (server/svc/routes.c; https_handler contract: CMS_OK when
 * answered, CMS_EAGAIN when a store callback answers). r is borrowed. Every
 * refusal made by a handler is one audit row fw_rollout_refused (detail
 * {"action", "status", "error", "reason", ...}) and a warn log line.
 */
int fw_rollout_create(https_req *r); /* POST /api/v1/firmware/rollouts            operator */
int fw_rollout_list(https_req *r);   /* GET  /api/v1/firmware/rollouts            viewer */
int fw_rollout_show(https_req *r);   /* GET  /api/v1/firmware/rollouts/:id        viewer */
int fw_rollout_pause(https_req *r);  /* POST /api/v1/firmware/rollouts/:id/pause  operator */
int fw_rollout_resume(https_req *r); /* POST /api/v1/firmware/rollouts/:id/resume operator */
int fw_rollout_abort(https_req *r);  /* POST /api/v1/firmware/rollouts/:id/abort  operator */

/*
 * Evaluates the rollouts of release release_id (decimal text, borrowed,
 * copied) after a device's report was committed: re-targeting, auto-pause,
 * stage advance, completion (cms.fw_rollout_evaluate_release). Fire and
 * forget: the outcome is logged and counted (cmsd_fw_rollout_transitions_total);
 * a statement that cannot be queued is left to the tick. s borrowed.
 */
void fw_rollout_after_report(store_t *s, const char *release_id);

/*
 * The periodic evaluation of every rollout (cms.fw_rollout_tick), same
 * outcome handling. cmsd calls it from one worker every few seconds, once
 * the schema is current. s borrowed.
 */
void fw_rollout_tick(store_t *s);

#endif
