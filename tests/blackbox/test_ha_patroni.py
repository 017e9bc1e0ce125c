"""PostgreSQL high availability with Patroni: cmsd on a libpq multi-host
conninfo (target_session_attrs=read-write) keeps ACKing after the primary
dies and Patroni promotes the synchronous standby, and loses nothing it
acknowledged: an ACK means committed on the primary AND flushed by the
synchronous standby (synchronous_mode + synchronous_commit = on), and only
that standby may be promoted. Messages in flight at the crash are resent by
the monitors and stored exactly once. Readers can use a standby.

Patroni 3.0 + one etcd 3.4 member + three PostgreSQL 15 nodes on loopback."""

import contextlib
import time

import psycopg2
import pytest

import ha_helpers as ha
import helpers as h

DEVS = ["MON-0001", "MON-0002", "MON-0003", "MON-0099"]  # certificates of the session PKI
N = 400  # per device


@pytest.fixture(scope="module")
def patroni():
    for tool in (ha.ETCD, ha.PATRONI, ha.PATRONICTL):
        if not __import__("os").path.exists(tool):
            pytest.fail("%s is missing (tools/deps.sh installs etcd-server and patroni)" % tool)
    c = ha.PatroniCluster("patroni", n=3)
    try:
        t0 = time.monotonic()
        c.start()
        print("patroni: cluster up in %.1f s" % (time.monotonic() - t0))
        yield c
    finally:
        c.stop()


def test_failover_loses_no_acked_message(patroni, pki, cmsd_factory):
    t0 = time.monotonic()
    db = h.setup_database(patroni, "cms_ha")
    for d in DEVS:
        h.device_add(db, d, status="active")
    sync_name = patroni.sync_standby().name
    primary = patroni.leader()
    # What makes an ACK survive the primary: commits wait for the synchronous standby.
    with contextlib.closing(patroni.connect()) as c, c.cursor() as cur:
        cur.execute("SHOW synchronous_commit")
        assert cur.fetchone()[0] == "on"
        cur.execute("SHOW synchronous_standby_names")
        names = cur.fetchone()[0]
        assert sync_name in names or names.strip() == "*", names

    cfg_over = {"db_conninfo": patroni.conninfo("cms_ha", h.DB_ROLE) +
                " application_name=cmsd-ha",
                "db_reconnect_min_ms": 50, "db_reconnect_max_ms": 500,
                "ingest_timeout_ms": 60000, "db_query_timeout_ms": 5000}
    cmsd = cmsd_factory("cmsd-ha", **cfg_over)

    t_setup = time.monotonic()
    run = h.unique("HA")
    mons = []
    for d in DEVS:
        msgs = [("%s-%s-%05d" % (run, d[-1], i), None) for i in range(N)]
        msgs = [(cid, h.pcd01(d, cid, patient="PT-" + cid)) for cid, _ in msgs]
        mons.append(ha.ResilientMonitor(pki, cmsd.port, d, msgs, window=8, deadline=300,
                                        pace=0.004))
    for m in mons:
        m.start()
    h.wait_until(lambda: sum(len(m.aa) for m in mons) >= 200, 60, 0.05,
                 "the first ACKs before the crash")
    acked_before = sum(len(m.aa) for m in mons)
    print("patroni: setup %.1f s, first %d ACKs at %.1f s" % (t_setup - t0, acked_before,
                                                             time.monotonic() - t0))
    t_crash = time.monotonic()
    primary.crash()
    for m in mons:
        m.join(300)
    # How long ACKs stopped: the longest gap between two ACKs (any monitor) after the crash.
    times = sorted(t for m in mons for t in m.ack_at.values())
    after = [t for t in times if t > t_crash]
    assert after, "no ACK after the crash"
    before = [t for t in times if t <= t_crash]
    seq = ([before[-1]] if before else []) + after
    stall = max(b - a for a, b in zip(seq, seq[1:]))
    print("patroni: every monitor done at %.1f s" % (time.monotonic() - t0))
    new_leader = patroni.leader()
    assert new_leader is not None and new_leader.name == sync_name, \
        "Patroni promoted %s, not the synchronous standby %s" % (
            new_leader and new_leader.name, sync_name)

    for m in mons:
        assert not m.is_alive(), "%s still sending" % m.device
        assert len(m.aa) == N, "%s: %d of %d acknowledged (last error %s, other %s)" % (
            m.device, len(m.aa), N, m.error, dict(list(m.other.items())[:5]))
        stored = db.messages_for(m.device, [cid for cid, _ in m.msgs])
        missing = sorted(m.aa - set(stored))
        assert not missing, "%s: ACKed but not on the new primary: %s" % (m.device, missing[:5])
        dup = {cid: v for cid, v in stored.items() if v[0] != 1}
        assert not dup, "%s: stored more than once: %s" % (m.device, list(dup.items())[:5])
        want = stored[m.msgs[0][0]][1]
        short = {cid: v for cid, v in stored.items() if v[1] != want or not want}
        assert not short, "%s: observations missing: %s" % (m.device, list(short.items())[:5])
    print("patroni failover: %d ACKed before the crash, ACKs paused for at most %.1f s, "
          "resends %d, reconnects %d" % (acked_before, stall, sum(m.resends for m in mons),
                                         sum(m.reconnects for m in mons)))
    log = cmsd.log_text()
    assert "db_disconnected" in log, "cmsd never saw the primary go"
    assert cmsd.alive()

    # Readers (cms.vitals) can use a standby: target_session_attrs=standby.
    with contextlib.closing(psycopg2.connect(patroni.conninfo("cms_ha", "postgres",
                                                              attrs="standby"))) as c:
        with c.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery()")
            assert cur.fetchone()[0] is True
            want = db.scalar("SELECT count(*) FROM cms.vitals WHERE device_serial = %s",
                             (DEVS[0],))
            assert want > 0
            deadline = time.monotonic() + 30
            while True:  # the standby replays what the primary committed
                cur.execute("SELECT count(*) FROM cms.vitals WHERE device_serial = %s",
                            (DEVS[0],))
                got = cur.fetchone()[0]
                if got >= want or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert got == want
