"""Nothing acknowledged is lost: kill -9 cmsd while a monitor streams with
many messages in flight, restart it, resend everything not acknowledged
(same MSH-10) plus some that were: every message is then stored exactly
once with all its observations."""

import random

import helpers as h

DEV = "MON-0001"
N = 400
WINDOW = 32


def test_kill9_mid_stream_then_resend(cmsd_factory, db, pki):
    cmsd = cmsd_factory("cmsd-kill9")
    run = h.unique("K9")
    msgs = [("%s-%05d" % (run, i), "PT-%s-%05d" % (run, i)) for i in range(N)]
    patient_of = dict(msgs)
    text = {cid: h.pcd01(DEV, cid, patient=pt) for cid, pt in msgs}

    c = h.device_client(pki, cmsd.port, DEV)
    p = h.Pipeline(c, window=WINDOW)
    killed = {}

    def kill_when_enough(pl):
        if len(pl.aa()) >= 120 and not killed:
            killed["inflight"] = len(pl.inflight)
            cmsd.kill9()
        return bool(killed)

    sent = p.run([(cid, text[cid]) for cid, _ in msgs], stop=kill_when_enough, deadline=120)
    assert killed, "stream ended before the kill (sent %d, AA %d, closed=%s)" % (
        len(sent), len(p.aa()), p.closed)
    assert killed["inflight"] > 0, "nothing was in flight at the kill: the test proves little"
    # ACKs already on the wire before the kill still count as ACKed.
    p.run([], deadline=5)
    c.close()
    acked_before = p.aa()
    assert len(acked_before) >= 120

    # Whatever cmsd acknowledged before dying is in the database, exactly once.
    stored = db.messages_for(DEV, acked_before)
    lost = sorted(set(acked_before) - set(stored))
    assert not lost, "ACKed before kill -9 but not stored: %s" % lost[:10]

    cmsd.start()
    unacked = [cid for cid in sent if cid not in acked_before]
    rng = random.Random(run)
    again = rng.sample(sorted(acked_before), 20)
    unsent = [cid for cid, _ in msgs if cid not in set(sent)]
    resend = unacked + again + unsent
    with h.device_client(pki, cmsd.port, DEV) as c2:
        p2 = h.Pipeline(c2, window=WINDOW)
        p2.run([(cid, text[cid]) for cid in resend], deadline=180)
    assert p2.closed is None, "connection closed during the resend: %s" % p2.closed
    not_aa = {cid: p2.acks.get(cid) for cid in resend if "AA" not in p2.acks.get(cid, [])}
    assert not not_aa, "resends not AA after restart: %s" % list(not_aa.items())[:10]

    # Every message exactly once, with all its observations.
    stored = db.messages_for(DEV, [cid for cid, _ in msgs])
    missing = [cid for cid, _ in msgs if cid not in stored]
    assert not missing, "%d messages missing, e.g. %s" % (len(missing), missing[:5])
    wrong = {cid: v for cid, v in stored.items() if v != (1, h.SAMPLE_NOBS)}
    assert not wrong, "(messages, observations) per control id not (1, 8): %s" % (
        list(wrong.items())[:10])
    counts = dict(db.query(
        "SELECT patient_id, count(*) FROM cms.vitals WHERE patient_id LIKE %s "
        "GROUP BY patient_id", ("PT-%s-%%" % run,)))
    bad = {pt: counts.get(pt) for pt in patient_of.values() if counts.get(pt) != h.SAMPLE_NOBS}
    assert not bad, "cms.vitals rows per message not 8: %s" % list(bad.items())[:10]
    assert db.query("SELECT m.control_id FROM cms.messages m WHERE m.nobs <> "
                    "(SELECT count(*) FROM cms.observations o WHERE o.message_id = m.id) "
                    "AND m.control_id LIKE %s", (run + "-%",)) == []
