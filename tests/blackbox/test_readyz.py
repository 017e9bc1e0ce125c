"""/readyz: ready only when every worker listens, the database answers and the schema has
every migration this cmsd was built with; not ready while draining (test_drain.py) or when
a migration is missing. /healthz stays liveness.

- The shared cmsd is ready: 200, the workers listening, the schema expected = the newest
  sql/NNN_*.sql of this tree.
- A database missing the newest migration: 503 "schema migrations missing" while cmsd
  serves monitors all the same; once the migration is recorded again, 200 (checked every
  5 s while missing).
"""

import re

import pytest

import helpers as h

pytest.register_assert_rewrite("admin_helpers")
import admin_helpers as ah  # noqa: E402


def newest_migration():
    return max(int(re.match(r"(\d+)_", p.name).group(1)) for p in (h.ROOT / "sql").glob("*.sql")
               if re.match(r"\d+_.*\.sql$", p.name))


def test_ready(cmsd, pki):
    def ready():
        return ah.curl(cmsd, pki, "GET", "/readyz")[0] == 200
    h.wait_until(ready, 30, 0.2, "ready")
    st, body, raw = ah.curl(cmsd, pki, "GET", "/readyz")
    assert st == 200, raw
    assert body["status"] == "ready" and body["draining"] is False, body
    assert body["listening"] == body["workers"] == body["database_up"] >= 1, body
    assert body["schema"] == {"expected": newest_migration(),
                              "newest_applied": newest_migration(), "state": "ok"}, body
    assert ah.curl(cmsd, pki, "GET", "/healthz")[0] == 200


def test_missing_migration_is_not_ready(cmsd_factory, pg, pki, connect):
    db2 = h.setup_database(pg, "cms_test_readyz")
    newest = newest_migration()
    db2.execute("DELETE FROM cms.schema_migrations WHERE version = %s", (newest,))
    c = cmsd_factory("cmsd-readyz", db_conninfo=db2.cmsd_dsn + " application_name=cmsd-readyz")
    h.device_add(db2, "MON-0001", status="active")

    def answer():
        return ah.curl(c, pki, "GET", "/readyz")
    h.wait_until(lambda: answer()[1]["schema"]["state"] == "missing", 30, 0.2, "a schema check")
    st, body, raw = answer()
    assert st == 503 and body["status"] == "not_ready", raw
    assert body["reason"] == "schema migrations missing", body
    assert body["schema"]["newest_applied"] == newest - 1, body
    c.wait_log(r"event=schema_mismatch", 0, 5, "schema_mismatch")
    # Liveness is not readiness: the process answers, monitors are served.
    assert ah.curl(c, pki, "GET", "/healthz")[0] == 200
    with connect(c.port, "MON-0001") as cl:
        assert cl.request(h.pcd01("MON-0001", h.unique("RZ"), patient="PT-RZ")).code == "AA"
    db2.execute("INSERT INTO cms.schema_migrations (version, name, sha256) "
                "VALUES (%s, 'restored', 'x')", (newest,))
    h.wait_until(lambda: answer()[0] == 200, 20, 0.5, "ready again")
