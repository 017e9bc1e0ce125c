"""SIGTERM drains: cmsd stops accepting, stops reading from monitors, commits and
acknowledges what it took, closes each monitor's connection when it is owed no ACK, and
exits 0 within shutdown_timeout_s. Nothing acknowledged is lost, nothing is stored twice.

- One monitor sending as fast as its window allows: every message it saw acknowledged is
  in the database; /readyz turns 503 at once; the log says drain, drained; exit 0.
- 1 000 monitors (cms-monitor, one TLS session each) sending during SIGTERM; cmsd is
  restarted on the same ports; cms-monitor reconnects and resends what was not
  acknowledged (same MSH-10): at the end every one of its messages is in the database
  exactly once, and it counted every message acknowledged (exit 0).
- The drain is bounded: with the database stopped, messages can not commit; cmsd still
  exits 0 after shutdown_timeout_s and acknowledges nothing it did not commit.
"""

import json
import signal
import subprocess
import threading
import time

import pytest

import helpers as h

pytest.register_assert_rewrite("admin_helpers")
import admin_helpers as ah  # noqa: E402

MONITOR = h.BUILD / "cms-monitor"


def stored_ids(db, device, prefix):
    rows = db.query("SELECT m.control_id, count(*) FROM cms.messages m JOIN cms.devices d "
                    "ON d.id = m.device_id WHERE d.serial = %s AND m.control_id LIKE %s "
                    "GROUP BY m.control_id", (device, prefix + "%"))
    return {r[0]: r[1] for r in rows}


def test_one_monitor_drains(cmsd_factory, db, connect, pki):
    c = cmsd_factory("cmsd-drain-one", shutdown_timeout_s=20)
    h.wait_until(lambda: ah.curl(c, pki, "GET", "/readyz")[0] == 200, 60, 0.2, "ready")
    prefix = h.unique("DRN")
    acked, sent = set(), []
    cl = connect(c.port, "MON-0001")
    stop = threading.Event()

    def sender():
        """Keeps 8 messages in flight until the connection ends."""
        n = 0
        inflight = {}
        try:
            while not stop.is_set():
                while len(inflight) < 8:
                    n += 1
                    cid = "%s-%05d" % (prefix, n)
                    cl.send(h.pcd01("MON-0001", cid, patient="PT-DRAIN"))
                    inflight[cid] = True
                    sent.append(cid)
                ack = cl.recv_ack(timeout=30)
                if ack.code == "AA":
                    acked.add(ack.control_id)
                inflight.pop(ack.control_id, None)
        except (h.Closed, OSError):
            pass
    t = threading.Thread(target=sender)
    t.start()
    h.wait_until(lambda: len(acked) >= 20, 30, 0.05, "some ACKs")
    since = c.log_size()
    t0 = time.monotonic()
    c.proc.send_signal(signal.SIGTERM)
    # Not ready from the moment the drain begins (the listener may already be closed).
    try:
        st = ah.curl(c, pki, "GET", "/readyz", timeout=5)[0]
        assert st == 503, st
    except RuntimeError:
        pass  # connection refused: the HTTPS listener closed already
    rc = c.proc.wait(30)
    took = time.monotonic() - t0
    stop.set()
    t.join(30)
    assert rc == 0, c.log_tail()
    assert took < 20, took
    c.wait_log(r"event=drain\b", since, 5, "the drain line")
    c.wait_log(r"event=drained\b", since, 5, "the drained line")
    ids = stored_ids(db, "MON-0001", prefix)
    assert acked, "no ACK at all"
    assert acked <= set(ids), "acknowledged but not stored: %s" % sorted(acked - set(ids))[:5]
    assert all(n == 1 for n in ids.values())
    # It did stop reading: not everything sent was stored (the last ones were in flight).
    assert set(ids) <= set(sent)


def test_drain_is_bounded_by_shutdown_timeout(cmsd_factory, db, connect, pki, pg):
    """The database cannot commit (a lock held on the messages table): the drain waits
    shutdown_timeout_s, then exits 0 without acknowledging."""
    c = cmsd_factory("cmsd-drain-bound", shutdown_timeout_s=3, db_query_timeout_ms=60000,
                     ingest_timeout_ms=60000)
    cl = connect(c.port, "MON-0002")
    ack = cl.request(h.pcd01("MON-0002", h.unique("BND"), patient="PT-B"))
    assert ack.code == "AA"
    lock = pg.connect(db.name)
    lock.autocommit = False
    cur = lock.cursor()
    cur.execute("LOCK TABLE cms.messages IN ACCESS EXCLUSIVE MODE")
    try:
        cid = h.unique("BND")
        cl.send(h.pcd01("MON-0002", cid, patient="PT-B"))
        time.sleep(0.5)  # taken, sent to the database, waiting on the lock
        since = c.log_size()
        t0 = time.monotonic()
        c.proc.send_signal(signal.SIGTERM)
        rc = c.proc.wait(30)
        took = time.monotonic() - t0
        assert rc == 0, c.log_tail()
        assert 2.5 < took < 15, took
        c.wait_log(r"event=drain_timeout\b", since, 5, "drain_timeout")
        with pytest.raises((h.Closed, OSError)):
            a = cl.recv_ack(timeout=5)
            raise AssertionError("ACK without commit: %r" % a)
    finally:
        lock.rollback()
        lock.close()


@pytest.fixture(scope="module")
def thousand(pki, db):
    first, count = 3001, 1000
    pki.mint("MON-", first, count)
    db.execute("INSERT INTO cms.devices (serial, model, status) "
               "SELECT 'MON-' || lpad(i::text, 4, '0'), 'drain test', 'active' "
               "FROM generate_series(%s, %s) i "
               "ON CONFLICT (serial) DO UPDATE SET status = 'active'",
               (first, first + count - 1))
    return first, count


def test_thousand_monitors_sigterm_restart_resend(cmsd_factory, db, pki, thousand):
    assert MONITOR.exists(), "%s is missing (make)" % MONITOR
    first, count = thousand
    per_device, rate = 12, 2  # 6 s of sending per monitor at 2 msg/s
    c = cmsd_factory("cmsd-drain-1000", max_connections=5000, shutdown_timeout_s=20,
                     workers=2)
    h.wait_until(lambda: ah.curl(c, pki, "GET", "/readyz")[0] == 200, 60, 0.2, "ready")
    prefix = h.unique("T")  # MSH-10 = <prefix><serial>-<seq>
    mon = subprocess.Popen(
        [str(MONITOR), "--host", "127.0.0.1", "--port", str(c.port), "--ca", str(pki.root_ca),
         "--cert-dir", str(pki.dir), "--first", str(first), "--devices", str(count),
         "--count", str(per_device), "--rate", str(rate), "--window", "4",
         "--connect-rate", "400", "--control-prefix", prefix, "--backoff-min", "200",
         "--backoff-max", "1000", "--ack-timeout", "30000", "--drain-timeout", "120000",
         "--json", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Wait until the fleet is connected and sending, then SIGTERM mid-stream.
        def sending():
            return db.scalar("SELECT count(*) FROM cms.messages WHERE control_id LIKE %s",
                             (prefix + "%",)) >= count
        h.wait_until(sending, 90, 0.2, "1 000 monitors sending")
        since = c.log_size()
        t0 = time.monotonic()
        c.proc.send_signal(signal.SIGTERM)
        rc = c.proc.wait(40)
        took = time.monotonic() - t0
        assert rc == 0, c.log_tail()
        assert took < 20, "drain took %.1f s" % took
        text = "\n".join(c.log_lines(since))
        assert "event=drained" in text or "event=drain_timeout" in text, text[-2000:]
        at_stop = db.scalar("SELECT count(*) FROM cms.messages WHERE control_id LIKE %s",
                            (prefix + "%",))
        assert 0 < at_stop < count * per_device, at_stop
        time.sleep(1.0)
        c.start()  # same config, same ports: the monitors reconnect and resend
        out, err = mon.communicate(timeout=300)
    finally:
        if mon.poll() is None:
            mon.kill()
            mon.wait(30)
    assert mon.returncode == 0, "cms-monitor exited %s:\n%s" % (mon.returncode, err[-3000:])
    m = json.loads(out)
    total = count * per_device
    assert m["sent"] == total and m["acked_aa"] == total, m
    assert m["ae"] == 0 and m["ar"] == 0 and m["unacked"] == 0 and m["lost"] == 0, m
    assert m["resent"] > 0 or m["reconnects"] > 0, m
    # Exactly once: every (device, MSH-10) of this run stored one time, none missing.
    rows = db.query("SELECT m.control_id, count(*) FROM cms.messages m WHERE m.control_id "
                    "LIKE %s GROUP BY m.control_id", (prefix + "%",))
    assert len(rows) == total, (len(rows), total)
    assert all(n == 1 for _, n in rows)
