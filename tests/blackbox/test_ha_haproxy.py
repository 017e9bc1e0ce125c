"""N stateless cmsd behind HAProxy (TCP mode, TLS passed through, PROXY
protocol v2, health checks GET /readyz on cmsd's HTTPS port): monitors stream
through HAProxy, one cmsd is killed -9 mid-stream, its monitors reconnect through
HAProxy to the others and resend; every ACKed message is stored exactly once.
A draining cmsd (SIGTERM) leaves HAProxy's rotation while it still finishes what
it owes: new monitors go to the others.
The monitor's own address (not HAProxy's) is what cmsd logs. Revoking a device
through the API (via HAProxy) drops its live sessions on every instance within
1 s (the NOTIFY reaches each one)."""

import contextlib
import re
import signal
import subprocess
import time
import types

import psycopg2
import pytest

import est_helpers as eh
import ha_helpers as ha
import helpers as h

DEVS = ["MON-0001", "MON-0002", "MON-0003", "MON-0099"]
TO_REVOKE = "MON-0097"
N = 300
CLOSE_WITHIN = 1.0


@pytest.fixture(scope="module")
def hdb(pg):
    d = h.setup_database(pg, "cms_haproxy")
    for s in DEVS + [TO_REVOKE]:
        h.device_add(d, s, status="active")
    return d


@pytest.fixture
def farm(hdb, cmsd_factory, tmp_path):
    nodes = [cmsd_factory("cmsd-hap%d" % i, db_conninfo=hdb.cmsd_dsn,
                          proxy_protocol="v2", proxy_allow="127.0.0.1",
                          metrics_listen="127.0.0.1:%d" % h.free_port())
             for i in range(3)]
    hap = ha.HAProxy(h.RUN / "haproxy", [("c%d" % i, c.port, int(c.cfg["https_listen"]
                                                                     .rsplit(":", 1)[1]))
                                          for i, c in enumerate(nodes)], check="/readyz")
    hap.start()
    # Every backend seen up by HAProxy's health checks (rise 2, inter 500 ms).
    h.wait_until(lambda: all(ha.metric(c, "cmsd_ready") == 1 for c in nodes), 60, 0.2,
                 "every cmsd ready")
    time.sleep(1.5)
    h.wait_until(lambda: eh.curl(via(hap, nodes), "GET", "/readyz")[0] == 200, 30, 0.2,
                 "cmsd's readiness through HAProxy")
    yield nodes, hap
    hap.stop()


def via(hap, nodes):
    """An object est_helpers.api/curl can use to reach the API through HAProxy."""
    cfg = dict(nodes[0].cfg)
    cfg["https_listen"] = "127.0.0.1:%d" % hap.https
    return types.SimpleNamespace(cfg=cfg, port=hap.mllp)


def test_kill9_one_instance_behind_haproxy(farm, hdb, pki):
    nodes, hap = farm
    run = h.unique("HP")
    mons = []
    for d in DEVS:
        msgs = [("%s-%s-%05d" % (run, d[-1], i), None) for i in range(N)]
        msgs = [(cid, h.pcd01(d, cid, patient="PT-" + cid)) for cid, _ in msgs]
        mons.append(ha.ResilientMonitor(pki, hap.mllp, d, msgs, window=8, deadline=240,
                                        pace=0.003))
    for m in mons:
        m.start()
    h.wait_until(lambda: sum(len(m.aa) for m in mons) >= 200, 60, 0.05, "ACKs through HAProxy")
    # The instance that holds the most monitors goes.
    counts = [sum(1 for line in c.log_text().splitlines() if "event=device_connected" in line)
              for c in nodes]
    victim = nodes[counts.index(max(counts))]
    assert max(counts) > 0
    victim.kill9()
    for m in mons:
        m.join(240)
    for m in mons:
        assert not m.is_alive(), "%s still sending" % m.device
        assert len(m.aa) == N, "%s: %d of %d ACKed (last error %s)" % (m.device, len(m.aa), N,
                                                                     m.error)
        stored = hdb.messages_for(m.device, [cid for cid, _ in m.msgs])
        missing = sorted(m.aa - set(stored))
        assert not missing, "%s: ACKed, not stored: %s" % (m.device, missing[:5])
        dup = {cid: v for cid, v in stored.items() if v[0] != 1}
        assert not dup, "%s: stored twice: %s" % (m.device, list(dup.items())[:5])
    assert sum(m.reconnects for m in mons) >= 1, "no monitor was on the killed instance"
    print("haproxy: killed %s (%d monitor connections), reconnects %d, resends %d" % (
        victim.name, max(counts), sum(m.reconnects for m in mons),
        sum(m.resends for m in mons)))

    # cmsd logs the monitor's address, as HAProxy's PROXY header gives it.
    with h.device_client(pki, hap.mllp, "MON-0001") as cl:
        assert cl.request(h.pcd01("MON-0001", h.unique("HP"), patient="PT-HP")).code == "AA"
        pat = re.compile(r"event=device_connected device=MON-0001 peer=127\.0\.0\.1:%d\b"
                         % cl.local_port)
        assert any(pat.search(c.log_text()) for c in nodes if c.alive()), \
            "no cmsd logged the monitor's own port %d" % cl.local_port


def test_revocation_drops_sessions_on_every_instance(farm, hdb, pki):
    nodes, hap = farm
    live = []
    # One session of the device on each instance (directly, with the PROXY header
    # HAProxy would write, so that each instance surely holds one).
    for i, c in enumerate(nodes):
        cl = h.device_client(pki, c.port, TO_REVOKE,
                             proxy_header=ha.proxy_v2("192.0.2.%d" % (10 + i), 4000 + i,
                                                      dport=c.port))
        assert cl.request(h.pcd01(TO_REVOKE, h.unique("RV"), patient="PT-RV")).code == "AA"
        live.append(cl)
    t0 = time.monotonic()
    st, body = eh.api(via(hap, nodes), "POST", "/api/v1/devices/%s/revoke" % TO_REVOKE,
                      data={"reason": "keyCompromise"})
    assert st == 200, body
    for i, cl in enumerate(live):
        assert cl.wait_closed(5), "instance %d kept the revoked device's session" % i
        took = time.monotonic() - t0
        assert took < CLOSE_WITHIN, "instance %d closed it %.3f s after the request" % (i, took)
    for cl in live:
        cl.close()


def test_draining_instance_leaves_rotation(farm, hdb, pki):
    """SIGTERM: the instance drains (/readyz 503, its HTTPS listener closed), HAProxy's
    /readyz check takes it out of rotation while it still commits and ACKs what it
    received; new monitors land on the others; it exits 0; nothing lost."""
    nodes, hap = farm
    victim, others = nodes[0], nodes[1:]
    dev, cid = "MON-0002", h.unique("DR")
    # Hold the drain open: an uncommitted row with the same (device, control id)
    # makes the victim's INSERT of that message wait (unique key), so it owes an ACK.
    blocker = psycopg2.connect(hdb.dsn)
    try:
        with blocker.cursor() as cur:
            cur.execute("INSERT INTO cms.messages (device_id, control_id, received_at, nobs) "
                        "SELECT id, %s, now(), 0 FROM cms.devices WHERE serial = %s", (cid, dev))
        cl = h.device_client(pki, victim.port, dev,
                             proxy_header=ha.proxy_v2("192.0.2.60", 4600, dport=victim.port))
        cl.send(h.pcd01(dev, cid, patient="PT-DR"))
        h.wait_until(lambda: (ha.metric(victim, "cmsd_ingest_queued_messages") or 0) >= 1,
                     10, 0.1, "the message queued on the victim")
        hap_since = hap.log.stat().st_size
        t0 = time.monotonic()
        victim.proc.send_signal(signal.SIGTERM)
        down = re.compile(r"Server cmsd_mllp/c0 is DOWN")
        h.wait_until(lambda: down.search(hap.log.read_text(errors="replace")[hap_since:]),
                     15, 0.1, "HAProxy to take the draining c0 out of rotation")
        took = time.monotonic() - t0
        assert victim.alive(), "the victim exited before HAProxy noticed: nothing shown"
        assert ha.metric(victim, "cmsd_draining") == 1 and ha.metric(victim, "cmsd_ready") == 0
        # New monitors through HAProxy: none lands on the draining instance.
        ports = []
        for i in range(6):
            with h.device_client(pki, hap.mllp, "MON-0003") as c2:
                assert c2.request(h.pcd01("MON-0003", h.unique("DR"),
                                          patient="PT-DR")).code == "AA"
                ports.append(c2.local_port)
        for p in ports:
            pat = re.compile(r"device_connected device=MON-0003 peer=127\.0\.0\.1:%d\b" % p)
            assert not pat.search(victim.log_text()), "port %d reached the draining c0" % p
            assert any(pat.search(c.log_text()) for c in others), "port %d: no cmsd logged it" % p
        assert victim.alive()
        blocker.rollback()  # the victim's INSERT goes through: COMMIT, ACK, exit
        a = cl.recv_ack(timeout=30)
        assert a.code == "AA", a.raw
        assert victim.proc.wait(40) == 0
        cl.close()
    finally:
        with contextlib.suppress(Exception):
            blocker.rollback()
        blocker.close()
    assert hdb.message_count(dev, cid) == 1
    print("haproxy: draining c0 out of rotation %.2f s after SIGTERM" % took)


def test_example_config_is_valid():
    """docker/haproxy.cfg, the example docs/scale-out.md points to, passes haproxy -c."""
    p = subprocess.run([ha.HAPROXY, "-c", "-f", str(h.ROOT / "docker" / "haproxy.cfg")],
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, timeout=60)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0 and "Configuration file is valid" in out, out
    assert "send-proxy-v2" in (h.ROOT / "docker" / "haproxy.cfg").read_text()
