"""Fault: the standbys stop confirming WAL (both replicas frozen with SIGSTOP:
a hung or partitioned standby, the extreme of a lagging one). With Patroni's
synchronous_mode_strict and synchronous_commit = on, the primary's COMMITs wait
for a synchronous standby that does not answer, so cmsd cannot commit: it stops
ACKing (no ACK without the standby's copy), keeps the monitors connected, holds
their messages (cmsd_ingest_queued_messages > 0) and says why in its log
(db_query_timeout / store_batch_retry: the statement did not return). When the
standbys come back, everything waiting is committed and ACKed, nothing is lost,
nothing doubled, and the synchronous standby has every ACKed message.

Patroni 3.0 + one etcd 3.4 member + three PostgreSQL 15 nodes on loopback
(about 1-2 minutes on a busy 2-core host)."""

import contextlib
import time

import psycopg2
import pytest

import ha_helpers as ha
import helpers as h

DEVS = ["MON-0001", "MON-0002", "MON-0003", "MON-0099"]
N = 600
FROZEN = 15.0  # s: above ttl (6), so Patroni also loses the standbys' member keys
GRACE = 2.0    # s after the freeze: ACKs of commits the standbys confirmed just before


@pytest.fixture(scope="module")
def patroni():
    yield from ha.patroni_cluster("sync-standby")


def stored_on(node, dbname, device, cids):
    with contextlib.closing(psycopg2.connect(host="127.0.0.1", port=node.pg, user="postgres",
                                             dbname=dbname, connect_timeout=3)) as c:
        with c.cursor() as cur:
            cur.execute("SELECT count(*) FROM cms.messages m JOIN cms.devices d "
                        "ON d.id = m.device_id WHERE d.serial = %s AND m.control_id = ANY(%s)",
                        (device, list(cids)))
            return cur.fetchone()[0]


def test_standbys_stop_confirming_cmsd_stops_acking(patroni, pki, cmsd_factory):
    db = h.setup_database(patroni, "cms_sync")
    for d in DEVS:
        h.device_add(db, d, status="active")
    leader = patroni.leader()
    sync = patroni.sync_standby()
    standbys = [n for n in patroni.nodes if n is not leader]
    cmsd = cmsd_factory("cmsd-sync", **ha.ha_cmsd_config(patroni, "cms_sync"))
    sampler = ha.MetricSampler(cmsd, ["cmsd_db_up", "cmsd_ingest_queued_messages"])
    sampler.start()
    mons = ha.start_monitors(pki, cmsd.port, DEVS, N, h.unique("SS"), pace=0.01)
    try:
        h.wait_until(lambda: sum(len(m.aa) for m in mons) >= 200, 60, 0.05, "the first ACKs")
        since = cmsd.log_size()
        t_freeze = time.monotonic()
        for n in standbys:
            n.freeze()
        time.sleep(FROZEN)
        t_thaw = time.monotonic()
        for n in standbys:
            n.thaw()
        acked_frozen = [t for t in ha.ack_times(mons) if t_freeze + GRACE < t <= t_thaw]
        queued = sampler.values("cmsd_ingest_queued_messages", t_freeze + GRACE, t_thaw)
        total = ha.assert_exactly_once(db, mons, N)
    finally:
        sampler.stop()
        for n in standbys:
            n.thaw()
    assert not acked_frozen, "%d ACKs while no standby could confirm a commit" % len(acked_frozen)
    assert queued and max(queued) > 0, "cmsd_ingest_queued_messages stayed 0: %r" % queued
    ev = ha.log_events(cmsd, since, "db_query_timeout", "store_batch_retry",
                       "store_batch_resend", "db_disconnected")
    assert ev["db_query_timeout"] + ev["store_batch_retry"] > 0, \
        "cmsd did not say why it stopped ACKing: %r" % ev
    assert cmsd.alive()
    resumed = min(t for t in ha.ack_times(mons) if t > t_thaw) - t_thaw
    # Durability: the synchronous standby (then) has every acknowledged message.
    new_sync = patroni.sync_standby() or sync
    for m in mons:
        cids = sorted(m.aa)
        deadline = time.monotonic() + 30
        while stored_on(new_sync, "cms_sync", m.device, cids) < len(cids):
            assert time.monotonic() < deadline, "%s: the standby lacks ACKed messages" % m.device
            time.sleep(0.5)
    print("standbys frozen %.0f s: 0 ACKs meanwhile (after %.0f s grace), up to %d messages "
          "held, log %r; first ACK %.2f s after the thaw; %d messages, 0 lost, 0 duplicated, "
          "all on the synchronous standby %s" % (
              FROZEN, GRACE, max(queued), ev, resumed, total, new_sync.name))


def test_sync_standby_lags_commits_wait_or_move(patroni, pki, cmsd_factory):
    """Only the synchronous standby's PostgreSQL stops (its WAL receiver with it: a
    standby that lags without end; its Patroni still runs), the other replica is
    healthy. COMMITs wait for the lagging standby until Patroni, noticing it, names
    the healthy replica synchronous (or until the standby catches up): ACKs pause,
    never go out without a standby's copy, and resume; nothing lost or doubled,
    every ACKed message on both standbys in the end."""
    db = h.setup_database(patroni, "cms_lag")
    for d in DEVS:
        h.device_add(db, d, status="active")
    h.wait_until(lambda: patroni.sync_standby() is not None, 60, 0.5, "a synchronous standby")
    leader, lagging = patroni.leader(), patroni.sync_standby()
    cmsd = cmsd_factory("cmsd-lag", **ha.ha_cmsd_config(patroni, "cms_lag"))
    mons = ha.start_monitors(pki, cmsd.port, DEVS, N, h.unique("LG"), pace=0.01)
    switched_at = None
    try:
        h.wait_until(lambda: sum(len(m.aa) for m in mons) >= 200, 60, 0.05, "the first ACKs")
        since = cmsd.log_size()
        t_lag = time.monotonic()
        lagging.freeze_postgres()
        while time.monotonic() < t_lag + FROZEN:
            s = patroni.sync_standby()
            if switched_at is None and s is not None and s.name != lagging.name:
                switched_at = time.monotonic() - t_lag
            time.sleep(0.5)
        t_thaw = time.monotonic()
        lagging.thaw_postgres()
        total = ha.assert_exactly_once(db, mons, N)
    finally:
        lagging.thaw_postgres()
    stall, _ = ha.ack_stall(mons, t_lag)
    ev = ha.log_events(cmsd, since, "db_query_timeout", "store_batch_retry")
    # A stall past db_query_timeout_ms (5 s) is said in the log.
    assert stall < 5.0 or ev["db_query_timeout"] + ev["store_batch_retry"] > 0, (stall, ev)
    if switched_at is None:
        # The standby kept its role: nothing could be ACKed until it was back.
        late = [t for t in ha.ack_times(mons) if t_lag + GRACE < t <= t_thaw]
        assert not late, "%d ACKs while the only synchronous standby was stopped" % len(late)
    assert cmsd.alive()
    for node in patroni.nodes:
        if node is leader:
            continue
        for m in mons:
            cids = sorted(m.aa)
            deadline = time.monotonic() + 60
            while stored_on(node, "cms_lag", m.device, cids) < len(cids):
                assert time.monotonic() < deadline, "%s lacks ACKed messages of %s" % (
                    node.name, m.device)
                time.sleep(0.5)
    print("sync standby %s lagging %.0f s: ACKs paused %.1f s; %s; log %r; %d messages, "
          "0 lost, 0 duplicated, all on both standbys" % (
              lagging.name, FROZEN, stall,
              "Patroni named another synchronous standby after %.1f s" % switched_at
              if switched_at is not None else "the synchronous standby kept its role", ev, total))
