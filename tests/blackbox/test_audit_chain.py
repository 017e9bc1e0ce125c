"""The audit log is tamper-evident: each row carries the SHA-256 of its
content and of the previous row. GET /api/v1/audit/verify (and `cmsctl audit
verify`) recompute the chain: intact after normal activity; after a row is
altered with SQL by the PostgreSQL superuser, the first broken row is named.
The database role cmsd uses (a member of cms_server) can append audit rows
but not alter, delete or truncate them, nor switch off the triggers.

The tampering runs on a database and a cmsd of this module, so the shared
database's chain stays intact for the other tests."""

import contextlib
import json
import re

import psycopg2
import psycopg2.errors
import pytest

pytest.register_assert_rewrite("admin_helpers")
import admin_helpers as a  # noqa: E402
import helpers as h

pytest_plugins = ["admin_helpers"]  # fixture admin_cmsd

TAMPER_DB = "cms_audit_tamper"


def verify(c, pki):
    st, body, raw = a.curl(c, pki, "GET", "/api/v1/audit/verify", cert="viewer1")
    assert st == 200, raw
    return body


def test_chain_intact_after_activity(admin_cmsd, pki, db, connect):
    # activity of several kinds: ingest, a refusal, a group change, a 403
    audit0 = db.max_audit_id()
    with connect(admin_cmsd.port, "MON-0001") as c:
        ack = c.request(h.pcd01("MON-0001", h.unique("AUD"), patient=h.unique("PT")))
    assert ack.code == "AA", ack
    h.expect_refused(pki, admin_cmsd.port, pki.device("bad/unknown"),
                     h.pcd01("MON-9999", h.unique("AUD")))
    st, _, raw = a.curl(admin_cmsd, pki, "POST", "/api/v1/groups/bb-audit/devices", cert="operator1",
                        data={"add": ["MON-0001"]})
    assert st == 200, raw
    st, _, raw = a.curl(admin_cmsd, pki, "POST", "/api/v1/groups/bb-audit/devices", cert="viewer1",
                        data={"add": ["MON-0002"]})
    assert st == 403, raw
    a.wait_audit(db, audit0, lambda r: r["event"] == "operator_forbidden")
    a.wait_audit(db, audit0, lambda r: r["device"] == "MON-9999")

    n, last = db.query("SELECT count(*), max(id) FROM cms.audit_events")[0]
    body = verify(admin_cmsd, pki)
    assert body["intact"] is True and body["first_bad_id"] is None, body
    assert body["reason"] is None and body["bad_rows"] == 0
    assert body["rows_checked"] >= n and body["last_id"] >= last, (body, n, last)
    assert len(body["last_hash"]) == 64

    p = a.cmsctl(admin_cmsd, pki, "audit", "verify", op="viewer1")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "intact" in p.stdout
    assert db.scalar("SELECT cms.audit_verify()") is None


@pytest.fixture(scope="module")
def tamper_env(pg, pki):
    """Its own database (migrated like the shared one) and cmsd."""
    tdb = h.setup_database(pg, TAMPER_DB)
    h.device_add(tdb, "MON-0001", status="active", model="Example Monitor")
    h.device_add(tdb, "MON-0002", status="active", model="Example Monitor")
    cfg = a.api_config(pki, tdb)
    cfg["db_conninfo"] = tdb.cmsd_dsn + " application_name=cmsd-audit-tamper"
    cfg["audit_anchor_interval_s"] = 1
    c = h.Cmsd("cmsd-audit-tamper", cfg)
    c.start()
    yield c, tdb
    a.stop_checked(c)


@contextlib.contextmanager
def superuser(tdb):
    """A superuser session with the append-only triggers off (what an
    attacker with the superuser password can do)."""
    conn = tdb.pg.connect(tdb.name)
    try:
        with conn.cursor() as cur:
            cur.execute("SET session_replication_role = replica")
            yield cur
    finally:
        conn.close()


def make_activity(c, pki, n=4):
    for i in range(n):
        st, _, raw = a.curl(c, pki, "POST", "/api/v1/groups/g%d/devices" % i, cert="operator1",
                            data={"add": ["MON-0001", "MON-0002"]})
        assert st == 200, raw


def test_altered_row_is_named(tamper_env, pki):
    c, tdb = tamper_env
    make_activity(c, pki)
    assert verify(c, pki)["intact"] is True
    ids = [r[0] for r in tdb.query("SELECT id FROM cms.audit_events ORDER BY id")]
    victim = ids[len(ids) // 2]
    orig = tdb.query("SELECT actor, detail::text FROM cms.audit_events WHERE id = %s",
                     (victim,))[0]
    try:
        with superuser(tdb) as cur:
            cur.execute("UPDATE cms.audit_events SET actor = 'operator:nobody', "
                        "detail = '{\"group\": \"elsewhere\"}' WHERE id = %s", (victim,))
        body = verify(c, pki)
        assert body["intact"] is False, body
        assert body["first_bad_id"] == victim, (body, victim)
        assert "altered" in body["reason"], body

        p = a.cmsctl(c, pki, "audit", "verify", op="viewer1")
        assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
        assert "row %d" % victim in p.stdout + p.stderr, (p.stdout, p.stderr)
        p = a.cmsctl(c, pki, "--json", "audit", "verify", op="viewer1")
        assert p.returncode == 1 and json.loads(p.stdout)["first_bad_id"] == victim
    finally:
        with superuser(tdb) as cur:
            cur.execute("UPDATE cms.audit_events SET actor = %s, detail = %s::jsonb "
                        "WHERE id = %s", (orig[0], orig[1], victim))
    assert verify(c, pki)["intact"] is True, "restoring the row restores the chain"


def test_rehashed_row_breaks_the_next_link(tamper_env, pki):
    """Whoever alters a row and recomputes its hash breaks the next row's
    prev_hash: the break is named there."""
    c, tdb = tamper_env
    make_activity(c, pki, 2)
    ids = [r[0] for r in tdb.query("SELECT id FROM cms.audit_events ORDER BY id")]
    victim = ids[-3]
    orig = tdb.query("SELECT actor, row_hash FROM cms.audit_events WHERE id = %s", (victim,))[0]
    try:
        with superuser(tdb) as cur:
            cur.execute("UPDATE cms.audit_events SET actor = 'operator:nobody', "
                        "row_hash = cms.audit_row_hash(prev_hash, id, at, event, "
                        "'operator:nobody', device, peer, detail) WHERE id = %s", (victim,))
        body = verify(c, pki)
        assert body["intact"] is False and body["first_bad_id"] == ids[-2], (body, ids[-3:])
        assert "prev_hash" in body["reason"], body
    finally:
        with superuser(tdb) as cur:
            cur.execute("UPDATE cms.audit_events SET actor = %s, row_hash = %s WHERE id = %s",
                        (orig[0], orig[1], victim))
    assert verify(c, pki)["intact"] is True


ANCHOR_RX = re.compile(r'event=audit_anchor msg="id=(\d+) sha256=([0-9a-f]{64})"')

# Alters row %(v)d and re-hashes it and every row after it, and the chain head:
# what someone with the superuser password and the hash recipe (001) can do.
REHASH_FROM = """
DO $$
DECLARE r record; prev bytea;
BEGIN
    SELECT coalesce((SELECT row_hash FROM cms.audit_events WHERE id < %(v)d
                     ORDER BY id DESC LIMIT 1), decode(repeat('00', 32), 'hex')) INTO prev;
    FOR r IN SELECT * FROM cms.audit_events WHERE id >= %(v)d ORDER BY id LOOP
        IF r.id = %(v)d THEN r.actor := 'operator:nobody'; END IF;
        UPDATE cms.audit_events SET actor = r.actor, prev_hash = prev,
            row_hash = cms.audit_row_hash(prev, r.id, r.at, r.event, r.actor, r.device,
                                          r.peer, r.detail)
        WHERE id = r.id RETURNING row_hash INTO prev;
    END LOOP;
    UPDATE cms.audit_chain_head SET last_hash = prev WHERE singleton;
END $$
"""


def test_rehashed_chain_is_caught_by_a_logged_anchor(tamper_env, pki):
    """Altering a row and re-hashing everything after it (and the head) leaves
    a chain that links: the walk alone says intact. cmsd logs the chain head
    (event=audit_anchor, audit_anchor_interval_s) to a log the database's
    superuser does not hold: checked against that line, the rewrite is named."""
    c, tdb = tamper_env
    since = c.log_size()
    make_activity(c, pki, 3)
    head = tdb.scalar("SELECT last_id FROM cms.audit_chain_head")

    def anchored():
        found = [m for m in map(ANCHOR_RX.search, c.log_lines(since)) if m]
        return found[-1] if found and int(found[-1].group(1)) >= head else None
    h.wait_until(lambda: anchored() is not None, 20, what="an audit_anchor line for the head")
    m = anchored()
    aid, ahash = int(m.group(1)), m.group(2)
    assert tdb.scalar("SELECT encode(row_hash, 'hex') FROM cms.audit_events WHERE id = %s",
                      (aid,)) == ahash
    anchor = "%d:%s" % (aid, ahash)
    path = "/api/v1/audit/verify?anchor=" + anchor

    st, body, raw = a.curl(c, pki, "GET", path, cert="viewer1")
    assert st == 200 and body["intact"] is True, raw
    assert body["anchor"] == {"id": aid, "sha256": ahash, "matches": True}, body
    p = a.cmsctl(c, pki, "audit", "verify", "--anchor", anchor.upper(), op="viewer1")
    assert p.returncode == 0 and "anchor: row %d" % aid in p.stdout, (p.stdout, p.stderr)

    victim = tdb.scalar("SELECT id FROM cms.audit_events WHERE id <= %s ORDER BY id DESC "
                        "OFFSET 2 LIMIT 1", (aid,))
    saved = tdb.query("SELECT id, actor, prev_hash, row_hash FROM cms.audit_events "
                      "WHERE id >= %s", (victim,))
    saved_head = tdb.query("SELECT last_hash FROM cms.audit_chain_head")[0][0]
    try:
        with superuser(tdb) as cur:
            cur.execute(REHASH_FROM % {"v": victim})
        assert verify(c, pki)["intact"] is True, "the walk alone cannot see a re-hashed chain"
        st, body, raw = a.curl(c, pki, "GET", path, cert="viewer1")
        assert st == 200 and body["intact"] is False, raw
        assert body["first_bad_id"] == aid and "anchor" in body["reason"], body
        assert body["anchor"]["matches"] is False, body
        p = a.cmsctl(c, pki, "audit", "verify", "--anchor", anchor, op="viewer1")
        assert p.returncode == 1 and "row %d" % aid in p.stdout + p.stderr, (p.stdout, p.stderr)
    finally:
        with superuser(tdb) as cur:
            for rid, actor, prev, rh in saved:
                cur.execute("UPDATE cms.audit_events SET actor = %s, prev_hash = %s, "
                            "row_hash = %s WHERE id = %s", (actor, prev, rh, rid))
            cur.execute("UPDATE cms.audit_chain_head SET last_hash = %s WHERE singleton",
                        (saved_head,))
    assert verify(c, pki)["intact"] is True
    # An anchor naming a row that is not there, and a malformed one.
    st, body, raw = a.curl(c, pki, "GET", "/api/v1/audit/verify?anchor=%d:%s"
                           % (10 ** 12, ahash), cert="viewer1")
    assert st == 200 and body["intact"] is False and "not in the log" in body["reason"], raw
    st, body, raw = a.curl(c, pki, "GET", "/api/v1/audit/verify?anchor=12:xyz", cert="viewer1")
    assert st == 400 and body["error"] == "bad_request", raw


def test_deleted_rows_are_noticed(tamper_env, pki):
    c, tdb = tamper_env
    make_activity(c, pki, 2)
    cols = "id, at, event, actor, device, peer, detail, prev_hash, row_hash"
    last = tdb.query("SELECT %s FROM cms.audit_events ORDER BY id DESC LIMIT 1" % cols)[0]
    mid = tdb.query("SELECT %s FROM cms.audit_events ORDER BY id DESC OFFSET 3 LIMIT 1"
                    % cols)[0]
    try:
        # the last row: the chain head still names it
        with superuser(tdb) as cur:
            cur.execute("DELETE FROM cms.audit_events WHERE id = %s", (last[0],))
        body = verify(c, pki)
        assert body["intact"] is False and body["first_bad_id"] == last[0], body
        # a row in the middle: the row after it no longer links
        with superuser(tdb) as cur:
            cur.execute("DELETE FROM cms.audit_events WHERE id = %s", (mid[0],))
        body = verify(c, pki)
        nxt = tdb.scalar("SELECT min(id) FROM cms.audit_events WHERE id > %s", (mid[0],))
        assert body["intact"] is False and body["first_bad_id"] == nxt, (body, mid[0], nxt)
    finally:
        with superuser(tdb) as cur:
            for row in (mid, last):
                cur.execute("INSERT INTO cms.audit_events (%s) VALUES "
                            "(%%s, %%s, %%s, %%s, %%s, %%s, %%s::jsonb, %%s, %%s) "
                            "ON CONFLICT (id) DO NOTHING" % cols,
                            list(row[:6]) + [json.dumps(row[6]) if row[6] is not None
                                             else None] + list(row[7:]))
    assert verify(c, pki)["intact"] is True


# ---------------------------------------------------------------------------
# what cmsd's database role may do
# ---------------------------------------------------------------------------

@pytest.fixture
def as_cmsd(db):
    """psycopg2 session as the login role cmsd uses (member of cms_server)."""
    conn = psycopg2.connect(db.cmsd_dsn)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.mark.parametrize("sql", [
    "UPDATE cms.audit_events SET actor = 'x' WHERE id = (SELECT max(id) FROM cms.audit_events)",
    "UPDATE cms.audit_events SET detail = NULL",
    "DELETE FROM cms.audit_events WHERE id = (SELECT max(id) FROM cms.audit_events)",
    "DELETE FROM cms.audit_events",
    "TRUNCATE cms.audit_events",
    "UPDATE cms.audit_chain_head SET last_hash = '\\x00'",
    "SELECT * FROM cms.audit_chain_head FOR UPDATE",
    "ALTER TABLE cms.audit_events DISABLE TRIGGER audit_events_no_update",
    "DROP TRIGGER audit_events_no_update ON cms.audit_events",
    "SET session_replication_role = replica",
    "INSERT INTO cms.audit_chain_head (singleton, last_hash) VALUES (false, '\\x00')",
])
def test_cmsd_role_cannot_alter_audit(as_cmsd, db, sql):
    before = db.scalar("SELECT count(*) FROM cms.audit_events")
    with as_cmsd.cursor() as cur:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(sql)
    assert db.scalar("SELECT count(*) FROM cms.audit_events") >= before
    assert db.scalar("SELECT cms.audit_verify()") is None


def test_cmsd_role_appends_but_cannot_forge_the_chain(as_cmsd, db):
    with as_cmsd.cursor() as cur:
        cur.execute("SELECT cms.audit_append('bb_test', 'test', NULL, NULL, '{\"a\": 1}')")
        nid = cur.fetchone()[0]
        # a forged id, time and hashes are replaced by the trigger
        cur.execute("INSERT INTO cms.audit_events (id, at, event, prev_hash, row_hash) "
                    "VALUES (1, '2000-01-01', 'bb_forged', '\\x00', '\\x00') RETURNING id, at")
        fid, fat = cur.fetchone()
    assert fid > nid and fat.year > 2000
    row = db.query("SELECT prev_hash, row_hash FROM cms.audit_events WHERE id = %s", (fid,))[0]
    assert len(bytes(row[0])) == 32 and len(bytes(row[1])) == 32
    assert db.scalar("SELECT cms.audit_verify()") is None


def test_superuser_too_needs_to_switch_triggers_off(db):
    """Without disabling triggers not even the superuser updates a row."""
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        db.execute("UPDATE cms.audit_events SET actor = 'x' "
                   "WHERE id = (SELECT max(id) FROM cms.audit_events)")


def test_long_chain_verified_across_chunks(tamper_env, pki):
    """The server walks the chain in chunks of 50000 rows: a link broken
    exactly between two chunks is found, and the answer agrees with
    cms.audit_verify_report() (one statement)."""
    c, tdb = tamper_env
    have = tdb.scalar("SELECT count(*) FROM cms.audit_events")
    if have < 50010:
        # batches of 1000 rows, one transaction each (the chain head is one row)
        tdb.execute("DO $$ BEGIN FOR i IN 1..%d LOOP "
                    "PERFORM cms.audit_append('bb_bulk', 'test', 'MON-0001', NULL, "
                    "'{\"n\": 1}') FROM generate_series(1, 1000); COMMIT; END LOOP; END $$"
                    % ((50010 - have) // 1000 + 1))
    body = verify(c, pki)
    n = tdb.scalar("SELECT count(*) FROM cms.audit_events")
    assert body["intact"] is True and body["rows_checked"] == n, (body, n)
    ids = [r[0] for r in tdb.query("SELECT id FROM cms.audit_events ORDER BY id "
                                   "OFFSET 49999 LIMIT 2")]
    orig = tdb.query("SELECT actor, row_hash FROM cms.audit_events WHERE id = %s",
                     (ids[0],))[0]
    try:
        with superuser(tdb) as cur:  # the last row of the first chunk, rehashed
            cur.execute("UPDATE cms.audit_events SET actor = 'operator:nobody', "
                        "row_hash = cms.audit_row_hash(prev_hash, id, at, event, "
                        "'operator:nobody', device, peer, detail) WHERE id = %s", (ids[0],))
        body = verify(c, pki)
        assert body["intact"] is False and body["first_bad_id"] == ids[1], (body, ids)
        rep = tdb.query("SELECT first_bad_id, rows_checked, bad_rows "
                        "FROM cms.audit_verify_report()")[0]
        assert rep == (body["first_bad_id"], body["rows_checked"], body["bad_rows"]), (rep, body)
    finally:
        with superuser(tdb) as cur:
            cur.execute("UPDATE cms.audit_events SET actor = %s, row_hash = %s WHERE id = %s",
                        (orig[0], orig[1], ids[0]))
    assert verify(c, pki)["intact"] is True
