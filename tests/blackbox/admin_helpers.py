"""Helpers for the operator API tests (test_admin_*, test_audit*, test_cmsctl*):
a cmsd per test module that accepts operator certificates (fixture
`admin_cmsd`; the modules load this file with pytest_plugins), requests with curl and the test PKI's
operator/device certificates, cmsctl runs, and waiting for audit rows.

Clients we did not write: curl, psycopg2. build/cmsctl is the operator CLI
under test.
"""

import contextlib
import json
import os
import socket
import ssl
import subprocess
import tempfile
from pathlib import Path

import pytest

import helpers as h


# ---------------------------------------------------------------------------
# a cmsd that accepts operator certificates
# ---------------------------------------------------------------------------

def tls_crl_with_operator_ca(pki):
    """A tls_crl file holding the device CA's CRL and an (empty) CRL of the
    operator CA. With tls_crl set, cmsd checks the CRL of every client
    certificate's issuer (X509_V_FLAG_CRL_CHECK): an operator certificate is
    refused ("unable to get certificate CRL") unless its CA has a CRL too."""
    op = h.RUN / "admin-operator-ca-crl.pem"
    out = h.RUN / "admin-tls-crl.pem"
    h.run(["flock", pki.dir / ".lock", "openssl", "ca", "-gencrl", "-config",
           pki.path("ca/operator-ca/ca.cnf"), "-out", op], timeout=60)
    out.write_bytes(pki.crl.read_bytes() + op.read_bytes())
    return out


def api_config(pki, db):
    cfg = h.base_config(pki, db, h.free_port(), h.free_port())
    cfg["tls_crl"] = str(tls_crl_with_operator_ca(pki))
    return cfg


def stop_checked(c):
    with contextlib.suppress(AssertionError):
        c.stop()
    rep = c.sanitizer_report()
    if rep:
        pytest.fail("sanitizer report in cmsd's log (%s):\n%s" % (c.log_path, rep),
                    pytrace=False)


@pytest.fixture(scope="module")
def _admin_cmsd(request, pki, db):
    name = "cmsd-%s" % request.module.__name__.replace("_", "-")
    c = h.Cmsd(name, api_config(pki, db))
    c.start()
    yield c
    stop_checked(c)


@pytest.fixture
def admin_cmsd(_admin_cmsd):
    """The module's cmsd on the session database (operator certificates
    accepted). Fails the test during which it died or printed a sanitizer
    report; restarted for the next test."""
    c = _admin_cmsd
    if not c.alive():
        c.start()
    since = c.log_size()
    c.test_log_start = since
    yield c
    rc = c.proc.returncode if not c.alive() else None
    rep = c.sanitizer_report(since)
    if rep:
        pytest.fail("sanitizer report in cmsd's log (%s):\n%s" % (c.log_path, rep),
                    pytrace=False)
    if rc is not None:
        pytest.fail("cmsd died during this test (rc=%s); log:\n%s"
                    % (rc, "\n".join(c.log_lines(since)[-60:])), pytrace=False)


def https_port(c):
    return int(c.cfg["https_listen"].rsplit(":", 1)[1])


def server_url(c):
    return "https://localhost:%d" % https_port(c)


def operator(pki, name):
    """(cert, key) of a test operator: admin1, admin2, operator1, operator2, viewer1."""
    return pki.path("operators/%s.crt" % name), pki.path("operators/%s.key" % name)


def curl(c, pki, method, path, cert=None, data=None, content_type="application/json",
         timeout=30):
    """One HTTPS request with curl. cert: an operator name, a (cert, key)
    pair or None (no client certificate). data: dict/list (sent as JSON),
    str/bytes (sent as is) or None. Returns (status, parsed JSON or None,
    raw body text)."""
    if isinstance(cert, str):
        cert = operator(pki, cert)
    with tempfile.TemporaryDirectory(prefix="curl-", dir=str(h.RUN)) as td:
        out = Path(td) / "body"
        cmd = ["curl", "-sS", "--max-time", str(timeout), "--cacert", str(pki.root_ca),
               "-X", method, "-o", str(out), "-w", "%{http_code}"]
        if cert:
            cmd += ["--cert", str(cert[0]), "--key", str(cert[1])]
        if data is not None:
            if isinstance(data, (dict, list)):
                data = json.dumps(data)
            dfile = Path(td) / "data"
            dfile.write_bytes(data if isinstance(data, bytes) else data.encode())
            cmd += ["--data-binary", "@%s" % dfile]
            if content_type:
                cmd += ["-H", "Content-Type: %s" % content_type]
        cmd.append(server_url(c) + path)
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout + 10)
        if p.returncode != 0 or not p.stdout.strip().isdigit():
            raise RuntimeError("curl %s %s failed (rc=%d): %s"
                               % (method, path, p.returncode, p.stderr.strip()))
        raw = out.read_text(errors="replace") if out.exists() else ""
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    return int(p.stdout.strip()), body, raw


def assert_json_error(status, body, raw, code):
    """An error answer: the status, a JSON body {"error": ..., "detail": ...}."""
    assert isinstance(body, dict), "error answer is not JSON: %r" % raw
    assert isinstance(body.get("error"), str) and body["error"], body
    assert "detail" in body, body
    return body


def cmsctl(c, pki, *args, op="admin1", flags=True, env=None, timeout=60):
    """Runs build/cmsctl with the connection given as flags (flags=True) or
    only through env. Returns the CompletedProcess (text)."""
    cmd = [str(h.CMSCTL)]
    if flags:
        crt, key = operator(pki, op)
        cmd += ["--server", server_url(c), "--cert", str(crt), "--key", str(key),
                "--cacert", str(pki.root_ca)]
    cmd += [str(a) for a in args]
    e = {k: v for k, v in os.environ.items()
         if k not in ("CMS_SERVER", "CMS_CERT", "CMS_KEY", "CMS_CACERT", "CMS_CONFIG")}
    e["HOME"] = str(h.RUN)  # no ~/.config/cmsctl.conf of the user running the tests
    e.pop("XDG_CONFIG_HOME", None)
    if env:
        e.update(env)
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, env=e)


def audit_rows(db, since_id, event=None):
    rows = db.audit_events(since_id)
    return [r for r in rows if event is None or r["event"] == event]


def wait_audit(db, since_id, pred, timeout=15, what="audit row"):
    """Waits for an audit row (id > since_id) for which pred(row) is true.
    Rows written with store_audit() are asynchronous."""
    found = []

    def look():
        for r in db.audit_events(since_id):
            if pred(r):
                found.append(r)
                return True
        return False
    try:
        h.wait_until(look, timeout, 0.1, what)
    except AssertionError:
        raise AssertionError("no %s within %ds; rows since: %s"
                             % (what, timeout, db.audit_events(since_id)))
    return found[0]


def detail(row):
    return json.loads(row["detail"]) if row["detail"] else None


def https_raw(c, pki, method, path, headers=None, cert=None, body=b""):
    """One request to c's HTTPS listener over Python ssl, written by hand (a browser's headers,
    malformed ones); cert: an operator certificate name. Returns (status, {header: value},
    body bytes)."""
    ctx = ssl.create_default_context(cafile=str(pki.root_ca))
    if cert:
        crt, key = operator(pki, cert)
        ctx.load_cert_chain(str(crt), str(key))
    port = https_port(c)
    hdrs = {"Host": "localhost:%d" % port, "Connection": "close"}
    hdrs.update(headers or {})
    if body or method == "POST":
        hdrs["Content-Length"] = str(len(body))
        hdrs.setdefault("Content-Type", "application/json")
    req = "%s %s HTTP/1.1\r\n%s\r\n" % (method, path, "".join(
        "%s: %s\r\n" % kv for kv in hdrs.items()))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            t.sendall(req.encode() + body)
            data = b""
            while True:
                chunk = t.recv(65536)
                if not chunk:
                    break
                data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    out = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        out[k.strip().lower()] = v.strip()
    return status, out, payload
