"""Who may talk to the MLLP port: only a device CA certificate that is
valid now, not revoked, meant for client authentication, whose CN is a
registered active device. Anything else is refused at the TLS handshake or
the connection is closed before any ACK, with a log line naming the reason
and the peer; cmsd keeps serving good clients."""

import re
import ssl
import warnings

import pytest

import helpers as h

# name -> (certificate, regex the log line must match to name the reason)
CASES = {
    "no-client-cert": (None, r"(?i)(no|without|missing|did not return a?|absent).{0,30}"
                             r"cert|cert\w*.{0,20}(required|missing|absent)"),
    "rogue-ca": ("bad/rogue", r"(?i)unable to get (local )?issuer|unknown ca|untrusted|"
                              r"self.signed|issuer|unable to verify|verify"),
    "expired": ("bad/expired", r"(?i)expired"),
    "not-yet-valid": ("bad/notyet", r"(?i)not yet valid"),
    "crl-revoked": ("bad/revoked", r"(?i)revoked"),
    "server-only-eku": ("bad/server-eku", r"(?i)purpose|usage|eku|clientauth|client auth"),
    "operator-cert": ("operators/operator", r"(?i)unable to get (local )?issuer|unknown ca|"
                                            r"untrusted|self.signed|issuer|verify"),
    "unregistered": ("bad/unknown", r"(?i)(MON-9999).*(unknown|not registered|unregistered|"
                                    r"not found|no such|not in)|(unknown|not registered|"
                                    r"unregistered|not found|no such).*MON-9999"),
    "unregistered-minted": ("MON-0099", r"(?i)(MON-0099).*(unknown|not registered|unregistered|"
                                        r"not found|no such|not in)|(unknown|not registered|"
                                        r"unregistered|not found|no such).*MON-0099"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_and_logged(cmsd, pki, db, case):
    cert_name, reason_rx = CASES[case]
    since = cmsd.test_log_start
    cert_key = pki.device(cert_name) if cert_name else None
    before = db.scalar("SELECT count(*) FROM cms.messages")
    local, how = h.expect_refused(pki, cmsd.port, cert_key,
                                  h.pcd01("MON-0001", h.unique("REFUSED"),
                                          patient=h.unique("PT-REFUSED")))
    assert local is not None, "TCP connect itself failed: %s" % how
    h.assert_refusal_logged(cmsd, local, reason_rx, since)
    assert db.scalar("SELECT count(*) FROM cms.messages") == before, "a refused peer stored data"
    h.good_client_still_served(cmsd, pki)


def test_tls11_refused(cmsd, pki):
    since = cmsd.test_log_start
    cert, key = pki.device("MON-0001")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = h.client_context(pki, cert, key, min_version=ssl.TLSVersion.TLSv1_1,
                               max_version=ssl.TLSVersion.TLSv1_1, seclevel0=True)
    c = h.MllpClient(cmsd.port, ctx, handshake=False)
    with c:
        with pytest.raises((ssl.SSLError, OSError)) as ei:
            c.sock.do_handshake()
        err = str(ei.value)
        # Make sure our client did offer TLS 1.1 (else this test proves nothing).
        assert "NO_PROTOCOLS_AVAILABLE" not in err.upper(), "client could not offer TLS 1.1: %s" % err
    h.assert_refusal_logged(cmsd, c.local_port, r"(?i)version|protocol", since)
    h.good_client_still_served(cmsd, pki)


def test_tls12_accepted_tls13_preferred(cmsd, pki):
    cert, key = pki.device("MON-0001")
    ctx = h.client_context(pki, cert, key, min_version=ssl.TLSVersion.TLSv1_2,
                           max_version=ssl.TLSVersion.TLSv1_2)
    cid = h.unique("TLS12")
    with h.MllpClient(cmsd.port, ctx) as c:
        assert c.sock.version() == "TLSv1.2"
        ack = c.request(h.pcd01("MON-0001", cid, patient=h.unique("PT")))
    assert ack.code == "AA" and ack.control_id == cid, ack
    with h.device_client(pki, cmsd.port, "MON-0001") as c:
        assert c.sock.version() == "TLSv1.3"


def test_plaintext_hl7_is_not_accepted(cmsd, pki, db):
    """The CMS8000 lesson: no plaintext listener. An MLLP frame sent in the
    clear gets no ACK and the connection is closed."""
    import socket
    cid = h.unique("PLAIN")
    s = socket.create_connection(("127.0.0.1", cmsd.port), timeout=h.T_CONNECT)
    try:
        s.sendall(h.frame(h.pcd01("MON-0001", cid, patient=h.unique("PT"))))
        s.settimeout(20)
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        except socket.timeout:
            pytest.fail("plaintext connection still open after 20s")
    finally:
        s.close()
    assert b"MSA" not in data, "plaintext got an HL7 answer: %r" % data[:200]
    assert db.message_count("MON-0001", cid) == 0
    h.good_client_still_served(cmsd, pki)


def test_tls12_renegotiation_refused(cmsd, pki):
    """SSL_OP_NO_RENEGOTIATION: a TLS 1.2 client asking to renegotiate
    (openssl s_client's "R") does not get a second handshake."""
    import subprocess
    import time
    cert, key = pki.device("MON-0001")
    p = subprocess.Popen(["openssl", "s_client", "-tls1_2", "-cert", str(cert), "-key", str(key),
                          "-CAfile", str(pki.root_ca), "-servername", "localhost",
                          "-connect", "127.0.0.1:%d" % cmsd.port],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(2)  # handshake done, device check done
        p.stdin.write("R\n")
        p.stdin.flush()
        time.sleep(3)
        out = p.communicate(input="", timeout=30)[0]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert "Verify return code: 0 (ok)" in out, "the first handshake failed:\n" + out[-2000:]
    assert "RENEGOTIATING" in out, out[-2000:]
    after = out.split("RENEGOTIATING", 1)[1]
    assert "verify return:" not in after, "a second handshake happened:\n" + after
    assert re.search(r"(?i)no renegotiation|alert|error", after), after
    h.good_client_still_served(cmsd, pki)


@pytest.fixture(scope="module")
def leaf_only(pki, db):
    """An active device whose client sends its certificate alone (no device CA)."""
    pki.mint("MON-", 301, 1)
    h.device_add(db, "MON-0301", status="active")
    cert, key = pki.device("MON-0301")
    assert not cert.name.endswith(".chain.pem")
    return cert, key


def _accepted(srv, pki, device):
    cid = h.unique("ANCHOR")
    with h.device_client(pki, srv.port, device) as c:
        ack = c.request(h.pcd01("MON-0001" if device == "MON-0001" else "MON-0301", cid,
                                patient=h.unique("PT-ANCHOR")))
    assert ack.code == "AA" and ack.control_id == cid, ack


def test_the_device_ca_alone_is_a_trust_anchor(cmsd_factory, pki, leaf_only):
    """The certificates in tls_device_ca are trust anchors as they are: with the
    device CA alone (no root) its devices are accepted, whether they send it
    along or not. The chain ends at the device CA, so its signature by the root
    is not verified again on every handshake. (Identity still comes only from
    the device CA: test_device_issuer.py.)"""
    ca_only = cmsd_factory("cmsd-anchor-ca", tls_device_ca=str(pki.path("device-ca.crt")))
    _accepted(ca_only, pki, "MON-0001")  # leaf + device CA
    _accepted(ca_only, pki, leaf_only)   # leaf alone
