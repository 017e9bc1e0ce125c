"""Enrollment tokens through the operator API (curl + the test operator
certificates): shown once, stored only as SHA-256, listed without secrets,
revocable, role-checked, every mutation audited with the operator."""

import hashlib

import pytest

import est_helpers as eh
from est_helpers import work  # noqa: F401  (fixture)

TOKENS = "/api/v1/enroll/tokens"


@pytest.fixture(scope="module")
def est(pki, db):
    c = eh.start_est_cmsd(pki, db, "cmsd-est-tokens")
    yield c
    eh.stop_cmsd(c)


def test_create_shows_the_token_once_and_stores_its_hash(est, db):
    serial = eh.new_serial()
    since = eh.last_audit_id(db)
    tok = eh.token_create(est, serial, model="M-42", ttl_s=600, operator="operator1")
    assert tok["serial"] == serial and tok["model"] == "M-42"
    assert tok["created_by"] == "operator:operator1"
    assert tok["device_status"] == "pending"
    stored = db.query("SELECT token_sha256, expires_at - created_at FROM cms.enrollment_tokens "
                      "WHERE id = %s", (tok["id"],))[0]
    assert bytes(stored[0]) == hashlib.sha256(tok["token"].encode()).digest()
    assert 590 <= stored[1].total_seconds() <= 600
    # The plaintext appears nowhere in the database.
    dump = db.scalar("SELECT string_agg(t::text, ' ') FROM cms.enrollment_tokens t")
    audit = db.scalar("SELECT string_agg(a::text, ' ') FROM cms.audit_events a")
    assert tok["token"] not in dump and tok["token"] not in audit
    row = eh.wait_audit(db, since, "enroll_token_created", serial)
    assert row["actor"] == "operator:operator1" and row["detail"]["token_id"] == tok["id"]
    # Listed without any secret.
    st, body = eh.api(est, "GET", TOKENS + "?serial=" + serial, operator="viewer1")
    assert st == 200, body
    [t] = body["tokens"]
    assert t["id"] == tok["id"] and t["state"] == "active" and t["model"] == "M-42"
    assert "token" not in t and "token_sha256" not in t
    assert tok["token"] not in str(body)


def test_list_filters(est):
    serial = eh.new_serial()
    a = eh.token_create(est, serial)
    b = eh.token_create(est, serial)
    st, body = eh.api(est, "POST", "%s/%d/revoke" % (TOKENS, a["id"]), operator="operator2")
    assert st == 200, body
    st, body = eh.api(est, "GET", TOKENS + "?serial=%s&state=active" % serial)
    assert st == 200 and [t["id"] for t in body["tokens"]] == [b["id"]], body
    st, body = eh.api(est, "GET", TOKENS + "?serial=%s" % serial)
    assert [t["id"] for t in body["tokens"]] == [b["id"], a["id"]], body
    assert body["tokens"][1]["state"] == "revoked"
    assert body["tokens"][1]["revoked_by"] == "operator:operator2"
    st, body = eh.api(est, "GET", TOKENS + "?limit=1")
    assert st == 200 and len(body["tokens"]) == 1
    for bad in ("?state=bogus", "?limit=0", "?limit=abc", "?color=red", "?serial=a&serial=b"):
        st, body = eh.api(est, "GET", TOKENS + bad)
        assert st == 400, (bad, st, body)


def test_revoked_token_cannot_enroll(est, db, work):
    serial = eh.new_serial()
    tok = eh.token_create(est, serial)
    since = eh.last_audit_id(db)
    st, body = eh.api(est, "POST", "%s/%d/revoke" % (TOKENS, tok["id"]), operator="operator1")
    assert st == 200 and body["id"] == tok["id"] and body["serial"] == serial, body
    eh.wait_audit(db, since, "enroll_token_revoked", serial)
    st, _, resp, _, _ = eh.enroll(est, work, serial, tok["token"])
    assert st == 403 and b"token_revoked" in resp, (st, resp)
    # Twice: conflict, audited as refused.
    since = eh.last_audit_id(db)
    st, body = eh.api(est, "POST", "%s/%d/revoke" % (TOKENS, tok["id"]), operator="operator1")
    assert st == 409 and body["error"] == "conflict", body
    eh.wait_audit(db, since, "enroll_token_revoke_refused")
    st, body = eh.api(est, "POST", "%s/999999999/revoke" % TOKENS)
    assert st == 404, body
    st, body = eh.api(est, "POST", "%s/abc/revoke" % TOKENS)
    assert st == 400, body


def test_used_token_cannot_be_revoked(est, db, work):
    serial = eh.new_serial()
    tok = eh.token_create(est, serial)
    st, _, body, _, _ = eh.enroll(est, work, serial, tok["token"])
    assert st == 200, body
    st, body = eh.api(est, "POST", "%s/%d/revoke" % (TOKENS, tok["id"]))
    assert st == 409 and "used" in body["detail"], body
    st, body = eh.api(est, "GET", TOKENS + "?serial=" + serial)
    assert body["tokens"][0]["state"] == "used"
    assert body["tokens"][0]["used_fingerprint"]


def test_roles_and_authentication(est, pki, db):
    serial = eh.new_serial()
    since = eh.last_audit_id(db)
    st, body = eh.api(est, "POST", TOKENS, operator="viewer1", data={"serial": serial})
    assert st == 403, body
    row = eh.wait_audit(db, since, "operator_forbidden")
    assert row["actor"] == "operator:viewer1"
    assert eh.device_status(db, serial) is None
    # No client certificate at all.
    st, _, body = eh.curl(est, "POST", TOKENS, data={"serial": serial})
    assert st == 401, body
    st, _, body = eh.curl(est, "GET", TOKENS)
    assert st == 401, body
    # A device certificate is not an operator.
    st, _, body = eh.curl(est, "GET", TOKENS, device=pki.device("MON-0001"))
    assert st == 401, body


@pytest.mark.parametrize("data,why", [
    ({}, "serial"),
    ({"serial": 42}, "serial"),
    ({"serial": "has space"}, "serial"),
    ({"serial": "x" * 65}, "serial"),
    ({"serial": "MON-X", "ttl_s": 0}, "ttl_s"),
    ({"serial": "MON-X", "ttl_s": 3601}, "ttl_s"),
    ({"serial": "MON-X", "ttl_s": "1h"}, "ttl_s"),
    ({"serial": "MON-X", "model": ["a"]}, "model"),
    ("not json", "JSON"),
    ([1, 2], "JSON"),
])
def test_bad_requests(est, db, data, why):
    st, body = eh.api(est, "POST", TOKENS, operator="operator1", data=data)
    assert st == 400 and why in body["detail"], (st, body)
