"""Helpers for the firmware tests (test_fw_*.py): a cmsd with firmware keys,
test devices of their own model, dev images signed with the test publisher
key (tools/fw-sign-dev.sh, i.e. openssl pkeyutl), cmsctl as two operators,
HTTPS as a device (Python ssl / http.client, curl) and cms-fwverify.

Clients we did not write: curl, openssl(1), Python ssl/http.client, psycopg2.
"""

import base64
import contextlib
import http.client
import itertools
import json
import os
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest

import helpers as h

ROOT = h.ROOT
FWVERIFY = h.BUILD / "cms-fwverify"
SIGN = ROOT / "tools" / "fw-sign-dev.sh"
FW_DIR = h.RUN / "fw"
DEVICE_PREFIX = "FWD-"
DEVICE_COUNT = 40
_serials = itertools.count(1)


def fw_dir():
    FW_DIR.mkdir(parents=True, exist_ok=True)
    return FW_DIR


def dist_key(name="dist"):
    """An Ed25519 distribution key pair (private mode 0600, public PEM)."""
    key = fw_dir() / ("%s.key" % name)
    pub = fw_dir() / ("%s.pub" % name)
    if not key.exists():
        old = os.umask(0o077)
        try:
            h.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key])
        finally:
            os.umask(old)
    os.chmod(key, 0o600)
    if not pub.exists():
        h.run(["openssl", "pkey", "-in", key, "-pubout", "-out", pub])
    return key, pub


def crl_with_operator_ca(pki):
    """tls_crl holding the device CA's CRL and an (empty) operator CA CRL:
    with a CRL configured, cmsd checks it for every client certificate, so
    operator certificates need their CA's CRL too."""
    out = fw_dir() / "tls-crl.pem"
    op = fw_dir() / "operator-crl.pem"
    if not op.exists():
        h.run(["flock", pki.dir / ".lock", "openssl", "ca", "-gencrl", "-config",
               pki.path("ca/operator-ca/ca.cnf"), "-out", op], timeout=60)
    out.write_bytes(pki.crl.read_bytes() + op.read_bytes())
    return out


def fw_config(pki, name, **overrides):
    key, _ = dist_key()
    cfg = {
        "fw_publisher_keys": str(pki.path("publisher.pub")),
        "fw_distribution_key": str(key),
        "fw_cache_dir": str(fw_dir() / ("cache-" + name)),
        "fw_manifest_ttl_s": 600,
        "tls_crl": str(crl_with_operator_ca(pki)),
    }
    cfg.update(overrides)
    return cfg


def start_fw_cmsd(pki, db, name, **overrides):
    cfg = h.base_config(pki, db, h.free_port(), h.free_port())
    cfg.update(fw_config(pki, name, **overrides))
    c = h.Cmsd(name, cfg)
    c.start()
    h.wait_until(lambda: _https_up(c), 30, 0.1, "cmsd HTTPS listener")
    return c


def https_port(c):
    return int(c.cfg["https_listen"].rsplit(":", 1)[1])


def _https_up(c):
    import socket
    try:
        socket.create_connection(("127.0.0.1", https_port(c)), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def fw_devices(pki):
    """Mints FWD-0001.. once per session (device CA certs, shared mint key)."""
    pki.mint(DEVICE_PREFIX, 1, DEVICE_COUNT)
    return True


@pytest.fixture(scope="session")
def fw_cmsd(pki, db, fw_devices):
    """One cmsd with firmware on for the firmware tests."""
    c = start_fw_cmsd(pki, db, "cmsd-fw")
    yield c
    with contextlib.suppress(AssertionError):
        c.stop()
    rep = c.sanitizer_report()
    if rep:
        pytest.fail("sanitizer report in %s:\n%s" % (c.log_path, rep), pytrace=False)


def unique_model():
    return "FW Test %s" % uuid.uuid4().hex[:8]


def new_device(db, model, status="active"):
    """Registers the next minted FWD- serial with model; returns the serial."""
    n = next(_serials)
    assert n <= DEVICE_COUNT, "raise DEVICE_COUNT in fw_helpers.py"
    serial = "%s%04d" % (DEVICE_PREFIX, n)
    h.device_add(db, serial, status=status, model=model)
    return serial


# ---------------------------------------------------------------------------
# Images and descriptors
# ---------------------------------------------------------------------------

class Release:
    """An image + descriptor + signature on disk."""

    def __init__(self, image, desc, sig, model, version, counter):
        self.image, self.desc, self.sig = Path(image), Path(desc), Path(sig)
        self.model, self.version, self.counter = model, version, counter

    @property
    def data(self):
        return self.image.read_bytes()

    @property
    def sha256(self):
        import hashlib
        return hashlib.sha256(self.data).hexdigest()


def make_image(size, seed=None):
    """A pseudo-random image of size bytes (deterministic per seed)."""
    import hashlib
    seed = (seed or uuid.uuid4().hex).encode()
    out = bytearray()
    block = hashlib.sha256(seed).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


def sign_release(model, version, counter, size=300000, data=None, key=None, name=None):
    """Writes an image and signs its descriptor with tools/fw-sign-dev.sh."""
    name = name or uuid.uuid4().hex[:10]
    d = fw_dir() / "rel"
    d.mkdir(exist_ok=True)
    image = d / ("%s.bin" % name)
    image.write_bytes(data if data is not None else make_image(size))
    env = dict(os.environ)
    env["FW_PUBLISHER_KEY"] = str(key or (h.RUN / "pki" / "publisher.key"))
    h.run(["bash", SIGN, image, model, version, str(counter)], cwd=ROOT, env=env)
    return Release(image, str(image) + ".desc.json", str(image) + ".sig", model, version,
                   counter)


def sign_bytes(desc_bytes, key):
    """Signs descriptor bytes with openssl pkeyutl (Ed25519); returns the path of the sig."""
    d = fw_dir() / "rel"
    d.mkdir(exist_ok=True)
    name = uuid.uuid4().hex[:10]
    desc = d / ("%s.desc.json" % name)
    desc.write_bytes(desc_bytes)
    sig = d / ("%s.sig" % name)
    h.run(["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", desc, "-out", sig])
    return desc, sig


# ---------------------------------------------------------------------------
# cmsctl as an operator
# ---------------------------------------------------------------------------

def cmsctl(c, pki, operator, *args, check=True, timeout=180):
    cert = pki.path("operators/%s.crt" % operator)
    key = pki.path("operators/%s.key" % operator)
    cmd = [h.CMSCTL, "--server", "https://127.0.0.1:%d" % https_port(c), "--cacert",
           pki.root_ca, "--cert", cert, "--key", key, "--timeout", "600"] + list(args)
    return h.run(cmd, timeout=timeout, check=check, cwd=ROOT)


def import_release(c, pki, rel, operator="operator1", check=True):
    p = cmsctl(c, pki, operator, "--json", "firmware", "import", "--image", rel.image,
               "--descriptor", rel.desc, "--signature", rel.sig, check=check)
    if not check:
        return p
    return json.loads(p.stdout)


def approve(c, pki, release_id, operator="operator2", devices=(), groups=(), check=True):
    args = ["--json", "firmware", "approve", str(release_id)]
    if devices:
        args += ["--device", ",".join(devices)]
    if groups:
        args += ["--group", ",".join(groups)]
    p = cmsctl(c, pki, operator, *args, check=check)
    return json.loads(p.stdout) if check else p


def status(c, pki, release_id, operator="viewer1"):
    p = cmsctl(c, pki, operator, "--json", "firmware", "status", str(release_id))
    return json.loads(p.stdout)


# ---------------------------------------------------------------------------
# A device over HTTPS
# ---------------------------------------------------------------------------

# Devices whose certificate is not in the test PKI (EST-enrolled): serial -> (chain, key).
CREDS = {}


def device_cert(pki, serial):
    return CREDS[serial] if serial in CREDS else pki.device(serial)


def device_ctx(pki, serial):
    cert, key = device_cert(pki, serial)
    return h.client_context(pki, cert, key)


def device_request(c, pki, serial, method, path, body=None, headers=None, timeout=60):
    """(status, headers dict (lower-case names), body bytes)."""
    conn = http.client.HTTPSConnection("localhost", https_port(c), timeout=timeout,
                                       context=device_ctx(pki, serial))
    try:
        hdrs = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def get_manifest(c, pki, serial, installed, counter=None):
    q = "/fw/v1/manifest?installed=%s" % installed
    if counter is not None:
        q += "&counter=%d" % counter
    return device_request(c, pki, serial, "GET", q)


def report(c, pki, serial, status_, version=None, sha256=None, reason=None):
    body = {"status": status_}
    if version:
        body["version"] = version
    if sha256:
        body["sha256"] = sha256
    if reason:
        body["reason"] = reason
    return device_request(c, pki, serial, "POST", "/fw/v1/report", body=body)


def curl_device(c, pki, serial, path, out, extra=()):
    """curl as the device; returns (http status, headers text)."""
    cert, key = device_cert(pki, serial)
    hdr = Path(str(out) + ".headers")
    p = h.run(["curl", "-sS", "--cacert", pki.root_ca, "--cert", cert, "--key", key,
               "-o", out, "-D", hdr, "-w", "%{http_code}"] + list(extra) +
              ["https://localhost:%d%s" % (https_port(c), path)], check=False, timeout=300)
    return int(p.stdout.strip() or 0), hdr.read_text() if hdr.exists() else ""


# ---------------------------------------------------------------------------
# cms-fwverify and openssl
# ---------------------------------------------------------------------------

def fwverify(pki, manifest_path, serial, model, installed, image=None, counter=0,
             last=0, now=None, dist_pubs=None, publisher_pubs=None, max_bytes=None):
    _, pub = dist_key()
    cmd = [FWVERIFY]
    for k in (dist_pubs or [pub]):
        cmd += ["--dist-key", k]
    for k in (publisher_pubs or [pki.path("publisher.pub")]):
        cmd += ["--publisher-key", k]
    cmd += ["--serial", serial, "--model", model, "--installed", installed,
            "--counter", str(counter), "--last-manifest-counter", str(last),
            "--manifest", manifest_path]
    if image:
        cmd += ["--image", image]
    if now is not None:
        cmd += ["--now", str(now)]
    if max_bytes is not None:
        cmd += ["--max-image-bytes", str(max_bytes)]
    p = h.run(cmd, check=False, timeout=120)
    assert p.returncode in (0, 1), "cms-fwverify failed to run: %s %s" % (p.stdout, p.stderr)
    return p.returncode == 0, p.stdout.strip()


def openssl_verify(pub, data, sig):
    """openssl pkeyutl -verify -rawin over data with sig (bytes); True when valid."""
    d = fw_dir() / "ossl"
    d.mkdir(exist_ok=True)
    name = uuid.uuid4().hex[:8]
    (d / (name + ".bin")).write_bytes(data)
    (d / (name + ".sig")).write_bytes(sig)
    p = h.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in",
               d / (name + ".bin"), "-sigfile", d / (name + ".sig")], check=False)
    return p.returncode == 0 and "Signature Verified Successfully" in p.stdout


def manifest_parts(doc):
    """(signed bytes, [(keyid, sig bytes)], signed JSON object)."""
    m = json.loads(doc)
    signed = base64.b64decode(m["signed"])
    sigs = [(s["keyid"], base64.b64decode(s["sig"])) for s in m["signatures"]]
    return signed, sigs, json.loads(signed)


def audit_since(db, since_id, event=None):
    rows = db.audit_events(since_id)
    return [r for r in rows if event is None or r["event"] == event]


class Offer:
    """A release imported by operator1, approved by operator2 for a fresh
    device of its own model, and the manifest that device got."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def offer(c, pki, db, version="2.0.0", counter=5, installed="1.0.0", size=200000,
          model=None, serial=None):
    model = model or unique_model()
    serial = serial or new_device(db, model)
    rel = sign_release(model, version, counter, size=size)
    rid = import_release(c, pki, rel, "operator1")["id"]
    approve(c, pki, rid, "operator2", devices=[serial])
    st, _, doc = get_manifest(c, pki, serial, installed)
    assert st == 200, (st, doc)
    path = fw_dir() / ("manifest-%s-%s.json" % (serial, uuid.uuid4().hex[:6]))
    path.write_bytes(doc)
    signed, sigs, body = manifest_parts(doc)
    return Offer(model=model, serial=serial, rel=rel, rid=rid, doc=doc, path=path,
                 body=body, signed=signed, sigs=sigs, installed=installed)


def write_manifest(doc_obj):
    path = fw_dir() / ("forged-%s.json" % uuid.uuid4().hex[:8])
    path.write_text(json.dumps(doc_obj))
    return path


def wait_audit(db, since_id, event, pred=None, timeout=15):
    """The audit rows named event after since_id (at least one matching pred),
    waiting for them: store_audit rows are written asynchronously."""
    def look():
        rows = [r for r in audit_since(db, since_id, event) if pred is None or pred(r)]
        return rows or None
    return h.wait_until(look, timeout, 0.1, "audit row %s" % event)


def stop_checked(c):
    """Stops a cmsd of one test and fails on a sanitizer report in its log."""
    with contextlib.suppress(AssertionError):
        c.stop()
    rep = c.sanitizer_report()
    if rep:
        pytest.fail("sanitizer report in %s:\n%s" % (c.log_path, rep), pytrace=False)
