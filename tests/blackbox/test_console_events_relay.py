"""Live events across instances: two cmsd (2 workers each) on one database, as behind
HAProxy. A viewer connected to instance B sees the vitals a monitor sent to instance A
within 1 s of their ACK, exactly once, filtered by ward like B's own; A's viewers see A's
events once (A never takes its own relayed events back). While no viewer is connected
anywhere nothing is relayed (cmsd_sse_relayed_total stays 0): one instance alone, or a
fleet nobody watches, sends no NOTIFY.
"""

import json
import time

import admin_helpers as ah
import helpers as h
from test_console_events import Sse, message, metric

pytest_plugins = ["admin_helpers"]

DEVICE = "MON-0002"


def _start(pki, db, name):
    cfg = ah.api_config(pki, db)
    cfg["workers"] = "2"
    c = h.Cmsd(name, cfg)
    c.start()
    return c


def _events_for(sse, window):
    """The vitals events (their data) the stream gets within window seconds."""
    got = []
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        ev = sse.next_event(max(0.05, deadline - time.monotonic()))
        if ev is None:
            continue
        if ev["event"] == "vitals":
            got.append(json.loads(ev["data"]))
    return got


def test_viewer_on_one_instance_sees_what_another_stored(pki, db):
    a = _start(pki, db, "cmsd-relay-a")
    b = _start(pki, db, "cmsd-relay-b")
    try:
        port_a = int(a.cfg["mllp_listen"].rsplit(":", 1)[1])
        # Nobody watches: A builds no event and relays nothing.
        with h.device_client(pki, port_a, DEVICE) as m:
            for i in range(3):
                assert m.request(message(i, 70 + i)).code == "AA"
        assert metric(a, pki, "cmsd_sse_relayed_total") == 0
        assert metric(a, pki, "cmsd_sse_events_total") == 0

        on_b = Sse(b, pki)
        ccu_b = Sse(b, pki, query="?ward=CCU")
        nicu_b = Sse(b, pki, query="?ward=NICU")
        # B announced its stream; A relays from when it heard that (within ms here).
        with h.device_client(pki, port_a, DEVICE) as m:
            first = None
            deadline = time.monotonic() + 10
            n = 10
            while first is None:
                assert time.monotonic() < deadline, "A never relayed to B's viewer"
                assert m.request(message(n, 80)).code == "AA"
                n += 1
                first = on_b.next_event(0.5)
            assert first["event"] == "vitals", first
            for s_ in (on_b, ccu_b, nicu_b):  # drain what the warm-up left
                while s_.next_event(0.5) is not None:
                    pass
            on_a = Sse(a, pki)
            assert on_a.next_event(0.5) is None

            lags = []
            for i in range(5):
                ack = m.request(message(100 + i, 60 + i))
                t_ack = time.monotonic()
                assert ack.code == "AA", ack
                ev = on_b.next_event(1.0)
                lag = time.monotonic() - t_ack
                assert ev is not None and ev["event"] == "vitals", \
                    "no event on instance B within 1 s of A's ACK"
                d = json.loads(ev["data"])
                assert d["device"] == DEVICE and d["location"] == "CCU^^BED-07", d
                assert [o["value"] for o in d["observations"]
                        if o["sub_id"] == "1.7.1.147842"] == [str(60 + i)], d
                # published_us is A's (the COMMIT), not B's arrival.
                assert d["published_us"] / 1e6 <= time.time() + 0.001
                lags.append(lag)
            assert max(lags) < 1.0, lags
            assert m.request(message(200, 61).replace("CCU^^BED-07", "NICU^^BED-02")).code == "AA"

        # Exactly once everywhere: B's unfiltered stream has nothing more than those; the ward
        # streams split them; A's own stream has each once (its relayed copy is not taken back).
        extra = _events_for(on_b, 1.0)
        assert [e["location"] for e in extra] == ["NICU^^BED-02"], extra
        ccu = _events_for(ccu_b, 1.0)
        assert len(ccu) == 5 and {e["location"] for e in ccu} == {"CCU^^BED-07"}, ccu
        nicu = _events_for(nicu_b, 1.0)
        assert [e["location"] for e in nicu] == ["NICU^^BED-02"], nicu
        mine = _events_for(on_a, 1.0)
        assert len(mine) == 6, [e["location"] for e in mine]

        assert metric(a, pki, "cmsd_sse_relayed_total") >= 6
        assert metric(b, pki, "cmsd_sse_relay_received_total") >= 6
        assert metric(a, pki, "cmsd_sse_relay_dropped_total") == 0
        # B stored nothing of its own: every event its viewers saw came through the relay.
        assert metric(b, pki, "cmsd_sse_events_total") == 0
        for s_ in (on_a, on_b, ccu_b, nicu_b):
            s_.close()
        assert "sse_relay_on" in a.log_text()
    finally:
        ah.stop_checked(a)
        ah.stop_checked(b)
