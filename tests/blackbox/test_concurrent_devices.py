"""Several monitors at once, several connections each, windows of messages
in flight: every message is ACKed AA after its commit and stored once,
under the right device, with all its observations (group commit mixes
devices in one transaction)."""

import threading

import helpers as h

DEVS = ["MON-0001", "MON-0002", "MON-0003"]
CONNS = 2
N = 60
WINDOW = 8


def test_many_devices_many_connections(cmsd, db, pki):
    run = h.unique("CC")
    results, errors = {}, []

    def stream(dev, k):
        try:
            msgs = [("%s-%s-%d-%03d" % (run, dev, k, i), None) for i in range(N)]
            msgs = [(cid, h.pcd01(dev, cid, patient="PT-" + cid)) for cid, _ in msgs]
            with h.device_client(pki, cmsd.port, dev) as c:
                p = h.Pipeline(c, window=WINDOW)
                p.run(msgs, deadline=180)
            results[(dev, k)] = ([cid for cid, _ in msgs], p)
        except Exception as e:  # reported below
            errors.append((dev, k, repr(e)))

    threads = [threading.Thread(target=stream, args=(d, k)) for d in DEVS for k in range(CONNS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    for (dev, k), (cids, p) in results.items():
        assert p.closed is None, "%s conn %d closed: %s" % (dev, k, p.closed)
        bad = [(cid, p.acks.get(cid)) for cid in cids if p.acks.get(cid) != ["AA"]]
        assert not bad, "%s conn %d: not exactly one AA: %s" % (dev, k, bad[:5])
        stored = db.messages_for(dev, cids)
        wrong = [(cid, stored.get(cid)) for cid in cids if stored.get(cid) != (1, h.SAMPLE_NOBS)]
        assert not wrong, "%s conn %d: %s" % (dev, k, wrong[:5])
    per_dev = dict(db.query("SELECT device_serial, count(*) FROM cms.vitals "
                            "WHERE patient_id LIKE %s GROUP BY 1", ("PT-%s-%%" % run,)))
    assert per_dev == {d: CONNS * N * h.SAMPLE_NOBS for d in DEVS}, per_dev
