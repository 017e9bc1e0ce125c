"""cmsctl, the operator CLI, over the operator API with the operator's
certificate: settings from flags, environment or a config file; human tables
by default and the API's JSON with --json; the API's error detail on stderr;
distinct exit codes (0 ok, 1 negative result, 2 usage/configuration, 3 API
refusal (4xx), 4 server error or unreachable); --help at every level."""

import json
import os
import subprocess
import uuid

import psycopg2
import pytest

pytest.register_assert_rewrite("admin_helpers")
import admin_helpers as a  # noqa: E402
import helpers as h
from conftest import ACTIVE, EUI64, EUI64_DEVICE, REVOKED

pytest_plugins = ["admin_helpers"]  # fixture admin_cmsd

OK, EFAIL, EUSAGE, EAPI, ESERVER = 0, 1, 2, 3, 4


def run(admin_cmsd, pki, *args, **kw):
    return a.cmsctl(admin_cmsd, pki, *args, **kw)


def ok_json(p):
    assert p.returncode == OK, (p.returncode, p.stdout, p.stderr)
    return json.loads(p.stdout)


def test_json_output_parses(admin_cmsd, pki):
    out = ok_json(run(admin_cmsd, pki, "--json", "whoami", op="viewer1"))
    assert out == {"cn": "viewer1", "role": "viewer", "actor": "operator:viewer1",
                   "peer": out["peer"]}
    out = ok_json(run(admin_cmsd, pki, "device", "list", "--json", op="viewer1"))
    assert set(ACTIVE) <= {d["serial"] for d in out["devices"]}
    out = ok_json(run(admin_cmsd, pki, "device", "list", "--status", "revoked", "--json"))
    assert REVOKED in {d["serial"] for d in out["devices"]}
    assert {d["status"] for d in out["devices"]} == {"revoked"}
    out = ok_json(run(admin_cmsd, pki, "device", "show", EUI64_DEVICE, "--json"))
    assert out["serial"] == EUI64_DEVICE and out["identifiers"][0]["identifier"] == EUI64
    out = ok_json(run(admin_cmsd, pki, "device", "certs", "MON-0001", "--json"))
    assert out["serial"] == "MON-0001" and isinstance(out["certs"], list)
    out = ok_json(run(admin_cmsd, pki, "group", "list", "--json"))
    assert isinstance(out["groups"], list)
    out = ok_json(run(admin_cmsd, pki, "audit", "list", "--limit", "5", "--json"))
    assert 1 <= len(out["events"]) <= 5
    out = ok_json(run(admin_cmsd, pki, "audit", "verify", "--json"))
    assert out["intact"] is True


def test_audit_list_pages_past_the_api_cap(admin_cmsd, pki, db):
    """The API answers at most 1000 events per request; cmsctl follows
    next_before for a larger --limit and prints one list."""
    ev = "bb_bulk_%s" % uuid.uuid4().hex[:8]
    db.execute("SELECT cms.audit_append(%s, 'test', NULL, NULL, NULL) "
               "FROM generate_series(1, 1203)", (ev,))
    out = ok_json(run(admin_cmsd, pki, "audit", "list", "--event", ev, "--limit", "1100", "--json"))
    ids = [e["id"] for e in out["events"]]
    assert len(ids) == 1100 and len(set(ids)) == 1100, len(ids)
    assert ids == sorted(ids, reverse=True)
    assert {e["event"] for e in out["events"]} == {ev}
    p = run(admin_cmsd, pki, "audit", "list", "--event", ev, "--limit", "5000")
    assert p.returncode == OK and len(p.stdout.splitlines()) == 1 + 1203, len(p.stdout)


def test_human_tables(admin_cmsd, pki):
    p = run(admin_cmsd, pki, "device", "list", op="viewer1")
    assert p.returncode == OK, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split()[:2] == ["SERIAL", "STATUS"], lines[0]
    assert any(ln.split()[:2] == ["MON-0001", "active"] for ln in lines), p.stdout
    p = run(admin_cmsd, pki, "device", "show", "MON-0001")
    assert p.returncode == OK and "status:" in p.stdout and "active" in p.stdout, p.stdout
    p = run(admin_cmsd, pki, "audit", "list", "--limit", "3")
    assert p.returncode == OK and p.stdout.startswith("ID"), p.stdout
    assert len(p.stdout.splitlines()) == 4, p.stdout
    p = run(admin_cmsd, pki, "whoami", op="operator1")
    assert p.returncode == OK and p.stdout.strip() == "operator1 (role operator)"


def test_group_add_remove(admin_cmsd, pki, db):
    g = "cli-%s" % uuid.uuid4().hex[:8]
    audit0 = db.max_audit_id()
    p = run(admin_cmsd, pki, "group", "add", g, "MON-0001", "MON-0002", op="operator1")
    assert p.returncode == OK, (p.stdout, p.stderr)
    assert "added" in p.stdout and "MON-0001" in p.stdout
    rows = a.audit_rows(db, audit0, "group_member_added")
    assert {(r["device"], r["actor"]) for r in rows} == {("MON-0001", "operator:operator1"),
                                                        ("MON-0002", "operator:operator1")}
    out = ok_json(run(admin_cmsd, pki, "device", "list", "--group", g, "--json"))
    assert [d["serial"] for d in out["devices"]] == ["MON-0001", "MON-0002"]
    p = run(admin_cmsd, pki, "group", "remove", g, "MON-0002", op="operator1")
    assert p.returncode == OK and "removed" in p.stdout, (p.stdout, p.stderr)
    p = run(admin_cmsd, pki, "group", "list")
    assert any(ln.split()[:2] == [g, "1"] for ln in p.stdout.splitlines()), p.stdout


def test_api_refusal_exit_3_with_detail(admin_cmsd, pki, db):
    p = run(admin_cmsd, pki, "device", "show", "MON-NOPE")
    assert p.returncode == EAPI, (p.returncode, p.stderr)
    assert "404" in p.stderr and "no such device" in p.stderr, p.stderr
    assert p.stdout == ""

    p = run(admin_cmsd, pki, "group", "add", "cli-viewer", "MON-0001", op="viewer1")
    assert p.returncode == EAPI, (p.returncode, p.stderr)
    assert "403" in p.stderr and "forbidden" in p.stderr and "viewer" in p.stderr, p.stderr

    p = run(admin_cmsd, pki, "group", "add", "cli-x", "MON-NOPE", op="operator1")
    assert p.returncode == EAPI and "MON-NOPE" in p.stderr, p.stderr

    # --json: the API's error body on stdout, for scripts
    p = run(admin_cmsd, pki, "--json", "device", "show", "MON-NOPE")
    assert p.returncode == EAPI
    assert json.loads(p.stdout)["error"] == "not_found"

    p = run(admin_cmsd, pki, "audit", "list", "--since", "not-a-time")
    assert p.returncode == EAPI and "400" in p.stderr, p.stderr


def test_viewer_cannot_revoke_exit_3(admin_cmsd, pki, db):
    p = run(admin_cmsd, pki, "device", "revoke", "MON-0002", "--reason", "keyCompromise",
            op="viewer1")
    if p.returncode == EAPI and "no such resource" in p.stderr:
        pytest.skip("the revocation route is not in this build yet")
    assert p.returncode == EAPI and "403" in p.stderr, (p.returncode, p.stderr)
    assert db.scalar("SELECT status FROM cms.devices WHERE serial = 'MON-0002'") == "active"


@pytest.mark.parametrize("args", [
    ["device", "list", "--bogus"],
    ["device", "show"],
    ["device", "show", "A", "B"],
    ["device", "frobnicate"],
    ["frobnicate"],
    [],
    ["device", "list", "--status"],
    ["audit", "list", "--limit", "0"],
    ["group", "add", "only-a-name"],
    ["enroll", "token", "create", "--serial", "X"],
    ["enroll", "token", "create", "--serial", "X", "--model", "M", "--ttl", "soon"],
])
def test_usage_errors_exit_2(admin_cmsd, pki, args):
    p = run(admin_cmsd, pki, *args)
    assert p.returncode == EUSAGE, (args, p.returncode, p.stdout, p.stderr)
    assert p.stderr.startswith("cmsctl: ") or p.stderr.startswith("usage:"), p.stderr


def test_configuration_errors_exit_2(admin_cmsd, pki, tmp_path):
    crt, key = a.operator(pki, "viewer1")
    p = run(admin_cmsd, pki, "whoami", flags=False)
    assert p.returncode == EUSAGE and "--server" in p.stderr, p.stderr
    p = run(admin_cmsd, pki, "whoami", flags=False,
            env={"CMS_SERVER": "http://localhost:%d" % a.https_port(admin_cmsd),
                 "CMS_CERT": str(crt), "CMS_KEY": str(key)})
    assert p.returncode == EUSAGE and "http" in p.stderr, p.stderr
    p = run(admin_cmsd, pki, "whoami", flags=False,
            env={"CMS_SERVER": a.server_url(admin_cmsd), "CMS_CERT": str(tmp_path / "nope.crt"),
                 "CMS_KEY": str(key), "CMS_CACERT": str(pki.root_ca)})
    assert p.returncode == EUSAGE, (p.returncode, p.stderr)
    p = run(admin_cmsd, pki, "--config", str(tmp_path / "missing.conf"), "whoami", flags=False)
    assert p.returncode == EUSAGE and "missing.conf" in p.stderr, p.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text("server = %s\ncolour = blue\n" % a.server_url(admin_cmsd))
    p = run(admin_cmsd, pki, "--config", str(bad), "whoami", flags=False)
    assert p.returncode == EUSAGE and "bad.conf:2" in p.stderr, p.stderr


def test_unreachable_or_untrusted_server_exit_4(admin_cmsd, pki):
    port = h.free_port()
    crt, key = a.operator(pki, "viewer1")
    p = run(admin_cmsd, pki, "whoami", flags=False, env={
        "CMS_SERVER": "https://127.0.0.1:%d" % port, "CMS_CERT": str(crt), "CMS_KEY": str(key),
        "CMS_CACERT": str(pki.root_ca)})
    assert p.returncode == ESERVER, (p.returncode, p.stderr)
    assert str(port) in p.stderr
    # a server certificate our CA did not issue: refused, never trusted
    p = run(admin_cmsd, pki, "whoami", flags=False, env={
        "CMS_SERVER": a.server_url(admin_cmsd), "CMS_CERT": str(crt), "CMS_KEY": str(key),
        "CMS_CACERT": str(pki.path("bad/rogue-ca.crt"))})
    assert p.returncode == ESERVER, (p.returncode, p.stderr)
    assert "certificate" in p.stderr.lower(), p.stderr


def test_settings_from_env_config_file_and_flags(admin_cmsd, pki, tmp_path):
    crt, key = a.operator(pki, "operator1")
    env = {"CMS_SERVER": a.server_url(admin_cmsd), "CMS_CERT": str(crt), "CMS_KEY": str(key),
           "CMS_CACERT": str(pki.root_ca)}
    p = run(admin_cmsd, pki, "whoami", flags=False, env=env)
    assert p.returncode == OK and p.stdout.startswith("operator1 "), (p.stdout, p.stderr)

    # config file with paths relative to the file, in ~/.config/cmsctl.conf
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    for f in ("ca.pem", "operators/viewer1.crt", "operators/viewer1.key"):
        dst = home / ".config" / os.path.basename(f)
        dst.write_bytes(pki.path(f).read_bytes())
        dst.chmod(0o600)
    (home / ".config" / "cmsctl.conf").write_text(
        "# cmsctl settings\nserver = %s\ncert = viewer1.crt\nkey = \"viewer1.key\"\n"
        "cacert = ca.pem\ntimeout = 30\n" % a.server_url(admin_cmsd))
    p = run(admin_cmsd, pki, "whoami", flags=False, env={"HOME": str(home)})
    assert p.returncode == OK and p.stdout.startswith("viewer1 "), (p.stdout, p.stderr)

    # the environment wins over the file, flags win over both
    p = run(admin_cmsd, pki, "whoami", flags=False, env=dict(env, HOME=str(home)))
    assert p.stdout.startswith("operator1 "), (p.stdout, p.stderr)
    a_crt, a_key = a.operator(pki, "admin1")
    p = run(admin_cmsd, pki, "whoami", "--cert", str(a_crt), "--key", str(a_key), flags=False,
            env=dict(env, HOME=str(home)))
    assert p.returncode == OK and p.stdout.startswith("admin1 "), (p.stdout, p.stderr)

    # --config names the file explicitly
    conf = home / ".config" / "cmsctl.conf"
    p = run(admin_cmsd, pki, "--config", str(conf), "--json", "whoami", flags=False)
    assert ok_json(p)["cn"] == "viewer1"


@pytest.mark.parametrize("args", [
    ["--help"], ["help"], ["device", "--help"], ["device", "list", "--help"],
    ["device", "revoke", "-h"], ["device", "cert-revoke", "--help"],
    ["group", "add", "--help"], ["audit", "--help"],
    ["audit", "verify", "--help"], ["audit", "list", "--help"], ["enroll", "--help"],
    ["enroll", "token", "--help"], ["enroll", "token", "create", "--help"],
    ["db", "--help"], ["db", "migrate", "--help"], ["whoami", "--help"],
])
def test_help_everywhere(args):
    p = h.run([h.CMSCTL] + args, check=False, timeout=30)
    assert p.returncode == OK, (args, p.returncode, p.stderr)
    assert "usage:" in p.stdout, (args, p.stdout)


def test_enroll_token_create_list_revoke(admin_cmsd, pki, db):
    """The enrollment endpoints belong to the EST service; cmsctl calls them."""
    serial = "CLI-%s" % uuid.uuid4().hex[:8].upper()
    p = run(admin_cmsd, pki, "enroll", "token", "create", "--serial", serial, "--model", "M1",
            "--ttl", "600", "--json", op="operator1")
    if p.returncode == EAPI and "no such resource" in p.stderr:
        pytest.skip("the enrollment token routes are not in this build yet")
    if p.returncode == ESERVER and "503" in p.stderr:
        pytest.skip("EST is not configured in this cmsd")
    tok = ok_json(p)
    assert len(tok["token"]) >= 32 and tok["serial"] == serial, tok
    out = ok_json(run(admin_cmsd, pki, "enroll", "token", "list", "--json"))
    mine = [t for t in a_list(out) if t.get("serial") == serial]
    assert mine and "token" not in mine[0], "the token secret is never listed"
    p = run(admin_cmsd, pki, "enroll", "token", "revoke", str(tok["id"]), op="operator1")
    assert p.returncode == OK, (p.stdout, p.stderr)
    p = run(admin_cmsd, pki, "enroll", "token", "list")
    assert p.returncode == OK and serial in p.stdout


def a_list(answer):
    for v in answer.values():
        if isinstance(v, list):
            return v
    return []


def test_revoke_and_decommission(admin_cmsd, pki, db):
    """The revocation endpoints belong to the EST service; cmsctl calls them
    with the admin's certificate and shows refusals with their detail."""
    serial = "CLI-%s" % uuid.uuid4().hex[:8].upper()
    h.device_add(db, serial, status="active", model="Example Monitor")
    audit0 = db.max_audit_id()
    p = run(admin_cmsd, pki, "device", "revoke", serial, "--reason", "keyCompromise",
            op="operator1")
    if p.returncode == EAPI and "no such resource" in p.stderr:
        pytest.skip("the revocation route is not in this build yet")
    assert p.returncode == EAPI and "403" in p.stderr, (p.returncode, p.stderr)
    p = run(admin_cmsd, pki, "device", "revoke", serial, "--reason", "keyCompromise")
    assert p.returncode == OK, (p.stdout, p.stderr)
    assert "revoked" in p.stdout
    assert db.scalar("SELECT status FROM cms.devices WHERE serial = %s", (serial,)) == "revoked"
    rows = a.audit_rows(db, audit0, "device_revoked")
    assert [(r["device"], r["actor"]) for r in rows] == [(serial, "operator:admin1")], rows
    p = run(admin_cmsd, pki, "device", "revoke", serial)
    assert p.returncode == EAPI and "already" in p.stderr, (p.returncode, p.stderr)
    p = run(admin_cmsd, pki, "device", "decommission", serial)
    assert p.returncode == OK, (p.stdout, p.stderr)
    out = ok_json(run(admin_cmsd, pki, "device", "show", serial, "--json"))
    assert out["status"] == "decommissioned" and out["status_changed_at"], out
    p = run(admin_cmsd, pki, "device", "list", "--status", "decommissioned")
    assert serial in p.stdout


def test_cert_revoke(admin_cmsd, pki, db):
    """One certificate revoked by fingerprint (the EST service's endpoint):
    the device keeps its status; the history shows the certificate revoked."""
    serial = "CLI-%s" % uuid.uuid4().hex[:8].upper()
    h.device_add(db, serial, status="active", model="Example Monitor")
    fp = uuid.uuid4().hex + uuid.uuid4().hex
    der = subprocess.run(["openssl", "x509", "-in", str(pki.path("devices/MON-0001.crt")),
                          "-outform", "DER"], stdout=subprocess.PIPE, check=True).stdout
    db.execute("INSERT INTO cms.device_certs (device_id, serial_hex, fingerprint_sha256, "
               "subject_cn, not_before, not_after, issued_via, der) "
               "SELECT id, %s, %s, serial, now(), now() + interval '30 days', 'enroll', %s "
               "FROM cms.devices WHERE serial = %s",
               (fp[:16], fp, psycopg2.Binary(der), serial))
    p = run(admin_cmsd, pki, "device", "cert-revoke", fp, "--reason", "keyCompromise",
            op="operator1")
    assert p.returncode == EAPI and "403" in p.stderr, (p.returncode, p.stderr)
    colons = ":".join(fp[i:i + 2] for i in range(0, 64, 2)).upper()
    p = run(admin_cmsd, pki, "device", "cert-revoke", colons, "--reason", "keyCompromise")
    assert p.returncode == OK, (p.stdout, p.stderr)
    out = ok_json(run(admin_cmsd, pki, "device", "certs", serial, "--json"))
    assert [(c["sha256"], c["state"], c["revocation_reason"]) for c in out["certs"]] == \
        [(fp, "revoked", "keyCompromise")], out
    assert out["status"] == "active"
    p = run(admin_cmsd, pki, "device", "certs", serial)
    assert p.returncode == OK and "revoked" in p.stdout and "keyCompromise" in p.stdout
    p = run(admin_cmsd, pki, "device", "cert-revoke", "00" * 32)
    assert p.returncode == EAPI and "404" in p.stderr, (p.returncode, p.stderr)
