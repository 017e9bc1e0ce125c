-- 009_device_check_batch.sql - device checks for many connections in one statement.
--
-- A worker checks each new connection's device (cms.device_check, 006). When
-- many connect at once (a restart, a network flap), cmsd sends the waiting
-- checks together: one round trip and one statement instead of one each.
-- Rows come back ordered by idx (1-based position in the arrays); a serial
-- that is not registered has no row.
CREATE FUNCTION cms.device_check_batch(p_serials text[], p_fingerprints text[])
RETURNS TABLE (idx integer, id bigint, serial text, status text, idents text[])
LANGUAGE sql STABLE
SET search_path = pg_catalog, cms
AS $fn$
    SELECT u.n::integer, c.id, c.serial, c.status, c.idents
    FROM unnest(p_serials, p_fingerprints) WITH ORDINALITY AS u (s, fp, n)
    CROSS JOIN LATERAL cms.device_check(u.s, u.fp) AS c
    ORDER BY u.n
$fn$;

GRANT EXECUTE ON FUNCTION cms.device_check_batch(text[], text[]) TO cms_server;
