-- 012_fw_report_allowlist.sql - a device's report counts for a release's
-- rollout only if that release is approved for it (or was offered to it).
--
-- Never edit this file once it has landed: add a later NNN_*.sql instead.
--
-- Before: cms.fw_report (004) recorded any report against the release it
-- named (by image, else by model and version) without consulting the
-- allowlist: a device never approved for a release that POSTed
-- {"status":"installed"} for it got a rollout row 'installed', was counted
-- in the release's installed_devices and listed by `cmsctl firmware status`
-- (via null), and raised its security counter floor.
--
-- Now a report that names a release is a rollout report only when the
-- release is allowlisted for the device (cms.fw_allowlisted, 011) or was
-- offered to it by a manifest (a rollout row with a manifest counter: it
-- was allowlisted then; an approval withdrawn after the offer does not make
-- the device's own install report a lie). Otherwise it is FLAGGED:
--   * nothing in cms.fw_rollout changes;
--   * 'installed' still records what the device says it runs (the registry's
--     cms.devices.firmware_version and fw_device_state.installed_version),
--     but never raises its installed security counter;
--   * cms.fw_report_flags keeps the latest such report per (release, device)
--     and how many there were;
--   * the audit row is fw_report_unapproved (instead of fw_report), detail
--     {status, version, sha256, reason, release_id, model};
--   * the function returns release_id NULL and state 'flagged'.
-- cms.fw_release_devices lists a flagged device (not allowlisted, no
-- rollout row) with state 'reported_unapproved'; it is never counted as an
-- installation (cms.fw_release_list counts rollout rows only).
-- A report that names no known release of the device's model is recorded
-- as before (its reported version; fw_report, release_id NULL).

CREATE TABLE cms.fw_report_flags (
    release_id bigint NOT NULL REFERENCES cms.fw_releases (id),
    device_id  bigint NOT NULL REFERENCES cms.devices (id),
    status     text NOT NULL,
    version    text,
    reason     text,
    reports    bigint NOT NULL DEFAULT 1,
    first_at   timestamptz NOT NULL DEFAULT now(),
    last_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (release_id, device_id)
);

-- Same signature, arguments and errors as 004; see the header for what changed.
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
        IF p_status = 'installed' AND p_version IS NOT NULL THEN
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

-- As 011, plus each device with a flagged report of the release and neither
-- an approval nor a rollout row: state 'reported_unapproved', via NULL,
-- reason says what it reported.
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
       coalesce(o.state, CASE WHEN al.ok THEN 'approved'
                              WHEN p.groups IS NOT NULL THEN 'needs_approval'
                              ELSE 'reported_unapproved' END) AS state,
       CASE WHEN o.state IS NOT NULL OR al.ok THEN o.reason
            WHEN p.groups IS NOT NULL
            THEN 'joined group ' || p.groups
                 || ' after its approval: a second operator must approve it again'
            ELSE 'reported "' || f.status || '" without an approval or an offer of this release ('
                 || f.reports || ' report(s), last ' || to_char(f.last_at AT TIME ZONE 'UTC',
                                                                'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                 || '): flagged, not counted (fw_report_unapproved)' END AS reason,
       o.manifest_counter, o.updated_at
FROM cms.fw_releases r
CROSS JOIN cms.devices d
CROSS JOIN LATERAL (SELECT cms.fw_allowlisted(r.id, d.id) AS ok) al
LEFT JOIN cms.fw_rollout o ON o.release_id = r.id AND o.device_id = d.id
LEFT JOIN cms.fw_report_flags f ON f.release_id = r.id AND f.device_id = d.id
LEFT JOIN LATERAL (
    SELECT string_agg(g.name, ',' ORDER BY g.name) AS groups
    FROM cms.fw_approvals a
    JOIN cms.device_groups g ON g.id = a.group_id
    JOIN cms.device_group_members m ON m.group_id = a.group_id AND m.device_id = d.id
    WHERE a.release_id = r.id AND a.withdrawn_at IS NULL AND d.model = r.model
      AND NOT EXISTS (SELECT 1 FROM cms.fw_approval_members c
                      WHERE c.approval_id = a.id AND c.device_id = d.id)) p ON true
WHERE al.ok OR o.release_id IS NOT NULL OR p.groups IS NOT NULL OR f.release_id IS NOT NULL;

REVOKE ALL ON cms.fw_report_flags FROM PUBLIC;
GRANT SELECT ON cms.fw_report_flags TO cms_server;
