"""A slow or silent peer never holds resources past its timeout, and the
connection limit holds. (No performance assertions: bounds are generous.)"""

import re
import socket
import ssl
import time

import pytest

import helpers as h

HANDSHAKE_MS = 1000
IDLE_MS = 2000
MAX_CONN = 4


@pytest.fixture
def limited(cmsd_factory):
    return cmsd_factory("cmsd-limits", handshake_timeout_ms=HANDSHAKE_MS, idle_timeout_ms=IDLE_MS,
                        max_connections=MAX_CONN)


def time_until_closed(sock, limit):
    """Seconds until the peer closes sock (EOF or reset); fails after limit."""
    t0 = time.monotonic()
    sock.settimeout(0.5)
    while time.monotonic() - t0 < limit:
        try:
            if not sock.recv(4096):
                return time.monotonic() - t0
        except socket.timeout:
            continue
        except OSError:  # reset
            return time.monotonic() - t0
    pytest.fail("connection still open after %.0fs" % limit)


def client_hello(pki):
    """The first flight of a real TLS client, as bytes."""
    ctx = h.client_context(pki)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_silent_client_closed_after_handshake_timeout(limited):
    since = limited.log_size()
    s = socket.create_connection(("127.0.0.1", limited.port), timeout=h.T_CONNECT)
    port = s.getsockname()[1]
    with s:
        dt = time_until_closed(s, HANDSHAKE_MS / 1000 + 15)
    assert dt >= 0.8 * HANDSHAKE_MS / 1000, "closed after %.2fs, before the timeout" % dt
    limited.wait_log(lambda ln: ln in limited.peer_lines(port, since)
                     and ("timeout" in ln.lower() or "timed out" in ln.lower()),
                     since, 10, "a log line about the handshake timeout of this peer")


def test_stalled_handshake_closed_after_handshake_timeout(limited, pki):
    hello = client_hello(pki)
    s = socket.create_connection(("127.0.0.1", limited.port), timeout=h.T_CONNECT)
    with s:
        s.sendall(hello[:len(hello) // 2])  # half a ClientHello, then nothing
        dt = time_until_closed(s, HANDSHAKE_MS / 1000 + 15)
    assert dt >= 0.8 * HANDSHAKE_MS / 1000, "closed after %.2fs, before the timeout" % dt


def test_slow_but_complete_handshake_is_not_refused(limited, pki):
    """Control for the two tests above: a normal client in the same server works."""
    with h.device_client(pki, limited.port, "MON-0001") as c:
        ack = c.request(h.pcd01("MON-0001", h.unique("LIM"), patient=h.unique("PT")))
    assert ack.code == "AA", ack


def test_idle_authenticated_client_closed(limited, pki):
    with h.device_client(pki, limited.port, "MON-0001") as c:
        ack = c.request(h.pcd01("MON-0001", h.unique("IDLE"), patient=h.unique("PT")))
        assert ack.code == "AA", ack
        t0 = time.monotonic()
        assert c.wait_closed(IDLE_MS / 1000 + 15), "idle connection not closed"
        dt = time.monotonic() - t0
    assert dt >= 0.8 * IDLE_MS / 1000, "closed after %.2fs idle, before idle_timeout_ms" % dt


def test_active_client_outlives_idle_timeout(limited, pki):
    with h.device_client(pki, limited.port, "MON-0001") as c:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5 * IDLE_MS / 1000:
            ack = c.request(h.pcd01("MON-0001", h.unique("ACT"), patient=h.unique("PT")))
            assert ack.code == "AA", ack
            time.sleep(IDLE_MS / 1000 / 3)


def test_max_connections(limited, pki):
    conns = []
    try:
        for i in range(MAX_CONN):
            c = h.device_client(pki, limited.port, "MON-0001")
            conns.append(c)
            ack = c.request(h.pcd01("MON-0001", h.unique("MAX"), patient=h.unique("PT")))
            assert ack.code == "AA", "connection %d of %d: %r" % (i + 1, MAX_CONN, ack)
        # one more is closed
        since = limited.log_size()
        local, how = h.expect_refused(pki, limited.port, pki.device("MON-0002"),
                                      h.pcd01("MON-0002", h.unique("MAX"), patient=h.unique("PT")))
        assert local is not None, how
        h.assert_refusal_logged(limited, local, r"(?i)max_connections|too many|limit", since)
        # the ones we have still work
        for c in conns:
            ack = c.request(h.pcd01("MON-0001", h.unique("MAX"), patient=h.unique("PT")))
            assert ack.code == "AA", ack
        # freeing one makes room again
        conns.pop().close()

        def fresh_works():
            try:
                with h.device_client(pki, limited.port, "MON-0002", timeout=5) as c:
                    return c.request(h.pcd01("MON-0002", h.unique("MAX"),
                                             patient=h.unique("PT")), timeout=5).code == "AA"
            except (h.Closed, OSError):
                return False
        h.wait_until(fresh_works, 20, 0.5, "a connection to be accepted after one closed")
    finally:
        for c in conns:
            c.close()


def small_pcd01(device, cid):
    return ("MSH|^~\\&|%s^%s^L|X|CMS|H|20261115083000+0100||ORU^R01^ORU_R01|%s|P|2.6\r"
            "PID|||PT-NOREAD^^^H^MR\r"
            "OBR|1|||182777000^monitoring of patient^SCT|||20261115083000+0100\r"
            "OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.22.1.1|96|262688^MDC_DIM_PERCENT^MDC"
            "|||||R\r" % (device, device, cid))


def test_peer_that_never_reads_is_closed(cmsd_factory, pki):
    """A monitor that sends but never reads its ACKs cannot make cmsd buffer
    without bound: the connection is closed (output limit or write timeout)."""
    c = cmsd_factory("cmsd-noread", max_output_bytes=16384, write_timeout_ms=2000)
    since = c.log_size()
    cert, key = pki.device("MON-0001")
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(h.T_CONNECT)
    raw.connect(("127.0.0.1", c.port))
    local = raw.getsockname()[1]
    s = h.client_context(pki, cert, key).wrap_socket(raw, server_hostname="localhost")
    closed = None
    t0 = time.monotonic()
    with s:
        s.settimeout(2)
        n = 0
        while time.monotonic() - t0 < 120:
            try:
                s.sendall(h.frame(small_pcd01("MON-0001", "NOREAD-%d-%d" % (local, n))))
                n += 1
            except socket.timeout:
                continue  # cmsd stopped reading: keep pushing until it closes
            except (ssl.SSLError, OSError) as e:
                closed = e
                break
    assert closed is not None, "a peer that never reads was not closed in 120s (%d sent)" % n
    c.wait_log(lambda ln: ln in c.peer_lines(local, since) and re.search(
        r"(?i)output|write|not reading|slow", ln), since, 20,
        "a log line saying why the non-reading peer was closed")
    assert c.alive()
    h.good_client_still_served(c, pki)
