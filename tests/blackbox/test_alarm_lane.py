"""The alarm lane (alarm_lane = on, the default): a message carrying an alarm is
written on its own database connection, so its ACK does not wait for a numerics
batch that is stuck; heartbeats (priority PN) stay with the numerics; with
alarm_lane = off an alarm waits like everything else; when the alarm lane's
connection is lost with an alarm in flight, the alarm moves to the numerics
connection and is still stored exactly once (docs/clinical-data.md, "Alarm lane").

The numerics are held up for real: a transaction of the test locks the daily
partitions of cms.observations (SHARE mode blocks inserts; an alarm message has
no numeric observation row, so it never routes a row there)."""

import contextlib
import socket
import time

import psycopg2

import helpers as h
from ha_helpers import metric
from test_alarms import r40

NUM_DEV = "MON-0001"   # sends numerics (stuck behind the lock)
ALARM_DEV = "MON-0003"  # sends alarms


@contextlib.contextmanager
def locked(db, what):
    """A transaction holding SHARE locks on what (a SQL query returning table names)
    until the block ends (then rolled back)."""
    conn = psycopg2.connect(db.dsn)
    try:
        cur = conn.cursor()
        cur.execute(what)
        tables = [r[0] for r in cur.fetchall()]
        assert tables, what
        for t in tables:
            cur.execute("LOCK TABLE %s IN SHARE MODE" % t)  # names from pg_catalog
        yield tables
    finally:
        conn.rollback()
        conn.close()


OBS_PARTITIONS = ("SELECT i.inhrelid::regclass::text FROM pg_inherits i "
                  "WHERE i.inhparent = 'cms.observations'::regclass")


def no_ack_within(client, seconds):
    try:
        ack = client.recv_ack(timeout=seconds)
    except socket.timeout:
        return True
    raise AssertionError("an ACK came while the numerics were held: %s" % ack.raw)


def stored(db, device, cid):
    return db.query("SELECT count(*) FROM cms.messages m JOIN cms.devices d ON d.id = m.device_id"
                    " WHERE d.serial = %s AND m.control_id = %s", (device, cid))[0][0]


def lane_cmsd(cmsd_factory, name, **kw):
    return cmsd_factory(name, workers=1, metrics_listen="127.0.0.1:%d" % h.free_port(), **kw)


def alarm_batches(srv):
    """Statements the alarm lane completed (cmsd_db_roundtrip_seconds{query="ingest_alarm"})."""
    return metric(srv, "cmsd_db_roundtrip_seconds_count", query="ingest_alarm") or 0


def test_alarm_acked_while_numerics_are_held(cmsd_factory, db, connect):
    srv = lane_cmsd(cmsd_factory, "cmsd-lane-on")
    with connect(srv.port, NUM_DEV) as num, connect(srv.port, ALARM_DEV) as al:
        with locked(db, OBS_PARTITIONS):
            ncid = h.unique("N")
            # patients of their own: a patient first seen in the held numerics batch would
            # hold up an alarm naming the same patient (its row is not committed yet)
            num.send(h.pcd01(NUM_DEV, ncid, patient=h.unique("PT")))
            assert no_ack_within(num, 1.0)
            # a real alarm: its own connection, ACKed although the numerics are stuck
            acid = h.unique("A")
            t0 = time.monotonic()
            ack = al.request(r40(ALARM_DEV, acid, h.unique("ALM"), "start",
                                 patient=h.unique("PT")), timeout=10)
            took = time.monotonic() - t0
            assert (ack.code, ack.control_id) == ("AA", acid), ack.raw
            assert took < 5, took
            assert stored(db, ALARM_DEV, acid) == 1
            assert alarm_batches(srv) == 1
            # a heartbeat (PN) goes with the numerics: held too
            hcid = h.unique("H")
            al.send(r40(ALARM_DEV, hcid, h.unique("HB"), "continue", prio="PN", kind="ST"))
            assert no_ack_within(al, 1.0)
            assert stored(db, NUM_DEV, ncid) == 0
        # the lock is gone: both held messages are committed and ACKed
        ack = num.recv_ack(timeout=20)
        assert (ack.code, ack.control_id) == ("AA", ncid), ack.raw
        ack = al.recv_ack(timeout=20)
        assert (ack.code, ack.control_id) == ("AA", hcid), ack.raw
    assert stored(db, NUM_DEV, ncid) == 1 and stored(db, ALARM_DEV, hcid) == 1


def test_lane_off_alarm_waits_like_numerics(cmsd_factory, db, connect):
    srv = lane_cmsd(cmsd_factory, "cmsd-lane-off", alarm_lane="off")
    with connect(srv.port, NUM_DEV) as num, connect(srv.port, ALARM_DEV) as al:
        with locked(db, OBS_PARTITIONS):
            ncid = h.unique("N")
            num.send(h.pcd01(NUM_DEV, ncid, patient=h.unique("PT")))
            assert no_ack_within(num, 0.5)
            acid = h.unique("A")
            al.send(r40(ALARM_DEV, acid, h.unique("ALM"), "start", patient=h.unique("PT")))
            # one connection, one batch at a time: the alarm waits behind the numerics
            assert no_ack_within(al, 1.5)
        assert num.recv_ack(timeout=20).code == "AA"
        ack = al.recv_ack(timeout=20)
        assert (ack.code, ack.control_id) == ("AA", acid), ack.raw
    assert stored(db, ALARM_DEV, acid) == 1
    assert alarm_batches(srv) == 0


def test_alarm_lane_lost_mid_batch_hands_over(cmsd_factory, db, connect):
    srv = lane_cmsd(cmsd_factory, "cmsd-lane-lost")
    since = srv.log_size()
    with connect(srv.port, ALARM_DEV) as al:
        aid = h.unique("ALM")
        # warm up: the lane is up and has written once
        assert al.request(r40(ALARM_DEV, h.unique("A"), aid, "start"), timeout=10).code == "AA"
        with locked(db, "SELECT 'cms.alarm_instances'"):
            acid = h.unique("A")
            al.send(r40(ALARM_DEV, acid, aid, "continue", value="80"))
            assert no_ack_within(al, 1.0)
            # the alarm lane's backend goes away with the batch in flight
            killed = db.query("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM "
                              "pg_stat_activity WHERE application_name = 'cmsd-ingest_alarm' "
                              "AND datname = current_database()) k")[0][0]
            assert killed == 1, killed
            srv.wait_log("store_lane_handover", since=since, what="store_lane_handover")
        ack = al.recv_ack(timeout=20)
        assert (ack.code, ack.control_id) == ("AA", acid), ack.raw
        # resent after an unknown outcome: one event, not two
        n = db.query("SELECT nevents FROM cms.alarms WHERE alarm_id = %s AND current", (aid,))
        assert n == [(2,)], n
        # once nothing of it is left on the numerics connection, alarms use the lane again
        h.wait_until(lambda: db.scalar("SELECT count(*) FROM pg_stat_activity WHERE "
                                       "application_name = 'cmsd-ingest_alarm'") == 1, 20,
                     what="the alarm lane reconnected")
        time.sleep(0.5)  # its session setup answered: the lane is up in cmsd too
        before = alarm_batches(srv)
        ack = al.request(r40(ALARM_DEV, h.unique("A"), aid, "end", state="inactive"), timeout=10)
        assert ack.code == "AA", ack.raw
        assert alarm_batches(srv) == before + 1
