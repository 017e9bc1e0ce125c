"""Live events (GET /api/v1/events, Server-Sent Events) with a plain client (Python ssl):

  - an event reaches an open stream within 1 s of the ACK of the message it reports
    (vitals, and an alarm's start), with the message's numerics;
  - ids increase; a client that reconnects with Last-Event-ID gets exactly the events it
    missed, and one with an id older than the ring (or of another process) gets "reset";
  - a client that stops reading is dropped once 256 KiB are unsent (log line sse_dropped,
    cmsd_sse_dropped_total) while ingest goes on (every message acknowledged, a reading
    client still served) and cmsd_sse_clients counts the open streams.
"""

import json
import socket
import ssl
import subprocess
import time

import pytest

import admin_helpers as ah
import helpers as h

pytest_plugins = ["admin_helpers"]

DEVICE = "MON-0002"


@pytest.fixture(scope="module")
def ecmsd(pki, db):
    c = h.Cmsd("cmsd-console-events", ah.api_config(pki, db))
    c.start()
    yield c
    ah.stop_checked(c)


class Sse:
    """One event stream over TLS; events() parses what has arrived."""

    def __init__(self, c, pki, cert="viewer1", last_id=None, rcvbuf=None, query=""):
        ctx = ssl.create_default_context(cafile=str(pki.root_ca))
        crt, key = ah.operator(pki, cert)
        ctx.load_cert_chain(str(crt), str(key))
        port = ah.https_port(c)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(20)
        s.connect(("127.0.0.1", port))
        self.sock = ctx.wrap_socket(s, server_hostname="localhost")
        extra = "Last-Event-ID: %s\r\n" % last_id if last_id is not None else ""
        self.sock.sendall(("GET /api/v1/events%s HTTP/1.1\r\nHost: localhost\r\n"
                           "Accept: text/event-stream\r\n%s\r\n" % (query, extra)).encode())
        self.buf = b""
        self.head = None
        self.closed = False

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except (socket.timeout, TimeoutError):
            return False
        except (ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        self.buf += data
        return True

    def next_event(self, timeout=5.0):
        """The next event as {"id", "event", "data"} (comments skipped), or None."""
        deadline = time.monotonic() + timeout
        while True:
            if self.head is None and b"\r\n\r\n" in self.buf:
                self.head, _, self.buf = self.buf.partition(b"\r\n\r\n")
                assert self.head.startswith(b"HTTP/1.1 200"), self.head
                assert b"text/event-stream" in self.head
            if self.head is not None:
                while b"\n\n" in self.buf:
                    block, _, self.buf = self.buf.partition(b"\n\n")
                    ev = {}
                    for ln in block.decode().split("\n"):
                        if ln.startswith(":") or not ln:
                            continue
                        k, _, v = ln.partition(": ")
                        ev[k] = v
                    if "event" in ev:
                        return ev
            left = deadline - time.monotonic()
            if left <= 0 or self.closed or not self._fill(left):
                if time.monotonic() >= deadline or self.closed:
                    return None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def message(n, hr):
    obx = "OBX|20|NM|147842^MDC_ECG_HEART_RATE^MDC|1.7.1.147842|%d|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R" % hr
    return h.pcd01(DEVICE, "SSE-%s-%d" % (h.unique("r"), n), extra_obx=[obx])


def metric(c, pki, name):
    st, _, raw = ah.curl(c, pki, "GET", "/metrics", cert="viewer1")
    for ln in raw.splitlines():
        if ln.startswith(name + " ") or ln.startswith(name + "{"):
            return float(ln.split()[-1])
    return None


def test_no_event_built_while_no_stream_is_open(ecmsd, pki):
    """Runs first on a fresh cmsd: messages committed while nobody watches make no event
    (no JSON built, none kept: cmsd_sse_events_total stays 0); the first stream then gets
    the next commit's event, and an id from before it gets "reset"."""
    c = ecmsd
    port = int(c.cfg["mllp_listen"].rsplit(":", 1)[1])
    assert metric(c, pki, "cmsd_sse_clients") == 0
    with h.device_client(pki, port, DEVICE) as m:
        for i in range(3):
            assert m.request(message(100 + i, 70 + i)).code == "AA"
        assert metric(c, pki, "cmsd_sse_events_total") == 0
        sse = Sse(c, pki)
        assert sse.next_event(1.0) is None
        assert m.request(message(110, 77)).code == "AA"
        ev = sse.next_event(2.0)
        assert ev is not None and ev["event"] == "vitals", ev
        assert metric(c, pki, "cmsd_sse_events_total") == 1
    old = Sse(c, pki, last_id=int(ev["id"]) - 1)  # the id before the first kept one
    got = old.next_event(2.0)
    assert got and int(got["id"]) == int(ev["id"]) and got["event"] == "vitals", got
    old.close()
    sse.close()
    # The server learns of a closed stream when it writes to it: events until it has.
    deadline = time.monotonic() + 10
    with h.device_client(pki, port, DEVICE) as m:
        n = 120
        while metric(c, pki, "cmsd_sse_clients") != 0:
            assert time.monotonic() < deadline, "closed streams still counted"
            assert m.request(message(n, 60)).code == "AA"
            n += 1
            time.sleep(0.2)


def test_event_within_a_second_of_the_ack_and_resume(ecmsd, pki):
    c = ecmsd
    port = int(c.cfg["mllp_listen"].rsplit(":", 1)[1])
    sse = Sse(c, pki)
    assert sse.next_event(1.0) is None  # live from now: nothing old
    assert metric(c, pki, "cmsd_sse_clients") == 1
    ids = []
    with h.device_client(pki, port, DEVICE) as m:
        for i in range(5):
            ack = m.request(message(i, 60 + i))
            t_ack = time.monotonic()
            assert ack.code == "AA", ack
            ev = sse.next_event(1.0)
            lag = time.monotonic() - t_ack
            assert ev is not None, "no event within 1 s of the ACK"
            assert ev["event"] == "vitals" and lag < 1.0, (ev, lag)
            d = json.loads(ev["data"])
            assert d["device"] == DEVICE
            assert {"code": "147842", "value": str(60 + i)}.items() <= \
                [o for o in d["observations"] if o["sub_id"] == "1.7.1.147842"][0].items()
            assert "patient_id" not in d
            ids.append(int(ev["id"]))
        assert ids == sorted(ids) and len(set(ids)) == 5
        # A client that drops and resumes gets exactly what it missed.
        sse.close()
        for i in range(3):
            assert m.request(message(10 + i, 90 + i)).code == "AA"
    resumed = Sse(c, pki, last_id=ids[-1])
    got = [resumed.next_event(2.0) for _ in range(3)]
    assert all(got), got
    assert [json.loads(e["data"])["observations"][-1]["value"] for e in got] == ["90", "91", "92"]
    assert [int(e["id"]) for e in got] == list(range(ids[-1] + 1, ids[-1] + 4))
    assert resumed.next_event(0.5) is None
    resumed.close()
    # An id this process never gave (older than its ring): "reset", then live.
    old = Sse(c, pki, last_id=1)
    ev = old.next_event(2.0)
    assert ev and ev["event"] == "reset", ev
    old.close()
    # Garbage in Last-Event-ID is ignored (live from now), not an error.
    g = Sse(c, pki, last_id="abc")
    assert g.next_event(0.5) is None
    g.close()


def test_ward_filter_and_publication_time(ecmsd, pki):
    """?ward=W: only the events of beds whose location starts with W (PV1-3's first
    component); every event says when the hub published it (published_us)."""
    c = ecmsd
    port = int(c.cfg["mllp_listen"].rsplit(":", 1)[1])
    ccu, nicu, every = (Sse(c, pki, query="?ward=CCU"), Sse(c, pki, query="?ward=NICU"),
                        Sse(c, pki))
    with h.device_client(pki, port, DEVICE) as m:
        assert m.request(message(100, 61)).code == "AA"  # the sample's PV1-3: CCU^^BED-07
        assert m.request(message(101, 62).replace("CCU^^BED-07", "NICU^^BED-02")).code == "AA"
    got_ccu = [ccu.next_event(2.0), ccu.next_event(0.5)]
    got_nicu = [nicu.next_event(2.0), nicu.next_event(0.5)]
    got_all = [every.next_event(2.0), every.next_event(2.0)]
    assert got_ccu[0] and got_ccu[1] is None, got_ccu
    assert json.loads(got_ccu[0]["data"])["location"] == "CCU^^BED-07"
    assert got_nicu[0] and got_nicu[1] is None, got_nicu
    assert json.loads(got_nicu[0]["data"])["location"] == "NICU^^BED-02"
    assert all(got_all) and int(got_all[0]["id"]) < int(got_all[1]["id"])
    for e in got_all:
        d = json.loads(e["data"])
        assert abs(d["published_us"] / 1e6 - time.time()) < 10, d
    for s_ in (ccu, nicu, every):
        s_.close()
    st, body, rawb = ah.curl(c, pki, "GET", "/api/v1/events?room=1", cert="viewer1")
    assert st == 400 and body["error"] == "bad_request", rawb


def test_alarm_event(ecmsd, pki):
    c = ecmsd
    sse = Sse(c, pki)
    cert, key = pki.device(DEVICE)
    port = c.cfg["mllp_listen"].rsplit(":", 1)[1]
    p = subprocess.Popen([str(h.BUILD / "cms-monitor"), "--host", "127.0.0.1", "--port", port,
                          "--ca", str(pki.root_ca), "--cert", str(cert), "--key", str(key),
                          "--quiet", "--alarms", "0.2", "--rate", "0.2", "--duration", "3"])
    try:
        ev = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ev = sse.next_event(5.0)
            if ev and ev["event"] == "alarm":
                break
        assert ev and ev["event"] == "alarm", ev
        a = json.loads(ev["data"])["alarms"][0]
        assert a["phase"] == "start" and a["priority"] in ("PH", "PM", "PL"), a
    finally:
        assert p.wait(timeout=90) == 0
        sse.close()


def test_slow_client_dropped_without_stalling_ingest(ecmsd, pki):
    c = ecmsd
    since = c.log_size()
    dropped0 = metric(c, pki, "cmsd_sse_dropped_total") or 0
    slow = Sse(c, pki, rcvbuf=4096)  # never read after the head
    fast = Sse(c, pki, cert="operator1")
    assert fast.next_event(0.3) is None
    cert, key = pki.device(DEVICE)
    port = c.cfg["mllp_listen"].rsplit(":", 1)[1]
    t0 = time.monotonic()
    p = subprocess.run([str(h.BUILD / "cms-monitor"), "--host", "127.0.0.1", "--port", port,
                        "--ca", str(pki.root_ca), "--cert", str(cert), "--key", str(key),
                        "--quiet", "--json", "--obs", "128", "--rate", "0", "--window", "16",
                        "--count", "3000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=300)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr  # every message acknowledged AA
    stats = json.loads(p.stdout)
    h.wait_until(lambda: any("event=sse_dropped" in ln for ln in c.log_lines(since)), 30, 0.2,
                 "sse_dropped log line")
    assert metric(c, pki, "cmsd_sse_dropped_total") >= dropped0 + 1
    # The reading client got events all along (it was not held up by the slow one).
    n = 0
    while fast.next_event(1.0):
        n += 1
        if n >= 50:
            break
    assert n >= 50, n
    fast.close()
    slow.close()
    # A stream's connection is not read while it streams: a client that went away is seen at
    # the next write, an event or the heartbeat (every 15 s).
    h.wait_until(lambda: metric(c, pki, "cmsd_sse_clients") == 0, 25, 0.5, "streams closed")
    print("slow-client run: 3000 messages of 128 observations in %.1f s, all AA, ACK p99 %s ms"
          % (took, stats["latency_ms"]["p99"]))
