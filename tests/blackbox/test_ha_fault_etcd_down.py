"""Fault: etcd (Patroni's DCS) down under load. With failsafe_mode: true in the
cluster's dynamic configuration, the Patroni leader cannot renew its leader key
but keeps PostgreSQL primary because it reaches every member over Patroni's REST
API (POST /failsafe); without it, the primary would demote itself after ttl and
nothing could be written until etcd returned. cmsd notices nothing: it keeps
serving and ACKing throughout (cmsd_db_up stays 1), nothing is lost or doubled.

Patroni 3.0 + one etcd 3.4 member + three PostgreSQL 15 nodes on loopback
(about 1-2 minutes on a busy 2-core host)."""

import contextlib
import json
import time
import urllib.error
import urllib.request

import psycopg2
import pytest

import ha_helpers as ha
import helpers as h

DEVS = ["MON-0001", "MON-0002", "MON-0003", "MON-0099"]
N = 1500        # per device: still sending when etcd comes back
OUTAGE = 20.0   # s: > ttl (6) + retry_timeout (2), when a leader without failsafe demotes


@pytest.fixture(scope="module")
def patroni():
    yield from ha.patroni_cluster("etcd-down")


def failsafe_key(cluster):
    """The /failsafe key the leader writes into etcd (members and their REST URLs)."""
    url = "%s/v2/keys/service/%s/failsafe" % (cluster.etcd.url, cluster.scope)
    with contextlib.suppress(urllib.error.URLError, OSError, ValueError, KeyError):
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(json.loads(r.read())["node"]["value"])
    return None


def is_primary(node):
    with contextlib.closing(psycopg2.connect(host="127.0.0.1", port=node.pg, user="postgres",
                                             dbname="postgres", connect_timeout=3)) as c:
        with c.cursor() as cur:
            cur.execute("SELECT NOT pg_is_in_recovery()")
            return cur.fetchone()[0]


def test_etcd_down_primary_kept_cmsd_keeps_acking(patroni, pki, cmsd_factory):
    db = h.setup_database(patroni, "cms_etcd_down")
    for d in DEVS:
        h.device_add(db, d, status="active")
    h.wait_until(lambda: failsafe_key(patroni) and
                 len(failsafe_key(patroni)) == len(patroni.nodes), 60, 0.5,
                 "the leader to publish the failsafe member list")
    leader = patroni.leader()
    cmsd = cmsd_factory("cmsd-etcd-down", **ha.ha_cmsd_config(patroni, "cms_etcd_down"))
    sampler = ha.MetricSampler(cmsd, ["cmsd_db_up", "cmsd_ingest_queued_messages"])
    sampler.start()
    mons = ha.start_monitors(pki, cmsd.port, DEVS, N, h.unique("ED"), pace=0.02)
    try:
        h.wait_until(lambda: sum(len(m.aa) for m in mons) >= 200, 60, 0.05, "the first ACKs")
        since = cmsd.log_size()
        t_down = time.monotonic()
        patroni.etcd.stop()
        time.sleep(OUTAGE)
        t_up = time.monotonic()
        # Still the primary, on the same node, after more than ttl without etcd.
        assert is_primary(leader), "Patroni demoted %s while etcd was down" % leader.name
        acked = [t for t in ha.ack_times(mons) if t_down < t <= t_up]
        assert any(m.is_alive() for m in mons), "the monitors finished before etcd came back"
        patroni.etcd.start()
        ha.assert_exactly_once(db, mons, N)
    finally:
        sampler.stop()
        if patroni.etcd.proc.poll() is not None:
            patroni.etcd.start()
    # ACKs never stopped for long while etcd was away.
    seq = [t_down] + acked + [t_up]
    gap = max(b - a for a, b in zip(seq, seq[1:]))
    assert gap < 5.0, "ACKs stopped for %.1f s while etcd was down" % gap
    ups = sampler.values("cmsd_db_up", t_down, t_up)
    assert ups and min(ups) == 1, "cmsd_db_up dropped while etcd was down: %r" % ups
    ev = ha.log_events(cmsd, since, "db_disconnected", "db_query_timeout", "store_batch_retry")
    assert not any(ev.values()), "cmsd saw the database falter: %r" % ev
    assert cmsd.alive()
    print("etcd down %.0f s: leader %s kept the primary (failsafe_mode), %d ACKs meanwhile, "
          "longest ACK gap %.2f s, cmsd_db_up stayed 1, 0 lost, 0 duplicated" % (
              OUTAGE, leader.name, len(acked), gap))
