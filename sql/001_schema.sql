-- 001_schema.sql - the CMS schema: devices, patients, messages, observations,
-- the tamper-evident audit log, roles and the public view cms.vitals.
--
-- Applied by `cmsctl db migrate` inside one transaction and recorded in
-- cms.schema_migrations with its sha256. Never edit this file once it has
-- landed: add 002_*.sql instead.
--
-- Roles are cluster-global, so they are created only when missing.
--   cms_server  NOLOGIN  what cmsd needs (cmsd logs in as it, or as a login
--                        role granted it). May INSERT/SELECT audit_events but
--                        never UPDATE/DELETE/TRUNCATE them.
--   cms_reader  NOLOGIN  read-only access to the public view cms.vitals.

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cms_server') THEN
        BEGIN
            CREATE ROLE cms_server NOLOGIN;
        EXCEPTION WHEN duplicate_object THEN NULL; -- created concurrently
        END;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cms_reader') THEN
        BEGIN
            CREATE ROLE cms_reader NOLOGIN;
        EXCEPTION WHEN duplicate_object THEN NULL;
        END;
    END IF;
END
$roles$;

CREATE SCHEMA IF NOT EXISTS cms;

-- Also created by cmsctl before the first migration (it needs it to know
-- what is applied); repeated here so that the schema documents itself.
CREATE TABLE IF NOT EXISTS cms.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    sha256     text NOT NULL
);

------------------------------------------------------------------------------
-- Devices
------------------------------------------------------------------------------

CREATE TABLE cms.devices (
    id               bigserial PRIMARY KEY,
    serial           text NOT NULL UNIQUE,          -- certificate CN, e.g. MON-0001
    model            text,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'active', 'revoked', 'decommissioned')),
    location         text,
    group_name       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_seen_at     timestamptz,
    last_peer        text,
    firmware_version text
);

-- Alternative identifiers of a device, e.g. the EUI-64 that real monitors put
-- in MSH-3 or OBX-18. An identifier belongs to one device only.
CREATE TABLE cms.device_identifiers (
    device_id  bigint NOT NULL REFERENCES cms.devices (id) ON DELETE CASCADE,
    identifier text NOT NULL UNIQUE,
    kind       text,                                -- e.g. 'EUI-64' (informative)
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, identifier)
);

------------------------------------------------------------------------------
-- Patients and messages
------------------------------------------------------------------------------

-- PID-3: patient id (component 1) within its assigning authority (4.1);
-- authority '' when the message did not name one.
CREATE TABLE cms.patients (
    id         bigserial PRIMARY KEY,
    authority  text NOT NULL DEFAULT '',
    patient_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (authority, patient_id)
);

-- One row per accepted HL7 message. (device_id, control_id) is the dedup key:
-- a resent message (same MSH-10 from the same device) is acknowledged again
-- but stored once.
CREATE TABLE cms.messages (
    id          bigserial PRIMARY KEY,
    device_id   bigint NOT NULL REFERENCES cms.devices (id),
    control_id  text NOT NULL,
    patient_ref bigint REFERENCES cms.patients (id),
    location    text,                                -- PV1-3
    msg_time    timestamptz,                         -- MSH-7
    received_at timestamptz NOT NULL,
    nobs        integer NOT NULL,
    UNIQUE (device_id, control_id)
);
CREATE INDEX messages_received_at_idx ON cms.messages (received_at);

------------------------------------------------------------------------------
-- Observations: range-partitioned by observed_at, one partition per UTC day,
-- plus a DEFAULT partition for anything outside the created days.
-- No foreign keys here on purpose (hot path; rows are written only by
-- cms.ingest_batch, which takes message_id/device_id from cms.messages).
------------------------------------------------------------------------------

CREATE TABLE cms.observations (
    message_id    bigint NOT NULL,
    device_id     bigint NOT NULL,
    patient_ref   bigint,                            -- copy of messages.patient_ref
    observed_at   timestamptz NOT NULL,
    received_at   timestamptz NOT NULL,
    set_id        integer,
    code          text NOT NULL,                     -- OBX-3.1, e.g. 150456
    label         text,                              -- OBX-3.2
    coding_system text,                              -- OBX-3.3
    sub_id        text,                              -- OBX-4
    value         double precision,
    value_text    text,                              -- OBX-5 as sent
    unit_code     text,
    unit_label    text,
    status        text,                              -- OBX-11
    equipment_id  text                               -- OBX-18.1
) PARTITION BY RANGE (observed_at);

CREATE TABLE cms.observations_default PARTITION OF cms.observations DEFAULT;
CREATE INDEX observations_device_time_idx ON cms.observations (device_id, observed_at);
CREATE INDEX observations_message_idx ON cms.observations (message_id);

-- Creates the daily partitions from yesterday (UTC) to days_ahead days ahead.
-- Rows already in the DEFAULT partition for such a day are moved into the new
-- partition. Returns the number of partitions created. Idempotent.
CREATE FUNCTION cms.ensure_partitions(days_ahead integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
DECLARE
    today   date := (now() AT TIME ZONE 'UTC')::date;
    d       date;
    lo      timestamptz;
    hi      timestamptz;
    part    text;
    created integer := 0;
BEGIN
    IF days_ahead IS NULL OR days_ahead < 0 OR days_ahead > 366 THEN
        RAISE EXCEPTION 'ensure_partitions: days_ahead out of range: %', days_ahead
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- One maintainer at a time (several cmsd may run this hourly).
    PERFORM pg_advisory_xact_lock(hashtext('cms.observations.partitions'));
    FOR i IN -1 .. days_ahead LOOP
        d := today + i;
        part := 'observations_p' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass('cms.' || quote_ident(part)) IS NOT NULL;
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        IF EXISTS (SELECT 1 FROM cms.observations_default
                   WHERE observed_at >= lo AND observed_at < hi) THEN
            EXECUTE format('CREATE TABLE cms.%I (LIKE cms.observations INCLUDING DEFAULTS)', part);
            EXECUTE format('WITH moved AS (DELETE FROM cms.observations_default
                               WHERE observed_at >= %L AND observed_at < %L RETURNING *)
                            INSERT INTO cms.%I SELECT * FROM moved', lo, hi, part);
            EXECUTE format('ALTER TABLE cms.observations ATTACH PARTITION cms.%I
                            FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        ELSE
            EXECUTE format('CREATE TABLE cms.%I PARTITION OF cms.observations
                            FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        END IF;
        created := created + 1;
    END LOOP;
    RETURN created;
END
$fn$;

-- Retention: drops the daily partitions whose whole day is older than
-- now() - days, deletes older rows from the DEFAULT partition and the
-- messages received before that. Returns the number of partitions dropped.
CREATE FUNCTION cms.drop_partitions_older_than(days integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
DECLARE
    cutoff  timestamptz;
    r       record;
    dropped integer := 0;
BEGIN
    IF days IS NULL OR days < 1 THEN
        RAISE EXCEPTION 'drop_partitions_older_than: days must be >= 1, got %', days
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    cutoff := now() - make_interval(days => days);
    PERFORM pg_advisory_xact_lock(hashtext('cms.observations.partitions'));
    FOR r IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'cms.observations'::regclass
          AND c.relname ~ '^observations_p[0-9]{8}$'
    LOOP
        -- Upper bound of the partition = its day + 1 (UTC).
        IF ((to_date(substr(r.relname, 15), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC') <= cutoff THEN
            EXECUTE format('DROP TABLE cms.%I', r.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    DELETE FROM cms.observations_default WHERE observed_at < cutoff;
    DELETE FROM cms.messages WHERE received_at < cutoff;
    RETURN dropped;
END
$fn$;

SELECT cms.ensure_partitions(7);

------------------------------------------------------------------------------
-- Group commit: one call = one statement = one transaction.
--
-- Message arrays (parallel, index i = 1..n):
--   m_device_id, m_control_id, m_patient_authority, m_patient_id ('' or NULL
--   = no patient), m_location, m_msg_time ('' or NULL = unknown),
--   m_received_at, m_nobs.
-- Observation arrays (parallel, index j = 1..k): o_msg (1-based index of the
--   message it belongs to), o_set_id, o_code, o_label, o_coding_system,
--   o_sub_id, o_value, o_value_text, o_unit_code, o_unit_label, o_status,
--   o_observed_at ('' or NULL = the message's received_at), o_equipment_id.
-- Times are text as hl7_time_format writes them; without a UTC offset they are
-- read in the session TimeZone.
--
-- Returns one row per message index: duplicate = true when (device_id,
-- control_id) was already stored (or appears earlier in the same batch);
-- observations are inserted only for newly inserted messages.
------------------------------------------------------------------------------

CREATE FUNCTION cms.ingest_batch(
    m_device_id bigint[], m_control_id text[], m_patient_authority text[],
    m_patient_id text[], m_location text[], m_msg_time text[],
    m_received_at text[], m_nobs integer[],
    o_msg integer[], o_set_id integer[], o_code text[], o_label text[],
    o_coding_system text[], o_sub_id text[], o_value double precision[],
    o_value_text text[], o_unit_code text[], o_unit_label text[],
    o_status text[], o_observed_at text[], o_equipment_id text[])
RETURNS TABLE (idx integer, duplicate boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, cms
AS $fn$
BEGIN
    -- Patients first (a separate statement, so the next one sees them).
    -- Sorted to keep lock order stable between concurrent batches.
    INSERT INTO cms.patients (authority, patient_id)
    SELECT DISTINCT coalesce(u.a, ''), u.p
    FROM unnest(m_patient_authority, m_patient_id) AS u (a, p)
    WHERE u.p IS NOT NULL AND u.p <> ''
    ORDER BY 1, 2
    ON CONFLICT (authority, patient_id) DO NOTHING;

    RETURN QUERY
    WITH m AS (
        SELECT u.*
        FROM unnest(m_device_id, m_control_id, m_patient_authority, m_patient_id,
                    m_location, m_msg_time, m_received_at, m_nobs)
             WITH ORDINALITY AS u (device_id, control_id, pa, pid, location,
                                   msg_time, received_at, nobs, ord)
    ), firsts AS (
        SELECT DISTINCT ON (m.device_id, m.control_id) m.*
        FROM m
        ORDER BY m.device_id, m.control_id, m.ord
    ), ins AS (
        INSERT INTO cms.messages AS t (device_id, control_id, patient_ref, location,
                                       msg_time, received_at, nobs)
        SELECT f.device_id, f.control_id, p.id, nullif(f.location, ''),
               nullif(f.msg_time, '')::timestamptz, f.received_at::timestamptz,
               coalesce(f.nobs, 0)
        FROM firsts f
        LEFT JOIN cms.patients p
               ON p.authority = coalesce(f.pa, '') AND p.patient_id = f.pid
        ORDER BY f.device_id, f.control_id
        ON CONFLICT (device_id, control_id) DO NOTHING
        RETURNING t.id, t.device_id, t.control_id, t.patient_ref, t.received_at
    ), newmsg AS (
        SELECT f.ord, ins.id, ins.device_id, ins.patient_ref, ins.received_at
        FROM ins
        JOIN firsts f ON f.device_id = ins.device_id AND f.control_id = ins.control_id
    ), obs AS (
        INSERT INTO cms.observations (message_id, device_id, patient_ref, observed_at,
            received_at, set_id, code, label, coding_system, sub_id, value,
            value_text, unit_code, unit_label, status, equipment_id)
        SELECT n.id, n.device_id, n.patient_ref,
               coalesce(nullif(o.observed_at, '')::timestamptz, n.received_at),
               n.received_at, o.set_id, o.code, nullif(o.label, ''),
               nullif(o.coding_system, ''), nullif(o.sub_id, ''), o.value,
               o.value_text, nullif(o.unit_code, ''), nullif(o.unit_label, ''),
               nullif(o.status, ''), nullif(o.equipment_id, '')
        FROM unnest(o_msg, o_set_id, o_code, o_label, o_coding_system, o_sub_id,
                    o_value, o_value_text, o_unit_code, o_unit_label, o_status,
                    o_observed_at, o_equipment_id)
             AS o (msg, set_id, code, label, coding_system, sub_id, value,
                   value_text, unit_code, unit_label, status, observed_at,
                   equipment_id)
        JOIN newmsg n ON n.ord = o.msg
        RETURNING 1
    )
    SELECT m.ord::integer, NOT EXISTS (SELECT 1 FROM newmsg n WHERE n.ord = m.ord)
    FROM m
    ORDER BY m.ord;
END
$fn$;

------------------------------------------------------------------------------
-- Audit log: append-only, tamper-evident hash chain.
--
-- row_hash = sha256(prev_hash || convert_to(canonical, 'UTF8')) where
-- canonical = jsonb_build_array(id, at as 'YYYY-MM-DDTHH:MI:SS.USZ' (UTC),
--                               event, actor, device, peer, detail)::text
-- and prev_hash is the row_hash of the previous row in chain order (32 zero
-- bytes for the first). The BEFORE INSERT trigger takes the row lock on the
-- one-row cms.audit_chain_head and keeps it until commit, so inserters from
-- several servers are serialized and ids increase along the chain.
-- cms.audit_verify() walks the chain and returns the first bad id (or NULL).
------------------------------------------------------------------------------

CREATE TABLE cms.audit_chain_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_id   bigint,
    last_hash bytea NOT NULL
);
INSERT INTO cms.audit_chain_head (singleton, last_id, last_hash)
VALUES (true, NULL, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);

CREATE TABLE cms.audit_events (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    event     text NOT NULL,
    actor     text,
    device    text,
    peer      text,
    detail    jsonb,
    prev_hash bytea NOT NULL,
    row_hash  bytea NOT NULL
);
-- id is assigned by the trigger under the chain lock (no gaps, chain order).
ALTER TABLE cms.audit_events ALTER COLUMN id DROP DEFAULT;
CREATE INDEX audit_events_at_idx ON cms.audit_events (at);
CREATE INDEX audit_events_device_idx ON cms.audit_events (device, at);

CREATE FUNCTION cms.audit_row_hash(prev bytea, a_id bigint, a_at timestamptz,
                                   a_event text, a_actor text, a_device text,
                                   a_peer text, a_detail jsonb)
RETURNS bytea
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog
AS $fn$
    SELECT sha256(prev || convert_to(jsonb_build_array(
        a_id,
        to_char(a_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        a_event, a_actor, a_device, a_peer, a_detail)::text, 'UTF8'))
$fn$;

CREATE FUNCTION cms.audit_chain_trg()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
DECLARE
    head bytea;
BEGIN
    SELECT last_hash INTO STRICT head FROM cms.audit_chain_head WHERE singleton FOR UPDATE;
    -- Assigned under the lock so that ids and times follow chain order.
    NEW.id := nextval('cms.audit_events_id_seq');
    NEW.at := clock_timestamp();
    NEW.prev_hash := head;
    NEW.row_hash := cms.audit_row_hash(head, NEW.id, NEW.at, NEW.event, NEW.actor,
                                       NEW.device, NEW.peer, NEW.detail);
    UPDATE cms.audit_chain_head SET last_id = NEW.id, last_hash = NEW.row_hash
    WHERE singleton;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER audit_events_chain BEFORE INSERT ON cms.audit_events
FOR EACH ROW EXECUTE FUNCTION cms.audit_chain_trg();

CREATE FUNCTION cms.audit_immutable_trg()
RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    RAISE EXCEPTION 'cms.audit_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON cms.audit_events
FOR EACH ROW EXECUTE FUNCTION cms.audit_immutable_trg();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON cms.audit_events
FOR EACH STATEMENT EXECUTE FUNCTION cms.audit_immutable_trg();

-- Appends one audit row; a detail that is not valid JSON is kept as
-- {"raw": "<text>"} instead of losing the event. Returns the new id.
CREATE FUNCTION cms.audit_append(a_event text, a_actor text, a_device text,
                                 a_peer text, a_detail text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, cms
AS $fn$
DECLARE
    j   jsonb;
    nid bigint;
BEGIN
    IF a_detail IS NOT NULL AND a_detail <> '' THEN
        BEGIN
            j := a_detail::jsonb;
        EXCEPTION WHEN others THEN
            j := jsonb_build_object('raw', a_detail);
        END;
    END IF;
    INSERT INTO cms.audit_events (event, actor, device, peer, detail)
    VALUES (a_event, a_actor, a_device, a_peer, j)
    RETURNING id INTO nid;
    RETURN nid;
END
$fn$;

-- Walks the chain in id order; returns the id of the first row whose
-- prev_hash or row_hash does not match, or NULL when the chain is intact.
CREATE FUNCTION cms.audit_verify()
RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, cms
AS $fn$
DECLARE
    r    record;
    prev bytea := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
BEGIN
    FOR r IN SELECT * FROM cms.audit_events ORDER BY id LOOP
        IF r.prev_hash IS DISTINCT FROM prev
           OR r.row_hash IS DISTINCT FROM cms.audit_row_hash(prev, r.id, r.at, r.event,
                  r.actor, r.device, r.peer, r.detail) THEN
            RETURN r.id;
        END IF;
        prev := r.row_hash;
    END LOOP;
    RETURN NULL;
END
$fn$;

------------------------------------------------------------------------------
-- Public read interface (DESIGN.md): keep these columns stable.
------------------------------------------------------------------------------

CREATE VIEW cms.vitals AS
SELECT d.serial       AS device_serial,
       p.patient_id   AS patient_id,
       o.observed_at  AS observed_at,
       o.received_at  AS received_at,
       o.code         AS mdc_code,
       o.label        AS mdc_label,
       o.value        AS value,
       o.unit_code    AS unit_code,
       o.unit_label   AS unit_label
FROM cms.observations o
JOIN cms.devices d ON d.id = o.device_id
LEFT JOIN cms.patients p ON p.id = o.patient_ref;

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA cms FROM PUBLIC;
REVOKE ALL ON FUNCTION cms.ensure_partitions(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION cms.drop_partitions_older_than(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION cms.audit_chain_trg() FROM PUBLIC;

GRANT USAGE ON SCHEMA cms TO cms_server, cms_reader;

GRANT SELECT ON cms.devices, cms.device_identifiers, cms.schema_migrations TO cms_server;
GRANT UPDATE (last_seen_at, last_peer) ON cms.devices TO cms_server;
GRANT SELECT, INSERT ON cms.patients, cms.messages, cms.observations TO cms_server;
GRANT USAGE ON SEQUENCE cms.patients_id_seq, cms.messages_id_seq TO cms_server;
GRANT SELECT, INSERT ON cms.audit_events TO cms_server;
GRANT USAGE ON SEQUENCE cms.audit_events_id_seq TO cms_server;
REVOKE UPDATE, DELETE, TRUNCATE ON cms.audit_events FROM cms_server;
GRANT SELECT ON cms.vitals TO cms_server, cms_reader;
GRANT EXECUTE ON FUNCTION
    cms.ingest_batch(bigint[], text[], text[], text[], text[], text[], text[], integer[],
                     integer[], integer[], text[], text[], text[], text[],
                     double precision[], text[], text[], text[], text[], text[], text[]),
    cms.ensure_partitions(integer),
    cms.drop_partitions_older_than(integer),
    cms.audit_append(text, text, text, text, text),
    cms.audit_verify()
TO cms_server;
