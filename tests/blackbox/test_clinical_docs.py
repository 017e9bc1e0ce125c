"""docs/clinical-data.md is the contract of the read interface: every view and
function the reporting role cms_reader is granted has a section there whose
column table lists exactly its columns, in order, with their types. This test
fails when the migrations and the document drift apart (a column added,
renamed, retyped or dropped; a view granted and not documented; a documented
view gone)."""

import re

import helpers as h

DOC = h.ROOT / "docs" / "clinical-data.md"


def documented():
    """{name: [(column, type), ...]} from the '### `cms.name`' sections."""
    out, name = {}, None
    for line in DOC.read_text().splitlines():
        m = re.match(r"^### `(cms\.[a-z_]+)", line)
        if m:
            name = m.group(1)
            out[name] = []
            continue
        if line.startswith("## "):
            name = None
        if name and line.startswith("| ") and not line.startswith("| column"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) >= 2 and not set(cells[0]) <= {"-"}:
                out[name].append((cells[0], cells[1]))
    return out


def granted(db):
    """{name: [(column, type), ...]} of what cms_reader may read or call in schema cms."""
    out = {}
    views = db.query(
        "SELECT c.oid, 'cms.' || c.relname FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = 'cms' AND c.relkind IN ('v', 'm', 'r', 'p') "
        "AND has_table_privilege('cms_reader', c.oid, 'SELECT')")
    for oid, name in views:
        out[name] = [tuple(r) for r in db.query(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (oid,))]
    funcs = db.query(
        "SELECT p.oid, 'cms.' || p.proname FROM pg_proc p JOIN pg_namespace n "
        "ON n.oid = p.pronamespace WHERE n.nspname = 'cms' AND EXISTS (SELECT 1 FROM "
        "aclexplode(p.proacl) a JOIN pg_roles r ON r.oid = a.grantee "
        "WHERE r.rolname = 'cms_reader' AND a.privilege_type = 'EXECUTE')")
    for oid, name in funcs:
        out[name] = [tuple(r) for r in db.query(
            "SELECT a.n, format_type(a.t, NULL) FROM pg_proc p, "
            "unnest(p.proallargtypes, p.proargmodes::text[], p.proargnames) "
            "WITH ORDINALITY AS a (t, m, n, i) WHERE p.oid = %s AND a.m = 't' ORDER BY a.i",
            (oid,))]
    return out


def test_every_granted_view_and_function_is_documented_as_it_is(db):
    docs, real = documented(), granted(db)
    assert "cms.latest_vitals" in real and "cms.alarms" in real, sorted(real)
    missing = sorted(set(real) - set(docs))
    assert not missing, "granted to cms_reader but not in %s: %s" % (DOC.name, missing)
    gone = sorted(set(docs) - set(real))
    assert not gone, "documented in %s but not granted to cms_reader: %s" % (DOC.name, gone)
    for name in sorted(real):
        assert docs[name] == real[name], "%s: the document says %s, the database has %s" % (
            name, docs[name], real[name])


def test_the_parser_sees_the_tables():
    """The check above is only as good as its reading of the document."""
    docs = documented()
    assert docs["cms.alarms"][0] == ("alarm_ref", "bigint"), docs["cms.alarms"]
    assert ("samples", "double precision[]") in docs["cms.waveforms"]
    assert len(docs["cms.vitals_trend"]) == 5
