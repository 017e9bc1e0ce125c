-- 004_firmware.sql - signed firmware distribution: content-addressed images
-- chunked in PostgreSQL, publisher-signed releases, operator approvals
-- (allowlist by device or by group, two-person rule), per-device state
-- (monotonic manifest counter, installed version and security counter) and
-- the rollout state of each (release, device). See docs/firmware.md.
--
-- Needs 003_admin.sql (cms.device_groups, cms.device_group_members).
-- Never edit this file once it has landed: add 005_*.sql instead.
--
-- cmsd never writes these tables directly: every step is ONE call to a
-- SECURITY DEFINER function below (one statement = one transaction) that
-- re-checks what it needs under row locks and writes its audit row in the
-- same transaction. Readers (operator API, reports) may SELECT.
--
-- Images
-- ------
-- cms.fw_images          one row per image, keyed by its SHA-256 (32 bytes).
--   complete = every chunk is stored and the release import checked the
--   sum of chunk lengths against length. store_gen is bumped by a trigger on
--   every UPDATE/DELETE/TRUNCATE of the image's chunks, so that a cmsd that
--   verified a local cached copy notices that the stored bytes changed and
--   verifies them again (images are immutable once complete: any change is
--   tampering, and is found by the SHA-256 check before anything is served).
-- cms.fw_image_chunks    the bytes, chunk_size bytes per row (last one shorter).
--
-- Errors raised (SQLSTATE, MESSAGE is a sentence for the API "detail"):
--   22023 bad argument           P0002 unknown release, device or group
--   CF001 two-person rule: the importer of a release may not approve it
--   CF002 conflict: a release with this model and version exists with a different image
--   CF003 image incomplete: chunks missing or of the wrong size

------------------------------------------------------------------------------
-- Tables
------------------------------------------------------------------------------

CREATE TABLE cms.fw_images (
    sha256     bytea PRIMARY KEY CHECK (length(sha256) = 32),
    length     bigint NOT NULL CHECK (length > 0),
    chunk_size integer NOT NULL CHECK (chunk_size BETWEEN 4096 AND 16777216),
    nchunks    integer NOT NULL CHECK (nchunks > 0),
    complete   boolean NOT NULL DEFAULT false,
    store_gen  bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (nchunks = (length + chunk_size - 1) / chunk_size)
);

CREATE TABLE cms.fw_image_chunks (
    sha256 bytea NOT NULL REFERENCES cms.fw_images (sha256),
    seq    integer NOT NULL CHECK (seq >= 0),
    data   bytea NOT NULL,
    PRIMARY KEY (sha256, seq)
);
-- Firmware images are compressed already: keep them out of TOAST compression.
ALTER TABLE cms.fw_image_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE cms.fw_releases (
    id               bigserial PRIMARY KEY,
    model            text NOT NULL,
    version          text NOT NULL,
    version_num      bigint NOT NULL CHECK (version_num >= 0),
    security_counter bigint NOT NULL CHECK (security_counter BETWEEN 0 AND 4294967295),
    image_sha256     bytea NOT NULL REFERENCES cms.fw_images (sha256),
    length           bigint NOT NULL CHECK (length > 0),
    descriptor       bytea NOT NULL,       -- the publisher-signed bytes, as imported
    publisher_sig    bytea NOT NULL,
    publisher_keyid  text NOT NULL CHECK (publisher_keyid ~ '^[0-9a-f]{64}$'),
    imported_by      text NOT NULL,
    imported_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model, version)
);
CREATE INDEX fw_releases_model_idx ON cms.fw_releases (model, version_num);

-- An approval allowlists a release for one device or one group (union).
CREATE TABLE cms.fw_approvals (
    id           bigserial PRIMARY KEY,
    release_id   bigint NOT NULL REFERENCES cms.fw_releases (id),
    device_id    bigint REFERENCES cms.devices (id),
    group_id     bigint REFERENCES cms.device_groups (id),
    approved_by  text NOT NULL,
    approved_at  timestamptz NOT NULL DEFAULT now(),
    withdrawn_by text,
    withdrawn_at timestamptz,
    CHECK ((device_id IS NULL) <> (group_id IS NULL))
);
CREATE UNIQUE INDEX fw_approvals_device_uq ON cms.fw_approvals (release_id, device_id)
    WHERE withdrawn_at IS NULL AND device_id IS NOT NULL;
CREATE UNIQUE INDEX fw_approvals_group_uq ON cms.fw_approvals (release_id, group_id)
    WHERE withdrawn_at IS NULL AND group_id IS NOT NULL;

-- Per device: the manifest counter (monotonic, one step per manifest issued)
-- and what it runs (from its reports; the counter only ever grows).
CREATE TABLE cms.fw_device_state (
    device_id         bigint PRIMARY KEY REFERENCES cms.devices (id),
    manifest_counter  bigint NOT NULL DEFAULT 0,
    installed_version text,
    installed_counter bigint NOT NULL DEFAULT 0,
    last_poll_at      timestamptz,
    last_poll_version text,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Rollout state of a release on a device.
CREATE TABLE cms.fw_rollout (
    release_id       bigint NOT NULL REFERENCES cms.fw_releases (id),
    device_id        bigint NOT NULL REFERENCES cms.devices (id),
    state            text NOT NULL CHECK (state IN ('offered', 'downloading', 'downloaded',
                                                    'installed', 'failed')),
    reason           text,
    manifest_counter bigint,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (release_id, device_id)
);

------------------------------------------------------------------------------
-- Tamper evidence for stored bytes
------------------------------------------------------------------------------

CREATE FUNCTION cms.fw_chunks_changed_trg()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN -- TRUNCATE
        UPDATE cms.fw_images SET store_gen = store_gen + 1;
    ELSE
        UPDATE cms.fw_images SET store_gen = store_gen + 1 WHERE sha256 = OLD.sha256;
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER fw_image_chunks_changed AFTER UPDATE OR DELETE ON cms.fw_image_chunks
FOR EACH ROW EXECUTE FUNCTION cms.fw_chunks_changed_trg();
CREATE TRIGGER fw_image_chunks_truncated AFTER TRUNCATE ON cms.fw_image_chunks
FOR EACH STATEMENT EXECUTE FUNCTION cms.fw_chunks_changed_trg();

------------------------------------------------------------------------------
-- Import
------------------------------------------------------------------------------

-- Starts (or resumes) storing an image. Returns whether it is complete
-- already (then no chunk needs to be sent: images are content-addressed).
CREATE FUNCTION cms.fw_image_begin(p_sha256 bytea, p_length bigint, p_chunk_size integer)
RETURNS TABLE (complete boolean, nchunks integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    img record;
BEGIN
    IF p_sha256 IS NULL OR length(p_sha256) <> 32 OR p_length IS NULL OR p_length < 1
       OR p_chunk_size IS NULL OR p_chunk_size < 4096 THEN
        RAISE EXCEPTION 'fw_image_begin: bad arguments' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO cms.fw_images AS i (sha256, length, chunk_size, nchunks)
    VALUES (p_sha256, p_length, p_chunk_size,
            ((p_length + p_chunk_size - 1) / p_chunk_size)::integer)
    ON CONFLICT (sha256) DO NOTHING;
    SELECT i.* INTO STRICT img FROM cms.fw_images i WHERE i.sha256 = p_sha256 FOR UPDATE;
    IF img.complete AND img.length <> p_length THEN
        RAISE EXCEPTION 'stored image % has length %, not %', encode(p_sha256, 'hex'),
            img.length, p_length USING ERRCODE = 'CF003';
    END IF;
    IF NOT img.complete AND (img.length <> p_length OR img.chunk_size <> p_chunk_size) THEN
        -- A partial copy from an interrupted import with other parameters: start over.
        DELETE FROM cms.fw_image_chunks c WHERE c.sha256 = p_sha256;
        UPDATE cms.fw_images i SET length = p_length, chunk_size = p_chunk_size,
               nchunks = ((p_length + p_chunk_size - 1) / p_chunk_size)::integer
        WHERE i.sha256 = p_sha256;
        img.nchunks := ((p_length + p_chunk_size - 1) / p_chunk_size)::integer;
    END IF;
    RETURN QUERY SELECT img.complete, img.nchunks;
END
$fn$;

-- Stores one chunk of an image that is not complete yet (replacing a chunk
-- left by an interrupted import). The caller verified the whole image's
-- SHA-256 before sending any chunk.
CREATE FUNCTION cms.fw_image_put_chunk(p_sha256 bytea, p_seq integer, p_data bytea)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
DECLARE
    img record;
BEGIN
    SELECT i.* INTO img FROM cms.fw_images i WHERE i.sha256 = p_sha256;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no image being imported with this hash' USING ERRCODE = 'no_data_found';
    ELSIF img.complete THEN
        RAISE EXCEPTION 'image % is complete and immutable', encode(p_sha256, 'hex')
            USING ERRCODE = 'CF003';
    ELSIF p_seq < 0 OR p_seq >= img.nchunks
          OR length(p_data) <> (CASE WHEN p_seq = img.nchunks - 1
                                     THEN img.length - img.chunk_size::bigint * p_seq
                                     ELSE img.chunk_size END) THEN
        RAISE EXCEPTION 'chunk % of image % has the wrong size', p_seq, encode(p_sha256, 'hex')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO cms.fw_image_chunks AS c (sha256, seq, data) VALUES (p_sha256, p_seq, p_data)
    ON CONFLICT (sha256, seq) DO UPDATE SET data = EXCLUDED.data;
END
$fn$;

-- Records a release whose descriptor signature, hash and length cmsd has
-- verified, and whose chunks are stored. Marks the image complete after
-- checking that every chunk is there with the right size. Audited
-- (fw_imported). Returns the release and outcome 'imported', or
-- 'exists' when the very same release (same model, version and image) was
-- imported before (nothing changes then).
CREATE FUNCTION cms.fw_release_import(p_sha256 bytea, p_length bigint, p_model text,
                                      p_version text, p_version_num bigint,
                                      p_security_counter bigint, p_descriptor bytea,
                                      p_publisher_sig bytea, p_publisher_keyid text,
                                      p_actor text, p_peer text)
RETURNS TABLE (id bigint, outcome text, imported_by text, imported_at text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    img   record;
    rel   record;
    n     integer;
    total bigint;
    rid   bigint;
BEGIN
    SELECT i.* INTO img FROM cms.fw_images i WHERE i.sha256 = p_sha256 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'image % is not stored', encode(p_sha256, 'hex') USING ERRCODE = 'CF003';
    END IF;
    IF NOT img.complete THEN
        SELECT count(*), coalesce(sum(length(c.data)), 0) INTO n, total
        FROM cms.fw_image_chunks c WHERE c.sha256 = p_sha256;
        IF n <> img.nchunks OR total <> img.length OR img.length <> p_length THEN
            RAISE EXCEPTION 'image % is incomplete: % of % chunks, % of % bytes',
                encode(p_sha256, 'hex'), n, img.nchunks, total, img.length
                USING ERRCODE = 'CF003';
        END IF;
        UPDATE cms.fw_images i SET complete = true WHERE i.sha256 = p_sha256;
    END IF;
    SELECT r.* INTO rel FROM cms.fw_releases r
    WHERE r.model = p_model AND r.version = p_version FOR UPDATE;
    IF FOUND THEN
        IF rel.image_sha256 = p_sha256 AND rel.descriptor = p_descriptor THEN
            RETURN QUERY SELECT rel.id, 'exists'::text, rel.imported_by,
                to_char(rel.imported_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"');
            RETURN;
        END IF;
        RAISE EXCEPTION 'release % % exists already (id %) with another image or descriptor',
            p_model, p_version, rel.id USING ERRCODE = 'CF002';
    END IF;
    INSERT INTO cms.fw_releases AS r (model, version, version_num, security_counter,
        image_sha256, length, descriptor, publisher_sig, publisher_keyid, imported_by)
    VALUES (p_model, p_version, p_version_num, p_security_counter, p_sha256, p_length,
            p_descriptor, p_publisher_sig, p_publisher_keyid, p_actor)
    RETURNING r.id INTO rid;
    PERFORM cms.audit_append('fw_imported', p_actor, NULL, p_peer,
        jsonb_build_object('release_id', rid, 'model', p_model, 'version', p_version,
                           'security_counter', p_security_counter,
                           'sha256', encode(p_sha256, 'hex'), 'length', p_length,
                           'publisher_keyid', p_publisher_keyid)::text);
    RETURN QUERY SELECT rid, 'imported'::text, p_actor,
        to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"');
END
$fn$;

------------------------------------------------------------------------------
-- Approvals (allowlist)
------------------------------------------------------------------------------

-- Devices allowlisted for a release: directly or through any of their groups.
CREATE FUNCTION cms.fw_allowlisted(p_release_id bigint, p_device_id bigint)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, cms
AS $fn$
    SELECT EXISTS (
        SELECT 1 FROM cms.fw_approvals a
        WHERE a.release_id = p_release_id AND a.withdrawn_at IS NULL
          AND (a.device_id = p_device_id
               OR a.group_id IN (SELECT m.group_id FROM cms.device_group_members m
                                 WHERE m.device_id = p_device_id)))
$fn$;

-- Checks the JSON arrays of names (NULL = empty) and returns them as text[].
CREATE FUNCTION cms.fw_name_array(p jsonb, what text)
RETURNS text[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog
AS $fn$
BEGIN
    IF p IS NULL THEN
        RETURN '{}'::text[];
    END IF;
    IF jsonb_typeof(p) <> 'array' OR EXISTS (SELECT 1 FROM jsonb_array_elements(p) e
                                             WHERE jsonb_typeof(e) <> 'string') THEN
        RAISE EXCEPTION '% must be an array of names (strings)', what
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN coalesce((SELECT array_agg(DISTINCT e ORDER BY e)
                     FROM jsonb_array_elements_text(p) e), '{}'::text[]);
END
$fn$;

-- Allowlists release p_release_id for the devices (serials) and groups
-- (names) given. Two-person rule: the operator who imported the release may
-- not approve it (CF001). A device of another model is refused (22023):
-- the release could never be installed there. Unknown serials or groups:
-- P0002, nothing changes. One audit row per new approval (fw_approved).
-- Returns one row per target: (kind 'device'|'group', name, outcome
-- 'approved' | 'already_approved').
CREATE FUNCTION cms.fw_approve(p_release_id bigint, p_devices jsonb, p_groups jsonb,
                               p_actor text, p_peer text)
RETURNS TABLE (kind text, name text, outcome text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    rel     record;
    devs    text[] := cms.fw_name_array(p_devices, 'devices');
    grps    text[] := cms.fw_name_array(p_groups, 'groups');
    unknown text;
    r       record;
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

    FOR r IN SELECT d.id, d.serial FROM cms.devices d WHERE d.serial = ANY (devs)
             ORDER BY d.serial LOOP
        kind := 'device'; name := r.serial;
        IF EXISTS (SELECT 1 FROM cms.fw_approvals a WHERE a.release_id = p_release_id
                   AND a.device_id = r.id AND a.withdrawn_at IS NULL) THEN
            outcome := 'already_approved';
        ELSE
            INSERT INTO cms.fw_approvals (release_id, device_id, approved_by)
            VALUES (p_release_id, r.id, p_actor);
            PERFORM cms.audit_append('fw_approved', p_actor, r.serial, p_peer,
                jsonb_build_object('release_id', p_release_id, 'model', rel.model,
                                   'version', rel.version, 'device', r.serial,
                                   'imported_by', rel.imported_by)::text);
            outcome := 'approved';
        END IF;
        RETURN NEXT;
    END LOOP;
    FOR r IN SELECT g.id, g.name FROM cms.device_groups g WHERE g.name = ANY (grps)
             ORDER BY g.name LOOP
        kind := 'group'; name := r.name;
        IF EXISTS (SELECT 1 FROM cms.fw_approvals a WHERE a.release_id = p_release_id
                   AND a.group_id = r.id AND a.withdrawn_at IS NULL) THEN
            outcome := 'already_approved';
        ELSE
            INSERT INTO cms.fw_approvals (release_id, group_id, approved_by)
            VALUES (p_release_id, r.id, p_actor);
            PERFORM cms.audit_append('fw_approved', p_actor, NULL, p_peer,
                jsonb_build_object('release_id', p_release_id, 'model', rel.model,
                                   'version', rel.version, 'group', r.name,
                                   'imported_by', rel.imported_by)::text);
            outcome := 'approved';
        END IF;
        RETURN NEXT;
    END LOOP;
END
$fn$;

-- Withdraws approvals of a release: those of the devices and groups named,
-- or every active one when both lists are empty. One audit row per
-- withdrawn approval (fw_withdrawn). Returns (kind, name, outcome
-- 'withdrawn' | 'not_approved').
CREATE FUNCTION cms.fw_withdraw(p_release_id bigint, p_devices jsonb, p_groups jsonb,
                                p_actor text, p_peer text)
RETURNS TABLE (kind text, name text, outcome text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    rel  record;
    devs text[] := cms.fw_name_array(p_devices, 'devices');
    grps text[] := cms.fw_name_array(p_groups, 'groups');
    everything boolean;
    done text[] := '{}';
    r    record;
    t    text;
BEGIN
    SELECT x.* INTO rel FROM cms.fw_releases x WHERE x.id = p_release_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no firmware release %', p_release_id USING ERRCODE = 'no_data_found';
    END IF;
    everything := cardinality(devs) = 0 AND cardinality(grps) = 0;
    FOR r IN SELECT a.id, d.serial, g.name AS gname
             FROM cms.fw_approvals a
             LEFT JOIN cms.devices d ON d.id = a.device_id
             LEFT JOIN cms.device_groups g ON g.id = a.group_id
             WHERE a.release_id = p_release_id AND a.withdrawn_at IS NULL
               AND (everything OR d.serial = ANY (devs) OR g.name = ANY (grps))
             ORDER BY a.id FOR UPDATE OF a LOOP
        UPDATE cms.fw_approvals a SET withdrawn_at = now(), withdrawn_by = p_actor
        WHERE a.id = r.id;
        PERFORM cms.audit_append('fw_withdrawn', p_actor, r.serial, p_peer,
            jsonb_build_object('release_id', p_release_id, 'model', rel.model,
                               'version', rel.version, 'device', r.serial,
                               'group', r.gname)::text);
        kind := CASE WHEN r.serial IS NOT NULL THEN 'device' ELSE 'group' END;
        name := coalesce(r.serial, r.gname);
        done := done || CASE WHEN r.serial IS NOT NULL THEN r.serial ELSE 'group:' || r.gname END;
        outcome := 'withdrawn';
        RETURN NEXT;
    END LOOP;
    FOREACH t IN ARRAY devs LOOP
        CONTINUE WHEN t = ANY (done);
        kind := 'device'; name := t; outcome := 'not_approved';
        RETURN NEXT;
    END LOOP;
    FOREACH t IN ARRAY grps LOOP
        CONTINUE WHEN ('group:' || t) = ANY (done);
        kind := 'group'; name := t; outcome := 'not_approved';
        RETURN NEXT;
    END LOOP;
END
$fn$;

------------------------------------------------------------------------------
-- Device side
------------------------------------------------------------------------------

-- The next release for a device that reports p_installed (version_num
-- p_installed_num) and optionally its security counter p_counter: the
-- newest release of the device's model, allowlisted for it, strictly newer
-- than what it runs, whose security counter is not below the device's
-- (the higher of p_counter and the counter of what it reported installed).
-- When one applies, the device's manifest counter is incremented (under
-- the device-state row lock, so it is monotonic across every cmsd), the
-- rollout state becomes 'offered' (unless a download or install is under
-- way) and fw_manifest_issued is audited. No row: nothing to offer.
CREATE FUNCTION cms.fw_manifest_next(p_device_id bigint, p_installed text,
                                     p_installed_num bigint, p_counter bigint, p_peer text)
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

-- May the device download image p_sha256? Only when a release with that
-- image, of the device's model, is allowlisted for it. Returns the image's
-- storage facts (and moves the rollout from 'offered' to 'downloading'),
-- or no row.
CREATE FUNCTION cms.fw_image_authorize(p_device_id bigint, p_sha256 bytea)
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

-- A device's report: p_status 'downloading' | 'downloaded' | 'installed' |
-- 'failed' (p_reason says why), p_version the version it now runs (for
-- 'installed': the new one), p_sha256 the image concerned (may be NULL).
-- Updates the rollout of the matching release (by image, else by model and
-- version) and, for 'installed', the registry (cms.devices.firmware_version)
-- and the device's installed security counter (never lowered). Audited
-- (fw_report). Returns the release id (NULL when none matches).
CREATE FUNCTION cms.fw_report(p_device_id bigint, p_status text, p_version text,
                              p_sha256 bytea, p_reason text, p_peer text)
RETURNS TABLE (release_id bigint, state text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    d   record;
    rel record;
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('downloading', 'downloaded', 'installed', 'failed') THEN
        RAISE EXCEPTION 'status must be downloading, downloaded, installed or failed'
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
    INSERT INTO cms.fw_device_state (device_id) VALUES (p_device_id) ON CONFLICT DO NOTHING;
    IF rel.id IS NOT NULL THEN
        INSERT INTO cms.fw_rollout AS o (release_id, device_id, state, reason)
        VALUES (rel.id, p_device_id, p_status, p_reason)
        ON CONFLICT (release_id, device_id) DO UPDATE
            SET state = EXCLUDED.state, reason = EXCLUDED.reason, updated_at = now();
    END IF;
    IF p_status = 'installed' AND p_version IS NOT NULL THEN
        UPDATE cms.devices dv SET firmware_version = p_version WHERE dv.id = p_device_id;
        UPDATE cms.fw_device_state s
        SET installed_version = p_version, updated_at = now(),
            installed_counter = CASE WHEN rel.id IS NOT NULL AND rel.version = p_version
                                     THEN greatest(s.installed_counter, rel.security_counter)
                                     ELSE s.installed_counter END
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
-- Operator views
------------------------------------------------------------------------------

CREATE VIEW cms.fw_release_list AS
SELECT r.id, r.model, r.version, r.version_num, r.security_counter,
       encode(r.image_sha256, 'hex') AS sha256, r.length, r.publisher_keyid,
       r.imported_by, r.imported_at,
       (SELECT count(*) FROM cms.fw_approvals a
        WHERE a.release_id = r.id AND a.withdrawn_at IS NULL) AS active_approvals,
       (SELECT count(*) FROM cms.fw_rollout o
        WHERE o.release_id = r.id AND o.state = 'installed') AS installed_devices
FROM cms.fw_releases r;

-- Every device allowlisted for a release (directly or by group) or with a
-- rollout row, with how it is allowlisted and its state ('approved' = not
-- yet offered).
CREATE VIEW cms.fw_release_devices AS
SELECT r.id AS release_id, d.serial, d.model, d.status AS device_status,
       d.firmware_version,
       (SELECT string_agg(CASE WHEN a.device_id IS NOT NULL THEN 'device'
                               ELSE 'group:' || g.name END, ',' ORDER BY a.id)
        FROM cms.fw_approvals a LEFT JOIN cms.device_groups g ON g.id = a.group_id
        WHERE a.release_id = r.id AND a.withdrawn_at IS NULL
          AND (a.device_id = d.id OR a.group_id IN (SELECT m.group_id
               FROM cms.device_group_members m WHERE m.device_id = d.id))) AS via,
       coalesce(o.state, 'approved') AS state, o.reason, o.manifest_counter,
       o.updated_at
FROM cms.fw_releases r
JOIN cms.devices d ON cms.fw_allowlisted(r.id, d.id)
                   OR EXISTS (SELECT 1 FROM cms.fw_rollout x
                              WHERE x.release_id = r.id AND x.device_id = d.id)
LEFT JOIN cms.fw_rollout o ON o.release_id = r.id AND o.device_id = d.id;

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------

REVOKE ALL ON cms.fw_images, cms.fw_image_chunks, cms.fw_releases, cms.fw_approvals,
              cms.fw_device_state, cms.fw_rollout, cms.fw_release_list,
              cms.fw_release_devices FROM PUBLIC;
REVOKE ALL ON FUNCTION
    cms.fw_chunks_changed_trg(),
    cms.fw_image_begin(bytea, bigint, integer),
    cms.fw_image_put_chunk(bytea, integer, bytea),
    cms.fw_release_import(bytea, bigint, text, text, bigint, bigint, bytea, bytea, text, text, text),
    cms.fw_approve(bigint, jsonb, jsonb, text, text),
    cms.fw_withdraw(bigint, jsonb, jsonb, text, text),
    cms.fw_manifest_next(bigint, text, bigint, bigint, text),
    cms.fw_image_authorize(bigint, bytea),
    cms.fw_report(bigint, text, text, bytea, text, text)
FROM PUBLIC;

GRANT SELECT ON cms.fw_images, cms.fw_image_chunks, cms.fw_releases, cms.fw_approvals,
                cms.fw_device_state, cms.fw_rollout, cms.fw_release_list,
                cms.fw_release_devices TO cms_server;
GRANT EXECUTE ON FUNCTION
    cms.fw_image_begin(bytea, bigint, integer),
    cms.fw_image_put_chunk(bytea, integer, bytea),
    cms.fw_release_import(bytea, bigint, text, text, bigint, bigint, bytea, bytea, text, text, text),
    cms.fw_allowlisted(bigint, bigint),
    cms.fw_name_array(jsonb, text),
    cms.fw_approve(bigint, jsonb, jsonb, text, text),
    cms.fw_withdraw(bigint, jsonb, jsonb, text, text),
    cms.fw_manifest_next(bigint, text, bigint, bigint, text),
    cms.fw_image_authorize(bigint, bytea),
    cms.fw_report(bigint, text, text, bytea, text, text)
TO cms_server;
