"""What a monitor's TLS stack sees of cmsd's sessions: the certificate chain is
tls_cert's file as configured (no root appended from the client-CA store), TLS 1.3
prefers AES-128-GCM, resumption tickets are session ids (the session stays in
cmsd, so the ticket carries no certificate), and a close_notify is answered
with one. Checked with clients we did not write: `openssl s_client` and
Python's ssl."""

import re
import subprocess

import helpers as h


def s_client_cmd(pki, port, *extra, cert="MON-0001"):
    crt, key = pki.device(cert)
    return ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername",
            "localhost", "-CAfile", str(pki.root_ca), "-cert", str(crt), "-key", str(key),
            "-verify_return_error"] + list(extra)


def s_client(pki, port, *extra):
    p = h.run(s_client_cmd(pki, port, *extra), check=False, input="", timeout=30)
    return p.stdout + p.stderr


def test_chain_is_tls_cert_as_configured(cmsd, pki):
    configured = pki.server_cert.read_text().count("BEGIN CERTIFICATE")
    out = s_client(pki, cmsd.port, "-showcerts")
    sent = out.count("-----BEGIN CERTIFICATE-----")
    assert "Verify return code: 0" in out, out[-2000:]
    assert sent == configured, "cmsd sent %d certificates, tls_cert has %d" % (sent, configured)


def test_tls13_prefers_aes128_gcm(cmsd, pki):
    cert, key = pki.device("MON-0001")
    ctx = h.client_context(pki, cert, key)
    with h.MllpClient(cmsd.port, ctx) as c:
        name, version, _ = c.sock.cipher()
    assert version == "TLSv1.3" and name == "TLS_AES_128_GCM_SHA256", (name, version)


def test_ticket_is_a_session_id(cmsd, pki, tmp_path):
    sess = tmp_path / "sess.pem"
    # s_client writes -sess_out when the ticket arrives (after the handshake); "Q" ends it
    p = subprocess.Popen(s_client_cmd(pki, cmsd.port, "-sess_out", str(sess)),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        h.wait_until(lambda: sess.exists() and "END SSL SESSION" in sess.read_text(), 20,
                     what="a session ticket from cmsd")
    finally:
        out = p.communicate("Q\n", timeout=20)[0]
    text = h.run(["openssl", "sess_id", "-in", str(sess), "-noout", "-text"]).stdout
    m = re.search(r"TLS session ticket:\n((?:\s+[0-9a-f]{4} - .*\n)+)", text)
    assert m, text
    nbytes = sum(len(re.findall(r"\b[0-9a-f]{2}\b", line.split(" - ", 1)[1][:48]))
                 for line in m.group(1).splitlines())
    # a stateless ticket holds the encrypted session with the client certificate (~1 KB)
    assert 0 < nbytes <= 64, "ticket of %d bytes: not a session id\n%s" % (nbytes, text)
    # and it resumes
    out = s_client(pki, cmsd.port, "-sess_in", str(sess))
    assert re.search(r"^Reused, TLSv1\.3", out, re.M), out[-2000:]


def test_close_notify_answered(cmsd, pki):
    cert, key = pki.device("MON-0001")
    ctx = h.client_context(pki, cert, key)
    c = h.MllpClient(cmsd.port, ctx)
    ack = c.request(h.pcd01("MON-0001", h.unique("BYE"), patient=h.unique("PT")))
    assert ack.code == "AA", ack
    raw = c.sock.unwrap()  # sends close_notify, returns once cmsd's close_notify arrived
    raw.settimeout(10)
    assert raw.recv(1) == b"", "cmsd kept the connection open after both close_notify"
    raw.close()
    h.good_client_still_served(cmsd, pki)


def _ticket(port, ctx, session=None):
    """One MLLP session (an ACKed message); returns (its new session, was it resumed)."""
    with h.MllpClient(port, ctx, session=session) as c:
        ack = c.request(h.pcd01("MON-0001", h.unique("TKT"), patient=h.unique("PT")))
        assert ack.code == "AA", ack
        return c.sock.session, c.sock.session_reused


def test_session_cache_size_bounds_resumption(cmsd_factory, pki):
    small = cmsd_factory("cmsd-cache16", tls_session_cache_size=16)
    cert, key = pki.device("MON-0001")
    ctx = h.client_context(pki, cert, key)
    first, _ = _ticket(small.port, ctx)
    assert first is not None and first.has_ticket
    _, reused = _ticket(small.port, ctx, first)
    assert reused, "the ticket did not resume while its session was in the cache"
    # 20 more sessions push the 16-session cache past that one: a full handshake, served
    for _ in range(20):
        _ticket(small.port, ctx)
    s, reused = _ticket(small.port, ctx, first)
    assert not reused, "a session beyond tls_session_cache_size still resumed"
    assert s is not None
