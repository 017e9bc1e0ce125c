-- 006_device_check.sql - the per-connection device check without a write.
--
-- cms.device_lookup (002) updates last_seen_at in the same statement, so every
-- new monitor connection waited for its own WAL flush on the one control
-- connection: after a cmsd restart, thousands of reconnecting monitors queued
-- behind each other for seconds. The check is now a read (no commit wait), and
-- "last seen" is recorded in batches by cms.devices_seen.

-- Same verdict as cms.device_lookup: status "active" only when the device is
-- active and the presented certificate (SHA-256 fingerprint, may be NULL) is
-- allowed; otherwise the reason (see cms.device_cert_verdict). No row when
-- the serial is unknown.
CREATE FUNCTION cms.device_check(p_serial text, p_fingerprint text)
RETURNS TABLE (id bigint, serial text, status text, idents text[])
LANGUAGE sql STABLE
SET search_path = pg_catalog, cms
AS $fn$
    SELECT d.id, d.serial,
           CASE WHEN p_fingerprint IS NULL THEN d.status
                ELSE cms.device_cert_verdict(d.id, d.status, p_fingerprint) END,
           coalesce((SELECT array_agg(i.identifier ORDER BY i.identifier)
                     FROM cms.device_identifiers i WHERE i.device_id = d.id), '{}'::text[])
    FROM cms.devices d
    WHERE d.serial = p_serial
$fn$;

-- Records that the devices in p_serials connected from p_peers (parallel
-- arrays; the last entry of a serial wins). Returns the rows updated.
CREATE FUNCTION cms.devices_seen(p_serials text[], p_peers text[])
RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, cms
AS $fn$
    WITH s AS (
        SELECT DISTINCT ON (serial) serial, peer
        FROM unnest(p_serials, p_peers) WITH ORDINALITY AS u (serial, peer, n)
        ORDER BY serial, n DESC
    ), u AS (
        UPDATE cms.devices d SET last_seen_at = now(), last_peer = s.peer
        FROM s WHERE d.serial = s.serial
        RETURNING 1
    )
    SELECT count(*)::integer FROM u
$fn$;

GRANT EXECUTE ON FUNCTION cms.device_check(text, text) TO cms_server;
GRANT EXECUTE ON FUNCTION cms.devices_seen(text[], text[]) TO cms_server;
