"""PostgreSQL goes away mid-stream: cmsd stays up (process alive, still
accepting TLS), acknowledges nothing it has not committed, and when the
database is back ACKs resume; everything ACKed is stored exactly once and
the monitors' resends are deduplicated."""

import re
import ssl
import threading
import time

import helpers as h

DEV = "MON-0002"


class Streamer(threading.Thread):
    """A monitor: streams paced messages, reconnecting when the connection
    drops, until told to stop."""

    def __init__(self, pki, port, run_id):
        super().__init__(daemon=True)
        self.pki, self.port, self.run_id = pki, port, run_id
        self.stop_flag = threading.Event()
        self.events = []      # (monotonic time, control id, code), appended by this thread
        self.sent = {}        # control id -> first send time
        self.text = {}
        self.closes = []
        self.not_aa = []      # non-AA Acks (AE during the outage)
        self.n = 0
        self.exc = None

    def gen(self):
        while not self.stop_flag.is_set():
            cid = "%s-%05d" % (self.run_id, self.n)
            self.n += 1
            self.text[cid] = h.pcd01(DEV, cid, patient="PT-" + cid)
            yield cid, self.text[cid]

    def run(self):
        try:
            g = self.gen()
            while not self.stop_flag.is_set():
                try:
                    c = h.device_client(self.pki, self.port, DEV, timeout=10)
                except (OSError, ssl.SSLError):
                    time.sleep(0.5)
                    continue
                with c:
                    p = h.Pipeline(c, window=8,
                                   on_ack=self.on_ack)
                    p.run(g, stop=lambda pl: self.stop_flag.is_set(), deadline=600,
                          drain=False, pace=0.05)
                    for cid, t in p.sent_times.items():
                        self.sent.setdefault(cid, t)
                    if p.closed:
                        self.closes.append((time.monotonic(), p.closed))
                        time.sleep(0.5)
        except Exception as e:  # reported by the test
            self.exc = e

    def on_ack(self, cid, code, t, ack):
        self.events.append((t, cid, code))
        if code != "AA":
            self.not_aa.append(ack)

    def aa(self):
        return {cid for _, cid, code in list(self.events) if code == "AA"}


def test_db_outage_mid_stream(cmsd_factory, pg, db, pki):
    cmsd = cmsd_factory("cmsd-dbout", ingest_timeout_ms=3000, db_query_timeout_ms=3000,
                        db_reconnect_min_ms=100, db_reconnect_max_ms=1000)
    run_id = h.unique("DBO")
    s = Streamer(pki, cmsd.port, run_id)
    s.start()
    try:
        h.wait_until(lambda: len(s.aa()) >= 20, 60, what="20 AA before the outage")

        pg.stop("fast")
        t_stopped = time.monotonic()
        time.sleep(5)  # keep sending into the outage
        assert cmsd.alive(), "cmsd exited when PostgreSQL stopped:\n" + cmsd.log_tail()
        # still accepts TLS (the TLS handshake completes; what follows may wait)
        cert, key = pki.device("MON-0003")
        with h.MllpClient(cmsd.port, h.client_context(pki, cert, key), timeout=20) as probe:
            assert probe.sock.version() in ("TLSv1.3", "TLSv1.2")
        time.sleep(1)
        t_start0 = time.monotonic()
        pg.start()
        t_started = time.monotonic()

        def resumed():
            return any(t > t_started and code == "AA" for t, cid, code in list(s.events))
        h.wait_until(resumed, 90, 0.2, "AA after PostgreSQL came back")
        # and new messages (sent after the restart) are acknowledged too
        n_after = s.n
        h.wait_until(lambda: any(int(cid.rsplit("-", 1)[1]) > n_after
                                 for cid in s.aa() if cid.startswith(run_id)), 60, 0.2,
                     "AA for a message sent after PostgreSQL came back")
    finally:
        s.stop_flag.set()
        s.join(60)
        if not pg.running():
            pg.start()
    assert s.exc is None, "streamer failed: %r" % s.exc
    assert cmsd.alive(), "cmsd exited during the outage:\n" + cmsd.log_tail()

    codes = {}
    for t, cid, code in s.events:
        phase = "before" if t < t_stopped else "outage" if t < t_start0 else "after"
        codes[(phase, code)] = codes.get((phase, code), 0) + 1
    print("db outage: sent %d, answers by phase %s, reconnects %d"
          % (len(s.sent), sorted(codes.items()), len(s.closes)))
    for a in s.not_aa:
        assert a.code == "AE", "only AE is a fitting answer during an outage: %r" % a
        assert len(a.reason()) >= 8, "AE without a human-readable reason: %r" % a
    # No AA for data sent while the database was down (it cannot be committed).
    early = [(cid, t - t_stopped) for t, cid, code in s.events
             if code == "AA" and t_stopped <= t < t_start0 and s.sent.get(cid, 0) >= t_stopped]
    assert not early, "AA while PostgreSQL was stopped (uncommitted data): %s" % early[:5]

    # Everything ACKed is stored exactly once.
    acked = s.aa()
    stored = db.messages_for(DEV, acked)
    lost = sorted(set(acked) - set(stored))
    assert not lost, "ACKed but not stored: %s" % lost[:10]

    # The monitor resends whatever got no AA (same MSH-10), plus some that did.
    resend = [cid for cid in s.sent if cid not in acked] + sorted(acked)[:10]
    with h.device_client(pki, cmsd.port, DEV) as c:
        p = h.Pipeline(c, window=16)
        p.run([(cid, s.text[cid]) for cid in resend], deadline=180)
    not_aa = [cid for cid in resend if "AA" not in p.acks.get(cid, [])]
    assert not not_aa, "resends not AA: %s" % [(cid, p.acks.get(cid)) for cid in not_aa[:10]]

    stored = db.messages_for(DEV, list(s.sent))
    wrong = {cid: stored.get(cid) for cid in s.sent if stored.get(cid) != (1, h.SAMPLE_NOBS)}
    assert not wrong, "(messages, observations) per sent control id not (1, 8): %s" % (
        list(wrong.items())[:10])
    # cmsd said what happened
    assert any(re.search(r"level=(warn|error).*(db|database|postgres|store|sql)", ln, re.I)
               for ln in cmsd.log_lines()), "no warn/error log line about the database outage"


def test_database_started_after_cmsd(cmsd_factory, pg, db, pki):
    """Start order does not matter: cmsd waits (retrying, logged) for a
    database that comes up within db_connect_timeout_s, then serves."""
    pg.stop("fast")
    try:
        cmsd = cmsd_factory("cmsd-dblate", start=False, db_connect_timeout_s=60)
        cmsd.start(wait=False)
        cmsd.wait_log(r"level=(warn|error).*(?i:db|database|postgres)", 0, 30,
                      "a log line about the unreachable database")
        time.sleep(1)
        assert cmsd.alive(), "cmsd gave up before db_connect_timeout_s:\n" + cmsd.log_tail()
    finally:
        pg.start()
    cmsd.wait_ready(90)
    cid = h.unique("LATE")
    with h.device_client(pki, cmsd.port, DEV) as c:
        ack = c.request(h.pcd01(DEV, cid, patient=h.unique("PT")))
    assert ack.code == "AA", ack
    assert db.message_count(DEV, cid) == 1
