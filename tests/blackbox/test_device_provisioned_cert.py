"""A certificate made outside EST is recorded by `cmsctl db device-add SERIAL
--cert FILE` (make run does it for the demo monitors MON-0001..3): it shows in
the device's certificate history as `provisioned` and current, it is then
the only certificate the device may connect with, a newer one recorded the
same way supersedes it, and one can be revoked on its own through the
operator API (the CRL lists it, the device stays active). Refused: a
certificate for another serial, a file that is no certificate, a
certificate already recorded for another device.
Clients: cmsctl, openssl(1), curl, Python ssl."""

import uuid

import pytest

import est_helpers as eh
import helpers as h
from est_helpers import work  # noqa: F401  (fixture)

USAGE, FAIL = 2, 1


@pytest.fixture(scope="module")
def est(pki, db):
    # device_cache_ttl_s = 0: every connection asks the registry (what is under test here),
    # not an answer kept from before the certificate was recorded.
    c = eh.start_est_cmsd(pki, db, "cmsd-provisioned-cert", device_cache_ttl_s=0)
    yield c
    eh.stop_cmsd(c)


def issue(work, pki, cn, name):
    """A device certificate for CN=cn from the test PKI's device CA, made with
    openssl as a factory would (no EST): (cert pem, key)."""
    key, csr = work.path(name + ".key"), work.path(name + ".csr")
    cert, ext = work.path(name + ".crt"), work.path(name + ".ext")
    ext.write_text("[v3]\nbasicConstraints = critical,CA:FALSE\n"
                   "keyUsage = critical,digitalSignature\nextendedKeyUsage = clientAuth\n")
    cnf = work.path("req.cnf")
    cnf.write_text("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n")
    eh.openssl("req", "-new", "-config", cnf, "-newkey", "ec", "-pkeyopt",
               "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-subj", "/CN=%s" % cn,
               "-out", csr)
    eh.openssl("x509", "-req", "-in", csr, "-CA", pki.path("device-ca.crt"), "-CAkey",
               pki.path("device-ca.key"), "-set_serial", "0x" + uuid.uuid4().hex[:16],
               "-days", "30", "-extfile", ext, "-extensions", "v3", "-out", cert)
    return cert, key


def device_add(db, serial, *extra):
    return h.run([h.CMSCTL, "db", "device-add", serial, "--dsn", db.dsn] + list(extra),
                 check=False, cwd=h.ROOT)


def served(est, pki, cert, key, serial):
    with h.MllpClient(est.port, h.client_context(pki, cert, key)) as c:
        ack = c.request(h.pcd01(serial, h.unique("PRV"), patient="PT-PRV"))
    return ack.code == "AA"


def refused(est, pki, cert, key, serial):
    local, how = h.expect_refused(pki, est.port, (cert, key),
                                  h.pcd01(serial, h.unique("PRV-X"), patient="PT-PRV"))
    return how


def certs(est, serial):
    st, body = eh.api(est, "GET", "/api/v1/devices/%s/certs" % serial)
    assert st == 200, body
    return {c["sha256"]: c for c in body["certs"]}


def test_recorded_certificate_is_the_device_s(est, pki, db, work):
    serial = eh.new_serial("PRV")
    a_crt, a_key = issue(work, pki, serial, "a")
    b_crt, b_key = issue(work, pki, serial, "b")
    fp_a, fp_b = eh.cert_fingerprint(a_crt), eh.cert_fingerprint(b_crt)
    # Registered without a certificate: any certificate of the device CA for its serial.
    h.device_add(db, serial, model="Example Monitor")
    assert certs(est, serial) == {}
    assert served(est, pki, a_crt, a_key, serial) and served(est, pki, b_crt, b_key, serial)

    since = eh.last_audit_id(db)
    p = device_add(db, serial, "--cert", str(a_crt))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1].startswith("device %s certificate %s" % (serial, fp_a))
    assert p.stdout.rstrip().endswith(" recorded"), p.stdout
    row = eh.wait_audit(db, since, "device_add", serial)
    assert row["detail"]["cert_recorded"] == fp_a, row
    c = certs(est, serial)
    assert list(c) == [fp_a], c
    assert (c[fp_a]["state"], c[fp_a]["issued_via"], c[fp_a]["key"], c[fp_a]["subject_cn"]) == \
        ("current", "provisioned", "EC P-256", serial), c
    assert c[fp_a]["serial_hex"] == eh.cert_field(a_crt, "-serial").split("=")[1].lower()
    # The same certificate again: nothing changes.
    p = device_add(db, serial, "--cert", str(a_crt))
    assert p.returncode == 0 and p.stdout.rstrip().endswith("already recorded"), p.stdout
    assert list(certs(est, serial)) == [fp_a]

    # Now the recorded certificate alone is the device's.
    assert served(est, pki, a_crt, a_key, serial)
    assert refused(est, pki, b_crt, b_key, serial)

    # A newer one recorded the same way supersedes it.
    p = device_add(db, serial, "--cert", str(b_crt))
    assert p.returncode == 0 and p.stdout.rstrip().endswith(" recorded"), p.stdout
    c = certs(est, serial)
    assert (c[fp_a]["state"], c[fp_b]["state"]) == ("superseded", "current"), c
    assert refused(est, pki, a_crt, a_key, serial)
    assert served(est, pki, b_crt, b_key, serial)

    # Revoked on its own (a word for the reason): the device stays active, the CRL lists it.
    st, body = eh.api(est, "POST", "/api/v1/certs/%s/revoke" % fp_b, data={"reason": "lost"})
    assert st == 200 and body["serial"] == serial and body["reason"] == "keyCompromise", body
    assert certs(est, serial)[fp_b]["state"] == "revoked"
    assert eh.device_status(db, serial) == "active"
    assert refused(est, pki, b_crt, b_key, serial)
    st, _, pem = eh.curl(est, "GET", "/crl.pem")
    assert st == 200
    crl = work.path("crl.pem")
    crl.write_bytes(pem)
    p = eh.openssl("verify", "-crl_check", "-CAfile", pki.device_ca_bundle, "-CRLfile", crl,
                   b_crt, check=False)
    assert p.returncode != 0 and b"certificate revoked" in p.stdout + p.stderr, p


def test_refusals(pki, db, work):
    serial, other = eh.new_serial("PRV"), eh.new_serial("PRV")
    crt, _ = issue(work, pki, serial, "mine")
    h.device_add(db, other, model="Example Monitor")
    # a certificate whose CN is another serial
    p = device_add(db, other, "--cert", str(crt))
    assert p.returncode == USAGE and "subject CN is not %s" % other in p.stderr, p.stderr
    # not a certificate, no file
    junk = work.path("junk.pem")
    junk.write_text("hello\n")
    p = device_add(db, other, "--cert", str(junk))
    assert p.returncode == USAGE and "not a PEM certificate" in p.stderr, p.stderr
    p = device_add(db, other, "--cert", str(work.path("missing.pem")))
    assert p.returncode == USAGE and "No such file" in p.stderr, p.stderr
    # nothing was registered or recorded by the refusals
    assert db.scalar("SELECT count(*) FROM cms.device_certs c JOIN cms.devices d "
                     "ON d.id = c.device_id WHERE d.serial = %s", (other,)) == 0
    assert db.scalar("SELECT count(*) FROM cms.devices WHERE serial = %s", (serial,)) == 0
    # a certificate (or serial number) already recorded for another device: the registry
    # row is handed to `other` by hand, since cmsctl itself never records a foreign CN
    assert device_add(db, serial, "--cert", str(crt)).returncode == 0
    db.execute("UPDATE cms.device_certs SET device_id = (SELECT id FROM cms.devices "
               "WHERE serial = %s) WHERE fingerprint_sha256 = %s",
               (other, eh.cert_fingerprint(crt)))
    p = device_add(db, serial, "--cert", str(crt))
    assert p.returncode == FAIL and "already recorded for device %s" % other in p.stderr, \
        p.stderr
