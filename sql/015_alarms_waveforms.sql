-- 015_alarms_waveforms.sql - alarms (IHE PCD-04 ORU^R40), waveforms (PCD-01 NA/MA
-- blocks), text and coded observations (ST/CWE/CE), and the read side for clinicians
-- and EMRs: cms.latest_vitals, cms.alarms, cms.alarm_history, cms.waveforms,
-- cms.device_last_heard and the trend function cms.vitals_trend (1-minute medians).
--
-- Never edit this file once it has landed: add a later migration instead.
--
-- Storage
-- -------
--   cms.text_observations  one row per ST/CWE/CE observation; daily partitions, dropped
--                          with the numerics (retention_days)
--   cms.waveform_blocks    one row per waveform block (one NA row, or one channel of an
--                          MA row): samples as one array (smallint[] when every sample
--                          fits 16 bits, integer[] when 32, double precision[] otherwise),
--                          physical value = sample * scale; HOURLY partitions dropped after
--                          waveform_retention_hours (cms.drop_waveforms_older_than), so
--                          waveforms and numerics keep their own retention
--   cms.alarm_instances    one row per alarm instance (device, OBR-3 alarm id, from its
--                          start to its end): its current state
--   cms.alarm_events       one row per alarm message (start, continue, update, end...);
--                          daily partitions dropped with the numerics
--   cms.device_heartbeats  last heard per device from heartbeat/watchdog alarms (priority
--                          PN): they refresh it instead of entering the alarm list
--   cms.latest_observations one row per (device, MDC code, sub id): the newest value.
--                          cmsd keeps the newest committed value of each pair in memory
--                          and writes them with cms.latest_upsert about once a second
--                          (a row is replaced only by a newer observed_at): one statement
--                          a second instead of one upsert per pair in every group commit,
--                          which measured (pgbench, 256 messages x 10 observations from 200
--                          devices per statement, on a shared 2-core machine) at +60..90 %
--                          of the ingest statement's time
--
-- Everything a message carries is written by cms.ingest_batch2 in the statement that
-- records the message in cms.messages, so the (device, MSH-10) dedup key keeps it
-- exactly once (a "continue" resent after a lost ACK is not a new event).
--
-- Partition maintenance: cms.ensure_partitions(days_ahead) (hourly, from cmsd) now also
-- creates the daily partitions of text_observations and alarm_events and the hourly ones
-- of waveforms (up to min(days_ahead, 2) days ahead); cms.drop_partitions_older_than(days)
-- also drops text_observations and alarm_events partitions and closed alarm instances.

------------------------------------------------------------------------------
-- Generic range-partition helpers (parent and prefix are our own table names,
-- never peer data)
------------------------------------------------------------------------------

-- Creates the partition of parent for [lo, hi) named prefix || suffix unless it exists;
-- rows of that range already in the DEFAULT partition (parent || '_default') are moved
-- into it. storage: extra WITH (...) options for the new table or ''. Returns 1 when
-- created, 0 when it existed. Caller holds the maintenance advisory lock.
CREATE FUNCTION cms.ensure_range_partition(parent text, part text, key text,
                                           lo timestamptz, hi timestamptz, storage text)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
DECLARE
    found boolean;
BEGIN
    IF to_regclass('cms.' || quote_ident(part)) IS NOT NULL THEN
        RETURN 0;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM cms.%I WHERE %I >= $1 AND %I < $2)',
                   parent || '_default', key, key)
        INTO found USING lo, hi;
    IF found THEN
        EXECUTE format('CREATE TABLE cms.%I (LIKE cms.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS
                        INCLUDING COMPRESSION INCLUDING STORAGE) %s',
                       part, parent, storage);
        EXECUTE format('WITH moved AS (DELETE FROM cms.%I WHERE %I >= %L AND %I < %L RETURNING *)
                        INSERT INTO cms.%I SELECT * FROM moved',
                       parent || '_default', key, lo, key, hi, part);
        EXECUTE format('ALTER TABLE cms.%I ATTACH PARTITION cms.%I FOR VALUES FROM (%L) TO (%L)',
                       parent, part, lo, hi);
    ELSE
        EXECUTE format('CREATE TABLE cms.%I PARTITION OF cms.%I FOR VALUES FROM (%L) TO (%L) %s',
                       part, parent, lo, hi, storage);
    END IF;
    RETURN 1;
END
$fn$;

-- Drops the partitions of parent named prefix || <ndigits digits of fmt, UTC> whose upper bound
-- (the start named plus step) is at or before cutoff, and deletes older rows from its
-- DEFAULT partition. Returns the number of partitions dropped.
CREATE FUNCTION cms.drop_range_partitions(parent text, prefix text, fmt text, ndigits integer,
                                          step interval, key text, cutoff timestamptz)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
SET TimeZone = 'UTC'
AS $fn$
DECLARE
    r       record;
    dropped integer := 0;
BEGIN
    FOR r IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = ('cms.' || quote_ident(parent))::regclass
          AND c.relname ~ ('^' || prefix || '[0-9]{' || ndigits || '}$')
    LOOP
        IF to_timestamp(substr(r.relname, length(prefix) + 1), fmt) + step <= cutoff THEN
            EXECUTE format('DROP TABLE cms.%I', r.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    EXECUTE format('DELETE FROM cms.%I WHERE %I < $1', parent || '_default', key) USING cutoff;
    RETURN dropped;
END
$fn$;

------------------------------------------------------------------------------
-- Text and coded observations (ST, CWE, CE)
------------------------------------------------------------------------------

CREATE TABLE cms.text_observations (
    message_id      bigint NOT NULL,
    device_id       bigint NOT NULL,
    patient_ref     bigint,
    observed_at     timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    set_id          integer,
    value_type      text NOT NULL CHECK (value_type IN ('ST', 'CWE', 'CE')),
    code            text NOT NULL,                   -- OBX-3.1
    label           text,                            -- OBX-3.2
    coding_system   text,                            -- OBX-3.3
    sub_id          text,                            -- OBX-4
    value_text      text,                            -- ST: OBX-5; CWE/CE: OBX-5.2
    value_code      text,                            -- CWE/CE: OBX-5.1
    value_system    text,                            -- CWE/CE: OBX-5.3
    value_truncated boolean NOT NULL DEFAULT false,  -- value_text was cut to fit
    status          text,                            -- OBX-11
    equipment_id    text                             -- OBX-18.1
) PARTITION BY RANGE (observed_at);
CREATE TABLE cms.text_observations_default PARTITION OF cms.text_observations DEFAULT;
CREATE INDEX text_observations_device_time_idx ON cms.text_observations (device_id, observed_at);

------------------------------------------------------------------------------
-- Waveforms: one row per block, hourly partitions by start_at
------------------------------------------------------------------------------

CREATE TABLE cms.waveform_blocks (
    message_id   bigint NOT NULL,
    device_id    bigint NOT NULL,
    patient_ref  bigint,
    start_at     timestamptz NOT NULL,     -- time of the first sample
    received_at  timestamptz NOT NULL,
    set_id       integer,                  -- OBX-1 of the NA/MA row
    channel      smallint NOT NULL DEFAULT 0, -- MA: 1..n, NA: 0
    code         text NOT NULL,            -- OBX-3.1, e.g. 131330
    label        text,                     -- OBX-3.2, e.g. MDC_ECG_ELEC_POTL_II
    coding_system text,
    sub_id       text,                     -- OBX-4
    unit_code    text,
    unit_label   text,
    status       text,
    equipment_id text,
    sample_rate  double precision NOT NULL CHECK (sample_rate > 0), -- samples per second
    scale        double precision NOT NULL, -- physical value = sample * scale
    nsamples     integer NOT NULL CHECK (nsamples > 0),
    samples_i2   smallint[] COMPRESSION lz4,
    samples_i4   integer[] COMPRESSION lz4,
    samples_f8   double precision[] COMPRESSION lz4,
    facets       jsonb,                    -- facet rows kept as sent, or NULL
    CHECK (num_nonnulls(samples_i2, samples_i4, samples_f8) = 1)
) PARTITION BY RANGE (start_at);
CREATE TABLE cms.waveform_blocks_default PARTITION OF cms.waveform_blocks DEFAULT
    WITH (toast_tuple_target = 128);
CREATE INDEX waveform_blocks_device_time_idx ON cms.waveform_blocks (device_id, start_at);

------------------------------------------------------------------------------
-- Alarms
------------------------------------------------------------------------------

CREATE TABLE cms.alarm_instances (
    id             bigserial PRIMARY KEY,
    device_id      bigint NOT NULL,
    alarm_id       text NOT NULL,            -- OBR-3.1 as sent
    patient_ref    bigint,
    location       text,                     -- PV1-3 of the latest event
    event_code     text,                     -- alarm type, e.g. 196674
    event_label    text,                     -- e.g. MDC_EVT_DESAT
    event_system   text,
    alarm_text     text,
    priority       text,                     -- PH PM PL (PN never: heartbeats)
    kind           text,                     -- physiological technical advisory
    phase          text NOT NULL,            -- of the latest event
    state          text,                     -- off inactive active latched
    inactivation   text,                     -- enabled audio-paused ... alert-acknowledged
    source_code    text,
    source_label   text,
    value          double precision,         -- latest value of the source
    unit_code      text,
    unit_label     text,
    limits         text,
    started_at     timestamptz,              -- event time of its start (NULL: never seen)
    last_event_at  timestamptz NOT NULL,
    ended_at       timestamptz,              -- event time of its end (NULL: open)
    nevents        integer NOT NULL DEFAULT 1,
    unknown_start  boolean NOT NULL DEFAULT false -- its first event was not a start
);
-- One open instance per device and alarm id; an id may be reused after its end.
CREATE UNIQUE INDEX alarm_instances_open_idx ON cms.alarm_instances (device_id, alarm_id)
    WHERE ended_at IS NULL;
CREATE INDEX alarm_instances_last_idx ON cms.alarm_instances (last_event_at);
CREATE INDEX alarm_instances_device_idx ON cms.alarm_instances (device_id, last_event_at);

CREATE TABLE cms.alarm_events (
    message_id      bigint NOT NULL,
    device_id       bigint NOT NULL,
    patient_ref     bigint,
    instance_id     bigint NOT NULL,           -- cms.alarm_instances.id
    event_at        timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    alarm_id        text NOT NULL,             -- OBR-3.1 as sent
    parent_id       text,                      -- OBR-29
    location        text,                      -- PV1-3
    phase           text NOT NULL CHECK (phase IN ('start', 'start-only', 'continue', 'update',
                        'escalate', 'de-escalate', 'inactivate', 'reset', 'end')),
    state           text CHECK (state IN ('off', 'inactive', 'active', 'latched')),
    inactivation    text CHECK (inactivation IN ('enabled', 'audio-paused', 'audio-off',
                        'alarm-paused', 'alarm-off', 'alert-acknowledged')),
    priority        text CHECK (priority IN ('PH', 'PM', 'PL')),
    kind            text CHECK (kind IN ('physiological', 'technical', 'advisory')),
    event_code      text,
    event_label     text,
    event_system    text,
    alarm_text      text,
    text_truncated  boolean NOT NULL DEFAULT false,
    source_code     text,
    source_label    text,
    source_sub_id   text,
    value           double precision,
    value_text      text,
    unit_code       text,
    unit_label      text,
    limits          text,
    unknown_alarm   boolean NOT NULL DEFAULT false, -- not a start, and no open alarm had its id
    facets          jsonb                       -- rows kept as sent, or NULL
) PARTITION BY RANGE (event_at);
CREATE TABLE cms.alarm_events_default PARTITION OF cms.alarm_events DEFAULT;
CREATE INDEX alarm_events_instance_idx ON cms.alarm_events (instance_id, event_at);
CREATE INDEX alarm_events_device_time_idx ON cms.alarm_events (device_id, event_at);

CREATE TABLE cms.device_heartbeats (
    device_id     bigint PRIMARY KEY,
    last_heard_at timestamptz NOT NULL,         -- event time of the newest heartbeat
    received_at   timestamptz NOT NULL,
    message_id    bigint NOT NULL
);

------------------------------------------------------------------------------
-- Latest numeric value per device, code and sub id
------------------------------------------------------------------------------

CREATE TABLE cms.latest_observations (
    device_id    bigint NOT NULL,
    code         text NOT NULL,
    sub_id       text NOT NULL DEFAULT '',
    patient_ref  bigint,
    observed_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    label        text,
    value        double precision,
    unit_code    text,
    unit_label   text,
    PRIMARY KEY (device_id, code, sub_id)
) WITH (fillfactor = 70); -- room for HOT updates: the row is rewritten on every newer value

-- Writes the newest values cmsd saw committed (parallel arrays, one element per
-- (device, code, sub id); duplicates allowed: the newest observed_at wins). A row is only
-- replaced by a newer (or equally new) observation. Patients are found by
-- (authority, patient_id) as cms.ingest_batch stored them. Returns the rows written.
CREATE FUNCTION cms.latest_upsert(l_device_id bigint[], l_code text[], l_sub_id text[],
                                  l_patient_authority text[], l_patient_id text[],
                                  l_observed_at text[], l_received_at text[], l_label text[],
                                  l_value double precision[], l_unit_code text[],
                                  l_unit_label text[])
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, cms
AS $fn$
DECLARE
    n integer;
BEGIN
    INSERT INTO cms.latest_observations AS l (device_id, code, sub_id, patient_ref,
        observed_at, received_at, label, value, unit_code, unit_label)
    SELECT DISTINCT ON (u.device_id, u.code, coalesce(u.sub_id, ''))
           u.device_id, u.code, coalesce(u.sub_id, ''), p.id,
           coalesce(nullif(u.observed_at, '')::timestamptz, u.received_at::timestamptz),
           u.received_at::timestamptz, nullif(u.label, ''), u.value, nullif(u.unit_code, ''),
           nullif(u.unit_label, '')
    FROM unnest(l_device_id, l_code, l_sub_id, l_patient_authority, l_patient_id,
                l_observed_at, l_received_at, l_label, l_value, l_unit_code, l_unit_label)
         AS u (device_id, code, sub_id, pa, pid, observed_at, received_at, label, value,
               unit_code, unit_label)
    LEFT JOIN cms.patients p ON p.authority = coalesce(u.pa, '') AND p.patient_id = u.pid
    ORDER BY u.device_id, u.code, coalesce(u.sub_id, ''),
             coalesce(nullif(u.observed_at, '')::timestamptz, u.received_at::timestamptz) DESC
    ON CONFLICT (device_id, code, sub_id) DO UPDATE
        SET patient_ref = excluded.patient_ref, observed_at = excluded.observed_at,
            received_at = excluded.received_at, label = excluded.label,
            value = excluded.value, unit_code = excluded.unit_code,
            unit_label = excluded.unit_label
        WHERE l.observed_at <= excluded.observed_at;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

------------------------------------------------------------------------------
-- Partition maintenance (redefined: the 001 tables as before, plus the new ones)
------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION cms.ensure_partitions(days_ahead integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
DECLARE
    today   date := (now() AT TIME ZONE 'UTC')::date;
    hour0   timestamp := date_trunc('hour', now() AT TIME ZONE 'UTC');
    d       date;
    h       timestamp;
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
        created := created
            + cms.ensure_range_partition('observations', 'observations_p' || to_char(d, 'YYYYMMDD'),
                  'observed_at', d::timestamp AT TIME ZONE 'UTC',
                  (d + 1)::timestamp AT TIME ZONE 'UTC', '')
            + cms.ensure_range_partition('text_observations',
                  'text_observations_p' || to_char(d, 'YYYYMMDD'), 'observed_at',
                  d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC', '')
            + cms.ensure_range_partition('alarm_events', 'alarm_events_p' || to_char(d, 'YYYYMMDD'),
                  'event_at', d::timestamp AT TIME ZONE 'UTC',
                  (d + 1)::timestamp AT TIME ZONE 'UTC', '');
    END LOOP;
    -- Waveforms: hourly, from the hour before this one to at most two days ahead.
    FOR i IN -1 .. least(days_ahead, 2) * 24 LOOP
        h := hour0 + make_interval(hours => i);
        created := created
            + cms.ensure_range_partition('waveform_blocks',
                  'waveform_blocks_p' || to_char(h, 'YYYYMMDDHH24'),
                  'start_at', h AT TIME ZONE 'UTC', (h + interval '1 hour') AT TIME ZONE 'UTC',
                  'WITH (toast_tuple_target = 128)');
    END LOOP;
    RETURN created;
END
$fn$;

-- Retention of the numerics (retention_days), redefined: as 001 did for observations and
-- messages, and the same for text observations, alarm events and closed alarm instances.
CREATE OR REPLACE FUNCTION cms.drop_partitions_older_than(days integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
DECLARE
    cutoff  timestamptz;
    dropped integer := 0;
BEGIN
    IF days IS NULL OR days < 1 THEN
        RAISE EXCEPTION 'drop_partitions_older_than: days must be >= 1, got %', days
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    cutoff := now() - make_interval(days => days);
    PERFORM pg_advisory_xact_lock(hashtext('cms.observations.partitions'));
    dropped := cms.drop_range_partitions('observations', 'observations_p', 'YYYYMMDD', 8,
                                         interval '1 day', 'observed_at', cutoff)
             + cms.drop_range_partitions('text_observations', 'text_observations_p', 'YYYYMMDD',
                                         8, interval '1 day', 'observed_at', cutoff)
             + cms.drop_range_partitions('alarm_events', 'alarm_events_p', 'YYYYMMDD', 8,
                                         interval '1 day', 'event_at', cutoff);
    DELETE FROM cms.alarm_instances WHERE ended_at < cutoff OR last_event_at < cutoff;
    DELETE FROM cms.messages WHERE received_at < cutoff;
    RETURN dropped;
END
$fn$;

-- Waveform retention: drops the hourly partitions whose hour ended at least hours ago.
CREATE FUNCTION cms.drop_waveforms_older_than(hours integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
BEGIN
    IF hours IS NULL OR hours < 1 THEN
        RAISE EXCEPTION 'drop_waveforms_older_than: hours must be >= 1, got %', hours
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('cms.observations.partitions'));
    RETURN cms.drop_range_partitions('waveform_blocks', 'waveform_blocks_p', 'YYYYMMDDHH24',
                                     10, interval '1 hour', 'start_at',
                                     now() - make_interval(hours => hours));
END
$fn$;

SELECT cms.ensure_partitions(7);

------------------------------------------------------------------------------
-- Group commit, second form: everything cms.ingest_batch (001) takes, plus
--   t  jsonb  text observations: [{msg, set_id, type, code, label, system, sub_id, text,
--             vcode, vsystem, truncated, status, at, equipment}, ...]
--   w  jsonb  waveform blocks: [{msg, set_id, channel, code, label, system, sub_id,
--             ucode, ulabel, status, at, equipment, rate, scale, n, kind, facets, i}, ...]
--             kind 2 / 4 / 8: w_samples[i] is an integer array literal that fits
--             smallint / integer, or a double precision array literal
--   w_samples text[]  one array literal per block, in the order of w
--   a  jsonb  alarms: [{msg, id, parent, phase, state, inact, prio, kind, code, label,
--             system, text, truncated, scode, slabel, ssub, value, vtext, ucode, ulabel,
--             limits, at, facets, i}, ...]  (i: 1, 2, ... the order they were sent in)
-- msg is the 1-based index of the message in the m_* arrays. Empty strings mean NULL,
-- times as in cms.ingest_batch. Content of a duplicate message is not written.
--
-- Returns one row per message: duplicate as in cms.ingest_batch, unknown_alarms = how
-- many of its alarm events were flagged unknown_alarm (a continue/update/end whose alarm
-- was not open).
------------------------------------------------------------------------------

CREATE FUNCTION cms.ingest_batch2(
    m_device_id bigint[], m_control_id text[], m_patient_authority text[],
    m_patient_id text[], m_location text[], m_msg_time text[],
    m_received_at text[], m_nobs integer[],
    o_msg integer[], o_set_id integer[], o_code text[], o_label text[],
    o_coding_system text[], o_sub_id text[], o_value double precision[],
    o_value_text text[], o_unit_code text[], o_unit_label text[],
    o_status text[], o_observed_at text[], o_equipment_id text[],
    t jsonb, w jsonb, w_samples text[], a jsonb)
RETURNS TABLE (idx integer, duplicate boolean, unknown_alarms integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, cms
AS $fn$
DECLARE
    n_ord   integer[];
    n_id    bigint[];
    n_dev   bigint[];
    n_pref  bigint[];
    n_recv  timestamptz[];
    n_loc   text[];
    unknown integer[] := array_fill(0, ARRAY[coalesce(cardinality(m_device_id), 0)]);
    r       record;
    inst    record;
    inst_id bigint;
    is_unknown boolean;
BEGIN
    -- Patients first (a separate statement, so the next one sees them).
    INSERT INTO cms.patients (authority, patient_id)
    SELECT DISTINCT coalesce(u.a, ''), u.p
    FROM unnest(m_patient_authority, m_patient_id) AS u (a, p)
    WHERE u.p IS NOT NULL AND u.p <> ''
    ORDER BY 1, 2
    ON CONFLICT (authority, patient_id) DO NOTHING;

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
        INSERT INTO cms.messages AS mt (device_id, control_id, patient_ref, location,
                                        msg_time, received_at, nobs)
        SELECT f.device_id, f.control_id, p.id, nullif(f.location, ''),
               nullif(f.msg_time, '')::timestamptz, f.received_at::timestamptz,
               coalesce(f.nobs, 0)
        FROM firsts f
        LEFT JOIN cms.patients p
               ON p.authority = coalesce(f.pa, '') AND p.patient_id = f.pid
        ORDER BY f.device_id, f.control_id
        ON CONFLICT (device_id, control_id) DO NOTHING
        RETURNING mt.id, mt.device_id, mt.control_id, mt.patient_ref, mt.received_at,
                  mt.location
    ), newmsg AS (
        SELECT f.ord::integer AS ord, ins.id, ins.device_id, ins.patient_ref,
               ins.received_at, ins.location
        FROM ins
        JOIN firsts f ON f.device_id = ins.device_id AND f.control_id = ins.control_id
    ), obs AS (
        SELECT n.id AS message_id, n.device_id, n.patient_ref,
               coalesce(nullif(o.observed_at, '')::timestamptz, n.received_at) AS observed_at,
               n.received_at, o.set_id, o.code, nullif(o.label, '') AS label,
               nullif(o.coding_system, '') AS coding_system, nullif(o.sub_id, '') AS sub_id,
               o.value, o.value_text, nullif(o.unit_code, '') AS unit_code,
               nullif(o.unit_label, '') AS unit_label, nullif(o.status, '') AS status,
               nullif(o.equipment_id, '') AS equipment_id
        FROM unnest(o_msg, o_set_id, o_code, o_label, o_coding_system, o_sub_id,
                    o_value, o_value_text, o_unit_code, o_unit_label, o_status,
                    o_observed_at, o_equipment_id)
             AS o (msg, set_id, code, label, coding_system, sub_id, value,
                   value_text, unit_code, unit_label, status, observed_at,
                   equipment_id)
        JOIN newmsg n ON n.ord = o.msg
    ), obs_ins AS (
        INSERT INTO cms.observations (message_id, device_id, patient_ref, observed_at,
            received_at, set_id, code, label, coding_system, sub_id, value,
            value_text, unit_code, unit_label, status, equipment_id)
        SELECT * FROM obs
        RETURNING 1
    ), txt AS (
        INSERT INTO cms.text_observations (message_id, device_id, patient_ref, observed_at,
            received_at, set_id, value_type, code, label, coding_system, sub_id, value_text,
            value_code, value_system, value_truncated, status, equipment_id)
        SELECT n.id, n.device_id, n.patient_ref,
               coalesce(nullif(x.at, '')::timestamptz, n.received_at), n.received_at,
               x.set_id, x.type, x.code, nullif(x.label, ''), nullif(x.system, ''),
               nullif(x.sub_id, ''), nullif(x.text, ''), nullif(x.vcode, ''),
               nullif(x.vsystem, ''), coalesce(x.truncated, false), nullif(x.status, ''),
               nullif(x.equipment, '')
        FROM jsonb_to_recordset(t) AS x (msg integer, set_id integer, type text, code text,
                 label text, system text, sub_id text, text text, vcode text, vsystem text,
                 truncated boolean, status text, at text, equipment text)
        JOIN newmsg n ON n.ord = x.msg
        RETURNING 1
    ), wav AS (
        INSERT INTO cms.waveform_blocks (message_id, device_id, patient_ref, start_at, received_at,
            set_id, channel, code, label, coding_system, sub_id, unit_code, unit_label, status,
            equipment_id, sample_rate, scale, nsamples, samples_i2, samples_i4, samples_f8,
            facets)
        SELECT n.id, n.device_id, n.patient_ref,
               coalesce(nullif(x.at, '')::timestamptz, n.received_at), n.received_at,
               x.set_id, coalesce(x.channel, 0), x.code, nullif(x.label, ''),
               nullif(x.system, ''), nullif(x.sub_id, ''), nullif(x.ucode, ''),
               nullif(x.ulabel, ''), nullif(x.status, ''), nullif(x.equipment, ''),
               x.rate, x.scale, x.n,
               CASE WHEN x.kind = 2 THEN w_samples[x.i]::smallint[] END,
               CASE WHEN x.kind = 4 THEN w_samples[x.i]::integer[] END,
               CASE WHEN x.kind = 8 THEN w_samples[x.i]::double precision[] END,
               x.facets
        FROM jsonb_to_recordset(w) AS x (msg integer, set_id integer,
                 channel smallint, code text, label text, system text, sub_id text,
                 ucode text, ulabel text, status text, at text, equipment text,
                 rate double precision, scale double precision, n integer, kind integer,
                 facets jsonb, i bigint)
        JOIN newmsg n ON n.ord = x.msg
        RETURNING 1
    )
    SELECT array_agg(ord ORDER BY ord), array_agg(id ORDER BY ord),
           array_agg(device_id ORDER BY ord), array_agg(patient_ref ORDER BY ord),
           array_agg(received_at ORDER BY ord), array_agg(location ORDER BY ord)
    INTO n_ord, n_id, n_dev, n_pref, n_recv, n_loc
    FROM newmsg;

    -- Alarms, one event at a time in message order: the lifecycle of an alarm depends on
    -- what came before it (a start and its end may share a batch).
    IF a IS NOT NULL AND jsonb_array_length(a) > 0 THEN
        FOR r IN
            SELECT x.*, nm.id AS message_id, nm.dev AS device_id, nm.pref AS patient_ref,
                   nm.recv AS received_at, nm.loc AS location,
                   coalesce(nullif(x.at, '')::timestamptz, nm.recv) AS event_at
            FROM jsonb_to_recordset(a) AS x (msg integer, id text,
                     parent text, phase text, state text, inact text, prio text, kind text,
                     code text, label text, system text, text text, truncated boolean,
                     scode text, slabel text, ssub text, value double precision, vtext text,
                     ucode text, ulabel text, limits text, at text, facets jsonb, i bigint)
            JOIN unnest(n_ord, n_id, n_dev, n_pref, n_recv, n_loc)
                 AS nm (ord, id, dev, pref, recv, loc) ON nm.ord = x.msg
            ORDER BY x.i
        LOOP
            IF r.prio = 'PN' THEN
                -- Heartbeat / watchdog: last heard, not an alarm.
                INSERT INTO cms.device_heartbeats AS h (device_id, last_heard_at, received_at,
                                                        message_id)
                VALUES (r.device_id, r.event_at, r.received_at, r.message_id)
                ON CONFLICT (device_id) DO UPDATE
                    SET last_heard_at = greatest(h.last_heard_at, excluded.last_heard_at),
                        received_at = excluded.received_at, message_id = excluded.message_id;
                CONTINUE;
            END IF;
            SELECT * INTO inst FROM cms.alarm_instances
            WHERE device_id = r.device_id AND alarm_id = r.id AND ended_at IS NULL
            FOR UPDATE;
            is_unknown := NOT FOUND AND r.phase NOT IN ('start', 'start-only');
            IF NOT FOUND THEN
                INSERT INTO cms.alarm_instances (device_id, alarm_id, patient_ref, location,
                    event_code, event_label, event_system, alarm_text, priority, kind, phase,
                    state, inactivation, source_code, source_label, value, unit_code,
                    unit_label, limits, started_at, last_event_at, ended_at, nevents,
                    unknown_start)
                VALUES (r.device_id, r.id, r.patient_ref, r.location, nullif(r.code, ''),
                    nullif(r.label, ''), nullif(r.system, ''), nullif(r.text, ''),
                    nullif(r.prio, ''), nullif(r.kind, ''), r.phase, nullif(r.state, ''),
                    nullif(r.inact, ''), nullif(r.scode, ''), nullif(r.slabel, ''), r.value,
                    nullif(r.ucode, ''), nullif(r.ulabel, ''), nullif(r.limits, ''),
                    CASE WHEN r.phase IN ('start', 'start-only') THEN r.event_at END,
                    r.event_at,
                    CASE WHEN r.phase IN ('end', 'start-only') THEN r.event_at END,
                    1, is_unknown)
                RETURNING id INTO inst_id;
            ELSE
                inst_id := inst.id;
                -- An event older than the newest one seen updates the history only.
                UPDATE cms.alarm_instances SET
                    nevents = nevents + 1,
                    ended_at = CASE WHEN r.phase = 'end' THEN r.event_at ELSE ended_at END,
                    last_event_at = greatest(last_event_at, r.event_at),
                    location = CASE WHEN r.event_at >= last_event_at
                                    THEN coalesce(r.location, location) ELSE location END,
                    phase = CASE WHEN r.event_at >= last_event_at OR r.phase = 'end'
                                 THEN r.phase ELSE phase END,
                    state = CASE WHEN r.event_at >= last_event_at
                                 THEN coalesce(nullif(r.state, ''), state) ELSE state END,
                    inactivation = CASE WHEN r.event_at >= last_event_at
                                        THEN coalesce(nullif(r.inact, ''), inactivation)
                                        ELSE inactivation END,
                    priority = CASE WHEN r.event_at >= last_event_at
                                    THEN coalesce(nullif(r.prio, ''), priority) ELSE priority END,
                    kind = coalesce(kind, nullif(r.kind, '')),
                    alarm_text = coalesce(nullif(r.text, ''), alarm_text),
                    value = CASE WHEN r.event_at >= last_event_at
                                 THEN coalesce(r.value, value) ELSE value END,
                    limits = CASE WHEN r.event_at >= last_event_at
                                  THEN coalesce(nullif(r.limits, ''), limits) ELSE limits END
                WHERE id = inst_id;
            END IF;
            INSERT INTO cms.alarm_events (message_id, device_id, patient_ref, instance_id,
                event_at, received_at, alarm_id, parent_id, location, phase, state,
                inactivation, priority, kind, event_code, event_label, event_system,
                alarm_text, text_truncated, source_code, source_label, source_sub_id, value,
                value_text, unit_code, unit_label, limits, unknown_alarm, facets)
            VALUES (r.message_id, r.device_id, r.patient_ref, inst_id, r.event_at,
                r.received_at, r.id, nullif(r.parent, ''), r.location, r.phase,
                nullif(r.state, ''), nullif(r.inact, ''), nullif(r.prio, ''),
                nullif(r.kind, ''), nullif(r.code, ''), nullif(r.label, ''),
                nullif(r.system, ''), nullif(r.text, ''), coalesce(r.truncated, false),
                nullif(r.scode, ''), nullif(r.slabel, ''), nullif(r.ssub, ''), r.value,
                nullif(r.vtext, ''), nullif(r.ucode, ''), nullif(r.ulabel, ''),
                nullif(r.limits, ''), is_unknown, r.facets);
            IF is_unknown THEN
                unknown[r.msg] := unknown[r.msg] + 1;
            END IF;
        END LOOP;
    END IF;

    RETURN QUERY
    SELECT u.ord::integer, NOT (u.ord::integer = ANY (coalesce(n_ord, '{}'))),
           unknown[u.ord::integer]
    FROM unnest(m_device_id) WITH ORDINALITY AS u (d, ord)
    ORDER BY u.ord;
END
$fn$;

------------------------------------------------------------------------------
-- Read side (public, documented in docs/clinical-data.md: keep these columns stable)
------------------------------------------------------------------------------

-- The newest numeric value per device, MDC code and sub id.
CREATE VIEW cms.latest_vitals AS
SELECT d.serial       AS device_serial,
       p.patient_id   AS patient_id,
       l.observed_at  AS observed_at,
       l.received_at  AS received_at,
       l.code         AS mdc_code,
       l.label        AS mdc_label,
       nullif(l.sub_id, '') AS sub_id,
       l.value        AS value,
       l.unit_code    AS unit_code,
       l.unit_label   AS unit_label
FROM cms.latest_observations l
JOIN cms.devices d ON d.id = l.device_id
LEFT JOIN cms.patients p ON p.id = l.patient_ref;

-- One row per alarm (heartbeats never): current ones have ended_at NULL.
CREATE VIEW cms.alarms AS
SELECT ai.id            AS alarm_ref,
       d.serial         AS device_serial,
       p.patient_id     AS patient_id,
       ai.location      AS location,
       ai.alarm_id      AS alarm_id,
       ai.event_code    AS event_code,
       ai.event_label   AS event_label,
       ai.alarm_text    AS alarm_text,
       ai.priority      AS priority,
       ai.kind          AS kind,
       ai.phase         AS phase,
       ai.state         AS state,
       ai.inactivation  AS inactivation,
       ai.source_code   AS source_code,
       ai.source_label  AS source_label,
       ai.value         AS value,
       ai.unit_code     AS unit_code,
       ai.unit_label    AS unit_label,
       ai.limits        AS limits,
       ai.started_at    AS started_at,
       ai.last_event_at AS last_event_at,
       ai.ended_at      AS ended_at,
       ai.ended_at IS NULL AS current,
       ai.nevents       AS nevents,
       ai.unknown_start AS unknown_start
FROM cms.alarm_instances ai
JOIN cms.devices d ON d.id = ai.device_id
LEFT JOIN cms.patients p ON p.id = ai.patient_ref;

-- Every alarm event (start, continue, update, end, ...) as received.
CREATE VIEW cms.alarm_history AS
SELECT e.instance_id    AS alarm_ref,
       d.serial         AS device_serial,
       p.patient_id     AS patient_id,
       e.location       AS location,
       e.alarm_id       AS alarm_id,
       e.event_at       AS event_at,
       e.received_at    AS received_at,
       e.phase          AS phase,
       e.state          AS state,
       e.inactivation   AS inactivation,
       e.priority       AS priority,
       e.kind           AS kind,
       e.event_code     AS event_code,
       e.event_label    AS event_label,
       e.alarm_text     AS alarm_text,
       e.source_code    AS source_code,
       e.source_label   AS source_label,
       e.value          AS value,
       e.unit_code      AS unit_code,
       e.unit_label     AS unit_label,
       e.limits         AS limits,
       e.unknown_alarm  AS unknown_alarm,
       e.facets         AS facets
FROM cms.alarm_events e
JOIN cms.devices d ON d.id = e.device_id
LEFT JOIN cms.patients p ON p.id = e.patient_ref;

-- Waveform blocks with their samples in physical units.
CREATE VIEW cms.waveforms AS
SELECT d.serial         AS device_serial,
       p.patient_id     AS patient_id,
       w.start_at       AS start_at,
       w.start_at + make_interval(secs => w.nsamples / w.sample_rate) AS end_at,
       w.received_at    AS received_at,
       w.code           AS mdc_code,
       w.label          AS mdc_label,
       w.sub_id         AS sub_id,
       w.channel        AS channel,
       w.unit_code      AS unit_code,
       w.unit_label     AS unit_label,
       w.sample_rate    AS sample_rate,
       w.scale          AS scale,
       w.nsamples       AS nsamples,
       coalesce(w.samples_i2::integer[], w.samples_i4) AS raw_samples,
       CASE WHEN w.samples_f8 IS NOT NULL
            THEN ARRAY(SELECT s * w.scale FROM unnest(w.samples_f8) AS s)
            ELSE ARRAY(SELECT s * w.scale FROM unnest(coalesce(w.samples_i2::integer[],
                                                               w.samples_i4)) AS s)
       END              AS samples,
       w.facets         AS facets
FROM cms.waveform_blocks w
JOIN cms.devices d ON d.id = w.device_id
LEFT JOIN cms.patients p ON p.id = w.patient_ref;

-- When each device last sent a heartbeat/watchdog alarm.
CREATE VIEW cms.device_last_heard AS
SELECT d.serial AS device_serial, h.last_heard_at, h.received_at
FROM cms.device_heartbeats h
JOIN cms.devices d ON d.id = h.device_id;

-- Trend: 1-minute medians of one numeric of one device over [t_from, t_to), from the
-- public view cms.vitals (so a cms_reader may call it).
CREATE FUNCTION cms.vitals_trend(device_serial text, mdc_code text, t_from timestamptz,
                                 t_to timestamptz)
RETURNS TABLE (minute timestamptz, median double precision, min double precision,
               max double precision, n integer)
LANGUAGE sql STABLE
SET search_path = pg_catalog, cms
AS $fn$
    SELECT date_trunc('minute', v.observed_at),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY v.value),
           min(v.value), max(v.value), count(*)::integer
    FROM cms.vitals v
    WHERE v.device_serial = vitals_trend.device_serial
      AND v.mdc_code = vitals_trend.mdc_code
      AND v.observed_at >= t_from AND v.observed_at < t_to
    GROUP BY 1
    ORDER BY 1
$fn$;

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------

REVOKE ALL ON cms.text_observations, cms.waveform_blocks, cms.alarm_instances, cms.alarm_events,
    cms.device_heartbeats, cms.latest_observations FROM PUBLIC;
REVOKE ALL ON FUNCTION cms.ensure_range_partition(text, text, text, timestamptz, timestamptz, text),
    cms.drop_range_partitions(text, text, text, integer, interval, text, timestamptz),
    cms.drop_waveforms_older_than(integer) FROM PUBLIC;

GRANT SELECT, INSERT ON cms.text_observations, cms.waveform_blocks, cms.alarm_events TO cms_server;
GRANT SELECT, INSERT, UPDATE ON cms.alarm_instances, cms.device_heartbeats,
    cms.latest_observations TO cms_server;
GRANT USAGE ON SEQUENCE cms.alarm_instances_id_seq TO cms_server;
GRANT SELECT ON cms.latest_vitals, cms.alarms, cms.alarm_history, cms.waveforms,
    cms.device_last_heard TO cms_server, cms_reader;
GRANT EXECUTE ON FUNCTION
    cms.ingest_batch2(bigint[], text[], text[], text[], text[], text[], text[], integer[],
                      integer[], integer[], text[], text[], text[], text[],
                      double precision[], text[], text[], text[], text[], text[], text[],
                      jsonb, jsonb, text[], jsonb),
    cms.latest_upsert(bigint[], text[], text[], text[], text[], text[], text[], text[],
                      double precision[], text[], text[]),
    cms.drop_waveforms_older_than(integer),
    cms.vitals_trend(text, text, timestamptz, timestamptz)
TO cms_server;
GRANT EXECUTE ON FUNCTION cms.vitals_trend(text, text, timestamptz, timestamptz) TO cms_reader;
