-- 010_registry_notify.sql - every change to a device check's inputs is announced.
--
-- cmsd keeps, per worker, the "active" verdicts of recent device checks
-- (cms.device_check: device status, its certificates, its identifiers) so
-- that a reconnecting monitor needs no query (docs/benchmarks.md, P4). A kept
-- verdict is only correct while nothing it was computed from has changed, so
-- these triggers NOTIFY channel cms_registry with the device's serial on any
-- such change, whoever makes it (cmsctl, EST, the operator API, or SQL typed
-- by hand). cmsd drops that serial's verdicts when the notification arrives,
-- and all of them when its database connection was lost (notifications may
-- have been missed) or when a payload is empty (a TRUNCATE).
--
-- Notifications are sent at COMMIT. A check that ran before the commit and
-- answers after the notification arrived is not kept (cmsd counts
-- invalidations); one that answered before it is dropped when it arrives.
--
-- "last seen" and firmware-version updates of cms.devices do not notify
-- (the WHEN clause): they happen all the time and change no verdict.

CREATE FUNCTION cms.registry_notify()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, cms
AS $fn$
DECLARE
    v_serial text;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN           -- TRUNCATE: every verdict
        PERFORM pg_notify('cms_registry', '');
        RETURN NULL;
    END IF;
    IF TG_TABLE_NAME = 'devices' THEN
        IF TG_OP <> 'INSERT' THEN
            PERFORM pg_notify('cms_registry', OLD.serial);
        END IF;
        IF TG_OP = 'UPDATE' AND NEW.serial IS DISTINCT FROM OLD.serial THEN
            PERFORM pg_notify('cms_registry', NEW.serial);
        END IF;
        RETURN NULL;
    END IF;
    -- device_certs, device_identifiers: the owning device(s)
    IF TG_OP <> 'INSERT' THEN
        SELECT d.serial INTO v_serial FROM cms.devices d WHERE d.id = OLD.device_id;
        IF v_serial IS NOT NULL THEN
            PERFORM pg_notify('cms_registry', v_serial);
        ELSE
            PERFORM pg_notify('cms_registry', '');
        END IF;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        SELECT d.serial INTO v_serial FROM cms.devices d WHERE d.id = NEW.device_id;
        IF v_serial IS NOT NULL THEN
            PERFORM pg_notify('cms_registry', v_serial);
        ELSE
            PERFORM pg_notify('cms_registry', '');
        END IF;
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER devices_registry_notify
    AFTER UPDATE ON cms.devices
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.serial IS DISTINCT FROM NEW.serial
          OR OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION cms.registry_notify();
CREATE TRIGGER devices_registry_delete
    AFTER DELETE ON cms.devices
    FOR EACH ROW EXECUTE FUNCTION cms.registry_notify();

CREATE TRIGGER device_certs_registry_notify
    AFTER INSERT OR UPDATE OR DELETE ON cms.device_certs
    FOR EACH ROW EXECUTE FUNCTION cms.registry_notify();

CREATE TRIGGER device_identifiers_registry_notify
    AFTER INSERT OR UPDATE OR DELETE ON cms.device_identifiers
    FOR EACH ROW EXECUTE FUNCTION cms.registry_notify();

CREATE TRIGGER devices_registry_truncate
    AFTER TRUNCATE ON cms.devices
    FOR EACH STATEMENT EXECUTE FUNCTION cms.registry_notify();
CREATE TRIGGER device_certs_registry_truncate
    AFTER TRUNCATE ON cms.device_certs
    FOR EACH STATEMENT EXECUTE FUNCTION cms.registry_notify();
CREATE TRIGGER device_identifiers_registry_truncate
    AFTER TRUNCATE ON cms.device_identifiers
    FOR EACH STATEMENT EXECUTE FUNCTION cms.registry_notify();

-- What cmsd asks before it keeps any verdict: true once this file is applied
-- (a cmsd running against an older schema checks every connection instead).
CREATE FUNCTION cms.registry_notify_ready()
RETURNS boolean
LANGUAGE sql STABLE
AS $fn$ SELECT true $fn$;

GRANT EXECUTE ON FUNCTION cms.registry_notify_ready() TO cms_server;
