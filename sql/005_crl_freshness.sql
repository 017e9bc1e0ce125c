-- 005_crl_freshness.sql - exact "is the published CRL stale?" test.
--
-- 002 compared revocation times with the CRL's thisUpdate, which is whole
-- seconds (X.509 time): a revocation in the same second as the CRL that
-- already lists it looked newer, so every GET /crl in that second rebuilt
-- the CRL. Now the CRL row keeps prepared_at, the exact database time at
-- which cms.crl_prepare read the revoked list (under its lock), and a CRL is
-- stale only if a certificate was revoked or superseded after that.
--
-- Changed (signatures): cms.crl_prepare() returns prepared_at (text, exact
-- timestamptz) as a 6th column; cms.crl_publish takes it as a 7th parameter.
-- Never edit this file once it has landed: add a later one instead.

ALTER TABLE cms.crl ADD COLUMN prepared_at timestamptz;

DROP FUNCTION cms.crl_prepare();
DROP FUNCTION cms.crl_publish(bigint, bigint, bigint, bytea, text, integer);

-- As in 002, plus prepared_at: the clock reading taken after the lock and
-- before the list is read, so every revocation committed before the read
-- has revoked_at/superseded_at < prepared_at... or is listed.
CREATE FUNCTION cms.crl_prepare()
RETURNS TABLE (crl_number bigint, this_update_epoch bigint, serial_hex text,
               revoked_epoch bigint, reason_code integer, prepared_at text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    n  bigint;
    at timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('cms.crl'));
    n := nextval('cms.crl_number_seq');
    at := clock_timestamp();
    RETURN QUERY
    SELECT n, floor(extract(epoch FROM at))::bigint, c.serial_hex,
           floor(extract(epoch FROM coalesce(c.revoked_at, c.superseded_at)))::bigint,
           CASE WHEN c.revoked_at IS NOT NULL THEN cms.crl_reason_code(c.revocation_reason)
                ELSE 4 END,
           at::text
    FROM cms.device_certs c
    WHERE (c.revoked_at IS NOT NULL OR c.superseded_at IS NOT NULL)
      AND c.not_after > now()
    ORDER BY c.serial_hex;
    IF NOT FOUND THEN
        RETURN QUERY SELECT n, floor(extract(epoch FROM at))::bigint, NULL::text, NULL::bigint,
                            NULL::integer, at::text;
    END IF;
END
$fn$;

CREATE FUNCTION cms.crl_publish(p_number bigint, p_this_update_epoch bigint,
                                p_next_update_epoch bigint, p_der bytea, p_pem text,
                                p_entries integer, p_prepared_at timestamptz)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
BEGIN
    INSERT INTO cms.crl AS c (singleton, crl_number, this_update, next_update, der, pem, entries,
                              prepared_at)
    VALUES (true, p_number, to_timestamp(p_this_update_epoch), to_timestamp(p_next_update_epoch),
            p_der, p_pem, p_entries, p_prepared_at)
    ON CONFLICT (singleton) DO UPDATE
        SET crl_number = EXCLUDED.crl_number, this_update = EXCLUDED.this_update,
            next_update = EXCLUDED.next_update, der = EXCLUDED.der, pem = EXCLUDED.pem,
            entries = EXCLUDED.entries, prepared_at = EXCLUDED.prepared_at,
            published_at = now()
        WHERE c.crl_number < EXCLUDED.crl_number;
    RETURN FOUND;
END
$fn$;

-- Same columns as in 002; stale when there is none, when it is older than
-- p_max_age_s, or when a certificate was revoked/superseded after the list
-- it holds was read.
CREATE OR REPLACE FUNCTION cms.crl_current(p_max_age_s integer)
RETURNS TABLE (crl_number bigint, der_hex text, pem text, stale boolean)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
    SELECT c.crl_number, encode(c.der, 'hex'), c.pem,
           c.singleton IS NULL
           OR c.prepared_at IS NULL
           OR c.this_update < now() - make_interval(secs => p_max_age_s)
           OR EXISTS (SELECT 1 FROM cms.device_certs dc
                      WHERE greatest(dc.revoked_at, dc.superseded_at) >= c.prepared_at)
    FROM (SELECT true AS one) o
    LEFT JOIN cms.crl c ON c.singleton
$fn$;

REVOKE ALL ON FUNCTION
    cms.crl_prepare(),
    cms.crl_publish(bigint, bigint, bigint, bytea, text, integer, timestamptz)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    cms.crl_prepare(),
    cms.crl_publish(bigint, bigint, bigint, bytea, text, integer, timestamptz)
TO cms_server;
