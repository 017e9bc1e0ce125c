-- 007_group_update_locks.sql - cms.group_update (003) takes its locks in the
-- project's order: devices first, the audit chain head last.
--
-- Never edit this file once it has landed: add a later NNN_*.sql instead.
--
-- 003's version wrote each device's audit row right after that device's
-- membership change, so with two devices or more it held the chain head
-- (locked by the audit trigger until commit) while it went on to the next
-- device's row (KEY SHARE through the membership's foreign key). A
-- revocation (002: device row FOR UPDATE, then the chain head) of that next
-- device at the same moment was a deadlock, and PostgreSQL aborted one of
-- the two. Now every device named is locked up front, in id order (FOR KEY
-- SHARE: no conflict with the batched last-seen updates of 006), then the
-- memberships change, then all audit rows are written.
-- Same signature, arguments, errors, answers and audit rows as 003.

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

    -- 3. the memberships
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
END
$fn$;

REVOKE ALL ON FUNCTION cms.group_update(text, jsonb, jsonb, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cms.group_update(text, jsonb, jsonb, text, text) TO cms_server;
