/*
 * rollout_int.h - shared between the rollout files of the firmware service
 * only (server/svc/fw/rollout_*.c). Not a public interface.
 *
 * Thread: the worker loop's thread.
 */
#ifndef CMS_ROLLOUT_INT_H
#define CMS_ROLLOUT_INT_H

/*
 * Counts (cmsd_fw_rollout_transitions_total) and logs (rollout_transition,
 * info) the transitions a statement made: events is a PostgreSQL text[]
 * literal ("{rollout_created,rollout_started}") or a single event name;
 * rollout_id (decimal text) and trigger ("api", "report", "tick") go into
 * the log line. Unknown names are logged, not counted. Borrowed arguments.
 */
void rollout__transitions(const char *rollout_id, const char *events, const char *trigger);

#endif
