"""Import refusals: only an image whose descriptor carries a valid signature
by a trusted publisher key, and that matches the descriptor's SHA-256 and
length, is accepted. Each refusal has a clear reason and an audit row
(fw_import_refused); an oversized upload is refused from its Content-Length
before the body is buffered; the importer cannot approve their own release."""

import base64
import json
import subprocess
import time

import pytest

import helpers as h
from fw_helpers import *  # noqa: F401,F403
from fw_helpers import (stop_checked, approve, audit_since, wait_audit, cmsctl, fw_dir, https_port, import_release,
                        new_device, sign_bytes, sign_release, start_fw_cmsd, unique_model)


def refused(c, pki, db, rel, reason_rx, code=3):
    a0 = db.max_audit_id()
    p = import_release(c, pki, rel, "operator1", check=False)
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    import re
    assert re.search(reason_rx, p.stderr), p.stderr
    rows = wait_audit(db, a0, "fw_import_refused",
                      lambda r: r["actor"] == "operator:operator1")
    return json.loads(rows[-1]["detail"])


def test_unsigned_image_refused(fw_cmsd, pki, db):
    rel = sign_release(unique_model(), "1.0.1", 1)
    rel.sig.write_bytes(b"\0" * 64)  # not a signature by anyone
    d = refused(fw_cmsd, pki, db, rel, r"422 signature_invalid")
    assert d["error"] == "signature_invalid"


def test_signed_by_unknown_key_refused(fw_cmsd, pki, db):
    rel = sign_release(unique_model(), "1.0.1", 1, key=pki.path("rogue-publisher.key"))
    refused(fw_cmsd, pki, db, rel, r"signature_invalid.*trusted publisher")


def test_descriptor_altered_after_signing_refused(fw_cmsd, pki, db):
    rel = sign_release(unique_model(), "1.0.1", 1)
    text = rel.desc.read_bytes().replace(b'"security_counter":1', b'"security_counter":9')
    rel.desc.write_bytes(text)
    refused(fw_cmsd, pki, db, rel, r"signature_invalid")


def test_image_hash_mismatch_refused(fw_cmsd, pki, db):
    rel = sign_release(unique_model(), "1.0.1", 1, size=70000)
    data = bytearray(rel.data)
    data[1234] ^= 0x01  # same length, other bytes
    rel.image.write_bytes(bytes(data))
    d = refused(fw_cmsd, pki, db, rel, r"422 image_mismatch.*SHA-256")
    assert d["model"] == rel.model


def test_image_length_mismatch_refused(fw_cmsd, pki, db):
    rel = sign_release(unique_model(), "1.0.1", 1, size=70000)
    rel.image.write_bytes(rel.data + b"extra")  # endless data: more than signed
    refused(fw_cmsd, pki, db, rel, r"422 image_mismatch.*70005 bytes.*70000")


def test_descriptor_with_unknown_member_refused(fw_cmsd, pki, db):
    model = unique_model()
    rel = sign_release(model, "1.0.1", 1, size=5000)
    obj = json.loads(rel.desc.read_bytes())
    obj["depends"] = "other-package"  # extraneous dependencies are not a thing here
    desc, sig = sign_bytes(json.dumps(obj).encode(), pki.path("publisher.key"))
    rel.desc, rel.sig = desc, sig
    refused(fw_cmsd, pki, db, rel, r"422 descriptor_invalid.*unexpected member")


def test_bad_version_refused(fw_cmsd, pki, db):
    rel = sign_release(unique_model(), "1.0.1", 1, size=5000)
    obj = json.loads(rel.desc.read_bytes())
    obj["version"] = "1.01.0"
    desc, sig = sign_bytes(json.dumps(obj).encode(), pki.path("publisher.key"))
    rel.desc, rel.sig = desc, sig
    refused(fw_cmsd, pki, db, rel, r"descriptor_invalid.*MAJOR.MINOR.PATCH")


def test_missing_headers_refused(fw_cmsd, pki, db):
    """Through curl: an image without the signature header."""
    a0 = db.max_audit_id()
    img = fw_dir() / "plain.bin"
    img.write_bytes(b"x" * 1000)
    cert, key = pki.path("operators/operator1.crt"), pki.path("operators/operator1.key")
    p = h.run(["curl", "-sS", "--cacert", pki.root_ca, "--cert", cert, "--key", key,
               "--data-binary", "@%s" % img, "-H", "Content-Type: application/octet-stream",
               "-w", "\n%{http_code}", "https://localhost:%d/api/v1/firmware/releases"
               % https_port(fw_cmsd)], check=False)
    assert p.stdout.strip().endswith("400"), p.stdout
    assert "Fw-Signature" in p.stdout
    wait_audit(db, a0, "fw_import_refused")


def test_same_version_other_image_conflict(fw_cmsd, pki, db):
    model = unique_model()
    first = sign_release(model, "3.0.0", 1, size=5000)
    import_release(fw_cmsd, pki, first)
    again = import_release(fw_cmsd, pki, first)  # the very same: idempotent
    assert again["outcome"] == "exists"
    other = sign_release(model, "3.0.0", 1, size=6000)
    refused(fw_cmsd, pki, db, other, r"409 conflict.*exists already")


def exactly_one_row(db, a0, event, actor):
    """The one audit row of a refusal: it arrives, and no second one follows."""
    wait_audit(db, a0, event, lambda r: r["actor"] == actor)
    time.sleep(1.0)
    rows = [r for r in audit_since(db, a0) if r["actor"] == actor]
    assert [r["event"] for r in rows] == [event], rows
    return json.loads(rows[0]["detail"])


def test_viewer_cannot_import(fw_cmsd, pki, db):
    """Refused from the request's head, before the body: 403 and one
    operator_forbidden row (docs/operator-api.md), nothing imported."""
    rel = sign_release(unique_model(), "1.0.1", 1, size=5000)
    a0 = db.max_audit_id()
    p = import_release(fw_cmsd, pki, rel, "viewer1", check=False)
    assert p.returncode == 3 and "403" in p.stderr, p.stderr
    d = exactly_one_row(db, a0, "operator_forbidden", "operator:viewer1")
    assert (d["status"], d["method"], d["path"]) == (403, "POST", "/api/v1/firmware/releases")
    assert db.scalar("SELECT count(*) FROM cms.fw_releases WHERE model = %s", (rel.model,)) == 0


def test_chunked_import_refused_and_audited(fw_cmsd, pki, db):
    """A chunked upload (no Content-Length): 411 from the head and one fw_import_refused row."""
    a0 = db.max_audit_id()
    img = fw_dir() / "chunked.bin"
    img.write_bytes(b"z" * 3000)
    cert, key = pki.path("operators/operator1.crt"), pki.path("operators/operator1.key")
    p = h.run(["curl", "-sS", "--cacert", pki.root_ca, "--cert", cert, "--key", key,
               "--data-binary", "@%s" % img, "-H", "Transfer-Encoding: chunked",
               "-H", "Content-Type: application/octet-stream", "-w", "\n%{http_code}",
               "https://localhost:%d/api/v1/firmware/releases" % https_port(fw_cmsd)],
              check=False)
    assert p.stdout.strip().splitlines()[-1] == "411", p.stdout
    d = exactly_one_row(db, a0, "fw_import_refused", "operator:operator1")
    assert (d["status"], d["error"]) == (411, "length_required")


def test_importer_cannot_approve_own_release(fw_cmsd, pki, db):
    model = unique_model()
    serial = new_device(db, model)
    rel = sign_release(model, "1.0.1", 1, size=5000)
    rid = import_release(fw_cmsd, pki, rel, "operator1")["id"]
    a0 = db.max_audit_id()
    p = approve(fw_cmsd, pki, rid, "operator1", devices=[serial], check=False)
    assert p.returncode == 3 and "403 two_person_rule" in p.stderr, p.stderr
    row = wait_audit(db, a0, "fw_approve_refused")[-1]
    assert row["actor"] == "operator:operator1" and "two-person" in row["detail"]
    assert db.scalar("SELECT count(*) FROM cms.fw_approvals WHERE release_id = %s",
                     (rid,)) == 0
    # An admin role does not lift the rule either: the rule is about the person.
    assert approve(fw_cmsd, pki, rid, "operator2", devices=[serial])["results"][0][
        "outcome"] == "approved"


def test_oversized_upload_refused_before_body(pki, db, fw_devices):
    """fw_max_image_bytes: 413 from the Content-Length alone (curl gets the answer
    to its Expect: 100-continue without sending the body) and an audit row."""
    c = start_fw_cmsd(pki, db, "cmsd-fw-small", fw_max_image_bytes=100000)
    try:
        a0 = db.max_audit_id()
        rel = sign_release(unique_model(), "1.0.1", 1, size=300000)
        cert, key = pki.path("operators/operator1.crt"), pki.path("operators/operator1.key")
        d64 = base64.b64encode(rel.desc.read_bytes()).decode()
        s64 = base64.b64encode(rel.sig.read_bytes()).decode()
        p = h.run(["curl", "-sS", "--cacert", pki.root_ca, "--cert", cert, "--key", key,
                   "--data-binary", "@%s" % rel.image, "-H", "Fw-Descriptor: " + d64,
                   "-H", "Fw-Signature: " + s64, "-H", "Expect: 100-continue",
                   "-w", "\n%{http_code} %{size_upload}",
                   "https://localhost:%d/api/v1/firmware/releases" % https_port(c)],
                  check=False)
        last = p.stdout.strip().splitlines()[-1].split()
        assert last[0] == "413", p.stdout
        assert int(float(last[1])) < 300000, "the body should not have been sent: %s" % last
        d = exactly_one_row(db, a0, "fw_import_refused", "operator:operator1")
        assert (d["status"], d["error"]) == (413, "payload_too_large")
        # A device may not upload at all (large: 413 at once; small: 401); the other
        # routes keep the small limit for operators too.
        dcert, dkey = pki.device("MON-0001")
        small = fw_dir() / "small.bin"
        small.write_bytes(b"y" * 1000)
        p = h.run(["curl", "-sS", "--cacert", pki.root_ca, "--cert", dcert, "--key", dkey,
                   "--data-binary", "@%s" % small, "-w", "\n%{http_code}",
                   "https://localhost:%d/api/v1/firmware/releases" % https_port(c)],
                  check=False)
        assert p.stdout.strip().splitlines()[-1] == "401", p.stdout
        p = h.run(["curl", "-sS", "--cacert", pki.root_ca, "--cert", cert, "--key", key,
                   "--data-binary", "@%s" % rel.image, "-H", "Content-Type: application/json",
                   "-w", "\n%{http_code}",
                   "https://localhost:%d/api/v1/firmware/releases/1/approve" % https_port(c)],
                  check=False)
        assert p.stdout.strip().splitlines()[-1] == "413", p.stdout
    finally:
        stop_checked(c)
