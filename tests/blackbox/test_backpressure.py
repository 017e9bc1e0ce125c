"""When the database lags, a connection with max_pending_per_conn frames
awaiting commit is not read any further (TCP backpressure reaches the
monitor) instead of growing cmsd's memory; when the database catches up,
reading resumes and every frame sent is acknowledged and stored once."""

import contextlib
import socket

import helpers as h

DEV = "MON-0001"
MAX_MSGS = 16000  # ~40 MB: far beyond what kernel buffers hold


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def test_stalled_database_stops_reading_then_resumes(cmsd_factory, pg, db, pki):
    cmsd = cmsd_factory("cmsd-backpressure", max_pending_per_conn=8,
                        db_query_timeout_ms=120000, ingest_timeout_ms=120000)
    run = h.unique("BP")
    c = h.device_client(pki, cmsd.port, DEV)
    with c:
        first = run + "-first"
        assert c.request(h.pcd01(DEV, first, patient="PT-" + run)).code == "AA"
        # Stall every ingest transaction on a lock held by this test.
        lock = pg.connect(db.name)
        lock.autocommit = False
        with contextlib.closing(lock):
            lock.cursor().execute("LOCK TABLE cms.messages IN ACCESS EXCLUSIVE MODE")
            rss0 = rss_kb(cmsd.pid)
            sent = []
            c.sock.settimeout(5)
            try:
                while len(sent) < MAX_MSGS:
                    cid = "%s-%05d" % (run, len(sent))
                    c.sock.sendall(h.frame(h.pcd01(DEV, cid, patient="PT-" + run)))
                    sent.append(cid)
            except socket.timeout:
                pass  # the last frame may be partly sent: it is not counted
            rss1 = rss_kb(cmsd.pid)
            assert len(sent) < MAX_MSGS, "cmsd kept reading %d frames while none could commit" % (
                len(sent))
            assert rss1 - rss0 < 64 * 1024, "cmsd grew by %d kB while the database stalled" % (
                rss1 - rss0)
            assert cmsd.alive()
            lock.rollback()  # the database catches up
        acks = {}
        while len(acks) < len(sent):
            a = c.recv_ack(60)
            acks.setdefault(a.control_id, []).append(a.code)
    bad = [(cid, acks.get(cid)) for cid in sent if acks.get(cid) != ["AA"]]
    assert not bad, "after the stall, not exactly one AA: %s" % bad[:5]
    stored = db.messages_for(DEV, sent)
    wrong = [(cid, stored.get(cid)) for cid in sent if stored.get(cid) != (1, h.SAMPLE_NOBS)]
    assert not wrong, wrong[:5]
