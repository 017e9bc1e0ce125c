-- 016_fw_rollouts.sql - staged firmware rollouts: an approved release offered
-- to its allowlisted devices in ordered stages (by percentage of the target
-- set or by named group), advancing on a success threshold, pausing on a
-- failure threshold, manual pause / resume / abort, maintenance windows, and
-- re-targeting of devices that report a rollback. docs/firmware.md, "Staged
-- rollouts", is the operator's view of this file.
--
-- Never edit this file once it has landed: add a later NNN_*.sql instead.
--
-- What a rollout decides: only WHETHER a device is offered a release now.
-- The allowlist (004/011: approvals by a second operator) still decides who
-- may ever get it, and every manifest is still signed for its one device.
--   * A release with no rollout is offered as before (004): to every device
--     it is allowlisted for.
--   * A release with a rollout (in any state) is offered only through its
--     rollouts: to a device of a rollout that is running or completed, whose
--     stage is open, that is not excluded (abort, too many rollbacks), and
--     only while the rollout's maintenance window is open
--     (cms.fw_rollout_offerable). A paused rollout offers nothing new; a
--     device that holds a manifest from before the pause may still download
--     (cms.fw_rollout_downloadable); an aborted rollout's devices may not.
--
-- Target set: the devices the release is allowlisted for (cms.fw_allowlisted)
-- that are active and of its model, when the rollout is created (a snapshot:
-- a device approved later joins through another rollout). Each is ranked by
-- sha256(serial) (ties by serial): stable across restarts and instances.
-- Stages, in order, each take the target devices not taken by an earlier stage:
--   {"percent": P}  those ranked below ceil(P * N / 100) (cumulative: 10, 50,
--                   100 = the first tenth, up to half, the rest);
--   {"group": G}    the members of group G.
-- A target device no stage takes is not in the rollout (not offered). A stage
-- that takes no device is refused.
--
-- Evaluation (cms.fw_rollout_evaluate, one rollout; run after each report by
-- cmsd, on a periodic tick, after create and resume; idempotent, under the
-- rollout's row lock, so any number of cmsd instances agree):
--   1. a device whose rolled_back reports were not handled yet is
--      re-targeted (retargets + 1, rollout_device_retargeted: it is offered
--      again when it next asks) while retargets < max_retargets, else
--      excluded (rollout_device_excluded: never offered again by it);
--   2. running only: when, in an open stage, the devices that failed
--      (state failed or rolled_back) minus those acknowledged by the last
--      resume exceed failure_threshold percent of the stage, the rollout
--      pauses (rollout_paused, reason "auto");
--   3. running only: when the devices of the current stage that installed
--      the release reach success_threshold percent of the stage, the next
--      stage opens (rollout_stage_advanced), or, after the last stage, the
--      rollout completes (rollout_completed). Repeated while it applies.
--
-- Locks: evaluation takes the rollout row (FOR UPDATE), its device rows
-- (FOR UPDATE SKIP LOCKED: a report in flight is handled by the evaluation
-- that follows it) and writes every audit row last. A report (fw_report)
-- locks the device, its rollout device rows, then the audit head; it never
-- takes a rollout row. Create / pause / resume / abort take the rollout (and
-- for create the release row and one advisory lock) before the audit head.
--
-- Errors raised (SQLSTATE, MESSAGE is a sentence for the API "detail"):
--   22023 bad argument (thresholds, stages, window, time zone)
--   P0002 unknown release, group or rollout
--   CF010 the release is approved for no active device of its model
--   CF011 a device of the new rollout is in another unfinished rollout
--   CF012 the rollout's state does not allow the change (pause of a
--         finished rollout, resume of a running one, ...)

------------------------------------------------------------------------------
-- Tables
------------------------------------------------------------------------------

-- Report vocabulary: a device that installed a release and went back to the
-- firmware it ran before reports 'rolled_back'; an offer withdrawn by an
-- abort is 'withdrawn'.
ALTER TABLE cms.fw_rollout DROP CONSTRAINT fw_rollout_state_check;
ALTER TABLE cms.fw_rollout ADD CONSTRAINT fw_rollout_state_check
    CHECK (state IN ('offered', 'downloading', 'downloaded', 'installed', 'failed',
                     'rolled_back', 'withdrawn'));

CREATE TABLE cms.fw_rollouts (
    id                bigserial PRIMARY KEY,
    release_id        bigint NOT NULL REFERENCES cms.fw_releases (id),
    state             text NOT NULL CHECK (state IN ('created', 'running', 'paused',
                                                     'completed', 'aborted')),
    current_stage     integer NOT NULL DEFAULT 0 CHECK (current_stage >= 0),
    nstages           integer NOT NULL CHECK (nstages BETWEEN 1 AND 16),
    success_threshold integer NOT NULL CHECK (success_threshold BETWEEN 1 AND 100),
    failure_threshold integer NOT NULL CHECK (failure_threshold BETWEEN 0 AND 100),
    window_start      time,
    window_end        time,
    time_zone         text NOT NULL DEFAULT 'UTC',
    max_retargets     integer NOT NULL DEFAULT 1 CHECK (max_retargets BETWEEN 0 AND 10),
    pause_reason      text,
    created_by        text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((window_start IS NULL) = (window_end IS NULL)),
    CHECK (window_start IS NULL OR window_start <> window_end),
    CHECK (current_stage <= nstages)
);
CREATE INDEX fw_rollouts_release_idx ON cms.fw_rollouts (release_id);

CREATE TABLE cms.fw_rollout_stages (
    rollout_id     bigint NOT NULL REFERENCES cms.fw_rollouts (id),
    seq            integer NOT NULL CHECK (seq BETWEEN 1 AND 16),
    percent        integer CHECK (percent BETWEEN 1 AND 100),
    group_name     text,
    devices        integer NOT NULL CHECK (devices > 0),
    failures_acked integer NOT NULL DEFAULT 0,   -- failures seen at the last resume
    opened_at      timestamptz,
    done_at        timestamptz,
    PRIMARY KEY (rollout_id, seq),
    CHECK ((percent IS NULL) <> (group_name IS NULL))
);

CREATE TABLE cms.fw_rollout_devices (
    rollout_id        bigint NOT NULL REFERENCES cms.fw_rollouts (id),
    device_id         bigint NOT NULL REFERENCES cms.devices (id),
    stage             integer NOT NULL,
    rank              integer NOT NULL,            -- by sha256(serial) in the target set
    rollbacks         integer NOT NULL DEFAULT 0,  -- rolled_back reports received
    rollbacks_handled integer NOT NULL DEFAULT 0,  -- of those, re-targeted or excluded
    retargets         integer NOT NULL DEFAULT 0,
    excluded_at       timestamptz,
    excluded_reason   text,
    PRIMARY KEY (rollout_id, device_id),
    FOREIGN KEY (rollout_id, stage) REFERENCES cms.fw_rollout_stages (rollout_id, seq)
);
CREATE INDEX fw_rollout_devices_device_idx ON cms.fw_rollout_devices (device_id);

------------------------------------------------------------------------------
-- The gate (what fw_manifest_next and fw_image_authorize ask)
------------------------------------------------------------------------------

-- Is a daily window [p_start, p_end) open at p_at in time zone p_tz? A window
-- whose end is before its start spans midnight (22:00-04:00). No window
-- (NULL start): always open.
CREATE FUNCTION cms.fw_rollout_window_open(p_start time, p_end time, p_tz text,
                                           p_at timestamptz)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, cms
AS $fn$
    SELECT CASE WHEN p_start IS NULL THEN true
                WHEN p_start < p_end THEN x.t >= p_start AND x.t < p_end
                ELSE x.t >= p_start OR x.t < p_end END
    FROM (SELECT (p_at AT TIME ZONE p_tz)::time AS t) x
$fn$;

-- May release p_release_id be offered to device p_device_id now (a manifest)?
CREATE FUNCTION cms.fw_rollout_offerable(p_release_id bigint, p_device_id bigint)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, cms
AS $fn$
    SELECT NOT EXISTS (SELECT 1 FROM cms.fw_rollouts ro WHERE ro.release_id = p_release_id)
        OR EXISTS (SELECT 1 FROM cms.fw_rollouts ro
                   JOIN cms.fw_rollout_devices rd ON rd.rollout_id = ro.id
                                                 AND rd.device_id = p_device_id
                   WHERE ro.release_id = p_release_id
                     AND ro.state IN ('running', 'completed')
                     AND rd.stage <= ro.current_stage AND rd.excluded_at IS NULL
                     AND cms.fw_rollout_window_open(ro.window_start, ro.window_end,
                                                    ro.time_zone, now()))
$fn$;

-- May the device download the release's image (it was offered it)? As
-- above, but a paused rollout and a closed window do not stop a download.
CREATE FUNCTION cms.fw_rollout_downloadable(p_release_id bigint, p_device_id bigint)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, cms
AS $fn$
    SELECT NOT EXISTS (SELECT 1 FROM cms.fw_rollouts ro WHERE ro.release_id = p_release_id)
        OR EXISTS (SELECT 1 FROM cms.fw_rollouts ro
                   JOIN cms.fw_rollout_devices rd ON rd.rollout_id = ro.id
                                                 AND rd.device_id = p_device_id
                   WHERE ro.release_id = p_release_id
                     AND ro.state IN ('running', 'paused', 'completed')
                     AND rd.stage <= ro.current_stage AND rd.excluded_at IS NULL)
$fn$;

-- As 004, plus: a release is offered only when cms.fw_rollout_offerable says so
-- (a newer release held back by its rollout leaves an older one offerable).
CREATE OR REPLACE FUNCTION cms.fw_manifest_next(p_device_id bigint, p_installed text,
                                                p_installed_num bigint, p_counter bigint,
                                                p_peer text)
RETURNS TABLE (release_id bigint, serial text, model text, version text,
               security_counter bigint, sha256 text, length bigint, descriptor text,
               publisher_sig text, publisher_keyid text, manifest_counter bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    d     record;
    st    record;
    rel   record;
    min_ctr bigint;
    ctr   bigint;
BEGIN
    SELECT dv.id, dv.serial, dv.model, dv.status INTO d FROM cms.devices dv
    WHERE dv.id = p_device_id;
    IF NOT FOUND OR d.status <> 'active' THEN
        RAISE EXCEPTION 'device is not active' USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO cms.fw_device_state (device_id) VALUES (p_device_id) ON CONFLICT DO NOTHING;
    SELECT s.* INTO STRICT st FROM cms.fw_device_state s WHERE s.device_id = p_device_id
    FOR UPDATE;
    UPDATE cms.fw_device_state s SET last_poll_at = now(), last_poll_version = p_installed
    WHERE s.device_id = p_device_id;
    min_ctr := greatest(coalesce(p_counter, 0), st.installed_counter);
    SELECT r.* INTO rel FROM cms.fw_releases r
    WHERE r.model = d.model
      AND r.version_num > p_installed_num
      AND r.security_counter >= min_ctr
      AND cms.fw_allowlisted(r.id, p_device_id)
      AND cms.fw_rollout_offerable(r.id, p_device_id)
    ORDER BY r.version_num DESC
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    ctr := st.manifest_counter + 1;
    UPDATE cms.fw_device_state s SET manifest_counter = ctr, updated_at = now()
    WHERE s.device_id = p_device_id;
    INSERT INTO cms.fw_rollout AS o (release_id, device_id, state, manifest_counter)
    VALUES (rel.id, p_device_id, 'offered', ctr)
    ON CONFLICT (release_id, device_id) DO UPDATE
        SET manifest_counter = EXCLUDED.manifest_counter, updated_at = now(),
            state = CASE WHEN o.state IN ('downloading', 'downloaded') THEN o.state
                         ELSE 'offered' END,
            reason = CASE WHEN o.state IN ('downloading', 'downloaded') THEN o.reason
                          ELSE NULL END;
    PERFORM cms.audit_append('fw_manifest_issued', 'device:' || d.serial, d.serial, p_peer,
        jsonb_build_object('release_id', rel.id, 'installed', p_installed,
                           'target', rel.version, 'security_counter', rel.security_counter,
                           'manifest_counter', ctr)::text);
    RETURN QUERY SELECT rel.id, d.serial, d.model, rel.version, rel.security_counter,
        encode(rel.image_sha256, 'hex'), rel.length, encode(rel.descriptor, 'hex'),
        encode(rel.publisher_sig, 'hex'), rel.publisher_keyid, ctr;
END
$fn$;

-- As 004, plus cms.fw_rollout_downloadable.
CREATE OR REPLACE FUNCTION cms.fw_image_authorize(p_device_id bigint, p_sha256 bytea)
RETURNS TABLE (release_id bigint, length bigint, chunk_size integer, nchunks integer,
               store_gen bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    rel record;
    img record;
BEGIN
    SELECT r.id INTO rel FROM cms.fw_releases r
    JOIN cms.devices d ON d.id = p_device_id AND d.status = 'active' AND d.model = r.model
    WHERE r.image_sha256 = p_sha256 AND cms.fw_allowlisted(r.id, p_device_id)
      AND cms.fw_rollout_downloadable(r.id, p_device_id)
    ORDER BY r.version_num DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT i.* INTO img FROM cms.fw_images i WHERE i.sha256 = p_sha256 AND i.complete;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE cms.fw_rollout o SET state = 'downloading', updated_at = now()
    WHERE o.release_id = rel.id AND o.device_id = p_device_id AND o.state = 'offered';
    RETURN QUERY SELECT rel.id, img.length, img.chunk_size, img.nchunks, img.store_gen;
END
$fn$;

-- As 012, plus the status 'rolled_back' (the device installed the release and
-- went back to what it ran before; p_version = what it runs now, p_sha256
-- names the release's image): the rollout state becomes 'rolled_back', the
-- registry's firmware_version what it runs, and each unfinished or completed
-- rollout of the release that holds the device counts the rollback
-- (fw_rollout_devices.rollbacks) for its next evaluation to re-target it.
CREATE OR REPLACE FUNCTION cms.fw_report(p_device_id bigint, p_status text, p_version text,
                                         p_sha256 bytea, p_reason text, p_peer text)
RETURNS TABLE (release_id bigint, state text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    d       record;
    rel     record;
    allowed boolean;
BEGIN
    IF p_status IS NULL
       OR p_status NOT IN ('downloading', 'downloaded', 'installed', 'failed', 'rolled_back') THEN
        RAISE EXCEPTION 'status must be downloading, downloaded, installed, failed or rolled_back'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT dv.id, dv.serial, dv.model, dv.status INTO d FROM cms.devices dv
    WHERE dv.id = p_device_id FOR UPDATE;
    IF NOT FOUND OR d.status <> 'active' THEN
        RAISE EXCEPTION 'device is not active' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF p_sha256 IS NOT NULL THEN
        SELECT r.* INTO rel FROM cms.fw_releases r
        WHERE r.image_sha256 = p_sha256 AND r.model = d.model
        ORDER BY r.version_num DESC LIMIT 1;
    ELSIF p_version IS NOT NULL THEN
        SELECT r.* INTO rel FROM cms.fw_releases r
        WHERE r.model = d.model AND r.version = p_version;
    END IF;
    allowed := rel.id IS NULL
               OR cms.fw_allowlisted(rel.id, p_device_id)
               OR EXISTS (SELECT 1 FROM cms.fw_rollout o
                          WHERE o.release_id = rel.id AND o.device_id = p_device_id
                            AND o.manifest_counter IS NOT NULL);
    INSERT INTO cms.fw_device_state (device_id) VALUES (p_device_id) ON CONFLICT DO NOTHING;
    IF NOT allowed THEN
        INSERT INTO cms.fw_report_flags AS f (release_id, device_id, status, version, reason)
        VALUES (rel.id, p_device_id, p_status, p_version, p_reason)
        ON CONFLICT (release_id, device_id) DO UPDATE
            SET status = EXCLUDED.status, version = EXCLUDED.version, reason = EXCLUDED.reason,
                reports = f.reports + 1, last_at = now();
        IF p_status IN ('installed', 'rolled_back') AND p_version IS NOT NULL THEN
            UPDATE cms.devices dv SET firmware_version = p_version WHERE dv.id = p_device_id;
            UPDATE cms.fw_device_state s
            SET installed_version = p_version, updated_at = now()
            WHERE s.device_id = p_device_id;
        END IF;
        PERFORM cms.audit_append('fw_report_unapproved', 'device:' || d.serial, d.serial, p_peer,
            jsonb_build_object('status', p_status, 'version', p_version,
                               'sha256', encode(p_sha256, 'hex'), 'reason', p_reason,
                               'release_id', rel.id, 'model', d.model)::text);
        RETURN QUERY SELECT NULL::bigint, 'flagged'::text;
        RETURN;
    END IF;
    IF rel.id IS NOT NULL THEN
        INSERT INTO cms.fw_rollout AS o (release_id, device_id, state, reason)
        VALUES (rel.id, p_device_id, p_status, p_reason)
        ON CONFLICT (release_id, device_id) DO UPDATE
            SET state = EXCLUDED.state, reason = EXCLUDED.reason, updated_at = now();
        IF p_status = 'rolled_back' THEN
            UPDATE cms.fw_rollout_devices rd SET rollbacks = rd.rollbacks + 1
            FROM cms.fw_rollouts ro
            WHERE ro.id = rd.rollout_id AND ro.release_id = rel.id
              AND rd.device_id = p_device_id
              AND ro.state IN ('running', 'paused', 'completed');
        END IF;
    END IF;
    IF p_status = 'installed' AND p_version IS NOT NULL THEN
        UPDATE cms.devices dv SET firmware_version = p_version WHERE dv.id = p_device_id;
        UPDATE cms.fw_device_state s
        SET installed_version = p_version, updated_at = now(),
            installed_counter = CASE WHEN rel.id IS NOT NULL AND rel.version = p_version
                                     THEN greatest(s.installed_counter, rel.security_counter)
                                     ELSE s.installed_counter END
        WHERE s.device_id = p_device_id;
    ELSIF p_status = 'rolled_back' AND p_version IS NOT NULL THEN
        UPDATE cms.devices dv SET firmware_version = p_version WHERE dv.id = p_device_id;
        UPDATE cms.fw_device_state s SET installed_version = p_version, updated_at = now()
        WHERE s.device_id = p_device_id;
    END IF;
    PERFORM cms.audit_append('fw_report', 'device:' || d.serial, d.serial, p_peer,
        jsonb_build_object('status', p_status, 'version', p_version,
                           'sha256', encode(p_sha256, 'hex'), 'reason', p_reason,
                           'release_id', rel.id)::text);
    RETURN QUERY SELECT rel.id, p_status;
END
$fn$;

------------------------------------------------------------------------------
-- Status views
------------------------------------------------------------------------------

-- Each device of each rollout with the state of the release on it
-- ('pending' = no report or offer yet).
CREATE VIEW cms.fw_rollout_device_status AS
SELECT rd.rollout_id, ro.release_id, d.serial, rd.stage, rd.rank,
       coalesce(o.state, 'pending') AS state, o.reason, o.updated_at,
       rd.rollbacks, rd.retargets, rd.excluded_at, rd.excluded_reason
FROM cms.fw_rollout_devices rd
JOIN cms.fw_rollouts ro ON ro.id = rd.rollout_id
JOIN cms.devices d ON d.id = rd.device_id
LEFT JOIN cms.fw_rollout o ON o.release_id = ro.release_id AND o.device_id = rd.device_id;

-- Per stage: how many devices, and how many are in each state.
CREATE VIEW cms.fw_rollout_stage_status AS
SELECT s.rollout_id, s.seq, s.percent, s.group_name,
       CASE WHEN s.percent IS NOT NULL THEN s.percent || '%' ELSE 'group:' || s.group_name END
           AS spec,
       s.devices, s.opened_at, s.done_at, s.failures_acked,
       count(*) FILTER (WHERE x.state = 'installed') AS installed,
       count(*) FILTER (WHERE x.state IN ('failed', 'rolled_back')) AS failed,
       count(*) FILTER (WHERE x.state = 'rolled_back') AS rolled_back,
       count(*) FILTER (WHERE x.state IN ('offered', 'downloading', 'downloaded')) AS in_progress,
       count(*) FILTER (WHERE x.state IN ('pending', 'withdrawn')) AS pending,
       count(*) FILTER (WHERE x.excluded_at IS NOT NULL) AS excluded,
       coalesce(sum(x.retargets), 0)::bigint AS retargets
FROM cms.fw_rollout_stages s
LEFT JOIN cms.fw_rollout_device_status x ON x.rollout_id = s.rollout_id AND x.stage = s.seq
GROUP BY s.rollout_id, s.seq;

-- One row per rollout with its release and totals.
CREATE VIEW cms.fw_rollout_list AS
SELECT ro.id, ro.release_id, r.model, r.version, ro.state, ro.current_stage, ro.nstages,
       ro.success_threshold, ro.failure_threshold,
       to_char(ro.window_start, 'HH24:MI') AS window_start,
       to_char(ro.window_end, 'HH24:MI') AS window_end, ro.time_zone,
       cms.fw_rollout_window_open(ro.window_start, ro.window_end, ro.time_zone, now())
           AS window_open,
       ro.max_retargets, ro.pause_reason, ro.created_by, ro.created_at, ro.started_at,
       ro.finished_at, ro.updated_at,
       coalesce(t.devices, 0)::bigint AS devices, coalesce(t.installed, 0)::bigint AS installed,
       coalesce(t.failed, 0)::bigint AS failed, coalesce(t.retargets, 0)::bigint AS retargets
FROM cms.fw_rollouts ro
JOIN cms.fw_releases r ON r.id = ro.release_id
LEFT JOIN LATERAL (SELECT sum(s.devices) AS devices, sum(s.installed) AS installed,
                          sum(s.failed) AS failed, sum(s.retargets) AS retargets
                   FROM cms.fw_rollout_stage_status s WHERE s.rollout_id = ro.id) t ON true;

------------------------------------------------------------------------------
-- Evaluation
------------------------------------------------------------------------------

-- Evaluates rollout p_id (header: re-target, auto-pause, advance, complete).
-- p_trigger ('report', 'tick', 'create', 'resume') goes into the detail of
-- the automatic transitions' audit rows (actor 'system:rollout'). Returns
-- one row per transition made (event names as audited); none when nothing
-- changed. Unknown rollout: no row.
CREATE FUNCTION cms.fw_rollout_evaluate(p_id bigint, p_trigger text)
RETURNS TABLE (rollout_id bigint, event text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    ro      record;
    rel     record;
    r       record;
    st      record;
    cur     record;
    pending jsonb := '[]';  -- audit rows, written last: [{"event", "device", "detail"}]
    reason  text;
BEGIN
    SELECT x.* INTO ro FROM cms.fw_rollouts x WHERE x.id = p_id FOR UPDATE;
    IF NOT FOUND OR ro.state IN ('created', 'aborted') THEN
        RETURN;
    END IF;
    SELECT x.id, x.model, x.version INTO rel FROM cms.fw_releases x WHERE x.id = ro.release_id;

    -- 1. rollbacks not handled yet
    FOR r IN SELECT rd.device_id, rd.rollbacks, rd.retargets, dv.serial
             FROM cms.fw_rollout_devices rd JOIN cms.devices dv ON dv.id = rd.device_id
             WHERE rd.rollout_id = p_id AND rd.rollbacks > rd.rollbacks_handled
               AND rd.excluded_at IS NULL
             ORDER BY rd.device_id FOR UPDATE OF rd SKIP LOCKED LOOP
        IF r.retargets < ro.max_retargets THEN
            UPDATE cms.fw_rollout_devices rd
            SET retargets = rd.retargets + 1, rollbacks_handled = rd.rollbacks
            WHERE rd.rollout_id = p_id AND rd.device_id = r.device_id;
            pending := pending || jsonb_build_object('event', 'rollout_device_retargeted',
                'device', r.serial, 'detail', jsonb_build_object('rollout_id', p_id,
                    'release_id', rel.id, 'version', rel.version, 'device', r.serial,
                    'retargets', r.retargets + 1, 'max_retargets', ro.max_retargets,
                    'trigger', p_trigger));
        ELSE
            UPDATE cms.fw_rollout_devices rd
            SET rollbacks_handled = rd.rollbacks, excluded_at = now(),
                excluded_reason = 'rolled back ' || rd.rollbacks || ' time(s); re-targeted '
                                  || rd.retargets || ' of max_retargets ' || ro.max_retargets
            WHERE rd.rollout_id = p_id AND rd.device_id = r.device_id;
            pending := pending || jsonb_build_object('event', 'rollout_device_excluded',
                'device', r.serial, 'detail', jsonb_build_object('rollout_id', p_id,
                    'release_id', rel.id, 'version', rel.version, 'device', r.serial,
                    'rollbacks', r.rollbacks, 'retargets', r.retargets,
                    'max_retargets', ro.max_retargets, 'trigger', p_trigger));
        END IF;
    END LOOP;

    -- 2. and 3. while running
    WHILE ro.state = 'running' LOOP
        reason := NULL;
        FOR st IN SELECT s.seq, s.spec, s.devices, s.failed, s.failures_acked
                  FROM cms.fw_rollout_stage_status s
                  WHERE s.rollout_id = p_id AND s.seq <= ro.current_stage ORDER BY s.seq LOOP
            IF (st.failed - st.failures_acked) * 100 > ro.failure_threshold * st.devices THEN
                reason := format('stage %s (%s): %s of %s devices failed or rolled back'
                                 || ' (%s acknowledged at the last resume), over the failure'
                                 || ' threshold of %s%%', st.seq, st.spec, st.failed, st.devices,
                                 st.failures_acked, ro.failure_threshold);
                EXIT;
            END IF;
        END LOOP;
        IF reason IS NOT NULL THEN
            UPDATE cms.fw_rollouts x SET state = 'paused', pause_reason = 'auto: ' || reason,
                   updated_at = now() WHERE x.id = p_id;
            ro.state := 'paused';
            pending := pending || jsonb_build_object('event', 'rollout_paused', 'device', NULL,
                'detail', jsonb_build_object('rollout_id', p_id, 'release_id', rel.id,
                    'version', rel.version, 'reason', 'auto', 'why', reason,
                    'stage', ro.current_stage, 'trigger', p_trigger));
            EXIT;
        END IF;
        SELECT s.seq, s.spec, s.devices, s.installed INTO cur FROM cms.fw_rollout_stage_status s
        WHERE s.rollout_id = p_id AND s.seq = ro.current_stage;
        EXIT WHEN cur.installed * 100 < ro.success_threshold * cur.devices;
        UPDATE cms.fw_rollout_stages s SET done_at = now()
        WHERE s.rollout_id = p_id AND s.seq = ro.current_stage;
        IF ro.current_stage >= ro.nstages THEN
            UPDATE cms.fw_rollouts x SET state = 'completed', finished_at = now(),
                   updated_at = now() WHERE x.id = p_id;
            ro.state := 'completed';
            pending := pending || jsonb_build_object('event', 'rollout_completed', 'device', NULL,
                'detail', jsonb_build_object('rollout_id', p_id, 'release_id', rel.id,
                    'version', rel.version, 'stage', ro.current_stage,
                    'installed', cur.installed, 'devices', cur.devices,
                    'trigger', p_trigger));
        ELSE
            UPDATE cms.fw_rollouts x SET current_stage = ro.current_stage + 1, updated_at = now()
            WHERE x.id = p_id;
            UPDATE cms.fw_rollout_stages s SET opened_at = now()
            WHERE s.rollout_id = p_id AND s.seq = ro.current_stage + 1;
            pending := pending || jsonb_build_object('event', 'rollout_stage_advanced',
                'device', NULL, 'detail', jsonb_build_object('rollout_id', p_id,
                    'release_id', rel.id, 'version', rel.version,
                    'from_stage', ro.current_stage, 'to_stage', ro.current_stage + 1,
                    'installed', cur.installed, 'devices', cur.devices,
                    'success_threshold', ro.success_threshold, 'trigger', p_trigger));
            ro.current_stage := ro.current_stage + 1;
        END IF;
    END LOOP;

    -- The audit rows (the chain head is locked from here to the commit).
    FOR r IN SELECT e.value ->> 'event' AS ev, e.value ->> 'device' AS device,
                    e.value -> 'detail' AS detail
             FROM jsonb_array_elements(pending) WITH ORDINALITY AS e (value, n) ORDER BY e.n LOOP
        PERFORM cms.audit_append(r.ev, 'system:rollout', r.device, NULL, r.detail::text);
        rollout_id := p_id;
        event := r.ev;
        RETURN NEXT;
    END LOOP;
END
$fn$;

-- Evaluates every rollout of release p_release_id that a report may move
-- (after a device's report). Rows as cms.fw_rollout_evaluate.
CREATE FUNCTION cms.fw_rollout_evaluate_release(p_release_id bigint, p_trigger text)
RETURNS TABLE (rollout_id bigint, event text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    -- Every rollout row first (SKIP LOCKED: one being changed now is evaluated by
    -- whoever holds it, or at the next tick), before any audit row is written.
    FOR r IN SELECT x.id FROM cms.fw_rollouts x
             WHERE x.release_id = p_release_id AND x.state IN ('running', 'paused', 'completed')
             ORDER BY x.id FOR UPDATE SKIP LOCKED LOOP
        NULL;
    END LOOP;
    FOR r IN SELECT x.id FROM cms.fw_rollouts x
             WHERE x.release_id = p_release_id AND x.state IN ('running', 'paused', 'completed')
             ORDER BY x.id FOR UPDATE SKIP LOCKED LOOP
        RETURN QUERY SELECT * FROM cms.fw_rollout_evaluate(r.id, p_trigger);
    END LOOP;
END
$fn$;

-- The periodic tick: every rollout that evaluation may move. Rows as above.
CREATE FUNCTION cms.fw_rollout_tick()
RETURNS TABLE (rollout_id bigint, event text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    ids bigint[];
    i   bigint;
BEGIN
    SELECT coalesce(array_agg(q.id ORDER BY q.id), '{}') INTO ids
    FROM (SELECT x.id FROM cms.fw_rollouts x
          WHERE x.state = 'running'
             OR (x.state IN ('paused', 'completed')
                 AND EXISTS (SELECT 1 FROM cms.fw_rollout_devices rd
                             WHERE rd.rollout_id = x.id AND rd.rollbacks > rd.rollbacks_handled
                               AND rd.excluded_at IS NULL))
          ORDER BY x.id FOR UPDATE SKIP LOCKED) q;
    FOREACH i IN ARRAY ids LOOP
        RETURN QUERY SELECT * FROM cms.fw_rollout_evaluate(i, 'tick');
    END LOOP;
END
$fn$;

------------------------------------------------------------------------------
-- Operator changes
------------------------------------------------------------------------------

-- Creates a rollout of release p_release_id. p_stages: a JSON array of 1..16
-- objects {"percent": 1..100} or {"group": "name"} (percentages cumulative,
-- rising). Thresholds in percent: success 1..100, failure 0..100. Window:
-- p_window_start and p_window_end 'HH:MM' (both or neither), p_time_zone a
-- PostgreSQL time zone name (NULL = 'UTC'). p_max_retargets 0..10 (NULL = 1).
-- p_start: start at once (rollout_started after rollout_created), else the
-- rollout waits in state 'created' for resume. Audited (rollout_created,
-- rollout_started). Returns the rollout id and the transitions made, as
-- audited (rollout_created, rollout_started, and what the first evaluation
-- did: a stage whose devices all run the release already advances at once).
CREATE FUNCTION cms.fw_rollout_create(p_release_id bigint, p_stages jsonb,
                                      p_success integer, p_failure integer,
                                      p_window_start text, p_window_end text,
                                      p_time_zone text, p_max_retargets integer,
                                      p_start boolean, p_actor text, p_peer text)
RETURNS TABLE (id bigint, events text[])
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    rel     record;
    rid     bigint;
    n       integer;
    tz      text := coalesce(p_time_zone, 'UTC');
    ws      time;
    we      time;
    maxr    integer := coalesce(p_max_retargets, 1);
    e       record;
    k       integer := 0;
    ids     bigint[];
    last_p  integer := 0;
    pct     integer;
    grp     text;
    cnt     integer;
    other   record;
    stages  jsonb := '[]';
    gid     bigint;
    evs     text[] := ARRAY['rollout_created'];
BEGIN
    IF p_success IS NULL OR p_success < 1 OR p_success > 100 THEN
        RAISE EXCEPTION 'success_threshold must be 1..100 (percent of a stage that installed)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_failure IS NULL OR p_failure < 0 OR p_failure > 100 THEN
        RAISE EXCEPTION 'failure_threshold must be 0..100 (percent of a stage that failed)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF maxr < 0 OR maxr > 10 THEN
        RAISE EXCEPTION 'max_retargets must be 0..10' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (p_window_start IS NULL) <> (p_window_end IS NULL) THEN
        RAISE EXCEPTION 'a window needs a start and an end' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_window_start IS NOT NULL THEN
        IF p_window_start !~ '^([01][0-9]|2[0-3]):[0-5][0-9]$'
           OR p_window_end !~ '^([01][0-9]|2[0-3]):[0-5][0-9]$' THEN
            RAISE EXCEPTION 'window times are HH:MM (00:00..23:59)'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        ws := p_window_start::time;
        we := p_window_end::time;
        IF ws = we THEN
            RAISE EXCEPTION 'a window must not start and end at the same time (no window = always)'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_timezone_names z WHERE z.name = tz) THEN
        RAISE EXCEPTION 'unknown time zone "%" (a tz database name such as UTC or Europe/Berlin)', tz
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_stages IS NULL OR jsonb_typeof(p_stages) <> 'array'
       OR jsonb_array_length(p_stages) NOT BETWEEN 1 AND 16 THEN
        RAISE EXCEPTION 'stages must be an array of 1..16 stages'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT x.* INTO rel FROM cms.fw_releases x WHERE x.id = p_release_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no firmware release %', p_release_id USING ERRCODE = 'no_data_found';
    END IF;
    -- One creation at a time: the overlap check below sees every other rollout.
    PERFORM pg_advisory_xact_lock(hashtext('cms.fw_rollouts'), 0);

    INSERT INTO cms.fw_rollouts AS x (release_id, state, nstages, success_threshold,
                                      failure_threshold, window_start, window_end, time_zone,
                                      max_retargets, created_by)
    VALUES (p_release_id, 'created', jsonb_array_length(p_stages), p_success, p_failure, ws, we,
            tz, maxr, p_actor)
    RETURNING x.id INTO rid;

    -- The target set, ranked by sha256(serial): ids[rank + 1].
    SELECT coalesce(array_agg(t.id ORDER BY t.h, t.serial), '{}') INTO ids
    FROM (SELECT d.id, d.serial, sha256(convert_to(d.serial, 'UTF8')) AS h
          FROM cms.devices d
          WHERE d.model = rel.model AND d.status = 'active'
            AND cms.fw_allowlisted(rel.id, d.id)) t;
    n := cardinality(ids);
    IF n = 0 THEN
        RAISE EXCEPTION 'release % (% %) is approved for no active device of its model: a second operator must approve it (cmsctl firmware approve) before a rollout',
            p_release_id, rel.model, rel.version USING ERRCODE = 'CF010';
    END IF;

    FOR e IN SELECT s.value, s.n FROM jsonb_array_elements(p_stages) WITH ORDINALITY AS s (value, n)
             ORDER BY s.n LOOP
        k := k + 1;
        pct := NULL;
        grp := NULL;
        IF jsonb_typeof(e.value) <> 'object' THEN
            RAISE EXCEPTION 'stage %: must be {"percent": N} or {"group": "name"}', k
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF e.value ? 'percent' AND NOT e.value ? 'group' AND (SELECT count(*) FROM jsonb_object_keys(e.value)) = 1
           AND jsonb_typeof(e.value -> 'percent') = 'number' THEN
            IF (e.value ->> 'percent') !~ '^[0-9]{1,3}$' THEN
                RAISE EXCEPTION 'stage %: percent must be an integer 1..100', k
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            pct := (e.value ->> 'percent')::integer;
            IF pct < 1 OR pct > 100 THEN
                RAISE EXCEPTION 'stage %: percent must be 1..100', k
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF pct <= last_p THEN
                RAISE EXCEPTION 'stage %: percentages are cumulative and must rise (% after %)',
                    k, pct, last_p USING ERRCODE = 'invalid_parameter_value';
            END IF;
            last_p := pct;
        ELSIF e.value ? 'group' AND (SELECT count(*) FROM jsonb_object_keys(e.value)) = 1
              AND jsonb_typeof(e.value -> 'group') = 'string' THEN
            grp := e.value ->> 'group';
            SELECT g.id INTO gid FROM cms.device_groups g WHERE g.name = grp;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'stage %: no such group: %', k, grp USING ERRCODE = 'no_data_found';
            END IF;
        ELSE
            RAISE EXCEPTION 'stage %: must be {"percent": N} or {"group": "name"}', k
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- The stage row first (the devices reference it); its count after.
        INSERT INTO cms.fw_rollout_stages (rollout_id, seq, percent, group_name, devices)
        VALUES (rid, k, pct, grp, 1);
        IF pct IS NOT NULL THEN
            INSERT INTO cms.fw_rollout_devices (rollout_id, device_id, stage, rank)
            SELECT rid, t.device_id, k, (t.o - 1)::integer
            FROM unnest(ids) WITH ORDINALITY AS t (device_id, o)
            WHERE t.o <= (pct * n + 99) / 100
              AND NOT EXISTS (SELECT 1 FROM cms.fw_rollout_devices x
                              WHERE x.rollout_id = rid AND x.device_id = t.device_id);
        ELSE
            INSERT INTO cms.fw_rollout_devices (rollout_id, device_id, stage, rank)
            SELECT rid, t.device_id, k, (t.o - 1)::integer
            FROM unnest(ids) WITH ORDINALITY AS t (device_id, o)
            JOIN cms.device_group_members m ON m.device_id = t.device_id AND m.group_id = gid
            WHERE NOT EXISTS (SELECT 1 FROM cms.fw_rollout_devices x
                              WHERE x.rollout_id = rid AND x.device_id = t.device_id);
        END IF;
        GET DIAGNOSTICS cnt = ROW_COUNT;
        IF cnt = 0 THEN
            RAISE EXCEPTION 'stage % (%) takes no device: the release''s % allowlisted active device(s) are all in earlier stages or not in it',
                k, coalesce(pct || '%', 'group:' || grp), n
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        UPDATE cms.fw_rollout_stages s SET devices = cnt WHERE s.rollout_id = rid AND s.seq = k;
        stages := stages || jsonb_build_object('stage', k, 'spec',
                                               coalesce(pct || '%', 'group:' || grp),
                                               'devices', cnt);
    END LOOP;

    -- No device in two unfinished rollouts.
    SELECT o.id, string_agg(d.serial, ', ' ORDER BY d.serial) AS serials, count(*) AS n
    INTO other
    FROM cms.fw_rollout_devices me
    JOIN cms.fw_rollout_devices od ON od.device_id = me.device_id AND od.rollout_id <> rid
    JOIN cms.fw_rollouts o ON o.id = od.rollout_id AND o.state IN ('created', 'running', 'paused')
    JOIN cms.devices d ON d.id = me.device_id
    WHERE me.rollout_id = rid
    GROUP BY o.id ORDER BY o.id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'rollout % (unfinished) holds % of these devices already (%): finish or abort it first',
            other.id, other.n, left(other.serials, 200) USING ERRCODE = 'CF011';
    END IF;

    SELECT count(*) INTO cnt FROM cms.fw_rollout_devices x WHERE x.rollout_id = rid;
    PERFORM cms.audit_append('rollout_created', p_actor, NULL, p_peer,
        jsonb_build_object('rollout_id', rid, 'release_id', rel.id, 'model', rel.model,
                           'version', rel.version, 'stages', stages, 'devices', cnt,
                           'target_devices', n, 'success_threshold', p_success,
                           'failure_threshold', p_failure,
                           'window', CASE WHEN ws IS NULL THEN NULL
                                          ELSE p_window_start || '-' || p_window_end END,
                           'time_zone', tz, 'max_retargets', maxr)::text);
    IF p_start THEN
        UPDATE cms.fw_rollouts x SET state = 'running', current_stage = 1, started_at = now(),
               updated_at = now() WHERE x.id = rid;
        UPDATE cms.fw_rollout_stages s SET opened_at = now() WHERE s.rollout_id = rid AND s.seq = 1;
        PERFORM cms.audit_append('rollout_started', p_actor, NULL, p_peer,
            jsonb_build_object('rollout_id', rid, 'release_id', rel.id,
                               'version', rel.version)::text);
        evs := evs || 'rollout_started'::text
               || ARRAY(SELECT v.event FROM cms.fw_rollout_evaluate(rid, 'create') v);
    END IF;
    RETURN QUERY SELECT rid, evs;
END
$fn$;

-- Pauses a running (or created) rollout by hand. Audited rollout_paused
-- (reason "manual", note = p_note). CF012 when finished or paused already.
CREATE FUNCTION cms.fw_rollout_pause(p_id bigint, p_note text, p_actor text, p_peer text)
RETURNS TABLE (id bigint, events text[])
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    ro record;
BEGIN
    SELECT x.*, r.version INTO ro FROM cms.fw_rollouts x JOIN cms.fw_releases r ON r.id = x.release_id
    WHERE x.id = p_id FOR UPDATE OF x;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no rollout %', p_id USING ERRCODE = 'no_data_found';
    END IF;
    IF ro.state NOT IN ('running', 'created') THEN
        RAISE EXCEPTION 'rollout % is %: only a running or created rollout can be paused',
            p_id, ro.state USING ERRCODE = 'CF012';
    END IF;
    UPDATE cms.fw_rollouts x SET state = 'paused',
           pause_reason = 'manual by ' || p_actor || coalesce(': ' || p_note, ''),
           updated_at = now() WHERE x.id = p_id;
    PERFORM cms.audit_append('rollout_paused', p_actor, NULL, p_peer,
        jsonb_build_object('rollout_id', p_id, 'release_id', ro.release_id,
                           'version', ro.version, 'reason', 'manual', 'note', p_note,
                           'stage', ro.current_stage, 'was', ro.state)::text);
    RETURN QUERY SELECT p_id, ARRAY['rollout_paused'];
END
$fn$;

-- Resumes a paused rollout, or starts a created one (or one paused before it
-- started). Resuming acknowledges the failures seen so far (each open
-- stage's failures_acked): only new failures over the threshold pause it
-- again. Audited rollout_resumed (or rollout_started), then evaluated.
-- CF012 when running or finished.
CREATE FUNCTION cms.fw_rollout_resume(p_id bigint, p_actor text, p_peer text)
RETURNS TABLE (id bigint, events text[])
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    ro     record;
    acked  jsonb;
    evs    text[];
BEGIN
    SELECT x.*, r.version INTO ro FROM cms.fw_rollouts x JOIN cms.fw_releases r ON r.id = x.release_id
    WHERE x.id = p_id FOR UPDATE OF x;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no rollout %', p_id USING ERRCODE = 'no_data_found';
    END IF;
    IF ro.state NOT IN ('paused', 'created') THEN
        RAISE EXCEPTION 'rollout % is %: only a paused or created rollout can be resumed',
            p_id, ro.state USING ERRCODE = 'CF012';
    END IF;
    IF ro.current_stage = 0 THEN
        UPDATE cms.fw_rollouts x SET state = 'running', current_stage = 1, started_at = now(),
               pause_reason = NULL, updated_at = now() WHERE x.id = p_id;
        UPDATE cms.fw_rollout_stages s SET opened_at = now() WHERE s.rollout_id = p_id AND s.seq = 1;
        PERFORM cms.audit_append('rollout_started', p_actor, NULL, p_peer,
            jsonb_build_object('rollout_id', p_id, 'release_id', ro.release_id,
                               'version', ro.version)::text);
        evs := ARRAY['rollout_started'];
    ELSE
        UPDATE cms.fw_rollout_stages s SET failures_acked = x.failed
        FROM cms.fw_rollout_stage_status x
        WHERE x.rollout_id = p_id AND s.rollout_id = p_id AND s.seq = x.seq
          AND s.seq <= ro.current_stage;
        SELECT jsonb_object_agg(s.seq::text, s.failures_acked) INTO acked
        FROM cms.fw_rollout_stages s WHERE s.rollout_id = p_id AND s.seq <= ro.current_stage;
        UPDATE cms.fw_rollouts x SET state = 'running', pause_reason = NULL, updated_at = now()
        WHERE x.id = p_id;
        PERFORM cms.audit_append('rollout_resumed', p_actor, NULL, p_peer,
            jsonb_build_object('rollout_id', p_id, 'release_id', ro.release_id,
                               'version', ro.version, 'stage', ro.current_stage,
                               'paused_because', ro.pause_reason,
                               'failures_acknowledged', acked)::text);
        evs := ARRAY['rollout_resumed'];
    END IF;
    evs := evs || ARRAY(SELECT v.event FROM cms.fw_rollout_evaluate(p_id, 'resume') v);
    RETURN QUERY SELECT p_id, evs;
END
$fn$;

-- Aborts an unfinished rollout: no device of it is offered the release any
-- more, and every offer to a device that has not installed it is withdrawn
-- (its rollout state 'withdrawn'; its downloads refused). Audited
-- rollout_aborted. CF012 when completed or aborted already.
CREATE FUNCTION cms.fw_rollout_abort(p_id bigint, p_note text, p_actor text, p_peer text)
RETURNS TABLE (id bigint, events text[])
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    ro record;
    n  integer;
    ni integer;
BEGIN
    SELECT x.*, r.version INTO ro FROM cms.fw_rollouts x JOIN cms.fw_releases r ON r.id = x.release_id
    WHERE x.id = p_id FOR UPDATE OF x;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no rollout %', p_id USING ERRCODE = 'no_data_found';
    END IF;
    IF ro.state NOT IN ('created', 'running', 'paused') THEN
        RAISE EXCEPTION 'rollout % is % already: nothing to abort', p_id, ro.state
            USING ERRCODE = 'CF012';
    END IF;
    UPDATE cms.fw_rollouts x SET state = 'aborted', finished_at = now(), updated_at = now(),
           pause_reason = NULL WHERE x.id = p_id;
    UPDATE cms.fw_rollout_devices rd
    SET excluded_at = now(), excluded_reason = 'rollout aborted by ' || p_actor
    WHERE rd.rollout_id = p_id AND rd.excluded_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM cms.fw_rollout o WHERE o.release_id = ro.release_id
                        AND o.device_id = rd.device_id AND o.state = 'installed');
    UPDATE cms.fw_rollout o
    SET state = 'withdrawn', reason = 'rollout ' || p_id || ' aborted by ' || p_actor,
        updated_at = now()
    FROM cms.fw_rollout_devices rd
    WHERE rd.rollout_id = p_id AND o.release_id = ro.release_id AND o.device_id = rd.device_id
      AND o.state IN ('offered', 'downloading', 'downloaded');
    GET DIAGNOSTICS n = ROW_COUNT;
    SELECT count(*) INTO ni FROM cms.fw_rollout_devices rd
    JOIN cms.fw_rollout o ON o.release_id = ro.release_id AND o.device_id = rd.device_id
    WHERE rd.rollout_id = p_id AND o.state = 'installed';
    PERFORM cms.audit_append('rollout_aborted', p_actor, NULL, p_peer,
        jsonb_build_object('rollout_id', p_id, 'release_id', ro.release_id,
                           'version', ro.version, 'was', ro.state, 'stage', ro.current_stage,
                           'note', p_note, 'offers_withdrawn', n, 'installed', ni)::text);
    RETURN QUERY SELECT p_id, ARRAY['rollout_aborted'];
END
$fn$;

------------------------------------------------------------------------------
-- JSON for the operator API
------------------------------------------------------------------------------

-- One rollout as the API shows it: the rollout (cms.fw_rollout_list's
-- columns, times as ISO 8601 UTC), "stages" (cms.fw_rollout_stage_status,
-- by seq) and, with p_devices, "devices" (cms.fw_rollout_device_status, by
-- stage and rank). NULL for an unknown id. VOLATILE: called in the same
-- statement as a change, it sees that change.
CREATE FUNCTION cms.fw_rollout_json(p_id bigint, p_devices boolean)
RETURNS jsonb
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, cms
AS $fn$
    SELECT jsonb_build_object(
        'id', l.id, 'release_id', l.release_id, 'model', l.model, 'version', l.version,
        'state', l.state, 'current_stage', l.current_stage, 'stages_total', l.nstages,
        'success_threshold', l.success_threshold, 'failure_threshold', l.failure_threshold,
        'window', CASE WHEN l.window_start IS NULL THEN NULL
                       ELSE l.window_start || '-' || l.window_end END,
        'time_zone', l.time_zone, 'window_open', l.window_open,
        'max_retargets', l.max_retargets, 'pause_reason', l.pause_reason,
        'created_by', l.created_by,
        'created_at', to_char(l.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'started_at', to_char(l.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'finished_at', to_char(l.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'updated_at', to_char(l.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'devices', l.devices, 'installed', l.installed, 'failed', l.failed,
        'retargets', l.retargets,
        'stages', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'stage', s.seq, 'spec', s.spec, 'devices', s.devices,
                       'installed', s.installed, 'failed', s.failed,
                       'rolled_back', s.rolled_back, 'in_progress', s.in_progress,
                       'pending', s.pending, 'excluded', s.excluded,
                       'retargets', s.retargets, 'failures_acknowledged', s.failures_acked,
                       'opened_at', to_char(s.opened_at AT TIME ZONE 'UTC',
                                            'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                       'done_at', to_char(s.done_at AT TIME ZONE 'UTC',
                                          'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                       ORDER BY s.seq), '[]')
                   FROM cms.fw_rollout_stage_status s WHERE s.rollout_id = l.id))
        || CASE WHEN p_devices THEN jsonb_build_object('device_list',
               (SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'serial', x.serial, 'stage', x.stage, 'state', x.state, 'reason', x.reason,
                    'rollbacks', x.rollbacks, 'retargets', x.retargets,
                    'excluded', x.excluded_at IS NOT NULL, 'excluded_reason', x.excluded_reason,
                    'updated_at', to_char(x.updated_at AT TIME ZONE 'UTC',
                                          'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                    ORDER BY x.stage, x.rank), '[]')
                FROM cms.fw_rollout_device_status x WHERE x.rollout_id = l.id))
           ELSE '{}'::jsonb END
    FROM cms.fw_rollout_list l WHERE l.id = p_id
$fn$;

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------

REVOKE ALL ON cms.fw_rollouts, cms.fw_rollout_stages, cms.fw_rollout_devices,
              cms.fw_rollout_device_status, cms.fw_rollout_stage_status, cms.fw_rollout_list
FROM PUBLIC;
REVOKE ALL ON FUNCTION
    cms.fw_rollout_evaluate(bigint, text),
    cms.fw_rollout_evaluate_release(bigint, text),
    cms.fw_rollout_tick(),
    cms.fw_rollout_create(bigint, jsonb, integer, integer, text, text, text, integer, boolean,
                          text, text),
    cms.fw_rollout_pause(bigint, text, text, text),
    cms.fw_rollout_resume(bigint, text, text),
    cms.fw_rollout_abort(bigint, text, text, text)
FROM PUBLIC;
GRANT SELECT ON cms.fw_rollouts, cms.fw_rollout_stages, cms.fw_rollout_devices,
                cms.fw_rollout_device_status, cms.fw_rollout_stage_status, cms.fw_rollout_list
TO cms_server;
GRANT EXECUTE ON FUNCTION
    cms.fw_rollout_window_open(time, time, text, timestamptz),
    cms.fw_rollout_offerable(bigint, bigint),
    cms.fw_rollout_downloadable(bigint, bigint),
    cms.fw_rollout_evaluate(bigint, text),
    cms.fw_rollout_evaluate_release(bigint, text),
    cms.fw_rollout_tick(),
    cms.fw_rollout_create(bigint, jsonb, integer, integer, text, text, text, integer, boolean,
                          text, text),
    cms.fw_rollout_pause(bigint, text, text, text),
    cms.fw_rollout_resume(bigint, text, text),
    cms.fw_rollout_abort(bigint, text, text, text),
    cms.fw_rollout_json(bigint, boolean)
TO cms_server;
