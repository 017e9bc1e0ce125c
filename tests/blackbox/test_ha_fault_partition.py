"""Fault: a network partition isolating the primary, simulated by freezing the
node (SIGSTOP to its Patroni and every PostgreSQL process: its sockets stay
open, nothing answers, as when a link silently drops packets). cmsd's query
hangs; after db_query_timeout_ms it gives the connection up (db_query_timeout,
the batch's outcome unknown: store_batch_resend), cmsd_db_up drops to 0 while
libpq's multi-host conninfo finds no read-write node (the frozen one times out
after connect_timeout), Patroni's leader key expires (ttl), the synchronous
standby is promoted, cmsd connects to it, resends and ACKs again. Every ACKed
message is stored exactly once; the time to resume is measured.

Patroni 3.0 + one etcd 3.4 member + three PostgreSQL 15 nodes on loopback
(about 1-2 minutes on a busy 2-core host)."""

import time

import pytest

import ha_helpers as ha
import helpers as h

DEVS = ["MON-0001", "MON-0002", "MON-0003", "MON-0099"]
N = 500


@pytest.fixture(scope="module")
def patroni():
    yield from ha.patroni_cluster("partition")


def test_primary_partitioned_failover_resumes(patroni, pki, cmsd_factory):
    db = h.setup_database(patroni, "cms_part")
    for d in DEVS:
        h.device_add(db, d, status="active")
    primary = patroni.leader()
    sync_name = patroni.sync_standby().name
    cmsd = cmsd_factory("cmsd-part", **ha.ha_cmsd_config(patroni, "cms_part"))
    sampler = ha.MetricSampler(cmsd, ["cmsd_db_up", "cmsd_ingest_queued_messages"])
    sampler.start()
    mons = ha.start_monitors(pki, cmsd.port, DEVS, N, h.unique("PT"), pace=0.004, deadline=180)
    try:
        h.wait_until(lambda: sum(len(m.aa) for m in mons) >= 200, 60, 0.05, "the first ACKs")
        acked_before = sum(len(m.aa) for m in mons)
        since = cmsd.log_size()
        t_cut = time.monotonic()
        primary.freeze()
        total = ha.assert_exactly_once(db, mons, N)
        new_leader = patroni.leader()
    finally:
        sampler.stop()
        primary.crash()  # the isolated node is not brought back here
    assert new_leader is not None and new_leader.name == sync_name, \
        "Patroni promoted %s, not the synchronous standby %s" % (
            new_leader and new_leader.name, sync_name)
    stall, _ = ha.ack_stall(mons, t_cut)
    ups = sampler.values("cmsd_db_up", t_cut)
    assert 0 in ups, "cmsd_db_up never showed the primary gone: %r" % ups
    ev = ha.log_events(cmsd, since, "db_query_timeout", "db_disconnected", "store_batch_resend",
                       "db_connected")
    assert ev["db_query_timeout"] + ev["db_disconnected"] > 0, "cmsd did not say why: %r" % ev
    assert ev["db_connected"] > 0, "cmsd never logged its new connection: %r" % ev
    assert cmsd.alive()
    down = [t for t, r in sampler.samples if t > t_cut and r.get("cmsd_db_up") == 0]
    print("partition: primary %s frozen after %d ACKs; ACKs stopped for %.1f s (time to "
          "resume: the longest gap between two ACKs); cmsd_db_up 0 for ~%.1f s; log %r; "
          "%d messages, resends %d, 0 lost, 0 duplicated" % (
              primary.name, acked_before, stall, (down[-1] - down[0]) if down else 0.0,
              ev, total, sum(m.resends for m in mons)))
