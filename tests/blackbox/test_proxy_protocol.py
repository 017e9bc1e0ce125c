"""PROXY protocol v2 on cmsd's listeners (proxy_protocol = v2, proxy_allow):
the header's source address is the monitor's address in logs and audit rows;
a header from an address not on the list, no header, a v1 header, a malformed
or truncated header are each refused (connection closed, a proxy_refused log
line, a tls_refused audit row naming the reason, cmsd_connections_refused_total
{reason="proxy_not_allowed"|"proxy_header"}) while everyone else is served."""

import socket
import ssl
import time

import pytest

import ha_helpers as ha
import helpers as h


@pytest.fixture
def pcmsd(cmsd_factory):
    return cmsd_factory("cmsd-proxy", proxy_protocol="v2", proxy_allow="127.0.0.1, ::1",
                        handshake_timeout_ms=2000,
                        metrics_listen="127.0.0.1:%d" % h.free_port())


def refusals(c, reason):
    return ha.metric(c, "cmsd_connections_refused_total", listener="mllp", reason=reason) or 0


def send_one(pki, c, device, header, **kw):
    with h.device_client(pki, c.port, device, proxy_header=header, **kw) as cl:
        a = cl.request(h.pcd01(device, h.unique("PX"), patient="PT-PX"))
        assert a.code == "AA", a.raw
        return cl.local_port


def test_header_source_is_the_peer_in_logs_and_audit(pcmsd, pki, db):
    since = pcmsd.log_size()
    send_one(pki, pcmsd, "MON-0001", ha.proxy_v2("192.0.2.7", 40001, dport=pcmsd.port))
    pcmsd.wait_log(r"event=device_connected device=MON-0001 peer=192\.0\.2\.7:40001", since,
                   timeout=10)
    # IPv6 sources are written [addr]:port.
    send_one(pki, pcmsd, "MON-0002", ha.proxy_v2("2001:db8::5", 8080, dst="::1",
                                                 dport=pcmsd.port))
    pcmsd.wait_log(r"peer=\[2001:db8::5\]:8080", since, timeout=10)
    # A refusal after the header is audited with the monitor's address, not the
    # proxy's: MON-0099 has a valid certificate but is not registered.
    a0 = db.max_audit_id()
    cl = h.device_client(pki, pcmsd.port, "MON-0099",
                         proxy_header=ha.proxy_v2("198.51.100.9", 5555, dport=pcmsd.port),
                         handshake=False)
    with pytest.raises((ssl.SSLError, OSError, h.Closed)):
        cl.sock.do_handshake()
        cl.request(h.pcd01("MON-0099", h.unique("PX")), timeout=10)
    cl.close()
    h.wait_until(lambda: any(e["event"] == "device_refused" and e["device"] == "MON-0099" and
                             e["peer"] == "198.51.100.9:5555"
                             for e in db.audit_events(a0)), 10, 0.1,
                 "a device_refused audit row with the header's address")


def refused(pcmsd, db, payload, why, source=None, close_after=True):
    """Sends payload (raw bytes) and expects the connection closed without TLS,
    logged, audited and counted."""
    reason = "proxy_not_allowed" if source else "proxy_header"
    before = refusals(pcmsd, reason)
    since = pcmsd.log_size()
    a0 = db.max_audit_id()
    s = socket.create_connection(("127.0.0.1", pcmsd.port), timeout=10,
                                 source_address=(source, 0) if source else None)
    try:
        if payload:
            s.sendall(payload)
        s.settimeout(10)
        t0 = time.monotonic()
        try:
            data = s.recv(4096)
        except ConnectionResetError:
            data = b""
        assert data == b"", "server answered %r" % data[:40]
        assert time.monotonic() - t0 < 8
    finally:
        s.close()
    pcmsd.wait_log(r"event=proxy_refused .*%s" % why, since, timeout=10)
    h.wait_until(lambda: any(e["event"] == "tls_refused" and "PROXY protocol" in (e["detail"] or "")
                             for e in db.audit_events(a0)), 10, 0.1, "a tls_refused audit row")
    h.wait_until(lambda: refusals(pcmsd, reason) == before + 1, 10, 0.1,
                 "cmsd_connections_refused_total{reason=%s} one more" % reason)


HELLO = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 32


def test_no_header_refused(pcmsd, db):
    refused(pcmsd, db, HELLO, "signature")


def test_v1_header_refused(pcmsd, db):
    refused(pcmsd, db, b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 2575\r\n" + HELLO, "v1")


def test_malformed_header_refused(pcmsd, db):
    bad = bytearray(ha.proxy_v2("192.0.2.7", 1, dport=pcmsd.port))
    bad[12] = 0x11  # version 1 in the binary form
    refused(pcmsd, db, bytes(bad), "version")
    bad = bytearray(ha.proxy_v2("192.0.2.7", 1, dport=pcmsd.port))
    bad[13] = 0x12  # UDP
    refused(pcmsd, db, bytes(bad), "TCP")


def test_truncated_header_refused(pcmsd, db):
    before = refusals(pcmsd, "proxy_header")
    since = pcmsd.log_size()
    s = socket.create_connection(("127.0.0.1", pcmsd.port), timeout=10)
    s.sendall(ha.proxy_v2("192.0.2.7", 1, dport=pcmsd.port)[:20])
    s.close()  # closed half-way through the header
    pcmsd.wait_log(r"event=proxy_refused .*before a complete header", since, timeout=10)
    # Or it just stops sending: refused when handshake_timeout_ms passes.
    since = pcmsd.log_size()
    s = socket.create_connection(("127.0.0.1", pcmsd.port), timeout=10)
    s.sendall(ha.proxy_v2("192.0.2.7", 1, dport=pcmsd.port)[:20])
    s.settimeout(10)
    assert s.recv(10) == b""
    s.close()
    pcmsd.wait_log(r"event=proxy_refused .*no complete header after 2000 ms", since, timeout=10)
    # Both counted as header refusals (the second not as a handshake_timeout).
    h.wait_until(lambda: refusals(pcmsd, "proxy_header") == before + 2, 10, 0.1,
                 "two proxy_header refusals counted")
    assert (ha.metric(pcmsd, "cmsd_connections_refused_total", listener="mllp",
                      reason="handshake_timeout") or 0) == 0


def test_source_not_on_allowlist_refused(pcmsd, db):
    refused(pcmsd, db, ha.proxy_v2("192.0.2.7", 1, dport=pcmsd.port), "not in proxy_allow",
            source="127.0.0.2")


def test_others_still_served(pcmsd, pki, db):
    refused(pcmsd, db, HELLO, "signature")
    send_one(pki, pcmsd, "MON-0003", ha.proxy_v2("192.0.2.8", 2, dport=pcmsd.port))


def test_proxy_allow_required_and_checked(cmsd_factory):
    for bad in ({"proxy_protocol": "v2"}, {"proxy_protocol": "v2", "proxy_allow": "10.0.0.0/33"},
                {"proxy_protocol": "v1", "proxy_allow": "127.0.0.1"}):
        c = cmsd_factory("cmsd-proxy-bad", start=False, **bad)
        c.start(wait=False)
        assert c.proc.wait(30) != 0
        assert "proxy_" in c.log_text(), c.log_text()[-500:]
