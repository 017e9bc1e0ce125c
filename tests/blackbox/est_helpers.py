"""Helpers for the EST / enrollment-token / revocation tests: a cmsd with
EST on (the test PKI's device CA issues), the operator API through curl with
the test operator certificates, CSRs made by `openssl req`, EST answers read
by `openssl base64` + `openssl pkcs7 -print_certs`, and audit rows.

Clients we did not write: curl, openssl(1), Python ssl, psycopg2.
"""

import contextlib
import json
import re
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

import helpers as h

EST = "/.well-known/est"


def est_config(pki):
    """The config keys that turn EST on with the test PKI's device CA."""
    return {
        "est_ca_cert": str(pki.path("device-ca.crt")),
        "est_ca_key": str(pki.path("device-ca.key")),
        "est_ca_chain": str(pki.device_ca_bundle),
        "est_cert_days": 30,
        "enroll_token_ttl_s": 3600,
        "crl_next_update_hours": 24,
    }


def crl_with_operator_ca(pki):
    """tls_crl with the device CA's CRL and an (empty) operator CA CRL: cmsd
    turns on CRL checking for every client certificate, so an operator
    certificate needs a CRL of its CA too."""
    out = h.RUN / "est-tls-crl.pem"
    op = h.RUN / "est-operator-crl.pem"
    if not op.exists():
        h.run(["flock", pki.dir / ".lock", "openssl", "ca", "-gencrl", "-config",
               pki.path("ca/operator-ca/ca.cnf"), "-out", op], timeout=60)
    out.write_bytes(pki.crl.read_bytes() + op.read_bytes())
    return out


def start_est_cmsd(pki, db, name, **overrides):
    cfg = h.base_config(pki, db, h.free_port(), h.free_port())
    cfg.update(est_config(pki))
    cfg["tls_crl"] = str(crl_with_operator_ca(pki))
    cfg.update(overrides)
    c = h.Cmsd(name, cfg)
    c.start()
    wait_https(c)
    return c


def stop_cmsd(c):
    with contextlib.suppress(AssertionError):
        c.stop()
    rep = c.sanitizer_report()
    if rep:
        pytest.fail("sanitizer report in %s:\n%s" % (c.log_path, rep), pytrace=False)


def https_port(c):
    return int(c.cfg["https_listen"].rsplit(":", 1)[1])


def wait_https(c, timeout=h.T_START):
    def up():
        try:
            st, _, _ = curl(c, "GET", "/healthz")
            return st == 200
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
    h.wait_until(up, timeout, 0.2, "cmsd %s to serve HTTPS" % c.name)


def new_serial(prefix="EST"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10].upper())


class Workdir:
    """A temporary directory for keys, CSRs and answers of one test."""

    def __init__(self):
        self._td = tempfile.TemporaryDirectory(prefix="est-", dir=str(h.RUN))
        self.dir = Path(self._td.name)

    def path(self, name):
        return self.dir / name

    def cleanup(self):
        self._td.cleanup()


@pytest.fixture
def work():
    h.RUN.mkdir(parents=True, exist_ok=True)
    w = Workdir()
    yield w
    w.cleanup()


# ---------------------------------------------------------------------------
# curl
# ---------------------------------------------------------------------------

def curl(c, method, path, operator=None, device=None, data=None, data_file=None,
         headers=(), user=None, timeout=30):
    """One HTTPS request with curl. operator: name of a test operator
    certificate (operators/<name>.{crt,key}); device: (cert, key) paths.
    Returns (status, headers dict (lower-case names), body bytes)."""
    pki_dir = Path(c.cfg["tls_device_ca"]).parent
    with tempfile.TemporaryDirectory(prefix="curl-", dir=str(h.RUN)) as td:
        body_out = Path(td) / "body"
        hdr_out = Path(td) / "headers"
        cmd = ["curl", "-sS", "--max-time", str(timeout), "--cacert", str(pki_dir / "ca.pem"),
               "-X", method, "-o", str(body_out), "-D", str(hdr_out), "-w", "%{http_code}"]
        if operator:
            cmd += ["--cert", str(pki_dir / "operators" / (operator + ".crt")),
                    "--key", str(pki_dir / "operators" / (operator + ".key"))]
        if device:
            cmd += ["--cert", str(device[0]), "--key", str(device[1])]
        if user is not None:
            cmd += ["-u", user]
        for hd in headers:
            cmd += ["-H", hd]
        if data is not None:
            if isinstance(data, (dict, list)):
                data = json.dumps(data)
                cmd += ["-H", "Content-Type: application/json"]
            dfile = Path(td) / "data"
            dfile.write_bytes(data if isinstance(data, bytes) else data.encode())
            cmd += ["--data-binary", "@%s" % dfile]
        elif data_file is not None:
            cmd += ["--data-binary", "@%s" % data_file]
        cmd.append("https://localhost:%d%s" % (https_port(c), path))
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout + 10)
        if p.returncode != 0 or not p.stdout.strip().isdigit():
            raise RuntimeError("curl %s %s failed (rc=%d): %s" % (method, path, p.returncode,
                                                               p.stderr.strip()))
        status = int(p.stdout.strip())
        hdrs = {}
        if hdr_out.exists():
            for ln in hdr_out.read_text(errors="replace").splitlines():
                if ":" in ln:
                    k, v = ln.split(":", 1)
                    hdrs[k.strip().lower()] = v.strip()
        body = body_out.read_bytes() if body_out.exists() else b""
        return status, hdrs, body


def api(c, method, path, operator="admin1", data=None):
    """Operator API call: (status, parsed JSON body or None)."""
    st, _, body = curl(c, method, path, operator=operator, data=data)
    try:
        return st, json.loads(body) if body else None
    except ValueError:
        return st, {"raw": body.decode(errors="replace")}


def token_create(c, serial, model="Example Monitor", ttl_s=None, operator="operator1"):
    data = {"serial": serial, "model": model}
    if ttl_s is not None:
        data["ttl_s"] = ttl_s
    st, body = api(c, "POST", "/api/v1/enroll/tokens", operator=operator, data=data)
    assert st == 201, (st, body)
    assert re.fullmatch(r"[0-9a-f]{64}", body["token"]), body
    return body


# ---------------------------------------------------------------------------
# openssl
# ---------------------------------------------------------------------------

def openssl(*args, check=True, stdin=None):
    p = subprocess.run(["openssl"] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60, input=stdin)
    if check and p.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(map(str, args)),
                                                      p.stderr.decode(errors="replace")))
    return p


KEY_ARGS = {
    "ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "p384": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
    "ed25519": ["-newkey", "ed25519"],
    "rsa2048": ["-newkey", "rsa:2048"],
    "rsa1024": ["-newkey", "rsa:1024"],
}


def make_csr(work, cn, alg="ec", name="dev", key=None):
    """openssl req: a new key (or key) and a CSR for CN=cn; returns (key path,
    path of the base64 DER CSR, as RFC 7030 clients send it)."""
    keyp = work.path(name + ".key") if key is None else Path(key)
    der = work.path(name + ".csr.der")
    b64 = work.path(name + ".csr.b64")
    cnf = work.path("req.cnf")
    cnf.write_text("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n")
    args = ["req", "-new", "-config", cnf, "-subj", "/CN=%s" % cn, "-outform", "DER",
            "-out", der]
    if key is None:
        args += KEY_ARGS[alg] + ["-nodes", "-keyout", keyp]
    else:
        args += ["-key", keyp]
    openssl(*args)
    openssl("base64", "-in", der, "-out", b64)
    return keyp, b64


def certs_from_est(work, body, name="issued"):
    """An EST certs-only answer (base64 PKCS#7) -> PEM file of its certs
    (openssl base64 -d | openssl pkcs7 -print_certs)."""
    b64 = work.path(name + ".p7.b64")
    der = work.path(name + ".p7.der")
    pem = work.path(name + ".pem")
    b64.write_bytes(body)
    openssl("base64", "-d", "-in", b64, "-out", der)
    openssl("pkcs7", "-inform", "DER", "-in", der, "-print_certs", "-out", pem)
    return pem


def cert_field(pem, *what):
    return openssl("x509", "-in", pem, "-noout", *what).stdout.decode().strip()


def cert_fingerprint(pem):
    out = cert_field(pem, "-fingerprint", "-sha256")
    return out.split("=", 1)[1].replace(":", "").lower()


def enroll(c, work, serial, token, alg="ec", name="dev", basic=False, cn=None):
    """The whole client side: openssl req, curl simpleenroll, openssl pkcs7.
    Returns (status, headers, body, key path, cert pem path or None)."""
    key, csr = make_csr(work, cn or serial, alg=alg, name=name)
    headers = ["Content-Type: application/pkcs10", "Content-Transfer-Encoding: base64"]
    user = None
    if basic:
        user = "%s:%s" % (serial, token)
    else:
        headers.append("Authorization: Bearer %s" % token)
    st, hd, body = curl(c, "POST", EST + "/simpleenroll", data_file=csr, headers=headers,
                        user=user)
    pem = certs_from_est(work, body, name) if st == 200 else None
    return st, hd, body, key, pem


def chain_file(work, pki, pem, name="dev"):
    """Leaf + device CA, as a monitor presents it."""
    out = work.path(name + ".chain.pem")
    out.write_bytes(Path(pem).read_bytes() + pki.path("device-ca.crt").read_bytes())
    return out


# ---------------------------------------------------------------------------
# database views
# ---------------------------------------------------------------------------

def last_audit_id(db):
    return db.scalar("SELECT coalesce(max(id), 0) FROM cms.audit_events")


def audit_rows(db, since_id, event=None, device=None):
    sql = ("SELECT id, event, actor, device, peer, detail FROM cms.audit_events "
           "WHERE id > %s")
    args = [since_id]
    if event:
        sql += " AND event = %s"
        args.append(event)
    if device:
        sql += " AND device = %s"
        args.append(device)
    sql += " ORDER BY id"
    cols = ["id", "event", "actor", "device", "peer", "detail"]
    return [dict(zip(cols, r)) for r in db.query(sql, args)]


def wait_audit(db, since_id, event, device=None, pred=None, timeout=10):
    """Audit rows are written asynchronously: wait for one."""
    found = []

    def look():
        for r in audit_rows(db, since_id, event, device):
            if pred is None or pred(r):
                found.append(r)
                return True
        return False
    h.wait_until(look, timeout, 0.1, "audit row %s%s" % (event, " for " + device if device
                                                         else ""))
    return found[0]


def device_status(db, serial):
    return db.scalar("SELECT status FROM cms.devices WHERE serial = %s", (serial,))


def enrolled_device(c, db, work, pki, serial=None, alg="ec"):
    """Token + enrollment for a fresh serial: (serial, chain pem, key, cert pem)."""
    serial = serial or new_serial()
    tok = token_create(c, serial)
    st, _, body, key, pem = enroll(c, work, serial, tok["token"], alg=alg, name=serial)
    assert st == 200, (st, body)
    return serial, chain_file(work, pki, pem, serial), key, pem

