"""Firmware configuration is checked at start-up (cmsd --check-config loads
the keys too): a distribution key readable by others, a key of the wrong
type, a missing publisher key file, a next key without a current one or equal
to it are refused with a clear message; a good configuration passes; without
keys the firmware endpoints answer 503."""

import os

import helpers as h
from fw_helpers import *  # noqa: F401,F403
from fw_helpers import dist_key, fw_config, fw_dir, start_fw_cmsd, stop_checked, device_request


def check(pki, db, name, **overrides):
    cfg = h.base_config(pki, db, h.free_port(), h.free_port())
    cfg.update(fw_config(pki, name, **overrides))
    path = h.RUN / ("%s.conf" % name)
    h.write_config(path, cfg)
    p = h.run([h.CMSD, "--check-config", path], check=False, cwd=h.ROOT)
    return p.returncode, p.stdout + p.stderr


def test_good_configuration(pki, db):
    rc, out = check(pki, db, "fwcfg-good")
    assert rc == 0, out
    assert "PRIVATE" not in out and "BEGIN" not in out


def test_bad_configurations(pki, db):
    key, pub = dist_key()
    loose = fw_dir() / "loose.key"
    loose.write_bytes(key.read_bytes())
    os.chmod(loose, 0o644)
    ec = fw_dir() / "ec-dist.key"
    if not ec.exists():
        h.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-out", ec])
    os.chmod(ec, 0o600)
    cases = [
        ({"fw_distribution_key": str(loose)}, "group/others"),
        ({"fw_distribution_key": str(ec)}, "Ed25519"),
        ({"fw_publisher_keys": "/nonexistent/publisher.pub"}, "fw_publisher_keys"),
        ({"fw_publisher_keys": str(key)}, "fw_publisher_keys"),  # a private key file
        ({"fw_distribution_key": "", "fw_distribution_key_next": str(key)}, "needs"),
        ({"fw_distribution_key_next": str(key)}, "same key"),
        ({"fw_manifest_ttl_s": 10}, "fw_manifest_ttl_s"),
    ]
    for over, msg in cases:
        rc, out = check(pki, db, "fwcfg-bad", **over)
        assert rc != 0 and msg in out, (over, out)
        assert "PRIVATE KEY" not in out


def test_not_configured_answers_503(pki, db, fw_devices):
    c = start_fw_cmsd(pki, db, "cmsd-fw-off", fw_distribution_key="", fw_publisher_keys="")
    try:
        st, _, body = device_request(c, pki, "MON-0001", "GET", "/fw/v1/manifest?installed=1.0.0")
        assert st == 503 and b"not_configured" in body
        st, _, body = device_request(c, pki, "MON-0001", "GET", "/fw/v1/images/" + "a" * 64)
        assert st == 503
    finally:
        stop_checked(c)
