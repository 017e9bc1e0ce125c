"""A group approval covers the membership it saw (sql/011): the importer of a
release cannot widen a rollout a second operator approved for a group by
adding devices to that group. A device added later is not offered the
release and may not download it (fw_approval_needed audited, status
'needs_approval') until another operator than the importer approves the
group again; a device removed from the group and put back needs that too.
cmsctl as the operators, Python ssl as the devices, curl for the image."""

import json
import uuid

from fw_helpers import fw_cmsd, fw_devices  # noqa: F401  (fixtures)
from fw_helpers import (approve, audit_since, cmsctl, curl_device, fw_dir, get_manifest,
                        import_release, new_device, sign_release, status, unique_model,
                        wait_audit)


def group_cmd(c, pki, operator, verb, group, *serials):
    p = cmsctl(c, pki, operator, "--json", "group", verb, group, *serials)
    return json.loads(p.stdout)


def offered(c, pki, serial):
    st, _, _ = get_manifest(c, pki, serial, "1.0.0")
    assert st in (200, 204), st
    return st == 200


def device_row(c, pki, rid, serial):
    return {d["serial"]: d for d in status(c, pki, rid)["devices"]}.get(serial)


def test_importer_cannot_widen_an_approved_group(fw_cmsd, pki, db):
    model = unique_model()
    first, late = new_device(db, model), new_device(db, model)
    group = "ring-" + uuid.uuid4().hex[:8]
    group_cmd(fw_cmsd, pki, "operator1", "add", group, first)
    rel = sign_release(model, "2.0.0", 3, size=20000)
    rid = import_release(fw_cmsd, pki, rel, "operator1")["id"]
    a_approve = db.max_audit_id()
    res = approve(fw_cmsd, pki, rid, "operator2", groups=[group])["results"]
    assert res == [{"kind": "group", "name": group, "outcome": "approved"}]
    assert offered(fw_cmsd, pki, first)

    # The importer alone adds a device to the approved group: not offered.
    a0 = db.max_audit_id()
    group_cmd(fw_cmsd, pki, "operator1", "add", group, late)
    assert not offered(fw_cmsd, pki, late), "the importer widened the rollout alone"
    row = wait_audit(db, a_approve, "fw_approved")[-1]
    assert json.loads(row["detail"])["devices"] == [first]  # what the approval covers
    code, _ = curl_device(fw_cmsd, pki, late, "/fw/v1/images/%s" % rel.sha256,
                          fw_dir() / ("late-%s.bin" % late))
    assert code == 404
    need = wait_audit(db, a0, "fw_approval_needed", lambda r: r["device"] == late)
    assert len(need) == 1 and need[0]["actor"] == "operator:operator1"
    d = json.loads(need[0]["detail"])
    assert (d["group"], d["release_id"], d["version"]) == (group, rid, "2.0.0")
    st = device_row(fw_cmsd, pki, rid, late)
    assert st["state"] == "needs_approval" and st["via"] is None, st
    assert group in st["reason"]
    assert device_row(fw_cmsd, pki, rid, first)["via"] == "group:" + group

    # The importer may not cover it either (two-person rule, audited).
    p = approve(fw_cmsd, pki, rid, "operator1", groups=[group], check=False)
    assert p.returncode == 3 and "two_person_rule" in p.stderr, p.stderr
    assert not offered(fw_cmsd, pki, late)

    # A second operator approves the group again: the new member is covered.
    a1 = db.max_audit_id()
    res = approve(fw_cmsd, pki, rid, "operator2", groups=[group])["results"]
    assert res == [{"kind": "group", "name": group, "outcome": "approved"}]
    d = json.loads(wait_audit(db, a1, "fw_approved")[-1]["detail"])
    assert (d["devices"], d["extended"]) == ([late], True)
    assert offered(fw_cmsd, pki, late)
    assert device_row(fw_cmsd, pki, rid, late)["via"] == "group:" + group
    # Nothing new to cover: already approved, no audit row.
    a2 = db.max_audit_id()
    res = approve(fw_cmsd, pki, rid, "operator2", groups=[group])["results"]
    assert res[0]["outcome"] == "already_approved"
    assert audit_since(db, a2, "fw_approved") == []

    # Out of the group and back in: the old approval does not cover it any more.
    group_cmd(fw_cmsd, pki, "operator1", "remove", group, first)
    assert not offered(fw_cmsd, pki, first)
    group_cmd(fw_cmsd, pki, "operator1", "add", group, first)
    assert not offered(fw_cmsd, pki, first)
    assert offered(fw_cmsd, pki, late)  # still covered

    assert cmsctl(fw_cmsd, pki, "viewer1", "audit", "verify").returncode == 0
