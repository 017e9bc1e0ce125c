"""Firmware end to end: a dev image signed with the test publisher key is
imported by one operator, refused for that operator's own approval, approved
by a second operator for one device; the device fetches its manifest,
downloads the image with an interrupted and resumed Range request (Python,
then curl -r with If-Range), verifies it with cms-fwverify and independently
with openssl pkeyutl, reports it installed, and `cmsctl firmware status` and
the registry show it."""

import base64
import hashlib
import http.client
import json

import helpers as h
from fw_helpers import *  # noqa: F401,F403 (fixtures and helpers)
from fw_helpers import (approve, audit_since, wait_audit, curl_device, device_ctx, dist_key, fw_dir,
                        fwverify, get_manifest, https_port, import_release, manifest_parts,
                        new_device, openssl_verify, report, sign_release, status,
                        unique_model, cmsctl)


def test_import_approve_fetch_resume_verify_report(fw_cmsd, pki, db):
    c = fw_cmsd
    model = unique_model()
    serial = new_device(db, model)
    rel = sign_release(model, "1.1.0", 3, size=3 * 1024 * 1024 + 12345)
    a0 = db.max_audit_id()

    # Import by operator1: verified and stored.
    out = import_release(c, pki, rel, "operator1")
    assert out["outcome"] == "imported" and out["sha256"] == rel.sha256
    assert out["length"] == len(rel.data) and out["imported_by"] == "operator:operator1"
    rid = out["id"]
    assert [e for e in audit_since(db, a0, "fw_imported") if e["actor"] == "operator:operator1"]

    # The importer may not approve (two-person rule): clear error, audited.
    p = approve(c, pki, rid, "operator1", devices=[serial], check=False)
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert "two-person" in p.stderr
    wait_audit(db, a0, "fw_approve_refused", lambda r: r["actor"] == "operator:operator1")

    # Before approval: nothing to offer.
    st, _, _ = get_manifest(c, pki, serial, "1.0.0")
    assert st == 204

    # A second operator approves.
    res = approve(c, pki, rid, "operator2", devices=[serial])
    assert res["results"] == [{"kind": "device", "name": serial, "outcome": "approved"}]
    s = status(c, pki, rid)
    assert [d["state"] for d in s["devices"] if d["serial"] == serial] == ["approved"]

    # The device asks: a manifest bound to it, signed by the distribution key.
    st, hdrs, doc = get_manifest(c, pki, serial, "1.0.0")
    assert st == 200 and hdrs["content-type"].startswith("application/json"), (st, doc)
    signed, sigs, body = manifest_parts(doc)
    _, dist_pub = dist_key()
    assert openssl_verify(dist_pub, signed, sigs[0][1]), "distribution signature (openssl)"
    pub = body["publisher"]
    assert openssl_verify(pki.path("publisher.pub"), base64.b64decode(pub["descriptor"]),
                          base64.b64decode(pub["signature"])), "publisher signature (openssl)"
    assert body["device"] == {"serial": serial, "model": model}
    assert body["installed_version"] == "1.0.0"
    assert body["target"]["version"] == "1.1.0" and body["target"]["security_counter"] == 3
    assert body["target"]["sha256"] == rel.sha256 and body["target"]["length"] == len(rel.data)
    assert body["target"]["download"] == "/fw/v1/images/" + rel.sha256
    assert body["manifest_counter"] >= 1
    mpath = fw_dir() / ("manifest-%s.json" % serial)
    mpath.write_bytes(doc)
    ok, why = fwverify(pki, mpath, serial, model, "1.0.0", last=0)
    assert ok, why

    # Download, interrupted after ~1.2 MB (Python), then resumed with curl -r + If-Range.
    conn = http.client.HTTPSConnection("localhost", https_port(c), timeout=60,
                                       context=device_ctx(pki, serial))
    conn.request("GET", body["target"]["download"])
    r = conn.getresponse()
    assert r.status == 200
    etag = r.getheader("ETag")
    assert etag == '"sha256-%s"' % rel.sha256 and r.getheader("Accept-Ranges") == "bytes"
    assert int(r.getheader("Content-Length")) == len(rel.data)
    first = r.read(1200000)
    conn.close()  # interrupted
    assert len(first) == 1200000
    rest_path = fw_dir() / ("rest-%s.bin" % serial)
    code, head = curl_device(c, pki, serial, body["target"]["download"], rest_path,
                             extra=["-r", "%d-" % len(first), "-H", "If-Range: %s" % etag])
    assert code == 206, head
    assert "content-range: bytes %d-%d/%d" % (len(first), len(rel.data) - 1,
                                              len(rel.data)) in head.lower()
    image = first + rest_path.read_bytes()
    assert hashlib.sha256(image).hexdigest() == rel.sha256
    img_path = fw_dir() / ("image-%s.bin" % serial)
    img_path.write_bytes(image)

    # The monitor-side verifier accepts manifest + image; it says what counter to keep.
    ok, why = fwverify(pki, mpath, serial, model, "1.0.0", image=img_path, last=0)
    assert ok, why
    assert "manifest_counter=%d" % body["manifest_counter"] in why

    s = status(c, pki, rid)
    assert [d["state"] for d in s["devices"] if d["serial"] == serial] == ["downloading"]

    # Installed: reported, shown in firmware status and the registry.
    st, _, ans = report(c, pki, serial, "installed", version="1.1.0", sha256=rel.sha256)
    assert st == 200 and json.loads(ans)["release_id"] == rid
    s = status(c, pki, rid)
    dev = [d for d in s["devices"] if d["serial"] == serial]
    assert dev and dev[0]["state"] == "installed" and dev[0]["firmware_version"] == "1.1.0"
    assert db.scalar("SELECT firmware_version FROM cms.devices WHERE serial = %s",
                     (serial,)) == "1.1.0"
    p = cmsctl(c, pki, "viewer1", "firmware", "status", str(rid))
    assert serial in p.stdout and "installed" in p.stdout
    lst = cmsctl(c, pki, "viewer1", "firmware", "list", "--model", model)
    assert "1.1.0" in lst.stdout

    # Now up to date: nothing more to offer.
    st, _, _ = get_manifest(c, pki, serial, "1.1.0")
    assert st == 204
    events = {e["event"] for e in audit_since(db, a0)}
    assert {"fw_imported", "fw_approve_refused", "fw_approved", "fw_manifest_issued",
            "fw_report"} <= events


def test_est_enrolled_device_end_to_end(pki, db, fw_devices, tmp_path):
    """The same path with a monitor enrolled over EST (one-time token, openssl req,
    simpleenroll): import, second-operator approval, manifest, Range-resumed
    download with curl, cms-fwverify, report, firmware status."""
    import est_helpers as est
    from fw_helpers import CREDS, start_fw_cmsd, stop_checked
    c = start_fw_cmsd(pki, db, "cmsd-fw-est", **est.est_config(pki))
    work = est.Workdir()
    try:
        model = unique_model()
        serial = est.new_serial("FWEST")
        tok = est.token_create(c, serial, model=model)
        st, _, body, key, pem = est.enroll(c, work, serial, tok["token"], name=serial)
        assert st == 200, body
        CREDS[serial] = (est.chain_file(work, pki, pem, serial), key)
        assert est.device_status(db, serial) == "active"

        rel = sign_release(model, "4.2.0", 7, size=2 * 1024 * 1024 + 77)
        rid = import_release(c, pki, rel, "operator1")["id"]
        approve(c, pki, rid, "operator2", devices=[serial])
        st, _, doc = get_manifest(c, pki, serial, "4.1.9", counter=6)
        assert st == 200, doc
        signed, sigs, mbody = manifest_parts(doc)
        assert mbody["device"]["serial"] == serial
        _, dist_pub = dist_key()
        assert openssl_verify(dist_pub, signed, sigs[0][1])
        mpath = tmp_path / "manifest.json"
        mpath.write_bytes(doc)
        url = mbody["target"]["download"]
        part1, part2 = tmp_path / "p1", tmp_path / "p2"
        code, _ = curl_device(c, pki, serial, url, part1, extra=["-r", "0-999999"])
        assert code == 206
        code, head = curl_device(c, pki, serial, url, part2,
                                 extra=["-r", "1000000-", "-H",
                                        'If-Range: "sha256-%s"' % rel.sha256])
        assert code == 206, head
        img = tmp_path / "image.bin"
        img.write_bytes(part1.read_bytes() + part2.read_bytes())
        ok, why = fwverify(pki, mpath, serial, model, "4.1.9", image=img, counter=6)
        assert ok, why
        st, _, _ = report(c, pki, serial, "installed", version="4.2.0", sha256=rel.sha256)
        assert st == 200
        s = status(c, pki, rid)
        assert [(d["serial"], d["state"]) for d in s["devices"]] == [(serial, "installed")]
    finally:
        work.cleanup()
        stop_checked(c)
