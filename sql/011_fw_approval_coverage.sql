-- 011_fw_approval_coverage.sql - a group approval covers the membership it
-- saw: adding a device to an approved group no longer widens a rollout.
--
-- Never edit this file once it has landed: add a later NNN_*.sql instead.
--
-- Before: cms.fw_allowlisted (004) offered a release to every CURRENT member
-- of a group it was approved for. Group membership is an operator-role
-- change (cms.group_update), so the operator who imported a release could,
-- after a second operator approved it for a group, add any device of the
-- model to that group and have the release offered to it: one person
-- deciding who gets firmware, which the two-person rule (004, CF001) exists
-- to stop.
--
-- The rule now (docs/firmware.md, "Approval"):
--   * a group approval covers the devices that were members when it was
--     approved (cms.fw_approval_members, written by cms.fw_approve under the
--     group's lock), and each only while it stays a member;
--   * a device added to the group later is not covered: it is not offered
--     the release and may not download it. cms.group_update audits one
--     fw_approval_needed row per (device added, active group approval of a
--     release of the device's model) that does not cover it;
--   * approving the group again covers its current members: outcome
--     'approved' and one fw_approved row listing the devices newly covered
--     ('already_approved', no row, when none is new). The two-person rule
--     applies as to any approval: the importer is refused (CF001);
--   * a device removed from the group loses that coverage (trigger below):
--     putting it back needs a new approval as well;
--   * approvals of single devices are unchanged.
--
-- Existing group approvals: each covers the members added at or before it
-- (device_group_members.added_at <= approved_at); every member of the
-- release's model added later is not covered and gets an fw_approval_needed
-- row here (actor migration:011).
--
-- Locks, in the project's order (007): cms.fw_approve takes the release row,
-- then each group's advisory lock (the one cms.group_update takes, in name
-- order), then the devices (FOR KEY SHARE, id order), and writes every audit
-- row last, so the chain head is taken after everything else.

CREATE TABLE cms.fw_approval_members (
    approval_id bigint NOT NULL REFERENCES cms.fw_approvals (id),
    device_id   bigint NOT NULL REFERENCES cms.devices (id),
    covered_by  text NOT NULL,                      -- audit actor of the approval
    covered_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (approval_id, device_id)
);
CREATE INDEX fw_approval_members_device_idx ON cms.fw_approval_members (device_id);

INSERT INTO cms.fw_approval_members (approval_id, device_id, covered_by, covered_at)
SELECT a.id, m.device_id, a.approved_by, a.approved_at
FROM cms.fw_approvals a
JOIN cms.device_group_members m ON m.group_id = a.group_id
WHERE a.group_id IS NOT NULL AND a.withdrawn_at IS NULL AND m.added_at <= a.approved_at;

DO $mig$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT d.serial, g.name AS gname, a.id AS approval_id, rel.id AS release_id,
                    rel.model, rel.version
             FROM cms.fw_approvals a
             JOIN cms.fw_releases rel ON rel.id = a.release_id
             JOIN cms.device_groups g ON g.id = a.group_id
             JOIN cms.device_group_members m ON m.group_id = a.group_id
             JOIN cms.devices d ON d.id = m.device_id AND d.model = rel.model
             WHERE a.withdrawn_at IS NULL AND m.added_at > a.approved_at
             ORDER BY a.id, d.serial LOOP
        PERFORM cms.audit_append('fw_approval_needed', 'migration:011', r.serial, NULL,
            jsonb_build_object('group', r.gname, 'release_id', r.release_id, 'model', r.model,
                               'version', r.version, 'approval_id', r.approval_id)::text);
    END LOOP;
END
$mig$;

-- A membership that ends ends the coverage it had (any way it ends: a
-- removal, a group deleted, TRUNCATE).
CREATE FUNCTION cms.fw_member_removed_trg()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN -- TRUNCATE
        DELETE FROM cms.fw_approval_members c USING cms.fw_approvals a
        WHERE c.approval_id = a.id AND a.group_id IS NOT NULL;
    ELSE
        DELETE FROM cms.fw_approval_members c USING cms.fw_approvals a
        WHERE c.approval_id = a.id AND a.group_id = OLD.group_id AND c.device_id = OLD.device_id;
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER device_group_members_fw_coverage AFTER DELETE ON cms.device_group_members
FOR EACH ROW EXECUTE FUNCTION cms.fw_member_removed_trg();
CREATE TRIGGER device_group_members_fw_coverage_truncate AFTER TRUNCATE ON cms.device_group_members
FOR EACH STATEMENT EXECUTE FUNCTION cms.fw_member_removed_trg();

-- Devices allowlisted for a release: directly, or as a member of a group the
-- release is approved for whom that approval covers.
CREATE OR REPLACE FUNCTION cms.fw_allowlisted(p_release_id bigint, p_device_id bigint)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, cms
AS $fn$
    SELECT EXISTS (
        SELECT 1 FROM cms.fw_approvals a
        WHERE a.release_id = p_release_id AND a.withdrawn_at IS NULL
          AND (a.device_id = p_device_id
               OR (a.group_id IS NOT NULL
                   AND EXISTS (SELECT 1 FROM cms.device_group_members m
                               WHERE m.group_id = a.group_id AND m.device_id = p_device_id)
                   AND EXISTS (SELECT 1 FROM cms.fw_approval_members c
                               WHERE c.approval_id = a.id AND c.device_id = p_device_id))))
$fn$;

-- As 004 (arguments, checks, errors, answers), plus: a group approval covers
-- the group's members at this moment; approving an approved group again
-- covers the members it does not cover yet. fw_approved detail of a group
-- approval: {release_id, model, version, group, imported_by, approval_id,
-- devices: [serials newly covered], extended: false for a new approval,
-- true when an existing one now covers more}.
CREATE OR REPLACE FUNCTION cms.fw_approve(p_release_id bigint, p_devices jsonb, p_groups jsonb,
                                          p_actor text, p_peer text)
RETURNS TABLE (kind text, name text, outcome text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    rel      record;
    devs     text[] := cms.fw_name_array(p_devices, 'devices');
    grps     text[] := cms.fw_name_array(p_groups, 'groups');
    unknown  text;
    r        record;
    aid      bigint;
    extended boolean;
    newly    text[];
    pending  jsonb := '[]';  -- audit rows, written last: [{"device", "detail"}]
BEGIN
    SELECT x.* INTO rel FROM cms.fw_releases x WHERE x.id = p_release_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no firmware release %', p_release_id USING ERRCODE = 'no_data_found';
    END IF;
    IF rel.imported_by = p_actor THEN
        RAISE EXCEPTION 'two-person rule: % imported release % and may not approve it; another operator must',
            p_actor, p_release_id USING ERRCODE = 'CF001';
    END IF;
    IF cardinality(devs) = 0 AND cardinality(grps) = 0 THEN
        RAISE EXCEPTION 'name at least one device or group' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(u.s, ', ' ORDER BY u.s) INTO unknown FROM unnest(devs) u (s)
    WHERE NOT EXISTS (SELECT 1 FROM cms.devices d WHERE d.serial = u.s);
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'no such device: %', unknown USING ERRCODE = 'no_data_found';
    END IF;
    SELECT string_agg(u.s, ', ' ORDER BY u.s) INTO unknown FROM unnest(grps) u (s)
    WHERE NOT EXISTS (SELECT 1 FROM cms.device_groups g WHERE g.name = u.s);
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'no such group: %', unknown USING ERRCODE = 'no_data_found';
    END IF;
    SELECT string_agg(d.serial || ' (' || coalesce(d.model, 'no model') || ')', ', '
                      ORDER BY d.serial) INTO unknown
    FROM cms.devices d WHERE d.serial = ANY (devs) AND d.model IS DISTINCT FROM rel.model;
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'release % is for model "%"; these devices are not: %', p_release_id,
            rel.model, unknown USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- The groups' membership holds still until the commit (cms.group_update's lock).
    FOR r IN SELECT u.s FROM unnest(grps) AS u (s) ORDER BY u.s LOOP
        PERFORM pg_advisory_xact_lock(hashtext('cms.device_groups'), hashtext(r.s));
    END LOOP;
    PERFORM 1 FROM cms.devices d
    WHERE d.serial = ANY (devs)
       OR d.id IN (SELECT m.device_id FROM cms.device_group_members m
                   JOIN cms.device_groups g ON g.id = m.group_id WHERE g.name = ANY (grps))
    ORDER BY d.id FOR KEY SHARE OF d;

    FOR r IN SELECT d.id, d.serial FROM cms.devices d WHERE d.serial = ANY (devs)
             ORDER BY d.serial LOOP
        kind := 'device'; name := r.serial;
        IF EXISTS (SELECT 1 FROM cms.fw_approvals a WHERE a.release_id = p_release_id
                   AND a.device_id = r.id AND a.withdrawn_at IS NULL) THEN
            outcome := 'already_approved';
        ELSE
            INSERT INTO cms.fw_approvals (release_id, device_id, approved_by)
            VALUES (p_release_id, r.id, p_actor);
            pending := pending || jsonb_build_object('device', r.serial, 'detail',
                jsonb_build_object('release_id', p_release_id, 'model', rel.model,
                                   'version', rel.version, 'device', r.serial,
                                   'imported_by', rel.imported_by));
            outcome := 'approved';
        END IF;
        RETURN NEXT;
    END LOOP;
    FOR r IN SELECT g.id, g.name FROM cms.device_groups g WHERE g.name = ANY (grps)
             ORDER BY g.name LOOP
        kind := 'group'; name := r.name;
        aid := NULL;
        SELECT a.id INTO aid FROM cms.fw_approvals a
        WHERE a.release_id = p_release_id AND a.group_id = r.id AND a.withdrawn_at IS NULL;
        extended := aid IS NOT NULL;
        IF NOT extended THEN
            INSERT INTO cms.fw_approvals (release_id, group_id, approved_by)
            VALUES (p_release_id, r.id, p_actor) RETURNING id INTO aid;
        END IF;
        WITH ins AS (
            INSERT INTO cms.fw_approval_members (approval_id, device_id, covered_by)
            SELECT aid, m.device_id, p_actor FROM cms.device_group_members m
            WHERE m.group_id = r.id
            ON CONFLICT DO NOTHING
            RETURNING device_id)
        SELECT coalesce(array_agg(d.serial ORDER BY d.serial), '{}') INTO newly
        FROM ins JOIN cms.devices d ON d.id = ins.device_id;
        IF extended AND cardinality(newly) = 0 THEN
            outcome := 'already_approved';
        ELSE
            pending := pending || jsonb_build_object('device', NULL, 'detail',
                jsonb_build_object('release_id', p_release_id, 'model', rel.model,
                                   'version', rel.version, 'group', r.name,
                                   'imported_by', rel.imported_by, 'approval_id', aid,
                                   'devices', to_jsonb(newly), 'extended', extended));
            outcome := 'approved';
        END IF;
        RETURN NEXT;
    END LOOP;

    -- The audit rows (the chain head is locked from here to the commit).
    FOR r IN SELECT e.value ->> 'device' AS device, e.value -> 'detail' AS detail
             FROM jsonb_array_elements(pending) WITH ORDINALITY AS e (value, n) ORDER BY e.n LOOP
        PERFORM cms.audit_append('fw_approved', p_actor, r.device, p_peer, r.detail::text);
    END LOOP;
END
$fn$;

-- As 007 (arguments, checks, locks, errors, answers, audit rows), plus one
-- fw_approval_needed row per device added to a group that a release of its
-- model is approved for, whose approval does not cover it (011 header).
CREATE OR REPLACE FUNCTION cms.group_update(a_group text, a_add jsonb, a_remove jsonb,
                                            a_actor text, a_peer text)
RETURNS TABLE (serial text, outcome text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    gid      bigint;
    adds     text[];
    removes  text[];
    unknown  text;
    added    text[] := '{}';
    removed  text[] := '{}';
    r        record;
BEGIN
    IF a_group IS NULL OR a_group !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid group name %', coalesce(quote_literal(a_group), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = '1..63 characters of A-Z a-z 0-9 . _ : -, starting with a letter or digit';
    END IF;
    IF (a_add IS NOT NULL AND jsonb_typeof(a_add) <> 'array')
       OR (a_remove IS NOT NULL AND jsonb_typeof(a_remove) <> 'array')
       OR EXISTS (SELECT 1 FROM jsonb_array_elements(coalesce(a_add, '[]')) e
                  WHERE jsonb_typeof(e) <> 'string')
       OR EXISTS (SELECT 1 FROM jsonb_array_elements(coalesce(a_remove, '[]')) e
                  WHERE jsonb_typeof(e) <> 'string') THEN
        RAISE EXCEPTION 'add and remove must be arrays of serials (strings)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT coalesce(array_agg(DISTINCT e ORDER BY e), '{}')
      INTO adds FROM jsonb_array_elements_text(coalesce(a_add, '[]')) e;
    SELECT coalesce(array_agg(DISTINCT e ORDER BY e), '{}')
      INTO removes FROM jsonb_array_elements_text(coalesce(a_remove, '[]')) e;
    IF cardinality(adds) = 0 AND cardinality(removes) = 0 THEN
        RAISE EXCEPTION 'nothing to add or remove' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF adds && removes THEN
        RAISE EXCEPTION 'a serial cannot be both added and removed: %',
            array_to_string(ARRAY(SELECT unnest(adds) INTERSECT SELECT unnest(removes)
                                  ORDER BY 1), ', ')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- 1. the devices, in id order (before anything else is locked)
    PERFORM 1 FROM cms.devices d WHERE d.serial = ANY (adds || removes)
    ORDER BY d.id FOR KEY SHARE OF d;
    SELECT string_agg(u.s, ', ' ORDER BY u.s) INTO unknown
    FROM unnest(adds || removes) AS u (s)
    WHERE NOT EXISTS (SELECT 1 FROM cms.devices d WHERE d.serial = u.s);
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'no such device: %', unknown USING ERRCODE = 'no_data_found';
    END IF;

    -- 2. the group (one change of a group at a time)
    PERFORM pg_advisory_xact_lock(hashtext('cms.device_groups'), hashtext(a_group));
    IF cardinality(adds) > 0 THEN
        INSERT INTO cms.device_groups (name, created_by) VALUES (a_group, a_actor)
        ON CONFLICT (name) DO NOTHING;
    END IF;
    SELECT g.id INTO gid FROM cms.device_groups g WHERE g.name = a_group;
    IF gid IS NULL THEN
        RAISE EXCEPTION 'no such group: %', a_group USING ERRCODE = 'no_data_found';
    END IF;

    -- 3. the memberships (a removal also ends the firmware coverage it had: trigger)
    FOR r IN SELECT d.id, d.serial FROM cms.devices d
             WHERE d.serial = ANY (adds) ORDER BY d.serial LOOP
        INSERT INTO cms.device_group_members (group_id, device_id, added_by)
        VALUES (gid, r.id, a_actor)
        ON CONFLICT DO NOTHING;
        serial := r.serial;
        IF FOUND THEN
            added := added || r.serial;
            outcome := 'added';
        ELSE
            outcome := 'already_member';
        END IF;
        RETURN NEXT;
    END LOOP;
    FOR r IN SELECT d.id, d.serial, d.group_name FROM cms.devices d
             WHERE d.serial = ANY (removes) ORDER BY d.serial LOOP
        DELETE FROM cms.device_group_members m WHERE m.group_id = gid AND m.device_id = r.id;
        serial := r.serial;
        IF FOUND THEN
            removed := removed || r.serial;
            outcome := 'removed';
        ELSE
            outcome := 'not_member';
        END IF;
        RETURN NEXT;
    END LOOP;
    UPDATE cms.devices d SET group_name = NULL
    WHERE d.serial = ANY (removed) AND d.group_name = a_group;

    -- 4. the audit rows (the chain head is locked from here to the commit)
    FOR r IN SELECT u.s FROM unnest(added) AS u (s) ORDER BY u.s LOOP
        PERFORM cms.audit_append('group_member_added', a_actor, r.s, a_peer,
                                 jsonb_build_object('group', a_group)::text);
    END LOOP;
    FOR r IN SELECT u.s FROM unnest(removed) AS u (s) ORDER BY u.s LOOP
        PERFORM cms.audit_append('group_member_removed', a_actor, r.s, a_peer,
                                 jsonb_build_object('group', a_group)::text);
    END LOOP;
    IF cardinality(added) = 0 AND cardinality(removed) = 0 THEN
        PERFORM cms.audit_append('group_update', a_actor, NULL, a_peer,
            jsonb_build_object('group', a_group, 'unchanged', true,
                               'add', to_jsonb(adds), 'remove', to_jsonb(removes))::text);
    END IF;
    FOR r IN SELECT d.serial AS s, a.id AS approval_id, rel.id AS release_id, rel.model,
                    rel.version
             FROM unnest(added) AS u (s)
             JOIN cms.devices d ON d.serial = u.s
             JOIN cms.fw_approvals a ON a.group_id = gid AND a.withdrawn_at IS NULL
             JOIN cms.fw_releases rel ON rel.id = a.release_id AND rel.model = d.model
             WHERE NOT EXISTS (SELECT 1 FROM cms.fw_approval_members c
                               WHERE c.approval_id = a.id AND c.device_id = d.id)
             ORDER BY d.serial, rel.id LOOP
        PERFORM cms.audit_append('fw_approval_needed', a_actor, r.s, a_peer,
            jsonb_build_object('group', a_group, 'release_id', r.release_id, 'model', r.model,
                               'version', r.version, 'approval_id', r.approval_id)::text);
    END LOOP;
END
$fn$;

-- As 004, with coverage: 'via' names only the approvals that cover the
-- device; a device of the release's model in an approved group whose
-- approval does not cover it is listed with state 'needs_approval' (reason
-- names the groups) unless it has a rollout row or another approval.
CREATE OR REPLACE VIEW cms.fw_release_devices AS
SELECT r.id AS release_id, d.serial, d.model, d.status AS device_status,
       d.firmware_version,
       (SELECT string_agg(CASE WHEN a.device_id IS NOT NULL THEN 'device'
                               ELSE 'group:' || g.name END, ',' ORDER BY a.id)
        FROM cms.fw_approvals a LEFT JOIN cms.device_groups g ON g.id = a.group_id
        WHERE a.release_id = r.id AND a.withdrawn_at IS NULL
          AND (a.device_id = d.id
               OR (EXISTS (SELECT 1 FROM cms.device_group_members m
                           WHERE m.group_id = a.group_id AND m.device_id = d.id)
                   AND EXISTS (SELECT 1 FROM cms.fw_approval_members c
                               WHERE c.approval_id = a.id AND c.device_id = d.id)))) AS via,
       coalesce(o.state, CASE WHEN al.ok THEN 'approved' ELSE 'needs_approval' END) AS state,
       CASE WHEN o.state IS NULL AND NOT al.ok
            THEN 'joined group ' || p.groups
                 || ' after its approval: a second operator must approve it again'
            ELSE o.reason END AS reason,
       o.manifest_counter, o.updated_at
FROM cms.fw_releases r
CROSS JOIN cms.devices d
CROSS JOIN LATERAL (SELECT cms.fw_allowlisted(r.id, d.id) AS ok) al
LEFT JOIN cms.fw_rollout o ON o.release_id = r.id AND o.device_id = d.id
LEFT JOIN LATERAL (
    SELECT string_agg(g.name, ',' ORDER BY g.name) AS groups
    FROM cms.fw_approvals a
    JOIN cms.device_groups g ON g.id = a.group_id
    JOIN cms.device_group_members m ON m.group_id = a.group_id AND m.device_id = d.id
    WHERE a.release_id = r.id AND a.withdrawn_at IS NULL AND d.model = r.model
      AND NOT EXISTS (SELECT 1 FROM cms.fw_approval_members c
                      WHERE c.approval_id = a.id AND c.device_id = d.id)) p ON true
WHERE al.ok OR o.release_id IS NOT NULL OR p.groups IS NOT NULL;

REVOKE ALL ON cms.fw_approval_members FROM PUBLIC;
REVOKE ALL ON FUNCTION cms.fw_member_removed_trg() FROM PUBLIC;
GRANT SELECT ON cms.fw_approval_members TO cms_server;
