-- 014_provisioned_certs.sql - certificates made outside EST can be recorded.
--
-- A device provisioned out of band (its certificate issued by the device CA
-- without EST, like the demo monitors of the dev PKI, certs/mkpki.sh) had no
-- row in cms.device_certs: `cmsctl device certs` showed none, and one of its
-- certificates could not be revoked on its own (POST
-- /api/v1/certs/:fingerprint/revoke needs a recorded certificate).
-- `cmsctl db device-add SERIAL --cert FILE` (tools/run.sh does it for the demo
-- monitors) now records it with issued_via 'provisioned' and supersedes the
-- device's other current certificates, as an EST enrollment does. From then
-- on the device check accepts only its recorded certificates
-- (cms.device_cert_verdict, sql/002), as for an enrolled device.

ALTER TABLE cms.device_certs
    DROP CONSTRAINT device_certs_issued_via_check,
    ADD CONSTRAINT device_certs_issued_via_check
        CHECK (issued_via IN ('enroll', 'reenroll', 'provisioned'));

