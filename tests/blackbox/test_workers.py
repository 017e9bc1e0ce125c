"""workers = 0 runs one event loop per online CPU; connections spread over
them (SO_REUSEPORT) and every message is stored once and acknowledged."""
import os

import helpers as h


def test_workers_auto_one_per_cpu(cmsd_factory, pki, db):
    c = cmsd_factory("cmsd-workers-auto", workers=0)
    c.wait_log(r"event=ready .*serving with %d worker" % os.cpu_count(), 0)
    sent = []
    for i in range(6):  # several connections: the kernel spreads them over the loops
        with h.device_client(pki, c.port, "MON-0002") as cl:
            cid = h.unique("WRK%d" % i)
            ack = cl.request(h.pcd01("MON-0002", cid, patient=h.unique("PT")))
            assert ack.code == "AA" and ack.control_id == cid, ack
            sent.append(cid)
    rows = db.scalar("SELECT count(*) FROM cms.messages m JOIN cms.devices d ON d.id = m.device_id "
                     "WHERE d.serial = 'MON-0002' AND m.control_id = ANY(%s)", (sent,))
    assert rows == len(sent)
