"""Nothing acknowledged is lost: kill -9 cmsd while monitors stream with
many messages in flight, restart it, resend everything not acknowledged
(same MSH-10) plus some that were: every ACKed message was stored before
the restart, and afterwards every message is stored exactly once with all
its observations."""

import random
import time

import pytest

import helpers as h

DEVS = ["MON-0001", "MON-0002"]
N = 300          # per device
WINDOW = 32
BURST = 64       # sent in one write right before the kill


@pytest.mark.parametrize("delay", [0.0, 0.01])
def test_kill9_mid_stream_then_resend(cmsd_factory, db, pki, delay):
    cmsd = cmsd_factory("cmsd-kill9")
    run = h.unique("K9")
    msgs = {d: [("%s-%s-%05d" % (run, d[-1], i), "PT-%s-%s-%05d" % (run, d[-1], i))
                for i in range(N)] for d in DEVS}
    text = {cid: h.pcd01(d, cid, patient=pt) for d in DEVS for cid, pt in msgs[d]}

    # Stream from both devices: a first part with a full window, ACKs flowing.
    pipes = {}
    for d in DEVS:
        pipes[d] = h.Pipeline(h.device_client(pki, cmsd.port, d), window=WINDOW)
        pipes[d].run([(cid, text[cid]) for cid, _ in msgs[d][:100]], deadline=120, drain=False)
    # Then a burst per device in single writes, and kill -9 while they are in flight.
    sent = {}
    for d in DEVS:
        pipes[d].send_burst([(cid, text[cid]) for cid, _ in msgs[d][100:100 + BURST]])
    time.sleep(delay)
    inflight = sum(len(p.inflight) for p in pipes.values())
    cmsd.kill9()
    for d in DEVS:
        p = pipes[d]
        p.run([], deadline=10)  # ACKs already on the wire still count
        assert p.closed or p.c.wait_closed(10), "connection of %s not closed after kill -9" % d
        p.c.close()
        sent[d] = list(p.sent_times)
    assert inflight >= 2 * WINDOW, "only %d in flight at the kill" % inflight

    acked = {d: pipes[d].aa() for d in DEVS}
    for d in DEVS:
        stored = db.messages_for(d, sent[d])
        lost = sorted(acked[d] - set(stored))
        assert not lost, "%s: ACKed before kill -9 but not stored: %s" % (d, lost[:10])
        print("kill9 %s: sent %d, AA %d, stored %d (committed, no AA: %d)" % (
            d, len(sent[d]), len(acked[d]), len(stored), len(set(stored) - acked[d])))

    cmsd.start()
    rng = random.Random(run)
    for d in DEVS:
        unacked = [cid for cid in sent[d] if cid not in acked[d]]
        again = rng.sample(sorted(acked[d]), 20)
        unsent = [cid for cid, _ in msgs[d] if cid not in set(sent[d])]
        resend = unacked + again + unsent
        with h.device_client(pki, cmsd.port, d) as c2:
            p2 = h.Pipeline(c2, window=WINDOW)
            p2.run([(cid, text[cid]) for cid in resend], deadline=180)
        assert p2.closed is None, "connection closed during the resend: %s" % p2.closed
        not_aa = {cid: p2.acks.get(cid) for cid in resend if "AA" not in p2.acks.get(cid, [])}
        assert not not_aa, "resends not AA after restart: %s" % list(not_aa.items())[:10]

    for d in DEVS:
        # Every message exactly once, with all its observations.
        stored = db.messages_for(d, [cid for cid, _ in msgs[d]])
        missing = [cid for cid, _ in msgs[d] if cid not in stored]
        assert not missing, "%d messages missing, e.g. %s" % (len(missing), missing[:5])
        wrong = {cid: v for cid, v in stored.items() if v != (1, h.SAMPLE_NOBS)}
        assert not wrong, "(messages, observations) per control id not (1, 8): %s" % (
            list(wrong.items())[:10])
        counts = dict(db.query(
            "SELECT patient_id, count(*) FROM cms.vitals WHERE patient_id LIKE %s "
            "AND device_serial = %s GROUP BY patient_id", ("PT-%s-%%" % run, d)))
        bad = {pt: counts.get(pt) for _, pt in msgs[d] if counts.get(pt) != h.SAMPLE_NOBS}
        assert not bad, "cms.vitals rows per message not 8: %s" % list(bad.items())[:10]
    assert db.query("SELECT m.control_id FROM cms.messages m WHERE m.nobs <> "
                    "(SELECT count(*) FROM cms.observations o WHERE o.message_id = m.id) "
                    "AND m.control_id LIKE %s", (run + "-%",)) == []
