"""EST (RFC 7030) with clients we did not write: a monitor goes from nothing
to vitals (operator token -> openssl req -> curl simpleenroll -> openssl
pkcs7 -> MLLP/TLS -> AA), then renews its certificate with simplereenroll;
the superseded certificate is refused afterwards (policy in
sql/002_enrollment.sql) and listed on the CRL."""

import pytest

import est_helpers as eh
import helpers as h
from est_helpers import work  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def est(pki, db):
    c = eh.start_est_cmsd(pki, db, "cmsd-est")
    yield c
    eh.stop_cmsd(c)


def test_cacerts_is_the_device_ca_chain(est, pki, work):
    st, hd, body = eh.curl(est, "GET", eh.EST + "/cacerts")
    assert st == 200, body
    assert hd["content-type"].replace(" ", "") == "application/pkcs7-mime;smime-type=certs-only"
    assert hd.get("content-transfer-encoding", "").lower() == "base64"
    pem = eh.certs_from_est(work, body, "cacerts")
    text = pem.read_text()
    end = "-----END CERTIFICATE-----"
    parts = [p + end + "\n" for p in text.split(end) if "BEGIN CERTIFICATE" in p]
    assert len(parts) == 2, text
    files = []
    for i, part in enumerate(parts):
        f = work.path("ca%d.pem" % i)
        f.write_text(part[part.index("-----BEGIN"):])
        files.append(f)
    assert eh.cert_field(files[0], "-subject") == eh.cert_field(pki.path("device-ca.crt"),
                                                                "-subject")
    assert eh.cert_field(files[1], "-subject") == eh.cert_field(pki.path("root-ca.crt"),
                                                                "-subject")
    out = eh.openssl("verify", "-CAfile", files[1], files[0]).stdout.decode()
    assert out.strip().endswith("OK"), out


def test_csrattrs_asks_for_p256_ecdsa(est, work):
    st, hd, body = eh.curl(est, "GET", eh.EST + "/csrattrs")
    assert st == 200, body
    assert hd["content-type"] == "application/csrattrs"
    b64 = work.path("attrs.b64")
    b64.write_bytes(body)
    der = work.path("attrs.der")
    eh.openssl("base64", "-d", "-in", b64, "-out", der)
    dump = eh.openssl("asn1parse", "-inform", "DER", "-in", der).stdout.decode()
    assert "id-ecPublicKey" in dump and "prime256v1" in dump and "ecdsa-with-SHA256" in dump, dump


def test_from_nothing_to_vitals(est, pki, db, work):
    serial = eh.new_serial()
    since = eh.last_audit_id(db)
    tok = eh.token_create(est, serial, model="CMS8000-NG")
    assert tok["serial"] == serial and tok["device_status"] == "pending"
    assert eh.device_status(db, serial) == "pending"

    st, hd, body, key, pem = eh.enroll(est, work, serial, tok["token"])
    assert st == 200, body
    assert hd["content-type"].replace(" ", "") == "application/pkcs7-mime;smime-type=certs-only"
    assert hd.get("content-transfer-encoding", "").lower() == "base64"
    assert "CN = %s" % serial in eh.cert_field(pem, "-subject")
    assert eh.cert_field(pem, "-issuer").split("=", 1)[1] == \
        eh.cert_field(pki.path("device-ca.crt"), "-subject").split("=", 1)[1]
    out = eh.openssl("verify", "-CAfile", pki.device_ca_bundle, "-purpose", "sslclient",
                     pem).stdout.decode()
    assert out.strip().endswith("OK"), out
    # validity from est_cert_days (30) in the test config
    end = eh.cert_field(pem, "-enddate")
    assert end, end
    assert eh.openssl("x509", "-in", pem, "-noout", "-checkend", str(29 * 86400),
                      check=False).returncode == 0
    assert eh.openssl("x509", "-in", pem, "-noout", "-checkend", str(31 * 86400),
                      check=False).returncode != 0

    assert eh.device_status(db, serial) == "active"
    assert db.scalar("SELECT model FROM cms.devices WHERE serial = %s", (serial,)) == "CMS8000-NG"
    fp = eh.cert_fingerprint(pem)
    assert db.query("SELECT fingerprint_sha256, serial_hex FROM cms.device_certs c "
                    "JOIN cms.devices d ON d.id = c.device_id WHERE d.serial = %s",
                    (serial,))[0][0] == fp
    assert db.scalar("SELECT used_at IS NOT NULL FROM cms.enrollment_tokens WHERE id = %s",
                     (tok["id"],))
    row = eh.wait_audit(db, since, "est_enrolled", serial)
    assert row["detail"]["fingerprint"] == fp and row["actor"] == "token:%d" % tok["id"]

    chain = eh.chain_file(work, pki, pem, serial)
    cid, pt = h.unique("EST"), h.unique("PT-EST")
    with h.MllpClient(est.port, h.client_context(pki, chain, key)) as c:
        ack = c.request(h.pcd01(serial, cid, patient=pt))
    assert ack.code == "AA" and ack.control_id == cid, ack
    rows = db.vitals(patient_id=pt)
    assert len(rows) == h.SAMPLE_NOBS and {r["device_serial"] for r in rows} == {serial}


@pytest.mark.parametrize("alg", ["p384", "ed25519", "rsa2048"])
def test_other_key_types_with_basic_auth(est, pki, db, work, alg):
    serial = eh.new_serial()
    tok = eh.token_create(est, serial)
    st, _, body, key, pem = eh.enroll(est, work, serial, tok["token"], alg=alg, basic=True)
    assert st == 200, body
    text = eh.cert_field(pem, "-text")
    want = {"p384": "NIST CURVE: P-384", "ed25519": "ED25519", "rsa2048": "(2048 bit)"}[alg]
    assert want.lower() in text.lower(), text
    chain = eh.chain_file(work, pki, pem, serial)
    cid = h.unique("KEY")
    with h.MllpClient(est.port, h.client_context(pki, chain, key)) as c:
        ack = c.request(h.pcd01(serial, cid, patient=h.unique("PT")))
    assert ack.code == "AA", ack


def test_pem_body_without_transfer_encoding(est, db, work):
    """Some clients post PEM and no Content-Transfer-Encoding: accepted."""
    serial = eh.new_serial()
    tok = eh.token_create(est, serial)
    key, b64 = eh.make_csr(work, serial)
    pem_csr = work.path("csr.pem")
    eh.openssl("req", "-inform", "DER", "-in", work.path("dev.csr.der"), "-out", pem_csr)
    st, _, body = eh.curl(est, "POST", eh.EST + "/simpleenroll", data_file=pem_csr,
                          headers=["Content-Type: application/pkcs10",
                                   "Authorization: Bearer " + tok["token"]])
    assert st == 200, body
    assert eh.device_status(db, serial) == "active"


def test_reenroll_supersedes_the_old_certificate(est, pki, db, work):
    serial, chain, key, pem = eh.enrolled_device(est, db, work, pki)
    old_fp = eh.cert_fingerprint(pem)
    since = eh.last_audit_id(db)

    # simplereenroll with the current certificate (mTLS) and a NEW key.
    key2, csr2 = eh.make_csr(work, serial, name="renew")
    st, hd, body = eh.curl(est, "POST", eh.EST + "/simplereenroll", data_file=csr2,
                           device=(chain, key),
                           headers=["Content-Type: application/pkcs10",
                                    "Content-Transfer-Encoding: base64"])
    assert st == 200, body
    pem2 = eh.certs_from_est(work, body, "renewed")
    assert "CN = %s" % serial in eh.cert_field(pem2, "-subject")
    new_fp = eh.cert_fingerprint(pem2)
    assert new_fp != old_fp
    rows = db.query("SELECT fingerprint_sha256, superseded_at IS NOT NULL, issued_via "
                    "FROM cms.device_certs c JOIN cms.devices d ON d.id = c.device_id "
                    "WHERE d.serial = %s ORDER BY c.id", (serial,))
    assert rows == [(old_fp, True, "enroll"), (new_fp, False, "reenroll")], rows
    row = eh.wait_audit(db, since, "est_reenrolled", serial)
    assert row["detail"]["previous_fingerprint"] == old_fp

    # The new certificate streams vitals.
    chain2 = eh.chain_file(work, pki, pem2, "renewed")
    with h.MllpClient(est.port, h.client_context(pki, chain2, key2)) as c:
        ack = c.request(h.pcd01(serial, h.unique("RENEW"), patient=h.unique("PT")))
    assert ack.code == "AA", ack

    # The superseded one is refused: for MLLP ...
    local, how = h.expect_refused(pki, est.port, (chain, key),
                                  h.pcd01(serial, h.unique("OLD"), patient=h.unique("PT")))
    assert local is not None, how
    # ... and for another re-enrollment.
    key3, csr3 = eh.make_csr(work, serial, name="again")
    try:
        st, _, body = eh.curl(est, "POST", eh.EST + "/simplereenroll", data_file=csr3,
                              device=(chain, key),
                              headers=["Content-Type: application/pkcs10"])
        assert st in (401, 403), (st, body)
    except RuntimeError as e:  # closed right after the handshake (device check)
        assert "curl" in str(e)

    # The CRL lists it (reason superseded); the new one is good.
    st, _, crl = eh.curl(est, "GET", "/crl.pem")
    assert st == 200
    crlf = work.path("crl.pem")
    crlf.write_bytes(crl)
    bad = eh.openssl("verify", "-crl_check", "-CAfile", pki.device_ca_bundle, "-CRLfile", crlf,
                     pem, check=False)
    assert bad.returncode != 0 and b"certificate revoked" in bad.stdout + bad.stderr, bad
    text = eh.openssl("crl", "-in", crlf, "-noout", "-text").stdout.decode()
    assert "Superseded" in text, text
    good = eh.openssl("verify", "-crl_check", "-CAfile", pki.device_ca_bundle, "-CRLfile", crlf,
                      pem2, check=False)
    assert good.returncode == 0, good


def test_reenroll_needs_same_subject(est, pki, db, work):
    serial, chain, key, pem = eh.enrolled_device(est, db, work, pki)
    since = eh.last_audit_id(db)
    _, csr = eh.make_csr(work, serial + "-OTHER", name="other")
    st, _, body = eh.curl(est, "POST", eh.EST + "/simplereenroll", data_file=csr,
                          device=(chain, key), headers=["Content-Type: application/pkcs10"])
    assert st == 403 and b"serial_mismatch" in body, (st, body)
    eh.wait_audit(db, since, "est_refused", serial,
                  pred=lambda r: r["detail"]["endpoint"] == "simplereenroll")
    assert db.scalar("SELECT count(*) FROM cms.device_certs c JOIN cms.devices d "
                     "ON d.id = c.device_id WHERE d.serial = %s", (serial,)) == 1


def test_reenroll_without_certificate_is_refused(est, work):
    _, csr = eh.make_csr(work, "MON-0001")
    st, _, body = eh.curl(est, "POST", eh.EST + "/simplereenroll", data_file=csr,
                          headers=["Content-Type: application/pkcs10"])
    assert st == 401, (st, body)
