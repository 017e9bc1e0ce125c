"""Every way simpleenroll refuses, with curl and openssl: a clear JSON 4xx
and an audit row each (event est_refused, or the operator action's
*_refused), and nothing issued: no certificate recorded, the token still
unused, the device status unchanged."""

import base64
import json

import pytest

import est_helpers as eh
import helpers as h
from est_helpers import work  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def est(pki, db):
    c = eh.start_est_cmsd(pki, db, "cmsd-est-refusals")
    yield c
    eh.stop_cmsd(c)


def post_csr(est, csr_file=None, body=None, token=None, user=None, ctype="application/pkcs10"):
    headers = []
    if ctype:
        headers.append("Content-Type: " + ctype)
    if token is not None:
        headers.append("Authorization: Bearer " + token)
    st, hd, resp = eh.curl(est, "POST", eh.EST + "/simpleenroll", data_file=csr_file, data=body,
                           headers=headers, user=user)
    try:
        j = json.loads(resp)
    except ValueError:
        j = {"raw": resp}
    return st, hd, j


def certs_of(db, serial):
    return db.scalar("SELECT count(*) FROM cms.device_certs c JOIN cms.devices d "
                     "ON d.id = c.device_id WHERE d.serial = %s", (serial,))


def refused(db, since, status, error, device=None):
    """The est_refused audit row for this refusal."""
    return eh.wait_audit(db, since, "est_refused", device,
                         pred=lambda r: r["detail"]["status"] == status
                         and r["detail"]["error"] == error)


def assert_nothing_issued(db, serial, token_id):
    assert certs_of(db, serial) == 0
    assert db.scalar("SELECT used_at FROM cms.enrollment_tokens WHERE id = %s",
                     (token_id,)) is None
    assert eh.device_status(db, serial) == "pending"


def test_no_token(est, db, work):
    since = eh.last_audit_id(db)
    _, csr = eh.make_csr(work, eh.new_serial())
    st, hd, j = post_csr(est, csr)
    assert st == 401 and j["error"] == "no_token", (st, j)
    assert "Bearer" in hd.get("www-authenticate", "") and "Basic" in hd["www-authenticate"]
    assert "token" in j["detail"]
    refused(db, since, 401, "no_token")


def test_unknown_token(est, db, work):
    since = eh.last_audit_id(db)
    serial = eh.new_serial()
    _, csr = eh.make_csr(work, serial)
    st, hd, j = post_csr(est, csr, token="00" * 32)
    assert st == 401 and j["error"] == "token_unknown", (st, j)
    assert "www-authenticate" in hd
    refused(db, since, 401, "token_unknown", serial)
    assert eh.device_status(db, serial) is None


def test_token_reused(est, pki, db, work):
    serial = eh.new_serial()
    tok = eh.token_create(est, serial)
    st, _, body, _, _ = eh.enroll(est, work, serial, tok["token"], name="first")
    assert st == 200, body
    since = eh.last_audit_id(db)
    st, _, body, _, _ = eh.enroll(est, work, serial, tok["token"], name="second")
    j = json.loads(body)
    assert st == 409 and j["error"] == "token_used", (st, j)
    assert "already used" in j["detail"]
    refused(db, since, 409, "token_used", serial)
    assert certs_of(db, serial) == 1


def test_token_expired(est, db, work):
    serial = eh.new_serial()
    tok = eh.token_create(est, serial, ttl_s=1)
    h.wait_until(lambda: db.scalar("SELECT expires_at < now() FROM cms.enrollment_tokens "
                                   "WHERE id = %s", (tok["id"],)), 10, 0.2, "token expiry")
    since = eh.last_audit_id(db)
    st, _, body, _, _ = eh.enroll(est, work, serial, tok["token"])
    j = json.loads(body)
    assert st == 403 and j["error"] == "token_expired", (st, j)
    assert "expired" in j["detail"]
    refused(db, since, 403, "token_expired", serial)
    assert_nothing_issued(db, serial, tok["id"])


def test_token_for_another_serial(est, db, work):
    serial, other = eh.new_serial(), eh.new_serial()
    tok = eh.token_create(est, serial)
    since = eh.last_audit_id(db)
    # The CSR names another device.
    st, _, body, _, _ = eh.enroll(est, work, serial, tok["token"], cn=other)
    j = json.loads(body)
    assert st == 403 and j["error"] == "serial_mismatch", (st, j)
    assert other in j["detail"] and serial in j["detail"]
    refused(db, since, 403, "serial_mismatch", other)
    # HTTP Basic with another serial as user name, CSR right.
    since = eh.last_audit_id(db)
    _, csr = eh.make_csr(work, serial, name="basic")
    st, _, j = post_csr(est, csr, user="%s:%s" % (other, tok["token"]))
    assert st == 403 and j["error"] == "serial_mismatch", (st, j)
    refused(db, since, 403, "serial_mismatch", serial)
    assert_nothing_issued(db, serial, tok["id"])
    assert eh.device_status(db, other) is None


def test_bad_signature(est, db, work):
    serial = eh.new_serial()
    tok = eh.token_create(est, serial)
    eh.make_csr(work, serial, alg="rsa2048")
    der = bytearray(work.path("dev.csr.der").read_bytes())
    der[-1] ^= 0x01  # last byte of the RSA signature value
    since = eh.last_audit_id(db)
    st, _, j = post_csr(est, body=base64.b64encode(bytes(der)), token=tok["token"])
    assert st == 400 and j["error"] == "bad_csr", (st, j)
    assert "signature" in j["detail"].lower(), j
    refused(db, since, 400, "bad_csr")
    assert_nothing_issued(db, serial, tok["id"])


def test_weak_key(est, db, work):
    serial = eh.new_serial()
    tok = eh.token_create(est, serial)
    _, csr = eh.make_csr(work, serial, alg="rsa1024")
    since = eh.last_audit_id(db)
    st, _, j = post_csr(est, csr, token=tok["token"])
    assert st == 400 and j["error"] == "csr_policy", (st, j)
    assert "1024" in j["detail"], j
    refused(db, since, 400, "csr_policy")
    assert_nothing_issued(db, serial, tok["id"])


@pytest.mark.parametrize("garbage", [b"this is not base64 at all!!", b"QUJD\n", b""])
def test_garbage_base64(est, db, garbage):
    serial = eh.new_serial()
    tok = eh.token_create(est, serial)
    since = eh.last_audit_id(db)
    st, _, j = post_csr(est, body=garbage, token=tok["token"])
    assert st == 400 and j["error"] == "bad_csr", (st, j)
    assert j["detail"], j
    refused(db, since, 400, "bad_csr")
    assert_nothing_issued(db, serial, tok["id"])


def test_oversized_body(est, db):
    serial = eh.new_serial()
    tok = eh.token_create(est, serial)
    # Over the CSR limit (16 KiB), under the HTTP body limit: refused by intake.
    since = eh.last_audit_id(db)
    st, _, j = post_csr(est, body=b"A" * (20 * 1024), token=tok["token"])
    assert st == 413 and j["error"] == "payload_too_large", (st, j)
    refused(db, since, 413, "payload_too_large")
    # Over http_max_body_bytes: refused by the HTTP layer from Content-Length,
    # before the body is sent (with Expect: 100-continue, as curl does for big
    # bodies; without it the server's close may reset the upload first).
    st, _, resp = eh.curl(est, "POST", eh.EST + "/simpleenroll", data=b"A" * (200 * 1024),
                          headers=["Content-Type: application/pkcs10", "Expect: 100-continue",
                                   "Authorization: Bearer " + tok["token"]])
    assert st == 413 and b"payload_too_large" in resp, (st, resp)
    assert_nothing_issued(db, serial, tok["id"])


def test_wrong_content_type(est, db, work):
    serial = eh.new_serial()
    tok = eh.token_create(est, serial)
    _, csr = eh.make_csr(work, serial)
    since = eh.last_audit_id(db)
    st, _, j = post_csr(est, csr, token=tok["token"], ctype="application/x-www-form-urlencoded")
    assert st == 415 and "pkcs10" in j["detail"], (st, j)
    refused(db, since, 415, "unsupported_media_type")
    assert_nothing_issued(db, serial, tok["id"])


def test_revoked_device_cannot_enroll(est, pki, db, work):
    serial, chain, key, pem = eh.enrolled_device(est, db, work, pki)
    tok = eh.token_create(est, serial)  # e.g. a replacement planned before the theft
    st, body = eh.api(est, "POST", "/api/v1/devices/%s/revoke" % serial,
                      data={"reason": "keyCompromise"})
    assert st == 200, body
    since = eh.last_audit_id(db)
    st, _, body, _, _ = eh.enroll(est, work, serial, tok["token"], name="again")
    j = json.loads(body)
    assert st == 403 and j["error"] == "device_revoked", (st, j)
    refused(db, since, 403, "device_revoked", serial)
    assert eh.device_status(db, serial) == "revoked"
    assert certs_of(db, serial) == 1
    # And no new token can be made for it.
    since = eh.last_audit_id(db)
    st, j = eh.api(est, "POST", "/api/v1/enroll/tokens", operator="operator1",
                   data={"serial": serial})
    assert st == 403 and j["error"] == "device_revoked", (st, j)
    eh.wait_audit(db, since, "enroll_token_create_refused", serial)


def test_est_refusals_keep_the_server_healthy(est, pki, db, work):
    """After the battery above, a normal enrollment still works."""
    serial, chain, key, pem = eh.enrolled_device(est, db, work, pki)
    with h.MllpClient(est.port, h.client_context(pki, chain, key)) as c:
        ack = c.request(h.pcd01(serial, h.unique("OK"), patient=h.unique("PT")))
    assert ack.code == "AA", ack
