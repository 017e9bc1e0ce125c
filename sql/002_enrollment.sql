-- 002_enrollment.sql - EST enrollment tokens, the certificate history of each
-- device, revocation (with NOTIFY to every cmsd) and the published CRL.
--
-- Never edit this file once it has landed: add 003_*.sql instead.
--
-- cmsd never writes these tables directly: every multi-step operation is ONE
-- call to a function below (one statement = one transaction), which takes its
-- row locks in a fixed order (device -> token -> certificates -> audit chain
-- head), re-checks everything under those locks, writes its audit row in the
-- same transaction and, for revocations, NOTIFYs cms_revocation. So several
-- cmsd instances on one database stay consistent. Readers (the operator API,
-- cmsctl, reports) may SELECT the tables.
--
-- Tables
-- ------
-- cms.enrollment_tokens   one-time EST enrollment tokens
--   id            bigint PK
--   device_id     bigint -> cms.devices (the device is created as 'pending'
--                 when the first token for its serial is made)
--   serial        text       the device serial = CN the CSR must carry
--   model         text|NULL  copied to cms.devices.model on enrollment
--   token_sha256  bytea UNIQUE  SHA-256 of the token text as the client sends
--                 it (64 hex digits). The token itself is never stored; it is
--                 shown once, to the operator who created it.
--   created_by    text       "operator:<CN>"
--   created_at, expires_at timestamptz
--   used_at       timestamptz|NULL  set by the enrollment that consumed it
--   used_fingerprint text|NULL      the certificate it was exchanged for
--   revoked_at    timestamptz|NULL, revoked_by text|NULL
--   state (view cms.enrollment_token_list): revoked > used > expired > active
--
-- cms.device_certs        every certificate issued by EST (history per device)
--   id            bigint PK
--   device_id     bigint -> cms.devices
--   serial_hex    text UNIQUE   certificate serial, lowercase hex (pki_cert_serial_hex)
--   fingerprint_sha256 text UNIQUE  SHA-256 of the DER, 64 lowercase hex digits
--   subject_cn    text          = the device serial
--   key_desc      text          "EC P-256", "RSA 3072", ...
--   not_before, not_after timestamptz
--   issued_at     timestamptz
--   issued_via    'enroll' (token) | 'reenroll' (mTLS with the previous cert)
--   token_id      bigint|NULL -> cms.enrollment_tokens
--   superseded_at timestamptz|NULL, superseded_by bigint|NULL -> device_certs
--   revoked_at    timestamptz|NULL
--   revocation_reason text|NULL   RFC 5280 CRLReason name (see cms.crl_reason_code)
--   der           bytea          the certificate
--   A certificate is CURRENT when superseded_at and revoked_at are both NULL.
--
-- cms.crl                 the one published CRL (single row), served by every
--   crl_number bigint (from sequence cms.crl_number_seq), this_update,
--   next_update timestamptz, der bytea, pem text, entries integer,
--   published_at timestamptz
--
-- cms.devices gains status_changed_at and status_reason (revocation reason).
--
-- Certificate policy (who may connect; cms.device_cert_verdict)
-- ------------------------------------------------------------
--  - the device must be 'active';
--  - a device WITHOUT any recorded certificate (provisioned out of band, e.g.
--    by certs/mkpki.sh) is accepted with any certificate the device CA issued
--    for its serial;
--  - a device WITH recorded certificates is accepted only with a CURRENT one:
--    a revoked, superseded or unrecorded certificate is refused. So after a
--    re-enrollment the previous certificate is refused for every new
--    handshake and resumed session (it is also listed on the CRL with reason
--    superseded), and after an enrollment with a new token every earlier
--    certificate is superseded too (one current certificate per device).
--
-- Errors raised (SQLSTATE, MESSAGE is a human sentence for the API "detail"):
--   CE001 unknown enrollment token           CE002 token already used
--   CE003 token expired                      CE004 token revoked
--   CE005 CSR/username serial != token serial
--   CE006 device revoked                     CE007 device decommissioned
--   CE008 presented certificate is not the device's current certificate
--   CE009 device not active (pending)
--   CN001 not found (device, certificate, token)
--   CN002 conflict (already revoked / decommissioned / used)
--   CV001 invalid argument (serial syntax, ttl, reason name, fingerprint)
--
-- NOTIFY: channel cms_revocation, payload = the device serial, sent (at
-- commit) by device_revoke, device_decommission, cert_revoke and by
-- est_enroll when it superseded earlier certificates. Every cmsd closes that
-- device's live connections on receipt.

------------------------------------------------------------------------------
-- Tables
------------------------------------------------------------------------------

ALTER TABLE cms.devices ADD COLUMN status_changed_at timestamptz;
ALTER TABLE cms.devices ADD COLUMN status_reason text;

CREATE TABLE cms.enrollment_tokens (
    id               bigserial PRIMARY KEY,
    device_id        bigint NOT NULL REFERENCES cms.devices (id),
    serial           text NOT NULL,
    model            text,
    token_sha256     bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    used_at          timestamptz,
    used_fingerprint text,
    revoked_at       timestamptz,
    revoked_by       text,
    CHECK (expires_at > created_at)
);
CREATE INDEX enrollment_tokens_device_idx ON cms.enrollment_tokens (device_id);

CREATE TABLE cms.device_certs (
    id                 bigserial PRIMARY KEY,
    device_id          bigint NOT NULL REFERENCES cms.devices (id),
    serial_hex         text NOT NULL UNIQUE CHECK (serial_hex ~ '^[0-9a-f]{1,40}$'),
    fingerprint_sha256 text NOT NULL UNIQUE CHECK (fingerprint_sha256 ~ '^[0-9a-f]{64}$'),
    subject_cn         text NOT NULL,
    key_desc           text,
    not_before         timestamptz NOT NULL,
    not_after          timestamptz NOT NULL,
    issued_at          timestamptz NOT NULL DEFAULT now(),
    issued_via         text NOT NULL CHECK (issued_via IN ('enroll', 'reenroll')),
    token_id           bigint REFERENCES cms.enrollment_tokens (id),
    superseded_at      timestamptz,
    superseded_by      bigint REFERENCES cms.device_certs (id),
    revoked_at         timestamptz,
    revocation_reason  text,
    der                bytea NOT NULL
);
CREATE INDEX device_certs_device_idx ON cms.device_certs (device_id);

CREATE SEQUENCE cms.crl_number_seq START 1 NO CYCLE;

CREATE TABLE cms.crl (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    crl_number   bigint NOT NULL,
    this_update  timestamptz NOT NULL,
    next_update  timestamptz NOT NULL,
    der          bytea NOT NULL,
    pem          text NOT NULL,
    entries      integer NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);

CREATE VIEW cms.enrollment_token_list AS
SELECT t.id, t.serial, t.model, t.created_by, t.created_at, t.expires_at, t.used_at,
       t.used_fingerprint, t.revoked_at, t.revoked_by,
       CASE WHEN t.revoked_at IS NOT NULL THEN 'revoked'
            WHEN t.used_at IS NOT NULL THEN 'used'
            WHEN t.expires_at <= now() THEN 'expired'
            ELSE 'active' END AS state
FROM cms.enrollment_tokens t;

------------------------------------------------------------------------------
-- Helpers
------------------------------------------------------------------------------

-- RFC 5280 CRLReason code of a reason name (NULL/'unspecified' -> 0);
-- raises CV001 for names that cannot be used for a revocation.
CREATE FUNCTION cms.crl_reason_code(p_reason text)
RETURNS integer
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog
AS $fn$
BEGIN
    RETURN CASE coalesce(p_reason, 'unspecified')
        WHEN 'unspecified' THEN 0
        WHEN 'keyCompromise' THEN 1
        WHEN 'affiliationChanged' THEN 3
        WHEN 'superseded' THEN 4
        WHEN 'cessationOfOperation' THEN 5
        WHEN 'privilegeWithdrawn' THEN 9
        ELSE NULL END;
END
$fn$;

CREATE FUNCTION cms.check_reason(p_reason text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, cms
AS $fn$
BEGIN
    IF cms.crl_reason_code(p_reason) IS NULL THEN
        RAISE EXCEPTION 'unknown revocation reason "%": use unspecified, keyCompromise, affiliationChanged, superseded, cessationOfOperation or privilegeWithdrawn', p_reason
            USING ERRCODE = 'CV001';
    END IF;
    RETURN coalesce(p_reason, 'unspecified');
END
$fn$;

-- Whether a device with status p_status may connect presenting the
-- certificate with SHA-256 p_fingerprint (hex; NULL = not checked): returns
-- 'active' when it may, else the reason ('pending', 'revoked',
-- 'decommissioned', 'cert revoked', 'cert superseded', 'cert unknown').
-- At most 15 characters (store_device.status is char[16]).
CREATE FUNCTION cms.device_cert_verdict(p_device_id bigint, p_status text, p_fingerprint text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, cms
AS $fn$
DECLARE
    c record;
BEGIN
    IF p_status IS DISTINCT FROM 'active' OR p_fingerprint IS NULL OR p_fingerprint = '' THEN
        RETURN p_status;
    END IF;
    SELECT dc.device_id, dc.superseded_at, dc.revoked_at INTO c
    FROM cms.device_certs dc WHERE dc.fingerprint_sha256 = lower(p_fingerprint);
    IF FOUND THEN
        IF c.device_id <> p_device_id THEN
            RETURN 'cert unknown';
        ELSIF c.revoked_at IS NOT NULL THEN
            RETURN 'cert revoked';
        ELSIF c.superseded_at IS NOT NULL THEN
            RETURN 'cert superseded';
        END IF;
        RETURN 'active';
    END IF;
    IF EXISTS (SELECT 1 FROM cms.device_certs dc WHERE dc.device_id = p_device_id) THEN
        RETURN 'cert unknown';
    END IF;
    RETURN 'active';
END
$fn$;

-- The device check made on every connection (TLS handshake, resumed or not):
-- records last_seen_at/last_peer and returns the device with its verdict as
-- status (see cms.device_cert_verdict) and its other identifiers. No row:
-- no such device. Intended for store_device_lookup (replacing its inline
-- statement) once it passes the peer certificate's fingerprint:
--   SELECT id, serial, status, idents FROM cms.device_lookup($1, $2, $3)
CREATE FUNCTION cms.device_lookup(p_serial text, p_peer text, p_fingerprint text)
RETURNS TABLE (id bigint, serial text, status text, idents text[])
LANGUAGE plpgsql
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    d record;
BEGIN
    UPDATE cms.devices dv SET last_seen_at = now(), last_peer = coalesce(p_peer, dv.last_peer)
    WHERE dv.serial = p_serial
    RETURNING dv.id, dv.serial, dv.status INTO d;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT d.id, d.serial, cms.device_cert_verdict(d.id, d.status, p_fingerprint),
           coalesce((SELECT array_agg(i.identifier ORDER BY i.identifier)
                     FROM cms.device_identifiers i WHERE i.device_id = d.id), '{}'::text[]);
END
$fn$;

-- Re-check of live connections after missed notifications: p_serials and
-- p_fingerprints are newline-separated lists of the same length (one entry
-- per connection). Returns the (serial, fingerprint) pairs that may no
-- longer be connected, with the reason.
CREATE FUNCTION cms.connections_recheck(p_serials text, p_fingerprints text)
RETURNS TABLE (serial text, fingerprint text, reason text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, cms
AS $fn$
    SELECT c.serial, c.fp, coalesce(cms.device_cert_verdict(d.id, d.status, nullif(c.fp, '')),
                                     'unknown device')
    FROM unnest(string_to_array(p_serials, E'\n'), string_to_array(p_fingerprints, E'\n'))
         AS c (serial, fp)
    LEFT JOIN cms.devices d ON d.serial = c.serial
    WHERE d.id IS NULL OR cms.device_cert_verdict(d.id, d.status, nullif(c.fp, '')) <> 'active'
$fn$;

------------------------------------------------------------------------------
-- Enrollment tokens
------------------------------------------------------------------------------

-- Creates a one-time token for p_serial (the device is registered as
-- 'pending' when unknown; refused when revoked or decommissioned). The
-- caller made the token and passes only its SHA-256. Audited.
CREATE FUNCTION cms.enroll_token_create(p_serial text, p_model text, p_ttl_s integer,
                                        p_token_sha256 bytea, p_actor text, p_peer text)
RETURNS TABLE (id bigint, serial text, model text, expires_at timestamptz,
               device_status text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    d   record;
    tid bigint;
    exp timestamptz;
BEGIN
    IF p_serial IS NULL OR p_serial !~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$' THEN
        RAISE EXCEPTION 'serial must be 1 to 64 characters of A-Z a-z 0-9 . _ - (got "%")',
            left(coalesce(p_serial, ''), 80) USING ERRCODE = 'CV001';
    END IF;
    IF p_model IS NOT NULL AND (length(p_model) > 64 OR p_model ~ '[^\x20-\x7e]') THEN
        RAISE EXCEPTION 'model must be at most 64 printable ASCII characters'
            USING ERRCODE = 'CV001';
    END IF;
    IF p_ttl_s IS NULL OR p_ttl_s < 1 THEN
        RAISE EXCEPTION 'ttl must be at least 1 second' USING ERRCODE = 'CV001';
    END IF;
    INSERT INTO cms.devices AS dv (serial, model, status, status_changed_at)
    VALUES (p_serial, p_model, 'pending', now())
    ON CONFLICT (serial) DO NOTHING;
    SELECT dv.id, dv.status INTO STRICT d FROM cms.devices dv
    WHERE dv.serial = p_serial FOR UPDATE;
    IF d.status = 'revoked' THEN
        RAISE EXCEPTION 'device % is revoked: no enrollment token can be issued for it', p_serial
            USING ERRCODE = 'CE006';
    ELSIF d.status = 'decommissioned' THEN
        RAISE EXCEPTION 'device % is decommissioned: no enrollment token can be issued for it',
            p_serial USING ERRCODE = 'CE007';
    END IF;
    exp := now() + make_interval(secs => p_ttl_s);
    INSERT INTO cms.enrollment_tokens AS t (device_id, serial, model, token_sha256, created_by,
                                            expires_at)
    VALUES (d.id, p_serial, p_model, p_token_sha256, p_actor, exp)
    RETURNING t.id INTO tid;
    PERFORM cms.audit_append('enroll_token_created', p_actor, p_serial, p_peer,
        jsonb_build_object('token_id', tid, 'model', p_model, 'expires_at', exp,
                           'device_status', d.status)::text);
    RETURN QUERY SELECT tid, p_serial, p_model, exp, d.status;
END
$fn$;

-- Revokes an unused token. Audited.
CREATE FUNCTION cms.enroll_token_revoke(p_id bigint, p_actor text, p_peer text)
RETURNS TABLE (id bigint, serial text, revoked_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    t record;
BEGIN
    SELECT et.id, et.serial, et.used_at, et.revoked_at INTO t
    FROM cms.enrollment_tokens et WHERE et.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no enrollment token %', p_id USING ERRCODE = 'CN001';
    ELSIF t.revoked_at IS NOT NULL THEN
        RAISE EXCEPTION 'enrollment token % is already revoked', p_id USING ERRCODE = 'CN002';
    ELSIF t.used_at IS NOT NULL THEN
        RAISE EXCEPTION 'enrollment token % was already used (at %)', p_id, t.used_at
            USING ERRCODE = 'CN002';
    END IF;
    UPDATE cms.enrollment_tokens et SET revoked_at = now(), revoked_by = p_actor
    WHERE et.id = p_id;
    PERFORM cms.audit_append('enroll_token_revoked', p_actor, t.serial, p_peer,
        jsonb_build_object('token_id', p_id)::text);
    RETURN QUERY SELECT p_id, t.serial, now();
END
$fn$;

------------------------------------------------------------------------------
-- EST
------------------------------------------------------------------------------

-- Checks a presented token against the CSR's CN (and the HTTP Basic user
-- name, if any) and the device's status; raises CE00x when refused.
-- p_lock: take the row locks (device, then token) for the enrollment.
-- Returns the token id, the device id and the serial.
CREATE FUNCTION cms.est_token_verify(p_token_sha256 bytea, p_csr_cn text, p_username text,
                                     p_lock boolean,
                                     OUT token_id bigint, OUT device_id bigint,
                                     OUT serial text, OUT model text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    t record;
    d record;
BEGIN
    SELECT et.id, et.device_id INTO t FROM cms.enrollment_tokens et
    WHERE et.token_sha256 = p_token_sha256;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown enrollment token' USING ERRCODE = 'CE001';
    END IF;
    IF p_lock THEN -- lock order: device, then token
        SELECT dv.id, dv.serial, dv.status INTO STRICT d FROM cms.devices dv
        WHERE dv.id = t.device_id FOR UPDATE;
        SELECT et.* INTO STRICT t FROM cms.enrollment_tokens et WHERE et.id = t.id FOR UPDATE;
    ELSE
        SELECT dv.id, dv.serial, dv.status INTO STRICT d FROM cms.devices dv
        WHERE dv.id = t.device_id;
        SELECT et.* INTO STRICT t FROM cms.enrollment_tokens et WHERE et.id = t.id;
    END IF;
    IF d.status = 'revoked' THEN
        RAISE EXCEPTION 'device % is revoked: enrollment refused', d.serial
            USING ERRCODE = 'CE006';
    ELSIF d.status = 'decommissioned' THEN
        RAISE EXCEPTION 'device % is decommissioned: enrollment refused', d.serial
            USING ERRCODE = 'CE007';
    ELSIF t.revoked_at IS NOT NULL THEN
        RAISE EXCEPTION 'enrollment token % was revoked', t.id USING ERRCODE = 'CE004';
    ELSIF t.used_at IS NOT NULL THEN
        RAISE EXCEPTION 'enrollment token % was already used', t.id USING ERRCODE = 'CE002';
    ELSIF t.expires_at <= now() THEN
        RAISE EXCEPTION 'enrollment token % expired at %', t.id,
            to_char(t.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
            USING ERRCODE = 'CE003';
    ELSIF p_csr_cn IS DISTINCT FROM t.serial THEN
        RAISE EXCEPTION 'the CSR subject CN "%" is not the serial "%" this token was issued for',
            left(coalesce(p_csr_cn, ''), 80), t.serial USING ERRCODE = 'CE005';
    ELSIF p_username IS NOT NULL AND p_username <> '' AND p_username <> t.serial THEN
        RAISE EXCEPTION 'user name "%" is not the serial "%" this token was issued for',
            left(p_username, 80), t.serial USING ERRCODE = 'CE005';
    END IF;
    token_id := t.id;
    device_id := d.id;
    serial := t.serial;
    model := t.model;
END
$fn$;

-- Pre-check before a certificate is signed (no locks, nothing written).
CREATE FUNCTION cms.est_token_check(p_token_sha256 bytea, p_csr_cn text, p_username text)
RETURNS TABLE (token_id bigint, device_id bigint, serial text)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
    SELECT v.token_id, v.device_id, v.serial
    FROM cms.est_token_verify(p_token_sha256, p_csr_cn, p_username, false) v
$fn$;

-- Enrollment with a token: re-checks the token under locks, records the
-- issued certificate, supersedes the device's earlier current certificates,
-- marks the token used and the device active (model from the token).
-- Audited ('est_enrolled'); NOTIFY cms_revocation if certificates were
-- superseded. Returns the device id and the number superseded.
CREATE FUNCTION cms.est_enroll(p_token_sha256 bytea, p_csr_cn text, p_username text,
                               p_serial_hex text, p_fingerprint text, p_not_before timestamptz,
                               p_not_after timestamptz, p_der bytea, p_key_desc text,
                               p_peer text)
RETURNS TABLE (device_id bigint, serial text, superseded integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    v   record;
    cid bigint;
    n   integer;
BEGIN
    SELECT * INTO STRICT v FROM cms.est_token_verify(p_token_sha256, p_csr_cn, p_username, true);
    INSERT INTO cms.device_certs AS c (device_id, serial_hex, fingerprint_sha256, subject_cn,
                                       key_desc, not_before, not_after, issued_via, token_id,
                                       der)
    VALUES (v.device_id, lower(p_serial_hex), lower(p_fingerprint), v.serial, p_key_desc,
            p_not_before, p_not_after, 'enroll', v.token_id, p_der)
    RETURNING c.id INTO cid;
    UPDATE cms.device_certs c SET superseded_at = now(), superseded_by = cid
    WHERE c.device_id = v.device_id AND c.id <> cid
      AND c.superseded_at IS NULL AND c.revoked_at IS NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE cms.enrollment_tokens t SET used_at = now(), used_fingerprint = lower(p_fingerprint)
    WHERE t.id = v.token_id;
    UPDATE cms.devices dv
    SET status = 'active', model = coalesce(v.model, dv.model),
        status_changed_at = CASE WHEN dv.status <> 'active' THEN now()
                                 ELSE dv.status_changed_at END,
        status_reason = NULL
    WHERE dv.id = v.device_id;
    PERFORM cms.audit_append('est_enrolled', 'token:' || v.token_id, v.serial, p_peer,
        jsonb_build_object('token_id', v.token_id, 'cert_serial', lower(p_serial_hex),
                           'fingerprint', lower(p_fingerprint), 'not_after', p_not_after,
                           'key', p_key_desc, 'superseded', n)::text);
    IF n > 0 THEN
        PERFORM pg_notify('cms_revocation', v.serial);
    END IF;
    RETURN QUERY SELECT v.device_id, v.serial, n;
END
$fn$;

-- Re-enrollment by a device authenticated with its certificate
-- (p_old_fingerprint). Policy: that certificate must be the device's current
-- one (or, for a device without any recorded certificate, any certificate
-- of the device CA for its serial, which TLS already verified); it is then
-- SUPERSEDED: refused for every later handshake and listed on the CRL with
-- reason superseded. Live sessions are not cut (the device itself asked).
-- Audited ('est_reenrolled').
CREATE FUNCTION cms.est_reenroll(p_serial text, p_old_fingerprint text, p_serial_hex text,
                                 p_fingerprint text, p_not_before timestamptz,
                                 p_not_after timestamptz, p_der bytea, p_key_desc text,
                                 p_peer text)
RETURNS TABLE (device_id bigint, superseded integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    d    record;
    old  record;
    cid  bigint;
    n    integer := 0;
BEGIN
    SELECT dv.id, dv.status INTO d FROM cms.devices dv WHERE dv.serial = p_serial FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no device %', p_serial USING ERRCODE = 'CN001';
    ELSIF d.status = 'revoked' THEN
        RAISE EXCEPTION 'device % is revoked: re-enrollment refused', p_serial
            USING ERRCODE = 'CE006';
    ELSIF d.status = 'decommissioned' THEN
        RAISE EXCEPTION 'device % is decommissioned: re-enrollment refused', p_serial
            USING ERRCODE = 'CE007';
    ELSIF d.status <> 'active' THEN
        RAISE EXCEPTION 'device % is %: re-enrollment needs an active device', p_serial, d.status
            USING ERRCODE = 'CE009';
    END IF;
    SELECT c.id, c.device_id, c.superseded_at, c.revoked_at INTO old
    FROM cms.device_certs c WHERE c.fingerprint_sha256 = lower(p_old_fingerprint) FOR UPDATE;
    IF FOUND THEN
        IF old.device_id <> d.id THEN
            RAISE EXCEPTION 'the presented certificate was not issued to %', p_serial
                USING ERRCODE = 'CE008';
        ELSIF old.revoked_at IS NOT NULL THEN
            RAISE EXCEPTION 'the presented certificate is revoked' USING ERRCODE = 'CE008';
        ELSIF old.superseded_at IS NOT NULL THEN
            RAISE EXCEPTION 'the presented certificate was superseded by a newer one'
                USING ERRCODE = 'CE008';
        END IF;
    ELSIF EXISTS (SELECT 1 FROM cms.device_certs c WHERE c.device_id = d.id) THEN
        RAISE EXCEPTION 'the presented certificate is not the current certificate of %', p_serial
            USING ERRCODE = 'CE008';
    END IF;
    INSERT INTO cms.device_certs AS c (device_id, serial_hex, fingerprint_sha256, subject_cn,
                                       key_desc, not_before, not_after, issued_via, der)
    VALUES (d.id, lower(p_serial_hex), lower(p_fingerprint), p_serial, p_key_desc,
            p_not_before, p_not_after, 'reenroll', p_der)
    RETURNING c.id INTO cid;
    UPDATE cms.device_certs c SET superseded_at = now(), superseded_by = cid
    WHERE c.device_id = d.id AND c.id <> cid AND c.superseded_at IS NULL AND c.revoked_at IS NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM cms.audit_append('est_reenrolled', 'device:' || p_serial, p_serial, p_peer,
        jsonb_build_object('cert_serial', lower(p_serial_hex),
                           'fingerprint', lower(p_fingerprint),
                           'previous_fingerprint', lower(p_old_fingerprint),
                           'not_after', p_not_after, 'key', p_key_desc,
                           'superseded', n)::text);
    RETURN QUERY SELECT d.id, n;
END
$fn$;

------------------------------------------------------------------------------
-- Revocation
------------------------------------------------------------------------------

-- Shared by device_revoke and device_decommission.
CREATE FUNCTION cms.device_set_retired(p_serial text, p_status text, p_reason text,
                                       p_actor text, p_peer text)
RETURNS TABLE (device_id bigint, previous_status text, certs_revoked integer,
               tokens_revoked integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    d      record;
    reason text := cms.check_reason(p_reason);
    nc     integer;
    nt     integer;
BEGIN
    IF p_status NOT IN ('revoked', 'decommissioned') THEN
        RAISE EXCEPTION 'bad target status %', p_status USING ERRCODE = 'CV001';
    END IF;
    SELECT dv.id, dv.status INTO d FROM cms.devices dv WHERE dv.serial = p_serial FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no device %', p_serial USING ERRCODE = 'CN001';
    ELSIF d.status = p_status THEN
        RAISE EXCEPTION 'device % is already %', p_serial, p_status USING ERRCODE = 'CN002';
    ELSIF d.status = 'decommissioned' THEN
        RAISE EXCEPTION 'device % is decommissioned', p_serial USING ERRCODE = 'CN002';
    END IF;
    UPDATE cms.devices dv SET status = p_status, status_changed_at = now(),
                              status_reason = reason
    WHERE dv.id = d.id;
    UPDATE cms.device_certs c SET revoked_at = now(), revocation_reason = reason
    WHERE c.device_id = d.id AND c.revoked_at IS NULL;
    GET DIAGNOSTICS nc = ROW_COUNT;
    UPDATE cms.enrollment_tokens t SET revoked_at = now(), revoked_by = p_actor
    WHERE t.device_id = d.id AND t.used_at IS NULL AND t.revoked_at IS NULL;
    GET DIAGNOSTICS nt = ROW_COUNT;
    PERFORM cms.audit_append(CASE p_status WHEN 'revoked' THEN 'device_revoked'
                                           ELSE 'device_decommissioned' END,
        p_actor, p_serial, p_peer,
        jsonb_build_object('reason', reason, 'previous_status', d.status,
                           'certs_revoked', nc, 'tokens_revoked', nt)::text);
    PERFORM pg_notify('cms_revocation', p_serial);
    RETURN QUERY SELECT d.id, d.status::text, nc, nt;
END
$fn$;

-- Revokes a device: status 'revoked', every certificate revoked, unused
-- tokens revoked, NOTIFY. Refused (CN002) when already revoked or
-- decommissioned. A revoked device cannot be enrolled again.
CREATE FUNCTION cms.device_revoke(p_serial text, p_reason text, p_actor text, p_peer text)
RETURNS TABLE (device_id bigint, previous_status text, certs_revoked integer,
               tokens_revoked integer)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
    SELECT * FROM cms.device_set_retired(p_serial, 'revoked', p_reason, p_actor, p_peer)
$fn$;

-- Retires a device for good (also from 'revoked'): reason cessationOfOperation.
CREATE FUNCTION cms.device_decommission(p_serial text, p_actor text, p_peer text)
RETURNS TABLE (device_id bigint, previous_status text, certs_revoked integer,
               tokens_revoked integer)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
    SELECT * FROM cms.device_set_retired(p_serial, 'decommissioned', 'cessationOfOperation',
                                         p_actor, p_peer)
$fn$;

-- Revokes one certificate (by SHA-256 fingerprint); the device keeps its
-- status (it may enroll again with a new token). NOTIFY with its serial.
CREATE FUNCTION cms.cert_revoke(p_fingerprint text, p_reason text, p_actor text, p_peer text)
RETURNS TABLE (device_id bigint, serial text, cert_serial text, revoked_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    c      record;
    reason text := cms.check_reason(p_reason);
BEGIN
    IF p_fingerprint IS NULL OR lower(p_fingerprint) !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'a certificate fingerprint is 64 hex digits (SHA-256 of the DER)'
            USING ERRCODE = 'CV001';
    END IF;
    SELECT dc.id, dc.device_id, dc.serial_hex, dc.revoked_at, dv.serial INTO c
    FROM cms.device_certs dc JOIN cms.devices dv ON dv.id = dc.device_id
    WHERE dc.fingerprint_sha256 = lower(p_fingerprint) FOR UPDATE OF dc;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no certificate with fingerprint %', lower(p_fingerprint)
            USING ERRCODE = 'CN001';
    ELSIF c.revoked_at IS NOT NULL THEN
        RAISE EXCEPTION 'certificate % is already revoked', lower(p_fingerprint)
            USING ERRCODE = 'CN002';
    END IF;
    UPDATE cms.device_certs dc SET revoked_at = now(), revocation_reason = reason
    WHERE dc.id = c.id;
    PERFORM cms.audit_append('cert_revoked', p_actor, c.serial, p_peer,
        jsonb_build_object('fingerprint', lower(p_fingerprint), 'cert_serial', c.serial_hex,
                           'reason', reason)::text);
    PERFORM pg_notify('cms_revocation', c.serial);
    RETURN QUERY SELECT c.device_id, c.serial, c.serial_hex, now();
END
$fn$;

------------------------------------------------------------------------------
-- CRL
------------------------------------------------------------------------------

-- Everything needed to build the next CRL: a new CRL number and, under one
-- lock, the revoked and superseded certificates that have not expired (one
-- row each; a single row with NULL serial_hex when there are none).
-- this_update_epoch is the database's clock. Taking the number and reading
-- the list under the same lock makes a higher number never list less than a
-- lower one, so cms.crl_publish can keep the highest.
CREATE FUNCTION cms.crl_prepare()
RETURNS TABLE (crl_number bigint, this_update_epoch bigint, serial_hex text,
               revoked_epoch bigint, reason_code integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
#variable_conflict use_column
DECLARE
    n  bigint;
    tu bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('cms.crl'));
    n := nextval('cms.crl_number_seq');
    tu := floor(extract(epoch FROM clock_timestamp()))::bigint;
    RETURN QUERY
    SELECT n, tu, c.serial_hex,
           floor(extract(epoch FROM coalesce(c.revoked_at, c.superseded_at)))::bigint,
           CASE WHEN c.revoked_at IS NOT NULL THEN cms.crl_reason_code(c.revocation_reason)
                ELSE 4 END
    FROM cms.device_certs c
    WHERE (c.revoked_at IS NOT NULL OR c.superseded_at IS NOT NULL)
      AND c.not_after > now()
    ORDER BY c.serial_hex;
    IF NOT FOUND THEN
        RETURN QUERY SELECT n, tu, NULL::text, NULL::bigint, NULL::integer;
    END IF;
END
$fn$;

-- Stores a signed CRL unless one with a higher number is already stored.
-- Returns true when stored.
CREATE FUNCTION cms.crl_publish(p_number bigint, p_this_update_epoch bigint,
                                p_next_update_epoch bigint, p_der bytea, p_pem text,
                                p_entries integer)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
BEGIN
    INSERT INTO cms.crl AS c (singleton, crl_number, this_update, next_update, der, pem, entries)
    VALUES (true, p_number, to_timestamp(p_this_update_epoch), to_timestamp(p_next_update_epoch),
            p_der, p_pem, p_entries)
    ON CONFLICT (singleton) DO UPDATE
        SET crl_number = EXCLUDED.crl_number, this_update = EXCLUDED.this_update,
            next_update = EXCLUDED.next_update, der = EXCLUDED.der, pem = EXCLUDED.pem,
            entries = EXCLUDED.entries, published_at = now()
        WHERE c.crl_number < EXCLUDED.crl_number;
    RETURN FOUND;
END
$fn$;

-- The published CRL (DER as hex) and whether it must be re-issued: none yet,
-- older than p_max_age_s, or a certificate was revoked/superseded since its
-- thisUpdate. Always one row (NULLs and stale = true when there is none).
CREATE FUNCTION cms.crl_current(p_max_age_s integer)
RETURNS TABLE (crl_number bigint, der_hex text, pem text, stale boolean)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, cms
AS $fn$
    SELECT c.crl_number, encode(c.der, 'hex'), c.pem,
           c.singleton IS NULL
           OR c.this_update < now() - make_interval(secs => p_max_age_s)
           OR EXISTS (SELECT 1 FROM cms.device_certs dc
                      WHERE greatest(dc.revoked_at, dc.superseded_at) >= c.this_update)
    FROM (SELECT true AS one) o
    LEFT JOIN cms.crl c ON c.singleton
$fn$;

------------------------------------------------------------------------------
-- Privileges: cmsd (cms_server) reads these tables and writes them only
-- through the SECURITY DEFINER functions above.
------------------------------------------------------------------------------

REVOKE ALL ON cms.enrollment_tokens, cms.device_certs, cms.crl, cms.enrollment_token_list
    FROM PUBLIC;
REVOKE ALL ON FUNCTION
    cms.enroll_token_create(text, text, integer, bytea, text, text),
    cms.enroll_token_revoke(bigint, text, text),
    cms.est_token_verify(bytea, text, text, boolean),
    cms.est_token_check(bytea, text, text),
    cms.est_enroll(bytea, text, text, text, text, timestamptz, timestamptz, bytea, text, text),
    cms.est_reenroll(text, text, text, text, timestamptz, timestamptz, bytea, text, text),
    cms.device_set_retired(text, text, text, text, text),
    cms.device_revoke(text, text, text, text),
    cms.device_decommission(text, text, text),
    cms.cert_revoke(text, text, text, text),
    cms.crl_prepare(),
    cms.crl_publish(bigint, bigint, bigint, bytea, text, integer),
    cms.crl_current(integer),
    cms.device_lookup(text, text, text),
    cms.connections_recheck(text, text)
FROM PUBLIC;

-- The token hash is not readable by cmsd's role (only through the functions).
GRANT SELECT (id, device_id, serial, model, created_by, created_at, expires_at, used_at,
              used_fingerprint, revoked_at, revoked_by)
    ON cms.enrollment_tokens TO cms_server;
GRANT SELECT ON cms.enrollment_token_list, cms.device_certs, cms.crl TO cms_server;
GRANT EXECUTE ON FUNCTION
    cms.enroll_token_create(text, text, integer, bytea, text, text),
    cms.enroll_token_revoke(bigint, text, text),
    cms.est_token_check(bytea, text, text),
    cms.est_enroll(bytea, text, text, text, text, timestamptz, timestamptz, bytea, text, text),
    cms.est_reenroll(text, text, text, text, timestamptz, timestamptz, bytea, text, text),
    cms.device_revoke(text, text, text, text),
    cms.device_decommission(text, text, text),
    cms.cert_revoke(text, text, text, text),
    cms.crl_prepare(),
    cms.crl_publish(bigint, bigint, bigint, bytea, text, integer),
    cms.crl_current(integer),
    cms.device_lookup(text, text, text),
    cms.connections_recheck(text, text),
    cms.crl_reason_code(text),
    cms.device_cert_verdict(bigint, text, text)
TO cms_server;
