-- 013_fw_release_devices_speed.sql - cms.fw_release_devices (012) computed set-wise
-- per release instead of per device.
--
-- Never edit this file once it has landed: add a later NNN_*.sql instead.
--
-- 011/012 wrote the view as every device crossed with the release and, per
-- device, cms.fw_allowlisted plus two subqueries over the release's
-- approvals: with 10 000 devices, a release approved for a 5 000-device
-- group and 200 devices took 1.3-3.9 s per `cmsctl firmware status` (2 loaded
-- cores; 004's view: 0.5 s). Here the release's approvals, memberships,
-- coverage, rollout rows and flagged reports are read once, grouped by
-- device, and joined: 0.4-0.8 s on the same data. Same columns, same rows,
-- same values (checked with EXCEPT both ways against 012's view on that
-- data, with rollout rows, flags, a withdrawn approval and a device of
-- another model in the group).

CREATE OR REPLACE VIEW cms.fw_release_devices AS
SELECT r.id AS release_id, d.serial, d.model, d.status AS device_status,
       d.firmware_version,
       x.via,
       coalesce(o.state, CASE WHEN x.via IS NOT NULL THEN 'approved'
                              WHEN x.pending IS NOT NULL THEN 'needs_approval'
                              ELSE 'reported_unapproved' END) AS state,
       CASE WHEN o.state IS NOT NULL OR x.via IS NOT NULL THEN o.reason
            WHEN x.pending IS NOT NULL
            THEN 'joined group ' || x.pending
                 || ' after its approval: a second operator must approve it again'
            ELSE 'reported "' || f.status || '" without an approval or an offer of this release ('
                 || f.reports || ' report(s), last ' || to_char(f.last_at AT TIME ZONE 'UTC',
                                                                'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                 || '): flagged, not counted (fw_report_unapproved)' END AS reason,
       o.manifest_counter, o.updated_at
FROM cms.fw_releases r
CROSS JOIN LATERAL (
    SELECT t.device_id,
           string_agg(t.via, ',' ORDER BY t.approval_id) AS via,
           string_agg(t.pending, ',' ORDER BY t.pending) AS pending
    FROM (SELECT a.device_id, a.id AS approval_id, 'device' AS via, NULL::text AS pending
          FROM cms.fw_approvals a
          WHERE a.release_id = r.id AND a.withdrawn_at IS NULL AND a.device_id IS NOT NULL
          UNION ALL
          SELECT m.device_id, a.id,
                 CASE WHEN c.device_id IS NOT NULL THEN 'group:' || g.name END,
                 CASE WHEN c.device_id IS NULL AND dm.model = r.model THEN g.name END
          FROM cms.fw_approvals a
          JOIN cms.device_groups g ON g.id = a.group_id
          JOIN cms.device_group_members m ON m.group_id = a.group_id
          JOIN cms.devices dm ON dm.id = m.device_id
          LEFT JOIN cms.fw_approval_members c ON c.approval_id = a.id
                                             AND c.device_id = m.device_id
          WHERE a.release_id = r.id AND a.withdrawn_at IS NULL
          UNION ALL
          SELECT o.device_id, NULL, NULL, NULL FROM cms.fw_rollout o WHERE o.release_id = r.id
          UNION ALL
          SELECT f.device_id, NULL, NULL, NULL FROM cms.fw_report_flags f
          WHERE f.release_id = r.id) t
    GROUP BY t.device_id) x
JOIN cms.devices d ON d.id = x.device_id
LEFT JOIN cms.fw_rollout o ON o.release_id = r.id AND o.device_id = d.id
LEFT JOIN cms.fw_report_flags f ON f.release_id = r.id AND f.device_id = d.id
WHERE x.via IS NOT NULL OR x.pending IS NOT NULL OR o.release_id IS NOT NULL
   OR f.release_id IS NOT NULL;
