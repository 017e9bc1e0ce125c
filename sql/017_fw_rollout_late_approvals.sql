-- 017_fw_rollout_late_approvals.sql - a device approved for a release after
-- its rollout was created can be rolled out to.
--
-- Never edit this file once it has landed: add a later NNN_*.sql instead.
--
-- Before: a rollout's target set is a snapshot of the devices the release is
-- allowlisted for (016), and a release with a rollout is offered only through
-- its rollouts. A device approved later was offered nothing, and a second
-- rollout of the release to reach it was refused (CF011, overlap) for as long
-- as the first was unfinished: it took every allowlisted device again,
-- including those the first one held.
--
-- Now cms.fw_rollout_create leaves out of the target set the devices an
-- unfinished (created, running, paused) rollout of the same release holds:
-- a second rollout of a release takes the devices approved since (with its
-- own stages, thresholds and window). When every allowlisted device is held
-- so, it is refused CF011 (409 overlap) saying which rollout holds them.
-- A device in an unfinished rollout of another release is refused as before
-- (CF011). rollout_created's detail gains "held_elsewhere" (how many
-- allowlisted devices were left to the unfinished rollout(s)). Same
-- signature, arguments and other errors as 016.

CREATE OR REPLACE FUNCTION cms.fw_rollout_create(p_release_id bigint, p_stages jsonb,
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
    held    bigint;
    other_ids text;
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

    -- The target set, ranked by sha256(serial): ids[rank + 1]. A device an unfinished
    -- rollout of this release holds already stays there (017): a second rollout takes the
    -- devices approved since.
    SELECT coalesce(array_agg(t.id ORDER BY t.h, t.serial) FILTER (WHERE NOT t.held), '{}'),
           count(*) FILTER (WHERE t.held)
    INTO ids, held
    FROM (SELECT d.id, d.serial, sha256(convert_to(d.serial, 'UTF8')) AS h,
                 EXISTS (SELECT 1 FROM cms.fw_rollout_devices od
                         JOIN cms.fw_rollouts o ON o.id = od.rollout_id
                         WHERE od.device_id = d.id AND o.release_id = rel.id
                           AND o.id <> rid
                           AND o.state IN ('created', 'running', 'paused')) AS held
          FROM cms.devices d
          WHERE d.model = rel.model AND d.status = 'active'
            AND cms.fw_allowlisted(rel.id, d.id)) t;
    n := cardinality(ids);
    IF n = 0 AND held > 0 THEN
        SELECT string_agg(o.id::text, ', ' ORDER BY o.id) INTO other_ids
        FROM cms.fw_rollouts o
        WHERE o.release_id = rel.id AND o.id <> rid AND o.state IN ('created', 'running', 'paused');
        RAISE EXCEPTION 'every device release % is approved for (%) is in its unfinished rollout % already: a new rollout takes only devices approved since',
            p_release_id, held, other_ids USING ERRCODE = 'CF011';
    END IF;
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
                           'target_devices', n, 'held_elsewhere', held,
                           'success_threshold', p_success,
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
