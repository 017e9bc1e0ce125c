"""SIGHUP reloads the configuration and the PKI files, all or nothing, without dropping a
monitor.

- Rotating the server certificate: after the reload new handshakes get the new
  certificate; a session opened before keeps working; one reload_applied line, one
  config_reload audit row, cmsd_config_reloads_total{result="applied"} + 1.
- Bad input is refused and cmsd goes on exactly as before (same certificate, same log
  level, messages still acknowledged), with a reload_refused line naming why, an audit row
  and cmsd_config_reloads_total{result="refused"} + 1: a malformed configuration, a key
  file that is missing or readable by others, a key that does not match the certificate, a
  CRL from the wrong CA, a change to a key that needs a restart (refused whole: the
  reloadable change beside it is not applied either).
- log_format switches to JSON on a reload.
- A new server key (same path, new contents) also rotates the console's CSRF tokens: the
  token given before is refused after the reload, the new session's works; a reload with
  the same key keeps them.
- A SIGHUP storm (100 in a second) while a monitor sends: cmsd keeps serving, every
  message acknowledged and stored once, a few complete reloads (folded), nothing lost.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

import helpers as h

pytest.register_assert_rewrite("admin_helpers")
import admin_helpers as ah  # noqa: E402


def metric(c, name, **labels):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % c.metrics_port, timeout=10) as r:
        text = r.read().decode()
    for ln in text.splitlines():
        m = re.match(r"^(\S+?)(\{(.*)\})? (\S+)$", ln)
        if not m or ln.startswith("#") or m.group(1) != name:
            continue
        lb = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(lb.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    raise AssertionError("no %s %r" % (name, labels))


def server_cert_der(c, pki):
    """The certificate cmsd presents on a new MLLP handshake."""
    ctx = h.client_context(pki, *pki.device("MON-0001"))
    with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s, \
            ctx.wrap_socket(s, server_hostname="localhost") as t:
        return t.getpeercert(binary_form=True)


def der_of(path):
    return subprocess.run(["openssl", "x509", "-in", str(path), "-outform", "DER"],
                          capture_output=True, check=True).stdout


def new_server_cert(pki, out_dir, name):
    """A fresh server certificate for localhost from the test root CA (another key)."""
    key, csr, crt = out_dir / (name + ".key"), out_dir / (name + ".csr"), out_dir / (name + ".crt")
    ext = out_dir / (name + ".ext")
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n"
                   "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n")
    h.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", key, "-subj", "/O=CMS Dev/CN=localhost", "-out", csr])
    h.run(["openssl", "x509", "-req", "-in", csr, "-CA", pki.root_ca, "-CAkey",
           pki.path("root-ca.key"), "-set_serial", str(int(time.time() * 1000)), "-days", "30",
           "-extfile", ext, "-out", crt])
    os.chmod(key, 0o600)
    return crt, key


@pytest.fixture
def rcmsd(cmsd_factory, pki, tmp_path):
    """A cmsd whose server certificate and key are copies the test may replace, with the
    loopback metrics listener on."""
    crt, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(pki.server_cert, crt)
    shutil.copy(pki.server_key, key)
    os.chmod(key, 0o600)
    port = h.free_port()
    c = cmsd_factory("cmsd-reload", tls_cert=str(crt), tls_key=str(key),
                     metrics_listen="127.0.0.1:%d" % port, log_level="info")
    c.metrics_port = port
    c.tmp = tmp_path
    return c


def reload(c, **changes):
    """Rewrites the config with changes, SIGHUP, waits for the outcome line; returns it."""
    c.cfg.update(changes)
    h.write_config(c.cfg_path, c.cfg)
    since = c.log_size()
    c.proc.send_signal(signal.SIGHUP)
    return c.wait_log(r'event"?[=:]"?reload_(applied|refused)', since, 20, "the reload's outcome")


def still_serving(c, connect):
    with connect(c.port, "MON-0002") as cl:
        ack = cl.request(h.pcd01("MON-0002", h.unique("RL"), patient=h.unique("PT")))
        assert ack.code == "AA", ack


def test_rotate_server_certificate(rcmsd, pki, db, connect):
    c = rcmsd
    old = server_cert_der(c, pki)
    assert old == der_of(pki.server_cert)
    live = connect(c.port, "MON-0001")
    assert live.request(h.pcd01("MON-0001", h.unique("RL"), patient="PT-R")).code == "AA"
    applied0 = metric(c, "cmsd_config_reloads_total", result="applied")
    audit0 = db.max_audit_id()
    crt, key = new_server_cert(pki, c.tmp, "rotated")
    shutil.copy(crt, c.tmp / "server.crt")  # in place: same paths, new contents
    shutil.copy(key, c.tmp / "server.key")
    line = reload(c)
    assert "event=reload_applied" in line, line
    assert server_cert_der(c, pki) == der_of(crt)
    # The session opened before the reload is untouched.
    assert live.request(h.pcd01("MON-0001", h.unique("RL"), patient="PT-R")).code == "AA"
    assert metric(c, "cmsd_config_reloads_total", result="applied") == applied0 + 1
    assert metric(c, "cmsd_config_last_reload_successful") == 1
    row = ah.wait_audit(db, audit0, lambda r: r["event"] == "config_reload", what="config_reload")
    assert ah.detail(row)["result"] == "applied" and row["actor"] == "cmsd", row
    not_after = subprocess.run(["openssl", "x509", "-in", str(crt), "-noout", "-enddate"],
                               capture_output=True, text=True).stdout
    assert metric(c, "cmsd_certificate_expiry_timestamp_seconds", certificate="server") < \
        time.time() + 31 * 86400, not_after


REFUSALS = ["syntax", "missing_key", "open_key", "mismatched_key", "wrong_ca_crl",
            "restart_key"]


@pytest.mark.parametrize("case", REFUSALS)
def test_bad_reload_is_refused_and_changes_nothing(rcmsd, pki, db, connect, case):
    c = rcmsd
    before_cert = server_cert_der(c, pki)
    refused0 = metric(c, "cmsd_config_reloads_total", result="refused")
    audit0 = db.max_audit_id()
    expect = None
    if case == "syntax":
        with open(c.cfg_path, "a") as f:
            f.write("this is not a setting\n")
        since = c.log_size()
        c.proc.send_signal(signal.SIGHUP)
        line = c.wait_log(r"event=reload_(applied|refused)", since, 20, "the outcome")
        expect = "configuration"
    elif case == "missing_key":
        line = reload(c, tls_key=str(c.tmp / "nonexistent.key"))
        expect = "tls_key"
    elif case == "open_key":
        k = c.tmp / "open.key"
        shutil.copy(pki.server_key, k)
        os.chmod(k, 0o644)
        line = reload(c, tls_key=str(k))
        expect = "tls_key"
    elif case == "mismatched_key":
        _, other = new_server_cert(pki, c.tmp, "other")
        line = reload(c, tls_key=str(other))
        expect = "mismatch"
    elif case == "wrong_ca_crl":
        crl = c.tmp / "operator-ca.crl"
        h.run(["flock", pki.dir / ".lock", "openssl", "ca", "-gencrl", "-config",
               pki.path("ca/operator-ca/ca.cnf"), "-out", crl], timeout=60)
        line = reload(c, tls_crl=str(crl))
        expect = "no CRL of the device CA"
    elif case == "restart_key":
        line = reload(c, max_connections=150, log_level="debug")
        expect = "max_connections"
    assert "event=reload_refused" in line and expect in line, line
    assert "log_level" not in line.split("restart:")[-1], line  # reloadable: not the reason
    # Nothing changed: the same certificate, the same log level, messages acknowledged.
    assert server_cert_der(c, pki) == before_cert
    since = c.log_size()
    still_serving(c, connect)
    assert not any("level=debug" in ln for ln in c.log_lines(since)), "debug applied"
    assert metric(c, "cmsd_config_reloads_total", result="refused") == refused0 + 1
    assert metric(c, "cmsd_config_last_reload_successful") == 0
    row = ah.wait_audit(db, audit0, lambda r: r["event"] == "config_reload", what="audit row")
    d = ah.detail(row)
    assert d["result"] == "refused" and expect in d["reason"], d
    # And a good reload afterwards is applied again.
    c.cfg = dict(c.cfg)
    for k, v in (("tls_key", str(c.tmp / "server.key")), ("tls_crl", str(pki.crl)),
                 ("max_connections", 200), ("log_level", "info")):
        c.cfg[k] = v
    assert "event=reload_applied" in reload(c)
    assert metric(c, "cmsd_config_last_reload_successful") == 1


def test_log_format_json_on_reload(rcmsd, connect):
    c = rcmsd
    line = reload(c, log_format="json")
    assert "reload_applied" in line and "log_format" in line, line
    since = c.log_size()
    still_serving(c, connect)
    time.sleep(0.5)
    lines = [ln for ln in c.log_lines(since) if ln.strip()]
    assert lines
    for ln in lines:
        j = json.loads(ln)
        assert {"ts", "level", "event"} <= set(j), j


def test_sighup_storm(rcmsd, db, connect):
    c = rcmsd
    applied0 = metric(c, "cmsd_config_reloads_total", result="applied")
    prefix = h.unique("STORM")
    acked, errors = [], []
    stop = threading.Event()

    def sender():
        with connect(c.port, "MON-0003") as cl:
            n = 0
            while not stop.is_set():
                n += 1
                cid = "%s-%05d" % (prefix, n)
                try:
                    ack = cl.request(h.pcd01("MON-0003", cid, patient="PT-STORM"), timeout=30)
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(repr(e))
                    return
                (acked if ack.code == "AA" else errors).append(cid if ack.code == "AA" else ack)
    t = threading.Thread(target=sender)
    t.start()
    h.wait_until(lambda: len(acked) > 5, 30, 0.05, "messages flowing")
    since = c.log_size()
    for _ in range(100):
        c.proc.send_signal(signal.SIGHUP)
        time.sleep(0.01)
    time.sleep(1.5)
    stop.set()
    t.join(60)
    assert c.alive(), c.log_tail()
    assert not errors, errors[:5]
    applied = metric(c, "cmsd_config_reloads_total", result="applied") - applied0
    assert 1 <= applied < 100, applied  # folded, each one whole
    assert metric(c, "cmsd_config_last_reload_successful") == 1
    assert not any("reload_refused" in ln for ln in c.log_lines(since))
    rows = db.query("SELECT control_id, count(*) FROM cms.messages WHERE control_id LIKE %s "
                    "GROUP BY control_id", (prefix + "%",))
    assert len(rows) == len(acked) and all(n == 1 for _, n in rows), (len(rows), len(acked))
    still_serving(c, connect)


def browser_post(c, pki, token):
    """POST /api/v1/enroll/tokens as operator1 with a browser's markers (the console's
    Origin) and token; returns (status, JSON body)."""
    port = ah.https_port(c)
    body = json.dumps({"serial": h.unique("MON-CSRF"), "ttl_s": 600}).encode()
    st, _, payload = ah.https_raw(c, pki, "POST", "/api/v1/enroll/tokens", cert="operator1",
                                  body=body, headers={
                                      "Origin": "https://localhost:%d" % port,
                                      "Sec-Fetch-Site": "same-origin", "X-CSRF-Token": token})
    return st, json.loads(payload or b"null")


def test_new_server_key_rotates_console_csrf_tokens(cmsd_factory, pki, tmp_path):
    crt, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(pki.server_cert, crt)
    shutil.copy(pki.server_key, key)
    os.chmod(key, 0o600)
    c = cmsd_factory("cmsd-reload-csrf", tls_cert=str(crt), tls_key=str(key),
                     tls_crl=str(ah.tls_crl_with_operator_ca(pki)), log_level="info")

    def session_token():
        st, body, raw = ah.curl(c, pki, "GET", "/api/v1/console/session", cert="operator1")
        assert st == 200, raw
        return body["csrf_token"]

    old = session_token()
    assert browser_post(c, pki, old)[0] == 201
    # The same key file: the tokens stay.
    since = c.log_size()
    assert "event=reload_applied" in reload(c)
    assert session_token() == old
    assert browser_post(c, pki, old)[0] == 201
    # A new key in place: new tokens, the old one refused.
    new_crt, new_key = new_server_cert(pki, tmp_path, "rotated")
    shutil.copy(new_crt, crt)
    shutil.copy(new_key, key)
    assert "event=reload_applied" in reload(c)
    c.wait_log(r"event=console_csrf_rotated", since, 10, "console_csrf_rotated")
    assert sum("console_csrf_rotated" in ln for ln in c.log_lines(since)) == 1
    new = session_token()
    assert new != old
    st, body = browser_post(c, pki, old)
    assert st == 403 and body["error"] == "csrf_refused" and \
        "invalid X-CSRF-Token" in body["detail"], (st, body)
    assert browser_post(c, pki, new)[0] == 201
