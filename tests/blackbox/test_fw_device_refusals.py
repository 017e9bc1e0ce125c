"""What the server refuses a device: an image not allowlisted for it (asked
by its sha256, or another device's), a rollback (an older release approved
is never offered), another model's release (by device or through a group),
a revoked device, and bad requests. Each refusal the server sees is audited."""

import json
import socket
import ssl

import pytest

import helpers as h
from fw_helpers import *  # noqa: F401,F403
from fw_helpers import (approve, audit_since, cmsctl, device_request, get_manifest,
                        import_release, manifest_parts, new_device, offer, report,
                        sign_release, status, unique_model, wait_audit)


def test_unapproved_release_by_sha256_refused(fw_cmsd, pki, db):
    model = unique_model()
    serial = new_device(db, model)
    rel = sign_release(model, "1.2.0", 1, size=5000)
    import_release(fw_cmsd, pki, rel)  # imported, never approved
    a0 = db.max_audit_id()
    st, _, body = device_request(fw_cmsd, pki, serial, "GET", "/fw/v1/images/" + rel.sha256)
    assert st == 404 and b"allowlisted" in body
    rows = wait_audit(db, a0, "fw_image_refused", lambda r: r["device"] == serial)
    assert rel.sha256 in rows[-1]["detail"]
    st, _, _ = get_manifest(fw_cmsd, pki, serial, "1.0.0")
    assert st == 204


def test_other_devices_image_refused(fw_cmsd, pki, db):
    """Mix-and-match from the server's side: B asks for the image approved only for A."""
    o = offer(fw_cmsd, pki, db)
    other = new_device(db, o.model)
    a0 = db.max_audit_id()
    st, _, _ = device_request(fw_cmsd, pki, other, "GET", o.body["target"]["download"])
    assert st == 404
    wait_audit(db, a0, "fw_image_refused", lambda r: r["device"] == other)
    st, _, _ = get_manifest(fw_cmsd, pki, other, "1.0.0")
    assert st == 204
    # Unknown hashes and malformed names are refused alike.
    st, _, _ = device_request(fw_cmsd, pki, o.serial, "GET", "/fw/v1/images/" + "0" * 64)
    assert st == 404
    st, _, _ = device_request(fw_cmsd, pki, o.serial, "GET", "/fw/v1/images/XYZ")
    assert st == 404


def test_rollback_never_offered(fw_cmsd, pki, db):
    model = unique_model()
    serial = new_device(db, model)
    ids = {}
    for version, counter in (("1.0.0", 1), ("1.5.0", 4), ("2.0.0", 4)):
        rel = sign_release(model, version, counter, size=4000)
        ids[version] = import_release(fw_cmsd, pki, rel)["id"]
        approve(fw_cmsd, pki, ids[version], devices=[serial])
    # Running 1.5.0: offered 2.0.0 (the newest), never 1.0.0.
    st, _, doc = get_manifest(fw_cmsd, pki, serial, "1.5.0")
    assert st == 200 and manifest_parts(doc)[2]["target"]["version"] == "2.0.0"
    # Running 2.0.0: the older approved releases are never offered.
    st, _, _ = get_manifest(fw_cmsd, pki, serial, "2.0.0")
    assert st == 204
    # Running something newer than everything: nothing.
    st, _, _ = get_manifest(fw_cmsd, pki, serial, "9.0.0")
    assert st == 204
    # Security counter: a device on counter 5 is never offered counter 4 firmware.
    st, _, _ = get_manifest(fw_cmsd, pki, serial, "1.0.0", counter=5)
    assert st == 204
    # ... and once it reported 2.0.0 (counter 4) installed, reporting an old version
    # does not lower the floor: 1.5.0 (counter 4) is still above 1.0.0 but 2.0.0 is the
    # newest; a release below the installed counter would never be offered.
    st, _, _ = report(fw_cmsd, pki, serial, "installed", version="2.0.0")
    assert st == 200
    rel = sign_release(model, "2.1.0", 3, size=4000)  # newer version, lower counter
    rid = import_release(fw_cmsd, pki, rel)["id"]
    approve(fw_cmsd, pki, rid, devices=[serial])
    st, _, _ = get_manifest(fw_cmsd, pki, serial, "2.0.0")
    assert st == 204, "a release with a lower security counter must not be offered"


def test_manifest_counter_strictly_increases(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db)
    counters = [o.body["manifest_counter"]]
    for _ in range(3):
        st, _, doc = get_manifest(fw_cmsd, pki, o.serial, "1.0.0")
        assert st == 200
        counters.append(manifest_parts(doc)[2]["manifest_counter"])
    assert counters == sorted(set(counters)), counters


def test_other_model_never_offered(fw_cmsd, pki, db):
    model = unique_model()
    serial = new_device(db, model)
    other_model_dev = new_device(db, unique_model())
    rel = sign_release(model, "1.1.0", 1, size=4000)
    rid = import_release(fw_cmsd, pki, rel)["id"]
    # Approving a device of another model directly is refused (wrong software), audited.
    a0 = db.max_audit_id()
    p = approve(fw_cmsd, pki, rid, devices=[other_model_dev], check=False)
    assert p.returncode == 3 and "not" in p.stderr and "model" in p.stderr, p.stderr
    wait_audit(db, a0, "fw_approve_refused")
    # Through a group holding both: only the right model is offered.
    group = "fwgrp-" + serial.lower()
    cmsctl(fw_cmsd, pki, "operator2", "group", "add", group, serial, other_model_dev)
    approve(fw_cmsd, pki, rid, groups=[group])
    st, _, doc = get_manifest(fw_cmsd, pki, serial, "1.0.0")
    assert st == 200
    st, _, _ = get_manifest(fw_cmsd, pki, other_model_dev, "1.0.0")
    assert st == 204
    st, _, _ = device_request(fw_cmsd, pki, other_model_dev, "GET",
                              "/fw/v1/images/" + rel.sha256)
    assert st == 404
    s = status(fw_cmsd, pki, rid)
    vias = {d["serial"]: d["via"] for d in s["devices"]}
    assert vias.get(serial) == "group:" + group


def test_withdrawn_approval_no_longer_offered(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db)
    a0 = db.max_audit_id()
    p = cmsctl(fw_cmsd, pki, "operator2", "--json", "firmware", "withdraw", str(o.rid))
    res = json.loads(p.stdout)["results"]
    assert res == [{"kind": "device", "name": o.serial, "outcome": "withdrawn"}]
    wait_audit(db, a0, "fw_withdrawn")
    st, _, _ = get_manifest(fw_cmsd, pki, o.serial, "1.0.0")
    assert st == 204
    st, _, _ = device_request(fw_cmsd, pki, o.serial, "GET", o.body["target"]["download"])
    assert st == 404


def test_revoked_device_refused(fw_cmsd, pki, db):
    """Revoked after its approval: the connection is refused at the device check
    (every connection, resumed or not) and audited (device_refused)."""
    o = offer(fw_cmsd, pki, db)
    db.execute("UPDATE cms.devices SET status = 'revoked' WHERE serial = %s", (o.serial,))
    a0 = db.max_audit_id()
    with pytest.raises((ConnectionError, ssl.SSLError, OSError, http_client_errors())):
        st, _, _ = get_manifest(fw_cmsd, pki, o.serial, "1.0.0")
        raise AssertionError("revoked device got an answer: %s" % st)
    wait_audit(db, a0, "device_refused", lambda r: r["device"] == o.serial)
    # The SQL refuses too (defence in depth), whatever the TLS layer did.
    with pytest.raises(Exception, match="not active"):
        db.query("SELECT * FROM cms.fw_manifest_next((SELECT id FROM cms.devices WHERE "
                 "serial = %s), '1.0.0', 1000000000000, NULL, NULL)", (o.serial,))


def http_client_errors():
    import http.client
    return http.client.HTTPException


def test_bad_requests(fw_cmsd, pki, db):
    serial = new_device(db, unique_model())
    for q in ("/fw/v1/manifest", "/fw/v1/manifest?installed=1.0", "/fw/v1/manifest?installed=x",
              "/fw/v1/manifest?installed=1.0.0&installed=2.0.0",
              "/fw/v1/manifest?installed=1.0.0&counter=-1", "/fw/v1/manifest?installed=1.0.0&x=1"):
        st, _, _ = device_request(fw_cmsd, pki, serial, "GET", q)
        assert st == 400, q
    for b in ({"status": "bogus"}, {"status": "installed"}, {"version": "1.0.0"},
              {"status": "failed", "reason": "x" * 300}, {"status": "failed", "extra": "1"}):
        st, _, _ = device_request(fw_cmsd, pki, serial, "POST", "/fw/v1/report", body=b)
        assert st == 400, b
    # Operators and anonymous peers are not devices.
    p = h.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", pki.root_ca,
               "https://localhost:%d/fw/v1/manifest?installed=1.0.0" % https_port_of(fw_cmsd)],
              check=False)
    assert p.stdout == "401"


def https_port_of(c):
    return int(c.cfg["https_listen"].rsplit(":", 1)[1])
