"""Reports are checked against the allowlist (sql/012): a device that was
never approved for a release and reports it installed is recorded as running
that version (the registry), flagged and audited (fw_report_unapproved),
never counted as an installation of the release's rollout, and its security
counter floor is not raised. The approved device's report still counts.
Python ssl / http.client as the devices, cmsctl as the operators, psycopg2."""

import json

from fw_helpers import fw_cmsd, fw_devices  # noqa: F401  (fixtures)
from fw_helpers import (approve, audit_since, cmsctl, get_manifest, import_release, new_device,
                        report, sign_release, status, unique_model, wait_audit)


def installed_counter(db, serial):
    return db.scalar("SELECT s.installed_counter FROM cms.fw_device_state s "
                     "JOIN cms.devices d ON d.id = s.device_id WHERE d.serial = %s", (serial,))


def test_unapproved_report_is_flagged_not_counted(fw_cmsd, pki, db):
    model = unique_model()
    approved, stranger = new_device(db, model), new_device(db, model)
    rel = sign_release(model, "4.2.0", 7, size=20000)
    rid = import_release(fw_cmsd, pki, rel, "operator1")["id"]
    approve(fw_cmsd, pki, rid, "operator2", devices=[approved])

    a0 = db.max_audit_id()
    st, _, body = report(fw_cmsd, pki, stranger, "installed", version="4.2.0", sha256=rel.sha256)
    assert st == 200, body
    s = status(fw_cmsd, pki, rid)
    assert s["states"].get("installed", 0) == 0, s
    assert s["release"]["installed_devices"] == 0, s["release"]
    row = {d["serial"]: d for d in s["devices"]}[stranger]
    assert row["state"] == "reported_unapproved" and row["via"] is None, row
    assert "fw_report_unapproved" in row["reason"]
    assert json.loads(body) == {"recorded": True, "release_id": None, "flagged": True}
    flagged = wait_audit(db, a0, "fw_report_unapproved", lambda r: r["device"] == stranger)
    assert len(flagged) == 1 and flagged[0]["actor"] == "device:" + stranger
    d = json.loads(flagged[0]["detail"])
    assert (d["status"], d["version"], d["release_id"]) == ("installed", "4.2.0", rid)
    assert [r for r in audit_since(db, a0, "fw_report") if r["device"] == stranger] == []
    # What the device says it runs is kept; its counter floor is not raised by it.
    assert db.scalar("SELECT firmware_version FROM cms.devices WHERE serial = %s",
                     (stranger,)) == "4.2.0"
    assert installed_counter(db, stranger) == 0
    assert db.scalar("SELECT count(*) FROM cms.fw_rollout o JOIN cms.devices d "
                     "ON d.id = o.device_id WHERE d.serial = %s", (stranger,)) == 0
    # By version alone, again: still flagged (counted in the flag, not the rollout).
    st, _, body = report(fw_cmsd, pki, stranger, "installed", version="4.2.0")
    assert st == 200 and json.loads(body)["flagged"] is True
    assert db.scalar("SELECT f.reports FROM cms.fw_report_flags f JOIN cms.devices d "
                     "ON d.id = f.device_id WHERE d.serial = %s AND f.release_id = %s",
                     (stranger, rid)) == 2

    # The approved device: offered, installed, counted.
    st, _, _ = get_manifest(fw_cmsd, pki, approved, "1.0.0")
    assert st == 200
    a1 = db.max_audit_id()
    st, _, body = report(fw_cmsd, pki, approved, "installed", version="4.2.0",
                         sha256=rel.sha256)
    assert st == 200 and json.loads(body) == {"recorded": True, "release_id": rid,
                                              "flagged": False}
    wait_audit(db, a1, "fw_report", lambda r: r["device"] == approved)
    s = status(fw_cmsd, pki, rid)
    assert s["states"].get("installed") == 1 and s["release"]["installed_devices"] == 1, s
    assert {d["serial"]: d for d in s["devices"]}[approved]["via"] == "device"
    assert installed_counter(db, approved) == 7

    # A report of a version that is no release of the model: its reported version, as before.
    st, _, body = report(fw_cmsd, pki, stranger, "installed", version="9.9.9")
    assert st == 200 and json.loads(body) == {"recorded": True, "release_id": None,
                                              "flagged": False}

    assert cmsctl(fw_cmsd, pki, "viewer1", "audit", "verify").returncode == 0
