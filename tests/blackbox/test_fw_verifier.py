"""cms-fwverify, the reference monitor-side verifier, against real manifests
from cmsd and forgeries of them: it refuses another device's manifest
(mix-and-match), another model (wrong software), an old manifest (rollback,
replay), an expired one (freeze), a counter that does not go up, altered
signed bytes, a signature by an unpinned key, an image with extra or missing
bytes (endless data) or other bytes, and an image larger than the device can
store. Distribution key rotation: manifests signed by two keys verify with
either pinned key."""

import base64
import json
import os
import subprocess

import helpers as h
from fw_helpers import *  # noqa: F401,F403
from fw_helpers import (stop_checked, FWVERIFY, approve, dist_key, fw_dir, fwverify, get_manifest,
                        import_release, manifest_parts, new_device, offer, openssl_verify,
                        sign_release, start_fw_cmsd, unique_model, write_manifest)


def image_file(o, data=None):
    p = fw_dir() / ("img-%s.bin" % o.serial)
    p.write_bytes(o.rel.data if data is None else data)
    return p


def verify(pki, o, image=None, **kw):
    args = dict(serial=o.serial, model=o.model, installed=o.installed)
    args.update(kw)
    path = args.pop("path", o.path)
    return fwverify(pki, path, args.pop("serial"), args.pop("model"), args.pop("installed"),
                    image=image, **args)


def test_accepts_genuine(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db)
    ok, out = verify(pki, o, image=image_file(o))
    assert ok, out
    assert out.startswith("ACCEPT: %s" % o.serial)


def test_other_devices_manifest_refused(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db)
    other = new_device(db, o.model)
    ok, out = fwverify(pki, o.path, other, o.model, "1.0.0", image=image_file(o))
    assert not ok and "mix-and-match" in out, out


def test_wrong_model_refused(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db)
    ok, out = verify(pki, o, model="Another Monitor")
    assert not ok and "wrong software" in out, out


def test_old_manifest_refused(fw_cmsd, pki, db):
    """Rollback / replay: a manifest for what the device ran before, or one whose
    counter is not above the last accepted, is refused."""
    o = offer(fw_cmsd, pki, db, version="2.0.0")
    # The device installed 2.0.0 since: the old manifest (1.0.0 -> 2.0.0) is refused.
    ok, out = verify(pki, o, installed="2.0.0")
    assert not ok and "installed version" in out, out
    # A device on 3.0.0 that is handed a manifest made for 1.0.0 -> 2.0.0 refuses it too.
    ok, out = verify(pki, o, installed="3.0.0")
    assert not ok
    # Counter: after accepting this manifest (counter n), the same n is a replay.
    n = o.body["manifest_counter"]
    ok, out = verify(pki, o, last=n)
    assert not ok and "not above the last accepted" in out, out
    ok, out = verify(pki, o, last=n + 5)  # fast-forwarded state: still refused
    assert not ok
    ok, out = verify(pki, o, last=n - 1)
    assert ok, out


def test_rollback_by_security_counter_refused(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db, counter=2)
    ok, out = verify(pki, o, counter=3)
    assert not ok and "rollback" in out, out


def test_expired_manifest_refused(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db)
    issued, expires = o.body["issued_at"], o.body["expires_at"]
    ok, out = verify(pki, o, now=expires)
    assert not ok and "expired" in out, out
    ok, out = verify(pki, o, now="2099-01-01T00:00:00Z")
    assert not ok and "expired" in out
    ok, out = verify(pki, o, now=issued)
    assert ok, out
    # The validity is the configured fw_manifest_ttl_s (600 s in these tests).
    import datetime
    f = "%Y-%m-%dT%H:%M:%SZ"
    span = (datetime.datetime.strptime(expires, f) - datetime.datetime.strptime(issued, f))
    assert span.total_seconds() == 600
    # A clock far behind the issue time is refused as well.
    ok, out = verify(pki, o, now="2000-01-01T00:00:00Z")
    assert not ok and "future" in out


def test_altered_signed_bytes_refused(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db)
    doc = json.loads(o.doc)
    body = json.loads(o.signed)
    body["target"]["length"] += 1
    doc["signed"] = base64.b64encode(json.dumps(body).encode()).decode()
    ok, out = verify(pki, o, path=write_manifest(doc))
    assert not ok and "no valid signature" in out, out
    # Re-serialising the same content (other bytes) also breaks the signature:
    # the verifier never re-serialises.
    doc = json.loads(o.doc)
    doc["signed"] = base64.b64encode(json.dumps(json.loads(o.signed), indent=1).encode()).decode()
    ok, out = verify(pki, o, path=write_manifest(doc))
    assert not ok and "no valid signature" in out


def test_unpinned_distribution_key_refused(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db)
    _, rogue = dist_key("rogue-dist")
    ok, out = verify(pki, o, dist_pubs=[rogue])
    assert not ok and "pinned distribution key" in out, out
    # A manifest signed by a rogue distribution key with a forged key id.
    key, _ = dist_key("rogue-dist")
    body = json.loads(o.signed)
    signed = json.dumps(body).encode()
    sig_path = fw_dir() / "rogue.sig"
    msg = fw_dir() / "rogue.msg"
    msg.write_bytes(signed)
    h.run(["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", msg, "-out",
           sig_path])
    doc = {"format": "cms-fw-manifest/1", "signed": base64.b64encode(signed).decode(),
           "signatures": [{"keyid": o.sigs[0][0], "alg": "ed25519",
                           "sig": base64.b64encode(sig_path.read_bytes()).decode()}]}
    ok, out = verify(pki, o, path=write_manifest(doc))
    assert not ok and "no valid signature" in out


def test_unpinned_publisher_key_refused(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db)
    ok, out = verify(pki, o, publisher_pubs=[pki.path("rogue-publisher.pub")])
    assert not ok and "not a pinned publisher key" in out, out


def test_endless_data_refused(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db)
    ok, out = verify(pki, o, image=image_file(o, o.rel.data + b"\0"))
    assert not ok and "endless data" in out, out
    ok, out = verify(pki, o, image=image_file(o, o.rel.data[:-1]))
    assert not ok and "truncated" in out, out
    # From a pipe that never ends, it reads exactly the length, then stops.
    cmd = [str(FWVERIFY), "--dist-key", str(dist_key()[1]), "--publisher-key",
           str(pki.path("publisher.pub")), "--serial", o.serial, "--model", o.model,
           "--installed", "1.0.0", "--manifest", str(o.path), "--image", "-"]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        p.stdin.write(o.rel.data)
        p.stdin.write(b"\0" * 65536)  # more than the length: never read
        p.stdin.flush()
    except BrokenPipeError:
        pass
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0 and out.startswith(b"ACCEPT"), out
    # The device's own limit.
    ok, out = verify(pki, o, max_bytes=len(o.rel.data) - 1)
    assert not ok and "exceeds the device's limit" in out, out


def test_tampered_image_refused(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db)
    data = bytearray(o.rel.data)
    data[-1] ^= 0xff
    ok, out = verify(pki, o, image=image_file(o, bytes(data)))
    assert not ok and "SHA-256" in out, out


def test_huge_manifest_refused(fw_cmsd, pki, db):
    o = offer(fw_cmsd, pki, db)
    p = fw_dir() / "huge.json"
    p.write_bytes(b" " * 70000 + o.doc)
    ok, out = verify(pki, o, path=p)
    assert not ok and "64 KiB" in out, out


def test_key_rotation_two_signatures(pki, db, fw_devices):
    """fw_distribution_key_next: every manifest carries two signatures; a device
    pinning either key accepts; /fw/v1/keys publishes both public keys."""
    key, pub = dist_key()
    nkey, npub = dist_key("dist-next")
    c = start_fw_cmsd(pki, db, "cmsd-fw-rotate", fw_distribution_key_next=str(nkey))
    try:
        o = offer(c, pki, db)
        assert len(o.sigs) == 2
        assert openssl_verify(npub, o.signed, o.sigs[1][1])
        for pins in ([pub], [npub], [npub, pub]):
            ok, out = verify(pki, o, dist_pubs=pins)
            assert ok, (pins, out)
        _, rogue = dist_key("rogue-dist")
        ok, out = verify(pki, o, dist_pubs=[rogue])
        assert not ok
        out = h.run(["curl", "-sS", "--cacert", pki.root_ca,
                     "https://localhost:%s/fw/v1/keys" % c.cfg["https_listen"].rsplit(":", 1)[1]])
        keys = json.loads(out.stdout)["distribution_keys"]
        assert [k["role"] for k in keys] == ["current", "next"]
        assert keys[1]["public_key_pem"].strip() == npub.read_text().strip()
    finally:
        stop_checked(c)
