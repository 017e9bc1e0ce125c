"""Revocation that bites: revoking a device (or one certificate) through the
operator API closes its live MLLP and HTTPS connections within 1 s, new
handshakes and resumed TLS sessions are refused, and the published CRL
(GET /crl, /crl.pem) makes `openssl verify -crl_check` say revoked.
Clients: curl, openssl, Python ssl/http.client."""

import http.client
import socket
import ssl
import threading
import time

import pytest

import est_helpers as eh
import helpers as h
from est_helpers import work  # noqa: F401  (fixture)

CLOSE_WITHIN = 1.0


@pytest.fixture(scope="module")
def est(pki, db):
    c = eh.start_est_cmsd(pki, db, "cmsd-est-revocation")
    yield c
    eh.stop_cmsd(c)


class Streamer(threading.Thread):
    """Sends a PCD-01 and waits for its ACK, again and again, on one MLLP/TLS
    connection, until the server closes it (closed_at = monotonic time)."""

    def __init__(self, client, serial, pace=0.02):
        super().__init__(daemon=True)
        self.c, self.serial, self.pace = client, serial, pace
        self.acks = 0
        self.other = []  # non-AA answers (e.g. AE while the database was away)
        self.closed_at = None
        self.reason = None
        self.first_ack = threading.Event()
        self.stop = False

    def run(self):
        try:
            while not self.stop:
                cid = h.unique("STREAM")
                self.c.send(h.pcd01(self.serial, cid, patient="PT-STREAM"), timeout=10)
                ack = self.c.recv_ack(10)
                if ack.code == "AA":
                    self.acks += 1
                else:
                    self.other.append(ack)
                self.first_ack.set()
                time.sleep(self.pace)
        except (h.Closed, OSError) as e:
            self.closed_at = time.monotonic()
            self.reason = repr(e)


class HttpsWatcher(threading.Thread):
    """An HTTPS keep-alive connection with the device certificate, idle after
    one request; closed_at = when the server closes it."""

    def __init__(self, est, ctx):
        super().__init__(daemon=True)
        self.conn = http.client.HTTPSConnection("localhost", eh.https_port(est), context=ctx,
                                                timeout=30)
        self.conn.request("GET", "/healthz")
        r = self.conn.getresponse()
        r.read()
        assert r.status == 200, r.status
        self.closed_at = None

    def run(self):
        s = self.conn.sock
        s.settimeout(30)
        try:
            while s.recv(4096):
                pass
        except (OSError, ssl.SSLError):
            pass
        self.closed_at = time.monotonic()


def session_of(est, pki, serial, chain, key):
    """A TLS session ticket from a connection that got an ACK."""
    ctx = h.client_context(pki, chain, key)
    with h.MllpClient(est.port, ctx) as c:
        ack = c.request(h.pcd01(serial, h.unique("SESS"), patient="PT-SESS"))
        assert ack.code == "AA", ack
        sess = c.sock.session
    assert sess is not None and sess.has_ticket, "cmsd issued no session ticket"
    return ctx, sess


def assert_resumption_refused(est, ctx, sess, serial, db):
    cid = h.unique("RESUMED")
    c = h.MllpClient(est.port, ctx, session=sess, handshake=False)
    with c:
        try:
            c.sock.do_handshake()
        except OSError:
            return  # refused during the handshake
        assert c.sock.session_reused, "cmsd did not resume the TLS session"
        try:
            c.send(h.pcd01(serial, cid, patient="PT-SESS"))
            f = c.recv_frame(20)
            pytest.fail("resumed session of a revoked device got an answer: %r" % f)
        except h.Closed:
            pass
    assert db.message_count(serial, cid) == 0


def fetch_crl(est, work, name="crl"):
    st, hd, der = eh.curl(est, "GET", "/crl")
    assert st == 200 and hd["content-type"] == "application/pkix-crl", (st, hd)
    st, hd, pem = eh.curl(est, "GET", "/crl.pem")
    assert st == 200 and b"BEGIN X509 CRL" in pem, (st, pem[:100])
    dfile, pfile = work.path(name + ".der"), work.path(name + ".pem")
    dfile.write_bytes(der)
    pfile.write_bytes(pem)
    # the DER and the PEM are the same CRL
    conv = eh.openssl("crl", "-inform", "DER", "-in", dfile, "-outform", "PEM").stdout
    assert conv.strip() == pem.strip()
    return pfile


def crl_verify(pki, crl, pem):
    p = eh.openssl("verify", "-crl_check", "-CAfile", pki.device_ca_bundle, "-CRLfile", crl, pem,
                   check=False)
    return p.returncode, (p.stdout + p.stderr).decode()


def crl_number(crl):
    out = eh.openssl("crl", "-in", crl, "-noout", "-crlnumber").stdout.decode()
    return int(out.strip().split("=", 1)[1], 16)


def test_revoke_while_streaming(est, pki, db, work):
    serial, chain, key, pem = eh.enrolled_device(est, db, work, pki)
    ctx, sess = session_of(est, pki, serial, chain, key)
    rc, out = crl_verify(pki, fetch_crl(est, work, "before"), pem)
    assert rc == 0, out

    streamer = Streamer(h.MllpClient(est.port, h.client_context(pki, chain, key)), serial)
    streamer.start()
    assert streamer.first_ack.wait(20), "no ACK before the revocation"
    watcher = HttpsWatcher(est, h.client_context(pki, chain, key))
    watcher.start()
    since_log = est.log_size()
    since = eh.last_audit_id(db)

    t0 = time.monotonic()
    st, body = eh.api(est, "POST", "/api/v1/devices/%s/revoke" % serial, operator="admin1",
                      data={"reason": "keyCompromise"})
    t_answer = time.monotonic()
    assert st == 200, body
    assert body["status"] == "revoked" and body["previous_status"] == "active"
    assert body["certs_revoked"] == 1 and isinstance(body["crl_number"], int), body

    streamer.join(10)
    watcher.join(10)
    assert streamer.closed_at is not None, "MLLP connection still open after revocation"
    assert watcher.closed_at is not None, "HTTPS connection still open after revocation"
    mllp_delay, https_delay = streamer.closed_at - t0, watcher.closed_at - t0
    assert mllp_delay < CLOSE_WITHIN, "MLLP closed %.3fs after the request (API %.3fs)" % (
        mllp_delay, t_answer - t0)
    assert https_delay < CLOSE_WITHIN, "HTTPS closed %.3fs after the request" % https_delay
    est.wait_log(r"event=revocation_close device=%s" % serial, since_log, timeout=5)

    assert eh.device_status(db, serial) == "revoked"
    row = eh.wait_audit(db, since, "device_revoked", serial)
    assert row["actor"] == "operator:admin1" and row["detail"]["reason"] == "keyCompromise"

    # New handshakes and resumed sessions are refused.
    local, how = h.expect_refused(pki, est.port, (chain, key),
                                  h.pcd01(serial, h.unique("AFTER"), patient="PT-X"))
    assert local is not None, how
    assert_resumption_refused(est, ctx, sess, serial, db)
    st = None
    try:
        st, _, _ = eh.curl(est, "GET", "/healthz", device=(chain, key))
    except RuntimeError:
        pass  # closed after the handshake
    assert st is None, "revoked device got an HTTPS answer (%s)" % st

    # The published CRL says revoked (external verifier), with our number.
    crl = fetch_crl(est, work, "after")
    assert crl_number(crl) == body["crl_number"]
    rc, out = crl_verify(pki, crl, pem)
    assert rc != 0 and "certificate revoked" in out, out
    text = eh.openssl("crl", "-in", crl, "-noout", "-text").stdout.decode()
    assert "Key Compromise" in text, text
    serial_hex = eh.cert_field(pem, "-serial").split("=", 1)[1]
    assert serial_hex.upper().lstrip("0") in text.replace(":", "").upper(), text
    h.good_client_still_served(est, pki)


def test_revoke_one_certificate(est, pki, db, work):
    serial, chain, key, pem = eh.enrolled_device(est, db, work, pki)
    fp = eh.cert_fingerprint(pem)
    streamer = Streamer(h.MllpClient(est.port, h.client_context(pki, chain, key)), serial)
    streamer.start()
    assert streamer.first_ack.wait(20)
    since = eh.last_audit_id(db)
    colons = ":".join(fp[i:i + 2] for i in range(0, 64, 2)).upper()  # as openssl prints it
    t0 = time.monotonic()
    st, body = eh.api(est, "POST", "/api/v1/certs/%s/revoke" % colons,
                      data={"reason": "keyCompromise"})
    assert st == 200 and body["fingerprint"] == fp and body["serial"] == serial, body
    streamer.join(10)
    assert streamer.closed_at is not None and streamer.closed_at - t0 < CLOSE_WITHIN
    eh.wait_audit(db, since, "cert_revoked", serial)
    # The device stays registered and active; its revoked certificate is refused.
    assert eh.device_status(db, serial) == "active"
    local, how = h.expect_refused(pki, est.port, (chain, key),
                                  h.pcd01(serial, h.unique("AFTER"), patient="PT-X"))
    assert local is not None, how
    rc, out = crl_verify(pki, fetch_crl(est, work), pem)
    assert rc != 0 and "certificate revoked" in out, out
    # A new token gives it a new certificate that works.
    tok = eh.token_create(est, serial)
    st, _, resp, key2, pem2 = eh.enroll(est, work, serial, tok["token"], name="second")
    assert st == 200, resp
    chain2 = eh.chain_file(work, pki, pem2, "second")
    with h.MllpClient(est.port, h.client_context(pki, chain2, key2)) as c:
        ack = c.request(h.pcd01(serial, h.unique("NEW"), patient="PT-X"))
    assert ack.code == "AA", ack
    # Twice: conflict; unknown: 404; malformed: 400.
    st, body = eh.api(est, "POST", "/api/v1/certs/%s/revoke" % fp)
    assert st == 409, body
    st, body = eh.api(est, "POST", "/api/v1/certs/%s/revoke" % ("ab" * 32))
    assert st == 404, body
    st, body = eh.api(est, "POST", "/api/v1/certs/xyz/revoke")
    assert st == 400, body


def test_decommission(est, pki, db, work):
    serial, chain, key, pem = eh.enrolled_device(est, db, work, pki)
    streamer = Streamer(h.MllpClient(est.port, h.client_context(pki, chain, key)), serial)
    streamer.start()
    assert streamer.first_ack.wait(20)
    since = eh.last_audit_id(db)
    t0 = time.monotonic()
    st, body = eh.api(est, "POST", "/api/v1/devices/%s/decommission" % serial)
    assert st == 200 and body["status"] == "decommissioned", body
    streamer.join(10)
    assert streamer.closed_at is not None and streamer.closed_at - t0 < CLOSE_WITHIN
    row = eh.wait_audit(db, since, "device_decommissioned", serial)
    assert row["detail"]["reason"] == "cessationOfOperation"
    assert eh.device_status(db, serial) == "decommissioned"
    st, body = eh.api(est, "POST", "/api/v1/devices/%s/decommission" % serial)
    assert st == 409, body
    st, body = eh.api(est, "POST", "/api/v1/devices/%s/revoke" % serial)
    assert st == 409, body
    st, body = eh.api(est, "POST", "/api/v1/enroll/tokens", operator="operator1",
                      data={"serial": serial})
    assert st == 403 and body["error"] == "device_decommissioned", body
    rc, out = crl_verify(pki, fetch_crl(est, work), pem)
    assert rc != 0 and "certificate revoked" in out, out


def test_only_admins_revoke(est, pki, db, work):
    serial, chain, key, pem = eh.enrolled_device(est, db, work, pki)
    for who in ("viewer1", "operator1"):
        since = eh.last_audit_id(db)
        st, body = eh.api(est, "POST", "/api/v1/devices/%s/revoke" % serial, operator=who)
        assert st == 403, (who, st, body)
        row = eh.wait_audit(db, since, "operator_forbidden")
        assert row["actor"] == "operator:" + who
        st, body = eh.api(est, "POST", "/api/v1/devices/%s/decommission" % serial, operator=who)
        assert st == 403, (who, st, body)
    st, _, body = eh.curl(est, "POST", "/api/v1/devices/%s/revoke" % serial)
    assert st == 401, body
    assert eh.device_status(db, serial) == "active"
    since = eh.last_audit_id(db)
    st, body = eh.api(est, "POST", "/api/v1/devices/%s/revoke" % serial, data={"reason": "whim"})
    assert st == 400 and "reason" in body["detail"], body
    # the refusal lists what is accepted: the RFC 5280 names and the words
    for name in ("keyCompromise", "cessationOfOperation", "privilegeWithdrawn", "stolen",
                 "retired"):
        assert name in body["detail"], body
    eh.wait_audit(db, since, "device_revoke_refused", serial)
    st, body = eh.api(est, "POST", "/api/v1/devices/NO-SUCH-DEVICE/revoke")
    assert st == 404, body
    st, body = eh.api(est, "POST", "/api/v1/devices/%s/revoke" % serial, operator="admin2")
    assert st == 200, body
    st, body = eh.api(est, "POST", "/api/v1/devices/%s/revoke" % serial, operator="admin2")
    assert st == 409, body


@pytest.mark.parametrize("given,recorded", [("stolen", "keyCompromise"),
                                            ("LOST", "keyCompromise"),
                                            ("retired", "cessationOfOperation"),
                                            ("keycompromise", "keyCompromise")])
def test_reason_words(est, pki, db, work, given, recorded):
    """The words people type for a reason are recorded as their RFC 5280
    name: in the answer, the registry, the audit row and on the CRL."""
    serial, chain, key, pem = eh.enrolled_device(est, db, work, pki)
    since = eh.last_audit_id(db)
    st, body = eh.api(est, "POST", "/api/v1/devices/%s/revoke" % serial, data={"reason": given})
    assert st == 200 and body["reason"] == recorded, body
    assert db.scalar("SELECT status_reason FROM cms.devices WHERE serial = %s",
                     (serial,)) == recorded
    row = eh.wait_audit(db, since, "device_revoked", serial)
    assert row["detail"]["reason"] == recorded, row
    crl = fetch_crl(est, work, "words")
    text = eh.openssl("crl", "-in", crl, "-noout", "-text").stdout.decode()
    cert_serial = eh.cert_field(pem, "-serial").split("=")[1].upper()
    entry = text.split("Serial Number: " + cert_serial, 1)
    assert len(entry) == 2, (cert_serial, text)
    want = {"keyCompromise": "Key Compromise", "cessationOfOperation": "Cessation Of Operation"}
    assert want[recorded] in entry[1].split("Serial Number:", 1)[0], entry[1][:400]


def test_crl_reissued_when_half_its_life_passed(est, pki, db, work):
    first = crl_number(fetch_crl(est, work, "c1"))
    assert crl_number(fetch_crl(est, work, "c2")) == first  # fresh: served from the database
    db.execute("UPDATE cms.crl SET this_update = now() - interval '13 hours'")  # half of 24 h
    crl = fetch_crl(est, work, "c3")
    assert crl_number(crl) > first
    last = eh.openssl("crl", "-in", crl, "-noout", "-lastupdate").stdout.decode()
    nxt = eh.openssl("crl", "-in", crl, "-noout", "-nextupdate").stdout.decode()
    assert last and nxt
    # A revocation made behind cmsd's back (SQL) is picked up at the next GET.
    serial, chain, key, pem = eh.enrolled_device(est, db, work, pki)
    db.execute("SELECT * FROM cms.device_revoke(%s, 'keyCompromise', 'test:sql', NULL)",
               (serial,))
    rc, out = crl_verify(pki, fetch_crl(est, work, "c4"), pem)
    assert rc != 0 and "certificate revoked" in out, out


def test_recheck_after_database_reconnect(pki, db, work):
    """A revocation whose NOTIFY cmsd missed (its database connection was
    down) is caught by the re-check after the reconnect."""
    role = "cms_bb_recheck"  # a login of its own, so that we cut only this cmsd's sessions
    if not db.scalar("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)):
        db.execute("CREATE ROLE %s LOGIN IN ROLE cms_server" % role)
    c = eh.start_est_cmsd(pki, db, "cmsd-est-recheck", db_reconnect_min_ms=1500,
                          db_reconnect_max_ms=3000,
                          db_conninfo=db.pg.dsn(db.name, role))
    try:
        serial, chain, key, pem = eh.enrolled_device(c, db, work, pki)
        streamer = Streamer(h.MllpClient(c.port, h.client_context(pki, chain, key)), serial,
                            pace=0.2)
        streamer.start()
        assert streamer.first_ack.wait(20)
        since_log = c.log_size()
        assert db.scalar("SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                         (role,)) >= 2
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE usename = %s", (role,))
        h.wait_until(lambda: db.scalar("SELECT count(*) FROM pg_stat_activity "
                                       "WHERE usename = %s", (role,)) == 0,
                     5, 0.01, "cmsd's backends to exit")
        db.execute("SELECT * FROM cms.device_revoke(%s, 'keyCompromise', 'test:sql', NULL)",
                   (serial,))
        streamer.join(30)
        assert streamer.closed_at is not None, "still streaming after the reconnect"
        c.wait_log(r"event=revocation_recheck", since_log, timeout=10)
        c.wait_log(r"event=revocation_close device=%s" % serial, since_log, timeout=10)
    finally:
        eh.stop_cmsd(c)
