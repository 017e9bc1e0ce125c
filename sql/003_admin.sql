-- 003_admin.sql - what the operator API (server/svc/admin.c) reads and
-- writes: device groups, a device overview view (groups, current certificate
-- from 002), and a detailed audit chain verification.
--
-- Never edit this file once it has landed: add 004_*.sql instead.
--
-- Device groups
-- -------------
-- cms.device_groups names a set of devices (a ward, a rollout ring, a
-- model line); cms.device_group_members holds the membership.
-- A device may be in SEVERAL groups (e.g. "icu-3" and "fw-canary"): a
-- location and a rollout ring are independent questions. Consumers that
-- allowlist by group (firmware) treat membership as a union: a release
-- allowlisted for any group of a device is offered to that device.
-- Group names: 1..63 characters of [A-Za-z0-9._:-], starting with a letter or
-- digit (no commas, so a list of names is unambiguous in any output).
-- A group is created by the first device added to it and stays (empty) when
-- its last device is removed, since allowlists may still name it.
--
-- cms.devices.group_name (001) is the older one-group field that
-- `cmsctl db device-add --group` sets: setting it also adds the device to
-- that group (trigger below), and removing the device from that group through
-- the API clears it. Existing values are copied into groups here.
--
-- Writes go through cms.group_update() only (SECURITY DEFINER): one statement,
-- one transaction, the membership change and its audit rows commit together.
--
-- Audit verification
-- ------------------
-- cms.audit_verify_report() recomputes the chain exactly as the 001 trigger
-- computes it (cms.audit_row_hash over the stored columns and the previous
-- row's row_hash, 32 zero bytes before the first row) and also compares the
-- last row with cms.audit_chain_head, so that rows removed from the end are
-- noticed too. cms.audit_verify() (001, returns the first bad id or NULL) is
-- redefined to use it, so both always agree.

------------------------------------------------------------------------------
-- Groups
------------------------------------------------------------------------------

CREATE TABLE cms.device_groups (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE
                CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$'),
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text                                -- audit actor, e.g. operator:alice
);

CREATE TABLE cms.device_group_members (
    group_id  bigint NOT NULL REFERENCES cms.device_groups (id) ON DELETE CASCADE,
    device_id bigint NOT NULL REFERENCES cms.devices (id) ON DELETE CASCADE,
    added_at  timestamptz NOT NULL DEFAULT now(),
    added_by  text,
    PRIMARY KEY (group_id, device_id)
);
CREATE INDEX device_group_members_device_idx ON cms.device_group_members (device_id);

-- Existing one-group values become groups (names that do not fit the rule
-- above stay only in devices.group_name).
INSERT INTO cms.device_groups (name, created_by)
SELECT DISTINCT group_name, 'migration:003'
FROM cms.devices
WHERE group_name ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$'
ON CONFLICT (name) DO NOTHING;

INSERT INTO cms.device_group_members (group_id, device_id, added_by)
SELECT g.id, d.id, 'migration:003'
FROM cms.devices d
JOIN cms.device_groups g ON g.name = d.group_name
ON CONFLICT DO NOTHING;

-- devices.group_name set (INSERT or UPDATE) -> membership of that group.
CREATE FUNCTION cms.devices_group_name_trg()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
DECLARE
    gid bigint;
BEGIN
    IF NEW.group_name IS NULL
       OR NEW.group_name !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$'
       OR (TG_OP = 'UPDATE' AND NEW.group_name IS NOT DISTINCT FROM OLD.group_name) THEN
        RETURN NULL;
    END IF;
    INSERT INTO cms.device_groups (name, created_by)
    VALUES (NEW.group_name, 'devices.group_name')
    ON CONFLICT (name) DO NOTHING;
    SELECT id INTO STRICT gid FROM cms.device_groups WHERE name = NEW.group_name;
    INSERT INTO cms.device_group_members (group_id, device_id, added_by)
    VALUES (gid, NEW.id, 'devices.group_name')
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER devices_group_name AFTER INSERT OR UPDATE OF group_name ON cms.devices
FOR EACH ROW EXECUTE FUNCTION cms.devices_group_name_trg();

-- Adds and removes devices (by serial) to and from group a_group, and
-- writes one audit row per effective change (group_member_added /
-- group_member_removed, device = serial, detail {"group": name}), or one
-- group_update row with {"unchanged": true} when nothing changed, all in the
-- caller's transaction (one statement = everything or nothing).
--   a_add, a_remove: JSON arrays of serials (text), may be NULL/empty.
--   a_actor, a_peer: who asked (audit columns).
-- The group is created when a_add is not empty and it does not exist.
-- Returns one row per serial named: (serial, outcome) with outcome
-- 'added', 'already_member', 'removed' or 'not_member'.
-- Errors (SQLSTATE): 22023 a bad argument (group name, a serial both added
-- and removed, not an array of strings, nothing to do); P0002 unknown group
-- (remove only) or unknown serials (MESSAGE names them; nothing changed).
CREATE FUNCTION cms.group_update(a_group text, a_add jsonb, a_remove jsonb,
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
    nchanged integer := 0;
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
    SELECT string_agg(u.s, ', ' ORDER BY u.s) INTO unknown
    FROM unnest(adds || removes) AS u (s)
    WHERE NOT EXISTS (SELECT 1 FROM cms.devices d WHERE d.serial = u.s);
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'no such device: %', unknown USING ERRCODE = 'no_data_found';
    END IF;

    -- Serialize changes of one group (concurrent adds of a new group).
    PERFORM pg_advisory_xact_lock(hashtext('cms.device_groups'), hashtext(a_group));
    IF cardinality(adds) > 0 THEN
        INSERT INTO cms.device_groups (name, created_by) VALUES (a_group, a_actor)
        ON CONFLICT (name) DO NOTHING;
    END IF;
    SELECT g.id INTO gid FROM cms.device_groups g WHERE g.name = a_group;
    IF gid IS NULL THEN
        RAISE EXCEPTION 'no such group: %', a_group USING ERRCODE = 'no_data_found';
    END IF;

    FOR r IN SELECT d.id, d.serial, d.group_name FROM cms.devices d
             WHERE d.serial = ANY (adds) ORDER BY d.serial LOOP
        INSERT INTO cms.device_group_members (group_id, device_id, added_by)
        VALUES (gid, r.id, a_actor)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            nchanged := nchanged + 1;
            PERFORM cms.audit_append('group_member_added', a_actor, r.serial, a_peer,
                                     jsonb_build_object('group', a_group)::text);
            serial := r.serial; outcome := 'added';
        ELSE
            serial := r.serial; outcome := 'already_member';
        END IF;
        RETURN NEXT;
    END LOOP;

    FOR r IN SELECT d.id, d.serial, d.group_name FROM cms.devices d
             WHERE d.serial = ANY (removes) ORDER BY d.serial LOOP
        DELETE FROM cms.device_group_members m WHERE m.group_id = gid AND m.device_id = r.id;
        IF FOUND THEN
            nchanged := nchanged + 1;
            IF r.group_name = a_group THEN
                UPDATE cms.devices SET group_name = NULL WHERE id = r.id;
            END IF;
            PERFORM cms.audit_append('group_member_removed', a_actor, r.serial, a_peer,
                                     jsonb_build_object('group', a_group)::text);
            serial := r.serial; outcome := 'removed';
        ELSE
            serial := r.serial; outcome := 'not_member';
        END IF;
        RETURN NEXT;
    END LOOP;

    IF nchanged = 0 THEN
        PERFORM cms.audit_append('group_update', a_actor, NULL, a_peer,
            jsonb_build_object('group', a_group, 'unchanged', true,
                               'add', to_jsonb(adds), 'remove', to_jsonb(removes))::text);
    END IF;
END
$fn$;

------------------------------------------------------------------------------
-- Device overview (operator API): one row per device, with its groups and
-- its current certificate (002: not superseded, not revoked; the newest if
-- ever several; all cert_* NULL for a device provisioned out of band,
-- without a recorded certificate).
------------------------------------------------------------------------------

CREATE VIEW cms.device_overview AS
SELECT d.id,
       d.serial,
       d.model,
       d.status,
       d.status_changed_at,
       d.status_reason,
       d.location,
       d.group_name,
       coalesce((SELECT array_agg(g.name ORDER BY g.name)
                 FROM cms.device_group_members m
                 JOIN cms.device_groups g ON g.id = m.group_id
                 WHERE m.device_id = d.id), '{}'::text[]) AS groups,
       d.created_at,
       d.last_seen_at,
       d.last_peer,
       d.firmware_version,
       cur.serial_hex         AS cert_serial_hex,
       cur.fingerprint_sha256 AS cert_sha256,
       cur.key_desc           AS cert_key,
       cur.not_before         AS cert_not_before,
       cur.not_after          AS cert_not_after
FROM cms.devices d
LEFT JOIN LATERAL (
    SELECT c.serial_hex, c.fingerprint_sha256, c.key_desc, c.not_before, c.not_after
    FROM cms.device_certs c
    WHERE c.device_id = d.id AND c.superseded_at IS NULL AND c.revoked_at IS NULL
    ORDER BY c.issued_at DESC, c.id DESC
    LIMIT 1
) cur ON true;

------------------------------------------------------------------------------
-- Audit chain verification
------------------------------------------------------------------------------

-- One pass over the chain (in id order = chain order, see 001):
--   first_bad_id  the first row whose prev_hash is not the previous row's
--                 row_hash, or whose row_hash is not the hash of its own
--                 content; when every row is fine but the chain head does
--                 not match the last row (rows removed from the end, or
--                 the head altered), the id the head names. NULL = intact.
--   rows_checked  rows read; bad_rows  rows failing either test;
--   last_id, last_hash  the last row (what an operator may write down to
--                 compare with later: the chain proves every row before it);
--   reason        why first_bad_id is bad, NULL when intact.
-- An altered row fails its own row_hash test; if whoever altered it also
-- recomputed its row_hash, the NEXT row fails its prev_hash test: either way
-- the break is named at the first row whose link does not hold.
CREATE FUNCTION cms.audit_verify_report(
    OUT first_bad_id bigint, OUT rows_checked bigint, OUT bad_rows bigint,
    OUT last_id bigint, OUT last_hash bytea, OUT reason text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, cms
AS $fn$
    WITH chk AS (
        SELECT e.id, e.row_hash,
               e.prev_hash IS DISTINCT FROM coalesce(lag(e.row_hash) OVER w,
                   '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
                   AS bad_link,
               e.row_hash IS DISTINCT FROM cms.audit_row_hash(e.prev_hash, e.id, e.at, e.event,
                   e.actor, e.device, e.peer, e.detail) AS bad_hash
        FROM cms.audit_events e
        WINDOW w AS (ORDER BY e.id)
    ), agg AS (
        SELECT count(*) AS n,
               count(*) FILTER (WHERE bad_link OR bad_hash) AS nbad,
               min(id) FILTER (WHERE bad_link OR bad_hash) AS first_bad,
               max(id) AS last
        FROM chk
    ), firstbad AS (
        SELECT c.id, c.bad_link, c.bad_hash FROM chk c, agg WHERE c.id = agg.first_bad
    ), tail AS (
        SELECT c.row_hash FROM chk c, agg WHERE c.id = agg.last
    ), head AS (
        SELECT h.last_id, h.last_hash FROM cms.audit_chain_head h WHERE h.singleton
    )
    SELECT
        CASE WHEN agg.first_bad IS NOT NULL THEN agg.first_bad
             WHEN head.last_id IS DISTINCT FROM agg.last
                  OR (agg.last IS NOT NULL AND head.last_hash IS DISTINCT FROM tail.row_hash)
                  THEN coalesce(head.last_id, agg.last)
        END,
        agg.n,
        agg.nbad + CASE WHEN agg.first_bad IS NULL
                             AND (head.last_id IS DISTINCT FROM agg.last
                                  OR (agg.last IS NOT NULL
                                      AND head.last_hash IS DISTINCT FROM tail.row_hash))
                        THEN 1 ELSE 0 END,
        agg.last,
        tail.row_hash,
        CASE WHEN firstbad.bad_hash THEN 'row_hash does not match the row''s content (row altered)'
             WHEN firstbad.bad_link THEN 'prev_hash does not match the previous row''s row_hash '
                                      '(a row before it was altered, removed or inserted)'
             WHEN head.last_id IS DISTINCT FROM agg.last
                  THEN 'the chain head names row ' || coalesce(head.last_id::text, 'none')
                       || ' but the last row is ' || coalesce(agg.last::text, 'none')
                       || ' (rows removed from the end)'
             WHEN agg.last IS NOT NULL AND head.last_hash IS DISTINCT FROM tail.row_hash
                  THEN 'the chain head hash does not match the last row (last row or head altered)'
        END
    FROM agg
    CROSS JOIN head
    LEFT JOIN firstbad ON true
    LEFT JOIN tail ON true
$fn$;

-- 001's function, same signature and meaning (first bad id or NULL), now
-- with the chain-head check of the report.
CREATE OR REPLACE FUNCTION cms.audit_verify()
RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, cms
AS $fn$
    SELECT first_bad_id FROM cms.audit_verify_report()
$fn$;

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------

REVOKE ALL ON cms.device_groups, cms.device_group_members, cms.device_overview FROM PUBLIC;
REVOKE ALL ON FUNCTION cms.devices_group_name_trg() FROM PUBLIC;
REVOKE ALL ON FUNCTION cms.group_update(text, jsonb, jsonb, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION cms.audit_verify_report() FROM PUBLIC;

GRANT SELECT ON cms.device_groups, cms.device_group_members, cms.device_overview TO cms_server;
-- The verification reads the chain head; SELECT only (FOR UPDATE needs UPDATE, so
-- cms_server cannot hold the chain lock by itself).
GRANT SELECT ON cms.audit_chain_head TO cms_server;
GRANT EXECUTE ON FUNCTION
    cms.group_update(text, jsonb, jsonb, text, text),
    cms.audit_verify_report()
TO cms_server;
