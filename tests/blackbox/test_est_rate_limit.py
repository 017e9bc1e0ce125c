"""Anonymous enrollment requests are limited per source address: anyone may
call simpleenroll, and each call costs the database a token check and, when
refused, an audit row. Beyond est_anon_per_min (a bucket of that many) the
answer is 429 with Retry-After and a JSON body, without touching the
database: no audit row per request, one log line per address per minute.
Monitors and operators are not affected, and enrollment works again once the
bucket has refilled."""

import contextlib
import http.client
import json
import re
import ssl
import time

import pytest

import est_helpers as eh
import helpers as h
from est_helpers import work  # noqa: F401  (fixture)

PER_MIN = 20  # bucket of 20, one token back every 3 s


@pytest.fixture(scope="module")
def est(pki, db):
    c = eh.start_est_cmsd(pki, db, "cmsd-est-limit", est_anon_per_min=PER_MIN)
    yield c
    eh.stop_cmsd(c)


def anonymous(c, pki):
    """A keep-alive HTTPS connection without a client certificate (Python's http.client)."""
    ctx = ssl.create_default_context(cafile=str(pki.root_ca))
    return http.client.HTTPSConnection("localhost", eh.https_port(c), context=ctx, timeout=30)


def enroll_without_token(conn):
    conn.request("POST", eh.EST + "/simpleenroll", body=b"MIIB",
                 headers={"Content-Type": "application/pkcs10"})
    resp = conn.getresponse()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def test_flood_gets_429_without_database_work(est, pki, db, work):
    since_audit = eh.last_audit_id(db)
    since_log = est.log_size()
    conn = anonymous(est, pki)
    answers = [enroll_without_token(conn) for _ in range(PER_MIN + 30)]
    conn.close()

    statuses = [a[0] for a in answers]
    # The bucket's worth were handled (refused for the missing token, audited) ...
    assert statuses[:PER_MIN] == [401] * PER_MIN, statuses
    # ... the rest answered 429 at once (a token may come back during the flood).
    assert statuses[PER_MIN] == 429 and statuses.count(429) >= 25, statuses
    st, hd, body = answers[-1]
    assert st == 429
    err = json.loads(body)
    assert err["error"] == "rate_limited" and "retry" in err["detail"], err
    retry = int(hd["retry-after"])
    assert 1 <= retry <= 60 // PER_MIN, hd

    # One audit row per handled request (written asynchronously), none for the 429s.
    handled = statuses.count(401)
    h.wait_until(lambda: len(eh.audit_rows(db, since_audit, "est_refused")) >= handled, 15,
                 what="the est_refused audit rows")
    time.sleep(0.5)
    assert len(eh.audit_rows(db, since_audit, "est_refused")) == handled
    # One log line for this address, naming it.
    lines = [ln for ln in est.log_lines(since_log) if "event=est_rate_limited" in ln]
    assert len(lines) == 1 and "peer=127.0.0.1:" in lines[0], lines

    # Monitors and operators are served meanwhile.
    h.good_client_still_served(est, pki)
    serial = eh.new_serial()
    tok = eh.token_create(est, serial)

    # Once the announced time has passed, this address may enroll again.
    time.sleep(retry + 0.5)
    st, hd, body, _, _ = eh.enroll(est, work, serial, tok["token"])
    assert st == 200, (st, body)
    assert eh.device_status(db, serial) == "active"


def test_registry_queue_half_full_refuses_anonymous_enrollment(pki, pg, db):
    """Many addresses (here: the per-address limit off) while the database is
    stalled: each refusal queues an audit row in the worker's registry queue.
    From half of that queue on, simpleenroll answers 503 + Retry-After at once,
    without queueing anything, so the other half stays for monitors' device
    checks; one est_busy log line a second. Nothing queued is lost: once the
    database is back every handled refusal has its audit row, and enrollment
    requests are handled again."""
    c = eh.start_est_cmsd(pki, db, "cmsd-est-busy", est_anon_per_min=0, workers=1,
                          db_query_timeout_ms=120000)
    try:
        since_audit = eh.last_audit_id(db)
        since_log = c.log_size()
        lock = pg.connect(db.name)
        lock.autocommit = False
        with contextlib.closing(lock):
            lock.cursor().execute("LOCK TABLE cms.audit_chain_head IN ACCESS EXCLUSIVE MODE")
            conn = anonymous(c, pki)
            statuses = []
            while len(statuses) < 6000 and 503 not in statuses:
                statuses.append(enroll_without_token(conn)[0])
            after = [enroll_without_token(conn) for _ in range(20)]
            conn.close()
            lock.rollback()  # the database catches up
        handled = statuses.count(401)
        # STORE_CTL_QUEUE_MAX (4096) / 2 queued, give or take the one in flight.
        assert statuses[-1] == 503 and 2040 <= handled <= 2056, (handled, statuses[-3:])
        assert [a[0] for a in after] == [503] * 20
        st, hd, body = after[-1]
        assert json.loads(body)["error"] == "busy" and hd["retry-after"] == "5", (hd, body)
        busy = [ln for ln in c.log_lines(since_log) if "event=est_busy" in ln]
        assert 1 <= len(busy) <= 10, busy
        h.wait_until(lambda: len(eh.audit_rows(db, since_audit, "est_refused")) >= handled, 60,
                     what="the queued est_refused audit rows")
        assert len(eh.audit_rows(db, since_audit, "est_refused")) == handled
        conn = anonymous(c, pki)
        h.wait_until(lambda: enroll_without_token(conn)[0] == 401, 30,
                     what="simpleenroll handled again")
        conn.close()
        h.good_client_still_served(c, pki)
    finally:
        eh.stop_cmsd(c)


def test_limit_off(pki, db):
    """est_anon_per_min = 0: no limit."""
    c = eh.start_est_cmsd(pki, db, "cmsd-est-nolimit", est_anon_per_min=0)
    try:
        conn = anonymous(c, pki)
        statuses = {enroll_without_token(conn)[0] for _ in range(80)}
        conn.close()
        assert statuses == {401}, statuses
    finally:
        eh.stop_cmsd(c)


def test_config_bounds(pki, db):
    cfg = h.base_config(pki, db, h.free_port(), h.free_port())
    cfg.update(eh.est_config(pki), est_anon_per_min=-1)
    c = h.Cmsd("cmsd-est-badlimit", cfg)
    h.write_config(c.cfg_path, c.cfg)
    p = h.run([h.CMSD, "--check-config", c.cfg_path], check=False)
    assert p.returncode != 0 and re.search(r"est_anon_per_min", p.stderr + p.stdout), p
