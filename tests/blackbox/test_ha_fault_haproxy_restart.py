"""Fault: HAProxy restarted under load. Monitors stream through HAProxy to two
cmsd; HAProxy is stopped mid-stream and started again on the same ports. Every
monitor connection is cut (cmsd sees its peers close: conn counts in
cmsd_connections_open, new handshakes in cmsd_connections_accepted_total), the
monitors reconnect and resend what was not ACKed; cmsd stays up, every ACKed
message is stored exactly once and every message is ACKed in the end."""

import time

import pytest

import ha_helpers as ha
import helpers as h

DEVS = ["MON-0001", "MON-0002", "MON-0003", "MON-0099"]
N = 250


@pytest.fixture(scope="module")
def rdb(pg):
    d = h.setup_database(pg, "cms_hap_restart")
    for s in DEVS:
        h.device_add(d, s, status="active")
    return d


def test_haproxy_restart_under_load(rdb, cmsd_factory, pki):
    nodes = [cmsd_factory("cmsd-hapr%d" % i, db_conninfo=rdb.cmsd_dsn,
                          proxy_protocol="v2", proxy_allow="127.0.0.1",
                          metrics_listen="127.0.0.1:%d" % h.free_port())
             for i in range(2)]
    hap = ha.HAProxy(h.RUN / "haproxy-restart",
                     [("c%d" % i, c.port, int(c.cfg["https_listen"].rsplit(":", 1)[1]))
                      for i, c in enumerate(nodes)], check="/readyz")
    h.wait_until(lambda: all(ha.metric(c, "cmsd_ready") == 1 for c in nodes), 60, 0.2,
                 "every cmsd ready")
    hap.start()
    try:
        time.sleep(1.5)  # rise 2 x inter 500 ms
        run = h.unique("HR")
        mons = []
        for d in DEVS:
            msgs = [("%s-%s-%05d" % (run, d[-1], i), None) for i in range(N)]
            msgs = [(cid, h.pcd01(d, cid, patient="PT-" + cid)) for cid, _ in msgs]
            mons.append(ha.ResilientMonitor(pki, hap.mllp, d, msgs, window=8, deadline=180,
                                            pace=0.01))
        for m in mons:
            m.start()
        h.wait_until(lambda: all(len(m.aa) >= 30 for m in mons), 60, 0.05,
                     "every monitor ACKed through HAProxy")
        accepted0 = sum(ha.metric(c, "cmsd_connections_accepted_total", listener="mllp")
                        for c in nodes)
        acked_before = sum(len(m.aa) for m in mons)
        t_stop = time.monotonic()
        hap.stop()
        # Nobody gets through while it is down; cmsd is untouched.
        time.sleep(1.0)
        h.wait_until(lambda: sum(ha.metric(c, "cmsd_connections_open", listener="mllp")
                                 for c in nodes) == 0, 10, 0.1,
                     "cmsd to see every proxied monitor connection close")
        hap.start()
        t_start = time.monotonic()
        for m in mons:
            m.join(180)
        for m in mons:
            assert not m.is_alive(), "%s still sending" % m.device
            assert len(m.aa) == N, "%s: %d of %d ACKed (last error %s)" % (
                m.device, len(m.aa), N, m.error)
            assert m.reconnects >= 1, "%s never lost its connection" % m.device
            stored = rdb.messages_for(m.device, [cid for cid, _ in m.msgs])
            missing = sorted(m.aa - set(stored))
            assert not missing, "%s: ACKed, not stored: %s" % (m.device, missing[:5])
            dup = {cid: v for cid, v in stored.items() if v[0] != 1}
            assert not dup, "%s: stored twice: %s" % (m.device, list(dup.items())[:5])
        for c in nodes:
            assert c.alive(), "%s died" % c.name
        accepted1 = sum(ha.metric(c, "cmsd_connections_accepted_total", listener="mllp")
                        for c in nodes)
        assert accepted1 - accepted0 >= len(DEVS), "the monitors' new connections not counted"
        first_after = min(t for m in mons for t in m.ack_at.values() if t > t_start)
        print("haproxy restart: %d ACKed before, down %.1f s, first ACK %.2f s after the "
              "restart, reconnects %d, resends %d, 0 lost, 0 duplicated" % (
                  acked_before, t_start - t_stop, first_after - t_start,
                  sum(m.reconnects for m in mons), sum(m.resends for m in mons)))
    finally:
        hap.stop()
